// The pieces of sendmail that work on bytes and words: the input normalizer
// across every chunking, recipient lists as mail programs write them, the
// command line as getopt reads it, and the kernel's socket table lookup.
import net from 'node:net';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { HEADER_LIMIT, InputNormalizer, parseAddressList, readInput } from '../../src/submission/message';
import { parseOptions } from '../../src/submission/options';
import { socketOwner } from '../../src/system/sockowner';

function normalize(input: string, dotEnds: boolean, cut: number): string {
  const n = new InputNormalizer(dotEnds);
  const out: Buffer[] = [];
  const b = Buffer.from(input, 'latin1');
  for (let i = 0; i < b.length && !n.ended; i += cut) out.push(...n.push(b.subarray(i, i + cut)));
  out.push(...n.end());
  return Buffer.concat(out).toString('latin1');
}

describe('InputNormalizer', () => {
  it.each([
    ['a\r\nb\r\n', true, 'a\nb\n'],
    ['a\rb\r\n\r\n', true, 'a\rb\n\n'],
    ['one\n.\ntwo\n', true, 'one\n'],
    ['one\r\n.\r\ntwo\n', true, 'one\n'],
    ['one\n.\ntwo\n', false, 'one\n.\ntwo\n'],
    ['one\n..\n.x\n.\r\n', false, 'one\n..\n.x\n.\n'],
    ['one\n..\n.x\n.\rx\n', true, 'one\n..\n.x\n.\rx\n'],
    ['no newline at the end\r', true, 'no newline at the end\r'],
    ['last line\n.', true, 'last line\n.'],
  ])('%j (dot ends: %s) gives %j, however it is cut', (input, dotEnds, want) => {
    for (let cut = 1; cut <= input.length; cut++) expect(normalize(input, dotEnds, cut)).toBe(want);
  });
});

async function read(text: string | Buffer, dotEnds = false): Promise<{ fields: string[]; separator: boolean; body: string }> {
  const input = await readInput(Readable.from([Buffer.from(text)]), dotEnds);
  const body: Buffer[] = [];
  for await (const b of input.body.read()) body.push(b);
  await input.body.close();
  return { fields: input.fields.map((f) => `${f.name}|${f.raw.toString()}`), separator: input.separator, body: Buffer.concat(body).toString() };
}

describe('readInput', () => {
  it('splits the header into fields (continuations kept), and keeps the body apart', async () => {
    expect(await read('Subject: a\n b\nTo: x\n\nbody\n')).toEqual({ fields: ['subject|Subject: a\n b\n', 'to|To: x\n'], separator: true, body: 'body\n' });
  });
  it('drops a leading From_ line, as Postfix does', async () => {
    expect(await read('From someone Tue Dec  1 00:00:00 2026\nSubject: a\n\nb\n')).toMatchObject({ fields: ['subject|Subject: a\n'], body: 'b\n' });
  });
  it('a body line right after the header: a separator is to be written before it', async () => {
    expect(await read('Subject: a\nnot a header\nmore\n')).toEqual({ fields: ['subject|Subject: a\n'], separator: true, body: 'not a header\nmore\n' });
    expect(await read('just text\n')).toEqual({ fields: [], separator: true, body: 'just text\n' });
  });
  it('a header without a body, even without its last newline', async () => {
    expect(await read('Subject: only')).toEqual({ fields: ['subject|Subject: only\n'], separator: false, body: '' });
  });
  it('bounds the header: past HEADER_LIMIT the rest is body, nothing is lost', async () => {
    const long = `X-Long: ${'y'.repeat(HEADER_LIMIT + 10)}\n\nend\n`;
    const r = await read(long);
    expect(r.fields).toEqual([]);
    expect(r.body).toBe(long);
  });
});

describe('parseAddressList', () => {
  it.each([
    ['alice', ['alice']],
    ['alice, bob@lab.test', ['alice', 'bob@lab.test']],
    ['Alice Liddell <alice@lab.test>, "Bob, the builder" <bob>', ['alice@lab.test', 'bob']],
    ['carol@lab.test (Carol (the third)), dave', ['carol@lab.test', 'dave']],
    ['team: alice, bob;, carol', ['alice', 'bob', 'carol']],
    ['undisclosed-recipients:;', []],
    ['root@[IPv6:::1]', ['root@[IPv6:::1]']],
    ['"odd name"@lab.test', ['"odd name"@lab.test']],
  ])('%j', (text, want) => {
    expect(parseAddressList(text)).toEqual(want);
  });
});

describe('parseOptions', () => {
  it('reads options as Postfix getopt does, anywhere before "--"', () => {
    expect(parseOptions(['-oi', '-f', 'me@x', 'alice', '-t', '--', '-bob'])).toMatchObject({
      mode: 'deliver', extract: true, dotEnds: false, sender: 'me@x', recipients: ['alice', '-bob'],
    });
    expect(parseOptions(['-ti', '-Fname', '-rroot'])).toMatchObject({ extract: true, dotEnds: false, fullName: 'name', sender: 'root' });
    expect(parseOptions(['-bs']).mode).toBe('smtp');
    expect(parseOptions(['-bp']).mode).toBe('mailq');
    expect(parseOptions(['-q30m']).mode).toBe('flush');
    expect(parseOptions(['-oAfile', '-bi'])).toMatchObject({ mode: 'newaliases', aliasesFile: 'file' });
    expect(() => parseOptions(['-f'])).toThrow('option requires an argument -- f');
    expect(() => parseOptions(['-k'])).toThrow('illegal option -- k');
    expect(() => parseOptions(['-bz'])).toThrow('-bz: unsupported mode');
  });
});

describe('socketOwner', () => {
  it.skipIf(process.platform !== 'linux')('finds the uid of a connected local socket, and nothing once it is closed', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await new Promise((r) => client.once('connect', r));
    const s = await accepted;
    const ends = [{ address: s.remoteAddress!, port: s.remotePort! }, { address: s.localAddress!, port: s.localPort! }] as const;
    expect(await socketOwner(...ends)).toBe(process.getuid!());
    expect(await socketOwner({ address: '192.0.2.1', port: ends[0].port }, ends[1])).toBeNull();
    client.destroy();
    await new Promise((r) => s.once('close', r));
    expect(await socketOwner(...ends)).toBeNull();
    server.close();
  });
});
