// The programs a student reads the spool with, on one mailbox that mtad wrote:
// cat, formail -s, Python's mailbox (counts and bytes exact), bsd-mailx's
// `mail -f` and `mutt -f` (every message listed with its subject).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';
import { PY, run, screenOf, withoutTrace } from './tools';

interface Case { subject: string; sender: string; body: Buffer; stored: Buffer }

// What a client sends (LF here, CRLF and dot-stuffing on the wire) and what the
// mailbox must then hold after our trace fields.
const head = (subject: string): string => `From: Carol <carol@example.org>\nTo: alice@${HOSTNAME}\nSubject: ${subject}\n\n`;
const mk = (subject: string, body: Buffer | string, stored: Buffer | string = body, sender = 'carol@example.org'): Case => ({
  subject,
  sender,
  body: Buffer.concat([Buffer.from(head(subject)), Buffer.from(body as string, 'latin1')]),
  stored: Buffer.concat([Buffer.from(head(subject)), Buffer.from(stored as string, 'latin1')]),
});
const eightBit = Buffer.concat([Buffer.from('UTF-8: Perché così? € ß 日本語\nLatin-1: '), Buffer.from([0xe8, 0xe0, 0xf9, 0xff, 0x80, 0xa0]), Buffer.from('\n')]);
const longLine = `${'x'.repeat(9999)}\n`;
const CASES: Case[] = [
  mk('r1 plain', 'Hello Alice.\n'),
  mk('r2 from lines', 'From the start of a line\n>From once quoted\n>>From twice\nFromage, not From\n',
    '>From the start of a line\n>>From once quoted\n>>>From twice\nFromage, not From\n'),
  mk('r3 dots', '.\n..\n.hidden\nend\n'),
  mk('r4 eight bit', eightBit.toString('latin1')),
  mk('r5 null sender', 'A bounce.\n', 'A bounce.\n', ''),
  mk('r6 blank tail', 'Two empty lines follow.\n\n\n'),
  mk('r7 long line', longLine),
];

let mtad: Mtad;
let box: string;
let work: string;
beforeAll(async () => {
  mtad = await startMtad({ users: ['alice'] });
  box = mtad.mailbox('alice');
  work = path.join(mtad.dir, 'work');
  fs.mkdirSync(work);
  const c = await SmtpClient.connect(mtad.port);
  expect((await c.cmd('EHLO client.example.org')).code).toBe(250);
  for (const m of CASES) expect((await c.send(m.sender, [`alice@${HOSTNAME}`], m.body)).code).toBe(250);
  await c.quit();
});
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code).toBe(0);
  removeInstance(mtad.dir);
});

/** Splits mbox bytes at each line that starts with "From " (mtad quotes every other one). */
function entries(file: Buffer): Buffer[] {
  const text = file.toString('latin1');
  const starts = [...text.matchAll(/^From /gm)].map((m) => m.index!);
  return starts.map((s, i) => file.subarray(s, starts[i + 1] ?? file.length));
}

/** One entry: its From_ line, our trace fields, the message as stored, and the empty line that ends it. */
function checkEntry(entry: Buffer, c: Case): void {
  const nl = entry.indexOf('\n');
  expect(entry.subarray(0, nl).toString()).toMatch(new RegExp(`^From ${c.sender || 'MAILER-DAEMON'}  \\w{3} \\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d \\d{4}$`));
  expect(entry.subarray(entry.length - 1).toString()).toBe('\n');
  expect(withoutTrace(entry.subarray(nl + 1, entry.length - 1))?.toString('latin1')).toBe(c.stored.toString('latin1'));
}

describe('readers of the spool', () => {
  it('cat: every entry, byte for byte', async () => {
    const r = await run('cat', [box]);
    expect(r.status).toBe(0);
    const list = entries(r.stdout);
    expect(list).toHaveLength(CASES.length);
    list.forEach((e, i) => checkEntry(e, CASES[i]));
  });

  it('formail -s: splits into the same entries', async () => {
    const out = path.join(work, 'formail');
    fs.mkdirSync(out);
    const r = await run('formail', ['-s', 'python3', PY('save_message.py'), out], { input: fs.readFileSync(box) });
    expect(r.status, r.stderr).toBe(0);
    const files = fs.readdirSync(out).sort();
    expect(files).toHaveLength(CASES.length);
    files.forEach((f, i) => checkEntry(fs.readFileSync(path.join(out, f)), CASES[i]));
  });

  it('Python mailbox.mbox: the same count, the same bytes', () => {
    const msgs = readMbox(box);
    expect(msgs).toHaveLength(CASES.length);
    msgs.forEach((m, i) => {
      expect(m.header('Subject')).toBe(CASES[i].subject);
      expect(m.header('Return-Path')).toBe(`<${CASES[i].sender}>`);
      expect(withoutTrace(m.raw)?.toString('latin1')).toBe(CASES[i].stored.toString('latin1'));
    });
  });

  it('mail -f (bsd-mailx): lists every message with its subject', async () => {
    // "from *" prints the header line of every message; "x" leaves without touching the mailbox.
    const r = await run('mail', ['-n', '-N', '-f', box], { input: 'from *\nx\n', env: { PATH: process.env.PATH, HOME: work } });
    const out = r.stdout.toString('latin1');
    expect(r.status, out + r.stderr).toBe(0);
    expect(out).toContain(`"${box}": ${CASES.length} messages ${CASES.length} new`);
    const lines = out.split('\n').filter((l) => /^[> ][NUOR ]\s*\d+ /.test(l));
    expect(lines).toHaveLength(CASES.length);
    lines.forEach((l, i) => {
      expect(l).toMatch(new RegExp(`^[> ][NUOR ]\\s*${i + 1} `));
      expect(l.trimEnd().endsWith(` ${CASES[i].subject}`), l).toBe(true);
    });
  });

  it('mutt -f (in tmux): lists every message with its subject', async () => {
    const before = fs.readFileSync(box);
    const home = path.join(work, 'mutt-home');
    fs.mkdirSync(home);
    const screen = await screenOf(work, [
      'mutt', '-n', '-F', '/dev/null', '-R', '-f', box,
      '-e', `set folder=${home} quit=yes move=no sort=mailbox-order index_format="%4C|%s"`,
    ], new RegExp(`Msgs:${CASES.length}\\b`), ['q'], { PATH: process.env.PATH, HOME: home, TERM: 'xterm' });
    const rows = screen.split('\n').filter((l) => /^\s*\d+\|/.test(l)).map((l) => l.trim());
    expect(rows).toEqual(CASES.map((c, i) => `${i + 1}|${c.subject}`));
    expect(fs.readFileSync(box).equals(before)).toBe(true);
  });
});
