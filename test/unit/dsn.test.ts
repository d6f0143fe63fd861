// The bounce itself, as Python's email package reads it: whatever the envelope
// and the original headers hold, the report keeps its structure.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { deliveryReport, headerSection } from '../../src/delivery/dsn';
import { encodeMessage, entryPrefix, ENTRY_SUFFIX } from '../../src/delivery/mbox';
import { readDsns, readMbox } from '../helpers/mbox';

function stored(report: Buffer): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-dsn-'));
  const file = path.join(dir, 'bob');
  fs.writeFileSync(file, Buffer.concat([entryPrefix('', 'bob@lab.test', new Date()), encodeMessage(report), ENTRY_SUFFIX]));
  return file;
}

const base = {
  id: 'ABCDEF0123', hostname: 'lab.test', date: new Date('2026-12-02T00:00:00Z'), action: 'failed' as const, to: 'bob@lab.test',
  original: { id: '0123456789', sender: 'bob@lab.test', arrival: new Date('2026-11-27T00:00:00Z'), headers: Buffer.from('Subject: hi\n') },
  recipients: [{ final: 'alice@lab.test', original: 'staff@lab.test', status: '5.1.1', diagnostic: 'user unknown' }],
};

describe('delivery status notification', () => {
  it('keeps one report, three parts and one recipient block when the envelope carries line breaks and 8-bit text', () => {
    const file = stored(deliveryReport({
      ...base,
      to: 'bob@lab.test\nBcc: eve@remote.test',
      original: { ...base.original, sender: 'bob\r\nX-Evil: 1@lab.test', headers: Buffer.from('Subject: caf\xe9\nFrom x\n>From y\n', 'latin1') },
      recipients: [{ final: 'alice@lab.test', original: 'al\nice\u010a@lab.test', status: '5.1.1', diagnostic: 'line\nFinal-Recipient: rfc822; eve' }],
    }));
    const [d, ...rest] = readDsns(file);
    expect(rest).toEqual([]);
    const [m] = readMbox(file);
    expect(d.defects).toEqual([]);
    expect(m.raw.toString('latin1')).toContain('\nTo: bob@lab.test?Bcc:?eve@remote.test\n');
    expect(d.headers['Bcc']).toBeUndefined();
    expect(d.status).toHaveLength(2);
    expect(d.status[0]['X-Mtad-Sender']).toBe('rfc822; bob??X-Evil:?1@lab.test');
    expect(d.status[1]['Original-Recipient']).toBe('rfc822; al?ice?@lab.test');
    expect(d.status[1]['Diagnostic-Code']).toBe('X-mtad; line?Final-Recipient: rfc822; eve');
    // 8-bit original headers are declared and kept byte for byte; From lines quoted once (mboxrd), as in any message
    expect(d.headers['Content-Transfer-Encoding']).toBe('8bit');
    expect(d.original_headers).toBe('Subject: caf\xe9\n>From x\n>>From y\n');
  });

  it('reads the header section of a stored message: up to the empty line, mbox quoting undone', async () => {
    const mbox = encodeMessage(Buffer.from('Received: x\r\nFrom y\r\nSubject: s\r\n\r\nFrom the body\r\n'));
    expect((await headerSection({ kind: 'memory', chunks: [mbox], length: mbox.length })).toString()).toBe('Received: x\nFrom y\nSubject: s\n');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mtad-dsn-'));
    const file = path.join(dir, 'q');
    fs.writeFileSync(file, Buffer.concat([Buffer.from('{"envelope":1}\n'), mbox]));
    expect((await headerSection({ kind: 'file', path: file, offset: 15, length: mbox.length })).toString()).toBe('Received: x\nFrom y\nSubject: s\n');
    fs.rmSync(dir, { recursive: true });
  });
});
