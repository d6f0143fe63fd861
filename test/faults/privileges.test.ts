// Privileges (issue 3, item 11). Started as root, mtad serves clients with no
// uid, gid or supplementary group 0 in any of its threads, and no capability.
// Mailboxes get the documented owner and mode:
//   - a lab spool (owned by the user mtad runs as): that user, 0600;
//   - a shared spool like /var/spool/mail (root:mail 2775): `mta-adduser NAME`
//     run as root makes NAME:mail 0660 when NAME is a system user, and mtad,
//     running as the mail user, delivers into it without changing owner or mode.
// The system user is a real one, made with useradd for this test and removed after.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { instanceEnv, makeInstance, Mtad, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { sendToken, tokensByPython } from './readers';

const started: Mtad[] = [];
const dirs: string[] = [];
const sysUsers: string[] = [];
afterAll(async () => {
  for (const m of started) await m.stop('SIGKILL');
  for (const u of sysUsers) spawnSync('userdel', [u]);
  for (const d of dirs) removeInstance(d);
});

function ids(status: string, field: string): number[] {
  return (new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '').trim().split(/\s+/).filter(Boolean).map(Number);
}

function passwd(name: string): { uid: number; gid: number } | null {
  const row = fs.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((r) => r[0] === name);
  return row ? { uid: Number(row[2]), gid: Number(row[3]) } : null;
}

function groupId(name: string): number {
  const row = fs.readFileSync('/etc/group', 'utf8').split('\n').map((l) => l.split(':')).find((r) => r[0] === name);
  if (!row) throw new Error(`no group ${name}`);
  return Number(row[2]);
}

/** Every thread of the process: real, effective, saved and fs ids, supplementary groups, capabilities. */
function credentials(pid: number): Array<{ tid: string; uids: number[]; gids: number[]; groups: number[]; capEff: string; capPrm: string }> {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    const s = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    return {
      tid,
      uids: ids(s, 'Uid'),
      gids: ids(s, 'Gid'),
      groups: ids(s, 'Groups'),
      capEff: /^CapEff:\s*(\S+)/m.exec(s)![1],
      capPrm: /^CapPrm:\s*(\S+)/m.exec(s)![1],
    };
  });
}

async function deliver(m: Mtad, user: string, token: string): Promise<void> {
  const id = await sendToken(m.port, user, token);
  await m.waitForLog(new RegExp(`${id}: removed`));
}

describe.skipIf(needsRoot('privileges: started as root'))('started as root', () => {
  it('serves clients with no root id, group or capability in any thread; lab mailboxes are the spool owner\'s, 0600', async () => {
    const m = await startMtad({ users: ['alice'] });
    started.push(m);
    dirs.push(m.dir);
    // A client is being served while we look.
    const c = await SmtpClient.connect(m.port);
    expect(c.greeting.code).toBe(220);
    const spoolOwner = fs.statSync(m.spool);
    for (const t of credentials(m.pid)) {
      expect(t.uids, `thread ${t.tid}`).toEqual([spoolOwner.uid, spoolOwner.uid, spoolOwner.uid, spoolOwner.uid]);
      expect(t.gids, `thread ${t.tid}`).not.toContain(0);
      expect(t.groups, `thread ${t.tid}`).not.toContain(0);
      expect(BigInt(`0x${t.capEff}`), `thread ${t.tid}`).toBe(0n);
      expect(BigInt(`0x${t.capPrm}`), `thread ${t.tid}`).toBe(0n);
    }
    await c.quit();
    await deliver(m, 'alice', 'lab');
    const st = fs.statSync(m.mailbox('alice'));
    expect(st.uid).toBe(spoolOwner.uid);
    expect(st.mode & 0o7777).toBe(0o600);
    expect(tokensByPython(m.mailbox('alice'))).toEqual(['lab']);

    // mta-adduser run as root in a lab spool: the spool owner's, 0600, too.
    expect(runCli('mta-adduser', ['--disabled-password', '--gecos', 'Bob', 'bob'], m.cliEnv()).status).toBe(0);
    const bob = fs.statSync(m.mailbox('bob'));
    expect([bob.uid, bob.mode & 0o7777]).toEqual([spoolOwner.uid, 0o600]);
  });

  it('in a root:mail 2775 spool, mta-adduser makes user:mail 0660 for a system user, and mtad (as mail) delivers into it', async () => {
    const mailUser = passwd('mail');
    expect(mailUser).not.toBeNull();
    const mailGid = groupId('mail');
    const name = `mtadf${crypto.randomBytes(3).toString('hex')}`;
    const add = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group', name], { encoding: 'utf8' });
    expect(add.status, add.stderr).toBe(0);
    sysUsers.push(name);
    const sys = passwd(name)!;

    const dir = makeInstance({ users: ['alice'] });
    dirs.push(dir);
    const spool = path.join(dir, 'mail');
    fs.mkdirSync(spool);
    fs.chownSync(spool, 0, mailGid);
    fs.chmodSync(spool, 0o2775);
    // The accounts files must be readable by the mail user mtad will become.
    for (const f of ['users', 'aliases']) { fs.chownSync(path.join(dir, f), 0, mailGid); fs.chmodSync(path.join(dir, f), 0o640); }
    const env = { MTAD_SPOOL_DIR: spool };

    const r = runCli('mta-adduser', ['--disabled-password', '--gecos', 'System User', name], instanceEnv(dir, env));
    expect(r.status, r.stderr).toBe(0);
    const box = path.join(spool, name);
    let st = fs.statSync(box);
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([sys.uid, mailGid, 0o660]);

    const m = await startMtad({ dir, env });
    started.push(m);
    // Root owns the spool: mtad becomes the mail user, with the mail group.
    for (const t of credentials(m.pid)) {
      expect(t.uids).toEqual([mailUser!.uid, mailUser!.uid, mailUser!.uid, mailUser!.uid]);
      expect(t.gids).not.toContain(0);
      expect(t.groups).not.toContain(0);
      expect(t.gids[1]).toBe(mailUser!.gid);
    }
    expect(m.output()).toMatch(/running as mail \(uid \d+\)/);
    await deliver(m, name, 'to-system-user');
    st = fs.statSync(box);
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([sys.uid, mailGid, 0o660]);
    expect(tokensByPython(box)).toEqual(['to-system-user']);
    // The system user can read it, as its own mail reader would.
    const asUser = spawnSync('setpriv', [`--reuid=${sys.uid}`, `--regid=${sys.gid}`, '--clear-groups', 'head', '-c', '5', box], { encoding: 'utf8' });
    expect(asUser.stdout).toBe('From ');

    // A name that is no system user: root's, group mail, 0660, so that mtad can write it.
    expect(runCli('mta-adduser', ['--disabled-password', 'labonly'], instanceEnv(dir, env)).status).toBe(0);
    const lab = fs.statSync(path.join(spool, 'labonly'));
    expect([lab.uid, lab.gid, lab.mode & 0o7777]).toEqual([0, mailGid, 0o660]);
    await deliver(m, 'labonly', 'to-lab-user');
    expect(tokensByPython(path.join(spool, 'labonly'))).toEqual(['to-lab-user']);

    // A mailbox mtad has to create itself in the shared spool is the mail group's too.
    await deliver(m, 'alice', 'created-by-mtad');
    const a = fs.statSync(path.join(spool, 'alice'));
    expect([a.uid, a.gid, a.mode & 0o7777]).toEqual([mailUser!.uid, mailGid, 0o660]);
    const { code } = await m.stop();
    expect(code).toBe(0);
  });

  it('leaves behind the supplementary groups it was started with (adm, disk, shadow, root): only the run-as user\'s remain', async () => {
    // The test runner's root has no supplementary groups, so a drop that kept them would pass unseen:
    // mtad is started with some, as a root login shell or sudo would give it.
    const startedWith = [0, groupId('adm'), groupId('disk'), groupId('shadow')];
    const wrapper = ['setpriv', `--groups=${startedWith.join(',')}`, '--'];
    const probe = spawnSync(wrapper[0], [...wrapper.slice(1), 'cat', '/proc/self/status'], { encoding: 'utf8' });
    expect(ids(probe.stdout, 'Groups').sort((x, y) => x - y), 'the wrapper gives these groups').toEqual([...startedWith].sort((x, y) => x - y));

    const m = await startMtad({ users: ['alice'], wrapper });
    started.push(m);
    dirs.push(m.dir);
    const owner = fs.statSync(m.spool);
    const user = fs.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((r) => Number(r[2]) === owner.uid)!;
    // The run-as user's groups as initgroups(3) builds them: its primary group, and every group listing it.
    const own = new Set([Number(user[3]), ...fs.readFileSync('/etc/group', 'utf8').split('\n').map((l) => l.split(':'))
      .filter((r) => r.length > 3 && r[3].split(',').includes(user[0])).map((r) => Number(r[2]))]);
    const c = await SmtpClient.connect(m.port);
    expect(c.greeting.code).toBe(220);
    for (const t of credentials(m.pid)) {
      expect(new Set(t.groups), `thread ${t.tid} of mtad running as ${user[0]}`).toEqual(own);
      for (const g of startedWith) expect(t.groups, `thread ${t.tid}`).not.toContain(g);
    }
    await c.quit();
    await deliver(m, 'alice', 'after-the-drop');
    expect(tokensByPython(m.mailbox('alice'))).toEqual(['after-the-drop']);
  });
});
