// Making the names in a directory durable: a file just created, renamed or
// removed there is found (or gone) after a power cut only once its directory is
// fsync'd. One home for it, for the async delivery path and the synchronous
// tools and start-up code.
import fs from 'node:fs';

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.promises.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function fsyncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
