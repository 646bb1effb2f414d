#!/usr/bin/env python3
"""notify_listen — stands in for systemd's notify socket in tests: binds a
unix datagram socket at argv[1] and writes every datagram it receives (one
per line, with a monotonic timestamp) to argv[2] until killed or argv[3]
seconds pass."""
import os
import socket
import sys
import time

path, out, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(0.2)
end = time.monotonic() + limit
with open(out, "a", buffering=1) as f:
    while time.monotonic() < end:
        try:
            data = s.recv(4096)
        except socket.timeout:
            continue
        for line in data.decode(errors="replace").splitlines():
            f.write("%.3f %s\n" % (time.monotonic(), line))
os.unlink(path)
