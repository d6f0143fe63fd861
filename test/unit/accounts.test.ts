// The users and aliases file formats.
import { describe, expect, it } from 'vitest';
import { parseAliases } from '../../src/accounts/aliases';
import { formatUsers, hashPassword, parseUsers, verifyPassword } from '../../src/accounts/users';

describe('users file', () => {
  it('keeps comments and order when rewritten', () => {
    const text = '# header\nalice:!:Alice A\n\n# bob below\nbob:!:\n';
    const f = parseUsers(text);
    expect([...f.users.keys()]).toEqual(['alice', 'bob']);
    expect(formatUsers(f)).toBe(text);
    f.users.delete('alice');
    f.users.set('carol', { name: 'carol', password: '!', gecos: 'Carol: C' .replace(':', '') });
    expect(formatUsers(f)).toBe('# header\n\n# bob below\nbob:!:\ncarol:!:Carol C\n');
  });

  it('reports bad and duplicate lines instead of trusting them', () => {
    const f = parseUsers('Alice:!:\n../x:!:\nbob:!:\nbob:!:again\n');
    expect([...f.users.keys()]).toEqual(['bob']);
    expect(f.problems).toHaveLength(3);
  });

  it('stores only a salted scrypt hash of the password', () => {
    const h1 = hashPassword('s3cret');
    const h2 = hashPassword('s3cret');
    expect(h1).toMatch(/^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    expect(h1).not.toBe(h2);
    expect(h1).not.toContain('s3cret');
    expect(verifyPassword('s3cret', h1)).toBe(true);
    expect(verifyPassword('wrong', h1)).toBe(false);
  });
});

describe('aliases file', () => {
  it('reads /etc/aliases syntax with continuations and comments', () => {
    const f = parseAliases('# c\nStaff: alice,\n  bob@lab.test, \\carol\npostmaster: alice\n\nlist: a\nlist: b\n');
    expect(Object.fromEntries(f.aliases)).toEqual({ staff: ['alice', 'bob@lab.test', 'carol'], postmaster: ['alice'], list: ['a', 'b'] });
    expect(f.problems).toEqual([]);
  });

  it('refuses pipes, files and includes: mtad only writes mailboxes', () => {
    const f = parseAliases('evil: |/bin/sh -c x, /etc/passwd, :include:/tmp/l, alice\nnothing: |cmd\nbroken line\n');
    expect(f.aliases.get('evil')).toEqual(['alice']);
    expect(f.aliases.has('nothing')).toBe(false);
    expect(f.problems).toHaveLength(6); // three refused targets, one refused + one empty alias, one line without ":"
  });
});
