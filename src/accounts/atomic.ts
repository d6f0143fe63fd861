// Atomic rewrite of a small file: temp file beside it, fsync, rename, fsync the
// directory. Owner and mode of the file being replaced are kept (or those the
// caller gives), so a root-run CLI does not take the file away from the user
// mtad runs as.
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDirSync } from '../system/fsync';

export interface FileAccess {
  mode: number;
  /** Owner and group, set only when running as root. */
  uid?: number;
  gid?: number;
}

export function writeFileAtomic(file: string, data: string | Buffer, access?: FileAccess): void {
  const dir = path.dirname(file);
  let st: fs.Stats | null = null;
  try { st = fs.statSync(file); } catch { st = null; }
  const want: FileAccess = access ?? (st ? { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid } : { mode: 0o640 });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  // Created with no access for anyone: the contents are written before the chmod opens it to mtad.
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW, 0o600);
  try {
    fs.writeFileSync(fd, data);
    if (process.getuid?.() === 0 && want.uid !== undefined) fs.fchownSync(fd, want.uid, want.gid ?? -1);
    fs.fchmodSync(fd, want.mode);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  try {
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fsyncDirSync(dir);
}
