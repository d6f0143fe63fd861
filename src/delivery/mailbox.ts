// One locked append of one or more entries to one mailbox, in the manner of
// OpenSMTPD's mail.local: refuse links and special files, re-check the inode
// after locking, O_APPEND, fsync, and truncate back to the old size on any error
// so that a mailbox is never left half-written (invariant 3).
//
// The mailbox and its append record are written through O_DSYNC descriptors: a
// write returns once its bytes (and the size they add) are on disk, as write +
// fdatasync would, in one system call and one thread-pool round trip instead of
// two. Measured here (3 KiB appends, in process): 130 to 170 us of CPU and 330 to
// 380 us of wall time an append, against 200 to 260 and 430 to 500 for the pair.
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir } from '../system/fsync';
import { lockDotlock, lockFcntl, LockTimeout } from './locks';

/** A message body in mbox form: in memory, or a byte range of a queue file. */
export type Body =
  | { kind: 'memory'; chunks: Buffer[]; length: number }
  | { kind: 'file'; path: string; offset: number; length: number };

export interface Entry {
  prefix: Buffer;
  body: Body;
  suffix: Buffer;
}

/** A delivery that did not happen and why; `enhanced` is the RFC 3463 code for the log. */
export class DeliveryError extends Error {
  constructor(readonly enhanced: string, message: string) {
    super(message);
  }
}

const { O_WRONLY, O_APPEND, O_NOFOLLOW, O_NONBLOCK, O_CREAT, O_EXCL, O_DSYNC } = fs.constants;
const OPEN_FLAGS = O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_DSYNC;
const RECORD_FLAGS = O_WRONLY | O_NOFOLLOW | O_DSYNC;
const READ_CHUNK = 256 * 1024;

export interface AppendOptions {
  /** Epoch ms after which waiting for a lock gives up. */
  deadline: number;
  /** Mode of a mailbox that has to be created. */
  createMode: number;
  /** The file that records each append while it is in progress. */
  intentFile: string;
  /** A dotlock nobody has touched for this long is broken (locks.ts, breakStaleLock). */
  staleLockMs: number;
  onLockCompromised: (err: Error) => void;
}

/**
 * A mailbox opened, checked and locked (fcntl, then dotlock) for one or more
 * appends. Holding it across several batches saves the lock round trips (open,
 * two locks, three stats, unlock, close) that otherwise dominate each batch.
 *
 * Each append is recorded first in the queue's appending/<mailbox> (see
 * sweepStaleLocks): if we are killed mid-write, or the power goes, the next start
 * cuts the torn entry off. So the record is on disk before the entry's first
 * byte: its content written (O_DSYNC) before each append, its name (appending/
 * fsync'd) once, when it is created. Before the locks go, it is rewritten to
 * name no append (before = after), on disk too, so that no later change by
 * a reader can pass for our torn append after a power cut. The file is kept from
 * one hold to the next and rewritten in place: its sync then has no size or
 * name to commit, a fraction of the cost of creating it each time.
 * It is kept out of the lock directory, whose mtime proper-lockfile watches.
 */
export class LockedMailbox {
  private constructor(
    private readonly fh: FileHandle,
    private readonly release: () => Promise<void>,
    private readonly st: fs.Stats,
    private readonly intent: AppendRecord,
    /** Size after our last append: we hold both locks, so nobody else appends. */
    private size: number,
  ) {}

  /** Whether this hold appended (and so left a record naming an append). */
  private appended = false;

  static async open(file: string, opts: AppendOptions): Promise<LockedMailbox> {
    const fh = await openMailbox(file, opts.createMode);
    try {
      checkSafe(await fh.stat());
      await lockFcntl(fh.fd, file, opts.deadline);
      const release = await lockDotlock(file, opts.deadline, opts.staleLockMs, opts.onLockCompromised);
      try {
        const st = await fh.stat();
        checkSafe(st);
        const now = await fs.promises.lstat(file).catch(() => null);
        if (!now || now.ino !== st.ino || now.dev !== st.dev) {
          throw new DeliveryError('4.2.0', 'mailbox was replaced while waiting for its lock');
        }
        return new LockedMailbox(fh, release, st, await openRecord(opts.intentFile), st.size);
      } catch (err) {
        await release().catch(() => undefined);
        throw err;
      }
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw asDeliveryError(err);
    }
  }

  /** The mailbox's size now (we hold both locks: nobody else appends). */
  get bytes(): number { return this.size; }

  /** Appends the entries, on disk when it resolves; on error the mailbox is back at its old size. */
  async append(entries: Entry[]): Promise<void> {
    const total = entries.reduce((n, e) => n + e.prefix.length + e.body.length + e.suffix.length, 0);
    try {
      this.appended = true;
      await this.intent.fh.write(appendRecord(this.st, this.size, this.size + total), 0);
      // After the record's own sync (its O_DSYNC write), which on a journalling file system has committed its name already.
      if (!this.intent.named) await fsyncDir(path.dirname(this.intent.file));
      this.intent.named = true;
      this.size += await writeEntries(this.fh, entries, this.size);
    } catch (err) {
      throw asDeliveryError(err);
    }
  }

  async close(): Promise<void> {
    if (this.appended) {
      await this.intent.fh.write(appendRecord(this.st, this.size, this.size), 0).catch(() => undefined);
    }
    await this.intent.fh.close().catch(() => undefined);
    // Never made durable by name: made again, and synced, by the next hold.
    if (!this.intent.named) await fs.promises.rm(this.intent.file, { force: true }).catch(() => undefined);
    await this.release().catch(() => undefined);
    await this.fh.close().catch(() => undefined);
  }
}

interface AppendRecord {
  file: string;
  fh: FileHandle;
  /** Whether appending/ has been fsync'd since the record was created. */
  named: boolean;
}

/** The mailbox's append record, created (not yet named) if this is the first hold since mtad started. */
async function openRecord(file: string): Promise<AppendRecord> {
  try {
    return { file, fh: await fs.promises.open(file, RECORD_FLAGS), named: true };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return { file, fh: await fs.promises.open(file, RECORD_FLAGS | O_CREAT | O_EXCL, 0o600), named: false };
}

/** "dev ino before after\n", numbers zero-padded so that every record has one length and overwrites the last whole. */
function appendRecord(st: fs.Stats, before: number, after: number): string {
  return `${[st.dev, st.ino, before, after].map((n) => String(n).padStart(20, '0')).join(' ')}\n`;
}

async function openMailbox(file: string, createMode: number): Promise<FileHandle> {
  for (let tries = 0; ; tries++) {
    try {
      return await fs.promises.open(file, OPEN_FLAGS);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' || tries > 2) throw asDeliveryError(err);
    }
    let fh: FileHandle;
    try {
      fh = await fs.promises.open(file, OPEN_FLAGS | O_CREAT | O_EXCL, createMode);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw asDeliveryError(err);
      continue;
    }
    try {
      await fh.chmod(createMode); // not narrowed by the umask
      // A new mailbox's name must be on disk before a 250 rests on what is appended to it.
      await fsyncDir(path.dirname(file));
      return fh;
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw asDeliveryError(err);
    }
  }
}

function checkSafe(st: fs.Stats): void {
  if (!st.isFile()) throw new DeliveryError('4.2.0', 'mailbox is not a regular file');
  if (st.nlink !== 1) throw new DeliveryError('4.2.0', `mailbox has ${st.nlink} hard links`);
}

/** Writes the entries (O_DSYNC: on disk as each write returns); returns the bytes appended. */
async function writeEntries(fh: FileHandle, entries: Entry[], oldSize: number): Promise<number> {
  let written = 0;
  try {
    let pending: Buffer[] = [];
    const flush = async (): Promise<void> => {
      if (pending.length) await writeAllv(fh, pending);
      pending = [];
    };
    for (const e of entries) {
      pending.push(e.prefix);
      written += e.prefix.length + e.suffix.length;
      if (e.body.kind === 'memory') {
        pending.push(...e.body.chunks);
        for (const c of e.body.chunks) written += c.length;
      } else {
        await flush();
        await copyRange(fh, e.body.path, e.body.offset, e.body.length);
        written += e.body.length;
      }
      pending.push(e.suffix);
    }
    await flush();
    return written;
  } catch (err) {
    // Roll back to the size the mailbox had when we locked it.
    await fh.truncate(oldSize).then(() => fh.sync()).catch(() => undefined);
    throw err;
  }
}

export async function writeAllv(fh: FileHandle, bufs: Buffer[]): Promise<void> {
  let rest = bufs.filter((b) => b.length);
  while (rest.length) {
    const { bytesWritten } = await fh.writev(rest.slice(0, 1024));
    let n = bytesWritten;
    let i = 0;
    while (i < rest.length && n >= rest[i].length) { n -= rest[i].length; i++; }
    rest = rest.slice(i);
    if (n > 0) rest[0] = rest[0].subarray(n);
  }
}

async function copyRange(out: FileHandle, path: string, offset: number, length: number): Promise<void> {
  const src = await fs.promises.open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, Math.max(1, length)));
    let pos = offset;
    let left = length;
    while (left > 0) {
      const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, left), pos);
      if (bytesRead === 0) throw new DeliveryError('4.3.0', `queue file ${path} is shorter than recorded`);
      await writeAllv(out, [buf.subarray(0, bytesRead)]);
      pos += bytesRead;
      left -= bytesRead;
    }
  } finally {
    await src.close();
  }
}

export function asDeliveryError(err: unknown): DeliveryError {
  if (err instanceof DeliveryError) return err;
  if (err instanceof LockTimeout) return new DeliveryError('4.2.0', err.message);
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'ENOSPC': case 'EDQUOT': return new DeliveryError('4.3.1', 'no space left on device');
    case 'ELOOP': return new DeliveryError('4.2.0', 'mailbox is a symbolic link');
    case 'EISDIR': return new DeliveryError('4.2.0', 'mailbox is a directory');
    case 'ENXIO': return new DeliveryError('4.2.0', 'mailbox is a FIFO or socket');
    case 'EACCES': case 'EPERM': return new DeliveryError('4.2.0', 'permission denied on the mailbox');
    case 'EROFS': return new DeliveryError('4.3.0', 'read-only file system');
    default: return new DeliveryError('4.3.0', e.code ? `${e.code}: ${e.message}` : String(e.message ?? err));
  }
}
