// bin/sendmail, bin/mailq and bin/newaliases against a real mtad: the sendmail(1)
// options a local program uses, what arrives in the mailbox (read back with
// Python's mailbox), the exit codes, and the submitting user's line as the
// kernel reports it, also for an ordinary user who claims to be root.
import { spawn, spawnSync, SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { HOSTNAME, Mtad, readableInstall, removeInstance, ROOT, runCli, startMtad } from '../helpers/mtad';

interface Run { status: number | null; stdout: string; stderr: string }

const env = (m: Mtad, extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({ ...m.cliEnv(), MTAD_PORT: String(m.port), ...extra });

function run(m: Mtad, bin: string, args: string[], input: string | Buffer = '', opts: { wrapper?: string[]; install?: string; extra?: Record<string, string> } = {}): Run {
  const argv = [...(opts.wrapper ?? []), process.execPath, path.join(opts.install ?? ROOT, 'bin', bin), ...args];
  const r: SpawnSyncReturns<string> = spawnSync(argv[0], argv.slice(1), { env: env(m, opts.extra), input, encoding: 'utf8', timeout: 60000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
const sendmail = (m: Mtad, args: string[], input: string | Buffer = ''): Run => run(m, 'sendmail', args, input);
const box = (m: Mtad, user: string) => (fs.existsSync(m.mailbox(user)) ? readMbox(m.mailbox(user)) : []);
const myUid = process.getuid!();
const receivedOf = (msg: { headers: Array<[string, string]> }): string[] => msg.headers.filter(([k]) => k === 'Received').map(([, v]) => v);

let mtad: Mtad;
beforeAll(async () => {
  // Room for the 50 MiB message; a first retry an hour away, so queued mail stays until flushed.
  mtad = await startMtad({
    users: ['alice', 'bob', 'carol'],
    env: { MTAD_MAX_MESSAGE_SIZE: String(60 * 1024 * 1024), MTAD_MAILBOX_SIZE_LIMIT: '0', MTAD_LOCK_TIMEOUT: '0.2', MTAD_RETRY_MIN_DELAY: '3600', MTAD_RETRY_MAX_DELAY: '3600' },
  });
});
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code, mtad.output()).toBe(0);
  removeInstance(mtad.dir);
});
const clear = (...users: string[]): void => { for (const u of users) fs.rmSync(mtad.mailbox(u), { force: true }); };

describe('sendmail: a message from a local program', () => {
  it('delivers to recipients on the command line, the bytes as written, with From, Date, Message-Id and the submitting user added', () => {
    clear('alice', 'bob');
    const body = 'Subject: hello from cron\nX-Test: kept  as\t written\n\nline one\n.starts with a dot\nFrom the start of a line\n\ttabbed \xe9\n';
    const r = sendmail(mtad, ['alice', 'bob@lab.test'], Buffer.from(body, 'latin1'));
    expect(r, r.stderr).toMatchObject({ status: 0, stdout: '', stderr: '' });
    for (const user of ['alice', 'bob']) {
      const [m, ...more] = box(mtad, user);
      expect(more).toEqual([]);
      expect(receivedOf(m)).toEqual([expect.stringMatching(new RegExp(`^by ${HOSTNAME} \\(mtad, from userid ${myUid}\\)\\s+id [0-9A-F]{10}; `))]);
      expect(m.header('Subject')).toBe('hello from cron');
      expect(m.header('Date')).toMatch(/^\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$/);
      expect(m.header('Message-Id')).toMatch(new RegExp(`^<\\d{14}\\.[0-9a-f]{12}@${HOSTNAME.replace('.', '\\.')}>$`));
      expect(m.header('From')).toMatch(new RegExp(`@${HOSTNAME.replace('.', '\\.')}>?$`));
      // The user's header lines and body, byte for byte (but for mboxrd's ">" before "From ", as the mbox stores it).
      expect(m.raw.toString('latin1')).toContain('Subject: hello from cron\nX-Test: kept  as\t written\n');
      expect(m.body.toString('latin1')).toBe('line one\n.starts with a dot\n>From the start of a line\n\ttabbed \xe9\n');
    }
  });

  it('adds nothing the message already has, and keeps CRLF input as LF lines', () => {
    clear('carol');
    const msg = 'From: Someone <someone@lab.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <fixed@lab.test>\r\nSubject: complete\r\n\r\nbody\r\n';
    expect(sendmail(mtad, ['carol'], msg).status).toBe(0);
    const [m] = box(mtad, 'carol');
    expect(m.headers.map(([k]) => k)).toEqual(['Return-Path', 'Delivered-To', 'X-UIDL', 'Received', 'From', 'Date', 'Message-ID', 'Subject']);
    expect(m.body.toString()).toBe('body\n');
  });

  it('-F and -f: the full name in the added From, the envelope sender from -f', () => {
    clear('alice');
    expect(sendmail(mtad, ['-F', 'Cron Daemon', 'alice'], 'Subject: f1\n\nx\n').status).toBe(0);
    expect(sendmail(mtad, ['-f', 'backup@lab.test', '-F', 'Nightly "Backup"', 'alice'], 'Subject: f2\n\nx\n').status).toBe(0);
    expect(sendmail(mtad, ['-fnoreply', 'alice'], 'Subject: f3\n\nx\n').status).toBe(0);
    const [a, b, c] = box(mtad, 'alice');
    expect(a.header('From')).toMatch(/^Cron Daemon <[a-z_][a-z0-9_-]*@lab\.test>$/);
    expect(b.from_).toMatch(/^backup@lab\.test /);
    expect(b.header('Return-Path')).toBe('<backup@lab.test>');
    expect(b.header('From')).toBe('"Nightly \\"Backup\\"" <backup@lab.test>');
    expect(c.header('Return-Path')).toBe('<noreply@lab.test>');
    for (const m of [a, b, c]) expect(receivedOf(m)[0]).toContain(`(mtad, from userid ${myUid})`);
  });

  it('-t: recipients from To, Cc and Bcc (added to those on the command line), Bcc removed, each delivered once', () => {
    clear('alice', 'bob', 'carol');
    const msg = 'To: Alice <alice@lab.test>, bob\nCc: "Alice again" <alice>,\n  (a comment) carol@lab.test\nBcc: bob@lab.test\nSubject: extracted\n\nhi all\n';
    const r = sendmail(mtad, ['-t', 'carol'], msg);
    expect(r, r.stderr).toMatchObject({ status: 0, stderr: '' });
    for (const u of ['alice', 'bob', 'carol']) {
      const msgs = box(mtad, u);
      expect(msgs.map((m) => m.header('Subject'))).toEqual(['extracted']);
      expect(msgs[0].header('Bcc')).toBeUndefined();
      expect(msgs[0].raw.toString()).toContain('To: Alice <alice@lab.test>, bob\nCc: "Alice again" <alice>,\n  (a comment) carol@lab.test\nSubject: extracted\n');
    }
    // A message that names nobody is a usage error, not a silent success.
    const none = sendmail(mtad, ['-t'], 'Subject: nobody\n\nx\n');
    expect(none.status).toBe(64);
    expect(none.stderr).toBe('sendmail: no recipient addresses found in the message header (-t)\n');
  });

  it('a lone "." ends the message unless -i or -oi is given', () => {
    clear('alice');
    expect(sendmail(mtad, ['alice'], 'Subject: dot ends\n\nbefore\n.\nafter\n').status).toBe(0);
    expect(sendmail(mtad, ['-i', 'alice'], 'Subject: dash i\n\nbefore\n.\nafter\n').status).toBe(0);
    expect(sendmail(mtad, ['-oi', 'alice'], 'Subject: dash oi\n\nbefore\n.\nafter\n..\n').status).toBe(0);
    const [a, b, c] = box(mtad, 'alice');
    expect(a.body.toString()).toBe('before\n');
    expect(b.body.toString()).toBe('before\n.\nafter\n');
    expect(c.body.toString()).toBe('before\n.\nafter\n..\n');
  });

  it('accepts and ignores the historical options; an unknown option is a usage error', () => {
    clear('bob');
    const r = sendmail(mtad, ['-oem', '-odi', '-oQ/var/spool/mqueue', '-om', '-O', 'DeliveryMode=b', '-L', 'cron', '-B', '8BITMIME', '-N', 'never',
      '-R', 'full', '-V', 'envid', '-X', '/tmp/nowhere.log', '-h', '17', '-m', '-n', '-U', '-G', '-c', '-x', '-em', '-p', 'local', '-o7', '-bm', 'bob'], 'Subject: ignored options\n\nx\n');
    expect(r, r.stderr).toMatchObject({ status: 0, stderr: '' });
    expect(box(mtad, 'bob').map((m) => m.header('Subject'))).toEqual(['ignored options']);
    expect(fs.existsSync('/tmp/nowhere.log')).toBe(false);
    const bad = sendmail(mtad, ['-Z', 'bob'], 'x\n');
    expect(bad.status).toBe(64);
    expect(bad.stderr).toMatch(/^sendmail: illegal option -- Z\nusage: sendmail /);
    expect(sendmail(mtad, [], 'x\n')).toMatchObject({ status: 64, stderr: expect.stringContaining('no recipient addresses') });
    expect(sendmail(mtad, ['-bd']).status).toBe(64);
  });
});

describe('sendmail: refused recipients', () => {
  it.each([
    ['an unknown user', ['alice', 'nosuch', 'bob'], 67, 'sendmail: <nosuch>: Recipient address rejected: User unknown in local recipient table: message not sent\n'],
    ['a remote address', ['alice', 'friend@elsewhere.example', 'bob'], 77, 'sendmail: <friend@elsewhere.example>: Relay access denied: message not sent\n'],
  ])('%s: named on stderr, a sysexits status, and nothing delivered to the others', (_what, rcpts, status, stderr) => {
    clear('alice', 'bob');
    const r = sendmail(mtad, rcpts, 'Subject: partly addressed\n\nx\n');
    expect(r).toMatchObject({ status, stderr, stdout: '' });
    expect(box(mtad, 'alice')).toEqual([]);
    expect(box(mtad, 'bob')).toEqual([]);
  });

  it.each([
    ['a recipient', ['alice', 'b\u010aob']],
    ['the -f sender', ['-f', 'x\u010ay@lab.test', 'alice']],
  ])('%s with U+010A reaches mtad as one line (refused 553 5.6.7), never as a second command', (_what, args) => {
    clear('alice', 'bob');
    const r = sendmail(mtad, args, 'Subject: injected\n\nx\n');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/Non-ASCII (recipient|sender) address not permitted/);
    expect(box(mtad, 'alice')).toEqual([]);
    expect(box(mtad, 'bob')).toEqual([]);
  });

  it('-t with an unknown address in Cc: the same', () => {
    clear('alice');
    const r = sendmail(mtad, ['-t'], 'To: alice\nCc: ghost@lab.test\n\nx\n');
    expect(r).toMatchObject({ status: 67, stderr: 'sendmail: <ghost@lab.test>: Recipient address rejected: User unknown in local recipient table: message not sent\n' });
    expect(box(mtad, 'alice')).toEqual([]);
  });
});

describe('XLOCAL, the command sendmail uses', () => {
  it('names the socket\'s owner as the kernel reports it; not inside a transaction; sessions without it keep the SMTP Received line', async () => {
    clear('alice');
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO by-hand.test');
    expect(await c.cmd('MAIL FROM:<a@lab.test>')).toMatchObject({ code: 250 });
    expect(await c.cmd('XLOCAL')).toMatchObject({ code: 503, lines: ['5.5.1 Error: XLOCAL not allowed in a mail transaction'] });
    await c.cmd('RSET');
    expect(await c.cmd('XLOCAL')).toMatchObject({ code: 250, lines: [`2.0.0 Ok: local submission from userid ${myUid}`] });
    expect((await c.send('a@lab.test', ['alice'], 'Subject: by hand, local\n\nx\n')).code).toBe(250);
    await c.quit();
    const plain = await SmtpClient.connect(mtad.port);
    await plain.cmd('HELO by-hand.test');
    expect((await plain.send('a@lab.test', ['alice'], 'Subject: by hand, plain\n\nx\n')).code).toBe(250);
    await plain.quit();
    const [local, smtp] = box(mtad, 'alice');
    expect(receivedOf(local)).toEqual([expect.stringMatching(new RegExp(`^by ${HOSTNAME} \\(mtad, from userid ${myUid}\\)`))]);
    expect(receivedOf(smtp)).toEqual([expect.stringMatching(/^from by-hand\.test \(unknown \[127\.0\.0\.1\]\)\s+by lab\.test \(mtad\) with SMTP id /)]);
  });
});

describe('sendmail -bs', () => {
  it('is an SMTP session on standard input and output, recorded as the submitting user', () => {
    clear('alice');
    const script = 'EHLO script.test\r\nMAIL FROM:<robot@lab.test>\r\nRCPT TO:<alice>\r\nRCPT TO:<nosuch>\r\nDATA\r\nSubject: over -bs\r\n\r\nsmtp body\r\n..dot\r\n.\r\nQUIT\r\n';
    const r = sendmail(mtad, ['-bs'], script);
    expect(r.status, r.stderr).toBe(0);
    const codes = r.stdout.split('\r\n').filter(Boolean).map((l) => l.slice(0, 4));
    expect(codes).toEqual(['220 ', '250-', '250-', '250-', '250-', '250 ', '250 ', '250 ', '550 ', '354 ', '250 ', '221 ']);
    const [m] = box(mtad, 'alice');
    expect(m.header('Return-Path')).toBe('<robot@lab.test>');
    expect(receivedOf(m)).toEqual([expect.stringContaining(`(mtad, from userid ${myUid})`)]);
    expect(m.body.toString()).toBe('smtp body\n.dot\n');
  });
});

describe('sendmail -bp, -bi, -q; mailq; newaliases', () => {
  const lock = (user: string, op: '-l' | '-u'): void => {
    const r = spawnSync('dotlockfile', op === '-l' ? ['-l', '-r', '0', `${mtad.mailbox(user)}.lock`] : ['-u', `${mtad.mailbox(user)}.lock`], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  };
  // Times counted from now: two listings a moment apart may straddle a boundary (4d23h and 5d00h were both seen).
  const noAge = (s: string): string => s.replace(/^([0-9A-F]{10}\s+\d+)\s+\S+/gm, '$1 AGE').replace(/(next|expires) in \w+/g, '$1 in T');

  it('-bp and mailq print what mta-queue prints; -q makes mtad retry at once', async () => {
    clear('bob');
    lock('bob', '-l');
    let id = '';
    try {
      const r = run(mtad, 'sendmail', ['-v', 'bob'], 'Subject: waits\n\nx\n');
      expect(r.status, r.stderr).toBe(0);
      id = /queued as ([0-9A-F]{10})/.exec(r.stderr)![1];
      await mtad.waitForLog(new RegExp(`${id}: queued for retry`));
      const listing = runCli('mta-queue', [], env(mtad));
      expect(listing.stdout).toContain(`-> <bob@${HOSTNAME}>`);
      for (const other of [sendmail(mtad, ['-bp']), run(mtad, 'mailq', [])]) {
        expect(other.status).toBe(0);
        expect(noAge(other.stdout)).toBe(noAge(listing.stdout));
      }
    } finally {
      lock('bob', '-u');
    }
    const q = sendmail(mtad, ['-q']);
    expect(q).toMatchObject({ status: 0, stdout: 'flush requested: mtad retries 1 waiting message(s) now (held ones stay held); see its log\n' });
    await mtad.waitForLog(new RegExp(`${id}: removed`));
    expect(box(mtad, 'bob').map((m) => m.header('Subject'))).toEqual(['waits']);
    expect(sendmail(mtad, ['-bp']).stdout).toBe('mail queue is empty\n');
  });

  it('-bi and newaliases check the aliases file, name its problems, exit 65 on one', () => {
    const good = sendmail(mtad, ['-bi']);
    expect(good).toMatchObject({ status: 0, stderr: '' });
    expect(good.stdout).toBe(`${mtad.aliasesFile}: 1 aliases, longest 13 bytes, 0 problem(s)\nmtad rereads this file by itself when it changes: there is no database to rebuild\n`);
    expect(run(mtad, 'newaliases', [])).toEqual(good);
    expect(sendmail(mtad, ['-I'])).toEqual(good);

    const bad = path.join(mtad.dir, 'aliases.bad');
    fs.writeFileSync(bad, 'staff: alice, bob\nbackup: |/usr/bin/store\nfriends: pal@elsewhere.example\nnobody-here: ghost\nbroken line\n');
    const r = sendmail(mtad, [`-oA${bad}`, '-bi']);
    expect(r.status).toBe(65);
    expect(r.stdout.split('\n')).toEqual([
      `newaliases: ${bad}: line 2: target "|/usr/bin/store" of backup is ignored: mtad delivers only to local mailboxes`,
      `newaliases: ${bad}: line 2: alias backup has no usable target`,
      `newaliases: ${bad}: line 5: no ":" after the alias name`,
      `newaliases: ${bad}: target "pal@elsewhere.example" of friends is not local: mtad never forwards mail, it is ignored`,
      `newaliases: ${bad}: alias friends reaches no user of ${mtad.usersFile}: mail to it is refused`,
      `newaliases: ${bad}: alias nobody-here reaches no user of ${mtad.usersFile}: mail to it is refused`,
      `${bad}: 3 aliases, longest 11 bytes, 6 problem(s)`,
      'mtad rereads this file by itself when it changes: there is no database to rebuild',
      '',
    ]);
  });
});

describe('sendmail: a 50 MiB message', () => {
  it('is streamed: delivered whole, while sendmail never holds it in memory', () => {
    clear('carol');
    const file = path.join(mtad.dir, 'big.txt');
    const line = `${'x'.repeat(99)}\n`;
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, 'Subject: big\n\n');
    const block = line.repeat(10486); // ~1 MiB
    for (let i = 0; i < 50; i++) fs.writeSync(fd, block);
    fs.closeSync(fd);
    const size = fs.statSync(file).size;
    expect(size).toBeGreaterThan(50 * 1024 * 1024);
    // Peak resident memory (KiB) of sendmail for a tiny message and for the big one, from GNU time.
    const peak = (input: number | string): number => {
      const stdin = typeof input === 'number' ? input : 'pipe';
      const r = spawnSync('/usr/bin/time', ['-f', 'maxrss=%M', process.execPath, path.join(ROOT, 'bin', 'sendmail'), 'carol'],
        { env: env(mtad), stdio: [stdin, 'pipe', 'pipe'], input: typeof input === 'string' ? input : undefined, encoding: 'utf8', timeout: 300000 });
      expect(r.status, r.stderr).toBe(0);
      return Number(/maxrss=(\d+)/.exec(r.stderr)![1]);
    };
    const small = peak('Subject: small\n\nx\n');
    const bigFd = fs.openSync(file, 'r');
    const big = peak(bigFd);
    fs.closeSync(bigFd);
    console.log(`sendmail peak RSS: ${small} KiB for a tiny message, ${big} KiB for ${size} bytes`);
    expect(big - small).toBeLessThan(25 * 1024);
    const got = box(mtad, 'carol');
    expect(got.map((m) => m.header('Subject'))).toEqual(['small', 'big']);
    expect(got[1].body.length).toBe(size - 'Subject: big\n\n'.length);
    expect(got[1].body.equals(fs.readFileSync(file).subarray('Subject: big\n\n'.length))).toBe(true);
    fs.rmSync(file);
  });
});

describe('sendmail with a slow writer', () => {
  it('keeps its session with mtad alive while a program takes longer than the idle timeout to write the message', async () => {
    const m = await startMtad({ env: { MTAD_IDLE_TIMEOUT: '4' } });
    try {
      const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), 'alice'], { env: env(m, { MTAD_IDLE_TIMEOUT: '4' }), stdio: ['pipe', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
      const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
      child.stdin.write('Subject: slow\n\nfirst line\n');
      // Twice the idle timeout with nothing written, as a cron job that prints, works, and prints again.
      await m.waitForLog(/NOOP|connect from/);
      await new Promise((r) => setTimeout(r, 9000));
      child.stdin.end('last line\n');
      expect(await exited, stderr).toBe(0);
      expect(readMbox(m.mailbox('alice')).map((x) => x.body.toString())).toEqual(['first line\nlast line\n']);
    } finally {
      const { code } = await m.stop();
      expect(code).toBe(0);
      removeInstance(m.dir);
    }
  });
});

describe('sendmail while mtad is busy', () => {
  it('waits out a 421 (every connection slot taken) and delivers once a slot is free, instead of failing', async () => {
    const m = await startMtad({ env: { MTAD_MAX_CLIENTS: '1' } });
    const holder = await SmtpClient.connect(m.port);
    try {
      expect(holder.greeting.code).toBe(220);
      const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-v', 'alice'], { env: env(m), stdio: ['pipe', 'pipe', 'pipe'] });
      let stderr = '';
      const busy = new Promise<void>((resolve) => child.stderr.on('data', (b: Buffer) => {
        stderr += b.toString();
        if (/mtad is busy/.test(stderr)) resolve();
      }));
      const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
      child.stdin.end('Subject: waited for a slot\n\nx\n');
      // The slot is freed only once sendmail has been told 421 at least once.
      await Promise.race([busy, exited.then(() => { throw new Error(`sendmail ended before it was refused: ${stderr}`); })]);
      holder.socket.destroy();
      expect(await exited, stderr).toBe(0);
      expect(readMbox(m.mailbox('alice')).map((x) => x.header('Subject'))).toEqual(['waited for a slot']);
    } finally {
      holder.socket.destroy();
      const { code } = await m.stop();
      expect(code).toBe(0);
      removeInstance(m.dir);
    }
  });
});

describe('sendmail while mtad is stopped', () => {
  it('exits 75 with what to do, and after mtad starts nothing was lost or doubled', async () => {
    const m = await startMtad();
    const e = env(m);
    await m.stop();
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), 'alice'], { env: e, input: 'Subject: while stopped\n\nx\n', encoding: 'utf8' });
    expect(r.status).toBe(75);
    expect(r.stderr).toMatch(/^sendmail: mtad is not running \(nothing answers on 127\.0\.0\.1:\d+\): the message was not sent; start mtad .* and send it again\n$/);
    const again = await startMtad({ dir: m.dir });
    try {
      expect(fs.existsSync(again.mailbox('alice'))).toBe(false);
      expect(run(again, 'sendmail', ['alice'], 'Subject: while stopped\n\nx\n').status).toBe(0);
      expect(readMbox(again.mailbox('alice')).map((x) => x.header('Subject'))).toEqual(['while stopped']);
    } finally {
      const { code } = await again.stop();
      expect(code).toBe(0);
      removeInstance(m.dir);
    }
  });
});

describe.skipIf(needsRoot('sendmail as an ordinary user', 'needs root to run sendmail as the user "daemon"'))('sendmail as an ordinary user', () => {
  const user = 'daemon';
  let install: string | undefined;
  let uid = -1;
  const wrapper = ['setpriv', `--reuid=${user}`, `--regid=${user}`, '--clear-groups'];
  beforeAll(() => {
    uid = Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim());
    // A checkout under /root (CI's clone) is closed to other users: run a readable copy.
    const readable = spawnSync(wrapper[0], [...wrapper.slice(1), 'test', '-r', path.join(ROOT, 'dist', 'cli', 'sendmail.js')]).status === 0;
    install = readable ? undefined : readableInstall();
  });
  afterAll(() => { if (install) fs.rmSync(install, { recursive: true, force: true }); });
  const asUser = (args: string[], input: string): Run => run(mtad, 'sendmail', args, input, { wrapper, install });

  it('submits; the Received line names the user, whatever -f or the message claims', () => {
    clear('alice');
    const forged = `Received: by ${HOSTNAME} (mtad, from userid 0)\n\tid 0000000000; Tue, 1 Dec 2026 00:00:00 +0000\nSubject: as ${user}\n\nhi\n`;
    expect(asUser(['alice'], `Subject: plain\n\nhi\n`)).toMatchObject({ status: 0, stderr: '' });
    expect(asUser(['-f', `root@${HOSTNAME}`, '-F', 'Root', 'alice'], forged)).toMatchObject({ status: 0, stderr: '' });
    const [plain, claimed] = box(mtad, 'alice');
    expect(plain.header('Return-Path')).toBe(`<${user}@${HOSTNAME}>`);
    expect(receivedOf(plain)).toEqual([expect.stringContaining(`(mtad, from userid ${uid})`)]);
    expect(claimed.header('Return-Path')).toBe(`<root@${HOSTNAME}>`);
    // Ours comes first (on top); the forged one is only the message's own text below it.
    expect(receivedOf(claimed)[0]).toMatch(new RegExp(`^by ${HOSTNAME} \\(mtad, from userid ${uid}\\)`));
    expect(receivedOf(claimed)[1]).toContain('from userid 0');
  });

  it('cannot read or list the queue, nor write into it', async () => {
    const lock = (op: string[]) => expect(spawnSync('dotlockfile', [...op, `${mtad.mailbox('bob')}.lock`]).status).toBe(0);
    lock(['-l', '-r', '0']);
    let id = '';
    try {
      const r = run(mtad, 'sendmail', ['-v', 'bob'], 'Subject: secret\n\nfor bob only\n', { wrapper, install });
      expect(r.status, r.stderr).toBe(0);
      id = /queued as ([0-9A-F]{10})/.exec(r.stderr)![1];
      await mtad.waitForLog(new RegExp(`${id}: queued for retry`));
      const files = fs.readdirSync(path.join(mtad.queue, 'active')).map((f) => path.join(mtad.queue, 'active', f));
      expect(files.length).toBeGreaterThan(0);
      const as = (cmd: string[]) => spawnSync(wrapper[0], [...wrapper.slice(1), ...cmd], { encoding: 'utf8' });
      for (const f of files) expect(as(['cat', f]).status).not.toBe(0);
      expect(as(['ls', path.join(mtad.queue, 'active')]).status).not.toBe(0);
      expect(as(['touch', path.join(mtad.queue, 'tmp', 'planted')]).status).not.toBe(0);
      // mailq as that user: one line and a sysexits code, not the queue
      const q = run(mtad, 'mailq', [], '', { wrapper, install });
      expect(q.status).toBe(77);
      expect(q.stderr).toMatch(/^mailq: cannot read the queue .*: permission denied \(run it as root, or as the user mtad runs as\)\n$/);
    } finally {
      lock(['-u']);
    }
    expect(sendmail(mtad, ['-q']).status).toBe(0);
    await mtad.waitForLog(new RegExp(`${id}: removed`));
  });
});
