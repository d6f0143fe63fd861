// SIGTERM in the middle of things (issue 3, item 5): during a large DATA and
// during a delivery. Nothing acknowledged is lost, the client hears 421 or its
// 250, and mtad exits 0. A delivery is held open by delaying mtad's writes to the
// mailbox and its append record with strace, as a slow disk would (helpers/slowdisk.ts).
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { makeInstance, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { slowAppends } from '../helpers/slowdisk';
import { Reply, SmtpClient } from '../helpers/smtp';
import { appendInProgress, tokensByPython, until } from './readers';

const GRACE = 2;
let mtad: Mtad | null = null;
afterEach(async () => {
  if (mtad) {
    await mtad.stop('SIGKILL');
    removeInstance(mtad.dir);
    mtad = null;
  }
});

async function boot(dir?: string, grace = GRACE): Promise<Mtad> {
  mtad = await startMtad({ dir, users: ['alice'], env: { MTAD_SHUTDOWN_GRACE: String(grace), MTAD_RETRY_MIN_DELAY: '0.2', MTAD_RETRY_MAX_DELAY: '0.5' } });
  return mtad;
}

const LINE = `${'d'.repeat(98)}\r\n`;
const lines = (n: number): string => LINE.repeat(n);

/** SIGTERM, then the exit: code, signal and seconds taken. */
async function terminate(m: Mtad): Promise<{ code: number | null; signal: string | null; seconds: number }> {
  const t0 = Date.now();
  const exit = m.stop('SIGTERM');
  await m.waitForLog(/SIGTERM received/);
  const { code, signal } = await exit;
  return { code, signal, seconds: (Date.now() - t0) / 1000 };
}

function tmpFiles(m: Mtad): string[] {
  return fs.readdirSync(path.join(m.queue, 'tmp'));
}

async function startLargeData(m: Mtad): Promise<SmtpClient> {
  const c = await SmtpClient.connect(m.port);
  await c.cmd('EHLO client.test');
  expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<alice@lab.test>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  c.write(`Subject: large\r\nX-Token: large\r\n\r\n${lines(10000)}`);
  // 1 MB in: the message is being streamed to the queue's tmp/.
  await until(() => tmpFiles(m).length === 1, 30000, 'the message to spill into tmp/');
  return c;
}

describe('SIGTERM', () => {
  it('the moment mtad says it is listening (start-up not quite over): a clean stop, exit 0', async () => {
    // "listening on" comes before mtad has taken the mta-queue requests waiting in
    // control/; a thousand of them hold the start-up open long enough for the
    // SIGTERM (startMtad resolves on that line, and stop() signals at once) to land there.
    const dir = makeInstance({ users: ['alice'] });
    const control = path.join(dir, 'spool', '.queue', 'control');
    fs.mkdirSync(control, { recursive: true });
    for (let i = 0; i < 1000; i++) fs.writeFileSync(path.join(control, `request-${i}`), 'flush\n');
    const { uid, gid } = fs.statSync(path.join(dir, 'spool'));
    for (const d of [path.dirname(control), control, ...fs.readdirSync(control).map((f) => path.join(control, f))]) fs.chownSync(d, uid, gid);
    const m = await boot(dir);
    const exit = await m.stop('SIGTERM');
    expect(exit).toEqual({ code: 0, signal: null });
    expect(m.output()).toMatch(/SIGTERM received/);
    expect(m.output()).toMatch(/stopped/);
  });

  it('during a large DATA that the client finishes within the grace time: 250, delivered, exit 0', async () => {
    // 30 s: the rest of the message and its storing must fit in the grace time even on a loaded machine.
    const m = await boot(undefined, 30);
    const c = await startLargeData(m);
    const done = terminate(m);
    await m.waitForLog(/stopping: no new connections/);
    c.write(`${lines(10000)}END large\r\n.\r\n`);
    const r = await c.read();
    expect(r.code).toBe(250);
    c.close();
    const exit = await done;
    expect(exit).toMatchObject({ code: 0, signal: null });
    const box = tokensByPython(m.mailbox('alice'));
    expect(box).toEqual(['large']);
    const raw = fs.readFileSync(m.mailbox('alice'), 'latin1');
    expect(raw.trimEnd().endsWith('END large')).toBe(true);
    expect(tmpFiles(m)).toEqual([]);
    process.stdout.write(`shutdown during DATA, client finished: exit ${exit.code} after ${exit.seconds.toFixed(2)} s (grace 30 s)\n`);
  });

  it('during a large DATA that the client never finishes: 421, nothing kept, exit 0 at the grace time', async () => {
    const m = await boot();
    const c = await startLargeData(m);
    const exit = await terminate(m);
    const r: Reply = await c.read();
    expect(r.code).toBe(421);
    await expect(c.read()).rejects.toThrow(/closed/);
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.seconds).toBeLessThan(GRACE + 10); // the hard stop is grace + 10 s; it must not be needed
    expect(m.output()).not.toContain('grace time over');
    expect(fs.existsSync(m.mailbox('alice'))).toBe(false);
    expect(tmpFiles(m)).toEqual([]);
    expect(fs.readdirSync(path.join(m.queue, 'active'))).toEqual([]);
    process.stdout.write(`shutdown during DATA, client stalled: 421, exit ${exit.code} after ${exit.seconds.toFixed(2)} s (grace ${GRACE} s)\n`);
  });

  // Each write to the mailbox or its record is held holdSeconds; an append makes three (its record's, twice, and the mailbox's).
  for (const [label, holdSeconds] of [['shorter', 0.3], ['longer', GRACE]] as const) {
    it(`during a delivery ${label} than the grace time: the client gets 421 or its 250, the message is kept, exit 0`, async () => {
      const m = await boot();
      const first = await SmtpClient.connect(m.port);
      await first.cmd('EHLO client.test');
      expect((await first.send('a@client.test', ['alice@lab.test'], 'Subject: first\r\nX-Token: first\r\n\r\nEND first\r\n')).code).toBe(250);
      await first.quit();
      const slow = await slowAppends(m, 'alice', holdSeconds * 1_000_000);
      try {
        const firstSize = fs.statSync(m.mailbox('alice')).size;
        const c = await SmtpClient.connect(m.port);
        await c.cmd('EHLO client.test');
        const reply = c.send('a@client.test', ['alice@lab.test'], 'Subject: held\r\nX-Token: held\r\n\r\nEND held\r\n').catch((e: Error) => e);
        // The record of this append (not of the first one, which may linger while
        // mtad holds the mailbox) starts where the first message ended.
        await until(() => appendInProgress(m.queue, 'alice')?.before === firstSize, 30000, 'the append');
        const exit = await terminate(m);
        const r = await reply;
        c.close();
        expect(exit).toMatchObject({ code: 0, signal: null });
        const tokens = tokensByPython(m.mailbox('alice'));
        if (r instanceof Error) throw r;
        expect([250, 421]).toContain(r.code);
        // Acknowledged or not, the message was being written: it is there, whole, once.
        expect(tokens).toEqual(['first', 'held']);
        expect(fs.readdirSync(m.spool).filter((f) => f.endsWith('.lock'))).toEqual([]);
        process.stdout.write(`shutdown during a ${holdSeconds} s delivery: client got ${r.code}, exit ${exit.code} after ${exit.seconds.toFixed(2)} s (grace ${GRACE} s)\n`);
      } finally {
        await slow.detach();
      }
    });
  }
});
