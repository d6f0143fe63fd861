// How mta-queue and a running mtad share the queue.
//
// One lock per message: an fcntl lock on one byte of <queue>/msg.lock, at the
// offset the message's id spells in hex (ids are 40 bits: no two messages share a
// byte). The delivery agent holds it from reading a message's state to writing it
// back; mta-queue holds it while it holds, releases or deletes, so neither can
// undo the other and a delete never races a delivery. The kernel drops the lock
// when its process dies, so a killed mta-queue leaves nothing behind.
//
// Requests: mta-queue drops a file into <queue>/control/ (named "flush" or a
// message id, holding the action word for the log); mtad watches that
// directory, re-reads what changed from the queue itself, and removes the file.
import fs from 'node:fs';
import path from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { tryLock, unlock } from '../system/fcntl';
import { Queue } from './queue';

export const FLUSH = 'flush';
export type Action = 'hold' | 'release' | 'delete' | 'flush';

export function lockFile(queueDir: string): string { return path.join(queueDir, 'msg.lock'); }
export function controlDir(queueDir: string): string { return path.join(queueDir, 'control'); }

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class MessageLocks {
  // The FileHandle itself is kept: one dropped would be closed by the garbage collector, and every lock with it.
  private fh: Promise<FileHandle> | null = null;

  constructor(private readonly file: string, private readonly owner?: { uid: number; gid: number }) {}

  /**
   * Takes the lock of message `id`, polling until `deadline` (epoch ms); false when
   * another process still holds it. fcntl locks belong to the process: callers in
   * one process must keep to one holder per id themselves.
   */
  async lock(id: string, deadline: number): Promise<boolean> {
    const fd = await this.open();
    let pause = 5;
    for (;;) {
      if (tryLock(fd, { offset: offset(id), length: 1 })) return true;
      if (Date.now() >= deadline) return false;
      await sleep(Math.min(pause, Math.max(1, deadline - Date.now())));
      pause = Math.min(100, pause * 2);
    }
  }

  async unlock(id: string): Promise<void> {
    unlock(await this.open(), offset(id), 1);
  }

  async close(): Promise<void> {
    if (!this.fh) return;
    const fh = await this.fh.catch(() => null);
    this.fh = null;
    await fh?.close();
  }

  private async open(): Promise<number> {
    this.fh ??= (async () => {
      const fh = await fs.promises.open(this.file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
      // A root-run mta-queue must not leave a lock file the daemon's user cannot open.
      if (this.owner) await fh.chown(this.owner.uid, this.owner.gid);
      return fh;
    })();
    return (await this.fh).fd;
  }
}

function offset(id: string): number {
  if (!Queue.isId(id)) throw new Error(`not a queue id: ${id}`);
  return parseInt(id, 16);
}

/** Asks the running mtad to look at message `id` again (or, for FLUSH, to retry everything now). */
export async function sendRequest(queueDir: string, name: string, action: Action, owner?: { uid: number; gid: number }): Promise<string> {
  const dir = controlDir(queueDir);
  await fs.promises.mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err; });
  if (owner) await fs.promises.chown(dir, owner.uid, owner.gid);
  const file = path.join(dir, name);
  const tmp = path.join(dir, `.${name}.${process.pid}`);
  await fs.promises.writeFile(tmp, `${action}\n`, { mode: 0o600 });
  if (owner) await fs.promises.chown(tmp, owner.uid, owner.gid);
  await fs.promises.rename(tmp, file);
  return file;
}

export interface Request {
  name: string;
  action: string;
}

/** Takes the pending requests out of control/ (reading and removing each). */
export async function takeRequests(queueDir: string): Promise<Request[]> {
  const dir = controlDir(queueDir);
  let names: string[];
  try {
    names = await fs.promises.readdir(dir);
  } catch {
    return [];
  }
  const out: Request[] = [];
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const file = path.join(dir, name);
    const action = await fs.promises.readFile(file, 'utf8').then((t) => t.trim(), () => '');
    await fs.promises.rm(file, { force: true });
    if (name === FLUSH || Queue.isId(name)) out.push({ name, action });
  }
  return out;
}
