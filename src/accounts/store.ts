// Changes to the users file, for the CLIs: read, change, rewrite atomically,
// under a lock so that two mta-adduser runs cannot lose each other's line.
import fs from 'node:fs';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { describeErrno } from '../config';
import { groupId, userByName } from '../system/passwd';
import { isSharedSpool, mailboxMode } from '../system/spool';
import { writeFileAtomic } from './atomic';
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

/** Runs `change` on the users file and writes the result back, atomically and under a lock. */
export async function updateUsersFile(file: string, change: (f: UsersFile) => void): Promise<void> {
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
      writeFileAtomic(file, formatUsers(f));
    } catch (err) {
      throw new StoreError(`cannot write ${file}: ${describeErrno(err)}${(err as NodeJS.ErrnoException).code === 'EACCES' ? ' (run it with sudo?)' : ''}`, 73);
    }
  } finally {
    await release();
  }
}

/**
 * Creates an empty mailbox if there is none. In a shared spool like /var/mail
 * (setgid, group mail) it belongs to the system user of that name, group mail,
 * 0660, as Debian's own tools make it; in a lab spool it belongs to the spool's
 * owner (the user mtad runs as), 0600.
 */
export function createMailbox(spoolDir: string, name: string): { path: string; created: boolean } {
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
      else fs.fchownSync(fd, spool.uid, shared && mailGid !== null ? mailGid : spool.gid);
    }
  } finally {
    fs.closeSync(fd);
  }
  return { path: file, created: true };
}
