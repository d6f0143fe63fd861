// A raw SMTP client over node:net, as a telnet user would type: one line, one
// reply. Nothing here knows SMTP beyond the reply format (RFC 5321 4.2).
import net from 'node:net';
import tls from 'node:tls';

export interface Reply {
  code: number;
  lines: string[];
  /** The reply exactly as received, CRLFs included. */
  raw: string;
}

export class SmtpClient {
  private buf = '';
  private replies: Reply[] = [];
  private waiters: Array<{ resolve: (r: Reply) => void; reject: (e: Error) => void }> = [];
  private closed: Error | null = null;
  greeting!: Reply;

  private constructor(readonly socket: net.Socket | tls.TLSSocket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => { this.buf += d; this.parse(); });
    const fail = (e: Error): void => {
      this.closed = e;
      this.waiters.splice(0).forEach((w) => w.reject(e));
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error(`connection closed; unparsed: ${JSON.stringify(this.buf)}`)));
  }

  /** `localAddress`: another loopback address (127.0.0.2) to connect from, as a second client machine would. */
  static async connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<SmtpClient> {
    const socket = net.connect({ port, host, localAddress });
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
    const c = new SmtpClient(socket);
    c.greeting = await c.read();
    return c;
  }

  private parse(): void {
    for (;;) {
      let end = 0;
      const lines: string[] = [];
      let done = false;
      while (!done) {
        const nl = this.buf.indexOf('\r\n', end);
        if (nl < 0) return;
        const line = this.buf.slice(end, nl);
        lines.push(line);
        end = nl + 2;
        if (line.length < 4 || line[3] !== '-') done = true;
      }
      const raw = this.buf.slice(0, end);
      this.buf = this.buf.slice(end);
      const reply = { code: Number(lines[lines.length - 1].slice(0, 3)), lines: lines.map((l) => l.slice(4)), raw };
      const w = this.waiters.shift();
      if (w) w.resolve(reply); else this.replies.push(reply);
    }
  }

  /** The next reply. */
  read(): Promise<Reply> {
    const r = this.replies.shift();
    if (r) return Promise.resolve(r);
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Sends a command line (CRLF added) and returns its reply. */
  async cmd(line: string): Promise<Reply> {
    this.write(`${line}\r\n`);
    return this.read();
  }

  write(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** DATA, the message (dot-stuffed here), the final dot; returns the reply to the dot. */
  async data(message: string | Buffer): Promise<Reply> {
    const r = await this.cmd('DATA');
    if (r.code !== 354) return r;
    this.write(dotStuff(typeof message === 'string' ? Buffer.from(message, 'latin1') : message));
    this.write('.\r\n');
    return this.read();
  }

  /** One whole transaction; returns the reply to the final dot (or the first failure). */
  async send(from: string, to: string[], message: string | Buffer): Promise<Reply> {
    let r = await this.cmd(`MAIL FROM:<${from}>`);
    if (r.code !== 250) return r;
    for (const t of to) {
      r = await this.cmd(`RCPT TO:<${t}>`);
      if (r.code !== 250) return r;
    }
    return this.data(message);
  }

  /** What arrived and was not read yet: after STARTTLS's 220, anything here was answered in plaintext. */
  unread(): string {
    return this.replies.map((r) => r.raw).join('') + this.buf;
  }

  /**
   * The TLS handshake over this connection (after a 220 to STARTTLS); the returned
   * client reads and writes through TLS, and this one is done.
   */
  async startTls(options: tls.ConnectionOptions): Promise<SmtpClient> {
    this.socket.removeAllListeners('data');
    const secure = tls.connect({ ...options, socket: this.socket as net.Socket });
    await new Promise<void>((resolve, reject) => { secure.once('secureConnect', resolve); secure.once('error', reject); });
    return new SmtpClient(secure);
  }

  async quit(): Promise<void> {
    try { await this.cmd('QUIT'); } catch { /* already closed */ }
    this.socket.destroy();
  }

  close(): void {
    this.socket.destroy();
  }
}

/** CRLF line ends, a leading dot doubled, and a final CRLF, as a client does before ".". */
export function dotStuff(message: Buffer): Buffer {
  let text = message.toString('latin1').replace(/\r?\n/g, '\r\n');
  if (!text.endsWith('\r\n')) text += '\r\n';
  text = text.replace(/^\./gm, '..');
  return Buffer.from(text, 'latin1');
}

/** "250 2.0.0 Ok: queued as ABC": the enhanced code of a reply's last line. */
export function enhanced(r: Reply): string {
  return r.lines[r.lines.length - 1].split(' ')[0];
}

/** Resolves once the server has closed the client's connection (at once if it already has). */
export const closed = (c: SmtpClient): Promise<void> => new Promise((resolve) => {
  if (c.socket.destroyed || c.socket.readableEnded) resolve(); else c.socket.once('close', () => resolve());
});
