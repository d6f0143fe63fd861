// The teaching trace (MTAD_TRACE=yes or mtad --trace): each session's dialogue
// as it happens, one "C:" or "S:" line per command and reply, tagged with the
// client's address and port and, from DATA to its reply, the queue id, so that
// a class can follow it next to Wireshark and grep it together with the log.
// smtp-server reports every command and reply to its `logger` as
// debug(meta, 'C:'|'S:', line); the message body it does not report, so
// onData feeds it to a BodyTrace, which shows the first lines and a byte count.
import type { TLSSocket } from 'node:tls';
import type { SMTPServer } from 'smtp-server';
import { log } from '../log';
import { printable } from '../text';

/** Session property holding the queue id of the transaction in DATA, for the tags. */
export const TRACE_ID = 'mtadTraceId';
/** Set once the body is read: the next reply closes the transaction, and the id tag ends with it. */
export const TRACE_END = 'mtadTraceEnd';

interface TracedConnection {
  id: string;
  remoteAddress: string;
  remotePort: number;
  session?: Record<string, unknown>;
}

const SHOWN_LINES = 12;
const SHOWN_LINE_LENGTH = 200;

/** What a line looks like on the projector: all but printable ASCII escaped, long lines cut. */
export function printableLine(line: string): string {
  const s = printable(line, { show: 'escape' });
  return s.length > SHOWN_LINE_LENGTH ? `${s.slice(0, SHOWN_LINE_LENGTH)}[...]` : s;
}

export function tag(addr: string, port: number, queueId?: unknown): string {
  const a = addr.includes(':') ? `[${addr}]` : addr;
  return `${a}:${port}${typeof queueId === 'string' ? ` ${queueId}` : ''}`;
}

/** A bunyan-style logger for smtp-server's `logger` option that prints only the dialogue. */
export function traceLogger(server: () => SMTPServer): Record<string, (...args: unknown[]) => void> {
  const find = (cid: unknown): TracedConnection | undefined => {
    const conns = (server() as unknown as { connections: Set<TracedConnection> }).connections;
    for (const c of conns) if (c.id === cid) return c;
    return undefined;
  };
  const ignore = (): void => undefined;
  return {
    trace: ignore, info: ignore, warn: ignore, error: ignore, fatal: ignore,
    debug(meta: unknown, dir: unknown, line: unknown) {
      if (dir !== 'C:' && dir !== 'S:') return;
      const m = meta as { cid?: string; command?: string };
      const conn = find(m.cid);
      if (!conn) return;
      // A new transaction (or greeting) leaves the previous queue id behind.
      if (dir === 'C:' && conn.session && /^(MAIL|RSET|HELO|EHLO|LHLO)$/.test(m.command ?? '')) delete conn.session[TRACE_ID];
      const id = conn.session?.[TRACE_ID];
      for (const l of String(line).split(/\r?\n/)) log.info(`${tag(conn.remoteAddress, conn.remotePort, id)} ${dir} ${printableLine(l)}`);
      if (dir === 'S:' && conn.session?.[TRACE_END]) {
        delete conn.session[TRACE_ID];
        delete conn.session[TRACE_END];
      }
    },
  };
}

/** Marks the point after STARTTLS where the wire turns unreadable: the lines below it are decrypted ones. */
export function traceTls(addr: string, port: number, socket: TLSSocket): void {
  log.info(`${tag(addr, port)} -- TLS started (${socket.getProtocol()}, ${socket.getCipher().name}): ` +
    'from here on Wireshark shows only encrypted TLS records; the dialogue below is what mtad decrypted --');
}

/** Shows the first lines of a message body as they arrive, then how much more there was. */
export class BodyTrace {
  private partial = '';
  private shown = 0;
  private bytes = 0;
  private shownBytes = 0;

  constructor(private readonly prefix: string) {}

  push(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (this.shown >= SHOWN_LINES) return;
    // A line without an end cannot grow without bound: only its start is ever shown.
    let text = (this.partial + chunk.toString('latin1')).slice(0, 64 * 1024);
    let nl: number;
    while (this.shown < SHOWN_LINES && (nl = text.indexOf('\n')) >= 0) {
      this.line(text.slice(0, nl).replace(/\r$/, ''), nl + 1);
      text = text.slice(nl + 1);
    }
    this.partial = this.shown < SHOWN_LINES ? text : '';
  }

  end(): void {
    if (this.partial) this.line(this.partial, this.partial.length);
    this.partial = '';
    const hidden = this.bytes - this.shownBytes;
    if (hidden > 0) log.info(`${this.prefix} C: [... ${hidden} more bytes, ${this.bytes} in all]`);
    log.info(`${this.prefix} C: .`);
  }

  private line(l: string, length: number): void {
    this.shown++;
    this.shownBytes += length;
    log.info(`${this.prefix} C: ${printableLine(l)}`);
  }
}
