// One line per event on standard output, in the spirit of Postfix's mail.log:
// "<time> mtad[<pid>]: <QUEUEID>: to=<...>, relay=local, ... status=sent (...)".
// Warnings and errors carry Postfix's "warning:"/"error:" prefix so grep finds them.
import winston from 'winston';
import { printable } from './text';

const line = winston.format.printf((info) => {
  const prefix = info.level === 'info' ? '' : info.level === 'warn' ? 'warning: ' : `${info.level}: `;
  // One event, one line of printable ASCII, whatever a client put into the message.
  return `${info.timestamp} mtad[${process.pid}]: ${prefix}${printable(String(info.message), { show: 'escape' })}`;
});

export const log = winston.createLogger({
  level: 'info',
  format: winston.format.combine(winston.format.timestamp(), line),
  transports: [new winston.transports.Console({ stderrLevels: [] })],
});

export function setLogLevel(level: string): void {
  log.level = level;
}

/** Silences the logger (the CLIs print their own messages). */
export function quietLog(): void {
  log.transports.forEach((t) => { t.silent = true; });
}
