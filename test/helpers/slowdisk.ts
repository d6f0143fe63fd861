// A slow disk, as strace can make one for a running mtad: every write to a
// user's mailbox and to its append record returns only `us` microseconds after
// it is done. mtad writes both through O_DSYNC descriptors, so each of those
// writes is also its sync, the step a slow disk stretches; and each is made with
// both of the mailbox's locks held. An append makes three: the record's, the
// mailbox's, and the record's again before unlocking. Nothing else of mtad is
// slowed (strace -P: only calls on these paths).
import { spawn } from 'node:child_process';
import { appendRecordPath, Mtad } from './mtad';

export interface SlowDisk {
  /** Ends the slowing (strace detaches). */
  detach(): Promise<void>;
}

/** Resolves once strace holds every thread of mtad. */
export async function slowAppends(m: Pick<Mtad, 'pid' | 'queue' | 'mailbox'>, user: string, us: number): Promise<SlowDisk> {
  const calls = 'write,writev,pwrite64,pwritev';
  const files = [m.mailbox(user), appendRecordPath(m.queue, user)];
  const strace = spawn('strace', ['-f', '-p', String(m.pid), ...files.flatMap((f) => ['-P', f]), '-e', `trace=${calls}`, '-e', `inject=${calls}:delay_exit=${us}`, '-o', '/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  let gone = false;
  const exited = new Promise<void>((r) => strace.on('exit', () => { gone = true; r(); }));
  const detach = async (): Promise<void> => { if (!gone) strace.kill('SIGINT'); await exited; };
  try {
    await new Promise<void>((resolve, reject) => {
      // "Process N attached with M threads": printed once every thread is held.
      const timer = setTimeout(() => reject(new Error(`strace did not attach to mtad within 20 s: ${err}`)), 20000);
      strace.stderr!.on('data', (b: Buffer) => {
        err += b.toString();
        if (/attached/.test(err)) { clearTimeout(timer); resolve(); }
      });
      strace.on('exit', (code) => { clearTimeout(timer); reject(new Error(`strace exited ${code} before attaching: ${err}`)); });
    });
  } catch (e) {
    await detach();
    throw e;
  }
  return { detach };
}
