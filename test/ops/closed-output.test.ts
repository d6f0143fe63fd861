// `mta-users | head -1`: once the reader of a command's output is gone, the
// command ends quietly (no stack trace on stderr), as programs killed by SIGPIPE do;
// mtad itself stops as on SIGTERM. The read end is closed before the child writes.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { instanceEnv, makeInstance, removeInstance, ROOT } from '../helpers/mtad';

const dirs: string[] = [];
afterEach(() => { dirs.splice(0).forEach(removeInstance); });

/** Runs bin/NAME with its standard output closed from the start; at most 60 s. */
function withOutputClosed(name: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', name), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.destroy();
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 60000);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stderr }); });
  });
}

describe('a command whose output is closed', () => {
  const instance = (): string => {
    const dir = makeInstance({ users: Array.from({ length: 2000 }, (_, i) => `user${i}`) });
    dirs.push(dir);
    return dir;
  };
  const cases: Array<[string, string[]]> = [
    ['mta-users', []],
    ['mtad', ['--check']],
    ['mtad', ['--help']],
    ['mta-adduser', ['--help']],
    ['mta-deluser', ['--version']],
    ['mta-queue', []],
  ];
  for (const [name, args] of cases) {
    it(`${[name, ...args].join(' ')} ends quietly with the status of SIGPIPE (141)`, async () => {
      const r = await withOutputClosed(name, args, instanceEnv(instance()));
      expect(r.stderr).toBe('');
      expect(r).toMatchObject({ code: 141, signal: null });
    });
  }

  it('mtad, the daemon, gets as far as taking its queue, then stops cleanly (exit 0)', async () => {
    const dir = instance();
    const r = await withOutputClosed('mtad', [], instanceEnv(dir));
    expect(r.stderr).toBe('');
    expect(r).toMatchObject({ code: 0, signal: null });
    expect(fs.existsSync(path.join(dir, 'spool', '.queue', 'mtad.pid'))).toBe(true);
  });
});
