// mailq: the queue listing, as mta-queue prints it (sendmail -bp).
import { loadConfig } from '../config';
import { quietLog } from '../log';
import { CliError, EX, runMain, VERSION } from './common';
import { showQueue } from './queue-show';

const USAGE = `usage: mailq

Lists the mail waiting in mtad's queue, as mta-queue does (the same as
sendmail -bp); mta-queue also holds, releases, deletes and flushes.`;

runMain('mailq', async (argv) => {
  quietLog();
  if (argv.length === 1 && argv[0] === '--help') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
  if (argv.length === 1 && argv[0] === '--version') { process.stdout.write(`mailq (mtad) ${VERSION}\n`); return EX.OK; }
  if (argv.length) throw new CliError(`unknown argument "${argv[0]}"\n${USAGE}`, EX.USAGE);
  return showQueue(loadConfig());
});
