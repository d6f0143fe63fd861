// The SMTP conversation as a client sees it: replies, codes, refusals.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { enhanced, SmtpClient } from '../helpers/smtp';

let mtad: Mtad;
beforeAll(async () => {
  mtad = await startMtad({
    users: ['alice', 'bob', 'carol'],
    aliases: 'staff: alice, bob\npostmaster: carol\n',
    env: { MTAD_MAX_RECIPIENTS: '3', MTAD_MAX_MESSAGE_SIZE: '20000' },
  });
});
afterAll(async () => {
  await mtad.stop();
  removeInstance(mtad.dir);
});

async function session(): Promise<SmtpClient> {
  const c = await SmtpClient.connect(mtad.port);
  expect((await c.cmd('EHLO client.example')).code).toBe(250);
  expect((await c.cmd('MAIL FROM:<sender@remote.example>')).code).toBe(250);
  return c;
}

describe('SMTP conversation', () => {
  it('advertises exactly the extensions it has, and no AUTH or STARTTLS', async () => {
    const c = await SmtpClient.connect(mtad.port);
    const r = await c.cmd('EHLO client.example');
    expect(r.code).toBe(250);
    const ext = r.lines.slice(1).map((l) => l.split(' ')[0]);
    expect(ext).toEqual(expect.arrayContaining(['PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SIZE']));
    expect(r.lines).toContain('SIZE 20000');
    expect(ext).not.toContain('AUTH');
    expect(ext).not.toContain('STARTTLS');
    expect((await c.cmd('STARTTLS')).code).toBe(500);
    expect((await c.cmd('AUTH PLAIN AGFsaWNlAHg=')).code).toBe(500);
    await c.quit();
  });

  it('puts exactly one enhanced status code in every reply after EHLO', async () => {
    const c = await SmtpClient.connect(mtad.port);
    const replies = [
      await c.cmd('EHLO client.example'),
      await c.cmd('NOOP'),
      await c.cmd('HELP'),
      await c.cmd('VRFY alice'),
      await c.cmd('EXPN staff'),
      await c.cmd('RCPT TO:<alice>'),
      await c.cmd('MAIL FROM:<a@b.example>'),
      await c.cmd('MAIL FROM:<a@b.example>'),
      await c.cmd('RCPT TO:<nobody-here>'),
      await c.cmd('RCPT TO:<x@remote.example>'),
      await c.cmd('RCPT TO:<alice>'),
      await c.cmd('RSET'),
      await c.cmd('FOO'),
      await c.cmd('QUIT'),
    ];
    for (const r of replies.slice(1)) {
      for (const line of r.lines) {
        expect(line, r.raw).toMatch(/^[245]\.\d{1,3}\.\d{1,3} /);
        expect(line, r.raw).not.toMatch(/^[245]\.\d{1,3}\.\d{1,3} [245]\.\d{1,3}\.\d{1,3} /);
      }
    }
    expect(replies.map((r) => r.code)).toEqual([250, 250, 214, 252, 502, 503, 250, 503, 550, 554, 250, 250, 500, 221]);
  });

  it('lists the commands in HELP', async () => {
    const c = await SmtpClient.connect(mtad.port);
    const r = await c.cmd('HELP');
    expect(r.code).toBe(214);
    for (const verb of ['HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN']) expect(r.raw).toContain(verb);
    await c.quit();
  });

  it.each([
    ['x@remote.example', 554, '5.7.1'],
    ['alice@remote.example', 554, '5.7.1'],
    [`alice%remote.example@${HOSTNAME}`, 554, '5.7.1'],
    [`remote.example!alice@${HOSTNAME}`, 554, '5.7.1'],
    [`<@relay.example:alice@${HOSTNAME}>`, 554, '5.7.1'],
    [`<@a.example,@b.example:x@remote.example>`, 554, '5.7.1'],
    [`<"x@remote.example"@${HOSTNAME}>`, 554, '5.7.1'],
    [`<alice@remote.example@${HOSTNAME}>`, 554, '5.7.1'],
    ['<alice@[192.0.2.1]>', 554, '5.7.1'],
    ['<alice@[IPv6:2001:db8::1]>', 554, '5.7.1'],
    [`eve@${HOSTNAME}`, 550, '5.1.1'],
    ['eve', 550, '5.1.1'],
    ['../alice', 550, '5.1.1'],
    ['<../../etc/passwd>', 550, '5.1.1'],
    [`<a/b@${HOSTNAME}>`, 550, '5.1.1'],
    ['<.alice>', 550, '5.1.1'],
    [`<ALICE@${HOSTNAME.toUpperCase()}>`, 250, '2.1.5'],
    ['<alice@[127.0.0.1]>', 250, '2.1.5'],
    [`<"alice"@${HOSTNAME}>`, 250, '2.1.5'],
    ['alice@localhost', 250, '2.1.5'],
    ['staff', 250, '2.1.5'],
    ['<Postmaster>', 250, '2.1.5'],
    [`POSTMASTER@${HOSTNAME}`, 250, '2.1.5'],
  ])('RCPT TO: %s gets %i %s', async (addr, code, enh) => {
    const c = await session();
    const r = await c.cmd(`RCPT TO: ${addr}`);
    expect([r.code, enhanced(r)]).toEqual([code, enh]);
    if (code === 554) expect(r.raw).toMatch(/Relay access denied/);
    if (code === 550) expect(r.raw).toMatch(/User unknown/);
    await c.quit();
  });

  it('writes nothing outside the spool for names that look like paths', async () => {
    const before = fs.readdirSync(mtad.dir).sort();
    const c = await session();
    for (const a of ['../x', '..', '<../../tmp/owned>', `<..%2f..@${HOSTNAME}>`, '<-rf>', '<.queue>', '<alice.lock>']) {
      expect((await c.cmd(`RCPT TO:${a}`)).code).toBeGreaterThanOrEqual(500);
    }
    await c.quit();
    expect(fs.readdirSync(mtad.dir).sort()).toEqual(before);
    expect(fs.readdirSync(mtad.spool).filter((f) => !['alice', 'bob', 'carol', '.queue', '.mtad.pid'].includes(f))).toEqual([]);
  });

  it('refuses recipients past MTAD_MAX_RECIPIENTS with 452 4.5.3 and delivers to the first ones', async () => {
    const c = await session();
    for (const u of ['alice', 'bob', 'carol']) expect((await c.cmd(`RCPT TO:<${u}>`)).code).toBe(250);
    const r = await c.cmd('RCPT TO:<postmaster>');
    expect([r.code, enhanced(r)]).toEqual([452, '4.5.3']);
    expect((await c.data('Subject: many\r\n\r\nhi\r\n')).code).toBe(250);
    await c.quit();
  });

  it('refuses a declared SIZE over the limit with 552 5.3.4', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.example');
    const r = await c.cmd('MAIL FROM:<a@b.example> SIZE=20001');
    expect([r.code, enhanced(r)]).toEqual([552, '5.3.4']);
    expect((await c.cmd('MAIL FROM:<a@b.example> SIZE=19000')).code).toBe(250);
    await c.quit();
  });

  it('refuses a body over the limit with 552 5.3.4, delivers nothing, and goes on', async () => {
    const box = mtad.mailbox('bob');
    const before = fs.existsSync(box) ? fs.readFileSync(box) : Buffer.alloc(0);
    const c = await session();
    expect((await c.cmd('RCPT TO:<bob>')).code).toBe(250);
    const big = `Subject: too big\r\n\r\n${'x'.repeat(70)}\r\n`.repeat(400);
    const r = await c.data(big);
    expect([r.code, enhanced(r)]).toEqual([552, '5.3.4']);
    expect(fs.existsSync(box) ? fs.readFileSync(box) : Buffer.alloc(0)).toEqual(before);
    expect(fs.readdirSync(path.join(mtad.queue, 'tmp'))).toEqual([]);
    // the same connection still works
    const ok = await c.send('a@b.example', ['bob'], 'Subject: small\r\n\r\nfits\r\n');
    expect(ok.code).toBe(250);
    await c.quit();
    expect(readMbox(box).map((m) => m.header('Subject'))).toContain('small');
    expect(readMbox(box).map((m) => m.header('Subject'))).not.toContain('too big');
  });

  it('accepts the null sender and writes MAILER-DAEMON in the From_ line', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('HELO client.example');
    const r = await c.send('', ['carol'], 'Subject: bounce\r\n\r\nreturned\r\n');
    expect(r.code).toBe(250);
    await c.quit();
    const m = readMbox(mtad.mailbox('carol')).find((x) => x.header('Subject') === 'bounce')!;
    expect(m.from_).toMatch(/^MAILER-DAEMON  /);
    expect(m.header('Return-Path')).toBe('<>');
  });

  it('carries several messages on one connection, and RSET forgets a transaction', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('HELO client.example');
    for (let i = 0; i < 3; i++) expect((await c.send('a@b.example', ['alice'], `Subject: multi ${i}\r\n\r\n${i}\r\n`)).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<a@b.example>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<alice>')).code).toBe(250);
    expect((await c.cmd('RSET')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(503);
    await c.quit();
    const subjects = readMbox(mtad.mailbox('alice')).map((m) => m.header('Subject'));
    expect(subjects.filter((s) => s?.startsWith('multi '))).toEqual(['multi 0', 'multi 1', 'multi 2']);
  });

  it('delivers postmaster mail to the user the alias names, and to each alias member once', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('HELO client.example');
    expect((await c.send('a@b.example', ['postmaster', 'staff', 'alice'], 'Subject: fan-out\r\n\r\nx\r\n')).code).toBe(250);
    await c.quit();
    const count = (u: string): number => readMbox(mtad.mailbox(u)).filter((m) => m.header('Subject') === 'fan-out').length;
    expect([count('alice'), count('bob'), count('carol')]).toEqual([1, 1, 1]);
  });
});

describe('VRFY and EXPN switched on', () => {
  let on: Mtad;
  beforeAll(async () => {
    on = await startMtad({ users: ['alice', 'bob'], aliases: 'staff: alice, bob\n', env: { MTAD_VRFY: 'yes', MTAD_EXPN: 'yes' } });
  });
  afterAll(async () => { await on.stop(); removeInstance(on.dir); });

  it('answers for users and aliases', async () => {
    const c = await SmtpClient.connect(on.port);
    await c.cmd('HELO client.example');
    expect((await c.cmd('VRFY alice')).raw).toBe(`250 2.1.5 Alice Test <alice@${HOSTNAME}>\r\n`);
    expect((await c.cmd('VRFY eve')).code).toBe(550);
    expect((await c.cmd('VRFY x@remote.example')).code).toBe(554);
    const e = await c.cmd('EXPN staff');
    expect(e.raw).toBe(`250-2.1.5 Alice Test <alice@${HOSTNAME}>\r\n250 2.1.5 Bob Test <bob@${HOSTNAME}>\r\n`);
    expect((await c.cmd('EXPN nothing')).code).toBe(550);
    await c.quit();
  });
});
