// An append torn by kill -9, made deterministic. kill.test.ts hits the middle of
// a write only now and then; here the spool is left in exactly the state a kill
// mid-append leaves (mtad's lock directory, its record of the append in the
// queue, and part of an entry at the end of the mailbox), then a real mtad starts on it:
//   alice: torn inside the recorded append  -> cut back to the size before it;
//   bob:   the append had completed         -> left as it is (whole message);
//   carol: grown past the recorded append   -> someone else wrote: left alone, logged.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeInstance, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { sendToken, tokensByFormail, tokensByPython } from './readers';
import { watchOutput } from '../helpers/wait';

let mtad: Mtad | null = null;
let dir = '';
afterAll(async () => {
  if (mtad) await mtad.stop('SIGKILL');
  if (dir) removeInstance(dir);
});

const entry = (token: string): string =>
  `From a@client.test  Fri Nov 27 13:38:46 2026\nReturn-Path: <a@client.test>\nDelivered-To: x@lab.test\nSubject: ${token}\nX-Token: ${token}\n\nEND ${token}\n\n`;

const send = async (m: Mtad, user: string, token: string): Promise<void> => { await sendToken(m.port, user, token); };

/**
 * Leaves `user`'s mailbox as a kill inside an append of `planned` bytes would, after
 * `written` of them: mtad's lock directory, its record of the append in the queue's
 * appending/, and the bytes written so far.
 */
function tear(spool: string, user: string, planned: string, written: number, extra = ''): { before: number } {
  const box = path.join(spool, user);
  const st = fs.statSync(box);
  const lock = `${box}.lock`;
  // mtad may have been killed while it still held the lock (it lingers briefly after a batch).
  fs.mkdirSync(lock, { recursive: true });
  const record = path.join(spool, '.queue', 'appending', user);
  fs.writeFileSync(record, `${st.dev} ${st.ino} ${st.size} ${st.size + Buffer.byteLength(planned)}\n`);
  for (const p of [lock, record]) fs.chownSync(p, st.uid, st.gid);
  fs.appendFileSync(box, Buffer.from(planned).subarray(0, written));
  if (extra) fs.appendFileSync(box, extra);
  return { before: st.size };
}

describe('an append torn by a crash', () => {
  it('is cut off at the next start; a completed one or a foreign write is left alone', async () => {
    dir = makeInstance({ users: ['alice', 'bob', 'carol'] });
    mtad = await startMtad({ dir });
    for (const u of ['alice', 'bob', 'carol']) await send(mtad, u, `first-${u}`);
    await mtad.stop('SIGKILL');
    const spool = mtad.spool;

    const alice = tear(spool, 'alice', entry('torn'), 120);
    const aliceBytes = fs.readFileSync(path.join(spool, 'alice')).subarray(0, alice.before);
    // Torn as it is, the mailbox shows a bogus message to a reader.
    expect(tokensByPython(path.join(spool, 'alice'))).not.toEqual(['first-alice']);
    tear(spool, 'bob', entry('complete'), Buffer.byteLength(entry('complete')));
    tear(spool, 'carol', entry('planned'), 50, entry('someone-else'));
    const carolBytes = fs.readFileSync(path.join(spool, 'carol'));

    mtad = await startMtad({ dir });
    const out = mtad.output();
    expect(out).toContain('warning: mailbox alice: removed 120 bytes of an append interrupted by a crash');
    expect(out).not.toMatch(/mailbox bob: /);
    expect(out).toMatch(/warning: mailbox carol: an append was interrupted by a crash, but its size \d+ is outside the append .*; left as it is/);
    for (const u of ['alice', 'bob', 'carol']) expect(out).toContain(`removed stale lock ${u}.lock`);
    expect(fs.readdirSync(spool).filter((f) => f.endsWith('.lock'))).toEqual([]);
    expect(fs.readdirSync(path.join(spool, '.queue', 'appending'))).toEqual([]);

    expect(fs.readFileSync(path.join(spool, 'alice')).equals(aliceBytes)).toBe(true);
    expect(fs.statSync(path.join(spool, 'alice')).size).toBe(alice.before);
    expect(tokensByPython(path.join(spool, 'bob'))).toEqual(['first-bob', 'complete']);
    expect(fs.readFileSync(path.join(spool, 'carol')).equals(carolBytes)).toBe(true);

    // Delivery goes on after the cut (the 250 comes once it is in the mailbox): whole messages only.
    await send(mtad, 'alice', 'after');
    const box = path.join(spool, 'alice');
    expect(tokensByPython(box)).toEqual(['first-alice', 'after']);
    expect(tokensByFormail(box)).toEqual(['first-alice', 'after']);
    const { code } = await mtad.stop();
    expect(code).toBe(0);
    mtad = null;
  });

  it('does not cut a mailbox that a reader holds with its fcntl lock through the start', async () => {
    removeInstance(dir);
    dir = makeInstance({ users: ['dora'] });
    mtad = await startMtad({ dir });
    await send(mtad, 'dora', 'first-dora');
    await mtad.stop('SIGKILL');
    const box = path.join(mtad.spool, 'dora');
    tear(mtad.spool, 'dora', entry('torn'), 100);
    const torn = fs.readFileSync(box);
    // Python's lockf takes the classic fcntl lock, as Dovecot does while it reads.
    const holder = spawn('python3', ['-c', 'import fcntl, sys\nf = open(sys.argv[1], "a")\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint("locked", flush=True)\nsys.stdin.readline()', box], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      await watchOutput(holder, 'the Python lock holder').next(/locked/);
      mtad = await startMtad({ dir });
      expect(mtad.output()).toContain('warning: mailbox dora: an append was interrupted by a crash, but another program holds its fcntl lock; left as it is');
      expect(fs.readFileSync(box).equals(torn)).toBe(true);
    } finally {
      holder.stdin!.end('\n');
    }
    const { code } = await mtad.stop();
    expect(code).toBe(0);
    mtad = null;
  });
});
