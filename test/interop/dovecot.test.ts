// Dovecot (POP3 and IMAP) serving mtad's spool as each user's mbox INBOX, as the
// school's server does for the lab: Python's poplib and imaplib must see every
// message byte for byte, and Dovecot expunging messages while mtad appends to
// the same mbox must corrupt nothing. Dovecot has to start as root (it switches
// to the mail user itself), so this file needs root, as CI has.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { Dovecot, DOVECOT_PASSWORD, python, startDovecot, withoutTrace } from './tools';

const crlf = (b: Buffer): string => b.toString('latin1').replace(/\n/g, '\r\n');

describe.skipIf(needsRoot('Dovecot on the spool', 'Dovecot starts as root and switches to the mail user itself'))('Dovecot on the spool', () => {
  let mtad: Mtad;
  let dovecot: Dovecot;
  // What Python's mailbox read before Dovecot ever opened the mailbox.
  let before: Buffer[];

  beforeAll(async () => {
    // Retries come quickly, in case Dovecot holds a mailbox when mtad wants it.
    mtad = await startMtad({ users: ['alice', 'bob'], env: { MTAD_RETRY_MIN_DELAY: '0.2', MTAD_RETRY_MAX_DELAY: '1' } });
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.example.org');
    const big = crypto.randomBytes(300 * 1024).toString('base64').replace(/.{76}/g, '$&\n');
    const messages: Array<[string, string]> = [
      ['carol@example.org', 'Subject: p1 plain\n\nHello.\n'],
      ['carol@example.org', 'Subject: p2 dots and From\n\n.\n..leading dots\nFrom a line\n>From quoted\n'],
      ['', 'Subject: p3 null sender\nContent-Type: text/plain; charset=utf-8\n\nPerché così? € 日本語\n'],
      ['carol@example.org', `Subject: p4 300 KiB\n\n${big}\n`],
      ['carol@example.org', 'Subject: p5 blank tail\n\nend\n\n\n'],
    ];
    for (const [from, text] of messages) expect((await c.send(from, [`alice@${HOSTNAME}`], Buffer.from(text))).code).toBe(250);
    await c.quit();
    before = readMbox(mtad.mailbox('alice')).map((m) => m.raw);
    expect(before).toHaveLength(messages.length);
    dovecot = await startDovecot(mtad.dir, mtad.spool, ['alice', 'bob']);
  });

  afterAll(async () => {
    await dovecot?.stop();
    if (mtad) {
      const { code } = await mtad.stop();
      expect(code).toBe(0);
      removeInstance(mtad.dir);
    }
  });

  it('poplib (RETR) and imaplib (BODY[]) see every message byte for byte', async () => {
    const got = await python<{ pop3: string[]; pop3_sizes: number[]; imap: string[] }>(
      'fetch_all.py', [String(dovecot.pop3), String(dovecot.imap), 'alice', DOVECOT_PASSWORD]);
    const want = before.map(crlf);
    expect(got.pop3.map((b) => Buffer.from(b, 'base64').toString('latin1'))).toEqual(want);
    expect(got.imap.map((b) => Buffer.from(b, 'base64').toString('latin1'))).toEqual(want);
    expect(got.pop3_sizes).toEqual(want.map((w) => w.length));
  });

  it('Dovecot deleting through IMAP and POP3 while mtad delivers corrupts nothing', async () => {
    const body = (n: number): string => Array.from({ length: 200 }, (_, k) =>
      `message ${n} line ${k} ${crypto.createHash('sha256').update(`${n}/${k}`).digest('hex')}\n`).join('') + `From inside message ${n}\n`;
    const sent: string[] = [];
    const ids: string[] = [];
    let next = 0;
    const sendOne = async (c: SmtpClient): Promise<void> => {
      const n = next++;
      const r = await c.send('carol@example.org', [`bob@${HOSTNAME}`], Buffer.from(`Subject: d-${n}\n\n${body(n)}`));
      expect(r.code).toBe(250);
      ids.push(/queued as (\w+)/.exec(r.lines[0])![1]);
      sent.push(`d-${n}`);
    };
    const session = async (more: () => boolean): Promise<void> => {
      const c = await SmtpClient.connect(mtad.port);
      await c.cmd('EHLO client.example.org');
      while (more()) await sendOne(c);
      await c.quit();
    };
    // A few messages first, so that the first round has something to delete.
    await session(() => next < 6);
    // Then the deleter, in rounds, until two senders have delivered 150 more.
    const stopFile = path.join(mtad.dir, 'deliveries-done');
    const deleter = python<{ deleted: string[]; rounds: number }>('delete_while.py',
      [String(dovecot.imap), String(dovecot.pop3), 'bob', DOVECOT_PASSWORD, stopFile, '4']);
    await Promise.all([session(() => next < 156), session(() => next < 156)]);
    fs.writeFileSync(stopFile, '');
    const { deleted, rounds } = await deleter;
    expect(rounds).toBeGreaterThanOrEqual(4);
    expect(deleted.length).toBeGreaterThan(0);
    // Every accepted message is delivered (at once, or after a retry if Dovecot held the mailbox).
    for (const id of ids) await mtad.waitForLog(new RegExp(`${id}: removed`), 30000);

    // Dovecot keeps its UIDVALIDITY in a pseudo message at the top once it has
    // rewritten the mbox; it is Dovecot's, and hidden from its own clients.
    const all = readMbox(mtad.mailbox('bob'));
    const internal = all.filter((m) => m.header('Subject') === "DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA");
    expect(internal.length).toBeLessThanOrEqual(1);
    if (internal.length) expect(all[0]).toBe(internal[0]);
    const msgs = all.filter((m) => !internal.includes(m));
    const present = msgs.map((m) => m.header('Subject')!);
    // Nothing lost, nothing doubled, nothing foreign: each message mtad accepted is
    // in the mailbox once, or was deleted through Dovecot.
    expect(new Set(present).size).toBe(present.length);
    expect(present.filter((s) => !sent.includes(s))).toEqual([]);
    expect(sent.filter((s) => !present.includes(s) && !deleted.includes(s))).toEqual([]);
    // Deleted messages may be present too: Dovecot 2.3.19 sometimes brings back a
    // message whose expunge it confirmed, when an append lands during the
    // expunge. Its own dovecot-lda and Python's locked mailbox.add make it do the
    // same (measured; see the closing note of issue 5), so that is Dovecot's.
    // Whatever is present must be whole.
    for (const m of msgs) {
      const n = Number(m.header('Subject')!.slice(2));
      expect(m.body.toString('latin1')).toBe(body(n).replace('\nFrom inside', '\n>From inside'));
      expect(m.header('Return-Path')).toBe('<carol@example.org>');
      expect(m.from_).toMatch(/^carol@example\.org {2}\w{3} \w{3} /);
    }
    expect(fs.existsSync(`${mtad.mailbox('bob')}.lock`)).toBe(false);

    // Dovecot reads the result back as cleanly.
    const got = await python<{ pop3: string[]; imap: string[] }>('fetch_all.py', [String(dovecot.pop3), String(dovecot.imap), 'bob', DOVECOT_PASSWORD]);
    expect(got.pop3).toHaveLength(msgs.length);
    expect(got.imap).toHaveLength(msgs.length);
    const after = readMbox(mtad.mailbox('bob')).filter((m) => m.header('Subject')!.startsWith('d-'));
    got.imap.forEach((b, i) => {
      const text = Buffer.from(b, 'base64').toString('latin1');
      expect(text.slice(text.indexOf('\r\n\r\n') + 4)).toBe(crlf(after[i].body));
      expect(withoutTrace(Buffer.from(text.replace(/\r\n/g, '\n'), 'latin1'))).not.toBeNull();
    });
    expect(dovecot.log()).not.toMatch(/Error|Panic|Fatal|corrupt/i);
  });
});
