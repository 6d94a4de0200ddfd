#!/usr/bin/env python3
"""Helpers for benches/compare.sh: free ports, per-process-tree CPU and RSS,
the idle-connection client, parsing of wrk/iperf3 output and the report.

Standard library only. Every subcommand prints its result on stdout (a
number or one JSON object) so the shell script can capture it.
"""

import json
import os
import random
import resource
import selectors
import socket
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- ports


def free_ports(n, lo=20000, hi=32000):
    """n distinct TCP ports on 127.0.0.1 that are free right now.

    Chosen below the kernel's ephemeral range (32768+ by default) so that
    the many outgoing connections of the benchmark never take one of them
    between the moment it is picked and the moment a server binds it.
    All candidates are held bound at once so they are distinct."""
    held, ports = [], []
    tries = 0
    while len(ports) < n:
        tries += 1
        if tries > 10000:
            raise SystemExit("could not find %d free ports" % n)
        p = random.randrange(lo, hi)
        if p in ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            s.close()
            continue
        held.append(s)
        ports.append(p)
    for s in held:
        s.close()
    return ports


# ---------------------------------------------------------------- /proc


def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: split after the last ')'.
        rest = st[st.rfind(")") + 2 :].split()
        ppid = int(rest[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(root):
    """root and all its descendants that exist now."""
    if not os.path.exists("/proc/%d" % root):
        return []
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu_seconds(root):
    """utime+stime (+cutime+cstime of reaped children) over the tree."""
    ticks = 0
    for p in tree_pids(root):
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2 :].split()
        # rest[0] is field 3 (state); utime is field 14 -> rest[11].
        ticks += sum(int(x) for x in rest[11:15])
    return ticks / CLK_TCK


def tree_rss_bytes(root):
    """Sum of VmRSS over the tree (shared pages count once per process)."""
    total = 0
    for p in tree_pids(root):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def machine_busy_seconds():
    """CPU-seconds all CPUs spent running tasks since boot, plus steal
    (from /proc/stat). irq and softirq time is left out: on loopback most
    of it is our own traffic, and no process is charged for it."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK


# ---------------------------------------------------------------- idle


def count_established(port):
    """ESTABLISHED IPv4 sockets on this machine whose remote port is port,
    i.e. connections some local process opened *to* port."""
    n = 0
    want = "%04X" % port
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "01" and parts[2].rsplit(":", 1)[1] == want:
                        n += 1
        except OSError:
            pass
    return n


def idle(n, port, backend_port, root_pid, settle, timeout, stall=5.0):
    """Open n idle connections to 127.0.0.1:port (the proxy), wait until
    the proxy holds n connections to backend_port, measure the proxy tree's
    RSS, close everything. Prints one JSON object.

    Gives up waiting after `timeout` seconds in all, or once nothing has
    progressed (no connect completed, no new backend connection) for
    `stall` seconds: a proxy that stops accepting then shows as holding
    fewer connections than asked, quickly."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    res = {"target": n}
    base_backend = count_established(backend_port)
    time.sleep(0.2)
    res["rss_before"] = tree_rss_bytes(root_pid) if root_pid else 0
    sel = selectors.DefaultSelector()
    socks, pending, failed = [], 0, 0
    t0 = time.monotonic()
    deadline = t0 + timeout
    started = 0
    max_inflight = 256  # keep well under every listen backlog
    last_progress = t0
    res["stalled"] = False
    while (started < n or pending) and time.monotonic() < deadline:
        if time.monotonic() - last_progress > stall:
            res["stalled"] = True
            break
        while started < n and pending < max_inflight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            except OSError:
                failed += 1
                s.close()
                started += 1
                continue
            sel.register(s, selectors.EVENT_WRITE)
            pending += 1
            started += 1
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            last_progress = time.monotonic()
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                failed += 1
                s.close()
            else:
                socks.append(s)
    res["connected"] = len(socks)
    res["connect_failed"] = failed
    res["connect_pending"] = pending
    res["open_seconds"] = round(time.monotonic() - t0, 3)
    # Wait for the proxy to have opened its side to the backend.
    want = len(socks)
    got = count_established(backend_port) - base_backend
    last_progress = time.monotonic()
    while got < want and time.monotonic() < deadline:
        if time.monotonic() - last_progress > stall:
            res["stalled"] = True
            break
        time.sleep(0.2)
        now = count_established(backend_port) - base_backend
        if now > got:
            last_progress = time.monotonic()
        got = now
    res["backend_established"] = got
    res["ready_seconds"] = round(time.monotonic() - t0, 3)
    time.sleep(settle)
    # Any connection the proxy dropped meanwhile shows as readable (EOF).
    res["rss_after"] = tree_rss_bytes(root_pid) if root_pid else 0
    alive = 0
    probe = selectors.DefaultSelector()
    for s in socks:
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        probe.register(s, selectors.EVENT_READ)
    dropped = len(probe.select(timeout=0))
    alive = len(socks) - dropped
    res["alive_at_end"] = alive
    res["backend_established_end"] = count_established(backend_port) - base_backend
    for s in socks:
        s.close()
    for key in list(sel.get_map().values()):  # connects still pending
        key.fileobj.close()
    held = min(alive, res["backend_established_end"])
    res["held"] = held
    if root_pid and held > 0:
        res["bytes_per_conn"] = round((res["rss_after"] - res["rss_before"]) / held, 1)
    print(json.dumps(res))


# ---------------------------------------------------------------- parsing


def _dur_to_ms(s):
    for unit, mult in (("us", 1e-3), ("ms", 1.0), ("s", 1000.0), ("m", 60000.0)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * mult
    return float(s)


def parse_wrk(path):
    """Requests/sec, total requests, p50/p99 latency (ms), errors."""
    r = {"requests": None, "rps": None, "p50_ms": None, "p99_ms": None,
         "sock_connect": 0, "sock_read": 0, "sock_write": 0,
         "sock_timeout": 0, "non2xx": 0}
    with open(path, errors="replace") as f:
        for line in f:
            t = line.split()
            if not t:
                continue
            if line.startswith("Requests/sec:"):
                r["rps"] = float(t[1])
            elif len(t) >= 3 and t[1] == "requests" and t[2] == "in":
                r["requests"] = int(t[0])
            elif t[0] == "50%" and len(t) == 2:
                r["p50_ms"] = _dur_to_ms(t[1])
            elif t[0] == "99%" and len(t) == 2:
                r["p99_ms"] = _dur_to_ms(t[1])
            elif line.strip().startswith("Socket errors:"):
                # Socket errors: connect 0, read 0, write 0, timeout 0
                s = line.split(":", 1)[1].replace(",", " ").split()
                for k, v in zip(s[0::2], s[1::2]):
                    r["sock_" + k] = int(v)
            elif line.strip().startswith("Non-2xx or 3xx responses:"):
                r["non2xx"] = int(t[-1])
    r["errors"] = (r["sock_connect"] + r["sock_read"] + r["sock_write"]
                   + r["sock_timeout"] + r["non2xx"])
    return r


def parse_iperf3(path):
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        return {"error": "unparseable iperf3 output: %s" % e}
    if "error" in j:
        return {"error": j["error"]}
    end = j.get("end", {})
    recv = end.get("sum_received", {})
    sent = end.get("sum_sent", {})
    return {"bits_per_second": recv.get("bits_per_second"),
            "bytes": recv.get("bytes"),
            "retransmits": sent.get("retransmits")}


# ---------------------------------------------------------------- report

# (metric, label, better) in the order the table shows them.
# better: "up" = higher is better, "down" = lower is better.
ROWS = [
    ("close_cps", "1 new conn/request: conn/s", "up"),
    ("close_conn_per_cpu", "2 conns per proxy CPU-second", "up"),
    ("close_errors", "  errors (wrk socket + non-2xx)", "down"),
    ("ka_rps", "3 keep-alive: req/s", "up"),
    ("ka_p99_ms", "3 keep-alive: p99 latency ms", "down"),
    ("ka_cpu_us_per_req", "  proxy CPU us per request", "down"),
    ("ka_errors", "  errors (wrk socket + non-2xx)", "down"),
    ("bulk_MBps", "4 bulk 256 MiB download: MB/s", "up"),
    ("bulk_cpu_s_per_GB", "  proxy CPU-s per GB", "down"),
    ("iperf_Gbps", "5 iperf3 1 stream: Gbit/s", "up"),
    ("iperf_cpu_s_per_GB", "  proxy CPU-s per GB", "down"),
    ("idle_bytes_per_conn", "6 idle conns: RSS bytes per conn", "down"),
    ("idle_held", "  idle conns actually held", "up"),
    ("idle_rss_base_MiB", "  proxy RSS before, MiB", "down"),
    ("idle_rss_loaded_MiB", "  proxy RSS while holding, MiB", "down"),
]


def _fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100000:
        return "%.0f" % v
    if a >= 1000:
        return "%.0f" % v
    if a >= 100:
        return "%.1f" % v
    if a >= 1:
        return "%.2f" % v
    if a == 0:
        return "0"
    return "%.3f" % v


def report(csv_path, proxies, baseline, json_out):
    """Print the table of medians (one row per measure, one column per
    proxy, each value followed by its ratio to the baseline column) and
    write the medians as JSON."""
    import csv
    cells, notes = {}, []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row["metric"] == "note":
                notes.append("%s / %s: %s" % (row["proxy"], row["workload"], row["value"]))
                continue
            try:
                v = float(row["value"])
            except ValueError:
                continue
            cells.setdefault((row["metric"], row["proxy"]), []).append(v)
    med = {k: statistics.median(v) for k, v in cells.items()}
    proxies = [p for p in proxies.split() if any(k[1] == p for k in med)]
    table, medians = [], []
    for metric, label, better in ROWS:
        if not any((metric, p) in med for p in proxies):
            continue
        if not label.startswith("  "):
            label += " (higher better)" if better == "up" else " (lower better)"
        line = [label]
        base = med.get((metric, baseline))
        no_ratio = metric.endswith("_errors") or metric == "idle_held"
        for p in proxies:
            v = med.get((metric, p))
            ratio = v / base if v is not None and base else None
            s = _fmt(v)
            if ratio is not None and p != baseline and not no_ratio:
                s += " %.2fx" % ratio
            line.append(s)
            if v is not None:
                medians.append({"metric": metric, "proxy": p, "median": v,
                                "values": cells[(metric, p)],
                                "ratio_to_baseline": ratio})
        table.append(line)
    header = ["workload / measure"] + proxies
    widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]

    def fmt_row(r):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(r))
    print(fmt_row(header))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print(fmt_row(r))
    if notes:
        # The same message from several rounds shows once, with a count.
        seen = {}
        for n in notes:
            seen[n] = seen.get(n, 0) + 1
        print("\nNotes from the run:")
        for n, c in seen.items():
            print("  - " + n + ("  (x%d)" % c if c > 1 else ""))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"baseline": baseline, "proxies": proxies,
                       "medians": medians, "notes": notes}, f, indent=1)


# ---------------------------------------------------------------- main


def main(argv):
    cmd = argv[1]
    if cmd == "freeports":
        print(" ".join(str(p) for p in free_ports(int(argv[2]))))
    elif cmd == "tree-pids":
        print(" ".join(str(p) for p in tree_pids(int(argv[2]))))
    elif cmd == "tree-cpu":
        print("%.2f" % tree_cpu_seconds(int(argv[2])))
    elif cmd == "busy":
        print("%.2f" % machine_busy_seconds())
    elif cmd == "tree-rss":
        print(tree_rss_bytes(int(argv[2])))
    elif cmd == "idle":
        idle(int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]),
             float(argv[6]), float(argv[7]))
    elif cmd == "wrk":
        print(json.dumps(parse_wrk(argv[2])))
    elif cmd == "iperf3":
        print(json.dumps(parse_iperf3(argv[2])))
    elif cmd == "report":
        report(argv[2], argv[3], argv[4], argv[5] if len(argv) > 5 else None)
    else:
        raise SystemExit("unknown subcommand " + cmd)


if __name__ == "__main__":
    main(sys.argv)
