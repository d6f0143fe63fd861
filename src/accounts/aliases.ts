// The aliases file, in /etc/aliases syntax: "name: target, target", continuation
// lines start with white space, "#" starts a comment. Targets are local names or
// addresses at a local domain; pipes, files and :include: are refused (mtad never
// runs a program nor writes outside the spool) and reported as problems.

export interface AliasesFile {
  aliases: Map<string, string[]>;
  problems: string[];
}

export function parseAliases(text: string): AliasesFile {
  const aliases = new Map<string, string[]>();
  const problems: string[] = [];
  const entries: Array<{ line: number; text: string }> = [];
  text.split('\n').forEach((raw, i) => {
    const l = raw.replace(/\r$/, '');
    if (l.trimStart().startsWith('#') || l.trim() === '') return;
    if (/^\s/.test(l) && entries.length) entries[entries.length - 1].text += ' ' + l.trim();
    else entries.push({ line: i + 1, text: l });
  });
  for (const e of entries) {
    const colon = e.text.indexOf(':');
    if (colon <= 0) { problems.push(`line ${e.line}: no ":" after the alias name`); continue; }
    const name = e.text.slice(0, colon).trim().toLowerCase();
    const targets: string[] = [];
    for (let t of e.text.slice(colon + 1).split(',')) {
      t = t.trim();
      if (!t) continue;
      if (t.startsWith('|') || t.startsWith('/') || t.toLowerCase().startsWith(':include:') || t.startsWith('"')) {
        problems.push(`line ${e.line}: target "${t}" of ${name} is ignored: mtad delivers only to local mailboxes`);
        continue;
      }
      targets.push(t.replace(/^\\/, '').toLowerCase());
    }
    if (!targets.length) { problems.push(`line ${e.line}: alias ${name} has no usable target`); continue; }
    aliases.set(name, [...(aliases.get(name) ?? []), ...targets]);
  }
  return { aliases, problems };
}
