// What one sync costs on this disk, for the choices in src/delivery/mailbox.ts:
// the append record is rewritten in place and fdatasync'd (no size or name to
// commit) rather than created for each mailbox hold. Prints p50/p90 of N rounds.
//   node test/bench/syncs.mjs [dir]   (default: a temp dir under /tmp; use the spool's file system)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const d = fs.mkdtempSync(path.join(process.argv[2] ?? os.tmpdir(), 'mtad-syncs-'));
const N = 300;
const rec = Buffer.alloc(84, 0x30);
const kib = Buffer.alloc(1024, 0x61);
const time = (f) => {
  const ts = [];
  for (let i = 0; i < N; i++) {
    const a = process.hrtime.bigint();
    f(i);
    ts.push(Number(process.hrtime.bigint() - a) / 1e6);
  }
  ts.sort((x, y) => x - y);
  return `p50 ${ts[N >> 1].toFixed(3)} ms, p90 ${ts[Math.floor(N * 0.9)].toFixed(3)} ms`;
};
try {
  const box = fs.openSync(path.join(d, 'box'), 'a');
  const r = fs.openSync(path.join(d, 'rec'), 'w');
  fs.writeSync(r, rec, 0, rec.length, 0);
  fs.fdatasyncSync(r);
  const dir = fs.openSync(d, 'r');
  console.log(`${N} rounds each in ${d}`);
  console.log('mailbox: append 1 KiB + fdatasync               ', time(() => { fs.writeSync(box, kib); fs.fdatasyncSync(box); }));
  console.log('record: rewrite 84 B in place + fdatasync       ', time(() => { fs.writeSync(r, rec, 0, rec.length, 0); fs.fdatasyncSync(r); }));
  console.log('record: rewrite 84 B in place + fsync           ', time(() => { fs.writeSync(r, rec, 0, rec.length, 0); fs.fsyncSync(r); }));
  // A record made afresh for each append, with or without making its name durable.
  const created = (prefix, syncDir) => (i) => {
    const f = path.join(d, `${prefix}${i}`);
    const fd = fs.openSync(f, 'w');
    fs.writeSync(fd, rec, 0, rec.length, 0);
    fs.fdatasyncSync(fd);
    if (syncDir) fs.fsyncSync(dir);
    fs.closeSync(fd);
    fs.unlinkSync(f);
  };
  console.log('record: create, write, fdatasync                ', time(created('a', false)));
  console.log('record: create, write, fdatasync, fsync the dir ', time(created('b', true)));
} finally {
  fs.rmSync(d, { recursive: true, force: true });
}
