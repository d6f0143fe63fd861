// What the lab shows in Wireshark: tshark on loopback, on the test's port,
// decodes a real client's session with mtad as SMTP (each command, each reply)
// and the message as IMF. The commands are the README's lab commands with the
// test's port for 25 (and `-d tcp.port==PORT,smtp`, since only 25 is SMTP by
// default). Capturing needs root (CI has it).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOSTNAME, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { Capture, run, startTshark } from './tools';

describe.skipIf(needsRoot('tshark on the wire', 'capturing on lo needs root'))('tshark on the wire', () => {
  let mtad: Mtad;
  beforeAll(async () => { mtad = await startMtad({ users: ['alice'] }); });
  afterAll(async () => {
    const { code } = await mtad.stop();
    expect(code).toBe(0);
    removeInstance(mtad.dir);
  });

  /**
   * tshark says "Capturing on" a moment before it captures (under load, a session's
   * first packets went missing): sessions that only say EHLO, until both captures show one.
   */
  async function untilCapturing(captures: Capture[]): Promise<void> {
    for (let i = 0; ; i++) {
      const c = await SmtpClient.connect(mtad.port);
      await c.cmd(`EHLO marker${i}.example.org`);
      await c.quit();
      try {
        await Promise.all(captures.map((k) => k.waitFor(new RegExp(`C: EHLO marker${i}\\.example\\.org`), 3000)));
        return;
      } catch (err) {
        if (i === 20) throw err;
      }
    }
  }

  it('decodes the session as SMTP, with each command and reply, and the message as IMF', async () => {
    const port = String(mtad.port);
    const pcap = path.join(mtad.dir, 'smtp.pcapng');
    // README: watch live, and save a capture for Wireshark (-P: show the packets while saving).
    const live = await startTshark(['-i', 'lo', '-f', `tcp port ${port}`, '-d', `tcp.port==${port},smtp`, '-Y', 'smtp || imf', '-l']);
    const saved = await startTshark(['-i', 'lo', '-f', `tcp port ${port}`, '-d', `tcp.port==${port},smtp`, '-w', pcap, '-P', '-l']);
    try {
      await untilCapturing([live, saved]);
      const r = await run('swaks', ['--server', '127.0.0.1', '--port', port, '--helo', 'client.example.org',
        '--from', 'carol@example.org', '--to', `alice@${HOSTNAME},ghost@${HOSTNAME}`,
        '--header', 'Subject: seen on the wire', '--body', 'Hello from the capture.']);
      expect(r.status, r.stdout.toString()).toBe(0);
      // The capture is complete once the last reply has been decoded (the markers sent no DATA).
      await Promise.all([live.waitFor(/S: 250 2\.0\.0 Ok: queued as[\s\S]*S: 221 /), saved.waitFor(/S: 250 2\.0\.0 Ok: queued as[\s\S]*S: 221 /)]);
    } finally {
      await Promise.all([live.stop(), saved.stop()]);
    }

    // What the student sees scroll by.
    const shown = live.output();
    for (const line of [
      `S: 220 ${HOSTNAME} ESMTP mtad`, 'C: EHLO client.example.org', `S: 250-${HOSTNAME} | PIPELINING | 8BITMIME`,
      'C: MAIL FROM:<carol@example.org>', 'S: 250 2.1.0 Accepted', `C: RCPT TO:<alice@${HOSTNAME}>`, 'S: 250 2.1.5 Accepted',
      `C: RCPT TO:<ghost@${HOSTNAME}>`, `S: 550 5.1.1 <ghost@${HOSTNAME}>: Recipient address rejected`,
      'C: DATA', 'S: 354 End data with <CR><LF>.<CR><LF>', 'S: 250 2.0.0 Ok: queued as ', 'C: QUIT', 'S: 221 2.0.0 Bye',
    ]) expect(shown, line).toContain(line);
    expect(shown).toMatch(/SMTP\/IMF .*from: carol@example\.org, subject: seen on the wire, .*Hello from the capture\./);

    // The saved capture, dissected field by field, in order.
    expect(fs.statSync(pcap).size).toBeGreaterThan(0);
    const fields = await run('tshark', ['-r', pcap, '-d', `tcp.port==${port},smtp`, '-Y', 'smtp || imf', '-T', 'fields', '-E', 'separator=|',
      '-e', 'smtp.req.command', '-e', 'smtp.req.parameter', '-e', 'smtp.response.code', '-e', 'imf.from', '-e', 'imf.subject', '-e', 'smtp.rsp.parameter', '-e', 'tcp.stream']);
    expect(fields.status, fields.stderr).toBe(0);
    // swaks's session alone (the markers before it are TCP streams of their own).
    const all = fields.stdout.toString().trim().split('\n').map((l) => l.split('|'));
    const stream = all.find((f) => f[0] === 'MAIL')?.[6];
    const rows = all.filter((f) => f[6] === stream);
    const commands = rows.filter((f) => f[0]).map((f) => `${f[0]} ${f[1]}`.trim());
    expect(commands).toEqual(['EHLO client.example.org', 'MAIL FROM:<carol@example.org>', `RCPT TO:<alice@${HOSTNAME}>`,
      `RCPT TO:<ghost@${HOSTNAME}>`, 'DATA', 'QUIT']);
    const replies = rows.filter((f) => f[2]);
    expect(replies.map((f) => f[2])).toEqual(['220', '250', '250', '250', '550', '354', '250', '221']);
    // The EHLO reply is one reply of five lines: the extensions are its parameters.
    expect(replies[1][5].split(',')).toEqual([HOSTNAME, 'PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SIZE 10240000']);
    const imf = rows.filter((f) => f[4]);
    expect(imf).toHaveLength(1);
    expect(imf[0][3]).toBe('carol@example.org');
    expect(imf[0][4]).toBe('seen on the wire');
  }, 300000);
});
