#!/usr/bin/env python3
"""Fetches every message of a user's INBOX through Dovecot with poplib (RETR) and
imaplib (BODY.PEEK[]), and prints them as JSON (base64, line ends as received)."""
import base64, imaplib, json, poplib, sys

pop3_port, imap_port, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
b64 = lambda b: base64.b64encode(b).decode("ascii")
out = {}

p = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
p.user(user)
p.pass_(password)
count, _ = p.stat()
# poplib returns the lines without their CRLF and with the dot-stuffing undone.
out["pop3"] = [b64(b"".join(line + b"\r\n" for line in p.retr(i)[1])) for i in range(1, count + 1)]
out["pop3_sizes"] = [int(x.split()[1]) for x in p.list()[1]]
p.quit()

m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
m.login(user, password)
typ, data = m.select("INBOX", readonly=True)
exists = int(data[0])
out["imap"] = []
for i in range(1, exists + 1):
    typ, data = m.fetch(str(i), "(BODY.PEEK[])")
    out["imap"].append(b64(data[0][1]))
m.logout()
json.dump(out, sys.stdout)
