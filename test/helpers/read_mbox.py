#!/usr/bin/env python3
"""Reads an mbox file with Python's standard mailbox module (a parser that is not
ours) and prints its messages as JSON: the From_ line, headers, and the raw bytes."""
import base64, json, mailbox, sys

box = mailbox.mbox(sys.argv[1], create=False)
out = []
for key in box.iterkeys():
    msg = box.get_message(key)
    raw = box.get_bytes(key)
    out.append({
        "from_": msg.get_from(),
        "headers": [[k, str(v)] for k, v in msg.items()],
        "raw": base64.b64encode(raw).decode("ascii"),
    })
json.dump(out, sys.stdout)
