// Real POP3 clients against mtad: Python's poplib, fetchmail, mutt (pop://),
// curl (pop3://) and s-nail each fetch what was sent over SMTP, and delete
// where they can; the mailbox left behind is read back with Python's mailbox.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { HOSTNAME, Mtad, mtadForFile } from '../helpers/mtad';
import { SmtpClient } from '../helpers/smtp';
import { run, screenOf } from './tools';

const USERS = ['pyuser', 'fetchuser', 'muttuser', 'curluser', 'snailuser'];
const PASSWORD = 'lab pw 1';
const get = mtadForFile({ users: USERS, passwords: Object.fromEntries(USERS.map((u) => [u, PASSWORD])), env: { MTAD_POP3_AUTH_DELAY: '0.1' } });

/** Messages as the SMTP client sends them (CRLF, before dot-stuffing): the awkward lines of the issue. */
const MESSAGES = (tag: string): Buffer[] => [
  Buffer.from(`Subject: ${tag} one\r\nX-Token: ${tag}-1\r\n\r\nCaf\u00e9 \u00fcber na\u00efve\r\nFrom the start\r\n>From quoted\r\n.\r\n..\r\n.hidden\r\n`, 'utf8'),
  Buffer.from(`Subject: ${tag} two\r\nX-Token: ${tag}-2\r\n`, 'latin1'),
  Buffer.from(`Subject: ${tag} three\r\nX-Token: ${tag}-3\r\nContent-Type: application/octet-stream\r\n\r\n${Buffer.from(Array.from({ length: 2 * 1024 * 1024 / 4 * 3 }, (_, i) => (i * 31) & 0xff)).toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n`, 'latin1'),
];

const TRACE = /^Return-Path: <[^>\r\n]*>\r\nDelivered-To: [^\r\n]+\r\nReceived: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*/;

async function fill(m: Mtad, user: string): Promise<Buffer[]> {
  const msgs = MESSAGES(user);
  const c = await SmtpClient.connect(m.port);
  await c.cmd('HELO client.test');
  for (const msg of msgs) expect((await c.send('sender@client.test', [`${user}@${HOSTNAME}`], msg)).code).toBe(250);
  await c.quit();
  return msgs;
}

const tokens = (m: Mtad, user: string): Array<string | undefined> => readMbox(m.mailbox(user)).map((x) => x.header('X-Token'));

describe('real POP3 clients', () => {
  it('Python poplib: every message byte for byte after the trace fields, LIST sizes as received; DELE then QUIT removes', async () => {
    const m = get();
    const sent = await fill(m, 'pyuser');
    const script = `
import base64, json, poplib, sys
p = poplib.POP3('127.0.0.1', int(sys.argv[1]))
p.user('pyuser'); p.pass_(sys.argv[2])
out = []
for i, size in enumerate(int(l.split()[1]) for l in p.list()[1]):
    resp, lines, octets = p.retr(i + 1)
    data = b''.join(l + b'\\r\\n' for l in lines)
    out.append({'size': size, 'data': base64.b64encode(data).decode()})
p.dele(1)
p.quit()
print(json.dumps(out))`;
    const r = await run('python3', ['-c', script, String(m.pop3Port), PASSWORD]);
    expect(r.status, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout.toString()) as Array<{ size: number; data: string }>;
    expect(got).toHaveLength(sent.length);
    got.forEach((g, i) => {
      const data = Buffer.from(g.data, 'base64');
      expect(g.size).toBe(data.length);
      const trace = TRACE.exec(data.toString('latin1'));
      expect(trace).not.toBeNull();
      expect(data.subarray(trace![0].length).equals(sent[i]), `message ${i + 1}`).toBe(true);
    });
    expect(tokens(m, 'pyuser')).toEqual(['pyuser-2', 'pyuser-3']);
  });

  it('fetchmail: fetches all, then nothing new (UIDL), then with --nokeep deletes', async () => {
    const m = get();
    await fill(m, 'fetchuser');
    const home = fs.mkdtempSync(path.join(m.dir, 'fetchmail-'));
    fs.chmodSync(home, 0o700);
    const out = path.join(home, 'out');
    const rc = path.join(home, 'rc');
    // sslproto "": no STLS attempt (fetchmail tries it unasked); the mda appends each message to one file.
    fs.writeFileSync(rc, `poll 127.0.0.1 protocol pop3 port ${m.pop3Port} uidl auth password user "fetchuser" password "${PASSWORD}" is "${os.userInfo().username}" here sslproto "" mda "cat >> ${out}"\n`, { mode: 0o600 });
    const fetch = (args: string[]): ReturnType<typeof run> => run('fetchmail', ['-f', rc, '--idfile', path.join(home, 'ids'), '--nosyslog', ...args], { env: { PATH: process.env.PATH, HOME: home } });
    let r = await fetch(['--keep']);
    expect(r.status, r.stderr).toBe(0);
    const text = fs.readFileSync(out, 'latin1');
    for (const t of ['fetchuser-1', 'fetchuser-2', 'fetchuser-3']) expect(text).toContain(`X-Token: ${t}`);
    expect(text.replace(/\r\n/g, '\n')).toContain('\nFrom the start\n>From quoted\n.\n..\n.hidden\n');
    r = await fetch(['--keep']);
    expect(r.status, 'exit 1: no new mail').toBe(1);
    r = await fetch(['--nokeep', '--all']);
    expect(r.status, r.stderr).toBe(0);
    expect(tokens(m, 'fetchuser')).toEqual([]);
  });

  it('mutt -f pop://: lists every message by subject; d and q delete the first', async () => {
    const m = get();
    await fill(m, 'muttuser');
    const home = fs.mkdtempSync(path.join(m.dir, 'mutt-'));
    const url = `pop://muttuser@127.0.0.1:${m.pop3Port}/`;
    const settings = `set folder=${home} pop_pass="${PASSWORD}" ssl_starttls=no ssl_force_tls=no quit=yes delete=yes index_format="%4C|%s"`;
    const screen = await screenOf(home, ['mutt', '-n', '-F', '/dev/null', '-f', url, '-e', settings], /3\|muttuser three/, ['d', 'q'],
      { PATH: process.env.PATH, HOME: home, TERM: 'xterm' }, 40000, () => m.waitForLog(/pop3\(muttuser\): Disconnected: Logged out .*del=1\/3/));
    expect(screen.split('\n').filter((l) => /^\s*\d+\|/.test(l)).map((l) => l.trim())).toEqual(['1|muttuser one', '2|muttuser two', '3|muttuser three']);
    expect(tokens(m, 'muttuser')).toEqual(['muttuser-2', 'muttuser-3']);
  });

  it('curl pop3://: lists, prints a message as sent, and deletes with -X DELE', async () => {
    const m = get();
    const sent = await fill(m, 'curluser');
    const base = `pop3://127.0.0.1:${m.pop3Port}`;
    const auth = ['-s', '-u', `curluser:${PASSWORD}`];
    const list = await run('curl', [...auth, `${base}/`]);
    expect(list.status, list.stderr).toBe(0);
    expect(list.stdout.toString().trim().split('\r\n').map((l) => l.split(' ')[0])).toEqual(['1', '2', '3']);
    const one = await run('curl', [...auth, `${base}/1`]);
    expect(one.status).toBe(0);
    const trace = TRACE.exec(one.stdout.toString('latin1'));
    expect(one.stdout.subarray(trace![0].length).equals(sent[0])).toBe(true);
    const del = await run('curl', [...auth, '-X', 'DELE', '-I', `${base}/1`]);
    expect(del.status, del.stderr).toBe(0);
    expect(tokens(m, 'curluser')).toEqual(['curluser-2', 'curluser-3']);
  });

  it('s-nail -f pop3://: lists the headers; d 1 and q delete the first', async () => {
    const m = get();
    await fill(m, 'snailuser');
    const r = await run('s-nail', ['-n', '-Sv15-compat', '-Sttycharset=utf-8', `-Spassword=${PASSWORD}`, '-Y', 'headers', '-Y', 'd 1', '-Y', 'q', '-f', `pop3://snailuser@127.0.0.1:${m.pop3Port}`],
      { env: { PATH: process.env.PATH, HOME: m.dir } });
    expect(r.status, r.stderr).toBe(0);
    for (const s of ['snailuser one', 'snailuser two', 'snailuser three']) expect(r.stdout.toString()).toContain(s);
    expect(tokens(m, 'snailuser')).toEqual(['snailuser-2', 'snailuser-3']);
  });
});
