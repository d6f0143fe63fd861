// How a mailbox is created in a spool: a spool shared with the mail group
// (setgid, like Debian's /var/mail, root:mail 2775) gets 0660 mailboxes that the
// group can write; a private one (a lab checkout's ./spool) gets 0600.
import type fs from 'node:fs';

export function isSharedSpool(spool: fs.Stats): boolean {
  return (spool.mode & 0o2000 /* S_ISGID */) !== 0;
}

export function mailboxMode(spool: fs.Stats): number {
  return isSharedSpool(spool) ? 0o660 : 0o600;
}
