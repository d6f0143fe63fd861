#!/usr/bin/env python3
"""Sends with Python's smtplib, as a Python user would, and prints what happened as
JSON: the bytes of each message sent, and the recipients the server refused
(the dict sendmail returns, and SMTPRecipientsRefused.recipients when all are)."""
import base64, io, json, smtplib, sys
from email.generator import BytesGenerator
from email.message import EmailMessage

port, known, unknown = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")
b64 = lambda b: base64.b64encode(b).decode("ascii")
refused_json = lambda d: {k: [code, text.decode("latin-1")] for k, (code, text) in d.items()}
out = {}

with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.org", timeout=30) as s:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@example.org>"
    msg["To"] = ", ".join(known)
    msg["Subject"] = "smtplib send_message"
    msg["Message-ID"] = "<send-message@example.org>"
    msg.set_content("Sent with smtplib's send_message.\n.A line that starts with a dot.\nFrom a line that starts with From.\n")
    # The bytes send_message puts on the wire: it flattens with a BytesGenerator
    # of its own, which quotes body lines starting "From " (">From ").
    wire = io.BytesIO()
    BytesGenerator(wire).flatten(msg, linesep="\r\n")
    out["send_message"] = {"refused": refused_json(s.send_message(msg, to_addrs=known[:1])), "bytes": b64(wire.getvalue())}

    # Several recipients, some unknown: sendmail returns the refused ones and delivers to the rest.
    body = ("From: carol@example.org\r\nTo: " + ", ".join(known) + "\r\nSubject: smtplib sendmail\r\n"
            "Message-ID: <sendmail@example.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Perch\u00e9 cos\u00ec? \u00c8 un test a 8 bit: \u20ac \u00df \u00e6\u00f8\u00e5\r\n").encode("utf-8")
    rcpts = [known[0], unknown[0], *known[1:], *unknown[1:]]
    refused = s.sendmail("carol@example.org", rcpts, body, mail_options=["BODY=8BITMIME"])
    out["sendmail"] = {"rcpts": rcpts, "refused": refused_json(refused), "bytes": b64(body)}

    # Only unknown recipients: nothing to deliver, smtplib raises with each refusal.
    try:
        s.sendmail("carol@example.org", unknown, b"Subject: nobody\r\n\r\nnobody\r\n")
        out["all_unknown"] = {"raised": False}
    except smtplib.SMTPRecipientsRefused as e:
        out["all_unknown"] = {"raised": True, "recipients": refused_json(e.recipients)}
    # The session is still usable after the refusals.
    out["noop"] = s.noop()[0]

json.dump(out, sys.stdout)
