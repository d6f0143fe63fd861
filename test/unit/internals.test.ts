// The one file that reaches into smtp-server must break loudly if the library moves.
import { describe, expect, it } from 'vitest';
import { installInternals, PINNED_VERSION, splitAddressCommand } from '../../src/smtp/internals';

describe('smtp-server internals', () => {
  it('is pinned to the installed version and finds every method it patches', () => {
    const pkg = require('smtp-server/package.json') as { version: string };
    const lock = require('../../package.json') as { dependencies: Record<string, string> };
    expect(pkg.version).toBe(PINNED_VERSION);
    expect(lock.dependencies['smtp-server']).toBe(PINNED_VERSION);
    expect(() => installInternals()).not.toThrow();
  });

  it.each([
    ['MAIL FROM: tode@cremona.polimi.it', { verb: 'MAIL FROM', inner: 'tode@cremona.polimi.it', params: '' }],
    ['MAIL FROM:<a@b> SIZE=10', { verb: 'MAIL FROM', inner: 'a@b', params: ' SIZE=10' }],
    ['RCPT TO: bob', { verb: 'RCPT TO', inner: 'bob', params: '' }],
    ['rcpt to:<@a,@b:c@d>', { verb: 'rcpt to', inner: '@a,@b:c@d', params: '' }],
    ['MAIL FROM:<>', { verb: 'MAIL FROM', inner: '', params: '' }],
    ['MAIL FROM:', null],
    ['MAIL FROM:<a@b', null],
  ])('splits %j', (cmd, want) => {
    expect(splitAddressCommand(cmd)).toEqual(want);
  });
});
