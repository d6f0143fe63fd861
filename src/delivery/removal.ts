// Removing messages from an mbox in place, crash-safe. The mailbox keeps its
// inode, owner and mode (mtad, running as an ordinary user, could not give a
// new file to its owner), and a kill -9 at any instant leaves either the old
// mailbox or the new one:
//   1. everything that stays after the first removed message is written to a
//      tail file in the queue and fsync'd;
//   2. a record "dev ino from oldSize newSize" is fsync'd next to it: from here
//      on, the removal is decided;
//   3. the tail is copied over the mailbox from `from`, which is cut to newSize
//      and fsync'd;
//   4. the record and the tail are removed.
// A record found at start-up means a kill between 2 and 4: redoRemovals does
// step 3 again (it writes the same bytes, so twice is as good as once).
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDirSync } from '../system/fsync';
import { waitForFcntlSync } from './locks';

const COPY_CHUNK = 1024 * 1024;

export interface RemovalPlan {
  /** The mailbox's name in the spool (also the record's name). */
  name: string;
  /** The mailbox, open for reading and writing, held under its locks by the caller. */
  fh: FileHandle;
  st: fs.Stats;
  /** The first byte that changes: the start of the first message removed. */
  from: number;
  /** The byte ranges [start, end) from `from` on that stay, in order (messages that arrived since included). */
  keep: Array<[number, number]>;
  /** The mailbox's size now. */
  size: number;
}

/** Carries out the plan; returns the mailbox's new size. On an error before step 2 the mailbox is untouched. */
export async function removeInPlace(plan: RemovalPlan, journalDir: string): Promise<number> {
  fs.mkdirSync(journalDir, { recursive: true, mode: 0o700 });
  const record = path.join(journalDir, plan.name);
  const tailFile = `${record}.tail`;
  let tailLength = 0;
  const tail = await fs.promises.open(tailFile, 'w', 0o600);
  try {
    for (const [s, e] of plan.keep) {
      await copyRange(plan.fh, s, e - s, tail, tailLength);
      tailLength += e - s;
    }
    await tail.sync();
  } finally {
    await tail.close();
  }
  const newSize = plan.from + tailLength;
  const text = `${plan.st.dev} ${plan.st.ino} ${plan.from} ${plan.size} ${newSize}\n`;
  const tmp = `${record}.tmp`;
  const rec = await fs.promises.open(tmp, 'w', 0o600);
  try {
    await rec.writeFile(text);
    await rec.sync();
  } finally {
    await rec.close();
  }
  await fs.promises.rename(tmp, record);
  fsyncDirSync(journalDir);

  const src = await fs.promises.open(tailFile, 'r');
  try {
    await copyRange(src, 0, tailLength, plan.fh, plan.from);
  } finally {
    await src.close();
  }
  await plan.fh.truncate(newSize);
  await plan.fh.sync();

  fs.rmSync(record);
  fsyncDirSync(journalDir);
  fs.rmSync(tailFile, { force: true });
  return newSize;
}

export interface RedoResult {
  mailbox: string;
  /** Bytes the mailbox lost (the removed messages), or why the record was left alone. */
  done?: number;
  why?: string;
}

const MAILBOX_NAME = /^[a-z_][a-z0-9_-]*$/;

/**
 * At start-up, before anything is served: finishes every removal a kill
 * interrupted after its record was written. A record whose mailbox is no longer
 * the one it names, or whose size is neither the old nor the new one, is left
 * (with why) rather than guessed at; tails without a record are thrown away.
 */
export function redoRemovals(spoolDir: string, journalDir: string): RedoResult[] {
  let names: string[];
  try {
    names = fs.readdirSync(journalDir);
  } catch {
    return [];
  }
  const results: RedoResult[] = [];
  for (const name of names.filter((n) => MAILBOX_NAME.test(n))) {
    const record = path.join(journalDir, name);
    const r = redoOne(path.join(spoolDir, name), record);
    results.push({ mailbox: name, ...r });
    if (r.why) {
      // Kept for the admin, under names the next start passes over.
      const kept = `${record}.left-${Date.now()}`;
      fs.renameSync(record, kept);
      if (fs.existsSync(`${record}.tail`)) fs.renameSync(`${record}.tail`, `${kept}.tail`);
    } else {
      fs.rmSync(record);
    }
  }
  fsyncDirSync(journalDir);
  // A tail or record without a decided removal: the kill came before step 2, the mailbox is untouched.
  for (const n of fs.readdirSync(journalDir)) {
    if (/^[a-z_][a-z0-9_-]*\.(tail|tmp)$/.test(n)) fs.rmSync(path.join(journalDir, n), { force: true });
  }
  return results;
}

function redoOne(mailbox: string, record: string): { done?: number; why?: string } {
  const m = /^(\d+) (\d+) (\d+) (\d+) (\d+)\n$/.exec(fs.readFileSync(record, 'utf8'));
  if (!m) return { why: 'the removal record is unreadable' };
  const [dev, ino, from, oldSize, newSize] = m.slice(1).map(Number);
  const tailFile = `${record}.tail`;
  let tail: number;
  try {
    tail = fs.openSync(tailFile, 'r');
  } catch (err) {
    return { why: `its tail file is missing (${(err as NodeJS.ErrnoException).code})` };
  }
  try {
    if (fs.fstatSync(tail).size !== newSize - from) return { why: 'its tail file has the wrong size' };
    let fd: number;
    try {
      fd = fs.openSync(mailbox, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    } catch (err) {
      return { why: `cannot open it: ${(err as NodeJS.ErrnoException).code}` };
    }
    try {
      if (!waitForFcntlSync(fd, 2000)) return { why: 'another program holds its fcntl lock' };
      const st = fs.fstatSync(fd);
      if (!st.isFile() || st.dev !== dev || st.ino !== ino) return { why: 'it was replaced since' };
      if (st.size !== oldSize && st.size !== newSize) return { why: `its size ${st.size} is neither ${oldSize} nor ${newSize}: written by someone else since` };
      const buf = Buffer.allocUnsafe(COPY_CHUNK);
      for (let pos = 0; pos < newSize - from;) {
        const n = fs.readSync(tail, buf, 0, Math.min(buf.length, newSize - from - pos), pos);
        if (n === 0) return { why: 'its tail file is short' };
        for (let w = 0; w < n;) w += fs.writeSync(fd, buf, w, n - w, from + pos + w);
        pos += n;
      }
      fs.ftruncateSync(fd, newSize);
      fs.fsyncSync(fd);
      return { done: oldSize - newSize };
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    fs.closeSync(tail);
  }
}

async function copyRange(src: FileHandle, start: number, length: number, dst: FileHandle, at: number): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, Math.max(1, length)));
  for (let pos = 0; pos < length;) {
    const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, length - pos), start + pos);
    if (bytesRead === 0) throw new Error(`file ended at ${start + pos}, ${start + length} expected`);
    for (let w = 0; w < bytesRead;) {
      const { bytesWritten } = await dst.write(buf, w, bytesRead - w, at + pos + w);
      w += bytesWritten;
    }
    pos += bytesRead;
  }
}
