// etc/mtad.service: systemd-analyze verify accepts it as shipped, and mtad runs
// the way the unit runs it: a non-root user with CAP_NET_BIND_SERVICE as its
// only privilege, on a port below 1024. There is no systemd running here (nor in
// CI's container), so setpriv(1) stands in for it: it applies the unit's User=,
// Group= and AmbientCapabilities=. The user is "nobody" rather than the unit's
// "mtad", which these machines do not have. Port 25 is never bound: any free
// port below 1024 needs the same privilege.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { instanceEnv, isRoot, makeInstance, Mtad, readableInstall, removeInstance, ROOT, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

const UNIT = path.join(ROOT, 'etc', 'mtad.service');
const unit = fs.readFileSync(UNIT, 'utf8');
const setting = (key: string): string => {
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(unit);
  if (!m) throw new Error(`etc/mtad.service has no ${key}=`);
  return m[1].trim();
};
const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

describe('etc/mtad.service', () => {
  it('passes systemd-analyze verify without a single complaint', () => {
    if (!hasAnalyze) {
      console.warn('SKIPPED: systemd-analyze is not installed (Debian package systemd); etc/mtad.service was not verified');
      return;
    }
    const r = spawnSync('systemd-analyze', ['verify', UNIT], { encoding: 'utf8' });
    expect(r.stderr + r.stdout).toBe('');
    expect(r.status).toBe(0);
    // verify exits 0 on unknown keys and bad values too, printing them: the empty output above is the test.
    const broken = path.join(fs.mkdtempSync('/tmp/mtad-unit-'), 'mtad.service');
    fs.writeFileSync(broken, unit.replace('NoNewPrivileges=yes', 'NoNewPrivilege=yes'));
    const b = spawnSync('systemd-analyze', ['verify', broken], { encoding: 'utf8' });
    expect(b.stderr).toContain("Unknown key 'NoNewPrivilege'");
    fs.rmSync(path.dirname(broken), { recursive: true });
  });

  it('runs as a dedicated user, with the one capability, logging to the journal, restarting on failure', () => {
    expect(setting('User')).not.toBe('root');
    expect(setting('AmbientCapabilities')).toBe('CAP_NET_BIND_SERVICE');
    expect(setting('CapabilityBoundingSet')).toBe('CAP_NET_BIND_SERVICE');
    expect(setting('NoNewPrivileges')).toBe('yes');
    expect(setting('StandardOutput')).toBe('journal');
    expect(setting('Restart')).toBe('on-failure');
    expect(setting('ProtectSystem')).toBe('strict');
    expect(setting('PrivateTmp')).toBe('yes');
    expect(setting('ExecStart')).not.toMatch(/sudo/);
  });
});

async function freeLowPort(): Promise<number> {
  for (let port = 1023; port > 900; port--) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port between 901 and 1023');
}

/** Whether `user` can read the checkout (a CI clone under /root cannot be). */
function readableBy(user: string): boolean {
  return spawnSync('setpriv', [`--reuid=${user}`, '--regid=nogroup', '--clear-groups', 'test', '-r', path.join(ROOT, 'dist', 'cli', 'mtad.js')]).status === 0;
}

describe('mtad as the unit runs it', () => {
  let mtad: Mtad | null = null;
  let install: string | undefined;
  afterAll(async () => {
    try {
      if (!mtad) return;
      const { code } = await mtad.stop();
      expect(code, mtad.output()).toBe(0);
      removeInstance(mtad.dir);
    } finally {
      if (install) fs.rmSync(install, { recursive: true, force: true });
    }
  });

  it('serves a port below 1024 without root, through CAP_NET_BIND_SERVICE alone', async (ctx) => {
    if (!isRoot()) {
      console.warn('SKIPPED: needs root to start mtad as nobody with a capability');
      ctx.skip();
    }
    install = readableBy('nobody') ? undefined : readableInstall();
    const port = await freeLowPort();
    const wrapper = ['setpriv', '--reuid=nobody', `--regid=${setting('Group')}`, '--clear-groups',
      '--inh-caps=+net_bind_service', '--ambient-caps=+net_bind_service'];
    mtad = await startMtad({ wrapper, install, env: { MTAD_PORT: String(port) } });
    expect(mtad.port).toBe(port);
    await mtad.waitForLog(/running as nobody \(uid \d+\)/);
    // The process is not root in any of its ids, and has no capability but the one.
    const status = fs.readFileSync(`/proc/${mtad.pid}/status`, 'utf8');
    expect(/^Uid:\s+(.*)$/m.exec(status)![1].split(/\s+/).every((u) => u !== '0')).toBe(true);
    expect(BigInt(`0x${/^CapEff:\s+(\w+)$/m.exec(status)![1]}`)).toBe(1n << 10n);

    const c = await SmtpClient.connect(port);
    await c.cmd('HELO client.test');
    const r = await c.send('carol@remote.test', ['alice'], 'Subject: via the capability\n\nhi\n');
    await c.quit();
    expect(r.code).toBe(250);
    expect(readMbox(mtad.mailbox('alice')).map((m) => m.header('Subject'))).toEqual(['via the capability']);

    // mtad --check, run the same way, sees the capability and no problem.
    const dir = makeInstance();
    try {
      // Another free low port: the one above is mtad's now, and --check would find it taken.
      const env = instanceEnv(dir, { MTAD_PORT: String(await freeLowPort()) });
      const check = spawnSync(wrapper[0], [...wrapper.slice(1), process.execPath, path.join(install ?? ROOT, 'bin', 'mtad'), '--check'], { env, encoding: 'utf8' });
      expect(check.stdout).toMatch(new RegExp(`^listen on +127\\.0\\.0\\.1:${env.MTAD_PORT} \\(CAP_NET_BIND_SERVICE\\)$`, 'm'));
      expect(check.status, check.stdout).toBe(0);
      // and without the capability it names the problem, as mtad itself would fail (77)
      const bare = spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, path.join(install ?? ROOT, 'bin', 'mtad'), '--check'], { env, encoding: 'utf8' });
      expect(bare.status).toBe(77);
      expect(bare.stdout).toContain(`problem: port ${env.MTAD_PORT} needs root (sudo node bin/mtad) or CAP_NET_BIND_SERVICE`);
    } finally {
      removeInstance(dir);
    }
  });
});
