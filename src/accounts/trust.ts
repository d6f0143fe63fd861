// Whether a users or aliases file may be believed. Whoever can change one decides
// where other people's mail goes (an alias to his own mailbox), so, as sendmail's
// safefile() and Postfix do for their tables, the file and every directory on
// the way to it (and to the file a symbolic link names) must be changeable only
// by root or by the user mtad runs as.
import fs from 'node:fs';
import path from 'node:path';

/** Why `file` cannot be trusted when mtad runs as one of `uids` (root is always one), or null; a missing file is null. */
export function untrusted(file: string, uids: readonly number[]): string | null {
  const trusted = new Set([0, ...uids]);
  let real: string;
  try {
    real = fs.realpathSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const chain = new Set<string>();
  const withParents = (start: string): void => {
    for (let p = start; !chain.has(p); p = path.dirname(p)) chain.add(p);
  };
  // Each symbolic link on the way, and the directories it sits in, decide what the name means too.
  let hop = path.resolve(file);
  for (let i = 0; i < 40; i++) {
    withParents(hop);
    if (!fs.lstatSync(hop).isSymbolicLink()) break;
    hop = path.resolve(path.dirname(hop), fs.readlinkSync(hop));
  }
  withParents(real);
  const st = fs.statSync(real);
  if (!st.isFile()) return `${real} is not a regular file`;
  const own = judge(real, st, trusted, false);
  if (own) return own;
  for (const p of chain) {
    const ls = fs.lstatSync(p);
    const why = ls.isSymbolicLink()
      ? (trusted.has(ls.uid) ? null : `the symbolic link ${p} belongs to uid ${ls.uid}: chown -h root ${p}`)
      : judge(p, ls, trusted, ls.isDirectory());
    if (why) return why;
  }
  return null;
}

function judge(p: string, st: fs.Stats, trusted: Set<number>, dir: boolean): string | null {
  const what = dir ? 'the directory' : '';
  const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
  if (!trusted.has(st.uid)) return `${what ? `${what} ` : ''}${p} belongs to uid ${st.uid}, neither root nor the user mtad runs as: chown root ${p}`;
  // A sticky directory (/tmp) lets others add files, but not replace ours.
  if ((st.mode & 0o022) && !(dir && st.mode & 0o1000)) {
    return `${what ? `${what} ` : ''}${p} is writable by ${st.mode & 0o002 ? 'every user' : 'its group'} (mode ${mode}): chmod go-w ${p}`;
  }
  return null;
}
