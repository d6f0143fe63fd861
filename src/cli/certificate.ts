// mta-certificate: a self-signed certificate for a lab, in one command. OpenSSL
// (Debian's openssl req) makes it; we only choose the names, the files and
// their modes: the key is written 0600 for the user mtad runs as (mtad reads it
// after giving up root, and again on SIGHUP), the certificate 0644.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { HOSTNAME_RE, loadConfig, ROOT } from '../config';
import { chooseRunAs, isRoot } from '../system/privileges';
import { readTls } from '../tls';
import { CliError, EX, runMain, VERSION } from './common';

const USAGE = `usage: mta-certificate [--host NAME] [--days N] [--force]

Makes a self-signed TLS certificate and key for STARTTLS (SMTP) and STLS (POP3)
with openssl, for the host name NAME (default: MTAD_HOSTNAME), localhost,
127.0.0.1 and ::1. Writes them where MTAD_TLS_CERT and MTAD_TLS_KEY point, or,
when those are unset, to etc/tls/ and prints the two lines for etc/mtad.env.
  --host NAME  the name clients connect to (default: MTAD_HOSTNAME)
  --days N     validity in days (default 365)
  --force      replace existing files
Clients trust it by using the certificate file as their CA file (see README).`;

const DEFAULT_CERT = 'etc/tls/mtad-cert.pem';
const DEFAULT_KEY = 'etc/tls/mtad-key.pem';

runMain('mta-certificate', async (argv) => {
  const config = loadConfig();
  let host = config.hostname;
  let days = 365;
  let force = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
    if (a === '--version') { process.stdout.write(`mta-certificate (mtad) ${VERSION}\n`); return EX.OK; }
    if (a === '--force') force = true;
    else if (a === '--host' && i + 1 < argv.length) host = argv[++i].toLowerCase();
    else if (a === '--days' && i + 1 < argv.length) days = Number(argv[++i]);
    else throw new CliError(`unknown argument "${a}"\n${USAGE}`, EX.USAGE);
  }
  // The name goes into an openssl argument: only a plain host name gets there.
  if (!HOSTNAME_RE.test(host)) throw new CliError(`"${host}" is not a valid host name`, EX.USAGE);
  if (!Number.isInteger(days) || days < 1 || days > 3650) throw new CliError('--days takes a whole number from 1 to 3650', EX.USAGE);

  const configured = !!config.tlsCert;
  const certFile = config.tlsCert ?? path.join(ROOT, DEFAULT_CERT);
  const keyFile = config.tlsKey ?? path.join(ROOT, DEFAULT_KEY);
  for (const f of [certFile, keyFile]) {
    if (!force && fs.existsSync(f)) throw new CliError(`${f} exists already: use --force to replace it`, EX.CANTCREAT);
  }
  // Root makes the key for the user mtad will run as; anyone else makes it for themselves.
  const owner = isRoot() ? chooseRunAs(config.runAs, config.spoolDir) : null;

  const names = [...new Set([host, 'localhost'])].map((n) => `DNS:${n}`).concat('IP:127.0.0.1', 'IP:::1');
  fs.mkdirSync(path.dirname(certFile), { recursive: true, mode: 0o755 });
  fs.mkdirSync(path.dirname(keyFile), { recursive: true, mode: 0o755 });
  // openssl writes into a private directory beside the key; the files are renamed into place when whole.
  const work = fs.mkdtempSync(path.join(path.dirname(keyFile), '.mta-certificate-'));
  try {
    const tmpKey = path.join(work, 'key.pem');
    const tmpCert = path.join(work, 'cert.pem');
    try {
      await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256',
        '-keyout', tmpKey, '-out', tmpCert, '-days', String(days), '-subj', `/CN=${host}`,
        '-addext', `subjectAltName=${names.join(',')}`], { timeout: 120000 });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      if (e.code === 'ENOENT') throw new CliError('openssl is not installed (apt-get install openssl)', EX.UNAVAILABLE);
      throw new CliError(`openssl failed: ${(e.stderr ?? e.message).trim().split('\n')[0]}`, EX.SOFTWARE);
    }
    fs.chmodSync(tmpKey, 0o600);
    fs.chmodSync(tmpCert, 0o644);
    if (owner) fs.chownSync(tmpKey, owner.uid, owner.gid);
    fs.renameSync(tmpCert, certFile);
    fs.renameSync(tmpKey, keyFile);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const m = readTls(certFile, keyFile, [process.geteuid?.() ?? 0, ...(owner ? [owner.uid] : [])]);
  const rel = (f: string): string => (f.startsWith(`${ROOT}/`) ? path.relative(ROOT, f) : f);
  process.stdout.write(`certificate ${certFile} (mode 644): ${m.summary}\n`);
  process.stdout.write(`key         ${keyFile} (mode 600, owner ${owner ? owner.name || owner.uid : 'you'})\n`);
  if (!configured) {
    process.stdout.write(`Put these two lines in ${config.source ?? 'etc/mtad.env'} and restart mtad:\n` +
      `MTAD_TLS_CERT=${rel(certFile)}\nMTAD_TLS_KEY=${rel(keyFile)}\n`);
  } else {
    process.stdout.write('mtad uses these files: restart it, or send it SIGHUP (systemctl reload mtad).\n');
  }
  process.stdout.write(`Clients trust it with ${certFile} as their CA file (mutt: ssl_ca_certificates_file; curl: --cacert).\n`);
  return EX.OK;
});
