// The write-ahead record of accepted mail. A queue file is one line of JSON (the
// envelope) followed by the message in mbox form. It is written in tmp/, fsync'd,
// and renamed into active/; the directory is fsync'd before the client hears 250.
// The rename is the commit: active/ holds only whole messages, tmp/ is swept at
// start-up. Delivery progress lives beside it in <id>.state, rewritten atomically.
// There is no failed/: a message given up on is reported to its sender in a
// bounce (delivery/dsn.ts) and removed, as Postfix does; the log keeps its story.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Body, writeAllv } from '../delivery/mailbox';
import { fsyncDir } from '../system/fsync';

export interface Recipient {
  /** The address the client gave, for the log. */
  address: string;
  /** The mailbox (user name) it resolved to. */
  mailbox: string;
  /** The address extension it carried ("+lab3"), kept in Delivered-To. */
  extension?: string;
}

export interface Envelope {
  v: 1;
  id: string;
  sender: string;
  recipients: Recipient[];
  /** ISO time the message was received. */
  received: string;
  client: string;
  /**
   * Set on the delivery status notifications mtad writes (null sender): "sender"
   * for a bounce to a local sender (reported to postmaster if it fails), "delay"
   * for a delay warning and "postmaster" for a report to postmaster (both dropped
   * if they fail: a report is never reported twice).
   */
  notice?: 'sender' | 'delay' | 'postmaster';
}

export interface QueueState {
  done: string[];
  attempts: number;
  lastReason?: string;
  nextAttempt?: string;
  held?: boolean;
  /** Mailboxes given up on (and reported to the sender): mailbox -> "5.1.1 reason". */
  bounced?: Record<string, string>;
  /** A delay warning was sent (or was due, for a sender who gets none). */
  warned?: boolean;
}

export interface QueuedMessage {
  envelope: Envelope;
  body: Body;
}

const ID_RE = /^[0-9A-F]{10}$/;
const MAX_HEADER = 1024 * 1024;

let idPool = Buffer.alloc(0);
let idPoolAt = 0;

export class Queue {
  readonly tmpDir: string;
  readonly activeDir: string;
  /** One record per mailbox append in progress (see delivery/locks.ts, sweepStaleLocks). */
  readonly appendingDir: string;

  constructor(readonly dir: string) {
    this.tmpDir = path.join(dir, 'tmp');
    this.activeDir = path.join(dir, 'active');
    this.appendingDir = path.join(dir, 'appending');
  }

  /** Creates the directories (mode 0700) and removes what a crash left in tmp/. */
  initSync(): void {
    for (const d of [this.dir, this.tmpDir, this.activeDir, this.appendingDir, path.join(this.dir, 'control')]) {
      fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    }
    for (const f of fs.readdirSync(this.tmpDir)) fs.rmSync(path.join(this.tmpDir, f), { force: true });
  }

  /** 40 random bits as 10 hex digits. Drawn from a pool: one randomBytes() call costs as much as a few KiB of its output. */
  static newId(): string {
    if (idPoolAt + 5 > idPool.length) {
      idPool = crypto.randomBytes(4096);
      idPoolAt = 0;
    }
    const id = idPool.toString('hex', idPoolAt, idPoolAt + 5).toUpperCase();
    idPoolAt += 5;
    return id;
  }

  static isId(id: string): boolean {
    return ID_RE.test(id);
  }

  tmpPath(id: string): string { return path.join(this.tmpDir, id); }
  activePath(id: string): string { return path.join(this.activeDir, id); }
  statePath(id: string): string { return path.join(this.activeDir, `${id}.state`); }

  static headerLine(env: Envelope): Buffer {
    return Buffer.from(JSON.stringify(env) + '\n');
  }

  /**
   * Makes a message durable in active/ and returns its body as a range of the
   * queue file. A file body must already be tmp/<id> (header line included).
   */
  async commit(msg: QueuedMessage, state?: QueueState): Promise<Body> {
    const id = msg.envelope.id;
    const tmp = this.tmpPath(id);
    let body = msg.body;
    if (body.kind === 'memory') {
      const header = Queue.headerLine(msg.envelope);
      const fh = await fs.promises.open(tmp, 'wx', 0o600);
      try {
        await writeAllv(fh, [header, ...body.chunks]);
        await fh.sync();
      } finally {
        await fh.close();
      }
      body = { kind: 'file', path: tmp, offset: header.length, length: body.length };
    } else {
      const fh = await fs.promises.open(tmp, 'r+');
      try { await fh.sync(); } finally { await fh.close(); }
    }
    try {
      if (state) await this.saveState(id, state, false);
      await fs.promises.rename(tmp, this.activePath(id));
      await fsyncDir(this.activeDir);
    } catch (err) {
      // A full disk can stop us between the state and the rename: leave no orphan state.
      await fs.promises.rm(path.join(this.tmpDir, `${id}.state`), { force: true }).catch(() => undefined);
      const committed = await fs.promises.access(this.activePath(id)).then(() => true, () => false);
      if (!committed) await fs.promises.rm(this.statePath(id), { force: true }).catch(() => undefined);
      throw err;
    }
    return { ...body, path: this.activePath(id) };
  }

  /** `owner`: whom the file must belong to when root (mta-queue) writes it for the daemon's user. */
  async saveState(id: string, state: QueueState, syncDir = true, owner?: { uid: number; gid: number }): Promise<void> {
    const tmp = path.join(this.tmpDir, `${id}.state`);
    const fh = await fs.promises.open(tmp, 'w', 0o600);
    try {
      if (owner) await fh.chown(owner.uid, owner.gid);
      await fh.writeFile(JSON.stringify(state));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, this.statePath(id));
    if (syncDir) await fsyncDir(this.activeDir);
  }

  async remove(id: string): Promise<void> {
    await fs.promises.rm(this.activePath(id), { force: true });
    await fs.promises.rm(this.statePath(id), { force: true });
  }

  async discardTmp(id: string): Promise<void> {
    await fs.promises.rm(this.tmpPath(id), { force: true });
  }

  listActive(): string[] {
    return fs.readdirSync(this.activeDir).filter((f) => Queue.isId(f)).sort();
  }

  async load(id: string): Promise<{ message: QueuedMessage; state: QueueState }> {
    const file = this.activePath(id);
    const fh = await fs.promises.open(file, 'r');
    let envelope: Envelope;
    let size: number;
    let offset: number;
    try {
      size = (await fh.stat()).size;
      const buf = Buffer.alloc(Math.min(size, MAX_HEADER));
      await fh.read(buf, 0, buf.length, 0);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) throw new Error(`queue file ${id} has no envelope line`);
      envelope = JSON.parse(buf.subarray(0, nl).toString('utf8')) as Envelope;
      offset = nl + 1;
    } finally {
      await fh.close();
    }
    let state: QueueState = { done: [], attempts: 0 };
    try {
      state = JSON.parse(await fs.promises.readFile(this.statePath(id), 'utf8')) as QueueState;
    } catch {
      // no state yet: nothing delivered, never tried
    }
    return { message: { envelope, body: { kind: 'file', path: file, offset, length: size - offset } }, state };
  }
}
