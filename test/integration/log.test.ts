// The log as an operator reads it (MTAD_LOG_LEVEL, README "Logging"): one line per
// event, Postfix's layout, printable ASCII only, and nothing below the level set.
// src/log.ts writes mtad's lines without winston's stream pipeline; these tests hold
// the lines to what that pipeline printed and to the level the operator chose.
import { describe, expect, it } from 'vitest';
import { HOSTNAME, mtadsForFile } from '../helpers/mtad';
import { readMbox } from '../helpers/mbox';
import { freePorts } from '../helpers/ports';
import { SmtpClient } from '../helpers/smtp';

// Each mtad is stopped after the file, and must exit 0 with no internal error in its log.
const mtadWith = mtadsForFile();
const aliases = 'MAILER-DAEMON: postmaster\n' +
  // A chain past Postfix's 100 levels: its recipient is deferred, with a warning for the operator.
  Array.from({ length: 120 }, (_, i) => `deep${i}: ${i === 119 ? 'bob' : `deep${i + 1}`}\n`).join('');

/** One message to alice, then RCPT to the over-deep alias (451 and a warning), then QUIT. */
async function session(port: number): Promise<string> {
  const c = await SmtpClient.connect(port);
  try {
    expect((await c.cmd('HELO client.test')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<sender@client.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<alice>')).code).toBe(250);
    // An 8-bit recipient (refused: no SMTPUTF8): the log shows its bytes escaped.
    expect((await c.cmd('RCPT TO:<b\xe9b@lab.test>')).code).toBe(553);
    const r = await c.data('Subject: log\r\n\r\nhello\r\n');
    expect(r.code, r.raw).toBe(250);
    expect((await c.cmd('MAIL FROM:<sender@client.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<deep0>')).code).toBe(451);
    return /queued as (\w+)/.exec(r.raw)![1];
  } finally {
    await c.quit();
  }
}

describe('the log', () => {
  it('at info: every event of a session, in order, one printable line each in Postfix\'s layout', async () => {
    const m = await mtadWith({}, { aliases });
    const id = await session(m.port);
    await m.waitForLog(/disconnect from /);
    const lines = m.output().split('\n').filter(Boolean);
    for (const l of lines) {
      expect(l, 'layout').toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z mtad\\[${m.pid}\\]: \\S`));
      expect(l, 'printable ASCII only').toMatch(/^[\x20-\x7e]+$/);
    }
    const events = [
      /: connect from \S+\[127\.0\.0\.1\]$/,
      /: NOQUEUE: reject: RCPT from \S+: 553 5\.6\.7 .*to=<b\S+b@lab\.test>/,
      new RegExp(`: ${id}: client=\\S+\\[127\\.0\\.0\\.1\\], from=<sender@client\\.test>, size=\\d+, nrcpt=1 \\(queue active\\)$`),
      new RegExp(`: ${id}: to=<alice@${HOSTNAME}>, relay=local, .*status=sent \\(delivered to mailbox\\)`),
      new RegExp(`: ${id}: removed$`),
      /: warning: alias deep0: unreasonable expansion \(.*nested more than 100 deep.*\)/,
      /: NOQUEUE: reject: RCPT from \S+: 451 4\.6\.0 .*to=<deep0>/,
      /: disconnect from \S+\[127\.0\.0\.1\]$/,
    ];
    const at = events.map((re) => lines.findIndex((l) => re.test(l)));
    expect(at.map((i, k) => (i < 0 ? `missing ${events[k]}` : 'ok')), m.output()).toEqual(events.map(() => 'ok'));
    expect([...at].sort((a, b) => a - b), 'in the order they happened').toEqual(at);
    expect(readMbox(m.mailbox('alice'))).toHaveLength(1);
  });

  for (const level of ['warn', 'error'] as const) {
    it(`at ${level}: the same session logs ${level === 'warn' ? 'its warning and nothing else' : 'nothing at all'}`, async () => {
      const [port] = await freePorts(1);
      const m = await mtadWith({ MTAD_LOG_LEVEL: level, MTAD_PORT: String(port), MTAD_POP3_PORT: 'off' }, { aliases });
      await session(m.port);
      // The message is delivered all the same.
      expect(readMbox(m.mailbox('alice'))).toHaveLength(1);
      if (level === 'warn') {
        // Lines go out in order, so once the warning is out any earlier info line would be too.
        const w = await m.waitForLog(/warning: alias deep0: unreasonable expansion/);
        expect(w).toMatch(new RegExp(`^\\S+ mtad\\[${m.pid}\\]: warning: alias deep0: `));
        expect(m.output().split('\n').filter(Boolean), m.output()).toEqual([w]);
      } else {
        // Nothing to wait for: the log may not say anything. Stop mtad, which writes what is pending at exit.
        const { code } = await m.stop();
        expect(code).toBe(0);
        expect(m.output(), 'nothing below error').toBe('');
      }
    });
  }
});
