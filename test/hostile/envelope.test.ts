// Issue 9 item 1: the envelope must not write raw bytes into the mbox. Every
// class of character that has turned into a line break somewhere (C0, DEL, C1,
// U+010A and U+0A0A whose low byte is LF, U+2028, raw 8-bit bytes, NUL, a lone CR)
// is sent in HELO, EHLO, MAIL, RCPT and their parameters to a real mtad. Each
// gets its refusal; then the same session sends one ordinary message. Python's
// mailbox must find exactly one message per session in alice's mailbox, with
// From and Subject as sent, and no forged one; every reply and every log and
// trace line must be printable ASCII. A queue file with such an envelope (as an
// older mtad could have written) is delivered as one message too.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

// No "@", "%" or "!" in it: a recipient carrying it is judged for its characters, not as a relay hack.
const FORGED = 'From forged  Sat Nov  7 09:05:03 2026\nFrom: boss\nSubject: forged\n';

/** Each hostile piece as the bytes sent, and whether it is control characters (501) or 8-bit (553). */
const PIECES: Array<[string, Buffer, 'control' | '8bit']> = [
  ['U+010A', Buffer.from('\u010a', 'utf8'), '8bit'],
  ['U+0A0A', Buffer.from('\u0a0a', 'utf8'), '8bit'],
  ['U+2028', Buffer.from('\u2028', 'utf8'), '8bit'],
  ['U+2029', Buffer.from('\u2029', 'utf8'), '8bit'],
  ['U+0085', Buffer.from('\u0085', 'utf8'), '8bit'],
  ['U+00E9', Buffer.from('\u00e9', 'utf8'), '8bit'],
  ['raw 0x85', Buffer.from([0x85]), '8bit'],
  ['raw 0x8a', Buffer.from([0x8a]), '8bit'],
  ['raw 0xff', Buffer.from([0xff]), '8bit'],
  ['raw 0xc4 0x0a', Buffer.from([0xc4, 0x8a]), '8bit'],
  ['NUL', Buffer.from([0x00]), 'control'],
  ['lone CR', Buffer.from([0x0d]), 'control'],
  ['ESC', Buffer.from([0x1b]), 'control'],
  ['DEL', Buffer.from([0x7f]), 'control'],
  ['TAB', Buffer.from([0x09]), 'control'],
];

/**
 * The piece between lines that would forge a message if the piece became a line
 * break; `tight` without spaces, for places where a space would end the argument.
 */
function hostile(piece: Buffer, tight = false): Buffer {
  const lines = FORGED.split('\n').filter(Boolean).map((l) => (tight ? l.replace(/ /g, '_') : l));
  return Buffer.concat([Buffer.from('x'), piece, ...lines.flatMap((l) => [Buffer.from(l), piece]), Buffer.from('y')]);
}

/** Where the piece goes, and the reply each class gets there. */
const PLACES: Array<[string, (piece: Buffer) => Buffer, { control: number; '8bit': number }]> = [
  ['HELO', (p) => Buffer.concat([Buffer.from('HELO '), hostile(p, true)]), { control: 501, '8bit': 501 }],
  ['EHLO', (p) => Buffer.concat([Buffer.from('EHLO '), hostile(p, true)]), { control: 501, '8bit': 501 }],
  ['MAIL address', (p) => Buffer.concat([Buffer.from('MAIL FROM:<'), hostile(p), Buffer.from('@client.test>')]), { control: 501, '8bit': 553 }],
  ['MAIL domain', (p) => Buffer.concat([Buffer.from('MAIL FROM:<a@'), hostile(p), Buffer.from('.test>')]), { control: 501, '8bit': 553 }],
  ['MAIL bracketless', (p) => Buffer.concat([Buffer.from('MAIL FROM: '), hostile(p, true), Buffer.from('@client.test')]), { control: 501, '8bit': 553 }],
  ['MAIL SIZE value', (p) => Buffer.concat([Buffer.from('MAIL FROM:<a@client.test> SIZE=1'), hostile(p, true)]), { control: 501, '8bit': 501 }],
  ['MAIL parameter', (p) => Buffer.concat([Buffer.from('MAIL FROM:<a@client.test> ENVID='), hostile(p, true)]), { control: 501, '8bit': 555 }],
  ['RCPT local part', (p) => Buffer.concat([Buffer.from('RCPT TO:<'), hostile(p), Buffer.from('@lab.test>')]), { control: 501, '8bit': 553 }],
  ['RCPT bare local part', (p) => Buffer.concat([Buffer.from('RCPT TO:<alice'), hostile(p), Buffer.from('>')]), { control: 501, '8bit': 553 }],
  ['RCPT domain', (p) => Buffer.concat([Buffer.from('RCPT TO:<alice@lab.test'), hostile(p), Buffer.from('>')]), { control: 501, '8bit': 554 }],
  ['RCPT parameter', (p) => Buffer.concat([Buffer.from('RCPT TO:<alice> NOTIFY='), hostile(p, true)]), { control: 501, '8bit': 555 }],
];

const CASES = PLACES.flatMap(([place, make, codes]) => PIECES.map(([name, piece, kind]) => ({
  label: `${place} with ${name}`, place, line: make(piece), code: codes[kind],
})));

let m: Mtad;
beforeAll(async () => { m = await startMtad({ users: ['alice', 'bob'], env: { MTAD_TRACE: 'yes' } }); });
afterAll(async () => {
  const { code } = await m.stop();
  expect(code).toBe(0);
  removeInstance(m.dir);
});

const PRINTABLE_REPLY = /^([2-5]\d\d[ -][\x20-\x7e]*\r\n)+$/;

describe('a hostile envelope gets its refusal and forges nothing', () => {
  const sent: string[] = [];

  it.each(CASES.map((c, i) => [c.label, i] as const))('%s', async (_label, i) => {
    const c = CASES[i];
    const s = await SmtpClient.connect(m.port);
    const replies = [];
    if (c.place !== 'HELO' && c.place !== 'EHLO') replies.push(await s.cmd('EHLO client.test'));
    if (c.place.startsWith('RCPT')) replies.push(await s.cmd('MAIL FROM:<sender@client.test>'));
    s.write(Buffer.concat([c.line, Buffer.from('\r\n')]));
    const r = await s.read();
    replies.push(r);
    expect(r.code, r.raw).toBe(c.code);
    // The same session then sends one ordinary message, which must arrive alone and whole.
    replies.push(await s.cmd('RSET'));
    if (c.place === 'HELO' || c.place === 'EHLO') replies.push(await s.cmd('EHLO client.test'));
    const subject = `probe ${i}`;
    const done = await s.send('sender@client.test', ['alice'], `From: sender@client.test\r\nSubject: ${subject}\r\n\r\nafter ${c.label}\r\n`);
    replies.push(done);
    expect(done.code, done.raw).toBe(250);
    await s.quit();
    for (const x of replies) expect(x.raw).toMatch(PRINTABLE_REPLY);
    sent.push(subject);
  });

  it('leaves exactly one message per session in the mailbox, each with From and Subject as sent', () => {
    const box = readMbox(m.mailbox('alice'));
    expect(box.map((x) => x.header('Subject')).sort()).toEqual([...sent].sort());
    expect(box).toHaveLength(CASES.length);
    for (const x of box) {
      expect(x.header('From')).toBe('sender@client.test');
      expect(x.from_).toMatch(/^sender@client\.test /);
    }
    expect(fs.existsSync(m.mailbox('bob'))).toBe(false);
  });

  it('writes only printable ASCII lines to the log and the trace', () => {
    const lines = m.output().split('\n').filter(Boolean);
    const bad = lines.filter((l) => !/^[\x20-\x7e]*$/.test(l));
    expect(bad).toEqual([]);
    // The trace shows what was sent, escaped: one of the forging lines, as the reader sees it.
    expect(m.output()).toContain('C: MAIL FROM:<x\\u{10a}From forged  Sat Nov  7 09:05:03 2026\\u{10a}From: boss');
    expect(m.output()).toContain('C: MAIL FROM:<x\\x00From forged  Sat Nov  7 09:05:03 2026\\x00From: boss');
  });
});

describe('an envelope queued by an older mtad', () => {
  it('is delivered as one message, its sender made printable in the From_ line and Return-Path', async () => {
    const q = await startMtad({ users: ['alice'] });
    const dir = q.dir;
    await q.stop();
    // What an mtad that let U+010A through wrote into its queue: the envelope as JSON.
    const queue = path.join(dir, 'spool', '.queue');
    const active = path.join(queue, 'active');
    const id = 'ABCDEF0123';
    const envelope = {
      v: 1, id, sender: `a\u010aFrom forged@evil.test  Sat Nov  7 09:05:03 2026\u010aSubject: forged\u2028\u0085@x.test`,
      recipients: [{ address: 'alice@lab.test', mailbox: 'alice' }], received: new Date().toISOString(), client: '127.0.0.1',
    };
    const file = path.join(active, id);
    fs.writeFileSync(file, Buffer.concat([Buffer.from(`${JSON.stringify(envelope)}\n`), Buffer.from('From: sender@x.test\nSubject: queued\n\nbody\n')]));
    const st = fs.statSync(active);
    fs.chownSync(file, st.uid, st.gid);
    const again = await startMtad({ dir });
    try {
      await again.waitForLog(new RegExp(`${id}: removed`), 60000);
      const box = readMbox(again.mailbox('alice'));
      expect(box.map((x) => x.header('Subject'))).toEqual(['queued']);
      expect(box[0].header('Return-Path')).toMatch(/^<[\x20-\x7e]*>$/);
      expect(box[0].from_).toMatch(/^a\?From_forged@evil\.test__Sat_Nov__7_09:05:03_2026\?Subject:_forged\?\?@x\.test /);
    } finally {
      const { code } = await again.stop();
      expect(code).toBe(0);
      removeInstance(dir);
    }
  });
});
