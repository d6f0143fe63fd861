// mta-queue: mailq and postsuper for mtad. Lists what waits in the queue, and
// holds, releases, deletes or retries it, safely beside a running mtad: each
// change is made under the message's lock (src/queue/control.ts), then mtad is
// told through <queue>/control/ and re-reads the message itself.
import { queueHolder } from '../queue/pidfile';
import { loadConfig } from '../config';
import { quietLog } from '../log';
import { lockFile, MessageLocks, sendRequest } from '../queue/control';
import { Queue, QueueState } from '../queue/queue';
import { CliError, EX, runMain, VERSION } from './common';
import { listQueue, ownerToWrite, printQueue, requestFlush } from './queue-show';

const USAGE = `usage: mta-queue [--flush] [--hold ID] [--release ID] [--delete ID] [--help] [--version]

Without options, lists the mail waiting in mtad's queue (MTAD_QUEUE_DIR): id,
size, age, sender, recipients (delivered or bounced ones marked), why the last
attempt failed, whether it is held, and when MTAD_MAX_QUEUE_LIFETIME ends.
Works while mtad runs; run it as root or as the user mtad runs as.
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
    await printQueue(queue, ids, config.maxQueueLifetime);
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
  if (flush) await requestFlush(config.queueDir, running, ids.length, owner);
  return status;
});

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
