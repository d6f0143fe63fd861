// Alias expansion is bounded (issue 9, item 4): an aliases file whose names fan
// out into each other level after level used to keep the event loop busy for
// minutes per RCPT (no greeting, SIGTERM ignored). Each name is now expanded once
// per recipient, and past Postfix's limits (1000 addresses, 100 levels) the
// recipient is deferred with 451 4.6.0 and a warning in the log.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { instanceEnv, makeInstance, Mtad, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';
import { tokensByPython } from '../faults/readers';

const WIDTH = 8;
const DEPTH = 24;

/** DEPTH levels of WIDTH names, each naming every name of the next level: WIDTH^DEPTH paths to alice. */
function aliasesFile(): string {
  const level = (i: number): string[] => Array.from({ length: WIDTH }, (_, j) => `l${i}x${j}`);
  const lines = [`fan: ${level(0).join(', ')}`];
  for (let i = 0; i < DEPTH; i++) for (const n of level(i)) lines.push(`${n}: ${level(i + 1).join(', ')}`);
  for (const n of level(DEPTH)) lines.push(`${n}: alice`);
  lines.push(`big: ${Array.from({ length: 1200 }, (_, i) => `u${i}`).join(', ')}`);
  for (let i = 0; i < 150; i++) lines.push(`deep${i}: ${i === 149 ? 'bob' : `deep${i + 1}`}`);
  return `${lines.join('\n')}\n`;
}

/** The promise, or a failure after `ms`: the old code never answered at all. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer to ${what} within ${ms} ms`)), ms); });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

let m: Mtad;
beforeAll(async () => { m = await startMtad({ users: ['alice', 'bob'], aliases: aliasesFile() }); });
afterAll(async () => {
  if (!m) return;
  // SIGTERM must still be heard: a clean stop, whatever the aliases did.
  const stopped = await within(m.stop(), 30000, 'SIGTERM').catch(async (err) => { await m.stop('SIGKILL'); throw err; });
  expect(stopped.code, m.output()).toBe(0);
  removeInstance(m.dir);
});

describe('alias expansion', () => {
  it(`delivers through ${DEPTH} levels of ${WIDTH}-way fan-out at once, once, while other clients are greeted`, async () => {
    const c = await SmtpClient.connect(m.port);
    try {
      await c.cmd('EHLO client.test');
      expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
      const pending = within(c.cmd('RCPT TO:<fan@lab.test>'), 20000, 'RCPT TO:<fan>');
      const other = await within(SmtpClient.connect(m.port), 20000, 'a second connection');
      expect(other.greeting.code).toBe(220);
      other.close();
      expect((await pending).code).toBe(250);
      expect((await c.data('Subject: fan\r\nX-Token: fan\r\n\r\nhello\r\n')).code).toBe(250);
    } finally {
      await c.quit();
    }
    await m.waitForLog(/to=<alice@lab\.test>, orig_to=<fan@lab\.test>.*status=sent/);
    expect(tokensByPython(m.mailbox('alice'))).toEqual(['fan']);
  });

  it('defers a recipient past 1000 addresses or 100 levels with 451 4.6.0, and says why in the log', async () => {
    const c = await SmtpClient.connect(m.port);
    try {
      await c.cmd('EHLO client.test');
      expect((await c.cmd('MAIL FROM:<a@client.test>')).code).toBe(250);
      for (const [name, why] of [['big', 'more than 1000 addresses'], ['deep0', 'nested more than 100 deep']]) {
        const r = await within(c.cmd(`RCPT TO:<${name}@lab.test>`), 20000, `RCPT TO:<${name}>`);
        expect(r.code, r.raw).toBe(451);
        expect(r.lines[0]).toMatch(/^4\.6\.0 .*Alias expansion error/);
        await m.waitForLog(new RegExp(`warning: alias ${name}: unreasonable expansion \\(.*${why}\\)`));
      }
      // The session goes on: the other recipients are unaffected.
      expect((await c.cmd('RCPT TO:<deep120@lab.test>')).code).toBe(250);
    } finally {
      await c.quit();
    }
  });

  it('mtad --check names the aliases that would be deferred', () => {
    // On an instance of its own: beside the running one, --check would stop at "already running" (75).
    const dir = makeInstance({ users: ['alice', 'bob'], aliases: aliasesFile() });
    const r = runCli('mtad', ['--check'], instanceEnv(dir));
    removeInstance(dir);
    const problems = r.stdout.split('\n').filter((l) => l.startsWith('problem: '));
    expect(problems.filter((l) => /unreasonable expansion/.test(l)).map((l) => / alias (\S+):/.exec(l)![1]).sort()).toEqual(
      ['big', ...Array.from({ length: 150 }, (_, i) => `deep${i}`).filter((n) => Number(n.slice(4)) < 49)].sort(),
    );
    expect(r.status).toBe(65);
  });
});
