// What the interop suite needs around the real programs: run one to completion,
// find free loopback ports, start Dovecot on its own config, capture with tshark.
// Every program runs without a shell, with arguments as a list.
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { RUN_AS } from '../helpers/mtad';
import { freePorts, waitForListener } from '../helpers/ports';

export const PY = (name: string): string => path.join(__dirname, 'py', name);

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a program to completion (killed after timeoutMs); never rejects on a non-zero exit. */
export function run(cmd: string, args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60000);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout: Buffer.concat(out), stderr: err });
    });
    child.stdin.on('error', () => undefined); // a program that exits without reading its input
    child.stdin.end(opts.input ?? '');
  });
}

/** Runs one of the Python scripts in py/ and parses the JSON it prints. */
export async function python<T>(script: string, args: string[], input?: string | Buffer): Promise<T> {
  const r = await run('python3', [PY(script), ...args], { input });
  if (r.status !== 0) throw new Error(`${script} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout.toString()) as T;
}

/**
 * The trace fields mtad puts before a message (Return-Path, Delivered-To,
 * X-UIDL, Received with its continuation lines) taken off, leaving the message as the
 * client sent it, in mbox form. Null when they are not there as expected.
 */
export function withoutTrace(raw: Buffer): Buffer | null {
  const text = raw.toString('latin1');
  const m = /^Return-Path: <[^>\n]*>\nDelivered-To: [^\n]+\nX-UIDL: [0-9a-f]{32}\nReceived: [^\n]*\n(?:[ \t][^\n]*\n)*/.exec(text);
  return m ? raw.subarray(m[0].length) : null;
}

export interface Dovecot {
  pop3: number;
  imap: number;
  pid: number;
  log(): string;
  stop(): Promise<void>;
}

export const DOVECOT_PASSWORD = 'lab-secret';

/**
 * Starts Dovecot (POP3 and IMAP) on loopback, on free ports, with a config file
 * of its own in `dir` (never the system one), serving `spool/<user>` as each
 * user's mbox INBOX with Debian's locking: fcntl to read, fcntl then dotlock to
 * write. Started as root like the packaged daemon; mail is accessed as the
 * spool's owner, as mtad does.
 */
export async function startDovecot(dir: string, spool: string, users: string[]): Promise<Dovecot> {
  const base = path.join(dir, 'dovecot');
  for (const d of ['run', 'state', 'mail']) fs.mkdirSync(path.join(base, d), { recursive: true, mode: 0o755 });
  const st = fs.statSync(spool);
  fs.chownSync(path.join(base, 'mail'), st.uid, st.gid);
  const passwd = path.join(base, 'passwd');
  fs.writeFileSync(passwd, users.map((u) => `${u}:{PLAIN}${DOVECOT_PASSWORD}\n`).join(''), { mode: 0o644 }); // read by Dovecot's auth process, which is not root; a test password
  const [pop3, imap] = await freePorts(2);
  const conf = path.join(base, 'dovecot.conf');
  const logFile = path.join(base, 'dovecot.log');
  fs.writeFileSync(conf, `# Written by test/interop/tools.ts for one test run.
instance_name = mtad-test-${path.basename(dir)}
base_dir = ${base}/run
state_dir = ${base}/state
log_path = ${logFile}
protocols = pop3 imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {
  driver = passwd-file
  args = ${passwd}
}
userdb {
  driver = static
  args = uid=${st.uid} gid=${st.gid} home=${base}/mail/%u
}
# ${RUN_AS} (uid ${st.uid}) owns the spool; Dovecot refuses uids below first_valid_uid.
first_valid_uid = 1
first_valid_gid = 1
mail_location = mbox:${base}/mail/%u:INBOX=${spool}/%u
mbox_read_locks = fcntl
mbox_write_locks = fcntl dotlock
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = ${pop3}
  }
  inet_listener pop3s {
    port = 0
  }
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${imap}
  }
  inet_listener imaps {
    port = 0
  }
}
`);
  // -F keeps the master in the foreground: it is our child, and its exit is an event we can wait on.
  const proc: ChildProcess = spawn('dovecot', ['-F', '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  proc.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
  let gone = false;
  const exited = new Promise<void>((resolve) => proc.on('exit', () => { gone = true; resolve(); }));
  const log = (): string => out + (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '');
  const pidFile = path.join(base, 'run', 'master.pid');
  let pid: number;
  try {
    await Promise.race([
      Promise.all([waitForListener(pop3), waitForListener(imap)]),
      exited.then(() => { throw new Error(`dovecot exited:\n${log()}`); }),
    ]);
    // The master writes its pid file after it binds the listeners.
    const deadline = Date.now() + 10000;
    while (!fs.existsSync(pidFile) || !fs.readFileSync(pidFile, 'utf8').trim()) {
      if (gone || Date.now() > deadline) throw new Error(`dovecot wrote no ${pidFile}:\n${log()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    if (pid !== proc.pid) throw new Error(`${pidFile} says ${pid}, but the master is ${proc.pid}`);
  } catch (err) {
    proc.kill('SIGTERM');
    await exited;
    throw err;
  }
  return {
    pop3,
    imap,
    pid,
    log,
    async stop() {
      // The master's pid file names the process to stop; it takes its children down with it.
      if (!gone) process.kill(pid, 'SIGTERM');
      await exited;
    },
  };
}

export interface Capture {
  /** What tshark printed so far. */
  output(): string;
  /** Resolves once a printed line matches `re`. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Starts tshark with `args` and resolves once it says it is capturing. */
export async function startTshark(args: string[]): Promise<Capture> {
  const proc = spawn('tshark', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  proc.stdout.on('data', (b: Buffer) => { out += b.toString(); listeners.forEach((l) => l()); });
  proc.stderr.on('data', (b: Buffer) => { err += b.toString(); listeners.forEach((l) => l()); });
  let done = false;
  const exited = new Promise<void>((resolve) => proc.on('exit', () => { done = true; listeners.forEach((l) => l()); resolve(); }));
  const waitOn = (text: () => string, re: RegExp, timeoutMs: number): Promise<void> => new Promise((resolve, reject) => {
    const check = (): void => {
      if (re.test(text())) { clean(); resolve(); } else if (done) { clean(); reject(new Error(`tshark exited before ${re}:\n${out}\n${err}`)); }
    };
    const timer = setTimeout(() => { clean(); reject(new Error(`tshark: timed out waiting for ${re}:\n${out}\n${err}`)); }, timeoutMs);
    const clean = (): void => { clearTimeout(timer); listeners.delete(check); };
    listeners.add(check);
    check();
  });
  try {
    // tshark loads every dissector first: seconds of CPU, many more on a loaded machine.
    await waitOn(() => err, /Capturing on/, 90000);
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  return {
    output: () => out,
    waitFor: (re, timeoutMs = 30000) => waitOn(() => out, re, timeoutMs),
    async stop() {
      if (!done) proc.kill('SIGINT');
      await exited;
    },
  };
}

/**
 * Runs an interactive program (mutt) in a detached tmux session on a private
 * socket, waits until its screen matches `ready`, presses `keys`, and returns
 * the screen as it was. The tmux server ends with the session.
 */
export async function screenOf(dir: string, argv: string[], ready: RegExp, keys: string[], env: NodeJS.ProcessEnv, timeoutMs = 40000,
  /** Awaited after the keys, before the session ends: for keys whose effect takes a while (mutt's sync on q). */
  settle?: () => Promise<unknown>): Promise<string> {
  const socket = path.join(dir, 'tmux.sock');
  const tmux = (args: string[]): Promise<RunResult> => run('tmux', ['-S', socket, ...args], { env });
  const started = await tmux(['new-session', '-d', '-x', '200', '-y', '60', '--', ...argv]);
  if (started.status !== 0) throw new Error(`tmux: ${started.stderr}`);
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const screen = (await tmux(['capture-pane', '-p'])).stdout.toString();
      if (ready.test(screen)) {
        await tmux(['send-keys', ...keys]);
        await settle?.();
        return screen;
      }
      if (Date.now() > deadline) throw new Error(`screen never matched ${ready}:\n${screen}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await tmux(['kill-server']);
  }
}
