// One line per event on standard output, in the spirit of Postfix's mail.log:
// "<time> mtad[<pid>]: <QUEUEID>: to=<...>, relay=local, ... status=sent (...)".
// Warnings and errors carry Postfix's "warning:"/"error:" prefix so grep finds them.
//
// The lines of one turn of the event loop go out in one write (a message costs
// five lines, and a write(2) costs more than formatting them all), at the end of
// the turn or at exit. What a client is told is never ahead of the log: an SMTP
// reply that follows lines not yet written waits for them (holdBehindLog: its
// socket is corked until the turn's write is done, then uncorked), and what cannot
// wait (ending a held socket, a TLS upgrade, a POP3 reply) writes the lines first
// (flushLog). So a busy turn, with greetings and 250s for many sessions, costs one
// log write, not one per reply. Writes are
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

/** Sockets corked by holdBehindLog, uncorked once the lines before their replies are written. */
interface Held { cork(): void; uncork(): void; [HELD]?: boolean }
const HELD = Symbol('held');
let held: Held[] = [];

/** Writes the lines logged so far, then lets out the replies that waited for them. Cheap when there are none. */
export function flushLog(): void {
  if (pending.length) {
    const text = pending.length === 1 ? pending[0] : pending.join('');
    pending = [];
    process.stdout.write(text);
  }
  if (held.length) release();
}

function release(): void {
  const out = held;
  held = [];
  for (const s of out) {
    s[HELD] = false;
    s.uncork();
  }
}

/** Whether `socket` holds replies that wait for lines not yet written. */
export function isHeld(socket: Held): boolean {
  return socket[HELD] === true;
}

/**
 * Before a reply is written to `socket`: if lines are waiting to be written,
 * corks the socket until they are (this turn's end, or the next flushLog), so
 * that the reply, written into it now, follows them. Ending a socket uncorks it:
 * whoever ends a held socket calls flushLog first.
 */
export function holdBehindLog(socket: Held): void {
  if (!pending.length || socket[HELD]) return;
  socket[HELD] = true;
  socket.cork();
  held.push(socket);
}

function later(): void {
  scheduled = false;
  flushLog();
}

// winston's own base class for transports (winston.Transport; its typings name only the module).
const Transport = (winston as unknown as { Transport: typeof TransportStream }).Transport;

class BufferedStdout extends Transport {
  override log(info: Record<string | symbol, unknown>, next: () => void): void {
    buffer(info[LINE] as string);
    next();
  }
}

function buffer(text: string): void {
  pending.push(text);
  if (!scheduled) {
    scheduled = true;
    setImmediate(later);
  }
}

// One event, one line of printable ASCII, whatever a client put into the message.
// "<time> mtad[<pid>]: ", made once per millisecond: a message's lines mostly share one.
let stampAt = -1;
let stamp = '';
function formatLine(level: string, message: unknown): string {
  const now = Date.now();
  if (now !== stampAt) {
    stampAt = now;
    stamp = `${new Date(now).toISOString()} mtad[${process.pid}]: `;
  }
  const prefix = level === 'info' ? '' : level === 'warn' ? 'warning: ' : `${level}: `;
  const text = String(message);
  const shown = UNPRINTABLE.test(text) ? printable(text, { show: 'escape' }) : text;
  return `${stamp}${prefix}${shown}\n`;
}

const line = winston.format((info) => {
  (info as Record<symbol, unknown>)[LINE] = formatLine(info.level, info.message);
  return info;
});

const stdout = new BufferedStdout();

export const log = winston.createLogger({
  level: 'info',
  format: line(),
  transports: [stdout],
});

// The same lines by a shorter road. winston takes each line through a Transform
// stream, an info object, the format and a pipe into the transport: about a fifth
// of what the log costs a message, and paid even for a level that is off. mtad logs
// plain strings to its own transport only, so while that is so a level method
// formats the line and buffers it itself, and a line below the level costs one
// comparison. Anything else (another transport, an object to log) takes winston's road.
type LevelMethod = (message: unknown, ...meta: unknown[]) => winston.Logger;
const levels = log.levels;
for (const level of ['error', 'warn', 'info', 'debug'] as const) {
  const slow = log[level].bind(log) as LevelMethod;
  const rank = levels[level];
  (log as unknown as Record<string, LevelMethod>)[level] = function fast(message: unknown, ...meta: unknown[]): winston.Logger {
    if (meta.length || typeof message !== 'string' || log.transports.length !== 1 || log.transports[0] !== stdout) return slow(message, ...meta);
    if (rank > levels[log.level] || stdout.silent || (stdout.level !== undefined && rank > levels[stdout.level])) return log;
    buffer(formatLine(level, message));
    return log;
  };
}

process.on('exit', flushLog);

export function setLogLevel(level: string): void {
  log.level = level;
}

/** Silences the logger (the CLIs print their own messages). */
export function quietLog(): void {
  log.transports.forEach((t) => { t.silent = true; });
  pending = [];
  release();
}
