// The mail programs of a Unix box, each told to use bin/sendmail the way an
// admin would (bsd-mailx's and s-nail's mta variable, mutt's $sendmail):
// what each hands to sendmail is captured on the way (a tee in front of it), and
// must arrive in the mailbox byte for byte, below the Received line that names
// the submitting user.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, removeInstance, ROOT, startMtad } from '../helpers/mtad';
import { freePorts } from '../helpers/ports';
import { run } from './tools';

let mtad: Mtad;
let work: string;
let wrapper: string;
beforeAll(async () => {
  mtad = await startMtad({ users: ['alice', 'bob'] });
  work = path.join(mtad.dir, 'work');
  fs.mkdirSync(work);
  wrapper = path.join(work, 'sendmail');
  fs.writeFileSync(wrapper, `#!/bin/sh\nprintf '%s\\n' "$@" > "$CAPTURE.args"\ntee "$CAPTURE" | "${process.execPath}" "${path.join(ROOT, 'bin', 'sendmail')}" "$@"\n`, { mode: 0o755 });
});
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code).toBe(0);
  removeInstance(mtad.dir);
});

const BODY = 'hello from a mail program\nFrom here on, a line that mbox must quote\n.\n..two dots\ntrailing space \nh\xc3\xa9llo, UTF-8\n';

// Each takes the sendmail to use (`mta`): the capturing tee, or bin/sendmail itself.
const mailers: Array<{ name: string; cmd: string; args: (subject: string, mta: string) => string[]; rc?: (dir: string, mta: string) => Record<string, string> }> = [
  {
    name: 'bsd-mailx',
    cmd: 'bsd-mailx',
    args: (s) => ['-s', s, 'alice'],
    rc: (dir, mta) => {
      const file = path.join(dir, 'mailrc');
      fs.writeFileSync(file, `set sendmail=${mta}\nset sendwait\n`);
      return { MAILRC: file };
    },
  },
  {
    name: 's-nail',
    cmd: 's-nail',
    args: (s, mta) => ['-:/', `-Smta=${mta}`, '-Ssendwait', '-Sttycharset=utf-8', '-s', s, 'alice'],
    rc: (dir) => ({ DEAD: path.join(dir, 'dead.letter') }),
  },
  {
    name: 'mutt',
    cmd: 'mutt',
    args: (s, mta) => ['-n', '-F', '/dev/null', '-e', `set sendmail="${mta} -oem -oi"`, '-e', `set hostname=${HOSTNAME}`, '-e', 'unset record', '-s', s, 'alice'],
  },
];

describe('mail programs using bin/sendmail', () => {
  it.each(mailers)('$name: the message as the program wrote it arrives in the mailbox', async ({ name, cmd, args, rc }) => {
    const dir = fs.mkdtempSync(path.join(work, `${name}-`));
    const capture = path.join(dir, 'handed-to-sendmail');
    const subject = `sent with ${name}`;
    const env = { ...mtad.cliEnv(), MTAD_PORT: String(mtad.port), HOME: dir, CAPTURE: capture, ...(rc ? rc(dir, wrapper) : {}) };
    const r = await run(cmd, args(subject, wrapper), { input: Buffer.from(BODY, 'latin1'), env });
    expect(r.status, `${r.stderr}\n${r.stdout.toString()}`).toBe(0);
    const sent = fs.readFileSync(capture);
    console.log(`${name} ran: sendmail ${fs.readFileSync(`${capture}.args`, 'utf8').trim().split('\n').join(' ')}`);

    const [m, ...more] = readMbox(mtad.mailbox('alice')).filter((x) => x.header('Subject') === subject);
    expect(more).toEqual([]);
    expect(m.headers.slice(0, 4).map(([k]) => k)).toEqual(['Return-Path', 'Delivered-To', 'X-UIDL', 'Received']);
    expect(m.header('Received')).toMatch(new RegExp(`^by ${HOSTNAME} \\(mtad, from userid ${process.getuid!()}\\)`));
    const split = sent.indexOf('\n\n');
    const sentHeader = sent.subarray(0, split + 1).toString('latin1');
    const sentBody = sent.subarray(split + 2).toString('latin1');
    // Header: the program's fields, unchanged and in order (what it left out, sendmail adds after them).
    expect(m.raw.toString('latin1')).toContain(sentHeader);
    // Body: byte for byte, but for mboxrd's ">" before "From " in the mailbox file.
    expect(m.body.toString('latin1')).toBe(sentBody.replace(/^(>*From )/gm, '>$1'));
    expect(sentBody).toContain('hello from a mail program\n'); // some encode the rest (s-nail: quoted-printable)
  });
});

describe('mail programs keep the message when sendmail cannot deliver it', () => {
  const cases = [
    { why: 'an unknown recipient', to: 'nosuch', says: 'User unknown', port: () => Promise.resolve(mtad.port) },
    { why: 'mtad not running', to: 'alice', says: 'mtad is not running', port: async () => (await freePorts(1))[0] },
  ];
  // Without the tee: bsd-mailx hands sendmail its temp file, and saves dead.letter from where sendmail left the offset.
  const mta = path.join(ROOT, 'bin', 'sendmail');
  for (const mailer of mailers.filter((m) => m.name !== 'mutt')) {
    it.each(cases)(`${mailer.name}, $why: a failure, sendmail's reason, the whole message in dead.letter`, async ({ to, says, port }) => {
      const dir = fs.mkdtempSync(path.join(work, `${mailer.name}-dead-`));
      const env = { ...mtad.cliEnv(), MTAD_PORT: String(await port()), HOME: dir, ...(mailer.rc ? mailer.rc(dir, mta) : {}) };
      const args = mailer.args('undeliverable', mta).map((a) => (a === 'alice' ? to : a));
      const r = await run(mailer.cmd, args, { input: 'keep me, please\n', env });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain(`sendmail: `);
      expect(r.stderr).toContain(says);
      expect(fs.readFileSync(path.join(dir, 'dead.letter'), 'utf8')).toContain('keep me, please');
    });
  }
});
