// The locks mail readers use on Debian (Policy 11.6): a kernel fcntl lock on the
// mailbox, then the dotlock "<mailbox>.lock". We take both, in that order, poll
// for a bounded time, and never remove a lock someone else holds.
//
// The dotlock is proper-lockfile's: a directory created with mkdir and kept fresh
// by touching it. While it exists, dotlock users (liblockfile, procmail, mutt_dotlock)
// can neither create their lock file nor unlink ours, so they wait. A directory
// left by a crash is ours by construction (nobody else makes one) and is swept at
// start-up by sweepStaleLockDirs.
import fs from 'node:fs';
import path from 'node:path';
import * as osLock from 'os-lock';
import lockfile from 'proper-lockfile';

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
 * Takes the exclusive fcntl lock on an open descriptor. It is released when the
 * descriptor is closed, or when any other descriptor of the same file in this
 * process is closed: never open a locked mailbox twice.
 */
export async function lockFcntl(fd: number, mailbox: string, deadline: number): Promise<void> {
  const ok = await poll(async () => {
    try {
      await osLock.lock(fd, { exclusive: true, immediate: true });
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EACCES' || code === 'EWOULDBLOCK') return false;
      throw err;
    }
  }, deadline);
  if (!ok) throw new LockTimeout('fcntl', mailbox);
}

// Our lock counts as stale to us only after this long without a touch; foreign
// dotlock files are treated the same way, well above liblockfile's 5 minutes.
const STALE_MS = 10 * 60 * 1000;
const UPDATE_MS = 5000;

export type Release = () => Promise<void>;

export async function lockDotlock(mailbox: string, deadline: number, onCompromised: (err: Error) => void): Promise<Release> {
  let release: Release | null = null;
  const ok = await poll(async () => {
    try {
      release = await lockfile.lock(mailbox, {
        lockfilePath: `${mailbox}.lock`,
        realpath: false,
        stale: STALE_MS,
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
 * Removes the dotlock directories a killed mtad left in the spool. Only
 * directories are touched: a lock *file* belongs to a mail reader.
 */
export function sweepStaleLockDirs(spoolDir: string): string[] {
  const removed: string[] = [];
  for (const name of fs.readdirSync(spoolDir)) {
    if (!name.endsWith('.lock')) continue;
    const p = path.join(spoolDir, name);
    try {
      if (fs.lstatSync(p).isDirectory()) {
        fs.rmdirSync(p);
        removed.push(name);
      }
    } catch {
      // gone already, or not empty: then it is not one of ours, leave it
    }
  }
  return removed;
}
