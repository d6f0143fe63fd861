// Reads the DATA stream into an mbox-form body. Small messages stay in memory;
// past SPILL_AT bytes the body goes to tmp/<id> in the queue as it arrives, so a
// 50 MB attachment costs a few chunks of memory, never the whole message. Past the
// size limit nothing more is kept: the rest is only read and counted.
import fs from 'node:fs';
import type { Readable } from 'node:stream';
import type { FileHandle } from 'node:fs/promises';
import { Body, writeAllv } from '../delivery/mailbox';
import { MboxEncoder } from '../delivery/mbox';
import { asciiBytes } from '../text';
import { Envelope, Queue } from './queue';

export const SPILL_AT = 256 * 1024;

export interface Received {
  body: Body;
  /** SMTP bytes read (after dot-unstuffing), as the size limit counts them. */
  size: number;
  tooBig: boolean;
}

export async function receiveBody(
  stream: Readable & { sizeExceeded?: boolean },
  queue: Queue,
  envelope: Envelope,
  receivedHeader: string,
  maxSize: number,
  /** Sees the body as it arrives (the teaching trace). */
  tap?: { push(chunk: Buffer): void; end(): void },
): Promise<Received> {
  const enc = new MboxEncoder();
  let chunks: Buffer[] = [...enc.push(asciiBytes(receivedHeader))];
  let memBytes = chunks.reduce((n, c) => n + c.length, 0);
  let fh: FileHandle | null = null;
  let offset = 0;
  let size = 0;
  let tooBig = false;
  const tmp = queue.tmpPath(envelope.id);
  // A write that fails (a full disk) must not end the read: the client is still
  // sending, and its reply belongs after the final dot. Keep reading, keep nothing.
  let failed: unknown = null;
  const dropSpill = async (): Promise<void> => {
    if (fh) await fh.close().catch(() => undefined);
    fh = null;
    await queue.discardTmp(envelope.id).catch(() => undefined);
  };
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      size += chunk.length;
      tap?.push(chunk);
      if (tooBig || size > maxSize || stream.sizeExceeded) { tooBig = true; continue; }
      if (failed) continue;
      const out = enc.push(chunk);
      try {
        if (fh) {
          await writeAllv(fh, out);
          continue;
        }
        chunks.push(...out);
        for (const b of out) memBytes += b.length;
        if (memBytes > SPILL_AT) {
          fh = await fs.promises.open(tmp, 'wx', 0o600);
          const header = Queue.headerLine(envelope);
          offset = header.length;
          await writeAllv(fh, [header, ...chunks]);
          chunks = [];
        }
      } catch (err) {
        failed = err;
        chunks = [];
        await dropSpill();
      }
    }
    tap?.end();
    if (tooBig || stream.sizeExceeded) {
      tooBig = true;
      return { body: { kind: 'memory', chunks: [], length: 0 }, size, tooBig };
    }
    if (failed) throw failed;
    const tail = enc.end();
    if (fh) {
      await writeAllv(fh, tail);
      return { body: { kind: 'file', path: tmp, offset, length: enc.size }, size, tooBig };
    }
    chunks.push(...tail);
    return { body: { kind: 'memory', chunks, length: enc.size }, size, tooBig };
  } catch (err) {
    await dropSpill();
    throw err;
  } finally {
    if (fh) await fh.close();
    if (tooBig) await queue.discardTmp(envelope.id).catch(() => undefined);
  }
}
