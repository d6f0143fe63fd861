// mta-adduser / mta-deluser / mta-users against a running mtad: changes take
// effect at the next RCPT, without restart or signal.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { isRoot, Mtad, removeInstance, ROOT, runCli, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

let mtad: Mtad;
beforeAll(async () => { mtad = await startMtad({ users: ['alice'] }); });
afterAll(async () => { await mtad.stop(); removeInstance(mtad.dir); });

async function rcpt(user: string): Promise<number> {
  const c = await SmtpClient.connect(mtad.port);
  await c.cmd('HELO client.example');
  await c.cmd('MAIL FROM:<a@remote.example>');
  const r = await c.cmd(`RCPT TO:<${user}>`);
  await c.quit();
  return r.code;
}

describe('managing users while mtad runs', () => {
  it('accepts a user at once after mta-adduser, with a password stored only as a hash', async () => {
    expect(await rcpt('frank')).toBe(550);
    const r = runCli('mta-adduser', ['--gecos', 'Frank Zappa', 'frank'], mtad.cliEnv(), 'hunter22\nhunter22\n');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("Adding user 'frank'");
    expect(await rcpt('frank')).toBe(250);

    const line = fs.readFileSync(mtad.usersFile, 'utf8').split('\n').find((l) => l.startsWith('frank:'))!;
    expect(line).toMatch(/^frank:scrypt\$\d+\$\d+\$\d+\$[^$:]+\$[^$:]+:Frank Zappa$/);
    expect(line).not.toContain('hunter22');
    // the empty mailbox exists, owned by the user mtad runs as, private to it
    const st = fs.statSync(mtad.mailbox('frank'));
    expect([st.size, st.mode & 0o777, st.uid]).toEqual([0, 0o600, fs.statSync(mtad.spool).uid]);
    // root's rewrite kept the users file readable by mtad
    if (isRoot()) expect(fs.statSync(mtad.usersFile).uid).toBe(fs.statSync(mtad.spool).uid);

    const list = runCli('mta-users', [], mtad.cliEnv());
    expect(list.status).toBe(0);
    expect(list.stdout).toMatch(/^frank\s+yes\s+0\s+51200000\s+Frank Zappa$/m);
    expect(list.stdout).toMatch(/^alice\s+no\s/m);
  });

  it('delivers to the new user and mailx-style readers see it', async () => {
    runCli('mta-adduser', ['--disabled-password', '--gecos', '', 'gina'], mtad.cliEnv());
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('HELO client.example');
    expect((await c.send('a@remote.example', ['gina'], 'Subject: welcome\r\n\r\nhi gina\r\n')).code).toBe(250);
    await c.quit();
    expect(readMbox(mtad.mailbox('gina')).map((m) => m.header('Subject'))).toEqual(['welcome']);
  });

  it('refuses a user removed with mta-deluser, and removes the mailbox on request', async () => {
    runCli('mta-adduser', ['--disabled-password', '--gecos', 'H', 'hank'], mtad.cliEnv());
    expect(await rcpt('hank')).toBe(250);
    const r = runCli('mta-deluser', ['--remove-mailbox', 'hank'], mtad.cliEnv());
    expect(r.status).toBe(0);
    expect(await rcpt('hank')).toBe(550);
    expect(fs.existsSync(mtad.mailbox('hank'))).toBe(false);
    expect(runCli('mta-deluser', ['hank'], mtad.cliEnv())).toMatchObject({ status: 2, stderr: "mta-deluser: The user 'hank' does not exist.\n" });
  });

  it.each([
    [['../evil'], 65, /^mta-adduser: '\.\.\/evil' is not a valid user name: .*\n$/],
    [['Alice'], 65, /not a valid user name/],
    [['--disabled-password', 'alice'], 1, /^mta-adduser: The user 'alice' already exists\.\n$/],
    [[], 64, /^mta-adduser: no user name given\nusage: mta-adduser/],
    [['--frobnicate', 'x'], 64, /^mta-adduser: unknown option --frobnicate\n/],
    [['--gecos', 'a:b', 'ivan'], 65, /may not contain ":"/],
  ])('mta-adduser %j exits %i with a clear message', (args, status, re) => {
    const r = runCli('mta-adduser', args, mtad.cliEnv());
    expect(r.status).toBe(status);
    expect(r.stderr).toMatch(re);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('asks at a terminal like adduser, without echoing the password', () => {
    const script = [['New password: ', 'pa55-word'], ['Retype new password: ', 'pa55-word'], ['Full Name []: ', 'Kim Kay']];
    const out = execFileSync('python3', [path.join(__dirname, '..', 'helpers', 'pty_run.py'), JSON.stringify(script),
      process.execPath, path.join(ROOT, 'bin', 'mta-adduser'), 'kim'], { env: mtad.cliEnv(), encoding: 'utf8' });
    const { shown, status } = JSON.parse(out) as { shown: string; status: number };
    expect(status).toBe(0);
    expect(shown).toContain('New password: ');
    expect(shown).toContain('Retype new password: ');
    expect(shown).not.toContain('pa55-word');
    expect(shown).toContain('Kim Kay'); // an ordinary answer is echoed
    expect(fs.readFileSync(mtad.usersFile, 'utf8')).toMatch(/^kim:scrypt\$[^:]+:Kim Kay$/m);
  });

  it('refuses a password typed differently twice, and changes nothing', () => {
    const before = fs.readFileSync(mtad.usersFile, 'utf8');
    const r = runCli('mta-adduser', ['judy'], mtad.cliEnv(), 'one\ntwo\n');
    expect(r).toMatchObject({ status: 1, stderr: 'mta-adduser: Sorry, passwords do not match.\n' });
    expect(fs.readFileSync(mtad.usersFile, 'utf8')).toBe(before);
  });
});
