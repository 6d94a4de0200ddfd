#!/usr/bin/env python3
"""Capture the ClientHello a real TLS client sends, for the `sni` fuzz
seeds (fuzz/seeds/sni/) and the parser's tests.

Usage: fuzz/capture_hello.py OUT_FILE -- CLIENT_COMMAND...
The listener binds 127.0.0.1 on a free port and runs the client command
with `{port}` in its arguments replaced by that port. It accepts one
connection, reads TLS records until the first handshake message is
complete (or 16 KiB, or 10 s), writes those bytes to OUT_FILE, closes
the connection (the client then fails its handshake, which is expected)
and stops the client.

The committed seeds were captured with (from the repository root):
  C=fuzz/capture_hello.py S=fuzz/seeds/sni
  $C $S/openssl_tls13 -- openssl s_client -connect 127.0.0.1:{port} -servername www.example.com
  $C $S/openssl_tls12 -- openssl s_client -connect 127.0.0.1:{port} -servername api.example.com -tls1_2
  $C $S/openssl_no_sni -- openssl s_client -connect 127.0.0.1:{port} -noservername
  $C $S/curl -- curl -sk --resolve www.example.com:{port}:127.0.0.1 https://www.example.com:{port}/
  $C $S/python_ssl -- python3 -c "import ssl,socket; c=ssl.create_default_context(); \
      c.check_hostname=False; c.verify_mode=ssl.CERT_NONE; c.wrap_socket(socket.create_connection( \
      ('127.0.0.1',{port})), server_hostname='py.example.org')"
  ALPN=$(python3 -c "print(','.join(['x'*250+str(i) for i in range(22)]+['http/1.1']))")
  $C $S/openssl_big_alpn -- openssl s_client -connect 127.0.0.1:{port} -servername big.example.com -alpn "$ALPN"
  $C $S/chromium -- chromium --headless --no-sandbox --disable-gpu --user-data-dir=/tmp/chr \
      --host-resolver-rules="MAP pq.example.com 127.0.0.1:{port}" --dump-dom https://pq.example.com/
"""

import socket
import subprocess
import sys
import time

CAP = 16 * 1024


def hello_complete(buf):
    """Whether buf holds a whole first handshake message (across records)."""
    payload = b""
    at = 0
    while at + 5 <= len(buf):
        n = int.from_bytes(buf[at + 3:at + 5], "big")
        payload += buf[at + 5:at + 5 + n]
        if at + 5 + n > len(buf):
            break
        at += 5 + n
        if len(payload) >= 4:
            need = 4 + int.from_bytes(payload[1:4], "big")
            if len(payload) >= need:
                return at
    return None


def main(argv):
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, cmd = argv[1], argv[3:]
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    cmd = [a.replace("{port}", str(port)) for a in cmd]
    client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        lst.settimeout(20)
        conn, _ = lst.accept()
        conn.settimeout(1)
        buf = b""
        deadline = time.monotonic() + 10
        end = None
        while time.monotonic() < deadline and len(buf) < CAP:
            try:
                chunk = conn.recv(CAP - len(buf))
            except socket.timeout:
                continue
            if not chunk:
                break
            buf += chunk
            end = hello_complete(buf)
            if end is not None:
                buf = buf[:end]
                break
        conn.close()
        if end is None:
            print(f"no complete ClientHello ({len(buf)} bytes)", file=sys.stderr)
            return 1
        with open(out, "wb") as f:
            f.write(buf)
        print(f"{out}: {len(buf)} bytes")
        return 0
    finally:
        client.kill()
        client.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
