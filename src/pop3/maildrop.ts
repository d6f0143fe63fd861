// One user's mailbox as a POP3 session sees it (RFC 1939's maildrop): the
// messages there at login, found under the delivery locks (the deliverer's
// turn, fcntl, dotlock), read without locks afterwards since mtad and every
// well-behaved writer only append; at QUIT, the DELE'd ones removed under the
// same locks, if the part the session saw is still byte for byte what it was.
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Deliverer } from '../delivery/deliverer';
import { lockDotlock, lockFcntl } from '../delivery/locks';
import { fingerprintOf, ScanCache, scanMailbox, StoredMessage } from '../delivery/reader';
import { removeInPlace } from '../delivery/removal';
import { log } from '../log';
import { unlock } from '../system/fcntl';

export interface MaildropContext {
  spoolDir: string;
  deliverer: Deliverer;
  lockTimeoutMs: number;
  /** A dotlock untouched this long is broken (MTAD_STALE_LOCK_TIME), as delivery does. */
  staleLockMs: number;
  /** Where removals keep their tail and record (the queue's removing/). */
  journalDir: string;
}

/** A failure the client is told about with [SYS/TEMP]: worth trying again later. */
export class MaildropError extends Error {}

const { O_RDWR, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
// The last scan of each mailbox: the next login scans only what was appended since
// (after checking, by its hash, that the rest is unchanged). Dovecot keeps an index for this.
const scans = new Map<string, ScanCache>();
// A message up to this size is read in one synchronous pread: the login scan has
// just read the file, so it comes from the page cache, and a trip through the
// thread pool costs more than the copy.
const SYNC_READ_MAX = 256 * 1024;
const FROM = Buffer.from('From ');

export class Maildrop {
  /** Visible messages, numbered from 1 by their place here. */
  readonly messages: StoredMessage[];
  readonly deleted = new Set<number>();

  private constructor(
    readonly name: string,
    private readonly ctx: MaildropContext,
    /** Open for the session: the snapshot is read through it; null when there was no mailbox. */
    private readonly fh: FileHandle | null,
    private readonly st: fs.Stats | null,
    /** Every entry of the snapshot, Dovecot's internal one included. */
    private readonly all: StoredMessage[],
    readonly snapshotSize: number,
    private readonly fingerprint: string,
  ) {
    this.messages = all.filter((m) => !m.internal);
  }

  static async open(name: string, ctx: MaildropContext): Promise<Maildrop> {
    const file = path.join(ctx.spoolDir, name);
    let fh: FileHandle;
    try {
      fh = await fs.promises.open(file, O_RDWR | O_NOFOLLOW | O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Maildrop(name, ctx, null, null, [], 0, '');
      throw new MaildropError(`cannot open the mailbox: ${(err as NodeJS.ErrnoException).code}`);
    }
    try {
      return await ctx.deliverer.exclusive(name, () => withLocks(fh, file, ctx, async () => {
        const st = await checkedStat(fh, file);
        const scan = await scanMailbox(fh, st.size, scans.get(name));
        scans.set(name, { dev: st.dev, ino: st.ino, size: st.size, scan });
        return new Maildrop(name, ctx, fh, st, scan.messages, st.size, scan.fingerprint);
      }));
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw asMaildropError(err);
    }
  }

  get count(): number {
    return this.messages.length - this.deleted.size;
  }

  get octets(): number {
    return this.messages.reduce((n, m, i) => n + (this.deleted.has(i) ? 0 : m.size), 0);
  }

  /**
   * The message's bytes as stored (after the From_ line, without mtad's X-UIDL
   * line), in chunks; checks first that it is still where it was.
   */
  async *stored(m: StoredMessage, chunkSize = 64 * 1024): AsyncGenerator<Buffer> {
    if (!this.fh) return;
    const [skipFrom, skipTo] = m.uidlLine ?? [m.end, m.end];
    if (m.end - m.start <= SYNC_READ_MAX) {
      const entry = Buffer.allocUnsafe(m.end - m.start);
      const n = fs.readSync(this.fh.fd, entry, 0, entry.length, m.start);
      if (n !== entry.length || !entry.subarray(0, FROM.length).equals(FROM)) {
        throw new MaildropError('the mailbox was changed by another program during this session');
      }
      yield entry.subarray(m.bodyStart - m.start, skipFrom - m.start);
      if (skipTo < m.end) yield entry.subarray(skipTo - m.start);
      return;
    }
    const head = Buffer.alloc(FROM.length);
    await this.fh.read(head, 0, head.length, m.start);
    if (!head.equals(FROM)) throw new MaildropError('the mailbox was changed by another program during this session');
    const buf = Buffer.allocUnsafe(Math.min(chunkSize, Math.max(1, m.end - m.bodyStart)));
    for (const [from, to] of [[m.bodyStart, skipFrom], [skipTo, m.end]]) {
      for (let pos = from; pos < to;) {
        const { bytesRead } = await this.fh.read(buf, 0, Math.min(buf.length, to - pos), pos);
        if (bytesRead === 0) throw new MaildropError('the mailbox was cut short by another program during this session');
        pos += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
    }
  }

  /** RFC 1939's UPDATE state: removes the DELE'd messages; returns how many and the mailbox's size after. */
  async update(): Promise<{ removed: number; size: number }> {
    const fh = this.fh;
    const gone = new Set([...this.deleted].map((i) => this.messages[i]));
    if (!fh || !gone.size) return { removed: 0, size: this.snapshotSize };
    const file = path.join(this.ctx.spoolDir, this.name);
    try {
      return await this.ctx.deliverer.exclusive(this.name, () => withLocks(fh, file, this.ctx, async () => {
        const st = await checkedStat(fh, file);
        if (st.ino !== this.st!.ino || st.dev !== this.st!.dev) throw new MaildropError('the mailbox was replaced during this session; nothing was deleted');
        if (st.size < this.snapshotSize || await fingerprintOf(fh, this.snapshotSize) !== this.fingerprint) {
          throw new MaildropError('another program changed the mailbox during this session; nothing was deleted');
        }
        const keep: Array<[number, number]> = [];
        const add = (s: number, e: number): void => {
          const last = keep[keep.length - 1];
          if (last && last[1] === s) last[1] = e;
          else if (e > s) keep.push([s, e]);
        };
        const from = Math.min(...[...gone].map((m) => m.start));
        this.all.forEach((m, i) => {
          if (m.start < from || gone.has(m)) return;
          add(m.start, this.all[i + 1]?.start ?? this.snapshotSize);
        });
        add(this.snapshotSize, st.size);
        const size = await removeInPlace({ name: this.name, fh, st, from, keep, size: st.size }, this.ctx.journalDir);
        return { removed: gone.size, size };
      }));
    } catch (err) {
      throw asMaildropError(err);
    }
  }

  async close(): Promise<void> {
    await this.fh?.close().catch(() => undefined);
  }
}

/** Runs `fn` with the mailbox's fcntl lock (on `fh`) and its dotlock held. */
async function withLocks<T>(fh: FileHandle, file: string, ctx: MaildropContext, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + ctx.lockTimeoutMs;
  await lockFcntl(fh.fd, file, deadline);
  try {
    const release = await lockDotlock(file, deadline, ctx.staleLockMs, (err) => log.warn(`dotlock of mailbox ${path.basename(file)} compromised: ${err.message}`));
    try {
      return await fn();
    } finally {
      await release().catch(() => undefined);
    }
  } finally {
    unlock(fh.fd);
  }
}

/** The mailbox as the descriptor sees it, refused like delivery refuses it, and still the file at its path. */
async function checkedStat(fh: FileHandle, file: string): Promise<fs.Stats> {
  const st = await fh.stat();
  if (!st.isFile()) throw new MaildropError('the mailbox is not a regular file');
  if (st.nlink !== 1) throw new MaildropError(`the mailbox has ${st.nlink} hard links`);
  const now = await fs.promises.lstat(file).catch(() => null);
  if (!now || now.ino !== st.ino || now.dev !== st.dev) throw new MaildropError('the mailbox was replaced; try again');
  return st;
}

function asMaildropError(err: unknown): MaildropError {
  if (err instanceof MaildropError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return new MaildropError('no space left on the server; nothing was deleted');
  return new MaildropError(e.code ? `cannot read the mailbox: ${e.code}` : (e.message ?? String(err)));
}
