// RFC 5321 conformance (issue 9 item 9) and relay look-alikes (issue 10 item 7),
// over SMTP to a real mtad, with mailboxes read back by Python's mailbox:
// parameters that were not offered get 555; text after an address without
// brackets gets 501; a line's first period is removed in DATA; verbs mtad does
// not implement get 502, never 2xx; a quoted local part at our domain is the user;
// an address that only looks like ours is relay, 554.
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, mtadForFile } from '../helpers/mtad';
import { enhanced, SmtpClient } from '../helpers/smtp';

const mtad = mtadForFile({ users: ['alice', 'bob'] });

async function session(): Promise<SmtpClient> {
  const c = await SmtpClient.connect(mtad().port);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  return c;
}

describe('MAIL and RCPT parameters', () => {
  it.each([
    ['MAIL FROM:<a@client.test> FOO=bar'],
    ['MAIL FROM:<a@client.test> SMTPUTF8'],
    ['MAIL FROM:<a@client.test> RET=HDRS'],
    ['MAIL FROM:<a@client.test> ENVID=QQ314159'],
    ['MAIL FROM:<a@client.test> AUTH=<>'],
    ['MAIL FROM:<a@client.test> REQUIRETLS'],
    ['MAIL FROM:<a@client.test> SIZE=100 BODY=8BITMIME X-FOO'],
    ['MAIL FROM:<a@client.test> size=100 foo'],
  ])('%s gets 555 5.5.4 and no transaction starts', async (line) => {
    const c = await session();
    const r = await c.cmd(line);
    expect([r.code, enhanced(r)]).toEqual([555, '5.5.4']);
    // No sender was taken: RCPT still needs MAIL.
    expect((await c.cmd('RCPT TO:<alice>')).code).toBe(503);
    await c.quit();
  });

  it.each([
    ['RCPT TO:<alice> NOTIFY=SUCCESS,FAILURE'],
    ['RCPT TO:<alice> ORCPT=rfc822;alice@lab.test'],
    ['RCPT TO:<alice> FOO=bar'],
    ['RCPT TO:<alice> SIZE=10'],
  ])('%s gets 555 5.5.4 and alice is not a recipient', async (line) => {
    const c = await session();
    expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
    const r = await c.cmd(line);
    expect([r.code, enhanced(r)]).toEqual([555, '5.5.4']);
    expect((await c.cmd('DATA')).code).toBe(503);
    await c.quit();
  });

  it('still takes the parameters it offers: SIZE and BODY', async () => {
    const c = await session();
    expect((await c.cmd('MAIL FROM:<a@client.test> SIZE=100 BODY=8BITMIME')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<alice>')).code).toBe(250);
    await c.quit();
  });
});

describe('text after an address without brackets', () => {
  it.each([
    ['RCPT TO: alice bob', 'RCPT'],
    [`RCPT TO: alice@${HOSTNAME} bob@${HOSTNAME}`, 'RCPT'],
    ['RCPT TO: alice SIZE=1', 'RCPT'],
    ['MAIL FROM: a@client.test b@client.test', 'MAIL'],
    ['MAIL FROM: a@client.test SIZE=10', 'MAIL'],
  ])('%s gets 501 and takes no address', async (line, verb) => {
    const c = await session();
    if (verb === 'RCPT') expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
    const r = await c.cmd(line);
    expect(r.code).toBe(501);
    expect(r.raw).toMatch(/without <>/);
    if (verb === 'RCPT') expect((await c.cmd('DATA')).code).toBe(503);
    else expect((await c.cmd('RCPT TO:<alice>')).code).toBe(503);
    await c.quit();
  });

  it('still takes a lone address without brackets, as the lab types it', async () => {
    const c = await session();
    expect((await c.cmd('MAIL FROM: a@client.test')).code).toBe(250);
    expect((await c.cmd('RCPT TO: alice')).code).toBe(250);
    expect((await c.cmd('RCPT TO:   bob   ')).code).toBe(250);
    await c.quit();
  });
});

describe('verbs mtad does not implement', () => {
  it.each(['WIZ', 'WIZ secret', 'SHELL', 'KILL', 'TURN', 'ETRN lab.test', 'ETRN #lab.test', 'ATRN lab.test', 'BDAT 10 LAST', 'BDAT 0',
    'SEND FROM:<a@b>', 'SOML FROM:<a@b>', 'SAML FROM:<a@b>', 'VERB', 'DEBUG'])('%s gets 502 5.5.1', async (line) => {
    const c = await session();
    const r = await c.cmd(line);
    expect([r.code, enhanced(r)]).toEqual([502, '5.5.1']);
    // and no wizard mode: the session is as before
    if (line.startsWith('WIZ')) expect((await c.cmd('SHELL')).code).toBe(502);
    expect((await c.cmd('NOOP')).code).toBe(250);
    await c.quit();
  });
});

describe('a quoted local part at one of our domains', () => {
  it('is the user: "alice"@ our domain is delivered to alice', async () => {
    const c = await session();
    const r = await c.send('a@client.test', [`"alice"@${HOSTNAME}`, `"B\\ob"@${HOSTNAME.toUpperCase()}`], 'Subject: quoted\r\n\r\nhi\r\n');
    expect(r.code).toBe(250);
    await c.quit();
    expect(readMbox(mtad().mailbox('alice')).filter((m) => m.header('Subject') === 'quoted')).toHaveLength(1);
    expect(readMbox(mtad().mailbox('bob')).filter((m) => m.header('Subject') === 'quoted')).toHaveLength(1);
  });

  it.each([
    [`<"eve"@${HOSTNAME}>`, 550, /User unknown/],
    [`<"alice smith"@${HOSTNAME}>`, 550, /User unknown/],
    [`<"alice"x@${HOSTNAME}>`, 501, /Bad recipient address syntax/],
    [`<"alice@${HOSTNAME}>`, 501, /Bad recipient address syntax/],
  ])('%s gets %i with a reply that says what is wrong, not relay', async (addr, code, text) => {
    const c = await session();
    expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
    const r = await c.cmd(`RCPT TO:${addr}`);
    expect(r.code).toBe(code);
    expect(r.raw).toMatch(text);
    expect(r.raw).not.toMatch(/Relay access denied/);
    await c.quit();
  });
});

describe('addresses that look like ours (issue 10 item 7)', () => {
  // Exactly our domains (lab.test, localhost) and the literal we listen on ([127.0.0.1]);
  // case aside and one root dot allowed. Everything else is somebody else's: 554.
  const LOOK_ALIKES = [
    'alice@evil-lab.test', 'alice@x.lab.test', 'alice@lab.test.evil.example', 'alice@LAB.TEST.EVIL.EXAMPLE', 'alice@lab.testt',
    'alice@lab.tes', 'alice@ab.test', 'alice@llab.test', 'alice@lab-test', 'alice@labtest', 'alice@lab.test..', 'alice@.lab.test',
    'alice@lab..test', 'alice@localhost.evil.example', 'alice@evil-localhost', 'alice@sub.localhost', 'alice@[127.0.0.2]',
    'alice@[127.0.0.1].evil.example', 'alice@[127.1]', 'alice@[127.000.000.001]', 'alice@[IPv6:::1]', 'alice@[IPv6:::ffff:127.0.0.1]',
    'alice@[lab.test]', 'alice@127.0.0.1', 'alice@xn--lb-8kc.test', 'postmaster@evil-lab.test', 'postmaster@x.lab.test',
    // Unicode look-alikes: Cyrillic a and e, fullwidth l, an ideographic full stop, a zero-width space.
    'alice@l\u0430b.test', 'alice@lab.t\u0435st', 'alice@\uff4cab.test', 'alice@lab\u3002test', 'alice@lab.test\u200b',
  ];
  it.each(LOOK_ALIKES.flatMap((a) => [[`<${a}>`], [a]]))('RCPT TO:%s gets 554 5.7.1 Relay access denied', async (addr) => {
    const c = await session();
    expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
    c.write(Buffer.from(`RCPT TO:${addr}\r\n`, 'utf8'));
    const r = await c.read();
    expect([r.code, enhanced(r)]).toEqual([554, '5.7.1']);
    expect(r.raw).toMatch(/Relay access denied/);
    await c.quit();
  });

  it('still takes our own domains in any case, with a root dot, and our literal', async () => {
    const c = await session();
    expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
    for (const a of ['alice@lab.test', 'alice@LAB.TEST', 'alice@Lab.Test.', 'alice@localhost', 'alice@[127.0.0.1]', 'alice']) {
      expect((await c.cmd(`RCPT TO:<${a}>`)).code, a).toBe(250);
    }
    await c.quit();
  });

  it('delivered nothing anywhere but to the users', () => {
    expect(fs.readdirSync(mtad().spool).filter((f) => !f.startsWith('.') && !['alice', 'bob'].includes(f))).toEqual([]);
  });
});
