// Atomic rewrite of a small file: temp file beside it, fsync, rename, fsync the
// directory. Owner and mode of the file being replaced are kept, so a root-run
// CLI does not take the file away from the user mtad runs as.
import fs from 'node:fs';
import path from 'node:path';

export function writeFileAtomic(file: string, data: string | Buffer, newMode = 0o640): void {
  const dir = path.dirname(file);
  let st: fs.Stats | null = null;
  try { st = fs.statSync(file); } catch { st = null; }
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW, st ? st.mode & 0o7777 : newMode);
  try {
    fs.writeFileSync(fd, data);
    if (st) {
      fs.fchmodSync(fd, st.mode & 0o7777);
      if (process.getuid?.() === 0) fs.fchownSync(fd, st.uid, st.gid);
    }
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
  fsyncDir(dir);
}

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
}
