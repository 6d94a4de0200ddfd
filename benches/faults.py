#!/usr/bin/env python3
"""benches/faults.py - faults around the proxy, under load, for rrproxy and
HAProxy side by side: what each fault costs the clients that are not at
fault, and how fast the proxy recovers.

Every scenario runs the same load (benches/availlib.py: CONCURRENCY
requests in flight, a new connection per request, TIMEOUT seconds each)
against a proxy in front of good HTTP backends, while one fault is injected
around it: a backend that black-holes SYNs, one that accepts and never
reads, one that resets every connection, one that answers slowly, a backend
set that flaps, clients that connect and say nothing, clients that send a
byte a second, a worker that is stopped. The table says what is promised,
and per proxy: failed requests / requests, the slowest request that
succeeded, and (where a fault is injected partway) how long after the
injection the last failure came ("recovered after").

Standard library only. Usage: python3 benches/faults.py [--rrproxy PATH]
Environment: DURATION (s, default 12), CONCURRENCY (50), TIMEOUT (3),
SCENARIOS (space-separated subset), PROXIES ("rrproxy haproxy"),
OUT_DIR (target/bench-results). See benches/README.md, "Fault table".
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DURATION = float(os.environ.get("DURATION", "12"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "50"))
TIMEOUT = float(os.environ.get("TIMEOUT", "3"))
PROXIES = os.environ.get("PROXIES", "rrproxy haproxy").split()
OUT_DIR = os.environ.get("OUT_DIR", os.path.join(ROOT, "target", "bench-results"))
# When the fault starts, seconds into the load.
INJECT_AT = 2.0

SCENARIOS = [
    ("baseline", "no fault", "nothing fails"),
    ("blackhole", "2 of 4 backends black-hole SYNs (full accept queue)",
     "no request fails: a connect that times out is retried on another backend; "
     "checks take the holes out"),
    ("noread", "1 of 3 backends accepts and never reads or answers",
     "only requests sent to it wait (a proxy cannot tell a slow answer from none); "
     "the others are unaffected"),
    ("reset", "1 of 3 backends resets every connection",
     "only its requests fail, with a reset (never a clean close)"),
    ("slow", "1 of 3 backends answers after 500 ms",
     "its requests are slow, the others are not"),
    ("flap", "a backend disabled and enabled every 60 ms (1,000 times a minute)",
     "nothing fails; memory stays bounded"),
    ("silent", "300 clients connect and send nothing",
     "the others are served as usual"),
    ("drip", "50 clients send a byte a second",
     "the others are served as usual"),
    ("stop", "one worker stopped (SIGSTOP)",
     "at most what it held; it is replaced within ~5 s and new clients go to the others"),
]
WANTED = os.environ.get("SCENARIOS", " ".join(s[0] for s in SCENARIOS)).split()


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ------------------------------------------------------------ backends


class Backend:
    """A loopback TCP server in threads; `kind` decides how it behaves."""

    def __init__(self, kind="good", delay=0.0):
        self.kind = kind
        self.delay = delay
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held = []
        if kind == "blackhole":
            # A full accept queue: the kernel drops further SYNs.
            self.sock.listen(0)
            for _ in range(4):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", self.port))
                except BlockingIOError:
                    pass
                self.held.append(c)
            return
        self.sock.listen(4096)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.kind == "noread":
                self.held.append(c)
                return
            if self.kind == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                c.close()
                return
            c.settimeout(10)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            if self.delay:
                time.sleep(self.delay)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            c.shutdown(socket.SHUT_WR)
            while c.recv(4096):
                pass
        except OSError:
            pass
        finally:
            if self.kind != "noread":
                c.close()

    def close(self):
        self.stop.set()
        self.sock.close()
        for c in self.held:
            c.close()


# ------------------------------------------------------------ proxies


class Proxy:
    def __init__(self, kind, backends, tmp, rrproxy):
        self.kind = kind
        self.port = free_port()
        self.tmp = tmp
        self.proc = None
        self.ctl = os.path.join(tmp, "ctl.sock")
        self.stats = os.path.join(tmp, "haproxy.sock")
        self.backends = backends
        self.log = open(os.path.join(tmp, kind + ".log"), "w")
        addrs = ["127.0.0.1:%d" % b.port for b in backends]
        if kind == "rrproxy":
            cmd = [rrproxy, "--listen", "127.0.0.1:%d" % self.port, "--workers", "2",
                   "--metrics", "off", "--control", self.ctl,
                   "--connect-timeout", "1s", "--retries", "2",
                   "--health-interval", "1s", "--health-timeout", "500ms",
                   "--client-first-byte-timeout", "5s", "--idle-timeout", "30s", "-q"]
            for a in addrs:
                cmd += ["--backend", a]
        else:
            cfg = os.path.join(tmp, "haproxy.cfg")
            servers = "\n".join(
                "    server b%d %s check inter 1s fall 3 rise 2" % (i, a) for i, a in enumerate(addrs))
            with open(cfg, "w") as f:
                f.write("""global
    nbthread 2
    maxconn 8000
    stats socket %s mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 500ms
    retries 2
    option redispatch
frontend fe
    bind 127.0.0.1:%d
    default_backend be
backend be
    balance roundrobin
%s
""" % (self.stats, self.port, servers))
            cmd = ["haproxy", "-W", "-db", "-f", cfg]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1.5)  # first health checks

    def workers(self):
        """Pids of the processes that serve connections."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def set_enabled(self, backend_index, enabled):
        addr = "127.0.0.1:%d" % self.backends[backend_index].port
        if self.kind == "rrproxy":
            line = "backend %s %s\n" % ("enable" if enabled else "disable", addr)
            sock = self.ctl
        else:
            line = "set server be/b%d state %s\n" % (backend_index, "ready" if enabled else "maint")
            sock = self.stats
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(sock)
        s.sendall(line.encode())
        try:
            s.recv(4096)
        except OSError:
            pass
        s.close()

    def rss_kb(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for l in f:
                    if l.startswith("VmRSS:"):
                        return int(l.split()[1])
        except OSError:
            return 0
        return 0

    def close(self):
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------ faults


def misbehaving_clients(port, n, drip, stop):
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), 2)
            socks.append(s)
        except OSError:
            pass
    while not stop.is_set():
        if drip:
            for s in socks:
                try:
                    s.send(b"G")
                except OSError:
                    pass
        stop.wait(1.0)
    for s in socks:
        s.close()


def run_cell(scenario, kind, rrproxy):
    tmp = tempfile.mkdtemp(prefix="rrfault-")
    backends = [Backend(), Backend()]
    if scenario == "blackhole":
        backends += [Backend(), Backend("blackhole"), Backend("blackhole")]
        backends = [backends[0], backends[3], backends[1], backends[4], backends[2]]
    elif scenario in ("noread", "reset"):
        backends.append(Backend(scenario))
    elif scenario == "slow":
        backends.append(Backend("good", delay=0.5))
    elif scenario == "flap":
        backends.append(Backend())
    proxy = Proxy(kind, backends, tmp, rrproxy)
    stop = threading.Event()
    injected = {"at": None, "note": ""}
    rss0 = proxy.rss_kb()

    backend_fault = scenario in ("blackhole", "noread", "reset", "slow")

    def inject():
        if backend_fault:
            # Broken from the start: "last failure" counts from the start.
            injected["at"] = time.time()
            return
        time.sleep(INJECT_AT)
        injected["at"] = time.time()
        if scenario in ("silent", "drip"):
            n = 300 if scenario == "silent" else 50
            misbehaving_clients(proxy.port, n, scenario == "drip", stop)
        elif scenario == "flap":
            i = 0
            while not stop.is_set():
                try:
                    proxy.set_enabled(2, i % 2 == 1)
                except OSError as e:
                    injected["note"] = "control: %s" % e
                i += 1
                stop.wait(0.06)
            injected["note"] = "%d changes, front RSS +%d KiB" % (i, proxy.rss_kb() - rss0)
        elif scenario == "stop":
            pids = proxy.workers()[:1]
            for p in pids:
                os.kill(p, signal.SIGSTOP)
            injected["note"] = "stopped pid %s" % pids
            stop.wait(DURATION)
            for p in pids:
                try:
                    os.kill(p, signal.SIGCONT)
                except OSError:
                    pass

    t = threading.Thread(target=inject, daemon=True)
    t.start()
    load = subprocess.run(
        [sys.executable, "-S", os.path.join(HERE, "availlib.py"), "load", "--port", str(proxy.port),
         "--concurrency", str(CONCURRENCY), "--duration", str(DURATION), "--timeout", str(TIMEOUT),
         "--max-events", "100000"],
        capture_output=True, text=True)
    stop.set()
    t.join(5)
    proxy.close()
    for b in backends:
        b.close()
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        r = json.loads(load.stdout)
    except ValueError:
        return {"scenario": scenario, "proxy": kind, "error": load.stderr[-300:]}
    fails = [e["t"] for e in r["events"]]
    recovered = None
    if injected["at"] and fails:
        recovered = max(0.0, max(fails) - injected["at"])
    return {"scenario": scenario, "proxy": kind, "requests": r["requests"],
            "failures": r["failures"], "counts": r["counts"], "max_ms": r["max_ms"],
            "p99_ms": r["p99_ms"], "recovered_s": recovered, "note": injected["note"]}


def cell_text(row):
    if not row:
        return "-"
    if "error" in row:
        return "error"
    out = "%d / %d" % (row["failures"], row["requests"])
    out += ", p99 %s ms, max %s ms" % (row["p99_ms"], row["max_ms"])
    if row["failures"] and row["recovered_s"] is not None:
        out += ", last failure %.1f s after" % row["recovered_s"]
    if row["note"]:
        out += " (%s)" % row["note"]
    return out


def main():
    rrproxy = os.environ.get("RRPROXY", os.path.join(ROOT, "target", "release", "rrproxy"))
    args = sys.argv[1:]
    if args[:1] == ["--rrproxy"]:
        rrproxy = args[1]
    proxies = [p for p in PROXIES if p != "haproxy" or shutil.which("haproxy")]
    rows = []
    for name, what, promise in SCENARIOS:
        if name not in WANTED:
            continue
        for kind in proxies:
            log("%s / %s" % (name, kind))
            rows.append(run_cell(name, kind, rrproxy))
    os.makedirs(OUT_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(OUT_DIR, "faults-%s.json" % stamp), "w") as f:
        json.dump(rows, f, indent=1)
    print("Faults under load: %d requests in flight, a new connection each, %gs per cell, "
          "timeout %gs; a backend fault is there from the start, the others are injected "
          "%gs in (\"last failure\" counts from then).\n" % (CONCURRENCY, DURATION, TIMEOUT, INJECT_AT))
    print("| fault | promised | %s |" % " | ".join(proxies))
    print("|---|---|%s" % ("---|" * len(proxies)))
    for name, what, promise in SCENARIOS:
        if name not in WANTED:
            continue
        cells = [cell_text(next((r for r in rows if r["scenario"] == name and r["proxy"] == p), None))
                 for p in proxies]
        print("| %s | %s | %s |" % (what, promise, " | ".join(cells)))


if __name__ == "__main__":
    main()
