// Every command answers --help and --version; mtad --check reports what mtad
// would do, and stops on the problems mtad itself would stop on, with the same
// exit code (checked by starting the real mtad on the same instance).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HOSTNAME, instanceEnv, isRoot, makeInstance, removeInstance, runCli } from '../helpers/mtad';
import { freePorts } from '../helpers/ports';
import { needsRoot, skipping } from '../helpers/skip';

const VERSION = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
const dirs: string[] = [];
afterEach(() => { dirs.splice(0).forEach(removeInstance); });
const instance = (opts: Parameters<typeof makeInstance>[0] = {}): string => {
  const d = makeInstance(opts);
  dirs.push(d);
  return d;
};

describe('--help and --version', () => {
  for (const name of ['mtad', 'mta-adduser', 'mta-deluser', 'mta-users', 'mta-queue', 'mta-certificate', 'sendmail', 'mailq', 'newaliases']) {
    it(`${name} answers both`, () => {
      const env = instanceEnv(instance());
      const help = runCli(name, ['--help'], env);
      expect(help.status).toBe(0);
      expect(help.stdout).toMatch(new RegExp(`^usage: ${name}\\b`));
      expect(help.stderr).toBe('');
      const version = runCli(name, ['--version'], env);
      expect(version.status).toBe(0);
      expect(version.stdout).toBe(name === 'mtad' ? `mtad ${VERSION}\n` : `${name} (mtad) ${VERSION}\n`);
    });
  }
});

describe('mtad --check', () => {
  it('shows what mtad would listen on and accept for, and exits 0', async () => {
    const dir = instance({ users: ['alice', 'bob'], aliases: 'MAILER-DAEMON: postmaster\npostmaster: alice\nteam: alice, bob@lab.test\n' });
    const [port] = await freePorts(1);
    // POP3 would follow at port + 85, which nothing here has checked is free: this test is about SMTP.
    const r = runCli('mtad', ['--check'], instanceEnv(dir, { MTAD_PORT: String(port), MTAD_POP3_PORT: 'off' }));
    expect(r.stderr).toBe('');
    expect(r.status, r.stdout).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^listen on +127\\.0\\.0\\.1:${port}$`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^domains +${HOSTNAME}, localhost$`, "m"));
    expect(r.stdout).toMatch(/^literals +\[127\.0\.0\.1\]$/m);
    expect(r.stdout).toMatch(/^users +alice, bob {2}\(/m);
    expect(r.stdout).toMatch(/^aliases +mailer-daemon -> alice; postmaster -> alice; team -> alice,bob {2}\(/m);
    expect(r.stdout).toMatch(/^spool +\S+\/spool \(writable\)$/m);
    expect(r.stdout).toMatch(/^queue +\S+\/spool\/\.queue \(created at start-up\)$/m);
    expect(r.stdout.trimEnd().split('\n').pop()).toBe('ok: mtad would start with this configuration');
    // --check only looks: it created nothing
    expect(fs.existsSync(path.join(dir, 'spool', '.queue'))).toBe(false);
  });

  it('shows the POP3 port, or that POP3 is off, and a POP3 port in use as a problem (exit 69)', async () => {
    const dir = instance();
    const [port] = await freePorts(1);
    const on = runCli('mtad', ['--check'], instanceEnv(dir, { MTAD_POP3_PORT: String(port) }));
    expect(on.status, on.stdout).toBe(0);
    expect(on.stdout).toMatch(new RegExp(`^pop3 on +127\\.0\\.0\\.1:${port}, logins with the users file's passwords, autologout after 600 s$`, 'm'));
    const off = runCli('mtad', ['--check'], instanceEnv(dir, { MTAD_POP3_PORT: 'off' }));
    expect(off.stdout).toMatch(/^pop3 +off \(MTAD_POP3_PORT\)$/m);
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
    const busy = runCli('mtad', ['--check'], instanceEnv(dir, { MTAD_POP3_PORT: String(port) }));
    squatter.close();
    expect(busy.status).toBe(69);
    expect(busy.stdout).toContain(`problem: POP3 port ${port} on 127.0.0.1 is already in use`);
  });

  it('reports the problems of the users and aliases files (exit 65)', () => {
    const dir = instance({ aliases: 'team: ghost\nlog: |/usr/bin/logger\n' });
    fs.appendFileSync(path.join(dir, 'users'), 'Bad Name:!:x\nalice:!:again\n');
    const r = runCli('mtad', ['--check'], instanceEnv(dir));
    expect(r.status).toBe(65);
    const problems = r.stdout.split('\n').filter((l) => l.startsWith('problem: '));
    expect(problems).toEqual([
      `problem: ${dir}/users: line 3: "Bad Name" is not a valid user name`,
      `problem: ${dir}/users: line 4: user "alice" appears twice`,
      `problem: ${dir}/aliases: line 2: target "|/usr/bin/logger" of log is ignored: mtad delivers only to local mailboxes`,
      `problem: ${dir}/aliases: line 2: alias log has no usable target`,
      `problem: ${dir}/aliases: alias team (ghost) reaches no user: mail to it is refused`,
    ]);
    expect(r.stdout).toMatch(/5 problem\(s\): mtad would start, ignoring those lines\n$/);
  });

  it('stops on a bad configuration value with one line (exit 78)', () => {
    const r = runCli('mtad', ['--check'], instanceEnv(instance(), { MTAD_PORT: 'twenty-five' }));
    expect(r).toMatchObject({ status: 78, stdout: '', stderr: 'mtad: config: MTAD_PORT: "twenty-five" is not a whole number\n' });
  });

  it('finds a missing spool with the code mtad stops with (73)', () => {
    const dir = instance();
    const env = instanceEnv(dir, { MTAD_SPOOL_DIR: path.join(dir, 'nowhere') });
    const r = runCli('mtad', ['--check'], env);
    const real = runCli('mtad', [], env);
    expect(real.status).toBe(73);
    expect(r.status).toBe(73);
    expect(r.stdout).toContain(`problem: the spool directory ${dir}/nowhere does not exist`);
  });

  it.skipIf(needsRoot('--check judging the spool for another user', 'only root changes user'))('judges the spool for the user mtad would become, as mtad does (77)', () => {
    // Root passes every access() test: the check must look at the mode bits for nobody.
    const dir = instance();
    const spool = path.join(dir, 'spool');
    fs.chownSync(spool, 0, 0);
    const env = instanceEnv(dir, { MTAD_RUN_AS: 'nobody' });
    const r = runCli('mtad', ['--check'], env);
    const real = runCli('mtad', [], env);
    expect(real.status).toBe(77);
    expect(real.stderr).toContain(`cannot write the spool directory ${spool}`);
    expect(r.status).toBe(77);
    expect(r.stdout).toMatch(/^run as +nobody \(uid \d+\) \(mtad starts as root/m);
    expect(r.stdout).toMatch(new RegExp(`problem: nobody \\(uid \\d+\\) cannot write ${spool} \\(owner uid 0, mode 755\\)`));
  });

  it.skipIf(needsRoot('--check naming a closed directory', 'only root changes user'))('names the directory that keeps that user away from the spool, as mtad does (77)', () => {
    const dir = instance();
    const closed = path.join(dir, 'closed');
    fs.mkdirSync(closed, { mode: 0o700 });
    const spool = path.join(closed, 'spool');
    fs.renameSync(path.join(dir, 'spool'), spool);
    const env = instanceEnv(dir, { MTAD_SPOOL_DIR: spool });
    const r = runCli('mtad', ['--check'], env);
    const real = runCli('mtad', [], env);
    expect(real.status).toBe(77);
    expect(real.stderr).toContain(`${closed} is closed to it`);
    expect(r.status).toBe(77);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('problem: '))).toEqual([
      `problem: nobody (uid 65534) cannot reach ${spool}: ${closed} is closed to it (put mtad where other users can enter, e.g. /opt/mtad)`,
    ]);
  });

  it.skipIf(skipping(isRoot(), '--check without root on port 25', 'running as root'))('without root, names port 25 as the problem (77)', () => {
    const r = runCli('mtad', ['--check'], instanceEnv(instance(), { MTAD_PORT: '25' }));
    expect(r.status).toBe(77);
    expect(r.stdout).toContain('problem: port 25 needs root (sudo node bin/mtad) or CAP_NET_BIND_SERVICE');
  });
});

describe('mtad --check beside a running mtad', () => {
  it('says which mtad serves the spool now, as a second mtad would (75), and finds a port that another server holds (69)', async () => {
    const { startMtad } = await import('../helpers/mtad');
    const m = await startMtad();
    try {
      const r = runCli('mtad', ['--check'], m.cliEnv());
      expect(r.status, r.stdout).toBe(75);
      expect(r.stdout).toMatch(new RegExp(`^problem: another mtad \\(pid ${m.pid}\\) is already running on the spool `, 'm'));
      expect(r.stdout).toMatch(/: mtad would not start$/m);
      const second = runCli('mtad', [], { ...m.cliEnv(), MTAD_PORT: '0' });
      expect(second.status).toBe(75);
      // and a port someone else holds, when the queue is another one (mtad would exit 69)
      const other = instanceEnv(instance(), { MTAD_PORT: String(m.port) });
      const busy = runCli('mtad', ['--check'], other);
      expect(busy.status).toBe(69);
      expect(busy.stdout).toContain(`problem: port ${m.port} on 127.0.0.1 is already in use`);
      expect(runCli('mtad', [], other).status).toBe(69);
    } finally {
      await m.stop();
      removeInstance(m.dir);
    }
  });
});
