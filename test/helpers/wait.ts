// Waits for conditions, each with a generous bound and a message that says what
// was awaited: the machine may be loaded, and a wait that never ends must fail as
// itself, not as the test's own timeout (or a hung run) with nothing to go on.
import type { ChildProcess } from 'node:child_process';

/** Resolves once `cond()` holds, checking every `everyMs`; rejects after `timeoutMs` naming `what`. */
export async function until(cond: () => boolean, timeoutMs = 30000, what = 'condition', everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A child's standard output, read as it comes: `next` waits for a pattern, bounded, and fails early if the child exits. */
export interface Watched {
  output(): string;
  next(re: RegExp, timeoutMs?: number): Promise<string>;
}

export function watchOutput(proc: ChildProcess, name: string): Watched {
  let out = '';
  let exit: string | null = null;
  const listeners = new Set<() => void>();
  proc.stdout!.on('data', (b: Buffer) => { out += b.toString(); listeners.forEach((l) => l()); });
  proc.on('exit', (code, signal) => { exit = `${code ?? signal}`; listeners.forEach((l) => l()); });
  return {
    output: () => out,
    next(re, timeoutMs = 30000) {
      return new Promise((resolve, reject) => {
        const done = (): void => { clearTimeout(timer); listeners.delete(check); };
        const check = (): void => {
          const m = re.exec(out);
          if (m) { done(); resolve(m[0]); } else if (exit !== null) { done(); reject(new Error(`${name} exited (${exit}) before printing ${re}; it printed: ${JSON.stringify(out)}`)); }
        };
        const timer = setTimeout(() => { done(); reject(new Error(`timed out after ${timeoutMs / 1000} s waiting for ${name} to print ${re}; it printed: ${JSON.stringify(out)}`)); }, timeoutMs);
        listeners.add(check);
        check();
      });
    },
  };
}
