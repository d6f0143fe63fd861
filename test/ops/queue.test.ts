// mta-queue against a running mtad with real deferred mail: alice's mailbox is
// made undeliverable by holding its dotlock with liblockfile's dotlockfile, the
// way a mail reader holds it, so mtad defers and queues; then the tool lists,
// holds, releases, flushes and deletes while mtad keeps running.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, removeInstance, ROOT, runCli, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

const lockBox = (m: Mtad, user: string): void => {
  const r = spawnSync('dotlockfile', ['-l', '-r', '0', `${m.mailbox(user)}.lock`], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
};
const unlockBox = (m: Mtad, user: string): void => {
  const r = spawnSync('dotlockfile', ['-u', `${m.mailbox(user)}.lock`], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
};
const queue = (m: Mtad, ...args: string[]): { status: number | null; stdout: string; stderr: string } =>
  runCli('mta-queue', args, m.cliEnv());
const count = (m: Mtad, user: string): number => (fs.existsSync(m.mailbox(user)) ? readMbox(m.mailbox(user)).length : 0);

async function sendDeferred(m: Mtad, subject: string, to: string[]): Promise<string> {
  const c = await SmtpClient.connect(m.port);
  await c.cmd('HELO client.test');
  const r = await c.send('carol@remote.test', to, `From: carol@remote.test\nSubject: ${subject}\n\nhello ${subject}\n`);
  await c.quit();
  expect(r.code).toBe(250);
  const id = /queued as (\w+)/.exec(r.lines[0])![1];
  await m.waitForLog(new RegExp(`${id}: queued for retry`));
  return id;
}

let mtad: Mtad;
beforeAll(async () => {
  // Short lock waits; a first retry an hour away, so nothing is retried unless mta-queue asks.
  mtad = await startMtad({ env: { MTAD_LOCK_TIMEOUT: '0.2', MTAD_RETRY_MIN_DELAY: '3600', MTAD_RETRY_MAX_DELAY: '3600' } });
});
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code, mtad.output()).toBe(0);
  removeInstance(mtad.dir);
});

describe('mta-queue beside a running mtad', () => {
  it('lists deferred mail, holds it through a flush, and releases it into the mailbox', async () => {
    expect(queue(mtad).stdout).toBe('mail queue is empty\n');
    lockBox(mtad, 'alice');
    const id = await sendDeferred(mtad, 'first', [`alice@${HOSTNAME}`, 'bob']);
    expect(count(mtad, 'bob')).toBe(1);
    expect(count(mtad, 'alice')).toBe(0);

    const list = queue(mtad);
    expect(list.status).toBe(0);
    const file = path.join(mtad.queue, 'active', id);
    const size = fs.statSync(file).size - (fs.readFileSync(file).indexOf(0x0a) + 1);
    const lines = list.stdout.split('\n');
    expect(lines[0]).toMatch(/^ID\s+SIZE\s+AGE\s+SENDER \/ RECIPIENTS$/);
    expect(lines[1]).toMatch(new RegExp(`^${id}\\s+${size}\\s+\\d+s\\s+<carol@remote\\.test>$`));
    expect(list.stdout).toMatch(new RegExp(`-> <alice@${HOSTNAME}>\\n`));
    expect(list.stdout).toMatch(new RegExp(`-> <bob@${HOSTNAME}> \\(delivered\\)\\n`));
    expect(list.stdout).toMatch(/deferred: mailbox alice is locked by another program \(dotlock\) \(1 attempt\(s\), next in (59m\d\ds|1h00m)\)/);
    expect(list.stdout).toMatch(new RegExp(`-- 1 message\\(s\\), ${size} bytes\\n$`));

    const held = queue(mtad, '--hold', id);
    expect(held.stdout).toBe(`${id}: placed on hold\n`);
    await mtad.waitForLog(new RegExp(`${id}: placed on hold \\(mta-queue\\)`));
    expect(queue(mtad).stdout).toMatch(new RegExp(`HELD: not retried until mta-queue --release ${id}\\n[^]*, 1 held\\n$`));

    // The mailbox is free now, but a flush leaves a held message alone.
    unlockBox(mtad, 'alice');
    expect(queue(mtad, '--flush').stdout).toMatch(/flush requested: mtad retries 1 waiting message/);
    await mtad.waitForLog(/queue: flush requested: retrying 1 message/);
    const released = queue(mtad, '--release', id);
    expect(released.stdout).toBe(`${id}: released from hold\n`);
    await mtad.waitForLog(new RegExp(`${id}: released from hold`));
    await mtad.waitForLog(new RegExp(`${id}: to=<alice@${HOSTNAME}>, relay=local, .*status=sent`));
    await mtad.waitForLog(new RegExp(`${id}: removed`));
    // Delivered once to each: bob at once, alice on release.
    const box = readMbox(mtad.mailbox('alice'));
    expect(box.map((m) => m.header('Subject'))).toEqual(['first']);
    expect(count(mtad, 'bob')).toBe(1);
    expect(queue(mtad).stdout).toBe('mail queue is empty\n');
    expect(queue(mtad, '--release', id)).toMatchObject({ status: 66, stdout: `${id}: not in the queue (delivered, or removed)\n` });
  });

  it('--flush retries now what would otherwise wait an hour', async () => {
    lockBox(mtad, 'alice');
    const id = await sendDeferred(mtad, 'second', ['alice']);
    unlockBox(mtad, 'alice');
    expect(queue(mtad, '-f').status).toBe(0);
    await mtad.waitForLog(new RegExp(`${id}: to=<alice@${HOSTNAME}>, relay=local, .*status=sent`));
    expect(readMbox(mtad.mailbox('alice')).map((m) => m.header('Subject'))).toEqual(['first', 'second']);
  });

  it('--delete removes a message for good', async () => {
    lockBox(mtad, 'alice');
    const id = await sendDeferred(mtad, 'third', ['alice']);
    expect(queue(mtad, '--delete', id.toLowerCase()).stdout).toBe(`${id}: removed\n`);
    await mtad.waitForLog(new RegExp(`${id}: removed \\(deleted with mta-queue\\)`));
    unlockBox(mtad, 'alice');
    queue(mtad, '--flush');
    await mtad.waitForLog(/queue: flush requested: retrying 0 message/);
    expect(fs.existsSync(path.join(mtad.queue, 'active', id))).toBe(false);
    expect(readMbox(mtad.mailbox('alice')).map((m) => m.header('Subject'))).toEqual(['first', 'second']);
  });

  it('refuses what it cannot do with one line and an exit code', () => {
    expect(queue(mtad, '--hold', 'nonsense')).toMatchObject({ status: 64, stdout: '' });
    expect(queue(mtad, '--hold', 'nonsense').stderr).toBe('mta-queue: "nonsense" is not a queue id (10 hex digits, as mta-queue lists them)\n');
    expect(queue(mtad, '--delete', 'ABCDEF0123')).toMatchObject({ status: 66, stdout: 'ABCDEF0123: not in the queue (delivered, or removed)\n' });
    expect(queue(mtad, '--bogus').status).toBe(64);
  });
});

describe('a delete that meets a delivery in progress', () => {
  it('either removes the message or finds it delivered, never both', async () => {
    // Here a retry waits up to 3 s for the mailbox lock, holding the message's lock meanwhile.
    const m = await startMtad({ env: { MTAD_LOCK_TIMEOUT: '3', MTAD_RETRY_MIN_DELAY: '3600', MTAD_RETRY_MAX_DELAY: '3600' } });
    try {
      lockBox(m, 'alice');
      const id = await sendDeferred(m, 'race', ['alice']);
      queue(m, '--flush');
      await m.waitForLog(/queue: flush requested: retrying 1 message/);
      const del = spawn(process.execPath, [path.join(ROOT, 'bin', 'mta-queue'), '--delete', id], { env: m.cliEnv() });
      let out = '';
      del.stdout.on('data', (b: Buffer) => { out += b.toString(); });
      const code = new Promise<number | null>((resolve) => del.on('exit', resolve));
      unlockBox(m, 'alice');
      const status = await code;
      if (status === 0) {
        expect(out).toBe(`${id}: removed\n`);
        expect(count(m, 'alice')).toBe(0);
      } else {
        expect(out).toBe(`${id}: not in the queue (delivered, or removed)\n`);
        expect(readMbox(m.mailbox('alice')).map((x) => x.header('Subject'))).toEqual(['race']);
      }
      expect(fs.readdirSync(path.join(m.queue, 'active'))).toEqual([]);
    } finally {
      await m.stop();
      removeInstance(m.dir);
    }
  });
});
