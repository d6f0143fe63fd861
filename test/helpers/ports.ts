// Loopback ports for tests: free ones to hand to a program that cannot report
// the port it bound, and a wait until something listens on one.
import fs from 'node:fs';
import net from 'node:net';

/**
 * `n` distinct ports free on 127.0.0.1, for programs that cannot report the port
 * they bound. They are picked below the kernel's ephemeral range, where no
 * outgoing connection of this machine can take one before the program binds it,
 * and all are held until all are chosen, so no two are the same.
 */
export async function freePorts(n: number): Promise<number[]> {
  const low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  const floor = 10000;
  const servers: net.Server[] = [];
  try {
    for (let tries = 0; servers.length < n; tries++) {
      if (tries > 200) throw new Error(`no free port between ${floor} and ${low}`);
      const s = net.createServer();
      const port = floor + Math.floor(Math.random() * (low - floor));
      const ok = await new Promise<boolean>((resolve) => {
        s.once('error', () => resolve(false));
        s.listen(port, '127.0.0.1', () => resolve(true));
      });
      if (ok) servers.push(s);
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

/** Resolves once something accepts a connection on 127.0.0.1:port, polling for up to timeoutMs. */
export async function waitForListener(port: number, timeoutMs = 30000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
