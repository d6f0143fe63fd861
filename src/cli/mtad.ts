// mtad: the daemon. `sudo node bin/mtad` for port 25; MTAD_PORT=2525 without sudo.
import { checkInstallation } from '../check';
import { loadConfig } from '../config';
import { Daemon, startDaemon } from '../daemon';
import { log } from '../log';
import { CliError, EX, onOutputClosed, runMain, VERSION } from './common';

const USAGE = `usage: mtad [--trace] [--check] [--help] [--version]

Runs the mail server: SMTP on MTAD_HOST:MTAD_PORT, delivery into MTAD_SPOOL_DIR.
Settings come from etc/mtad.env (or the file MTAD_CONFIG names), and the
environment overrides them. Stop it with Ctrl-C or SIGTERM; SIGHUP rereads the
users and aliases files and the TLS certificate and key.
  --trace    print every session's dialogue (C: and S: lines), as MTAD_TRACE=yes does
  --check    check the configuration, the users and aliases files and the spool and
             queue permissions, show what mtad would listen on and accept, and exit
             (0 when all is well, otherwise the exit code mtad would stop with)
  --help     show this help
  --version  show the version`;

const IGNORED_SIGNALS: NodeJS.Signals[] = ['SIGUSR1', 'SIGUSR2', 'SIGALRM', 'SIGVTALRM', 'SIGPROF', 'SIGPOLL', 'SIGPWR', 'SIGXCPU', 'SIGXFSZ', 'SIGSTKFLT', 'SIGTRAP'];

runMain('mtad', async (argv) => {
  let trace = false;
  let check = false;
  for (const a of argv) {
    if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); return EX.OK; }
    if (a === '--version' || a === '-V') { process.stdout.write(`mtad ${VERSION}\n`); return EX.OK; }
    if (a === '--trace') trace = true;
    else if (a === '--check') check = true;
    else throw new CliError(`unknown argument "${a}"\n${USAGE}`, EX.USAGE);
  }
  const config = loadConfig();
  if (trace) config.trace = true;
  if (check) {
    const report = await checkInstallation(config);
    for (const l of report.lines) process.stdout.write(`${l}\n`);
    for (const p of report.problems) process.stdout.write(`problem: ${p.text}\n`);
    if (!report.problems.length) { process.stdout.write('ok: mtad would start with this configuration\n'); return EX.OK; }
    // Problems in the account files (65) leave mtad running without those lines; the others stop it.
    const fatal = report.problems.find((p) => p.exitCode !== EX.DATAERR);
    process.stdout.write(`${report.problems.length} problem(s): mtad ${fatal ? 'would not start' : 'would start, ignoring those lines'}\n`);
    return (fatal ?? report.problems[0]).exitCode;
  }
  // The handlers come first: "listening on" is printed before the start-up has
  // finished (the queue is still being read), and a SIGTERM in that gap must be a
  // clean stop, not a kill. It is acted on once the daemon is up.
  let daemon: Daemon | null = null;
  let stopping = false;
  let signals = 0;
  const shutdown = (d: Daemon): void => {
    const hard = setTimeout(() => { log.warn('grace time over: exiting'); process.exit(0); }, (config.shutdownGrace + 10) * 1000);
    hard.unref();
    d.close().then(() => process.exit(0), (err) => { log.error(String(err)); process.exit(1); });
  };
  const stop = (sig: string): void => {
    if (++signals > 1) { log.warn(`${sig} again: exiting now`); process.exit(1); }
    log.info(`${sig} received`);
    stopping = true;
    if (daemon) shutdown(daemon);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // `mtad | head`: with nobody left to read the log, stop as on SIGTERM (deliveries finish) rather than die.
  onOutputClosed(() => { if (!stopping) stop('EPIPE'); });
  // Without a handler SIGHUP would end mtad without a word; it rereads what can change instead.
  process.on('SIGHUP', () => {
    log.info('SIGHUP received: reloading');
    daemon?.reload();
  });
  // No signal may end mtad without a word: SIGQUIT stops it as SIGTERM does; the
  // others whose default is to kill (SIGKILL aside) are logged and ignored.
  process.on('SIGQUIT', () => stop('SIGQUIT'));
  // V8's sampling profiler (--cpu-prof, --prof: the bench's MTAD_NODE_ARGS) runs on SIGPROF: a handler here would stop it.
  const profiling = process.execArgv.some((a) => /^--(cpu-)?prof(=|$)/.test(a));
  for (const sig of IGNORED_SIGNALS) {
    if (sig === 'SIGPROF' && profiling) continue;
    process.on(sig, () => log.warn(`${sig} received: ignored (SIGTERM stops mtad, SIGHUP rereads the accounts)`));
  }
  process.on('unhandledRejection', (err) => log.error(`unhandled rejection: ${(err as Error)?.stack ?? err}`));
  daemon = await startDaemon(config);
  if (stopping) shutdown(daemon);
  return undefined;
});
