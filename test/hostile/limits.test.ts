// Every limit a hostile or broken client can run into, each with the reply it
// gets, against a real mtad over loopback. The limits are set small through the
// same MTAD_* keys an operator uses (etc/mtad.env documents each one).
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config';
import { readMbox } from '../helpers/mbox';
import { Mtad, mtadsForFile } from '../helpers/mtad';
import { closed, SmtpClient } from '../helpers/smtp';


const mtadWith = mtadsForFile();

describe('limits, with the defaults an operator gets', () => {
  it('keeps the RFC 5321 idle timeout of 5 minutes and Postfix-like line and error limits', () => {
    const c = loadConfig({ MTAD_CONFIG: path.resolve(__dirname, '../../etc/mtad.env') });
    expect(c.idleTimeout).toBe(300);
    expect(c.maxLineLength).toBe(2048);
    expect(c.maxErrors).toBe(20);
  });
});

describe('idle timeout (MTAD_IDLE_TIMEOUT)', () => {
  let m: Mtad;
  beforeAll(async () => { m = await mtadWith({ MTAD_IDLE_TIMEOUT: '1' }); });

  it('answers a silent client with 421 4.4.2 and closes', async () => {
    const c = await SmtpClient.connect(m.port);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    const r = await c.read();
    expect(r.raw).toBe('421 4.4.2 lab.test Error: timeout exceeded\r\n');
    await closed(c);
  });

  it('drops a message whose client falls silent in the middle of DATA, keeping nothing', async () => {
    const c = await SmtpClient.connect(m.port);
    await c.cmd('HELO client.test');
    await c.cmd('MAIL FROM:<a@client.test>');
    await c.cmd('RCPT TO:<alice>');
    expect((await c.cmd('DATA')).code).toBe(354);
    c.write('Subject: half\r\n\r\nthe rest never comes\r\n');
    expect((await c.read()).raw).toBe('421 4.4.2 lab.test Error: timeout exceeded\r\n');
    await closed(c);
    await m.waitForLog(/disconnect from/);
    expect(fs.existsSync(m.mailbox('alice'))).toBe(false);
    expect(fs.readdirSync(path.join(m.queue, 'tmp'))).toEqual([]);
    expect(fs.readdirSync(path.join(m.queue, 'active'))).toEqual([]);
  });
});

describe('command line length, error count, recipients, message size', () => {
  let m: Mtad;
  beforeAll(async () => {
    m = await mtadWith({
      MTAD_MAX_LINE_LENGTH: '512', MTAD_MAX_ERRORS: '3', MTAD_MAX_RECIPIENTS: '2', MTAD_MAX_MESSAGE_SIZE: '300000',
    });
  });

  it('answers a line over MTAD_MAX_LINE_LENGTH with 500 5.5.2, runs none of it, and goes on', async () => {
    const c = await SmtpClient.connect(m.port);
    await c.cmd('HELO client.test');
    // The long line is a whole valid command: it must not run, even partly.
    const long = `MAIL FROM:<${'a'.repeat(600)}@client.test>`;
    c.write(long.slice(0, 300));
    c.write(`${long.slice(300)}\r\n`);
    expect((await c.read()).raw).toBe('500 5.5.2 Error: line too long\r\n');
    expect((await c.cmd('RCPT TO:<alice>')).raw).toMatch(/^503 /);
    const r = await c.send('a@client.test', ['alice'], 'Subject: after a long line\r\n\r\nstill here\r\n');
    expect(r.raw).toMatch(/^250 2\.0\.0 Ok: queued as/);
    await c.quit();
    const got = readMbox(m.mailbox('alice')).filter((x) => x.header('Subject') === 'after a long line');
    expect(got).toHaveLength(1);
  });

  it('drops a client whose line does not end within 64 KiB: 421', async () => {
    const c = await SmtpClient.connect(m.port);
    c.write('NOOP ' + 'x'.repeat(70 * 1024));
    expect((await c.read()).raw).toBe('421 4.4.2 Error: Command line too long\r\n');
    await closed(c);
  });

  it('closes with 421 4.7.0 after MTAD_MAX_ERRORS error replies', async () => {
    const c = await SmtpClient.connect(m.port);
    expect((await c.cmd('FOO')).raw).toBe('500 5.5.2 Error: command not recognized\r\n');
    expect((await c.cmd('RCPT TO:<alice>')).code).toBe(503);
    expect((await c.cmd('BAR')).raw).toBe('500 5.5.2 Error: command not recognized\r\n');
    expect((await c.read()).raw).toBe('421 4.7.0 lab.test Error: too many errors\r\n');
    await closed(c);
  });

  it('refuses the recipient past MTAD_MAX_RECIPIENTS with 452 4.5.3 and delivers to the others', async () => {
    const c = await SmtpClient.connect(m.port);
    await c.cmd('HELO client.test');
    await c.cmd('MAIL FROM:<a@client.test>');
    expect((await c.cmd('RCPT TO:<alice>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<postmaster>')).raw).toBe('452 4.5.3 Error: too many recipients\r\n');
    expect((await c.data('Subject: two of three\r\n\r\nbody\r\n')).code).toBe(250);
    await c.quit();
    for (const u of ['alice', 'bob']) {
      expect(readMbox(m.mailbox(u)).filter((x) => x.header('Subject') === 'two of three')).toHaveLength(1);
    }
    expect(fs.existsSync(m.mailbox('postmaster'))).toBe(false);
  });

  it('refuses MAIL ... SIZE= over MTAD_MAX_MESSAGE_SIZE with 552 5.3.4', async () => {
    const c = await SmtpClient.connect(m.port);
    await c.cmd('EHLO client.test');
    expect((await c.cmd('MAIL FROM:<a@client.test> SIZE=300001')).raw)
      .toBe('552 5.3.4 Error: message exceeds fixed maximum message size 300000\r\n');
    expect((await c.cmd('MAIL FROM:<a@client.test> SIZE=300000')).code).toBe(250);
    await c.quit();
  });

  it('refuses an oversize body with 552 5.3.4 after the dot, keeping nothing of it', async () => {
    const before = fs.existsSync(m.mailbox('bob')) ? fs.readFileSync(m.mailbox('bob')) : Buffer.alloc(0);
    const c = await SmtpClient.connect(m.port);
    await c.cmd('EHLO client.test');
    // Past 256 KiB the body is spilled to the queue's tmp/ before it goes over the limit.
    const line = `${'z'.repeat(998)}\r\n`;
    const r = await c.send('a@client.test', ['bob'], `Subject: too big\r\n\r\n${line.repeat(400)}`);
    expect(r.raw).toBe('552 5.3.4 Message size exceeds fixed limit of 300000 bytes\r\n');
    // The session is still usable.
    expect((await c.send('a@client.test', ['bob'], 'Subject: small\r\n\r\nok\r\n')).code).toBe(250);
    await c.quit();
    const after = fs.readFileSync(m.mailbox('bob'));
    expect(after.subarray(0, before.length).equals(before)).toBe(true);
    expect(readMbox(m.mailbox('bob')).map((x) => x.header('Subject'))).not.toContain('too big');
    expect(fs.readdirSync(path.join(m.queue, 'tmp'))).toEqual([]);
    expect(fs.readdirSync(path.join(m.queue, 'active'))).toEqual([]);
  });
});

describe('connections (MTAD_MAX_CLIENTS, MTAD_MAX_CLIENTS_PER_IP)', () => {
  it('answers a client past MTAD_MAX_CLIENTS with 421 4.7.0 and serves again once one leaves', async () => {
    const m = await mtadWith({ MTAD_MAX_CLIENTS: '2' });
    const a = await SmtpClient.connect(m.port);
    const b = await SmtpClient.connect(m.port);
    const c = await SmtpClient.connect(m.port);
    expect(c.greeting.raw).toBe('421 4.7.0 lab.test Too many connected clients, try again later\r\n');
    await closed(c);
    await a.quit();
    await closed(a);
    const d = await SmtpClient.connect(m.port);
    expect(d.greeting.code).toBe(220);
    // More than the library's fixed 10 unknown commands: the default MTAD_MAX_ERRORS is 20.
    for (let i = 0; i < 15; i++) expect((await d.cmd('FOO')).code).toBe(500);
    expect((await d.cmd('NOOP')).code).toBe(250);
    await d.quit();
    await b.quit();
  });

  it('answers a second client from the same address with 421 4.7.0 under MTAD_MAX_CLIENTS_PER_IP=1, this machine\'s own 127.0.0.1 included', async () => {
    const m = await mtadWith({ MTAD_MAX_CLIENTS_PER_IP: '1' });
    const own = await SmtpClient.connect(m.port);
    expect(own.greeting.code).toBe(220);
    const own2 = await SmtpClient.connect(m.port);
    expect(own2.greeting.raw).toBe('421 4.7.0 lab.test Too many connections from your address, try again later\r\n');
    await closed(own2);
    await own.quit();
    await m.waitForLog(/disconnect from \S*\[127\.0\.0\.1\]/);
    const a = await SmtpClient.connect(m.port, '127.0.0.1', '127.0.0.2');
    expect(a.greeting.code).toBe(220);
    const b = await SmtpClient.connect(m.port, '127.0.0.1', '127.0.0.2');
    expect(b.greeting.raw).toBe('421 4.7.0 lab.test Too many connections from your address, try again later\r\n');
    await closed(b);
    await a.quit();
    await m.waitForLog(/disconnect from \S*\[127\.0\.0\.2\]/);
    const c = await SmtpClient.connect(m.port, '127.0.0.1', '127.0.0.2');
    expect(c.greeting.code).toBe(220);
    await c.quit();
  });
});
