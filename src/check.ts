// mtad --check: everything mtad would verify at start-up, and what it would do,
// without serving or touching the queue (the port is bound for an instant, to
// see whether something else has it). Each problem is one line with
// the exit code mtad itself would stop with; permissions are judged for the user
// mtad would run as, from the mode bits, since a root caller passes every access().
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { queueHolder, spoolHolder } from './queue/pidfile';
import { parseAliases } from './accounts/aliases';
import { parseUsers } from './accounts/users';
import { hashesExposed } from './accounts/directory';
import { untrusted } from './accounts/trust';
import { Config, describeErrno, ROOT } from './config';
import { Directory, expand, POSTMASTER } from './policy';
import { localNames } from './smtp/server';
import { SystemUser, userById } from './system/passwd';
import { chooseRunAs, isCheckoutSpoolToAdopt, isRoot } from './system/privileges';
import { readTls } from './tls';

export interface Problem {
  text: string;
  exitCode: number;
}

export interface CheckReport {
  lines: string[];
  problems: Problem[];
}

interface Who {
  uid: number;
  gids: number[];
  label: string;
}

export async function checkInstallation(config: Config): Promise<CheckReport> {
  const lines: string[] = [];
  const problems: Problem[] = [];
  const problem = (text: string, exitCode: number): void => { problems.push({ text, exitCode }); };
  const row = (label: string, value: string): void => { lines.push(`${label.padEnd(12)} ${value}`); };

  row('config', config.source ?? 'none (defaults and environment)');
  const shown = config.host.includes(':') ? `[${config.host}]` : config.host;
  row('listen on', `${shown}:${config.port}${portNote(config.port)}`);
  if (config.port > 0 && config.port < 1024 && !isRoot() && !hasBindCapability()) {
    problem(`port ${config.port} needs root (sudo node bin/mtad) or CAP_NET_BIND_SERVICE (the systemd unit); or set MTAD_PORT=2525`, 77);
  }
  // One spool, one mtad (and one queue): while one serves it, another would not start, whatever else is right.
  const spoolOwner = spoolHolder(config.spoolDir);
  const other = spoolOwner ?? queueHolder(config.queueDir);
  if (other !== null) {
    const pid = other ? ` (pid ${other})` : '';
    problem(`another mtad${pid} is already running on the ${spoolOwner !== null ? `spool ${config.spoolDir}` : `queue ${config.queueDir}`}: ` +
      `a second one would not start; stop it first${other ? ` (kill ${other})` : ''}, or give this one its own MTAD_SPOOL_DIR`, 75);
  } else if (config.port !== 0 && (config.port >= 1024 || isRoot() || hasBindCapability())) {
    const busy = await portInUse(config.host, config.port);
    if (busy) problem(`port ${config.port} on ${config.host} is already in use (another mail server, such as Postfix or Exim?)`, 69);
  }
  if (config.pop3Port === null) row('pop3', 'off (MTAD_POP3_PORT)');
  else {
    const p3 = config.pop3Host.includes(':') ? `[${config.pop3Host}]` : config.pop3Host;
    row('pop3 on', `${p3}:${config.pop3Port}${portNote(config.pop3Port)}${config.pop3PortFollows && config.pop3Port ? ' (MTAD_PORT + 85)' : ''}, logins with the users file's passwords, autologout after ${config.pop3IdleTimeout} s`);
    if (config.pop3Port < 1024 && config.pop3Port > 0 && !isRoot() && !hasBindCapability()) {
      problem(`POP3 port ${config.pop3Port} needs root (sudo node bin/mtad) or CAP_NET_BIND_SERVICE; or set MTAD_POP3_PORT=off, or MTAD_PORT=2525 (POP3 then on 2610)`, 77);
    } else if (other === null && config.pop3Port !== 0 && await portInUse(config.pop3Host, config.pop3Port)) {
      problem(`POP3 port ${config.pop3Port} on ${config.pop3Host} is already in use (Dovecot, or another POP3 server?): stop it, or set MTAD_POP3_PORT to another port or off`, 69);
    }
  }
  row('host name', config.hostname);
  const local = localNames(config);
  row('domains', config.domains.join(', '));
  row('literals', [...local.literals].map((l) => l.replace(/^\[ipv6:/, '[IPv6:')).join(', ') || '-');

  let who: Who | null = null;
  try {
    const runAs = chooseRunAs(config.runAs, config.spoolDir);
    who = runAs ? whoIs(runAs) : whoAmI();
    row('run as', runAs ? `${who.label} (mtad starts as root, binds the port, then becomes this user)` : `${who.label} (the user starting it)`);
  } catch (err) {
    const e = err as Error & { exitCode?: number };
    problem(e.message.replace(/^mtad: /, ''), e.exitCode ?? 78);
  }

  // mtad started as root gives the checkout's own root-owned spool to the user it becomes (adoptCheckoutSpool).
  const adopts = !!who && isRoot() && !config.runAs && who.uid !== 0 && isCheckoutSpoolToAdopt(config.spoolDir, path.join(ROOT, 'spool'));
  if (who) {
    const before = problems.length;
    const closed = adopts && closedTo(config.spoolDir, who);
    if (closed) problem(`${who.label} cannot reach ${config.spoolDir}: ${closed} is closed to it (put mtad where other users can enter, e.g. /opt/mtad)`, 77);
    row('spool', `${config.spoolDir}${adopts ? ` (belongs to root: mtad gives it to ${who.label} at start-up)` : checkDir(config.spoolDir, who, false, problem, 73)}`);
    // A queue inside a spool already found wanting would only repeat the same problem.
    const inSpool = config.queueDir.startsWith(`${config.spoolDir}/`);
    if (adopts && path.dirname(config.queueDir) === config.spoolDir && !statOrNull(config.queueDir)) {
      row('queue', `${config.queueDir} (created at start-up, in the spool mtad takes over)`);
    } else if (!(inSpool && problems.length > before)) row('queue', `${config.queueDir}${checkDir(config.queueDir, who, true, problem, 77)}`);
  }

  if (config.tlsCert && config.tlsKey) {
    try {
      const m = readTls(config.tlsCert, config.tlsKey, who ? [who.uid] : []);
      row('tls', `STARTTLS${config.pop3Port !== null ? ' and STLS' : ''}${config.tlsRequired ? ' (required before MAIL and the POP3 login)' : ''}: ${m.summary}  (${config.tlsCert})`);
    } catch (err) {
      const e = err as Error & { exitCode: number };
      problem(e.message, e.exitCode);
    }
    for (const f of who ? [config.tlsCert, config.tlsKey] : []) {
      const st = statOrNull(f);
      if (st && !allowed(st, who!, 0o4)) problem(`${who!.label} cannot read ${f} (owner uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}): chown it to that user and chmod 600`, 77);
    }
  } else {
    row('tls', 'off (MTAD_TLS_CERT and MTAD_TLS_KEY unset): no STARTTLS, no STLS');
  }

  const users = readAccounts(config.usersFile, 'users', who, problem, (t) => parseUsers(t));
  const aliases = readAccounts(config.aliasesFile, 'aliases', who, problem, (t) => parseAliases(t));
  const exposed = users && hashesExposed(statOrNull(config.usersFile), users.users);
  if (exposed) lines.push(`warning: ${config.usersFile}: ${exposed}`);
  const dir: Directory = { users: users?.users ?? new Map(), aliases: aliases?.aliases ?? new Map() };
  row('users', `${dir.users.size ? [...dir.users.keys()].join(', ') : 'none yet: every recipient but postmaster is refused (add one with mta-adduser)'}  (${config.usersFile})`);
  const shownAliases: string[] = [];
  for (const [name, targets] of dir.aliases) {
    const { mailboxes: boxes, overflow } = expand(name, dir, local);
    shownAliases.push(`${name} -> ${overflow ? '(too big)' : boxes.length ? boxes.join(',') : '(nobody)'}`);
    if (overflow) problem(`${config.aliasesFile}: alias ${name}: unreasonable expansion (${overflow}): mail to it is deferred (451 4.6.0)`, 65);
    else if (!boxes.length) problem(`${config.aliasesFile}: alias ${name} (${targets.join(', ')}) reaches no user: mail to it is refused`, 65);
  }
  row('aliases', `${shownAliases.length ? shownAliases.join('; ') : 'none'}  (${config.aliasesFile})`);
  const pm = expand(POSTMASTER, dir, local).mailboxes;
  row('postmaster', pm.length ? `-> ${pm.join(', ')}` : `-> the mailbox ${POSTMASTER}`);

  if (who) {
    for (const name of new Set([...dir.users.keys(), ...(pm.length ? pm : [POSTMASTER])])) {
      const box = path.join(config.spoolDir, name);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(box);
      } catch {
        continue; // created at the first delivery
      }
      // mtad starts all the same: these are the mail it would hold or refuse (65, like the accounts lines).
      if (!st.isFile() || st.nlink !== 1) problem(`mailbox ${box} is not a plain file: mtad refuses links and special files, and holds that mail in the queue`, 65);
      else if (adopts && st.uid === 0) continue; // given to mtad's user with the spool
      else if (!allowed(st, who, 0o2)) {
        problem(`mailbox ${box}: ${who.label} cannot write it (owner uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}): ` +
          `mtad refuses its mail with 450 4.2.0 until then (chown ${who.label.split(' ')[0]} ${box})`, 65);
      }
    }
  }
  return { lines, problems };
}

/** Binds the port for an instant, as mtad would; only EADDRINUSE counts (privilege is judged above). */
function portInUse(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'EADDRINUSE'));
    s.listen(port, host, () => s.close(() => resolve(false)));
  });
}

function portNote(port: number): string {
  if (port === 0) return ' (any free port)';
  if (port >= 1024) return '';
  if (isRoot()) return ' (root binds it, then gives root up)';
  return hasBindCapability() ? ' (CAP_NET_BIND_SERVICE)' : '';
}

/** Whether this process may bind ports below 1024 without root (systemd's AmbientCapabilities). */
export function hasBindCapability(): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return !!m && (BigInt(`0x${m[1]}`) & (1n << 10n)) !== 0n; // CAP_NET_BIND_SERVICE is bit 10
  } catch {
    return false;
  }
}

/**
 * Reads an accounts file as mtad would: judged for trust and access as the user
 * it runs as (`who`); a missing file is an empty one for mtad too.
 */
function readAccounts<T extends { problems: string[] }>(
  file: string, what: string, who: Who | null, problem: (t: string, c: number) => void, parse: (text: string) => T,
): T | null {
  if (who) {
    let why: string | null;
    try {
      why = untrusted(file, [who.uid]);
    } catch (err) {
      why = `${describeErrno(err)}`;
    }
    if (why) {
      problem(`will not trust the ${what} file ${file}: ${why}`, 77);
      return null;
    }
    const st = statOrNull(file);
    const closed = st && closedTo(file, who);
    if (closed) {
      problem(`${who.label} cannot reach the ${what} file ${file}: ${closed} is closed to it`, 66);
      return null;
    }
    if (st && !allowed(st, who, 0o4)) {
      problem(`${who.label} cannot read the ${what} file ${file} (owner uid ${st.uid}, group ${st.gid}, mode ${(st.mode & 0o7777).toString(8)}): ` +
        `chgrp ${who.gids[0]} ${file}; chmod g+r ${file}`, 66);
      return null;
    }
  }
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return parse('');
    problem(`cannot read the ${what} file ${file}: ${describeErrno(err)}`, 66);
    return null;
  }
  const parsed = parse(text);
  for (const p of parsed.problems) problem(`${file}: ${p}`, 65);
  return parsed;
}

/** Checks that `who` can create files in `dir` (or, for the queue, create `dir` itself). */
function checkDir(dir: string, who: Who, mayCreate: boolean, problem: (t: string, c: number) => void, code: number): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    if (!mayCreate || (err as NodeJS.ErrnoException).code !== 'ENOENT') {
      // The same words as mtad's own refusal, whether or not it runs as root.
      const what = !mayCreate && (err as NodeJS.ErrnoException).code === 'ENOENT' ? `the spool directory ${dir} does not exist` : `${dir}: ${describeErrno(err)}`;
      problem(`${what}${mayCreate ? '' : ': create it, or set MTAD_SPOOL_DIR'}`, code);
      return '';
    }
    const parent = path.dirname(dir);
    const pst = statOrNull(parent);
    if (!pst || closedTo(parent, who) || !allowed(pst, who, 0o3)) {
      problem(`${who.label} cannot create the queue directory ${dir} (${parent} is not writable for it)`, code);
      return '';
    }
    return ' (created at start-up)';
  }
  if (!st.isDirectory()) {
    problem(`${dir}: not a directory`, code);
    return '';
  }
  const closed = closedTo(dir, who);
  if (closed) {
    problem(`${who.label} cannot reach ${dir}: ${closed} is closed to it (put mtad where other users can enter, e.g. /opt/mtad)`, 77);
    return '';
  }
  if (!allowed(st, who, 0o3)) {
    problem(`${who.label} cannot write ${dir} (owner uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}): chown it to that user, or set MTAD_RUN_AS`, 77);
    return '';
  }
  // Queue files someone else left (e.g. a root-run tool) would stop delivery of those messages.
  if (mayCreate) {
    for (const sub of ['active', 'tmp', 'control', 'appending', 'removing']) {
      const d = path.join(dir, sub);
      const s = statOrNull(d);
      if (s && !allowed(s, who, 0o3)) problem(`${who.label} cannot write ${d}`, 77);
      if (sub !== 'active' || !s) continue;
      for (const f of fs.readdirSync(d)) {
        const fst = statOrNull(path.join(d, f));
        if (fst && !allowed(fst, who, 0o4 | 0o2)) problem(`${who.label} cannot read and write the queue file ${path.join(d, f)}`, 77);
      }
    }
  }
  return ' (writable)';
}

function statOrNull(p: string): fs.Stats | null {
  try { return fs.statSync(p); } catch { return null; }
}

/** The first directory above `p` that `who` may not enter (no x), or null. */
function closedTo(p: string, who: Who): string | null {
  const above: string[] = [];
  for (let d = path.dirname(path.resolve(p)); ; d = path.dirname(d)) {
    above.unshift(d);
    if (d === path.dirname(d)) break;
  }
  for (const d of above) {
    const st = statOrNull(d);
    if (!st || !allowed(st, who, 0o1)) return d;
  }
  return null;
}

/** Unix permission check for `who` from the mode bits; `bits` is rwx as 4/2/1. */
function allowed(st: fs.Stats, who: Who, bits: number): boolean {
  if (who.uid === 0) return true;
  const shift = st.uid === who.uid ? 6 : who.gids.includes(st.gid) ? 3 : 0;
  return ((st.mode >> shift) & bits) === bits;
}

function whoIs(u: SystemUser): Who {
  return { uid: u.uid, gids: [u.gid, ...supplementaryGroups(u.name)], label: u.name ? `${u.name} (uid ${u.uid})` : `uid ${u.uid}` };
}

function whoAmI(): Who {
  const uid = process.getuid!();
  const u = userById(uid);
  return { uid, gids: process.getgroups!(), label: u ? `${u.name} (uid ${uid})` : `uid ${uid}` };
}

function supplementaryGroups(name: string): number[] {
  if (!name) return [];
  try {
    return fs.readFileSync('/etc/group', 'utf8').split('\n').map((l) => l.split(':'))
      .filter((r) => r.length >= 4 && r[3].split(',').includes(name)).map((r) => Number(r[2]));
  } catch {
    return [];
  }
}
