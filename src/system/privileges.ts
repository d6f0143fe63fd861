// Invariant 6: network input is never parsed as root. Started as root, mtad binds
// its port and then becomes MTAD_RUN_AS, by default the owner of the spool (or
// the mail user when root owns it, as /var/spool/mail is root:mail).
import fs from 'node:fs';
import path from 'node:path';
import { isValidName } from '../accounts/names';
import { ConfigError } from '../config';
import { SystemUser, userById, userByName } from './passwd';

export class StartupError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

export const isRoot = (): boolean => process.getuid?.() === 0;

/** Who mtad should run as, or null when it is not root and stays who it is. */
export function chooseRunAs(runAs: string, spoolDir: string): SystemUser | null {
  if (!isRoot()) {
    if (runAs && userByName(runAs)?.uid !== process.getuid?.()) {
      throw new StartupError(`mtad: MTAD_RUN_AS=${runAs} needs mtad to be started as root (sudo node bin/mtad)`, 77);
    }
    return null;
  }
  if (runAs) {
    const u = userByName(runAs);
    if (!u) throw new ConfigError(`MTAD_RUN_AS: "${runAs}" is not a user of this system`);
    if (u.uid === 0) throw new ConfigError(`MTAD_RUN_AS: "${runAs}" is root; mtad will not serve clients as root`);
    return u;
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(spoolDir);
  } catch {
    throw new StartupError(`mtad: the spool directory ${spoolDir} does not exist: create it, or set MTAD_SPOOL_DIR`, 73);
  }
  if (st.uid !== 0) return userById(st.uid) ?? { name: '', uid: st.uid, gid: st.gid, home: '' };
  const mail = userByName('mail');
  if (!mail) throw new StartupError('mtad: root owns the spool and there is no "mail" user: set MTAD_RUN_AS', 67);
  return mail;
}

/**
 * The checkout's own spool, cloned by root, belongs to root, and the user mtad
 * becomes could not write it. That directory exists only for mtad: give it to
 * that user, with the mailboxes root's tools made in it before mtad's first
 * start, so `sudo node bin/mtad` works from a root shell as it does from a
 * user's. Any other spool (e.g. /var/spool/mail) is left to the admin. Called
 * once the port is bound, so that a start that fails there changes nothing;
 * returns what it changed, for the log.
 */
export function adoptCheckoutSpool(spoolDir: string, defaultSpool: string, u: SystemUser): string[] {
  if (!isCheckoutSpoolToAdopt(spoolDir, defaultSpool)) return [];
  const changed = [spoolDir];
  fs.chownSync(spoolDir, u.uid, u.gid);
  // Only root could write a root-owned spool: what is in it is root's doing, not a trap.
  for (const name of fs.readdirSync(spoolDir)) {
    if (!isValidName(name)) continue; // mailboxes only: not .queue, nor lock files
    const file = path.join(spoolDir, name);
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    } catch {
      continue;
    }
    try {
      const f = fs.fstatSync(fd);
      if (f.isFile() && f.nlink === 1 && f.uid === 0) {
        fs.fchownSync(fd, u.uid, u.gid);
        changed.push(file);
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  return changed;
}

/** The first directory on the way to `dir` that the current user may not enter, or null. */
export function closedAncestor(dir: string): string | null {
  const parts = dir.split('/').filter(Boolean);
  for (let i = 0; i < parts.length; i++) {
    const p = `/${parts.slice(0, i).join('/')}`;
    try {
      fs.accessSync(p, fs.constants.X_OK);
    } catch {
      return p;
    }
  }
  return null;
}

export function dropPrivileges(u: SystemUser): void {
  const proc = process as NodeJS.Process & { initgroups?: (user: string, gid: number) => void };
  if (u.name && proc.initgroups) proc.initgroups(u.name, u.gid);
  else process.setgroups!([u.gid]);
  process.setgid!(u.gid);
  process.setuid!(u.uid);
  if (process.getuid!() === 0 || process.geteuid!() === 0 || process.getgid!() === 0) {
    throw new StartupError('mtad: could not give up root', 71);
  }
}

/** Whether adoptCheckoutSpool would take this spool: the checkout's own, still root's (for --check too). */
export function isCheckoutSpoolToAdopt(spoolDir: string, defaultSpool: string): boolean {
  if (spoolDir !== defaultSpool) return false;
  try {
    return fs.statSync(spoolDir).uid === 0;
  } catch {
    return false;
  }
}
