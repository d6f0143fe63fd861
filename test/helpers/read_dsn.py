#!/usr/bin/env python3
"""Reads the delivery status notifications in an mbox file with Python's mailbox
and email packages (parsers that are not ours) and prints them as JSON: the
top-level headers, the MIME structure, the message/delivery-status blocks and
the attached original headers. Messages that are not reports are skipped."""
import email, email.policy, json, mailbox, sys

box = mailbox.mbox(sys.argv[1], create=False)
out = []
for key in box.iterkeys():
    raw = box.get_bytes(key)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    if msg.get_content_type() != "multipart/report":
        continue
    parts = msg.get_payload()
    status = next(p for p in parts if p.get_content_type() == "message/delivery-status")
    headers = next((p for p in parts if p.get_content_type() == "text/rfc822-headers"), None)
    out.append({
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "headers": {k: str(v) for k, v in msg.items()},
        "parts": [p.get_content_type() for p in parts],
        "text": parts[0].get_content(),
        "status": [dict((k, str(v)) for k, v in block.items()) for block in status.get_payload()],
        "original_headers": headers.get_payload(decode=True).decode("latin-1") if headers else None,
        "defects": [type(d).__name__ for p in msg.walk() for d in p.defects],
    })
json.dump(out, sys.stdout)
