// sendmail(1) for mtad. A local submission is an SMTP session with the running
// mtad on loopback: the same policy decides each recipient (all are checked
// before anything is accepted), the same receiving code writes the message, and
// exit 0 means what 250 means (durable). XLOCAL asks mtad to record the
// submitting user, whose uid mtad takes from the kernel's socket table, so no
// option, header or environment variable of the caller can change it.
// The message is read whole (spooled past 256 KiB) before DATA, so a slow writer
// (cron's job output) holds no transaction open; NOOPs keep the session alive meanwhile.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import type { Readable } from 'node:stream';
import { Config, describeErrno } from '../config';
import { rfc5322Date } from '../delivery/mbox';
import { userById } from '../system/passwd';
import { CliError, EX } from '../cli/common';
import { fieldValue, HeaderField, Input, parseAddressList, readInput } from './message';
import type { Options } from './options';
import { Reply, SmtpConnection } from './smtp';

/** Generous: mtad may be waiting for a mailbox lock or a slow disk before it answers. */
const REPLY_TIMEOUT_MS = 10 * 60 * 1000;

export function mtadAddress(config: Config): { host: string; port: number } {
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host === '::' ? '::1' : config.host;
  return { host, port: config.port };
}

/** How long a local submission waits out mtad's connection limits (421 at the greeting) before it gives up with 75. */
export const BUSY_WAIT_MS = 60 * 1000;

/**
 * Connects to mtad, or explains why not and how to get the message through. A
 * 421 greeting (too many connections, in all or from this machine's address) is
 * temporary: a burst of local submissions (cron at the full hour) waits for a
 * slot, up to BUSY_WAIT_MS, instead of failing.
 */
export async function connectMtad(config: Config, trace?: (l: string) => void, busyWaitMs = BUSY_WAIT_MS): Promise<SmtpConnection> {
  const { host, port } = mtadAddress(config);
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const giveUp = Date.now() + busyWaitMs;
  let pause = 100;
  try {
    for (;;) {
      const conn = await SmtpConnection.connect(host, port, REPLY_TIMEOUT_MS, trace);
      const greeting = await conn.reply().catch((err: Error) => { conn.socket.destroy(); throw err; });
      if (greeting.code === 220) {
        conn.greeting = greeting;
        return conn;
      }
      conn.socket.destroy();
      if (greeting.code !== 421 || Date.now() + pause > giveUp) throw failure(greeting, `mtad at ${where} does not take mail now`);
      trace?.(`sendmail: mtad is busy (${text(greeting)}); trying again in ${pause} ms`);
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(5000, pause * 2);
    }
  } catch (err) {
    if (err instanceof CliError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ECONNREFUSED') {
      throw new CliError(`mtad is not running (nothing answers on ${where}): the message was not sent; ` +
        'start mtad (systemctl start mtad, or node bin/mtad as root) and send it again', EX.TEMPFAIL);
    }
    throw new CliError(`cannot talk to mtad at ${where}: ${code ?? (err as Error).message}: the message was not sent; try again later`, EX.TEMPFAIL);
  }
}

/** Asks mtad to record the kernel's word on who we are; without it nothing is sent. */
export async function identify(conn: SmtpConnection): Promise<void> {
  const r = await conn.command('XLOCAL');
  if (r.code !== 250) {
    throw new CliError(`mtad cannot tell which local user is submitting (${text(r)}): the message was not sent`, EX.UNAVAILABLE);
  }
}

interface Login {
  name: string;
  fullName: string;
}

function login(): Login {
  const uid = process.getuid?.() ?? -1;
  const u = userById(uid);
  if (!u) throw new CliError(`no login name for user id ${uid} in /etc/passwd: give a sender with -f`, EX.NOUSER);
  // GECOS: the full name is the first comma-separated field; "&" stands for the login name, capitalised.
  const full = (u.gecos ?? '').split(',')[0].replace(/&/g, u.name.charAt(0).toUpperCase() + u.name.slice(1));
  return { name: u.name, fullName: full };
}

const BAD_ADDRESS = /[\x00-\x20\x7f<>]/;

export async function sendmail(opts: Options, config: Config): Promise<number> {
  const trace = opts.verbose ? (l: string) => process.stderr.write(`${l}\n`) : undefined;
  const recipients: string[] = [];
  for (const arg of opts.recipients) {
    for (const a of parseAddressList(arg)) {
      if (BAD_ADDRESS.test(a)) throw new CliError(`"${printableArg(a)}": bad address syntax`, EX.USAGE);
      recipients.push(a);
    }
  }
  if (!recipients.length && !opts.extract) {
    throw new CliError('no recipient addresses: name them on the command line, or use -t to take them from the message', EX.USAGE);
  }
  let sender: string;
  let fromName: string | undefined;
  if (opts.sender !== undefined) {
    const parsed = parseAddressList(opts.sender);
    if (parsed.length > 1 || (parsed[0] && BAD_ADDRESS.test(parsed[0]))) throw new CliError(`-f "${printableArg(opts.sender)}": bad address syntax`, EX.USAGE);
    sender = qualify(parsed[0] ?? '', config);
  } else {
    const me = login();
    sender = `${me.name}@${config.hostname}`;
    fromName = me.fullName;
  }
  fromName = opts.fullName ?? process.env.NAME ?? fromName;

  // mtad first, the input after: when mtad is down or a named recipient is refused,
  // the caller's input is left unread for it to keep (mail's dead.letter).
  const conn = await connectMtad(config, trace);
  try {
    await expect(conn.command('EHLO localhost'), 250);
    await identify(conn);
    if (recipients.length) {
      const refused = await offer(conn, sender, recipients);
      if (refused) return refused;
      await expect(conn.command('RSET'), 250);
    }
    // A NOOP well within mtad's idle timeout (the same configuration says what it is), at least once a minute.
    const reading = readInput(standardInput(), opts.dotEnds).catch((err: NodeJS.ErrnoException) => {
      throw new CliError(`cannot read the message (${describeErrno(err)}${err.code === 'ENOSPC' ? ` in ${os.tmpdir()}` : ''}): it was not sent`,
        err.code === 'ENOSPC' ? EX.TEMPFAIL : EX.IOERR);
    });
    const input = await keptAlive(conn, reading, Math.min(60, config.idleTimeout / 2) * 1000);
    try {
      if (opts.extract) {
        for (const a of extractRecipients(input.fields)) {
          if (BAD_ADDRESS.test(a)) throw new CliError(`"${printableArg(a)}" in the message header: bad address syntax`, EX.DATAERR);
          recipients.push(a);
        }
        if (!recipients.length) throw new CliError('no recipient addresses found in the message header (-t)', EX.USAGE);
      }
      const refused = await offer(conn, sender, recipients);
      if (refused) return refused;
      await expect(conn.command('DATA'), 354);
      const r = await conn.data(parts(header(input, sender || `${login().name}@${config.hostname}`, fromName, config.hostname), input));
      if (r.code !== 250) throw failure(r, 'mtad did not take the message');
      if (trace) trace(`sendmail: ${text(r)}`);
      return EX.OK;
    } finally {
      await input.body.close();
    }
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError(`lost the connection to mtad (${(err as Error).message}): the message was not sent; try again`, EX.TEMPFAIL);
  } finally {
    await conn.quit();
  }
}

/**
 * MAIL and a RCPT for each recipient (each once): 0 when all are accepted, else
 * the refusals are printed, one line each, and their sysexits status returned.
 */
async function offer(conn: SmtpConnection, sender: string, recipients: string[]): Promise<number> {
  await expect(conn.command(`MAIL FROM:<${sender}>`), 250);
  const refused: Reply[] = [];
  for (const rcpt of new Map(recipients.map((r) => [r.toLowerCase(), r])).values()) {
    const r = await conn.command(`RCPT TO:<${rcpt}>`);
    if (r.code !== 250 && r.code !== 251) refused.push(r);
  }
  for (const r of refused) process.stderr.write(`sendmail: ${text(r)}: message not sent\n`);
  return refused.length ? rcptStatus(refused[0]) : EX.OK;
}

/** While the input is read (a cron job may print for hours), NOOPs keep mtad's idle timeout away. */
async function keptAlive<T>(conn: SmtpConnection, work: Promise<T>, everyMs: number): Promise<T> {
  let pending: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => { pending = pending.then(() => conn.command('NOOP')).catch(() => undefined); }, everyMs);
  try {
    return await work;
  } finally {
    clearInterval(timer);
    await pending;
  }
}

/**
 * Standard input; a regular file (bsd-mailx hands over its temp file) is read at
 * explicit positions from its offset, which stays where it was: mailx saves
 * dead.letter from that offset when sendmail fails.
 */
function standardInput(): Readable {
  try {
    if (fs.fstatSync(0).isFile()) {
      const pos = Number(/^pos:\s*(\d+)/m.exec(fs.readFileSync('/proc/self/fdinfo/0', 'utf8'))?.[1]);
      if (Number.isInteger(pos)) return fs.createReadStream('/dev/stdin', { fd: 0, start: pos, autoClose: false });
    }
  } catch {
    // not a file, or no /proc: read it as a stream
  }
  return process.stdin;
}

async function expect(p: Promise<Reply>, code: number): Promise<Reply> {
  const r = await p;
  if (r.code !== code) throw failure(r, 'mtad refused the message');
  return r;
}

/** Unknown user 67, not ours to deliver 77, other refusals 69, try-again 75 (sysexits). */
function rcptStatus(r: Reply): number {
  if (r.code >= 400 && r.code < 500) return EX.TEMPFAIL;
  const enhanced = /^(\d\.\d+\.\d+)/.exec(r.lines[0] ?? '')?.[1];
  if (enhanced === '5.1.1') return EX.NOUSER;
  if (enhanced === '5.7.1') return EX.NOPERM;
  return EX.UNAVAILABLE;
}

function failure(r: Reply, what: string): CliError {
  return new CliError(`${what}: ${r.code} ${text(r)}: the message was not sent`, r.code >= 400 && r.code < 500 ? EX.TEMPFAIL : EX.UNAVAILABLE);
}

/** A reply's text without its enhanced status code. */
function text(r: Reply): string {
  return r.lines.map((l) => l.replace(/^\d\.\d+\.\d+ /, '')).join(' ');
}

function printableArg(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, '?').slice(0, 200);
}

function qualify(address: string, config: Config): string {
  return !address || address.includes('@') ? address : `${address}@${config.hostname}`;
}

/** -t: To, Cc and Bcc; or their Resent- forms when the message is being resent (as Postfix does). */
function extractRecipients(fields: HeaderField[]): string[] {
  const resent = fields.some((f) => f.name.startsWith('resent-'));
  const names = resent ? ['resent-to', 'resent-cc', 'resent-bcc'] : ['to', 'cc', 'bcc'];
  return fields.filter((f) => names.includes(f.name)).flatMap((f) => parseAddressList(fieldValue(f)));
}

/**
 * The header as stored: the user's fields, Bcc and Resent-Bcc removed (Postfix's
 * cleanup does this for every local submission), then what is missing of
 * Message-Id, Date and From, as cleanup adds them.
 */
function header(input: Input, fromAddress: string, fullName: string | undefined, hostname: string): Buffer[] {
  const out = input.fields.filter((f) => f.name !== 'bcc' && f.name !== 'resent-bcc').map((f) => f.raw);
  const has = (n: string): boolean => input.fields.some((f) => f.name === n);
  const now = new Date();
  const added: string[] = [];
  if (!has('message-id')) {
    const stamp = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
    added.push(`Message-Id: <${stamp}.${crypto.randomBytes(6).toString('hex')}@${hostname}>`);
  }
  if (!has('date')) added.push(`Date: ${rfc5322Date(now)}`);
  if (!has('from')) added.push(`From: ${displayName(fullName)}${fullName ? `<${fromAddress}>` : fromAddress}`);
  if (added.length) out.push(Buffer.from(`${added.join('\n')}\n`, 'utf8'));
  if (input.separator) out.push(Buffer.from('\n'));
  return out;
}

/** A full name as an RFC 5322 display name: quoted when it holds specials, no line breaks. */
function displayName(name: string | undefined): string {
  const n = (name ?? '').replace(/[\x00-\x1f\x7f]/g, ' ').trim();
  if (!n) return '';
  return /[()<>[\]:;@\\,."]/.test(n) ? `"${n.replace(/(["\\])/g, '\\$1')}" ` : `${n} `;
}

async function* parts(head: Buffer[], input: Input): AsyncGenerator<Buffer> {
  yield* head;
  yield* input.body.read();
}
