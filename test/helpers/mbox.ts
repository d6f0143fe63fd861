// Reads a mailbox back with Python's mailbox module: the parser mutt and friends
// agree with, and not ours.
import { execFileSync } from 'node:child_process';
import path from 'node:path';

export interface MboxMessage {
  /** The From_ line without "From ". */
  from_: string;
  headers: Array<[string, string]>;
  /** The message bytes as stored (From_ line excluded). */
  raw: Buffer;
  header(name: string): string | undefined;
  /** The body: the bytes after the first empty line. */
  body: Buffer;
}

export function readMbox(file: string): MboxMessage[] {
  const json = execFileSync('python3', [path.join(__dirname, 'read_mbox.py'), file], { encoding: 'utf8', maxBuffer: 1 << 30 });
  return (JSON.parse(json) as Array<{ from_: string; headers: Array<[string, string]>; raw: string }>).map((m) => {
    const raw = Buffer.from(m.raw, 'base64');
    const sep = raw.indexOf('\n\n');
    return {
      from_: m.from_,
      headers: m.headers,
      raw,
      body: sep < 0 ? Buffer.alloc(0) : raw.subarray(sep + 2),
      header: (name: string) => m.headers.find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1],
    };
  });
}
