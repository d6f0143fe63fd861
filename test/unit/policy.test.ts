// Recipient policy: every way of asking for relay is refused, every local form accepted.
import { describe, expect, it } from 'vitest';
import { stripSourceRoute } from '../../src/smtp/internals';
import { Directory, expand, LocalNames, resolveRecipient } from '../../src/policy';

const users = new Map(['alice', 'bob', 'carol'].map((n) => [n, { name: n, password: '!', gecos: '' }]));
const dir: Directory = {
  users,
  aliases: new Map<string, string[]>([
    ['staff', ['alice', 'bob@lab.test']],
    ['everyone', ['staff', 'carol', 'alice']],
    ['loop1', ['loop2']],
    ['loop2', ['loop1', 'bob']],
    ['outside', ['someone@remote.example']],
    ['self', ['self']],
    ['MAILER-DAEMON'.toLowerCase(), ['postmaster']],
  ]),
};
const local: LocalNames = { domains: new Set(['lab.test', 'localhost']), literals: new Set(['[127.0.0.1]', '[ipv6:::1]']) };
const decide = (raw: string) => resolveRecipient(raw, stripSourceRoute(raw), dir, local);

describe('recipient policy', () => {
  it.each([
    ['alice@lab.test', ['alice']],
    ['ALICE@LAB.TEST', ['alice']],
    ['alice@lab.test.', ['alice']],
    ['alice', ['alice']],
    ['alice@localhost', ['alice']],
    ['alice@[127.0.0.1]', ['alice']],
    ['alice@[IPv6:::1]', ['alice']],
    ['alice@[IPv6:0:0:0:0:0:0:0:1]', ['alice']],
    ['staff@lab.test', ['alice', 'bob']],
    ['everyone', ['alice', 'bob', 'carol']],
    ['loop1', ['bob']],
    ['postmaster', ['postmaster']],
    ['PostMaster@lab.test', ['postmaster']],
    ['mailer-daemon', ['postmaster']],
  ])('accepts %s for %j', (raw, boxes) => {
    const v = decide(raw);
    expect(v).toMatchObject({ ok: true, mailboxes: boxes });
  });

  it.each([
    'someone@remote.example',
    'alice@lab.test.remote.example',
    'alice@[10.1.2.3]',
    'alice@[IPv6:2001:db8::1]',
    'alice%remote.example@lab.test',
    'alice%remote.example',
    'remote.example!alice@lab.test',
    'remote!alice',
    '@relay.example:alice@lab.test',
    '@a,@b:alice@lab.test',
    '"alice"@lab.test',
    '"alice@remote.example"@lab.test',
    'alice\\@remote@lab.test',
    'alice@remote.example@lab.test',
    'alice@lab.test@remote.example',
  ])('refuses %s as relay (554 5.7.1)', (raw) => {
    const v = decide(raw);
    expect(v.ok).toBe(false);
    if (!v.ok) expect([v.reply.code, v.reply.enhanced, /Relay access denied/.test(v.reply.text)]).toEqual([554, '5.7.1', true]);
  });

  it.each([
    'eve@lab.test', 'eve', '../etc/passwd', '..', 'a/b', '/etc/passwd', 'alice\x00', 'al\tice', 'Ali ce',
    '-alice', '9lives', 'x'.repeat(33), 'outside', 'self', '.alice', 'alice.smith',
  ])('refuses %j as unknown (550 5.1.1)', (raw) => {
    const v = decide(raw);
    expect(v.ok).toBe(false);
    if (!v.ok) expect([v.reply.code, v.reply.enhanced]).toEqual([550, '5.1.1']);
  });

  it('never echoes control characters back to the client', () => {
    const v = decide('ev\re\n250 ok');
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.reply.text).not.toMatch(/[\r\n]/);
  });

  it('expands aliases in order, without duplicates, ignoring remote targets', () => {
    expect(expand('everyone', dir, local)).toEqual(['alice', 'bob', 'carol']);
    expect(expand('outside', dir, local)).toEqual([]);
  });
});

describe('address extensions (MTAD_RECIPIENT_DELIMITER)', () => {
  const ext: Directory = {
    users: new Map(['alice', 'bob', 'carol', 'mary-ann'].map((n) => [n, { name: n, password: '!', gecos: '' }])),
    aliases: new Map<string, string[]>([
      ['lab', ['alice', 'bob']],
      ['lab+grades', ['carol']],
    ]),
  };
  const names = (delimiter: string): LocalNames => ({ ...local, delimiter });
  const with_ = (raw: string, delimiter = '+') => resolveRecipient(raw, raw, ext, names(delimiter));

  it.each([
    ['alice+lab3@lab.test', ['alice'], '+lab3'],
    ['Alice+Tag@LAB.TEST', ['alice'], '+tag'],
    ['alice+', ['alice'], '+'],
    ['alice+a+b', ['alice'], '+a+b'],
    ['postmaster+x', ['postmaster'], '+x'],
    // An alias with the extension is matched first; without it, the alias's extension goes on to its users.
    ['lab+grades@lab.test', ['carol'], undefined],
    ['LAB+Grades', ['carol'], undefined],
    ['lab+other', ['alice', 'bob'], '+other'],
    ['alice', ['alice'], undefined],
  ])('%s reaches %j with extension %j', (raw, boxes, extension) => {
    const v = with_(raw);
    expect(v).toMatchObject({ ok: true, mailboxes: boxes });
    if (v.ok) expect(v.extension).toBe(extension);
  });

  it('finds a user whose name contains the delimiter before cutting at it', () => {
    expect(with_('mary-ann', '-')).toEqual({ ok: true, local: 'mary-ann', mailboxes: ['mary-ann'] });
    // Cut at the first delimiter only, as Postfix does: "mary" is nobody.
    expect(with_('mary-ann-x', '-').ok).toBe(false);
    expect(with_('bob-x', '-+')).toMatchObject({ ok: true, mailboxes: ['bob'], extension: '-x' });
    expect(with_('bob+x', '-+')).toMatchObject({ ok: true, mailboxes: ['bob'], extension: '+x' });
  });

  it.each([
    ['alice+lab3', ''],
    ['alice-lab3', '+'],
    ['eve+x', '+'],
    ['+x', '+'],
    ['alice+x@remote.example', '+'],
  ])('refuses %s with delimiter %j, naming the whole address', (raw, delimiter) => {
    const v = with_(raw, delimiter);
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.reply.text).toContain(`<${raw}>`);
  });
});
