// Relay and user enumeration, judged by nmap's own NSE scripts (not by us), run
// against a real mtad on 127.0.0.1 and its test port only. The "+" before a script
// name forces it on a port that is not 25, 465 or 587.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { mtadForFile, removeInstance, startMtad } from '../helpers/mtad';

const mtad = mtadForFile({ users: ['alice', 'bob'] });

/** Runs one NSE script at mtad's port and returns its result lines (the "|" lines after the port). */
async function nse(script: string, args: string[], port = mtad().port): Promise<string[]> {
  const { stdout } = await promisify(execFile)('nmap', [
    '-n', '-Pn', '-sT', '-v', '-p', String(port), '--script', `+${script}`,
    '--script-args', args.join(','), '127.0.0.1',
  ], { timeout: 60000 });
  const lines = stdout.split('\n');
  const at = lines.findIndex((l) => l.startsWith(`${port}/tcp`));
  expect(at, stdout).toBeGreaterThanOrEqual(0);
  const result = [];
  for (let i = at + 1; i < lines.length && lines[i].startsWith('|'); i++) result.push(lines[i]);
  console.log(`nmap --script +${script} --script-args ${args.join(',')}:\n${result.join('\n')}`);
  return result;
}

const rejected = (re: RegExp): number => mtad().output().split('\n').filter((l) => /NOQUEUE: reject: RCPT/.test(l) && re.test(l)).length;

describe('nmap smtp-open-relay', () => {
  it.each(['lab.test', 'remote.test'])('finds no relay, with %s as the domain of its tests', async (domain) => {
    const before = rejected(/./);
    const out = await nse('smtp-open-relay', [`smtp-open-relay.domain=${domain}`, 'smtp-open-relay.ip=127.0.0.1']);
    expect(out).toEqual(["|_smtp-open-relay: Server doesn't seem to be an open relay, all tests failed"]);
    // It did talk to mtad: each of its relay tricks was refused at RCPT.
    expect(rejected(/./) - before).toBeGreaterThanOrEqual(14);
    expect(mtad().output()).not.toMatch(/status=sent/);
  });
});

describe('nmap smtp-enum-users', () => {
  it('finds no user with the default settings (its own name list, RCPT then VRFY then EXPN)', async () => {
    const out = await nse('smtp-enum-users', ['smtp-enum-users.domain=lab.test']);
    expect(out).toEqual(['| smtp-enum-users: ', "|_  Couldn't find any accounts"]);
  });

  it('finds no user through VRFY or EXPN even when it is given the right names', async () => {
    const db = path.join(mtad().dir, 'names');
    fs.writeFileSync(db, 'alice\nbob\npostmaster\nroot\nnosuchuser\n');
    const out = await nse('smtp-enum-users', ['smtp-enum-users.domain=lab.test', `userdb=${db}`, 'smtp-enum-users.methods={VRFY,EXPN}']);
    expect(out).toEqual(['| smtp-enum-users: ', "|_  Couldn't find any accounts"]);
  });

  it('does learn, through RCPT, that a user it names exists: the answer at RCPT time tells (as with Postfix)', async () => {
    // Not a leak to fix: an MTA must say at RCPT time whether it will take mail for
    // an address, or else accept everything and bounce later (backscatter).
    const db = path.join(mtad().dir, 'rcpt-names');
    fs.writeFileSync(db, 'alice\n');
    const out = await nse('smtp-enum-users', ['smtp-enum-users.domain=lab.test', `userdb=${db}`, 'smtp-enum-users.methods={RCPT}']);
    expect(out).toEqual(['| smtp-enum-users: ', '|_  RCPT, alice']);
  });

  it('would find users through VRFY if the operator turned it on (MTAD_VRFY=yes): the verdicts above are not blind', async () => {
    const open = await startMtad({ users: ['alice', 'bob'], env: { MTAD_VRFY: 'yes' } });
    try {
      const db = path.join(open.dir, 'names');
      fs.writeFileSync(db, 'alice\nbob\n');
      const out = await nse('smtp-enum-users', ['smtp-enum-users.domain=lab.test', `userdb=${db}`, 'smtp-enum-users.methods={VRFY}'], open.port);
      expect(out).toEqual(['| smtp-enum-users: ', '|   VRFY, alice', '|_  VRFY, bob']);
    } finally {
      await open.stop();
      removeInstance(open.dir);
    }
  });
});
