// The daemon's live view of the users and aliases files. Every lookup first
// checks (one stat per file, shared by concurrent lookups) whether a file
// changed, and re-reads it if so: a user added by mta-adduser is accepted by the
// very next RCPT, with no signal and no restart.
import fs from 'node:fs';
import { log } from '../log';
import type { Directory } from '../policy';
import { parseAliases } from './aliases';
import { parseUsers, User } from './users';

interface Watched<T> {
  file: string;
  key: string | null;
  value: T;
}

function statKey(st: fs.Stats | null): string {
  return st ? `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}` : 'missing';
}

export class AccountDirectory {
  private users: Watched<Map<string, User>>;
  private aliases: Watched<Map<string, string[]>>;
  private checking: Promise<Directory> | null = null;

  constructor(usersFile: string, aliasesFile: string) {
    this.users = { file: usersFile, key: null, value: new Map() };
    this.aliases = { file: aliasesFile, key: null, value: new Map() };
  }

  /** Loads both files now; throws if one exists but cannot be read. */
  loadSync(): Directory {
    this.reload(this.users, safeStatSync(this.users.file), parseUsersText);
    this.reload(this.aliases, safeStatSync(this.aliases.file), parseAliasesText);
    return this.snapshot();
  }

  current(): Promise<Directory> {
    if (!this.checking) {
      this.checking = this.refresh().finally(() => { this.checking = null; });
    }
    return this.checking;
  }

  private async refresh(): Promise<Directory> {
    const [us, as] = await Promise.all([safeStat(this.users.file), safeStat(this.aliases.file)]);
    try {
      this.reload(this.users, us, parseUsersText);
      this.reload(this.aliases, as, parseAliasesText);
    } catch (err) {
      log.warn(`cannot read the accounts: ${(err as Error).message}; keeping the previous ones`);
    }
    return this.snapshot();
  }

  private snapshot(): Directory {
    return { users: this.users.value, aliases: this.aliases.value };
  }

  private reload<T>(w: Watched<T>, st: fs.Stats | null, parse: (text: string, file: string) => T): void {
    const key = statKey(st);
    if (key === w.key) return;
    const text = st ? fs.readFileSync(w.file, 'utf8') : '';
    if (!st) log.warn(`${w.file} does not exist: no accounts from it`);
    w.value = parse(text, w.file);
    w.key = key;
  }
}

function parseUsersText(text: string, file: string): Map<string, User> {
  const f = parseUsers(text);
  for (const p of f.problems) log.warn(`${file}: ${p}`);
  return f.users;
}

function parseAliasesText(text: string, file: string): Map<string, string[]> {
  const f = parseAliases(text);
  for (const p of f.problems) log.warn(`${file}: ${p}`);
  return f.aliases;
}

function safeStatSync(file: string): fs.Stats | null {
  try { return fs.statSync(file); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function safeStat(file: string): Promise<fs.Stats | null> {
  try { return await fs.promises.stat(file); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}
