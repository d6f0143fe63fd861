// The SMTP conversation: smtp-server wired to policy, queue and delivery. Each
// hook is wrapped once (guard) so that a thrown error becomes a 451 reply and
// never a crash or a hung session; errors carry their reply from where they are
// raised (SmtpError), and this file alone writes them to the client and the log.
import os from 'node:os';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { SMTPServer, SMTPServerAddress, SMTPServerSession } from 'smtp-server';
import { ClientCounter } from '../clients';
import type { Config } from '../config';
import { DeliveryAgent, storageFailure, TempFailure } from '../delivery/agent';
import { localReceivedHeader, receivedHeader } from '../delivery/mbox';
import { log } from '../log';
import { Directory, expand, LocalNames, resolveRecipient, Reply as PolicyReply } from '../policy';
import { Envelope, Queue, Recipient } from '../queue/queue';
import { receiveBody } from '../queue/receive';
import { printable } from '../text';
import { MIN_TLS_VERSION, TlsFiles } from '../tls';
import { socketOwner } from '../system/sockowner';
import { Connection, ExtraCommands, hardLineCap, installInternals, Limits, ParsedAddress, Reply } from './internals';
import { BodyTrace, tag, TRACE_END, TRACE_ID, traceLogger, traceTls } from './trace';

export class SmtpError extends Error {
  readonly responseCode: number;
  constructor(code: number, enhanced: string, text: string) {
    super(`${enhanced} ${text}`);
    this.responseCode = code;
  }
  static from(r: PolicyReply): SmtpError {
    return new SmtpError(r.code, r.enhanced, r.text);
  }
  static fromTemp(t: TempFailure): SmtpError {
    return new SmtpError(t.code, t.enhanced, t.message);
  }
}

interface RcptAddress extends ParsedAddress {
  mailboxes?: string[];
  extension?: string;
}

/** mtadLocalUid, set by XLOCAL: the uid the kernel says owns the client's socket (bin/sendmail's user). */
type Session = SMTPServerSession & { counted?: boolean; mtadStartTls?: string | true; mtadLocalUid?: number };

export interface SmtpDeps {
  config: Config;
  queue: Queue;
  agent: DeliveryAgent;
  directory: () => Promise<Directory>;
  /** Messages being received: shutdown waits for them, so that a cut-off one is cleaned up before exit. */
  receiving?: Set<Promise<unknown>>;
  /** The certificate for STARTTLS; null: STARTTLS is neither offered nor accepted. */
  tls?: TlsFiles | null;
}

export function createSmtpServer(deps: SmtpDeps): SMTPServer {
  installInternals();
  const { config } = deps;
  const tls = deps.tls ?? null;
  const local = localNames(config);
  const perIp = new ClientCounter(config.maxClientsPerIp);

  const shown = (text: string): string => printable(text, { max: 256, show: 'escape' });
  // A client gone before its address was read (a port scanner's RST) has none.
  const client = (s: SMTPServerSession): string => `${s.clientHostname && !s.clientHostname.startsWith('[') ? s.clientHostname : 'unknown'}[${s.remoteAddress || 'unknown'}]`;
  const reject = (stage: string, s: SMTPServerSession, err: SmtpError, to?: string): SmtpError => {
    const from = s.envelope.mailFrom ? s.envelope.mailFrom.address : '';
    log.info(`NOQUEUE: reject: ${stage} from ${client(s)}: ${err.responseCode} ${err.message}; from=<${shown(from)}>` +
      `${to !== undefined ? ` to=<${shown(to)}>` : ''} proto=${s.transmissionType} helo=<${shown(s.hostNameAppearsAs ?? '')}>`);
    return err;
  };

  const server: SMTPServer = new SMTPServer({
    name: config.hostname,
    banner: 'mtad',
    heloResponse: '%s',
    // The teaching trace reads the dialogue from the library's debug log; off, there is no logger at all.
    logger: config.trace ? traceLogger(() => server) : false,
    disabledCommands: tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    hideSTARTTLS: !tls,
    // Without a certificate of ours the library would offer its built-in one, whose key is public.
    ...(tls ? { key: tls.current.key, cert: tls.current.cert, minVersion: MIN_TLS_VERSION } : {}),
    authOptional: true,
    hideENHANCEDSTATUSCODES: false,
    hideDSN: true,
    hideSMTPUTF8: true,
    disableReverseLookup: !config.reverseDns,
    size: config.maxMessageSize,
    maxClients: config.maxClients || undefined,
    socketTimeout: config.idleTimeout * 1000,
    closeTimeout: Math.max(1, config.shutdownGrace * 1000),
    maxRecipients: config.maxRecipients,
    maxCommandLength: hardLineCap(config.maxLineLength),

    onConnect: guard((session: Session) => {
      if (!perIp.admit(session.remoteAddress)) {
        log.info(`NOQUEUE: reject: CONNECT from ${client(session)}: 421 4.7.0 too many connections from this address (MTAD_MAX_CLIENTS_PER_IP=${perIp.limit})`);
        throw new SmtpError(421, '4.7.0', `${config.hostname} Too many connections from your address, try again later`);
      }
      session.counted = true;
      log.info(`connect from ${client(session)}`);
    }),

    onSecure: guard((socket: TLSSocket, session: SMTPServerSession) => {
      (session as Session).mtadStartTls = undefined;
      log.info(`TLS connection established from ${client(session)}: ${socket.getProtocol()} with cipher ${socket.getCipher().name}`);
      if (config.trace) traceTls(session.remoteAddress, session.remotePort, socket);
    }),

    onMailFrom: guard((_address: SMTPServerAddress, session: SMTPServerSession) => {
      // A local submission (XLOCAL, bin/sendmail) never leaves this host: there is no wire to protect.
      if (config.tlsRequired && !session.secure && (session as Session).mtadLocalUid === undefined) {
        throw reject('MAIL', session, new SmtpError(530, '5.7.0', 'Must issue a STARTTLS command first'));
      }
    }),

    onRcptTo: guard(async (address: SMTPServerAddress, session: SMTPServerSession) => {
      const a = address as unknown as RcptAddress;
      const verdict = resolveRecipient(a.raw ?? a.address, a.address, await deps.directory(), local);
      if (!verdict.ok) {
        if (verdict.warning) log.warn(verdict.warning);
        throw reject('RCPT', session, SmtpError.from(verdict.reply), a.raw ?? a.address);
      }
      // A mailbox mtad cannot write is a fault of ours to fix, not mail to accept and defer for ever.
      const boxes = verdict.mailboxes.map((b) => deps.agent.mailboxState(b));
      const blocked = boxes.map((b) => b.unwritable).find(Boolean);
      if (blocked) {
        log.error(`${blocked}: refusing its mail with 450 4.2.0 until that is fixed (chown the mailbox to the user mtad runs as)`);
        throw reject('RCPT', session, new SmtpError(450, '4.2.0', `<${printable(a.raw ?? a.address)}>: Recipient address rejected: mailbox unavailable, try again later`), a.raw ?? a.address);
      }
      // Temporary, as Postfix's 4.2.2: the user can make room. An alias is refused only when all of it is full.
      if (boxes.every((b) => b.full)) {
        throw reject('RCPT', session, new SmtpError(452, '4.2.2', `<${printable(a.raw ?? a.address)}>: Mailbox full`), a.raw ?? a.address);
      }
      a.mailboxes = verdict.mailboxes;
      a.extension = verdict.extension;
    }),

    onData: guard((stream: Readable, session: SMTPServerSession) => {
      const p = receive(stream, session);
      deps.receiving?.add(p);
      const forget = (): void => { deps.receiving?.delete(p); };
      p.then(forget, forget);
      return p;
    }),

    onClose(session: Session) {
      // Set by STARTTLS (internals.ts), cleared by onSecure: the handshake never finished.
      if (session.mtadStartTls) {
        const why = session.mtadStartTls === true ? 'lost connection' : session.mtadStartTls;
        log.info(`SSL_accept error from ${client(session)}: ${why}`);
      }
      if (!session.counted) return;
      perIp.release(session.remoteAddress);
      log.info(`disconnect from ${client(session)}`);
    },
  });

  async function receive(stream: Readable, session: SMTPServerSession): Promise<string> {
    // smtp-server replaces session.envelope as soon as we answer: copy it now.
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const rcpts = session.envelope.rcptTo as unknown as RcptAddress[];
    const id = Queue.newId();
    const now = new Date();
    const recipients: Recipient[] = rcpts.flatMap((r) => (r.mailboxes ?? []).map((mailbox) => ({ address: qualify(r.address, config), mailbox, ...(r.extension ? { extension: r.extension } : {}) })));
    const envelope: Envelope = { v: 1, id, sender, recipients, received: now.toISOString(), client: session.remoteAddress };
    const uid = (session as Session).mtadLocalUid;
    const header = uid !== undefined ? localReceivedHeader({ hostname: config.hostname, uid, id, date: now }) : receivedHeader({
      helo: session.hostNameAppearsAs ?? '',
      clientAddress: session.remoteAddress,
      clientHostname: session.clientHostname,
      hostname: config.hostname,
      protocol: session.transmissionType ?? 'SMTP',
      id,
      recipient: rcpts.length === 1 ? qualify(rcpts[0].address, config) : undefined,
      date: now,
    });
    let trace: BodyTrace | undefined;
    if (config.trace) {
      (session as unknown as Record<string, unknown>)[TRACE_ID] = id;
      trace = new BodyTrace(tag(session.remoteAddress, session.remotePort, id));
    }
    let got;
    try {
      got = await receiveBody(stream, deps.queue, envelope, header, config.maxMessageSize, trace);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ECONNECTION' || code === 'ERR_STREAM_PREMATURE_CLOSE') {
        // The client left (FIN, RST or idle timeout) before the final dot: nothing was
        // acknowledged and receiveBody has removed what it kept; there is nobody to answer.
        log.info(`lost connection after DATA (${receivedBytes(stream)} bytes) from ${client(session)}`);
        throw new SmtpError(421, '4.4.2', 'Connection lost');
      }
      // Writing the message to the queue failed (receiveBody read on to the final dot).
      log.warn(`${id}: cannot write the message to the queue: ${code ?? (err as Error).message}`);
      throw SmtpError.fromTemp(storageFailure(err));
    } finally {
      if (trace) (session as unknown as Record<string, unknown>)[TRACE_END] = true;
    }
    if (got.tooBig) {
      throw reject('END-OF-MESSAGE', session, new SmtpError(552, '5.3.4', `Message size exceeds fixed limit of ${config.maxMessageSize} bytes`));
    }
    log.info(`${id}: client=${client(session)}${uid !== undefined ? `, uid=${uid}` : ''}, from=<${shown(sender)}>, size=${got.size}, nrcpt=${rcpts.length} (queue active)`);
    try {
      await deps.agent.accept({ envelope, body: got.body });
    } catch (err) {
      if (err instanceof TempFailure) throw SmtpError.fromTemp(err);
      throw err;
    }
    return `2.0.0 Ok: queued as ${id}`;
  }

  const withExtras = server as SMTPServer & { mtadCommands?: ExtraCommands; mtadLimits?: Limits };
  withExtras.mtadCommands = extraCommands(deps, local);
  withExtras.mtadLimits = {
    maxLineLength: config.maxLineLength, maxErrors: config.maxErrors,
    idleTimeout: config.idleTimeout * 1000, transactionTimeout: config.transactionTimeout * 1000,
  };
  tls?.onReload((m) => server.updateSecureContext({ key: m.key, cert: m.cert }));
  server.on('error', (err: Error & { code?: string }) => {
    // Client resets and half-sent messages arrive here; they are not our errors.
    log.debug(`smtp: ${err.code ?? ''} ${err.message}`);
  });
  return server;
}

/**
 * Wraps a hook as an async function over smtp-server's callback: a value is the
 * success reply, an SmtpError is its reply, anything else is logged and is 451.
 */
function guard<A extends unknown[]>(fn: (...args: A) => unknown): (...args: [...A, (err?: Error | null, msg?: string) => void]) => void {
  return (...args) => {
    const cb = args.pop() as (err?: Error | null, msg?: string) => void;
    let p: Promise<unknown>;
    try {
      p = Promise.resolve(fn(...(args as unknown as A)));
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (value) => cb(null, typeof value === 'string' ? value : undefined),
      (err) => {
        if (err instanceof SmtpError) return cb(err);
        log.error(`internal error: ${(err as Error)?.stack ?? err}`);
        cb(new SmtpError(451, '4.3.0', 'Local error in processing, try again later'));
      },
    );
  };
}

function receivedBytes(stream: Readable): number {
  return (stream as Readable & { byteLength?: number }).byteLength ?? 0;
}

function qualify(address: string, config: Config): string {
  return address.includes('@') ? address : `${address}@${config.hostname}`;
}

/** Our domains, and the address literals of the addresses we listen on. */
export function localNames(config: Config): LocalNames {
  const literals = new Set<string>();
  const add = (ip: string): void => {
    literals.add(ip.includes(':') ? `[ipv6:${ip.toLowerCase()}]` : `[${ip}]`);
  };
  if (config.host === '0.0.0.0' || config.host === '::') {
    // 0.0.0.0 is IPv4 only: an IPv6 literal would name an address nobody can reach us on. "::" takes both.
    const families = config.host === '::' ? ['IPv4', 'IPv6'] : ['IPv4'];
    for (const list of Object.values(os.networkInterfaces())) {
      for (const i of list ?? []) if (families.includes(String(i.family))) add(i.address.replace(/%.*$/, ''));
    }
  } else {
    add(config.host);
  }
  return { domains: new Set(config.domains), literals, delimiter: config.recipientDelimiter };
}

function extraCommands(deps: SmtpDeps, local: LocalNames): ExtraCommands {
  const { config } = deps;
  const describe = async (arg: string): Promise<{ reply?: Reply; name?: string }> => {
    const inner = arg.replace(/^<(.*)>$/, '$1');
    if (!inner) return { reply: { code: 501, lines: ['5.5.4 Syntax: VRFY|EXPN address'] } };
    const verdict = resolveRecipient(inner, inner, await deps.directory(), local);
    if (!verdict.ok) return { reply: { code: verdict.reply.code, lines: [`${verdict.reply.enhanced} ${verdict.reply.text}`] } };
    return { name: verdict.local };
  };
  const userLine = async (name: string): Promise<string> => {
    const u = (await deps.directory()).users.get(name);
    return `${u?.gecos ? `${u.gecos} ` : ''}<${name}@${config.hostname}>`;
  };
  return {
    async help() {
      return {
        code: 214,
        lines: [
          `2.0.0 ${config.hostname} mtad: local delivery only, no relay`,
          `2.0.0 Commands: HELO EHLO${deps.tls ? ' STARTTLS' : ''} MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN`,
          '2.0.0 MAIL FROM:<sender> [SIZE=n] [BODY=8BITMIME]   RCPT TO:<user>',
          '2.0.0 End of HELP info',
        ],
      };
    },
    async vrfy(_conn: Connection, arg: string) {
      if (!config.vrfy) return { code: 252, lines: ['2.5.2 Cannot VRFY user, but will accept message and attempt delivery'] };
      const d = await describe(arg);
      if (d.reply) return d.reply;
      const dir = await deps.directory();
      const line = dir.users.has(d.name!) && !dir.aliases.has(d.name!) ? await userLine(d.name!) : `<${d.name}@${config.hostname}>`;
      return { code: 250, lines: [`2.1.5 ${line}`] };
    },
    // bin/sendmail's local submission: the Received line names the submitting user,
    // whose uid comes from the kernel's socket table, never from the client.
    async xlocal(conn: Connection) {
      const s = conn.session as unknown as Session;
      if (s.envelope?.mailFrom) return { code: 503, lines: ['5.5.1 Error: XLOCAL not allowed in a mail transaction'] };
      const uid = await socketOwner({ address: s.remoteAddress, port: s.remotePort }, { address: s.localAddress, port: s.localPort });
      if (uid === null) return { code: 550, lines: ['5.7.1 Error: XLOCAL is for bin/sendmail on this host: no local socket of yours found'] };
      s.mtadLocalUid = uid;
      log.info(`local submission by uid ${uid} from [${s.remoteAddress}]:${s.remotePort}`);
      return { code: 250, lines: [`2.0.0 Ok: local submission from userid ${uid}`] };
    },
    async expn(_conn: Connection, arg: string) {
      if (!config.expn) return { code: 502, lines: ['5.5.1 EXPN command is disabled'] };
      const d = await describe(arg);
      if (d.reply) return d.reply;
      const dir = await deps.directory();
      const boxes = expand(d.name!, dir, local).mailboxes;
      const lines = await Promise.all((boxes.length ? boxes : [d.name!]).map(userLine));
      return { code: 250, lines: lines.map((l) => `2.1.5 ${l}`) };
    },
  };
}
