// Real mail programs send to a real mtad: swaks, mutt driving msmtp, nodemailer,
// Python's smtplib. Each message is read back from the mailbox with Python's
// mailbox and email packages and compared with what the program sent.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MboxMessage, readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { python, run, withoutTrace } from './tools';

interface Leaf { type: string; filename: string | null; cid: string | null; disposition: string | null; size: number; sha256: string; text?: string }
interface Node { type: string; parts?: Node[] }
type Part = Node & Partial<Leaf>;
interface Parsed { subject: string; message_id: string | null; defects: string[]; tree: Part }

let mtad: Mtad;
let work: string;
beforeAll(async () => {
  mtad = await startMtad({ users: ['alice', 'bob', 'carol'] });
  work = path.join(mtad.dir, 'work');
  fs.mkdirSync(work);
});
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code).toBe(0);
  removeInstance(mtad.dir);
});

const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');
const bySubject = (user: string, subject: string): MboxMessage[] =>
  readMbox(mtad.mailbox(user)).filter((m) => m.header('Subject') === subject);
const mime = (user: string): Promise<Parsed[]> => python<Parsed[]>('mime.py', [mtad.mailbox(user)]);
const leaves = (p: Part): Part[] => (p.parts ? p.parts.flatMap(leaves) : [p]);
const shape = (p: Part): string => (p.parts ? `${p.type}(${p.parts.map(shape).join(',')})` : p.type);

/** The message as swaks says it sent it: the " -> " lines between the 354 and the final dot, dot-stuffing undone. */
function swaksSent(transcript: Buffer): Buffer {
  const lines = transcript.toString('latin1').split('\n');
  const start = lines.findIndex((l) => /^<- {1,2}354 /.test(l));
  const end = lines.indexOf(' -> .', start);
  expect(start >= 0 && end > start, 'the transcript shows the DATA').toBe(true);
  return Buffer.from(lines.slice(start + 1, end).map((l) => l.replace(/^ -> /, '').replace(/^\./, '').replace(/\r$/, '') + '\n').join(''), 'latin1');
}

const swaks = (args: string[]) => run('swaks', ['--server', '127.0.0.1', '--port', String(mtad.port), '--helo', 'client.example.org', ...args]);

/** The one message with this subject in each mailbox, without our trace fields. */
function stored(user: string, subject: string): Buffer {
  const found = bySubject(user, subject);
  expect(found, `${user} has one "${subject}"`).toHaveLength(1);
  const body = withoutTrace(found[0].raw);
  expect(body, 'Return-Path, Delivered-To and Received lead the entry').not.toBeNull();
  return body!;
}

describe('swaks', () => {
  it('sends a plain message that arrives byte for byte', async () => {
    const file = path.join(work, 'plain.eml');
    const message = [
      'From: Carol <carol@example.org>', `To: alice@${HOSTNAME}`, 'Subject: swaks plain',
      'Message-ID: <swaks-plain@example.org>', '',
      'First line.', '.A line that starts with a dot (dot-stuffed on the wire).', 'From here on, an mbox reader would see a new message.',
      '>From already quoted once.', '', 'Last line.', '',
    ].join('\n');
    fs.writeFileSync(file, message);
    const r = await swaks(['--from', 'carol@example.org', '--to', `alice@${HOSTNAME}`, '--data', `@${file}`]);
    expect(r.status, r.stdout.toString()).toBe(0);
    expect(r.stdout.toString()).toMatch(/<- {2}250 2\.0\.0 Ok: queued as [0-9A-F]{10}/);
    // swaks ends the DATA with an empty line of its own after the file.
    const sent = swaksSent(r.stdout).toString('latin1');
    expect(sent).toBe(`${message}\n`);
    // mboxrd: one more ">" before every ^>*From line; everything else exactly as sent.
    const want = sent.replace('\nFrom here on', '\n>From here on').replace('\n>From already', '\n>>From already');
    expect(stored('alice', 'swaks plain').toString('latin1')).toBe(want);
    expect(bySubject('alice', 'swaks plain')[0].header('Return-Path')).toBe('<carol@example.org>');
  });

  it('pipelines MAIL, RCPT and DATA (--pipeline) and the message arrives', async () => {
    const r = await swaks(['--pipeline', '--from', 'carol@example.org', '--to', `alice@${HOSTNAME}`, '--header', 'Subject: swaks pipeline', '--body', 'Sent with PIPELINING.']);
    const out = r.stdout.toString();
    expect(r.status, out).toBe(0);
    // swaks only pipelines when the server advertises it; then the three commands go out before any reply.
    expect(out).toMatch(/250-PIPELINING/);
    expect(out).toMatch(/ -> MAIL FROM:<carol@example\.org>\n -> RCPT TO:<alice@lab\.test>\n -> DATA\n<- {2}250 2\.1\.0 [^\n]*\n<- {2}250 2\.1\.5 [^\n]*\n<- {2}354 /);
    const sent = swaksSent(r.stdout);
    expect(sent.toString()).toContain('\nSent with PIPELINING.\n');
    expect(stored('alice', 'swaks pipeline').equals(sent)).toBe(true);
  });

  it('sends an 8-bit body that arrives with every byte intact', async () => {
    // swaks 20201014 has no way to put BODY=8BITMIME on MAIL FROM; the parameter
    // itself is sent by smtplib below. Here: every byte value but NUL, CR, LF, and
    // "%", which swaks reads as the start of one of its tokens.
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i).filter((b) => ![0, 10, 13, 0x25].includes(b)));
    const head = Buffer.from('From: carol@example.org\nTo: bob@lab.test\nSubject: swaks 8bit\nMIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n');
    const utf8 = Buffer.from('Perché così? È un test: € ß æøå 日本語\n');
    const message = Buffer.concat([head, utf8, bytes.subarray(0, 120), Buffer.from('\n'), bytes.subarray(120), Buffer.from('\n')]);
    const file = path.join(work, '8bit.eml');
    fs.writeFileSync(file, message);
    const r = await swaks(['--from', 'carol@example.org', '--to', `bob@${HOSTNAME}`, '--data', `@${file}`]);
    expect(r.status, r.stdout.toString()).toBe(0);
    const sent = swaksSent(r.stdout);
    expect(sent.equals(Buffer.concat([message, Buffer.from('\n')]))).toBe(true);
    expect(stored('bob', 'swaks 8bit').equals(sent)).toBe(true);
  });

  it('sends a 2 MiB attachment whose SHA-256 survives', async () => {
    const blob = crypto.randomBytes(2 * 1024 * 1024);
    const file = path.join(work, 'two-mib.bin');
    fs.writeFileSync(file, blob);
    const r = await swaks(['--from', 'carol@example.org', '--to', `alice@${HOSTNAME}`, '--header', 'Subject: swaks 2 MiB', '--attach', `@${file}`, '--suppress-data']);
    expect(r.status, r.stderr).toBe(0);
    const msg = (await mime('alice')).filter((m) => m.subject === 'swaks 2 MiB');
    expect(msg).toHaveLength(1);
    expect(msg[0].defects).toEqual([]);
    const att = leaves(msg[0].tree).filter((l) => l.filename === 'two-mib.bin');
    expect(att).toHaveLength(1);
    expect(att[0].size).toBe(blob.length);
    expect(att[0].sha256).toBe(sha256(blob));
  });

  it('sends to several recipients with the null sender MAIL FROM:<>: one copy each', async () => {
    const r = await swaks(['--from', '<>', '--to', `alice@${HOSTNAME},bob@${HOSTNAME},carol`, '--header', 'Subject: swaks bounce', '--body', 'A bounce has the null sender.']);
    const out = r.stdout.toString();
    expect(r.status, out).toBe(0);
    expect(out).toContain(' -> MAIL FROM:<>');
    for (const user of ['alice', 'bob', 'carol']) {
      const [m, ...more] = bySubject(user, 'swaks bounce');
      expect(more).toEqual([]);
      expect(m.from_).toMatch(/^MAILER-DAEMON {2}\w{3} \w{3} /);
      expect(m.header('Return-Path')).toBe('<>');
      expect(m.header('Delivered-To')).toBe(`${user}@${HOSTNAME}`);
      expect(withoutTrace(m.raw)!.equals(swaksSent(r.stdout))).toBe(true);
    }
  });
});

describe('mutt driving msmtp', () => {
  it('sends a 200 KiB random binary attachment that Python extracts with the same SHA-256', async () => {
    const home = path.join(work, 'mutt-home');
    fs.mkdirSync(home);
    const blob = crypto.randomBytes(200 * 1024);
    const file = path.join(work, 'random.bin');
    fs.writeFileSync(file, blob);
    const muttrc = path.join(home, 'muttrc');
    // mutt hands the message to msmtp, which speaks SMTP to mtad: the usual setup of a mutt user.
    fs.writeFileSync(muttrc, [
      `set sendmail="/usr/bin/msmtp --host=127.0.0.1 --port=${mtad.port} --tls=off --auth=off --domain=client.example.org"`,
      'set use_envelope_from=yes',
      'set from="Carol <carol@example.org>"',
      'set hostname=example.org',
      'set send_charset=utf-8',
      'set record=""',
      '',
    ].join('\n'));
    const r = await run('mutt', ['-n', '-F', muttrc, '-s', 'mutt binary', '-a', file, '--', `alice@${HOSTNAME}`], {
      input: 'The attachment is 200 KiB of random bytes.\n',
      env: { PATH: process.env.PATH, HOME: home, TERM: 'dumb' },
    });
    expect(r.status, r.stdout.toString() + r.stderr).toBe(0);
    const msg = (await mime('alice')).filter((m) => m.subject === 'mutt binary');
    expect(msg).toHaveLength(1);
    expect(msg[0].defects).toEqual([]);
    expect(shape(msg[0].tree)).toBe('multipart/mixed(text/plain,application/octet-stream)');
    const [text, att] = leaves(msg[0].tree);
    expect(text.text).toBe('The attachment is 200 KiB of random bytes.\n');
    expect(att.filename).toBe('random.bin');
    expect(att.sha256).toBe(sha256(blob));
    const [entry] = bySubject('alice', 'mutt binary');
    expect(entry.header('Return-Path')).toBe('<carol@example.org>');
    // msmtp, not mutt, spoke SMTP: it greeted with the --domain it was given.
    expect(entry.header('Received')).toMatch(/^from client\.example\.org \(/);
  });
});

describe('nodemailer', () => {
  // A 1x1 PNG: real image bytes for the inline part.
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==', 'base64');

  it('sends HTML with a text alternative and an inline image; the MIME structure survives', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: mtad.port, secure: false, ignoreTLS: true, name: 'client.example.org' });
    const text = 'Ciao Alice,\nè un messaggio con un\'immagine.\n';
    const html = '<p>Ciao Alice,<br>è un messaggio con un\'immagine: <img src="cid:dot@lab.test" alt="dot"></p>';
    try {
      const info = await transport.sendMail({
        from: 'Carol <carol@example.org>',
        to: `Alice <alice@${HOSTNAME}>`,
        subject: 'nodemailer alternative',
        text,
        html,
        attachments: [{ filename: 'dot.png', content: png, contentType: 'image/png', cid: 'dot@lab.test' }],
      });
      expect(info.accepted).toEqual([`alice@${HOSTNAME}`]);
      expect(info.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
      const [msg, ...more] = (await mime('alice')).filter((m) => m.subject === 'nodemailer alternative');
      expect(more).toEqual([]);
      expect(msg.defects).toEqual([]);
      expect(msg.message_id).toBe(info.messageId);
      expect(shape(msg.tree)).toBe('multipart/alternative(text/plain,multipart/related(text/html,image/png))');
      const [plain, htmlPart, image] = leaves(msg.tree);
      expect(plain.text).toBe(text);
      expect(htmlPart.text).toBe(html);
      expect(image.cid).toBe('<dot@lab.test>');
      expect(image.sha256).toBe(sha256(png));
    } finally {
      transport.close();
    }
  });
});

describe('Python smtplib', () => {
  interface Result {
    send_message: { refused: Record<string, [number, string]>; bytes: string };
    sendmail: { rcpts: string[]; refused: Record<string, [number, string]>; bytes: string };
    all_unknown: { raised: boolean; recipients?: Record<string, [number, string]> };
    noop: number;
  }
  const known = [`alice@${HOSTNAME}`, `bob@${HOSTNAME}`];
  const unknown = [`ghost@${HOSTNAME}`, 'someone@remote.example'];
  const refusals = {
    [unknown[0]]: [550, `5.1.1 <${unknown[0]}>: Recipient address rejected: User unknown in local recipient table`],
    [unknown[1]]: [554, `5.7.1 <${unknown[1]}>: Relay access denied`],
  };
  let result: Result;
  beforeAll(async () => { result = await python<Result>('smtplib_send.py', [String(mtad.port), known.join(','), unknown.join(',')]); });

  it('send_message: the message arrives as the email package wrote it', () => {
    expect(result.send_message.refused).toEqual({});
    const sent = Buffer.from(result.send_message.bytes, 'base64').toString('latin1').replace(/\r\n/g, '\n');
    // Python's generator already wrote ">From" on the wire; mboxrd adds one more.
    expect(sent).toContain('\n>From a line');
    const want = sent.replace('\n>From a line', '\n>>From a line');
    expect(stored('alice', 'smtplib send_message').toString('latin1')).toBe(want);
  });

  it('sendmail to several recipients: the unknown ones are refused, the rest get the 8-bit message', () => {
    expect(result.sendmail.refused).toEqual(refusals);
    const sent = Buffer.from(result.sendmail.bytes, 'base64');
    const lf = Buffer.from(sent.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
    for (const user of ['alice', 'bob']) expect(stored(user, 'smtplib sendmail').equals(lf)).toBe(true);
    expect(bySubject('carol', 'smtplib sendmail')).toEqual([]);
    expect(fs.existsSync(mtad.mailbox('ghost'))).toBe(false);
  });

  it('sendmail to unknown recipients only raises SMTPRecipientsRefused with each reply, and the session goes on', () => {
    expect(result.all_unknown).toEqual({ raised: true, recipients: refusals });
    expect(result.noop).toBe(250);
    expect(fs.readdirSync(mtad.spool).filter((f) => !f.startsWith('.')).sort()).toEqual(['alice', 'bob', 'carol']);
  });
});
