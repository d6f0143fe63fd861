// sendmail -bs: an SMTP session on standard input and output, as some mail
// clients use it. It is mtad's own session, relayed byte for byte after XLOCAL,
// so the policy, the replies and the Received line are the ones SMTP gives.
import { Config } from '../config';
import { CliError, EX } from '../cli/common';
import { connectMtad, identify } from './sendmail';

const QUIET_AFTER_INPUT_MS = 5000;

export async function smtpOnStdio(config: Config): Promise<number> {
  let conn;
  try {
    conn = await connectMtad(config);
    await identify(conn);
  } catch (err) {
    const e = err as CliError;
    // The client on the other end speaks SMTP: it gets a reply it understands, and stderr the reason.
    process.stdout.write(`421 4.3.0 ${config.hostname} ${e.exitCode === EX.TEMPFAIL ? 'mail system not available' : 'local submission not possible'}, try again later\r\n`);
    throw err;
  }
  const g = conn.greeting!.lines;
  process.stdout.write(g.map((l, i) => `220${i < g.length - 1 ? '-' : ' '}${l}\r\n`).join(''));
  const socket = conn.socket;
  const ahead = conn.detach();
  if (ahead) process.stdout.write(Buffer.from(ahead, 'latin1'));
  socket.on('data', (d: string) => process.stdout.write(Buffer.from(d, 'latin1')));
  process.stdin.on('data', (d: Buffer) => { if (!socket.write(d)) process.stdin.pause(); });
  socket.on('drain', () => process.stdin.resume());
  // No half-close at the end of the input: mtad would drop the replies to commands
  // still in the pipeline. A script ends with QUIT, and mtad closes; one that just
  // stops gets its outstanding replies, then the session is ended once mtad is quiet.
  process.stdin.on('end', () => {
    socket.setTimeout(QUIET_AFTER_INPUT_MS, () => socket.destroy());
  });
  await new Promise<void>((resolve) => socket.on('close', () => resolve()));
  process.stdin.destroy();
  return EX.OK;
}
