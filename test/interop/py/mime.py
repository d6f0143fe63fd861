#!/usr/bin/env python3
"""Parses every message of an mbox with Python's email package and prints, as JSON,
its MIME tree and, for each leaf part, the type, file name, Content-ID, decoded
size and SHA-256 (and the text, for text parts)."""
import email, hashlib, json, mailbox, sys
from email import policy

def tree(part):
    if part.is_multipart():
        return {"type": part.get_content_type(), "parts": [tree(p) for p in part.get_payload()]}
    data = part.get_payload(decode=True) or b""
    leaf = {"type": part.get_content_type(), "filename": part.get_filename(),
            "cid": part.get("Content-ID"), "disposition": part.get_content_disposition(),
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if part.get_content_maintype() == "text":
        leaf["text"] = part.get_content()
    return leaf

box = mailbox.mbox(sys.argv[1], create=False)
out = []
for key in box.iterkeys():
    msg = email.message_from_bytes(box.get_bytes(key), policy=policy.default)
    out.append({"subject": msg["Subject"], "message_id": msg["Message-ID"], "defects": [type(d).__name__ for d in msg.defects],
                "tree": tree(msg)})
json.dump(out, sys.stdout)
