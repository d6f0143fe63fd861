// The operator's mistakes: one line saying what to do, a non-zero exit, no stack trace.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { instanceEnv, isRoot, makeInstance, removeInstance, ROOT, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';

const dirs: string[] = [];
afterAll(() => dirs.forEach(removeInstance));

function runMtad(env: NodeJS.ProcessEnv, withoutBindPrivilege = false): { status: number | null; stdout: string; stderr: string } {
  const bin = path.join(ROOT, 'bin', 'mtad');
  // setpriv (util-linux) takes away the one privilege a low port needs (CAP_NET_BIND_SERVICE),
  // which is what a user without sudo lacks; the checkout may be unreadable to other users.
  const [cmd, args] = withoutBindPrivilege
    ? ['setpriv', ['--bounding-set=-net_bind_service', '--inh-caps=-net_bind_service', process.execPath, bin]]
    : [process.execPath, [bin]];
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', timeout: 60000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function instance(): string {
  const d = makeInstance();
  dirs.push(d);
  return d;
}

function expectOneLine(r: { stdout: string; stderr: string }, re: RegExp): void {
  const lines = r.stderr.split('\n').filter(Boolean);
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(re);
  expect(r.stderr).not.toMatch(/\bat .*\(.*:\d+:\d+\)/);
}

describe('mtad refuses bad set-ups plainly', () => {
  it.each([
    ['MTAD_PORT', 'twenty-five', /^mtad: config: MTAD_PORT: "twenty-five" is not a whole number$/],
    ['MTAD_HOST', 'everywhere', /^mtad: config: MTAD_HOST: "everywhere" is not an IP address/],
    ['MTAD_MAX_MESSAGE_SIZE', '-5', /^mtad: config: MTAD_MAX_MESSAGE_SIZE: "-5" is not a whole number$/],
    ['MTAD_EXPN', 'perhaps', /^mtad: config: MTAD_EXPN: "perhaps" must be yes or no$/],
  ])('%s=%s: exit 78 and one line naming the key', (key, value, re) => {
    const r = runMtad(instanceEnv(instance(), { [key]: value }));
    expect(r.status).toBe(78);
    expectOneLine(r, re);
  });

  it('MTAD_RUN_AS=no-such-user-here: as root exit 78 naming the key; without root exit 77, only root changes user', () => {
    const r = runMtad(instanceEnv(instance(), { MTAD_RUN_AS: 'no-such-user-here' }));
    if (isRoot()) {
      expect(r.status).toBe(78);
      expectOneLine(r, /^mtad: config: MTAD_RUN_AS: "no-such-user-here" is not a user of this system$/);
    } else {
      expect(r.status).toBe(77);
      expectOneLine(r, /^mtad: MTAD_RUN_AS=no-such-user-here needs mtad to be started as root \(sudo node bin\/mtad\)$/);
    }
  });

  it('says the port is taken, and by what kind of program', async () => {
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    const port = (squatter.address() as net.AddressInfo).port;
    const r = runMtad(instanceEnv(instance(), { MTAD_PORT: String(port) }));
    squatter.close();
    expect(r.status).toBe(69);
    expectOneLine(r, new RegExp(`^mtad: port ${port} on 127\\.0\\.0\\.1 is already in use \\(another mail server, such as Postfix or Exim\\?\\): stop it, or set MTAD_PORT=2525$`));
  });

  it('says a low port needs root, when started without it', () => {
    // Fails to bind for want of privilege, never binds: safe to name port 25 here.
    const dir = instance();
    const r = runMtad(instanceEnv(dir, { MTAD_PORT: '25' }), isRoot());
    expect(r.status).toBe(77);
    expectOneLine(r, /^mtad: port 25 on 127\.0\.0\.1 needs root: run sudo node bin\/mtad, or set MTAD_PORT=2525$/);
  });

  it('says the POP3 port is taken, and how to choose another or turn POP3 off', async () => {
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    const port = (squatter.address() as net.AddressInfo).port;
    const r = runMtad(instanceEnv(instance(), { MTAD_POP3_PORT: String(port) }));
    squatter.close();
    expect(r.status).toBe(69);
    expectOneLine(r, new RegExp(`^mtad: POP3 port ${port} on 127\\.0\\.0\\.1 is already in use \\(Dovecot, or another POP3 server\\?\\): stop it, or set MTAD_POP3_PORT=2610, or MTAD_POP3_PORT=off$`));
  });

  it('puts POP3 at MTAD_PORT + 85 when only MTAD_PORT is set, and nowhere with MTAD_POP3_PORT=off', async () => {
    const port = await freePortPair();
    const m = await startMtad({ env: { MTAD_PORT: String(port) } });
    expect(m.output()).toContain(`POP3 on 127.0.0.1:${port + 85} (MTAD_PORT + 85; MTAD_POP3_PORT chooses another, off turns it off)`);
    expect(m.pop3Port).toBe(port + 85);
    expect((await m.stop()).code).toBe(0);
    removeInstance(m.dir);
    const off = await startMtad({ env: { MTAD_POP3_PORT: 'off' } });
    expect(off.pop3Port).toBeNull();
    expect((await off.stop()).code).toBe(0);
    removeInstance(off.dir);
  });

  it('says when the spool is missing', () => {
    const dir = instance();
    const missing = runMtad(instanceEnv(dir, { MTAD_SPOOL_DIR: path.join(dir, 'nope') }));
    expect(missing.status).toBe(73);
    expectOneLine(missing, /^mtad: the spool directory .*\/nope does not exist: create it, or set MTAD_SPOOL_DIR$/);
  });

  it.skipIf(needsRoot('a spool the run-as user cannot write', 'only root changes user'))('says when the user it runs as cannot write the spool', () => {
    const dir = instance();
    fs.chmodSync(path.join(dir, 'spool'), 0o555);
    const ro = runMtad(instanceEnv(dir));
    expect(ro.status).toBe(77);
    expectOneLine(ro, /^mtad: user nobody \(uid 65534\) cannot write the spool directory .*\/spool: chown nobody .*\/spool, or set MTAD_RUN_AS to a user who can$/);
  });

  it.skipIf(needsRoot('a spool behind a closed directory', 'only root changes user'))('names the directory that keeps the user it runs as away from the spool', () => {
    const dir = instance();
    fs.chmodSync(dir, 0o700);
    const r = runMtad(instanceEnv(dir));
    expect(r.status).toBe(77);
    expectOneLine(r, new RegExp(`^mtad: user nobody \\(uid 65534\\) cannot reach the spool ${dir}/spool: ${dir} is closed to it \\(put mtad where other users can enter`));
  });

  it('refuses a second mtad on the same spool, and on the same queue from another spool', async () => {
    const dir = instance();
    const first = await startMtad({ dir });
    try {
      const r = runMtad(instanceEnv(dir));
      expect(r.status).toBe(75);
      expectOneLine(r, new RegExp(`^mtad: another mtad \\(pid ${first.pid}\\) is already running on the spool ${dir}/spool$`));
      const other = runMtad(instanceEnv(instance(), { MTAD_QUEUE_DIR: first.queue }));
      expect(other.status).toBe(75);
      expectOneLine(other, new RegExp(`^mtad: another mtad \\(pid ${first.pid}\\) is already running on the queue ${first.queue}$`));
    } finally {
      expect((await first.stop()).code).toBe(0);
    }
  });

  it('exits 0 on SIGTERM when idle, after saying so', async () => {
    const m = await startMtad({ dir: instance() });
    expect(await m.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(m.output()).toMatch(/SIGTERM received/);
    expect(m.output()).toMatch(/stopped/);
  });

  it('answers --help and --version without starting', () => {
    const env = instanceEnv(instance());
    const help = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'mtad'), '--help'], { env, encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^usage: mtad/);
    const bad = spawn(process.execPath, [path.join(ROOT, 'bin', 'mtad'), '--bogus'], { env });
    return new Promise<void>((resolve) => bad.on('exit', (code) => { expect(code).toBe(64); resolve(); }));
  });
});

/** A free port p (from the kernel's ephemeral range) with p + 85 free too, as far as a bind can tell. */
async function freePortPair(): Promise<number> {
  const tryBind = (port: number): Promise<net.Server | null> => new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(null));
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
  for (;;) {
    const a = await tryBind(0);
    const port = (a!.address() as net.AddressInfo).port;
    const b = port + 85 <= 65535 ? await tryBind(port + 85) : null;
    a!.close();
    if (b) {
      await new Promise((r) => b.close(r));
      return port;
    }
  }
}
