// Who owns what mtad reads and writes (issue 10, items 1-3, 12, 17, 18). The
// accounts tools and the daemon agree on it: a root-run mta-adduser makes a
// users file and mailboxes the user mtad will run as can use; mtad, taking over
// a checkout's root-owned spool, puts right the mailboxes root made in it, and
// only once its port is bound; a mailbox it still cannot write is refused at RCPT
// (450) with an error line, never accepted and deferred for ever; and --check
// gives the verdict mtad then lives up to.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HOSTNAME, instanceEnv, makeInstance, Mtad, readableInstall, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { sendToken, tokensByPython } from '../faults/readers';

const running: Mtad[] = [];
const dirs: string[] = [];
afterAll(async () => {
  for (const m of running) await m.stop('SIGKILL');
  for (const d of dirs) removeInstance(d);
});

function passwd(name: string): { uid: number; gid: number } {
  const row = fs.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((r) => r[0] === name);
  if (!row) throw new Error(`no user ${name}`);
  return { uid: Number(row[2]), gid: Number(row[3]) };
}

const owner = (file: string): [number, number, number] => {
  const st = fs.statSync(file);
  return [st.uid, st.gid, st.mode & 0o7777];
};

/** Runs one of the install's commands (its own ROOT decides which spool is "the checkout's"). */
function run(install: string, cmd: string, args: string[], env: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(install, 'bin', cmd), ...args], { env, encoding: 'utf8', timeout: 60000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(needsRoot('a clone made by root', 'the clone, its spool and mta-adduser must be root\'s'))('a clone made by root, set up as the README says', () => {
  it('mta-adduser before the first start, --check, a start that fails, then mtad: every file usable, nothing changed by the failure, mail delivered', async () => {
    const mail = passwd('mail');
    const install = readableInstall();
    dirs.push(install);
    const spool = path.join(install, 'spool');
    fs.mkdirSync(spool, { mode: 0o755 });
    fs.mkdirSync(path.join(install, 'etc'), { mode: 0o755 });
    fs.copyFileSync(path.join(__dirname, '..', '..', 'etc', 'aliases'), path.join(install, 'etc', 'aliases'));
    const env: Record<string, string> = {
      MTAD_SPOOL_DIR: spool,
      MTAD_USERS_FILE: path.join(install, 'etc', 'users'),
      MTAD_ALIASES_FILE: path.join(install, 'etc', 'aliases'),
    };
    const full = { PATH: process.env.PATH, HOME: process.env.HOME, MTAD_CONFIG: '/dev/null', MTAD_HOST: '127.0.0.1', MTAD_PORT: '0', MTAD_HOSTNAME: HOSTNAME, ...env };

    // An older mta-adduser left carol's mailbox root's: mtad must put it right.
    fs.writeFileSync(path.join(spool, 'carol'), '', { mode: 0o600 });
    for (const name of ['bob', 'carol']) {
      const r = run(install, 'mta-adduser', ['--disabled-password', '--gecos', name, name], full);
      expect(r.status, r.stderr).toBe(0);
    }
    // Item 3: root's users file is root's, with the group of the user mtad will be (mail), 0640.
    expect(owner(env.MTAD_USERS_FILE)).toEqual([0, mail.gid, 0o640]);
    // Item 1: the mailbox is made for the user mtad will run as.
    expect(owner(path.join(spool, 'bob'))).toEqual([mail.uid, mail.gid, 0o600]);
    expect(owner(path.join(spool, 'carol'))[0]).toBe(0);

    // Item 12: no false problem on a fresh root clone; item 17: only the literals mtad listens on.
    const check = run(install, 'mtad', ['--check'], full);
    expect(check.stdout.split('\n').filter((l) => l.startsWith('problem: ')), check.stdout).toEqual([]);
    expect(check.stdout).toMatch(/^literals +\[127\.0\.0\.1\]$/m);
    expect(check.stdout).toMatch(/^ok: mtad would start/m);
    expect(check.status).toBe(0);

    // Item 2: the port is taken: exit 69, and the spool is as it was.
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    try {
      const port = (taken.address() as net.AddressInfo).port;
      const failed = run(install, 'mtad', [], { ...full, MTAD_PORT: String(port) });
      expect(failed.status, failed.stderr).toBe(69);
    } finally {
      taken.close();
    }
    expect(owner(spool)).toEqual([0, 0, 0o755]);
    expect(owner(path.join(spool, 'carol'))).toEqual([0, 0, 0o600]);
    expect(fs.readdirSync(spool).sort()).toEqual(['bob', 'carol']);

    const m = await startMtad({ dir: install, install, env });
    running.push(m);
    expect(m.output()).toMatch(new RegExp(`gave ${spool}, ${spool}/carol to mail, the user mtad runs as`));
    expect(owner(spool)[0]).toBe(mail.uid);
    expect(owner(path.join(spool, 'carol'))).toEqual([mail.uid, mail.gid, 0o600]);
    // Item 18: root's mail goes to postmaster, as the shipped aliases say.
    for (const [to, box] of [['bob', 'bob'], ['carol', 'carol'], ['root', 'postmaster'], ['abuse', 'postmaster']]) {
      const id = await sendToken(m.port, to, `to-${to}`);
      await m.waitForLog(new RegExp(`${id}: removed`));
      expect(tokensByPython(path.join(spool, box))).toContain(`to-${to}`);
    }
    expect(m.output()).not.toMatch(/deferred|error:/);
    const { code } = await m.stop();
    expect(code).toBe(0);
  });
});

describe('a mailbox mtad cannot write', () => {
  it('is refused at RCPT with 450 4.2.0 and an error line, alone or through an alias, not accepted and deferred; once fixed, mail flows', async () => {
    const m = await startMtad({ users: ['alice', 'bob'], aliases: 'staff: alice, bob\n' });
    running.push(m);
    await sendToken(m.port, 'bob', 'first');
    const box = m.mailbox('bob');
    const was = fs.statSync(box);
    if (process.getuid?.() === 0) fs.chownSync(box, 0, 0);
    else fs.chmodSync(box, 0o400);
    const c = await SmtpClient.connect(m.port);
    try {
      await c.cmd('EHLO client.test');
      expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
      for (const to of ['bob', 'staff']) {
        const r = await c.cmd(`RCPT TO:<${to}@${HOSTNAME}>`);
        expect(r.code, r.raw).toBe(450);
        expect(r.lines[0]).toMatch(/^4\.2\.0 <.*>: Recipient address rejected: mailbox unavailable/);
      }
      await m.waitForLog(new RegExp(`error: mailbox ${box}: mtad \\(uid \\d+\\) cannot write it .*refusing its mail with 450 4\\.2\\.0`));
      expect((await c.cmd(`RCPT TO:<alice@${HOSTNAME}>`)).code).toBe(250);
      expect((await c.data('Subject: x\r\nX-Token: alice-only\r\n\r\nx\r\n')).code).toBe(250);
    } finally {
      await c.quit();
    }
    // Nothing waits in the queue for a mailbox nobody will fix by retrying.
    expect(m.output()).not.toMatch(/status=deferred/);
    expect((await m.stop()).code).toBe(0);
    // A start says so at once, and serves the others.
    const again = await startMtad({ dir: m.dir });
    running.push(again);
    await again.waitForLog(new RegExp(`error: mailbox ${box}: mtad \\(uid \\d+\\) cannot write it .*its mail will be refused with 450 4\\.2\\.0`));
    fs.chownSync(box, was.uid, was.gid);
    fs.chmodSync(box, 0o600);
    const id = await sendToken(again.port, 'staff', 'after-fix');
    await again.waitForLog(new RegExp(`${id}: removed`));
    expect(tokensByPython(box)).toEqual(['first', 'after-fix']);
    expect(tokensByPython(m.mailbox('alice'))).toEqual(['alice-only', 'after-fix']);
    const { code } = await again.stop();
    expect(code).toBe(0);
  });
});

describe('a mailbox of mtad\'s own user without its write bit', () => {
  // RCPT judges a mailbox mtad owns by its owner bits alone (no access(2) call): that path must refuse too.
  it('is refused at RCPT with 450 4.2.0, and takes mail again once the bit is back', async () => {
    const m = await startMtad({ users: ['alice'] });
    running.push(m);
    await sendToken(m.port, 'alice', 'first');
    const box = m.mailbox('alice');
    fs.chmodSync(box, 0o400);
    const c = await SmtpClient.connect(m.port);
    try {
      await c.cmd('EHLO client.test');
      expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
      const r = await c.cmd(`RCPT TO:<alice@${HOSTNAME}>`);
      expect(r.code, r.raw).toBe(450);
      expect(r.lines[0]).toMatch(/^4\.2\.0 <.*>: Recipient address rejected: mailbox unavailable/);
      await m.waitForLog(new RegExp(`error: mailbox ${box}: mtad \\(uid \\d+\\) cannot write it .*mode 0400`));
    } finally {
      await c.quit();
    }
    fs.chmodSync(box, 0o600);
    const id = await sendToken(m.port, 'alice', 'second');
    await m.waitForLog(new RegExp(`${id}: removed`));
    expect(tokensByPython(box)).toEqual(['first', 'second']);
    expect((await m.stop()).code).toBe(0);
  });
});

describe('an accounts file the user mtad runs as cannot read', () => {
  it('stops mtad with 66, and --check, judging as that user, says the same', () => {
    const dir = makeInstance();
    dirs.push(dir);
    // Root reads everything: only the bits for mtad's user count.
    fs.chmodSync(path.join(dir, 'users'), 0o000);
    const check = runCli('mtad', ['--check'], instanceEnv(dir));
    expect(check.stdout).toMatch(/^problem: .* cannot read the users file .*users/m);
    expect(check.status).toBe(66);
    const start = runCli('mtad', [], instanceEnv(dir));
    expect(start.stderr).toMatch(/^mtad: cannot read the accounts: permission denied/);
    expect(start.status).toBe(66);
  });
});

describe('the users file holds password hashes', () => {
  it('mta-adduser creates it 0640 and narrows a wider one to 0640, whoever runs it', () => {
    const dir = makeInstance({ users: [] });
    dirs.push(dir);
    const env = instanceEnv(dir) as Record<string, string>;
    fs.chmodSync(env.MTAD_USERS_FILE, 0o644);
    const before = fs.statSync(env.MTAD_USERS_FILE);
    expect(runCli('mta-adduser', ['--disabled-password', 'dora'], env).status).toBe(0);
    expect(owner(env.MTAD_USERS_FILE)).toEqual([before.uid, before.gid, 0o640]);
    fs.rmSync(env.MTAD_USERS_FILE);
    const r = runCli('mta-adduser', ['erin'], env, 'secret\nsecret\n');
    expect(r.status, r.stderr).toBe(0);
    expect(owner(env.MTAD_USERS_FILE)[2]).toBe(0o640);
    expect(fs.readFileSync(env.MTAD_USERS_FILE, 'utf8')).toMatch(/^erin:scrypt\$/m);
  });

  it('--check warns when every user can read the hashes', () => {
    const dir = makeInstance({ users: [] });
    dirs.push(dir);
    const env = instanceEnv(dir) as Record<string, string>;
    expect(runCli('mta-adduser', ['erin'], env, 'secret\nsecret\n').status).toBe(0);
    fs.chmodSync(env.MTAD_USERS_FILE, 0o644);
    const r = runCli('mtad', ['--check'], env);
    expect(r.stdout).toMatch(/^warning: .*users: every user can read the password hashes in it \(mode 0644\): chmod o-r/m);
  });
});

describe('--check lists as ours only the address literals mtad listens on', () => {
  it.each([
    ['0.0.0.0', false],
    ['127.0.0.1', false],
    ['::', true],
  ])('MTAD_HOST=%s: IPv6 literals %s', (host, v6) => {
    const dir = makeInstance();
    dirs.push(dir);
    const line = runCli('mtad', ['--check'], instanceEnv(dir, { MTAD_HOST: host })).stdout.split('\n').find((l) => l.startsWith('literals'))!;
    expect(line).toMatch(/\[127\.0\.0\.1\]/);
    const loopback6 = Object.values(os.networkInterfaces()).flat().some((i) => i?.address === '::1');
    if (v6 && loopback6) expect(line).toMatch(/\[IPv6:::1\]/);
    else expect(line).not.toMatch(/IPv6/);
  });
});
