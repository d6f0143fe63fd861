// Reading answers the way adduser does: passwords without echo on a terminal;
// from a pipe, one answer a line (so scripts can feed them).
import readline from 'node:readline';
import { CliError, EX } from './common';

let piped: string[] | null = null;
let pipedRead: Promise<void> | null = null;

async function nextPipedLine(): Promise<string | null> {
  pipedRead ??= (async () => {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    piped = Buffer.concat(chunks).toString('utf8').split(/\r?\n/);
  })();
  await pipedRead;
  return piped!.length ? piped!.shift()! : null;
}

export async function ask(question: string, hidden = false): Promise<string | null> {
  if (!process.stdin.isTTY) return nextPipedLine();
  if (!hidden) {
    process.stderr.write(question);
    const rl = readline.createInterface({ input: process.stdin, terminal: false });
    const line = await new Promise<string | null>((resolve) => {
      rl.once('line', resolve);
      rl.once('close', () => resolve(null));
    });
    rl.close();
    return line;
  }
  return new Promise((resolve) => {
    const stdin = process.stdin;
    let value = '';
    // Echo goes off before the prompt shows: whatever is typed (or pasted) after it is never displayed.
    stdin.setRawMode(true);
    process.stderr.write(question);
    stdin.resume();
    const done = (v: string | null): void => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off('data', onData);
      process.stderr.write('\n');
      resolve(v);
    };
    const onData = (buf: Buffer): void => {
      for (const ch of buf.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done(value);
        if (ch === '\u0003' || ch === '\u0004') return done(null);
        if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
        else value += ch;
      }
    };
    stdin.on('data', onData);
  });
}

/** Asks for a new password twice, as adduser and passwd do; `none` says how to have no password instead. */
export async function askNewPassword(none: string): Promise<string> {
  const p1 = await ask('New password: ', true);
  const p2 = await ask('Retype new password: ', true);
  if (p1 === null || p2 === null) throw new CliError(`no password given (${none})`, EX.DATAERR);
  if (p1 !== p2) throw new CliError('Sorry, passwords do not match.', EX.FAIL);
  if (p1 === '') throw new CliError(`No password has been supplied (${none}).`, EX.DATAERR);
  return p1;
}
