// The per-address connection count shared by the SMTP and POP3 servers.
import { expect, it } from 'vitest';
import { ClientCounter } from '../../src/clients';

it('admits up to the limit per address, counts an IPv4 client on a dual-stack socket as its IPv4 address, and frees slots', () => {
  const c = new ClientCounter(2);
  expect([c.admit('192.0.2.1'), c.admit('::ffff:192.0.2.1'), c.admit('192.0.2.1')]).toEqual([true, true, false]);
  expect(c.admit('192.0.2.2')).toBe(true);
  expect(c.admit('2001:DB8::1')).toBe(true);
  expect(c.count('2001:db8::1')).toBe(1);
  c.release('::FFFF:192.0.2.1');
  expect(c.count('192.0.2.1')).toBe(1);
  expect(c.admit('192.0.2.1')).toBe(true);
  c.release('2001:db8::1');
  expect(c.count('2001:db8::1')).toBe(0);
});

it('limits this machine\'s own loopback addresses like any other (a local user can be the one holding every slot)', () => {
  const c = new ClientCounter(1);
  expect([c.admit('127.0.0.1'), c.admit('::ffff:127.0.0.1'), c.admit('::1'), c.admit('::1')]).toEqual([true, false, true, false]);
  expect([c.admit('127.0.0.2'), c.admit('127.0.0.2')]).toEqual([true, false]);
  expect(c.count('127.0.0.1')).toBe(1);
});

it('has no limit at 0', () => {
  const c = new ClientCounter(0);
  for (let i = 0; i < 1000; i++) expect(c.admit('127.0.0.1')).toBe(true);
  expect(c.count('127.0.0.1')).toBe(1000);
});
