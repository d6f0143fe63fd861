// Appends to mailboxes, one writer per mailbox (the in-process mutex of
// invariant 4). Deliveries that arrive while a mailbox is being written wait and
// then go in together: one lock acquisition and one fsync for the whole batch.
// That is where a busy single mailbox is won.
import fs from 'node:fs';
import path from 'node:path';
import { log } from '../log';
import { Body, DeliveryError, Entry, LockedMailbox } from './mailbox';
import { ENTRY_SUFFIX, entryPrefix } from './mbox';

export interface Delivery {
  sender: string;
  deliveredTo: string;
  body: Body;
}

export type Outcome = { ok: true } | { ok: false; error: DeliveryError };

interface Waiting {
  delivery: Delivery;
  resolve: (o: Outcome) => void;
}

interface MailboxWriter {
  waiting: Waiting[];
  running: boolean;
  /** Set while the writer lingers on a locked, idle mailbox: a new delivery calls it. */
  wake?: () => void;
}

const MAX_BATCH_ENTRIES = 512;
const MAX_BATCH_BYTES = 32 * 1024 * 1024;
// A busy mailbox stays locked across batches for at most this long, then is
// released so that mail readers waiting for it get their turn.
const MAX_HOLD_MS = 100;
// Under load the next message is usually a few ms away, and taking the locks
// again (open, two locks, three stats, and a record rewrite and sync at release)
// costs more than an append: wait this long for it before releasing. One session
// sending one message per connection needs about 4 to 8 ms between messages
// here: 5 ms released the locks after most of them. A reader waits no longer
// than this after the last delivery, and never more than MAX_HOLD_MS in all.
const LINGER_MS = 25;

export interface DelivererOptions {
  spoolDir: string;
  lockTimeoutMs: number;
  staleLockMs: number;
  createMode: number;
  /** Where an append in progress is recorded, one file per mailbox (the queue's appending/). */
  intentDir: string;
  /** Largest mailbox in bytes (MTAD_MAILBOX_SIZE_LIMIT); 0 = none. */
  sizeLimit?: number;
}

export class Deliverer {
  private writers = new Map<string, MailboxWriter>();
  private active = 0;
  private idleWaiters: Array<() => void> = [];
  /** Per mailbox, the end of the last turn taken: appends and exclusive() users queue behind it. */
  private turns = new Map<string, Promise<void>>();

  constructor(private readonly opts: DelivererOptions) {}

  /** Appends one message to one mailbox; never rejects. */
  deliver(mailbox: string, delivery: Delivery): Promise<Outcome> {
    return new Promise((resolve) => {
      let w = this.writers.get(mailbox);
      if (!w) {
        w = { waiting: [], running: false };
        this.writers.set(mailbox, w);
      }
      w.waiting.push({ delivery, resolve });
      if (!w.running) void this.run(mailbox, w);
      else w.wake?.();
    });
  }

  /** Resolves once no append is in progress or waiting. */
  idle(): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /**
   * What RCPT (and the start-up check) needs to know of a mailbox, from one
   * lstat: why mtad, as the user it runs as, could not write it now (so that it
   * is refused with a 4xx rather than found by a retry loop after the 250), and
   * whether it is at or over the size limit. Synchronous: a syscall of
   * microseconds, where an async one is a thread-pool round trip on every RCPT.
   * Links and special files are left to the append, which refuses them; a
   * missing mailbox is empty, and created at the first delivery.
   */
  mailboxState(mailbox: string): { unwritable: string | null; full: boolean } {
    const file = this.mailboxPath(mailbox);
    let st: fs.Stats | undefined;
    try { st = fs.lstatSync(file, { throwIfNoEntry: false }); } catch { return { unwritable: null, full: false }; }
    if (!st?.isFile()) return { unwritable: null, full: false };
    const limit = this.opts.sizeLimit ?? 0;
    return { unwritable: writableBy(file, st) ? null : cannotWrite(file, st), full: limit > 0 && st.size >= limit };
  }

  /**
   * Runs `fn` while no append to `mailbox` is in progress and none starts: the
   * in-process part of the mailbox's lock, for POP3's snapshot and removal.
   */
  async exclusive<T>(mailbox: string, fn: () => Promise<T>): Promise<T> {
    const done = await this.turn(mailbox);
    try {
      return await fn();
    } finally {
      done();
    }
  }

  /** Waits for the mailbox's turn (first come, first served); returns the release. */
  private async turn(mailbox: string): Promise<() => void> {
    const before = this.turns.get(mailbox) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => { release = r; });
    const after = before.then(() => mine);
    this.turns.set(mailbox, after);
    await before;
    return () => {
      release();
      if (this.turns.get(mailbox) === after) this.turns.delete(mailbox);
    };
  }

  mailboxPath(mailbox: string): string {
    return path.join(this.opts.spoolDir, mailbox);
  }

  private async run(mailbox: string, w: MailboxWriter): Promise<void> {
    w.running = true;
    this.active++;
    try {
      while (w.waiting.length) {
        const done = await this.turn(mailbox);
        let mb: LockedMailbox;
        try {
          mb = await LockedMailbox.open(this.mailboxPath(mailbox), {
            deadline: Date.now() + this.opts.lockTimeoutMs,
            staleLockMs: this.opts.staleLockMs,
            createMode: this.opts.createMode,
            intentFile: path.join(this.opts.intentDir, mailbox),
            onLockCompromised: (err) => log.warn(`dotlock of mailbox ${mailbox} compromised: ${err.message}`),
          });
        } catch (err) {
          done();
          const outcome: Outcome = { ok: false, error: err as DeliveryError };
          for (const b of takeBatch(w.waiting)) b.resolve(outcome);
          continue;
        }
        // Batches taken once the lock is held, so that what arrived meanwhile goes in too.
        const held = Date.now();
        try {
          do {
            const now = new Date();
            const all = takeBatch(w.waiting).map((b) => ({
              ...b,
              entry: { prefix: entryPrefix(b.delivery.sender, b.delivery.deliveredTo, now), body: b.delivery.body, suffix: ENTRY_SUFFIX },
            }));
            const batch = this.withinLimit(mailbox, mb.bytes, all);
            if (!batch.length) continue;
            const entries: Entry[] = batch.map((b) => b.entry);
            let outcome: Outcome;
            try {
              await mb.append(entries);
              outcome = { ok: true };
            } catch (err) {
              outcome = { ok: false, error: err as DeliveryError };
            }
            for (const b of batch) b.resolve(outcome);
            if (!outcome.ok) break;
          } while (await this.more(w, held));
        } finally {
          await mb.close();
          done();
        }
      }
    } finally {
      w.running = false;
      w.wake = undefined;
      this.writers.delete(mailbox);
      if (--this.active === 0) this.idleWaiters.splice(0).forEach((r) => r());
    }
  }

  /**
   * The deliveries that fit under the mailbox size limit, in order; the others are
   * answered "mailbox full" (4.2.2: the user can make room) before a byte is written.
   */
  private withinLimit<T extends Waiting & { entry: Entry }>(mailbox: string, size: number, batch: T[]): T[] {
    const limit = this.opts.sizeLimit ?? 0;
    if (!limit) return batch;
    let total = size;
    return batch.filter((b) => {
      const len = b.entry.prefix.length + b.entry.body.length + b.entry.suffix.length;
      if (total + len <= limit) { total += len; return true; }
      b.resolve({ ok: false, error: new DeliveryError('4.2.2', `mailbox ${mailbox} is full (${size} bytes, limit ${limit})`) });
      return false;
    });
  }

  /** Whether to append again under the locks held since `held`, waiting briefly for a next delivery. */
  private async more(w: MailboxWriter, held: number): Promise<boolean> {
    if (Date.now() - held >= MAX_HOLD_MS) return false;
    // The rest of this turn of the event loop first: the final dots of other
    // sessions read in the same poll join the next batch, which then shares its syncs.
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (w.waiting.length) return true;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, LINGER_MS);
      w.wake = () => { clearTimeout(t); resolve(); };
    });
    w.wake = undefined;
    return w.waiting.length > 0 && Date.now() - held < MAX_HOLD_MS;
  }
}

function takeBatch(waiting: Waiting[]): Waiting[] {
  let bytes = 0;
  let n = 0;
  while (n < waiting.length && n < MAX_BATCH_ENTRIES) {
    bytes += waiting[n].delivery.body.length;
    n++;
    if (bytes >= MAX_BATCH_BYTES) break;
  }
  return waiting.splice(0, n);
}

/** Whether this process may write the file: its owner's write bit when it is ours, else what access(2) says. */
function writableBy(file: string, st: fs.Stats): boolean {
  const euid = process.geteuid?.();
  // The owner's bits alone decide for the owner (ACLs keep them as the owner entry); root and others ask the kernel.
  if (euid !== undefined && euid !== 0 && st.uid === euid) return (st.mode & 0o200) !== 0;
  try {
    fs.accessSync(file, fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function cannotWrite(file: string, st: fs.Stats): string {
  return `mailbox ${file}: mtad (uid ${process.geteuid?.()}) cannot write it (owner uid ${st.uid}, group ${st.gid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
}
