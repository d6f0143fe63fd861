// mtad: the daemon. `sudo node bin/mtad` for port 25; MTAD_PORT=2525 without sudo.
import { loadConfig } from '../config';
import { startDaemon } from '../daemon';
import { log } from '../log';
import { CliError, EX, runMain, VERSION } from './common';

const USAGE = `usage: mtad [--help] [--version]

Runs the mail server: SMTP on MTAD_HOST:MTAD_PORT, delivery into MTAD_SPOOL_DIR.
Settings come from etc/mtad.env (or the file MTAD_CONFIG names), and the
environment overrides them. Stop it with Ctrl-C or SIGTERM.`;

runMain('mtad', async (argv) => {
  for (const a of argv) {
    if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
    if (a === '--version' || a === '-V') { process.stdout.write(`mtad ${VERSION}\n`); return EX.OK; }
    throw new CliError(`unknown argument "${a}"\n${USAGE}`, EX.USAGE);
  }
  const config = loadConfig();
  const daemon = await startDaemon(config);
  let signals = 0;
  const stop = (sig: string): void => {
    if (++signals > 1) { log.warn(`${sig} again: exiting now`); process.exit(1); }
    log.info(`${sig} received`);
    const hard = setTimeout(() => { log.warn('grace time over: exiting'); process.exit(0); }, (config.shutdownGrace + 10) * 1000);
    hard.unref();
    daemon.close().then(() => process.exit(0), (err) => { log.error(String(err)); process.exit(1); });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('unhandledRejection', (err) => log.error(`unhandled rejection: ${(err as Error)?.stack ?? err}`));
  return undefined;
});
