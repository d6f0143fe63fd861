// kill -9 during a POP3 removal, at many instants: after the restart (which
// finishes a removal that had been decided), the mailbox is the old one or the
// new one. No message that was not DELE'd is lost or doubled, the DELE'd ones
// are all there or all gone, the file parses, and the UIDLs are the same.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readMbox } from '../helpers/mbox';
import { makeInstance, removeInstance, startMtad } from '../helpers/mtad';
import { Pop3Client } from '../helpers/pop3';

const ROUNDS = Number(process.env.MTAD_POP3_KILL_ROUNDS ?? 12);
const COUNT = 30;
const DELETED = new Set([2, 5, 6, 17, 29]); // message numbers, from 1

/** mtad-style entries with big bodies, so that the removal takes long enough to be hit mid-way. */
function mailbox(): Buffer {
  const parts: Buffer[] = [];
  for (let i = 1; i <= COUNT; i++) {
    const body = `${`line ${i} `.repeat(12)}\n`.repeat(i % 3 === 0 ? 4000 : 200);
    parts.push(Buffer.from(`From a@client.test  Fri Nov 27 13:38:46 2026\nReturn-Path: <a@client.test>\nDelivered-To: alice@lab.test\n` +
      `X-UIDL: ${String(i).padStart(32, '0')}\nSubject: m${i}\nX-Token: T${i}\n\n${body}END T${i}\n\n`));
  }
  return Buffer.concat(parts);
}

const dirs: string[] = [];
afterAll(() => dirs.forEach(removeInstance));

describe('kill -9 during a POP3 removal', () => {
  it(`leaves the old mailbox or the new one, never a mix (${ROUNDS} rounds)`, async () => {
    const dir = makeInstance({ users: ['alice'], passwords: { alice: 'pw' } });
    dirs.push(dir);
    const box = path.join(dir, 'spool', 'alice');
    const original = mailbox();
    const spoolSt = fs.statSync(path.join(dir, 'spool'));
    const env = { MTAD_POP3_AUTH_DELAY: '0' };
    const outcomes = { old: 0, new: 0, finishedAtStart: 0 };
    let removalMs = 0;

    for (let round = 0; round <= ROUNDS; round++) {
      fs.writeFileSync(box, original, { mode: 0o600 });
      fs.chownSync(box, spoolSt.uid, spoolSt.gid);
      const m = await startMtad({ dir, env });
      const c = await Pop3Client.connect(m.pop3Port!);
      expect(await c.login('alice', 'pw')).toMatch(/^\+OK Logged in, 30 messages/);
      const uidls = (await c.multi('UIDL')).lines;
      for (const n of DELETED) expect(await c.cmd(`DELE ${n}`)).toMatch(/^\+OK/);
      const t0 = Date.now();
      c.write('QUIT\r\n');
      if (round === 0) {
        // Calibration: how long a whole removal takes here, now.
        expect(await c.line()).toBe(`+OK Logging out, ${DELETED.size} messages deleted.`);
        removalMs = Date.now() - t0;
        await m.stop();
      } else {
        await new Promise((r) => setTimeout(r, Math.random() * removalMs * 1.3));
        await m.stop('SIGKILL');
      }
      c.close();

      const again = await startMtad({ dir, env });
      if (round > 0 && /finished a POP3 removal interrupted by a crash/.test(again.output())) outcomes.finishedAtStart++;
      const tokens = readMbox(box).map((x) => x.header('X-Token'));
      const kept = Array.from({ length: COUNT }, (_, i) => i + 1).filter((n) => !DELETED.has(n)).map((n) => `T${n}`);
      const all = Array.from({ length: COUNT }, (_, i) => `T${i + 1}`);
      const isOld = JSON.stringify(tokens) === JSON.stringify(all);
      expect(isOld || JSON.stringify(tokens) === JSON.stringify(kept), `round ${round}: ${tokens.join(',')}`).toBe(true);
      if (isOld) expect(fs.readFileSync(box).equals(original)).toBe(true);
      if (round > 0) outcomes[isOld ? 'old' : 'new']++;
      // The UIDLs a client saw are still the ones of the messages that are left.
      const c2 = await Pop3Client.connect(again.pop3Port!);
      await c2.login('alice', 'pw');
      const now = (await c2.multi('UIDL')).lines.map((l) => l.split(' ')[1]);
      const before = uidls.map((l) => l.split(' ')[1]);
      expect(now).toEqual(isOld ? before : before.filter((_, i) => !DELETED.has(i + 1)));
      await c2.quit();
      expect((await again.stop()).code).toBe(0);
      expect(fs.readdirSync(path.join(dir, 'spool', '.queue', 'removing'))).toEqual([]);
    }
    console.log(`pop3 kill -9 during removal: ${ROUNDS} rounds, removal ~${removalMs} ms; old mailbox ${outcomes.old}, new ${outcomes.new}, of which finished at start-up ${outcomes.finishedAtStart}`);
  }, 600_000);
});
