#!/usr/bin/env bash
# benches/compare.sh - side-by-side comparison of rrproxy with HAProxy,
# nginx stream and pen (and no proxy at all) on this machine.
# What it measures and how to read the table: benches/README.md.
#
# Usage: benches/compare.sh [--rrproxy PATH] [-h]
# Environment (defaults in brackets):
#   DURATION=5      seconds per wrk / iperf3 run           [5, QUICK: 2]
#   ROUNDS=3        repeats of every (proxy, workload) cell [3, QUICK: 1]
#   QUICK=1         ~1 minute smoke run
#   RRPROXY=PATH    rrproxy binary                        [target/release/rrproxy]
#   RR_WORKERS      rrproxy --workers (default 2, like HAProxy nbthread 2)
#   RRPROXY_ARGS    extra arguments for rrproxy (e.g. "--splice on")
#   PROXIES         subset/order of: direct haproxy haproxy-splice nginx pen rrproxy
#   WORKLOADS       subset/order of: close keepalive bulk iperf3 idle
#   IDLE_CONNS      idle connections to hold              [10000, QUICK: 2000]
#   BULK_REPEAT     downloads of the 256 MiB file per cell [3, QUICK: 1]
#   WRK_THREADS, WRK_CONNS   wrk -t / -c                   [2, 50]
#   OUT_DIR         where results go                       [target/bench-results]

set -uo pipefail   # no -e: one failing cell must not abort the matrix

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# The real interpreter, not a version-manager shim: it runs many times.
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || PY=python3
LIB=("$PY" -S "$HERE/benchlib.py")

RRPROXY=${RRPROXY:-$ROOT/target/release/rrproxy}
while [ $# -gt 0 ]; do
    case "$1" in
        --rrproxy) RRPROXY=$2; shift 2 ;;
        --rrproxy=*) RRPROXY=${1#*=}; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-2}; ROUNDS=${ROUNDS:-1}
    BULK_REPEAT=${BULK_REPEAT:-1}; IDLE_CONNS=${IDLE_CONNS:-2000}
else
    DURATION=${DURATION:-5}; ROUNDS=${ROUNDS:-3}
    BULK_REPEAT=${BULK_REPEAT:-3}; IDLE_CONNS=${IDLE_CONNS:-10000}
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-50}
PROXIES=${PROXIES:-direct haproxy haproxy-splice nginx pen rrproxy}
WORKLOADS=${WORKLOADS:-close keepalive bulk iperf3 idle}
RRPROXY_ARGS=${RRPROXY_ARGS:-}
RR_WORKERS=${RR_WORKERS:-2}
BASELINE=haproxy
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}
BIG_SIZE=$((256 * 1024 * 1024))
NGINX_STREAM_MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}

# ------------------------------------------------------------ bookkeeping

T=$(mktemp -d /tmp/rrbench.XXXXXX)
STARTED=()          # pids (= process group ids) of everything we started
TS=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR"
CSV=$OUT_DIR/$TS.csv
LOGS=$OUT_DIR/$TS-logs
mkdir -p "$T/logs"
echo "workload,proxy,round,metric,value" > "$CSV"
RUN_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$("${LIB[@]}" busy)
SELF_START=$("${LIB[@]}" tree-cpu $$)

# Shared helpers: log, kill_tree, stop_bg, start_bg, wait_port.
BENCHLIB=("${LIB[@]}")
# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do kill_tree "$p" TERM; done
    sleep 0.3
    for p in "${STARTED[@]}"; do kill_tree "$p" KILL; wait "$p" 2>/dev/null; done
    if [ -d "$T/logs" ]; then
        mkdir -p "$LOGS" && cp -r "$T/logs/." "$LOGS/" 2>/dev/null
    fi
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# record WORKLOAD PROXY ROUND METRIC VALUE
record() {
    local v=${5//\"/\'}
    printf '%s,%s,%s,%s,"%s"\n' "$1" "$2" "$3" "$4" "$v" >> "$CSV"
}
note() {   # note WORKLOAD PROXY ROUND TEXT
    log "NOTE $2/$1 round $3: $4"
    record "$1" "$2" "$3" note "$4"
}

calc() { "$PY" -S -c "print($1)" 2>/dev/null; }
json_get() { "$PY" -S -c "import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print('' if v is None else v)" "$1" "$2"; }

have() { command -v "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------ prerequisites

ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
# A single-process proxy needs 2 fds per proxied connection.
# HAProxy also reserves 2 fds per splice pipe (MAXPIPES).
MAXPIPES=256
MAXCONN=$(( (NOFILE - 2 * MAXPIPES - 200) / 2 ))
if [ "$IDLE_CONNS" -gt $((MAXCONN - 100)) ]; then
    IDLE_CLAMPED=$(( (MAXCONN - 100) / 100 * 100 ))
    log "RLIMIT_NOFILE is $NOFILE here: idle test uses $IDLE_CLAMPED connections instead of $IDLE_CONNS"
    IDLE_CONNS=$IDLE_CLAMPED
fi

SKIPPED=()
skip() { SKIPPED+=("$*"); log "SKIP: $*"; }

have python3 || { echo "compare.sh: python3 is required" >&2; exit 1; }
have nginx || { echo "compare.sh: nginx is required (it is the backend)" >&2; exit 1; }
have curl || { echo "compare.sh: curl is required" >&2; exit 1; }
have setsid || { echo "compare.sh: setsid (util-linux) is required" >&2; exit 1; }

want_proxies=()
for p in $PROXIES; do
    case "$p" in
        direct) want_proxies+=("$p") ;;
        haproxy|haproxy-splice)
            if have haproxy; then want_proxies+=("$p"); else skip "$p: haproxy not installed"; fi ;;
        nginx)
            if [ -f "$NGINX_STREAM_MODULE" ]; then want_proxies+=("$p")
            else skip "nginx stream: $NGINX_STREAM_MODULE missing"; fi ;;
        pen)
            if have pen; then want_proxies+=("$p"); else skip "pen: not installed"; fi ;;
        rrproxy)
            if [ -x "$RRPROXY" ]; then want_proxies+=("$p")
            else skip "rrproxy: no binary at $RRPROXY (cargo build --release, or set RRPROXY)"; fi ;;
        *) echo "compare.sh: unknown proxy '$p'" >&2; exit 2 ;;
    esac
done
want_workloads=()
for w in $WORKLOADS; do
    case "$w" in
        close|keepalive)
            if have wrk; then want_workloads+=("$w"); else skip "$w: wrk not installed"; fi ;;
        bulk) want_workloads+=("$w") ;;
        iperf3)
            if have iperf3; then want_workloads+=("$w"); else skip "iperf3: not installed"; fi ;;
        idle) want_workloads+=("$w") ;;
        *) echo "compare.sh: unknown workload '$w'" >&2; exit 2 ;;
    esac
done
PROXIES="${want_proxies[*]}"
[ ${#want_proxies[@]} -gt 0 ] && [ ${#want_workloads[@]} -gt 0 ] || { echo "nothing to run" >&2; exit 1; }

PORTS=($("${LIB[@]}" freeports 8))
P_HTTP=${PORTS[0]}; P_IPERF=${PORTS[1]}
declare -A PPORT=([haproxy]=${PORTS[2]} [haproxy-splice]=${PORTS[3]} [nginx]=${PORTS[4]} [pen]=${PORTS[5]} [rrproxy]=${PORTS[6]})

# ------------------------------------------------------------ backends

start_backends() {
    mkdir -p "$T/www" "$T/nginx-backend"
    # nginx workers run as an unprivileged user: let them read the docroot.
    chmod 755 "$T" "$T/www"
    printf 'ok\n' > "$T/www/index.html"
    log "creating the 256 MiB file"
    head -c "$BIG_SIZE" /dev/urandom > "$T/www/big" || exit 1
    chmod 644 "$T/www/big" "$T/www/index.html"
    cat > "$T/nginx-backend/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $T/nginx-backend/nginx.pid;
error_log $T/logs/backend-nginx.log warn;
events { worker_connections $((NOFILE - 100)); }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_header_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path $T/nginx-backend/body;
    proxy_temp_path $T/nginx-backend/proxy;
    fastcgi_temp_path $T/nginx-backend/fastcgi;
    uwsgi_temp_path $T/nginx-backend/uwsgi;
    scgi_temp_path $T/nginx-backend/scgi;
    server {
        listen 127.0.0.1:$P_HTTP backlog=4096;
        root $T/www;
        location = / { return 200 "ok\n"; }
    }
}
EOF
    start_bg backend-nginx nginx -e "$T/logs/backend-nginx.log" -p "$T/nginx-backend" -c "$T/nginx-backend/nginx.conf"
    BACKEND_NGINX=$BG_PID
    wait_port "$P_HTTP" 10 "$BACKEND_NGINX" || { echo "backend nginx did not start: $(tail -3 "$T/logs/backend-nginx.log")" >&2; exit 1; }
    start_iperf3
}

start_iperf3() {
    IPERF_PID=
    if have iperf3; then
        start_bg backend-iperf3 iperf3 -s -B 127.0.0.1 -p "$P_IPERF"
        IPERF_PID=$BG_PID
        wait_port "$P_IPERF" 10 || log "iperf3 server did not start"
    fi
}

# ------------------------------------------------------------ proxies

# start_proxy NAME BACKEND_PORT: sets PROXY_PID (empty for direct) and
# PROXY_PORT. Returns non-zero if the proxy did not come up.
start_proxy() {
    local name=$1 bport=$2 dir=$T/$1
    mkdir -p "$dir"
    PROXY_PID=
    if [ "$name" = direct ]; then PROXY_PORT=$bport; return 0; fi
    PROXY_PORT=${PPORT[$name]}
    case "$name" in
        haproxy|haproxy-splice)
            {
                echo "global"
                echo "    nbthread 2"
                echo "    maxconn $MAXCONN"
                # Pipes for splicing cost 2 fds each; the default (maxconn/4)
                # would not fit the fd limit. Unused without splice.
                echo "    maxpipes $MAXPIPES"
                echo "defaults"
                echo "    mode tcp"
                echo "    maxconn $MAXCONN"
                echo "    timeout connect 5s"
                echo "    timeout client 5m"
                echo "    timeout server 5m"
                [ "$name" = haproxy-splice ] && echo "    option splice-auto"
                echo "frontend fe"
                echo "    bind 127.0.0.1:$PROXY_PORT"
                echo "    default_backend be"
                echo "backend be"
                echo "    server s1 127.0.0.1:$bport"
            } > "$dir/haproxy.cfg"
            start_bg "$name" haproxy -db -f "$dir/haproxy.cfg" ;;
        nginx)
            cat > "$dir/nginx.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $T/logs/nginx.log warn;
events { worker_connections $((NOFILE - 100)); }
stream {
    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;
        proxy_pass 127.0.0.1:$bport;
        proxy_connect_timeout 5s;
        proxy_timeout 5m;
    }
}
EOF
            start_bg nginx nginx -e "$T/logs/nginx.log" -p "$dir" -c "$dir/nginx.conf" ;;
        pen)
            # -f foreground, -r plain round robin (no client tracking table),
            # -x most simultaneous connections (default 500).
            start_bg pen pen -f -r -x "$MAXCONN" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$bport" ;;
        rrproxy)
            # shellcheck disable=SC2086
            start_bg rrproxy "$RRPROXY" -q --listen "127.0.0.1:$PROXY_PORT" \
                --backend "127.0.0.1:$bport" --workers "$RR_WORKERS" --policy round-robin \
                --metrics off --control off $RRPROXY_ARGS ;;
    esac
    PROXY_PID=$BG_PID
    if ! wait_port "$PROXY_PORT" 10 "$PROXY_PID"; then
        stop_bg "$PROXY_PID"; PROXY_PID=
        return 1
    fi
    # Multi-process proxies: let the workers finish starting.
    sleep 0.3
    return 0
}

proxy_log() { echo "$T/logs/$1.log"; }

# ------------------------------------------------------------ workloads

# Each run_* function measures one cell. Arguments: PROXY ROUND.
# PROXY_PORT and PROXY_PID are set; they record metrics themselves.

proxy_cpu() { if [ -n "$PROXY_PID" ]; then "${LIB[@]}" tree-cpu "$PROXY_PID"; else echo ""; fi; }

run_wrk() {  # run_wrk WORKLOAD PROXY ROUND [extra wrk args...]
    local w=$1 p=$2 r=$3; shift 3
    local out=$T/logs/wrk-$w-$p-$r.txt c0 c1 j rps req cpu
    c0=$(proxy_cpu)
    timeout --foreground -k 5 $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" \
        --timeout 5s --latency "$@" "http://127.0.0.1:$PROXY_PORT/" > "$out" 2>&1
    local rc=$?
    c1=$(proxy_cpu)
    [ $rc -ne 0 ] && note "$w" "$p" "$r" "wrk exited $rc: $(tail -2 "$out" | tr '\n' ' ')"
    j=$("${LIB[@]}" wrk "$out")
    rps=$(json_get "$j" rps); req=$(json_get "$j" requests)
    local errs; errs=$(json_get "$j" errors)
    if [ -n "$errs" ] && [ "$errs" != 0 ]; then
        note "$w" "$p" "$r" "wrk errors: $(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' \n' ' ')"
    fi
    cpu=
    [ -n "$c0" ] && [ -n "$c1" ] && cpu=$(calc "$c1 - $c0")
    if [ "$w" = close ]; then
        record close "$p" "$r" close_cps "$rps"
        record close "$p" "$r" close_errors "$errs"
        [ -n "$cpu" ] && [ -n "$req" ] && record close "$p" "$r" close_conn_per_cpu "$(calc "$req / max($cpu, 0.01)")"
        [ -n "$cpu" ] && record close "$p" "$r" close_cpu_s "$cpu"
    else
        record keepalive "$p" "$r" ka_rps "$rps"
        record keepalive "$p" "$r" ka_p99_ms "$(json_get "$j" p99_ms)"
        record keepalive "$p" "$r" ka_errors "$errs"
        [ -n "$cpu" ] && [ -n "$req" ] && [ "$req" != 0 ] && record keepalive "$p" "$r" ka_cpu_us_per_req "$(calc "$cpu * 1e6 / $req")"
    fi
    log "  $w $p: $rps req/s, errors ${errs:-?}, proxy cpu ${cpu:+$(calc "round($cpu, 2)")}s"
}

run_bulk() {  # run_bulk PROXY ROUND
    local p=$1 r=$2 i c0 c1 res code size speed speeds=() bytes=0
    c0=$(proxy_cpu)
    for i in $(seq "$BULK_REPEAT"); do
        res=$(timeout --foreground -k 5 70 curl -s -o /dev/null --max-time 60 \
            -w '%{http_code} %{size_download} %{speed_download}' \
            "http://127.0.0.1:$PROXY_PORT/big")
        read -r code size speed <<< "$res"
        if [ "$code" != 200 ] || [ "${size%.*}" != "$BIG_SIZE" ]; then
            note bulk "$p" "$r" "download $i: http ${code:-none}, ${size:-0} of $BIG_SIZE bytes"
            continue
        fi
        speeds+=("$speed"); bytes=$((bytes + BIG_SIZE))
    done
    c1=$(proxy_cpu)
    [ ${#speeds[@]} -eq 0 ] && return
    local mbps
    mbps=$(calc "sorted([${speeds[*]/%/,}])[len([${speeds[*]/%/,}])//2] / 1e6")
    record bulk "$p" "$r" bulk_MBps "$mbps"
    [ -n "$c0" ] && record bulk "$p" "$r" bulk_cpu_s_per_GB "$(calc "($c1 - $c0) / ($bytes / 1e9)")"
    log "  bulk $p: $mbps MB/s"
}

run_iperf3() {  # run_iperf3 PROXY ROUND
    local p=$1 r=$2 out=$T/logs/iperf3-$1-$2.json c0 c1 j err bps bytes
    c0=$(proxy_cpu)
    timeout --foreground -k 5 $((DURATION + 30)) iperf3 -c 127.0.0.1 -p "$PROXY_PORT" -t "$DURATION" \
        --connect-timeout 5000 -J > "$out" 2>&1
    c1=$(proxy_cpu)
    j=$("${LIB[@]}" iperf3 "$out")
    err=$(json_get "$j" error)
    if [ -n "$err" ]; then
        note iperf3 "$p" "$r" "iperf3: $err"
        # A failed test can leave the server stuck: restart it.
        stop_bg "$IPERF_PID"; start_iperf3
        return
    fi
    bps=$(json_get "$j" bits_per_second); bytes=$(json_get "$j" bytes)
    record iperf3 "$p" "$r" iperf_Gbps "$(calc "$bps / 1e9")"
    [ -n "$c0" ] && record iperf3 "$p" "$r" iperf_cpu_s_per_GB "$(calc "($c1 - $c0) / ($bytes / 1e9)")"
    log "  iperf3 $p: $(calc "round($bps / 1e9, 2)") Gbit/s"
}

run_idle() {  # run_idle PROXY ROUND
    local p=$1 r=$2 j held bpc
    if [ -z "$PROXY_PID" ]; then return; fi
    j=$(timeout --foreground -k 5 100 "${LIB[@]}" idle "$IDLE_CONNS" "$PROXY_PORT" "$P_HTTP" "$PROXY_PID" 1 60)
    if [ -z "$j" ]; then note idle "$p" "$r" "idle client failed or timed out"; return; fi
    echo "$j" > "$T/logs/idle-$p-$r.json"
    held=$(json_get "$j" held); bpc=$(json_get "$j" bytes_per_conn)
    record idle "$p" "$r" idle_held "$held"
    if [ "${held:-0}" -lt "$IDLE_CONNS" ]; then
        note idle "$p" "$r" "held only $held of $IDLE_CONNS idle connections: client connects completed $(json_get "$j" connected), still pending $(json_get "$j" connect_pending), failed $(json_get "$j" connect_failed); proxy-to-backend connections $(json_get "$j" backend_established); stalled: $(json_get "$j" stalled)"
    fi
    [ -n "$bpc" ] && record idle "$p" "$r" idle_bytes_per_conn "$bpc"
    record idle "$p" "$r" idle_rss_base_MiB "$(calc "$(json_get "$j" rss_before) / 1048576")"
    record idle "$p" "$r" idle_rss_loaded_MiB "$(calc "$(json_get "$j" rss_after) / 1048576")"
    log "  idle $p: held $held, ${bpc:-?} bytes/conn, opened in $(json_get "$j" ready_seconds)s"
    # Let the backend see the closes before the next cell.
    sleep 0.5
}

# run_cell WORKLOAD PROXY ROUND
run_cell() {
    local w=$1 p=$2 r=$3 bport=$P_HTTP lines_before=0 lf
    [ "$w" = iperf3 ] && bport=$P_IPERF
    [ "$w" = idle ] && [ "$p" = direct ] && return
    lf=$(proxy_log "$p")
    [ -f "$lf" ] && lines_before=$(wc -l < "$lf")
    if ! start_proxy "$p" "$bport"; then
        note "$w" "$p" "$r" "proxy did not start: $(tail -3 "$lf" 2>/dev/null | tr '\n' ' ')"
        return
    fi
    if [ "$w" != iperf3 ] && [ "$(curl -s --max-time 5 "http://127.0.0.1:$PROXY_PORT/")" != ok ]; then
        note "$w" "$p" "$r" "sanity request through the proxy failed"
    fi
    case "$w" in
        close) run_wrk close "$p" "$r" -H 'Connection: close' ;;
        keepalive) run_wrk keepalive "$p" "$r" ;;
        bulk) run_bulk "$p" "$r" ;;
        iperf3) run_iperf3 "$p" "$r" ;;
        idle) run_idle "$p" "$r" ;;
    esac
    if [ -n "$PROXY_PID" ] && ! kill -0 "$PROXY_PID" 2>/dev/null; then
        note "$w" "$p" "$r" "proxy process exited during the run: $(tail -3 "$lf" 2>/dev/null | tr '\n' ' ')"
    fi
    stop_bg "$PROXY_PID"
    # Anything the proxy logged during this cell (warnings/errors) is a note.
    if [ -f "$lf" ]; then
        local new; new=$(tail -n +$((lines_before + 1)) "$lf" \
            | grep -Ev '^\s*$|\[NOTICE\]|(Before|After): conns = ' )
        if [ -n "$new" ]; then
            note "$w" "$p" "$r" "proxy log ($(echo "$new" | wc -l) lines): $(echo "$new" | head -2 | cut -c1-300 | tr '\n' ' ')"
        fi
    fi
}

# ------------------------------------------------------------ main

# busy_note: a warning line when the 1-minute load average is high.
busy_note() {
    local load cpus
    load=$(cut -d' ' -f1 /proc/loadavg); cpus=$(nproc)
    if [ "$(calc "int($load >= 0.5 * $cpus)")" = 1 ]; then
        echo "WARNING: the machine is busy (load $load on $cpus cpus $1): expect noisy numbers"
    fi
}

versions() {
    echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    have haproxy && echo "haproxy: $(haproxy -v | head -1)"
    have nginx && echo "nginx: $(nginx -v 2>&1)"
    have pen && echo "pen: $(dpkg-query -W -f='${Version}' pen 2>/dev/null || echo present)"
    have wrk && echo "wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    have iperf3 && echo "iperf3: $(iperf3 --version | head -1)"
    [ -x "$RRPROXY" ] && echo "rrproxy: $RRPROXY ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')) args: --workers $RR_WORKERS $RRPROXY_ARGS"
}

n_proxies=${#want_proxies[@]}
est=0
for w in "${want_workloads[@]}"; do
    case "$w" in
        close|keepalive) est=$((est + n_proxies * (DURATION + 1))) ;;
        iperf3) est=$((est + n_proxies * (DURATION + 2))) ;;
        bulk) est=$((est + n_proxies * (BULK_REPEAT / 2 + 1))) ;;
        idle) est=$((est + (n_proxies - 1) * (2 + IDLE_CONNS / 2000))) ;;
    esac
done
est=$((est * ROUNDS))
{
    echo "rrproxy comparison $TS"
    versions
    echo "settings: DURATION=$DURATION ROUNDS=$ROUNDS BULK_REPEAT=$BULK_REPEAT IDLE_CONNS=$IDLE_CONNS wrk -t$WRK_THREADS -c$WRK_CONNS, no CPU pinning"
    echo "proxies: $PROXIES"
    echo "workloads: ${want_workloads[*]}"
    echo "estimated time: ~$((est / 60 + 1)) min"
    busy_note "before the run"
} | tee "$OUT_DIR/$TS.meta.txt" >&2

start_backends

for w in "${want_workloads[@]}"; do
    log "== workload $w"
    for r in $(seq "$ROUNDS"); do
        # Interleave: every round visits every proxy, in a rotated order.
        order=()
        for i in $(seq 0 $((n_proxies - 1))); do
            order+=("${want_proxies[$(( (i + r - 1) % n_proxies ))]}")
        done
        for p in "${order[@]}"; do
            run_cell "$w" "$p" "$r"
        done
    done
done

RUN_END=$(date +%s)
# How much CPU did processes other than this script's tree use meanwhile?
BUSY_END=$("${LIB[@]}" busy)
SELF_END=$("${LIB[@]}" tree-cpu $$)
FOREIGN=$(calc "round(max(0, ($BUSY_END - $BUSY_START) - ($SELF_END - $SELF_START)), 1)")
FOREIGN_PCT=$(calc "round(100 * $FOREIGN / ($(nproc) * max(1, $RUN_END - $RUN_START)))")
{
    echo
    echo "== results $TS (median of $ROUNDS rounds; ratio = value / $BASELINE in this run)"
    echo "load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time $((RUN_END - RUN_START)) s"
    echo "other processes on the machine used $FOREIGN CPU-seconds during the run (${FOREIGN_PCT}% of all CPU time)"
    if [ "${FOREIGN_PCT:-0}" -ge 10 ]; then
        echo "WARNING: the machine was busy with other work: numbers are noisy, compare ratios only"
    fi
    [ ${#SKIPPED[@]} -gt 0 ] && printf 'skipped: %s\n' "${SKIPPED[@]}"
    echo
    "${LIB[@]}" report "$CSV" "$PROXIES" "$BASELINE" "$OUT_DIR/$TS.json"
    echo
    echo "raw: $CSV  medians: $OUT_DIR/$TS.json  logs: $LOGS/"
} | tee "$OUT_DIR/$TS.txt"
