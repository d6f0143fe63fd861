// Changes to the users file, for the CLIs: read, change, rewrite atomically,
// under a lock so that two mta-adduser runs cannot lose each other's line.
import fs from 'node:fs';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { Config, describeErrno } from '../config';
import { groupId, SystemUser, userByName } from '../system/passwd';
import { chooseRunAs } from '../system/privileges';
import { isSharedSpool, mailboxMode } from '../system/spool';
import { FileAccess, writeFileAtomic } from './atomic';
import { formatUsers, parseUsers, UsersFile } from './users';

export class StoreError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

export function readUsersFile(file: string): UsersFile {
  try {
    return parseUsers(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return parseUsers('');
    throw new StoreError(`cannot read ${file}: ${describeErrno(err)}`, 66);
  }
}

/**
 * Owner, group and mode for the users file, which holds password hashes: never
 * more than 0640, and readable by `mtadUser`, the user mtad runs as (null: the
 * caller is not root, and the file stays its own). Run as root, the file is
 * root's with mtad's group, unless mtad's user owns it already.
 */
export function usersFileAccess(file: string, mtadUser: SystemUser | null): FileAccess {
  const st = statOrNull(file);
  const keep = st ? { mode: (st.mode & 0o640) | 0o600, uid: st.uid, gid: st.gid } : { mode: 0o640 };
  if (!mtadUser || process.getuid?.() !== 0 || st?.uid === mtadUser.uid) return keep;
  return { mode: 0o640, uid: 0, gid: mtadUser.gid };
}

/** Runs `change` on the users file and writes the result back, atomically and under a lock. */
export async function updateUsersFile(file: string, change: (f: UsersFile) => void, mtadUser: SystemUser | null): Promise<void> {
  let release: (() => Promise<void>) | null = null;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    release = await lockfile.lock(file, { lockfilePath: `${file}.lock`, realpath: false, retries: { retries: 50, minTimeout: 20, maxTimeout: 200 }, stale: 30000 });
  } catch (err) {
    throw new StoreError(`cannot lock ${file}: ${describeErrno(err)}`, (err as NodeJS.ErrnoException).code === 'ELOCKED' ? 75 : 73);
  }
  try {
    const f = readUsersFile(file);
    change(f);
    try {
      writeFileAtomic(file, formatUsers(f), usersFileAccess(file, mtadUser));
    } catch (err) {
      throw new StoreError(`cannot write ${file}: ${describeErrno(err)}${(err as NodeJS.ErrnoException).code === 'EACCES' ? ' (run it with sudo?)' : ''}`, 73);
    }
  } finally {
    await release();
  }
}

/**
 * The user mtad will run as, as far as a root-run tool can tell (see
 * chooseRunAs); null when not root, or when it cannot be told yet.
 */
export function mtadRunsAs(config: Config): SystemUser | null {
  if (process.getuid?.() !== 0) return null;
  try {
    return chooseRunAs(config.runAs, config.spoolDir);
  } catch {
    return null;
  }
}

/**
 * Creates an empty mailbox if there is none. In a shared spool like /var/mail
 * (setgid, group mail) it belongs to the system user of that name, group mail,
 * 0660, as Debian's own tools make it; in a lab spool it belongs to the user
 * mtad runs as (`mtadUser`; by default the spool's owner), 0600, so that a
 * mailbox root makes before mtad's first start is one mtad can write.
 */
export function createMailbox(spoolDir: string, name: string, mtadUser: SystemUser | null = null): { path: string; created: boolean } {
  const file = path.join(spoolDir, name);
  let spool: fs.Stats;
  try {
    spool = fs.statSync(spoolDir);
  } catch (err) {
    throw new StoreError(`cannot create the mailbox: spool ${spoolDir}: ${describeErrno(err)}`, 73);
  }
  const shared = isSharedSpool(spool);
  const mode = mailboxMode(spool);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return { path: file, created: false };
    throw new StoreError(`cannot create the mailbox ${file}: ${describeErrno(err)}`, 73);
  }
  try {
    fs.fchmodSync(fd, mode);
    if (process.getuid?.() === 0) {
      const sys = shared ? userByName(name) : null;
      const mailGid = groupId('mail');
      if (sys && mailGid !== null) fs.fchownSync(fd, sys.uid, mailGid);
      else if (shared) fs.fchownSync(fd, spool.uid, mailGid ?? spool.gid);
      else fs.fchownSync(fd, mtadUser?.uid ?? spool.uid, mtadUser?.gid ?? spool.gid);
    }
  } finally {
    fs.closeSync(fd);
  }
  return { path: file, created: true };
}

function statOrNull(file: string): fs.Stats | null {
  try { return fs.statSync(file); } catch { return null; }
}
