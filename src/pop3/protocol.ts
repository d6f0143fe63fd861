// The POP3 wire, as pure pieces: command lines out of a byte stream (with a
// length cap that never buffers an overlong line), commands and their
// arguments, and SASL PLAIN (RFC 4616) credentials. No I/O here.

const LF = 0x0a;
const CR = 0x0d;

export type Line = { text: string } | { tooLong: true };

/**
 * Splits a byte stream into lines ending in LF (a CR before it is dropped). A
 * line longer than `max` bytes is reported once as tooLong and its bytes are
 * skipped up to its LF, so a client cannot make the server hold more than `max`.
 */
export class LineReader {
  private parts: Buffer[] = [];
  private length = 0;
  private skipping = false;

  constructor(private readonly max: number) {}

  push(chunk: Buffer): Line[] {
    const out: Line[] = [];
    let i = 0;
    while (i < chunk.length) {
      const lf = chunk.indexOf(LF, i);
      const end = lf < 0 ? chunk.length : lf;
      if (!this.skipping) {
        if (this.length + (end - i) > this.max + 1) {
          this.parts = [];
          this.length = 0;
          this.skipping = true;
          out.push({ tooLong: true });
        } else {
          this.parts.push(chunk.subarray(i, end));
          this.length += end - i;
        }
      }
      if (lf < 0) break;
      if (!this.skipping) {
        let line = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
        if (line.length && line[line.length - 1] === CR) line = line.subarray(0, -1);
        if (line.length > this.max) out.push({ tooLong: true });
        else out.push({ text: line.toString('latin1') });
      }
      this.parts = [];
      this.length = 0;
      this.skipping = false;
      i = lf + 1;
    }
    return out;
  }

  /** Bytes held for an unfinished line. */
  get pending(): number {
    return this.length;
  }
}

export interface Command {
  /** Upper-cased keyword. */
  name: string;
  /** Everything after the keyword and one space, as sent (PASS may hold spaces). */
  rest: string;
  args: string[];
}

export function parseCommand(text: string): Command {
  const sp = text.indexOf(' ');
  const name = (sp < 0 ? text : text.slice(0, sp)).toUpperCase();
  const rest = sp < 0 ? '' : text.slice(sp + 1);
  return { name, rest, args: rest.split(' ').filter((a) => a !== '') };
}

/** A message number or line count: digits only, no sign, no leading "+" (RFC 1939's "msg"). */
export function parseNumber(arg: string | undefined): number | null {
  if (arg === undefined || !/^[0-9]{1,9}$/.test(arg)) return null;
  return Number(arg);
}

/** Decodes a SASL PLAIN response: "authzid NUL authcid NUL password", base64. Null when malformed. */
export function decodePlain(b64: string): { user: string; password: string } | null {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) return null;
  const raw = Buffer.from(b64, 'base64');
  const parts = raw.toString('utf8').split('\0');
  if (parts.length !== 3) return null;
  const [authz, user, password] = parts;
  // Acting as someone else is not offered: the authorization id is empty or the user's own.
  if (!user || (authz !== '' && authz !== user)) return null;
  return { user, password };
}

export const CAPABILITIES = [
  'CAPA', 'TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'USER', 'SASL PLAIN', 'IMPLEMENTATION mtad',
];

/** A multi-line response: the status line, the lines (dot-stuffed), the final dot. */
export function multiline(status: string, lines: string[]): string {
  return `${status}\r\n${lines.map((l) => (l.startsWith('.') ? `.${l}` : l)).join('\r\n')}${lines.length ? '\r\n' : ''}.\r\n`;
}
