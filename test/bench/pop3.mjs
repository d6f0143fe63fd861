#!/usr/bin/env node
// POP3 benchmark: mtad's POP3 beside Dovecot's pop3 on the same spool, in the
// same run (issue 11's table). It prints numbers and asserts nothing. Plain
// JavaScript, like bench.mjs: runs on a clean clone after npm install.
//
//   npm run bench:pop3 [-- --runs N --messages 1000 --size 10240 --big-mib 50 --secs 5]
//
// The mailboxes are written straight into a temp spool in mtad's entry format
// (From_ line, Return-Path, Delivered-To, X-UIDL), owned by the user both
// servers read them as (nobody when run as root). Dovecot needs root here.
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
const RUNS = Number(opt('runs', 3));
const MESSAGES = Number(opt('messages', 1000));
const SIZE = Number(opt('size', 10240));
const BIG_MIB = Number(opt('big-mib', 50));
const SECS = Number(opt('secs', 5));
const USERS = 10;
const PASSWORD = 'bench-pw';
const isRoot = process.getuid?.() === 0;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Number(process.hrtime.bigint()) / 1e6;
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

// ---- the spool -----------------------------------------------------------------------------
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-pop3-bench-'));
fs.chmodSync(dir, 0o755);
const spool = path.join(dir, 'spool');
fs.mkdirSync(spool, { mode: 0o755 });
const owner = isRoot ? passwdEntry('nobody') : { uid: process.getuid(), gid: process.getgid() };
const own = (p) => { if (isRoot) fs.chownSync(p, owner.uid, owner.gid); };
own(spool);

function passwdEntry(name) {
  const row = fs.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((r) => r[0] === name);
  return { uid: Number(row[2]), gid: Number(row[3]) };
}

function entry(i, body) {
  return Buffer.concat([Buffer.from(`From sender@bench.test  Tue Dec  1 10:00:00 2026\nReturn-Path: <sender@bench.test>\nDelivered-To: u@bench.test\n` +
    `X-UIDL: ${crypto.randomBytes(16).toString('hex')}\nSubject: bench ${i}\nMessage-ID: <${i}.${crypto.randomBytes(4).toString('hex')}@bench.test>\n\n`), body, Buffer.from('\n')]);
}

function writeMailbox(name, count, size) {
  const line = `${'lorem ipsum dolor sit amet '.repeat(3)}\n`;
  const body = Buffer.from(line.repeat(Math.max(1, Math.floor(size / line.length))));
  const fd = fs.openSync(path.join(spool, name), 'w', 0o600);
  for (let i = 1; i <= count; i++) fs.writeSync(fd, entry(i, body));
  fs.closeSync(fd);
  own(path.join(spool, name));
}

const users = Array.from({ length: USERS }, (_, i) => `bench${i}`);
for (const u of users) writeMailbox(u, MESSAGES, SIZE);
{
  const fd = fs.openSync(path.join(spool, 'big'), 'w', 0o600);
  const chunk = Buffer.from(`${'0123456789abcdef'.repeat(4)}\n`.repeat(16384));
  fs.writeSync(fd, Buffer.from('From sender@bench.test  Tue Dec  1 10:00:00 2026\nReturn-Path: <s@bench.test>\nDelivered-To: big@bench.test\nX-UIDL: 00000000000000000000000000000big\nSubject: big\n\n'));
  for (let n = 0; n < BIG_MIB; n++) fs.writeSync(fd, chunk);
  fs.writeSync(fd, Buffer.from('\n'));
  fs.closeSync(fd);
  own(path.join(spool, 'big'));
}
const smtpUsers = ['sm0', 'sm1', 'sm2', 'sm3', 'sm4'];
const hash = (pw) => {
  const salt = crypto.randomBytes(16);
  return `scrypt$16384$8$1$${salt.toString('base64')}$${crypto.scryptSync(pw, salt, 32, { N: 16384, r: 8, p: 1 }).toString('base64')}`;
};
const usersFile = path.join(dir, 'users');
fs.writeFileSync(usersFile, [...users, 'big', ...smtpUsers].map((u) => `${u}:${hash(PASSWORD)}:\n`).join(''), { mode: 0o640 });
own(usersFile);
fs.writeFileSync(path.join(dir, 'aliases'), '');

// ---- the servers ---------------------------------------------------------------------------
async function startMtad() {
  const env = {
    PATH: process.env.PATH, MTAD_CONFIG: '/dev/null', MTAD_HOST: '127.0.0.1', MTAD_PORT: '0', MTAD_HOSTNAME: 'bench.test',
    MTAD_SPOOL_DIR: spool, MTAD_USERS_FILE: usersFile, MTAD_ALIASES_FILE: path.join(dir, 'aliases'), MTAD_LOG_LEVEL: 'warn',
    MTAD_MAILBOX_SIZE_LIMIT: '0', MTAD_MAX_CLIENTS_PER_IP: '0',
  };
  const proc = spawn(process.execPath, [path.join(ROOT, 'bin', 'mtad')], { env: { ...env, MTAD_LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (b) => { out += b; });
  proc.stderr.on('data', (b) => { out += b; });
  for (let t = 0; !/listening on /.test(out); t++) {
    if (t > 600 || proc.exitCode !== null) throw new Error(`mtad did not start:\n${out}`);
    await sleep(50);
  }
  return { pid: proc.pid, smtp: Number(/listening on \S+:(\d+)/.exec(out)[1]), pop3: Number(/POP3 on \S+:(\d+)/.exec(out)[1]), stop: () => new Promise((r) => { proc.on('exit', r); proc.kill('SIGTERM'); }) };
}

async function freePort() {
  return new Promise((resolve) => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); }); });
}

async function startDovecot() {
  const base = path.join(dir, 'dovecot');
  for (const d of ['run', 'state', 'mail']) fs.mkdirSync(path.join(base, d), { recursive: true, mode: 0o755 });
  fs.chownSync(path.join(base, 'mail'), owner.uid, owner.gid);
  const passwd = path.join(base, 'passwd');
  fs.writeFileSync(passwd, [...users, 'big'].map((u) => `${u}:{PLAIN}${PASSWORD}\n`).join(''), { mode: 0o644 });
  const port = await freePort();
  const conf = path.join(base, 'dovecot.conf');
  fs.writeFileSync(conf, `instance_name = mtad-pop3-bench
base_dir = ${base}/run
state_dir = ${base}/state
log_path = ${base}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {
  driver = passwd-file
  args = ${passwd}
}
userdb {
  driver = static
  args = uid=${owner.uid} gid=${owner.gid} home=${base}/mail/%u
}
first_valid_uid = 1
first_valid_gid = 1
mail_location = mbox:${base}/mail/%u:INBOX=${spool}/%u
mbox_read_locks = fcntl
mbox_write_locks = fcntl dotlock
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = ${port}
  }
  inet_listener pop3s {
    port = 0
  }
}
`);
  const proc = spawn('dovecot', ['-F', '-c', conf], { stdio: 'ignore' });
  for (let t = 0; ; t++) {
    const ok = await new Promise((r) => { const s = net.connect(port, '127.0.0.1'); s.once('connect', () => { s.destroy(); r(true); }); s.once('error', () => r(false)); });
    if (ok) break;
    if (t > 300) throw new Error('Dovecot did not start');
    await sleep(50);
  }
  return { port, stop: () => new Promise((r) => { proc.on('exit', r); proc.kill('SIGTERM'); }) };
}

// ---- a POP3 client that reads as fast as it can ------------------------------------------
class Client {
  static connect(port) {
    return new Promise((resolve, reject) => {
      const c = new Client(net.connect(port, '127.0.0.1'));
      c.sock.once('error', reject);
      c.sock.once('connect', async () => { await c.line(); resolve(c); });
    });
  }

  constructor(sock) {
    this.sock = sock;
    this.bufs = [];
    this.len = 0;
    this.wake = null;
    sock.on('data', (d) => { this.bufs.push(d); this.len += d.length; this.wake?.(); });
    sock.on('close', () => { this.closed = true; this.wake?.(); });
  }

  buf() {
    if (this.bufs.length > 1) this.bufs = [Buffer.concat(this.bufs)];
    return this.bufs[0] ?? Buffer.alloc(0);
  }

  async until(find) {
    for (;;) {
      const b = this.buf();
      const i = find(b);
      if (i >= 0) { this.bufs = [b.subarray(i)]; this.len = b.length - i; return b.subarray(0, i); }
      if (this.closed) throw new Error('closed');
      await new Promise((r) => { this.wake = r; });
      this.wake = null;
    }
  }

  async line() { return (await this.until((b) => { const i = b.indexOf('\r\n'); return i < 0 ? -1 : i + 2; })).toString(); }

  async cmd(l) { this.sock.write(`${l}\r\n`); const r = await this.line(); if (!r.startsWith('+')) throw new Error(`${l}: ${r}`); return r; }

  /** A multi-line answer; returns its octets. Chunks are looked at once each, never joined. */
  async multi(l) {
    this.sock.write(`${l}\r\n`);
    await this.line();
    let octets = 0;
    let tail = Buffer.from('\r\n');
    for (;;) {
      while (this.bufs.length) {
        const b = this.bufs.shift();
        const joint = Buffer.concat([tail, b.subarray(0, 5)]);
        let end = joint.indexOf('\r\n.\r\n');
        if (end >= 0) end = end + 5 - tail.length;
        else {
          end = b.indexOf('\r\n.\r\n');
          if (end >= 0) end += 5;
        }
        if (end >= 0) {
          octets += end;
          if (end < b.length) this.bufs.unshift(b.subarray(end));
          return octets;
        }
        octets += b.length;
        tail = Buffer.concat([tail, b]).subarray(-4);
      }
      if (this.closed) throw new Error('closed');
      await new Promise((r) => { this.wake = r; });
      this.wake = null;
    }
  }

  async quit() { await this.cmd('QUIT'); this.sock.destroy(); }
}

/** login, STAT, UIDL, RETR every message, QUIT; returns messages and octets. */
async function fetchAll(port, user) {
  const c = await Client.connect(port);
  await c.cmd(`USER ${user}`);
  await c.cmd(`PASS ${PASSWORD}`);
  const n = Number((await c.cmd('STAT')).split(' ')[1]);
  await c.multi('UIDL');
  let bytes = 0;
  for (let i = 1; i <= n; i++) bytes += await c.multi(`RETR ${i}`);
  await c.quit();
  return { n, bytes };
}

function rssKiB(pid, field) {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

async function bigRetr(port, pidOf) {
  const c = await Client.connect(port);
  await c.cmd('USER big');
  await c.cmd(`PASS ${PASSWORD}`);
  const pid = pidOf();
  const before = rssKiB(pid, 'VmRSS');
  try { fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); } catch { /* peak not resettable: VmHWM is since start */ }
  const t = now();
  const bytes = await c.multi('RETR 1');
  const ms = now() - t;
  const peak = rssKiB(pid, 'VmHWM');
  await c.quit();
  return { bytes, ms, growMiB: (peak - before) / 1024 };
}

/** SMTP: 10 connections sending 1 KiB messages for SECS seconds; returns accepted (250 = durable) messages per second. */
async function smtpRate(port) {
  const body = `Subject: load\r\n\r\n${'x'.repeat(1000)}\r\n.\r\n`;
  let done = 0;
  const end = now() + SECS * 1000;
  await Promise.all(Array.from({ length: 10 }, async (_, k) => {
    const c = await Client.connect(port);
    await c.cmd('HELO bench.test').catch(() => undefined);
    while (now() < end) {
      c.sock.write(`MAIL FROM:<s@bench.test>\r\nRCPT TO:<${smtpUsers[k % smtpUsers.length]}@bench.test>\r\nDATA\r\n`);
      for (let i = 0; i < 3; i++) await c.line();
      c.sock.write(body);
      const r = await c.line();
      if (r.startsWith('250')) done++;
    }
    c.sock.end('QUIT\r\n');
  }));
  return done / SECS;
}

// ---- the run ---------------------------------------------------------------------------------
const mtad = await startMtad();
let dovecot = null;
if (isRoot && spawnSync('which', ['dovecot']).status === 0) dovecot = await startDovecot();
else console.log('Dovecot: not run (needs root and the dovecot-pop3d package)');
const servers = [['mtad', mtad.pop3, () => mtad.pid]];
if (dovecot) {
  servers.push(['dovecot', dovecot.port, () => {
    // The pop3 process serving the session: the newest one running as the mailbox owner.
    const pids = spawnSync('pgrep', ['-n', '-u', String(owner.uid), '-x', 'pop3'], { encoding: 'utf8' }).stdout.trim();
    return Number(pids);
  }]);
}
const rows = [];
for (const [name, port, pidOf] of servers) {
  await fetchAll(port, users[0]); // warm-up: caches, Dovecot's index
  const one = [];
  for (let r = 0; r < RUNS; r++) {
    const t = now();
    const { n } = await fetchAll(port, users[0]);
    one.push(n / ((now() - t) / 1000));
  }
  const ten = [];
  for (let r = 0; r < RUNS; r++) {
    const t = now();
    const got = await Promise.all(users.map((u) => fetchAll(port, u)));
    ten.push(got.reduce((s, g) => s + g.n, 0) / ((now() - t) / 1000));
  }
  const big = await bigRetr(port, pidOf);
  rows.push({ name, one: median(one), ten: median(ten), big });
}
const alone = await smtpRate(mtad.smtp);
let fetching = true;
const loops = users.map(async (u) => { while (fetching) await fetchAll(mtad.pop3, u); });
await sleep(500);
const during = await smtpRate(mtad.smtp);
fetching = false;
await Promise.all(loops);

console.log(`\nPOP3 benchmark: ${MESSAGES} messages of ~${SIZE} bytes per mailbox (${(fs.statSync(path.join(spool, users[0])).size / 1048576).toFixed(1)} MiB), ${USERS} mailboxes, ${RUNS} runs (median), ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)}`);
console.log('| figure | ' + rows.map((r) => r.name).join(' | ') + ' |');
console.log('|---|' + rows.map(() => '---|').join(''));
console.log('| one session: login, STAT, UIDL, RETR all, QUIT (msg/s) | ' + rows.map((r) => r.one.toFixed(0)).join(' | ') + ' |');
console.log(`| ${USERS} users fetching at once (msg/s, all sessions) | ` + rows.map((r) => r.ten.toFixed(0)).join(' | ') + ' |');
console.log(`| RETR of one ${BIG_MIB} MiB message: RSS growth (MiB), time (ms) | ` + rows.map((r) => `${r.big.growMiB.toFixed(1)}, ${r.big.ms.toFixed(0)}`).join(' | ') + ' |');
console.log(`| SMTP accepted msg/s alone / while ${USERS} POP3 sessions fetch | ${alone.toFixed(0)} / ${during.toFixed(0)} (${(100 * during / alone).toFixed(0)} %) |${dovecot ? ' - |' : ''}`);
await mtad.stop();
if (dovecot) await dovecot.stop();
fs.rmSync(dir, { recursive: true, force: true });
