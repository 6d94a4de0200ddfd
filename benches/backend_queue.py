#!/usr/bin/env python3
"""Is the backend queue exact? rrproxy (`maxconn=`) and HAProxy (server
`maxconn`), side by side on the same load, same backend.
(Named backend_queue.py: a queue.py here would shadow Python's own `queue`
module for the other benches in this directory, which import multiprocessing.)

One backend (in this process, asyncio) records how many connections it has
open at once (peak) and the order in which clients reach it; each
connection is held HOLD ms, then answered. CLIENTS clients arrive PACE ms
apart (their arrival order is their number, sent as the first line) and
wait for the answer. Each proxy gets the same backend with maxconn MAX and
2 worker processes / threads. Printed per proxy and round: the backend's
peak, clients answered, the largest and the mean displacement of a client
between its arrival and its service (0 = strict FIFO; a client may pass
at most the ones that got a slot at the same instant, < MAX), the p50/p99
of the time a client waited for its answer, and the whole run's time.

    cargo build --release
    python3 benches/backend_queue.py            # ROUNDS=3 CLIENTS=400 MAX=10 ...

Starts everything it needs on free loopback ports and kills it at the end.
"""

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_ports  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
CLIENTS = int(os.environ.get("CLIENTS", "400"))
MAX = int(os.environ.get("MAX", "10"))
HOLD = float(os.environ.get("HOLD", "20")) / 1000
PACE = float(os.environ.get("PACE", "0.5")) / 1000
RRPROXY = os.environ.get(
    "RRPROXY",
    os.path.join(os.path.dirname(__file__), "..", "target", "release", "rrproxy"),
)


class Backend:
    def __init__(self):
        self.open = 0
        self.peak = 0
        self.order = []

    async def handle(self, reader, writer):
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            line = await asyncio.wait_for(reader.readline(), 60)
            if line.strip().isdigit():
                self.order.append(int(line))
            await asyncio.sleep(HOLD)
        finally:
            # Counted out before the answer: the proxy can free the slot
            # only after it.
            self.open -= 1
        try:
            writer.write(b"ok\n")
            await writer.drain()
            await asyncio.wait_for(reader.read(), 60)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            # (Cancelled: the bench is ending.)
            pass
        writer.close()


async def client(port, n, waits):
    start = time.monotonic()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"%d\n" % n)
        await w.drain()
        line = await asyncio.wait_for(r.readline(), 120)
        w.close()
        if line == b"ok\n":
            waits.append(time.monotonic() - start)
            return True
    except (OSError, asyncio.TimeoutError):
        pass
    return False


async def run_round(port, backend):
    backend.peak = 0
    backend.order = []
    waits = []
    began = time.monotonic()
    tasks = []
    for n in range(CLIENTS):
        tasks.append(asyncio.create_task(client(port, n, waits)))
        await asyncio.sleep(PACE)
    answered = sum(await asyncio.gather(*tasks))
    took = time.monotonic() - began
    disp = [abs(pos - n) for pos, n in enumerate(backend.order)]
    waits.sort()
    q = lambda p: waits[min(len(waits) - 1, int(p * len(waits)))] * 1000 if waits else float("nan")
    return {
        "peak": backend.peak,
        "answered": answered,
        "disp_max": max(disp) if disp else -1,
        "disp_mean": statistics.mean(disp) if disp else float("nan"),
        "p50": q(0.50),
        "p99": q(0.99),
        "took": took,
    }


def start_rrproxy(listen, backend_port, tmp):
    return subprocess.Popen(
        [RRPROXY, "--listen", f"127.0.0.1:{listen}",
         "--backend", f"127.0.0.1:{backend_port},maxconn={MAX}",
         "--workers", "2", "--metrics", "off", "--health-interval", "off",
         "--queue-timeout", "60s",
         "--control", os.path.join(tmp, "ctl.sock")],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "rrproxy.log"), "w"),
        start_new_session=True)


def start_haproxy(listen, backend_port, tmp):
    cfg = os.path.join(tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout queue 60s
frontend f
    bind 127.0.0.1:{listen}
    default_backend b
backend b
    server s1 127.0.0.1:{backend_port} maxconn {MAX}
""")
    return subprocess.Popen(["haproxy", "-f", cfg, "-db"],
                            stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "haproxy.log"), "w"),
                            start_new_session=True)


async def wait_port(port, limit=10):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {limit}s")


async def main():
    if not os.path.exists(RRPROXY):
        raise SystemExit(f"{RRPROXY} missing: cargo build --release")
    if not shutil.which("haproxy"):
        raise SystemExit("haproxy is not installed")
    backend = Backend()
    bport, rport, hport = free_ports(3)
    server = await asyncio.start_server(backend.handle, "127.0.0.1", bport, backlog=4096)
    tmp = tempfile.mkdtemp(prefix="queue-bench-")
    procs = {"rrproxy": start_rrproxy(rport, bport, tmp),
             "haproxy": start_haproxy(hport, bport, tmp)}
    ports = {"rrproxy": rport, "haproxy": hport}
    try:
        for name in procs:
            await wait_port(ports[name])
        # A probe connection each reached the backend: forget it.
        await asyncio.sleep(0.2)
        print(f"clients {CLIENTS}, {PACE*1000:g} ms apart, maxconn {MAX}, "
              f"backend holds {HOLD*1000:g} ms; 2 workers / threads; {ROUNDS} rounds")
        print(f"{'proxy':8} {'round':>5} {'peak':>5} {'answered':>8} {'disp max':>8} "
              f"{'disp mean':>9} {'wait p50 ms':>11} {'wait p99 ms':>11} {'run s':>6}")
        results = {name: [] for name in procs}
        for rnd in range(ROUNDS):
            for name in procs:  # interleaved
                r = await run_round(ports[name], backend)
                results[name].append(r)
                print(f"{name:8} {rnd:>5} {r['peak']:>5} {r['answered']:>8} {r['disp_max']:>8} "
                      f"{r['disp_mean']:>9.2f} {r['p50']:>11.1f} {r['p99']:>11.1f} {r['took']:>6.2f}")
        med = lambda name, k: statistics.median(x[k] for x in results[name])
        print("\nmedians, and rrproxy / haproxy:")
        for k in ["peak", "disp_max", "disp_mean", "p50", "p99", "took"]:
            a, b = med("rrproxy", k), med("haproxy", k)
            ratio = a / b if b else float("nan")
            print(f"  {k:10} rrproxy {a:9.2f}  haproxy {b:9.2f}  ratio {ratio:6.2f}")
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
