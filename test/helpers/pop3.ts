// A raw POP3 client over node:net, as a telnet user would type: one line, one
// status line; multi-line responses read up to the lone dot, kept as bytes.
import net from 'node:net';
import tls from 'node:tls';

export interface Multi {
  status: string;
  /** The body exactly as received, dot-stuffing and CRLFs included, without the final ".\r\n". */
  raw: Buffer;
  /** The body with dot-stuffing undone: what the server meant to send. */
  data: Buffer;
  lines: string[];
}

export class Pop3Client {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  private closed = false;
  greeting = '';

  private constructor(readonly socket: net.Socket | tls.TLSSocket) {
    socket.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.wake?.(); });
    socket.on('close', () => { this.closed = true; this.wake?.(); });
    socket.on('error', () => undefined);
  }

  /** `localAddress` (e.g. 127.0.0.2) stands for another client machine. */
  static async connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<Pop3Client> {
    const socket = net.connect({ port, host, localAddress });
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
    const c = new Pop3Client(socket);
    c.greeting = await c.line();
    return c;
  }

  get isClosed(): boolean {
    return this.closed && this.buf.length === 0;
  }

  private async waitFor(test: () => number): Promise<number> {
    for (;;) {
      const n = test();
      if (n >= 0) return n;
      if (this.closed) throw new Error(`connection closed; unread: ${JSON.stringify(this.buf.toString('latin1'))}`);
      await new Promise<void>((r) => { this.wake = r; });
      this.wake = null;
    }
  }

  /** The next line, without CRLF. */
  async line(): Promise<string> {
    const nl = await this.waitFor(() => this.buf.indexOf('\r\n'));
    const l = this.buf.subarray(0, nl).toString('latin1');
    this.buf = this.buf.subarray(nl + 2);
    return l;
  }

  /** Sends a command and returns its status line. */
  async cmd(line: string): Promise<string> {
    this.write(`${line}\r\n`);
    return this.line();
  }

  /** Sends a command whose +OK answer is multi-line; reads it all. */
  async multi(line: string): Promise<Multi> {
    this.write(`${line}\r\n`);
    return this.readMulti();
  }

  async readMulti(): Promise<Multi> {
    const status = await this.line();
    if (!status.startsWith('+OK')) return { status, raw: Buffer.alloc(0), data: Buffer.alloc(0), lines: [] };
    const end = await this.waitFor(() => {
      if (this.buf.subarray(0, 3).equals(Buffer.from('.\r\n'))) return 0;
      const i = this.buf.indexOf('\r\n.\r\n');
      return i < 0 ? -1 : i + 2;
    });
    const raw = this.buf.subarray(0, end);
    this.buf = this.buf.subarray(end + 3);
    const data = Buffer.from(raw.toString('latin1').replace(/(^|\n)\./g, '$1'), 'latin1');
    return { status, raw, data, lines: raw.length ? raw.toString('latin1').replace(/\r\n$/, '').split('\r\n') : [] };
  }

  /** What arrived and was not read yet: after STLS's +OK, anything here was answered in plaintext. */
  unread(): string {
    return this.buf.toString('latin1');
  }

  /** The TLS handshake over this connection (after +OK to STLS); the returned client talks through TLS. */
  async startTls(options: tls.ConnectionOptions): Promise<Pop3Client> {
    this.socket.removeAllListeners('data');
    const secure = tls.connect({ ...options, socket: this.socket as net.Socket });
    await new Promise<void>((resolve, reject) => { secure.once('secureConnect', resolve); secure.once('error', reject); });
    return new Pop3Client(secure);
  }

  async login(user: string, password: string): Promise<string> {
    const u = await this.cmd(`USER ${user}`);
    if (!u.startsWith('+OK')) return u;
    return this.cmd(`PASS ${password}`);
  }

  write(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** Resolves once the server has closed the connection. */
  async closedByServer(): Promise<void> {
    await this.waitFor(() => (this.closed ? 0 : -1)).catch(() => undefined);
  }

  async quit(): Promise<string> {
    const r = await this.cmd('QUIT');
    await this.closedByServer();
    return r;
  }

  close(): void {
    this.socket.destroy();
  }
}
