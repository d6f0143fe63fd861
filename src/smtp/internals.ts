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
//    and a transaction, MAIL to the end of the message, must end within its own.
import { SMTPServer } from 'smtp-server';
import { log } from '../log';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { SMTPConnection } = require('smtp-server/lib/smtp-connection') as { SMTPConnection: ConnectionClass };

export const PINNED_VERSION = '3.21.6';

/** What a connection offers to our command handlers. */
export interface Connection {
  session: { id: string; [key: string]: unknown };
  remoteAddress: string;
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
    _onClose: () => void;
    _resetSession: () => void;
    send: Connection['send'];
    _setListeners: (cb: () => void) => void;
    _parseAddressCommand: (name: string, command: Buffer | string) => ParsedAddress | false;
    upgrade: (...args: unknown[]) => void;
    _onError: (err: Error) => void;
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
    '_onCommand', '_onTimeout', '_whenWritable', 'upgrade', '_onError', 'handler_STARTTLS', '_onClose', '_resetSession']) {
    if (typeof proto[name] !== 'function') throw new Error(`smtp-server ${version}: SMTPConnection.${name} is gone`);
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
    if (limits && command && command.length > limits.maxLineLength) {
      this.send(500, '5.5.2 Error: line too long');
      setImmediate(() => this._whenWritable(callback ?? (() => undefined)));
      return;
    }
    onCommand.call(this, command, callback);
  };

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
    if (parsed) parsed.raw = inner;
    return parsed;
  };

  const reply = (conn: Connection, r: Reply): void => conn.send(r.code, r.lines.length === 1 ? r.lines[0] : r.lines);
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
export function splitAddressCommand(command: string): { verb: string; inner: string; params: string } | null {
  const colon = command.indexOf(':');
  if (colon < 0) return null;
  const verb = command.slice(0, colon);
  const rest = command.slice(colon + 1).trim();
  if (!rest) return null;
  if (rest.startsWith('<')) {
    const end = rest.indexOf('>');
    if (end < 0) return null;
    return { verb, inner: rest.slice(1, end), params: rest.slice(end + 1) };
  }
  const sp = rest.search(/\s/);
  return sp < 0 ? { verb, inner: rest, params: '' } : { verb, inner: rest.slice(0, sp), params: rest.slice(sp) };
}

/** "@a,@b:user@c" to "user@c" (RFC 5321 appendix C). */
export function stripSourceRoute(address: string): string {
  return address.replace(/^@[^:]*:/, '');
}
