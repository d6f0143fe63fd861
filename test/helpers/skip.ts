// Skips say why: vitest prints none of its own, and a test that needs root must be
// seen skipped, with its reason, when the suite runs as an ordinary user.
import { isRoot } from './mtad';

/** `cond` for it.skipIf / describe.skipIf; prints "skip: <what>: <why>" when it holds. */
export function skipping(cond: boolean, what: string, why: string): boolean {
  if (cond) console.log(`skip: ${what}: ${why}`);
  return cond;
}

/** True (and says so) when not root: for it.skipIf / describe.skipIf. */
export function needsRoot(what: string, why = 'needs root'): boolean {
  return skipping(!isRoot(), what, why);
}
