// newaliases: checks the aliases file (sendmail -bi); mtad rereads it by itself.
import { loadConfig } from '../config';
import { localNames } from '../smtp/server';
import { checkAliases } from '../submission/aliases';
import { CliError, EX, runMain, VERSION } from './common';

const USAGE = `usage: newaliases

Checks the aliases file (MTAD_ALIASES_FILE) as mtad reads it, and prints each
problem and a summary; exits 65 when there is a problem (the same as
sendmail -bi). mtad rereads the file by itself whenever it changes: there is no
database to rebuild.`;

runMain('newaliases', async (argv) => {
  if (argv.length === 1 && argv[0] === '--help') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
  if (argv.length === 1 && argv[0] === '--version') { process.stdout.write(`newaliases (mtad) ${VERSION}\n`); return EX.OK; }
  if (argv.length) throw new CliError(`unknown argument "${argv[0]}"\n${USAGE}`, EX.USAGE);
  const config = loadConfig();
  return checkAliases(config, localNames(config));
});
