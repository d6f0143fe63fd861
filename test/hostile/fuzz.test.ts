// A bounded, seeded fuzzer: random and mutated SMTP sessions (valid sessions with
// bytes flipped, inserted, deleted; long lines; binary; pipelined bursts; clients
// that leave at a random byte with FIN or RST) sent at a real mtad from many
// connections at once. mtad must stay up, answer only with well-formed SMTP replies,
// never accept a recipient outside its domains (fuzzed look-alikes of them, one
// RCPT per line so each reply is known), leave nothing half-received in its queue,
// write nothing outside its spool, and still deliver a valid session afterwards.
//   MTAD_FUZZ_SESSIONS   sessions to run (default 20000)
//   MTAD_FUZZ_SEED       the seed (default: random; printed, so a failure can be replayed)
//   MTAD_FUZZ_PARALLEL   connections at a time (default 40)
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { isRoot, makeInstance, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { until } from '../helpers/wait';

const SESSIONS = Number(process.env.MTAD_FUZZ_SESSIONS ?? 20000);
const SEED = Number(process.env.MTAD_FUZZ_SEED ?? crypto.randomInt(2 ** 31));
const PARALLEL = Number(process.env.MTAD_FUZZ_PARALLEL ?? 40);
// A session that has not ended this long after its final QUIT is a hang (mtad answers in milliseconds).
const SESSION_DEADLINE_MS = 15000;

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rand = ReturnType<typeof prng>;
const int = (r: Rand, n: number): number => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)];

const ADDRS = [
  '<alice>', '<alice@lab.test>', 'bob', '<bob@[127.0.0.1]>', '<x@remote.test>', '<alice%remote.test@lab.test>',
  '<@a.test,@b.test:alice@lab.test>', '<"a b"@lab.test>', '<>', '<postmaster>', `<${'a'.repeat(300)}@lab.test>`,
  '<alice> SIZE=99999999999', '<alice> BODY=8BITMIME', '<a@b.test> SMTPUTF8', '<älice@lab.test>', '<alice@lab.test',
  'alice@lab.test>', '<root@localhost>', '<remote.test!alice>', '<alice@[10.0.0.1]>', ':', '<<alice>>',
];
const VERBS = [
  'HELO x.test', 'EHLO x.test', 'EHLO', 'HELO', 'RSET', 'NOOP', 'NOOP hello', 'VRFY alice', 'EXPN alice', 'HELP', 'HELP DATA',
  'STARTTLS', 'AUTH PLAIN AGxhAHg=', 'BDAT 10 LAST', 'ETRN lab.test', 'TURN', 'GET / HTTP/1.0', 'DATA', 'DATA x', '.', '',
  'MAIL FROM:', 'RCPT TO:', 'MAIL', 'RCPT', 'QUIT',
];
const SPECIAL = [0x00, 0x0a, 0x0d, 0x2e, 0xff, 0x20, 0x3c, 0x3e, 0x3a, 0x7f, 0x80, 0x09, 0x40];
const SNIPPETS = ['\r\n.\r\n', '\n.\n', '\r.\r\n', 'DATA\r\n', 'MAIL FROM:<e@v.test>\r\n', 'From evil\r\n', '..\r\n', '\r\n'];

// Recipients in the spellings of ours that mtad takes, and in look-alikes of them.
const OUR_DOMAINS = ['lab.test', 'LAB.TEST', 'Lab.Test.', 'localhost', '[127.0.0.1]'];
const LOOK_ALIKE_DOMAINS = [
  'evil-lab.test', 'x.lab.test', 'lab.test.evil.example', 'lab.testt', 'lab.tes', 'ab.test', 'lab.test..', '.lab.test', 'lab..test',
  'localhost.evil.example', 'sub.localhost', '[127.0.0.2]', '[127.1]', '[IPv6:::1]', '[127.0.0.1].evil.example', 'xn--lb-8kc.test',
  'l\u0430b.test', 'lab.test\u200b', '\uff4cab.test', 'remote.test', 'lab.test@remote.test',
];
const LOCAL_PARTS = [
  'alice', 'bob', 'postmaster', 'ALICE', '"alice"', '"b\\ob"', 'alice+x', 'eve', 'alice%remote.test', 'remote.test!alice',
  '"alice@remote.test"', '@relay.test:alice', '@relay.test,@b.test:bob',
];

/** One recipient as written after "RCPT TO:", sometimes mutated; never a CR or LF, so one line, one reply. */
function fuzzedRecipient(r: Rand): Buffer {
  const domain = r() < 0.15 ? '' : `@${pick(r, r() < 0.4 ? OUR_DOMAINS : LOOK_ALIKE_DOMAINS)}`;
  let a = Buffer.from(`${pick(r, LOCAL_PARTS)}${domain}`, 'utf8');
  if (r() < 0.4) a = Buffer.from(mutate(r, a).filter((b) => b !== 0x0a && b !== 0x0d));
  return r() < 0.8 ? Buffer.concat([Buffer.from('<'), a, Buffer.from('>')]) : a;
}

/**
 * Whether mtad may ever answer 250 to "RCPT TO:" + this text: only a local name or
 * an address at exactly one of our domains (case aside, one root dot) or at the
 * literal it listens on, in printable ASCII, with nothing after it, no source route
 * and no relay hack (%, !, an "@" in the local part). Stricter than the policy, never looser.
 */
function mayAccept(written: string): boolean {
  let a = written.replace(/^[ \t]+|[ \t]+$/g, '');
  if (a.startsWith('<')) {
    if (!a.endsWith('>') || a.indexOf('>') !== a.length - 1) return false;
    a = a.slice(1, -1);
  }
  if (!a || /[^\x21-\x7e]/.test(a.replace(/"[^"]*"/g, '""')) || /[^\x20-\x7e]/.test(a) || a.startsWith('@') || /[%!]/.test(a)) return false;
  const at = a.lastIndexOf('@');
  if (at < 0) return true;
  return !a.slice(0, at).includes('@') && /^(lab\.test|localhost|\[127\.0\.0\.1\])\.?$/i.test(a.slice(at + 1));
}

/** The replies in a session's output, whole (a multi-line reply is one). */
function replies(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (const l of text.split('\r\n').slice(0, -1)) {
    cur += `${l}\r\n`;
    if (l[3] !== '-') { out.push(cur); cur = ''; }
  }
  return out;
}

function validSession(r: Rand): string {
  const rcpts = Array.from({ length: 1 + int(r, 3) }, () => pick(r, ['<alice>', '<bob@lab.test>', 'alice', '<postmaster>']));
  const body = Array.from({ length: int(r, 8) }, () => pick(r, ['hello', '.leading dot', 'From here', '', '>From x', 'ütf8 bytes', 'x'.repeat(int(r, 1200))]));
  return `${pick(r, ['EHLO', 'HELO'])} fuzz.test\r\nMAIL FROM:<fuzz@fuzz.test>\r\n${rcpts.map((a) => `RCPT TO:${a}\r\n`).join('')}` +
    `DATA\r\nSubject: fuzz\r\n\r\n${body.map((l) => (l.startsWith('.') ? `.${l}` : l)).join('\r\n')}\r\n.\r\n`;
}

function mutate(r: Rand, b: Buffer): Buffer {
  let out = b;
  for (let n = 1 + int(r, 4); n > 0; n--) {
    const at = int(r, out.length + 1);
    switch (int(r, 6)) {
      case 0: if (at < out.length) { out = Buffer.from(out); out[at] ^= 1 << int(r, 8); } break;
      case 1: out = Buffer.concat([out.subarray(0, at), Buffer.from([pick(r, SPECIAL)]), out.subarray(at)]); break;
      case 2: out = Buffer.concat([out.subarray(0, at), out.subarray(Math.min(out.length, at + 1 + int(r, 16)))]); break;
      case 3: out = Buffer.concat([out.subarray(0, at), out.subarray(at, at + int(r, 64)), out.subarray(at)]); break;
      case 4: out = Buffer.concat([out.subarray(0, at), Buffer.from(pick(r, SNIPPETS), 'latin1'), out.subarray(at)]); break;
      default: out = Buffer.concat([out.subarray(0, at), Buffer.from(Array.from({ length: 1 + int(r, 8) }, () => int(r, 256))), out.subarray(at)]);
    }
  }
  return out;
}

/**
 * One session's bytes, by kind, and how the client leaves: most end with an end of
 * data and QUIT, so mtad closes them; a 'vanish' session stops at a random byte and
 * leaves with a FIN or a RST.
 */
function session(r: Rand): { kind: string; bytes: Buffer; leave?: 'FIN' | 'RST'; rcpts?: Buffer[] } {
  const k = r();
  if (k >= 0.95) {
    const whole = mutate(r, Buffer.from(validSession(r), 'latin1'));
    return { kind: 'vanish', bytes: whole.subarray(0, int(r, whole.length + 1)), leave: r() < 0.5 ? 'FIN' : 'RST' };
  }
  let kind: string;
  let bytes: Buffer;
  if (k < 0.1) {
    kind = 'valid';
    bytes = Buffer.from(validSession(r), 'latin1');
  } else if (k < 0.4) {
    kind = 'mutated';
    bytes = mutate(r, Buffer.from(validSession(r), 'latin1'));
  } else if (k < 0.5) {
    // Replies come in order, one per line: reply 3 + i answers recipient i.
    const rcpts = Array.from({ length: 1 + int(r, 8) }, () => fuzzedRecipient(r));
    return {
      kind: 'rcpt',
      rcpts,
      bytes: Buffer.concat([Buffer.from('EHLO fuzz.test\r\nMAIL FROM:<fuzz@fuzz.test>\r\n'),
        ...rcpts.flatMap((a) => [Buffer.from('RCPT TO:'), a, Buffer.from('\r\n')]), Buffer.from('RSET\r\nQUIT\r\n')]),
    };
  } else if (k < 0.8) {
    kind = 'burst';
    const cmds = Array.from({ length: 1 + int(r, 30) }, () => {
      const v = pick(r, VERBS);
      return v.endsWith(':') ? `${v}${pick(r, ADDRS)}` : v;
    }).filter((c) => c !== 'QUIT' || r() < 0.2);
    bytes = Buffer.from(cmds.map((c) => `${c}${r() < 0.1 ? '\n' : '\r\n'}`).join(''), 'latin1');
  } else if (k < 0.9) {
    kind = 'long line';
    bytes = Buffer.from(`EHLO x.test\r\n${pick(r, ['NOOP ', 'MAIL FROM:<', 'RCPT TO:<', 'HELO '])}${'A'.repeat(1000 + int(r, 80000))}\r\nNOOP\r\n`, 'latin1');
  } else {
    // (k >= 0.95: 'vanish' sessions, above)
    kind = 'binary';
    bytes = Buffer.from(Array.from({ length: 1 + int(r, 2000) }, () => int(r, 256)));
  }
  return { kind, bytes: Buffer.concat([bytes, Buffer.from('\r\n.\r\nQUIT\r\n')]) };
}

const REPLY_LINE = /^[2-5]\d\d[ -]/;

interface Outcome { text: string; hung: boolean }

/** Sends the bytes in 1 to 3 segments, then reads until mtad closes the connection (or leaves first). */
function run(port: number, r: Rand, bytes: Buffer, leave?: 'FIN' | 'RST'): Promise<Outcome> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let hung = false;
    const timer = setTimeout(() => { hung = true; sock.resetAndDestroy(); }, SESSION_DEADLINE_MS);
    sock.on('data', (d) => chunks.push(d));
    sock.on('error', () => undefined); // a reset by mtad (after 421) is an allowed end
    sock.on('close', () => { clearTimeout(timer); resolve({ text: Buffer.concat(chunks).toString('latin1'), hung }); });
    sock.on('connect', () => {
      const cuts = Array.from({ length: int(r, 3) }, () => int(r, bytes.length)).sort((a, b) => a - b);
      let from = 0;
      for (const c of [...cuts, bytes.length]) { if (c > from) sock.write(bytes.subarray(from, c)); from = Math.max(from, c); }
      if (leave === 'FIN') sock.end();
      else if (leave === 'RST') sock.resetAndDestroy();
    });
  });
}

// As root, mtad runs as a uid of its own here, one that no account and no other test
// uses, so every file that uid owns is mtad's doing. Such a uid can write only in the
// spool it owns and in world-writable directories: find looks in those alone (others'
// private temp dirs are pruned unread). Without root mtad is this user, like the other
// tests' files, and there is nothing to tell apart.
const FUZZ_UID = isRoot() ? 200000 + crypto.randomInt(100000) : process.getuid!();
const CHECK_OUTSIDE = !needsRoot('fuzz: nothing written outside the spool', 'mtad needs a uid of its own');

function ownedOutside(spool: string): string[] {
  // Other tests create and remove their temp dirs meanwhile: find exits 1 when one
  // vanishes under it, which says nothing about mtad. Any other complaint fails.
  const r = spawnSync('find', ['/tmp', '/var/tmp', '/dev/shm', '/run/lock', '-xdev',
    '(', '-uid', String(FUZZ_UID), '-print', ')', '-o', '(', '-type', 'd', '!', '-perm', '-0003', '-prune', ')'], { encoding: 'utf8', timeout: 60000 });
  const complaints = r.stderr.split('\n').filter((l) => l && !/No such file or directory$/.test(l));
  if ((r.status !== 0 && r.status !== 1) || complaints.length) throw new Error(`find failed (${r.status}): ${r.stderr}`);
  const out = r.stdout;
  return out.split('\n').filter((p) => p && p !== spool && !p.startsWith(`${spool}/`));
}

function snapshot(dir: string, skip: string): Map<string, string> {
  const m = new Map<string, string>();
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (p === skip) continue;
      const st = fs.lstatSync(p);
      m.set(p, `${st.mode}:${st.uid}:${st.size}:${st.mtimeMs}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return m;
}

let m: Mtad;
let ownedBefore: string[] = [];
let before = new Map<string, string>();
beforeAll(async () => {
  const dir = makeInstance({ users: ['alice', 'bob'] });
  if (isRoot()) for (const f of ['spool', 'users']) fs.chownSync(path.join(dir, f), FUZZ_UID, FUZZ_UID);
  m = await startMtad({ dir, env: { MTAD_MAX_CLIENTS: String(PARALLEL * 2), MTAD_MAX_CLIENTS_PER_IP: String(PARALLEL * 2) } });
});
afterAll(async () => {
  const { code } = await m.stop();
  expect(code).toBe(0);
  removeInstance(m.dir);
});

it(`survives ${SESSIONS} fuzzed sessions (seed printed)`, async () => {
  console.log(`fuzz: seed ${SEED} (replay: MTAD_FUZZ_SEED=${SEED} MTAD_FUZZ_SESSIONS=${SESSIONS}), ${PARALLEL} parallel`);
  expect(m.output()).toContain(`(uid ${FUZZ_UID})`);
  ownedBefore = CHECK_OUTSIDE ? ownedOutside(m.spool) : [];
  before = snapshot(m.dir, m.spool);
  const master = prng(SEED);
  const seeds = Array.from({ length: SESSIONS }, () => Math.floor(master() * 2 ** 32));
  const kinds = new Map<string, number>();
  const codes = new Map<string, number>();
  const bad: string[] = [];
  const relayed: string[] = [];
  const rcptCodes = new Map<string, number>();
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: PARALLEL }, async () => {
    for (let i = next++; i < SESSIONS; i = next++) {
      const r = prng(seeds[i]);
      const { kind, bytes, leave, rcpts } = session(r);
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      const { text, hung } = await run(m.port, r, bytes, leave);
      const answers = replies(text);
      for (const [n, a] of (rcpts ?? []).entries()) {
        const reply = answers[3 + n];
        if (reply === undefined) break;
        const written = a.toString('latin1');
        rcptCodes.set(reply.slice(0, 3), (rcptCodes.get(reply.slice(0, 3)) ?? 0) + 1);
        if (reply.startsWith('250') && !mayAccept(written)) {
          relayed.push(`session ${i} (seed ${seeds[i]}): RCPT TO:${JSON.stringify(written)} got ${JSON.stringify(reply)}`);
        }
      }
      const lines = text.split('\r\n');
      // A client that resets may cut the last reply short itself; every other reply ends with CRLF.
      const tail = leave === 'RST' ? '' : lines.pop();
      if (leave === 'RST') lines.pop();
      const wrong = lines.find((l) => !REPLY_LINE.test(l) || /[\r\n]/.test(l));
      for (const l of lines) codes.set(l.slice(0, 1), (codes.get(l.slice(0, 1)) ?? 0) + 1);
      if (hung || tail || wrong !== undefined || (!lines.length && !leave)) {
        bad.push(`session ${i} (${kind}, seed ${seeds[i]}): ${hung ? 'no close within the deadline; ' : ''}` +
          `${!lines.length ? 'no reply; ' : ''}${tail ? `unterminated ${JSON.stringify(tail.slice(0, 80))}; ` : ''}` +
          `${wrong !== undefined ? `bad line ${JSON.stringify(wrong.slice(0, 80))}` : ''}`);
      }
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`fuzz: ${SESSIONS} sessions in ${secs.toFixed(1)} s (${(SESSIONS / secs).toFixed(0)}/s); ` +
    `kinds ${JSON.stringify(Object.fromEntries(kinds))}; reply lines by class ${JSON.stringify(Object.fromEntries(codes))}`);
  expect(bad.slice(0, 10).join('\n')).toBe('');
  // No recipient outside our domains was ever accepted; and the check saw both answers.
  console.log(`fuzz: fuzzed recipients by reply ${JSON.stringify(Object.fromEntries(rcptCodes))}`);
  expect(relayed.slice(0, 10).join('\n')).toBe('');
  if (SESSIONS >= 1000) expect([rcptCodes.get('250') ?? 0, rcptCodes.get('554') ?? 0].every((n) => n > 0)).toBe(true);

  // Every session over, nothing half-received is left in the queue.
  await until(() => m.output().split(' connect from ').length === m.output().split(' disconnect from ').length, 60000, 'the end of every session in the log', 50);
  expect(fs.readdirSync(path.join(m.queue, 'tmp'))).toEqual([]);
  expect(fs.readdirSync(path.join(m.queue, 'active'))).toEqual([]);

  // Still up, and still delivering.
  expect(() => process.kill(m.pid, 0)).not.toThrow();
  const c = await SmtpClient.connect(m.port);
  await c.cmd('EHLO after.test');
  const r = await c.send('after@after.test', ['alice'], 'Subject: after the fuzz\r\n\r\nstill delivering\r\n');
  expect(r.raw).toMatch(/^250 2\.0\.0 Ok: queued as/);
  await c.quit();
  const box = readMbox(m.mailbox('alice'));
  expect(box.filter((x) => x.header('Subject') === 'after the fuzz')).toHaveLength(1);
  console.log(`fuzz: alice's mailbox holds ${box.length} messages, all parsed by Python's mailbox`);

  // Nothing written in its instance's directory outside the spool (and the queue inside it).
  const after = snapshot(m.dir, m.spool);
  const changed = [...after].filter(([p, v]) => before.get(p) !== v).map(([p, v]) => `${p} ${before.get(p)} -> ${v}`);
  expect(changed.join('\n')).toBe('');
  expect(m.output()).not.toMatch(/internal error|unhandled|uncaught/i);
}, 600000);

it.skipIf(!CHECK_OUTSIDE)('wrote no file anywhere else a uid of its own could write (the world-writable temp dirs)', () => {
  expect(before.size, 'the fuzz ran first').toBeGreaterThan(0);
  expect(ownedOutside(m.spool)).toEqual(ownedBefore);
});
