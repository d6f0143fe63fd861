// Address extensions (MTAD_RECIPIENT_DELIMITER): alice+lab3 is delivered to
// alice with Delivered-To keeping the whole address; an alias with the extension
// is looked up before the alias without it; an empty delimiter turns them off.
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, mtadForFile } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

const ALIASES = 'MAILER-DAEMON: postmaster\nlab: alice, bob\nlab+grades: carol\n';
const withPlus = mtadForFile({ users: ['alice', 'bob', 'carol'], aliases: ALIASES });
const without = mtadForFile({ users: ['alice', 'bob', 'carol'], aliases: ALIASES, env: { MTAD_RECIPIENT_DELIMITER: '' } });

async function send(port: number, to: string, subject: string): Promise<{ code: number; raw: string }> {
  const c = await SmtpClient.connect(port);
  await c.cmd('HELO client.test');
  const r = await c.send('carol@remote.test', [to], `From: carol@remote.test\nSubject: ${subject}\n\nhello\n`);
  await c.quit();
  return r;
}

/** Delivered-To of the message with this subject in `user`'s mailbox, or null. */
function deliveredTo(box: string, subject: string): string | null {
  return readMbox(box).find((m) => m.header('Subject') === subject)?.header('Delivered-To') ?? null;
}

describe('address extensions, delimiter "+" (the default)', () => {
  it.each([
    ['alice+lab3@lab.test', 'alice', 'plain', `alice+lab3@${HOSTNAME}`],
    ['Alice+Tag@LAB.TEST', 'alice', 'case', `alice+tag@${HOSTNAME}`],
    ['alice+lab3', 'alice', 'bare', `alice+lab3@${HOSTNAME}`],
  ])('%s is delivered to %s with the whole address in Delivered-To', async (to, user, subject, want) => {
    const m = withPlus();
    expect((await send(m.port, to, subject)).code).toBe(250);
    expect(deliveredTo(m.mailbox(user), subject)).toBe(want);
  });

  it('matches an alias with its extension first, then the alias without it (the extension goes on to its users)', async () => {
    const m = withPlus();
    expect((await send(m.port, 'lab+grades@lab.test', 'grades')).code).toBe(250);
    expect(deliveredTo(m.mailbox('carol'), 'grades')).toBe(`carol@${HOSTNAME}`);
    expect(deliveredTo(m.mailbox('alice'), 'grades')).toBeNull();
    expect((await send(m.port, 'Lab+Week2', 'week2')).code).toBe(250);
    expect(deliveredTo(m.mailbox('alice'), 'week2')).toBe(`alice+week2@${HOSTNAME}`);
    expect(deliveredTo(m.mailbox('bob'), 'week2')).toBe(`bob+week2@${HOSTNAME}`);
    expect(deliveredTo(m.mailbox('carol'), 'week2')).toBeNull();
  });

  it('still refuses an unknown user with an extension, naming the address as written', async () => {
    const r = await send(withPlus().port, 'eve+x@lab.test', 'eve');
    expect(r.raw).toMatch(/^550 5\.1\.1 <eve\+x@lab\.test>: Recipient address rejected: User unknown/);
  });
});

describe('address extensions turned off (MTAD_RECIPIENT_DELIMITER empty)', () => {
  it('refuses alice+lab3 as an unknown user, but an alias named with "+" still works', async () => {
    const m = without();
    expect((await send(m.port, 'alice+lab3@lab.test', 'off')).raw).toMatch(/^550 5\.1\.1 <alice\+lab3@lab\.test>/);
    expect((await send(m.port, 'lab+x', 'off')).raw).toMatch(/^550 5\.1\.1 <lab\+x>/);
    expect((await send(m.port, 'lab+grades', 'exact')).code).toBe(250);
    expect(deliveredTo(m.mailbox('carol'), 'exact')).toBe(`carol@${HOSTNAME}`);
  });
});
