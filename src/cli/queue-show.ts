// The queue as mta-queue, mailq and sendmail -bp show it, and the flush request
// of mta-queue --flush and sendmail -q: one implementation for all of them.
import fs from 'node:fs';
import { Config, describeErrno } from '../config';
import { FLUSH, sendRequest } from '../queue/control';
import { queueHolder } from '../queue/pidfile';
import { Queue } from '../queue/queue';
import { CliError, EX } from './common';
import { printable } from '../text';

/** What mailq prints. */
export async function showQueue(config: Config): Promise<number> {
  const queue = new Queue(config.queueDir);
  await printQueue(queue, listQueue(queue), config.maxQueueLifetime);
  return EX.OK;
}

/** Asks the running mtad to retry every waiting message now (mta-queue --flush, sendmail -q). */
export async function requestFlush(queueDir: string, running: boolean, waiting: number, owner?: { uid: number; gid: number }): Promise<void> {
  if (!running) {
    process.stdout.write('mtad is not running on this queue: it retries every waiting message when it starts\n');
    return;
  }
  await sendRequest(queueDir, FLUSH, 'flush', owner);
  process.stdout.write(`flush requested: mtad retries ${waiting} waiting message(s) now (held ones stay held); see its log\n`);
}

/** sendmail -q: the flush of mta-queue --flush. */
export async function flushQueue(config: Config): Promise<number> {
  const queue = new Queue(config.queueDir);
  const ids = listQueue(queue);
  try {
    await requestFlush(config.queueDir, queueHolder(config.queueDir) !== null, ids.length, ownerToWrite(queue));
  } catch (err) {
    throw new CliError(`cannot ask mtad to flush the queue: ${describeErrno(err)} (run it as root, or as the user mtad runs as)`, EX.NOPERM);
  }
  return EX.OK;
}

export function listQueue(queue: Queue): string[] {
  try {
    return queue.listActive();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') return [];
    throw new CliError(`cannot read the queue ${queue.activeDir}: ${describeErrno(err)}` +
      `${e.code === 'EACCES' ? ' (run it as root, or as the user mtad runs as)' : ''}`, EX.NOPERM);
  }
}

/** Root writing into the queue must leave files that the daemon's user (the queue's owner) can rewrite. */
export function ownerToWrite(queue: Queue): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const st = fs.statSync(queue.activeDir);
    return st.uid === 0 ? undefined : { uid: st.uid, gid: st.gid };
  } catch {
    return undefined;
  }
}

/** `lifetime`: MTAD_MAX_QUEUE_LIFETIME, to say when each message expires. */
export async function printQueue(queue: Queue, ids: string[], lifetime: number): Promise<void> {
  if (!ids.length) {
    process.stdout.write('mail queue is empty\n');
    return;
  }
  process.stdout.write(`${'ID'.padEnd(10)}  ${'SIZE'.padStart(9)}  ${'AGE'.padStart(7)}  SENDER / RECIPIENTS\n`);
  let bytes = 0;
  let held = 0;
  let shown = 0;
  const pad = ' '.repeat(10 + 2 + 9 + 2 + 7 + 2);
  const all = await Promise.all(ids.map((id) => queue.load(id).catch(() => null)));
  {
    all.forEach((l) => {
      if (!l) return; // delivered between the listing and now
      shown++;
      const { envelope: e, body } = l.message;
      const s = l.state;
      bytes += body.length;
      if (s.held) held++;
      const done = new Set(s.done);
      process.stdout.write(`${e.id}  ${String(body.length).padStart(9)}  ${age(Date.parse(e.received)).padStart(7)}  <${printable(e.sender, { show: 'escape' })}>\n`);
      for (const r of e.recipients) {
        const bounced = s.bounced?.[r.mailbox];
        process.stdout.write(`${pad}-> <${printable(r.address, { show: 'escape' })}>${bounced ? ` (bounced: ${bounced})` : done.has(r.mailbox) ? ' (delivered)' : ''}\n`);
      }
      const next = s.nextAttempt ? Date.parse(s.nextAttempt) - Date.now() : null;
      if (s.lastReason) {
        process.stdout.write(`${pad}deferred: ${s.lastReason} (${s.attempts} attempt(s)` +
          `${!s.held && next !== null ? `, next ${next > 0 ? `in ${age(Date.now() - next)}` : 'now'}` : ''})\n`);
      }
      if (s.held) process.stdout.write(`${pad}HELD: not retried until mta-queue --release ${e.id}\n`);
      // What MTAD_MAX_QUEUE_LIFETIME will do to it (a report to postmaster or a delay warning is dropped).
      const left = Date.parse(e.received) + lifetime * 1000 - Date.now();
      const then = e.notice === 'postmaster' || e.notice === 'delay' ? 'dropped' : 'bounced';
      process.stdout.write(`${pad}${left > 0 ? `expires in ${age(Date.now() - left)}` : 'expired'}: then ${then}\n`);
    });
    process.stdout.write(`-- ${shown} message(s), ${bytes} bytes${held ? `, ${held} held` : ''}\n`);
  }
}

/** "2h05m", "3m07s", "12s": how long ago `then` was. */
function age(then: number): string {
  const s = Math.max(0, Math.round((Date.now() - then) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor(s / 3600) % 24).padStart(2, '0')}h`;
}
