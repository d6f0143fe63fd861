// Reading an mbox back, for POP3 and any tool that lists or removes messages.
// scanMailbox finds the entries of a mailbox (a line starting "From " begins
// one, as in mtad's mboxrd and in Python's mailbox) and measures each one as
// POP3 sends it; WireEncoder turns the stored bytes back into the message as
// the SMTP client sent it: mboxrd quoting undone, LF back to CRLF, then
// dot-stuffed for the wire (RFC 1939 section 3).
import crypto from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';

const LF = 0x0a;
const GT = 0x3e;
const DOT = 0x2e;
const FROM = Buffer.from('From ');
const CRLF = Buffer.from('\r\n');
const READ_CHUNK = 1024 * 1024;
// Enough of a line's start to recognise the header lines below.
const HEAD = 128;

/** One message of a mailbox, as byte offsets in the file. */
export interface StoredMessage {
  /** Where its From_ line starts; the entry runs to the next one's start (or the end of the snapshot). */
  start: number;
  /** After the From_ line: the message itself. */
  bodyStart: number;
  /** End of the message, before the empty line that separates entries. */
  end: number;
  /** Octets of the message as RETR sends it, before dot-stuffing (RFC 1939 section 11). */
  size: number;
  /** The unique id mtad wrote into its entry (see entryPrefix), or null for others' messages. */
  uidl: string | null;
  /** Where mtad's X-UIDL line is, [start, end) with its LF: kept in the mbox, left out of what RETR sends. */
  uidlLine?: [number, number];
  /** Dovecot's "FOLDER INTERNAL DATA" entry: never listed, never removed. */
  internal: boolean;
  /** For a message named by its content (no X-UIDL): that hash, before the occurrence number. */
  contentHash?: string;
}

export interface MailboxScan {
  messages: StoredMessage[];
  /** SHA-256 of the bytes scanned: the same value later means nobody rewrote that part. */
  fingerprint: string;
}

/** The header field mtad puts after Return-Path and Delivered-To: the message's POP3 UIDL. */
export const UIDL_FIELD = 'X-UIDL';
const UIDL_RE = /^X-UIDL: ([\x21-\x7e]{1,70})\r?$/;

/** A scan kept for the next one: while those bytes stay as they were, only what follows them is scanned. */
export interface ScanCache {
  dev: number;
  ino: number;
  size: number;
  scan: MailboxScan;
}

/**
 * Reads bytes [0, size) of the mailbox open on `fh` and finds its messages.
 * With `cache` (an earlier scan of the same file), the bytes it covered are
 * only hashed: if they are unchanged, its messages are taken as they were and
 * the scan resumes at the start of its last message (which may have grown).
 */
export async function scanMailbox(fh: FileHandle, size: number, cache?: ScanCache): Promise<MailboxScan> {
  const st = cache ? await fh.stat() : null;
  const usable = cache && st && cache.dev === st.dev && cache.ino === st.ino && cache.size <= size && cache.scan.messages.length > 0 ? cache : undefined;
  const hash = crypto.createHash('sha256');
  const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, Math.max(1, size)));
  let pos = 0;
  let kept: StoredMessage[] = [];
  let resumeAt = 0;
  if (usable) {
    while (pos < usable.size) {
      const chunk = await readAt(fh, buf, pos, Math.min(buf.length, usable.size - pos));
      hash.update(chunk);
      pos += chunk.length;
    }
    if (hash.copy().digest('hex') === usable.scan.fingerprint) {
      kept = usable.scan.messages.slice(0, -1);
      resumeAt = usable.scan.messages[usable.scan.messages.length - 1].start;
    } else {
      hash.destroy();
      return scanMailbox(fh, size);
    }
  }
  const scanner = new Scanner(size, resumeAt);
  // The part scanned again was hashed already: it is read once more for the scanner only.
  for (let at = resumeAt; at < pos;) {
    const chunk = await readAt(fh, buf, at, Math.min(buf.length, pos - at));
    scanner.push(chunk, at);
    at += chunk.length;
  }
  while (pos < size) {
    const chunk = await readAt(fh, buf, pos, Math.min(buf.length, size - pos));
    hash.update(chunk);
    scanner.push(chunk, pos);
    pos += chunk.length;
  }
  const messages = [...kept, ...scanner.finish()];
  await nameForeignMessages(fh, messages);
  return { messages, fingerprint: hash.digest('hex') };
}

async function readAt(fh: FileHandle, buf: Buffer, pos: number, len: number): Promise<Buffer> {
  const { bytesRead } = await fh.read(buf, 0, len, pos);
  if (bytesRead === 0) throw new Error(`mailbox ended at ${pos} bytes, more expected`);
  return buf.subarray(0, bytesRead);
}

/** Only the fingerprint of bytes [0, size): to see whether a snapshot still holds. */
export async function fingerprintOf(fh: FileHandle, size: number): Promise<string> {
  const hash = crypto.createHash('sha256');
  const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, Math.max(1, size)));
  for (let pos = 0; pos < size;) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) break;
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return hash.digest('hex');
}

interface Open {
  start: number;
  bodyStart: number;
  lfs: number;
  quoted: number;
  headerLine: number;
  inHeader: boolean;
  uidl: string | null;
  uidlLine?: [number, number];
  internal: boolean;
  lastLineEmpty: boolean;
  /** The snapshot ends inside this message's last line: RETR ends that line with CRLF. */
  lastNoLF: boolean;
}

/** Line by line over chunks; only the first HEAD bytes of a line are ever kept. */
class Scanner {
  private messages: StoredMessage[] = [];
  private cur: Open | null = null;
  private head: Buffer[] = [];
  private headLen = 0;
  /** Inside a line that cannot matter, up to its LF. */
  private skipping = false;

  constructor(private readonly size: number, private lineStart = 0) {}

  push(chunk: Buffer, at: number): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.skipping) {
        const lf = chunk.indexOf(LF, i);
        if (lf < 0) return;
        if (this.cur) { this.cur.lfs++; this.cur.lastLineEmpty = false; }
        this.lineStart = at + lf + 1;
        this.skipping = false;
        i = lf + 1;
        continue;
      }
      // A body line that starts with neither "F", ">" nor LF cannot matter: counted, never copied.
      if (this.headLen === 0 && (!this.cur || !this.cur.inHeader)) {
        const b = chunk[i];
        if (b !== 0x46 && b !== GT && b !== LF) {
          this.skipping = true;
          continue;
        }
      }
      const lf = chunk.indexOf(LF, i);
      const segEnd = lf < 0 ? chunk.length : lf;
      if (this.headLen < HEAD) {
        const take = chunk.subarray(i, Math.min(segEnd, i + HEAD - this.headLen));
        this.head.push(take);
        this.headLen += take.length;
      }
      if (lf < 0) break;
      this.line(this.takeHead(), at + lf + 1);
      this.lineStart = at + lf + 1;
      i = lf + 1;
    }
  }

  finish(): StoredMessage[] {
    if (this.skipping) {
      if (this.cur) { this.cur.lastNoLF = true; this.cur.lastLineEmpty = false; }
    } else if (this.lineStart < this.size) {
      this.line(this.takeHead(), this.size, true);
    }
    this.close(this.size);
    return this.messages;
  }

  private takeHead(): Buffer {
    const h = this.head.length === 1 ? this.head[0] : Buffer.concat(this.head);
    this.head = [];
    this.headLen = 0;
    return h;
  }

  /** A line starting at this.lineStart and ending (after its LF) at `next`. */
  private line(head: Buffer, next: number, noLF = false): void {
    const start = this.lineStart;
    if (head.length >= 5 && head[0] === 0x46 && head.subarray(0, 5).equals(FROM)) {
      this.close(start);
      this.cur = {
        start, bodyStart: next, lfs: 0, quoted: 0, headerLine: 0, inHeader: true,
        uidl: null, internal: false, lastLineEmpty: false, lastNoLF: false,
      };
      return;
    }
    const m = this.cur;
    if (!m) return; // bytes before the first From_ line belong to no message
    if (noLF) m.lastNoLF = true;
    else m.lfs++;
    m.lastLineEmpty = head.length === 0 && !noLF;
    if (head[0] === GT && isQuotedFrom(head)) m.quoted++;
    if (m.inHeader) {
      if (head.length === 0) {
        m.inHeader = false;
        return;
      }
      const n = ++m.headerLine;
      const text = head.toString('latin1');
      // mtad's entry: Return-Path, Delivered-To, X-UIDL, in that order, written before any byte of the sender's.
      if (n === 1 && !text.startsWith('Return-Path:')) m.headerLine = 99;
      else if (n === 2 && !text.startsWith('Delivered-To:')) m.headerLine = 99;
      else if (n === 3) {
        m.uidl = UIDL_RE.exec(text)?.[1] ?? null;
        if (m.uidl !== null) m.uidlLine = [start, next];
      }
      if (m.start === 0 && /^X-IMAP(base)?:/i.test(text)) m.internal = true;
    }
  }

  private close(end: number): void {
    const m = this.cur;
    if (!m) return;
    this.cur = null;
    // The empty line that ends an entry is the separator, not part of the message.
    let stop = end;
    let lfs = m.lfs;
    if (m.lastLineEmpty && stop - 1 >= m.bodyStart) { stop--; lfs--; }
    const len = stop - m.bodyStart;
    // mtad's X-UIDL line is not sent: its bytes and the CR its LF would have gained.
    const hidden = m.uidlLine ? m.uidlLine[1] - m.uidlLine[0] + 1 : 0;
    const size = len + lfs - m.quoted + (len > 0 && m.lastNoLF ? 2 : 0) - hidden;
    this.messages.push({ start: m.start, bodyStart: m.bodyStart, end: stop, size, uidl: m.uidl, uidlLine: m.uidlLine, internal: m.internal });
  }
}

function isQuotedFrom(head: Buffer): boolean {
  let i = 0;
  while (i < head.length && head[i] === GT) i++;
  return i > 0 && head.length - i >= 5 && head.subarray(i, i + 5).equals(FROM);
}

/**
 * Messages mtad did not write carry no X-UIDL: they are named by a hash of the
 * entry (From_ line included), and identical entries by their order among
 * themselves. Stable while nothing is removed between two identical copies.
 */
async function nameForeignMessages(fh: FileHandle, messages: StoredMessage[]): Promise<void> {
  const seen = new Map<string, number>();
  for (const m of messages) {
    if (m.contentHash !== undefined) seen.set(m.contentHash, (seen.get(m.contentHash) ?? 0) + 1);
    if (m.uidl !== null) continue;
    const hash = crypto.createHash('sha256');
    const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, Math.max(1, m.end - m.start)));
    for (let pos = m.start; pos < m.end;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, m.end - pos), pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    const h = hash.digest('base64url').slice(0, 27);
    const n = (seen.get(h) ?? 0) + 1;
    seen.set(h, n);
    m.contentHash = h;
    m.uidl = n === 1 ? h : `${h}.${n}`;
  }
}

/**
 * From the stored message to the wire: a line ^>+From loses one ">" (mboxrd),
 * every LF becomes CRLF, a line starting with "." gets another, and a last line
 * without LF gets CRLF. `bodyLines` (TOP) stops after the header, the empty
 * line and that many lines of the body.
 */
export class WireEncoder {
  private atLineStart = true;
  private gts = 0;
  private fromMatched = 0;
  private lineLen = 0;
  private inHeader = true;
  private left: number;
  /** Set once TOP's lines are all out: the rest of the message is not wanted. */
  done = false;

  constructor(bodyLines: number | null = null) {
    this.left = bodyLines ?? Infinity;
  }

  push(chunk: Buffer): Buffer {
    if (this.left !== Infinity) return this.pushBytes(chunk);
    // Whole lines go through V8's native regular expressions, which are several
    // times faster than the byte loop; only the pieces around them need the loop.
    const parts: Buffer[] = [];
    let i = 0;
    if (!this.atLineStart || this.gts || this.fromMatched) {
      const lf = chunk.indexOf(LF);
      if (lf < 0) return this.pushBytes(chunk);
      parts.push(this.pushBytes(chunk.subarray(0, lf + 1)));
      i = lf + 1;
    }
    const last = chunk.lastIndexOf(LF);
    if (last >= i) {
      const text = chunk.toString('latin1', i, last + 1)
        .replace(/(^|\n)(\.|>+From )/g, (_m, lead: string, x: string) => lead + (x === '.' ? '..' : x.slice(1)))
        .replace(/\n/g, '\r\n');
      parts.push(Buffer.from(text, 'latin1'));
      i = last + 1;
    }
    if (i < chunk.length) parts.push(this.pushBytes(chunk.subarray(i)));
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  /** The byte-by-byte form: any piece, any state, and TOP's line counting. */
  private pushBytes(chunk: Buffer): Buffer {
    const out = Buffer.allocUnsafe(chunk.length * 2 + 16);
    let o = 0;
    const emit = (src: Buffer, s: number, e: number): void => { o += src.copy(out, o, s, e); };
    const n = chunk.length;
    let i = 0;
    while (i < n && !this.done) {
      if (this.atLineStart) {
        const b = chunk[i];
        if (this.fromMatched === 0 && b === GT) { this.gts++; i++; continue; }
        if (this.gts > 0 && b === FROM[this.fromMatched]) {
          i++;
          if (++this.fromMatched === FROM.length) {
            for (let k = 1; k < this.gts; k++) out[o++] = GT;
            emit(FROM, 0, FROM.length);
            this.lineLen += this.gts - 1 + FROM.length;
            this.gts = 0; this.fromMatched = 0; this.atLineStart = false;
          }
          continue;
        }
        if (this.gts > 0) {
          for (let k = 0; k < this.gts; k++) out[o++] = GT;
          emit(FROM, 0, this.fromMatched);
          this.lineLen += this.gts + this.fromMatched;
          this.gts = 0; this.fromMatched = 0;
        } else if (b === DOT) {
          out[o++] = DOT;
        }
        this.atLineStart = false;
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (lf < 0) {
        emit(chunk, i, n);
        this.lineLen += n - i;
        i = n;
        break;
      }
      emit(chunk, i, lf);
      emit(CRLF, 0, 2);
      this.lineLen += lf - i;
      i = lf + 1;
      this.endLine();
    }
    return out.subarray(0, o);
  }

  /** Whatever is held back, and CRLF when the last line had no line end. */
  end(): Buffer {
    if (this.done) return Buffer.alloc(0);
    const parts: Buffer[] = [];
    if (this.gts || this.fromMatched) {
      parts.push(Buffer.alloc(this.gts, GT), FROM.subarray(0, this.fromMatched));
      this.lineLen += this.gts + this.fromMatched;
    }
    if (!this.atLineStart || this.gts || this.fromMatched) parts.push(CRLF);
    this.done = true;
    return Buffer.concat(parts);
  }

  private endLine(): void {
    this.atLineStart = true;
    const empty = this.lineLen === 0;
    this.lineLen = 0;
    if (this.inHeader) {
      if (empty) {
        this.inHeader = false;
        if (this.left === 0) this.done = true;
      }
    } else if (--this.left <= 0) {
      this.done = true;
    }
  }
}
