// A mailbox swapped under us (issue 3, item 4): a symbolic link, a hard link, a
// FIFO (with and without a reader), a directory, and a mailbox replaced by a
// symlink while mtad waits for its lock. None is written through; the message is
// queued (the client gets its 250), the log says why, and it is delivered once the
// mailbox is a plain file again. The files behind the traps belong to the user
// mtad runs as, so only mtad's checks (not file permissions) protect them.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { descriptorsOn, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';
import { run, sendToken, tokensByPython, until } from './readers';
import { watchOutput } from '../helpers/wait';

let mtad: Mtad;
let owner: { uid: number; gid: number };
const readers: ChildProcess[] = [];

beforeAll(async () => {
  mtad = await startMtad({
    users: ['alice', 'symlinked', 'hardlinked', 'fifo', 'fiforead', 'directory', 'replaced'],
    env: { MTAD_LOCK_TIMEOUT: '5', MTAD_RETRY_MIN_DELAY: '0.2', MTAD_RETRY_MAX_DELAY: '0.5' },
  });
  const st = fs.statSync(mtad.spool);
  owner = { uid: st.uid, gid: st.gid };
});
afterAll(async () => {
  for (const r of readers) r.kill('SIGKILL');
  const { code } = await mtad.stop();
  expect(code).toBe(0);
  removeInstance(mtad.dir);
});

/** Descriptors of mtad open on `file`. */
const mailboxDescriptors = (file: string): number => descriptorsOn(mtad.pid, file);

/** A file outside the spool, owned like the mailboxes, that must never change. */
function victim(name: string): { file: string; bytes: Buffer } {
  const file = path.join(mtad.dir, name);
  const bytes = Buffer.from(`precious contents of ${name}\n`);
  fs.writeFileSync(file, bytes, { mode: 0o600 });
  fs.chownSync(file, owner.uid, owner.gid);
  return { file, bytes };
}

const send = (user: string, token: string): Promise<string> => sendToken(mtad.port, user, token);

async function deferredWith(id: string, user: string, reason: string): Promise<void> {
  const line = await mtad.waitForLog(new RegExp(`${id}: to=<${user}@lab.test>, .*status=deferred`));
  expect(line).toContain(`dsn=4.2.0, status=deferred (${reason})`);
  await mtad.waitForLog(new RegExp(`${id}: queued for retry`));
}

async function deliveredAfterFix(id: string, user: string, token: string): Promise<void> {
  await mtad.waitForLog(new RegExp(`${id}: to=<${user}@lab.test>, .*status=sent`));
  expect(tokensByPython(mtad.mailbox(user))).toEqual([token]);
}

describe('a mailbox that is not a plain file is not written', () => {
  it.each([
    ['symbolic link', 'symlinked', fs.symlinkSync, 'mailbox is a symbolic link'],
    ['hard link', 'hardlinked', fs.linkSync, 'mailbox has 2 hard links'],
  ] as const)('%s', async (_kind, user, link, reason) => {
    const v = victim(`${user}-target`);
    link(v.file, mtad.mailbox(user));
    const id = await send(user, `via-${user}`);
    await deferredWith(id, user, reason);
    expect(fs.readFileSync(v.file).equals(v.bytes)).toBe(true);
    fs.rmSync(mtad.mailbox(user));
    await deliveredAfterFix(id, user, `via-${user}`);
    expect(fs.readFileSync(v.file).equals(v.bytes)).toBe(true);
  });

  it('FIFO with nobody reading it', async () => {
    const fifo = mtad.mailbox('fifo');
    expect(spawnSync('mkfifo', ['-m', '600', fifo]).status).toBe(0);
    fs.chownSync(fifo, owner.uid, owner.gid);
    const id = await send('fifo', 'via-fifo');
    await deferredWith(id, 'fifo', 'mailbox is a FIFO or socket');
    fs.rmSync(fifo);
    await deliveredAfterFix(id, 'fifo', 'via-fifo');
  });

  it('FIFO with a reader on the other end: nothing reaches the reader', async () => {
    const fifo = mtad.mailbox('fiforead');
    expect(spawnSync('mkfifo', ['-m', '600', fifo]).status).toBe(0);
    fs.chownSync(fifo, owner.uid, owner.gid);
    // The reader holds the FIFO open (read-write, so that it never sees an end of
    // file) and reports every byte it gets.
    const py = 'import os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\nprint("open", flush=True)\nwhile True:\n    print("got %d" % len(os.read(fd, 65536)), flush=True)';
    const reader = spawn('python3', ['-c', py, fifo], { stdio: ['ignore', 'pipe', 'inherit'] });
    readers.push(reader);
    const said = watchOutput(reader, 'the FIFO reader');
    await said.next(/open/);
    const id = await send('fiforead', 'via-fifo-reader');
    await deferredWith(id, 'fiforead', 'mailbox is not a regular file');
    expect(said.output()).not.toMatch(/got [1-9]/);
    reader.kill('SIGKILL');
    fs.rmSync(fifo);
    await deliveredAfterFix(id, 'fiforead', 'via-fifo-reader');
  });

  it('directory', async () => {
    const d = mtad.mailbox('directory');
    fs.mkdirSync(d);
    fs.chownSync(d, owner.uid, owner.gid);
    const id = await send('directory', 'via-directory');
    await deferredWith(id, 'directory', 'mailbox is a directory');
    expect(fs.readdirSync(d)).toEqual([]);
    fs.rmdirSync(d);
    await deliveredAfterFix(id, 'directory', 'via-directory');
  });

  it('replaced by a symbolic link while mtad waits for its lock', async () => {
    const box = mtad.mailbox('replaced');
    const lock = `${box}.lock`;
    // A first message creates the mailbox.
    const first = await send('replaced', 'first');
    await mtad.waitForLog(new RegExp(`${first}: removed`));
    const original = fs.readFileSync(box);
    const v = victim('swap-target');
    // mtad keeps the mailbox locked a few ms after an append, waiting for the next one.
    await until(() => !fs.existsSync(lock), 30000, 'mtad to release the mailbox');
    expect(run('dotlockfile', ['-l', '-r', '0', lock]).status).toBe(0);
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.test');
    const reply = c.send('a@client.test', ['replaced@lab.test'], 'Subject: swapped\r\nX-Token: swapped\r\n\r\nEND swapped\r\n');
    // mtad has opened the mailbox and waits for the dotlock: swap the file now.
    await until(() => mailboxDescriptors(box) === 1, 30000, 'mtad to open the mailbox');
    fs.renameSync(box, `${box}.moved`);
    fs.symlinkSync(v.file, box);
    expect(run('dotlockfile', ['-u', lock]).status).toBe(0);
    const r = await reply;
    await c.quit();
    expect(r.code).toBe(250);
    const id = /queued as (\w+)/.exec(r.raw)![1];
    const line = await mtad.waitForLog(new RegExp(`${id}: to=<replaced@lab.test>, .*status=deferred`));
    expect(line).toContain('status=deferred (mailbox was replaced while waiting for its lock)');
    expect(fs.readFileSync(v.file).equals(v.bytes)).toBe(true);
    expect(fs.readFileSync(`${box}.moved`).equals(original)).toBe(true);
    // Put the real mailbox back: the retry delivers into it.
    fs.rmSync(box);
    fs.renameSync(`${box}.moved`, box);
    await mtad.waitForLog(new RegExp(`${id}: to=<replaced@lab.test>, .*status=sent`));
    expect(tokensByPython(box)).toEqual(['first', 'swapped']);
    expect(fs.readFileSync(v.file).equals(v.bytes)).toBe(true);
  });

  it('the other mailboxes were served all along', async () => {
    const id = await send('alice', 'normal');
    await mtad.waitForLog(new RegExp(`${id}: removed`));
    expect(tokensByPython(mtad.mailbox('alice'))).toEqual(['normal']);
  });
});
