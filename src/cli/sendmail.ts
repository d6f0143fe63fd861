// sendmail: Postfix's sendmail(1) interface to mtad (see src/submission/).
import path from 'node:path';
import { loadConfig } from '../config';
import { quietLog } from '../log';
import { checkAliases } from '../submission/aliases';
import { smtpOnStdio } from '../submission/bs';
import { parseOptions, UsageError, USAGE } from '../submission/options';
import { sendmail } from '../submission/sendmail';
import { CliError, EX, runMain, VERSION } from './common';
import { flushQueue, showQueue } from './queue-show';

runMain('sendmail', async (argv) => {
  quietLog();
  let opts;
  try {
    opts = parseOptions(argv);
    // Run as mailq or newaliases (the links Postfix installs to its sendmail), act as they do.
    const name = path.basename(process.argv[1] ?? '');
    if (name === 'mailq' && opts.mode === 'deliver') opts.mode = 'mailq';
    else if (name === 'newaliases' && opts.mode === 'deliver') opts.mode = 'newaliases';
  } catch (err) {
    if (err instanceof UsageError) throw new CliError(`${err.message}\n${USAGE}`, EX.USAGE);
    throw err;
  }
  if (opts.mode === 'help') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
  if (opts.mode === 'version') { process.stdout.write(`sendmail (mtad) ${VERSION}\n`); return EX.OK; }
  const config = loadConfig(opts.config ? { ...process.env, MTAD_CONFIG: opts.config } : process.env);
  switch (opts.mode) {
    case 'mailq': return showQueue(config);
    // The SMTP server module only for the local names it computes: not loaded for every message.
    case 'newaliases': return checkAliases(config, (await import('../smtp/server')).localNames(config), opts.aliasesFile);
    case 'flush': return flushQueue(config);
    case 'smtp': return smtpOnStdio(config);
    default: return sendmail(opts, config);
  }
});
