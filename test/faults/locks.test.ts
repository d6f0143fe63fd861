// Readers holding the lock, and mtad holding it (issue 3, item 3). The lockers are
// the real programs of a Debian box: liblockfile's dotlockfile, procmail's
// lockfile, mutt_dotlock, and Python's mailbox.mbox.lock() (fcntl, then a dotlock).
// Dovecot cannot be made to *hold* a lock from outside: doveadm and imap take
// fcntl and dotlock inside one operation and drop them. It is driven as a writer
// that must wait for mtad's append (its imap server, preauthenticated), and
// kill.test.ts has it read and append to every mailbox after the kills.
//
// To observe mtad *during* an append, the test makes the disk slow: strace delays
// mtad's fdatasync(2), which the append calls after writing, with both locks
// held. Nothing else about mtad changes. While it is held every locker fails to
// lock without waiting, a waiting locker gets the lock only once the append is
// over and then sees the whole message, and mtad has the mailbox open exactly
// once (a second open and close would drop its fcntl lock).
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { descriptorsOn, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';
import { dovecotImapAsync, imapAppend, run, sendToken, tokensByFormail, tokensByPython, until } from './readers';

// Holds the lock until a line arrives on stdin; retries (and says so once) while someone else has it.
const PY_LOCKER = `
import mailbox, sys, time
box = mailbox.mbox(sys.argv[1], create=False)
said = False
while True:
    try:
        box.lock()
        break
    except mailbox.ExternalClashError:
        if not said:
            print('waiting', flush=True)
            said = True
        time.sleep(0.02)
print('locked %d' % len(box), flush=True)
sys.stdin.readline()
box.unlock()
print('unlocked', flush=True)
`;

// Tries once to take the fcntl lock Python's mailbox (and mutt, Dovecot) would take.
const PY_FCNTL_TRY = `
import fcntl, sys
f = open(sys.argv[1], 'rb+')
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print('free')
except OSError:
    print('busy')
`;

let mtad: Mtad;
let box: string;
let lock: string;
/** mtad's record of an append to alice's mailbox in progress (it exists exactly while one is). */
const appendRecord = (): string => path.join(mtad.queue, 'appending', 'alice');
beforeAll(async () => {
  mtad = await startMtad({
    users: ['alice'],
    env: { MTAD_LOCK_TIMEOUT: '2', MTAD_RETRY_MIN_DELAY: '0.2', MTAD_RETRY_MAX_DELAY: '0.5', MTAD_MAX_MESSAGE_SIZE: '20000000' },
  });
  box = mtad.mailbox('alice');
  lock = `${box}.lock`;
  // A first message creates the mailbox.
  await send('first');
});
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code).toBe(0);
  removeInstance(mtad.dir);
});

const send = (token: string, size = 0): Promise<string> => sendToken(mtad.port, 'alice', token, size);

let lastFcntlState = '';
/** The last answer of a background fcntl probe, which this starts again: for `until`, which must not block the event loop. */
function fcntlStateAsync(): string {
  const p = spawn('python3', ['-c', PY_FCNTL_TRY, box], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  p.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  p.on('exit', () => { lastFcntlState = out.trim(); });
  return lastFcntlState;
}

function fcntlState(): string {
  return run('python3', ['-c', PY_FCNTL_TRY, box]).stdout.trim();
}

function startPython(): { proc: ChildProcess; next: (re: RegExp) => Promise<string> } {
  const proc = spawn('python3', ['-c', PY_LOCKER, box], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  const waiters: Array<() => void> = [];
  proc.stdout!.on('data', (b: Buffer) => { out += b.toString(); waiters.splice(0).forEach((w) => w()); });
  const next = (re: RegExp): Promise<string> => new Promise((resolve, reject) => {
    const check = (): void => {
      const m = re.exec(out);
      if (m) resolve(m[0]);
      else if (proc.exitCode !== null) reject(new Error(`python locker exited: ${out}`));
      else waiters.push(check);
    };
    check();
  });
  return { proc, next };
}

interface Holder {
  name: string;
  acquire(): Promise<void>;
  release(): Promise<void>;
}

const holders: Holder[] = [
  {
    name: 'dotlockfile',
    async acquire() { expect(run('dotlockfile', ['-l', '-r', '0', lock]).status).toBe(0); },
    async release() { expect(run('dotlockfile', ['-u', lock]).status).toBe(0); },
  },
  {
    name: 'procmail lockfile',
    async acquire() { expect(run('lockfile', ['-r', '0', lock]).status).toBe(0); },
    // lockfile(1): the lock is released by removing the file.
    async release() { fs.rmSync(lock); },
  },
  {
    name: 'mutt_dotlock',
    async acquire() { expect(run('mutt_dotlock', ['-r', '0', box]).status).toBe(0); },
    async release() { expect(run('mutt_dotlock', ['-u', box]).status).toBe(0); },
  },
  (() => {
    let py: ReturnType<typeof startPython>;
    return {
      name: 'Python mailbox.mbox.lock()',
      async acquire() { py = startPython(); await py.next(/locked \d+/); },
      async release() { py.proc.stdin!.write('\n'); await py.next(/unlocked/); },
    };
  })(),
];

describe('a reader holds the mailbox', () => {
  for (const h of holders) {
    it(`${h.name}: mtad defers (250 to the client), leaves the lock alone, delivers after release`, async () => {
      const before = fs.readFileSync(box);
      // mtad keeps a mailbox locked a few ms after its last append, waiting for the
      // next one; a reader that tries once (-r 0) must come after that, as a retrying one would.
      await until(() => !fs.existsSync(lock), 2000, 'mtad to release the mailbox');
      await h.acquire();
      const lockBefore = fs.lstatSync(lock);
      const token = `held-by-${h.name.replace(/\W+/g, '-')}`;
      const id = await send(token);
      const line = await mtad.waitForLog(new RegExp(`${id}: to=<alice@lab.test>, .*status=deferred`));
      expect(line).toMatch(/mailbox alice is locked by another program \((fcntl lock|dotlock)\)/);
      await mtad.waitForLog(new RegExp(`${id}: queued for retry`));
      // Their lock is still there, the very same file, and the mailbox is untouched.
      const lockNow = fs.lstatSync(lock);
      expect(lockNow.isFile()).toBe(true);
      expect(lockNow.ino).toBe(lockBefore.ino);
      expect(fs.readFileSync(box).equals(before)).toBe(true);
      await h.release();
      await mtad.waitForLog(new RegExp(`${id}: to=<alice@lab.test>, .*status=sent`));
      await mtad.waitForLog(new RegExp(`${id}: removed`));
      expect(tokensByPython(box).at(-1)).toBe(token);
      expect(fs.existsSync(lock)).toBe(false);
    });
  }

  it('dotlockfile released while mtad waits: delivered in the same transaction, no queue', async () => {
    await until(() => !fs.existsSync(lock), 2000, 'mtad to release the mailbox');
    await holders[0].acquire();
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.test');
    const reply = c.send('a@client.test', ['alice@lab.test'], 'Subject: waited\r\nX-Token: waited\r\n\r\nEND waited\r\n');
    // mtad takes the fcntl lock first, then polls for the dotlock: once the fcntl
    // lock is busy, it is waiting for dotlockfile's lock.
    await until(() => fcntlStateAsync() === 'busy', 1500, 'mtad to hold the fcntl lock');
    await holders[0].release();
    const r = await reply;
    expect(r.code).toBe(250);
    const id = /queued as (\w+)/.exec(r.raw)![1];
    await c.quit();
    await mtad.waitForLog(new RegExp(`${id}: removed`));
    expect(mtad.output()).not.toMatch(new RegExp(`${id}: (queued for retry|.*status=deferred)`));
    expect(tokensByPython(box).at(-1)).toBe('waited');
  });
});

const HOLD_US = 2_500_000;

/**
 * Holds mtad inside an append: strace, attached to all its threads, delays every
 * fdatasync(2) by HOLD_US, as a slow disk would. Only the mailbox append calls
 * fdatasync (the queue uses fsync), and it does so with both locks held, after
 * writing. Resolves once an append is in progress; returns the token and the
 * pending 250, and the way to detach.
 */
async function holdInsideAppend(token: string, holdUs = HOLD_US): Promise<{ delivered: Promise<string>; detach: () => Promise<void> }> {
  const strace = spawn('strace', ['-f', '-p', String(mtad.pid), '-e', 'trace=fdatasync', '-e', `inject=fdatasync:delay_enter=${holdUs}`, '-o', '/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const exited = new Promise<void>((r) => strace.on('exit', () => r()));
  await new Promise<void>((resolve, reject) => {
    strace.stderr!.on('data', (b: Buffer) => { err += b.toString(); if (/attached/.test(err)) resolve(); });
    strace.on('exit', (code) => reject(new Error(`strace exited ${code}: ${err}`)));
  });
  const detach = async (): Promise<void> => { strace.kill('SIGINT'); await exited; };
  const delivered = send(token).then(() => token);
  await until(() => fs.existsSync(appendRecord()), 10000, 'an append in progress');
  return { delivered, detach };
}

/** Descriptors of mtad that refer to the mailbox. */
const mailboxDescriptors = (): number => descriptorsOn(mtad.pid, box);

interface Waiter {
  name: string;
  /** One attempt that must not wait: true if it got the lock (then released). */
  tryOnce(): boolean;
  /** A locker that waits; resolves once it holds the lock. */
  wait(): { done: Promise<void>; release(): Promise<void> };
}

function waitFor(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: 'ignore' });
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} exited ${code}`))));
  });
}

const waiters: Waiter[] = [
  {
    name: 'dotlockfile',
    tryOnce() { const ok = run('dotlockfile', ['-l', '-r', '0', lock]).status === 0; if (ok) run('dotlockfile', ['-u', lock]); return ok; },
    wait() { return { done: waitFor('dotlockfile', ['-l', '-r', '30', '-i', '1', lock]), release: async () => { run('dotlockfile', ['-u', lock]); } }; },
  },
  {
    name: 'procmail lockfile',
    tryOnce() { const ok = run('lockfile', ['-r', '0', lock]).status === 0; if (ok) fs.rmSync(lock); return ok; },
    wait() { return { done: waitFor('lockfile', ['-1', '-r', '30', lock]), release: async () => { fs.rmSync(lock); } }; },
  },
  {
    name: 'mutt_dotlock',
    tryOnce() { const ok = run('mutt_dotlock', ['-r', '0', box]).status === 0; if (ok) run('mutt_dotlock', ['-u', box]); return ok; },
    wait() { return { done: waitFor('mutt_dotlock', ['-r', '30', box]), release: async () => { run('mutt_dotlock', ['-u', box]); } }; },
  },
  {
    name: 'Python mailbox.mbox.lock()',
    tryOnce() { return fcntlState() === 'free'; },
    wait() {
      const py = startPython();
      return {
        // It must have been told to wait: the first lock() clashed with mtad's locks.
        done: py.next(/waiting/).then(() => py.next(/locked \d+/)).then(() => undefined),
        release: async () => { py.proc.stdin!.write('\n'); await py.next(/unlocked/); },
      };
    },
  },
];

describe('mtad holds the mailbox while it appends', () => {
  for (const w of waiters) {
    it(`${w.name} cannot lock it and waits; mtad has the mailbox open once`, async () => {
      const token = `slow-${w.name.replace(/\W+/g, '-')}`;
      const { delivered, detach } = await holdInsideAppend(token);
      try {
        expect(mailboxDescriptors()).toBe(1);
        expect(fcntlState()).toBe('busy');
        expect(w.tryOnce()).toBe(false);
        const waiting = w.wait();
        // The moment the waiter gets the lock, mtad's append must be over.
        const intentWhenLocked = waiting.done.then(() => fs.existsSync(appendRecord()));
        expect(await intentWhenLocked).toBe(false);
        // The waiter holds the lock now: what it sees is the whole new message.
        const tokens = tokensByPython(box);
        expect(tokens.at(-1)).toBe(token);
        expect(tokensByFormail(box)).toEqual(tokens);
        await waiting.release();
        await delivered;
        expect(fs.existsSync(lock)).toBe(false);
      } finally {
        await detach();
      }
    });
  }

  it('an append longer than the dotlock refresh period (5 s) keeps its lock sound and removes it after', async () => {
    const { delivered, detach } = await holdInsideAppend('slow-6s', 6_000_000);
    try {
      await delivered;
      // mtad may hold the mailbox a few ms after the 250, waiting for a next append.
      await until(() => !fs.existsSync(lock), 2000, 'mtad to release the mailbox');
      expect(mtad.output()).not.toMatch(/compromised/);
      expect(tokensByPython(box).at(-1)).toBe('slow-6s');
    } finally {
      await detach();
    }
  });

  it('Dovecot appending meanwhile waits for the append to end (its lock timeout is 5 s, the hold 2.5 s)', async () => {
    const token = 'slow-for-dovecot';
    const { delivered, detach } = await holdInsideAppend(token);
    try {
      const answer = dovecotImapAsync(box, [imapAppend('a', 'From: dovecot@lab.test\nSubject: imap\nX-Token: via-dovecot\n\nappended over IMAP\n'), 'b LOGOUT']);
      // When Dovecot is done, mtad's append must have been over for it to start.
      const intentWhenDone = answer.then(() => fs.existsSync(appendRecord()));
      expect(await intentWhenDone).toBe(false);
      expect(/^a (OK|NO|BAD).*$/m.exec(await answer)?.[0]).toMatch(/^a OK/);
      await delivered;
      const tokens = tokensByPython(box);
      expect(tokens.slice(-2)).toEqual([token, 'via-dovecot']);
      expect(tokensByFormail(box)).toEqual(tokens);
      await until(() => !fs.existsSync(lock), 2000, 'mtad to release the mailbox');
    } finally {
      await detach();
    }
  });
});
