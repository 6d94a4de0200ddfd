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


def proc_counts(root):
    """Per process of the tree: CPU seconds (utime+stime of every thread,
    plus cutime+cstime of reaped children) and context switches (voluntary
    and not, summed over /proc/PID/task/*/status, so every thread counts).
    JSON: {"root": {...}, "others": {...}, "procs": n} where root is the
    process that was started (rrproxy's front, nginx's or HAProxy's
    master) and others is the sum over its descendants (workers)."""
    out = {"root": {"cpu": 0.0, "vol": 0, "invol": 0},
           "others": {"cpu": 0.0, "vol": 0, "invol": 0}, "procs": 0}
    for p in tree_pids(root):
        key = "root" if p == root else "others"
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
            rest = st[st.rfind(")") + 2 :].split()
            cpu = sum(int(x) for x in rest[11:15]) / CLK_TCK
            vol = invol = 0
            for t in os.listdir("/proc/%d/task" % p):
                try:
                    with open("/proc/%d/task/%s/status" % (p, t)) as f:
                        for line in f:
                            if line.startswith("voluntary_ctxt_switches:"):
                                vol += int(line.split()[1])
                            elif line.startswith("nonvoluntary_ctxt_switches:"):
                                invol += int(line.split()[1])
                except OSError:
                    continue
        except OSError:
            continue
        out[key]["cpu"] += cpu
        out[key]["vol"] += vol
        out[key]["invol"] += invol
        out["procs"] += 1
    return out


def cpus_busy_seconds(cpus):
    """Busy CPU-seconds (everything but idle and iowait, softirq and irq
    included) of the listed CPUs since boot, from /proc/stat."""
    want = set("cpu%d" % c for c in cpus)
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            t = line.split()
            if t and t[0] in want:
                v = [int(x) for x in t[1:]]
                total += sum(v[:8]) - v[3] - v[4]
    return total / CLK_TCK


def parse_cpulist(s):
    """'0-2,5' -> [0, 1, 2, 5]"""
    out = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


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


def parse_batches(path):
    """benches/batches.bt output -> a summary of the front's batch sizes:
    per sendmsg and per connection (a connection that went out in a batch
    of 8 counts once at size 8), mean, median, and wake-ups."""
    import re
    hist, scalars = {}, {}
    in_batch = False
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"@(\w+): (\d+)\s*$", line)
            if m:
                scalars[m.group(1)] = int(m.group(2))
                in_batch = False
                continue
            if line.startswith("@batch:"):
                in_batch = True
                continue
            m = re.match(r"\[(\d+), \d+\)\s+(\d+)", line)
            if in_batch and m:
                hist[int(m.group(1))] = int(m.group(2))
    calls = sum(hist.values())
    fds = sum(k * v for k, v in hist.items())
    if not calls:
        return {"error": "no sendmsg seen"}

    def median(weights):
        tot = sum(weights.values())
        acc = 0
        for k in sorted(weights):
            acc += weights[k]
            if acc * 2 >= tot:
                return k
        return None
    per_conn = {k: k * v for k, v in hist.items() if k}
    out = {"sendmsg": calls, "fds": fds,
           "accepted": scalars.get("accepted"), "epoll_wait": scalars.get("epoll_wait"),
           "mean_fds_per_sendmsg": round(fds / calls, 2),
           "median_fds_per_sendmsg": median(hist),
           "median_batch_per_conn": median(per_conn),
           "hist": {str(k): v for k, v in sorted(hist.items())}}
    if scalars.get("accepted"):
        out["epoll_wait_per_conn"] = round(scalars.get("epoll_wait", 0) / scalars["accepted"], 3)
    return out


def show_batches(path):
    b = parse_batches(path)
    if "error" in b:
        print("front batches: " + b["error"])
        return
    print("front batches (bpftrace on the front, one extra unrecorded close cell):")
    print("  %d connections accepted, %d sendmsg carrying %d descriptors: mean %.2f per "
          "sendmsg, median %s; median batch seen by a connection %s; %s epoll_wait per "
          "connection" % (b["accepted"] or 0, b["sendmsg"], b["fds"],
                          b["mean_fds_per_sendmsg"], b["median_fds_per_sendmsg"],
                          b["median_batch_per_conn"], b.get("epoll_wait_per_conn", "?")))
    tot = sum(b["hist"].values())
    row = ["%s: %.1f%%" % (k, 100.0 * v / tot) for k, v in b["hist"].items() if v]
    print("  sendmsg by descriptors carried: " + ", ".join(row))
    print("  raw: " + json.dumps({k: v for k, v in b.items() if k != "hist"}))


# ---------------------------------------------------------------- syscalls

# The system calls `perf stat` counts one by one in the syscall cell (every
# one a proxy here makes per connection or per wake-up); the rest are
# counted together ("other": raw_syscalls:sys_enter minus these). Opening
# all ~360 syscall tracepoints takes perf about 15 s, these about 2.
SYSCALLS = ("accept accept4 read write readv writev recvfrom sendto recvmsg "
            "sendmsg recvmmsg sendmmsg epoll_wait epoll_pwait epoll_pwait2 "
            "epoll_ctl poll ppoll select socket connect bind listen getsockopt "
            "setsockopt getsockname getpeername shutdown close splice tee pipe2 "
            "fcntl ioctl futex sched_yield brk mmap munmap madvise mprotect "
            "timerfd_settime eventfd2 rt_sigprocmask getpid dup dup3 "
            "clock_nanosleep nanosleep io_uring_enter").split()


def perf_events():
    """The -e list for the syscall cell."""
    return ",".join(["syscalls:sys_enter_" + s for s in SYSCALLS]
                    + ["raw_syscalls:sys_enter", "context-switches", "task-clock"])


def tid_roles(root):
    """JSON {tid: "root"|"others"} for every thread of the tree now: the
    started process's threads are "root" (rrproxy's front, nginx's
    master, HAProxy and pen themselves), its descendants' are "others"
    (workers)."""
    out = {}
    for p in tree_pids(root):
        try:
            for t in os.listdir("/proc/%d/task" % p):
                out[t] = "root" if p == root else "others"
        except OSError:
            continue
    return out


def parse_perf(path, roles_path, requests):
    """`perf stat --per-thread -x,` output -> per connection, per role
    ("root", "others", "all"): every counted syscall, "other" syscalls,
    "total", "context-switches" and "cpu_us" (task-clock)."""
    with open(roles_path) as f:
        roles = json.load(f)
    n = float(requests)
    raw = {}
    with open(path, errors="replace") as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 4 or line.startswith("#"):
                continue
            thread, value, event = parts[0], parts[1], parts[3]
            tid = thread.rsplit("-", 1)[-1]
            role = roles.get(tid)
            if role is None or not value.replace(".", "", 1).isdigit():
                continue
            v = float(value)
            for r in (role, "all"):
                d = raw.setdefault(r, {})
                d[event] = d.get(event, 0.0) + v
    out = {}
    for role, d in raw.items():
        per = {}
        named = 0.0
        for event, v in d.items():
            if event.startswith("syscalls:sys_enter_"):
                per[event[len("syscalls:sys_enter_"):]] = v / n
                named += v
        total = d.get("raw_syscalls:sys_enter", 0.0)
        per = {k: round(v, 3) for k, v in per.items() if v >= 0.0005}
        per["other"] = round(max(0.0, total - named) / n, 3)
        per["total"] = round(total / n, 3)
        per["context-switches"] = round(d.get("context-switches", 0.0) / n, 3)
        # task-clock is in msec.
        per["cpu_us"] = round(d.get("task-clock", 0.0) * 1000.0 / n, 2)
        out[role] = per
    return out


def show_syscalls(paths):
    """Print the syscall cells' breakdown: per proxy and role, the system
    calls per connection, largest first."""
    print("system calls per connection (perf stat on one extra close cell per "
          "proxy; front/master = the started process, workers = its children):")
    for path in paths:
        try:
            with open(path) as f:
                j = json.load(f)
        except (OSError, ValueError):
            continue
        name = j.get("proxy", "?")
        roles = j.get("roles", {})
        multi = bool(roles.get("others"))
        for role in (("root", "others") if multi else ("all",)):
            per = roles.get(role) or {}
            if not per:
                continue
            label = name if not multi else "%s %s" % (
                name, "front/master" if role == "root" else "workers")
            calls = sorted(((k, v) for k, v in per.items()
                            if k not in ("total", "context-switches", "cpu_us", "other") and v >= 0.005),
                           key=lambda kv: -kv[1])
            head = "  %s: %.2f syscalls, %.2f context switches, %.1f us (perf task-clock)" % (
                label, per.get("total", 0), per.get("context-switches", 0), per.get("cpu_us", 0))
            print(head)
            print("    " + ", ".join("%s %.2f" % kv for kv in calls)
                  + (", other %.2f" % per["other"] if per.get("other", 0) >= 0.005 else ""))


# ---------------------------------------------------------------- report

# (metric, label, better) in the order the table shows them.
# better: "up" = higher is better, "down" = lower is better.
ROWS = [
    ("close_cps", "1 new conn/request: conn/s", "up"),
    ("close_conn_per_cpu", "2 conns per proxy CPU-second", "up"),
    ("close_cpu_pct", "  proxy CPU, % of its cores", "down"),
    ("close_cores_busy_pct", "  proxy CPUs busy % (all tasks, softirq)", "down"),
    ("close_ctxsw_per_conn", "  context switches per conn", "down"),
    ("close_root_ctxsw_per_conn", "    of which front/master", "down"),
    ("close_us_per_conn", "  proxy CPU us per conn", "down"),
    ("close_root_us_per_conn", "    of which front/master", "down"),
    ("close_others_us_per_conn", "    of which workers", "down"),
    ("close_sys_per_conn", "  syscalls per conn (perf, extra cell)", "down"),
    ("close_root_sys_per_conn", "    of which front/master", "down"),
    ("close_others_sys_per_conn", "    of which workers", "down"),
    ("close_errors", "  errors (wrk socket + non-2xx)", "down"),
    ("ka_rps", "3 keep-alive: req/s", "up"),
    ("ka_p99_ms", "3 keep-alive: p99 latency ms", "down"),
    ("ka_cpu_us_per_req", "  proxy CPU us per request", "down"),
    ("ka_ctxsw_per_req", "  context switches per request", "down"),
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

# Rows whose values are counts or context, not compared to the baseline.
NO_RATIO = ("close_errors", "ka_errors", "idle_held", "close_cpu_pct",
            "close_cores_busy_pct")


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


def _spread(vals, med):
    """Half the min-max range as a percentage of the median."""
    if len(vals) < 2 or not med:
        return None
    return 100.0 * (max(vals) - min(vals)) / 2 / abs(med)


def report(csv_path, proxies, baseline, json_out):
    """Print the table of medians (one row per measure, one column per
    proxy; each value with its spread over the rounds and its ratio to the
    baseline column), then the same cells as min-max over the rounds with
    the range of per-round ratios (each round's value over the baseline's
    value in the same round), and write everything as JSON."""
    import csv
    cells, notes, by_round = {}, [], {}
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
            by_round[(row["metric"], row["proxy"], row["round"])] = v
    med = {k: statistics.median(v) for k, v in cells.items()}
    proxies = [p for p in proxies.split() if any(k[1] == p for k in med)]
    table, spread_table, medians = [], [], []
    for metric, label, better in ROWS:
        if not any((metric, p) in med for p in proxies):
            continue
        if not label.startswith("  "):
            label += " (higher better)" if better == "up" else " (lower better)"
        line, sline = [label], [label]
        base = med.get((metric, baseline))
        no_ratio = metric in NO_RATIO
        for p in proxies:
            v = med.get((metric, p))
            vals = cells.get((metric, p), [])
            ratio = v / base if v is not None and base else None
            s = _fmt(v)
            sp = _spread(vals, v)
            if sp is not None and not no_ratio:
                s += " ±%.0f%%" % sp
            if ratio is not None and p != baseline and not no_ratio:
                s += " %.2fx" % ratio
            line.append(s)
            # Per-round ratios: this proxy's round r over the baseline's round r.
            rr = []
            for (m, q, r), x in by_round.items():
                if m == metric and q == p:
                    b = by_round.get((metric, baseline, r))
                    if b:
                        rr.append(x / b)
            ss = "-" if not vals else (_fmt(min(vals)) + "-" + _fmt(max(vals)))
            if rr and p != baseline and not no_ratio:
                ss += " (%.2f-%.2fx)" % (min(rr), max(rr))
            sline.append(ss)
            if v is not None:
                medians.append({"metric": metric, "proxy": p, "median": v,
                                "values": vals, "min": min(vals), "max": max(vals),
                                "ratio_to_baseline": ratio,
                                "round_ratios": sorted(rr)})
        table.append(line)
        spread_table.append(sline)
    header = ["workload / measure"] + proxies

    def show(rows):
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

        def fmt_row(r):
            return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                             for i, c in enumerate(r))
        print(fmt_row(header))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(fmt_row(r))
    show(table)
    print("\nSpread: min-max over the rounds (and the range of per-round ratios to %s):" % baseline)
    show(spread_table)
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
    elif cmd == "batches":
        show_batches(argv[2])
    elif cmd == "proc-counts":
        print(json.dumps(proc_counts(int(argv[2]))))
    elif cmd == "cpus-busy":
        print("%.3f %.3f" % (cpus_busy_seconds(parse_cpulist(argv[2])), time.time()))
    elif cmd == "tree-rss":
        print(tree_rss_bytes(int(argv[2])))
    elif cmd == "idle":
        idle(int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]),
             float(argv[6]), float(argv[7]))
    elif cmd == "wrk":
        print(json.dumps(parse_wrk(argv[2])))
    elif cmd == "iperf3":
        print(json.dumps(parse_iperf3(argv[2])))
    elif cmd == "perf-events":
        print(perf_events())
    elif cmd == "tid-roles":
        print(json.dumps(tid_roles(int(argv[2]))))
    elif cmd == "perf-parse":
        print(json.dumps(parse_perf(argv[2], argv[3], argv[4])))
    elif cmd == "show-syscalls":
        show_syscalls(argv[2:])
    elif cmd == "report":
        report(argv[2], argv[3], argv[4], argv[5] if len(argv) > 5 else None)
    else:
        raise SystemExit("unknown subcommand " + cmd)


if __name__ == "__main__":
    main(sys.argv)
