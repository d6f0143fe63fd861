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

export interface Dsn {
  content_type: string;
  report_type: string;
  /** Top-level headers, by name as written. */
  headers: Record<string, string>;
  /** Content types of the MIME parts, in order. */
  parts: string[];
  /** The human-readable part. */
  text: string;
  /** The message/delivery-status blocks: per-message fields first, then one per recipient. */
  status: Array<Record<string, string>>;
  original_headers: string | null;
  /** Whatever Python's email package found wrong in the MIME structure. */
  defects: string[];
}

/** The delivery status notifications in a mailbox, as Python's email package parses them. */
export function readDsns(file: string): Dsn[] {
  return JSON.parse(execFileSync('python3', [path.join(__dirname, 'read_dsn.py'), file], { encoding: 'utf8', maxBuffer: 1 << 30 })) as Dsn[];
}
