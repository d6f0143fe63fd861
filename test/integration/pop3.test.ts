// POP3 against a real mtad: mail sent over SMTP comes back over POP3 as it was
// sent, with the same sizes LIST promised, the same UIDLs every session, and
// deletions that keep everything else (read back with Python's mailbox).
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, mtadForFile, runCli } from '../helpers/mtad';
import { Pop3Client } from '../helpers/pop3';
import { SmtpClient } from '../helpers/smtp';

const PASSWORDS = { alice: 'alice-pw', bob: 'bob pw with spaces', carol: 'carol-pw', dave: 'dave-pw', erin: 'erin-pw' };
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'];
const get = mtadForFile({ users: USERS, passwords: PASSWORDS, env: { MTAD_POP3_AUTH_DELAY: '0.2' } });

/** mtad's trace fields, in front of every message it delivers, as POP3 sends them (its X-UIDL line stays in the mbox). */
const TRACE = /^Return-Path: <[^>\r\n]*>\r\nDelivered-To: [^\r\n]+\r\nReceived: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*/;

function withoutTrace(data: Buffer): Buffer {
  const m = TRACE.exec(data.toString('latin1'));
  expect(m, data.subarray(0, 300).toString('latin1')).not.toBeNull();
  return data.subarray(m![0].length);
}

async function send(m: Mtad, to: string, message: Buffer | string): Promise<void> {
  const c = await SmtpClient.connect(m.port);
  await c.cmd('HELO client.test');
  const r = await c.send('sender@client.test', [`${to}@${HOSTNAME}`], message);
  expect(r.code, r.raw).toBe(250);
  await c.quit();
}

async function login(m: Mtad, user: keyof typeof PASSWORDS): Promise<Pop3Client> {
  const c = await Pop3Client.connect(m.pop3Port!);
  expect(await c.login(user, PASSWORDS[user])).toMatch(/^\+OK/);
  return c;
}

const attachment = (): Buffer => {
  const b64 = Buffer.from(Array.from({ length: 1536 * 1024 }, (_, i) => (i * 7919) & 0xff)).toString('base64');
  return Buffer.from(`Subject: attachment\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n${b64.replace(/.{76}/g, '$&\r\n')}\r\n--XX--\r\n`, 'latin1');
};

// As the client sends them (before its dot-stuffing), CRLF line ends.
const CASES: Array<[string, Buffer]> = [
  ['8-bit body', Buffer.from('Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCaf\u00e9, na\u00efve, \u4e2d\u6587\r\n\xff\xfe raw bytes\r\n', 'utf8')],
  ['From_ and quoted From lines', Buffer.from('Subject: from\r\n\r\nFrom the start\r\n>From quoted\r\n>>From twice\r\nFrom\r\n>From\r\n', 'latin1')],
  ['dots', Buffer.from('Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n...\r\nend\r\n', 'latin1')],
  ['a bare CR in a line', Buffer.from('Subject: cr\r\n\r\na\rb\r\nends with cr\r\r\n', 'latin1')],
  ['header only', Buffer.from('Subject: header only\r\nX-Empty: \r\n', 'latin1')],
  ['2 MiB attachment', attachment()],
];

describe('POP3: the message as sent', () => {
  beforeAll(async () => {
    for (const [, msg] of CASES) await send(get(), 'alice', msg);
  });

  it('RETR gives back each message byte for byte after the trace fields; LIST and STAT sizes are the octets RETR sends', async () => {
    const c = await login(get(), 'alice');
    const list = await c.multi('LIST');
    expect(list.lines).toHaveLength(CASES.length);
    let total = 0;
    for (let i = 0; i < CASES.length; i++) {
      const [name, sent] = CASES[i];
      const r = await c.multi(`RETR ${i + 1}`);
      expect(r.status, name).toBe(`+OK ${r.data.length} octets`);
      expect(list.lines[i], name).toBe(`${i + 1} ${r.data.length}`);
      expect(withoutTrace(r.data).equals(sent), name).toBe(true);
      expect(r.data.toString('latin1'), name).not.toContain('X-UIDL');
      total += r.data.length;
    }
    expect(await c.cmd('STAT')).toBe(`+OK ${CASES.length} ${total}`);
    expect(await c.quit()).toMatch(/^\+OK/);
  });

  it('dot-stuffs on the wire: a line "." goes out as "..", and the message ends with CRLF "."', async () => {
    const c = await login(get(), 'alice');
    const r = await c.multi('RETR 3');
    expect(r.raw.toString('latin1')).toContain('\r\n..\r\n...\r\n..x\r\n....\r\nend\r\n');
    await c.quit();
  });

  it('TOP sends the header, the empty line and n lines of the body', async () => {
    const c = await login(get(), 'alice');
    const top = await c.multi('TOP 2 2');
    expect(top.status).toBe('+OK');
    expect(withoutTrace(top.data).toString('latin1')).toBe('Subject: from\r\n\r\nFrom the start\r\n>From quoted\r\n');
    const zero = await c.multi('TOP 3 0');
    expect(withoutTrace(zero.data).toString('latin1')).toBe('Subject: dots\r\n\r\n');
    const headerOnly = await c.multi('TOP 5 10');
    expect(withoutTrace(headerOnly.data).toString('latin1')).toBe('Subject: header only\r\nX-Empty: \r\n');
    expect(await c.cmd('TOP 1')).toMatch(/^-ERR/);
    await c.quit();
  });
});

describe('POP3: commands and replies', () => {
  it('CAPA lists what the server does, before and after login', async () => {
    const c = await Pop3Client.connect(get().pop3Port!);
    expect(c.greeting).toMatch(/^\+OK /);
    const capa = await c.multi('CAPA');
    for (const cap of ['TOP', 'UIDL', 'USER', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'SASL PLAIN', 'IMPLEMENTATION mtad']) expect(capa.lines).toContain(cap);
    expect(await c.cmd('STAT')).toMatch(/^-ERR/);
    expect(await c.quit()).toMatch(/^\+OK/);
  });

  it('a wrong password, an unknown user and a disabled account get the same reply; the third failure ends the session', async () => {
    const m = get();
    const replies: string[] = [];
    for (const [user, pw] of [['alice', 'wrong'], ['nosuchuser', 'alice-pw'], ['frank', ''], ['frank', 'x'], ['../etc', 'x']]) {
      const c = await Pop3Client.connect(m.pop3Port!);
      expect(await c.cmd(`USER ${user}`)).toBe('+OK');
      replies.push(await c.cmd(`PASS ${pw}`));
      c.close();
    }
    expect(new Set(replies)).toEqual(new Set(['-ERR [AUTH] Authentication failed.']));
    const c = await Pop3Client.connect(m.pop3Port!);
    for (let i = 0; i < 3; i++) expect(await c.login('alice', `wrong${i}`)).toBe('-ERR [AUTH] Authentication failed.');
    await c.closedByServer();
    expect(c.isClosed).toBe(true);
    await m.waitForLog(/pop3-login: Disconnected \(auth failed, 3 attempts\): user=<alice>, method=USER/);
    expect(m.output()).not.toMatch(/wrong[0-9]|alice-pw/);
  });

  it('a password with spaces works with USER/PASS', async () => {
    const c = await login(get(), 'bob');
    expect(await c.quit()).toMatch(/^\+OK/);
  });

  it('AUTH PLAIN: initial response, continuation, "=" for empty, "*" to cancel, and a listing', async () => {
    const m = get();
    const plain = (authz: string, user: string, pw: string): string => Buffer.from(`${authz}\0${user}\0${pw}`).toString('base64');
    let c = await Pop3Client.connect(m.pop3Port!);
    expect((await c.multi('AUTH')).lines).toEqual(['PLAIN']);
    expect(await c.cmd(`AUTH PLAIN ${plain('', 'carol', 'carol-pw')}`)).toMatch(/^\+OK/);
    await c.quit();
    c = await Pop3Client.connect(m.pop3Port!);
    expect(await c.cmd('AUTH PLAIN')).toBe('+ ');
    expect(await c.cmd(plain('carol', 'carol', 'carol-pw'))).toMatch(/^\+OK/);
    await c.quit();
    c = await Pop3Client.connect(m.pop3Port!);
    expect(await c.cmd('AUTH PLAIN')).toBe('+ ');
    expect(await c.cmd('*')).toMatch(/^-ERR/);
    expect(await c.cmd('AUTH PLAIN =')).toBe('-ERR [AUTH] Authentication failed.');
    expect(await c.cmd(`AUTH PLAIN ${plain('alice', 'carol', 'carol-pw')}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await c.cmd('AUTH CRAM-MD5')).toMatch(/^-ERR/);
    c.close();
  });

  it('pipelined commands are answered in order', async () => {
    const m = get();
    await send(m, 'dave', 'Subject: p1\r\n\r\none\r\n');
    await send(m, 'dave', 'Subject: p2\r\n\r\ntwo\r\n');
    const c = await Pop3Client.connect(m.pop3Port!);
    c.write('USER dave\r\nPASS dave-pw\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 2\r\nNOOP\r\nBOGUS\r\nDELE 9\r\nQUIT\r\n');
    expect(await c.line()).toBe('+OK');
    expect(await c.line()).toMatch(/^\+OK Logged in/);
    expect(await c.line()).toMatch(/^\+OK 2 \d+$/);
    expect((await c.readMulti()).lines).toHaveLength(2);
    expect(await c.line()).toMatch(/^\+OK 2 [0-9a-f]{32}$/);
    expect(withoutTrace((await c.readMulti()).data).toString()).toBe('Subject: p2\r\n\r\ntwo\r\n');
    expect(await c.line()).toBe('+OK');
    expect(await c.line()).toMatch(/^-ERR/);
    expect(await c.line()).toMatch(/^-ERR/);
    expect(await c.line()).toMatch(/^\+OK/);
    await c.closedByServer();
  });
});

describe('POP3: one session per mailbox, deliveries during it, deletion at QUIT', () => {
  it('a second login gets [IN-USE]; deliveries go on and are kept; DELE, RSET and QUIT remove only what was marked', async () => {
    const m = get();
    for (const s of ['a', 'b', 'c', 'd']) await send(m, 'erin', `Subject: ${s}\r\n\r\nbody ${s}\r\n`);
    const c = await login(m, 'erin');
    const uidls = (await c.multi('UIDL')).lines.map((l) => l.split(' ')[1]);
    expect(uidls).toHaveLength(4);
    expect(new Set(uidls).size).toBe(4);

    const second = await Pop3Client.connect(m.pop3Port!);
    expect(await second.login('erin', 'erin-pw')).toMatch(/^-ERR \[IN-USE\] /);
    second.close();

    // Arrives during the session: not in its listing, but kept by its QUIT.
    await send(m, 'erin', 'Subject: e\r\n\r\nbody e\r\n');
    expect(await c.cmd('STAT')).toMatch(/^\+OK 4 /);
    expect(await c.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await c.cmd('DELE 1')).toBe('-ERR Message is deleted.');
    expect(await c.cmd('RSET')).toMatch(/^\+OK 4 messages/);
    expect(await c.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await c.cmd('DELE 3')).toMatch(/^\+OK/);
    expect(await c.cmd('RETR 3')).toMatch(/^-ERR/);
    expect((await c.multi('LIST')).lines.map((l) => l.split(' ')[0])).toEqual(['2', '4']);
    expect(await c.quit()).toBe('+OK Logging out, 2 messages deleted.');
    await m.waitForLog(/pop3\(erin\): Disconnected: Logged out top=0\/0, retr=0\/0, del=2\/4, size=\d+/);

    expect(readMbox(m.mailbox('erin')).map((x) => x.header('Subject'))).toEqual(['b', 'd', 'e']);
    const again = await login(m, 'erin');
    const after = (await again.multi('UIDL')).lines.map((l) => l.split(' ')[1]);
    expect(after.slice(0, 2)).toEqual([uidls[1], uidls[3]]);
    expect(after).toHaveLength(3);
    await again.quit();
  });

  it('a session that ends without QUIT deletes nothing', async () => {
    const m = get();
    const before = fs.readFileSync(m.mailbox('erin'));
    const c = await login(m, 'erin');
    expect(await c.cmd('DELE 1')).toMatch(/^\+OK/);
    c.close();
    await m.waitForLog(/pop3\(erin\): Disconnected: Connection closed/);
    expect(fs.readFileSync(m.mailbox('erin')).equals(before)).toBe(true);
  });

  it('two identical messages get different UIDLs, and keep them when others are removed', async () => {
    const m = get();
    const c0 = await login(m, 'carol');
    for (let i = 1; i <= (await c0.multi('LIST')).lines.length; i++) await c0.cmd(`DELE ${i}`);
    await c0.quit();
    const same = 'Subject: same\r\nMessage-ID: <same@client.test>\r\n\r\nsame\r\n';
    await send(m, 'carol', 'Subject: other\r\n\r\nx\r\n');
    await send(m, 'carol', same);
    await send(m, 'carol', same);
    const c = await login(m, 'carol');
    const u = (await c.multi('UIDL')).lines.map((l) => l.split(' ')[1]);
    expect(new Set(u).size).toBe(3);
    await c.cmd('DELE 1');
    await c.quit();
    const c2 = await login(m, 'carol');
    expect((await c2.multi('UIDL')).lines).toEqual([`1 ${u[1]}`, `2 ${u[2]}`]);
    await c2.quit();
  });
});

describe('POP3: mailboxes mtad did not write', () => {
  const foreign = (uid: string): string =>
    'From MAILER_DAEMON  Fri Nov 27 13:00:00 2026\nDate: Fri, 27 Nov 2026 13:00:00 +0000\nFrom: Mail System Internal Data <MAILER-DAEMON@pc12>\n' +
    "Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\nX-IMAP: 1764248400 0000000003\nStatus: RO\n\nThis text is part of the internal format of your mail folder, and is not\na real message.\n\n" +
    'From someone@else.test  Fri Nov 27 13:38:46 2026\nReturn-Path: <someone@else.test>\nSubject: postfix one\n\n>From quoted by Postfix\n\n' +
    `From someone@else.test  Fri Nov 27 13:38:46 2026\nSubject: twin\n${uid}\nsame body\n\n` +
    'From someone@else.test  Fri Nov 27 13:38:46 2026\nSubject: twin\n\nsame body\n\n';

  it("hides Dovecot's internal-data entry and names others' messages by content, stable across sessions", async () => {
    const m = get();
    fs.writeFileSync(m.mailbox('frank'), foreign(''));
    if (process.getuid?.() === 0) fs.chownSync(m.mailbox('frank'), fs.statSync(m.spool).uid, fs.statSync(m.spool).gid);
    // frank had no password: mta-passwd gives him one, and the running mtad takes it at the next login.
    expect(await (await Pop3Client.connect(m.pop3Port!)).login('frank', 'frank-pw')).toMatch(/^-ERR \[AUTH\]/);
    const r = runCli('mta-passwd', ['frank'], m.cliEnv(), 'frank-pw\nfrank-pw\n');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('mta-passwd: password updated successfully\n');
    const c = await Pop3Client.connect(m.pop3Port!);
    expect(await c.login('frank', 'frank-pw')).toMatch(/^\+OK/);
    const list = await c.multi('LIST');
    expect(list.lines).toHaveLength(3);
    const r1 = await c.multi('RETR 1');
    expect(r1.data.toString()).toBe('Return-Path: <someone@else.test>\r\nSubject: postfix one\r\n\r\nFrom quoted by Postfix\r\n');
    expect(list.lines[0]).toBe(`1 ${r1.data.length}`);
    const u = (await c.multi('UIDL')).lines.map((l) => l.split(' ')[1]);
    expect(new Set(u).size).toBe(3);
    for (const x of u) expect(x).toMatch(/^[\x21-\x7e]{1,70}$/);
    expect(await c.cmd('DELE 1')).toMatch(/^\+OK/);
    await c.quit();
    const left = fs.readFileSync(m.mailbox('frank'), 'latin1');
    expect(left.startsWith('From MAILER_DAEMON')).toBe(true);
    expect(left).not.toContain('postfix one');
    const c2 = await Pop3Client.connect(m.pop3Port!);
    await c2.login('frank', 'frank-pw');
    expect((await c2.multi('UIDL')).lines).toEqual([`1 ${u[1]}`, `2 ${u[2]}`]);
    await c2.quit();
  });
});

describe('mta-passwd', () => {
  it('changes a password: the old one stops working and the new one works at the next login; --lock removes it', async () => {
    const m = get();
    expect(runCli('mta-passwd', ['bob'], m.cliEnv(), 'one\ntwo\n').status).toBe(1);
    expect(runCli('mta-passwd', ['nosuch'], m.cliEnv(), 'a\na\n')).toMatchObject({ status: 1, stderr: "mta-passwd: user 'nosuch' does not exist (add it with mta-adduser)\n" });
    expect(runCli('mta-passwd', [], m.cliEnv()).status).toBe(64);
    expect(runCli('mta-passwd', ['bob'], m.cliEnv(), 'bob-new\nbob-new\n').status).toBe(0);
    expect(await (await Pop3Client.connect(m.pop3Port!)).login('bob', PASSWORDS.bob)).toBe('-ERR [AUTH] Authentication failed.');
    const c = await Pop3Client.connect(m.pop3Port!);
    expect(await c.login('bob', 'bob-new')).toMatch(/^\+OK/);
    await c.quit();
    expect(runCli('mta-passwd', ['--lock', 'bob'], m.cliEnv()).status).toBe(0);
    expect(await (await Pop3Client.connect(m.pop3Port!)).login('bob', 'bob-new')).toBe('-ERR [AUTH] Authentication failed.');
    expect(fs.readFileSync(m.usersFile, 'utf8')).toMatch(/^bob:!:Bob Test$/m);
  });
});

describe('POP3: another program changes the mailbox during a session', () => {
  let m: Mtad;
  beforeAll(() => { m = get(); });
  afterAll(() => undefined);

  it('nothing is removed and QUIT answers [SYS/TEMP] with why', async () => {
    await send(m, 'dave', 'Subject: q\r\n\r\nq\r\n');
    const c = await login(m, 'dave');
    expect(await c.cmd('DELE 1')).toMatch(/^\+OK/);
    // What mutt does when it marks a message read: rewrites a part the session saw.
    const text = fs.readFileSync(m.mailbox('dave'), 'latin1');
    fs.writeFileSync(m.mailbox('dave'), text.replace('Subject: p1', 'Subject: P1'), 'latin1');
    expect(await c.cmd('QUIT')).toMatch(/^-ERR \[SYS\/TEMP\] another program changed the mailbox/);
    expect(readMbox(m.mailbox('dave')).map((x) => x.header('Subject'))).toContain('P1');
    // The next login sees the rewrite (same size, new bytes), not what the last scan found.
    const again = await login(m, 'dave');
    const top = await again.multi('TOP 1 0');
    expect(top.data.toString()).toContain('Subject: P1\r\n');
    await again.quit();
  });
});
