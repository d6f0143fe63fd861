// The lab sheet's session, typed as a student types it, against a real mtad;
// the mailbox is read back with Python's mailbox module.
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, mtadForFile } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';

const mtad = mtadForFile({ users: ['alice', 'bob'] });

describe('the lab session, by hand', () => {
  it('accepts the telnet transcript and appends it to both mailboxes', async () => {
    const c = await SmtpClient.connect(mtad().port);
    expect(c.greeting.raw).toBe(`220 ${HOSTNAME} ESMTP mtad\r\n`);
    const typed: Array<[string, RegExp]> = [
      ['HELO polimi.it', new RegExp(`^250 ${HOSTNAME}\r\n$`)],
      ['MAIL FROM: tode@cremona.polimi.it', /^250 2\.1\.0 /],
      [`RCPT TO: alice@${HOSTNAME}`, /^250 2\.1\.5 /],
      ['RCPT TO: bob', /^250 2\.1\.5 /],
      ['DATA', /^354 /],
    ];
    for (const [line, want] of typed) expect((await c.cmd(line)).raw).toMatch(want);
    const body = [
      'From: "Carlo Todeschini" <tode@cremona.polimi.it>',
      'To: alice',
      'Subject: Prova di invio',
      '',
      "Questo e' un test di invio di una e-mail tramite protocollo SMTP.",
    ];
    c.write(body.map((l) => `${l}\r\n`).join(''));
    const queued = await c.cmd('.');
    expect(queued.raw).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]{10}\r\n$/);
    const id = /queued as (\w+)/.exec(queued.raw)![1];
    expect((await c.cmd('QUIT')).raw).toMatch(/^221 2\.0\.0 /);
    c.close();

    for (const user of ['alice', 'bob']) {
      const msgs = readMbox(mtad().mailbox(user));
      expect(msgs).toHaveLength(1);
      const m = msgs[0];
      expect(m.from_).toMatch(/^tode@cremona\.polimi\.it  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$/);
      expect(m.header('Return-Path')).toBe('<tode@cremona.polimi.it>');
      expect(m.header('Delivered-To')).toBe(`${user}@${HOSTNAME}`);
      const received = m.header('Received')!;
      expect(received).toContain('from polimi.it');
      expect(received).toContain('[127.0.0.1]');
      expect(received).toContain(`by ${HOSTNAME}`);
      expect(received).toContain(`id ${id}`);
      expect(m.header('Subject')).toBe('Prova di invio');
      // The message itself, byte for byte, after our three trace lines.
      const text = m.raw.toString('latin1');
      expect(text.slice(text.indexOf('From: "Carlo'))).toBe(`${body.join('\n')}\n`);
    }
    // The mailbox as `cat` shows it: From_ line first, entry ends with an empty line.
    const file = fs.readFileSync(mtad().mailbox('alice'), 'latin1');
    expect(file.startsWith('From tode@cremona.polimi.it  ')).toBe(true);
    expect(file.endsWith("tramite protocollo SMTP.\n\n")).toBe(true);
    // One log line per event, keyed by the queue id.
    await mtad().waitForLog(new RegExp(`${id}: to=<alice@${HOSTNAME}>, relay=local, .*status=sent`));
    await mtad().waitForLog(new RegExp(`${id}: from=<tode@cremona.polimi.it>, size=\\d+, nrcpt=2|${id}: client=.*from=<tode@cremona.polimi.it>, size=\\d+, nrcpt=2`));
  });

  it.skipIf(needsRoot('giving up root', 'the drop only exists when started as root'))('gives up root before serving clients', () => {
    const status = fs.readFileSync(`/proc/${mtad().pid}/status`, 'utf8');
    const uids = /^Uid:\s+(.*)$/m.exec(status)![1].split(/\s+/).map(Number);
    const gids = /^Gid:\s+(.*)$/m.exec(status)![1].split(/\s+/).map(Number);
    const groups = (/^Groups:\s*(.*)$/m.exec(status)![1].trim() || '').split(/\s+/).filter(Boolean).map(Number);
    expect(uids.every((u) => u !== 0)).toBe(true);
    expect(gids.every((g) => g !== 0)).toBe(true);
    expect(groups).not.toContain(0);
    // and it is the spool's owner it became
    expect(uids[0]).toBe(fs.statSync(mtad().spool).uid);
  });
});
