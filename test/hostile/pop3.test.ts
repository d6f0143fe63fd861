// Hostile POP3 clients: thousands of seeded random sessions (bad commands, bad
// numbers, raw bytes, overlong lines, half-finished SASL, pipelined bursts),
// clients that vanish mid-message, and too many connections. Every reply is
// well-formed, nothing reaches the log as an internal error, and SMTP keeps
// serving throughout.
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, mtadForFile } from '../helpers/mtad';
import { Pop3Client } from '../helpers/pop3';
import { SmtpClient } from '../helpers/smtp';

const SESSIONS = Number(process.env.MTAD_POP3_FUZZ_SESSIONS ?? 5000);
const LANES = 24;
const users = Array.from({ length: LANES }, (_, i) => `fuzz${i}`);
const passwords = Object.fromEntries(users.map((u) => [u, `pw-${u}`]));
// No pause after a failed login: the fuzzer fails thousands of times on purpose.
const get = mtadForFile({ users: [...users, 'alice'], passwords: { ...passwords, alice: 'alice-pw' }, env: { MTAD_POP3_AUTH_DELAY: '0', MTAD_MAX_CLIENTS: '200', MTAD_MAX_CLIENTS_PER_IP: '30', MTAD_MAX_LINE_LENGTH: '512' } });

function rng(seed: number): () => number {
  let s = (seed * 2654435761) >>> 0;
  return () => { s = (s * 1664525 + 1013904223) >>> 0; return s / 2 ** 32; };
}

const NUMBERS = ['1', '2', '3', '0', '-1', '+1', '99999999999', 'abc', '', '1 2', '4294967296', '007'];

function randomLine(r: () => number): string {
  const pick = <T>(a: T[]): T => a[Math.floor(r() * a.length)];
  const n = (): string => pick(NUMBERS);
  const x = r();
  // Few lines that cost an scrypt (PASS, a SASL answer): hundreds of milliseconds each on a busy box.
  if (x < 0.01) return `PASS ${pick(['x', '', 'pw-fuzz1', '\xff\x00'])}`;
  if (x < 0.07) return Array.from({ length: Math.floor(r() * 40) }, () => String.fromCharCode(Math.floor(r() * 256))).join('').replace(/\n/g, '');
  if (x < 0.10) return 'A'.repeat(500 + Math.floor(r() * 3000));
  if (x < 0.11) return `AUTH PLAIN${pick(['', ' =', ' *', ' !!!', ' AGZ1enoxAHB3LWZ1enox', ' dGVzdA==', ' a b'])}`;
  if (x < 0.13) return pick(['*', '', ' ', 'AGFsaWNlAHg=']);
  return `${pick(['USER', 'STAT', 'LIST', 'LIST', 'RETR', 'TOP', 'DELE', 'RSET', 'NOOP', 'UIDL', 'UIDL', 'CAPA', 'AUTH', 'APOP', 'STLS', 'list', 'Retr', 'XYZZY'])}` +
    `${r() < 0.7 ? ` ${n()}` : ''}${r() < 0.3 ? ` ${n()}` : ''}`;
}

const MULTI = new Set(['CAPA', 'LIST', 'UIDL', 'RETR', 'TOP', 'AUTH']);
const STATUS = /^(\+OK|-ERR)( [\x20-\x7e]*)?$/;

/**
 * Walks the server's bytes against the commands sent, as a client would: one
 * status line per command, a body up to "." after +OK to a multi-line command.
 * Returns what is wrong, or null. The server may hang up early (QUIT, too many
 * errors, failed logins): then the rest of the commands get nothing.
 */
function checkDialogue(commands: string[], bytes: Buffer): string | null {
  const text = bytes.toString('latin1');
  if (text.length && !text.endsWith('\r\n')) return `ends inside a line: ${JSON.stringify(text.slice(-80))}`;
  const lines = text.split('\r\n');
  lines.pop();
  let i = 0;
  const next = (): string | undefined => lines[i++];
  if (!STATUS.test(next() ?? '')) return 'bad greeting';
  let sasl = false;
  for (const c of commands) {
    const status = next();
    if (status === undefined) return null; // hung up
    if (status === '+ ') { sasl = true; continue; }
    if (!STATUS.test(status)) return `bad status line ${JSON.stringify(status)} for ${JSON.stringify(c.slice(0, 60))}`;
    const wasSasl = sasl;
    sasl = false;
    const [name, ...args] = c.split(' ').filter(Boolean);
    const multi = !wasSasl && status.startsWith('+OK') && MULTI.has((name ?? '').toUpperCase()) &&
      (['RETR', 'TOP', 'CAPA'].includes(name.toUpperCase()) || args.length === 0);
    if (multi) {
      for (;;) {
        const l = next();
        if (l === undefined) return `body of ${c} cut short`;
        if (l === '.') break;
        if (l.startsWith('.') && !l.startsWith('..')) return `line not dot-stuffed in ${c}`;
      }
    }
    if (status === '-ERR Too many bad commands.' || /^-ERR Too many/.test(lines[i] ?? '')) {
      if (lines[i] !== undefined && /^-ERR Too many/.test(lines[i])) i++;
      break;
    }
  }
  if (i < lines.length) return `unexpected lines after the end: ${JSON.stringify(lines.slice(i, i + 3))}`;
  return null;
}

function session(port: number, payload: Buffer, timeoutMs = 30000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    const t = setTimeout(() => { s.destroy(); reject(new Error(`no end of session: ${Buffer.concat(got).toString('latin1').slice(-300)}`)); }, timeoutMs);
    s.on('connect', () => s.write(payload));
    s.on('data', (d) => got.push(d));
    s.on('error', () => undefined);
    s.on('close', () => { clearTimeout(t); resolve(Buffer.concat(got)); });
  });
}

async function send(m: Mtad, to: string, message: string): Promise<void> {
  const c = await SmtpClient.connect(m.port);
  await c.cmd('HELO fuzz.test');
  expect((await c.send('f@fuzz.test', [`${to}@${HOSTNAME}`], message)).code).toBe(250);
  await c.quit();
}

/** A connection the server greets with +OK, once it has counted the closes before it. */
async function admitted(m: Mtad, from?: string): Promise<Pop3Client> {
  for (let t = 0; ; t++) {
    const c = await Pop3Client.connect(m.pop3Port!, '127.0.0.1', from);
    if (c.greeting.startsWith('+OK')) return c;
    c.close();
    expect(t).toBeLessThan(100);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('POP3 under hostile clients', () => {
  it(`${SESSIONS} seeded random sessions: every reply well-formed, mtad and SMTP serving throughout`, async () => {
    const m = get();
    for (const u of users) for (let k = 0; k < 3; k++) await send(m, u, `Subject: ${u} ${k}\r\n\r\n.\r\nFrom x\r\n>From y\r\n`);
    let done = 0;
    const failures: string[] = [];
    await Promise.all(Array.from({ length: LANES }, async (_, lane) => {
      for (let k = lane; k < SESSIONS; k += LANES) {
        const r = rng(k + 1);
        const commands: string[] = [];
        if (r() < 0.02) commands.push(`USER fuzz${lane}`, `PASS pw-fuzz${lane}`);
        const count = 1 + Math.floor(r() * 10);
        for (let j = 0; j < count; j++) commands.push(randomLine(r));
        // Twice: a first QUIT may be taken as the answer to an unfinished AUTH PLAIN.
        commands.push('QUIT', 'QUIT');
        const bad = await session(m.pop3Port!, Buffer.from(commands.map((c) => `${c}\r\n`).join(''), 'latin1'))
          .then((out) => checkDialogue(commands, out), (err: Error) => err.message);
        if (bad) failures.push(`session ${k}: ${bad} (sent ${JSON.stringify(commands).slice(0, 400)})`);
        done++;
        if (k % 1000 === lane) await send(m, 'alice', `Subject: during fuzz ${k}\r\n\r\nstill serving\r\n`);
      }
    }));
    expect(failures.slice(0, 5)).toEqual([]);
    expect(done).toBe(SESSIONS);
    expect(m.output()).not.toMatch(/internal error|unhandled rejection/);
    await send(m, 'alice', 'Subject: after fuzz\r\n\r\nstill serving\r\n');
    expect(readMbox(m.mailbox('alice')).map((x) => x.header('Subject'))).toContain('after fuzz');
    // Every fuzz mailbox still parses, whatever the sessions deleted.
    for (const u of users) readMbox(m.mailbox(u));
  }, 900_000);

  it('a burst of 2,000 pipelined commands in one write is answered in order', async () => {
    const m = get();
    const c = await Pop3Client.connect(m.pop3Port!);
    const cmds = ['USER fuzz0', 'PASS pw-fuzz0', ...Array.from({ length: 2000 }, (_, i) => (i % 2 ? 'NOOP' : 'STAT'))];
    c.write(cmds.map((x) => `${x}\r\n`).join(''));
    expect(await c.line()).toBe('+OK');
    expect(await c.line()).toMatch(/^\+OK Logged in/);
    for (let i = 0; i < 2000; i++) expect(await c.line()).toMatch(i % 2 ? /^\+OK$/ : /^\+OK \d+ \d+$/);
    expect(await c.quit()).toMatch(/^\+OK/);
  });

  it('an overlong line gets -ERR and the session goes on; a 10 MiB line is not kept', async () => {
    const m = get();
    const c = await Pop3Client.connect(m.pop3Port!);
    c.write(`${'X'.repeat(600)}\r\n`);
    expect(await c.line()).toBe('-ERR Input line too long.');
    c.write(Buffer.alloc(10 * 1024 * 1024, 0x41));
    c.write('\r\nNOOP\r\nCAPA\r\n');
    expect(await c.line()).toBe('-ERR Input line too long.');
    expect(await c.line()).toMatch(/^-ERR/); // NOOP before login
    expect((await c.readMulti()).lines).toContain('UIDL');
    expect(await c.quit()).toMatch(/^\+OK/);
  });

  it('clients that vanish mid-RETR or mid-login leave the mailbox free and unchanged', async () => {
    const m = get();
    await send(m, 'alice', `Subject: big\r\n\r\n${'0123456789abcdef'.repeat(64 * 1024)}\r\n`);
    for (let k = 0; k < 10; k++) {
      const c = await Pop3Client.connect(m.pop3Port!);
      await c.login('alice', 'alice-pw');
      c.write('DELE 1\r\nRETR 2\r\n');
      if (k % 2) c.socket.resetAndDestroy(); else c.close();
      const half = await Pop3Client.connect(m.pop3Port!);
      half.write('USER alice\r\nPA');
      half.close();
    }
    // The mailbox is free again, with nothing deleted.
    const c = await Pop3Client.connect(m.pop3Port!);
    for (let t = 0; ; t++) {
      const r = await c.login('alice', 'alice-pw');
      if (r.startsWith('+OK')) break;
      expect(r).toMatch(/^-ERR \[IN-USE\]/);
      expect(t).toBeLessThan(200);
      await new Promise((res) => setTimeout(res, 50));
    }
    expect((await c.multi('LIST')).lines.length).toBe(readMbox(m.mailbox('alice')).length);
    await c.quit();
  });

  it('connections from one address past MTAD_MAX_CLIENTS_PER_IP get [SYS/TEMP]; one freed is one more allowed (counted per address: 127.0.0.2 stands for another machine)', async () => {
    const m = get();
    const open = await Promise.all(Array.from({ length: 30 }, () => Pop3Client.connect(m.pop3Port!, '127.0.0.1', '127.0.0.2')));
    const local = await Pop3Client.connect(m.pop3Port!);
    expect(local.greeting, 'another address has its own count').toMatch(/^\+OK/);
    local.close();
    const extra = await Pop3Client.connect(m.pop3Port!, '127.0.0.1', '127.0.0.2').catch((e: Error) => e);
    expect(extra).toBeInstanceOf(Pop3Client);
    expect((extra as Pop3Client).greeting).toBe('-ERR [SYS/TEMP] Too many connections from this address, try again later.');
    await (extra as Pop3Client).closedByServer();
    await open[0].quit();
    // The freed slot is counted back once the server has seen the close.
    (await admitted(m, '127.0.0.2')).close();
    await send(m, 'alice', 'Subject: smtp has its own count\r\n\r\nx\r\n');
    await Promise.all(open.slice(1).map((c) => c.quit()));
  });

  it('too many bad commands end the session with a reply', async () => {
    const c = await admitted(get());
    for (let i = 0; i < 19; i++) expect(await c.cmd('BOGUS')).toBe('-ERR Unknown command.');
    expect(await c.cmd('BOGUS')).toBe('-ERR Unknown command.');
    expect(await c.line()).toBe('-ERR Too many bad commands.');
    await c.closedByServer();
    expect(c.isClosed).toBe(true);
  });
});
