// A full disk (issue 3, item 2). The spool and the queue each live on a small
// tmpfs of their own (root only: CI runs as root), filled up with a file:
//   1. both full: the client gets 452 4.3.1 for a small message (over a page) and for one big
//      enough to be streamed to the queue, after its final dot; nothing is left
//      behind and the mailbox is byte for byte what it was;
//   2. the queue has room again, the spool only a few pages: the message is
//      queued (250) and its delivery deferred; the append that ran out of space
//      is rolled back, the mailbox still untouched;
//   3. the spool has room again: the deferred message is delivered with no action.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeInstance, Mtad, removeInstance, RUN_AS, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { enhanced, SmtpClient } from '../helpers/smtp';
import { tokensByFormail, tokensByPython, until } from './readers';

const mounts: string[] = [];
let mtad: Mtad | null = null;
let dir = '';

afterAll(async () => {
  if (mtad) await mtad.stop('SIGKILL');
  for (const m of mounts.reverse()) spawnSync('umount', [m]);
  if (dir) removeInstance(dir);
});

function mountTmpfs(where: string, size: string): void {
  const { uid, gid } = fs.statSync(where);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755,uid=${uid},gid=${gid}`, 'tmpfs', where], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mount failed: ${r.stderr}`);
  mounts.push(where);
}

/** Fills the file system holding `dir` with the file `dir/filler`, to the last byte. */
function fill(dirPath: string): string {
  const file = path.join(dirPath, 'filler');
  const fd = fs.openSync(file, 'a');
  try {
    for (const size of [1 << 16, 4096, 512, 1]) {
      const buf = Buffer.alloc(size, 0x46);
      for (;;) {
        try {
          fs.writeSync(fd, buf);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

const message = (token: string, filler = 0): string =>
  `Subject: ${token}\r\nX-Token: ${token}\r\n\r\nbody of ${token}\r\n${`${'y'.repeat(70)}\r\n`.repeat(Math.ceil(filler / 72))}END ${token}\r\n`;

/** Files in the queue's tmp/ and active/, and dotlock leftovers in the spool. */
function leftovers(queue: string, spool: string): string[] {
  return [
    ...fs.readdirSync(path.join(queue, 'tmp')).map((f) => `tmp/${f}`),
    ...fs.readdirSync(path.join(queue, 'active')).map((f) => `active/${f}`),
    ...fs.readdirSync(spool).filter((f) => f.endsWith('.lock')),
  ];
}

describe('disk full', () => {
  it.skipIf(needsRoot('disk full', 'mounting a small tmpfs needs root'))('answers 452 4.3.1, defers, keeps the mailbox intact, and delivers once there is room', async () => {
    dir = makeInstance({ users: ['alice'] });
    const spool = path.join(dir, 'spool');
    const queue = path.join(dir, 'queue');
    fs.mkdirSync(queue, { mode: 0o700 });
    const nobody = fs.statSync(spool);
    fs.chownSync(queue, nobody.uid, nobody.gid);
    mountTmpfs(spool, '2m');
    mountTmpfs(queue, '2m');
    mtad = await startMtad({ dir, env: { MTAD_QUEUE_DIR: queue, MTAD_RETRY_MIN_DELAY: '0.2', MTAD_RETRY_MAX_DELAY: '0.5' } });
    expect(RUN_AS).toBe('nobody');

    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.test');
    expect((await c.send('a@client.test', ['alice@lab.test'], message('before-1'))).code).toBe(250);
    expect((await c.send('a@client.test', ['alice@lab.test'], message('before-2', 100000))).code).toBe(250);
    const box = mtad.mailbox('alice');
    const before = fs.readFileSync(box);

    // 1. Both file systems full.
    const spoolFiller = fill(spool);
    const queueFiller = fill(queue);
    // Small, but larger than a page: a message that fits in the unused end of the
    // mailbox's last tmpfs page is delivered (and rightly acknowledged) without any new space.
    const small = await c.send('a@client.test', ['alice@lab.test'], message('small-while-full', 8000));
    expect(small.code).toBe(452);
    expect(enhanced(small)).toBe('4.3.1');
    const big = await c.send('a@client.test', ['alice@lab.test'], message('big-while-full', 600000));
    expect(big.code).toBe(452);
    expect(enhanced(big)).toBe('4.3.1');
    // The reply came after the final dot: the session is in step and goes on.
    expect((await c.cmd('NOOP')).code).toBe(250);
    expect(fs.readFileSync(box).equals(before)).toBe(true);
    expect(leftovers(queue, spool)).toEqual([]);

    // 2. The queue has room, the spool only 16 KiB: accepted, queued, delivery
    // deferred. The 50 KB append starts, runs out of space, and is rolled back.
    fs.rmSync(queueFiller);
    fs.truncateSync(spoolFiller, fs.statSync(spoolFiller).size - 16384);
    const freeBefore = fs.statfsSync(spool).bavail;
    const queued = await c.send('a@client.test', ['alice@lab.test'], message('deferred', 50000));
    expect(queued.code).toBe(250);
    const id = /queued as (\w+)/.exec(queued.raw)![1];
    await mtad.waitForLog(new RegExp(`${id}: to=<alice@lab.test>, .*dsn=4\\.3\\.1, status=deferred \\(no space left on device\\)`));
    await mtad.waitForLog(new RegExp(`${id}: queued for retry`));
    // A retry or two on the full spool changes nothing.
    const retries = (): number => mtad!.output().split('\n').filter((l) => l.includes(`${id}: to=<alice@lab.test>`) && l.includes('status=deferred')).length;
    await until(() => retries() >= 3);
    expect(fs.readFileSync(box).equals(before)).toBe(true);
    // Between retries no lock is left (one may be held while a retry runs).
    await until(() => !fs.readdirSync(spool).some((f) => f.endsWith('.lock')), 30000, 'no lock in the spool between retries');
    expect(fs.statfsSync(spool).bavail).toBe(freeBefore);
    expect(fs.readdirSync(path.join(queue, 'active'))).toContain(id);

    // 3. Room in the spool: delivered with no action from anyone.
    fs.rmSync(spoolFiller);
    await mtad.waitForLog(new RegExp(`${id}: to=<alice@lab.test>, .*status=sent`));
    await mtad.waitForLog(new RegExp(`${id}: removed`));
    const after = fs.readFileSync(box);
    expect(after.subarray(0, before.length).equals(before)).toBe(true);
    expect(tokensByPython(box)).toEqual(['before-1', 'before-2', 'deferred']);
    expect(tokensByFormail(box)).toEqual(['before-1', 'before-2', 'deferred']);
    expect(leftovers(queue, spool)).toEqual([]);
    // And the two refused messages can simply be sent again.
    expect((await c.send('a@client.test', ['alice@lab.test'], message('big-while-full', 600000))).code).toBe(250);
    await c.quit();
    const { code } = await mtad.stop();
    expect(code).toBe(0);
    mtad = null;
  });
});
