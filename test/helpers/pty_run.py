#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal, as a person at a terminal would: waits for
each prompt, types the answer, and prints everything the terminal showed (JSON).
usage: pty_run.py '[["prompt", "answer"], ...]' CMD ARGS..."""
import json, os, pty, sys

script = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
shown = b""
def read_more():
    global shown
    try:
        data = os.read(fd, 4096)
    except OSError:
        return False
    if not data:
        return False
    shown += data
    return True
for prompt, answer in script:
    while prompt.encode() not in shown.split(b"\x00")[-1]:
        if not read_more():
            break
    shown += b"\x00"  # marks how far we answered
    os.write(fd, answer.encode() + b"\r")
while read_more():
    pass
_, status = os.waitpid(pid, 0)
print(json.dumps({"shown": shown.replace(b"\x00", b"").decode("utf8", "replace"), "status": os.waitstatus_to_exitcode(status)}))
