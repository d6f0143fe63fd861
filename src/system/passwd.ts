// Look-ups in /etc/passwd and /etc/group (Node has no getpwnam). Debian lab
// machines keep their accounts there; NSS sources such as LDAP are not consulted.
import fs from 'node:fs';

export interface SystemUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
  /** The GECOS field: the full name, then comma-separated extras. */
  gecos?: string;
}

function readTable(file: string): string[][] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
  } catch {
    return [];
  }
}

export function userByName(name: string, file = '/etc/passwd'): SystemUser | null {
  const row = readTable(file).find((r) => r[0] === name);
  return row ? { name: row[0], uid: Number(row[2]), gid: Number(row[3]), home: row[5] ?? '' } : null;
}

export function userById(uid: number, file = '/etc/passwd'): SystemUser | null {
  const row = readTable(file).find((r) => Number(r[2]) === uid);
  return row ? { name: row[0], uid: Number(row[2]), gid: Number(row[3]), home: row[5] ?? '', gecos: row[4] ?? '' } : null;
}

export function groupId(name: string, file = '/etc/group'): number | null {
  const row = readTable(file).find((r) => r[0] === name);
  return row ? Number(row[2]) : null;
}
