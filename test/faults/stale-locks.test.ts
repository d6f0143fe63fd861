// A lock left by a reader that died (issue 9, item 5): a "<mailbox>.lock" that
// nobody has touched for MTAD_STALE_LOCK_TIME (500 s, Postfix's stale_lock_time)
// is broken, with a log line, when a delivery finds it and at start-up; a lock
// younger than that, or one its holder keeps touching, is respected however long it stays.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { run, sendToken, tokensByPython, until } from './readers';

const RETRY = { MTAD_LOCK_TIMEOUT: '1', MTAD_RETRY_MIN_DELAY: '0.3', MTAD_RETRY_MAX_DELAY: '0.5' };
const MINUTES = 60;

/** A lock file as a dotlock user makes one, last touched `secondsAgo` ago. */
function lockFile(m: Mtad, user: string, secondsAgo: number): fs.Stats {
  const lock = `${m.mailbox(user)}.lock`;
  fs.writeFileSync(lock, '');
  const t = Date.now() / 1000 - secondsAgo;
  fs.utimesSync(lock, t, t);
  return fs.lstatSync(lock);
}

async function released(m: Mtad, user: string): Promise<void> {
  await until(() => !fs.existsSync(`${m.mailbox(user)}.lock`), 30000, `mtad to release ${user}'s mailbox`);
}

describe('with the default stale time (500 s)', () => {
  let m: Mtad;
  beforeAll(async () => { m = await startMtad({ users: ['alice', 'bob', 'carol', 'dave'], env: RETRY }); });
  afterAll(async () => {
    const { code } = await m.stop();
    expect(code, m.output()).toBe(0);
    removeInstance(m.dir);
  });

  it('a lock file nobody touched for 10 minutes is broken, logged, and the mail delivered at once', async () => {
    lockFile(m, 'alice', 10 * MINUTES);
    const id = await sendToken(m.port, 'alice', 'past-stale-file');
    await m.waitForLog(new RegExp(`${id}: removed`));
    expect(m.output()).toMatch(new RegExp(`warning: mailbox alice: broke the stale lock ${m.mailbox('alice')}\\.lock, a file nobody had touched for 6\\d\\d s`));
    expect(m.output()).not.toMatch(new RegExp(`${id}: (queued|.*status=deferred)`));
    expect(tokensByPython(m.mailbox('alice'))).toEqual(['past-stale-file']);
    await released(m, 'alice');
  });

  it('a lock directory nobody touched for 10 minutes is broken the same way', async () => {
    const lock = `${m.mailbox('carol')}.lock`;
    fs.mkdirSync(lock);
    const t = Date.now() / 1000 - 10 * MINUTES;
    fs.utimesSync(lock, t, t);
    const id = await sendToken(m.port, 'carol', 'past-stale-dir');
    await m.waitForLog(new RegExp(`${id}: removed`));
    expect(m.output()).toMatch(new RegExp(`warning: mailbox carol: broke the stale lock ${lock}, a directory nobody had touched`));
    expect(tokensByPython(m.mailbox('carol'))).toEqual(['past-stale-dir']);
  });

  it('a lock file younger than the stale time (touched 400 s ago) is respected: deferred until its holder removes it', async () => {
    const before = lockFile(m, 'bob', 400);
    const lock = `${m.mailbox('bob')}.lock`;
    const id = await sendToken(m.port, 'bob', 'waits-for-reader');
    // Deferred, and retried more than once, and the lock is still the reader's own.
    const deferred = new RegExp(`${id}: to=<bob@lab.test>, .*status=deferred \\(mailbox bob is locked by another program \\(dotlock\\)\\)`, 'g');
    await until(() => (m.output().match(deferred) ?? []).length >= 3, 30000, 'three deferrals');
    expect(fs.lstatSync(lock).ino).toBe(before.ino);
    expect(m.output()).not.toMatch(/mailbox bob: broke/);
    expect(tokensByPython(m.mailbox('bob'))).toEqual([]);
    fs.rmSync(lock);
    await m.waitForLog(new RegExp(`${id}: to=<bob@lab.test>, .*status=sent`), 30000);
    expect(tokensByPython(m.mailbox('bob'))).toEqual(['waits-for-reader']);
  });

  it('at start-up: a stale lock file is broken and logged, a fresh one is left to its holder', async () => {
    const dir = m.dir;
    expect((await m.stop()).code).toBe(0);
    lockFile(m, 'dave', 10 * MINUTES);
    const fresh = lockFile(m, 'carol', 0);
    m = await startMtad({ dir, env: RETRY });
    expect(m.output()).toMatch(new RegExp(`warning: mailbox dave: broke the stale lock ${m.mailbox('dave')}\\.lock, a file nobody had touched`));
    // Broken before the first client is served.
    expect(m.output().indexOf('broke the stale lock')).toBeLessThan(m.output().indexOf('listening on'));
    expect(fs.existsSync(`${m.mailbox('dave')}.lock`)).toBe(false);
    expect(fs.lstatSync(`${m.mailbox('carol')}.lock`).ino).toBe(fresh.ino);
    expect(m.output()).not.toMatch(/mailbox carol: broke/);
    fs.rmSync(`${m.mailbox('carol')}.lock`);
  });
});

describe('a reader that keeps its lock fresh (MTAD_STALE_LOCK_TIME=10)', () => {
  let m: Mtad;
  beforeAll(async () => { m = await startMtad({ users: ['alice'], env: { ...RETRY, MTAD_STALE_LOCK_TIME: '10' } }); });
  afterAll(async () => {
    const { code } = await m.stop();
    expect(code, m.output()).toBe(0);
    removeInstance(m.dir);
  });

  it('is never broken, however long it holds; once it stops touching the lock and dies, the lock is broken and the mail delivered', async () => {
    const lock = `${m.mailbox('alice')}.lock`;
    expect(run('dotlockfile', ['-l', '-r', '0', lock]).status).toBe(0);
    const ino = fs.lstatSync(lock).ino;
    // liblockfile's way of saying "still mine": dotlockfile -t, every 0.3 s, from a process
    // of its own, so that a test runner busy elsewhere (a loaded machine) cannot make it late.
    const toucher = spawn('sh', ['-c', 'while dotlockfile -t "$1"; do sleep 0.3; done', 'sh', lock], { stdio: 'ignore' });
    const toucherGone = new Promise((resolve) => toucher.once('exit', resolve));
    let id: string;
    try {
      const since = Date.now();
      id = await sendToken(m.port, 'alice', 'after-long-read');
      // Held for more than twice the stale time, across several retries.
      const deferred = new RegExp(`${id}: to=<alice@lab.test>, .*status=deferred`, 'g');
      await until(() => Date.now() - since > 22000 && (m.output().match(deferred) ?? []).length >= 4, 90000, 'deferrals over 22 s');
      expect(fs.lstatSync(lock).ino).toBe(ino);
      expect(m.output()).not.toMatch(/broke the stale lock/);
      expect(tokensByPython(m.mailbox('alice'))).toEqual([]);
    } finally {
      toucher.kill('SIGKILL');
      await toucherGone;
    }
    // The reader died without unlocking: no more touches.
    await m.waitForLog(new RegExp(`${id}: to=<alice@lab.test>, .*status=sent`), 60000);
    expect(m.output()).toMatch(new RegExp(`warning: mailbox alice: broke the stale lock ${lock}, a file nobody had touched for \\d+ s \\(MTAD_STALE_LOCK_TIME 10 s\\)`));
    expect(tokensByPython(m.mailbox('alice'))).toEqual(['after-long-read']);
  });
});
