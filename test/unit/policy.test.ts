// Recipient policy: every way of asking for relay is refused, every local form accepted.
import { describe, expect, it } from 'vitest';
import { stripSourceRoute } from '../../src/smtp/internals';
import { Directory, expand, EXPANSION_LIMIT, LocalNames, NESTING_LIMIT, resolveRecipient } from '../../src/policy';

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
    // A quoted local part is the same mailbox (RFC 5321 4.1.2), escapes included.
    ['"alice"@lab.test', ['alice']],
    ['"ALICE"@LAB.TEST', ['alice']],
    ['"al\\ice"@lab.test', ['alice']],
    ['"alice"', ['alice']],
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
    '"alice@remote.example"@lab.test',
    '"alice%remote.example"@lab.test',
    '"alice"@remote.example',
    'alice\\@remote@lab.test',
    'alice@remote.example@lab.test',
    'alice@lab.test@remote.example',
  ])('refuses %s as relay (554 5.7.1)', (raw) => {
    const v = decide(raw);
    expect(v.ok).toBe(false);
    if (!v.ok) expect([v.reply.code, v.reply.enhanced, /Relay access denied/.test(v.reply.text)]).toEqual([554, '5.7.1', true]);
  });

  it.each([
    'eve@lab.test', 'eve', '../etc/passwd', '..', 'a/b', '/etc/passwd', '"ali ce"@lab.test', '"eve"',
    '-alice', '9lives', 'x'.repeat(33), 'outside', 'self', '.alice', 'alice.smith',
  ])('refuses %j as unknown (550 5.1.1)', (raw) => {
    const v = decide(raw);
    expect(v.ok).toBe(false);
    if (!v.ok) expect([v.reply.code, v.reply.enhanced]).toEqual([550, '5.1.1']);
  });

  // Issue 10 item 7: only our domains exactly (case aside, one root dot allowed);
  // anything that merely contains, begins or ends like one of them is relay.
  it.each([
    'alice@evil-lab.test', 'alice@x.lab.test', 'alice@lab.test.evil.example', 'alice@lab.testt', 'alice@lab.tes',
    'alice@ab.test', 'alice@llab.test', 'alice@lab-test', 'alice@labtest', 'alice@lab.test..', 'alice@.lab.test',
    'alice@lab..test', 'alice@LAB.TEST.evil.example', 'alice@localhost.evil.example', 'alice@evillocalhost',
    'alice@lab.test.​', 'alice@[127.0.0.2]', 'alice@[127.0.0.1].evil.example', 'alice@[127.1]',
    'alice@[127.000.000.001]', 'alice@[IPv6:::2]', 'alice@[IPv6:::ffff:127.0.0.1]', 'alice@[lab.test]', 'alice@127.0.0.1',
    'alice@xn--lb-8kc.test', 'alice@lаb.test', 'alice@lab.tеst', 'alice@ｌab.test', 'alice@lab.test。',
  ])('refuses the look-alike %j as relay (554 5.7.1)', (raw) => {
    const v = decide(raw);
    expect(v.ok ? 'accepted' : [v.reply.code, v.reply.enhanced, /Relay access denied/.test(v.reply.text)]).toEqual([554, '5.7.1', true]);
  });

  it('folds case in A-Z only: a Kelvin sign is not a "k"', () => {
    const withK: LocalNames = { domains: new Set(['kit.test']), literals: new Set() };
    expect(resolveRecipient('alice@KIT.test', 'alice@KIT.test', dir, withK).ok).toBe(true);
    const v = resolveRecipient('alice@Kit.test', 'alice@Kit.test', dir, withK);
    expect(v.ok ? 'accepted' : v.reply.code).toBe(554);
  });

  it.each(['älice@lab.test', 'alicе@lab.test', 'Ċlice', 'a @lab.test', '"älice"@lab.test', '�@lab.test'])(
    'refuses the non-ASCII local part %j at our domain with 553 5.6.7', (raw) => {
      const v = decide(raw);
      expect(v.ok ? 'accepted' : [v.reply.code, v.reply.enhanced]).toEqual([553, '5.6.7']);
      if (!v.ok) expect(v.reply.text).toMatch(/^<[\x20-\x7e]*>: Non-ASCII recipient address not permitted/);
    });

  it.each(['"alice', '"alice"x@lab.test', 'alice@', '""@lab.test', 'alice\x00', 'al\tice', 'ev\re@lab.test',
    'Ali ce', 'alice+x y@lab.test', 'al(ice)', 'al<ice', 'a,b@lab.test', 'al\\ice'])(
    'refuses %j as bad syntax (501 5.1.3)', (raw) => {
      const v = decide(raw);
      expect(v.ok ? 'accepted' : [v.reply.code, v.reply.enhanced]).toEqual([501, '5.1.3']);
    });

  it('never echoes control characters back to the client', () => {
    const v = decide('ev\re\n250 ok');
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.reply.text).not.toMatch(/[\r\n]/);
  });

  it('expands aliases in order, without duplicates, ignoring remote targets', () => {
    expect(expand('everyone', dir, local).mailboxes).toEqual(['alice', 'bob', 'carol']);
    expect(expand('outside', dir, local).mailboxes).toEqual([]);
  });

  it('expands each name once per recipient: a layered fan-out costs one look-up per alias, not one per path', () => {
    // 8 levels of 6 names, each naming all 6 of the next: 6^8 paths through 55 aliases.
    const aliases = new Map<string, string[]>();
    const level = (i: number): string[] => Array.from({ length: 6 }, (_, j) => `l${i}x${j}`);
    for (let i = 0; i < 8; i++) for (const n of level(i)) aliases.set(n, level(i + 1));
    for (const n of level(8)) aliases.set(n, ['alice', 'bob']);
    aliases.set('fan', level(0));
    let lookups = 0;
    const counting = new Proxy(aliases, {
      get(target, prop) {
        if (prop === 'get') return (k: string) => { lookups++; return target.get(k); };
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const d: Directory = { users, aliases: counting };
    expect(expand('fan', d, local)).toEqual({ mailboxes: ['alice', 'bob'] });
    // One look-up for the recipient and one per target written in the file, at most.
    const targets = [...aliases.values()].reduce((n, t) => n + t.length, 0);
    expect(lookups).toBeLessThanOrEqual(1 + targets);
  });

  it(`gives up past ${EXPANSION_LIMIT} addresses or ${NESTING_LIMIT} levels, with 451 4.6.0 and a line for the log`, () => {
    const names = (n: number): string[] => Array.from({ length: n }, (_, i) => `u${i}`);
    const chain = (n: number): Array<[string, string[]]> => Array.from({ length: n }, (_, i) => [`d${i}`, [i === n - 1 ? 'alice' : `d${i + 1}`]]);
    const ok: Directory = { users, aliases: new Map([['big', [...names(EXPANSION_LIMIT - 1), 'alice']], ...chain(NESTING_LIMIT)]) };
    expect(expand('big', ok, local)).toEqual({ mailboxes: ['alice'] });
    expect(expand('d0', ok, local)).toEqual({ mailboxes: ['alice'] });
    const over: Directory = { users, aliases: new Map([['big', [...names(EXPANSION_LIMIT), 'alice']], ...chain(NESTING_LIMIT + 2)]) };
    for (const name of ['big', 'd0']) {
      const v = resolveRecipient(`${name}@lab.test`, `${name}@lab.test`, over, local);
      expect(v.ok).toBe(false);
      if (v.ok) continue;
      expect([v.reply.code, v.reply.enhanced]).toEqual([451, '4.6.0']);
      expect(v.reply.text).toMatch(/Alias expansion error/);
      expect(v.warning).toMatch(new RegExp(`alias ${name}: unreasonable expansion`));
    }
    // Postmaster is no exception: its mail waits too, rather than going half-expanded.
    const pm = resolveRecipient('postmaster', 'postmaster', { users, aliases: new Map([['postmaster', ['big']], ['big', names(EXPANSION_LIMIT + 1)]]) }, local);
    expect(pm.ok ? 250 : pm.reply.code).toBe(451);
  });

  it('still ends a loop where it closes, and an alias naming itself is the user', () => {
    expect(expand('loop1', dir, local).mailboxes).toEqual(['bob']);
    const d: Directory = { users, aliases: new Map([['alice', ['alice', 'team']], ['team', ['alice', 'bob']]]) };
    expect(expand('alice', d, local).mailboxes).toEqual(['alice', 'bob']);
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
    // An extension is written into Delivered-To: no space or special in it (the fuzzer found "alice+x y").
    ['alice+x y', '+'],
    ['"alice+x y"@lab.test', '+'],
    ['"alice+x(y)"', '+'],
  ])('refuses %s with delimiter %j, naming the whole address', (raw, delimiter) => {
    const v = with_(raw, delimiter);
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.reply.text).toContain(`<${raw}>`);
  });
});
