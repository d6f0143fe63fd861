// The lab's encryption exercise, as tshark shows it: a plain session and a
// STARTTLS session to the same mtad, captured on loopback. The plain one is
// readable to the last byte of the message; the STARTTLS one is SMTP up to
// "220 Ready to start TLS", then only TLS records, and its message text is
// nowhere in the capture. The same for POP3: a STLS session shows STLS and its
// +OK in plaintext, then TLS, and neither the login nor the message. Capturing needs root (CI has it).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOSTNAME, instanceEnv, makeInstance, Mtad, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { Pop3Client } from '../helpers/pop3';
import { SmtpClient } from '../helpers/smtp';
import { Capture, run, startTshark } from './tools';

/**
 * tshark says "Capturing on" a moment before it captures: `session` (which puts
 * `seen` on the wire) is run until the capture shows it, so nothing after it is missed.
 */
async function untilCaptured(capture: Capture, session: () => Promise<unknown>, seen: RegExp): Promise<void> {
  for (let i = 0; ; i++) {
    await session();
    try {
      await capture.waitFor(seen, 3000);
      return;
    } catch (err) {
      if (i === 20) throw err;
    }
  }
}

describe.skipIf(needsRoot('STARTTLS on the wire', 'tshark needs root to capture on loopback'))('STARTTLS on the wire', () => {
  let mtad: Mtad;
  let dir: string;
  beforeAll(async () => {
    dir = makeInstance({ users: ['alice'], passwords: { alice: 'alice-secret-pw' } });
    const env = { MTAD_TLS_CERT: path.join(dir, 'cert.pem'), MTAD_TLS_KEY: path.join(dir, 'key.pem') };
    const made = runCli('mta-certificate', [], instanceEnv(dir, env));
    expect(made.status, made.stderr).toBe(0);
    mtad = await startMtad({ dir, env });
  });
  afterAll(async () => {
    const { code } = await mtad.stop();
    expect(code).toBe(0);
    removeInstance(dir);
  });

  it('shows the plain session in full, and of the STARTTLS one only SMTP up to STARTTLS, then TLS records', async () => {
    const port = String(mtad.port);
    const pcap = path.join(dir, 'starttls.pcapng');
    const capture = await startTshark(['-i', 'lo', '-f', `tcp port ${port}`, '-d', `tcp.port==${port},smtp`, '-w', pcap, '-P', '-l']);
    const swaks = (extra: string[], subject: string, body: string): Promise<void> => run('swaks', ['--server', '127.0.0.1', '--port', port,
      ...extra, '--helo', 'client.example.org', '--from', 'carol@example.org', '--to', `alice@${HOSTNAME}`,
      '--header', `Subject: ${subject}`, '--body', body]).then((r) => { expect(r.status, r.stdout.toString()).toBe(0); });
    try {
      const marker = (name: string) => async (): Promise<void> => {
        const c = await SmtpClient.connect(mtad.port);
        await c.cmd(`EHLO ${name}`);
        await c.quit();
      };
      await untilCaptured(capture, marker('start.marker'), /C: EHLO start\.marker/);
      await swaks([], 'plain on the wire', 'Anyone on the wire reads this.');
      await swaks(['--tls'], 'sealed on the wire', 'Nobody on the wire reads this.');
      // A last plain session marks the end: once it is captured, all of the sessions before it are.
      await marker('end.marker')();
      await capture.waitFor(/C: EHLO end\.marker/, 30000);
    } finally {
      await capture.stop();
    }
    const bytes = fs.readFileSync(pcap);
    expect(bytes.includes('Anyone on the wire reads this.')).toBe(true);
    expect(bytes.includes('plain on the wire')).toBe(true);
    expect(bytes.includes('Nobody on the wire reads this.')).toBe(false);
    expect(bytes.includes('sealed on the wire')).toBe(false);
    expect(bytes.includes('carol@example.org')).toBe(true); // the plain session's
    // The sealed session's envelope is encrypted too: its RCPT is not seen a second time.
    expect(bytes.toString('latin1').split(`RCPT TO:<alice@${HOSTNAME}>`)).toHaveLength(2);

    // The STARTTLS session's TCP stream: what the README's side-by-side shows.
    const view = await run('tshark', ['-r', pcap, '-d', `tcp.port==${port},smtp`, '-Y', 'smtp || tls', '-T', 'fields', '-E', 'separator=/t',
      '-e', 'tcp.stream', '-e', '_ws.col.Protocol', '-e', '_ws.col.Info', '-e', 'smtp.response.code', '-e', 'tls.handshake.type', '-e', 'tls.record.content_type',
      '-e', 'tls.handshake.extensions.supported_version']);
    // Columns: protocol, info, SMTP reply code, TLS handshake types, TLS record types, TLS versions.
    expect(view.status, view.stderr.toString()).toBe(0);
    const all = view.stdout.toString().split('\n').filter(Boolean).map((l) => l.split('\t'));
    const stream = all.find((r) => r[2] === 'C: STARTTLS')![0];
    const rows = all.filter((r) => r[0] === stream).map((r) => r.slice(1));
    const firstTls = rows.findIndex((r) => /TLS/.test(r[0]));
    const smtp = rows.slice(0, firstTls);
    expect(smtp.every((r) => r[0] === 'SMTP')).toBe(true);
    expect(smtp.map((r) => r[1])).toEqual([`S: 220 ${HOSTNAME} ESMTP mtad`, 'C: EHLO client.example.org',
      `S: 250-${HOSTNAME} | PIPELINING | 8BITMIME | ENHANCEDSTATUSCODES | STARTTLS | SIZE 10240000`, 'C: STARTTLS', 'S: 220 2.0.0 Ready to start TLS']);
    // After the 220 to STARTTLS, nothing is SMTP any more: a handshake, then application data only.
    const after = rows.slice(firstTls);
    expect(after.length).toBeGreaterThan(5);
    expect(after.every((r) => /TLS/.test(r[0]))).toBe(true);
    expect(after[0][3]).toBe('1'); // Client Hello
    expect(after[1][3].split(',')).toContain('2'); // Server Hello...
    expect(after[1][5].split(',')).toContain('0x0304'); // ...choosing TLS 1.3
    for (const r of after.slice(2)) expect(r[1]).toMatch(/^(Change Cipher Spec, )?Application Data(, Application Data)*$/);
  });

  it('shows of a POP3 STLS session only the dialogue up to STLS and its +OK, then TLS: no login, no message', async () => {
    const port = String(mtad.pop3Port);
    const pcap = path.join(dir, 'stls.pcapng');
    const capture = await startTshark(['-i', 'lo', '-f', `tcp port ${port}`, '-d', `tcp.port==${port},pop`, '-w', pcap, '-P', '-l']);
    try {
      const marker = (name: string) => async (): Promise<void> => {
        const c = await Pop3Client.connect(mtad.pop3Port!);
        await c.cmd(`USER ${name}`);
        await c.quit();
      };
      await untilCaptured(capture, marker('start.marker'), /C: USER start\.marker/);
      const r = await run('curl', ['--silent', '--show-error', '--ssl-reqd', '--cacert', path.join(dir, 'cert.pem'),
        '--user', 'alice:alice-secret-pw', `pop3://localhost:${port}/2`]); // the sealed one of the test above
      expect(r.status, r.stderr.toString()).toBe(0);
      expect(r.stdout.toString()).toContain('Nobody on the wire reads this.');
      // The end marker, once captured, comes after all of curl's packets.
      await marker('end.marker')();
      await capture.waitFor(/C: USER end\.marker/, 30000);
    } finally {
      await capture.stop();
    }
    const bytes = fs.readFileSync(pcap);
    expect(bytes.includes('alice-secret-pw')).toBe(false);
    expect(bytes.includes('Nobody on the wire reads this.')).toBe(false);
    // tshark 4.0's POP dissector does not follow STLS into TLS (it shows the records as POP lines), so the
    // bytes themselves are read: the plaintext dialogue ends at STLS's +OK, and a TLS handshake record follows it.
    const text = bytes.toString('latin1');
    expect(text).toContain('STLS\r\n');
    const ok = text.indexOf('+OK Begin TLS negotiation now.\r\n');
    expect(ok).toBeGreaterThan(0);
    expect(text.indexOf('\x16\x03\x01', ok)).toBeGreaterThan(ok); // a Client Hello's record header
    expect(text).not.toContain('USER alice');
    expect(text).not.toContain('PASS ');
    expect(text).not.toContain('AUTH PLAIN');
  });
});
