// One POP3 conversation (RFC 1939, 2449, 5034): AUTHORIZATION, TRANSACTION,
// UPDATE. Commands are taken one at a time in the order they came (pipelined
// ones wait their turn, RFC 2449 PIPELINING); every reply is well-formed.
// Passwords are never logged or traced.
//
// The transport is attached with attach(): STLS (RFC 2595) answers +OK, drops
// whatever the client sent after STLS, wraps the socket in TLS and attach()es the
// TLS socket, which starts with an empty reader, as the RFC requires.
import crypto from 'node:crypto';
import type net from 'node:net';
import tls from 'node:tls';
import type { User } from '../accounts/users';
import { checkPassword } from '../accounts/users';
import { isValidName } from '../accounts/names';
import { WireEncoder } from '../delivery/reader';
import { flushLog, log } from '../log';
import { printable } from '../text';
import type { TlsFiles } from '../tls';
import { Maildrop, MaildropContext, MaildropError } from './maildrop';
import { CAPABILITIES, Command, decodePlain, Line, LineReader, multiline, parseCommand, parseNumber } from './protocol';

export interface SessionDeps {
  hostname: string;
  maildrop: MaildropContext;
  users: () => Promise<ReadonlyMap<string, User>>;
  /** Mailboxes in a session now: the exclusive maildrop of RFC 1939. */
  inUse: Set<string>;
  maxLineLength: number;
  maxErrors: number;
  idleTimeoutMs: number;
  authDelayMs: number;
  trace: boolean;
  /** The certificate for STLS; null: STLS is neither offered nor accepted. */
  tls: TlsFiles | null;
  /** USER, PASS and AUTH only after STLS (MTAD_TLS_REQUIRED). */
  tlsRequired: boolean;
}

/** How a client-chosen string (a user name, a command) appears in the log and the trace. */
const LOGGED = { max: 64, show: 'escape' } as const;

/** Failed logins that end a session, as in Dovecot. */
const MAX_AUTH_FAILURES = 3;
/** Lines read ahead of the one being answered before the socket is paused. */
const MAX_QUEUED = 64;

type State = 'authorization' | 'transaction' | 'update' | 'closed';

export class Pop3Session {
  private state: State = 'authorization';
  private socket!: net.Socket;
  /** 'starting' from STLS's +OK to the end of the handshake: nothing read then is a command. */
  private tlsState: 'none' | 'starting' | 'on' = 'none';
  private reader!: LineReader;
  private queue: Line[] = [];
  private busy = false;
  private errors = 0;
  private authFailures = 0;
  private user: string | null = null;
  private pendingUser: string | null = null;
  /** Set while AUTH PLAIN waits for the client's response line. */
  private saslPending = false;
  private drop: Maildrop | null = null;
  private stats = { top: 0, topBytes: 0, retr: 0, retrBytes: 0 };
  private readonly id = crypto.randomBytes(6).toString('base64url');
  private readonly rip: string;
  private readonly lip: string;
  /** Resolves when the session is over (UPDATE finished, mailbox released). */
  readonly ended: Promise<void>;
  private finish!: () => void;

  constructor(socket: net.Socket, private readonly deps: SessionDeps) {
    this.rip = socket.remoteAddress ?? 'unknown';
    this.lip = socket.localAddress ?? 'unknown';
    this.ended = new Promise((r) => { this.finish = r; });
    this.attach(socket);
    // During UPDATE the removal runs to its end whatever the client does; quit() ends the session.
    socket.on('close', () => { if (this.state !== 'update') void this.end('Connection closed'); });
    this.reply(`+OK ${deps.hostname} POP3 mtad ready.`);
  }

  /** Takes `socket` as the transport, with a fresh line reader (what STLS needs after its handshake). */
  attach(socket: net.Socket): void {
    this.socket = socket;
    // Replies are whole lines or whole pieces of a message: Nagle would only hold
    // the last piece back for the client's delayed ACK (40 ms a message).
    socket.setNoDelay(true);
    this.reader = new LineReader(this.deps.maxLineLength);
    this.queue = [];
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', () => undefined); // a reset is a close; 'close' follows
    // On the transport in use: under TLS, the plain socket no longer sees the traffic.
    socket.setTimeout(this.deps.idleTimeoutMs, () => {
      if (this.state === 'update') return;
      this.reply('-ERR Disconnected for inactivity.');
      void this.end('inactivity');
    });
    socket.resume();
  }

  /** CAPA: STLS while it can still be started (RFC 2595 section 4). */
  private capabilities(): string[] {
    return this.deps.tls && this.tlsState === 'none' ? [...CAPABILITIES, 'STLS'] : CAPABILITIES;
  }

  /**
   * STLS: +OK, then the handshake. Lines the client pipelined after STLS were
   * sent in plaintext before TLS: they are dropped, never answered inside TLS
   * (the STARTTLS command injection of 2011). After the handshake the session
   * forgets the plaintext USER (RFC 2595 section 4).
   */
  private startTls(cmd: Command): void {
    const files = this.deps.tls;
    if (!files) return this.fail('-ERR Unknown command.');
    if (this.tlsState !== 'none') return this.fail('-ERR TLS is already active.');
    if (cmd.args.length) return this.fail('-ERR Syntax: STLS');
    this.reply('+OK Begin TLS negotiation now.');
    this.tlsState = 'starting';
    this.queue = [];
    const plain = this.socket;
    plain.removeAllListeners('data');
    const secure = new tls.TLSSocket(plain, { isServer: true, secureContext: files.current.context });
    const client = `unknown[${this.rip}]`;
    // First among the close listeners, so that it is logged before the session's end.
    plain.prependOnceListener('close', () => {
      if (this.tlsState === 'starting' && !this.isClosed) log.info(`pop3-login: SSL_accept error from ${client}: lost connection`);
    });
    secure.once('error', (err: Error & { reason?: string }) => {
      if (this.tlsState === 'on') return;
      log.info(`pop3-login: SSL_accept error from ${client}: ${err.reason ?? err.message.split('\n')[0]}`);
      void this.end('TLS handshake failed');
    });
    secure.once('secure', () => {
      if (this.isClosed) return;
      this.tlsState = 'on';
      plain.setTimeout(0);
      this.pendingUser = null;
      this.saslPending = false;
      log.info(`pop3-login: TLS connection established from ${client}: ${secure.getProtocol()} with cipher ${secure.getCipher().name}`);
      this.traceLine(`-- TLS started (${secure.getProtocol()}, ${secure.getCipher().name}): from here on Wireshark shows only encrypted TLS records --`);
      this.attach(secure);
    });
  }

  /** The server is stopping: no UPDATE for a session that did not QUIT (RFC 1939). */
  shutdown(): void {
    if (this.state === 'authorization' || this.state === 'transaction') {
      this.reply('-ERR Server shutting down.');
      void this.end('Server shutting down');
    }
  }

  private onData(d: Buffer): void {
    if (this.state === 'closed' || this.state === 'update' || this.tlsState === 'starting') return;
    this.queue.push(...this.reader.push(d));
    if (this.queue.length > MAX_QUEUED) this.socket.pause();
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.queue.length && this.state !== 'closed' && this.state !== 'update' && this.tlsState !== 'starting') {
        const line = this.queue.shift()!;
        if (this.queue.length <= MAX_QUEUED / 2) this.socket.resume();
        try {
          await this.handle(line);
        } catch (err) {
          log.error(`pop3: internal error: ${(err as Error)?.stack ?? err}`);
          this.reply('-ERR [SYS/TEMP] Internal error, try again later.');
        }
      }
    } finally {
      this.busy = false;
    }
  }

  private async handle(line: Line): Promise<void> {
    if ('tooLong' in line) {
      this.traceLine('C: [line too long]');
      return this.fail('-ERR Input line too long.');
    }
    if (this.saslPending) {
      this.saslPending = false;
      this.traceLine('C: [AUTH PLAIN response]');
      if (line.text === '*') return this.fail('-ERR Authentication aborted.');
      return this.plain(line.text);
    }
    const cmd = parseCommand(line.text);
    this.traceLine(`C: ${cmd.name === 'PASS' ? 'PASS [password]' : cmd.name === 'AUTH' && cmd.args.length > 1 ? `AUTH ${printable(cmd.args[0], LOGGED)} [credentials]` : printable(line.text, { ...LOGGED, max: 200 })}`);
    if (this.state === 'authorization') return this.authorization(cmd);
    return this.transaction(cmd);
  }

  private async authorization(cmd: Command): Promise<void> {
    if (this.deps.tlsRequired && this.tlsState !== 'on' && ['USER', 'PASS', 'AUTH'].includes(cmd.name)) {
      // Dovecot's words for its disable_plaintext_auth.
      return this.fail('-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.');
    }
    switch (cmd.name) {
      case 'CAPA': return this.reply(multiline('+OK Capability list follows', this.capabilities()));
      case 'STLS': return this.startTls(cmd);
      case 'QUIT':
        this.reply('+OK Logging out.');
        return this.end('Logged out');
      case 'USER':
        if (!cmd.rest) return this.fail('-ERR Syntax: USER name');
        this.pendingUser = cmd.rest;
        return this.reply('+OK');
      case 'PASS': {
        if (this.pendingUser === null) return this.fail('-ERR No username given.');
        const user = this.pendingUser;
        this.pendingUser = null;
        return this.login(user, cmd.rest, 'USER');
      }
      case 'AUTH': {
        if (!cmd.args.length) return this.reply(multiline('+OK', ['PLAIN']));
        if (cmd.args[0].toUpperCase() !== 'PLAIN') return this.fail('-ERR Unsupported authentication mechanism.');
        if (cmd.args.length > 2) return this.fail('-ERR Syntax: AUTH PLAIN [initial-response]');
        if (cmd.args.length === 2) return this.plain(cmd.args[1] === '=' ? '' : cmd.args[1]);
        this.saslPending = true;
        return this.reply('+ ');
      }
      default: return this.fail('-ERR Unknown command.');
    }
  }

  private async plain(b64: string): Promise<void> {
    const creds = decodePlain(b64);
    if (!creds) return this.login(null, '', 'PLAIN');
    return this.login(creds.user, creds.password, 'PLAIN');
  }

  /** Same work, same delay and same reply for a wrong password, an unknown user and a disabled one. */
  private async login(name: string | null, password: string, method: string): Promise<void> {
    const users = await this.deps.users();
    const account = name !== null && isValidName(name) ? users.get(name) : undefined;
    const ok = await checkPassword(password, account && account.password !== '!' ? account.password : undefined);
    if (!ok || !account) {
      this.authFailures++;
      await new Promise((r) => setTimeout(r, this.deps.authDelayMs));
      if (this.isClosed) return;
      this.reply('-ERR [AUTH] Authentication failed.');
      this.lastTried = `user=<${printable(name ?? '', LOGGED)}>, method=${method}, `;
      if (this.authFailures >= MAX_AUTH_FAILURES) return this.end('Too many failed logins');
      return;
    }
    if (this.isClosed) return;
    if (this.deps.inUse.has(account.name)) {
      log.info(`pop3-login: Login refused, mailbox in use: user=<${account.name}>, method=${method}, rip=${this.rip}, lip=${this.lip}, session=<${this.id}>`);
      return this.reply('-ERR [IN-USE] Mailbox is locked by another POP3 session.');
    }
    this.deps.inUse.add(account.name);
    let drop: Maildrop;
    try {
      drop = await Maildrop.open(account.name, this.deps.maildrop);
    } catch (err) {
      this.deps.inUse.delete(account.name);
      log.warn(`pop3(${account.name}): cannot open the mailbox: ${(err as Error).message}, rip=${this.rip}`);
      return this.reply(`-ERR [SYS/TEMP] ${err instanceof MaildropError ? err.message : 'Cannot open the mailbox'}, try again later.`);
    }
    if (this.isClosed) {
      this.deps.inUse.delete(account.name);
      await drop.close();
      return;
    }
    this.user = account.name;
    this.drop = drop;
    this.state = 'transaction';
    log.info(`pop3-login: Login: user=<${account.name}>, method=${method}, rip=${this.rip}, lip=${this.lip}, session=<${this.id}>`);
    this.reply(`+OK Logged in, ${this.drop.count} messages (${this.drop.octets} octets).`);
  }

  private async transaction(cmd: Command): Promise<void> {
    const drop = this.drop!;
    const n = drop.messages.length;
    // The message a command names: 1..n, not deleted.
    const pick = (arg: string | undefined): number | string => {
      const k = parseNumber(arg);
      if (k === null) return '-ERR Invalid message number.';
      if (k < 1 || k > n) return `-ERR There's no message ${k}.`;
      if (drop.deleted.has(k - 1)) return '-ERR Message is deleted.';
      return k - 1;
    };
    switch (cmd.name) {
      case 'CAPA': return this.reply(multiline('+OK Capability list follows', this.capabilities()));
      case 'NOOP': return this.reply('+OK');
      case 'STAT': return this.reply(`+OK ${drop.count} ${drop.octets}`);
      case 'LIST':
      case 'UIDL': {
        const value = (i: number): string => (cmd.name === 'LIST' ? String(drop.messages[i].size) : drop.messages[i].uidl!);
        if (cmd.args.length) {
          const i = pick(cmd.args[0]);
          if (typeof i === 'string') return this.fail(i);
          return this.reply(`+OK ${i + 1} ${value(i)}`);
        }
        const lines: string[] = [];
        for (let i = 0; i < n; i++) if (!drop.deleted.has(i)) lines.push(`${i + 1} ${value(i)}`);
        return this.reply(multiline(cmd.name === 'LIST' ? `+OK ${drop.count} messages (${drop.octets} octets)` : '+OK', lines));
      }
      case 'RETR':
      case 'TOP': {
        const i = pick(cmd.args[0]);
        if (typeof i === 'string') return this.fail(i);
        let lines: number | null = null;
        if (cmd.name === 'TOP') {
          lines = parseNumber(cmd.args[1]);
          if (lines === null) return this.fail('-ERR Syntax: TOP message lines');
        }
        return this.send(drop, i, lines);
      }
      case 'DELE': {
        const i = pick(cmd.args[0]);
        if (typeof i === 'string') return this.fail(i);
        drop.deleted.add(i);
        return this.reply('+OK Marked to be deleted.');
      }
      case 'RSET':
        drop.deleted.clear();
        return this.reply(`+OK ${drop.count} messages (${drop.octets} octets).`);
      case 'QUIT': return this.quit(drop);
      default: return this.fail('-ERR Unknown command.');
    }
  }

  /** RETR (lines null) or TOP: streamed from the mailbox, waiting for the client to take each piece. */
  private async send(drop: Maildrop, i: number, lines: number | null): Promise<void> {
    const m = drop.messages[i];
    const enc = new WireEncoder(lines);
    let bytes = 0;
    let started = false;
    try {
      for await (const chunk of drop.stored(m)) {
        let out = enc.push(chunk);
        if (!started) {
          out = Buffer.concat([Buffer.from(lines === null ? `+OK ${m.size} octets\r\n` : '+OK\r\n'), out]);
          started = true;
        }
        bytes += out.length;
        if (!(await this.writeAndWait(out))) return;
        if (enc.done) break;
      }
    } catch (err) {
      if (!(err instanceof MaildropError)) throw err;
      log.warn(`pop3(${this.user}): ${err.message}`);
      // Mid-message, the only honest signal left is to hang up: the client sees no final dot.
      if (started) return this.end(err.message);
      return this.reply(`-ERR [SYS/TEMP] ${err.message}.`);
    }
    if (!started) this.write(lines === null ? `+OK ${m.size} octets\r\n` : '+OK\r\n');
    const last = enc.end();
    bytes += last.length;
    this.write(Buffer.concat([last, Buffer.from('.\r\n')]));
    this.traceLine(`S: +OK [${lines === null ? 'message' : 'top'} ${i + 1}, ${bytes} octets on the wire]`);
    if (lines === null) { this.stats.retr++; this.stats.retrBytes += bytes; } else { this.stats.top++; this.stats.topBytes += bytes; }
  }

  private async quit(drop: Maildrop): Promise<void> {
    this.state = 'update';
    this.socket.pause();
    const dels = drop.deleted.size;
    let size = drop.snapshotSize;
    try {
      size = (await drop.update()).size;
      this.reply(dels ? `+OK Logging out, ${dels} messages deleted.` : '+OK Logging out.');
    } catch (err) {
      log.warn(`pop3(${this.user}): nothing deleted: ${(err as Error).message}`);
      this.reply(`-ERR [SYS/TEMP] ${(err as Error).message}.`);
      return this.end('Update failed', 0);
    }
    return this.end('Logged out', dels, size);
  }

  private release(): void {
    if (this.user) this.deps.inUse.delete(this.user);
    void this.drop?.close();
    this.drop = null;
  }

  /** A method, not a field test: TypeScript would otherwise narrow it across an await. */
  private get isClosed(): boolean {
    return this.state === 'closed';
  }

  private endedOnce = false;
  /** The user and method of the last failed login, for the log line that ends the session. */
  private lastTried = '';

  /** Closes the connection, releases the mailbox, and logs how the session ended, in Dovecot's words. */
  private async end(cause: string, deleted = 0, size?: number): Promise<void> {
    if (this.endedOnce) return;
    this.endedOnce = true;
    this.state = 'closed';
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 5000).unref();
    if (this.user && this.drop) {
      const s = this.stats;
      log.info(`pop3(${this.user}): ${cause === 'inactivity' ? 'Disconnected for inactivity' : `Disconnected: ${cause}`} ` +
        `top=${s.top}/${s.topBytes}, retr=${s.retr}/${s.retrBytes}, del=${deleted}/${this.drop.messages.length}, ` +
        `size=${size ?? this.drop.snapshotSize}, session=<${this.id}>`);
    } else {
      const tries = this.authFailures ? `auth failed, ${this.authFailures} attempts` : 'no auth attempts';
      const why = ['Logged out', 'Connection closed', 'Too many failed logins'].includes(cause) ? '' : `, ${cause === 'inactivity' ? 'inactivity' : cause.toLowerCase()}`;
      log.info(`pop3-login: Disconnected (${tries}${why}): ${this.lastTried}rip=${this.rip}, lip=${this.lip}, session=<${this.id}>`);
    }
    this.release();
    this.finish();
  }

  /** A client error: replied, counted, and the session ends when they are too many. */
  private fail(text: string): void {
    this.reply(text);
    if (++this.errors >= this.deps.maxErrors) {
      this.reply('-ERR Too many bad commands.');
      void this.end('Too many bad commands');
    }
  }

  private reply(text: string): void {
    // As SMTP's replies: what a client is told is never ahead of the log (a Login line and its +OK).
    flushLog();
    this.traceLine(`S: ${text.split('\r\n')[0]}`);
    this.write(text.endsWith('\r\n') ? text : `${text}\r\n`);
  }

  private write(data: string | Buffer): boolean {
    if (this.socket.destroyed || this.socket.writableEnded) return false;
    return this.socket.write(data);
  }

  /** Writes; if the socket's buffer is full, waits until it drains. False if the client is gone. */
  private writeAndWait(data: Buffer): Promise<boolean> {
    if (this.socket.destroyed || this.socket.writableEnded) return Promise.resolve(false);
    if (this.socket.write(data)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => (): void => {
        this.socket.off('drain', onDrain);
        this.socket.off('close', onClose);
        resolve(ok);
      };
      const onDrain = done(true);
      const onClose = done(false);
      this.socket.once('drain', onDrain);
      this.socket.once('close', onClose);
    });
  }

  private traceLine(text: string): void {
    if (this.deps.trace) log.info(`pop3 ${this.rip.includes(':') ? `[${this.rip}]` : this.rip}:${this.socket.remotePort} ${text}`);
  }
}
