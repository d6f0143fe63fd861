// STARTTLS (RFC 3207) as clients meet it: the lab's certificate from
// mta-certificate, real clients (swaks, openssl s_client, mutt) delivering over
// it, pipelined commands after STARTTLS thrown away, the session forgotten after
// the handshake, MTAD_TLS_REQUIRED, failed handshakes logged, bad key files
// refused at start, SIGHUP reloading the pair; and without a certificate the
// plain session exactly as it was before TLS existed.
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../interop/tools';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, instanceEnv, makeInstance, Mtad, removeInstance, runCli, startMtad } from '../helpers/mtad';
import { needsRoot } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { plainTranscript } from './plain-session';

/** An instance with a certificate made by mta-certificate, as the README tells a lab to. */
function tlsInstance(): { dir: string; cert: string; key: string; env: Record<string, string> } {
  const dir = makeInstance({ users: ['alice', 'bob'] });
  const cert = path.join(dir, 'tls', 'cert.pem');
  const key = path.join(dir, 'tls', 'key.pem');
  const env = { MTAD_TLS_CERT: cert, MTAD_TLS_KEY: key };
  const made = runCli('mta-certificate', [], instanceEnv(dir, env));
  expect(made.status, made.stderr).toBe(0);
  return { dir, cert, key, env };
}

const secureOpts = (cert: string): tls.ConnectionOptions => ({ ca: fs.readFileSync(cert), servername: HOSTNAME });

async function starttls(c: SmtpClient, cert: string): Promise<SmtpClient> {
  expect((await c.cmd('EHLO client.example.org')).lines).toContain('STARTTLS');
  expect((await c.cmd('STARTTLS')).raw).toBe('220 2.0.0 Ready to start TLS\r\n');
  return c.startTls(secureOpts(cert));
}

describe('mta-certificate', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach(removeInstance));

  it('writes a self-signed certificate for the host name and localhost, key 0600 for mtad\'s user, certificate 0644', () => {
    const t = tlsInstance();
    dirs.push(t.dir);
    const kst = fs.statSync(t.key);
    expect((kst.mode & 0o777).toString(8)).toBe('600');
    expect((fs.statSync(t.cert).mode & 0o777).toString(8)).toBe('644');
    // Root makes it for the user mtad becomes (the spool's owner): mtad reads it after giving up root.
    expect(kst.uid).toBe(fs.statSync(path.join(t.dir, 'spool')).uid);
    const x = new X509Certificate(fs.readFileSync(t.cert));
    expect(x.subject).toBe(`CN=${HOSTNAME}`);
    expect(x.subjectAltName).toBe(`DNS:${HOSTNAME}, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1`);
    expect(x.checkHost(HOSTNAME)).toBe(HOSTNAME);
    expect(x.verify(x.publicKey)).toBe(true);
  });

  it('refuses to overwrite without --force, refuses a bad host name, and prints the env lines when TLS is not configured', () => {
    const t = tlsInstance();
    dirs.push(t.dir);
    const again = runCli('mta-certificate', [], instanceEnv(t.dir, t.env));
    expect(again.status).toBe(73);
    expect(again.stderr).toMatch(/^mta-certificate: .*cert\.pem exists already: use --force to replace it\n$/);
    const forced = runCli('mta-certificate', ['--force', '--host', 'mail.lab.test'], instanceEnv(t.dir, t.env));
    expect(forced.status, forced.stderr).toBe(0);
    expect(forced.stdout).toContain('DNS:mail.lab.test');
    const bad = runCli('mta-certificate', ['--force', '--host', 'x;rm -rf /'], instanceEnv(t.dir, t.env));
    expect(bad.status).toBe(64);
    expect(bad.stderr).toBe('mta-certificate: "x;rm -rf /" is not a valid host name\n');

    // Unconfigured: the files go to a directory of the operator's choosing only through the two keys,
    // so the lines to add are printed (here MTAD_TLS_* is unset: the checkout's etc/tls/ would be used).
    const help = runCli('mta-certificate', ['--help'], instanceEnv(t.dir));
    expect(help.stdout).toMatch(/MTAD_TLS_CERT and MTAD_TLS_KEY/);
  });
});

describe('STARTTLS with a certificate', () => {
  let t: ReturnType<typeof tlsInstance>;
  let mtad: Mtad;
  beforeAll(async () => {
    t = tlsInstance();
    mtad = await startMtad({ dir: t.dir, env: { ...t.env, MTAD_TRACE: 'yes' } });
  });
  afterAll(async () => {
    const { code } = await mtad.stop();
    expect(code, mtad.output()).toBe(0);
    removeInstance(t.dir);
  });

  it('logs the certificate at start and offers STARTTLS in EHLO and HELP', async () => {
    expect(await mtad.waitForLog(/TLS: STARTTLS and STLS offered, certificate /)).toContain(`CN=${HOSTNAME}, DNS:${HOSTNAME}, DNS:localhost`);
    const c = await SmtpClient.connect(mtad.port);
    expect((await c.cmd('EHLO client.example.org')).lines).toEqual([HOSTNAME, 'PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES', 'STARTTLS', 'SIZE 10240000']);
    expect((await c.cmd('HELP')).lines[1]).toBe('2.0.0 Commands: HELO EHLO STARTTLS MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN');
    await c.quit();
  });

  it('swaks --tls delivers, and the Received line says ESMTPS', async () => {
    const r = await run('swaks', ['--server', '127.0.0.1', '--port', String(mtad.port), '--tls', '--helo', 'client.example.org',
      '--from', 'carol@example.org', '--to', `alice@${HOSTNAME}`, '--header', 'Subject: over swaks --tls', '--body', 'secret swaks body']);
    expect(r.status, r.stdout.toString()).toBe(0);
    expect(r.stdout.toString()).toMatch(/=== TLS started with cipher TLSv1\.[23]/);
    await mtad.waitForLog(/status=sent/);
    const m = readMbox(mtad.mailbox('alice')).find((x) => x.header('Subject') === 'over swaks --tls');
    expect(m?.header('Received')).toMatch(/with ESMTPS id /);
    expect(m?.body.toString()).toContain('secret swaks body');
    expect(mtad.output()).toMatch(/TLS connection established from unknown\[127\.0\.0\.1\]: TLSv1\.3 with cipher TLS_\w+/);
  });

  it('openssl s_client -starttls smtp verifies the certificate against it and delivers', async () => {
    const input = ['EHLO client.example.org', 'MAIL FROM:<carol@example.org>', `RCPT TO:<bob@${HOSTNAME}>`, 'DATA',
      'Subject: over s_client', '', 'secret s_client body', '.', 'QUIT', ''].join('\n'); // -crlf adds the CRs
    const r = await run('openssl', ['s_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${mtad.port}`, '-CAfile', t.cert,
      '-verify_hostname', HOSTNAME, '-verify_return_error', '-ign_eof', '-crlf', '-quiet'], { input });
    const out = r.stdout.toString();
    expect(out, r.stderr.toString()).toMatch(/250 2\.0\.0 Ok: queued as \w+/);
    expect(r.stderr.toString()).toMatch(/verify return:1/);
    await mtad.waitForLog(/to=<bob@lab\.test>.*status=sent/);
    expect(readMbox(mtad.mailbox('bob')).some((x) => x.header('Subject') === 'over s_client')).toBe(true);
  });

  it('mutt with ssl_starttls=yes and the certificate as its CA file sends through it', async () => {
    const home = path.join(t.dir, 'mutt-home');
    fs.mkdirSync(home, { recursive: true });
    fs.writeFileSync(path.join(home, '.muttrc'), [
      `set smtp_url="smtp://127.0.0.1:${mtad.port}"`, 'set ssl_starttls=yes', 'set ssl_force_tls=yes',
      `set ssl_ca_certificates_file="${t.cert}"`, 'set from="carol@example.org"', `set hostname="example.org"`,
      'set record=""', 'set sendmail_wait=0', '',
    ].join('\n'));
    const r = await run('mutt', ['-F', path.join(home, '.muttrc'), '-s', 'over mutt starttls', `alice@${HOSTNAME}`],
      { input: 'secret mutt body\n', env: { ...process.env, HOME: home, TERM: 'dumb' } });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    await expectEventually(() => readMbox(mtad.mailbox('alice')).some((x) => x.header('Subject') === 'over mutt starttls'));
  });

  it('s-nail with the README settings (smtp-use-starttls, tls-ca-file, tls-verify=strict) sends through it', async () => {
    const r = await run('s-nail', ['-:/', '-Sv15-compat', `-Smta=smtp://localhost:${mtad.port}`, '-Ssmtp-auth=none', '-Ssmtp-use-starttls',
      `-Stls-ca-file=${t.cert}`, '-Stls-ca-no-defaults', '-Stls-verify=strict', '-Sfrom=carol@example.org', '-s', 'over s-nail starttls', `alice@${HOSTNAME}`],
    { input: 'secret s-nail body\n', env: { ...process.env, HOME: t.dir } });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    await expectEventually(() => readMbox(mtad.mailbox('alice')).some((x) => x.header('Subject') === 'over s-nail starttls'));
  });

  it('discards commands pipelined after STARTTLS in the same segment: none is answered, in plaintext or inside TLS', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.example.org');
    // One write, one segment: the injection of 2011 (CVE-2011-0411 and kin).
    c.write('STARTTLS\r\nHELP\r\nMAIL FROM:<injected@example.org>\r\n');
    expect((await c.read()).raw).toBe('220 2.0.0 Ready to start TLS\r\n');
    // A plaintext answer to them would come before the server's hello and break the handshake.
    expect(c.unread()).toBe('');
    const s = await c.startTls(secureOpts(t.cert));
    // The first reply inside TLS is to our own command; HELP (214) and MAIL (250 2.1.0) never come.
    expect((await s.cmd('NOOP')).raw).toBe('250 2.0.0 OK\r\n');
    expect((await s.cmd('QUIT')).code).toBe(221);
    expect(s.unread()).toBe('');
    s.close();
  });

  it('forgets the EHLO and the transaction begun before STARTTLS (RFC 3207 4.2)', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO before.example.org');
    expect((await c.cmd('MAIL FROM:<carol@example.org>')).code).toBe(250);
    expect((await c.cmd('STARTTLS')).code).toBe(220);
    const s = await c.startTls(secureOpts(t.cert));
    expect((await s.cmd('MAIL FROM:<carol@example.org>')).raw).toMatch(/^503 /);
    expect((await s.cmd('EHLO after.example.org')).lines).not.toContain('STARTTLS');
    expect((await s.cmd(`RCPT TO:<alice@${HOSTNAME}>`)).raw).toMatch(/^503 5\.5\.1 /);
    expect((await s.cmd('STARTTLS')).raw).toMatch(/^503 /);
    await s.quit();
  });

  it('a failed handshake ends the session with a log line', async () => {
    const c = await SmtpClient.connect(mtad.port);
    const port = c.socket.localPort!;
    await c.cmd('EHLO client.example.org');
    expect((await c.cmd('STARTTLS')).code).toBe(220);
    c.write('this is not a TLS client hello\r\n');
    await new Promise<void>((resolve) => c.socket.once('close', () => resolve()));
    await mtad.waitForLog(/SSL_accept error from unknown\[127\.0\.0\.1\]: wrong version number$/);
    expect(mtad.output()).toContain(`127.0.0.1:${port} S: 220 2.0.0 Ready to start TLS`);
  });

  it('refuses TLS 1.1 and older', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.example.org');
    expect((await c.cmd('STARTTLS')).code).toBe(220);
    const old = c.startTls({ ...secureOpts(t.cert), minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
    await expect(old).rejects.toThrow(/protocol|version/i);
    await mtad.waitForLog(/SSL_accept error from unknown\[127\.0\.0\.1\]: unsupported protocol$/);
  });

  it('the trace shows where encryption starts, then the decrypted dialogue', async () => {
    const c = await SmtpClient.connect(mtad.port);
    const me = `127.0.0.1:${c.socket.localPort}`;
    const s = await starttls(c, t.cert);
    await s.cmd('EHLO client.example.org');
    await s.quit();
    await mtad.waitForLog(new RegExp(`${me} S: 221 `));
    const lines = mtad.output().split('\n').filter((l) => l.includes(`${me} `)).map((l) => l.replace(/^.*?: /, ''));
    const at = lines.findIndex((l) => l.includes('-- TLS started'));
    expect(lines[at - 1]).toBe(`${me} S: 220 2.0.0 Ready to start TLS`);
    expect(lines[at]).toMatch(new RegExp(`^${me} -- TLS started \\(TLSv1\\.3, TLS_\\w+\\): from here on Wireshark shows only encrypted TLS records`));
    expect(lines[at + 1]).toBe(`${me} C: EHLO client.example.org`);
  });

  it('SIGHUP reads a new certificate; a broken one is refused and the old one stays', async () => {
    const made = runCli('mta-certificate', ['--force', '--host', 'renewed.lab.test'], instanceEnv(t.dir, t.env));
    expect(made.status, made.stderr).toBe(0);
    const renewed = fs.readFileSync(t.cert);
    process.kill(mtad.pid, 'SIGHUP');
    await mtad.waitForLog(/TLS: reloaded the certificate .*CN=renewed\.lab\.test/);
    const peer = async (): Promise<string> => {
      const c = await SmtpClient.connect(mtad.port);
      await c.cmd('EHLO client.example.org');
      expect((await c.cmd('STARTTLS')).code).toBe(220);
      const s = await c.startTls({ ca: renewed, servername: 'renewed.lab.test' });
      const cn = (s.socket as tls.TLSSocket).getPeerCertificate().subject.CN;
      await s.quit();
      return cn;
    };
    expect(await peer()).toBe('renewed.lab.test');

    fs.writeFileSync(t.cert, 'not a certificate\n');
    try {
      process.kill(mtad.pid, 'SIGHUP');
      await mtad.waitForLog(/TLS: MTAD_TLS_CERT: .* is not a PEM certificate; keeping the certificate in use/);
      expect(await peer()).toBe('renewed.lab.test');
    } finally {
      fs.writeFileSync(t.cert, renewed);
    }
    expect(mtad.proc.exitCode).toBe(null);
  });
});

describe('MTAD_TLS_REQUIRED=yes', () => {
  let t: ReturnType<typeof tlsInstance>;
  let mtad: Mtad;
  beforeAll(async () => {
    t = tlsInstance();
    mtad = await startMtad({ dir: t.dir, env: { ...t.env, MTAD_TLS_REQUIRED: 'yes' } });
  });
  afterAll(async () => {
    await mtad.stop();
    removeInstance(t.dir);
  });

  it('refuses MAIL before STARTTLS with 530 5.7.0, and accepts it after', async () => {
    const c = await SmtpClient.connect(mtad.port);
    await c.cmd('EHLO client.example.org');
    expect((await c.cmd('MAIL FROM:<carol@example.org>')).raw).toBe('530 5.7.0 Must issue a STARTTLS command first\r\n');
    expect((await c.cmd('STARTTLS')).code).toBe(220);
    const s = await c.startTls(secureOpts(t.cert));
    await s.cmd('EHLO client.example.org');
    expect((await s.send('carol@example.org', [`alice@${HOSTNAME}`], 'Subject: required\r\n\r\nafter TLS\r\n')).code).toBe(250);
    await s.quit();
    expect(mtad.output()).toMatch(/NOQUEUE: reject: MAIL from unknown\[127\.0\.0\.1\]: 530 5\.7\.0 Must issue a STARTTLS command first/);
    await mtad.waitForLog(/status=sent/);
  });
});

describe('bad TLS files stop mtad at start with one line', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach(removeInstance));
  const start = (env: Record<string, string>, dir: string): { status: number | null; stderr: string } => {
    const r = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'mtad')], { env: instanceEnv(dir, env), encoding: 'utf8', timeout: 30000 });
    return { status: r.status, stderr: r.stderr };
  };

  it('a missing file (66), a key open to others (78), not a certificate (78), a key of another certificate (78), a key others could swap (77); --check says the same', () => {
    const t = tlsInstance();
    const other = tlsInstance();
    dirs.push(t.dir, other.dir);
    const cases: Array<[Record<string, string>, number, RegExp, () => void]> = [
      [{ ...t.env, MTAD_TLS_CERT: path.join(t.dir, 'missing.pem') }, 66, /MTAD_TLS_CERT: cannot read the TLS certificate .*missing\.pem: no such file or directory/, () => undefined],
      [t.env, 78, /MTAD_TLS_KEY: the TLS key .*key\.pem is open to other users \(mode 644\): chmod 640 it/, () => fs.chmodSync(t.key, 0o644)],
      [{ ...t.env, MTAD_TLS_CERT: t.key }, 78, /MTAD_TLS_CERT: .*key\.pem is not a PEM certificate/, () => fs.chmodSync(t.key, 0o600)],
      [{ ...t.env, MTAD_TLS_CERT: other.cert }, 78, /MTAD_TLS_KEY: .*key\.pem is not the key of the certificate /, () => undefined],
      [{ MTAD_TLS_CERT: t.cert }, 78, /MTAD_TLS_KEY: "" must be set too when MTAD_TLS_CERT is/, () => undefined],
      // As for the accounts files: whoever could swap the key (here: anyone, through its directory) could be this server.
      [{ MTAD_TLS_CERT: path.join(t.dir, 'open', 'cert.pem'), MTAD_TLS_KEY: path.join(t.dir, 'open', 'key.pem') }, 77,
        /MTAD_TLS_KEY: will not trust .*open\/key\.pem: the directory .*open is writable by every user \(mode 0777\)/, () => {
          fs.mkdirSync(path.join(t.dir, 'open'));
          fs.chmodSync(path.join(t.dir, 'open'), 0o777);
          for (const f of ['cert.pem', 'key.pem']) fs.cpSync(path.join(t.dir, 'tls', f), path.join(t.dir, 'open', f), { preserveTimestamps: true });
          fs.chownSync(path.join(t.dir, 'open', 'key.pem'), fs.statSync(t.key).uid, fs.statSync(t.key).gid);
        }],
      [{ MTAD_TLS_REQUIRED: 'yes' }, 78, /MTAD_TLS_REQUIRED: "yes" needs MTAD_TLS_CERT and MTAD_TLS_KEY/, () => undefined],
    ];
    for (const [env, code, re, prepare] of cases) {
      prepare();
      const r = start(env, t.dir);
      expect(r.status, r.stderr).toBe(code);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      const check = runCli('mtad', ['--check'], instanceEnv(t.dir, env));
      expect(check.status, check.stdout).toBe(code);
      expect(check.stdout + check.stderr).toMatch(re);
    }
  });

  it.skipIf(needsRoot('TLS key only root can read', 'only root can start mtad as root'))('a key only root can read stops mtad before it serves (77): SIGHUP, run as its user, could not reload it', () => {
    const t = tlsInstance();
    dirs.push(t.dir);
    fs.chownSync(t.key, 0, 0);
    const r = start(t.env, t.dir);
    expect(r.status, r.stderr).toBe(77);
    expect(r.stderr).toMatch(/^mtad: user nobody, which mtad runs as, cannot use the TLS files: .*permission denied \(chown nobody .*key\.pem; chmod 600 /);
    const check = runCli('mtad', ['--check'], instanceEnv(t.dir, t.env));
    expect(check.stdout).toMatch(/problem: nobody \(uid \d+\) cannot read .*key\.pem/);
  });
});

describe('without a certificate', () => {
  let mtad: Mtad;
  beforeAll(async () => { mtad = await startMtad({ users: ['alice'] }); });
  afterAll(async () => {
    await mtad.stop();
    removeInstance(mtad.dir);
  });

  it('the plain session is byte for byte the one recorded before TLS existed: nothing advertised, STARTTLS unknown', async () => {
    const recorded = fs.readFileSync(path.join(__dirname, 'fixtures', 'plain-session.txt'), 'latin1');
    expect(await plainTranscript(mtad.port)).toBe(recorded);
    expect(mtad.output()).not.toMatch(/TLS/);
  });
});

async function expectEventually(cond: () => boolean, timeoutMs = 20000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}
