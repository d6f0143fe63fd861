// MTAD_MAILBOX_SIZE_LIMIT: a full mailbox gets 452 4.2.2 at RCPT; a message that
// would take a mailbox over the limit is never written (refused at the end of
// DATA when no recipient has room, otherwise kept in the queue); once the user
// makes room, RCPT is accepted again and the waiting message is delivered.
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, mtadForFile, runCli } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

const LIMIT = 10000;
const mtad = mtadForFile({
  users: ['alice', 'bob'],
  env: { MTAD_MAILBOX_SIZE_LIMIT: String(LIMIT), MTAD_MAX_MESSAGE_SIZE: '4096', MTAD_RETRY_MIN_DELAY: '0.5', MTAD_RETRY_MAX_DELAY: '1' },
});

// About 3 KB in the mailbox each: three fit under 10000 bytes, a fourth does not.
const message = (subject: string): string => `From: carol@remote.test\nSubject: ${subject}\n\n${'x'.repeat(70).concat('\n').repeat(40)}`;

async function session(): Promise<SmtpClient> {
  const c = await SmtpClient.connect(mtad().port);
  await c.cmd('HELO client.test');
  await c.cmd('MAIL FROM:<carol@remote.test>');
  return c;
}

async function send(to: string[], subject: string): Promise<{ code: number; raw: string; id?: string }> {
  const c = await SmtpClient.connect(mtad().port);
  await c.cmd('HELO client.test');
  const r = await c.send('carol@remote.test', to, message(subject));
  await c.quit();
  return { ...r, id: /queued as (\w+)/.exec(r.raw)?.[1] };
}

/** The message left waiting for alice (the second test), delivered in the third. */
let waiting = '';
const subjects = (user: string): string[] => (fs.existsSync(mtad().mailbox(user)) ? readMbox(mtad().mailbox(user)).map((m) => m.header('Subject')!) : []);

describe('mailbox size limit', () => {
  it('never writes a message that would take the mailbox over the limit', async () => {
    for (const s of ['one', 'two', 'three']) expect((await send(['alice'], s)).code).toBe(250);
    const before = fs.readFileSync(mtad().mailbox('alice'));
    expect(before.length).toBeLessThan(LIMIT);
    // Under the limit, so RCPT is accepted; the message itself does not fit: 452 at the end of DATA.
    const r = await send(['alice'], 'four');
    expect(r.raw).toMatch(/^452 4\.2\.2 Mailbox full\r\n$/);
    expect(fs.readFileSync(mtad().mailbox('alice'))).toEqual(before);
    expect(fs.readdirSync(`${mtad().queue}/active`)).toEqual([]);
  });

  it('delivers to the recipients with room and keeps the message for the one without', async () => {
    const r = await send(['alice', 'bob'], 'five');
    expect(r.code).toBe(250);
    waiting = r.id!;
    expect(subjects('bob')).toEqual(['five']);
    await mtad().waitForLog(new RegExp(`${r.id}: to=<alice@${HOSTNAME}>, relay=local, .*dsn=4\\.2\\.2, status=deferred \\(mailbox alice is full`));
    expect(subjects('alice')).toEqual(['one', 'two', 'three']);
  });

  it('answers 452 4.2.2 at RCPT once the mailbox is at the limit, and accepts again after the user empties it', async () => {
    // Another program (procmail, a reader's save) takes the mailbox over the limit.
    fs.appendFileSync(mtad().mailbox('alice'), `From someone  Mon Jan  5 10:00:00 2026\nSubject: filler\n\n${'y'.repeat(LIMIT)}\n\n`);
    const c = await session();
    const r = await c.cmd('RCPT TO:<alice@lab.test>');
    expect(r.raw).toBe('452 4.2.2 <alice@lab.test>: Mailbox full\r\n');
    expect((await c.cmd('RCPT TO:<bob>')).code).toBe(250);
    await c.quit();
    await mtad().waitForLog(/NOQUEUE: reject: RCPT from .*: 452 4\.2\.2 <alice@lab\.test>: Mailbox full/);
    expect(runCli('mta-users', [], mtad().cliEnv()).stdout).toMatch(new RegExp(`^alice\\s+no\\s+\\d+\\s+${LIMIT} \\(full\\)\\s+Alice Test$`, 'm'));

    // The user empties the mailbox (as a POP3 client that deletes everything would).
    fs.truncateSync(mtad().mailbox('alice'), 0);
    const again = await session();
    expect((await again.cmd('RCPT TO:<alice@lab.test>')).code).toBe(250);
    await again.quit();
    await mtad().waitForLog(new RegExp(`${waiting}: to=<alice@${HOSTNAME}>, relay=local, .*status=sent`));
    expect(subjects('alice')).toEqual(['five']);
    expect(runCli('mta-users', [], mtad().cliEnv()).stdout).toMatch(new RegExp(`^alice\\s+no\\s+\\d+\\s+${LIMIT}\\s+Alice Test$`, 'm'));
  });

  it('mtad --check refuses a message size limit above the mailbox limit, with the reason', () => {
    const r = runCli('mtad', ['--check'], { ...mtad().cliEnv(), MTAD_MAX_MESSAGE_SIZE: '20000' });
    expect(r.status).toBe(78);
    expect(r.stderr).toBe(`mtad: config: MTAD_MAX_MESSAGE_SIZE: "20000" is above MTAD_MAILBOX_SIZE_LIMIT (${LIMIT}): ` +
      'a message that big could never be delivered (lower it, or raise MTAD_MAILBOX_SIZE_LIMIT; 0 = no mailbox limit)\n');
  });
});
