// What lands in the mailbox: exact bytes, mbox quoting, many writers at once,
// and mail that waits in the queue when a mailbox cannot be written.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { makeInstance, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';
import { watchOutput } from '../helpers/wait';

let mtad: Mtad;
beforeAll(async () => { mtad = await startMtad({ users: ['alice', 'bob', 'dave', 'erin'] }); });
afterAll(async () => { await mtad.stop(); removeInstance(mtad.dir); });

async function sendOne(to: string, message: Buffer | string, port = mtad.port): Promise<string> {
  const c = await SmtpClient.connect(port);
  await c.cmd('EHLO client.example');
  const r = await c.send('sender@remote.example', [to], message);
  await c.quit();
  expect(r.code, r.raw).toBe(250);
  return /queued as (\w+)/.exec(r.raw)![1];
}

describe('mailbox contents', () => {
  it('keeps an 8-bit latin-1 body byte for byte', async () => {
    const body = Buffer.concat([
      Buffer.from('Subject: latin1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
      Buffer.from('Perch\xe9 cos\xec? \xc0 bient\xf4t, \xdcber \xa9 \xff\xfe\x80\x81\r\n', 'latin1'),
      Buffer.from(Array.from({ length: 256 }, (_, i) => i).filter((b) => b !== 10 && b !== 13)),
      Buffer.from('\r\n'),
    ]);
    await sendOne('bob', body);
    const m = readMbox(mtad.mailbox('bob')).find((x) => x.header('Subject') === 'latin1')!;
    const want = Buffer.from(body.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
    expect(m.raw.subarray(m.raw.indexOf('Subject: latin1'))).toEqual(want);
  });

  it('quotes From lines (mboxrd), unstuffs dots, and keeps one message', async () => {
    const body = 'Subject: quoting\r\n\r\nFrom x\r\n>From x\r\n>>From y\r\n.\r\n..\r\n.x\r\nFrom\r\nend\r\n';
    // SmtpClient.data dot-stuffs, as every client must: "." goes as "..", ".." as "..."
    await sendOne('dave', body);
    const msgs = readMbox(mtad.mailbox('dave'));
    expect(msgs).toHaveLength(1);
    expect(msgs[0].body.toString('latin1')).toBe('>From x\n>>From x\n>>>From y\n.\n..\n.x\nFrom\nend\n');
    // and the raw file, as cat shows it
    const file = fs.readFileSync(mtad.mailbox('dave'), 'latin1');
    expect(file.match(/^From /gm)).toHaveLength(1);
  });

  it('streams a message larger than memory keeps (1.5 MiB) into the mailbox exactly', async () => {
    const payload = crypto.randomBytes(1100 * 1024).toString('base64').replace(/.{76}/g, '$&\r\n');
    const body = `Subject: big\r\nContent-Transfer-Encoding: base64\r\n\r\n${payload}\r\n`;
    await sendOne('erin', body);
    const m = readMbox(mtad.mailbox('erin')).find((x) => x.header('Subject') === 'big')!;
    expect(m.body.toString('latin1')).toBe(`${payload.replace(/\r\n/g, '\n')}\n`);
    expect(fs.readdirSync(path.join(mtad.queue, 'tmp'))).toEqual([]);
    expect(fs.readdirSync(path.join(mtad.queue, 'active'))).toEqual([]);
  });

  it('delivers 20 connections x 10 messages to one mailbox as exactly 200 whole messages', async () => {
    const tokens = new Set<string>();
    await Promise.all(Array.from({ length: 20 }, async (_, conn) => {
      const c = await SmtpClient.connect(mtad.port);
      await c.cmd('EHLO client.example');
      for (let i = 0; i < 10; i++) {
        const token = `tok-${conn}-${i}-${crypto.randomBytes(4).toString('hex')}`;
        const r = await c.send('load@remote.example', ['alice'], `Subject: ${token}\r\n\r\n${token}\r\nFrom the middle\r\n${'line\r\n'.repeat(i * 20)}`);
        expect(r.code, r.raw).toBe(250);
        tokens.add(token);
      }
      await c.quit();
    }));
    const msgs = readMbox(mtad.mailbox('alice')).filter((m) => m.header('Subject')?.startsWith('tok-'));
    expect(msgs).toHaveLength(200);
    expect(new Set(msgs.map((m) => m.header('Subject')))).toEqual(tokens);
    for (const m of msgs) {
      const token = m.header('Subject')!;
      const i = Number(token.split('-')[2]);
      expect(m.body.toString()).toBe(`${token}\n>From the middle\n${'line\n'.repeat(i * 20)}`);
    }
  });
});

describe('a mailbox that cannot be written now', () => {
  let q: Mtad;
  beforeAll(async () => {
    q = await startMtad({ users: ['alice', 'bob'], env: { MTAD_LOCK_TIMEOUT: '0.3', MTAD_RETRY_MIN_DELAY: '0.5', MTAD_RETRY_MAX_DELAY: '1' } });
  });
  afterAll(async () => { await q.stop(); removeInstance(q.dir); });

  it('still answers 250 (the message is fsync\'d in the queue) and delivers once the lock is released', async () => {
    const box = q.mailbox('alice');
    fs.writeFileSync(box, '');
    fs.chownSync(box, fs.statSync(q.spool).uid, fs.statSync(q.spool).gid);
    // Another program (Python's fcntl, as mutt or mailx would) holds the mailbox until told to stop.
    const holder = spawn('python3', ['-c', [
      'import fcntl, sys',
      `f = open(${JSON.stringify(box)}, "a")`,
      'fcntl.lockf(f, fcntl.LOCK_EX)',
      'print("locked", flush=True)',
      'sys.stdin.readline()',
    ].join('\n')], { stdio: ['pipe', 'pipe', 'inherit'] });
    let id: string;
    try {
      await watchOutput(holder, 'the Python lock holder').next(/locked/);
      id = await sendOne('alice', 'Subject: waited\r\n\r\nfor the lock\r\n', q.port);
      await q.waitForLog(new RegExp(`${id}: to=<alice@lab\\.test>.*status=deferred \\(mailbox alice is locked`));
      expect(fs.readFileSync(box, 'utf8')).toBe('');
      // The queue file is whole: envelope line, then the message in mbox form.
      const queued = fs.readFileSync(path.join(q.queue, 'active', id), 'utf8');
      expect(JSON.parse(queued.split('\n')[0])).toMatchObject({ id, sender: 'sender@remote.example', recipients: [{ mailbox: 'alice' }] });
    } finally {
      // The holder lets go whatever failed: the other tests deliver to this mtad too.
      holder.stdin!.end('\n');
    }
    await q.waitForLog(new RegExp(`${id}: to=<alice@lab\\.test>.*status=sent`));
    await q.waitForLog(new RegExp(`${id}: removed`));
    const msgs = readMbox(box);
    expect(msgs.map((m) => m.header('Subject'))).toEqual(['waited']);
    expect(fs.existsSync(path.join(q.queue, 'active', id))).toBe(false);
  });

  it('delivers what the queue holds after a restart', async () => {
    const dir = makeInstance({ users: ['carol'] });
    const box = path.join(dir, 'spool', 'carol');
    // A directory where the mailbox should be: every delivery is deferred.
    fs.mkdirSync(box);
    const first = await startMtad({ dir, env: { MTAD_LOCK_TIMEOUT: '0.2', MTAD_RETRY_MIN_DELAY: '3600', MTAD_RETRY_MAX_DELAY: '3600' } });
    const id = await sendOne('carol', 'Subject: survives\r\n\r\na restart\r\n', first.port);
    await first.waitForLog(new RegExp(`${id}: to=<carol@lab\\.test>.*status=deferred \\(mailbox is a directory`));
    expect((await first.stop()).code).toBe(0);
    fs.rmdirSync(box);

    const second = await startMtad({ dir });
    await second.waitForLog(new RegExp(`${id}: to=<carol@lab\\.test>.*status=sent`));
    await second.waitForLog(new RegExp(`${id}: removed`));
    expect(readMbox(box).map((m) => m.header('Subject'))).toEqual(['survives']);
    await second.stop();
    removeInstance(dir);
  });
});
