// Readers holding the lock, and mtad holding it (issue 3, item 3). The lockers are
// the real programs of a Debian box: liblockfile's dotlockfile, procmail's
// lockfile, mutt_dotlock, and Python's mailbox.mbox.lock() (fcntl, then a dotlock).
// Dovecot cannot be made to *hold* a lock from outside: doveadm and imap take
// fcntl and dotlock inside one operation and drop them. It is driven as a writer
// that must wait for mtad's append (its imap server, preauthenticated), and
// kill.test.ts has it read and append to every mailbox after the kills.
//
// To observe mtad *during* an append, the test makes the disk slow: strace delays
// mtad's writes to the mailbox and its append record (helpers/slowdisk.ts), each
// of which is its own sync (O_DSYNC) and made with both locks held (the record's
// before the append and before unlocking, the mailbox's). Nothing else about mtad
// changes. While it is held every locker fails to lock without waiting, a waiting
// locker gets the lock only once the append is over and then sees the whole
// message, and mtad has the mailbox open exactly once (a second open and close
// would drop its fcntl lock).
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { descriptorsOn, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { slowAppends } from '../helpers/slowdisk';
import { SmtpClient } from '../helpers/smtp';
import { watchOutput } from '../helpers/wait';
import { appendInProgress, dovecotImapAsync, imapAppend, run, sendToken, tokensByFormail, tokensByPython, until } from './readers';

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
/** Whether mtad's record says an append to alice's mailbox is under way. */
const appending = (): boolean => appendInProgress(mtad.queue, 'alice') !== null;
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

function fcntlState(): string {
  return run('python3', ['-c', PY_FCNTL_TRY, box]).stdout.trim();
}

/**
 * Lockers started by a test (Python's mailbox, waiting dotlock tools), ended after it
 * whatever happened. Python's is told to unlock rather than killed: a kill would leave
 * its dotlock behind, and every later test would wait on it.
 */
const lockers = new Set<ChildProcess>();
afterEach(async () => {
  await Promise.all([...lockers].map(async (p) => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    if (p.stdin) p.stdin.end('\n'); else p.kill('SIGKILL');
    const timer = setTimeout(() => p.kill('SIGKILL'), 20000);
    await gone;
    clearTimeout(timer);
  }));
  lockers.clear();
});
function startPython(): { proc: ChildProcess; next: (re: RegExp) => Promise<string> } {
  const proc = spawn('python3', ['-c', PY_LOCKER, box], { stdio: ['pipe', 'pipe', 'inherit'] });
  lockers.add(proc);
  const { next } = watchOutput(proc, 'the Python locker');
  return { proc, next: (re) => next(re) };
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
      await until(() => !fs.existsSync(lock), 30000, 'mtad to release the mailbox');
      await h.acquire();
      const token = `held-by-${h.name.replace(/\W+/g, '-')}`;
      let id = '';
      // Released whatever happens here: a lock left behind would fail every later test too.
      let held = true;
      try {
        const lockBefore = fs.lstatSync(lock);
        id = await send(token);
        const line = await mtad.waitForLog(new RegExp(`${id}: to=<alice@lab.test>, .*status=deferred`));
        expect(line).toMatch(/mailbox alice is locked by another program \((fcntl lock|dotlock)\)/);
        await mtad.waitForLog(new RegExp(`${id}: queued for retry`));
        // Their lock is still there, the very same file, and the mailbox is untouched.
        const lockNow = fs.lstatSync(lock);
        expect(lockNow.isFile()).toBe(true);
        expect(lockNow.ino).toBe(lockBefore.ino);
        expect(fs.readFileSync(box).equals(before)).toBe(true);
        held = false;
        await h.release();
      } finally {
        if (held) await h.release();
      }
      await mtad.waitForLog(new RegExp(`${id}: to=<alice@lab.test>, .*status=sent`));
      await mtad.waitForLog(new RegExp(`${id}: removed`));
      expect(tokensByPython(box).at(-1)).toBe(token);
      expect(fs.existsSync(lock)).toBe(false);
    });
  }

  it('dotlockfile released while mtad waits: delivered in the same transaction, no queue', async () => {
    // An mtad of its own that waits a minute for a lock: the test must see it waiting and
    // release within that time, which a loaded machine cannot make it miss.
    const m = await startMtad({ users: ['alice'], env: { MTAD_LOCK_TIMEOUT: '60' } });
    const mbox = m.mailbox('alice');
    const mlock = `${mbox}.lock`;
    try {
      await sendToken(m.port, 'alice', 'creates-the-mailbox');
      await until(() => !fs.existsSync(mlock) && descriptorsOn(m.pid, mbox) === 0, 30000, 'mtad to release the mailbox');
      expect(run('dotlockfile', ['-l', '-r', '0', mlock]).status).toBe(0);
      let held = true;
      const c = await SmtpClient.connect(m.port);
      try {
        await c.cmd('EHLO client.test');
        const reply = c.send('a@client.test', ['alice@lab.test'], 'Subject: waited\r\nX-Token: waited\r\n\r\nEND waited\r\n');
        // mtad opens the mailbox, takes its fcntl lock, then polls for the dotlock.
        await until(() => descriptorsOn(m.pid, mbox) === 1, 30000, 'mtad to open the mailbox');
        expect(run('python3', ['-c', PY_FCNTL_TRY, mbox]).stdout.trim()).toBe('busy');
        held = false;
        expect(run('dotlockfile', ['-u', mlock]).status).toBe(0);
        const r = await reply;
        expect(r.code).toBe(250);
        const id = /queued as (\w+)/.exec(r.raw)![1];
        await c.quit();
        await m.waitForLog(new RegExp(`${id}: removed`));
        expect(m.output()).not.toMatch(new RegExp(`${id}: (queued for retry|.*status=deferred)`));
        expect(tokensByPython(mbox).at(-1)).toBe('waited');
      } finally {
        if (held) run('dotlockfile', ['-u', mlock]);
        c.close();
      }
    } finally {
      const { code } = await m.stop();
      removeInstance(m.dir);
      expect(code).toBe(0);
    }
  });
});

const HOLD_US = 2_500_000;

/**
 * Holds mtad inside an append: every write to alice's mailbox and to its append
 * record returns HOLD_US late, as on a slow disk (helpers/slowdisk.ts). An append
 * makes three such writes with the locks held: the record's (its content is in
 * place as its hold begins), the mailbox's, the record's again before unlocking.
 * So once the record says an append is under way, the locks stay held for three
 * holds. Resolves once an append is in progress; returns the pending 250
 * (with the token), and the way to detach.
 */
async function holdInsideAppend(token: string, holdUs = HOLD_US): Promise<{ delivered: Promise<string>; detach: () => Promise<void> }> {
  const { detach } = await slowAppends(mtad, 'alice', holdUs);
  try {
    const delivered = send(token).then(() => token);
    await until(appending, 30000, 'an append in progress');
    return { delivered, detach };
  } catch (e) {
    // Never leave strace attached to mtad after a failed wait: every later test would crawl.
    await detach();
    throw e;
  }
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

/** Runs a locker that waits; killed after the test if it is still waiting. */
function waitFor(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: 'ignore' });
    lockers.add(p);
    p.on('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${cmd} exited ${code ?? signal}`))));
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
      // Three holds of 3 s, 9 s under the locks: long enough for the probes below (each
      // a new process) on a loaded machine, and less than the 10 s after which
      // mutt_dotlock -r 30 stops waiting on a lock directory and goes ahead (exit 0).
      const { delivered, detach } = await holdInsideAppend(token, 3_000_000);
      let locked = false;
      let waiting: ReturnType<Waiter['wait']> | undefined;
      try {
        expect(mailboxDescriptors()).toBe(1);
        expect(fcntlState()).toBe('busy');
        expect(w.tryOnce()).toBe(false);
        waiting = w.wait();
        // The moment the waiter gets the lock, mtad's append must be over.
        const intentWhenLocked = waiting.done.then(() => { locked = true; return appending(); });
        expect(await intentWhenLocked).toBe(false);
        // The waiter holds the lock now: what it sees is the whole new message.
        const tokens = tokensByPython(box);
        expect(tokens.at(-1)).toBe(token);
        expect(tokensByFormail(box)).toEqual(tokens);
        locked = false;
        await waiting.release();
        await delivered;
        expect(fs.existsSync(lock)).toBe(false);
      } finally {
        // A waiter that got the lock gives it back, whatever failed (one that did not is killed after the test).
        if (locked) await waiting!.release();
        await detach();
      }
    });
  }

  it('an append longer than the dotlock refresh period (5 s) keeps its lock sound and removes it after', async () => {
    // Three writes held 3 s each: 6 s to the 250, 9 s under the locks.
    const { delivered, detach } = await holdInsideAppend('slow-9s', 3_000_000);
    try {
      await delivered;
      // After the 250 mtad rewrites its append record (slowed down too) before it unlocks.
      await until(() => !fs.existsSync(lock), 30000, 'mtad to release the mailbox');
      expect(mtad.output()).not.toMatch(/compromised/);
      expect(tokensByPython(box).at(-1)).toBe('slow-9s');
    } finally {
      await detach();
    }
  });

  it('Dovecot appending meanwhile waits for the append to end (its lock timeout is 5 s, the hold 3 s)', async () => {
    const token = 'slow-for-dovecot';
    const { delivered, detach } = await holdInsideAppend(token, 1_000_000);
    try {
      const answer = dovecotImapAsync(box, [imapAppend('a', 'From: dovecot@lab.test\nSubject: imap\nX-Token: via-dovecot\n\nappended over IMAP\n'), 'b LOGOUT']);
      // When Dovecot is done, mtad's append must have been over for it to start.
      const intentWhenDone = answer.then(appending);
      expect(await intentWhenDone).toBe(false);
      expect(/^a (OK|NO|BAD).*$/m.exec(await answer)?.[0]).toMatch(/^a OK/);
      await delivered;
      const tokens = tokensByPython(box);
      expect(tokens.slice(-2)).toEqual([token, 'via-dovecot']);
      expect(tokensByFormail(box)).toEqual(tokens);
      await until(() => !fs.existsSync(lock), 30000, 'mtad to release the mailbox');
    } finally {
      await detach();
    }
  });
});
