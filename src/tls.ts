// The certificate and key behind STARTTLS (SMTP) and STLS (POP3): read from the
// PEM files MTAD_TLS_CERT and MTAD_TLS_KEY, checked (the key belongs to the
// certificate and is closed to other users), and read again on SIGHUP, keeping
// the previous pair when the new one is not usable. TLS 1.2 is the oldest
// version offered: 1.0 and 1.1 are broken and gone from every client in use.
import crypto from 'node:crypto';
import fs from 'node:fs';
import tls from 'node:tls';
import { untrusted } from './accounts/trust';
import { describeErrno } from './config';
import { log } from './log';

export const MIN_TLS_VERSION = 'TLSv1.2';

export class TlsError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

export interface TlsMaterial {
  key: Buffer;
  cert: Buffer;
  /** One context for every protocol, so that SMTP and POP3 always present the same certificate. */
  context: tls.SecureContext;
  /** "CN=lab.test, DNS:lab.test, DNS:localhost, valid until ..." for the log and --check. */
  summary: string;
  expired: boolean;
}

/** Key bits no one but the owner and the group may have: others' rwx and the group's w. */
const KEY_MODE_FORBIDDEN = 0o027;

/**
 * Reads and checks the pair. Throws a TlsError with one line and the exit code
 * mtad stops with: 66 for a file it cannot read, 77 for a file that someone
 * other than root or `uids` (mtad's users) could replace, as for the accounts
 * files (accounts/trust.ts), 78 for a key open to others or files that are not
 * a matching PEM certificate and key.
 */
export function readTls(certFile: string, keyFile: string, uids: readonly number[]): TlsMaterial {
  for (const [file, variable] of [[keyFile, 'MTAD_TLS_KEY'], [certFile, 'MTAD_TLS_CERT']]) {
    let why: string | null;
    try {
      why = untrusted(file, uids);
    } catch (err) {
      throw new TlsError(`${variable}: cannot read ${file}: ${describeErrno(err)}`, 66);
    }
    // Whoever can replace the pair can stand in for this server.
    if (why) throw new TlsError(`${variable}: will not trust ${file}: ${why}`, 77);
  }
  const key = readFile(keyFile, 'key', true);
  const cert = readFile(certFile, 'certificate', false);
  let x509: crypto.X509Certificate;
  try {
    x509 = new crypto.X509Certificate(cert);
  } catch {
    throw new TlsError(`MTAD_TLS_CERT: ${certFile} is not a PEM certificate`, 78);
  }
  let priv: crypto.KeyObject;
  try {
    priv = crypto.createPrivateKey(key);
  } catch (err) {
    const encrypted = /passphrase|encrypted/i.test((err as Error).message) || key.includes('ENCRYPTED');
    throw new TlsError(`MTAD_TLS_KEY: ${keyFile} is not ${encrypted ? 'an unencrypted' : 'a PEM'} private key${encrypted ? ' (mtad cannot ask for a passphrase)' : ''}`, 78);
  }
  if (!x509.checkPrivateKey(priv)) {
    throw new TlsError(`MTAD_TLS_KEY: ${keyFile} is not the key of the certificate ${certFile}`, 78);
  }
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext({ key, cert, minVersion: MIN_TLS_VERSION });
  } catch (err) {
    throw new TlsError(`MTAD_TLS_CERT: ${certFile}: ${(err as Error).message}`, 78);
  }
  const expired = Date.parse(x509.validTo) < Date.now();
  const names = [x509.subject.split('\n').find((l) => l.startsWith('CN=')), x509.subjectAltName].filter(Boolean).join(', ');
  return { key, cert, context, summary: `${names || 'no names'}, valid until ${x509.validTo}${expired ? ' (EXPIRED)' : ''}`, expired };
}

function readFile(file: string, what: string, secret: boolean): Buffer {
  const variable = secret ? 'MTAD_TLS_KEY' : 'MTAD_TLS_CERT';
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    throw new TlsError(`${variable}: cannot read the TLS ${what} ${file}: ${describeErrno(err)}`, 66);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new TlsError(`${variable}: ${file} is not a file`, 66);
    if (secret && st.mode & KEY_MODE_FORBIDDEN) {
      throw new TlsError(`${variable}: the TLS key ${file} is open to other users (mode ${(st.mode & 0o777).toString(8)}): chmod 640 it, ` +
        "readable by mtad's user through its owner or group", 78);
    }
    return fs.readFileSync(fd);
  } catch (err) {
    if (err instanceof TlsError) throw err;
    throw new TlsError(`${variable}: cannot read the TLS ${what} ${file}: ${describeErrno(err)}`, 66);
  } finally {
    fs.closeSync(fd);
  }
}

/** The pair in use, and its reload. */
export class TlsFiles {
  private material: TlsMaterial;
  private readonly listeners: ((m: TlsMaterial) => void)[] = [];

  /** `uids`: the users mtad runs as (root is trusted anyway), owners the files may have. */
  constructor(readonly certFile: string, readonly keyFile: string, private readonly uids: readonly number[]) {
    this.material = readTls(certFile, keyFile, uids);
  }

  get current(): TlsMaterial {
    return this.material;
  }

  /** Called with the new pair after each successful reload (SMTP rebuilds its contexts). */
  onReload(listener: (m: TlsMaterial) => void): void {
    this.listeners.push(listener);
  }

  /** Reads the files again; on failure throws and keeps the current pair. */
  loadSync(): TlsMaterial {
    this.material = readTls(this.certFile, this.keyFile, this.uids);
    for (const l of this.listeners) l(this.material);
    return this.material;
  }

  /** SIGHUP: read the files again; a problem is logged and the pair in use stays. */
  reload(): void {
    try {
      const m = this.loadSync();
      log.info(`TLS: reloaded the certificate ${this.certFile}: ${m.summary}`);
    } catch (err) {
      log.warn(`TLS: ${(err as Error).message}; keeping the certificate in use`);
    }
  }
}
