// The delivery agent: turns one accepted message into one mbox entry per mailbox,
// and keeps invariant 2. A message is first delivered straight into the
// mailboxes (each append fsync'd); only if some mailbox cannot be written now is
// it committed to the queue and retried with backoff. Either way the client hears
// 250 only after the message is on stable storage.
import type { Config } from '../config';
import { log } from '../log';
import { Directory, POSTMASTER } from '../policy';
import { Queue, QueuedMessage, QueueState, Recipient } from '../queue/queue';
import type { Deliverer } from './deliverer';

/** A failure to make a message durable, with the reply the client gets. */
export class TempFailure extends Error {
  constructor(readonly code: number, readonly enhanced: string, text: string) {
    super(text);
  }
}

export class DeliveryAgent {
  private timers = new Map<string, NodeJS.Timeout>();
  private running = new Set<Promise<unknown>>();
  private closing = false;

  constructor(
    private readonly config: Config,
    private readonly queue: Queue,
    private readonly deliverer: Deliverer,
    private readonly directory: () => Promise<Directory>,
  ) {}

  /**
   * Delivers a just-received message, or queues it. Resolves once it is durable;
   * throws TempFailure (a 4xx for the client) when it could be made neither.
   */
  accept(msg: QueuedMessage): Promise<void> {
    return this.track(this.acceptNow(msg));
  }

  private async acceptNow(msg: QueuedMessage): Promise<void> {
    const id = msg.envelope.id;
    const { done, reason } = await this.attempt(msg, new Set());
    if (reason === null) {
      if (msg.body.kind === 'file') await this.queue.discardTmp(id).catch(() => undefined);
      log.info(`${id}: removed`);
      return;
    }
    const state: QueueState = { done: [...done], attempts: 1, lastReason: reason };
    state.nextAttempt = new Date(Date.now() + this.backoff(1)).toISOString();
    try {
      await this.queue.commit(msg, state);
    } catch (err) {
      await this.queue.discardTmp(id).catch(() => undefined);
      const e = err as NodeJS.ErrnoException;
      log.warn(`${id}: cannot write the queue file: ${e.code ?? e.message}`);
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
        throw new TempFailure(452, '4.3.1', 'Insufficient system storage');
      }
      throw new TempFailure(451, '4.3.0', 'Local error in processing, try again later');
    }
    log.info(`${id}: queued for retry (${reason})`);
    this.schedule(id, this.backoff(1));
  }

  /** Delivers the message on start-up queue files, after a crash or a restart. */
  recover(): void {
    const ids = this.queue.listActive();
    if (ids.length) log.info(`queue: ${ids.length} message(s) to deliver`);
    ids.forEach((id) => this.schedule(id, 0));
  }

  /** Stops retrying and waits for deliveries in progress. */
  async close(): Promise<void> {
    this.closing = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    while (this.running.size) await Promise.allSettled([...this.running]);
    await this.deliverer.idle();
  }

  /** Tries every mailbox not yet done; returns the mailboxes done and the first reason for a deferral. */
  private async attempt(msg: QueuedMessage, done: Set<string>): Promise<{ done: Set<string>; reason: string | null }> {
    const { envelope } = msg;
    const started = Date.parse(envelope.received);
    let reason: string | null = null;
    await Promise.all(uniqueMailboxes(envelope.recipients).filter((r) => !done.has(r.mailbox)).map(async (r) => {
      const deliveredTo = `${r.mailbox}@${this.config.hostname}`;
      const outcome = await this.deliverer.deliver(r.mailbox, { sender: envelope.sender, deliveredTo, body: msg.body });
      const delay = ((Date.now() - started) / 1000).toFixed(2);
      const orig = r.address.toLowerCase() === deliveredTo ? '' : `, orig_to=<${r.address}>`;
      if (outcome.ok) {
        done.add(r.mailbox);
        log.info(`${envelope.id}: to=<${deliveredTo}>${orig}, relay=local, delay=${delay}, dsn=2.0.0, status=sent (delivered to mailbox)`);
      } else {
        reason ??= outcome.error.message;
        log.info(`${envelope.id}: to=<${deliveredTo}>${orig}, relay=local, delay=${delay}, dsn=${outcome.error.enhanced}, status=deferred (${outcome.error.message})`);
      }
    }));
    return { done, reason };
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
    if (this.closing) return;
    let loaded;
    try {
      loaded = await this.queue.load(id);
    } catch (err) {
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

