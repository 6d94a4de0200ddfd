#!/usr/bin/env python3
"""New-TLS-connection load for benches/sni.sh, and its report.

  tlsload.py run PORT SECONDS PROCS NAME=EXPECT...
      PROCS processes, each opening connection after connection to
      127.0.0.1:PORT for SECONDS: a full TLS handshake (no session
      resumption) asking for the next NAME in turn, `GET / HTTP/1.0`, the
      reply read to its end. A reply whose body is not EXPECT (`*`: any)
      counts as misrouted. Prints one JSON object: ok, failed, misrouted,
      seconds.
  tlsload.py report CSV
      The table of medians over rounds from CSV lines
      `proxy,round,ok,failed,misrouted,seconds,proxy_cpu_seconds`.

Standard library only.
"""

import json
import multiprocessing
import socket
import ssl
import statistics
import sys
import time

REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"


def one(ctx, port, name):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(REQUEST)
            reply = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                reply += chunk
    return reply.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()


def worker(args):
    port, seconds, routes, offset = args
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ok = failed = misrouted = 0
    end = time.monotonic() + seconds
    i = offset
    while time.monotonic() < end:
        name, expect = routes[i % len(routes)]
        i += 1
        try:
            body = one(ctx, port, name)
        except (OSError, ssl.SSLError):
            failed += 1
            continue
        if expect != "*" and body != expect:
            misrouted += 1
        else:
            ok += 1
    return ok, failed, misrouted


def run(port, seconds, procs, routes):
    start = time.monotonic()
    with multiprocessing.Pool(procs) as pool:
        parts = pool.map(worker, [(port, seconds, routes, k) for k in range(procs)])
    took = time.monotonic() - start
    ok, failed, misrouted = (sum(p[i] for p in parts) for i in range(3))
    print(json.dumps({"ok": ok, "failed": failed, "misrouted": misrouted,
                      "seconds": round(took, 3)}))


def report(path):
    rows = {}
    order = []
    with open(path) as f:
        for line in f:
            p, _rnd, ok, failed, mis, secs, cpu = line.strip().split(",")
            if p not in rows:
                rows[p] = []
                order.append(p)
            rows[p].append((int(ok), int(failed), int(mis), float(secs), float(cpu)))
    base = None
    out = []
    for p in order:
        r = rows[p]
        rate = statistics.median(ok / secs for ok, _, _, secs, _ in r)
        per_cpu = [ok / cpu for ok, _, _, _, cpu in r if cpu > 0]
        per_cpu = statistics.median(per_cpu) if per_cpu else None
        us = 1e6 / per_cpu if per_cpu else None
        failed = sum(x[1] for x in r)
        mis = sum(x[2] for x in r)
        if p == "haproxy-sni":
            base = (rate, per_cpu)
        out.append((p, rate, per_cpu, us, failed, mis, len(r)))
    print("%-14s %10s %8s %12s %12s %14s %7s %10s" % (
        "proxy", "conn/s", "x hap", "proxy us/conn", "conn/CPU-s", "x hap (CPU)",
        "failed", "misrouted"))
    for p, rate, per_cpu, us, failed, mis, n in out:
        ratio = "%.2fx" % (rate / base[0]) if base else "-"
        cratio = "%.2fx" % (per_cpu / base[1]) if base and base[1] and per_cpu else "-"
        print("%-14s %10.0f %8s %12s %12s %14s %7d %10d" % (
            p, rate, ratio, "%.1f" % us if us else "-",
            "%.0f" % per_cpu if per_cpu else "-", cratio, failed, mis))
    print("(medians of %d round(s); proxy CPU is the whole process tree's "
          "utime+stime over the measured window)" % max(n for *_, n in out))


def main(argv):
    if len(argv) >= 5 and argv[1] == "run":
        routes = [tuple(r.split("=", 1)) for r in argv[5:]]
        run(int(argv[2]), float(argv[3]), int(argv[4]), routes)
    elif len(argv) == 3 and argv[1] == "report":
        report(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
