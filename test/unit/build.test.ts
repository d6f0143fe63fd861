// The tests run the compiled dist/, so a dist/ older than src/ would test old code
// and pass: `npm test` builds first, and this fails when something ran the tests
// on a stale build (a source changed after the last tsc).
import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { ROOT } from '../helpers/mtad';

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

it('dist/ is compiled from the sources as they are now (npm test builds first)', () => {
  const src = path.join(ROOT, 'src');
  const stale = sources(src).filter((file) => {
    const js = path.join(ROOT, 'dist', path.relative(src, file)).replace(/\.ts$/, '.js');
    return !fs.existsSync(js) || fs.statSync(js).mtimeMs < fs.statSync(file).mtimeMs;
  });
  expect(stale.map((f) => path.relative(ROOT, f)), 'run npm run build (npm test does)').toEqual([]);
});
