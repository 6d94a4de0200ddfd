#!/usr/bin/env bash
# benches/accesslog.sh - what the access log costs per connection: the
# new-connection workload (wrk -H 'Connection: close' against an nginx
# backend) through rrproxy without and with --access-log FILE, and
# through HAProxy without and with `log stdout` + `option tcplog` (stdout
# a file), interleaved round by round in the same run.
# How to read the table: benches/README.md, "Access log cost".
#
# Usage: benches/accesslog.sh [--rrproxy PATH] [-h]
# Environment (defaults in brackets):
#   DURATION=10     seconds per wrk run                     [10, QUICK: 3]
#   ROUNDS=5        interleaved rounds of every variant     [5, QUICK: 1]
#   QUICK=1         ~1 minute smoke run
#   RRPROXY=PATH    rrproxy binary                          [target/release/rrproxy]
#   RR_WORKERS      rrproxy --workers (2, like HAProxy nbthread 2)
#   LOG_FORMAT      rrproxy --log-format for its access log [text]
#   WRK_THREADS, WRK_CONNS   wrk -t / -c                     [2, 50]
#   OUT_DIR         where results go                         [target/bench-results]

set -uo pipefail

# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LIB=("${BENCHLIB[@]}")
bench_args "$@"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-3}; ROUNDS=${ROUNDS:-1}
else
    DURATION=${DURATION:-10}; ROUNDS=${ROUNDS:-5}
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-50}
RR_WORKERS=${RR_WORKERS:-2}
LOG_FORMAT=${LOG_FORMAT:-text}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}
VARIANTS="rrproxy rrproxy-log haproxy haproxy-log"

for tool in wrk nginx haproxy; do
    command -v "$tool" >/dev/null || { echo "accesslog.sh: needs $tool (apt-get install $tool)" >&2; exit 1; }
done
[ -x "$RRPROXY" ] || { echo "accesslog.sh: no rrproxy binary at $RRPROXY (cargo build --release, or --rrproxy PATH)" >&2; exit 1; }

T=$(mktemp -d /tmp/rralog.XXXXXX)
STARTED=()
TS=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR" "$T/logs"
CSV=$OUT_DIR/accesslog-$TS.csv
echo "variant,round,requests,rps,cpu_s,log_lines,dropped,errors,writer_cpu_s" > "$CSV"


cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do kill_tree "$p" TERM; done
    sleep 0.3
    for p in "${STARTED[@]}"; do kill_tree "$p" KILL; wait "$p" 2>/dev/null; done
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

NOFILE=$(ulimit -Hn); [ "$NOFILE" = unlimited ] && NOFILE=1048576
[ "$NOFILE" -gt 100000 ] && NOFILE=100000
ulimit -n "$NOFILE" 2>/dev/null
PORTS=($("${LIB[@]}" freeports 7))
P_HTTP=${PORTS[0]}
declare -A PORT=([rrproxy]=${PORTS[1]} [rrproxy-log]=${PORTS[2]} [haproxy]=${PORTS[3]} [haproxy-log]=${PORTS[4]})
declare -A METRICS=([rrproxy]=${PORTS[5]} [rrproxy-log]=${PORTS[6]})
declare -A PID=()

# ------------------------------------------------------------ backend

mkdir -p "$T/nginx"
cat > "$T/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $T/nginx/nginx.pid;
error_log $T/logs/backend-nginx.log warn;
events { worker_connections $((NOFILE / 2)); }
http {
    access_log off;
    client_body_temp_path $T/nginx/body;
    proxy_temp_path $T/nginx/proxy;
    fastcgi_temp_path $T/nginx/fastcgi;
    uwsgi_temp_path $T/nginx/uwsgi;
    scgi_temp_path $T/nginx/scgi;
    server {
        listen 127.0.0.1:$P_HTTP backlog=4096;
        location = / { return 200 "ok\n"; }
    }
}
EOF
start_bg backend-nginx nginx -e "$T/logs/backend-nginx.log" -p "$T/nginx" -c "$T/nginx/nginx.conf"
wait_port "$P_HTTP" 10 "$BG_PID" || { echo "backend nginx did not start" >&2; exit 1; }

# ------------------------------------------------------------ proxies

haproxy_cfg() {  # haproxy_cfg PORT WITH_LOG
    echo "global"
    echo "    nbthread 2"
    echo "    maxconn $((NOFILE / 4))"
    [ "$2" = 1 ] && echo "    log stdout format raw local0"
    echo "defaults"
    echo "    mode tcp"
    echo "    maxconn $((NOFILE / 4))"
    echo "    timeout connect 5s"
    echo "    timeout client 5m"
    echo "    timeout server 5m"
    [ "$2" = 1 ] && { echo "    log global"; echo "    option tcplog"; }
    echo "frontend fe"
    echo "    bind 127.0.0.1:$1"
    echo "    default_backend be"
    echo "backend be"
    echo "    server s1 127.0.0.1:$P_HTTP"
}

start_variant() {
    local v=$1 port=${PORT[$1]}
    case "$v" in
        rrproxy|rrproxy-log)
            local extra=()
            [ "$v" = rrproxy-log ] && extra=(--access-log "$T/rrproxy-access.log" --log-format "$LOG_FORMAT")
            start_bg "$v" "$RRPROXY" -q --listen "127.0.0.1:$port" --backend "127.0.0.1:$P_HTTP" \
                --workers "$RR_WORKERS" --policy round-robin --metrics "127.0.0.1:${METRICS[$v]}" \
                --control off "${extra[@]}" ;;
        haproxy)
            haproxy_cfg "$port" 0 > "$T/haproxy.cfg"
            start_bg "$v" haproxy -db -f "$T/haproxy.cfg" ;;
        haproxy-log)
            # `log stdout`: HAProxy writes each line to its standard
            # output, here a file (the closest it has to logging to one).
            haproxy_cfg "$port" 1 > "$T/haproxy-log.cfg"
            setsid haproxy -db -f "$T/haproxy-log.cfg" > "$T/haproxy-access.log" 2>> "$T/logs/$v.log" < /dev/null &
            BG_PID=$!
            STARTED+=("$BG_PID") ;;
    esac
    PID[$v]=$BG_PID
    wait_port "$port" 10 "$BG_PID" || { echo "$v did not start: $(tail -3 "$T/logs/$v.log")" >&2; exit 1; }
    sleep 0.3
}

log_lines() {  # lines the variant's access log has now
    case "$1" in
        rrproxy-log) wc -l < "$T/rrproxy-access.log" ;;
        haproxy-log) wc -l < "$T/haproxy-access.log" ;;
        *) echo 0 ;;
    esac
}

# CPU seconds of rrproxy's access-log writer threads (in its workers):
# the part of the log's cost that runs off the event loops.
writer_cpu() {
    local pid t total=0 hz
    hz=$(getconf CLK_TCK)
    for pid in $("${LIB[@]}" tree-pids "$1"); do
        for t in /proc/"$pid"/task/*; do
            case "$(cat "$t/comm" 2>/dev/null)" in
                rrproxy-access*) total=$((total + $(awk '{print $14 + $15}' "$t/stat"))) ;;
            esac
        done
    done
    "$PY" -S -c "print($total / $hz)"
}

dropped() {
    case "$1" in
        rrproxy|rrproxy-log)
            curl -s "http://127.0.0.1:${METRICS[$1]}/metrics" \
                | awk '$1 == "rrproxy_access_log_lines_dropped_total" { print $2 }' ;;
        *) echo "" ;;
    esac
}

for v in $VARIANTS; do start_variant "$v"; done
log "variants up: $VARIANTS; backend nginx on $P_HTTP; $ROUNDS rounds of ${DURATION}s"

# ------------------------------------------------------------ rounds

for r in $(seq "$ROUNDS"); do
    for v in $VARIANTS; do
        out=$T/logs/wrk-$v-$r.txt
        c0=$("${LIB[@]}" tree-cpu "${PID[$v]}")
        w0=$(writer_cpu "${PID[$v]}")
        l0=$(log_lines "$v")
        timeout --foreground -k 5 $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" \
            -d"${DURATION}s" --latency -H 'Connection: close' "http://127.0.0.1:${PORT[$v]}/" > "$out" 2>&1
        sleep 0.5   # let the last lines reach the file
        c1=$("${LIB[@]}" tree-cpu "${PID[$v]}")
        w1=$(writer_cpu "${PID[$v]}")
        l1=$(log_lines "$v")
        j=$("${LIB[@]}" wrk "$out")
        read -r req rps errors < <("$PY" -S -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["requests"], j["rps"], j["errors"])' "$j")
        cpu=$("$PY" -S -c "print(round($c1 - $c0, 2))")
        wcpu=$("$PY" -S -c "print(round($w1 - $w0, 2))")
        echo "$v,$r,$req,$rps,$cpu,$((l1 - l0)),$(dropped "$v"),$errors,$wcpu" >> "$CSV"
        log "round $r $v: $rps conn/s, $cpu CPU-s, $((l1 - l0)) log lines, $errors errors"
    done
done

# ------------------------------------------------------------ report

"$PY" -S - "$CSV" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by = {}
for r in rows:
    by.setdefault(r["variant"], []).append(r)
def med(v, k):
    return statistics.median(float(r[k]) for r in by[v])
def us_per_conn(v):
    return statistics.median(float(r["cpu_s"]) / float(r["requests"]) * 1e6 for r in by[v])
print("| variant | conn/s (median, range) | vs. without log | proxy CPU µs/conn | added by the log | log lines / conns | dropped | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|")
for v, base in (("rrproxy", "rrproxy"), ("rrproxy-log", "rrproxy"), ("haproxy", "haproxy"), ("haproxy-log", "haproxy")):
    if v not in by:
        continue
    rps, us = med(v, "rps"), us_per_conn(v)
    ratio = rps / med(base, "rps")
    added = us - us_per_conn(base)
    lines = sum(int(r["log_lines"]) for r in by[v]) / max(1, sum(int(r["requests"]) for r in by[v]))
    dropped = by[v][-1]["dropped"] or "n/a"
    errors = sum(int(r["errors"]) for r in by[v])
    spread = "%.0f-%.0f" % (min(float(r["rps"]) for r in by[v]), max(float(r["rps"]) for r in by[v]))
    print("| %s | %.0f (%s) | %.3f× | %.1f | %s | %.3f | %s | %d |" % (
        v, rps, spread, ratio, us, "%+.1f" % added if v != base else "—",
        lines, dropped, errors))
if "rrproxy-log" in by:
    w = sum(float(r["writer_cpu_s"]) for r in by["rrproxy-log"])
    n = sum(int(r["log_lines"]) for r in by["rrproxy-log"])
    print()
    print("rrproxy's access-log writer threads: %.2f CPU-s for %d lines = %.2f µs per line (off the event loops; the same work per connection on any machine load)" % (w, n, w / max(1, n) * 1e6))
EOF
log "results: $CSV"
