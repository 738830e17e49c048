# A hostile or broken "cofferd" for the CLI's tests: answers every request on the
# Unix socket argv[1] with the canned response named by argv[2], then closes.
import os, socket, sys

path, mode = sys.argv[1], sys.argv[2]
run = b'{"id":"run_1","mount":"private","size_bytes":1048576,"ttl_seconds":60,"network":"host","secrets":%s}'
responses = {
    "no-secrets": (b"200 OK", [b"Content-Type: application/json"], run % b"[]"),
    "other-path": (b"200 OK", [b"Content-Type: application/json"],
                   run % b'[{"path":"ci/other/x","version":1,"created_at":"2026-01-01T00:00:00Z","allowed_by":"read","value_base64":"eA=="}]'),
    "two-lengths": (b"200 OK", [b"Content-Type: application/octet-stream", b"Content-Length: 3", b"Content-Length: 4"], b"abcd"),
    "length-and-chunked": (b"200 OK", [b"Content-Type: application/octet-stream", b"Content-Length: 4", b"Transfer-Encoding: chunked"], b"4\r\nabcd\r\n0\r\n\r\n"),
    "escape": (b"403 Forbidden", [b"Content-Type: application/json"],
               b'{"error":{"code":"permission_denied","message":"nope\\u001b[31mRED\\nfake: line","hint":"x\\u0007"}}'),
    "huge": (b"200 OK", [b"Content-Type: application/octet-stream", b"Content-Length: 104857600"], b"a" * 1024),
    "json-as-raw": (b"200 OK", [b"Content-Type: application/json", b"Coffer-Version: 1"], b'{"value":"x"}'),
}
status, headers, body = responses[mode]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
# bound and listening under a temporary name, then renamed: the socket file appears
# only once connections are accepted (the test waits for the file)
s.bind(path + ".tmp")
s.listen(8)
os.rename(path + ".tmp", path)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        head = b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
        if not any(h.lower().startswith(b"content-length") or h.lower().startswith(b"transfer-encoding") for h in headers):
            head += b"Content-Length: %d\r\n" % len(body)
        c.sendall(head + b"Connection: close\r\n\r\n" + body)
    except OSError:
        pass
    c.close()
