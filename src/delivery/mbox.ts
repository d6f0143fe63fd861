// mbox format, as pure functions. One entry is:
//   From <sender>  <asctime>\n  Return-Path  Delivered-To  <message>  \n
// where the message has LF line ends and every line matching ^>*From is given
// one more ">" (mboxrd: reversible, and every mboxo reader still sees a
// quoted line). All other bytes are kept exactly: the encoder works on Buffers.

const LF = 0x0a;
const CR = 0x0d;
const GT = 0x3e;
const FROM = Buffer.from('From ');
const LF_BUF = Buffer.from('\n');

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const two = (n: number): string => String(n).padStart(2, '0');

/** asctime(3) in local time, as in the From_ line: "Fri Nov 27 13:38:46 2026". */
export function asctime(d: Date): string {
  return `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ${d.getFullYear()}`;
}

/** RFC 5322 date in local time: "Fri, 27 Nov 2026 13:38:46 +0100". */
export function rfc5322Date(d: Date): string {
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? '+' : '-';
  const a = Math.abs(off);
  return `${DAYS[d.getDay()]}, ${d.getDate()} ${MONTHS[d.getMonth()]} ${d.getFullYear()} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ${sign}${two(Math.floor(a / 60))}${two(a % 60)}`;
}

/**
 * The envelope sender as it appears in the From_ line: printable ASCII only (Python's
 * mailbox decodes that line as ASCII and fails on anything else; white space would
 * split it), MAILER-DAEMON for <>. The Return-Path: line keeps the address as given.
 */
export function fromLineSender(sender: string): string {
  return sender ? sender.replace(/[^\x21-\x7e]/g, '_') : 'MAILER-DAEMON';
}

/** What goes before the message in one mailbox: From_ line, Return-Path, Delivered-To. */
export function entryPrefix(sender: string, deliveredTo: string, when: Date): Buffer {
  const clean = sender.replace(/[\x00-\x1f\x7f]/g, '');
  return Buffer.from(
    `From ${fromLineSender(sender)}  ${asctime(when)}\n` +
    `Return-Path: <${clean}>\n` +
    `Delivered-To: ${deliveredTo}\n`,
    'latin1',
  );
}

/** What goes after the message: the empty line that ends an mbox entry. */
export const ENTRY_SUFFIX = LF_BUF;

export interface ReceivedInfo {
  helo: string;
  clientAddress: string;
  clientHostname?: string;
  hostname: string;
  protocol: string;
  id: string;
  recipient?: string;
  date: Date;
}

/** The Received: trace field we add (RFC 5321 section 4.4), LF-terminated. */
export function receivedHeader(r: ReceivedInfo): string {
  const helo = (r.helo || 'unknown').replace(/[^\x21-\x7e]/g, '?');
  const rdns = r.clientHostname && !r.clientHostname.startsWith('[') ? r.clientHostname : 'unknown';
  const literal = r.clientAddress.includes(':') ? `IPv6:${r.clientAddress}` : r.clientAddress;
  return `Received: from ${helo} (${rdns} [${literal}])\n` +
    `\tby ${r.hostname} (mtad) with ${r.protocol} id ${r.id}` +
    (r.recipient ? `\n\tfor <${r.recipient.replace(/[^\x21-\x7e]/g, '?')}>` : '') +
    `; ${rfc5322Date(r.date)}\n`;
}

/**
 * Streaming encoder from SMTP DATA bytes to the mbox form of the message:
 * CRLF becomes LF, a bare CR is kept, lines matching ^>*From get one more ">".
 * Chunk boundaries may fall anywhere, even inside "\r\n" or "From ".
 */
export class MboxEncoder {
  private atLineStart = true;
  private gts = 0;          // ">" seen at the start of the current line, not yet written
  private fromMatched = 0;  // bytes of "From " matched after them
  private pendingCR = false;
  private lastByte = LF;
  private written = 0;

  /** Bytes produced so far. */
  get size(): number { return this.written; }

  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let i = 0;
    const n = chunk.length;
    if (this.pendingCR && n > 0) {
      this.pendingCR = false;
      if (chunk[0] !== LF) this.emit(out, Buffer.from([CR]));
    }
    while (i < n) {
      if (this.atLineStart) {
        const b = chunk[i];
        if (this.fromMatched === 0 && b === GT) { this.gts++; i++; continue; }
        if (b === FROM[this.fromMatched]) {
          i++;
          if (++this.fromMatched === FROM.length) {
            this.emit(out, Buffer.concat([Buffer.alloc(this.gts + 1, GT), FROM]));
            this.gts = 0; this.fromMatched = 0; this.atLineStart = false;
          }
          continue;
        }
        this.flushLineStart(out);
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (lf >= 0) {
        const end = lf > i && chunk[lf - 1] === CR ? lf - 1 : lf;
        if (end > i) this.emit(out, chunk.subarray(i, end));
        this.emit(out, LF_BUF);
        i = lf + 1;
        this.atLineStart = true;
      } else {
        let end = n;
        if (chunk[n - 1] === CR) { end--; this.pendingCR = true; }
        if (end > i) this.emit(out, chunk.subarray(i, end));
        i = n;
      }
    }
    return out;
  }

  /** Ends the message: whatever was held back, and a final LF if the last line had none. */
  end(): Buffer[] {
    const out: Buffer[] = [];
    if (this.atLineStart) this.flushLineStart(out);
    if (this.pendingCR) { this.pendingCR = false; this.emit(out, Buffer.from([CR])); }
    if (this.lastByte !== LF) this.emit(out, LF_BUF);
    return out;
  }

  private flushLineStart(out: Buffer[]): void {
    if (this.gts || this.fromMatched) {
      this.emit(out, Buffer.concat([Buffer.alloc(this.gts, GT), FROM.subarray(0, this.fromMatched)]));
    }
    this.gts = 0; this.fromMatched = 0; this.atLineStart = false;
  }

  private emit(out: Buffer[], b: Buffer): void {
    if (!b.length) return;
    out.push(b);
    this.written += b.length;
    this.lastByte = b[b.length - 1];
  }
}

/** Whole-buffer form of the encoder (for tests and small inputs). */
export function encodeMessage(data: Buffer): Buffer {
  const e = new MboxEncoder();
  return Buffer.concat([...e.push(data), ...e.end()]);
}
