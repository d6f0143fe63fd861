// mta-queue: mailq and postsuper for mtad. Lists what waits in the queue, and
// holds, releases, deletes or retries it, safely beside a running mtad: each
// change is made under the message's lock (src/queue/control.ts), then mtad is
// told through <queue>/control/ and re-reads the message itself.
import fs from 'node:fs';
import { queueHolder } from '../queue/pidfile';
import { describeErrno, loadConfig } from '../config';
import { quietLog } from '../log';
import { FLUSH, lockFile, MessageLocks, sendRequest } from '../queue/control';
import { Queue, QueueState } from '../queue/queue';
import { CliError, EX, runMain, VERSION } from './common';

const USAGE = `usage: mta-queue [--flush] [--hold ID] [--release ID] [--delete ID] [--help] [--version]

Without options, lists the mail waiting in mtad's queue (MTAD_QUEUE_DIR): id,
size, age, sender, recipients, why the last attempt failed, and whether it is
held. Works while mtad runs; run it as root or as the user mtad runs as.
  --flush       ask the running mtad to retry every waiting message now
  --hold ID     keep message ID in the queue, not retried until released
  --release ID  release a held message: mtad retries it at once
  --delete ID   remove message ID from the queue for good (ALL for every message)
  --help        show this help
  --version     show the version
ID may be given more than once; ALL stands for every message in the queue.`;

type Op = { action: 'hold' | 'release' | 'delete'; id: string };

runMain('mta-queue', async (argv) => {
  quietLog();
  const ops: Op[] = [];
  let flush = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
    if (a === '--version') { process.stdout.write(`mta-queue (mtad) ${VERSION}\n`); return EX.OK; }
    if (a === '--flush' || a === '-f') { flush = true; continue; }
    const m = /^--(hold|release|delete)(?:=(.*))?$/.exec(a);
    if (!m) throw new CliError(`unknown argument "${a}"\n${USAGE}`, EX.USAGE);
    const id = m[2] ?? argv[++i];
    if (id === undefined) throw new CliError(`option ${a} needs a queue id\n${USAGE}`, EX.USAGE);
    const norm = id.toUpperCase();
    if (norm !== 'ALL' && !Queue.isId(norm)) throw new CliError(`"${id}" is not a queue id (10 hex digits, as mta-queue lists them)`, EX.USAGE);
    ops.push({ action: m[1] as Op['action'], id: norm });
  }

  const config = loadConfig();
  const queue = new Queue(config.queueDir);
  const ids = listQueue(queue);
  if (!ops.length && !flush) {
    await printQueue(queue, ids);
    return EX.OK;
  }

  const running = queueHolder(config.queueDir) !== null;
  const owner = ownerToWrite(queue);
  const locks = new MessageLocks(lockFile(config.queueDir), owner);
  let status: number = EX.OK;
  try {
    for (const op of ops) {
      for (const id of op.id === 'ALL' ? ids : [op.id]) {
        const r = await change(queue, locks, op.action, id, owner, config.lockTimeout);
        process.stdout.write(`${r.text}\n`);
        if (r.status !== EX.OK) status = r.status;
        else if (running) await sendRequest(config.queueDir, id, op.action, owner);
      }
    }
  } finally {
    await locks.close();
  }
  if (flush) {
    if (!running) {
      process.stdout.write('mtad is not running on this queue: it retries every waiting message when it starts\n');
    } else {
      await sendRequest(config.queueDir, FLUSH, 'flush', owner);
      process.stdout.write(`flush requested: mtad retries ${ids.length} waiting message(s) now (held ones stay held); see its log\n`);
    }
  }
  return status;
});

function listQueue(queue: Queue): string[] {
  try {
    return queue.listActive();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') return [];
    throw new CliError(`cannot read the queue ${queue.activeDir}: ${describeErrno(err)}` +
      `${e.code === 'EACCES' ? ' (run mta-queue as root, or as the user mtad runs as)' : ''}`, EX.NOPERM);
  }
}

async function change(
  queue: Queue, locks: MessageLocks, action: Op['action'], id: string,
  owner: { uid: number; gid: number } | undefined, lockTimeout: number,
): Promise<{ text: string; status: number }> {
  // A delivery attempt holds the lock while it waits for mailbox locks: wait that long, and a bit.
  if (!(await locks.lock(id, Date.now() + (lockTimeout * 2 + 5) * 1000))) {
    return { text: `${id}: being delivered right now; try again in a moment`, status: EX.TEMPFAIL };
  }
  try {
    let state: QueueState;
    try {
      state = (await queue.load(id)).state;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { text: `${id}: not in the queue (delivered, or removed)`, status: EX.NOINPUT };
      throw err;
    }
    if (action === 'delete') {
      await queue.remove(id);
      return { text: `${id}: removed`, status: EX.OK };
    }
    if (action === 'hold') {
      if (state.held) return { text: `${id}: already on hold`, status: EX.OK };
      await queue.saveState(id, { ...state, held: true }, true, owner);
      return { text: `${id}: placed on hold`, status: EX.OK };
    }
    if (!state.held) return { text: `${id}: not on hold`, status: EX.OK };
    await queue.saveState(id, { ...state, held: false, nextAttempt: new Date().toISOString() }, true, owner);
    return { text: `${id}: released from hold`, status: EX.OK };
  } finally {
    await locks.unlock(id).catch(() => undefined);
  }
}

/** Root writing into the queue must leave files that the daemon's user (the queue's owner) can rewrite. */
function ownerToWrite(queue: Queue): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const st = fs.statSync(queue.activeDir);
    return st.uid === 0 ? undefined : { uid: st.uid, gid: st.gid };
  } catch {
    return undefined;
  }
}

async function printQueue(queue: Queue, ids: string[]): Promise<void> {
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
      process.stdout.write(`${e.id}  ${String(body.length).padStart(9)}  ${age(Date.parse(e.received)).padStart(7)}  <${e.sender}>\n`);
      for (const r of e.recipients) {
        process.stdout.write(`${pad}-> <${r.address}>${done.has(r.mailbox) ? ' (delivered)' : ''}\n`);
      }
      const next = s.nextAttempt ? Date.parse(s.nextAttempt) - Date.now() : null;
      if (s.lastReason) {
        process.stdout.write(`${pad}deferred: ${s.lastReason} (${s.attempts} attempt(s)` +
          `${!s.held && next !== null ? `, next ${next > 0 ? `in ${age(Date.now() - next)}` : 'now'}` : ''})\n`);
      }
      if (s.held) process.stdout.write(`${pad}HELD: not retried until mta-queue --release ${e.id}\n`);
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
