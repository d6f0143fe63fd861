#!/usr/bin/env python3
"""For `formail -s`: saves the message on stdin as DIR/<FILENO>, the number formail gives it."""
import os, sys

with open(os.path.join(sys.argv[1], "%06d" % int(os.environ["FILENO"])), "wb") as f:
    f.write(sys.stdin.buffer.read())
