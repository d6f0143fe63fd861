import path from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: path.resolve(__dirname, '..'),
    include: ['test/**/*.test.ts'],
    // Generous: a test that runs a dozen CLI commands took 80-90 s on two cores shared
    // with a CPU hog and seven other builds. Waits inside the tests have their own bounds.
    testTimeout: 180000,
    hookTimeout: 180000,
    // Integration tests start real mtad processes; two cores need no more workers.
    maxWorkers: 2,
  },
});
