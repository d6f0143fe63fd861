// Delivery status notifications (RFC 3464, 3462): the report mtad writes when a
// message it accepted cannot be delivered (a bounce) or is still waiting (a
// delay warning). A multipart/report with a human part, a message/delivery-status
// part (one block per recipient) and the original headers. Pure: the agent
// decides who gets it and delivers it as any other message.
import fs from 'node:fs';
import { asciiBytes, printable } from '../text';
import type { Body } from './mailbox';
import { rfc5322Date } from './mbox';

export interface ReportedRecipient {
  /** The address delivery was attempted to (with its extension): "alice+lab3@host". */
  final: string;
  /** The address as the client gave it. */
  original: string;
  /** RFC 3463 code of the last attempt, e.g. "5.1.1" or "4.2.0". */
  status: string;
  diagnostic: string;
}

export interface ReportInput {
  id: string;
  hostname: string;
  date: Date;
  action: 'failed' | 'delayed';
  /** The To: header: the sender, or postmaster. */
  to: string;
  /** Set when the report goes to postmaster instead of the sender: why. */
  postmasterBecause?: string;
  original: { id: string; sender: string; arrival: Date; headers: Buffer };
  recipients: ReportedRecipient[];
  /** For "delayed": when mtad gives up. */
  retryUntil?: Date;
}

/** An address from the envelope, as one header word: printable() (invariant 6), and no space. */
function clean(s: string): string {
  return printable(s).replace(/ /g, '?');
}

const text = (s: string): string => printable(s);

/** The whole report, LF line ends (the mbox form before From-quoting). */
export function deliveryReport(r: ReportInput): Buffer {
  const boundary = `${r.id}.${Math.floor(r.date.getTime() / 1000)}/${r.hostname}`;
  const failed = r.action === 'failed';
  const human: string[] = [`This is the mail system at host ${r.hostname} (mtad).`, ''];
  if (r.postmasterBecause) {
    human.push(`This report goes to postmaster because ${text(r.postmasterBecause)}.`,
      'mtad delivers only to the mailboxes of this host: it never sends mail to another one.', '');
  }
  human.push(failed
    ? 'A message could not be delivered to the recipients below; mtad has given up on it.'
    : `A message could not be delivered yet to the recipients below. mtad keeps trying until ${rfc5322Date(r.retryUntil ?? r.date)}; nothing needs to be sent again.`);
  human.push(`Its headers are attached (queue id ${r.original.id}, sender <${clean(r.original.sender)}>).`, '');
  for (const rc of r.recipients) {
    const orig = rc.original.toLowerCase() === rc.final.toLowerCase() ? '' : ` (sent to <${clean(rc.original)}>)`;
    human.push(`<${clean(rc.final)}>${orig}: ${text(rc.diagnostic)}`);
  }

  const perMessage = [
    `Reporting-MTA: dns; ${r.hostname}`,
    `X-Mtad-Queue-ID: ${r.original.id}`,
    ...(r.original.sender ? [`X-Mtad-Sender: rfc822; ${clean(r.original.sender)}`] : []),
    `Arrival-Date: ${rfc5322Date(r.original.arrival)}`,
  ];
  const perRecipient = r.recipients.map((rc) => [
    '',
    `Final-Recipient: rfc822; ${clean(rc.final)}`,
    `Original-Recipient: rfc822; ${clean(rc.original)}`,
    `Action: ${r.action}`,
    `Status: ${rc.status}`,
    `Diagnostic-Code: X-mtad; ${text(rc.diagnostic)}`,
    ...(r.retryUntil && !failed ? [`Will-Retry-Until: ${rfc5322Date(r.retryUntil)}`] : []),
  ].join('\n'));

  const headers = r.original.headers;
  const eightBit = headers.some((b) => b >= 0x80);
  const subject = r.postmasterBecause ? 'Postmaster Copy: Undelivered Mail'
    : failed ? 'Undelivered Mail Returned to Sender' : 'Delayed Mail (still being retried)';
  const top = [
    `Received: by ${r.hostname} (mtad) id ${r.id}; ${rfc5322Date(r.date)}`,
    `Date: ${rfc5322Date(r.date)}`,
    `From: MAILER-DAEMON@${r.hostname} (Mail Delivery System)`,
    `To: ${clean(r.to)}`,
    `Subject: ${subject}`,
    `Message-ID: <${r.id}.${r.date.getTime()}@${r.hostname}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="${boundary}"`,
    `Content-Transfer-Encoding: ${eightBit ? '8bit' : '7bit'}`,
    '',
    'This is a MIME-encapsulated message.',
    '',
    `--${boundary}`,
    'Content-Description: Notification',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    ...human,
    '',
    `--${boundary}`,
    'Content-Description: Delivery report',
    'Content-Type: message/delivery-status',
    '',
    ...perMessage,
    ...perRecipient,
    '',
    `--${boundary}`,
    `Content-Description: ${failed ? 'Undelivered' : 'Delayed'} Message Headers`,
    'Content-Type: text/rfc822-headers',
    ...(eightBit ? ['Content-Transfer-Encoding: 8bit'] : []),
    '',
    '',
  ].join('\n');
  return Buffer.concat([asciiBytes(top), headers, asciiBytes(`\n--${boundary}--\n`)]);
}

const MAX_HEADERS = 100 * 1024;

/**
 * The header section of a stored message (mbox form), as the client sent it: up
 * to the empty line, at most 100 KiB (cut at a line end), the mboxrd quoting undone.
 */
export async function headerSection(body: Body): Promise<Buffer> {
  const n = Math.min(body.length, MAX_HEADERS);
  let head: Buffer;
  if (body.kind === 'memory') {
    head = Buffer.concat(body.chunks).subarray(0, n);
  } else {
    head = Buffer.alloc(n);
    const fh = await fs.promises.open(body.path, 'r');
    try { await fh.read(head, 0, n, body.offset); } finally { await fh.close(); }
  }
  const end = head.indexOf('\n\n');
  head = end >= 0 ? head.subarray(0, end + 1) : head.subarray(0, head.lastIndexOf('\n') + 1);
  return Buffer.from(head.toString('latin1').replace(/^>(>*From )/gm, '$1'), 'latin1');
}
