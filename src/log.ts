// One line per event on standard output, in the spirit of Postfix's mail.log:
// "<time> mtad[<pid>]: <QUEUEID>: to=<...>, relay=local, ... status=sent (...)".
// Warnings and errors carry Postfix's "warning:"/"error:" prefix so grep finds them.
//
// The lines of one turn of the event loop go out in one write (a message costs
// five lines, and a write(2) costs more than formatting them all); before any
// SMTP or POP3 reply (flushLog, from smtp/internals.ts and pop3/session.ts), so
// that what a client is told is never ahead of the log; and at exit. Writes are
// synchronous for files and pipes on Linux, so a line logged is on its way once
// its turn ends.
import winston from 'winston';
import type TransportStream from 'winston-transport';
import { printable } from './text';

const LINE = Symbol('line');
const UNPRINTABLE = /[^\x20-\x7e]/;

/** Lines formatted and not yet written, in order. */
let pending: string[] = [];
let scheduled = false;

/** Writes the lines logged so far. Cheap when there are none. */
export function flushLog(): void {
  if (!pending.length) return;
  const text = pending.length === 1 ? pending[0] : pending.join('');
  pending = [];
  process.stdout.write(text);
}

function later(): void {
  scheduled = false;
  flushLog();
}

// winston's own base class for transports (winston.Transport; its typings name only the module).
const Transport = (winston as unknown as { Transport: typeof TransportStream }).Transport;

class BufferedStdout extends Transport {
  override log(info: Record<string | symbol, unknown>, next: () => void): void {
    pending.push(info[LINE] as string);
    if (!scheduled) {
      scheduled = true;
      setImmediate(later);
    }
    next();
  }
}

// One event, one line of printable ASCII, whatever a client put into the message.
const line = winston.format((info) => {
  const prefix = info.level === 'info' ? '' : info.level === 'warn' ? 'warning: ' : `${info.level}: `;
  const text = String(info.message);
  const shown = UNPRINTABLE.test(text) ? printable(text, { show: 'escape' }) : text;
  (info as Record<symbol, unknown>)[LINE] = `${new Date().toISOString()} mtad[${process.pid}]: ${prefix}${shown}\n`;
  return info;
});

export const log = winston.createLogger({
  level: 'info',
  format: line(),
  transports: [new BufferedStdout()],
});

process.on('exit', flushLog);

export function setLogLevel(level: string): void {
  log.level = level;
}

/** Silences the logger (the CLIs print their own messages). */
export function quietLog(): void {
  log.transports.forEach((t) => { t.silent = true; });
  pending = [];
}
