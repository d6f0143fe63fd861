#!/usr/bin/env node
// The steps between the group-commit ceiling and mtad, as servers the bench can
// run beside them (--targets "... files deliverer"), to tell what each of mtad's
// duties costs. Both are the bare smtp-server of the peers' ceilings (no pause
// before the greeting, no policy beyond the domain, no log, no queue), and both
// answer 250 only once the message is on disk:
//
//   files      one mbox file per recipient mailbox, as mbox needs, each with its
//              own adaptive group commit (one O_DSYNC writev of what waited,
//              the next batch after the rest of the turn, as mtad's deliverer);
//              the group-commit ceiling writes one file whatever the recipients
//   deliverer  mtad's own delivery layer (dist/delivery/deliverer.js): per
//              mailbox the readers' two locks, the append record synced before
//              each batch and at release, batching and lock holding as in mtad
//
// So: group-commit → files is what one file per user costs; files → deliverer
// is locks and the power-cut record; deliverer → mtad is everything in front
// (smtp-server's hooks, the accounts and policy, the log lines, the queue ids).
//
//   node test/bench/ladder.mjs files|deliverer PORT DIR     (DIR/<mailbox>, DIR/.appending/)
// Listens on 127.0.0.1. Accepts RCPT only in DOMAIN (default bench.test); the
// mailbox is the local part. SIGTERM/SIGINT: stops. Needs the build (npm run build).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const { SMTPServer } = require('smtp-server');
const { SMTPConnection } = require('smtp-server/lib/smtp-connection.js');
const { Deliverer } = require(path.join(ROOT, 'dist', 'delivery', 'deliverer.js'));
const { MboxEncoder, entryPrefix, ENTRY_SUFFIX, receivedHeader } = require(path.join(ROOT, 'dist', 'delivery', 'mbox.js'));
const { asciiBytes } = require(path.join(ROOT, 'dist', 'text.js'));

// As the peers' ceilings with GREETING_DELAY_MS=0 (and mtad): greet at once.
SMTPConnection.prototype.init = function init() {
  this._setListeners(() => {
    if (this._server.options.maxClients && this._server.connections.size > this._server.options.maxClients) {
      return this.send(421, `${this.name} Too many connected clients, try again in a moment`, false);
    }
    this.connectionReady();
  });
};

const [mode, portArg, dir] = process.argv.slice(2);
if (!['files', 'deliverer'].includes(mode) || !portArg || !dir) {
  console.error('usage: ladder.mjs files|deliverer PORT DIR');
  process.exit(64);
}
const DOMAIN = (process.env.DOMAIN || 'bench.test').toLowerCase();

// ---- files: one adaptive group commit per mailbox file --------------------------------------
// O_DSYNC, as mtad's mailboxes: each writev is on disk when it returns.
const FILES_FLAGS = fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_DSYNC;
const files = new Map();
function appendFile(mailbox, bufs) {
  let f = files.get(mailbox);
  if (!f) {
    f = { fd: fs.openSync(path.join(dir, mailbox), FILES_FLAGS, 0o600), queue: [], busy: false };
    files.set(mailbox, f);
  }
  return new Promise((resolve, reject) => {
    f.queue.push({ bufs, resolve, reject });
    if (!f.busy) flush(f);
  });
}
function flush(f) {
  if (!f.queue.length) { f.busy = false; return; }
  f.busy = true;
  const batch = f.queue;
  f.queue = [];
  fs.writev(f.fd, batch.flatMap((b) => b.bufs), (err) => {
    for (const b of batch) (err ? b.reject(err) : b.resolve());
    setImmediate(flush, f);
  });
}

// ---- deliverer: mtad's -----------------------------------------------------------------------
function makeDeliverer() {
  const intentDir = path.join(dir, '.appending');
  fs.mkdirSync(intentDir, { recursive: true });
  return new Deliverer({ spoolDir: dir, lockTimeoutMs: 60_000, staleLockMs: 600_000, createMode: 0o600, intentDir, sizeLimit: 0 });
}
const deliverer = mode === 'deliverer' ? makeDeliverer() : null;

let n = 0;
const server = new SMTPServer({
  name: `mx.${DOMAIN}`, banner: `ladder ${mode}`, disableReverseLookup: true, authOptional: true,
  disabledCommands: ['AUTH', 'STARTTLS'], hideSTARTTLS: true, size: 64 * 1024 * 1024, logger: false,
  onRcptTo(address, session, cb) {
    const at = address.address.lastIndexOf('@');
    if (at < 1 || address.address.slice(at + 1).toLowerCase() !== DOMAIN) {
      return cb(Object.assign(new Error('5.7.1 Relay access denied'), { responseCode: 554 }));
    }
    cb();
  },
  onData(stream, session, cb) {
    const now = new Date();
    const id = (++n).toString(16).toUpperCase().padStart(10, '0');
    const enc = new MboxEncoder();
    const rcpts = session.envelope.rcptTo.map((r) => r.address);
    // As mtad's receive(): the header holds the client's HELO, which only asciiBytes may turn into bytes.
    const chunks = [...enc.push(asciiBytes(receivedHeader({
      helo: session.hostNameAppearsAs ?? '', clientAddress: session.remoteAddress, clientHostname: session.clientHostname,
      hostname: `mx.${DOMAIN}`, protocol: session.transmissionType ?? 'SMTP', id, recipient: rcpts.length === 1 ? rcpts[0] : undefined, date: now,
    })))];
    stream.on('data', (c) => { chunks.push(...enc.push(c)); });
    stream.on('end', () => {
      if (stream.sizeExceeded) return cb(Object.assign(new Error('5.3.4 Message too big'), { responseCode: 552 }));
      chunks.push(...enc.end());
      const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
      const body = { kind: 'memory', chunks, length: enc.size };
      const boxes = [...new Set(rcpts.map((a) => a.slice(0, a.lastIndexOf('@')).toLowerCase()))];
      Promise.all(boxes.map(async (mailbox) => {
        const deliveredTo = `${mailbox}@${DOMAIN}`;
        if (mode === 'files') return appendFile(mailbox, [entryPrefix(sender, deliveredTo, now), ...chunks, ENTRY_SUFFIX]);
        const outcome = await deliverer.deliver(mailbox, { sender, deliveredTo, body });
        if (!outcome.ok) throw outcome.error;
      })).then(() => cb(null, `Ok: queued as ${id}`), (err) => cb(Object.assign(new Error(`4.3.0 ${err.message}`), { responseCode: 451 })));
    });
  },
});
server.on('error', (e) => console.error('ladder server error:', e.message));
server.listen(Number(portArg), '127.0.0.1', () => console.error(`ladder ${mode} listening on 127.0.0.1:${portArg} pid ${process.pid}`));

function bye() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
}
process.on('SIGTERM', bye);
process.on('SIGINT', bye);
