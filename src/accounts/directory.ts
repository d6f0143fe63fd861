// The daemon's live view of the users and aliases files. Every lookup first
// checks (one stat per file) whether a file changed, and re-reads it if so: a
// user added by mta-adduser is accepted by the very next RCPT, with no signal
// and no restart. A version of a file that others could have written is refused
// (invariant: accounts files others can write are not trusted): the accounts
// read before stay in use.
import fs from 'node:fs';
import { log } from '../log';
import type { Directory } from '../policy';
import { parseAliases } from './aliases';
import { untrusted } from './trust';
import { parseUsers, User } from './users';

interface Watched<T> {
  file: string;
  /** The stat of the version read ('missing': there was no file); null: to be read (again). */
  key: fs.Stats | 'missing' | null;
  value: T;
}

/** Whether `st` is still the version read (compared field by field: this runs at every RCPT). */
function isVersion(v: Watched<unknown>['key'], st: fs.Stats | null): boolean {
  if (v === null) return false;
  if (v === 'missing' || !st) return v === 'missing' && !st;
  return v.dev === st.dev && v.ino === st.ino && v.size === st.size && v.mtimeMs === st.mtimeMs && v.ctimeMs === st.ctimeMs;
}

/** An accounts file that someone other than root or mtad's user could have written. */
export class UntrustedFile extends Error {}

export class AccountDirectory {
  private users: Watched<Map<string, User>>;
  private aliases: Watched<Map<string, string[]>>;

  constructor(usersFile: string, aliasesFile: string) {
    this.users = { file: usersFile, key: null, value: new Map() };
    this.aliases = { file: aliasesFile, key: null, value: new Map() };
  }

  /** Loads both files now; throws if one exists but cannot be read, or is not to be trusted (UntrustedFile). */
  loadSync(): Directory {
    this.reload(this.users, safeStatSync(this.users.file), parseUsersText);
    this.reload(this.aliases, safeStatSync(this.aliases.file), parseAliasesText);
    return this.snapshot();
  }

  current(): Promise<Directory> {
    return Promise.resolve(this.refresh());
  }

  /** SIGHUP: reads both files again even if they look unchanged; one line says what is in use now. */
  async reloadNow(): Promise<void> {
    this.users.key = null;
    this.aliases.key = null;
    const d = this.refresh();
    log.info(`accounts reread: ${d.users.size} user(s) from ${this.users.file}, ${d.aliases.size} alias(es) from ${this.aliases.file}`);
  }

  // The stats are synchronous on purpose: a stat of a small local file takes
  // microseconds, where fs.promises.stat is a thread-pool round trip per file and
  // per RCPT (A/B in the commit that made it so).
  private refresh(): Directory {
    let us: fs.Stats | null;
    let as: fs.Stats | null;
    try {
      us = safeStatSync(this.users.file);
      as = safeStatSync(this.aliases.file);
    } catch (err) {
      log.warn(`cannot stat the accounts files: ${(err as Error).message}; keeping the accounts read before`);
      return this.snapshot();
    }
    for (const [w, st, parse] of [[this.users, us, parseUsersText], [this.aliases, as, parseAliasesText]] as const) {
      try {
        this.reload(w as Watched<unknown>, st, parse);
      } catch (err) {
        log.warn(`${err instanceof UntrustedFile ? '' : `cannot read ${w.file}: `}${(err as Error).message}; keeping the accounts read before`);
      }
    }
    return this.snapshot();
  }

  private snapshot(): Directory {
    return { users: this.users.value, aliases: this.aliases.value };
  }

  private reload<T>(w: Watched<T>, st: fs.Stats | null, parse: (text: string, file: string, st: fs.Stats | null) => T): void {
    if (isVersion(w.key, st)) return;
    // Judged (and a refusal logged) once per version of the file; a fixed file is a new version.
    w.key = st ?? 'missing';
    if (st) {
      const why = untrusted(w.file, [process.geteuid?.() ?? 0]);
      if (why) throw new UntrustedFile(`will not trust ${w.file}: ${why}`);
    }
    let text = '';
    try {
      if (st) text = fs.readFileSync(w.file, 'utf8');
    } catch (err) {
      w.key = null;
      throw err;
    }
    if (!st) log.warn(`${w.file} does not exist: no accounts from it`);
    w.value = parse(text, w.file, st);
  }
}

function parseUsersText(text: string, file: string, st: fs.Stats | null): Map<string, User> {
  const f = parseUsers(text);
  for (const p of f.problems) log.warn(`${file}: ${p}`);
  const exposed = hashesExposed(st, f.users);
  if (exposed) log.warn(`${file}: ${exposed}`);
  return f.users;
}

/** Password hashes are for mtad's eyes: a users file every user can read gives them away to offline guessing. */
export function hashesExposed(st: fs.Stats | null, users: ReadonlyMap<string, User>): string | null {
  if (!st || !(st.mode & 0o004) || ![...users.values()].some((u) => u.password !== '!')) return null;
  return `every user can read the password hashes in it (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}): chmod o-r it (mta-adduser keeps it 0640)`;
}

function parseAliasesText(text: string, file: string): Map<string, string[]> {
  const f = parseAliases(text);
  for (const p of f.problems) log.warn(`${file}: ${p}`);
  return f.aliases;
}

function safeStatSync(file: string): fs.Stats | null {
  try { return fs.statSync(file); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

