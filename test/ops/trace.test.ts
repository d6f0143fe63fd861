// The teaching trace against a real session: every command and reply appears
// as it happens, tagged with the client's address and port, the body is cut to
// its first lines, and the queue id tags the lines from DATA to its reply.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOSTNAME, Mtad, removeInstance, startMtad } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';

let mtad: Mtad;
beforeAll(async () => { mtad = await startMtad({ env: { MTAD_TRACE: 'yes' } }); });
afterAll(async () => {
  const { code } = await mtad.stop();
  expect(code, mtad.output()).toBe(0);
  removeInstance(mtad.dir);
});

/** The trace lines of one client port, without the time stamp and pid. */
function traceOf(out: string, port: number): string[] {
  const re = new RegExp(`^\\S+ mtad\\[\\d+\\]: (127\\.0\\.0\\.1:${port} .*)$`);
  return out.split('\n').map((l) => re.exec(l)?.[1]).filter((l): l is string => l !== undefined);
}

describe('MTAD_TRACE=yes', () => {
  it('prints the dialogue of a session, with the body abbreviated', async () => {
    const c = await SmtpClient.connect(mtad.port);
    const port = c.socket.localPort!;
    const me = `127.0.0.1:${port}`;
    await c.cmd('EHLO client.test');
    await c.cmd('MAIL FROM:<carol@remote.test>');
    await c.cmd('RCPT TO:<alice>');
    await c.cmd('RCPT TO:<mallory@elsewhere.test>');
    const body = ['Subject: trace me', 'X-Bytes: caf\xe9', '', ...Array.from({ length: 30 }, (_, i) => `line ${i + 1}`)];
    const r = await c.data(body.join('\r\n'));
    const id = /queued as (\w+)/.exec(r.lines[0])![1];
    await c.cmd('QUIT');
    c.close();
    await mtad.waitForLog(new RegExp(`${me} S: 221 `));

    const t = traceOf(mtad.output(), port);
    const hidden = body.slice(12).join('\r\n').length + 2;
    const total = body.join('\r\n').length + 2;
    expect(t).toEqual([
      `${me} S: 220 ${HOSTNAME} ESMTP mtad`,
      `${me} C: EHLO client.test`,
      `${me} S: 250-${HOSTNAME}`,
      ...t.slice(3, t.indexOf(`${me} C: MAIL FROM:<carol@remote.test>`)),
      `${me} C: MAIL FROM:<carol@remote.test>`,
      `${me} S: 250 2.1.0 Accepted`,
      `${me} C: RCPT TO:<alice>`,
      `${me} S: 250 2.1.5 Accepted`,
      `${me} C: RCPT TO:<mallory@elsewhere.test>`,
      `${me} S: 554 5.7.1 <mallory@elsewhere.test>: Relay access denied`,
      `${me} C: DATA`,
      `${me} ${id} S: 354 End data with <CR><LF>.<CR><LF>`,
      `${me} ${id} C: Subject: trace me`,
      `${me} ${id} C: X-Bytes: caf\\xe9`,
      `${me} ${id} C: `,
      ...Array.from({ length: 9 }, (_, i) => `${me} ${id} C: line ${i + 1}`),
      `${me} ${id} C: [... ${hidden} more bytes, ${total} in all]`,
      `${me} ${id} C: .`,
      `${me} ${id} S: 250 2.0.0 Ok: queued as ${id}`,
      `${me} C: QUIT`,
      expect.stringMatching(new RegExp(`^${me} S: 221 2\\.0\\.0 `)),
    ]);
    // The EHLO reply is there whole, one line per extension, ending with a "250 " line.
    expect(t.slice(3, t.indexOf(`${me} C: MAIL FROM:<carol@remote.test>`)).pop()).toMatch(/ S: 250 /);
  });

  it('is off unless asked for', async () => {
    const quiet = await startMtad();
    try {
      const c = await SmtpClient.connect(quiet.port);
      await c.cmd('HELO client.test');
      await c.quit();
      await quiet.waitForLog(/disconnect from/);
      expect(quiet.output()).not.toMatch(/ [CS]: /);
    } finally {
      await quiet.stop();
      removeInstance(quiet.dir);
    }
  });
});
