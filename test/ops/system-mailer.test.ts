// The README's "Use mtad as the system's mailer", as far as a test may go: in a
// private mount namespace (so that nothing changes for the rest of the machine)
// /usr/sbin/sendmail becomes the README's symlink to an install every user can
// read, and an ordinary user runs plain `mail -s test alice`, which knows nothing
// of mtad. And Postfix's own links (mailq, newaliases -> sendmail) work too.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, isRoot, Mtad, readableInstall, removeInstance, startMtad } from '../helpers/mtad';
import { skipping } from '../helpers/skip';

const USER = 'daemon';
const canUnshare = (): boolean => isRoot() && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;

let mtad: Mtad;
let install: string;
beforeAll(async () => {
  install = readableInstall();
  mtad = await startMtad({ users: ['alice'] });
});
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code).toBe(0);
  removeInstance(mtad.dir);
  fs.rmSync(install, { recursive: true, force: true });
});
const env = (): NodeJS.ProcessEnv => ({ ...mtad.cliEnv(), MTAD_PORT: String(mtad.port) });

async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 60000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('sendmail as the system mailer', () => {
  it.skipIf(skipping(!canUnshare(), '/usr/sbin/sendmail -> mtad', 'needs root and unshare -m (a private mount namespace) to replace /usr/sbin/sendmail for this test alone'))(
    'an ordinary user\'s `echo hello | mail -s test alice` lands in spool/alice, naming that user', async () => {
      const home = fs.mkdtempSync(path.join(mtad.dir, 'home-'));
      fs.chmodSync(home, 0o777);
      const script = [
        'set -e',
        'mount -t tmpfs tmpfs /usr/sbin',
        `ln -s "${install}/bin/sendmail" /usr/sbin/sendmail`,
        // bsd-mailx with its defaults: /usr/sbin/sendmail, nothing configured
        `setpriv --reuid=${USER} --regid=${USER} --clear-groups sh -c 'echo hello | MAILRC=/dev/null mail -s test alice'`,
      ].join('\n');
      const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { env: { ...env(), HOME: home }, encoding: 'utf8', timeout: 60000 });
      expect(r.status, r.stderr).toBe(0);
      // mail does not wait for sendmail: wait for the mailbox.
      const m = await waitFor('the message in spool/alice', () =>
        (fs.existsSync(mtad.mailbox('alice')) ? readMbox(mtad.mailbox('alice')) : []).find((x) => x.header('Subject') === 'test'));
      const uid = Number(spawnSync('id', ['-u', USER], { encoding: 'utf8' }).stdout);
      expect(m.header('Return-Path')).toBe(`<${USER}@${HOSTNAME}>`);
      expect(m.header('Received')).toMatch(new RegExp(`^by ${HOSTNAME} \\(mtad, from userid ${uid}\\)`));
      expect(m.body.toString()).toBe('hello\n');
      expect(fs.readdirSync(home)).toEqual([]); // no dead.letter
    });

  it('mailq and newaliases as links to sendmail (as Postfix installs them) act as mailq and newaliases', () => {
    const links = fs.mkdtempSync(path.join(mtad.dir, 'links-'));
    for (const name of ['mailq', 'newaliases']) fs.symlinkSync(path.join(install, 'bin', 'sendmail'), path.join(links, name));
    const q = spawnSync(process.execPath, [path.join(links, 'mailq')], { env: env(), encoding: 'utf8' });
    expect(q).toMatchObject({ status: 0, stdout: 'mail queue is empty\n' });
    const a = spawnSync(process.execPath, [path.join(links, 'newaliases')], { env: env(), encoding: 'utf8' });
    expect(a.status, a.stderr).toBe(0);
    expect(a.stdout).toMatch(/^\S+: 1 aliases, longest 13 bytes, 0 problem\(s\)\nmtad rereads this file by itself/);
  });
});
