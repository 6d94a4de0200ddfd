#!/usr/bin/env python3
"""Helpers for benches/availability.sh (standard library only).

Subcommands (each prints its result on stdout):

  load      the load client: HTTP requests through the proxy, every one
            accounted for (see below); prints one JSON object
  ab        the same load with ApacheBench (`ab -r`) instead, its summary
            in the same JSON shape, for comparison with the articles that
            measured with ab (no per-failure times; see README)
  slotpid   SLOT: read `rrproxy ctl --json workers` on stdin, print the pid
            serving SLOT (or the next slot that has one) as "SLOT PID"
  cell      combine one run's load result, injected faults, proxy log and
            proxy counters into one result row (JSON)
  table     print the table of result rows (a JSON-lines file)

The load client keeps --concurrency requests in flight for --duration
seconds, each on a new TCP connection (HTTP/1.0, the server closes after
the response), or with --keepalive on persistent HTTP/1.1 connections.
Every request it starts ends in exactly one outcome:

  ok         status 2xx and the whole body (Content-Length) received
  refused    connect() got ECONNREFUSED
  conn_err   connect() failed otherwise
  reset      ECONNRESET/EPIPE while connecting, sending or reading
  eof        the connection closed before a complete response
  eof_idle   (--keepalive only) a request on a reused connection that the
             peer closed before the first response byte; real HTTP clients
             retry these, here it counts as a failure all the same
  timeout    no complete response within --timeout seconds
  non2xx     a complete response with another status

When the duration is over no new request starts, and the ones in flight are
waited for (at most --timeout), so nothing started goes uncounted. Failures
are listed with wall-clock times (time.time()) so that they can be lined up
with the faults the script injects.

How long clients waited, whatever the outcome: the longest time from a
request's start to its connect completing (max_connect_ms), to its first
response byte (max_wait_ms: what a client sees of a proxy that stopped
accepting, since the kernel completes the handshake from the backlog), and
the longest stretch during which no connect completed at all
(accept_gap_ms, new-connection mode only).
"""

import argparse
import csv
import errno
import io
import json
import re
import subprocess
import selectors
import socket
import sys
import time

RECV = 65536


class Req:
    __slots__ = ("sock", "state", "buf", "sent", "t0", "deadline", "reused",
                 "out", "conn_t0", "waiting")

    def __init__(self):
        self.sock = None
        self.state = "idle"
        self.buf = bytearray()
        self.sent = 0
        self.t0 = 0.0
        self.deadline = 0.0
        self.reused = False
        self.waiting = False
        self.out = b""
        self.conn_t0 = 0.0


def parse_response(buf, eof):
    """(done, status, close) if buf holds a whole response, close telling
    whether the server ends the connection after it; (False, None, None)
    if more is needed; raises ValueError if it can never be one."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False, None, None
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError("bad status line")
    status = int(parts[1])
    length = None
    close = parts[0] == "HTTP/1.0"
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip())
        elif k == "connection":
            tokens = [t.strip().lower() for t in v.split(",")]
            if "close" in tokens:
                close = True
            elif "keep-alive" in tokens:
                close = False
    body = len(buf) - end - 4
    if length is not None:
        return body >= length, status, close
    # No length: the body ends at EOF.
    return eof, status, True


def load_args(prog):
    """The options both load generators (ours and ab) take."""
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--concurrency", "-c", type=int, default=50)
    ap.add_argument("--duration", "-d", type=float, default=10)
    ap.add_argument("--timeout", type=float, default=5)
    ap.add_argument("--keepalive", action="store_true")
    ap.add_argument("--start-file", help="write the start time here when running")
    return ap


def load(argv):
    ap = load_args("availlib.py load")
    ap.add_argument("--max-events", type=int, default=2000)
    a = ap.parse_args(argv)

    if a.keepalive:
        request = ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (a.path, a.host)).encode()
    else:
        request = ("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (a.path, a.host)).encode()
    addr = (a.host, a.port)
    sel = selectors.DefaultSelector()
    counts = {}
    events = []
    dropped_events = 0
    latencies_ok = []
    waits = {"connect": 0.0, "first_byte": 0.0, "gap": 0.0, "last_connect": None,
             "worst_at": None}

    def finish(r, outcome, detail=""):
        nonlocal dropped_events
        counts[outcome] = counts.get(outcome, 0) + 1
        now = time.time()
        if outcome == "ok":
            latencies_ok.append(now - r.t0)
        elif len(events) < a.max_events:
            events.append({"t": round(now, 4), "start": round(r.t0, 4),
                           "outcome": outcome, "detail": detail,
                           "reused": r.reused, "bytes": len(r.buf)})
        else:
            dropped_events += 1

    def close(r):
        if r.sock is not None:
            try:
                sel.unregister(r.sock)
            except (KeyError, ValueError):
                pass
            r.sock.close()
            r.sock = None

    def start(r, now):
        r.buf = bytearray()
        r.sent = 0
        r.t0 = time.time()
        r.waiting = True
        r.deadline = now + a.timeout
        if a.keepalive and r.sock is not None:
            r.reused = True
            r.state = "send"
            sel.register(r.sock, selectors.EVENT_WRITE, r)
            return
        r.reused = False
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        r.sock = s
        try:
            s.connect(addr)
        except BlockingIOError:
            pass
        except OSError as e:
            close(r)
            finish(r, "refused" if e.errno == errno.ECONNREFUSED else "conn_err",
                   errno.errorcode.get(e.errno, str(e.errno)))
            r.state = "idle"
            return
        r.state = "connect"
        sel.register(s, selectors.EVENT_WRITE, r)

    def fail_io(r, e, phase):
        code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else str(e)
        close(r)
        if e.errno in (errno.ECONNRESET, errno.EPIPE):
            finish(r, "reset", phase + ":" + code)
        elif phase == "connect":
            finish(r, "refused" if e.errno == errno.ECONNREFUSED else "conn_err", code)
        else:
            finish(r, "reset", phase + ":" + code)
        r.state = "idle"

    reqs = [Req() for _ in range(a.concurrency)]
    t_start_mono = time.monotonic()
    t_start = time.time()
    if a.start_file:
        with open(a.start_file, "w") as f:
            f.write("%.4f\n" % t_start)
    stop_at = t_start_mono + a.duration
    hard_stop = stop_at + a.timeout + 1
    started = 0
    while True:
        now = time.monotonic()
        running = now < stop_at
        if running:
            for r in reqs:
                if r.state == "idle":
                    started += 1
                    start(r, now)
        busy = [r for r in reqs if r.state != "idle"]
        if not running and not busy:
            break
        if now > hard_stop:
            break
        for key, mask in sel.select(timeout=0.05):
            r = key.data
            s = r.sock
            if s is None:
                continue
            if r.state == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail_io(r, OSError(err, ""), "connect")
                    continue
                tc = time.time()
                waits["connect"] = max(waits["connect"], tc - r.t0)
                if waits["last_connect"] is not None:
                    waits["gap"] = max(waits["gap"], tc - waits["last_connect"])
                waits["last_connect"] = tc
                r.state = "send"
            if r.state == "send":
                try:
                    r.sent += s.send(request[r.sent:])
                except BlockingIOError:
                    continue
                except OSError as e:
                    fail_io(r, e, "send")
                    continue
                if r.sent == len(request):
                    r.state = "recv"
                    sel.modify(s, selectors.EVENT_READ, r)
                continue
            if r.state == "recv":
                try:
                    data = s.recv(RECV)
                except BlockingIOError:
                    continue
                except OSError as e:
                    fail_io(r, e, "recv")
                    continue
                eof = not data
                if data and r.waiting:
                    r.waiting = False
                    w = time.time() - r.t0
                    if w > waits["first_byte"]:
                        waits["first_byte"] = w
                        waits["worst_at"] = r.t0
                r.buf += data
                try:
                    done, status, server_closes = parse_response(r.buf, eof)
                except ValueError:
                    close(r)
                    finish(r, "eof", "garbled")
                    r.state = "idle"
                    continue
                if done:
                    if not (a.keepalive and not eof and not server_closes):
                        # Keep the connection only if the server does.
                        close(r)
                    finish(r, "ok" if 200 <= status < 300 else "non2xx",
                           "" if 200 <= status < 300 else str(status))
                    r.state = "idle"
                    if r.sock is not None:
                        # Park it, unselected, until the next request.
                        sel.unregister(r.sock)
                elif eof:
                    close(r)
                    if a.keepalive and r.reused and not r.buf:
                        finish(r, "eof_idle", "reused connection closed")
                    else:
                        finish(r, "eof", "closed after %d bytes" % len(r.buf))
                    r.state = "idle"
        now = time.monotonic()
        for r in reqs:
            if r.state != "idle" and now > r.deadline:
                close(r)
                finish(r, "timeout", r.state)
                r.state = "idle"
    # Anything still open at the hard stop is a timeout.
    for r in reqs:
        if r.state != "idle":
            close(r)
            finish(r, "timeout", r.state + " at end")
            r.state = "idle"
        close(r)
    elapsed = time.monotonic() - t_start_mono
    total = sum(counts.values())
    ok = counts.get("ok", 0)
    lat = sorted(latencies_ok)

    def pct(p):
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)

    out = {
        "requests": total, "ok": ok, "failures": total - ok,
        "availability_pct": round(100.0 * ok / total, 4) if total else None,
        "counts": counts, "seconds": round(elapsed, 3),
        "rps": round(total / elapsed, 1) if elapsed else None,
        "t_start": round(t_start, 4),
        "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        "ok_over_1s": sum(1 for x in lat if x > 1.0),
        "max_connect_ms": round(waits["connect"] * 1000, 2),
        "max_wait_ms": round(waits["first_byte"] * 1000, 2),
        "max_wait_at": round(waits["worst_at"], 4) if waits["worst_at"] else None,
        "accept_gap_ms": None if a.keepalive else round(waits["gap"] * 1000, 2),
        "concurrency": a.concurrency, "keepalive": a.keepalive,
        "timeout": a.timeout, "events": events,
        "events_dropped": dropped_events,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")




# ---------------------------------------------------------------- ab


def ab(argv):
    """Run `ab -r` for --duration seconds and print its counts as JSON.

    ab's "Complete requests" counts every request that ended, failed ones
    included; "Failed requests" is split into Connect, Receive, Length and
    Exceptions, and one failed request can show in two of them (a refused
    connect counts as Receive and as Exception), so failures are taken as
    min(Failed, Complete) plus non-2xx responses."""
    ap = load_args("availlib.py ab")
    ap.add_argument("--raw", help="keep ab's own output here")
    a = ap.parse_args(argv)
    # -n after -t: -t alone caps the run at 50000 requests.
    cmd = ["ab", "-r", "-q", "-s", str(int(max(1, a.timeout))),
           "-t", str(int(a.duration)), "-n", str(int(a.duration * 40000)),
           "-c", str(a.concurrency)]
    if a.keepalive:
        cmd.append("-k")
    cmd.append("http://%s:%d%s" % (a.host, a.port, a.path))
    t_start = time.time()
    if a.start_file:
        with open(a.start_file, "w") as f:
            f.write("%.4f\n" % t_start)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, errors="replace")
    out = p.stdout
    if a.raw:
        with open(a.raw, "w") as f:
            f.write(out)

    def num(pattern, default=0):
        m = re.search(pattern, out)
        return int(m.group(1)) if m else default

    complete = num(r"Complete requests:\s+(\d+)", None)
    if complete is None:
        raise SystemExit("ab gave no result (exit %d): %s" % (p.returncode, out[-300:]))
    failed = num(r"Failed requests:\s+(\d+)")
    non2xx = num(r"Non-2xx responses:\s+(\d+)")
    m = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", out)
    counts = {}
    if m:
        for k, v in zip(("ab_connect", "ab_receive", "ab_length", "ab_exceptions"), m.groups()):
            if int(v):
                counts[k] = int(v)
    if non2xx:
        counts["non2xx"] = non2xx
    failures = min(failed, complete) + non2xx
    ok = max(0, complete - failures)
    counts["ok"] = ok
    secs = float(re.search(r"Time taken for tests:\s+([\d.]+)", out).group(1))
    lat = {}
    for q in ("50", "99", "100"):
        mm = re.search(r"^\s*%s%%\s+(\d+)" % q, out, re.M)
        lat[q] = float(mm.group(1)) if mm else None
    json.dump({
        "requests": complete, "ok": ok, "failures": failures,
        "availability_pct": round(100.0 * ok / complete, 4) if complete else None,
        "counts": counts, "seconds": secs,
        "rps": round(complete / secs, 1) if secs else None, "t_start": round(t_start, 4),
        "p50_ms": lat["50"], "p99_ms": lat["99"], "max_ms": lat["100"],
        "concurrency": a.concurrency, "keepalive": a.keepalive, "timeout": a.timeout,
        "events": [], "events_dropped": failures, "loadgen": "ab",
    }, sys.stdout)
    sys.stdout.write("\n")


# ---------------------------------------------------------------- slotpid


def slotpid(argv):
    """Pid serving slot argv[0] (or, if that slot has none up, the next
    slot that has), from `rrproxy ctl --json workers` on stdin."""
    want = int(argv[0])
    workers = json.load(sys.stdin)
    n = len(workers)
    for k in range(n):
        w = workers[(want + k) % n]
        if w.get("state") == "up" and w.get("pid"):
            print(w["slot"], w["pid"])
            return
    print("-1 0")


# ---------------------------------------------------------------- cell

# Events the script writes, one a line: "EPOCH KIND key=value...".
# These kinds are faults: a failure is attributed to the latest of them
# that happened before it.
FAULT_KINDS = {"kill", "reload", "upgrade", "backend_down", "backend_up"}

RR_COUNTERS = {
    "rrproxy_accepted_connections_total": "accepted",
    "rrproxy_worker_restarts_total": "restarts",
    "rrproxy_redispatched_connections_total": "redispatched",
    "rrproxy_failed_connections_total": "failed",
    "rrproxy_backend_connect_failures_total": "connect_failures",
    "rrproxy_handoff_failures_total": "handoff_failures",
    "rrproxy_accept_errors_total": "accept_errors",
}


def read_events(path):
    ev = []
    try:
        with open(path) as f:
            for line in f:
                t = line.split()
                if len(t) < 2:
                    continue
                kv = dict(x.split("=", 1) for x in t[2:] if "=" in x)
                ev.append({"t": float(t[0]), "kind": t[1], **kv})
    except OSError:
        pass
    ev.sort(key=lambda e: e["t"])
    return ev


def parse_prom(path):
    """Sum of every sample per metric name (labels ignored)."""
    sums = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip() or line.startswith("#"):
                    continue
                name = re.split(r"[{ ]", line, 1)[0]
                try:
                    v = float(line.rsplit(None, 1)[1])
                except (IndexError, ValueError):
                    continue
                sums[name] = sums.get(name, 0) + v
    except OSError:
        return None
    return sums


def parse_hastat(path):
    """HAProxy `show stat` CSV: the backend row's connect errors, retries
    and redispatches, and how often servers were marked down."""
    try:
        with open(path) as f:
            text = f.read().lstrip("# ")
    except OSError:
        return None
    out = {"connect_errors": 0, "retries": 0, "redispatches": 0,
           "server_downs": 0, "sessions": 0}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") != "be":
            continue
        if row.get("svname") == "BACKEND":
            out["connect_errors"] = int(row.get("econ") or 0)
            out["retries"] = int(row.get("wretr") or 0)
            out["redispatches"] = int(row.get("wredis") or 0)
            out["sessions"] = int(row.get("stot") or 0)
        else:
            out["server_downs"] += int(row.get("chkdown") or 0)
    return out


def parse_rr_log(path):
    """`worker died` lines of the rrproxy log, by pid."""
    died = {}
    pat = re.compile(r"worker died.*?slot=(\d+) pid=(\d+).*?lost_connections=(\d+)"
                     r" recovered_connections=(\d+)")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = pat.search(line)
                if m:
                    died[m.group(2)] = {"slot": int(m.group(1)),
                                        "lost": int(m.group(3)),
                                        "recovered": int(m.group(4))}
    except OSError:
        pass
    return died


def cell(argv):
    ap = argparse.ArgumentParser(prog="availlib.py cell")
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--what", default="")
    ap.add_argument("--load", required=True)
    ap.add_argument("--events")
    ap.add_argument("--proxy-log")
    ap.add_argument("--prom")
    ap.add_argument("--hastat")
    ap.add_argument("--note", action="append", default=[])
    a = ap.parse_args(argv)
    row = {"scenario": a.scenario, "proxy": a.proxy, "what": a.what,
           "notes": list(a.note)}
    try:
        with open(a.load) as f:
            ld = json.load(f)
    except (OSError, ValueError) as e:
        row["notes"].append("load client produced no result: %s" % e)
        print(json.dumps(row))
        return
    for k in ("requests", "ok", "failures", "availability_pct", "counts",
              "rps", "seconds", "p50_ms", "p99_ms", "max_ms", "ok_over_1s", "concurrency",
              "keepalive", "max_connect_ms", "max_wait_ms", "max_wait_at", "accept_gap_ms"):
        row[k] = ld.get(k)
    row["loadgen"] = ld.get("loadgen", "availlib")
    if row["loadgen"] == "ab":
        row["notes"].append("load by ab: failures not itemised, so not attributed to faults")
    elif ld.get("events_dropped"):
        row["notes"].append("%d failures not itemised (over --max-events)"
                            % ld["events_dropped"])
    events = read_events(a.events) if a.events else []
    faults = [e for e in events if e["kind"] in FAULT_KINDS]
    row["faults"] = len(faults)
    row["fault_kinds"] = {}
    for e in faults:
        row["fault_kinds"][e["kind"]] = row["fault_kinds"].get(e["kind"], 0) + 1
    row["events"] = events
    # Attribute each itemised failure to the latest fault before it ended.
    per_fault = [0] * len(faults)
    unattributed = 0
    delays = []
    for ev in ld.get("events", []):
        i = None
        for j, fe in enumerate(faults):
            if fe["t"] <= ev["t"]:
                i = j
            else:
                break
        if i is None:
            unattributed += 1
        else:
            per_fault[i] += 1
            delays.append(ev["t"] - faults[i]["t"])
    row["failures_before_first_fault"] = unattributed
    row["faults_with_failures"] = sum(1 for n in per_fault if n)
    row["max_failures_per_fault"] = max(per_fault) if per_fault else 0
    row["max_failure_delay_ms"] = round(max(delays) * 1000, 1) if delays else None
    row["per_fault"] = [dict(fe, failures=n) for fe, n in zip(faults, per_fault)]
    if a.prom:
        sums = parse_prom(a.prom)
        if sums is None:
            row["notes"].append("could not read the proxy's metrics")
        else:
            row["counters"] = {short: int(sums.get(name, 0))
                               for name, short in RR_COUNTERS.items()}
    if a.hastat:
        st = parse_hastat(a.hastat)
        if st is None:
            row["notes"].append("could not read HAProxy's stats")
        else:
            row["counters"] = st
    if a.proxy_log and a.proxy == "rrproxy":
        died = parse_rr_log(a.proxy_log)
        kills = [(fe, n) for fe, n in zip(faults, per_fault) if fe["kind"] == "kill"]
        over = []
        lost_total = 0
        for fe, n in kills:
            d = died.get(fe.get("pid", ""))
            if d is None:
                row["notes"].append("kill of pid %s at %.3f: no `worker died` line in the log"
                                    % (fe.get("pid"), fe["t"]))
                continue
            fe_row = next(p for p in row["per_fault"] if p["t"] == fe["t"])
            fe_row.update(lost=d["lost"], recovered=d["recovered"])
            lost_total += d["lost"]
            if n > d["lost"]:
                over.append("pid %s: %d failures, %d connections lost"
                            % (fe.get("pid"), n, d["lost"]))
        if kills:
            row["lost_connections"] = lost_total
            row["recovered_connections"] = sum(p.get("recovered", 0) for p in row["per_fault"])
            if over:
                row["notes"].append("FINDING: more failures after a kill than connections the "
                                    "killed worker held: " + "; ".join(over))
    print(json.dumps(row))


# ---------------------------------------------------------------- table


def _counters_text(row):
    c = row.get("counters")
    if not c:
        return ""
    if row["proxy"] == "rrproxy":
        keys = [("restarts", "restarts"), ("redispatched", "redispatched"),
                ("failed", "failed"), ("connect_failures", "connect fails")]
    else:
        keys = [("retries", "retries"), ("redispatches", "redispatches"),
                ("connect_errors", "connect errs"), ("server_downs", "srv downs")]
    return ", ".join("%s %d" % (label, c.get(k, 0)) for k, label in keys)


def _kinds_text(row):
    c = dict(row.get("counts") or {})
    c.pop("ok", None)
    return " ".join("%s %d" % (k, v) for k, v in sorted(c.items())) or "-"


def table(argv):
    rows = []
    with open(argv[0]) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    header = ["scenario", "proxy", "faults", "requests", "failures",
              "availability", "failure kinds", "max/fault", "longest wait ms",
              "proxy counters"]
    out = []
    for r in rows:
        if r.get("na"):
            out.append([r["scenario"], r["proxy"], "n/a", "", "", "", "", "", "", ""])
            continue
        if r.get("requests") is None:
            out.append([r["scenario"], r["proxy"], "-", "-", "-", "no result", "-", "-", "-", ""])
            continue
        avail = r["availability_pct"]
        if avail is None:
            av = "-"
        elif r["failures"] == 0:
            av = "100%"
        else:
            av = "%.3f%%" % avail
        faults = str(r.get("faults", 0))
        if r.get("fault_kinds"):
            faults = " ".join("%d %s" % (n, k) for k, n in r["fault_kinds"].items())
        out.append([r["scenario"], r["proxy"], faults, str(r["requests"]),
                    str(r["failures"]), av, _kinds_text(r),
                    str(r.get("max_failures_per_fault", 0))
                    if r.get("faults") and r.get("loadgen") != "ab" else "-",
                    "-" if r.get("max_wait_ms") is None else "%.1f" % r["max_wait_ms"],
                    _counters_text(r)])
    widths = [max(len(x[i]) for x in [header] + out) for i in range(len(header))]
    right = {3, 4, 5, 7, 8}

    def fmt(cols):
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(cols)).rstrip()
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for o in out:
        print(fmt(o))
    print()
    print("What each scenario did:")
    seen = set()
    for r in rows:
        if r["scenario"] not in seen and r.get("what"):
            seen.add(r["scenario"])
            print("  %-9s %s" % (r["scenario"], r["what"]))
    notes = []
    for r in rows:
        if r.get("na"):
            notes.append("%s/%s: n/a: %s" % (r["scenario"], r["proxy"], r["na"]))
            continue
        if r.get("requests") is None:
            notes.extend("%s/%s: %s" % (r["scenario"], r["proxy"], n) for n in r["notes"])
            continue
        d = []
        if r.get("lost_connections") is not None:
            d.append("the killed workers held %d connections (rrproxy's `lost_connections`, "
                     "an upper bound: it includes ones whose close was not yet reported), "
                     "%d more queued ones were recovered and served"
                     % (r["lost_connections"], r.get("recovered_connections", 0)))
        if r.get("faults") and r["failures"] and r.get("loadgen") != "ab":
            d.append("failures came within %s ms of a fault, %d of %d faults caused any"
                     % (r.get("max_failure_delay_ms"), r["faults_with_failures"], r["faults"]))
        if r.get("failures_before_first_fault"):
            d.append("%d failures before the first fault" % r["failures_before_first_fault"])
        d.append("%.0f req/s, p99 %s ms, max %s ms" % (r["rps"] or 0, r["p99_ms"], r["max_ms"]))
        if r.get("max_wait_ms") is not None:
            w = "longest wait for a first byte %.1f ms, for a connect %.1f ms" % (
                r["max_wait_ms"], r.get("max_connect_ms") or 0)
            if r.get("accept_gap_ms") is not None:
                w += ", longest stretch with no connect completing %.1f ms" % r["accept_gap_ms"]
            d.append(w)
        if r.get("ok_over_1s"):
            d.append("%d successful requests took over 1 s" % r["ok_over_1s"])
        for n in r.get("notes", []):
            d.append(n)
        notes.append("%s/%s: %s" % (r["scenario"], r["proxy"], "; ".join(d)))
    if notes:
        print()
        print("Notes:")
        for n in notes:
            print("  - " + n)


def main(argv):
    cmds = {"load": load, "ab": ab, "slotpid": slotpid, "cell": cell, "table": table}
    if len(argv) < 2 or argv[1] not in cmds:
        raise SystemExit("usage: availlib.py {%s} ..." % ",".join(cmds))
    cmds[argv[1]](argv[2:])


if __name__ == "__main__":
    main(sys.argv)
