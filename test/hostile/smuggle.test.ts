// Bare LF and bare CR in DATA, and SMTP smuggling. mtad's answer is Postfix's
// `smtpd_forbid_bare_newline = normalize`: only <CRLF>.<CRLF> ends a message; a
// bare LF ends a line like CRLF (the mbox stores LF anyway, and the first period
// of the next line is removed as after CRLF, RFC 5321 4.5.2); a bare CR is an
// ordinary byte, kept. So no
// byte sequence ends a message early, and nothing after a fake end of data is
// ever read as a command. Proved here against a real mtad, with the mailbox read
// back by Python's mailbox module.
import fs from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

let m: Mtad;
beforeAll(async () => { m = await startMtad({ users: ['alice', 'bob'] }); });
afterAll(async () => {
  const { code } = await m.stop();
  expect(code).toBe(0);
  expect(m.output()).not.toMatch(/internal error|unhandled/i);
  removeInstance(m.dir);
});

const FAKE_ENDS = ['\n.\n', '\r\n.\n', '\n.\r\n', '\r.\r\n', '\r\n.\r', '\r.\r', '\n.\r\r\n', '\r\n. \r\n', '\r\n\x00.\r\n'];

/** A fake end of data, then a whole second transaction: the classic smuggling payload. */
function smuggling(tag: string, fakeEnd: string): string {
  return `Subject: outer ${tag}\r\n\r\nbefore${fakeEnd}` +
    `MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob>\r\nDATA\r\nSubject: smuggled ${tag}\r\n\r\nforged\r\n`;
}

/** Writes the pieces as separate TCP segments (Nagle off, each flushed before the next goes). */
async function writeSegments(socket: net.Socket, pieces: Buffer[]): Promise<void> {
  socket.setNoDelay(true);
  for (const p of pieces) {
    await new Promise<void>((resolve, reject) => socket.write(p, (err) => (err ? reject(err) : resolve())));
    // Only shapes the segments (the server reads each on its own); no assertion depends on it.
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function session(pieces: Buffer[], to = 'alice'): Promise<string[]> {
  const c = await SmtpClient.connect(m.port);
  const replies: string[] = [];
  await c.cmd('EHLO client.test');
  replies.push((await c.cmd('MAIL FROM:<sender@client.test>')).raw);
  replies.push((await c.cmd(`RCPT TO:<${to}>`)).raw);
  replies.push((await c.cmd('DATA')).raw);
  await writeSegments(c.socket, pieces);
  replies.push((await c.read()).raw);
  replies.push((await c.cmd('QUIT')).raw);
  c.close();
  return replies;
}

describe('no fake end of data ends a message or smuggles a second one', () => {
  it.each(FAKE_ENDS.map((f, i) => [i, f] as const))('fake end %i %j', async (i, fake) => {
    const data = Buffer.from(`${smuggling(`#${i}`, fake)}.\r\n`, 'latin1');
    const replies = await session([data], 'alice');
    // One message, one 250: the smuggled MAIL/RCPT/DATA got no replies of their own.
    expect(replies.map((r) => r.slice(0, 3))).toEqual(['250', '250', '354', '250', '221']);
    const msgs = readMbox(m.mailbox('alice')).filter((x) => x.header('Subject') === `outer #${i}`);
    expect(msgs).toHaveLength(1);
    const body = msgs[0].body.toString('latin1');
    expect(body).toContain('MAIL FROM:<evil@attacker.test>\n');
    expect(body).toContain(`Subject: smuggled #${i}\n`);
    expect(readMbox(m.mailbox('alice')).some((x) => x.header('Subject')?.startsWith('smuggled'))).toBe(false);
  });

  it('delivers nothing to the smuggled recipient', () => {
    // bob is named only inside the smuggled transactions above.
    expect(fs.existsSync(m.mailbox('bob'))).toBe(false);
  });

  it('keeps a dot-stuffed ".." that arrives alone in a TCP segment as a "." line, at the start and in the middle', async () => {
    const replies = await session([
      Buffer.from('..'), Buffer.from('\r\nSubject: lonely dots\r\n\r\nline\r\n'), Buffer.from('..'),
      Buffer.from('\r\nMAIL FROM:<evil@attacker.test>\r\n'), Buffer.from('.'), Buffer.from('.\r'), Buffer.from('\n'),
      Buffer.from('end\r\n.\r\n'),
    ]);
    expect(replies.map((r) => r.slice(0, 3))).toEqual(['250', '250', '354', '250', '221']);
    const all = readMbox(m.mailbox('alice'));
    // The first line of the message is ".": Python sees no header at all, only body text.
    const msg = all.find((x) => x.raw.toString('latin1').includes('Subject: lonely dots'))!;
    expect(msg).toBeDefined();
    const text = msg.raw.toString('latin1');
    expect(text.slice(text.indexOf('\n.\nSubject: lonely dots') + 1)).toBe(
      '.\nSubject: lonely dots\n\nline\n.\nMAIL FROM:<evil@attacker.test>\n.\nend\n',
    );
  });
});

describe('a message split into two segments at every byte keeps the same bytes', () => {
  // Every fake end and a dot-stuffed line, so each split lands inside one of them somewhere.
  // After each fake end, a command: none of them may run.
  const payload = 'Subject: split\r\n\r\nA\n.\nRSET\r\n.\nMAIL FROM:<e@v.test>\n.\r\nRCPT TO:<bob>\r.\r\nDATA\r\n..\r\nF\r\n.\rG\r\n..\r\n';
  // Each period that starts a line (after CRLF or a bare LF) is removed: "." lines become empty.
  const stored = 'Subject: split\n\nA\n\nRSET\n\nMAIL FROM:<e@v.test>\n\nRCPT TO:<bob>\r.\nDATA\n.\nF\n\rG\n.\n';
  const whole = Buffer.from(`${payload}.\r\n`, 'latin1');

  it('stores the message as normalised (bare LF a line end, bare CR kept, a line\'s first period removed) however it is split', async () => {
    // Two segments split at every byte, then 60 sessions cut at 2 to 5 random places.
    // The random cuts are the same on every run (a fixed LCG), so a failure reproduces.
    let x = 12345;
    const rand = (n: number): number => { x = (Math.imul(x, 1103515245) + 12345) >>> 0; return (x >>> 8) % n; };
    const cuts: number[][] = Array.from({ length: whole.length - 1 }, (_, k) => [k + 1]);
    for (let i = 0; i < 60; i++) {
      cuts.push([...new Set(Array.from({ length: 2 + (i % 4) }, () => 1 + rand(whole.length - 1)))].sort((a, b) => a - b));
    }
    const total = cuts.length;
    const results: string[][] = [];
    const workers = Array.from({ length: 6 }, async () => {
      for (let c = cuts.shift(); c !== undefined; c = cuts.shift()) {
        const pieces = [0, ...c].map((from, i, all) => whole.subarray(from, i + 1 < all.length ? all[i + 1] : whole.length));
        results.push(await session(pieces, 'alice'));
      }
    });
    await Promise.all(workers);
    for (const r of results) expect(r.map((x) => x.slice(0, 3))).toEqual(['250', '250', '354', '250', '221']);
    const msgs = readMbox(m.mailbox('alice')).filter((x) => x.header('Subject') === 'split');
    expect(msgs).toHaveLength(total);
    for (const x of msgs) {
      const t = x.raw.toString('latin1');
      expect(t.slice(t.indexOf('Subject: split'))).toBe(stored);
    }
    expect(fs.existsSync(m.mailbox('bob'))).toBe(false);
  });
});

describe('the first period of every line is removed (RFC 5321 4.5.2), however the line is split', () => {
  // What a client that does not stuff (or a hand-typed session) sends: ".x" is stored as "x",
  // not ".x"; the first line of DATA too. Each case is split into two segments at every byte.
  const cases: Array<[string, string, string]> = [
    ['lines', 'Subject: dots\r\n\r\n.x\r\n..x\r\n...x\r\n. y\r\n.\r.z\r\nmid.dle\r\n..\r\n.\r\r\n', 'Subject: dots\n\nx\n.x\n..x\n y\n\r.z\nmid.dle\n.\n\r\n'],
    ['first line', '.Subject: first line\r\n\r\n.body\r\n', 'Subject: first line\n\nbody\n'],
  ];
  it.each(cases)('%s', async (_name, sent, stored) => {
    const whole = Buffer.from(`${sent}.\r\n`, 'latin1');
    const subject = /Subject: ([^\n]*)/.exec(stored)![1];
    const splits = Array.from({ length: whole.length }, (_, k) => k); // 0: one segment
    const results: string[][] = [];
    await Promise.all(Array.from({ length: 6 }, async () => {
      for (let k = splits.shift(); k !== undefined; k = splits.shift()) {
        results.push(await session(k ? [whole.subarray(0, k), whole.subarray(k)] : [whole]));
      }
    }));
    for (const r of results) expect(r.map((x) => x.slice(0, 3))).toEqual(['250', '250', '354', '250', '221']);
    const msgs = readMbox(m.mailbox('alice')).filter((x) => x.header('Subject') === subject);
    expect(msgs).toHaveLength(whole.length);
    for (const x of msgs) {
      const t = x.raw.toString('latin1');
      expect(t.slice(t.indexOf('Subject: '))).toBe(stored);
    }
  });
});
