// The bench's documented way to profile mtad (MTAD_NODE_ARGS="--cpu-prof ...")
// must give a real profile. V8's sampler runs on SIGPROF, which
// mtad otherwise catches (logged and ignored, issue 9 item 8): a profile of a
// busy mtad once held 533 samples in 27 s instead of tens of thousands.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Mtad, removeInstance, makeInstance, startMtad } from '../helpers/mtad';
import { sendToken } from '../faults/readers';

const dirs: string[] = [];
const running: Mtad[] = [];
afterAll(async () => {
  for (const m of running) await m.stop('SIGKILL');
  for (const d of dirs) removeInstance(d);
});

const INTERVAL_US = 500;

describe('mtad under the V8 CPU profiler', () => {
  it('leaves SIGPROF to the profiler: the profile holds samples for all of its run', async () => {
    const dir = makeInstance({ users: ['alice'] });
    dirs.push(dir);
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-prof-'));
    dirs.push(out);
    // mtad gives up root: the profile is written by the user it becomes.
    fs.chmodSync(out, 0o777);
    const m = await startMtad({ dir, nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${out}`, `--cpu-prof-interval=${INTERVAL_US}`] });
    running.push(m);
    for (let i = 0; i < 20; i++) await sendToken(m.port, 'alice', `t${i}`);
    const { code } = await m.stop('SIGTERM');
    expect(code, m.output()).toBe(0);
    expect(m.output()).not.toMatch(/SIGPROF received/);
    const files = fs.readdirSync(out).filter((f) => f.endsWith('.cpuprofile'));
    expect(files).toHaveLength(1);
    const profile = JSON.parse(fs.readFileSync(path.join(out, files[0]), 'utf8')) as { startTime: number; endTime: number; samples: number[] };
    const expected = (profile.endTime - profile.startTime) / INTERVAL_US;
    // The sampler fires every interval, idle or not; a loaded machine delays some
    // ticks, never nine in ten. With SIGPROF taken from it, it stops after the first.
    expect(profile.samples.length, `${profile.samples.length} samples in ${((profile.endTime - profile.startTime) / 1e6).toFixed(1)} s`).toBeGreaterThan(expected / 10);
  });
});
