// Who owns the other end of a TCP connection made on this host, from the kernel:
// /proc/net/tcp and tcp6 list every socket of the network namespace with the uid
// that created it (world-readable; identd answers from the same table). The
// client's socket is the row whose local address is the client's and whose remote
// address is ours. Nothing the client sends enters the answer.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';

export interface Endpoint {
  address: string;
  port: number;
}

// Only an established socket carries its creator's uid: a TIME_WAIT row (a socket
// already closed) shows uid 0, which would name root for anyone who hung up fast.
const ESTABLISHED = '01';
const TABLES = ['/proc/net/tcp', '/proc/net/tcp6'];

/** The uid of the local process socket connected from `client` to `server`, or null when none is on this host. */
export async function socketOwner(client: Endpoint, server: Endpoint): Promise<number | null> {
  const want = `${key(client.address)}:${client.port}>${key(server.address)}:${server.port}`;
  if (want.includes('null')) return null;
  for (const table of TABLES) {
    let text: string;
    try {
      text = await fs.promises.readFile(table, 'latin1');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 8 || f[3] !== ESTABLISHED) continue;
      if (`${procEndpoint(f[1])}>${procEndpoint(f[2])}` === want) {
        const uid = Number(f[7]);
        return Number.isInteger(uid) && uid >= 0 ? uid : null;
      }
    }
  }
  return null;
}

/** "0100007F:0019" (a 32-bit word or four, each in host byte order, and a port) as "key:port". */
function procEndpoint(field: string): string {
  const [hex, port] = field.split(':');
  const bytes = Buffer.from(hex, 'hex');
  if (os.endianness() === 'LE') for (let i = 0; i < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
  return `${bytesKey(bytes)}:${parseInt(port, 16)}`;
}

/** One spelling per address: IPv4 and IPv4-mapped IPv6 as dotted quads, other IPv6 as 8 full groups. */
function key(address: string): string | null {
  const a = address.replace(/%.*$/, '');
  if (net.isIPv4(a)) return a;
  if (!net.isIPv6(a)) return null;
  return bytesKey(ipv6Bytes(a));
}

function bytesKey(b: Buffer): string {
  if (b.length === 4) return [...b].join('.');
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return [...b.subarray(12)].join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return groups.join(':');
}

function ipv6Bytes(a: string): Buffer {
  let s = a;
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (quad) {
    const n = quad.slice(1).map(Number);
    s = `${s.slice(0, quad.index)}${((n[0] << 8) | n[1]).toString(16)}:${((n[2] << 8) | n[3]).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, null];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === null ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
