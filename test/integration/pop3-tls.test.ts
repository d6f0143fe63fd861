// STLS (RFC 2595) on mtad's POP3, with the certificate SMTP's STARTTLS uses:
// real clients (openssl s_client -starttls pop3, curl --ssl-reqd, s-nail) fetch
// over it; lines pipelined after STLS are dropped, never answered inside TLS;
// the plaintext USER is forgotten; MTAD_TLS_REQUIRED refuses USER/PASS/AUTH
// before STLS; a failed handshake is logged.
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOSTNAME, instanceEnv, makeInstance, Mtad, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { Pop3Client } from '../helpers/pop3';
import { SmtpClient } from '../helpers/smtp';
import { run } from '../interop/tools';

const PASSWORDS = { alice: 'alice-pw', bob: 'bob-pw' };

async function start(env: Record<string, string> = {}): Promise<{ mtad: Mtad; cert: string }> {
  const dir = makeInstance({ users: ['alice', 'bob'], passwords: PASSWORDS });
  const tlsEnv = { MTAD_TLS_CERT: path.join(dir, 'tls', 'cert.pem'), MTAD_TLS_KEY: path.join(dir, 'tls', 'key.pem') };
  const made = runCli('mta-certificate', [], instanceEnv(dir, tlsEnv));
  expect(made.status, made.stderr).toBe(0);
  const mtad = await startMtad({ dir, env: { ...tlsEnv, MTAD_POP3_AUTH_DELAY: '0.2', ...env } });
  // Over STARTTLS, which MTAD_TLS_REQUIRED needs and the other tests do not mind.
  const plain = await SmtpClient.connect(mtad.port);
  await plain.cmd('EHLO client.example.org');
  expect((await plain.cmd('STARTTLS')).code).toBe(220);
  const c = await plain.startTls({ ca: fs.readFileSync(tlsEnv.MTAD_TLS_CERT), servername: HOSTNAME });
  await c.cmd('EHLO client.example.org');
  for (const [user, text] of [['alice', 'for alice over STLS'], ['bob', 'for bob over STLS']]) {
    expect((await c.send('carol@example.org', [`${user}@${HOSTNAME}`], `Subject: ${text}\r\n\r\n${text}, secret\r\n`)).code).toBe(250);
  }
  await c.quit();
  await mtad.waitForLog(/to=<bob@lab\.test>.*status=sent/);
  return { mtad, cert: tlsEnv.MTAD_TLS_CERT };
}

const secureOpts = (cert: string): tls.ConnectionOptions => ({ ca: fs.readFileSync(cert), servername: HOSTNAME });

describe('STLS', () => {
  let mtad: Mtad;
  let cert: string;
  beforeAll(async () => { ({ mtad, cert } = await start({ MTAD_TRACE: 'yes' })); });
  afterAll(async () => {
    const { code } = await mtad.stop();
    expect(code, mtad.output()).toBe(0);
    removeInstance(mtad.dir);
  });

  it('CAPA offers STLS before TLS and not after; the session then logs in and reads', async () => {
    const c = await Pop3Client.connect(mtad.pop3Port!);
    expect((await c.multi('CAPA')).lines).toContain('STLS');
    expect(await c.cmd('STLS')).toBe('+OK Begin TLS negotiation now.');
    const s = await c.startTls(secureOpts(cert));
    const capa = (await s.multi('CAPA')).lines;
    expect(capa).not.toContain('STLS');
    expect(capa).toContain('USER');
    expect(await s.cmd('STLS')).toBe('-ERR TLS is already active.');
    expect(await s.login('alice', PASSWORDS.alice)).toMatch(/^\+OK Logged in, 1 messages/);
    expect((await s.multi('RETR 1')).data.toString()).toContain('for alice over STLS, secret');
    expect(await s.quit()).toMatch(/^\+OK/);
    await mtad.waitForLog(/pop3-login: TLS connection established from unknown\[127\.0\.0\.1\]: TLSv1\.3 with cipher TLS_\w+/);
    expect(mtad.output()).toMatch(/pop3 127\.0\.0\.1:\d+ -- TLS started \(TLSv1\.3, TLS_\w+\): from here on Wireshark shows only encrypted TLS records --/);
  });

  it('openssl s_client -starttls pop3 verifies the certificate and fetches', async () => {
    const input = ['USER bob', `PASS ${PASSWORDS.bob}`, 'STAT', 'RETR 1', 'QUIT', ''].join('\n'); // -crlf adds the CRs
    const r = await run('openssl', ['s_client', '-starttls', 'pop3', '-connect', `127.0.0.1:${mtad.pop3Port}`, '-CAfile', cert,
      '-verify_hostname', HOSTNAME, '-verify_return_error', '-ign_eof', '-crlf', '-quiet'], { input });
    expect(r.stderr.toString()).toMatch(/verify return:1/);
    const out = r.stdout.toString();
    expect(out, r.stderr.toString()).toMatch(/\+OK Logged in, 1 messages/);
    expect(out).toContain('for bob over STLS, secret');
    expect(out).toMatch(/\+OK Logging out/);
  });

  it('curl --ssl-reqd fetches a message over STLS, trusting the certificate as its CA file', async () => {
    const r = await run('curl', ['--silent', '--show-error', '--ssl-reqd', '--cacert', cert, '--user', `alice:${PASSWORDS.alice}`,
      `pop3://localhost:${mtad.pop3Port}/1`]);
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(r.stdout.toString()).toContain('for alice over STLS, secret');
  });

  it('s-nail lists the mailbox over POP3 with pop3-use-starttls', async () => {
    const home = path.join(mtad.dir, 'snail-home');
    fs.mkdirSync(home, { recursive: true });
    const r = await run('s-nail', ['-:/', '-Sv15-compat', '-Spop3-use-starttls', `-Stls-ca-file=${cert}`, '-Stls-ca-no-defaults', '-Stls-verify=strict',
      `-Spassword-alice@localhost:${mtad.pop3Port}=${PASSWORDS.alice}`, '-H', '-f', `pop3://alice@localhost:${mtad.pop3Port}`],
    { env: { ...process.env, HOME: home } });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout.toString()).toContain('for alice over STLS');
  });

  it('drops lines pipelined after STLS in the same segment: USER is never answered, in plaintext or inside TLS', async () => {
    const c = await Pop3Client.connect(mtad.pop3Port!);
    c.write('STLS\r\nUSER alice\r\nCAPA\r\n');
    expect(await c.line()).toBe('+OK Begin TLS negotiation now.');
    expect(c.unread()).toBe('');
    const s = await c.startTls(secureOpts(cert));
    // The first reply inside TLS is to our own command, and the injected USER left nothing behind.
    expect(await s.cmd(`PASS ${PASSWORDS.alice}`)).toBe('-ERR No username given.');
    expect(await s.quit()).toMatch(/^\+OK/);
    expect(s.unread()).toBe('');
  });

  it('forgets a USER given before STLS (RFC 2595 section 4)', async () => {
    const c = await Pop3Client.connect(mtad.pop3Port!);
    expect(await c.cmd('USER alice')).toMatch(/^\+OK/);
    expect(await c.cmd('STLS')).toMatch(/^\+OK/);
    const s = await c.startTls(secureOpts(cert));
    expect(await s.cmd(`PASS ${PASSWORDS.alice}`)).toBe('-ERR No username given.');
    await s.quit();
  });

  it('a failed handshake ends the session with a log line', async () => {
    const c = await Pop3Client.connect(mtad.pop3Port!);
    expect(await c.cmd('STLS')).toMatch(/^\+OK/);
    c.write('USER not-a-client-hello\r\n');
    await c.closedByServer();
    await mtad.waitForLog(/pop3-login: SSL_accept error from unknown\[127\.0\.0\.1\]: wrong version number$/);
  });
});

describe('STLS with MTAD_TLS_REQUIRED=yes', () => {
  let mtad: Mtad;
  let cert: string;
  beforeAll(async () => { ({ mtad, cert } = await start({ MTAD_TLS_REQUIRED: 'yes' })); });
  afterAll(async () => {
    await mtad.stop();
    removeInstance(mtad.dir);
  });

  it('refuses USER, PASS and AUTH before STLS with -ERR [AUTH], and logs in after', async () => {
    const c = await Pop3Client.connect(mtad.pop3Port!);
    const refused = '-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.';
    expect(await c.cmd('USER alice')).toBe(refused);
    expect(await c.cmd(`PASS ${PASSWORDS.alice}`)).toBe(refused);
    expect(await c.cmd(`AUTH PLAIN ${Buffer.from(`\0alice\0${PASSWORDS.alice}`).toString('base64')}`)).toBe(refused);
    expect(await c.cmd('STLS')).toMatch(/^\+OK/);
    const s = await c.startTls(secureOpts(cert));
    expect(await s.login('alice', PASSWORDS.alice)).toMatch(/^\+OK Logged in/);
    await s.quit();
  });

  it('curl without --ssl-reqd is refused in plaintext too', async () => {
    const r = await run('curl', ['--silent', '--user', `alice:${PASSWORDS.alice}`, `pop3://127.0.0.1:${mtad.pop3Port}/1`]);
    expect(r.status).not.toBe(0);
    expect(r.stdout.toString()).not.toContain('for alice over STLS');
  });
});
