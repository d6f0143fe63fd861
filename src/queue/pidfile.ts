// One mtad per spool and per queue: the daemon holds an fcntl lock on
// <spool>/.mtad.pid and on <queue>/mtad.pid for as long as it runs, each with its
// pid inside. Other programs (mta-queue, mtad --check) ask whether one does with
// a shared lock held for an instant, which a starting mtad waits out.
import fs from 'node:fs';
import path from 'node:path';
import { tryLock } from '../system/fcntl';

export const queuePidFile = (queueDir: string): string => path.join(queueDir, 'mtad.pid');

/**
 * In the spool itself, so that every way to it (another checkout, another queue,
 * a symbolic link, a relative path) finds the same file. No user name starts
 * with '.', and the name does not end in ".lock": it is never taken for a mailbox or its lock.
 */
export const spoolPidFile = (spoolDir: string): string => path.join(spoolDir, '.mtad.pid');

export type PidLock = { fd: number } | { holder: string };

/** Takes the file's lock for this process; returns the descriptor to keep open, or the pid ('' if unknown) of the mtad that has it. */
export async function lockPidFile(file: string, mode: number): Promise<PidLock> {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, mode);
  const deadline = Date.now() + 500;
  while (!tryLock(fd)) {
    if (Date.now() >= deadline) {
      const holder = fs.readFileSync(fd, 'utf8').trim();
      fs.closeSync(fd);
      return { holder };
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  return { fd };
}

/** The pid ('' if unknown) of the mtad holding the file's lock, or null when none does. */
export function pidFileHolder(file: string): string | null {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return null;
  }
  try {
    return tryLock(fd, { shared: true }) ? null : fs.readFileSync(fd, 'utf8').trim();
  } finally {
    fs.closeSync(fd);
  }
}

export const lockQueue = (queueDir: string): Promise<PidLock> => lockPidFile(queuePidFile(queueDir), 0o600);

/** The pid ('' if unknown) of the mtad serving the queue, or null when none does. */
export const queueHolder = (queueDir: string): string | null => pidFileHolder(queuePidFile(queueDir));

/** Readable by all, so that `mtad --check` run by anyone can name the holder. */
export const lockSpool = (spoolDir: string): Promise<PidLock> => lockPidFile(spoolPidFile(spoolDir), 0o644);

export const spoolHolder = (spoolDir: string): string | null => pidFileHolder(spoolPidFile(spoolDir));
