// The one file that reaches into smtp-server must break loudly if the library moves.
import { describe, expect, it } from 'vitest';
import { checkArguments, checkCommand, installInternals, Offered, PINNED_VERSION, splitAddressCommand } from '../../src/smtp/internals';

describe('smtp-server internals', () => {
  it('is pinned to the installed version and finds every method it patches', () => {
    const pkg = require('smtp-server/package.json') as { version: string };
    const lock = require('../../package.json') as { dependencies: Record<string, string> };
    expect(pkg.version).toBe(PINNED_VERSION);
    expect(lock.dependencies['smtp-server']).toBe(PINNED_VERSION);
    expect(() => installInternals()).not.toThrow();
  });

  it.each([
    ['MAIL FROM: tode@cremona.polimi.it', { verb: 'MAIL FROM', inner: 'tode@cremona.polimi.it', params: '', bracketed: false }],
    ['MAIL FROM:<a@b> SIZE=10', { verb: 'MAIL FROM', inner: 'a@b', params: ' SIZE=10', bracketed: true }],
    ['RCPT TO: bob', { verb: 'RCPT TO', inner: 'bob', params: '', bracketed: false }],
    ['RCPT TO: alice bob', { verb: 'RCPT TO', inner: 'alice', params: ' bob', bracketed: false }],
    ['rcpt to:<@a,@b:c@d>', { verb: 'rcpt to', inner: '@a,@b:c@d', params: '', bracketed: true }],
    ['MAIL FROM:<>', { verb: 'MAIL FROM', inner: '', params: '', bracketed: true }],
    ['MAIL FROM:', null],
    ['MAIL FROM:<a@b', null],
  ])('splits %j', (cmd, want) => {
    expect(splitAddressCommand(cmd)).toEqual(want);
  });
});

describe('command checks before the library', () => {
  const offered: Offered = { mail: new Set(['SIZE', 'BODY']), rcpt: new Set() };
  const code = (verb: 'HELO' | 'EHLO' | 'MAIL' | 'RCPT', line: string): number | null => {
    const whole = checkCommand(line);
    if (whole) return whole.code;
    return checkArguments(verb, line, offered)?.code ?? null;
  };

  it.each([
    ['MAIL', 'MAIL FROM:<a@b.test>', null],
    ['MAIL', 'MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME', null],
    ['MAIL', 'MAIL FROM: a@b.test', null],
    ['RCPT', 'RCPT TO:<alice>', null],
    ['RCPT', 'RCPT TO: alice', null],
    ['EHLO', 'EHLO client.test', null],
    // Parameters not offered: 555 (RFC 5321 4.1.1.11).
    ['MAIL', 'MAIL FROM:<a@b.test> FOO=bar', 555],
    ['MAIL', 'MAIL FROM:<a@b.test> SMTPUTF8', 555],
    ['MAIL', 'MAIL FROM:<a@b.test> RET=HDRS', 555],
    ['MAIL', 'MAIL FROM:<a@b.test> ENVID=x', 555],
    ['MAIL', 'MAIL FROM:<a@b.test> AUTH=<>', 555],
    ['MAIL', 'MAIL FROM:<a@b.test> REQUIRETLS', 555],
    ['MAIL', 'MAIL FROM:<a@b.test> SIZE=1 =x', 555],
    ['RCPT', 'RCPT TO:<alice> NOTIFY=NEVER', 555],
    ['RCPT', 'RCPT TO:<alice> ORCPT=rfc822;alice@x', 555],
    ['RCPT', 'RCPT TO:<alice> SIZE=1', 555],
    // Text after an address without brackets.
    ['RCPT', 'RCPT TO: alice bob', 501],
    ['MAIL', 'MAIL FROM: a@b.test SIZE=10', 501],
    // Control characters anywhere, 8-bit in HELO and the sender.
    ['MAIL', 'MAIL FROM:<a\x00b@x.test>', 501],
    ['MAIL', 'MAIL FROM:<a\rb@x.test>', 501],
    ['RCPT', 'RCPT TO:<alice>\x00', 501],
    ['EHLO', 'EHLO x\ty', 501],
    ['EHLO', 'EHLO x\u0085y', 501],
    ['HELO', 'HELO \u010a', 501],
    ['EHLO', 'EHLO \ufffd', 501],
    ['MAIL', 'MAIL FROM:<\u010a@x.test>', 553],
    ['MAIL', 'MAIL FROM:<a@\u2028.test>', 553],
    ['MAIL', 'MAIL FROM:<\ufffd@x.test>', 553],
    // 8-bit in a recipient is the policy's to judge (relay or 553).
    ['RCPT', 'RCPT TO:<\u010a@lab.test>', null],
  ] as const)('%s %j: %s', (verb, line, want) => {
    expect(code(verb, line)).toBe(want);
  });
});

describe('DATA transparency (RFC 5321 4.5.2) in the library\'s parser', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { SMTPStream } = require('smtp-server/lib/smtp-stream') as { SMTPStream: new () => SmtpStream };
  interface SmtpStream {
    oncommand: (line: Buffer, cb?: () => void) => void;
    startDataMode(max?: number): NodeJS.ReadableStream;
    write(b: Buffer): boolean;
    continue(): void;
  }

  /** Feeds `data` after DATA in the given pieces; resolves with the body and the first command line after it. */
  async function feed(pieces: Buffer[]): Promise<{ body: string; next: string }> {
    installInternals();
    const s = new SMTPStream();
    let next = '';
    s.oncommand = (line, cb) => { next ||= line.toString('latin1'); cb?.(); };
    const out = s.startDataMode();
    const got: Buffer[] = [];
    out.on('data', (d: Buffer) => got.push(d));
    const ended = new Promise<void>((resolve) => out.on('end', () => resolve()));
    for (const p of pieces) s.write(p);
    await ended;
    s.continue();
    await new Promise((resolve) => setImmediate(resolve));
    return { body: Buffer.concat(got).toString('latin1'), next };
  }

  it.each([
    ['.x\r\n..y\r\n...z\r\n.\r\n', '', 'x\r\n.y\r\n..z\r\n'],
    ['a\r\n.\r\nQUIT\r\n', 'QUIT', 'a\r\n'],
    ['.\r\nQUIT\r\n', 'QUIT', ''],
    ['..\r\n.\r\n', '', '.\r\n'],
    ['a\n.\r\nb\r\n.\r\n', '', 'a\n\r\nb\r\n'],
    ['a\n.x\r\n.\r\n', '', 'a\nx\r\n'],
    ['a\r.x\r\n.\r\n', '', 'a\r.x\r\n'],
    ['.\r.\r\n.\r\n', '', '\r.\r\n'],
    ['x.y\r\n.\r\n', '', 'x.y\r\n'],
  ])('%j', async (data, next, body) => {
    expect(await feed([Buffer.from(`${data}`, 'latin1')])).toEqual({ body, next });
  });

  /**
   * RFC 5321 4.5.2 read line by line, written apart from feedData's byte scan: at
   * a line start (the start of the data, after CRLF, after a bare LF) a period
   * is removed; "." alone on a line begun after CRLF (or the data's start) ends
   * the data. `next` is the command line after the end, as the library reads it.
   */
  function reference(data: string): { body: string; next: string } {
    let body = '';
    let start: 'crlf' | 'lf' | null = 'crlf';
    for (let i = 0; i < data.length; i++) {
      if (start && data[i] === '.') {
        if (start === 'crlf' && data.startsWith('\r\n', i + 1)) {
          const rest = data.slice(i + 3);
          // feed() keeps the first non-empty command line, read up to LF, a CR before it dropped.
          const lines = rest.split('\n').slice(0, -1).map((l) => l.replace(/\r$/, ''));
          return { body, next: lines.find((l) => l !== '') ?? '' };
        }
        start = null;
        continue;
      }
      body += data[i];
      start = data[i] === '\n' ? (data[i - 1] === '\r' ? 'crlf' : 'lf') : null;
    }
    throw new Error('no end of data');
  }

  it('gives the same body and the same next command however the bytes are cut', async () => {
    let x = 7;
    const rand = (n: number): number => { x = (Math.imul(x, 1103515245) + 12345) >>> 0; return (x >>> 8) % n; };
    const alphabet = ['.', '.', '\r', '\n', '\r\n', 'a', '\r\n.', '\n.', '..'];
    for (let round = 0; round < 300; round++) {
      const data = Buffer.from(`${Array.from({ length: 30 }, () => alphabet[rand(alphabet.length)]).join('')}\r\n.\r\nNOOP\r\n`, 'latin1');
      const whole = await feed([data]);
      // Checked against the reading of the RFC above, not only against itself.
      expect(whole, JSON.stringify(data.toString('latin1'))).toEqual(reference(data.toString('latin1')));
      const cuts = [...new Set(Array.from({ length: 1 + rand(6) }, () => 1 + rand(data.length - 1)))].sort((a, b) => a - b);
      const pieces = [0, ...cuts].map((from, i, all) => data.subarray(from, all[i + 1] ?? data.length));
      expect(await feed(pieces), JSON.stringify(data.toString('latin1'))).toEqual(whole);
    }
  });
});
