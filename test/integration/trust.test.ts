// Accounts files others can write are not trusted (issue 9, item 7), and signals
// never end mtad without a word (item 8). Whoever can change the users or
// aliases file decides where other people's mail goes: such a file (or one in a
// directory others can write, or behind a link they own) stops mtad at start-up
// and is ignored on reload, the accounts read before staying in use.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { instanceEnv, makeInstance, Mtad, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { appendInProgress, sendToken, tokensByPython } from '../faults/readers';

const dirs: string[] = [];
const running: Mtad[] = [];
afterAll(async () => {
  for (const m of running) await m.stop('SIGKILL');
  for (const d of dirs) removeInstance(d);
});

function instance(aliases = 'staff: alice\n'): string {
  const dir = makeInstance({ users: ['alice', 'bob'], aliases });
  dirs.push(dir);
  return dir;
}

/** Starts mtad on `dir` to completion (it must refuse): exit code and what it said. */
function refusedStart(dir: string): { status: number | null; stderr: string; stdout: string } {
  return runCli('mtad', [], instanceEnv(dir));
}

const SOMEONE_ELSE = 4242;

describe('an accounts file others could have written stops mtad at start-up (77), and --check says so', () => {
  const cases: Array<[string, (dir: string) => void, RegExp, boolean]> = [
    ['aliases writable by every user', (d) => fs.chmodSync(path.join(d, 'aliases'), 0o666), /aliases is writable by every user \(mode 0666\): chmod go-w/, false],
    ['users writable by its group', (d) => fs.chmodSync(path.join(d, 'users'), 0o660), /users is writable by its group \(mode 0660\)/, false],
    ['aliases in a directory every user can write', (d) => {
      fs.mkdirSync(path.join(d, 'open'), { mode: 0o777 });
      fs.chmodSync(path.join(d, 'open'), 0o777);
      fs.renameSync(path.join(d, 'aliases'), path.join(d, 'open', 'aliases'));
      fs.symlinkSync('open/aliases', path.join(d, 'aliases'));
    }, /the directory .*\/open is writable by every user/, false],
    ['aliases owned by another user', (d) => fs.chownSync(path.join(d, 'aliases'), SOMEONE_ELSE, SOMEONE_ELSE), new RegExp(`aliases belongs to uid ${SOMEONE_ELSE}, neither root nor the user mtad runs as`), true],
    ['aliases through a symbolic link another user owns', (d) => {
      fs.renameSync(path.join(d, 'aliases'), path.join(d, 'aliases.real'));
      fs.symlinkSync('aliases.real', path.join(d, 'aliases'));
      fs.lchownSync(path.join(d, 'aliases'), SOMEONE_ELSE, SOMEONE_ELSE);
    }, new RegExp(`the symbolic link .*/aliases belongs to uid ${SOMEONE_ELSE}`), true],
  ];
  for (const [what, spoil, said, rootOnly] of cases) {
    it.skipIf(rootOnly && needsRoot(what, 'chown to another user needs root'))(what, () => {
      const dir = instance();
      spoil(dir);
      const r = refusedStart(dir);
      const lines = r.stderr.split('\n').filter(Boolean);
      expect(lines, r.stdout + r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^mtad: will not trust /);
      expect(lines[0]).toMatch(said);
      expect(r.status).toBe(77);
      // Nothing was served: no "listening on" line.
      expect(r.stdout).not.toMatch(/listening on/);
      const check = runCli('mtad', ['--check'], instanceEnv(dir));
      expect(check.stdout.split('\n').filter((l) => l.startsWith('problem: ')).join('\n')).toMatch(said);
      expect(check.status).toBe(77);
    });
  }

  it('a file in /tmp-like sticky directory, owned by root or mtad\'s user, mode 0640/0644, is fine', () => {
    const dir = instance();
    const r = runCli('mtad', ['--check'], instanceEnv(dir));
    expect(r.stdout, r.stderr).toMatch(/^ok: mtad would start/m);
    expect(r.status).toBe(0);
  });
});

describe('a running mtad', () => {
  it('ignores a new version of the aliases file others could have written, says so once, and takes it once it is fixed', async () => {
    const dir = instance('staff: alice\n');
    const m = await startMtad({ dir, env: { MTAD_EXPN: 'yes' } });
    running.push(m);
    const c = await SmtpClient.connect(m.port);
    try {
      await c.cmd('EHLO client.test');
      expect((await c.cmd('EXPN staff')).lines).toEqual([expect.stringContaining('<alice@lab.test>')]);
      // A local user's redirection: mode 0666 at the moment mtad looks.
      const tmp = path.join(dir, 'aliases.new');
      fs.writeFileSync(tmp, 'staff: bob\n');
      fs.chmodSync(tmp, 0o666);
      fs.renameSync(tmp, m.aliasesFile);
      for (let i = 0; i < 3; i++) expect((await c.cmd('EXPN staff')).lines).toEqual([expect.stringContaining('<alice@lab.test>')]);
      await m.waitForLog(/warning: will not trust .*aliases: .*writable by every user \(mode 0666\).*; keeping the accounts read before/);
      expect(m.output().split('\n').filter((l) => /will not trust/.test(l))).toHaveLength(1);
      // The admin fixes the mode: that version is believed.
      fs.chmodSync(m.aliasesFile, 0o644);
      expect((await c.cmd('EXPN staff')).lines).toEqual([expect.stringContaining('<bob@lab.test>')]);
    } finally {
      await c.quit();
    }
    const { code } = await m.stop();
    expect(code).toBe(0);
  });

  it('logs a SIGHUP, rereads the accounts, and goes on serving; other signals are logged, never a silent death', async () => {
    const dir = instance();
    const m = await startMtad({ dir });
    running.push(m);
    await sendToken(m.port, 'alice', 'before');
    fs.appendFileSync(m.usersFile, 'carol:!:Carol\n');
    m.proc.kill('SIGHUP');
    await m.waitForLog(/SIGHUP received/);
    await m.waitForLog(/accounts reread: 3 user\(s\) from .*users, 1 alias\(es\) from .*aliases/);
    for (const sig of ['SIGUSR1', 'SIGUSR2', 'SIGALRM', 'SIGPWR', 'SIGXFSZ'] as const) {
      m.proc.kill(sig);
      await m.waitForLog(new RegExp(`warning: ${sig} received: ignored`));
    }
    const id = await sendToken(m.port, 'carol', 'after');
    await m.waitForLog(new RegExp(`${id}: removed`));
    expect(tokensByPython(m.mailbox('alice'))).toEqual(['before']);
    expect(tokensByPython(m.mailbox('carol'))).toEqual(['after']);
    // No append left half-recorded (the records stay between appends, naming none).
    const inProgress = (): unknown[] => fs.readdirSync(path.join(m.queue, 'appending')).map((u) => appendInProgress(m.queue, u)).filter(Boolean);
    expect(inProgress()).toEqual([]);
    // SIGQUIT stops it as SIGTERM does: cleanly, and saying so.
    const { code } = await m.stop('SIGQUIT');
    expect(code, m.output()).toBe(0);
    expect(m.output()).toMatch(/SIGQUIT received/);
    expect(inProgress()).toEqual([]);
  });
});

describe.skipIf(needsRoot('root: who may own the files', 'chown to the user mtad becomes needs root'))('root: who may own the files', () => {
  it('files owned by mtad\'s own user are trusted as root\'s are', async () => {
    const dir = instance();
    const nobody = fs.statSync(path.join(dir, 'spool'));
    fs.chownSync(path.join(dir, 'aliases'), nobody.uid, nobody.gid);
    const m = await startMtad({ dir });
    running.push(m);
    expect(m.output()).not.toMatch(/will not trust/);
    const { code } = await m.stop();
    expect(code).toBe(0);
  });
});
