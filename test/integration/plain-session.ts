// One plain SMTP session, command by command, and every byte mtad sent back:
// the transcript a mtad without a certificate must keep producing unchanged
// (fixtures/plain-session.txt was recorded from mtad before TLS existed).
import { SmtpClient } from '../helpers/smtp';

export const PLAIN_COMMANDS = [
  'EHLO client.example.org', 'HELO client.example.org', 'HELP', 'STARTTLS', 'NOOP', 'VRFY alice',
  'MAIL FROM:<carol@example.org>', 'RCPT TO:<alice@lab.test>', 'RCPT TO:<ghost@lab.test>', 'DATA',
  'Subject: plain\r\n\r\nSeen by anyone on the wire.\r\n.', 'RSET', 'MAIL FROM:<carol@example.org>', 'QUIT',
];

/** The server's side of the session; the queue id (which changes every time) as QUEUEID. */
export async function plainTranscript(port: number): Promise<string> {
  const c = await SmtpClient.connect(port);
  let out = c.greeting.raw;
  for (const line of PLAIN_COMMANDS) out += (await c.cmd(line)).raw;
  c.close();
  return out.replace(/queued as [0-9A-F]+/g, 'queued as QUEUEID');
}
