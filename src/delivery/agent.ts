// The delivery agent: turns one accepted message into one mbox entry per mailbox,
// and keeps invariant 2. A message is first delivered straight into the
// mailboxes (each append fsync'd); only if some mailbox cannot be written now is
// it committed to the queue and retried with backoff. Either way the client hears
// 250 only after the message is on stable storage. What cannot be delivered
// (a user removed meanwhile, or still deferred after MTAD_MAX_QUEUE_LIFETIME) is
// reported in an RFC 3464 bounce, a message accepted here like any other.
import fs from 'node:fs';
import type { Config } from '../config';
import { log } from '../log';
import { Directory, LocalNames, POSTMASTER, resolveRecipient } from '../policy';
import { controlDir, FLUSH, lockFile, MessageLocks, takeRequests } from '../queue/control';
import { Envelope, Queue, QueuedMessage, QueueState, Recipient } from '../queue/queue';
import type { Deliverer } from './deliverer';
import { deliveryReport, headerSection } from './dsn';
import type { DeliveryError } from './mailbox';
import { encodeMessage } from './mbox';

/** A recipient given up on, and why. */
interface Failure {
  recipient: Recipient;
  enhanced: string;
  reason: string;
}

/** Where a report about a message goes: its sender's mailboxes, or postmaster's (with why). */
interface ReportRoute {
  to: string;
  recipients: Recipient[];
  notice: NonNullable<Envelope['notice']>;
  postmasterBecause?: string;
  /** Postfix's words: a "sender" or a "postmaster" notification, and where an expired message went. */
  whose: 'sender' | 'postmaster';
  fate: string;
}

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
    /** Our domains, to tell a local sender (who gets its bounces) from a remote one. */
    private readonly local: LocalNames,
  ) {
    this.locks = new MessageLocks(lockFile(queue.dir));
  }

  /**
   * Delivers a just-received message, or queues it. Resolves once it is durable;
   * throws TempFailure (a 4xx for the client) when it could be made neither.
   */
  accept(msg: QueuedMessage): Promise<void> {
    return this.track(this.acceptNow(msg, true));
  }

  /** Why `mailbox` cannot be written now, or null, and whether it is at or over MTAD_MAILBOX_SIZE_LIMIT (for RCPT). */
  mailboxState(mailbox: string): { unwritable: string | null; full: boolean } {
    return this.deliverer.mailboxState(mailbox);
  }

  /** `fromClient`: a client is waiting for the reply, and may be told that no mailbox has room. */
  private async acceptNow(msg: QueuedMessage, fromClient: boolean): Promise<void> {
    const id = msg.envelope.id;
    const { delivered, reason, deferred } = await this.attempt(msg, new Set());
    if (reason === null) {
      if (msg.body.kind === 'file') await this.queue.discardTmp(id).catch(() => undefined);
      log.info(`${id}: removed`);
      return;
    }
    // No mailbox had room: the client hears so and keeps the message, as at RCPT; nothing is queued.
    if (fromClient && !delivered.length && [...deferred.values()].every((e) => e.enhanced === '4.2.2')) {
      if (msg.body.kind === 'file') await this.queue.discardTmp(id).catch(() => undefined);
      log.info(`${id}: not queued: ${reason}`);
      throw new TempFailure(452, '4.2.2', 'Mailbox full');
    }
    const state: QueueState = { done: delivered, attempts: 1, lastReason: reason };
    const delay = this.nextDelay(1, msg.envelope, state);
    state.nextAttempt = new Date(Date.now() + delay).toISOString();
    try {
      await this.queue.commit(msg, state);
    } catch (err) {
      await this.queue.discardTmp(id).catch(() => undefined);
      const e = err as NodeJS.ErrnoException;
      log.warn(`${id}: cannot write the queue file: ${e.code ?? e.message}`);
      throw storageFailure(err);
    }
    log.info(`${id}: queued for retry (${reason})`);
    this.schedule(id, delay);
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

  /** Tries every mailbox not in `skip`; returns the mailboxes delivered, the deferred ones with why, and the first reason. */
  private async attempt(msg: QueuedMessage, skip: ReadonlySet<string>): Promise<{ delivered: string[]; reason: string | null; deferred: Map<string, DeliveryError> }> {
    const { envelope } = msg;
    const started = Date.parse(envelope.received);
    let reason: string | null = null;
    const delivered: string[] = [];
    const deferred = new Map<string, DeliveryError>();
    await Promise.all(uniqueMailboxes(envelope.recipients).filter((r) => !skip.has(r.mailbox)).map(async (r) => {
      const deliveredTo = this.deliveredTo(r);
      const outcome = await this.deliverer.deliver(r.mailbox, { sender: envelope.sender, deliveredTo, body: msg.body });
      const delay = ((Date.now() - started) / 1000).toFixed(2);
      const orig = r.address.toLowerCase() === deliveredTo ? '' : `, orig_to=<${r.address}>`;
      if (outcome.ok) {
        delivered.push(r.mailbox);
        log.info(`${envelope.id}: to=<${deliveredTo}>${orig}, relay=local, delay=${delay}, dsn=2.0.0, status=sent (delivered to mailbox)`);
      } else {
        reason ??= outcome.error.message;
        deferred.set(r.mailbox, outcome.error);
        log.info(`${envelope.id}: to=<${deliveredTo}>${orig}, relay=local, delay=${delay}, dsn=${outcome.error.enhanced}, status=deferred (${outcome.error.message})`);
      }
    }));
    return { delivered, reason, deferred };
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
    const { envelope } = message;
    const done = new Set(state.done);
    const failures = await this.vanishedUsers(message, done);
    const { delivered, reason, deferred } = await this.attempt(message, new Set([...done, ...failures.map((f) => f.recipient.mailbox)]));
    delivered.forEach((m) => done.add(m));
    const age = Date.now() - Date.parse(envelope.received);
    const expired = deferred.size > 0 && age >= this.config.maxQueueLifetime * 1000;
    if (expired) {
      for (const r of uniqueMailboxes(envelope.recipients)) {
        const e = deferred.get(r.mailbox);
        if (e) failures.push({ recipient: r, enhanced: e.enhanced, reason: `${e.message} (gave up after ${duration(age)} in the queue)` });
      }
    }
    let warnNow = !expired && deferred.size > 0 && !state.warned && this.config.delayWarning > 0 && age >= this.config.delayWarning * 1000;
    // A report that cannot be made durable gives up on nothing yet: all of it again later.
    let reported = true;
    const tryReport = async (action: 'failed' | 'delayed', list: Failure[]): Promise<boolean> => {
      try {
        await this.report(message, action, list, expired);
        return true;
      } catch (err) {
        log.warn(`${envelope.id}: cannot write the delivery status notification: ${(err as Error).message}; trying again later`);
        reported = false;
        return false;
      }
    };
    if (failures.length && !(await tryReport('failed', failures))) failures.length = 0;
    if (warnNow) {
      const late = uniqueMailboxes(envelope.recipients).filter((r) => deferred.has(r.mailbox))
        .map((r) => ({ recipient: r, enhanced: deferred.get(r.mailbox)!.enhanced, reason: deferred.get(r.mailbox)!.message }));
      warnNow = await tryReport('delayed', late);
    }
    const bounced = { ...state.bounced };
    for (const f of failures) {
      done.add(f.recipient.mailbox);
      bounced[f.recipient.mailbox] = `${f.enhanced} ${f.reason}`;
    }
    if (uniqueMailboxes(envelope.recipients).every((r) => done.has(r.mailbox))) {
      await this.queue.remove(id);
      log.info(`${id}: removed`);
      return;
    }
    const attempts = state.attempts + 1;
    const next: QueueState = {
      ...state, done: [...done], attempts, lastReason: reason ?? state.lastReason,
      ...(Object.keys(bounced).length ? { bounced } : {}),
      ...(warnNow || state.warned ? { warned: true } : {}),
    };
    // Past the lifetime, nextDelay would say "now": after a failed report, back off instead.
    const delay = reported ? this.nextDelay(attempts, envelope, next) : this.backoff(attempts);
    next.nextAttempt = new Date(Date.now() + delay).toISOString();
    try {
      await this.queue.saveState(id, next);
    } catch (err) {
      log.warn(`${id}: cannot update the queue state: ${(err as Error).message}`);
    }
    this.schedule(id, delay);
  }

  /** Recipients removed from the users file since the message was queued: a permanent failure (5.1.1). */
  private async vanishedUsers(message: QueuedMessage, done: ReadonlySet<string>): Promise<Failure[]> {
    const dir = await this.directory();
    return uniqueMailboxes(message.envelope.recipients)
      .filter((r) => !done.has(r.mailbox) && r.mailbox !== POSTMASTER && !dir.users.has(r.mailbox))
      .map((recipient) => ({ recipient, enhanced: '5.1.1', reason: 'user unknown: removed since the message was queued' }));
  }

  /**
   * Writes an RFC 3464 report about `failures` and accepts it as a new message
   * (delivered now, or queued): resolves once it is durable. Logs each
   * recipient's fate and where the report went, in Postfix's words.
   */
  private async report(message: QueuedMessage, action: 'failed' | 'delayed', failures: Failure[], expired: boolean): Promise<void> {
    const { envelope } = message;
    const route = await this.reportRoute(envelope);
    // Delay warnings are for a sender who can act on them; postmaster hears only of failures.
    if (action === 'delayed' && route?.notice !== 'sender') return;
    const delay = ((Date.now() - Date.parse(envelope.received)) / 1000).toFixed(2);
    if (action === 'failed') {
      const fate = route?.fate ?? 'discarded';
      for (const f of failures) {
        const to = this.deliveredTo(f.recipient);
        const orig = f.recipient.address.toLowerCase() === to ? '' : `, orig_to=<${f.recipient.address}>`;
        log.info(`${envelope.id}: to=<${to}>${orig}, relay=local, delay=${delay}, dsn=${f.enhanced}, ` +
          `status=${expired && !f.enhanced.startsWith('5') ? `expired, ${fate}` : 'bounced'} (${f.reason})`);
      }
    }
    if (!route) {
      log.info(`${envelope.id}: undeliverable ${envelope.notice === 'delay' ? 'delay' : 'postmaster'} notification discarded (a report about a report is never sent)`);
      return;
    }
    const now = new Date();
    const id = Queue.newId();
    const text = deliveryReport({
      id, hostname: this.config.hostname, date: now, action, to: route.to, postmasterBecause: route.postmasterBecause,
      original: { id: envelope.id, sender: envelope.sender, arrival: new Date(envelope.received), headers: await headerSection(message.body) },
      recipients: failures.map((f) => ({ final: this.deliveredTo(f.recipient), original: f.recipient.address, status: f.enhanced, diagnostic: f.reason })),
      retryUntil: new Date(Date.parse(envelope.received) + this.config.maxQueueLifetime * 1000),
    });
    const body = encodeMessage(text);
    log.info(`${envelope.id}: ${route.whose} ${action === 'failed' ? 'non-delivery' : 'delay'} notification: ${id}` +
      `${route.notice === 'postmaster' ? ` (to postmaster: ${route.postmasterBecause})` : ''}`);
    log.info(`${id}: from=<>, size=${body.length}, nrcpt=${route.recipients.length} (queue active)`);
    await this.acceptNow({
      envelope: { v: 1, id, sender: '', recipients: route.recipients, received: now.toISOString(), client: '', notice: action === 'delayed' ? 'delay' : route.notice },
      body: { kind: 'memory', chunks: [body], length: body.length },
    }, false);
  }

  /**
   * A local sender gets the report in its own mailbox. Anyone else's report goes to
   * postmaster, once: a remote sender's (mtad never relays), and a report about
   * mail with no sender (a bounce, or MAIL FROM:<>). A report to postmaster or a
   * delay warning that fails is dropped (null): reports never loop.
   */
  private async reportRoute(envelope: Envelope): Promise<ReportRoute | null> {
    if (envelope.notice === 'postmaster' || envelope.notice === 'delay') return null;
    const dir = await this.directory();
    if (envelope.sender && !envelope.notice) {
      const v = resolveRecipient(envelope.sender, envelope.sender, dir, this.local);
      if (v.ok) {
        const ext = v.extension ? { extension: v.extension } : {};
        const recipients = v.mailboxes.map((mailbox) => ({ address: envelope.sender, mailbox, ...ext }));
        return { to: envelope.sender, notice: 'sender', recipients, whose: 'sender', fate: 'returned to sender' };
      }
    }
    const pm = resolveRecipient(POSTMASTER, POSTMASTER, dir, this.local);
    const mailboxes = pm.ok ? pm.mailboxes : [POSTMASTER];
    const address = `${POSTMASTER}@${this.config.hostname}`;
    const recipients = mailboxes.map((mailbox) => ({ address, mailbox }));
    if (envelope.sender && !envelope.notice) {
      const postmasterBecause = `the sender <${envelope.sender}> is not a local user`;
      return { to: address, notice: 'postmaster', postmasterBecause, recipients, whose: 'sender', fate: 'returned to postmaster' };
    }
    const postmasterBecause = envelope.notice
      ? `the report to <${envelope.recipients[0]?.address ?? ''}> could not be delivered`
      : 'the message has no sender to return it to (MAIL FROM:<>)';
    return { to: address, notice: 'postmaster', postmasterBecause, recipients, whose: 'postmaster', fate: 'reported to postmaster' };
  }

  private deliveredTo(r: Recipient): string {
    return `${r.mailbox}${r.extension ?? ''}@${this.config.hostname}`;
  }

  /** The backoff, but never past the moment a delay warning is due or the message expires. */
  private nextDelay(attempts: number, envelope: Envelope, state: QueueState): number {
    const age = Date.now() - Date.parse(envelope.received);
    let delay = Math.min(this.backoff(attempts), this.config.maxQueueLifetime * 1000 - age);
    if (this.config.delayWarning > 0 && !state.warned) {
      const untilWarning = this.config.delayWarning * 1000 - age;
      if (untilWarning > 0) delay = Math.min(delay, untilWarning);
    }
    return Math.max(0, Math.round(delay));
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

/** "5d", "3h12m", "42s": a queue age for people. */
function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ''}`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor(s / 60) % 60 ? `${Math.floor(s / 60) % 60}m` : ''}`;
  return `${Math.floor(s / 86400)}d${Math.floor(s / 3600) % 24 ? `${Math.floor(s / 3600) % 24}h` : ''}`;
}

function uniqueMailboxes(recipients: Recipient[]): Recipient[] {
  const seen = new Set<string>();
  return recipients.filter((r) => !seen.has(r.mailbox) && seen.add(r.mailbox));
}

