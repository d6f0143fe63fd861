// What every command shares: sysexits codes, and the rule that an operator's
// mistake is one line on stderr and an exit code, never a stack trace.
import { ConfigError } from '../config';

export const EX = {
  OK: 0, FAIL: 1, USAGE: 64, DATAERR: 65, NOINPUT: 66, NOUSER: 67, UNAVAILABLE: 69,
  SOFTWARE: 70, OSERR: 71, CANTCREAT: 73, IOERR: 74, TEMPFAIL: 75, NOPERM: 77, CONFIG: 78,
} as const;

export class CliError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

export const VERSION: string = (require('../../package.json') as { version: string }).version;

/** Exit status of a command whose reader went away (`mta-users | head -1`): what a shell shows for SIGPIPE. */
export const EXIT_OUTPUT_CLOSED = 128 + 13;
let outputClosed = (): void => process.exit(EXIT_OUTPUT_CLOSED);

/** What to do instead of exiting once standard output or error is closed (the daemon stops cleanly). */
export function onOutputClosed(handler: () => void): void {
  outputClosed = handler;
}

/**
 * A write to a closed pipe fails with EPIPE as an 'error' event, which Node turns
 * into a stack trace: the command ends quietly instead, once, however many writes fail.
 */
function endQuietlyWhenOutputCloses(): void {
  let closed = false;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (closed) return;
      closed = true;
      if (err.code === 'EPIPE') outputClosed();
      else process.exit(EX.IOERR);
    });
  }
}

/** Runs a command's main and turns every error into one line and an exit code. */
export function runMain(prog: string, main: (argv: string[]) => Promise<number | void>): void {
  endQuietlyWhenOutputCloses();
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code ?? 0; },
    (err) => {
      if (err instanceof ConfigError) {
        process.stderr.write(`${prog}: config: ${err.message}\n`);
        process.exit(err.exitCode);
      }
      const e = err as Error & { exitCode?: number };
      if (typeof e.exitCode === 'number') {
        process.stderr.write(`${e.message.startsWith(`${prog}:`) ? e.message : `${prog}: ${e.message}`}\n`);
        process.exit(e.exitCode);
      }
      process.stderr.write(`${prog}: internal error: ${e?.stack ?? e}\n`);
      process.exit(EX.SOFTWARE);
    },
  );
}
