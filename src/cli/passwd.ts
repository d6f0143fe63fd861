// mta-passwd: sets or changes a mail user's password, as passwd(1) does for a
// system one. The running mtad sees it at the next POP3 login: no restart.
import { isValidName } from '../accounts/names';
import { mtadRunsAs, readUsersFile, StoreError, updateUsersFile } from '../accounts/store';
import { hashPassword } from '../accounts/users';
import { loadConfig } from '../config';
import { askNewPassword } from './prompt';
import { CliError, EX, runMain, VERSION } from './common';

const USAGE = `usage: mta-passwd [--lock] NAME

Sets NAME's password, the one POP3 asks for. Asks for it twice (not echoed), or
reads two lines from standard input when it is not a terminal.
  --lock  no password at all: the account only receives mail (like
          mta-adduser --disabled-password); mta-passwd NAME sets one again`;

runMain('mta-passwd', async (argv) => {
  let lock = false;
  const names: string[] = [];
  for (const a of argv) {
    if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
    if (a === '--version') { process.stdout.write(`mta-passwd (mtad) ${VERSION}\n`); return EX.OK; }
    if (a === '--lock' || a === '-l') lock = true;
    else if (a.startsWith('-')) throw new CliError(`unknown option ${a}\n${USAGE}`, EX.USAGE);
    else names.push(a);
  }
  if (names.length !== 1) throw new CliError(`${names.length ? 'only one' : 'no'} user name given\n${USAGE}`, EX.USAGE);
  const name = names[0];
  const config = loadConfig();
  // passwd(1) names a missing user this way, with exit 1
  const missing = `user '${name}' does not exist (add it with mta-adduser)`;
  if (!isValidName(name) || !readUsersFile(config.usersFile).users.has(name)) throw new CliError(missing, EX.FAIL);
  const password = lock ? '!' : hashPassword(await askNewPassword('use --lock for none'));
  await updateUsersFile(config.usersFile, (f) => {
    const u = f.users.get(name);
    if (!u) throw new StoreError(missing, EX.FAIL);
    u.password = password;
  }, mtadRunsAs(config));
  process.stdout.write(lock ? `mta-passwd: password of '${name}' removed: the account only receives mail\n` : 'mta-passwd: password updated successfully\n');
  return EX.OK;
});
