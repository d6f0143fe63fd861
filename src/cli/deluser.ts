// mta-deluser: removes a mail user, and with --remove-mailbox its mailbox.
import fs from 'node:fs';
import path from 'node:path';
import { isValidName } from '../accounts/names';
import { mtadRunsAs, readUsersFile, StoreError, updateUsersFile } from '../accounts/store';
import { describeErrno, loadConfig } from '../config';
import { CliError, EX, runMain, VERSION } from './common';

const USAGE = `usage: mta-deluser [--remove-mailbox] NAME

Removes NAME from the users file: mtad refuses mail for it from then on.
  --remove-mailbox  also delete its mailbox from the spool`;

runMain('mta-deluser', async (argv) => {
  let removeMailbox = false;
  const names: string[] = [];
  for (const a of argv) {
    if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
    if (a === '--version') { process.stdout.write(`mta-deluser (mtad) ${VERSION}\n`); return EX.OK; }
    if (a === '--remove-mailbox' || a === '--remove-home') removeMailbox = true;
    else if (a.startsWith('-')) throw new CliError(`unknown option ${a}\n${USAGE}`, EX.USAGE);
    else names.push(a);
  }
  if (names.length !== 1) throw new CliError(`${names.length ? 'only one' : 'no'} user name given\n${USAGE}`, EX.USAGE);
  const name = names[0];
  const config = loadConfig();
  // deluser exits 2 for a user that does not exist
  if (!isValidName(name) || !readUsersFile(config.usersFile).users.has(name)) {
    throw new CliError(`The user '${name}' does not exist.`, 2);
  }
  process.stdout.write(`Removing user '${name}' ...\n`);
  await updateUsersFile(config.usersFile, (f) => {
    if (!f.users.delete(name)) throw new StoreError(`The user '${name}' does not exist.`, 2);
  }, mtadRunsAs(config));
  if (removeMailbox) {
    const box = path.join(config.spoolDir, name);
    try {
      fs.unlinkSync(box);
      process.stdout.write(`Removing mailbox ${box} ...\n`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new CliError(`cannot remove ${box}: ${describeErrno(err)}`, EX.CANTCREAT);
    }
  }
  return EX.OK;
});
