// Recipient policy: pure decisions over values, no I/O. Relay refusal lives here
// and nowhere else (invariant 1): an address is accepted only when something
// positively says it is ours, i.e. it is at a local domain (or has no domain)
// and resolves through the aliases to users of the users file; postmaster is
// always accepted (RFC 5321 section 4.5.1).
import { isValidName } from './accounts/names';
import { isPrintableAscii, printable } from './text';
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
  /** `warning` is for the operator's log: the refusal is a fault of ours, not the client's. */
  | { ok: false; reply: Reply; warning?: string };

/** The mailbox postmaster's mail goes to when no alias hands it to a user. */
export const POSTMASTER = 'postmaster';

export function relayDenied(address: string): Reply {
  return { code: 554, enhanced: '5.7.1', text: `<${address}>: Relay access denied` };
}

export function userUnknown(address: string): Reply {
  return { code: 550, enhanced: '5.1.1', text: `<${address}>: Recipient address rejected: User unknown in local recipient table` };
}

export function badRecipientSyntax(address: string): Reply {
  return { code: 501, enhanced: '5.1.3', text: `<${address}>: Bad recipient address syntax` };
}

/** RFC 6531 3.5: what a server that does not offer SMTPUTF8 answers to a non-ASCII mailbox. */
export function nonAsciiRecipient(address: string): Reply {
  return { code: 553, enhanced: '5.6.7', text: `<${address}>: Non-ASCII recipient address not permitted: this server does not offer SMTPUTF8` };
}

/** Longest address echoed in a reply or log line. */
const SHOWN_MAX = 256;

/**
 * Decides one recipient. `raw` is the address exactly as the client wrote it
 * (inside the brackets, source route included); `address` is that text with a
 * source route removed. Whether the domain is ours is decided first, whatever
 * the characters: only then are the local part's characters judged.
 */
export function resolveRecipient(raw: string, address: string, dir: Directory, local: LocalNames): Verdict {
  const shown = printable(raw, { max: SHOWN_MAX });
  // A source route (<@a,@b:user@c>) asks us to pass the mail on. We never do.
  if (raw.startsWith('@')) return deny(relayDenied(shown));
  const parts = splitAddress(address);
  if (!parts) return deny(badRecipientSyntax(shown));
  const { localPart, domain, quoted } = parts;
  if (domain !== undefined && !isLocalDomain(domain, local)) return deny(relayDenied(shown));
  // user%host@us, host!user@us, "user@host"@us: the old relay hacks.
  if (/[%!@]/.test(localPart)) return deny(relayDenied(shown));
  // Control characters are no address (SMTP refuses them before this); 8-bit ones need SMTPUTF8.
  if (/[\x00-\x1f\x7f]/.test(localPart)) return deny(badRecipientSyntax(shown));
  if (!isPrintableAscii(localPart)) return deny(nonAsciiRecipient(shown));
  // Unquoted, a local part is a dot-string (RFC 5321 4.1.2): a space or a special needs quotes.
  if (!quoted && /[ "(),:;<>[\\\]]/.test(localPart)) return deny(badRecipientSyntax(shown));
  return resolveLocal(localPart, shown, dir, local);
}

/**
 * "local@domain" or "local" into its parts, the local part unquoted when it is a
 * quoted string ("alice"@x is alice@x, RFC 5321 4.1.2). Unquoted, the domain is
 * after the last "@". Null for what is no address at all: an unterminated quote,
 * text after the closing quote, an empty local part or domain.
 */
export function splitAddress(address: string): { localPart: string; domain?: string; quoted: boolean } | null {
  let localPart: string;
  let rest: string;
  const quoted = address.startsWith('"');
  if (quoted) {
    const m = /^"((?:[^"\\]|\\.)*)"(.*)$/s.exec(address);
    if (!m) return null;
    localPart = m[1].replace(/\\(.)/gs, '$1');
    rest = m[2];
    if (rest && !rest.startsWith('@')) return null;
  } else {
    const at = address.lastIndexOf('@');
    localPart = at < 0 ? address : address.slice(0, at);
    rest = at < 0 ? '' : address.slice(at);
  }
  if (!localPart) return null;
  if (!rest) return { localPart, quoted };
  const domain = rest.slice(1);
  return domain ? { localPart, domain, quoted } : null;
}

/**
 * With the extension first, then without it, as Postfix does: an alias "lab+x"
 * wins over "lab"; a user name that contains the delimiter is still found.
 */
function resolveLocal(localPart: string, shown: string, dir: Directory, local: LocalNames): Verdict {
  const name = localPart.toLowerCase();
  const whole = resolveName(name, shown, dir, local);
  const cut = whole.ok || whole.warning ? -1 : firstDelimiter(name, local.delimiter ?? '');
  if (cut <= 0) return whole;
  // An extension is address text (it goes into Delivered-To): atext only, no space or specials.
  if (!/^[a-z0-9!#$%&'*+\-/=?^_`{|}~.]+$/.test(name.slice(cut))) return whole;
  const base = resolveName(name.slice(0, cut), shown, dir, local);
  return base.ok ? { ...base, extension: name.slice(cut) } : whole;
}

function firstDelimiter(name: string, delimiter: string): number {
  const at = [...delimiter].map((d) => name.indexOf(d)).filter((i) => i >= 0);
  return at.length ? Math.min(...at) : -1;
}

function resolveName(name: string, shown: string, dir: Directory, local: LocalNames): Verdict {
  if (name !== POSTMASTER && !isValidName(name) && !dir.aliases.has(name)) return deny(userUnknown(shown));
  const { mailboxes, overflow } = expand(name, dir, local);
  if (overflow) {
    return { ok: false, reply: expansionError(shown), warning: `alias ${name}: unreasonable expansion (${overflow}): its mail is deferred with 451 4.6.0 until the aliases file is fixed` };
  }
  if (name === POSTMASTER) return { ok: true, local: name, mailboxes: mailboxes.length ? mailboxes : [POSTMASTER] };
  if (!mailboxes.length) return deny(userUnknown(shown));
  return { ok: true, local: name, mailboxes };
}

/**
 * Postfix's bounds on one recipient's alias expansion: `expansion_limit` (names
 * one recipient may reach) and local(8)'s nesting limit. Past either, the
 * recipient is deferred, as Postfix defers it, until the aliases file is fixed.
 */
export const EXPANSION_LIMIT = 1000;
export const NESTING_LIMIT = 100;

export interface Expansion {
  mailboxes: string[];
  /** Why the expansion was given up (a limit was hit); mailboxes are then incomplete. */
  overflow?: string;
}

/**
 * Expands a local name through the aliases to the users it reaches, in order,
 * without duplicates. A name that is both an alias and a user is the alias
 * (as in /etc/aliases); an alias that names itself means the user. Each name is
 * expanded once per call, so the work is linear in the aliases it reaches, and
 * bounded by the limits above whatever the file holds.
 */
export function expand(name: string, dir: Directory, local: LocalNames): Expansion {
  const out = new Set<string>();
  const reached = new Set<string>();
  const onPath = new Set<string>();
  const expanded = new Set<string>();
  let overflow: string | undefined;
  const walk = (n: string, depth: number): void => {
    const targets = dir.aliases.get(n);
    if (!targets || onPath.has(n)) {
      // A chain that ends at postmaster without reaching a user (MAILER-DAEMON:
      // postmaster) ends in postmaster's own mailbox; a loop ends where it closes.
      if (dir.users.has(n) || n === POSTMASTER) out.add(n);
      return;
    }
    if (expanded.has(n)) return;
    if (depth > NESTING_LIMIT) {
      overflow = `aliases nested more than ${NESTING_LIMIT} deep`;
      return;
    }
    expanded.add(n);
    onPath.add(n);
    for (const t of targets) {
      const target = localTarget(t, local);
      if (target === null) continue;
      if (target === n) { if (dir.users.has(n)) out.add(n); continue; }
      reached.add(target);
      if (reached.size > EXPANSION_LIMIT) overflow = `more than ${EXPANSION_LIMIT} addresses`;
      if (overflow) break;
      walk(target, depth + 1);
      if (overflow) break;
    }
    onPath.delete(n);
  };
  walk(name, 0);
  return overflow ? { mailboxes: [...out], overflow } : { mailboxes: [...out] };
}

export function expansionError(address: string): Reply {
  return { code: 451, enhanced: '4.6.0', text: `<${address}>: Recipient address rejected: Alias expansion error, try again later` };
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
  // Ours are ASCII: a look-alike (Cyrillic a, the Kelvin sign that lower-cases to
  // "k") is never one of them, so case is folded for A-Z alone.
  if (!isPrintableAscii(domain)) return false;
  const d = domain.replace(/[A-Z]/g, (c) => c.toLowerCase()).replace(/\.$/, '');
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
