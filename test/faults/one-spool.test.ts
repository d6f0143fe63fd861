// One spool, one mtad (issue 9, item 2). A second mtad on a spool that one
// serves, whichever way it names it (a symbolic link, a relative path, another
// queue), must refuse to start (exit 75, naming the pid of the first) before it
// touches anything: its start-up sweep would otherwise remove the first one's
// live dotlocks and cut mailboxes back by the first one's append records.
// `mtad --check` must give the same verdict.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendRecordPath, instanceEnv, Mtad, removeInstance, ROOT, runCli, startMtad } from '../helpers/mtad';
import { appendInProgress, sendToken, tokensByPython, until } from './readers';

let first: Mtad;
let spoolLink: string;
beforeAll(async () => {
  first = await startMtad({ users: ['alice', 'bob'] });
  spoolLink = path.join(first.dir, 'spool-link');
  fs.symlinkSync(first.spool, spoolLink);
});
afterAll(async () => {
  const { code } = await first.stop();
  expect(code, first.output()).toBe(0);
  removeInstance(first.dir);
});

/** Resolves once mtad has let go of these mailboxes: it keeps one locked a few ms after its last append, waiting for more. */
async function idle(m: Mtad, users: string[]): Promise<void> {
  await until(() => users.every((u) => !fs.existsSync(`${m.mailbox(u)}.lock`) && !appendInProgress(m.queue, u)), 30000, 'mtad to release the mailboxes');
}

/** What the first mtad has on disk that a second one's start-up sweep would change. */
function snapshot(m: Mtad): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      const st = fs.lstatSync(p);
      if (st.isDirectory()) { out[p] = `dir ${st.ino}`; walk(p); } else out[p] = `${st.ino} ${fs.readFileSync(p).toString('base64')}`;
    }
  };
  walk(m.spool);
  return out;
}

const ways: Array<{ name: string; env: () => Record<string, string> }> = [
  { name: 'through a symbolic link to the spool (and so to its queue)', env: () => ({ MTAD_SPOOL_DIR: spoolLink }) },
  { name: 'by a relative path (from another directory of the checkout)', env: () => ({ MTAD_SPOOL_DIR: path.relative(ROOT, first.spool) }) },
  {
    name: 'with a queue of its own (MTAD_QUEUE_DIR)',
    env: () => ({ MTAD_SPOOL_DIR: first.spool, MTAD_QUEUE_DIR: path.join(first.dir, 'queue-2') }),
  },
];

describe('a second mtad on a spool one already serves', () => {
  let lockDir: string;
  let record: string;
  beforeAll(async () => {
    // What the first one leaves while it works: its dotlock directory on a mailbox
    // it is appending to, and the append record whose before/after sizes bracket
    // the mailbox's size (a second one's sweep would cut bob's last message off).
    await sendToken(first.port, 'bob', 'bob-1');
    const box = first.mailbox('bob');
    const before = fs.statSync(box).size;
    await sendToken(first.port, 'bob', 'bob-2');
    const st = fs.statSync(box);
    await idle(first, ['alice', 'bob']);
    lockDir = `${box}.lock`;
    fs.mkdirSync(lockDir);
    record = appendRecordPath(first.queue, 'bob');
    fs.writeFileSync(record, `${[st.dev, st.ino, before, st.size + 100].map((n) => String(n).padStart(20, '0')).join(' ')}\n`);
  });
  afterAll(() => {
    fs.rmSync(lockDir, { recursive: true, force: true });
    fs.rmSync(record, { force: true });
  });

  for (const way of ways) {
    it(`${way.name}: exits 75 naming the first one's pid, and changes nothing`, async () => {
      await idle(first, ['alice']);
      const before = snapshot(first);
      const r = runCli('mtad', [], instanceEnv(first.dir, way.env()));
      expect(r.status, r.stderr + r.stdout).toBe(75);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(new RegExp(`^mtad: another mtad \\(pid ${first.pid}\\) is already running on the spool `));
      expect(r.stdout).not.toMatch(/listening on|removed stale lock|interrupted by a crash/);
      expect(snapshot(first)).toEqual(before);
      expect(fs.existsSync(path.join(first.dir, 'queue-2', 'tmp'))).toBe(false);
      // The first one serves on, and bob's messages are all there.
      expect(tokensByPython(first.mailbox('bob'))).toEqual(['bob-1', 'bob-2']);
      const token = `alice-after-${ways.indexOf(way)}`;
      const id = await sendToken(first.port, 'alice', token);
      await first.waitForLog(new RegExp(`${id}: removed`));
      expect(tokensByPython(first.mailbox('alice')).at(-1)).toBe(token);
    });
  }

  it('mtad --check says so: one verdict, exit 75, the pid named', () => {
    for (const way of ways) {
      const r = runCli('mtad', ['--check'], instanceEnv(first.dir, way.env()));
      expect(r.status, r.stdout + r.stderr).toBe(75);
      expect(r.stdout).toMatch(new RegExp(`problem: another mtad \\(pid ${first.pid}\\) is already running on the spool .*kill ${first.pid}`));
      expect(r.stdout).toMatch(/mtad would not start\n$/);
      expect(r.stdout).not.toMatch(/^ok:/m);
    }
  });
});

describe('once the first mtad is gone', () => {
  it('a second one starts on that spool, and --check no longer names one running', async () => {
    const dir = first.dir;
    const { code } = await first.stop();
    expect(code, first.output()).toBe(0);
    const check = runCli('mtad', ['--check'], instanceEnv(dir, { MTAD_SPOOL_DIR: spoolLink }));
    expect(check.stdout).not.toMatch(/another mtad/);
    expect(check.status, check.stdout).toBe(0);
    first = await startMtad({ dir, env: { MTAD_SPOOL_DIR: spoolLink } });
    await sendToken(first.port, 'alice', 'second-life');
    expect(tokensByPython(first.mailbox('alice')).at(-1)).toBe('second-life');
  });
});
