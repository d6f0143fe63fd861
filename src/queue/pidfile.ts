// One mtad per queue: the daemon holds an fcntl lock on <queue>/mtad.pid for
// as long as it runs. Other programs (mta-queue, mtad --check) ask whether one
// does with a shared lock held for an instant, which a starting mtad waits out.
import fs from 'node:fs';
import path from 'node:path';
import { tryLock } from '../system/fcntl';

const pidFile = (queueDir: string): string => path.join(queueDir, 'mtad.pid');

/** Takes the queue for this process; returns the descriptor to keep open, or the pid ('' if unknown) of the mtad that has it. */
export async function lockQueue(queueDir: string): Promise<{ fd: number } | { holder: string }> {
  const file = pidFile(queueDir);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  const deadline = Date.now() + 500;
  while (!tryLock(fd)) {
    if (Date.now() >= deadline) {
      const holder = fs.readFileSync(file, 'utf8').trim();
      fs.closeSync(fd);
      return { holder };
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  return { fd };
}

/** The pid ('' if unknown) of the mtad serving the queue, or null when none does. */
export function queueHolder(queueDir: string): string | null {
  let fd: number;
  try {
    fd = fs.openSync(pidFile(queueDir), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return null;
  }
  try {
    return tryLock(fd, { shared: true }) ? null : fs.readFileSync(fd, 'utf8').trim();
  } finally {
    fs.closeSync(fd);
  }
}
