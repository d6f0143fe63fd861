// Configuration: etc/mtad.env (or the file MTAD_CONFIG names) read with dotenv,
// overridden key by key by the environment. Every key is validated here, once,
// so that a bad value stops mtad with one line that names it (exit 78, EX_CONFIG).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import dotenv from 'dotenv';

/** The checkout (or install) root: relative paths in the configuration are taken from here. */
export const ROOT = path.resolve(__dirname, '..');

export interface Config {
  hostname: string;
  domains: string[];
  host: string;
  port: number;
  spoolDir: string;
  queueDir: string;
  usersFile: string;
  aliasesFile: string;
  maxMessageSize: number;
  maxRecipients: number;
  maxClients: number;
  maxClientsPerIp: number;
  maxLineLength: number;
  maxErrors: number;
  vrfy: boolean;
  expn: boolean;
  logLevel: 'error' | 'warn' | 'info' | 'debug';
  runAs: string;
  idleTimeout: number; // seconds
  transactionTimeout: number; // seconds
  lockTimeout: number; // seconds
  staleLockTime: number; // seconds
  retryMinDelay: number; // seconds
  retryMaxDelay: number; // seconds
  shutdownGrace: number; // seconds
  reverseDns: boolean;
  trace: boolean;
  maxQueueLifetime: number; // seconds
  /** Seconds after which a sender hears that its mail is still waiting; 0 = never. */
  delayWarning: number;
  /** Bytes; 0 = no limit. */
  mailboxSizeLimit: number;
  /** Characters that start an address extension (alice+lab3); empty = none. */
  recipientDelimiter: string;
  /** PEM certificate (chain) and key for STARTTLS and STLS; null: no TLS, nothing advertised. */
  tlsCert: string | null;
  tlsKey: string | null;
  /** Refuse MAIL (SMTP) and USER/PASS/AUTH (POP3) until the session is encrypted. */
  tlsRequired: boolean;
  /** POP3 port, or null when POP3 is off; `pop3PortFollows` when it was derived from MTAD_PORT, not chosen. */
  pop3Port: number | null;
  pop3PortFollows: boolean;
  pop3Host: string;
  pop3IdleTimeout: number; // seconds
  pop3AuthDelay: number; // seconds
  /** The file the values came from, or null when none was read. */
  source: string | null;
}

export class ConfigError extends Error {
  readonly exitCode = 78;
}

type Raw = Record<string, string>;

const KEYS = [
  'MTAD_CONFIG', 'MTAD_HOSTNAME', 'MTAD_DOMAINS', 'MTAD_HOST', 'MTAD_PORT', 'MTAD_SPOOL_DIR',
  'MTAD_QUEUE_DIR', 'MTAD_USERS_FILE', 'MTAD_ALIASES_FILE', 'MTAD_MAX_MESSAGE_SIZE',
  'MTAD_MAX_RECIPIENTS', 'MTAD_MAX_CLIENTS', 'MTAD_MAX_CLIENTS_PER_IP', 'MTAD_VRFY', 'MTAD_EXPN',
  'MTAD_LOG_LEVEL', 'MTAD_RUN_AS', 'MTAD_IDLE_TIMEOUT', 'MTAD_LOCK_TIMEOUT', 'MTAD_RETRY_MIN_DELAY',
  'MTAD_RETRY_MAX_DELAY', 'MTAD_SHUTDOWN_GRACE', 'MTAD_REVERSE_DNS', 'MTAD_TRACE',
  'MTAD_MAX_LINE_LENGTH', 'MTAD_MAX_ERRORS',
  'MTAD_MAILBOX_SIZE_LIMIT', 'MTAD_RECIPIENT_DELIMITER',
  'MTAD_TLS_CERT', 'MTAD_TLS_KEY', 'MTAD_TLS_REQUIRED',
  'MTAD_TRANSACTION_TIMEOUT',
  'MTAD_STALE_LOCK_TIME',
  'MTAD_MAX_QUEUE_LIFETIME', 'MTAD_DELAY_WARNING',
  'MTAD_POP3_PORT', 'MTAD_POP3_HOST', 'MTAD_POP3_IDLE_TIMEOUT', 'MTAD_POP3_AUTH_DELAY',
] as const;

export const HOSTNAME_RE = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i;

export const DEFAULT_CONFIG_FILE = path.join(ROOT, 'etc', 'mtad.env');

/**
 * Reads the configuration. `env` is the process environment (injected for tests);
 * its MTAD_* values win over the file's.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const named = env.MTAD_CONFIG;
  const file = named ? path.resolve(named) : DEFAULT_CONFIG_FILE;
  let fromFile: Raw = {};
  let source: string | null = null;
  try {
    fromFile = dotenv.parse(fs.readFileSync(file));
    source = file;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // The shipped file may be absent in an install; a file someone named must exist.
    if (named || code !== 'ENOENT') {
      throw new ConfigError(`MTAD_CONFIG: cannot read ${file}: ${describeErrno(err)}`);
    }
  }
  for (const key of Object.keys(fromFile)) {
    if (!(KEYS as readonly string[]).includes(key)) {
      throw new ConfigError(`${key}: unknown key in ${file} (known keys: see etc/mtad.env)`);
    }
  }
  const raw: Raw = { ...fromFile };
  for (const key of KEYS) {
    const v = env[key];
    if (v !== undefined) raw[key] = v;
  }
  const c = parseRaw(raw);
  c.source = source;
  return c;
}

function parseRaw(raw: Raw): Config {
  const get = (key: string): string | undefined => {
    const v = raw[key];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };

  const hostname = (get('MTAD_HOSTNAME') ?? os.hostname()).toLowerCase();
  if (!HOSTNAME_RE.test(hostname)) fail('MTAD_HOSTNAME', hostname, 'is not a valid host name');

  let domains = [hostname, 'localhost'];
  const d = get('MTAD_DOMAINS');
  if (d !== undefined) {
    domains = d.split(',').map((s) => s.trim().toLowerCase().replace(/\.$/, '')).filter(Boolean);
    if (!domains.length) fail('MTAD_DOMAINS', d, 'names no domain');
    for (const dom of domains) {
      if (!HOSTNAME_RE.test(dom)) fail('MTAD_DOMAINS', dom, 'is not a valid domain name');
    }
  }

  const host = get('MTAD_HOST') ?? '0.0.0.0';
  if (!net.isIP(host)) fail('MTAD_HOST', host, 'is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::)');

  const spoolDir = resolvePath(get('MTAD_SPOOL_DIR') ?? 'spool');
  const queueDir = resolvePath(get('MTAD_QUEUE_DIR') ?? path.join(spoolDir, '.queue'));
  if (queueDir === spoolDir) fail('MTAD_QUEUE_DIR', queueDir, 'must not be the spool directory itself');

  const logLevel = (get('MTAD_LOG_LEVEL') ?? 'info').toLowerCase();
  if (!['error', 'warn', 'info', 'debug'].includes(logLevel)) {
    fail('MTAD_LOG_LEVEL', logLevel, 'must be one of error, warn, info, debug');
  }
  const runAs = get('MTAD_RUN_AS') ?? '';
  if (runAs && !/^[a-z_][a-z0-9_.-]*\$?$/i.test(runAs)) fail('MTAD_RUN_AS', runAs, 'is not a user name');

  const retryMinDelay = num(get, 'MTAD_RETRY_MIN_DELAY', 30, 0.1, 86400, false);
  const retryMaxDelay = num(get, 'MTAD_RETRY_MAX_DELAY', 3600, 0.1, 7 * 86400, false);
  if (retryMaxDelay < retryMinDelay) {
    fail('MTAD_RETRY_MAX_DELAY', String(retryMaxDelay), `must not be less than MTAD_RETRY_MIN_DELAY (${retryMinDelay})`);
  }

  const maxMessageSize = num(get, 'MTAD_MAX_MESSAGE_SIZE', 10240000, 1024, 2 ** 40, true);
  const mailboxSizeLimit = num(get, 'MTAD_MAILBOX_SIZE_LIMIT', 51200000, 0, 2 ** 50, true);
  // Postfix's fatal error: a message under one limit but over the other could never be delivered.
  if (mailboxSizeLimit && maxMessageSize > mailboxSizeLimit) {
    fail('MTAD_MAX_MESSAGE_SIZE', String(maxMessageSize), `is above MTAD_MAILBOX_SIZE_LIMIT (${mailboxSizeLimit}): ` +
      'a message that big could never be delivered (lower it, or raise MTAD_MAILBOX_SIZE_LIMIT; 0 = no mailbox limit)');
  }
  // Set but empty turns extensions off, so the raw value is read here, not through get().
  const delimiter = raw.MTAD_RECIPIENT_DELIMITER === undefined ? '+' : raw.MTAD_RECIPIENT_DELIMITER.trim();
  if (!/^[-+_=.~]{0,8}$/.test(delimiter)) {
    fail('MTAD_RECIPIENT_DELIMITER', delimiter, 'must be empty or characters from + - _ = . ~ (e.g. +)');
  }
  const tlsCert = get('MTAD_TLS_CERT');
  const tlsKey = get('MTAD_TLS_KEY');
  if (!tlsCert !== !tlsKey) {
    fail(tlsCert ? 'MTAD_TLS_KEY' : 'MTAD_TLS_CERT', '', `must be set too when ${tlsCert ? 'MTAD_TLS_CERT' : 'MTAD_TLS_KEY'} is (a certificate and its key: mta-certificate makes both)`);
  }
  const tlsRequired = bool(get, 'MTAD_TLS_REQUIRED', false);
  if (tlsRequired && !tlsCert) fail('MTAD_TLS_REQUIRED', get('MTAD_TLS_REQUIRED')!, 'needs MTAD_TLS_CERT and MTAD_TLS_KEY');
  const port = num(get, 'MTAD_PORT', 25, 0, 65535, true);
  const pop3 = pop3Port(get, port);
  const pop3Host = get('MTAD_POP3_HOST') ?? host;
  if (!net.isIP(pop3Host)) fail('MTAD_POP3_HOST', pop3Host, 'is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::)');

  return {
    hostname,
    domains,
    host,
    port,
    spoolDir,
    queueDir,
    usersFile: resolvePath(get('MTAD_USERS_FILE') ?? 'etc/users'),
    aliasesFile: resolvePath(get('MTAD_ALIASES_FILE') ?? 'etc/aliases'),
    maxMessageSize,
    maxRecipients: num(get, 'MTAD_MAX_RECIPIENTS', 100, 1, 100000, true),
    maxClients: num(get, 'MTAD_MAX_CLIENTS', 100, 0, 1000000, true),
    maxClientsPerIp: num(get, 'MTAD_MAX_CLIENTS_PER_IP', 50, 0, 1000000, true),
    maxLineLength: num(get, 'MTAD_MAX_LINE_LENGTH', 2048, 512, 1048576, true),
    maxErrors: num(get, 'MTAD_MAX_ERRORS', 20, 1, 1000, true),
    vrfy: bool(get, 'MTAD_VRFY', false),
    expn: bool(get, 'MTAD_EXPN', false),
    logLevel: logLevel as Config['logLevel'],
    runAs,
    idleTimeout: num(get, 'MTAD_IDLE_TIMEOUT', 300, 1, 86400, false),
    transactionTimeout: num(get, 'MTAD_TRANSACTION_TIMEOUT', 600, 1, 86400, false),
    lockTimeout: num(get, 'MTAD_LOCK_TIMEOUT', 10, 0.05, 3600, false),
    // Postfix's stale_lock_time; proper-lockfile needs at least 2 s.
    staleLockTime: num(get, 'MTAD_STALE_LOCK_TIME', 500, 2, 86400, false),
    retryMinDelay,
    retryMaxDelay,
    shutdownGrace: num(get, 'MTAD_SHUTDOWN_GRACE', 30, 0, 3600, false),
    reverseDns: bool(get, 'MTAD_REVERSE_DNS', false),
    trace: bool(get, 'MTAD_TRACE', false),
    mailboxSizeLimit,
    recipientDelimiter: delimiter,
    tlsCert: tlsCert ? resolvePath(tlsCert) : null,
    tlsKey: tlsKey ? resolvePath(tlsKey) : null,
    tlsRequired,
    maxQueueLifetime: duration(get, 'MTAD_MAX_QUEUE_LIFETIME', 5 * 86400, 1),
    delayWarning: duration(get, 'MTAD_DELAY_WARNING', 0, 0),
    pop3Port: pop3.port,
    pop3PortFollows: pop3.follows,
    pop3Host,
    // RFC 1939 section 3: an autologout timer of at least 10 minutes.
    pop3IdleTimeout: num(get, 'MTAD_POP3_IDLE_TIMEOUT', 600, 600, 86400, false),
    pop3AuthDelay: num(get, 'MTAD_POP3_AUTH_DELAY', 2, 0, 60, false),
    source: null,
  };
}

// POP3 sits 85 above SMTP when only MTAD_PORT was chosen: 25 gives 110, the
// unprivileged 2525 gives 2610 and 1025 gives 1110 (the test catchers' pair), and
// 0 (any free port) gives 0. A user who moved SMTP never has to think of 110.
const POP3_OFFSET = 85;

function pop3Port(get: (k: string) => string | undefined, smtpPort: number): { port: number | null; follows: boolean } {
  const v = get('MTAD_POP3_PORT');
  if (v !== undefined) {
    if (/^(off|no|none)$/i.test(v)) return { port: null, follows: false };
    const n = num(get, 'MTAD_POP3_PORT', 110, 0, 65535, true);
    // 0 means off, as in Postfix's "0 disables"; any free port is for tests, which set MTAD_PORT=0.
    return { port: n === 0 ? null : n, follows: false };
  }
  if (smtpPort === 25) return { port: 110, follows: false };
  if (smtpPort === 0) return { port: 0, follows: true };
  if (smtpPort + POP3_OFFSET > 65535) return { port: null, follows: true };
  return { port: smtpPort + POP3_OFFSET, follows: true };
}

function resolvePath(p: string): string {
  return path.resolve(ROOT, p);
}

function num(
  get: (k: string) => string | undefined, key: string, def: number,
  min: number, max: number, integer: boolean,
): number {
  const v = get(key);
  if (v === undefined) return def;
  const n = Number(v);
  if (!/^[0-9]+(\.[0-9]+)?$/.test(v) || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    fail(key, v, `is not ${integer ? 'a whole number' : 'a number'}`);
  }
  if (n < min || n > max) fail(key, v, `is out of range (${min} to ${max})`);
  return n;
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400 };

/** Seconds, written as Postfix's time values are: "300", "300s", "30m", "5d", "1w". */
function duration(get: (k: string) => string | undefined, key: string, def: number, min: number): number {
  const v = get(key);
  if (v === undefined) return def;
  const m = /^([0-9]+(?:\.[0-9]+)?)([smhdw]?)$/.exec(v);
  if (!m) return fail(key, v, 'is not a time (seconds, or a number with s, m, h, d or w: 5d)');
  const n = Number(m[1]) * UNITS[m[2] || 's'];
  if (n < min || n > 365 * 86400) fail(key, v, `is out of range (${min} seconds to 365 days)`);
  return n;
}

function bool(get: (k: string) => string | undefined, key: string, def: boolean): boolean {
  const v = get(key);
  if (v === undefined) return def;
  const s = v.toLowerCase();
  if (['1', 'yes', 'on', 'true'].includes(s)) return true;
  if (['0', 'no', 'off', 'false'].includes(s)) return false;
  return fail(key, v, 'must be yes or no');
}

function fail(key: string, value: string, what: string): never {
  throw new ConfigError(`${key}: "${value}" ${what}`);
}

export function describeErrno(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'ENOENT': return 'no such file or directory';
    case 'EACCES': case 'EPERM': return 'permission denied';
    case 'EISDIR': return 'is a directory';
    case 'ENOTDIR': return 'not a directory';
    case 'ENOSPC': return 'no space left on device';
    case 'EROFS': return 'read-only file system';
    default: return e.code ? `${e.code}: ${e.message}` : String(e.message ?? err);
  }
}
