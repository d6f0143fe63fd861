// Client-supplied text on its way into a mailbox, a header, a log line or the
// trace passes through printable() and nothing else. Its output is printable
// ASCII (0x20-0x7e) and nothing but that, whatever the input: no CR, LF, NUL,
// no C0/C1 control, no U+2028/2029, no character that a one-byte-per-character
// encoding could turn into one. So no input can start a line, a header or a
// From_ line where mtad writes it. asciiBytes() is the one way such text becomes bytes.

// Everything outside printable ASCII, one whole code point at a time (the u flag).
const UNPRINTABLE = /[^\x20-\x7e]/gu;

export interface PrintableOptions {
  /** Longest result (then cut, with "..." added); default: no limit. */
  max?: number;
  /**
   * How a character outside printable ASCII is shown: '?' (the default, for
   * headers and the mbox), or 'escape' for logs and the trace, where "\x0a" and
   * "\u{2028}" tell the reader what was sent.
   */
  show?: '?' | 'escape';
}

export function printable(s: string, opts: PrintableOptions = {}): string {
  const escape = opts.show === 'escape';
  const out = s.replace(UNPRINTABLE, (c) => {
    if (!escape) return '?';
    const cp = c.codePointAt(0)!;
    return cp <= 0xff ? `\\x${cp.toString(16).padStart(2, '0')}` : `\\u{${cp.toString(16)}}`;
  });
  const max = opts.max ?? Infinity;
  return out.length > max ? `${out.slice(0, max)}...` : out;
}

/** True when every character of s is printable ASCII (what printable() leaves alone). */
export function isPrintableAscii(s: string): boolean {
  return !/[^\x20-\x7e]/.test(s);
}

/**
 * The bytes of a text mtad composed from printable() pieces, its own LF line ends
 * and TAB folds: anything else that slipped in becomes '?'. UTF-8, so never a
 * one-byte-per-character encoding of an arbitrary string.
 */
export function asciiBytes(s: string): Buffer {
  return Buffer.from(s.replace(/[^\x20-\x7e\t\n]/gu, '?'), 'utf8');
}
