// The users file: one account a line, "name:password:full name".
//   name      ^[a-z_][a-z0-9_-]*$, at most 32 characters
//   password  scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>, or "!" when disabled
//   full name free text without ":" (the GECOS field of adduser)
// Blank lines and lines starting with "#" are kept as they are.
import crypto from 'node:crypto';
import { isValidName } from './names';

export interface User {
  name: string;
  password: string;
  gecos: string;
}

export interface UsersFile {
  users: Map<string, User>;
  /** Lines in file order: either a user name or a verbatim line (comment, blank, unreadable). */
  lines: Array<{ user: string } | { text: string }>;
  problems: string[];
}

export function parseUsers(text: string): UsersFile {
  const users = new Map<string, User>();
  const lines: UsersFile['lines'] = [];
  const problems: string[] = [];
  const all = text.split('\n');
  if (all[all.length - 1] === '') all.pop();
  all.forEach((raw, i) => {
    const l = raw.replace(/\r$/, '');
    if (l.trim() === '' || l.trimStart().startsWith('#')) { lines.push({ text: l }); return; }
    const [name, password = '!', ...rest] = l.split(':');
    if (!isValidName(name)) {
      problems.push(`line ${i + 1}: "${name}" is not a valid user name`);
      lines.push({ text: l });
      return;
    }
    if (users.has(name)) {
      problems.push(`line ${i + 1}: user "${name}" appears twice`);
      lines.push({ text: l });
      return;
    }
    users.set(name, { name, password, gecos: rest.join(':') });
    lines.push({ user: name });
  });
  return { users, lines, problems };
}

export function formatUsers(f: UsersFile): string {
  const out = f.lines.map((l) => {
    if ('text' in l) return l.text;
    const u = f.users.get(l.user);
    return u ? `${u.name}:${u.password}:${u.gecos}` : null;
  }).filter((l): l is string => l !== null);
  for (const u of f.users.values()) {
    if (!f.lines.some((l) => 'user' in l && l.user === u.name)) out.push(`${u.name}:${u.password}:${u.gecos}`);
  }
  return out.join('\n') + '\n';
}

const SCRYPT = { N: 16384, r: 8, p: 1, keylen: 32 };

export function hashPassword(password: string): string {
  const salt = crypto.randomBytes(16);
  const hash = crypto.scryptSync(password, salt, SCRYPT.keylen, { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p });
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

export function verifyPassword(password: string, stored: string): boolean {
  const h = parseHash(stored);
  if (!h) return false;
  const got = crypto.scryptSync(password, h.salt, h.hash.length, h.params);
  return crypto.timingSafeEqual(h.hash, got);
}

// Checked in place of a user who does not exist, has no password ("!") or an
// unreadable hash: the same scrypt work and the same answer, so that neither
// the reply nor its timing tells a guesser which names are real.
const NOBODY_HASH = `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${Buffer.alloc(16).toString('base64')}$${Buffer.alloc(SCRYPT.keylen).toString('base64')}`;

/**
 * verifyPassword for the daemon: scrypt runs on libuv's thread pool, not on the
 * event loop. `stored` undefined (no such user) costs the same as a real check.
 */
export async function checkPassword(password: string, stored: string | undefined): Promise<boolean> {
  const real = stored !== undefined ? parseHash(stored) : null;
  const h = real ?? parseHash(NOBODY_HASH)!;
  // At most SCRYPT_AT_ONCE at a time: libuv's pool has four threads, and the
  // mailbox appends and fsyncs that SMTP's 250 waits for need them too.
  while (scrypting >= SCRYPT_AT_ONCE) await new Promise<void>((r) => scryptWaiters.push(r));
  scrypting++;
  let got: Buffer | null;
  try {
    got = await new Promise<Buffer | null>((resolve) => {
      // A hash with parameters scrypt refuses is a failed login like any other.
      try {
        crypto.scrypt(password, h.salt, h.hash.length, h.params, (err, key) => resolve(err ? null : key));
      } catch {
        resolve(null);
      }
    });
  } finally {
    scrypting--;
    scryptWaiters.shift()?.();
  }
  return got !== null && crypto.timingSafeEqual(h.hash, got) && real !== null;
}

const SCRYPT_AT_ONCE = 2;
let scrypting = 0;
const scryptWaiters: Array<() => void> = [];

function parseHash(stored: string): { salt: Buffer; hash: Buffer; params: { N: number; r: number; p: number } } | null {
  const m = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(stored);
  if (!m) return null;
  return { salt: Buffer.from(m[4], 'base64'), hash: Buffer.from(m[5], 'base64'), params: { N: Number(m[1]), r: Number(m[2]), p: Number(m[3]) } };
}
