// The mbox encoder: the same bytes whatever the chunking, quoting as mboxrd.
import { describe, expect, it } from 'vitest';
import { asctime, encodeMessage, entryPrefix, MboxEncoder, receivedHeader } from '../../src/delivery/mbox';

const enc = (s: string): string => encodeMessage(Buffer.from(s, 'latin1')).toString('latin1');

describe('mbox encoding', () => {
  it.each([
    ['a\r\nb\r\n', 'a\nb\n'],
    ['From x\r\n', '>From x\n'],
    ['>From x\r\n', '>>From x\n'],
    ['>>From x\r\n', '>>>From x\n'],
    ['a\r\nFrom x\r\n>From y\r\n', 'a\n>From x\n>>From y\n'],
    ['From: header\r\n', 'From: header\n'],
    ['Fromage\r\n', 'Fromage\n'],
    [' From x\r\n', ' From x\n'],
    ['>F>From x\r\n', '>F>From x\n'],
    ['From\r\n', 'From\n'],
    ['no final newline', 'no final newline\n'],
    ['bare\rcr\r\n', 'bare\rcr\n'],
    ['bare\nlf\r\n', 'bare\nlf\n'],
    ['ends with cr\r', 'ends with cr\r\n'],
    ['cr cr lf\r\r\n', 'cr cr lf\r\n'],
    ['\r\n\r\n', '\n\n'],
    ['', ''],
    ['.\r\n', '.\n'],
    ['>>>\r\n', '>>>\n'],
  ])('%j becomes %j', (input, output) => {
    expect(enc(input)).toBe(output);
  });

  it('keeps every 8-bit byte', () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i).filter((b) => b !== 10 && b !== 13));
    expect(encodeMessage(Buffer.concat([all, Buffer.from('\r\n')]))).toEqual(Buffer.concat([all, Buffer.from('\n')]));
  });

  it('gives the same bytes for every way of cutting the input into chunks', () => {
    let seed = 42;
    const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    const alphabet = ['From ', '>', 'F', 'r', 'o', 'm', ' ', '\r', '\n', '\r\n', 'x', '\xe9', '.'];
    for (let round = 0; round < 300; round++) {
      let s = '';
      for (let i = 0; i < 60; i++) s += alphabet[rnd(alphabet.length)];
      const whole = encodeMessage(Buffer.from(s, 'latin1'));
      const e = new MboxEncoder();
      const parts: Buffer[] = [];
      let i = 0;
      while (i < s.length) {
        const n = 1 + rnd(7);
        parts.push(...e.push(Buffer.from(s.slice(i, i + n), 'latin1')));
        i += n;
      }
      parts.push(...e.end());
      expect(Buffer.concat(parts).toString('latin1')).toBe(whole.toString('latin1'));
      expect(e.size).toBe(whole.length);
    }
  });

  it('writes the From_ line like Postfix, MAILER-DAEMON for the null sender', () => {
    const d = new Date(2026, 10, 7, 9, 5, 3);
    expect(asctime(d)).toBe('Sat Nov  7 09:05:03 2026');
    expect(entryPrefix('', 'alice@lab.test', d, '0123abcd').toString()).toBe(
      'From MAILER-DAEMON  Sat Nov  7 09:05:03 2026\nReturn-Path: <>\nDelivered-To: alice@lab.test\nX-UIDL: 0123abcd\n');
    expect(entryPrefix('a b@x', 'bob@lab.test', d).toString().split('\n')[0]).toBe('From a_b@x  Sat Nov  7 09:05:03 2026');
  });

  it('names HELO, client, host, id and recipient in Received:', () => {
    const h = receivedHeader({ helo: 'polimi.it', clientAddress: '127.0.0.1', hostname: 'lab.test', protocol: 'ESMTP', id: 'ABCDEF0123', recipient: 'alice@lab.test', date: new Date() });
    expect(h).toMatch(/^Received: from polimi\.it \(unknown \[127\.0\.0\.1\]\)\n\tby lab\.test \(mtad\) with ESMTP id ABCDEF0123\n\tfor <alice@lab\.test>; \w{3}, \d+ \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\n$/);
  });
});
