// mta-users: lists the mail users, with their mailbox sizes.
import fs from 'node:fs';
import path from 'node:path';
import { readUsersFile } from '../accounts/store';
import { loadConfig } from '../config';
import { CliError, EX, runMain, VERSION } from './common';

runMain('mta-users', async (argv) => {
  for (const a of argv) {
    if (a === '--help' || a === '-h') { process.stdout.write('usage: mta-users\n\nLists the users mtad accepts mail for, with their mailbox sizes and MTAD_MAILBOX_SIZE_LIMIT.\n'); return EX.OK; }
    if (a === '--version') { process.stdout.write(`mta-users (mtad) ${VERSION}\n`); return EX.OK; }
    throw new CliError(`unknown argument "${a}"`, EX.USAGE);
  }
  const config = loadConfig();
  const f = readUsersFile(config.usersFile);
  const limit = config.mailboxSizeLimit;
  const rows = [...f.users.values()].map((u) => {
    let size = '-';
    let full = false;
    try {
      const bytes = fs.statSync(path.join(config.spoolDir, u.name)).size;
      size = String(bytes);
      full = limit > 0 && bytes >= limit;
    } catch { /* no mailbox yet */ }
    // "(full)": mtad answers 452 4.2.2 at RCPT until the user makes room.
    return [u.name, u.password === '!' || u.password === '' ? 'no' : 'yes', size, limit ? `${limit}${full ? ' (full)' : ''}` : 'none', u.gecos];
  });
  const header = ['USER', 'PASSWORD', 'MAILBOX-BYTES', 'LIMIT', 'NAME'];
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  for (const r of all) process.stdout.write(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd() + '\n');
  return EX.OK;
});
