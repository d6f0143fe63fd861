// One address must not be able to hold every connection: by default it gets 50
// (MTAD_MAX_CLIENTS_PER_IP, as Postfix's smtpd_client_connection_count_limit), and a
// client that trickles a byte or a line every so often, which restarts any idle
// timer, is cut all the same: a command line must be whole within MTAD_IDLE_TIMEOUT,
// a transaction over within MTAD_TRANSACTION_TIMEOUT. Real sockets over loopback;
// 127.0.0.2 and 127.0.0.3 stand for other client machines.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { mtadsForFile } from '../helpers/mtad';
import { closed, Reply, SmtpClient } from '../helpers/smtp';

const mtadWith = mtadsForFile();

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// Far longer than any deadline set below: a client still served after this long was never cut.
const TRICKLE_FOR_MS = 45000;

/** Writes `bytes` one byte every `everyMs`, then `filler` for ever, until mtad replies; that reply. */
async function trickleBytes(c: SmtpClient, bytes: string, everyMs: number): Promise<Reply> {
  let answered = false;
  const reply = c.read().finally(() => { answered = true; });
  const writer = (async () => {
    const start = Date.now();
    for (let i = 0; !answered && !c.socket.destroyed; i++) {
      if (Date.now() - start > TRICKLE_FOR_MS) throw new Error(`still served after ${TRICKLE_FOR_MS / 1000} s of trickling: no deadline`);
      c.write(i < bytes.length ? bytes[i] : 'x');
      await pause(everyMs);
    }
  })();
  return Promise.race([reply, writer.then(() => reply)]);
}

/** Sends a whole NOOP line every `everyMs` until a reply is not 250; that reply. */
async function trickleLines(c: SmtpClient, everyMs: number): Promise<Reply> {
  const start = Date.now();
  for (;;) {
    if (Date.now() - start > TRICKLE_FOR_MS) throw new Error(`still served after ${TRICKLE_FOR_MS / 1000} s of NOOPs: no deadline`);
    const r = await c.cmd('NOOP');
    if (r.code !== 250) return r;
    await pause(everyMs);
  }
}

describe('connections from one address (MTAD_MAX_CLIENTS_PER_IP, default 50)', () => {
  it('greets 50 from one address, answers the 51st 421 4.7.0, serves other addresses meanwhile, and the first again once one leaves', async () => {
    const m = await mtadWith({ MTAD_MAX_CLIENTS: '200' });
    const held: SmtpClient[] = [];
    const from = (local: string): Promise<SmtpClient> => SmtpClient.connect(m.port, '127.0.0.1', local);
    try {
      for (let i = 0; i < 50; i++) {
        const c = await from('127.0.0.2');
        held.push(c);
        expect(c.greeting.code, `connection ${i + 1}`).toBe(220);
      }
      const refused = await from('127.0.0.2');
      expect(refused.greeting.raw).toBe('421 4.7.0 lab.test Too many connections from your address, try again later\r\n');
      await closed(refused);
      await m.waitForLog(/NOQUEUE: reject: CONNECT from \S+\[127\.0\.0\.2\]: 421 4\.7\.0 too many connections from this address \(MTAD_MAX_CLIENTS_PER_IP=50\)/);

      const other = await from('127.0.0.3');
      expect(other.greeting.code).toBe(220);
      await other.cmd('HELO other.test');
      expect((await other.send('someone@other.test', ['bob'], 'Subject: from elsewhere\r\n\r\nserved\r\n')).code).toBe(250);
      await other.quit();
      // Nor is this machine's own address shut out by a busy neighbour.
      const local = await SmtpClient.connect(m.port);
      expect(local.greeting.code).toBe(220);
      await local.quit();

      await held.shift()!.quit();
      // The slot is free once mtad has seen that client go: ask until it has (bounded).
      let again: SmtpClient | undefined;
      for (let tries = 0; tries < 100 && !again; tries++) {
        const c = await from('127.0.0.2');
        if (c.greeting.code === 220) again = c;
        else { await closed(c); await pause(100); }
      }
      expect(again?.greeting.code).toBe(220);
      held.push(again!);
      const box = readMbox(m.mailbox('bob'));
      expect(box.map((x) => x.header('Subject'))).toEqual(['from elsewhere']);
    } finally {
      held.forEach((c) => c.close());
    }
  }, 120000);
});

describe('tricklers (MTAD_IDLE_TIMEOUT per command line, MTAD_TRANSACTION_TIMEOUT per transaction)', () => {
  it('cuts each trickler with 421 4.4.2 after its deadline while another client is served, and keeps nothing of a trickled message', async () => {
    // Deadlines short for the test, yet far above the tricklers' pace, so that load cannot mix them up.
    const m = await mtadWith({ MTAD_IDLE_TIMEOUT: '6', MTAD_TRANSACTION_TIMEOUT: '4' });
    const clients: SmtpClient[] = [];
    const connect = async (): Promise<SmtpClient> => {
      const c = await SmtpClient.connect(m.port);
      clients.push(c);
      return c;
    };
    try {
      // A command line that never ends, one byte every 250 ms (each byte restarts the socket's idle timer).
      const line = await connect();
      const lineCut = trickleBytes(line, 'HELO slow.test', 250);

      // Whole commands in a transaction, none of them late: the transaction is.
      const tx = await connect();
      await tx.cmd('HELO slow.test');
      expect((await tx.cmd('MAIL FROM:<slow@slow.test>')).code).toBe(250);
      expect((await tx.cmd('RCPT TO:<alice>')).code).toBe(250);
      const txCut = trickleLines(tx, 500);

      // A message, one byte every 250 ms.
      const msg = await connect();
      await msg.cmd('HELO slow.test');
      await msg.cmd('MAIL FROM:<slow@slow.test>');
      await msg.cmd('RCPT TO:<alice>');
      expect((await msg.cmd('DATA')).code).toBe(354);
      const msgCut = trickleBytes(msg, 'Subject: trickled\r\n\r\nnever ends', 250);

      // Meanwhile an ordinary client is served.
      const ok = await connect();
      await ok.cmd('HELO quick.test');
      expect((await ok.send('quick@quick.test', ['alice'], 'Subject: quick\r\n\r\nserved meanwhile\r\n')).code).toBe(250);
      await ok.quit();

      expect((await lineCut).raw).toBe('421 4.4.2 lab.test Error: timeout exceeded\r\n');
      expect((await txCut).raw).toBe('421 4.4.2 lab.test Error: transaction timeout exceeded\r\n');
      expect((await msgCut).raw).toBe('421 4.4.2 lab.test Error: transaction timeout exceeded\r\n');
      await Promise.all([line, tx, msg].map(closed));
      await m.waitForLog(/lost connection after DATA \(\d+ bytes\)/);
      await m.waitForLog(/timeout: transaction not over after 4 s \(MTAD_TRANSACTION_TIMEOUT\) from \[127\.0\.0\.1\]/);

      expect(readMbox(m.mailbox('alice')).map((x) => x.header('Subject'))).toEqual(['quick']);
      expect(fs.readdirSync(path.join(m.queue, 'tmp'))).toEqual([]);
      expect(fs.readdirSync(path.join(m.queue, 'active'))).toEqual([]);
    } finally {
      clients.forEach((c) => c.close());
    }
  }, 120000);

  it('lets a transaction that keeps within the deadline finish, and starts the clock again for the next one', async () => {
    const m = await mtadWith({ MTAD_IDLE_TIMEOUT: '20', MTAD_TRANSACTION_TIMEOUT: '5' });
    const c = await SmtpClient.connect(m.port);
    try {
      await c.cmd('HELO steady.test');
      for (const n of [1, 2]) {
        expect((await c.send('steady@steady.test', ['bob'], `Subject: steady ${n}\r\n\r\non time\r\n`)).code).toBe(250);
        // Between transactions, for longer than one transaction may take (each NOOP well within the idle timeout).
        for (let i = 0; i < 7; i++) { await pause(1000); expect((await c.cmd('NOOP')).code).toBe(250); }
      }
      await c.quit();
    } finally {
      c.close();
    }
    expect(readMbox(m.mailbox('bob')).map((x) => x.header('Subject'))).toEqual(['steady 1', 'steady 2']);
  }, 120000);
});
