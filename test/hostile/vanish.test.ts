// Clients that vanish: a FIN (socket.end) or a RST (socket.resetAndDestroy) in
// the middle of DATA, in the middle of a command, or right after the final dot.
// Nothing partial may reach a mailbox or stay in the queue, mtad keeps serving,
// and it reports no internal error.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { mtadForFile } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';
import { until } from '../helpers/wait';

const mtad = mtadForFile({ users: ['alice', 'bob'] });

type Leave = 'FIN' | 'RST';
const leave = (c: SmtpClient, how: Leave): void => { if (how === 'FIN') c.socket.end(); else c.socket.resetAndDestroy(); };
const closed = (c: SmtpClient): Promise<void> => new Promise((resolve) => {
  if (c.socket.destroyed) resolve(); else c.socket.once('close', () => resolve());
});
const count = (re: RegExp): number => mtad().output().split('\n').filter((l) => re.test(l)).length;

/** Waits until mtad has logged a line matching `re` at least n times. */
const logged = (re: RegExp, n: number): Promise<void> => until(() => count(re) >= n, 30000, `${n} log lines matching ${re}`, 10);

/** Waits until mtad has logged the end of every session it logged the start of. */
async function settled(): Promise<void> {
  const connects = count(/ connect from /);
  await until(() => count(/ disconnect from /) >= connects, 30000, `the end of all ${connects} sessions in the log`, 10);
}

/** A body whose every line says which message it belongs to, so a piece of one is recognisable. */
const body = (tag: string, lines: number): string =>
  Array.from({ length: lines }, (_, i) => `${tag} line ${String(i).padStart(6, '0')} ${'x'.repeat(60)}\r\n`).join('');

async function inData(c: SmtpClient, tag: string): Promise<void> {
  await c.cmd('EHLO client.test');
  expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<alice>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<bob>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  c.write(`Subject: ${tag}\r\n\r\n`);
}

function expectClean(): void {
  expect(fs.readdirSync(path.join(mtad().queue, 'tmp'))).toEqual([]);
  expect(fs.readdirSync(path.join(mtad().queue, 'active'))).toEqual([]);
  for (const u of ['alice', 'bob']) {
    if (!fs.existsSync(mtad().mailbox(u))) continue;
    for (const msg of readMbox(mtad().mailbox(u))) {
      expect(msg.header('Subject')).toMatch(/^whole /);
      const tag = msg.header('Subject')!;
      const lines = Number(/ (\d+) lines$/.exec(tag)![1]);
      expect(msg.body.toString('latin1')).toBe(body(tag, lines).replace(/\r\n/g, '\n'));
    }
  }
  expect(mtad().output()).not.toMatch(/internal error|unhandled|uncaught/i);
}

describe.each(['FIN', 'RST'] as const)('a client that leaves with %s', (how) => {
  it.each([
    ['a small message (kept in memory)', 20],
    ['a large message (spilled to the queue)', 6000],
  ])('in the middle of DATA of %s: nothing is kept', async (_what, lines) => {
    const c = await SmtpClient.connect(mtad().port);
    const tag = `partial ${how} ${lines}`;
    const lost = count(/lost connection after DATA/);
    await inData(c, tag);
    c.write(body(tag, lines));
    // The spill file exists once the body is past 256 KiB: leave while it is there.
    if (lines > 1000) {
      await until(() => fs.readdirSync(path.join(mtad().queue, 'tmp')).length > 0, 30000, 'the spill file in tmp/', 5);
    }
    leave(c, how);
    await closed(c);
    // Logged once the message and its spill file are gone.
    await logged(/lost connection after DATA/, lost + 1);
    await settled();
    expectClean();
  });

  it('in the middle of a command line: nothing happens', async () => {
    const c = await SmtpClient.connect(mtad().port);
    await c.cmd('EHLO client.test');
    expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
    c.write('RCPT TO:<ali');
    leave(c, how);
    await closed(c);
    await settled();
    expectClean();
  });

  it('right after the final dot: the message is delivered whole, or not at all', async () => {
    const c = await SmtpClient.connect(mtad().port);
    const tag = `whole ${how} 50 lines`;
    await inData(c, tag);
    c.write(`${body(tag, 50)}.\r\n`);
    leave(c, how);
    await closed(c);
    await settled();
    // Delivery may still be running after the disconnect: wait until every accepted message is removed.
    await until(() => {
      const ids = [...mtad().output().matchAll(/: (\w+): client=/g)].map((x) => x[1]);
      return ids.every((id) => mtad().output().includes(`${id}: removed`));
    }, 30000, 'every accepted message to be removed from the queue', 10);
    expectClean();
    const got = ['alice', 'bob'].map((u) => (fs.existsSync(mtad().mailbox(u)) ? readMbox(mtad().mailbox(u)) : []).filter((x) => x.header('Subject') === tag).length);
    expect(got[0]).toBeLessThanOrEqual(1);
    expect(got[1]).toBe(got[0]);
    if (how === 'FIN') expect(got[0]).toBe(1); // a half-close still sends every byte
  });
});

describe('after all of that', () => {
  it('mtad still delivers a normal session', async () => {
    const c = await SmtpClient.connect(mtad().port);
    await c.cmd('EHLO client.test');
    const tag = 'whole after 3 lines';
    const r = await c.send('a@client.test', ['alice'], `Subject: ${tag}\r\n\r\n${body(tag, 3)}`);
    expect(r.raw).toMatch(/^250 2\.0\.0 Ok: queued as/);
    await c.quit();
    expect(readMbox(mtad().mailbox('alice')).filter((x) => x.header('Subject') === tag)).toHaveLength(1);
    await settled();
    expectClean();
  });
});
