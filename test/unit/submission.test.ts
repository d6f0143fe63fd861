// The pieces of sendmail that work on bytes and words: the input normalizer
// across every chunking, recipient lists as mail programs write them, the
// command line as getopt reads it, and the kernel's socket table lookup.
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { InputNormalizer, parseAddressList } from '../../src/submission/message';
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
