// Configuration: defaults, file, environment over file, and one clear line per bad value.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, ROOT } from '../../src/config';

const dirs: string[] = [];
afterEach(() => { dirs.splice(0).forEach((d) => fs.rmSync(d, { recursive: true, force: true })); });
const file = (text: string): string => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-cfg-'));
  dirs.push(dir);
  const p = path.join(dir, 'mtad.env');
  fs.writeFileSync(p, text);
  return p;
};

describe('configuration', () => {
  it('has the documented defaults', () => {
    const c = loadConfig({ MTAD_CONFIG: '/dev/null' });
    expect(c).toMatchObject({
      hostname: os.hostname().toLowerCase(), domains: [os.hostname().toLowerCase(), 'localhost'],
      host: '0.0.0.0', port: 25, spoolDir: path.join(ROOT, 'spool'), queueDir: path.join(ROOT, 'spool', '.queue'),
      usersFile: path.join(ROOT, 'etc/users'), aliasesFile: path.join(ROOT, 'etc/aliases'),
      maxMessageSize: 10240000, maxRecipients: 100, vrfy: false, expn: false, logLevel: 'info', runAs: '',
      maxClients: 100, maxClientsPerIp: 50, idleTimeout: 300, transactionTimeout: 600,
    });
  });

  it('reads the shipped etc/mtad.env, where every key is commented out', () => {
    const shipped = fs.readFileSync(path.join(ROOT, 'etc', 'mtad.env'), 'utf8');
    expect(loadConfig({})).toMatchObject({ port: 25, host: '0.0.0.0' });
    // every key the code knows is documented there
    const src = fs.readFileSync(path.join(ROOT, 'src', 'config.ts'), 'utf8');
    const keys = [...src.matchAll(/'(MTAD_[A-Z_]+)'/g)].map((m) => m[1]).filter((k) => k !== 'MTAD_CONFIG');
    for (const k of new Set(keys)) expect(shipped, k).toMatch(new RegExp(`^#${k}=`, 'm'));
  });

  it('lets the environment override the file', () => {
    const f = file('MTAD_PORT=2525\nMTAD_HOSTNAME=mail.lab.test\nMTAD_DOMAINS=lab.test, Other.Test\n');
    expect(loadConfig({ MTAD_CONFIG: f })).toMatchObject({ port: 2525, hostname: 'mail.lab.test', domains: ['lab.test', 'other.test'] });
    expect(loadConfig({ MTAD_CONFIG: f, MTAD_PORT: '2626' }).port).toBe(2626);
  });

  it.each([
    ['MTAD_PORT', 'abc', /^MTAD_PORT: "abc" is not a whole number$/],
    ['MTAD_PORT', '70000', /^MTAD_PORT: "70000" is out of range/],
    ['MTAD_HOST', 'localhost', /^MTAD_HOST: "localhost" is not an IP address/],
    ['MTAD_HOSTNAME', 'bad_name!', /^MTAD_HOSTNAME: "bad_name!" is not a valid host name/],
    ['MTAD_DOMAINS', 'lab.test,-x', /^MTAD_DOMAINS: "-x" is not a valid domain name/],
    ['MTAD_MAX_MESSAGE_SIZE', '10k', /^MTAD_MAX_MESSAGE_SIZE: "10k" is not a whole number/],
    ['MTAD_MAX_RECIPIENTS', '0', /^MTAD_MAX_RECIPIENTS: "0" is out of range/],
    ['MTAD_VRFY', 'maybe', /^MTAD_VRFY: "maybe" must be yes or no/],
    ['MTAD_LOG_LEVEL', 'loud', /^MTAD_LOG_LEVEL: "loud" must be one of/],
    ['MTAD_RETRY_MAX_DELAY', '1', /^MTAD_RETRY_MAX_DELAY: "1" must not be less than MTAD_RETRY_MIN_DELAY/],
    ['MTAD_MAX_QUEUE_LIFETIME', '5 days', /^MTAD_MAX_QUEUE_LIFETIME: "5 days" is not a time/],
    ['MTAD_MAX_QUEUE_LIFETIME', '0', /^MTAD_MAX_QUEUE_LIFETIME: "0" is out of range/],
    ['MTAD_DELAY_WARNING', '4y', /^MTAD_DELAY_WARNING: "4y" is not a time/],
    ['MTAD_MAILBOX_SIZE_LIMIT', '50M', /^MTAD_MAILBOX_SIZE_LIMIT: "50M" is not a whole number/],
    ['MTAD_MAILBOX_SIZE_LIMIT', '10000', /^MTAD_MAX_MESSAGE_SIZE: "10240000" is above MTAD_MAILBOX_SIZE_LIMIT \(10000\): a message that big could never be delivered/],
    ['MTAD_RECIPIENT_DELIMITER', '@', /^MTAD_RECIPIENT_DELIMITER: "@" must be empty or characters from/],
  ])('%s=%s is refused with one line naming the key', (key, value, re) => {
    let err: unknown;
    try { loadConfig({ MTAD_CONFIG: '/dev/null', [key]: value }); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toMatch(re);
    expect((err as ConfigError).message).not.toMatch(/\n/);
    expect((err as ConfigError).exitCode).toBe(78);
  });

  it('reads the mailbox keys: Postfix defaults, an empty delimiter as none', () => {
    expect(loadConfig({ MTAD_CONFIG: '/dev/null' })).toMatchObject({ mailboxSizeLimit: 51200000, recipientDelimiter: '+' });
    expect(loadConfig({
      MTAD_CONFIG: '/dev/null', MTAD_RECIPIENT_DELIMITER: '', MTAD_MAILBOX_SIZE_LIMIT: '0', MTAD_MAX_MESSAGE_SIZE: '99999999',
    })).toMatchObject({ recipientDelimiter: '', mailboxSizeLimit: 0 });
    expect(loadConfig({ MTAD_CONFIG: file('MTAD_RECIPIENT_DELIMITER=\n') })).toMatchObject({ recipientDelimiter: '' });
    expect(loadConfig({ MTAD_CONFIG: '/dev/null', MTAD_RECIPIENT_DELIMITER: '+-' })).toMatchObject({ recipientDelimiter: '+-' });
  });

  it('reads the queue lifetime and the delay warning: Postfix defaults, times with units', () => {
    expect(loadConfig({ MTAD_CONFIG: '/dev/null' })).toMatchObject({ maxQueueLifetime: 5 * 86400, delayWarning: 0 });
    expect(loadConfig({ MTAD_CONFIG: '/dev/null', MTAD_MAX_QUEUE_LIFETIME: '2.5', MTAD_DELAY_WARNING: '4h' }))
      .toMatchObject({ maxQueueLifetime: 2.5, delayWarning: 4 * 3600 });
    expect(loadConfig({ MTAD_CONFIG: file('MTAD_MAX_QUEUE_LIFETIME=1w\nMTAD_DELAY_WARNING=30m\n') }))
      .toMatchObject({ maxQueueLifetime: 7 * 86400, delayWarning: 1800 });
  });

  it('refuses an unknown key in the file and a named file that is missing', () => {
    expect(() => loadConfig({ MTAD_CONFIG: file('MTAD_PROT=25\n') })).toThrow(/^MTAD_PROT: unknown key/);
    expect(() => loadConfig({ MTAD_CONFIG: '/nonexistent/mtad.env' })).toThrow(/^MTAD_CONFIG: cannot read \/nonexistent\/mtad.env: no such file/);
  });
});
