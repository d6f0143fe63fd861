// The programs that share a spool with mtad, driven the way a user or a cron job
// would: three independent mbox parsers (Python's mailbox, formail, mutt) and the
// dotlock tools of Debian (liblockfile's dotlockfile, procmail's lockfile, mutt_dotlock).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readMbox } from '../helpers/mbox';
import { appendRecordPath, isRoot } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

/**
 * Sends one message carrying `token` (Subject and X-Token, which the readers
 * below report), padded to about `size` bytes; expects 250, returns the queue id.
 */
export async function sendToken(port: number, user: string, token: string, size = 0): Promise<string> {
  const c = await SmtpClient.connect(port);
  try {
    await c.cmd('EHLO client.test');
    const fill = size ? `${'z'.repeat(998)}\r\n`.repeat(Math.ceil(size / 1000)) : '';
    const r = await c.send('a@client.test', [`${user}@lab.test`], `Subject: ${token}\r\nX-Token: ${token}\r\n\r\n${fill}END ${token}\r\n`);
    if (r.code !== 250) throw new Error(`expected 250 for ${token}, got ${r.raw}`);
    return /queued as (\w+)/.exec(r.raw)![1];
  } finally {
    await c.quit();
  }
}

/** X-Token of every message, as Python's mailbox splits the file. */
export function tokensByPython(file: string): string[] {
  if (!fs.existsSync(file)) return [];
  return readMbox(file).map((m) => m.header('X-Token') ?? '(none)');
}

/**
 * Each message as `formail -s` splits the file: formail runs awk once per message,
 * which prints the message's X-Token and its last non-empty line (awk reads the
 * whole message, so formail never writes into a closed pipe).
 */
export function messagesByFormail(file: string): Array<{ token: string; last: string }> {
  if (!fs.existsSync(file)) return [];
  const awk = '/^X-Token:/ && t == "" { t = $2 } NF { last = $0 } END { print t "\t" last }';
  const r = spawnSync('formail', ['-s', 'awk', awk], { input: fs.readFileSync(file), maxBuffer: 1 << 28, encoding: 'latin1' });
  if (r.status !== 0) throw new Error(`formail failed (${r.status} ${r.signal} ${r.error}): ${r.stderr}`);
  return r.stdout.split('\n').filter(Boolean).map((l) => {
    const [token, last] = l.split('\t');
    return { token, last };
  });
}

export function tokensByFormail(file: string): string[] {
  return messagesByFormail(file).map((m) => m.token);
}

const MUTT_SEP = '=MUTT-MESSAGE-END=';

/**
 * The messages mutt sees: mutt opens the mailbox read-only in a pseudo-terminal
 * (it has no batch reading mode), tags every message and pipes each one on its own
 * (pipe_split) into a file, with a separator after each. Returns the messages as mutt passed them.
 */
export function messagesByMutt(file: string): string[] {
  if (!fs.existsSync(file)) return [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-mutt-'));
  const out = path.join(dir, 'out');
  try {
    const keys = `<tag-pattern>~A<enter><tag-prefix><pipe-message>cat >> ${out}<enter><exit>`;
    const r = spawnSync('python3', ['-c', 'import pty,sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)',
      'mutt', '-n', '-F', '/dev/null', '-R', '-f', file,
      '-e', `set folder=${dir} pipe_split=yes pipe_decode=no wait_key=no pipe_sep="${MUTT_SEP}\\n" sort=mailbox-order`,
      '-e', `push "${keys}"`,
    ], { env: { ...process.env, TERM: 'vt100', HOME: dir }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 120000 });
    if (r.status !== 0) throw new Error(`mutt failed (${r.status} ${r.signal}): ${r.stderr}`);
    const text = fs.existsSync(out) ? fs.readFileSync(out, 'latin1') : '';
    const parts = text.split(`${MUTT_SEP}\n`);
    if (parts.pop() !== '') throw new Error(`mutt output does not end with a separator: ...${JSON.stringify(text.slice(-300))}`);
    return parts;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function tokensByMutt(file: string): string[] {
  return messagesByMutt(file).map((m) => /^X-Token: (\S+)$/m.exec(m)?.[1] ?? '(none)');
}

export function countBy(list: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const t of list) m.set(t, (m.get(t) ?? 0) + 1);
  return m;
}

/** Whether each dotlock tool could lock the mailbox right now (each one is released again at once). */
export function dotlockUsersCanLock(mailbox: string): { dotlockfile: boolean; lockfile: boolean; mutt_dotlock: boolean } {
  const lock = `${mailbox}.lock`;
  const dl = spawnSync('dotlockfile', ['-l', '-r', '0', lock]);
  if (dl.status === 0) spawnSync('dotlockfile', ['-u', lock]);
  const pl = spawnSync('lockfile', ['-r', '0', lock], { timeout: 15000 });
  if (pl.status === 0) fs.rmSync(lock, { force: true });
  const md = spawnSync('mutt_dotlock', ['-r', '0', mailbox]);
  if (md.status === 0) spawnSync('mutt_dotlock', ['-u', mailbox]);
  return { dotlockfile: dl.status === 0, lockfile: pl.status === 0, mutt_dotlock: md.status === 0 };
}

/**
 * The append that mtad's record (<queue>/appending/<user>) says is under way on
 * that mailbox, or null when none is: the record stays between appends, naming
 * none (before = after).
 */
export function appendInProgress(queueDir: string, user: string): { before: number; after: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(appendRecordPath(queueDir, user), 'utf8');
  } catch {
    return null;
  }
  const m = /^(\d+) (\d+) (\d+) (\d+)\n$/.exec(text);
  if (!m || m[3] === m[4]) return null;
  return { before: Number(m[3]), after: Number(m[4]) };
}

/** Runs a program to completion without a shell. */
export function run(cmd: string, args: string[], opts: { input?: string | Buffer; timeout?: number } = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { input: opts.input, encoding: 'latin1', timeout: opts.timeout ?? 30000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Starts a long-running program; resolves with its exit once it ends. */
export function start(cmd: string, args: string[]): { proc: ReturnType<typeof spawn>; exit: Promise<number | null>; output: () => string } {
  const proc = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  proc.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return { proc, exit, output: () => out };
}

// For conditions no event announces (kept here too: the fault tests import it from this file).
export { until } from '../helpers/wait';

/**
 * Runs Dovecot's imap server preauthenticated on one mbox (the way `dovecot` runs it
 * after a login), as the mailbox's owner, with a throwaway config, indexes in memory
 * and a 5 s lock timeout. `commands` are IMAP lines; returns what Dovecot answered.
 */
export function dovecotImap(mbox: string, commands: string[]): string {
  const { dir, cmd, args } = dovecotSetup(mbox);
  try {
    const r = spawnSync(cmd, args, {
      input: commands.map((c) => `${c}\r\n`).join(''),
      env: { PATH: process.env.PATH, USER: 'mtadtest', HOME: dir },
      encoding: 'latin1',
      timeout: 60000,
      maxBuffer: 1 << 28,
    });
    if (r.status !== 0) throw new Error(`dovecot imap failed (${r.status} ${r.signal}): ${r.stderr}`);
    return r.stdout;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The same, without blocking: resolves with Dovecot's answer when it exits. */
export function dovecotImapAsync(mbox: string, commands: string[]): Promise<string> {
  const { dir, cmd, args } = dovecotSetup(mbox);
  const p = spawn(cmd, args, { env: { PATH: process.env.PATH, USER: 'mtadtest', HOME: dir }, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout!.on('data', (b: Buffer) => { out += b.toString('latin1'); });
  p.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
  p.stdin!.end(commands.map((c) => `${c}\r\n`).join(''), 'latin1');
  // Its lock timeout is 5 s: a minute means it hangs, and it must not outlive the test.
  const timer = setTimeout(() => { err += '(killed after 60 s)'; p.kill('SIGKILL'); }, 60000);
  return new Promise((resolve, reject) => p.on('exit', (code) => {
    clearTimeout(timer);
    fs.rmSync(dir, { recursive: true, force: true });
    if (code === 0) resolve(out); else reject(new Error(`dovecot imap failed (${code}): ${err}`));
  }));
}

function dovecotSetup(mbox: string): { conf: string; dir: string; cmd: string; args: string[] } {
  const st = fs.statSync(mbox);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-dovecot-'));
  // Without root, mtad and so the mailbox are this user's already: Dovecot runs as it, as is.
  const root = isRoot();
  try {
    if (root) fs.chownSync(dir, st.uid, st.gid);
    const conf = path.join(dir, 'dovecot.conf');
    fs.writeFileSync(conf, [
      'ssl = no',
      `mail_location = mbox:${dir}/mail:INBOX=${mbox}:INDEX=MEMORY`,
      `base_dir = ${dir}/run`,
      `state_dir = ${dir}/state`,
      'log_path = /dev/stderr',
      'mbox_write_locks = dotlock fcntl',
      'mbox_read_locks = fcntl',
      'mbox_lock_timeout = 5s',
      '',
    ].join('\n'));
    const imap = ['/usr/lib/dovecot/imap', '-c', conf];
    if (!root) return { conf, dir, cmd: imap[0], args: imap.slice(1) };
    return { conf, dir, cmd: 'setpriv', args: [`--reuid=${st.uid}`, `--regid=${st.gid}`, '--clear-groups', ...imap] };
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** The IMAP line that appends `message` to INBOX (a non-synchronising literal). */
export function imapAppend(tag: string, message: string): string {
  const literal = message.replace(/\r?\n/g, '\r\n');
  return `${tag} APPEND INBOX {${Buffer.byteLength(literal, 'latin1')}+}\r\n${literal}`;
}

/** X-Token of every message as Dovecot sees the mailbox (read-only: EXAMINE). */
export function tokensByDovecot(mbox: string): string[] {
  const out = dovecotImap(mbox, ['a EXAMINE INBOX', 'b FETCH 1:* (BODY.PEEK[HEADER.FIELDS (X-Token)])', 'c LOGOUT']);
  if (!/^a OK/m.test(out)) throw new Error(`dovecot could not open ${mbox}: ${out}`);
  return [...out.matchAll(/^X-Token: (\S+)\r?$/gm)].map((m) => m[1]);
}

/** Appends a message through Dovecot, which takes the dotlock and the fcntl lock to write: its tagged reply. */
export function appendByDovecot(mbox: string, message: string): string {
  const out = dovecotImap(mbox, [imapAppend('a', message), 'b LOGOUT']);
  return /^a (OK|NO|BAD).*$/m.exec(out)?.[0] ?? out;
}
