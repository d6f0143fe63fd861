// Recipient policy: pure decisions over values, no I/O. Relay refusal lives here
// and nowhere else (invariant 1): an address is accepted only when something
// positively says it is ours, i.e. it is at a local domain (or has no domain)
// and resolves through the aliases to users of the users file; postmaster is
// always accepted (RFC 5321 section 4.5.1).
import { isValidName } from './accounts/names';
import type { User } from './accounts/users';

export interface Reply {
  code: number;
  /** Enhanced status code (RFC 3463), e.g. "5.7.1". */
  enhanced: string;
  text: string;
}

export interface Directory {
  users: ReadonlyMap<string, User>;
  aliases: ReadonlyMap<string, readonly string[]>;
}

export interface LocalNames {
  /** Lower-case domain names that are ours. */
  domains: ReadonlySet<string>;
  /** Address literals that are ours, normalised: "[127.0.0.1]", "[ipv6:::1]". */
  literals: ReadonlySet<string>;
  /** Characters that start an address extension (alice+lab3 is alice's); empty or absent: none. */
  delimiter?: string;
}

export type Verdict =
  /** `extension`: the part after the delimiter (with it, "+lab3"), carried to each mailbox's Delivered-To. */
  | { ok: true; local: string; mailboxes: string[]; extension?: string }
  | { ok: false; reply: Reply };

/** The mailbox postmaster's mail goes to when no alias hands it to a user. */
export const POSTMASTER = 'postmaster';
const MAX_ALIAS_DEPTH = 20;

export function relayDenied(address: string): Reply {
  return { code: 554, enhanced: '5.7.1', text: `<${address}>: Relay access denied` };
}

export function userUnknown(address: string): Reply {
  return { code: 550, enhanced: '5.1.1', text: `<${address}>: Recipient address rejected: User unknown in local recipient table` };
}

/**
 * Decides one recipient. `raw` is the address exactly as the client wrote it
 * (inside the brackets, source route included); `address` is that text with a
 * source route removed.
 */
export function resolveRecipient(raw: string, address: string, dir: Directory, local: LocalNames): Verdict {
  const shown = printable(raw);
  // Source routes (<@a,@b:user@c>), quoted local parts, backslash escapes: all
  // ways of asking us to pass the mail on. We never do.
  if (/^@/.test(raw) || /["\\]/.test(raw)) return deny(relayDenied(shown));
  const at = address.split('@');
  if (at.length > 2) return deny(relayDenied(shown));
  const [localPart, domainPart] = at;
  if (at.length === 2 && !isLocalDomain(domainPart, local)) return deny(relayDenied(shown));
  // user%host@us and host!user@us are the old relay hacks.
  if (/[%!]/.test(localPart)) return deny(relayDenied(shown));
  return resolveLocal(localPart, shown, dir, local);
}

/**
 * With the extension first, then without it, as Postfix does: an alias "lab+x"
 * wins over "lab"; a user name that contains the delimiter is still found.
 */
function resolveLocal(localPart: string, shown: string, dir: Directory, local: LocalNames): Verdict {
  const name = localPart.toLowerCase();
  const whole = resolveName(name, shown, dir, local);
  const cut = whole.ok ? -1 : firstDelimiter(name, local.delimiter ?? '');
  if (cut <= 0) return whole;
  const base = resolveName(name.slice(0, cut), shown, dir, local);
  return base.ok ? { ...base, extension: name.slice(cut) } : whole;
}

function firstDelimiter(name: string, delimiter: string): number {
  const at = [...delimiter].map((d) => name.indexOf(d)).filter((i) => i >= 0);
  return at.length ? Math.min(...at) : -1;
}

function resolveName(name: string, shown: string, dir: Directory, local: LocalNames): Verdict {
  if (name === POSTMASTER) {
    const boxes = expand(name, dir, local);
    return { ok: true, local: name, mailboxes: boxes.length ? boxes : [POSTMASTER] };
  }
  if (!isValidName(name) && !dir.aliases.has(name)) return deny(userUnknown(shown));
  const boxes = expand(name, dir, local);
  if (!boxes.length) return deny(userUnknown(shown));
  return { ok: true, local: name, mailboxes: boxes };
}

/**
 * Expands a local name through the aliases to the users it reaches, in order,
 * without duplicates. A name that is both an alias and a user is the alias
 * (as in /etc/aliases); an alias that names itself means the user.
 */
export function expand(name: string, dir: Directory, local: LocalNames): string[] {
  const out: string[] = [];
  const walk = (n: string, depth: number, seen: Set<string>): void => {
    const targets = dir.aliases.get(n);
    if (!targets || seen.has(n) || depth > MAX_ALIAS_DEPTH) {
      // A chain that ends at postmaster without reaching a user (MAILER-DAEMON:
      // postmaster) ends in postmaster's own mailbox.
      const box = dir.users.has(n) || n === POSTMASTER ? n : null;
      if (box && !out.includes(box)) out.push(box);
      return;
    }
    const next = new Set(seen).add(n);
    for (const t of targets) {
      const target = localTarget(t, local);
      if (target === null) continue;
      if (target === n) { if (dir.users.has(n) && !out.includes(n)) out.push(n); continue; }
      walk(target, depth + 1, next);
    }
  };
  walk(name, 0, new Set());
  return out;
}

/** An alias target as a local name, or null when it is not one of ours. */
function localTarget(target: string, local: LocalNames): string | null {
  const at = target.split('@');
  if (at.length > 2) return null;
  if (at.length === 2 && !isLocalDomain(at[1], local)) return null;
  const name = at[0].toLowerCase();
  return name === POSTMASTER || isValidName(name) ? name : null;
}

export function isLocalDomain(domain: string, local: LocalNames): boolean {
  const d = domain.toLowerCase().replace(/\.$/, '');
  if (d.startsWith('[')) return local.literals.has(normaliseLiteral(d));
  return local.domains.has(d);
}

/** "[IPv6:0:0::1]" and "[127.0.0.1]" to one spelling, for comparison. */
export function normaliseLiteral(literal: string): string {
  const l = literal.toLowerCase();
  const m = /^\[ipv6:(.*)\]$/.exec(l);
  if (!m) return l;
  try {
    return `[ipv6:${new URL(`http://[${m[1]}]/`).hostname.slice(1, -1)}]`;
  } catch {
    return l;
  }
}

function deny(reply: Reply): Verdict {
  return { ok: false, reply };
}

/** Addresses are echoed in replies and logs: no control characters, bounded length. */
export function printable(s: string): string {
  const clean = s.replace(/[\x00-\x1f\x7f]/g, '?');
  return clean.length > 256 ? clean.slice(0, 256) + '...' : clean;
}
