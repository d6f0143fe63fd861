// The one way client-supplied text is written (issue 9 item 1): whatever goes in,
// printable ASCII comes out, so no input can start a line in a mailbox, a header,
// a log line or the trace. Checked over every code point, and over the writers.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ENTRY_SUFFIX, encodeMessage, entryPrefix, receivedHeader } from '../../src/delivery/mbox';
import { printableLine } from '../../src/smtp/trace';
import { asciiBytes, isPrintableAscii, printable } from '../../src/text';

const PRINTABLE = /^[\x20-\x7e]*$/;

/** Every code point, lone surrogates included, as one string per block of 4096. */
function* allCodePoints(): Generator<string> {
  for (let start = 0; start <= 0x10ffff; start += 4096) {
    let s = '';
    for (let cp = start; cp < Math.min(start + 4096, 0x110000); cp++) s += String.fromCodePoint(cp);
    yield s;
  }
}

// The characters that have turned into line breaks somewhere: each is one class.
const HOSTILE = [
  '\n', '\r', '\r\n', '\x00', '\t', '\x0b', '\x0c', '\x1b', '\x7f', // C0 and DEL
  '\x85', '\x8d', '\x9b', // C1: NEL, and what a latin1 write makes of U+0085
  '\u010a', '\u010d', '\u0a0a', '\u0d0a', '\u2028', '\u2029', // a latin1 write of these is LF or CR
  '\ufeff', '\u200b', '\u202e', '\ufffd', '\ud800', '\udc00', '\u{1f4a9}', '\xe9', '\xff',
];

describe('printable()', () => {
  it('leaves printable ASCII as it is', () => {
    const ascii = Array.from({ length: 95 }, (_, i) => String.fromCharCode(0x20 + i)).join('');
    expect(printable(ascii)).toBe(ascii);
    expect(printable(ascii, { show: 'escape' })).toBe(ascii);
    expect(isPrintableAscii(ascii)).toBe(true);
  });

  it('gives printable ASCII for every code point, in both modes, and keeps one character per code point', () => {
    for (const block of allCodePoints()) {
      const q = printable(block);
      expect(PRINTABLE.test(q)).toBe(true);
      expect(q.length).toBe([...block].length);
      expect(PRINTABLE.test(printable(block, { show: 'escape' }))).toBe(true);
      // Bytes as written: printable ASCII, and of the rest only the LF and TAB mtad composes with.
      expect(asciiBytes(q).every((b) => b >= 0x20 && b <= 0x7e)).toBe(true);
      expect(asciiBytes(block).every((b) => (b >= 0x20 && b <= 0x7e) || b === 0x0a || b === 0x09)).toBe(true);
    }
  });

  it('escapes what it changes so that a log reader sees what was sent', () => {
    expect(printable('a\r\nb\u2028c\x00\u010a', { show: 'escape' })).toBe('a\\x0d\\x0ab\\u{2028}c\\x00\\u{10a}');
    expect(printable('a\r\nb\u2028c', { max: 3 })).toBe('a??...');
  });

  it('makes bytes of mtad\'s own lines (LF, TAB kept) and nothing else', () => {
    expect(asciiBytes('a\n\tb').toString('latin1')).toBe('a\n\tb');
    expect(asciiBytes('\u010a\u0a0a\u2028\r\x00').toString('latin1')).toBe('?????');
  });
});

describe('writers of client text', () => {
  const when = new Date(2026, 10, 7, 9, 5, 3);

  it.each(HOSTILE.map((c) => [c]))('entryPrefix with %j in the sender and recipient stays four lines of printable ASCII', (c) => {
    const p = entryPrefix(`ev${c}il@x${c}y\nFrom forged@evil  Sat Nov  7 09:05:03 2026`, `alice${c}@lab.test`, when);
    const lines = p.toString('latin1').split('\n');
    expect(lines).toHaveLength(5);
    expect(lines[3]).toMatch(/^X-UIDL: [0-9a-f]{32}$/);
    expect(lines[4]).toBe('');
    for (const l of lines) expect(PRINTABLE.test(l)).toBe(true);
    expect(lines[0]).toMatch(/^From \S+  Sat Nov  7 09:05:03 2026$/);
    expect(lines[1]).toMatch(/^Return-Path: </);
    expect(lines[2]).toMatch(/^Delivered-To: /);
  });

  it.each(HOSTILE.map((c) => [c]))('Received: with %j in HELO, host name and recipient keeps its three lines', (c) => {
    const h = receivedHeader({ helo: `x${c}y`, clientAddress: '127.0.0.1', clientHostname: `h${c}.test`, hostname: 'lab.test', protocol: 'ESMTP', id: 'ABCDEF0123', recipient: `a${c}@lab.test`, date: when });
    const lines = asciiBytes(h).toString('latin1').split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[1].startsWith('\tby ') && lines[2].startsWith('\tfor <')).toBe(true);
    for (const l of lines) expect(/^\t?[\x20-\x7e]*$/.test(l)).toBe(true);
  });

  it.each(HOSTILE.map((c) => [c]))('the trace shows a line with %j as one line of printable ASCII', (c) => {
    expect(PRINTABLE.test(printableLine(`MAIL FROM:<a${c}b>`))).toBe(true);
  });

  it('lets Python\'s mailbox read exactly one message per entry, whatever the envelope', () => {
    // Every hostile character in sender and recipient of one entry each, in one mbox file.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-text-'));
    try {
      const file = path.join(dir, 'box');
      const entries = HOSTILE.map((c, i) => Buffer.concat([
        entryPrefix(`a${c}From evil@x  Sat Nov  7 09:05:03 2026${c}Subject: forged${c}@x`, `alice${c}From x@lab.test`, when),
        encodeMessage(Buffer.from(`From: sender@x\r\nSubject: entry ${i}\r\n\r\nbody\r\n`)),
        ENTRY_SUFFIX,
      ]));
      fs.writeFileSync(file, Buffer.concat(entries));
      const r = spawnSync('python3', ['-c', [
        'import mailbox, sys, json',
        'box = mailbox.mbox(sys.argv[1], create=False)',
        'print(json.dumps([m["Subject"] for m in box]))',
      ].join('\n'), file], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual(HOSTILE.map((_, i) => `entry ${i}`));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
