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

const mailers: Array<{ name: string; cmd: string; args: (subject: string) => string[]; rc?: (dir: string) => Record<string, string> }> = [
  {
    name: 'bsd-mailx',
    cmd: 'bsd-mailx',
    args: (s) => ['-s', s, 'alice'],
    rc: (dir) => {
      const file = path.join(dir, 'mailrc');
      fs.writeFileSync(file, `set sendmail=${wrapper}\nset sendwait\n`);
      return { MAILRC: file };
    },
  },
  {
    name: 's-nail',
    cmd: 's-nail',
    args: (s) => ['-:/', `-Smta=${wrapper}`, '-Ssendwait', '-Sttycharset=utf-8', '-s', s, 'alice'],
    rc: (dir) => ({ DEAD: path.join(dir, 'dead.letter') }),
  },
  {
    name: 'mutt',
    cmd: 'mutt',
    args: (s) => ['-n', '-F', '/dev/null', '-e', `set sendmail="${wrapper} -oem -oi"`, '-e', `set hostname=${HOSTNAME}`, '-e', 'unset record', '-s', s, 'alice'],
  },
];

describe('mail programs using bin/sendmail', () => {
  it.each(mailers)('$name: the message as the program wrote it arrives in the mailbox', async ({ name, cmd, args, rc }) => {
    const dir = fs.mkdtempSync(path.join(work, `${name}-`));
    const capture = path.join(dir, 'handed-to-sendmail');
    const subject = `sent with ${name}`;
    const env = { ...mtad.cliEnv(), MTAD_PORT: String(mtad.port), HOME: dir, CAPTURE: capture, ...(rc ? rc(dir) : {}) };
    const r = await run(cmd, args(subject), { input: Buffer.from(BODY, 'latin1'), env });
    expect(r.status, `${r.stderr}\n${r.stdout.toString()}`).toBe(0);
    const sent = fs.readFileSync(capture);
    console.log(`${name} ran: sendmail ${fs.readFileSync(`${capture}.args`, 'utf8').trim().split('\n').join(' ')}`);

    const [m, ...more] = readMbox(mtad.mailbox('alice')).filter((x) => x.header('Subject') === subject);
    expect(more).toEqual([]);
    expect(m.headers.slice(0, 3).map(([k]) => k)).toEqual(['Return-Path', 'Delivered-To', 'Received']);
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
