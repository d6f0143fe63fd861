// The SMTP client side of a local submission: one connection to mtad on
// loopback, commands and replies one at a time, and DATA written from a stream
// with dot-stuffing and CRLF line ends, waiting for the socket to drain.
import net from 'node:net';

export interface Reply {
  code: number;
  lines: string[];
}

const LF = 0x0a;
const DOT = 0x2e;
const CRLF = Buffer.from('\r\n');
const DOT2 = Buffer.from('..');

export class SmtpConnection {
  private buf = '';
  private waiting: ((r: Reply | Error) => void) | null = null;
  private replies: Array<Reply | Error> = [];
  private error: Error | null = null;
  /** mtad's greeting, once read. */
  greeting?: Reply;

  private constructor(readonly socket: net.Socket, private readonly trace?: (line: string) => void) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(Object.assign(new Error('mtad closed the connection'), { code: 'ECONNRESET' })));
  }

  static connect(host: string, port: number, timeoutMs: number, trace?: (line: string) => void): Promise<SmtpConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      socket.setTimeout(timeoutMs, () => socket.destroy(Object.assign(new Error('mtad did not answer in time'), { code: 'ETIMEDOUT' })));
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new SmtpConnection(socket, trace));
      });
    });
  }

  /** The next reply (the greeting first). */
  reply(): Promise<Reply> {
    const next = this.replies.shift() ?? this.error;
    if (next) return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
    return new Promise((resolve, reject) => {
      this.waiting = (r) => (r instanceof Error ? reject(r) : resolve(r));
    });
  }

  async command(line: string): Promise<Reply> {
    this.trace?.(`>>> ${line}`);
    // UTF-8, never latin1: a latin1 write turns U+010A in an argument into LF, a second command.
    this.socket.write(`${line}\r\n`, 'utf8');
    return this.reply();
  }

  /** Writes the message (LF-terminated lines) as DATA content and the final dot, then waits for the reply. */
  async data(parts: AsyncIterable<Buffer>): Promise<Reply> {
    let lineStart = true;
    let last = LF;
    for await (const chunk of parts) {
      if (!chunk.length) continue;
      const out: Buffer[] = [];
      let i = 0;
      while (i < chunk.length) {
        if (lineStart && chunk[i] === DOT) out.push(DOT2.subarray(0, 1));
        const lf = chunk.indexOf(LF, i);
        const end = lf < 0 ? chunk.length : lf;
        out.push(chunk.subarray(i, end));
        if (lf >= 0) out.push(CRLF);
        lineStart = lf >= 0;
        i = end + (lf >= 0 ? 1 : 0);
      }
      last = chunk[chunk.length - 1];
      if (!this.socket.write(Buffer.concat(out))) await this.drained();
    }
    this.trace?.('>>> [message] .');
    this.socket.write(last === LF ? '.\r\n' : '\r\n.\r\n');
    return this.reply();
  }

  /** Hands the connection over to someone else (sendmail -bs): what was read ahead, and no more parsing. */
  detach(): string {
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('close');
    const rest = this.buf;
    this.buf = '';
    return rest;
  }

  async quit(): Promise<void> {
    try {
      await this.command('QUIT');
    } catch {
      // mtad closing first is fine: everything is decided before QUIT
    }
    this.socket.destroy();
  }

  private drained(): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const done = (): void => { this.socket.off('drain', done); this.socket.off('close', gone); resolve(); };
      const gone = (): void => { this.socket.off('drain', done); reject(this.error ?? new Error('mtad closed the connection')); };
      this.socket.on('drain', done);
      this.socket.on('close', gone);
    });
  }

  private lines: string[] = [];

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      this.trace?.(`<<< ${line}`);
      const m = /^(\d{3})([ -]?)(.*)$/.exec(line);
      if (!m) { this.fail(new Error(`mtad sent something that is not an SMTP reply: ${line.slice(0, 80)}`)); return; }
      this.lines.push(m[3]);
      if (m[2] === '-') continue;
      this.push({ code: Number(m[1]), lines: this.lines });
      this.lines = [];
    }
  }

  private push(r: Reply | Error): void {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      w(r);
    } else if (!(r instanceof Error)) {
      this.replies.push(r);
    }
  }

  private fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    this.push(err);
  }
}
