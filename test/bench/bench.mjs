#!/usr/bin/env node
// mtad benchmark: throughput, latency and memory of the real compiled mtad on
// loopback, optionally beside the reference Postfix and the bare smtp-server sink
// of ../shared/peers in the same run. It prints numbers and asserts nothing.
// Plain JavaScript on purpose: it runs on a clean clone with no build step and no
// dependency beyond Node (the TypeScript build only covers src/).
//
//   npm run bench [-- OPTIONS]
//     --vs-postfix          also run the matrix against the peers' Postfix and the sink ceiling
//     --targets "mtad postfix sink agroup"   choose the servers (default mtad; --vs-postfix: all four);
//                           agroup = the peers' adaptive group commit server (append+fsync, one file, no locks);
//                           also files, deliverer: the steps between agroup and mtad (test/bench/ladder.mjs)
//     --runs N              runs per cell, medians reported (RUNS, default 3)
//     --secs S              seconds of load per run (SECS, default 2)
//     --count N             instead: exactly N messages per run (COUNT), whatever the time: the same work for every
//                           build, so that CPU ms/msg compares builds (MTAD_BIN) on a machine whose speed varies
//     --sessions "1 10 50"  --sizes "1024 102400"  --rcpts "1 5"  --conns "new reuse"
//     --client own|smtp-source   own (default: unique tokens, latency) or Postfix's smtp-source
//     --no-memory / --only-memory
//     --out FILE            one JSON line per run and per cell
//     --peers DIR           copy of ../shared/peers (default /tmp/peers, copied there if missing)
//     --warmup SECS         load each server gets before the first measured run (WARMUP, default 8; 0 = none):
//                           Node's JIT needs some thousands of messages before a server runs at its steady speed,
//                           and one that has less code to compile gets there sooner; the matrix measures steady state
//     --help                this text
//   env: MTAD_BIN=<path of another bin/mtad> for A/B runs, MTAD_NODE_ARGS="--cpu-prof ..." to profile
//       (CEILING_NODE_ARGS the same for the sink and group-commit servers);
//       target mtadB: a second mtad run by turns with the first, MTAD_B_BIN=<bin/mtad> and/or MTAD_B_ENV="K=V ..."
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const HOST = '127.0.0.1';
const DOMAIN = 'bench.test';
const USERS = ['user1', 'user2', 'user3', 'user4', 'user5'];
const SENDER = `sender@${DOMAIN}`;

// ---- options -----------------------------------------------------------------------------
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < argv.length) return argv[i + 1];
  const eq = argv.find((a) => a.startsWith(`--${name}=`));
  return eq ? eq.slice(name.length + 3) : dflt;
};
const flag = (name) => argv.includes(`--${name}`);
if (flag('help') || argv.includes('-h')) {
  // The usage is the comment at the top of this file.
  const me = fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n');
  const end = me.findIndex((l, i) => i > 1 && !l.startsWith('//'));
  console.log(me.slice(1, end).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}
const list = (s) => String(s).trim().split(/[\s,]+/).filter(Boolean);
/** "K=V K2=V2" as an environment object (MTAD_EXTRA_ENV, MTAD_B_ENV); split at white space only, since a value may hold commas (MTAD_DOMAINS=a.test,b.test). */
const envList = (s) => Object.fromEntries(String(s || '').trim().split(/\s+/).filter(Boolean).map((kv) => {
  const eq = kv.indexOf('=');
  if (eq < 1) { console.error(`bench: "${kv}" in an env list is not K=V`); process.exit(64); }
  return [kv.slice(0, eq), kv.slice(eq + 1)];
}));
const RUNS = Number(opt('runs', process.env.RUNS || 3));
const SECS = Number(opt('secs', process.env.SECS || 2));
const SESSIONS = list(opt('sessions', process.env.SESSIONS || '1 10 50')).map(Number);
const SIZES = list(opt('sizes', process.env.SIZES || '1024 102400')).map(Number);
const RCPTS = list(opt('rcpts', process.env.RCPTS || '1 5')).map(Number);
const CONNS = list(opt('conns', process.env.CONNS || 'new reuse'));
const CLIENT = opt('client', process.env.CLIENT || 'own');
const VS_POSTFIX = flag('vs-postfix');
const MEMORY = !flag('no-memory');
const MATRIX = !flag('only-memory');
const OUT = opt('out', process.env.OUT || '');
const WARMUP = Number(opt('warmup', process.env.WARMUP ?? 8));
const COUNT = Number(opt('count', process.env.COUNT || 0));
const PEERS = path.resolve(opt('peers', process.env.PEERS_DIR || '/tmp/peers'));
const PF_PORT = Number(opt('postfix-port', 2525));
const SINK_PORT = Number(opt('sink-port', 2604));
const AGROUP_PORT = Number(opt('agroup-port', 2607));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const median = (a) => {
  const s = a.filter((x) => Number.isFinite(x)).sort((x, y) => x - y);
  const n = s.length;
  return n ? (n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2) : NaN;
};
const pct = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN);
const record = (o) => { if (OUT) fs.appendFileSync(OUT, JSON.stringify(o) + '\n'); };
const isRoot = process.getuid?.() === 0;

// ---- /proc ---------------------------------------------------------------------------------
function status(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (k) => Number((s.match(new RegExp(`^${k}:\\s+(\\d+)`, 'm')) || [0, NaN])[1]);
    return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
  } catch { return { rss: NaN, hwm: NaN }; }
}
// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0), so each
// cell gets its own peak.
function resetPeak(pid) { try { fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); } catch { /* not ours to reset */ } }
/** CPU ticks (user + system, own + reaped children) of a process. */
function procTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  } catch { return 0; }
}
const treeTicks = (root) => treePids(root).reduce((n, p) => n + procTicks(p), 0);
/** Busy and total ticks of the whole machine. */
function machineTicks() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { total, busy: total - f[3] - f[4] };
}
const TICK_MS = 1000 / Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim() || 100);

function treePids(root) {
  const kids = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push(Number(d));
    } catch { /* gone */ }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) out.push(...(kids.get(out[i]) || []));
  return out;
}

// ---- mailbox scanning: counts X-Bench-Token lines per file, incrementally -----------------------
const TOKEN = Buffer.from('\nX-Bench-Token: ');
class Scanner {
  constructor(dir) { this.dir = dir; this.files = new Map(); this.total = 0; }
  reset() { this.files.clear(); this.total = 0; }
  truncateAll() {
    for (const name of fs.readdirSync(this.dir)) {
      const p = path.join(this.dir, name);
      try { if (fs.lstatSync(p).isFile() && !name.endsWith('.lock')) fs.truncateSync(p, 0); } catch { /* gone */ }
    }
    this.reset();
  }
  scan() {
    for (const name of fs.readdirSync(this.dir)) {
      if (name.startsWith('.') || name.endsWith('.lock')) continue;
      const p = path.join(this.dir, name);
      let st;
      try { st = fs.lstatSync(p); } catch { continue; }
      if (!st.isFile()) continue;
      let f = this.files.get(name);
      if (!f || st.ino !== f.ino || st.size < f.off) {
        if (f) this.total -= f.n;
        f = { ino: st.ino, off: 0, carry: Buffer.from('\n'), tokens: new Map(), n: 0 };
        this.files.set(name, f);
      }
      if (st.size <= f.off) continue;
      const fd = fs.openSync(p, 'r');
      try {
        const want = st.size - f.off;
        const buf = Buffer.allocUnsafe(f.carry.length + want);
        f.carry.copy(buf, 0);
        const got = fs.readSync(fd, buf, f.carry.length, want, f.off);
        const view = buf.subarray(0, f.carry.length + got);
        const lastNl = view.lastIndexOf(10);
        let i = view.indexOf(TOKEN);
        while (i !== -1) {
          const start = i + TOKEN.length;
          const end = view.indexOf(10, start);
          if (end === -1) break; // incomplete line: stays in the carry
          const tok = view.toString('latin1', start, end).trim();
          f.tokens.set(tok, (f.tokens.get(tok) || 0) + 1);
          f.n++;
          this.total++;
          i = view.indexOf(TOKEN, end);
        }
        f.off += got;
        f.carry = Buffer.from(view.subarray(lastNl === -1 ? 0 : lastNl));
      } finally { fs.closeSync(fd); }
    }
    return this.total;
  }
  /** Every accepted token exactly once in each expected mailbox, nothing else anywhere. */
  verify(accepted, mailboxes) {
    const problems = [];
    for (const mb of mailboxes) {
      const f = this.files.get(mb);
      const seen = f ? f.tokens : new Map();
      let missing = 0, dup = 0;
      for (const t of accepted) { const c = seen.get(t) || 0; if (c === 0) missing++; else if (c > 1) dup++; }
      if (missing) problems.push(`${mb}: ${missing} missing`);
      if (dup) problems.push(`${mb}: ${dup} duplicated`);
    }
    const want = accepted.length * mailboxes.length;
    if (this.total !== want) problems.push(`${this.total} entries for ${want} expected`);
    return problems.length ? `FAIL(${problems.slice(0, 3).join('; ')})` : 'ok';
  }
}

// ---- our SMTP client -------------------------------------------------------------------------
class Client {
  static connect(port) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: HOST, port });
      sock.setNoDelay(true);
      const c = new Client(sock);
      sock.once('connect', () => resolve(c));
      sock.once('error', reject);
    });
  }
  constructor(sock) {
    this.sock = sock;
    this.buf = '';
    this.lines = [];
    this.waiters = [];
    this.replies = [];
    this.dead = null;
    sock.setEncoding('latin1');
    sock.on('data', (d) => this.onData(d));
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('connection closed')));
  }
  onData(d) {
    this.buf += d;
    let nl;
    while ((nl = this.buf.indexOf('\n')) !== -1) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      this.lines.push(line);
      if (line.length < 4 || line[3] !== '-') {
        const r = { code: Number(line.slice(0, 3)), text: this.lines.join('\n') };
        this.lines = [];
        const w = this.waiters.shift();
        if (w) w.resolve(r); else this.replies.push(r);
      }
    }
  }
  fail(e) {
    if (this.dead) return;
    this.dead = e;
    for (const w of this.waiters.splice(0)) w.reject(e);
  }
  read() {
    if (this.replies.length) return Promise.resolve(this.replies.shift());
    if (this.dead) return Promise.reject(this.dead);
    // A server that stops answering must not hang the bench.
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => this.fail(new Error('no reply in 60 s')), 60000);
      const done = (f) => (v) => { clearTimeout(t); f(v); };
      this.waiters.push({ resolve: done(resolve), reject: done(reject) });
    });
  }
  async cmd(line, want) {
    this.sock.write(line + '\r\n');
    const r = await this.read();
    if (want && r.code !== want) throw new Error(`${line.split(' ')[0]}: ${r.text}`);
    return r;
  }
  close() { this.sock.destroy(); }
}

/** A message of about `size` bytes whose token is unique; the padding is shared. */
function messageMaker(size) {
  const line = Buffer.from('x'.repeat(76) + '\r\n');
  const n = Math.max(1, Math.ceil((size - 200) / line.length));
  const pad = Buffer.concat(Array(n).fill(line));
  const end = Buffer.from('.\r\n');
  return (tok, to) => [
    Buffer.from(`From: <${SENDER}>\r\nTo: <${to}>\r\nSubject: bench ${tok}\r\nMessage-ID: <${tok}@${DOMAIN}>\r\nX-Bench-Token: ${tok}\r\n\r\n`, 'latin1'),
    pad, end,
  ];
}

/** S sessions sending for `secs` seconds; returns accepted tokens, latencies, errors. */
async function drive(port, { S, L, K, conn, secs, count }) {
  const tag = crypto.randomBytes(4).toString('hex');
  const rcpts = USERS.slice(0, K).map((u) => `${u}@${DOMAIN}`);
  const make = messageMaker(L);
  const accepted = [];
  const lat = [];
  const errors = [];
  let seq = 0;
  const t0 = now();
  const wall0 = Date.now();
  const deadline = t0 + secs * 1000;
  // --count: exactly that many messages whatever the time they take (a fixed amount of work, for CPU A/Bs).
  let left = count > 0 ? count : Infinity;
  const session = async () => {
    let c = null;
    while ((count > 0 ? left > 0 : now() < deadline) && errors.length < 20) {
      left--;
      try {
        if (!c) {
          c = await Client.connect(port);
          const g = await c.read();
          if (g.code !== 220) throw new Error(`greeting: ${g.text}`);
          await c.cmd('EHLO bench.client', 250);
        }
        const tok = `${tag}-${seq++}`;
        await c.cmd(`MAIL FROM:<${SENDER}>`, 250);
        for (const r of rcpts) await c.cmd(`RCPT TO:<${r}>`, 250);
        await c.cmd('DATA', 354);
        c.sock.cork();
        for (const b of make(tok, rcpts[0])) c.sock.write(b);
        const t = now();
        c.sock.uncork();
        const r = await c.read();
        lat.push(now() - t);
        if (r.code === 250) accepted.push(tok); else errors.push(`DATA: ${r.text}`);
        if (conn === 'new') {
          await c.cmd('QUIT', 221);
          c.close();
          c = null;
        }
      } catch (e) {
        errors.push(e.message);
        if (c) c.close();
        c = null;
      }
    }
    if (c) { await c.cmd('QUIT').catch(() => undefined); c.close(); }
  };
  await Promise.all(Array.from({ length: S }, session));
  return { accepted, lat, errors, t0, wall0, t1: now() };
}

/** Postfix's smtp-source instead of our client: count-only (its messages are all alike), one recipient. */
async function driveSmtpSource(port, { S, L, K, conn, secs, rate }) {
  if (K !== 1) return null;
  const M = Math.max(S * 5, Math.round((rate || 100 * S) * secs));
  const args = [...(conn === 'reuse' ? ['-d'] : []), '-s', String(S), '-m', String(M), '-l', String(L), '-f', SENDER, '-t', `user1@${DOMAIN}`, `${HOST}:${port}`];
  const t0 = now();
  const wall0 = Date.now();
  const r = spawnSync('smtp-source', args, { encoding: 'utf8' });
  const t1 = now();
  const errors = r.status === 0 ? [] : [String(r.stderr).trim().split('\n').pop()];
  return { accepted: Array(M).fill(null), lat: [], errors, t0, wall0, t1, countOnly: true };
}

// ---- targets ---------------------------------------------------------------------------------
// Every server the bench starts, from the moment it is spawned (before it is up): an
// error, Ctrl-C or SIGTERM stops them all, so no mtad, Postfix or ceiling server is left behind.
const live = new Set();
function whenDone(name, stop) {
  const entry = { name, stop: async () => { if (live.delete(entry)) await stop(); } };
  live.add(entry);
  return entry.stop;
}
async function stopLive() {
  for (const e of [...live]) await e.stop().catch((err) => console.error(`bench: stopping ${e.name}: ${err.message}`));
}

function chownNobody(p) {
  if (!isRoot) return;
  const row = fs.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((r) => r[0] === 'nobody');
  fs.chownSync(p, Number(row[2]), Number(row[3]));
}

async function startMtad(extraEnv = {}, { name = 'mtad', bin: otherBin = process.env.MTAD_BIN } = {}) {
  // MTAD_BIN: another build of mtad (e.g. a copy of the previous commit) for A/B runs.
  const bin = otherBin || path.join(ROOT, 'bin', 'mtad');
  if (!otherBin && !fs.existsSync(path.join(ROOT, 'dist', 'cli', 'mtad.js'))) throw new Error('mtad is not built: run npm run build');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-bench-'));
  fs.chmodSync(dir, 0o755);
  const spool = path.join(dir, 'spool');
  fs.mkdirSync(spool, { mode: 0o755 });
  const users = path.join(dir, 'users');
  fs.writeFileSync(users, USERS.map((u) => `${u}:!:Bench ${u}\n`).join(''), { mode: 0o640 });
  fs.writeFileSync(path.join(dir, 'aliases'), 'MAILER-DAEMON: postmaster\n', { mode: 0o644 });
  chownNobody(spool);
  chownNobody(users);
  const logFile = path.join(dir, 'mtad.log');
  const logFd = fs.openSync(logFile, 'w');
  const env = {
    PATH: process.env.PATH, HOME: process.env.HOME, MTAD_CONFIG: '/dev/null',
    MTAD_HOST: HOST, MTAD_PORT: String(await freePort()), MTAD_HOSTNAME: DOMAIN, MTAD_DOMAINS: DOMAIN,
    MTAD_SPOOL_DIR: spool, MTAD_USERS_FILE: users, MTAD_ALIASES_FILE: path.join(dir, 'aliases'),
    // A run writes hundreds of MiB into a few mailboxes: no mailbox limit, as Debian's Postfix.
    MTAD_MAILBOX_SIZE_LIMIT: '0',
    // Every bench client comes from one address: the per-address limit (50) would refuse them.
    MTAD_MAX_CLIENTS_PER_IP: '0',
    // This bench is SMTP's. Left to itself POP3 would listen on MTAD_PORT+85, which may be a port
    // the bench's own clients hold (a free port is picked in the ephemeral range): EADDRINUSE.
    MTAD_POP3_PORT: 'off',
    // MTAD_EXTRA_ENV="K=V K2=V2": more settings for mtad, e.g. MTAD_LOG_LEVEL=warn to see what logging costs
    ...envList(process.env.MTAD_EXTRA_ENV),
    ...extraEnv,
  };
  // The port is chosen here rather than read from the log, so that any log level works.
  const port = Number(env.MTAD_PORT);
  let started;
  try {
    started = await startNodeServer(name, bin, [], port, {
      env, dir, stdio: ['ignore', logFd, logFd], nodeArgs: process.env.MTAD_NODE_ARGS, why: () => fs.readFileSync(logFile, 'utf8'),
    });
  } finally {
    fs.closeSync(logFd);
  }
  const { proc, stop } = started;
  return {
    name, port, pid: proc.pid, spool, dir, logFile,
    mailboxDir: spool,
    peak: 'hwm',
    async quiesce() { /* 250 means delivered: nothing in flight once the client is done */ },
    stop,
  };
}

function canConnect(port) {
  return new Promise((r) => { const s = net.connect({ host: HOST, port }, () => { s.destroy(); r(true); }); s.on('error', () => r(false)); });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, HOST, () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

function ensurePeers() {
  if (fs.existsSync(path.join(PEERS, 'postfix-instance.sh'))) return;
  const src = path.resolve(ROOT, '..', 'shared', 'peers');
  if (!fs.existsSync(path.join(src, 'postfix-instance.sh'))) {
    throw new Error(`--vs-postfix needs the peers scripts: copy ../shared/peers to ${PEERS} (or pass --peers DIR)`);
  }
  fs.cpSync(src, PEERS, { recursive: true });
  execFileSync('chmod', ['-R', 'u+w', PEERS]);
}

async function startPostfix() {
  if (!isRoot) throw new Error('--vs-postfix must run as root (Postfix master starts as root)');
  ensurePeers();
  const script = path.join(PEERS, 'postfix-instance.sh');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-bench-pf-'));
  fs.rmdirSync(dir);
  const stop = whenDone('postfix', async () => { execFileSync(script, ['destroy', dir], { stdio: ['ignore', 'ignore', 'inherit'] }); });
  execFileSync(script, ['create', dir, String(PF_PORT)], { env: { ...process.env, LOG: 'none' }, stdio: ['ignore', 'ignore', 'inherit'] });
  execFileSync(script, ['start', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
  const pid = Number(execFileSync(script, ['pids', dir], { encoding: 'utf8' }).split('\n')[0]);
  for (const u of USERS) { const p = path.join(dir, 'mail', u); fs.writeFileSync(p, ''); chownNobody(p); }
  return {
    name: 'postfix', port: PF_PORT, pid, dir,
    mailboxDir: path.join(dir, 'mail'),
    peak: 'tree',
    async quiesce() { execFileSync(script, ['wait-empty', dir, '300'], { stdio: 'inherit' }); },
    stop,
  };
}

/**
 * Spawns a Node server (mtad, the peers' ceilings, the ladder) with `nodeArgs`
 * (a list in one string; CEILING_NODE_ARGS unless given) before its script;
 * registers its stop (which also removes `dir`) before it is up; resolves once
 * `port` answers, or stops it and throws, with `why()` in the message.
 */
async function startNodeServer(name, script, args, port, {
  env = process.env, dir = null, stdio = ['ignore', 'ignore', 'ignore'], nodeArgs = process.env.CEILING_NODE_ARGS, why = () => '',
} = {}) {
  const proc = spawn(process.execPath, [...list(nodeArgs || ''), script, ...args], { env, stdio });
  let exited = false;
  const gone = new Promise((r) => proc.once('exit', () => { exited = true; r(); }));
  const stop = whenDone(name, async () => {
    if (!exited) { proc.kill('SIGTERM'); await gone; }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });
  let up = false;
  for (let i = 0; i < 300 && !up && !exited; i++) { await sleep(50); up = await canConnect(port); }
  if (!up) {
    const detail = why();
    await stop();
    throw new Error(`${name} (${path.basename(script)}) did not start on port ${port}${detail ? `:\n${detail}` : ''}`);
  }
  return { proc, stop };
}

async function startCeiling(mode, port) {
  ensurePeers();
  const ceiling = path.join(PEERS, 'node-ceiling');
  if (!fs.existsSync(path.join(ceiling, 'node_modules', 'smtp-server'))) {
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: ceiling, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const dir = mode === 'sink' ? null : fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-bench-agroup-'));
  const { proc, stop } = await startNodeServer(mode, path.join(ceiling, 'server.js'), [mode, String(port), ...(dir ? [dir] : [])], port, {
    env: { ...process.env, GREETING_DELAY_MS: '0', GROUP_MS: '0' }, dir,
  });
  return {
    name: mode === 'sink' ? 'sink' : 'agroup', port, pid: proc.pid, mailboxDir: dir, peak: 'hwm',
    // one append per message into all.mbox, whatever the recipients
    mailboxesFor: () => ['all.mbox'],
    async quiesce() {},
    stop,
  };
}
const startSink = () => startCeiling('sink', SINK_PORT);
// The peers' adaptive group commit (append + fsync of whatever arrived during the
// previous fsync, one file, no locks): the ceiling of a careful Node MTA here.
const startAgroup = () => startCeiling('group', AGROUP_PORT);

// The steps between that ceiling and mtad (test/bench/ladder.mjs): "files", one
// group-committed file per mailbox; "deliverer", mtad's own delivery layer (locks,
// append record) behind a bare smtp-server. Not part of --vs-postfix: name them.
async function startLadder(mode) {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'delivery', 'deliverer.js'))) throw new Error('mtad is not built: run npm run build');
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mtad-bench-${mode}-`));
  const { proc, stop } = await startNodeServer(mode, path.join(ROOT, 'test', 'bench', 'ladder.mjs'), [mode, String(port), dir], port, { dir, stdio: ['ignore', 'ignore', 'inherit'] });
  return { name: mode, port, pid: proc.pid, mailboxDir: dir, peak: 'hwm', async quiesce() {}, stop };
}


// ---- one run of one cell ---------------------------------------------------------------------------
async function oneRun(t, cell, scanner, rate) {
  await t.quiesce();
  if (scanner) scanner.truncateAll();
  let treePeak = 0;
  let sampling = t.peak === 'tree';
  if (t.peak === 'hwm') resetPeak(t.pid);
  const sampler = (async () => {
    while (sampling) {
      let kib = 0;
      for (const p of treePids(t.pid)) { const s = status(p); if (Number.isFinite(s.rss)) kib += s.rss; }
      treePeak = Math.max(treePeak, kib);
      await sleep(500);
    }
  })();
  const srv0 = treeTicks(t.pid);
  const me0 = procTicks(process.pid);
  const m0 = machineTicks();
  const d = CLIENT === 'smtp-source' ? await driveSmtpSource(t.port, { ...cell, rate }) : await drive(t.port, cell);
  if (!d) { sampling = false; await sampler; return null; }
  let tDel = NaN;
  let verify = 'n/a';
  const mailboxes = t.mailboxesFor ? t.mailboxesFor(cell.K) : USERS.slice(0, cell.K);
  if (scanner) {
    const want = d.accepted.length * mailboxes.length;
    const limit = now() + 300000;
    while (scanner.scan() < want && now() < limit) await sleep(10);
    // Delivered = when the last entry was written (newest mtime of the mailboxes),
    // not when this scan got through them: reading 100s of MiB takes a while.
    if (scanner.total >= want) {
      const last = Math.max(...mailboxes.map((mb) => { try { return fs.statSync(path.join(scanner.dir, mb)).mtimeMs; } catch { return -Infinity; } }));
      tDel = d.t0 + (last - d.wall0);
    }
    await t.quiesce();
    await sleep(200);
    scanner.scan();
    verify = d.countOnly ? (scanner.total === want ? 'ok(count)' : `FAIL(${scanner.total}/${want})`) : scanner.verify(d.accepted, mailboxes);
  }
  sampling = false;
  await sampler;
  const srv = treeTicks(t.pid) - srv0;
  const me = procTicks(process.pid) - me0;
  const m1 = machineTicks();
  const other = Math.max(0, (m1.busy - m0.busy) - srv - me);
  const peakKiB = t.peak === 'hwm' ? status(t.pid).hwm : treePeak;
  const lat = [...d.lat].sort((a, b) => a - b);
  const n = d.accepted.length;
  return {
    target: t.name, ...cell, M: n,
    acc: n / ((d.t1 - d.t0) / 1000),
    del: scanner ? n / ((tDel - d.t0) / 1000) : NaN,
    p50: pct(lat, 0.5), p99: pct(lat, 0.99),
    rssMiB: peakKiB / 1024, verify,
    // CPU of the server per message (ms): steadier than msg/s on a shared machine
    cpuMs: d.accepted.length ? (srv * TICK_MS) / d.accepted.length : NaN,
    otherPct: m1.total > m0.total ? (100 * other) / (m1.total - m0.total) : NaN, errors: d.errors.length, firstError: d.errors[0],
  };
}

function cells() {
  const out = [];
  for (const conn of CONNS) for (const L of SIZES) for (const K of RCPTS) for (const S of SESSIONS) out.push({ conn, L, K, S, secs: SECS, count: COUNT });
  return out;
}
const key = (c) => `${c.conn}|${c.L}|${c.K}|${c.S}`;

// All servers run side by side; each cell's runs alternate between them (mtad,
// Postfix, sink, mtad, ...) so that the load of other jobs on a shared machine
// falls on all of them alike and the ratios stay meaningful.
async function runMatrix(targets) {
  const scanners = new Map(targets.map((t) => [t, t.mailboxDir ? new Scanner(t.mailboxDir) : null]));
  if (WARMUP > 0) {
    // Same load for every server, not counted: the JIT compiles while it runs.
    for (const t of targets) {
      const w = await drive(t.port, { S: 10, L: 1024, K: 1, conn: 'new', secs: WARMUP });
      await t.quiesce();
      process.stderr.write(`  warm-up ${t.name}: ${w.accepted.length} messages in ${WARMUP} s${w.errors.length ? `, ${w.errors.length} errors: ${w.errors[0]}` : ''}\n`);
    }
  }
  const res = new Map(targets.map((t) => [t.name, new Map()]));
  for (const cell of cells()) {
    const runs = new Map(targets.map((t) => [t, []]));
    for (let i = 0; i < RUNS; i++) {
      for (const t of targets) {
        const prev = runs.get(t);
        const r = await oneRun(t, cell, scanners.get(t), prev.length ? prev[prev.length - 1].acc : 0);
        if (!r) continue;
        record({ run: i + 1, ...r });
        prev.push(r);
      }
    }
    for (const t of targets) {
      const rs = runs.get(t);
      if (!rs.length) continue;
      const m = (k) => median(rs.map((r) => r[k]));
      const s = {
        target: t.name, ...cell, M: m('M'), acc: m('acc'), del: m('del'), p50: m('p50'), p99: m('p99'), rssMiB: m('rssMiB'), cpuMs: m('cpuMs'), otherPct: Math.max(...rs.map((r) => r.otherPct)),
        verify: rs.every((r) => r.verify.startsWith('ok')) ? 'ok' : rs.every((r) => r.verify === 'n/a') ? 'n/a' : rs.map((r) => r.verify).find((v) => !v.startsWith('ok')),
        errors: rs.reduce((a, r) => a + r.errors, 0), firstError: rs.find((r) => r.firstError)?.firstError,
      };
      record({ cell: s });
      res.get(t.name).set(key(cell), s);
      process.stderr.write(`  ${t.name} ${cell.conn} S=${cell.S} L=${cell.L} rcpt=${cell.K}: acc ${s.acc.toFixed(0)}/s del ${Number.isNaN(s.del) ? '-' : s.del.toFixed(0)}/s p50 ${s.p50.toFixed(2)}ms cpu ${s.cpuMs.toFixed(3)}ms/msg other ${s.otherPct.toFixed(0)}% ${s.verify}${s.errors ? ` errors ${s.errors}: ${s.firstError}` : ''}\n`);
    }
  }
  return res;
}

// ---- memory figures -------------------------------------------------------------------------------
async function idleConnections(t, n) {
  const before = status(t.pid).rss;
  const socks = [];
  const open = async () => {
    const c = await Client.connect(t.port);
    const g = await c.read();
    if (g.code !== 220) throw new Error(`greeting ${g.text}`);
    socks.push(c);
  };
  let failed = 0;
  for (let i = 0; i < n; i += 50) {
    const batch = await Promise.allSettled(Array.from({ length: Math.min(50, n - i) }, open));
    failed += batch.filter((b) => b.status === 'rejected').length;
  }
  await sleep(1000);
  const during = status(t.pid).rss;
  for (const c of socks) c.close();
  return { open: socks.length, failed, beforeMiB: before / 1024, withMiB: during / 1024 };
}

async function bigMessage(t, mib) {
  const scanner = new Scanner(t.mailboxDir);
  scanner.truncateAll();
  await sleep(500);
  resetPeak(t.pid);
  const before = status(t.pid).rss;
  const c = await Client.connect(t.port);
  await c.read();
  await c.cmd('EHLO bench.client', 250);
  await c.cmd(`MAIL FROM:<${SENDER}>`, 250);
  await c.cmd(`RCPT TO:<user1@${DOMAIN}>`, 250);
  await c.cmd('DATA', 354);
  const tok = `big-${crypto.randomBytes(4).toString('hex')}`;
  const line = 'y'.repeat(76) + '\r\n';
  const chunk = Buffer.from(line.repeat(Math.floor((1 << 20) / line.length)));
  const t0 = now();
  c.sock.write(`From: <${SENDER}>\r\nTo: <user1@${DOMAIN}>\r\nX-Bench-Token: ${tok}\r\n\r\n`);
  for (let sent = 0; sent < mib << 20; sent += chunk.length) {
    if (!c.sock.write(chunk)) await new Promise((r) => c.sock.once('drain', r));
  }
  c.sock.write('.\r\n');
  const r = await c.read();
  const secs = (now() - t0) / 1000;
  await c.cmd('QUIT').catch(() => undefined);
  c.close();
  scanner.scan();
  const verify = r.code === 250 ? scanner.verify([tok], ['user1']) : `FAIL(${r.text})`;
  const peak = status(t.pid).hwm;
  return { reply: r.code, verify, secs, beforeMiB: before / 1024, peakMiB: peak / 1024, growthMiB: (peak - before) / 1024 };
}

// ---- output ------------------------------------------------------------------------------------------
const f0 = (x) => (Number.isFinite(x) ? x.toFixed(0) : '-');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : '-');
const sizeLabel = (L) => (L >= 1024 ? `${L / 1024} KiB` : `${L} B`);

function printTables(results) {
  const mtad = results.get('mtad');
  const pf = results.get('postfix');
  const sink = results.get('sink');
  const agroup = results.get('agroup');
  console.log(`\n## mtad benchmark (${new Date().toISOString()}, ${os.cpus().length} CPUs, node ${process.version}, runs=${RUNS} × ${SECS}s, client=${CLIENT})`);
  console.log('medians of the runs; delivered = found in the mbox files, each message verified present exactly once per recipient; latency = end of DATA to the 250; RSS = peak of mtad (VmHWM), Postfix: peak sum over its processes (sampled); CPU ms/msg = server CPU time (user+sys, all its processes) per message; other load = CPU used by neither server nor this driver (other jobs on the machine), worst run\n');
  const head = ['conn', 'S', 'size', 'rcpts', 'mtad acc/s', 'mtad del/s', 'p50 ms', 'p99 ms', 'RSS MiB', 'CPU ms/msg', 'other load %', 'verify'];
  if (pf) head.push('Postfix del/s', 'Postfix p50 ms', 'Postfix RSS MiB', 'Postfix CPU ms/msg', 'Postfix verify', 'mtad/Postfix');
  if (sink) head.push('sink acc/s', 'mtad/sink');
  if (agroup) head.push('group-commit del/s', 'group-commit p99 ms', 'group-commit CPU ms/msg', 'mtad/group-commit');
  console.log(`| ${head.join(' | ')} |`);
  console.log(`|${head.map(() => '---').join('|')}|`);
  for (const cell of cells()) {
    const k = key(cell);
    const m = mtad?.get(k);
    if (!m) continue;
    const row = [cell.conn, cell.S, sizeLabel(cell.L), cell.K, f0(m.acc), f0(m.del), f2(m.p50), f2(m.p99), f0(m.rssMiB), f2(m.cpuMs), f0(m.otherPct), m.verify + (m.errors ? ` (${m.errors} err)` : '')];
    if (pf) { const p = pf.get(k); row.push(f0(p?.del), f2(p?.p50), f0(p?.rssMiB), f2(p?.cpuMs), p ? p.verify + (p.errors ? ` (${p.errors} err)` : '') : '-', ratio(m.del, p?.del)); }
    if (sink) { const s = sink.get(k); row.push(f0(s?.acc), ratio(m.del, s?.acc)); }
    if (agroup) { const g = agroup.get(k); row.push(f0(g?.del), f2(g?.p99), f2(g?.cpuMs), ratio(m.del, g?.del)); }
    console.log(`| ${row.join(' | ')} |`);
  }
}

function printTargets(results, mem) {
  const mtad = results.get('mtad');
  const pf = results.get('postfix');
  const sink = results.get('sink');
  const get = (r, conn, L, K, S) => r?.get(`${conn}|${L}|${K}|${S}`);
  const rows = [];
  const vs = (label, L, S, want, other, field) => {
    const m = get(mtad, 'new', L, 1, S);
    const o = get(other, 'new', L, 1, S);
    const r = m && o ? m.del / o[field] : NaN;
    rows.push([label, `≥ ${want}`, Number.isFinite(r) ? r.toFixed(2) : 'not run', Number.isFinite(r) ? (r >= want ? 'met' : 'NOT met') : '-']);
  };
  if (pf) {
    vs('delivered, 1 KiB, 1 mailbox, S=10, × Postfix', 1024, 10, 4, pf, 'del');
    vs('delivered, 1 KiB, 1 mailbox, S=50, × Postfix', 1024, 50, 6, pf, 'del');
    vs('delivered, 100 KiB, S=10, × Postfix', 102400, 10, 3, pf, 'del');
    vs('delivered, 100 KiB, S=50, × Postfix', 102400, 50, 3, pf, 'del');
  }
  if (sink) {
    vs('delivered vs sink ceiling, 1 KiB, S=10', 1024, 10, 0.8, sink, 'acc');
    vs('delivered vs sink ceiling, 1 KiB, S=50', 1024, 50, 0.8, sink, 'acc');
  }
  const s1 = get(mtad, 'new', 1024, 1, 1);
  if (s1) rows.push(['DATA end → 250, S=1, 1 KiB, p50 ms', '≤ 2', f2(s1.p50), s1.p50 <= 2 ? 'met' : 'NOT met']);
  if (mem.idle) rows.push([`RSS with ${mem.idle.open} idle connections, MiB`, '≤ 150', f0(mem.idle.withMiB), mem.idle.withMiB <= 150 ? 'met' : 'NOT met']);
  if (mem.big) rows.push(['RSS growth, one 50 MiB message, MiB', '≤ 32', f0(mem.big.growthMiB), mem.big.growthMiB <= 32 ? 'met' : 'NOT met']);
  const agroup = results.get('agroup');
  if (agroup) {
    // Issue 15: mtad against the group-commit server (append + fsync, nothing else) in the same run.
    const g = (S, K) => [get(mtad, 'new', 1024, K, S), get(agroup, 'new', 1024, K, S)];
    const add = (label, want, value, ok) => rows.push([label, want, Number.isFinite(value) ? value.toFixed(2) : 'not run', Number.isFinite(value) ? (ok(value) ? 'met' : 'NOT met') : '-']);
    for (const S of [10, 50]) {
      const [m, a] = g(S, 1);
      add(`delivered / group-commit, 1 KiB, 1 rcpt, S=${S}`, '≥ 0.90', m && a ? m.del / a.del : NaN, (v) => v >= 0.9);
    }
    for (const S of [10, 50]) {
      const [m, a] = g(S, 5);
      add(`delivered / group-commit, 1 KiB, 5 rcpts, S=${S}`, '≥ 0.75', m && a ? m.del / a.del : NaN, (v) => v >= 0.75);
    }
    for (const S of [10, 50]) {
      const [m, a] = g(S, 1);
      add(`CPU per message / group-commit's, 1 KiB, S=${S}`, '≤ 1.2', m && a ? m.cpuMs / a.cpuMs : NaN, (v) => v <= 1.2);
    }
    const [m, a] = g(50, 1);
    add('p99 DATA end → 250 / group-commit\'s, S=50, 1 KiB', '≤ 2', m && a ? m.p99 / a.p99 : NaN, (v) => v <= 2);
  }
  console.log('\n## targets (one connection per message; this run)\n');
  console.log('| figure | target | measured | |');
  console.log('|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.join(' | ')} |`);
}

// ---- main -----------------------------------------------------------------------------------------------
async function main() {
  const t0 = Date.now();
  const results = new Map();
  const mem = {};
  const started = [];
  let signalled = false;
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
    process.on(sig, () => {
      if (signalled) process.exit(code); // a second one: at once
      signalled = true;
      console.error(`bench: ${sig}: stopping the ${live.size} server(s) it started`);
      void stopLive().then(() => process.exit(code));
    });
  }
  try {
    if (MATRIX) {
      // mtadB: a second mtad in the same run, its runs alternating with mtad's (an A/B on a noisy machine).
      const mtadB = () => startMtad(envList(process.env.MTAD_B_ENV), { name: 'mtadB', bin: process.env.MTAD_B_BIN || process.env.MTAD_BIN });
      const all = { mtad: () => startMtad(), mtadB, postfix: startPostfix, sink: startSink, agroup: startAgroup, files: () => startLadder('files'), deliverer: () => startLadder('deliverer') };
      const names = list(opt('targets', VS_POSTFIX ? 'mtad postfix sink agroup' : 'mtad'));
      const targets = names.map((n) => { if (!all[n]) throw new Error(`unknown target ${n}`); return [n, all[n]]; });
      for (const [, start] of targets) started.push(await start());
      process.stderr.write(`# matrix: ${names.join(', ')} ${new Date().toISOString()}\n`);
      for (const [name, r] of await runMatrix([...started])) results.set(name, r);
      await stopLive();
    }
    if (MEMORY) {
      process.stderr.write(`# memory ${new Date().toISOString()}\n`);
      const t = await startMtad({ MTAD_MAX_CLIENTS: '1100', MTAD_MAX_MESSAGE_SIZE: String(64 << 20) });
      mem.idle = await idleConnections(t, 1000);
      await sleep(1000);
      mem.big = await bigMessage(t, 50);
      record({ memory: mem });
      await t.stop();
    }
  } finally {
    await stopLive();
  }
  if (MATRIX) printTables(results);
  if (MEMORY) {
    console.log('\n## memory of mtad\n');
    console.log(`- ${mem.idle.open} idle connections open (${mem.idle.failed} refused): RSS ${f0(mem.idle.beforeMiB)} MiB before, ${f0(mem.idle.withMiB)} MiB with them open`);
    console.log(`- one 50 MiB message (reply ${mem.big.reply}, ${f2(mem.big.secs)} s, verify ${mem.big.verify}): RSS ${f0(mem.big.beforeMiB)} MiB before, peak ${f0(mem.big.peakMiB)} MiB, growth ${f0(mem.big.growthMiB)} MiB`);
  }
  printTargets(results, mem);
  console.log(`\n(bench took ${((Date.now() - t0) / 60000).toFixed(1)} min: node test/bench/bench.mjs ${argv.join(' ')})`);
  // A figure from a run that lost, duplicated or invented mail is no figure: say so and fail.
  const failed = [...results].flatMap(([name, r]) => [...r.values()].filter((c) => c.verify !== 'ok' && c.verify !== 'n/a')
    .map((c) => `${name} ${c.conn} S=${c.S} L=${c.L} rcpt=${c.K}: ${c.verify}`));
  if (mem.big && mem.big.verify !== 'ok') failed.push(`memory, one 50 MiB message: ${mem.big.verify}`);
  if (failed.length) {
    console.error(`bench: ${failed.length} cell(s) failed verification:\n  ${failed.join('\n  ')}`);
    process.exitCode = 1;
  }
}

main().catch((e) => { console.error(`bench: ${e.message}`); process.exit(1); });
