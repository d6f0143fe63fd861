// Everything that reaches into smtp-server's internals, in one place, pinned to
// one version. test/unit/internals.test.ts fails loudly if any of these hooks
// points are gone. What we change, and why:
//  - address parsing: the lab types `MAIL FROM: a@b` and `RCPT TO: bob` without
//    brackets, which the library refuses; and recipient policy needs the address
//    exactly as written (source routes, quotes), which the library rewrites;
//  - the 100 ms pause before the greeting: Postfix's smtpd greets at once, and the
//    pause alone caps one-message sessions at 10 per second;
//  - enhanced status codes: our replies carry their own, the library must not add a second;
//  - HELP, VRFY, EXPN, and our XLOCAL (bin/sendmail's local submission): the library has no hooks for them;
//  - limits: a command line over MTAD_MAX_LINE_LENGTH gets 500 and the session goes
//    on (the library closes with 421), errors are counted like Postfix's
//    smtpd_hard_error_limit (the library stops at 10 unrecognised commands, fixed),
//    and the idle timeout says who is closing, as Postfix does;
//  - STARTTLS: a handshake that never finishes is logged with its reason (the
//    library only emits an error event, or nothing when the client just leaves).
//    Input pipelined after STARTTLS is already discarded by the library (upgrade()
//    retires the plaintext parser); test/integration/tls.test.ts holds it to that;
//  - deadlines: the library's idle timeout restarts with every byte, so a client
//    trickling one byte every few seconds would never be cut. A command line must be
//    whole within the idle timeout of our last reply (Postfix's per-record deadline),
//    and a transaction, MAIL to the end of the message, must end within its own;
//  - what a command line may hold (checkCommand, checkArguments): no control
//    characters anywhere, printable ASCII in HELO/EHLO and MAIL (SMTPUTF8 is not
//    offered, RFC 6531), no text after an address without brackets, no MAIL/RCPT
//    parameter that was not offered (555, RFC 5321 4.1.1.11); the library takes
//    unknown parameters silently and decodes lines as UTF-8;
//  - WIZ, SHELL, KILL (the library's jokes answer 2xx) and TURN, ETRN, BDAT and
//    the other verbs we do not implement: 502;
//  - DATA: the first period of every line that starts with one is removed (RFC
//    5321 4.5.2); the library removes it only from "..".
import { SMTPServer } from 'smtp-server';
import { flushLog, holdBehindLog, isHeld, log } from '../log';
import { printable } from '../text';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { SMTPConnection } = require('smtp-server/lib/smtp-connection') as { SMTPConnection: ConnectionClass };
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { SMTPStream } = require('smtp-server/lib/smtp-stream') as { SMTPStream: StreamClass };

export const PINNED_VERSION = '3.21.6';

/** What a connection offers to our command handlers. */
export interface Connection {
  id: string;
  session: { id: string; [key: string]: unknown };
  remoteAddress: string;
  secure?: boolean;
  send(code: number, data: string | string[], context?: string | false): void;
  _server: SMTPServer & { mtadCommands?: ExtraCommands; mtadLimits?: Limits };
}

/** Limits the library does not make configurable, set per server. */
export interface Limits {
  /** Longest command line answered normally; longer ones get 500 5.5.2 and are discarded. */
  maxLineLength: number;
  /** 5xx replies in one session before 421 and close. */
  maxErrors: number;
  /** Milliseconds the client may take to send a whole command line, from our last reply. */
  idleTimeout: number;
  /** Milliseconds one transaction may take, from the reply to MAIL to the end of the message. */
  transactionTimeout: number;
}

/**
 * The library's own cap on a command line (maxCommandLength): past it the line is
 * not even buffered, the client gets 421 and is dropped. Ours (Limits.maxLineLength)
 * is below it, so a long line is answered 500 and the session goes on.
 */
export function hardLineCap(maxLineLength: number): number {
  return Math.max(64 * 1024, 2 * maxLineLength);
}

interface ConnectionState {
  name: string;
  _upgrading?: boolean;
  _closing?: boolean;
  _closed?: boolean;
  _unrecognizedCommands: number;
  _whenWritable(next: () => void): void;
  mtadErrors?: number;
  mtadTimingOut?: boolean;
  remoteAddress: string;
  session: { envelope?: { mailFrom?: unknown } };
  _handlerPending?: boolean;
  _dataStream?: unknown;
  _parser?: { _dataMode?: boolean } | false;
  _onTimeout(): void;
  send: Connection['send'];
  _socket?: { cork(): void; uncork(): void };
  mtadLineTimer?: NodeJS.Timeout;
  mtadTransactionTimer?: NodeJS.Timeout;
}

type Handler = (this: Connection, command: Buffer | string, callback: () => void) => void;

interface ConnectionClass {
  prototype: Record<string, unknown> & {
    init: () => void;
    connectionReady: () => void;
    _onCommand: (command: Buffer, callback?: () => void) => void;
    _onTimeout: () => void;
    close: () => void;
    _onClose: () => void;
    _resetSession: () => void;
    send: Connection['send'];
    _setListeners: (cb: () => void) => void;
    _parseAddressCommand: (name: string, command: Buffer | string) => ParsedAddress | false;
    upgrade: (...args: unknown[]) => void;
    _onError: (err: Error) => void;
    _isSupported: (command: string) => boolean;
  };
}

/** The DATA side of the library's command parser, as far as feedData uses it. */
interface StreamState {
  _dataStream: (NodeJS.WritableStream & { writable: boolean; destroyed: boolean; write(b: Buffer): boolean }) | null;
  _lastBytes: Buffer | false;
  _countDataBytes(len: number): void;
  _endDataMode(chunk: Buffer | false, remainder: Buffer, done: (err?: Error) => void): void;
  /** How the next byte of DATA starts a line: after CRLF (or at the start), after a bare LF, or not at all. */
  mtadLine?: 'crlf' | 'lf' | null;
  /** The byte before was a CR. */
  mtadCR?: boolean;
}

interface StreamClass {
  prototype: Record<string, unknown> & {
    startDataMode: (maxBytes?: number) => unknown;
    _feedDataStream: (chunk: Buffer, done: (err?: Error) => void) => void;
  };
}

export interface ParsedAddress {
  address: string;
  args: Record<string, string | boolean> | false;
  /** The address as the client wrote it, between the brackets if there were any. */
  raw?: string;
  [key: string]: unknown;
}

/** Our answers to HELP, VRFY, EXPN and XLOCAL, set per server. */
export interface ExtraCommands {
  help(conn: Connection): Promise<Reply>;
  vrfy(conn: Connection, arg: string): Promise<Reply>;
  expn(conn: Connection, arg: string): Promise<Reply>;
  xlocal(conn: Connection, arg: string): Promise<Reply>;
}

export interface Reply {
  code: number;
  lines: string[];
}

const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3}(\s|$)/;
// A syntactically fine address that stands in for the recipient while the
// library validates the rest of the RCPT command; policy sees the real one.
const STAND_IN = 'postmaster@mtad.invalid';

let installed = false;

const reply = (conn: Connection, r: Reply): void => conn.send(r.code, r.lines.length === 1 ? r.lines[0] : r.lines);

// Commands whose arguments checkArguments sees before the library does.
const ARGUMENT_CHECKED = ['HELO', 'EHLO', 'MAIL', 'RCPT'] as const;
// Real SMTP verbs (RFC 821, 1985, 2645, 3030, sendmail's debugging commands) that
// mtad does not implement: 502, as RFC 5321 4.2.4 asks; anything else unknown stays 500.
const NOT_IMPLEMENTED = ['TURN', 'ETRN', 'ATRN', 'BDAT', 'SEND', 'SOML', 'SAML', 'VERB', 'WIZ', 'SHELL', 'KILL', 'DEBUG'];

export function installInternals(): void {
  if (installed) return;
  installed = true;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const version = (require('smtp-server/package.json') as { version: string }).version;
  if (version !== PINNED_VERSION) {
    throw new Error(`smtp-server ${version} is installed, but src/smtp/internals.ts is written for ${PINNED_VERSION}`);
  }
  const proto = SMTPConnection.prototype;
  for (const name of ['init', 'connectionReady', 'send', '_setListeners', '_parseAddressCommand', 'handler_VRFY', 'handler_HELP',
    '_onCommand', '_onTimeout', '_whenWritable', 'upgrade', '_onError', 'handler_STARTTLS', 'close', '_onClose', '_resetSession', '_isSupported',
    ...ARGUMENT_CHECKED.map((v) => `handler_${v}`)]) {
    if (typeof proto[name] !== 'function') throw new Error(`smtp-server ${version}: SMTPConnection.${name} is gone`);
  }
  const stream = SMTPStream.prototype;
  for (const name of ['startDataMode', '_feedDataStream', '_countDataBytes', '_endDataMode']) {
    if (typeof stream[name] !== 'function') throw new Error(`smtp-server ${version}: SMTPStream.${name} is gone`);
  }

  // Greet at once (same checks as the original init, without its setTimeout(100)).
  proto.init = function init(this: Connection & typeof proto) {
    this._setListeners(() => {
      const opts = this._server.options as { maxClients?: number };
      if (opts.maxClients && this._server.connections.size > opts.maxClients) {
        this.send(421, `4.7.0 ${(this as unknown as { name: string }).name} Too many connected clients, try again later`);
        return;
      }
      this.connectionReady();
    });
  };

  const send = proto.send;
  proto.send = function (this: Connection & ConnectionState, code, data, context) {
    if (code === 421 && this.mtadTimingOut) {
      data = `4.4.2 ${this.name} Error: timeout exceeded`;
      context = false;
    }
    const first = Array.isArray(data) ? data[0] : data;
    if (typeof first === 'string' && ENHANCED_PREFIX.test(first)) context = false;
    // What the client is told is never ahead of the log (a 250 and its status=sent line):
    // a reply after lines not yet written waits, corked, for the turn's one write of them
    // (log.ts; close() below lets it out first if the socket is ended). A 221 need not
    // wait: nothing is logged between QUIT and its 221, and an earlier reply it follows
    // (a QUIT pipelined after DATA) still holds the socket corked, so it stays behind.
    if (!this._socket) flushLog();
    else if (code !== 221) holdBehindLog(this._socket);
    send.call(this, code, data, context);
    // Our error count replaces the library's fixed one (10 unrecognised commands).
    this._unrecognizedCommands = 0;
    const limits = this._server.mtadLimits;
    if (code >= 500 && limits && !this._closing && !this._closed) {
      this.mtadErrors = (this.mtadErrors ?? 0) + 1;
      if (this.mtadErrors >= limits.maxErrors) send.call(this, 421, `4.7.0 ${this.name} Error: too many errors`, false);
    }
    if (limits && !this._closing && !this._closed) armDeadlines(this, limits);
  };

  // Postfix answers an over-long command line with 500 and reads on; the library
  // would close the session. The line is whole here, so nothing of it runs.
  const onCommand = proto._onCommand;
  proto._onCommand = function (this: Connection & ConnectionState, command, callback) {
    clearTimeout(this.mtadLineTimer);
    const limits = this._server.mtadLimits;
    const refusal = limits && command && command.length > limits.maxLineLength
      ? { code: 500, lines: ['5.5.2 Error: line too long'] }
      : limits && command ? checkCommand(command.toString()) : null;
    if (refusal) {
      // The library logs a command only when it runs it: the trace shows this one too.
      const text = command.toString();
      this._server.logger.debug({ tnx: 'command', cid: this.id, command: text.split(' ')[0].toUpperCase() }, 'C:', text);
      reply(this, refusal);
      setImmediate(() => this._whenWritable(callback ?? (() => undefined)));
      return;
    }
    onCommand.call(this, command, callback);
  };

  // Arguments are checked once the library has checked the order (HELO first).
  for (const verb of ARGUMENT_CHECKED) {
    const handler = proto[`handler_${verb}`] as Handler;
    proto[`handler_${verb}`] = function (this: Connection & typeof proto, command: Buffer | string, callback: () => void) {
      const refusal = this._server.mtadLimits ? checkArguments(verb, command.toString(), offeredParameters(this)) : null;
      if (refusal) { reply(this, refusal); callback(); return; }
      handler.call(this, command, callback);
    };
  }
  const notImplemented: Handler = function (this: Connection, _command, callback) {
    this.send(502, '5.5.1 Error: command not implemented');
    callback();
  };
  for (const verb of NOT_IMPLEMENTED) proto[`handler_${verb}`] = notImplemented;

  const startDataMode = stream.startDataMode;
  stream.startDataMode = function (this: StreamState, maxBytes?: number) {
    this.mtadLine = 'crlf';
    this.mtadCR = false;
    return startDataMode.call(this, maxBytes);
  };
  stream._feedDataStream = feedData;

  const onTimeout = proto._onTimeout;
  proto._onTimeout = function (this: ConnectionState) {
    this.mtadTimingOut = true;
    try {
      onTimeout.call(this);
    } finally {
      this.mtadTimingOut = false;
    }
  };

  // session.mtadStartTls: true from STARTTLS's 220 until onSecure clears it, then the
  // error that ended the handshake; onClose logs it when the handshake never finished.
  const upgrade = proto.upgrade;
  proto.upgrade = function (this: Connection & ConnectionState, ...args: unknown[]) {
    // The 220 may wait corked in the plain socket (holdBehindLog): out before TLS takes the socket over.
    flushLog();
    this.session.mtadStartTls = true;
    upgrade.apply(this, args);
  };
  const onError = proto._onError;
  proto._onError = function (this: Connection & ConnectionState, err: Error) {
    // OpenSSL's message is a multi-line dump; its reason ("unsupported protocol") is the part a reader needs.
    const reason = (err as Error & { reason?: string }).reason ?? err.message.split('\n')[0];
    if (this._upgrading && this.session.mtadStartTls) this.session.mtadStartTls = reason || 'handshake failed';
    onError.call(this, err);
  };

  const resetSession = proto._resetSession;
  proto._resetSession = function (this: ConnectionState) {
    clearTimeout(this.mtadTransactionTimer);
    this.mtadTransactionTimer = undefined;
    resetSession.call(this);
  };

  // The library ends the socket here (after 221, 421, a refused connection), and ending
  // a corked socket uncorks it: replies waiting for the log would go out ahead of it.
  const close = proto.close;
  proto.close = function (this: ConnectionState) {
    if (this._socket && isHeld(this._socket)) flushLog();
    close.call(this);
  };

  const onClose = proto._onClose;
  proto._onClose = function (this: ConnectionState) {
    clearTimeout(this.mtadLineTimer);
    clearTimeout(this.mtadTransactionTimer);
    onClose.call(this);
  };

  const parse = proto._parseAddressCommand;
  proto._parseAddressCommand = function (this: unknown, rawName: string, rawCommand: Buffer | string) {
    const split = splitAddressCommand(rawCommand.toString());
    if (!split) return parse.call(this, rawName, rawCommand);
    const { verb, inner, params } = split;
    if (rawName.toLowerCase() === 'rcpt to') {
      const parsed = parse.call(this, rawName, `${verb}:<${STAND_IN}>${params}`);
      if (!parsed) return false;
      parsed.address = stripSourceRoute(inner);
      parsed.raw = inner;
      return parsed;
    }
    const parsed = parse.call(this, rawName, `${verb}:<${inner}>${params}`);
    if (!parsed) return false;
    // The sender as written: the library would turn an xn-- domain into Unicode.
    parsed.address = stripSourceRoute(inner);
    parsed.raw = inner;
    return parsed;
  };

  const extra = (name: keyof ExtraCommands): Handler => function (this: Connection, command, callback) {
    const cmds = this._server.mtadCommands;
    const arg = command.toString().trim().split(/\s+/).slice(1).join(' ');
    if (!cmds) { this.send(502, '5.5.1 Command not implemented'); callback(); return; }
    cmds[name](this, arg).then((r) => reply(this, r), () => this.send(451, '4.3.0 Local error in processing')).finally(callback);
  };
  proto.handler_HELP = extra('help');
  proto.handler_VRFY = extra('vrfy');
  proto.handler_EXPN = extra('expn');
  proto.handler_XLOCAL = extra('xlocal');
}

/**
 * After each reply it is the client's turn: its next command line must be whole
 * within the idle timeout; and from the reply to MAIL on, the transaction has its
 * deadline. The message itself is the transaction deadline's alone.
 */
function armDeadlines(conn: ConnectionState, limits: Limits): void {
  clearTimeout(conn.mtadLineTimer);
  conn.mtadLineTimer = setTimeout(() => {
    if (!conn._closing && !conn._closed && !conn._handlerPending && !conn._dataStream) conn._onTimeout();
  }, limits.idleTimeout);
  if (conn.session.envelope?.mailFrom && !conn.mtadTransactionTimer) {
    const overdue = (): void => {
      if (conn._closing || conn._closed) return;
      // Not while we owe the reply (a recipient lookup, or the message being stored): that time is ours.
      if (conn._handlerPending || (conn._dataStream && conn._parser && !conn._parser._dataMode)) {
        conn.mtadTransactionTimer = setTimeout(overdue, 1000);
        return;
      }
      log.info(`timeout: transaction not over after ${limits.transactionTimeout / 1000} s (MTAD_TRANSACTION_TIMEOUT) from [${conn.remoteAddress}]`);
      conn.send(421, `4.4.2 ${conn.name} Error: transaction timeout exceeded`);
    };
    conn.mtadTransactionTimer = setTimeout(overdue, limits.transactionTimeout);
  }
}

/**
 * Splits "MAIL FROM: a@b SIZE=10" / "RCPT TO:<a@b>" into the verb, the address
 * as written (no brackets) and the parameters. Null when there is no address at
 * all ("MAIL FROM:"), which the library answers with 501.
 */
export function splitAddressCommand(command: string): { verb: string; inner: string; params: string; bracketed: boolean } | null {
  const colon = command.indexOf(':');
  if (colon < 0) return null;
  const verb = command.slice(0, colon);
  // SMTP's white space is SP (and TAB, refused earlier); U+2028 or NBSP are part of a word here.
  const rest = command.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
  if (!rest) return null;
  if (rest.startsWith('<')) {
    const end = rest.indexOf('>');
    if (end < 0) return null;
    return { verb, inner: rest.slice(1, end), params: rest.slice(end + 1), bracketed: true };
  }
  const sp = rest.search(/[ \t]/);
  return { verb, inner: sp < 0 ? rest : rest.slice(0, sp), params: sp < 0 ? '' : rest.slice(sp), bracketed: false };
}

/** "@a,@b:user@c" to "user@c" (RFC 5321 appendix C). */
export function stripSourceRoute(address: string): string {
  return address.replace(/^@[^:]*:/, '');
}

/**
 * mtad's own answer to a whole command line, before the library sees it; null
 * when the library's turn. Control characters (NUL, a lone CR, TAB, DEL) have no
 * place in any command: they would reach replies, logs and the mbox.
 */
export function checkCommand(line: string): Reply | null {
  if (/[\x00-\x1f\x7f]/.test(line)) return { code: 501, lines: ['5.5.2 Syntax error: control character in command'] };
  return null;
}

/** The MAIL and RCPT parameters a connection offers, as its EHLO reply lists them. */
export interface Offered {
  mail: ReadonlySet<string>;
  rcpt: ReadonlySet<string>;
}

function offeredParameters(conn: Connection & { _isSupported(c: string): boolean }): Offered {
  const o = conn._server.options as unknown as Record<string, unknown> & { authMethods?: string[] };
  const mail = new Set<string>();
  const rcpt = new Set<string>();
  if (o.size) mail.add('SIZE');
  if (!o.hide8BITMIME) mail.add('BODY');
  if (!o.hideSMTPUTF8) mail.add('SMTPUTF8');
  if (!o.hideDSN) ['RET', 'ENVID'].forEach((p) => mail.add(p));
  if (!o.hideDSN) ['NOTIFY', 'ORCPT'].forEach((p) => rcpt.add(p));
  if (conn.secure && !o.hideREQUIRETLS) mail.add('REQUIRETLS');
  if (o.authMethods?.length && conn._isSupported('AUTH')) mail.add('AUTH');
  return { mail, rcpt };
}

/**
 * mtad's own answer to the arguments of HELO, EHLO, MAIL and RCPT (the line
 * already has no control characters); null when they are for the library and
 * the policy to judge. Non-ASCII in a recipient is left to the policy, which
 * refuses it as relay (not our domain) or 553 5.6.7 (our domain).
 */
export function checkArguments(verb: typeof ARGUMENT_CHECKED[number], line: string, offered: Offered): Reply | null {
  if (verb === 'HELO' || verb === 'EHLO') {
    if (/[^\x20-\x7e]/.test(line)) return { code: 501, lines: [`5.5.2 Syntax: ${verb} hostname (printable ASCII only)`] };
    return null;
  }
  const sender = verb === 'MAIL';
  const split = splitAddressCommand(line);
  // Not "MAIL FROM:" / "RCPT TO:" at all: the library's 501.
  if (!split || split.verb.trim().toUpperCase() !== (sender ? 'MAIL FROM' : 'RCPT TO')) return null;
  const what = sender ? 'sender' : 'recipient';
  const enhanced = sender ? '5.1.7' : '5.1.3';
  if (!split.bracketed && split.params.replace(/[ \t]+/g, '')) {
    return { code: 501, lines: [`${enhanced} Bad ${what} address syntax: text after an address without <>`] };
  }
  const allowed = sender ? offered.mail : offered.rcpt;
  for (const param of split.params.split(/[ \t]+/).filter(Boolean)) {
    const key = param.split('=')[0].toUpperCase();
    if (!allowed.has(key)) {
      return { code: 555, lines: [`5.5.4 ${sender ? 'MAIL FROM' : 'RCPT TO'} parameter ${printable(key, { max: 40 }) || '""'} not recognised or not offered`] };
    }
  }
  if (/[^\x20-\x7e]/.test(split.params)) return { code: 501, lines: ['5.5.4 Syntax error in parameters: printable ASCII only'] };
  if (sender && /[^\x20-\x7e]/.test(split.inner)) {
    return { code: 553, lines: ['5.6.7 Non-ASCII sender address not permitted: this server does not offer SMTPUTF8'] };
  }
  return null;
}

const DOT = 0x2e;
const CR = 0x0d;
const LF = 0x0a;

/**
 * The library's DATA parser with RFC 5321 4.5.2 transparency: the first period
 * of any line that starts with one is removed; <CRLF>.<CRLF> (or "." first
 * thing after DATA) ends the message. A bare LF starts a line too (the mbox
 * stores LF), but never ends the message: only CRLF does, so no fake end of data
 * exists. A period that cannot yet be judged (the chunk ends after "." or ".\r")
 * is held back with the state before it and judged with the next chunk.
 */
function feedData(this: StreamState, input: Buffer, done: (err?: Error) => void): void {
  const chunk = this._lastBytes && this._lastBytes.length ? Buffer.concat([this._lastBytes, input]) : input;
  this._lastBytes = false;
  if (!chunk.length) { done(); return; }
  const pieces: Buffer[] = [];
  let from = 0;
  // Only the byte after each LF can be a line's first period: jump from LF to LF.
  let at = 0;
  let line = this.mtadLine ?? null;
  for (;;) {
    if (line && at < chunk.length && chunk[at] === DOT) {
      if (line === 'crlf') {
        if (at + 1 >= chunk.length || (chunk[at + 1] === CR && at + 2 >= chunk.length)) {
          pieces.push(chunk.subarray(from, at));
          this._lastBytes = chunk.subarray(at);
          from = at = chunk.length;
          break;
        }
        if (chunk[at + 1] === CR && chunk[at + 2] === LF) {
          pieces.push(chunk.subarray(from, at));
          const body = Buffer.concat(pieces);
          this._countDataBytes(body.length);
          this._endDataMode(body, chunk.subarray(at + 3), done);
          return;
        }
      }
      pieces.push(chunk.subarray(from, at));
      from = at + 1;
    }
    const nl = chunk.indexOf(LF, at);
    if (nl < 0) break;
    const before = nl > 0 ? chunk[nl - 1] === CR : this.mtadCR;
    line = before ? 'crlf' : 'lf';
    at = nl + 1;
  }
  if (from < chunk.length) pieces.push(chunk.subarray(from));
  if (this._lastBytes === false) {
    // The next chunk starts a line only if this one ended with its LF.
    this.mtadLine = at === chunk.length ? line : null;
    this.mtadCR = chunk[chunk.length - 1] === CR;
  } else {
    this.mtadLine = line;
    this.mtadCR = false;
  }
  const out = pieces.length === 1 ? pieces[0] : Buffer.concat(pieces);
  const stream = this._dataStream;
  if (!out.length || !stream) { done(); return; }
  this._countDataBytes(out.length);
  if (!stream.writable || stream.write(out) || stream.destroyed) { done(); return; }
  // A stream the application destroys never drains, it only closes.
  const go = (): void => { stream.removeListener('drain', go); stream.removeListener('close', go); done(); };
  stream.once('drain', go);
  stream.once('close', go);
}
