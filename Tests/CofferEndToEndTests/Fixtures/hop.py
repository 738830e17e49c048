#!/usr/bin/python3
# A process that tries to outlive its SSH session's end: it ignores SIGHUP, leaves
# its process group, and replaces itself with a new child every half millisecond
# (so a pid found in /proc is gone a moment later), writing a heartbeat (the time)
# every 0.1 s. For CredentialTests.
#   hop.py HEARTBEAT_FILE SECONDS
import os
import signal
import sys
import time

beat, until = sys.argv[1], time.time() + float(sys.argv[2])
signal.signal(signal.SIGHUP, signal.SIG_IGN)
if os.fork():
    os._exit(0)
os.setsid()
last = 0.0
while time.time() < until:
    if os.fork():
        os._exit(0)
    now = time.time()
    if now - last > 0.1:
        with open(beat, "w") as f:
            f.write("%.3f" % now)
        last = now
    time.sleep(0.0005)
