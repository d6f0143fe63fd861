// A running mtad sees account changes at the very next RCPT, with no signal and
// no restart, however the users file was changed. (An inotify watch instead of a
// stat per lookup failed the in-place case: the RCPT can be handled before the
// watch event.)
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOSTNAME, Mtad, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

let mtad: Mtad;
let c: SmtpClient;
beforeAll(async () => {
  // One session collects more refusals than the default MTAD_MAX_ERRORS (20) allows.
  mtad = await startMtad({ users: ['alice'], env: { MTAD_MAX_ERRORS: '100' } });
  c = await SmtpClient.connect(mtad.port);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  expect((await c.cmd('MAIL FROM:<sender@client.test>')).code).toBe(250);
});
afterAll(async () => {
  await c.quit();
  await mtad.stop();
  removeInstance(mtad.dir);
});

const rcpt = async (user: string): Promise<number> => (await c.cmd(`RCPT TO:<${user}@${HOSTNAME}>`)).code;

describe('account changes while mtad runs', () => {
  it('accepts a user added by mta-adduser at once, and refuses it at once after mta-deluser', async () => {
    for (const name of ['carol', 'dave']) {
      expect(await rcpt(name)).toBe(550);
      const add = runCli('mta-adduser', ['--disabled-password', '--gecos', 'New User', name], mtad.cliEnv());
      expect(add.stderr).toBe('');
      expect(add.status).toBe(0);
      expect(await rcpt(name)).toBe(250);
      const del = runCli('mta-deluser', [name], mtad.cliEnv());
      expect(del.status).toBe(0);
      expect(await rcpt(name)).toBe(550);
    }
  });

  it('sees a line appended to the users file in place, each time', async () => {
    for (let i = 0; i < 20; i++) {
      const name = `inplace${i}`;
      expect(await rcpt(name)).toBe(550);
      fs.appendFileSync(mtad.usersFile, `${name}:!:In Place\n`);
      expect(await rcpt(name)).toBe(250);
    }
  });

  it('sees each change at the next RCPT while other clients keep mtad busy delivering', async () => {
    // Ten sessions deliver without pause, so the RCPTs below compete with appends,
    // fsyncs and replies on the event loop: a cache or a watch would lose this race.
    let stop = false;
    let delivered = 0;
    const load = Array.from({ length: 10 }, async () => {
      const s = await SmtpClient.connect(mtad.port);
      try {
        expect((await s.cmd('EHLO load.test')).code).toBe(250);
        while (!stop) {
          expect((await s.cmd('MAIL FROM:<load@client.test>')).code).toBe(250);
          expect((await s.cmd(`RCPT TO:<alice@${HOSTNAME}>`)).code).toBe(250);
          expect((await s.data('Subject: load\r\n\r\nload\r\n')).code).toBe(250);
          delivered++;
        }
      } finally {
        await s.quit();
      }
    });
    try {
      for (let i = 0; i < 30; i++) {
        const name = `busy${i}`;
        expect(await rcpt(name)).toBe(550);
        if (i % 3 === 0) {
          expect(runCli('mta-adduser', ['--disabled-password', name], mtad.cliEnv()).status).toBe(0);
        } else {
          fs.appendFileSync(mtad.usersFile, `${name}:!:Busy\n`);
        }
        expect(await rcpt(name)).toBe(250);
        if (i % 3 === 0) {
          expect(runCli('mta-deluser', [name], mtad.cliEnv()).status).toBe(0);
          expect(await rcpt(name)).toBe(550);
        }
      }
    } finally {
      stop = true;
      await Promise.all(load);
    }
    // The load was real: deliveries went on throughout.
    expect(delivered).toBeGreaterThan(30);
  });
});
