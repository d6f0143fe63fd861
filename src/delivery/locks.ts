// The locks mail readers use on Debian (Policy 11.6): a kernel fcntl lock on the
// mailbox, then the dotlock "<mailbox>.lock". We take both, in that order, poll
// for a bounded time, and never remove a lock someone else holds.
//
// The dotlock is proper-lockfile's: a directory created with mkdir and kept fresh
// by touching it. While it exists, dotlock users (liblockfile, procmail, mutt_dotlock)
// can neither create their lock file nor unlink ours, so they wait. A directory
// left by a crash is ours by construction (nobody else makes one; one spool, one
// mtad) and is removed at start-up by sweepStaleLocks.
//
// A lock, file or directory, that nobody has touched for the stale time
// (MTAD_STALE_LOCK_TIME, Postfix's stale_lock_time) was left by a program that
// died holding it: it is broken, with a log line, when a delivery finds it and at
// start-up, as liblockfile and Postfix do. A holder that keeps it longer touches it.
import fs from 'node:fs';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { log } from '../log';
import { tryLock } from '../system/fcntl';

export class LockTimeout extends Error {
  constructor(readonly which: 'fcntl' | 'dotlock', mailbox: string) {
    super(`mailbox ${path.basename(mailbox)} is locked by another program (${which === 'fcntl' ? 'fcntl lock' : 'dotlock'})`);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls until `attempt` succeeds or the deadline passes; the pause grows from 2 ms to 100 ms. */
async function poll(attempt: () => Promise<boolean>, deadline: number): Promise<boolean> {
  let pause = 2;
  for (;;) {
    if (await attempt()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(Math.min(pause, Math.max(1, deadline - Date.now())));
    pause = Math.min(100, pause * 2);
  }
}

/**
 * Takes the exclusive fcntl lock on an open descriptor; it goes when the
 * descriptor is closed. (An open-file-description lock: a second descriptor of
 * the mailbox in this process would conflict with it, not drop it.)
 */
export async function lockFcntl(fd: number, mailbox: string, deadline: number): Promise<void> {
  const ok = await poll(async () => tryLock(fd), deadline);
  if (!ok) throw new LockTimeout('fcntl', mailbox);
}

const UPDATE_MS = 5000;

export type Release = () => Promise<void>;

export async function lockDotlock(mailbox: string, deadline: number, staleMs: number, onCompromised: (err: Error) => void): Promise<Release> {
  let release: Release | null = null;
  const lockPath = `${mailbox}.lock`;
  const ok = await poll(async () => {
    breakStaleLock(lockPath, staleMs);
    try {
      release = await lockfile.lock(mailbox, {
        lockfilePath: lockPath,
        realpath: false,
        // Twice ours: its own silent removal of stale directories never comes first.
        stale: 2 * staleMs,
        update: UPDATE_MS,
        retries: 0,
        onCompromised,
      });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ELOCKED') return false;
      throw err;
    }
  }, deadline);
  if (!ok || !release) throw new LockTimeout('dotlock', mailbox);
  return release;
}

/**
 * Removes the lock at `lockPath` (a file or an empty directory) if nobody has
 * touched it for longer than `staleMs`, and says so in the log; true if it did.
 * Age is judged by the mtime, which a holder refreshes (lockfile_touch(3), dotlockfile -t).
 */
export function breakStaleLock(lockPath: string, staleMs: number): boolean {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(lockPath);
  } catch {
    return false; // no lock: the usual case
  }
  const age = Date.now() - st.mtimeMs;
  if (age <= staleMs) return false;
  const what = `${st.isDirectory() ? 'a directory' : 'a file'} nobody had touched for ${Math.round(age / 1000)} s`;
  const mailbox = path.basename(lockPath).replace(/\.lock$/, '');
  try {
    if (st.isDirectory()) fs.rmdirSync(lockPath);
    else fs.unlinkSync(lockPath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false; // its holder removed it meanwhile
    log.warn(`mailbox ${mailbox}: cannot break the stale lock ${lockPath} (${what}): ${code ?? (err as Error).message}`);
    return false;
  }
  log.warn(`mailbox ${mailbox}: broke the stale lock ${lockPath}, ${what} (MTAD_STALE_LOCK_TIME ${staleMs / 1000} s)`);
  return true;
}

export interface SweepResult {
  /** Lock directories of an earlier mtad removed. */
  removed: string[];
  /** Mailboxes cut back to their size before an append that a kill interrupted, with the bytes removed. */
  rolledBack: Array<{ mailbox: string; bytes: number }>;
  /** Mailboxes whose interrupted append could not be judged safely, with why; left as they are. */
  leftAlone: Array<{ mailbox: string; why: string }>;
}

const MAILBOX_NAME = /^[a-z_][a-z0-9_-]*$/;

/**
 * Cleans up after a killed mtad, at start-up, before any client is served.
 * An append record in `intentDir` that names an append (before < after) means we
 * were killed during that append or just after it: a mailbox whose size lies
 * strictly between the recorded before and after sizes holds a torn entry and is
 * truncated back; any other size means the append completed, or someone else
 * wrote since, and the mailbox is left as it is. Every record is then removed.
 * Then the dotlock directories an earlier mtad left in the spool are removed,
 * whatever their age, and lock files nobody has touched for `staleMs` are broken
 * (breakStaleLock): a fresh lock file belongs to a mail reader at work.
 */
export function sweepStaleLocks(spoolDir: string, intentDir: string, staleMs: number): SweepResult {
  const result: SweepResult = { removed: [], rolledBack: [], leftAlone: [] };
  for (const name of fs.readdirSync(intentDir)) {
    const record = path.join(intentDir, name);
    if (MAILBOX_NAME.test(name)) {
      let text = '';
      try {
        text = fs.readFileSync(record, 'utf8');
      } catch {
        // unreadable: treated as a record cut short, written before any byte of the append
      }
      const outcome = rollBackTornAppend(path.join(spoolDir, name), text);
      if (typeof outcome !== 'number') result.leftAlone.push({ mailbox: name, why: outcome.why });
      else if (outcome > 0) result.rolledBack.push({ mailbox: name, bytes: outcome });
    }
    fs.rmSync(record, { force: true });
  }
  for (const name of fs.readdirSync(spoolDir)) {
    if (!name.endsWith('.lock') || !MAILBOX_NAME.test(name.slice(0, -'.lock'.length))) continue;
    const p = path.join(spoolDir, name);
    try {
      if (fs.lstatSync(p).isDirectory()) {
        fs.rmdirSync(p);
        result.removed.push(name);
        continue;
      }
    } catch {
      // gone already, or not empty: then it is not one of ours; judged by its age below
    }
    breakStaleLock(p, staleMs);
  }
  return result;
}

/** Returns the bytes cut off (0: the append had completed or never started), or why nothing was done. */
function rollBackTornAppend(mailbox: string, record: string): number | { why: string } {
  const m = /^(\d+) (\d+) (\d+) (\d+)\n$/.exec(record);
  // A record cut short by the kill was written before any byte of the append.
  if (!m) return 0;
  const [dev, ino, before, after] = m.slice(1).map(Number);
  // Written before the locks went: no append was in progress.
  if (before === after) return 0;
  const { O_WRONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
  let fd: number;
  try {
    fd = fs.openSync(mailbox, O_WRONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (err) {
    return { why: `cannot open it: ${(err as NodeJS.ErrnoException).code}` };
  }
  try {
    // Our stale dotlock directory still keeps dotlock users out; a reader that
    // takes only the fcntl lock (Dovecot) must not see the mailbox shrink under it.
    if (!waitForFcntlSync(fd, START_LOCK_WAIT_MS)) return { why: 'another program holds its fcntl lock' };
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.dev !== dev || st.ino !== ino) return { why: 'it was replaced since' };
    if (st.size === before || st.size === after) return 0;
    if (st.size < before || st.size > after) return { why: `its size ${st.size} is outside the append (${before} to ${after}): written by someone else since` };
    fs.ftruncateSync(fd, before);
    fs.fsyncSync(fd);
    return st.size - before;
  } finally {
    fs.closeSync(fd);
  }
}

const START_LOCK_WAIT_MS = 2000;

/** Start-up is synchronous: poll for the fcntl lock, sleeping without the event loop. */
export function waitForFcntlSync(fd: number, ms: number): boolean {
  const deadline = Date.now() + ms;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  while (!tryLock(fd)) {
    if (Date.now() >= deadline) return false;
    Atomics.wait(pause, 0, 0, 10);
  }
  return true;
}
