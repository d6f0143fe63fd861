// The daemon: binds the port, gives up root before any client byte is read,
// checks that it can do its job, delivers what the queue holds, and serves until
// told to stop. Every operator mistake becomes a StartupError: one line, an exit code.
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { SMTPServer } from 'smtp-server';
import { AccountDirectory, UntrustedFile } from './accounts/directory';
import path from 'node:path';
import { Config, describeErrno, ROOT } from './config';
import { DeliveryAgent } from './delivery/agent';
import { Deliverer } from './delivery/deliverer';
import { sweepStaleLocks } from './delivery/locks';
import { redoRemovals } from './delivery/removal';
import { Pop3Server } from './pop3/server';
import { log, setLogLevel } from './log';
import { POSTMASTER } from './policy';
import { Queue } from './queue/queue';
import { createSmtpServer, localNames } from './smtp/server';
import { lockQueue, lockSpool, pidFileHolder, PidLock, queuePidFile, spoolPidFile } from './queue/pidfile';
import { TlsError, TlsFiles } from './tls';
import { mailboxMode } from './system/spool';
import { adoptCheckoutSpool, chooseRunAs, closedAncestor, dropPrivileges, StartupError } from './system/privileges';
import type { SystemUser } from './system/passwd';

export { StartupError };

export interface Daemon {
  address: AddressInfo;
  /** Stops accepting, lets transactions finish (or answers 421 after the grace time), finishes deliveries. */
  close(): Promise<void>;
  /** SIGHUP: reads again what may change while running (the accounts, the TLS certificate); never stops mtad. */
  reload(): void;
}

export async function startDaemon(config: Config): Promise<Daemon> {
  setLogLevel(config.logLevel);
  const runAs = chooseRunAs(config.runAs, config.spoolDir);
  const queue = new Queue(config.queueDir);
  const accounts = new AccountDirectory(config.usersFile, config.aliasesFile);
  const directory = () => accounts.current();
  const deliverer = new Deliverer({
    spoolDir: config.spoolDir,
    lockTimeoutMs: config.lockTimeout * 1000,
    staleLockMs: config.staleLockTime * 1000,
    createMode: createMode(config.spoolDir),
    intentDir: queue.appendingDir,
    sizeLimit: config.mailboxSizeLimit,
  });
  const agent = new DeliveryAgent(config, queue, deliverer, directory, localNames(config));
  const receiving = new Set<Promise<unknown>>();
  const tls = loadTls(config, runAs);
  const server = createSmtpServer({ config, queue, agent, directory, receiving, tls });
  const pop3 = config.pop3Port === null ? null : new Pop3Server({
    config,
    users: async () => (await directory()).users,
    maildrop: { spoolDir: config.spoolDir, deliverer, lockTimeoutMs: config.lockTimeout * 1000, staleLockMs: config.staleLockTime * 1000, journalDir: removalDir(config) },
    tls,
  });

  // POP3 is bound first and reads nothing until start(): SMTP's bind drops root at once.
  const pop3Address = pop3 ? await listenPop3(pop3, config) : null;
  let address: AddressInfo;
  try {
    address = await listen(server, config, () => {
      if (runAs) {
        // Only once the ports are ours: a start that fails to bind changes nothing on disk. Said at
        // once, so that a start that fails later still tells what it changed.
        const adopted = config.runAs ? [] : adoptCheckoutSpool(config.spoolDir, path.join(ROOT, 'spool'), runAs);
        if (adopted.length) log.info(`gave ${adopted.join(', ')} to ${userLabel(runAs)}, the user mtad runs as`);
        dropPrivileges(runAs);
        // Read again as the user mtad now is: a key only root can read would work until the first SIGHUP.
        try {
          tls?.loadSync();
        } catch (err) {
          throw new StartupError(`mtad: user ${userLabel(runAs)}, which mtad runs as, cannot use the TLS files: ${(err as Error).message} ` +
            `(chown ${runAs.name || runAs.uid} ${config.tlsKey}; chmod 600 ${config.tlsKey})`, 77);
        }
      }
      pop3?.start();
    });
  } catch (err) {
    pop3?.net.close();
    throw err;
  }
  const pidFds: number[] = [];
  try {
    checkSpoolAccess(config, runAs);
    // One spool, one mtad: taken before anything in the spool or the queue is
    // touched, since the sweep below trusts that what it finds was left by a dead mtad.
    pidFds.push(await takePidLock('spool', config.spoolDir));
    checkQueueAccess(config, runAs);
    pidFds.push(await takePidLock('queue', config.queueDir));
    queue.initSync();
    // A POP3 removal a kill interrupted is finished before the locks it left are swept.
    for (const r of redoRemovals(config.spoolDir, removalDir(config))) {
      if (r.why) log.warn(`mailbox ${r.mailbox}: a POP3 removal was interrupted by a crash, but ${r.why}; left as it is (record kept in ${removalDir(config)})`);
      else log.info(`mailbox ${r.mailbox}: finished a POP3 removal interrupted by a crash (${r.done} bytes removed)`);
    }
    const swept = sweepStaleLocks(config.spoolDir, queue.appendingDir, config.staleLockTime * 1000);
    for (const name of swept.removed) log.info(`removed stale lock ${name} left by an earlier mtad`);
    for (const r of swept.rolledBack) log.warn(`mailbox ${r.mailbox}: removed ${r.bytes} bytes of an append interrupted by a crash`);
    for (const r of swept.leftAlone) log.warn(`mailbox ${r.mailbox}: an append was interrupted by a crash, but ${r.why}; left as it is`);
    let accountsNow;
    try {
      accountsNow = accounts.loadSync();
    } catch (err) {
      if (err instanceof UntrustedFile) throw new StartupError(`mtad: ${err.message}`, 77);
      throw new StartupError(`mtad: cannot read the accounts: ${describeErrno(err)} (${config.usersFile}, ${config.aliasesFile})`, 66);
    }
    // Said now, not first found by a refused RCPT (mtad starts all the same: the others' mail flows).
    for (const name of [...accountsNow.users.keys(), POSTMASTER]) {
      const why = deliverer.mailboxState(name).unwritable;
      if (why) log.error(`${why}: its mail will be refused with 450 4.2.0 until that is fixed`);
    }
  } catch (err) {
    server.close();
    pop3?.net.close();
    for (const fd of pidFds) fs.closeSync(fd);
    throw err;
  }

  const who = process.getuid ? `${userLabel(runAs)} (uid ${process.getuid()})` : 'this user';
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  if (pop3Address) {
    log.info(`POP3 on ${pop3Address.family === 'IPv6' ? `[${pop3Address.address}]` : pop3Address.address}:${pop3Address.port}` +
      `${config.pop3PortFollows && config.port !== 0 ? ` (MTAD_PORT + 85; MTAD_POP3_PORT chooses another, off turns it off)` : ''}`);
  }
  log.info(`listening on ${shown}:${address.port} as ${config.hostname}, domains ${config.domains.join(',')}, ` +
    `spool ${config.spoolDir}, running as ${who}`);
  if (tls) {
    log.info(`TLS: STARTTLS${pop3 ? ' and STLS' : ''} offered${config.tlsRequired ? ' and required' : ''}, certificate ${config.tlsCert}: ${tls.current.summary}`);
    if (tls.current.expired) log.warn(`TLS: the certificate ${config.tlsCert} has expired: clients will refuse it (make a new one with mta-certificate --force)`);
  }
  await agent.recover();

  let closing: Promise<void> | null = null;
  return {
    address,
    close() {
      closing ??= (async () => {
        log.info('stopping: no new connections; waiting for transactions and deliveries');
        await Promise.all([new Promise<void>((resolve) => server.close(() => resolve())), pop3?.close()]);
        while (receiving.size) await Promise.allSettled([...receiving]);
        await agent.close();
        for (const fd of pidFds) fs.closeSync(fd);
        log.info('stopped');
      })();
      return closing;
    },
    reload() {
      // Each part rereads its files, logs one line, and keeps what it had if the new ones are refused.
      void accounts.reloadNow().catch((err) => log.warn(`accounts: ${(err as Error).message}`));
      tls?.reload();
    },
  };
}

function loadTls(config: Config, runAs: SystemUser | null): TlsFiles | null {
  if (!config.tlsCert || !config.tlsKey) return null;
  try {
    return new TlsFiles(config.tlsCert, config.tlsKey, [process.geteuid?.() ?? 0, ...(runAs ? [runAs.uid] : [])]);
  } catch (err) {
    if (err instanceof TlsError) throw new StartupError(`mtad: ${err.message}`, err.exitCode);
    throw err;
  }
}

function listen(server: SMTPServer, config: Config, whenBound: () => void): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const net = (server as unknown as { server: import('node:net').Server }).server;
    const onError = (err: NodeJS.ErrnoException): void => reject(bindError(err, config));
    net.once('error', onError);
    server.listen(config.port, config.host, () => {
      net.off('error', onError);
      // Synchronously, before the event loop can hand us a single client byte.
      try {
        whenBound();
      } catch (err) {
        server.close();
        reject(err);
        return;
      }
      net.on('error', (err) => log.error(`listener: ${err.message}`));
      resolve(net.address() as AddressInfo);
    });
  });
}

/** Takes the spool's or the queue's pid lock: the descriptor to keep, or the StartupError (75) that names the mtad holding it. */
async function takePidLock(what: 'spool' | 'queue', dir: string): Promise<number> {
  const file = what === 'spool' ? spoolPidFile(dir) : queuePidFile(dir);
  let lock: PidLock;
  try {
    lock = what === 'spool' ? await lockSpool(dir) : await lockQueue(dir);
  } catch (err) {
    // A lock file left by an mtad that ran as another user: if one holds it still, name it.
    const holder = pidFileHolder(file);
    if (holder === null) throw new StartupError(`mtad: cannot open ${file}, the lock of the ${what}: ${describeErrno(err)}`, 77);
    lock = { holder };
  }
  if ('fd' in lock) return lock.fd;
  throw new StartupError(`mtad: another mtad${lock.holder ? ` (pid ${lock.holder})` : ''} is already running on the ${what} ${dir}`, 75);
}

/** Where POP3 removals keep their record and tail while they run (see delivery/removal.ts). */
function removalDir(config: Config): string {
  return path.join(config.queueDir, 'removing');
}

function listenPop3(pop3: Pop3Server, config: Config): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    // Without root, SMTP's low port fails too: its message (and its advice, which moves POP3 with it) comes first.
    const onError = (err: NodeJS.ErrnoException): void => reject((err.code === 'EACCES' || err.code === 'EPERM') && config.port > 0 && config.port < 1024
      ? bindError(err, config) : pop3BindError(err, config));
    pop3.net.once('error', onError);
    pop3.net.listen(config.pop3Port!, config.pop3Host, () => {
      pop3.net.off('error', onError);
      resolve(pop3.net.address() as AddressInfo);
    });
  });
}

function pop3BindError(err: NodeJS.ErrnoException, config: Config): StartupError {
  const where = `POP3 port ${config.pop3Port} on ${config.pop3Host}`;
  // A port that followed MTAD_PORT was not the user's choice: say where it came from.
  const why = config.pop3PortFollows ? ` (MTAD_PORT ${config.port} + 85)` : '';
  const other = config.pop3Port === 2610 ? 2611 : 2610;
  switch (err.code) {
    case 'EADDRINUSE':
      return new StartupError(`mtad: ${where}${why} is already in use (Dovecot, or another POP3 server?): stop it, or set MTAD_POP3_PORT=${other}, or MTAD_POP3_PORT=off`, 69);
    case 'EACCES':
    case 'EPERM':
      return new StartupError(`mtad: ${where}${why} needs root: run sudo node bin/mtad, or set MTAD_PORT=2525 (POP3 then on 2610)`, 77);
    case 'EADDRNOTAVAIL':
      return new StartupError(`mtad: MTAD_POP3_HOST=${config.pop3Host} is not an address of this machine`, 78);
    default:
      return new StartupError(`mtad: cannot listen on ${where}: ${err.code ?? err.message}`, 71);
  }
}

function bindError(err: NodeJS.ErrnoException, config: Config): StartupError {
  const where = `port ${config.port} on ${config.host}`;
  switch (err.code) {
    case 'EADDRINUSE':
      // Suggesting the very port that is taken would send the newcomer round in a circle.
      return new StartupError(`mtad: ${where} is already in use (another mail server, such as Postfix or Exim?): stop it, or set MTAD_PORT=${config.port === 2525 ? 2526 : 2525}`, 69);
    case 'EACCES':
    case 'EPERM':
      return new StartupError(`mtad: ${where} needs root: run sudo node bin/mtad, or set MTAD_PORT=2525`, 77);
    case 'EADDRNOTAVAIL':
      return new StartupError(`mtad: MTAD_HOST=${config.host} is not an address of this machine`, 78);
    default:
      return new StartupError(`mtad: cannot listen on ${where}: ${err.code ?? err.message}`, 71);
  }
}

const whoLabel = (runAs: SystemUser | null): string => (runAs ? `user ${userLabel(runAs)} (uid ${runAs.uid})` : 'this user');

function checkSpoolAccess(config: Config, runAs: SystemUser | null): void {
  const who = whoLabel(runAs);
  const fix = runAs ? `chown ${runAs.name || runAs.uid} ${config.spoolDir}, or set MTAD_RUN_AS to a user who can` : 'run mtad as the owner, or choose another MTAD_SPOOL_DIR';
  const closed = closedAncestor(config.spoolDir);
  if (closed) {
    throw new StartupError(`mtad: ${who} cannot reach the spool ${config.spoolDir}: ${closed} is closed to it ` +
      '(put mtad where other users can enter, e.g. /opt/mtad, or set MTAD_SPOOL_DIR=/var/spool/mail)', 77);
  }
  try {
    if (!fs.statSync(config.spoolDir).isDirectory()) throw Object.assign(new Error(), { code: 'ENOTDIR' });
  } catch (err) {
    // Worded as chooseRunAs words it for root, so the message does not depend on who starts mtad.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new StartupError(`mtad: the spool directory ${config.spoolDir} does not exist: create it, or set MTAD_SPOOL_DIR`, 73);
    throw new StartupError(`mtad: spool directory ${config.spoolDir}: ${describeErrno(err)}`, 73);
  }
  try {
    fs.accessSync(config.spoolDir, fs.constants.W_OK | fs.constants.X_OK);
  } catch {
    throw new StartupError(`mtad: ${who} cannot write the spool directory ${config.spoolDir}: ${fix}`, 77);
  }
}

function checkQueueAccess(config: Config, runAs: SystemUser | null): void {
  const who = whoLabel(runAs);
  try {
    fs.mkdirSync(config.queueDir, { recursive: true, mode: 0o700 });
    fs.accessSync(config.queueDir, fs.constants.W_OK | fs.constants.X_OK);
  } catch (err) {
    throw new StartupError(`mtad: ${who} cannot write the queue directory ${config.queueDir}: ${describeErrno(err)}`, 77);
  }
}

/** The mode of mailboxes mtad creates itself, by the kind of spool (see system/spool.ts). */
function createMode(spoolDir: string): number {
  try {
    return mailboxMode(fs.statSync(spoolDir));
  } catch {
    return 0o600;
  }
}

function userLabel(u: SystemUser | null): string {
  if (u) return u.name || String(u.uid);
  try {
    return (require('node:os') as typeof import('node:os')).userInfo().username;
  } catch {
    return String(process.getuid?.());
  }
}
