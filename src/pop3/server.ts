// The POP3 listener: limits on connections (in all and per client address, as
// on the SMTP side), then one Pop3Session per connection. Bound before root is
// given up, it reads no client byte until start() is called after the drop.
import net from 'node:net';
import type { User } from '../accounts/users';
import { ClientCounter } from '../clients';
import type { Config } from '../config';
import { log } from '../log';
import type { TlsFiles } from '../tls';
import type { MaildropContext } from './maildrop';
import { Pop3Session } from './session';

export interface Pop3Deps {
  config: Config;
  maildrop: MaildropContext;
  users: () => Promise<ReadonlyMap<string, User>>;
  /** The certificate for STLS, the same as SMTP's STARTTLS; null: no STLS. */
  tls?: TlsFiles | null;
}

export class Pop3Server {
  readonly net: net.Server;
  private started = false;
  private waiting: net.Socket[] = [];
  private sessions = new Set<Pop3Session>();
  private readonly perIp: ClientCounter;
  private inUse = new Set<string>();

  constructor(private readonly deps: Pop3Deps) {
    this.perIp = new ClientCounter(deps.config.maxClientsPerIp);
    // Paused: nothing is read from a client until a session takes the socket.
    this.net = net.createServer({ pauseOnConnect: true }, (socket) => {
      if (this.started) this.accept(socket);
      else this.waiting.push(socket);
    });
    this.net.on('error', (err) => log.error(`pop3 listener: ${err.message}`));
  }

  /** Serves the connections that waited and every one after; called once root is given up. */
  start(): void {
    this.started = true;
    for (const s of this.waiting.splice(0)) this.accept(s);
  }

  private accept(socket: net.Socket): void {
    const { config } = this.deps;
    const ip = socket.remoteAddress ?? '';
    socket.on('error', () => undefined);
    if (!ip) { socket.destroy(); return; } // gone before we looked
    const tooMany = config.maxClients && this.sessions.size >= config.maxClients ? `in all (MTAD_MAX_CLIENTS=${config.maxClients})`
      : !this.perIp.admit(ip) ? `from this address (MTAD_MAX_CLIENTS_PER_IP=${this.perIp.limit})` : null;
    if (tooMany) {
      log.info(`pop3-login: Disconnected (too many connections ${tooMany}): rip=${ip}`);
      socket.end(`-ERR [SYS/TEMP] Too many connections ${tooMany.replace(/ \(.*/, '')}, try again later.\r\n`);
      setTimeout(() => socket.destroy(), 5000).unref();
      return;
    }
    const session = new Pop3Session(socket, {
      hostname: config.hostname,
      maildrop: this.deps.maildrop,
      users: this.deps.users,
      inUse: this.inUse,
      maxLineLength: config.maxLineLength,
      maxErrors: config.maxErrors,
      idleTimeoutMs: config.pop3IdleTimeout * 1000,
      authDelayMs: config.pop3AuthDelay * 1000,
      trace: config.trace,
      tls: this.deps.tls ?? null,
      tlsRequired: config.tlsRequired,
    });
    this.sessions.add(session);
    void session.ended.then(() => {
      this.sessions.delete(session);
      this.perIp.release(ip);
    });
  }

  /** Stops accepting; sessions that did not QUIT end without deleting; removals in progress finish. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.net.close(() => resolve()));
    for (const s of this.waiting.splice(0)) s.destroy();
    for (const s of this.sessions) s.shutdown();
    await Promise.all([closed, ...[...this.sessions].map((s) => s.ended)]);
  }
}
