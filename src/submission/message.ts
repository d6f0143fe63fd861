// Reads the message a local program hands to sendmail, as Postfix's sendmail and
// cleanup do: CRLF line ends become LF, a lone "." ends it unless -i, a leading
// From_ line is dropped, the header is parsed (for -t and for the fields added
// when missing), and the body is kept as it comes: in memory up to SPILL_AT
// bytes, beyond that in an unlinked temp file, never whole in memory.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const LF_BUF = Buffer.from('\n');
const SPILL_AT = 256 * 1024;
/** Longer than any real header; past it the rest is taken as body, so memory stays bounded. */
export const HEADER_LIMIT = 1024 * 1024;

/** CRLF to LF, and the end of the input at a lone "." line when `dotEnds`, across any chunking. */
export class InputNormalizer {
  ended = false;
  private lineStart = true;
  private held = ''; // '.' or '.\r' at a line start (dotEnds), or '\r' awaiting its LF

  constructor(private readonly dotEnds: boolean) {}

  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let i = 0;
    while (i < chunk.length && !this.ended) {
      const b = chunk[i];
      if (this.held === '.' || this.held === '.\r') {
        if (b === LF) { this.ended = true; break; }
        if (b === CR && this.held === '.') { this.held = '.\r'; i++; continue; }
        out.push(Buffer.from(this.held, 'latin1'));
        this.held = '';
        this.lineStart = false;
        continue;
      }
      if (this.held === '\r') {
        this.held = '';
        if (b === LF) { out.push(LF_BUF); this.lineStart = true; i++; continue; }
        out.push(Buffer.from('\r'));
        continue;
      }
      if (this.lineStart && this.dotEnds && b === DOT) { this.held = '.'; i++; continue; }
      const lf = chunk.indexOf(LF, i);
      if (lf < 0) {
        let end = chunk.length;
        if (chunk[end - 1] === CR) { end--; this.held = '\r'; }
        if (end > i) out.push(chunk.subarray(i, end));
        this.lineStart = false;
        i = chunk.length;
      } else {
        const end = lf > i && chunk[lf - 1] === CR ? lf - 1 : lf;
        if (end > i) out.push(chunk.subarray(i, end));
        out.push(LF_BUF);
        this.lineStart = true;
        i = lf + 1;
      }
    }
    // One buffer per chunk: a view per line would mean a write per line downstream.
    return out.length > 1 ? [Buffer.concat(out)] : out;
  }

  end(): Buffer[] {
    const rest = this.ended || !this.held ? [] : [Buffer.from(this.held, 'latin1')];
    this.held = '';
    return rest;
  }
}

export interface HeaderField {
  /** Lower-case field name. */
  name: string;
  /** The field as written, every line LF-terminated. */
  raw: Buffer;
}

/** The body, in memory or in an unlinked temp file; read it back with chunks(). */
export class Spool {
  private chunks: Buffer[] = [];
  private memBytes = 0;
  private fh: FileHandle | null = null;
  size = 0;

  async write(bufs: Buffer[]): Promise<void> {
    for (const b of bufs) this.size += b.length;
    if (this.fh) { await writeAll(this.fh, bufs); return; }
    this.chunks.push(...bufs);
    for (const b of bufs) this.memBytes += b.length;
    if (this.memBytes > SPILL_AT) {
      this.fh = await anonymousFile();
      await writeAll(this.fh, this.chunks);
      this.chunks = [];
    }
  }

  async *read(): AsyncGenerator<Buffer> {
    if (!this.fh) { yield* this.chunks; return; }
    const buf = Buffer.allocUnsafe(64 * 1024);
    for (let pos = 0; pos < this.size;) {
      const { bytesRead } = await this.fh.read(buf, 0, buf.length, pos);
      if (!bytesRead) break;
      pos += bytesRead;
      yield Buffer.from(buf.subarray(0, bytesRead));
    }
  }

  async close(): Promise<void> {
    await this.fh?.close();
    this.fh = null;
  }
}

async function writeAll(fh: FileHandle, bufs: Buffer[]): Promise<void> {
  for (const b of bufs) {
    for (let off = 0; off < b.length;) off += (await fh.write(b, off, b.length - off)).bytesWritten;
  }
}

/** A temp file only this process can reach: mode 0600, its name gone as soon as it is open. */
async function anonymousFile(): Promise<FileHandle> {
  const file = path.join(os.tmpdir(), `sendmail.${process.pid}.${crypto.randomBytes(8).toString('hex')}`);
  const fh = await fs.promises.open(file, 'wx+', 0o600);
  await fs.promises.unlink(file);
  return fh;
}

export interface Input {
  fields: HeaderField[];
  /** Whether a header/body separator must be written before the body (it ended with a blank line, or a body line came first). */
  separator: boolean;
  body: Spool;
}

/** Reads standard input (or any stream) into header fields and a spooled body. */
export async function readInput(stream: Readable, dotEnds: boolean): Promise<Input> {
  const norm = new InputNormalizer(dotEnds);
  const body = new Spool();
  const fields: HeaderField[] = [];
  let head: Buffer[] = [];
  let headBytes = 0;
  let inHeader = true;
  let separator = false;
  let firstLine = true;
  let fieldBytes = 0;

  // Splits complete header lines off `head`; returns the bytes that belong to the body once the header ends.
  const takeHeader = (final: boolean): Buffer | null => {
    let buf = Buffer.concat(head);
    head = [];
    for (;;) {
      const lf = buf.indexOf(LF);
      if (lf < 0 && !final) {
        if (buf.length > HEADER_LIMIT) break; // no end in sight: the rest is body
        head = [buf];
        headBytes = buf.length;
        return null;
      }
      const line = lf < 0 ? buf : buf.subarray(0, lf + 1);
      if (!line.length) return Buffer.alloc(0);
      if (firstLine && line.subarray(0, 5).toString('latin1') === 'From ') {
        firstLine = false;
        buf = buf.subarray(line.length);
        continue;
      }
      firstLine = false;
      if (line[0] === LF) { separator = true; return buf.subarray(1); }
      fieldBytes += line.length;
      if (fieldBytes > HEADER_LIMIT) break;
      if ((line[0] === 0x20 || line[0] === 0x09) && fields.length) {
        const f = fields[fields.length - 1];
        f.raw = Buffer.concat([f.raw, line]);
      } else {
        const m = /^([\x21-\x39\x3b-\x7e]+):/.exec(line.subarray(0, 1000).toString('latin1'));
        if (!m) break; // a body line without the blank line before it
        fields.push({ name: m[1].toLowerCase(), raw: Buffer.from(line) });
      }
      buf = buf.subarray(line.length);
    }
    separator = true;
    return buf;
  };

  for await (const chunk of stream as AsyncIterable<Buffer>) {
    const out = norm.push(chunk);
    if (!inHeader) {
      await body.write(out);
    } else {
      head.push(...out);
      headBytes += out.reduce((n, b) => n + b.length, 0);
      const rest = out.some((b) => b.includes(LF)) || headBytes > HEADER_LIMIT ? takeHeader(false) : null;
      if (rest !== null) {
        inHeader = false;
        if (rest.length) await body.write([rest]);
      }
    }
    // A lone "." typed at a terminal ends the message there and then.
    if (norm.ended) break;
  }
  const tail = norm.end();
  if (inHeader) {
    head.push(...tail);
    const rest = takeHeader(true);
    if (rest && rest.length) await body.write([rest]);
  } else {
    await body.write(tail);
  }
  // A header without the final LF gets one, so that added fields start on their own line.
  const last = fields[fields.length - 1];
  if (last && last.raw[last.raw.length - 1] !== LF) last.raw = Buffer.concat([last.raw, LF_BUF]);
  return { fields, separator, body };
}

/** A field's value: after the colon, unfolded. */
export function fieldValue(f: HeaderField): string {
  const s = f.raw.toString('latin1');
  return s.slice(s.indexOf(':') + 1).replace(/\r?\n/g, '').trim();
}

/**
 * The addresses of an RFC 5322 address list ("A <a@x>, b@y (Bob), team: c, d;"),
 * or of a command-line recipient argument: display names, comments and group
 * names dropped. Bare words stay as they are ("alice").
 */
export function parseAddressList(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let angle: string | null = null;
  let inAngle = false;
  let quoted = false;
  let comment = 0;
  let literal = false;
  const finish = (): void => {
    const a = (angle ?? cur).trim();
    if (a) out.push(a);
    cur = '';
    angle = null;
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '\\' && i + 1 < text.length) { cur += c + text[++i]; continue; }
      if (c === '"') quoted = false;
      cur += c;
      continue;
    }
    if (comment) {
      if (c === '\\') { i++; continue; }
      if (c === '(') comment++;
      else if (c === ')') comment--;
      continue;
    }
    if (inAngle) {
      if (c === '>') inAngle = false;
      else angle += c;
      continue;
    }
    if (literal || c === '[') { literal = c !== ']'; cur += c; continue; }
    if (c === '"') { quoted = true; cur += c; continue; }
    if (c === '(') { comment = 1; continue; }
    if (c === '<') { inAngle = true; angle = ''; continue; }
    if (c === ':' && angle === null) { cur = ''; continue; } // a group's name
    if (c === ',' || c === ';') { finish(); continue; }
    if (/\s/.test(c)) continue; // folding white space, outside quotes
    cur += c;
  }
  finish();
  return out;
}
