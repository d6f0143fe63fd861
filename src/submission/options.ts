// The sendmail(1) command line as Postfix's sendmail reads it: getopt with
// Postfix's option string (options may follow recipients, "--" ends them), the
// options that matter acted on, the historical ones accepted and ignored.
export type Mode = 'deliver' | 'smtp' | 'mailq' | 'newaliases' | 'flush' | 'help' | 'version';

export interface Options {
  mode: Mode;
  recipients: string[];
  /** -t: recipients also from To/Cc/Bcc. */
  extract: boolean;
  /** Without -i/-oi a line holding only "." ends the message. */
  dotEnds: boolean;
  sender?: string;
  fullName?: string;
  verbose: boolean;
  /** -C: the mtad configuration file (Postfix: the configuration directory). */
  config?: string;
  /** -oA: the aliases file newaliases checks. */
  aliasesFile?: string;
}

export class UsageError extends Error {}

export const USAGE = `usage: sendmail [options] [recipient ...]

Sends the message on standard input to local users through mtad, as Postfix's
sendmail(1) does. Options:
  -t            take recipients from To:, Cc: and Bcc: too (Bcc: is removed)
  -i, -oi       a line with only "." does not end the message
  -f sender     envelope sender (also -r); the Received: line still names you
  -F name       full name for the From: line mtad adds when there is none
  -bs           an SMTP session on standard input and output
  -bp           list the queue (mailq)       -bi, -I   check the aliases (newaliases)
  -q            ask mtad to retry the queue now (root or mtad's user)
  -v            show the SMTP dialogue with mtad on standard error
  -C file       read this mtad configuration file instead of etc/mtad.env
Accepted and ignored, as Postfix does: -B -G -h -L -m -n -N -O -R -U -V -X -c -x
-e* -p -o7 -o8 -oem -odi -oX... and other -o options.`;

// Postfix sendmail.c: GETOPT(argc, argv, "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx").
const WITH_ARG = new Set('ABCFLNORVXbefhopr'.split(''));
const FLAGS = new Set('GIUcimntvx'.split(''));

export function parseOptions(argv: string[]): Options {
  const o: Options = { mode: 'deliver', recipients: [], extract: false, dotEnds: true, verbose: false };
  let i = 0;
  while (i < argv.length) {
    const a = argv[i++];
    if (a === '--') { o.recipients.push(...argv.slice(i)); break; }
    if (a === '--help' || a === '--version') { o.mode = a === '--help' ? 'help' : 'version'; return o; }
    if (!a.startsWith('-') || a === '-') { o.recipients.push(a); continue; }
    for (let k = 1; k < a.length; k++) {
      const c = a[k];
      if (c === 'q') {
        // -q alone flushes; -q1h, -qRsite, -qSsite (intervals and sites) are flushes too.
        o.mode = 'flush';
        break;
      }
      if (FLAGS.has(c)) {
        if (c === 't') o.extract = true;
        else if (c === 'i') o.dotEnds = false;
        else if (c === 'v') o.verbose = true;
        else if (c === 'I') o.mode = 'newaliases';
        continue;
      }
      if (!WITH_ARG.has(c)) throw new UsageError(`illegal option -- ${c}`);
      let arg = a.slice(k + 1);
      if (!arg) {
        if (i >= argv.length) throw new UsageError(`option requires an argument -- ${c}`);
        arg = argv[i++];
      }
      option(o, c, arg);
      break;
    }
  }
  return o;
}

function option(o: Options, c: string, arg: string): void {
  switch (c) {
    case 'f': case 'r': o.sender = arg; return;
    case 'F': o.fullName = arg; return;
    case 'C': o.config = arg; return;
    case 'b':
      switch (arg) {
        case 'm': o.mode = 'deliver'; return;
        case 's': o.mode = 'smtp'; return;
        case 'p': o.mode = 'mailq'; return;
        case 'i': o.mode = 'newaliases'; return;
        case 'h': case 'H': return; // mail statistics: Postfix ignores them too
        case 'd': case 'l':
          throw new UsageError(`-b${arg}: the daemon is mtad itself: start it with "systemctl start mtad" or "node bin/mtad"`);
        default: throw new UsageError(`-b${arg}: unsupported mode`);
      }
    case 'o':
      if (arg === 'i') o.dotEnds = false;
      else if (arg.startsWith('A')) {
        if (arg.length === 1) throw new UsageError('-oA needs the aliases file name');
        o.aliasesFile = arg.slice(1);
      }
      return; // -o7 -o8 -oem -odi -om -oX...: historical sendmail settings, ignored
    default:
      return; // -A -B -L -N -O -R -V -X -e -h -p: ignored, as Postfix does
  }
}
