// When mail cannot be delivered: the queue lifetime, RFC 3464 bounces and delay
// warnings, where a remote sender's bounce goes, a user removed while its mail
// waited, and no bounce loops. Mailboxes are held with liblockfile's dotlockfile,
// as a mail reader holds them; the reports are read back with Python's mailbox
// and email packages.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Dsn, readDsns, readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, mtadForFile, runCli } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

const USERS = ['alice', 'bob'];
const WAIT = 60000;
// A lifetime of a few seconds; retries (and lock waits) short enough to reach it.
const SHORT = { MTAD_MAX_QUEUE_LIFETIME: '3', MTAD_LOCK_TIMEOUT: '0.2', MTAD_RETRY_MIN_DELAY: '0.3', MTAD_RETRY_MAX_DELAY: '1' };
const warned = mtadForFile({ users: USERS, env: { ...SHORT, MTAD_DELAY_WARNING: '1' } });
const short = mtadForFile({ users: USERS, env: SHORT });
// Nothing retried unless mta-queue asks; the default lifetime (5 days).
const long = mtadForFile({ users: USERS, env: { MTAD_LOCK_TIMEOUT: '0.2', MTAD_RETRY_MIN_DELAY: '3600', MTAD_RETRY_MAX_DELAY: '3600' } });

const lock = (m: Mtad, user: string): void => {
  const r = spawnSync('dotlockfile', ['-l', '-r', '0', `${m.mailbox(user)}.lock`], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
};
const unlock = (m: Mtad, user: string): void => {
  const r = spawnSync('dotlockfile', ['-u', `${m.mailbox(user)}.lock`], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
};
const dsns = (m: Mtad, user: string): Dsn[] => (fs.existsSync(m.mailbox(user)) ? readDsns(m.mailbox(user)) : []);
const about = (list: Dsn[], id: string): Dsn[] => list.filter((d) => d.status[0]['X-Mtad-Queue-ID'] === id);

async function send(m: Mtad, from: string, to: string[], subject: string): Promise<string> {
  const c = await SmtpClient.connect(m.port);
  await c.cmd('HELO client.test');
  const r = await c.send(from, to, `From: ${from || 'nobody@remote.test'}\nSubject: ${subject}\nMessage-ID: <${subject}@client.test>\n\nhello\n`);
  await c.quit();
  expect(r.code, r.raw).toBe(250);
  return /queued as (\w+)/.exec(r.raw)![1];
}

/** The id of the report the log says message `id` caused, waiting for the line. */
async function notification(m: Mtad, id: string, kind: string): Promise<string> {
  const line = await m.waitForLog(new RegExp(`${id}: ${kind} notification: (\\w+)`), WAIT);
  return new RegExp(`${kind} notification: (\\w+)`).exec(line)![1];
}

function expectReport(d: Dsn, action: 'failed' | 'delayed'): void {
  expect(d.content_type).toBe('multipart/report');
  expect(d.report_type).toBe('delivery-status');
  expect(d.parts).toEqual(['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
  expect(d.defects).toEqual([]);
  expect(d.headers['From']).toBe(`MAILER-DAEMON@${HOSTNAME}`);
  expect(d.headers['Auto-Submitted']).toBe('auto-replied');
  expect(d.headers['Return-Path']).toBe('<>');
  expect(d.status[0]['Reporting-MTA']).toBe(`dns; ${HOSTNAME}`);
  expect(d.status[0]['Arrival-Date']).toBeTruthy();
  for (const r of d.status.slice(1)) expect(r['Action']).toBe(action);
}

describe('queue lifetime (MTAD_MAX_QUEUE_LIFETIME) and delay warnings (MTAD_DELAY_WARNING)', () => {
  it('warns a local sender, then returns the expired message to it as an RFC 3464 report', async () => {
    const m = warned();
    lock(m, 'alice');
    try {
      const id = await send(m, `bob@${HOSTNAME}`, ['alice+lab3'], 'expires');
      const warning = await notification(m, id, 'sender delay');
      await m.waitForLog(new RegExp(`${id}: to=<alice\\+lab3@${HOSTNAME}>, relay=local, delay=[\\d.]+, dsn=4\\.2\\.0, status=expired, returned to sender \\(mailbox alice is locked`), WAIT);
      const bounce = await notification(m, id, 'sender non-delivery');
      await m.waitForLog(new RegExp(`${id}: removed`), WAIT);
      await m.waitForLog(new RegExp(`${bounce}: to=<bob@${HOSTNAME}>, relay=local, .*status=sent`), WAIT);

      const reports = about(dsns(m, 'bob'), id);
      expect(reports.map((d) => d.headers['Subject'])).toEqual(['Delayed Mail (still being retried)', 'Undelivered Mail Returned to Sender']);
      const [delayed, failed] = reports;
      expectReport(delayed, 'delayed');
      expect(delayed.status[1]['Will-Retry-Until']).toBeTruthy();
      expect(delayed.text).toContain('nothing needs to be sent again');
      expect(delayed.headers['Received']).toContain(`id ${warning}`);
      expectReport(failed, 'failed');
      expect(failed.headers['To']).toBe(`bob@${HOSTNAME}`);
      expect(failed.status).toHaveLength(2);
      expect(failed.status[1]).toMatchObject({
        'Final-Recipient': `rfc822; alice+lab3@${HOSTNAME}`,
        'Original-Recipient': `rfc822; alice+lab3@${HOSTNAME}`,
        Action: 'failed',
        Status: '4.2.0',
      });
      expect(failed.status[1]['Diagnostic-Code']).toMatch(/^X-mtad; mailbox alice is locked by another program \(dotlock\) \(gave up after \d+s in the queue\)$/);
      expect(failed.original_headers).toContain('Message-ID: <expires@client.test>');
      expect(failed.original_headers).toMatch(new RegExp(`^Received: from client\\.test [^]* id ${id}\n`));
      // The message itself was never written anywhere.
      expect(readMbox(m.mailbox('alice'))).toEqual([]);
      expect(runCli('mta-queue', [], m.cliEnv()).stdout).toBe('mail queue is empty\n');
    } finally {
      unlock(m, 'alice');
    }
  });

  it('gives a remote sender\'s bounce to postmaster, saying why, and sends it no delay warning', async () => {
    const m = warned();
    lock(m, 'alice');
    try {
      const id = await send(m, 'carol@remote.test', ['alice'], 'remote');
      const bounce = await notification(m, id, 'sender non-delivery');
      const line = await m.waitForLog(new RegExp(`${id}: sender non-delivery notification`));
      expect(line).toContain(`(to postmaster: the sender <carol@remote.test> is not a local user)`);
      await m.waitForLog(new RegExp(`${id}: to=<alice@${HOSTNAME}>, relay=local, .*status=expired, returned to postmaster`));
      await m.waitForLog(new RegExp(`${bounce}: to=<postmaster@${HOSTNAME}>, relay=local, .*status=sent`), WAIT);
      expect(m.output()).not.toMatch(new RegExp(`${id}: sender delay notification`));

      const [report, ...more] = about(dsns(m, 'postmaster'), id);
      expect(more).toEqual([]);
      expectReport(report, 'failed');
      expect(report.headers['To']).toBe(`postmaster@${HOSTNAME}`);
      expect(report.headers['Subject']).toBe('Postmaster Copy: Undelivered Mail');
      expect(report.text).toContain('This report goes to postmaster because the sender <carol@remote.test> is not a local user.');
      expect(report.text).toContain('it never sends mail to another one');
      expect(report.status[0]['X-Mtad-Sender']).toBe('rfc822; carol@remote.test');
      expect(report.status[1]).toMatchObject({ 'Final-Recipient': `rfc822; alice@${HOSTNAME}`, Action: 'failed', Status: '4.2.0' });
    } finally {
      unlock(m, 'alice');
    }
  });
});

describe('a user removed while its mail waited', () => {
  it('is a bounce with 5.1.1 to the sender, not a silent drop; mta-queue shows it; the other recipient still gets the message', async () => {
    const m = long();
    lock(m, 'alice');
    lock(m, 'bob');
    let id = '';
    let bounce = '';
    try {
      id = await send(m, `bob@${HOSTNAME}`, ['alice', 'bob'], 'removed');
      await m.waitForLog(new RegExp(`${id}: queued for retry`));
      expect(runCli('mta-queue', [], m.cliEnv()).stdout).toMatch(/expires in (4d23h|5d00h): then bounced\n/);
      const del = runCli('mta-deluser', ['alice'], m.cliEnv());
      expect(del.status, del.stderr).toBe(0);
      // mtad sees the users file change by itself: wait until it refuses alice.
      for (let i = 0; ; i++) {
        const c = await SmtpClient.connect(m.port);
        await c.cmd('HELO client.test');
        await c.cmd('MAIL FROM:<>');
        const r = await c.cmd('RCPT TO:<alice>');
        await c.quit();
        if (r.code === 550) break;
        expect(i).toBeLessThan(200);
        await new Promise((res) => setTimeout(res, 100));
      }
      unlock(m, 'alice');
      runCli('mta-queue', ['--flush'], m.cliEnv());
      await m.waitForLog(new RegExp(`${id}: to=<alice@${HOSTNAME}>, relay=local, .*dsn=5\\.1\\.1, status=bounced \\(user unknown: removed since the message was queued\\)`), WAIT);
      bounce = await notification(m, id, 'sender non-delivery');
      // bob's mailbox is still locked: the message waits for bob, the bounce too; alice is marked as bounced.
      await m.waitForLog(new RegExp(`${bounce}: queued for retry`), WAIT);
      await m.waitForLog(new RegExp(`${id}: to=<bob@${HOSTNAME}>, relay=local, .*status=deferred`), WAIT);
      const listed = runCli('mta-queue', [], m.cliEnv()).stdout;
      expect(listed).toContain(`-> <alice@${HOSTNAME}> (bounced: 5.1.1 user unknown: removed since the message was queued)\n`);
      expect(listed).toMatch(new RegExp(`-> <bob@${HOSTNAME}>\n`));
      expect(listed).toMatch(new RegExp(`${bounce} .* <>\n`));
    } finally {
      unlock(m, 'bob');
    }
    runCli('mta-queue', ['--flush'], m.cliEnv());
    await m.waitForLog(new RegExp(`${id}: removed`), WAIT);
    await m.waitForLog(new RegExp(`${bounce}: removed`), WAIT);
    const [report] = about(dsns(m, 'bob'), id);
    expectReport(report, 'failed');
    expect(report.status.slice(1)).toEqual([expect.objectContaining({
      'Final-Recipient': `rfc822; alice@${HOSTNAME}`, Action: 'failed', Status: '5.1.1',
      'Diagnostic-Code': 'X-mtad; user unknown: removed since the message was queued',
    })]);
    expect(readMbox(m.mailbox('bob')).map((x) => x.header('Subject')).sort()).toEqual(['Undelivered Mail Returned to Sender', 'removed']);
    expect(runCli('mta-queue', [], m.cliEnv()).stdout).toBe('mail queue is empty\n');
  });
});

describe('no bounce loops', () => {
  it('a bounce its local sender cannot take goes to postmaster once', async () => {
    const m = short();
    lock(m, 'alice');
    lock(m, 'bob');
    try {
      const id = await send(m, `bob@${HOSTNAME}`, ['alice'], 'bouncing-sender');
      const bounce = await notification(m, id, 'sender non-delivery');
      await m.waitForLog(new RegExp(`${bounce}: to=<bob@${HOSTNAME}>, relay=local, .*status=expired, reported to postmaster`), WAIT);
      const notice = await notification(m, bounce, 'postmaster non-delivery');
      await m.waitForLog(new RegExp(`${notice}: to=<postmaster@${HOSTNAME}>, relay=local, .*status=sent`), WAIT);
      await m.waitForLog(new RegExp(`${bounce}: removed`), WAIT);
      const [report, ...more] = about(dsns(m, 'postmaster'), bounce);
      expect(more).toEqual([]);
      expectReport(report, 'failed');
      expect(report.text).toContain(`because the report to <bob@${HOSTNAME}> could not be delivered`);
      expect(report.status[0]['X-Mtad-Sender']).toBeUndefined();
      expect(report.status[1]).toMatchObject({ 'Final-Recipient': `rfc822; bob@${HOSTNAME}`, Action: 'failed' });
      expect(report.original_headers).toContain('Subject: Undelivered Mail Returned to Sender');
    } finally {
      unlock(m, 'alice');
      unlock(m, 'bob');
    }
  });

  it('mail with a null sender goes to postmaster once; when postmaster cannot take that either, it is dropped with a log line', async () => {
    const m = short();
    lock(m, 'alice');
    lock(m, 'postmaster');
    const before = dsns(m, 'postmaster').length;
    try {
      const id = await send(m, '', ['alice'], 'null-sender');
      await m.waitForLog(new RegExp(`${id}: to=<alice@${HOSTNAME}>, relay=local, .*status=expired, reported to postmaster`), WAIT);
      const notice = await notification(m, id, 'postmaster non-delivery');
      await m.waitForLog(new RegExp(`${notice}: to=<postmaster@${HOSTNAME}>, relay=local, .*status=expired, discarded`), WAIT);
      await m.waitForLog(new RegExp(`${notice}: undeliverable postmaster notification discarded`), WAIT);
      await m.waitForLog(new RegExp(`${notice}: removed`), WAIT);
      expect(m.output()).not.toMatch(new RegExp(`${notice}: \\w+ non-delivery notification`));
      expect(runCli('mta-queue', [], m.cliEnv()).stdout).toBe('mail queue is empty\n');
    } finally {
      unlock(m, 'alice');
      unlock(m, 'postmaster');
    }
    expect(dsns(m, 'postmaster')).toHaveLength(before);
  });
});
