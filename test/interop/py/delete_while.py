#!/usr/bin/env python3
"""Deletes messages through Dovecot while mtad delivers to the same mbox: rounds
that alternate IMAP (STORE \\Deleted on every third message, EXPUNGE) and POP3
(DELE of every fourth, QUIT), so the mailbox is often emptied and the first
message (the one with Dovecot's X-IMAPbase) is often taken. Runs until STOPFILE
exists (the deliveries are over), and at least MIN_ROUNDS rounds. Prints, as
JSON, the subjects deleted (once the server confirmed it), and the deleted
subjects Dovecot showed again in a later round."""
import imaplib, json, os, poplib, re, sys

imap_port, pop3_port, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
stopfile, min_rounds = sys.argv[5], int(sys.argv[6])
subject = lambda header: re.search(rb"^Subject: (.*?)\r?$", header, re.M | re.I).group(1).decode()
deleted, seen_again = [], []

def note(subjects):
    seen_again.extend(s for s in subjects if s in deleted)

r = -1
while True:
    r += 1
    if r >= min_rounds and os.path.exists(stopfile):
        break
    if r % 2 == 0:
        m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
        m.login(user, password)
        typ, data = m.select("INBOX")
        if int(data[0]) > 0:
            typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            found = [(re.search(rb"UID (\d+)", part[0]).group(1), subject(part[1])) for part in data if isinstance(part, tuple)]
            note([s for _, s in found])
            pick = found[::3]
            if pick:
                assert m.uid("STORE", b",".join(u for u, _ in pick), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
                assert m.expunge()[0] == "OK"
                deleted += [s for _, s in pick]
        m.logout()
    else:
        p = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
        p.user(user)
        p.pass_(password)
        count, _ = p.stat()
        found = [(i, subject(b"\r\n".join(p.top(i, 0)[1]))) for i in range(1, count + 1)]
        note([s for _, s in found])
        pick = found[::4]
        for i, _ in pick:
            p.dele(i)
        assert p.quit().startswith(b"+OK")
        deleted += [s for _, s in pick]

json.dump({"deleted": deleted, "seen_again": seen_again, "rounds": r}, sys.stdout)
