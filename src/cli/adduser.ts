// mta-adduser: adds a mail user, like adduser(8) adds a system one.
import { createMailbox, mtadRunsAs, readUsersFile, StoreError, updateUsersFile } from '../accounts/store';
import { isValidName, NAME_MAX } from '../accounts/names';
import { hashPassword } from '../accounts/users';
import { loadConfig } from '../config';
import { ask, askNewPassword } from './prompt';
import { CliError, EX, runMain, VERSION } from './common';

const USAGE = `usage: mta-adduser [--disabled-password] [--gecos "Full Name"] NAME

Adds NAME to the users file, so that mtad accepts mail for it, and creates its
empty mailbox in the spool. Asks for the password twice (not echoed), or reads
two lines from standard input when it is not a terminal.
  --disabled-password  no password (the account only receives mail)
  --gecos TEXT         the user's full name; asked for when omitted on a terminal`;

runMain('mta-adduser', async (argv) => {
  let disabled = false;
  let gecos: string | undefined;
  const names: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
    if (a === '--version') { process.stdout.write(`mta-adduser (mtad) ${VERSION}\n`); return EX.OK; }
    if (a === '--disabled-password' || a === '--disabled-login') disabled = true;
    else if (a === '--gecos' || a === '--comment') {
      if (i + 1 >= argv.length) throw new CliError(`option ${a} needs a value\n${USAGE}`, EX.USAGE);
      gecos = argv[++i];
    } else if (a.startsWith('--gecos=')) gecos = a.slice(8);
    else if (a.startsWith('-')) throw new CliError(`unknown option ${a}\n${USAGE}`, EX.USAGE);
    else names.push(a);
  }
  if (names.length !== 1) throw new CliError(`${names.length ? 'only one' : 'no'} user name given\n${USAGE}`, EX.USAGE);
  const name = names[0];
  if (!isValidName(name)) {
    throw new CliError(`'${name}' is not a valid user name: use lower-case letters, digits, '_' and '-', ` +
      `starting with a letter or '_', at most ${NAME_MAX} characters`, EX.DATAERR);
  }
  if (gecos !== undefined && /[:\n\r]/.test(gecos)) throw new CliError('the full name may not contain ":" or a line break', EX.DATAERR);

  const config = loadConfig();
  if (readUsersFile(config.usersFile).users.has(name)) throw new CliError(`The user '${name}' already exists.`, EX.FAIL);

  let password = '!';
  if (!disabled) {
    password = hashPassword(await askNewPassword('use --disabled-password for none'));
  }
  if (gecos === undefined && process.stdin.isTTY) gecos = (await ask('Full Name []: ')) ?? '';

  process.stdout.write(`Adding user '${name}' ...\n`);
  const mtadUser = mtadRunsAs(config);
  await updateUsersFile(config.usersFile, (f) => {
    if (f.users.has(name)) throw new StoreError(`The user '${name}' already exists.`, EX.FAIL);
    f.users.set(name, { name, password, gecos: gecos ?? '' });
  }, mtadUser);
  const box = createMailbox(config.spoolDir, name, mtadUser);
  process.stdout.write(box.created ? `Creating mailbox ${box.path} ...\n` : `Keeping the existing mailbox ${box.path}\n`);
  return EX.OK;
});
