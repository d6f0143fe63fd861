// mbox format, as pure functions. One entry is:
//   From <sender>  <asctime>\n  Return-Path  Delivered-To  X-UIDL  <message>  \n
// where the message has LF line ends and every line matching ^>*From is given
// one more ">" (mboxrd: reversible, and every mboxo reader still sees a
// quoted line). All other bytes are kept exactly: the encoder works on Buffers.

import { randomUUID } from 'node:crypto';
import { asciiBytes, printable } from '../text';

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
 * The envelope sender as it appears in the From_ line: printable ASCII without
 * white space (Python's mailbox decodes that line as ASCII and fails on anything
 * else; a space would split it), MAILER-DAEMON for <>.
 */
export function fromLineSender(sender: string): string {
  return sender ? printable(sender).replace(/ /g, '_') : 'MAILER-DAEMON';
}

/**
 * What goes before the message in one mailbox: From_ line, Return-Path, Delivered-To,
 * and X-UIDL, the id POP3 gives the message (unique, and kept when others are
 * removed; Dovecot's pop3_reuse_xuidl gives the same one).
 * SMTP refuses envelopes outside printable ASCII, but a queue file written by an
 * older mtad may hold one: every piece goes through printable() here all the same.
 */
export function entryPrefix(sender: string, deliveredTo: string, when: Date, uidl: string = newUidl()): Buffer {
  return asciiBytes(
    `From ${fromLineSender(sender)}  ${asctime(when)}\n` +
    `Return-Path: <${printable(sender)}>\n` +
    `Delivered-To: ${printable(deliveredTo)}\n` +
    `X-UIDL: ${uidl}\n`,
  );
}

/** 128 random bits as 32 hex digits: unique in any mailbox without a counter to keep. */
export function newUidl(): string {
  return randomUUID().replace(/-/g, '');
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

/** The Received: trace field we add (RFC 5321 section 4.4), LF-terminated; printable ASCII, TAB and LF only. */
export function receivedHeader(r: ReceivedInfo): string {
  const helo = printable(r.helo || 'unknown').replace(/ /g, '?');
  const rdns = r.clientHostname && !r.clientHostname.startsWith('[') ? printable(r.clientHostname) : 'unknown';
  const literal = r.clientAddress.includes(':') ? `IPv6:${r.clientAddress}` : r.clientAddress;
  return `Received: from ${helo} (${rdns} [${literal}])\n` +
    `\tby ${r.hostname} (mtad) with ${r.protocol} id ${r.id}` +
    (r.recipient ? `\n\tfor <${printable(r.recipient).replace(/ /g, '?')}>` : '') +
    `; ${rfc5322Date(r.date)}\n`;
}

/**
 * The Received: field of a local submission (bin/sendmail), as Postfix's pickup
 * writes it: the user is the uid the kernel gave, nothing the client said.
 */
export function localReceivedHeader(r: { hostname: string; uid: number; id: string; date: Date }): string {
  return `Received: by ${r.hostname} (mtad, from userid ${r.uid})\n\tid ${r.id}; ${rfc5322Date(r.date)}\n`;
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
  // Output of the current push: one buffer per chunk, filled by copying. A view
  // per line (thousands per 100 KiB message) cost more than the copy.
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;

  /** Bytes produced so far. */
  get size(): number { return this.written; }

  push(chunk: Buffer): Buffer[] {
    let i = 0;
    const n = chunk.length;
    this.begin(n + 16);
    if (this.pendingCR && n > 0) {
      this.pendingCR = false;
      if (chunk[0] !== LF) this.emitByte(CR);
    }
    while (i < n) {
      if (this.atLineStart) {
        const b = chunk[i];
        if (this.fromMatched === 0 && b === GT) { this.gts++; i++; continue; }
        if (b === FROM[this.fromMatched]) {
          i++;
          if (++this.fromMatched === FROM.length) {
            for (let k = 0; k <= this.gts; k++) this.emitByte(GT);
            this.emitRange(FROM, 0, FROM.length);
            this.gts = 0; this.fromMatched = 0; this.atLineStart = false;
          }
          continue;
        }
        this.flushLineStart();
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (lf >= 0) {
        const end = lf > i && chunk[lf - 1] === CR ? lf - 1 : lf;
        this.emitRange(chunk, i, end);
        this.emitByte(LF);
        i = lf + 1;
        this.atLineStart = true;
      } else {
        let end = n;
        if (chunk[n - 1] === CR) { end--; this.pendingCR = true; }
        this.emitRange(chunk, i, end);
        i = n;
      }
    }
    return this.finish();
  }

  /** Ends the message: whatever was held back, and a final LF if the last line had none. */
  end(): Buffer[] {
    this.begin(this.gts + FROM.length + 2);
    if (this.atLineStart) this.flushLineStart();
    if (this.pendingCR) { this.pendingCR = false; this.emitByte(CR); }
    if (this.lastByte !== LF) this.emitByte(LF);
    return this.finish();
  }

  private flushLineStart(): void {
    for (let k = 0; k < this.gts; k++) this.emitByte(GT);
    this.emitRange(FROM, 0, this.fromMatched);
    this.gts = 0; this.fromMatched = 0; this.atLineStart = false;
  }

  private begin(size: number): void {
    this.buf = Buffer.allocUnsafe(size);
    this.pos = 0;
  }

  private finish(): Buffer[] {
    const out = this.pos ? [this.buf.subarray(0, this.pos)] : [];
    this.buf = Buffer.alloc(0);
    this.pos = 0;
    return out;
  }

  private room(len: number): void {
    if (this.pos + len <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + len));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }

  private emitRange(src: Buffer, start: number, end: number): void {
    if (end <= start) return;
    this.room(end - start);
    src.copy(this.buf, this.pos, start, end);
    this.pos += end - start;
    this.written += end - start;
    this.lastByte = src[end - 1];
  }

  private emitByte(b: number): void {
    this.room(1);
    this.buf[this.pos++] = b;
    this.written++;
    this.lastByte = b;
  }
}

/** Whole-buffer form of the encoder (for tests and small inputs). */
export function encodeMessage(data: Buffer): Buffer {
  const e = new MboxEncoder();
  return Buffer.concat([...e.push(data), ...e.end()]);
}
