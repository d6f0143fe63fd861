// fcntl record locks, the kind mutt, mailx, Dovecot and Python take on a mailbox.
// fs-native-extensions ships its addon prebuilt inside the npm package, so
// `npm install` needs no compiler and no download of Node's headers. On Linux it
// takes open-file-description locks (F_OFD_SETLK): they conflict with the
// readers' classic locks both ways, and, unlike those, are not dropped when some
// other descriptor of the same file in this process is closed.
// The call is one non-blocking fcntl(2), no I/O: it may stay synchronous.
import * as fsx from 'fs-native-extensions';

export interface LockRange {
  offset?: number;
  /** 0 means to the end of the file and beyond. */
  length?: number;
  shared?: boolean;
}

/** Takes the lock if nobody else holds a conflicting one; false if someone does. */
export function tryLock(fd: number, { offset = 0, length = 0, shared = false }: LockRange = {}): boolean {
  return fsx.tryLock(fd, offset, length, { shared });
}

export function unlock(fd: number, offset = 0, length = 0): void {
  fsx.unlock(fd, offset, length);
}
