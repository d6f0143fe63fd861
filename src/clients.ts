// Connections per client address, so that one address cannot hold every slot
// (Postfix's smtpd_client_connection_count_limit). One counter per server: the
// SMTP server has one, the POP3 server can have its own. Every address is
// limited, this machine's own 127.0.0.1 too: a local user is a client like any
// other, and local submission (bin/sendmail) waits out a 421 instead of failing.

/** ::ffff:192.0.2.1 (an IPv4 client on a dual-stack socket) counts as 192.0.2.1. */
export function clientKey(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1] : address.toLowerCase();
}

export class ClientCounter {
  private readonly open = new Map<string, number>();

  /** `limit`: simultaneous connections allowed from one address; 0 means no limit. */
  constructor(readonly limit: number) {}

  /** Counts a new connection from `address`, or returns false (counting nothing) when that address is at the limit. */
  admit(address: string): boolean {
    const key = clientKey(address);
    const n = this.open.get(key) ?? 0;
    if (this.limit && n >= this.limit) return false;
    this.open.set(key, n + 1);
    return true;
  }

  /** Ends a connection that admit() counted. */
  release(address: string): void {
    const key = clientKey(address);
    const n = (this.open.get(key) ?? 1) - 1;
    if (n > 0) this.open.set(key, n); else this.open.delete(key);
  }

  /** Connections from `address` now. */
  count(address: string): number {
    return this.open.get(clientKey(address)) ?? 0;
  }
}
