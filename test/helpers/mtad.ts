// Starts a real mtad (bin/mtad, the compiled code) on an ephemeral loopback port
// with a spool in a temp dir. Run as root (CI is), it gives up root like a real
// install: the temp spool belongs to `nobody`, which mtad then becomes.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { hashPassword } from '../../src/accounts/users';
import { waitForListener } from './ports';

export const ROOT = path.resolve(__dirname, '..', '..');
export const HOSTNAME = 'lab.test';
export const RUN_AS = 'nobody';

export interface MtadOptions {
  users?: string[];
  /** Passwords of some of those users (the others have none: "!"). */
  passwords?: Record<string, string>;
  aliases?: string;
  env?: Record<string, string>;
  /** Reuse an existing temp dir (spool, queue and account files), e.g. to restart on the same spool. */
  dir?: string;
  /** A command that runs mtad, e.g. setpriv with its options, before `node bin/mtad`. */
  wrapper?: string[];
  /** Options for node itself, before bin/mtad (e.g. the CPU profiler). */
  nodeArgs?: string[];
  /** Another install of mtad to run (its root directory), instead of this checkout. */
  install?: string;
}

/** mtad's record of the append under way on a user's mailbox (src/delivery/mailbox.ts): <queue>/appending/<user>. */
export function appendRecordPath(queue: string, user: string): string {
  return path.join(queue, 'appending', user);
}

export interface Mtad {
  port: number;
  /** The POP3 port (null when MTAD_POP3_PORT turned it off). */
  pop3Port: number | null;
  pid: number;
  dir: string;
  spool: string;
  queue: string;
  usersFile: string;
  aliasesFile: string;
  proc: ChildProcess;
  /** Everything mtad printed so far. */
  output(): string;
  /** Resolves with the first log line matching `re` (looking at past output too). */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  mailbox(user: string): string;
  /** Environment that makes a CLI (mta-adduser ...) work on this instance. */
  cliEnv(): NodeJS.ProcessEnv;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export const isRoot = (): boolean => process.getuid?.() === 0;

function uidOf(name: string): { uid: number; gid: number } {
  const row = fs.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((r) => r[0] === name);
  if (!row) throw new Error(`no user ${name}`);
  return { uid: Number(row[2]), gid: Number(row[3]) };
}

/** A temp dir laid out like a small install: spool/ owned by the run-as user, users and aliases files. */
export function makeInstance(opts: MtadOptions = {}): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-test-'));
  fs.chmodSync(dir, 0o755);
  const spool = path.join(dir, 'spool');
  fs.mkdirSync(spool, { mode: 0o755 });
  const users = path.join(dir, 'users');
  const pw = (u: string): string => (opts.passwords?.[u] !== undefined ? hashPassword(opts.passwords[u]) : '!');
  const body = (opts.users ?? ['alice', 'bob']).map((u) => `${u}:${pw(u)}:${u[0].toUpperCase()}${u.slice(1)} Test\n`).join('');
  fs.writeFileSync(users, body, { mode: 0o640 });
  fs.writeFileSync(path.join(dir, 'aliases'), opts.aliases ?? 'MAILER-DAEMON: postmaster\n', { mode: 0o644 });
  if (isRoot()) {
    const { uid, gid } = uidOf(RUN_AS);
    fs.chownSync(spool, uid, gid);
    fs.chownSync(users, uid, gid);
  }
  return dir;
}

export function instanceEnv(dir: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    MTAD_CONFIG: '/dev/null',
    MTAD_HOST: '127.0.0.1',
    MTAD_PORT: '0',
    MTAD_HOSTNAME: HOSTNAME,
    MTAD_SPOOL_DIR: path.join(dir, 'spool'),
    MTAD_USERS_FILE: path.join(dir, 'users'),
    MTAD_ALIASES_FILE: path.join(dir, 'aliases'),
    ...extra,
  };
}

export async function startMtad(opts: MtadOptions = {}): Promise<Mtad> {
  const dir = opts.dir ?? makeInstance(opts);
  const env = instanceEnv(dir, opts.env);
  const argv = [...(opts.wrapper ?? []), process.execPath, ...(opts.nodeArgs ?? []), path.join(opts.install ?? ROOT, 'bin', 'mtad')];
  const proc = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (b: Buffer): void => { out += b.toString(); listeners.forEach((l) => l()); };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('exit', (code, signal) => { exited = { code, signal }; listeners.forEach((l) => l()); resolve(exited); });
  });

  // 30 s: a loaded machine (other builds, a CPU hog) can take seconds to start node or deliver.
  const waitForLog = (re: RegExp, timeoutMs = 30000): Promise<string> => new Promise((resolve, reject) => {
    const check = (): boolean => {
      const m = out.split('\n').find((l) => re.test(l));
      if (m !== undefined) { cleanup(); resolve(m); return true; }
      if (exited) { cleanup(); reject(new Error(`mtad exited (${JSON.stringify(exited)}) before ${re}:\n${out}`)); return true; }
      return false;
    };
    const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out waiting for ${re}:\n${out}`)); }, timeoutMs);
    const cleanup = (): void => { clearTimeout(timer); listeners.delete(listener); };
    const listener = (): void => { check(); };
    if (!check()) listeners.add(listener);
  });

  // Below info ("warn", "error") mtad prints nothing when it is up: such a test names
  // its port (helpers/ports.ts, freePorts) and waits for it to answer.
  const quiet = ['warn', 'error'].includes(String(env.MTAD_LOG_LEVEL ?? '').toLowerCase());
  let port: number;
  if (quiet) {
    port = Number(env.MTAD_PORT);
    if (!(port > 0)) throw new Error('startMtad: with MTAD_LOG_LEVEL below info, set MTAD_PORT (freePorts)');
    const died = exit.then((e) => { throw new Error(`mtad exited (${JSON.stringify(e)}) before port ${port} answered:\n${out}`); });
    died.catch(() => undefined); // once it is up, its exit is for stop() to report
    await Promise.race([waitForListener(port), died]);
  } else {
    port = Number(/listening on \S+:(\d+)/.exec(await waitForLog(/listening on /))![1]);
  }
  // Printed before "listening on", so already in the output.
  const pop3 = /POP3 on \S+:(\d+)/.exec(out);
  return {
    port,
    pop3Port: pop3 ? Number(pop3[1]) : null,
    pid: proc.pid!,
    dir,
    spool: env.MTAD_SPOOL_DIR!,
    queue: path.join(env.MTAD_SPOOL_DIR!, '.queue'),
    usersFile: env.MTAD_USERS_FILE!,
    aliasesFile: env.MTAD_ALIASES_FILE!,
    proc,
    output: () => out,
    waitForLog,
    mailbox: (user) => path.join(env.MTAD_SPOOL_DIR!, user),
    cliEnv: () => ({ ...env }),
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (!exited) proc.kill(signal);
      return exit;
    },
  };
}

/** Runs one of our CLIs (bin/NAME) to completion. */
export function runCli(name: string, args: string[], env: NodeJS.ProcessEnv, input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', name), ...args], { env, input, encoding: 'utf8', timeout: 30000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function removeInstance(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * A copy of this install (bin, dist, package.json, node_modules) in a temp dir
 * every user can read: a checkout under /root, as CI's may be, is closed to the
 * unprivileged user a test wants mtad to start as.
 */
export function readableInstall(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-install-'));
  for (const part of ['bin', 'dist', 'package.json', 'node_modules']) {
    fs.cpSync(path.join(ROOT, part), path.join(dir, part), { recursive: true, verbatimSymlinks: true });
  }
  spawnSync('chmod', ['-R', 'a+rX', dir]);
  return dir;
}

/** How many of process `pid`'s descriptors are open on `file` (from /proc). */
export function descriptorsOn(pid: number, file: string): number {
  const fdDir = `/proc/${pid}/fd`;
  return fs.readdirSync(fdDir).filter((fd) => {
    try {
      return fs.readlinkSync(path.join(fdDir, fd)) === file;
    } catch {
      return false;
    }
  }).length;
}

/**
 * One mtad for a whole test file: started before its tests, stopped after them,
 * where it must exit 0 (a clean SIGTERM shutdown is part of every file's check).
 */
export function mtadForFile(opts: MtadOptions = {}): () => Mtad {
  let m: Mtad | undefined;
  beforeAll(async () => { m = await startMtad(opts); });
  afterAll(async () => {
    if (!m) return;
    const { code } = await m.stop();
    expect(code, m.output()).toBe(0);
    removeInstance(m.dir);
  });
  return () => m!;
}

/**
 * For a test file that starts mtads with different settings: mtadWith(env) starts
 * one, and after the file each is stopped, must exit 0 without an internal error
 * or unhandled rejection in its log, and its temp dir is removed.
 */
export function mtadsForFile(): (env: Record<string, string>, opts?: Omit<MtadOptions, 'env'>) => Promise<Mtad> {
  const started: Mtad[] = [];
  afterAll(async () => {
    for (const m of started) {
      const { code } = await m.stop();
      expect(code, m.output()).toBe(0);
      expect(m.output()).not.toMatch(/internal error|unhandled/i);
      removeInstance(m.dir);
    }
  });
  return async (env, opts = {}) => {
    const m = await startMtad({ ...opts, env });
    started.push(m);
    return m;
  };
}
