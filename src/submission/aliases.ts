// newaliases (and sendmail -bi, -I): mtad has no alias database to rebuild, it
// rereads the aliases file whenever it changes. What is left of the command is
// its check: the file parsed as mtad parses it (accounts/aliases.ts), every
// alias expanded as mtad expands it (policy.ts), problems named, a summary.
import fs from 'node:fs';
import { parseAliases } from '../accounts/aliases';
import { readUsersFile } from '../accounts/store';
import { Config, describeErrno } from '../config';
import { expand, isLocalDomain, LocalNames } from '../policy';
import { CliError, EX } from '../cli/common';

export function checkAliases(config: Config, local: LocalNames, file = config.aliasesFile): number {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      process.stdout.write(`${file}: no aliases file: mtad accepts its users and postmaster only\n`);
      return EX.OK;
    }
    throw new CliError(`cannot read ${file}: ${describeErrno(err)}`, EX.NOINPUT);
  }
  const parsed = parseAliases(text);
  const problems = parsed.problems.map((p) => `${file}: ${p}`);
  // The users file holds password hashes and is closed to ordinary users: then only the syntax is checked.
  let users: ReadonlyMap<string, unknown> | null = null;
  try {
    fs.accessSync(config.usersFile, fs.constants.R_OK);
    users = readUsersFile(config.usersFile).users;
  } catch {
    users = null;
  }
  for (const [name, targets] of parsed.aliases) {
    for (const t of targets) {
      const at = t.split('@');
      if (at.length > 2 || (at.length === 2 && !isLocalDomain(at[1], local))) {
        problems.push(`${file}: target "${t}" of ${name} is not local: mtad never forwards mail, it is ignored`);
      }
    }
    const reach = users ? expand(name, { users: users as never, aliases: parsed.aliases }, local) : null;
    if (reach?.overflow) problems.push(`${file}: alias ${name}: unreasonable expansion (${reach.overflow}): mail to it is deferred (451 4.6.0)`);
    else if (reach && !reach.mailboxes.length) {
      problems.push(`${file}: alias ${name} reaches no user of ${config.usersFile}: mail to it is refused`);
    }
  }
  for (const p of problems) process.stdout.write(`newaliases: ${p}\n`);
  const longest = Math.max(0, ...[...parsed.aliases.keys()].map((n) => n.length));
  process.stdout.write(`${file}: ${parsed.aliases.size} aliases, longest ${longest} bytes, ${problems.length} problem(s)` +
    `${users ? '' : ` (targets not checked: ${config.usersFile} is not readable by you)`}\n` +
    'mtad rereads this file by itself when it changes: there is no database to rebuild\n');
  return problems.length ? EX.DATAERR : EX.OK;
}
