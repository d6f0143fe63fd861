// The POP3 side of the mbox format, as pure functions over random messages:
// what the encoder stored, the scanner measures and the wire encoder gives back
// exactly as sent (seeded, so a failure repeats).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeMessage, entryPrefix } from '../../src/delivery/mbox';
import { scanMailbox, WireEncoder } from '../../src/delivery/reader';
import { decodePlain, LineReader, parseCommand } from '../../src/pop3/protocol';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (s * 1664525 + 1013904223) >>> 0; return s / 2 ** 32; };
}

const PIECES = ['From ', '>From ', '>>From x', '.', '..', 'F', '>', 'Fro', '\r', 'x', ' ', '\xff', 'From', '>F'];

/** A message as an SMTP client sends it (before dot-stuffing): CRLF lines of awkward pieces. */
function randomMessage(r: () => number): Buffer {
  const lines: string[] = ['Subject: t'];
  const n = Math.floor(r() * 12);
  if (r() < 0.8) lines.push('');
  for (let i = 0; i < n; i++) {
    let l = '';
    const k = Math.floor(r() * 4);
    for (let j = 0; j < k; j++) l += PIECES[Math.floor(r() * PIECES.length)];
    lines.push(l);
  }
  return Buffer.from(`${lines.join('\r\n')}\r\n`, 'latin1');
}

/** Through the wire encoder in random pieces, then un-dot-stuffed as a client does. */
function wire(stored: Buffer, r: () => number, top: number | null = null): { raw: Buffer; data: Buffer } {
  const enc = new WireEncoder(top);
  const out: Buffer[] = [];
  for (let i = 0; i < stored.length && !enc.done;) {
    const n = 1 + Math.floor(r() * 7);
    out.push(enc.push(stored.subarray(i, i + n)));
    i += n;
  }
  out.push(enc.end());
  const raw = Buffer.concat(out);
  return { raw, data: Buffer.from(raw.toString('latin1').replace(/(^|\n)\./g, '$1'), 'latin1') };
}

describe('mbox back to the message as sent', () => {
  it('2,000 random messages: scanned sizes are the octets sent, and the bytes are the ones the client sent', async () => {
    const r = rng(11);
    const sent = Array.from({ length: 2000 }, () => randomMessage(r));
    const prefix = (): Buffer => entryPrefix('a@b.test', 'alice@lab.test', new Date(2026, 0, 1), 'u');
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-unit-')), 'box');
    fs.writeFileSync(file, Buffer.concat(sent.flatMap((m) => [prefix(), encodeMessage(m), Buffer.from('\n')])));
    const fh = await fs.promises.open(file, 'r');
    const { messages } = await scanMailbox(fh, fs.statSync(file).size);
    await fh.close();
    const all = fs.readFileSync(file);
    expect(messages).toHaveLength(sent.length);
    messages.forEach((m, i) => {
      const expected = Buffer.concat([Buffer.from('Return-Path: <a@b.test>\r\nDelivered-To: alice@lab.test\r\n'), sent[i]]);
      // What Maildrop.stored gives: the entry without the From_ line and mtad's X-UIDL line.
      const stored = Buffer.concat([all.subarray(m.bodyStart, m.uidlLine![0]), all.subarray(m.uidlLine![1], m.end)]);
      const { raw, data } = wire(stored, r);
      // Whole, as one piece: the encoder's fast path for whole lines.
      const whole = new WireEncoder();
      expect(Buffer.concat([whole.push(stored), whole.end()]).equals(raw)).toBe(true);
      expect(data.toString('latin1')).toBe(expected.toString('latin1'));
      expect(m.size).toBe(data.length);
      expect(m.uidl).toBe('u');
      // Dot-stuffed: no line on the wire starts with a lone ".".
      expect(/(^|\n)\.(?!\.)/.test(raw.toString('latin1'))).toBe(false);
    });
    fs.rmSync(path.dirname(file), { recursive: true });
  });

  it('TOP n: the header, the empty line and n body lines', () => {
    const stored = Buffer.from('A: 1\nB: 2\n\nl1\n.l2\nl3\n');
    expect(wire(stored, rng(1), 0).raw.toString()).toBe('A: 1\r\nB: 2\r\n\r\n');
    expect(wire(stored, rng(2), 2).raw.toString()).toBe('A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n');
    expect(wire(stored, rng(3), 99).raw.toString()).toBe('A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n');
  });
});

describe('POP3 protocol pieces', () => {
  it('reads lines with LF or CRLF, and reports an overlong one once without keeping it', () => {
    const lr = new LineReader(10);
    expect(lr.push(Buffer.from('USER a\r\nPA'))).toEqual([{ text: 'USER a' }]);
    expect(lr.push(Buffer.from('SS b\nSTAT'))).toEqual([{ text: 'PASS b' }]);
    expect(lr.push(Buffer.from('x'.repeat(100000)))).toEqual([{ tooLong: true }]);
    expect(lr.pending).toBe(0);
    expect(lr.push(Buffer.from('yyy\r\nNOOP\r\n'))).toEqual([{ text: 'NOOP' }]);
    expect(parseCommand('pass  two  spaces ')).toEqual({ name: 'PASS', rest: ' two  spaces ', args: ['two', 'spaces'] });
  });

  it('decodes SASL PLAIN, refusing a malformed one and acting for someone else', () => {
    const b = (s: string): string => Buffer.from(s).toString('base64');
    expect(decodePlain(b('\0alice\0pw'))).toEqual({ user: 'alice', password: 'pw' });
    expect(decodePlain(b('alice\0alice\0p w'))).toEqual({ user: 'alice', password: 'p w' });
    expect(decodePlain(b('bob\0alice\0pw'))).toBeNull();
    expect(decodePlain(b('alice\0pw'))).toBeNull();
    expect(decodePlain('!!!')).toBeNull();
    expect(decodePlain('')).toBeNull();
  });
});
