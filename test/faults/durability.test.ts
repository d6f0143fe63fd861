// "250 means durable" (invariant 2; issue 9 item 3, issue 10 item 6), checked
// where a kill -9 cannot see it: a kill keeps the page cache, so a missing fsync
// loses nothing there. A power cut keeps only what was synced, in the order it
// was synced. A write through a descriptor opened O_DSYNC or O_SYNC is its own
// sync (on disk when it returns); any other needs an fsync or fdatasync of its
// file after it. So mtad runs under strace, and for every acknowledged message the
// trace must show, before the 250 is written to the client's socket:
//   - delivered at once: every write of the message's bytes to each mailbox
//     synced; before those bytes, the append record (queue/appending/<user>)
//     synced after it was written, and appending/ fsync'd after the record was
//     created; a mailbox created for it, the spool directory fsync'd; and,
//     before the mailbox's dotlock is released, the record's last write (back
//     to "no append") synced, so that a reader's later change cannot pass
//     for a torn append after a power cut;
//   - queued (the mailbox was locked): the queue file fsync'd after its last
//     write, then renamed from tmp/ into active/, then active/ fsync'd.
// Remove any one of those syncs (or the O_DSYNC of an open) from src/ and this test fails.
// The same trace holds the log: a reply is never ahead of its log line (the
// 250 after the status=sent or "queued for retry" line, a pipelined 250 too,
// each greeting after a "connect from" line, a POP3 login's +OK after its
// Login line), so that a kill -9 right after a reply cannot take the line with it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendRecordPath, makeInstance, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { Pop3Client } from '../helpers/pop3';
import { skipping } from '../helpers/skip';
import { SmtpClient } from '../helpers/smtp';
import { sendToken, tokensByPython, until } from './readers';

const TRACED = ['rmdir', 'openat', 'write', 'writev', 'pwrite64', 'pwritev', 'pwritev2', 'fsync', 'fdatasync', 'rename', 'renameat', 'renameat2', 'sendto', 'sendmsg'];

function straceUnusable(): string | null {
  const r = spawnSync('strace', ['-f', '-qq', '-o', '/dev/null', 'true'], { encoding: 'utf8' });
  if (r.error) return `strace is not installed (${(r.error as NodeJS.ErrnoException).code}; Debian package strace)`;
  if (r.status !== 0) return `strace cannot trace here: ${r.stderr.trim()}`;
  return null;
}
const unusable = straceUnusable();

/** One system call of the trace: where it started and ended (line numbers), its fd's path (strace -y) and text. */
interface Call {
  name: string;
  start: number;
  end: number;
  fdPath: string;
  args: string;
  ret: string;
}

/** Parses `strace -f -y` output; a call split by another thread's ("<unfinished ...>", "<... resumed>") ends where it resumes. */
function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const open = new Map<string, { name: string; start: number; args: string }>();
  text.split('\n').forEach((line, i) => {
    let m = /^(\d+) +([a-z0-9_]+)\((.*) <unfinished \.\.\.>$/.exec(line);
    if (m) { open.set(m[1], { name: m[2], start: i, args: m[3] }); return; }
    m = /^(\d+) +<\.\.\. ([a-z0-9_]+) resumed>(.*)\) += (.*)$/.exec(line);
    if (m) {
      const o = open.get(m[1]);
      open.delete(m[1]);
      if (o && o.name === m[2]) calls.push(call(o.name, o.start, i, o.args + m[3], m[4]));
      return;
    }
    m = /^(\d+) +([a-z0-9_]+)\((.*)\) += (.*)$/.exec(line);
    if (m) calls.push(call(m[2], i, i, m[3], m[4]));
  });
  return calls;
}

function call(name: string, start: number, end: number, args: string, ret: string): Call {
  const fd = /^-?\d+<([^>]*)>/.exec(args);
  return { name, start, end, args, ret, fdPath: fd ? fd[1] : '' };
}

const WRITES = new Set(['write', 'writev', 'pwrite64', 'pwritev', 'pwritev2']);

/** The write of a log line matching `re` to mtad's standard output (fd 1: a socketpair from the test's spawn), ended before `before`. */
function logWrite(calls: Call[], re: RegExp, before: number): Call | undefined {
  return calls.find((c) => WRITES.has(c.name) && c.args.startsWith('1<') && re.test(c.args) && c.end < before);
}
/** A write to a client's socket (a reply). */
const toClient = (c: Call): boolean => (WRITES.has(c.name) || c.name === 'sendto' || c.name === 'sendmsg') && /^(TCP|socket:)/.test(c.fdPath);
const SYNCS = new Set(['fsync', 'fdatasync']);
const ok = (c: Call): boolean => !c.ret.startsWith('-1');

/**
 * Which writes of the trace went through a descriptor opened O_DSYNC or O_SYNC,
 * and so were on disk when they returned: a write's descriptor is the one the
 * last openat before it returned under that number.
 */
function syncedWrites(calls: Call[]): (w: Call) => boolean {
  // parseTrace lists calls in the order they ended: so is each descriptor's list of openats.
  const opens = new Map<string, Call[]>();
  for (const c of calls) {
    const fd = c.name === 'openat' ? /^(\d+)</.exec(c.ret)?.[1] : undefined;
    if (!fd) continue;
    const list = opens.get(fd);
    if (list) list.push(c); else opens.set(fd, [c]);
  }
  return (w) => {
    const fd = /^(\d+)</.exec(w.args)?.[1];
    if (!fd || !WRITES.has(w.name) || !ok(w)) return false;
    const opened = (opens.get(fd) ?? []).filter((c) => c.end < w.start).at(-1);
    return !!opened && /\bO_D?SYNC\b/.test(opened.args);
  };
}

/** What must precede each acknowledgement: a list of what is missing (empty when all is in order). */
function checkOrder(calls: Call[], spool: string, queue: string, sent: Sent[]): string[] {
  const missing: string[] = [];
  const need = (cond: unknown, what: string): void => { if (!cond) missing.push(what); };
  const lastBefore = (at: number, f: (c: Call) => boolean): Call | undefined => calls.filter((c) => c.end < at && f(c)).at(-1);
  const syncOf = (p: (path: string) => boolean, after: number, before: number): Call | undefined =>
    calls.find((c) => SYNCS.has(c.name) && ok(c) && p(c.fdPath) && c.start > after && c.end < before);
  const synced = syncedWrites(calls);
  /** Where the write `w` of a file matching `p` is on disk, if before `before`: its own end (O_DSYNC), or the end of a sync of that file after it. */
  const durableAt = (w: Call, p: (path: string) => boolean, before: number): number | undefined =>
    w.end >= before ? undefined : synced(w) ? w.end : syncOf(p, w.end, before)?.end;
  const durable = (w: Call, p: (path: string) => boolean, before: number): boolean => durableAt(w, p, before) !== undefined;
  for (const s of sent) {
    const ack = calls.find((c) => toClient(c) && c.args.includes(`queued as ${s.id}`));
    need(ack, `${s.id}: the 250 written to the socket`);
    if (!ack) continue;
    const fate = s.queued ? `${s.id}: queued for retry` : `${s.id}: to=<[^"]*status=sent`;
    need(logWrite(calls, new RegExp(fate), ack.start), `${s.id}: its "${s.queued ? 'queued for retry' : 'status=sent'}" log line written before the 250`);
    const rename = calls.find((c) => c.name.startsWith('rename') && c.args.includes(`/tmp/${s.id}"`) && c.args.includes(`/active/${s.id}"`) && c.end < ack.start);
    if (s.queued) {
      need(rename, `${s.id}: the queue file renamed from tmp/ into active/ before the 250`);
      if (!rename) continue;
      const isFile = (p: string): boolean => p === path.join(queue, 'tmp', s.id) || p === path.join(queue, 'active', s.id);
      const w = lastBefore(rename.start, (c) => WRITES.has(c.name) && isFile(c.fdPath));
      need(w, `${s.id}: a write of the queue file`);
      if (w) need(durable(w, isFile, rename.start), `${s.id}: the queue file fsync'd after its last write and before its rename`);
      need(syncOf((p) => p === path.join(queue, 'active'), rename.end, ack.start), `${s.id}: active/ fsync'd after the rename and before the 250`);
      continue;
    }
    need(!rename, `${s.id}: delivered at once, not queued`);
    for (const user of s.users) {
      const box = path.join(spool, user);
      const record = appendRecordPath(queue, user);
      const isBox = (p: string): boolean => p === box;
      const isRecord = (p: string): boolean => p === record;
      const first = calls.find((c) => WRITES.has(c.name) && c.fdPath === box && c.args.includes(`X-Token: ${s.token}`) && c.end < ack.start);
      need(first, `${s.id}: its bytes written to ${user}'s mailbox before the 250`);
      if (!first) continue;
      // Every write of the message's bytes (a spilled body is copied in several) on disk before the 250:
      // the batch's writes end where the next batch's record is written.
      const next = calls.find((c) => WRITES.has(c.name) && c.fdPath === record && c.start > first.end);
      const last = lastBefore(Math.min(ack.start, next?.start ?? Infinity), (c) => WRITES.has(c.name) && c.fdPath === box) ?? first;
      const onDisk = durableAt(last, isBox, ack.start);
      need(ok(first) && durable(first, isBox, ack.start) && onDisk !== undefined, `${s.id}: ${user}'s mailbox synced after the message's bytes and before the 250`);
      const unlock = calls.find((c) => c.name === 'rmdir' && c.args.startsWith(`"${box}.lock"`) && c.start > first.end);
      need(unlock, `${s.id}: ${user}'s dotlock released after the append`);
      const idle = unlock && lastBefore(unlock.start, (c) => WRITES.has(c.name) && c.fdPath === record);
      need(idle && idle.start > (onDisk ?? Infinity), `${s.id}: the append record of ${user} rewritten after the append and before the dotlock is released`);
      if (unlock && idle) need(durable(idle, isRecord, unlock.start), `${s.id}: the append record of ${user} synced after its last rewrite and before the dotlock is released`);
      const rec = lastBefore(first.start, (c) => WRITES.has(c.name) && c.fdPath === record);
      need(rec, `${s.id}: the append record of ${user} written before the message's bytes`);
      if (rec) need(durable(rec, isRecord, first.start), `${s.id}: the append record of ${user} synced before the message's bytes`);
      const created = lastBefore(first.start, (c) => c.name === 'openat' && c.args.includes(`"${record}"`) && c.args.includes('O_CREAT') && ok(c));
      need(created, `${s.id}: the append record of ${user} created before the message's bytes`);
      if (created) need(syncOf((p) => p === path.join(queue, 'appending'), created.end, first.start), `${s.id}: appending/ fsync'd after the record of ${user} was created and before the message's bytes`);
      const made = lastBefore(first.start, (c) => c.name === 'openat' && c.args.includes(`"${box}"`) && c.args.includes('O_EXCL') && ok(c));
      if (s.creates?.includes(user)) need(made, `${s.id}: ${user}'s mailbox created for it`);
      if (made) need(syncOf((p) => p === spool, made.end, ack.start), `${s.id}: the spool directory fsync'd after ${user}'s mailbox was created and before the 250`);
    }
  }
  return missing;
}

interface Sent {
  id: string;
  token: string;
  users: string[];
  queued: boolean;
  /** Mailboxes that this message's delivery creates. */
  creates?: string[];
}

describe.skipIf(skipping(unusable !== null, 'durability order under strace', unusable ?? ''))('every sync a 250 rests on comes before it (mtad under strace)', () => {
  let m: Mtad;
  let dir: string;
  let trace: string;
  const sent: Sent[] = [];
  beforeAll(async () => {
    dir = makeInstance({ users: ['alice', 'bob', 'carol', 'dave'], passwords: { alice: 'alice-pop3' } });
    trace = path.join(dir, 'strace.out');
    m = await startMtad({
      dir,
      env: { MTAD_LOCK_TIMEOUT: '0.5', MTAD_RETRY_MIN_DELAY: '0.3', MTAD_RETRY_MAX_DELAY: '0.5' },
      wrapper: ['strace', '-f', '-qq', '-y', '-s', '4096', '-e', `trace=${TRACED.join(',')}`, '-e', 'signal=none', '-o', trace],
    });
  });
  afterAll(() => { removeInstance(dir); });

  async function send(user: string, token: string, size = 0, extra: Partial<Sent> = {}): Promise<void> {
    const id = await sendToken(m.port, user, token, size);
    sent.push({ id, token, users: [user], queued: false, ...extra });
  }

  it('delivered at once, queued, new mailboxes, batches and spilled bodies alike; every reply after its log line', async () => {
    // carol's mailbox does not exist yet: this delivery creates it.
    await send('carol', 'creates-carol', 0, { creates: ['carol'] });
    // Several at once to one mailbox: appended in batches under one hold.
    await Promise.all([1, 2, 3, 4, 5, 6].map((n) => send('alice', `batch-${n}`)));
    // Past 256 KiB the body is spilled to the queue's tmp/ while it arrives, and copied from there.
    await send('bob', 'spilled-direct', 400_000);
    // PIPELINING (RFC 2920): the transaction and QUIT in one write, beside four more sessions.
    // The 250 waits in its socket for its log line (src/log.ts), and the 221 after it.
    const pipelined = async (n: number): Promise<void> => {
      const p = await SmtpClient.connect(m.port);
      try {
        await p.cmd('EHLO pipe.client.test');
        p.write(`MAIL FROM:<pipe@client.test>\r\nRCPT TO:<bob@lab.test>\r\nDATA\r\nSubject: p\r\nX-Token: pipelined-${n}\r\n\r\nEND\r\n.\r\nQUIT\r\n`);
        const replies = [];
        for (let i = 0; i < 5; i++) replies.push(await p.read());
        expect(replies.map((r) => r.code), replies.map((r) => r.raw).join('')).toEqual([250, 250, 354, 250, 221]);
        sent.push({ id: /queued as (\w+)/.exec(replies[3].raw)![1], token: `pipelined-${n}`, users: ['bob'], queued: false });
      } finally {
        p.close();
      }
    };
    await Promise.all([1, 2, 3, 4, 5].map(pipelined));
    // A reader holds dave's mailbox: the message goes to the queue, small and spilled.
    const lock = `${m.mailbox('dave')}.lock`;
    fs.writeFileSync(lock, '');
    await send('dave', 'queued-small', 0, { queued: true });
    await send('dave', 'queued-spilled', 400_000, { queued: true });
    fs.rmSync(lock);
    await until(() => tokensByPython(m.mailbox('dave')).length === 2, 30000, 'the queued messages to be delivered');
    // A POP3 login: its +OK comes after its Login line too.
    const pop = await Pop3Client.connect(m.pop3Port!);
    const loggedIn = await pop.login('alice', 'alice-pop3');
    expect(loggedIn).toMatch(/^\+OK Logged in/);
    await pop.quit();

    // mtad (strace's child) stops; strace ends with it, its trace complete.
    const child = Number(fs.readFileSync(`/proc/${m.proc.pid}/task/${m.proc.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
    process.kill(child, 'SIGTERM');
    if (m.proc.exitCode === null) await new Promise((r) => m.proc.once('exit', r));
    expect(m.output()).toMatch(/stopped/);

    const calls = parseTrace(fs.readFileSync(trace, 'utf8'));
    expect(calls.filter((c) => SYNCS.has(c.name)).length, 'the trace holds syncs').toBeGreaterThan(0);
    expect(calls.filter(syncedWrites(calls)).length, 'the trace holds O_DSYNC writes').toBeGreaterThan(0);
    expect(sent).toHaveLength(15);
    expect(checkOrder(calls, m.spool, m.queue, sent)).toEqual([]);
    // Each greeting after its "connect from" line: by count, since the lines name no port.
    const greetings = calls.filter((c) => toClient(c) && c.args.includes('"220 lab.test ESMTP'));
    expect(greetings.length, 'the greetings in the trace').toBeGreaterThanOrEqual(15);
    const connectLines = calls.filter((c) => WRITES.has(c.name) && c.args.startsWith('1<'))
      .map((c) => ({ end: c.end, n: c.args.match(/: connect from /g)?.length ?? 0 }));
    const loggedBefore = (at: number): number => connectLines.reduce((n, c) => n + (c.end < at ? c.n : 0), 0);
    const early = greetings.filter((g, k) => loggedBefore(g.start) < k + 1);
    expect(early.map((g) => `greeting at trace line ${g.start} before its connect line`)).toEqual([]);
    const okLogin = calls.find((c) => toClient(c) && c.args.includes('+OK Logged in'));
    expect(okLogin, 'the POP3 login\'s +OK written to the socket').toBeDefined();
    expect(logWrite(calls, /pop3-login: Login: user=<alice>/, okLogin!.start), 'the Login line written before the +OK').toBeDefined();
  });
});
