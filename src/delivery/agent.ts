// The delivery agent: turns one accepted message into one mbox entry per mailbox,
// and keeps invariant 2. A message is first delivered straight into the
// mailboxes (each append fsync'd); only if some mailbox cannot be written now is
// it committed to the queue and retried with backoff. Either way the client hears
// 250 only after the message is on stable storage.
import fs from 'node:fs';
import type { Config } from '../config';
import { log } from '../log';
import { Directory, POSTMASTER } from '../policy';
import { controlDir, FLUSH, lockFile, MessageLocks, takeRequests } from '../queue/control';
import { Queue, QueuedMessage, QueueState, Recipient } from '../queue/queue';
import type { Deliverer } from './deliverer';
import type { DeliveryError } from './mailbox';

/** A failure to make a message durable, with the reply the client gets. */
export class TempFailure extends Error {
  constructor(readonly code: number, readonly enhanced: string, text: string) {
    super(text);
  }
}

/** What the client hears when the message could not be written to disk: a full disk is 452 4.3.1, anything else 451. */
export function storageFailure(err: unknown): TempFailure {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return new TempFailure(452, '4.3.1', 'Insufficient system storage');
  return new TempFailure(451, '4.3.0', 'Local error in processing, try again later');
}

export class DeliveryAgent {
  private timers = new Map<string, NodeJS.Timeout>();
  private running = new Set<Promise<unknown>>();
  private closing = false;
  /** Messages being retried right now: one retry per message at a time (the fcntl lock cannot tell us apart). */
  private busy = new Set<string>();
  private readonly locks: MessageLocks;
  private watcher: fs.FSWatcher | null = null;
  private control: Promise<void> | null = null;
  private controlAgain = false;

  constructor(
    private readonly config: Config,
    private readonly queue: Queue,
    private readonly deliverer: Deliverer,
    private readonly directory: () => Promise<Directory>,
  ) {
    this.locks = new MessageLocks(lockFile(queue.dir));
  }

  /**
   * Delivers a just-received message, or queues it. Resolves once it is durable;
   * throws TempFailure (a 4xx for the client) when it could be made neither.
   */
  accept(msg: QueuedMessage): Promise<void> {
    return this.track(this.acceptNow(msg));
  }

  /** Whether `mailbox` is at or over MTAD_MAILBOX_SIZE_LIMIT (for RCPT). */
  isFull(mailbox: string): Promise<boolean> {
    return this.deliverer.isFull(mailbox);
  }

  private async acceptNow(msg: QueuedMessage): Promise<void> {
    const id = msg.envelope.id;
    const { done, reason, deferred } = await this.attempt(msg, new Set());
    if (reason === null) {
      if (msg.body.kind === 'file') await this.queue.discardTmp(id).catch(() => undefined);
      log.info(`${id}: removed`);
      return;
    }
    // No mailbox had room: the client hears so and keeps the message, as at RCPT; nothing is queued.
    if (!done.size && [...deferred.values()].every((e) => e.enhanced === '4.2.2')) {
      if (msg.body.kind === 'file') await this.queue.discardTmp(id).catch(() => undefined);
      log.info(`${id}: not queued: ${reason}`);
      throw new TempFailure(452, '4.2.2', 'Mailbox full');
    }
    const state: QueueState = { done: [...done], attempts: 1, lastReason: reason };
    state.nextAttempt = new Date(Date.now() + this.backoff(1)).toISOString();
    try {
      await this.queue.commit(msg, state);
    } catch (err) {
      await this.queue.discardTmp(id).catch(() => undefined);
      const e = err as NodeJS.ErrnoException;
      log.warn(`${id}: cannot write the queue file: ${e.code ?? e.message}`);
      throw storageFailure(err);
    }
    log.info(`${id}: queued for retry (${reason})`);
    this.schedule(id, this.backoff(1));
  }

  /**
   * Delivers the message on start-up queue files, after a crash or a restart,
   * then follows mta-queue's requests. Requests left from before the start are
   * covered by this pass (every message is looked at again), so they are dropped.
   */
  async recover(): Promise<void> {
    await takeRequests(this.queue.dir);
    const ids = this.queue.listActive();
    if (ids.length) log.info(`queue: ${ids.length} message(s) to deliver`);
    ids.forEach((id) => this.schedule(id, 0));
    try {
      this.watcher = fs.watch(controlDir(this.queue.dir), () => this.followRequests());
      this.watcher.on('error', (err) => log.warn(`queue: cannot watch ${controlDir(this.queue.dir)} for mta-queue: ${err.message}`));
    } catch (err) {
      log.warn(`queue: cannot watch ${controlDir(this.queue.dir)} for mta-queue: ${(err as Error).message}`);
    }
  }

  /** Stops retrying and waits for deliveries in progress. */
  async close(): Promise<void> {
    this.closing = true;
    this.watcher?.close();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    while (this.running.size) await Promise.allSettled([...this.running]);
    await this.deliverer.idle();
    await this.locks.close();
  }

  /** Reads and carries out mta-queue's requests; one pass at a time, another if more came meanwhile. */
  private followRequests(): void {
    if (this.closing) return;
    if (this.control) { this.controlAgain = true; return; }
    this.control = this.track((async () => {
      do {
        this.controlAgain = false;
        for (const r of await takeRequests(this.queue.dir)) {
          if (r.name === FLUSH) await this.flush();
          else await this.reconsider(r.name, r.action);
        }
      } while (this.controlAgain && !this.closing);
    })().catch((err) => { log.warn(`queue: cannot follow mta-queue's request: ${(err as Error).message}`); })
      .finally(() => { this.control = null; }));
  }

  private async flush(): Promise<void> {
    const ids = this.queue.listActive().filter((id) => !this.busy.has(id));
    log.info(`queue: flush requested: retrying ${ids.length} message(s) now (held ones stay held)`);
    for (const id of ids) this.schedule(id, 0);
  }

  /** Looks at one message again after mta-queue held, released or deleted it. */
  private async reconsider(id: string, action: string): Promise<void> {
    // A retry in progress took the message's lock after mta-queue let go of it: it sees the change.
    if (this.busy.has(id)) return;
    let state;
    try {
      state = (await this.queue.load(id)).state;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      clearTimeout(this.timers.get(id));
      this.timers.delete(id);
      if (action === 'delete') log.info(`${id}: removed (deleted with mta-queue)`);
      return;
    }
    if (state.held) {
      clearTimeout(this.timers.get(id));
      this.timers.delete(id);
      if (action === 'hold') log.info(`${id}: placed on hold (mta-queue)`);
      return;
    }
    const when = state.nextAttempt ? Math.max(0, Date.parse(state.nextAttempt) - Date.now()) : 0;
    if (action === 'release') log.info(`${id}: released from hold (mta-queue)`);
    this.schedule(id, when);
  }

  /** Tries every mailbox not yet done; returns the mailboxes done and the first reason for a deferral. */
  private async attempt(msg: QueuedMessage, done: Set<string>): Promise<{ done: Set<string>; reason: string | null; deferred: Map<string, DeliveryError> }> {
    const { envelope } = msg;
    const started = Date.parse(envelope.received);
    let reason: string | null = null;
    const deferred = new Map<string, DeliveryError>();
    await Promise.all(uniqueMailboxes(envelope.recipients).filter((r) => !done.has(r.mailbox)).map(async (r) => {
      const deliveredTo = `${r.mailbox}${r.extension ?? ''}@${this.config.hostname}`;
      const outcome = await this.deliverer.deliver(r.mailbox, { sender: envelope.sender, deliveredTo, body: msg.body });
      const delay = ((Date.now() - started) / 1000).toFixed(2);
      const orig = r.address.toLowerCase() === deliveredTo ? '' : `, orig_to=<${r.address}>`;
      if (outcome.ok) {
        done.add(r.mailbox);
        log.info(`${envelope.id}: to=<${deliveredTo}>${orig}, relay=local, delay=${delay}, dsn=2.0.0, status=sent (delivered to mailbox)`);
      } else {
        reason ??= outcome.error.message;
        deferred.set(r.mailbox, outcome.error);
        log.info(`${envelope.id}: to=<${deliveredTo}>${orig}, relay=local, delay=${delay}, dsn=${outcome.error.enhanced}, status=deferred (${outcome.error.message})`);
      }
    }));
    return { done, reason, deferred };
  }

  private schedule(id: string, delayMs: number): void {
    if (this.closing) return;
    clearTimeout(this.timers.get(id));
    const t = setTimeout(() => {
      this.timers.delete(id);
      void this.track(this.retry(id));
    }, delayMs);
    this.timers.set(id, t);
  }

  private async retry(id: string): Promise<void> {
    if (this.closing || this.busy.has(id)) return;
    this.busy.add(id);
    let locked = false;
    try {
      // mta-queue holds a message's lock for milliseconds; if it is still busy, come back soon.
      locked = await this.locks.lock(id, Date.now() + 1000);
      if (!locked) {
        this.schedule(id, 1000);
        return;
      }
      await this.retryLocked(id);
    } catch (err) {
      log.warn(`${id}: retry failed: ${(err as Error).message}; trying again later`);
      this.schedule(id, this.backoff(1));
    } finally {
      // Cleared before the lock goes, so a request mta-queue sends after taking the lock finds us not busy.
      this.busy.delete(id);
      if (locked) await this.locks.unlock(id).catch(() => undefined);
    }
  }

  private async retryLocked(id: string): Promise<void> {
    let loaded;
    try {
      loaded = await this.queue.load(id);
    } catch (err) {
      // Deleted with mta-queue while this retry was waiting for the lock.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      log.warn(`${id}: cannot read the queue file: ${(err as Error).message}`);
      return;
    }
    const { message, state } = loaded;
    if (state.held) return;
    const done = new Set(state.done);
    await this.bounceVanishedUsers(message, done);
    const { reason } = await this.attempt(message, done);
    if (reason === null) {
      await this.queue.remove(id);
      log.info(`${id}: removed`);
      return;
    }
    const attempts = state.attempts + 1;
    const delay = this.backoff(attempts);
    const next: QueueState = { ...state, done: [...done], attempts, lastReason: reason, nextAttempt: new Date(Date.now() + delay).toISOString() };
    try {
      await this.queue.saveState(id, next);
    } catch (err) {
      log.warn(`${id}: cannot update the queue state: ${(err as Error).message}`);
    }
    this.schedule(id, delay);
  }

  /** A user removed since the message was queued can no longer receive it. */
  private async bounceVanishedUsers(message: QueuedMessage, done: Set<string>): Promise<void> {
    const dir = await this.directory();
    for (const r of uniqueMailboxes(message.envelope.recipients)) {
      if (done.has(r.mailbox) || r.mailbox === POSTMASTER || dir.users.has(r.mailbox)) continue;
      done.add(r.mailbox);
      log.info(`${message.envelope.id}: to=<${r.mailbox}@${this.config.hostname}>, relay=local, dsn=5.1.1, status=bounced (user unknown: removed since the message was queued)`);
    }
  }

  private backoff(attempts: number): number {
    const s = Math.min(this.config.retryMaxDelay, this.config.retryMinDelay * 2 ** Math.max(0, attempts - 1));
    return Math.round(s * 1000);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.running.add(p);
    const forget = (): void => { this.running.delete(p); };
    p.then(forget, forget);
    return p;
  }
}

function uniqueMailboxes(recipients: Recipient[]): Recipient[] {
  const seen = new Set<string>();
  return recipients.filter((r) => !seen.has(r.mailbox) && seen.add(r.mailbox));
}

