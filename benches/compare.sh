#!/usr/bin/env bash
# benches/compare.sh - side-by-side comparison of rrproxy with HAProxy,
# nginx stream and pen (and no proxy at all) on this machine.
# What it measures and how to read the table: benches/README.md.
#
# Usage: benches/compare.sh [--rrproxy PATH] [-h]
# Environment (defaults in brackets):
#   PROXY_CORES=N   CPUs the proxy gets: HAProxy nbthread, nginx
#                   worker_processes and rrproxy --workers are set to N
#                   [1 on a machine of 2-3 CPUs, else half the CPUs]
#   PIN=1           pin the proxy, the backends and the load generator to
#                   disjoint CPU sets with taskset; PIN=0: no pinning [1]
#   DURATION=5      seconds per wrk / iperf3 run           [5, QUICK: 2]
#   WARMUP=1        seconds of unmeasured load before each wrk run [1, QUICK: 0]
#   ROUNDS=5        repeats of every (proxy, workload) cell [5, QUICK: 1]
#   QUICK=1         ~1 minute smoke run
#   RRPROXY=PATH    rrproxy binary                        [target/release/rrproxy]
#   RR_WORKERS      rrproxy --workers                     [PROXY_CORES]
#   RRPROXY_ARGS    extra arguments for rrproxy (e.g. "--splice on")
#   DEFER_ACCEPT=1  every proxy that can waits for the client's first bytes
#                   before accepting (TCP_DEFER_ACCEPT): HAProxy bind
#                   defer-accept, rrproxy --defer-accept; nginx's stream
#                   module (its `deferred` is http-only) and pen have no
#                   such option [0]
#   PROXIES         subset/order of: direct haproxy haproxy-splice nginx pen rrproxy
#                   rrproxy-defer (rrproxy with --defer-accept; not in the default set)
#                   rrproxy-alt (a second rrproxy build, RRPROXY_ALT; not in the default set)
#   RRPROXY_ALT=PATH the rrproxy-alt column's binary, to compare two builds
#                   side by side in one run (same flags as rrproxy)
#   WORKLOADS       subset/order of: close keepalive bulk iperf3 idle
#   IDLE_CONNS      idle connections to hold              [10000, QUICK: 2000]
#   BULK_REPEAT     downloads of the 256 MiB file per cell [3, QUICK: 1]
#   WRK_THREADS, WRK_CONNS   wrk -t / -c      [CPUs of the load generator, 50]
#   TRACE_BATCHES=1 after the close rounds, one extra rrproxy cell with
#                   benches/batches.bt on the front (batch sizes) [1 if root and bpftrace]
#   SYSCALLS=1      after the close rounds, one extra cell per proxy with
#                   perf stat: system calls, context switches and CPU per
#                   connection, front/master and workers apart [1 if perf can attach]
#   OUT_DIR         where results go                       [target/bench-results]

set -uo pipefail   # no -e: one failing cell must not abort the matrix

# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LIB=("${BENCHLIB[@]}")
bench_args "$@"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-2}; ROUNDS=${ROUNDS:-1}; WARMUP=${WARMUP:-0}
    BULK_REPEAT=${BULK_REPEAT:-1}; IDLE_CONNS=${IDLE_CONNS:-2000}
else
    DURATION=${DURATION:-5}; ROUNDS=${ROUNDS:-5}; WARMUP=${WARMUP:-1}
    BULK_REPEAT=${BULK_REPEAT:-3}; IDLE_CONNS=${IDLE_CONNS:-10000}
fi
PROXIES=${PROXIES:-direct haproxy haproxy-splice nginx pen rrproxy}
WORKLOADS=${WORKLOADS:-close keepalive bulk iperf3 idle}
RRPROXY_ARGS=${RRPROXY_ARGS:-}
DEFER_ACCEPT=${DEFER_ACCEPT:-0}
HAPROXY_BIND_OPTS="" RRPROXY_DEFER=""
if [ "$DEFER_ACCEPT" = 1 ]; then
    HAPROXY_BIND_OPTS=" defer-accept" RRPROXY_DEFER=" --defer-accept"
fi
PIN=${PIN:-1}
# Trace the front's batch sizes (benches/batches.bt) in one extra close
# cell when bpftrace can run (root).
if [ -z "${TRACE_BATCHES:-}" ]; then
    if command -v bpftrace >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then TRACE_BATCHES=1; else TRACE_BATCHES=0; fi
fi

# Count system calls per connection with perf stat (one extra close cell
# per proxy) when perf can attach to other processes.
if [ -z "${SYSCALLS:-}" ]; then
    if command -v perf >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ "$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null)" -le 0 ]; }; then
        SYSCALLS=1
    else
        SYSCALLS=0
    fi
fi

# ------------------------------------------------------------ CPU sets
# The CPUs this script may use (it may itself run under taskset), split
# into three disjoint sets: the proxy's (the last PROXY_CORES), the
# backends' and the load generator's (the rest, halved; on a machine with
# a single CPU left they share it, still apart from the proxy).
ALL_CPUS=($(taskset -pc $$ 2>/dev/null | sed 's/.*: //' | "$PY" -S -c '
import sys
out = []
for part in sys.stdin.read().strip().split(","):
    a, _, b = part.partition("-")
    out.extend(range(int(a), int(b or a) + 1))
print(" ".join(map(str, out)))'))
[ ${#ALL_CPUS[@]} -gt 0 ] || ALL_CPUS=($(seq 0 $(($(nproc) - 1))))
NCPU=${#ALL_CPUS[@]}
if [ -z "${PROXY_CORES:-}" ]; then
    if [ "$NCPU" -lt 4 ]; then PROXY_CORES=1; else PROXY_CORES=$((NCPU / 2)); fi
fi
join_cpus() { local IFS=,; echo "$*"; }
PIN_NOTE=
if [ "$PIN" = 1 ] && ! command -v taskset >/dev/null 2>&1; then
    PIN=0; PIN_NOTE="taskset not found: no pinning"
fi
if [ "$PIN" = 1 ] && [ "$PROXY_CORES" -ge "$NCPU" ]; then
    PIN=0; PIN_NOTE="PROXY_CORES=$PROXY_CORES leaves no CPU for the load: no pinning"
fi
if [ "$PIN" = 1 ]; then
    rest=$((NCPU - PROXY_CORES))
    PROXY_CPUS=$(join_cpus "${ALL_CPUS[@]:rest:PROXY_CORES}")
    if [ "$rest" -ge 2 ]; then
        nb=$((rest / 2))
        BACKEND_CPUS=$(join_cpus "${ALL_CPUS[@]:0:nb}")
        LOAD_CPUS=$(join_cpus "${ALL_CPUS[@]:nb:rest-nb}")
        LOAD_NCPU=$((rest - nb)); BACKEND_NCPU=$nb
    else
        BACKEND_CPUS=$(join_cpus "${ALL_CPUS[@]:0:rest}")
        LOAD_CPUS=$BACKEND_CPUS
        LOAD_NCPU=$rest; BACKEND_NCPU=$rest
        PIN_NOTE="only $rest CPU left beside the proxy's: the backends and the load generator share it"
    fi
    PIN_PROXY=(taskset -c "$PROXY_CPUS")
    PIN_BACKEND=(taskset -c "$BACKEND_CPUS")
    PIN_LOAD=(taskset -c "$LOAD_CPUS")
    # The CPUs whose time counts as the proxy's (see cpus-busy).
    PROXY_CPU_COUNT=$PROXY_CORES
else
    PROXY_CPUS=; BACKEND_CPUS=; LOAD_CPUS=
    LOAD_NCPU=$NCPU; BACKEND_NCPU=2
    PIN_PROXY=(); PIN_BACKEND=(); PIN_LOAD=()
    PROXY_CPU_COUNT=$NCPU
fi
WRK_THREADS=${WRK_THREADS:-$LOAD_NCPU}
WRK_CONNS=${WRK_CONNS:-50}
RR_WORKERS=${RR_WORKERS:-$PROXY_CORES}
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
        rrproxy-alt)
            if [ -n "${RRPROXY_ALT:-}" ] && [ -x "$RRPROXY_ALT" ]; then want_proxies+=("$p")
            else skip "rrproxy-alt: set RRPROXY_ALT to a second rrproxy binary"; fi ;;
        rrproxy|rrproxy-defer)
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

PORTS=($("${LIB[@]}" freeports 9))
P_HTTP=${PORTS[0]}; P_IPERF=${PORTS[1]}
declare -A PPORT=([haproxy]=${PORTS[2]} [haproxy-splice]=${PORTS[3]} [nginx]=${PORTS[4]} [pen]=${PORTS[5]} [rrproxy]=${PORTS[6]} [rrproxy-defer]=${PORTS[7]} [rrproxy-alt]=${PORTS[8]})

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
worker_processes $BACKEND_NCPU;
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
    start_bg backend-nginx "${PIN_BACKEND[@]}" nginx -e "$T/logs/backend-nginx.log" -p "$T/nginx-backend" -c "$T/nginx-backend/nginx.conf"
    BACKEND_NGINX=$BG_PID
    wait_port "$P_HTTP" 10 "$BACKEND_NGINX" || { echo "backend nginx did not start: $(tail -3 "$T/logs/backend-nginx.log")" >&2; exit 1; }
    start_iperf3
}

start_iperf3() {
    IPERF_PID=
    if have iperf3; then
        start_bg backend-iperf3 "${PIN_BACKEND[@]}" iperf3 -s -B 127.0.0.1 -p "$P_IPERF"
        IPERF_PID=$BG_PID
        wait_port "$P_IPERF" 10 || log "iperf3 server did not start"
    fi
}

# ------------------------------------------------------------ proxies

# write_proxy_config NAME BACKEND_PORT PORT: the proxy's configuration file
# (or command line, for pen and rrproxy) in $T/NAME/, as each proxy's own
# documentation recommends for an L4 benchmark; printed with the results.
write_proxy_config() {
    local name=$1 bport=$2 port=$3 dir=$T/$1
    mkdir -p "$dir"
    case "$name" in
        haproxy|haproxy-splice)
            {
                echo "# haproxy -db -f haproxy.cfg"
                echo "global"
                # One thread per proxy CPU (what HAProxy picks by itself from
                # its CPU affinity; written out so the table says it).
                echo "    nbthread $PROXY_CORES"
                echo "    maxconn $MAXCONN"
                # Pipes for splicing cost 2 fds each; the default (maxconn/4)
                # would not fit the fd limit. Unused without splice.
                echo "    maxpipes $MAXPIPES"
                echo "    # tune.*: HAProxy's defaults"
                echo "defaults"
                echo "    mode tcp"
                echo "    maxconn $MAXCONN"
                echo "    timeout connect 5s"
                echo "    timeout client 5m"
                echo "    timeout server 5m"
                [ "$name" = haproxy-splice ] && echo "    option splice-auto"
                echo "frontend fe"
                echo "    bind 127.0.0.1:$port$HAPROXY_BIND_OPTS"
                echo "    default_backend be"
                echo "backend be"
                echo "    server s1 127.0.0.1:$bport"
            } > "$dir/haproxy.cfg" ;;
        nginx)
            cat > "$dir/nginx.conf" <<EOF
# nginx -p DIR -c nginx.conf
load_module $NGINX_STREAM_MODULE;
daemon off;
master_process on;
worker_processes $PROXY_CORES;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $T/logs/nginx.log warn;
events { worker_connections $((NOFILE - 100)); }
stream {
    server {
        # reuseport: one listening socket per worker, the kernel spreads
        # connections (nginx's advice for many workers).
        listen 127.0.0.1:$port backlog=4096 reuseport;
        proxy_pass 127.0.0.1:$bport;
        proxy_connect_timeout 5s;
        proxy_timeout 5m;
    }
}
EOF
            ;;
        pen)
            # -f foreground, -r plain round robin (no client tracking table),
            # -x most simultaneous connections (default 500). Single process.
            echo "pen -f -r -x $MAXCONN 127.0.0.1:$port 127.0.0.1:$bport" > "$dir/cmdline" ;;
        rrproxy|rrproxy-defer|rrproxy-alt)
            local defer=$RRPROXY_DEFER bin=$RRPROXY
            [ "$name" = rrproxy-defer ] && defer=" --defer-accept"
            [ "$name" = rrproxy-alt ] && bin=$RRPROXY_ALT
            echo "$bin -q --listen 127.0.0.1:$port --backend 127.0.0.1:$bport --workers $RR_WORKERS --policy round-robin --metrics off --control off$defer $RRPROXY_ARGS" > "$dir/cmdline" ;;
    esac
}

# start_proxy NAME BACKEND_PORT: sets PROXY_PID (empty for direct) and
# PROXY_PORT. Returns non-zero if the proxy did not come up.
start_proxy() {
    local name=$1 bport=$2 dir=$T/$1
    PROXY_PID=
    if [ "$name" = direct ]; then PROXY_PORT=$bport; return 0; fi
    PROXY_PORT=${PPORT[$name]}
    write_proxy_config "$name" "$bport" "$PROXY_PORT"
    case "$name" in
        haproxy|haproxy-splice)
            start_bg "$name" "${PIN_PROXY[@]}" haproxy -db -f "$dir/haproxy.cfg" ;;
        nginx)
            start_bg nginx "${PIN_PROXY[@]}" nginx -e "$T/logs/nginx.log" -p "$dir" -c "$dir/nginx.conf" ;;
        pen|rrproxy|rrproxy-defer|rrproxy-alt)
            # shellcheck disable=SC2046
            start_bg "$name" "${PIN_PROXY[@]}" $(cat "$dir/cmdline") ;;
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

proxy_counts() { if [ -n "$PROXY_PID" ]; then "${LIB[@]}" proc-counts "$PROXY_PID"; else echo ""; fi; }
cores_busy() { if [ -n "$PROXY_CPUS" ] && [ -n "$PROXY_PID" ]; then "${LIB[@]}" cpus-busy "$PROXY_CPUS"; else echo ""; fi; }

run_wrk() {  # run_wrk WORKLOAD PROXY ROUND [extra wrk args...]
    local w=$1 p=$2 r=$3; shift 3
    local out=$T/logs/wrk-$w-$p-$r.txt c0 c1 k0 k1 b0 b1 t0 t1 j rps req cpu
    if [ "$WARMUP" != 0 ]; then
        # Unmeasured: the proxy's workers, its memory and the kernel's
        # socket caches are warm before the clock starts.
        timeout --foreground -k 5 $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" \
            -d"${WARMUP}s" --timeout 5s "$@" "http://127.0.0.1:$PROXY_PORT/" > "$out.warmup" 2>&1
    fi
    c0=$(proxy_cpu); k0=$(proxy_counts); b0=$(cores_busy); t0=$(date +%s.%N)
    # cpus-busy prints "busy-seconds epoch": its own clock brackets the run.
    timeout --foreground -k 5 $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" \
        --timeout 5s --latency "$@" "http://127.0.0.1:$PROXY_PORT/" > "$out" 2>&1
    local rc=$?
    b1=$(cores_busy); t1=$(date +%s.%N); c1=$(proxy_cpu); k1=$(proxy_counts)
    [ $rc -ne 0 ] && note "$w" "$p" "$r" "wrk exited $rc: $(tail -2 "$out" | tr '\n' ' ')"
    j=$("${LIB[@]}" wrk "$out")
    rps=$(json_get "$j" rps); req=$(json_get "$j" requests)
    local errs; errs=$(json_get "$j" errors)
    if [ -n "$errs" ] && [ "$errs" != 0 ]; then
        note "$w" "$p" "$r" "wrk errors: $(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' \n' ' ')"
    fi
    cpu=
    [ -n "$c0" ] && [ -n "$c1" ] && cpu=$(calc "$c1 - $c0")
    # Context switches and the front's (root process's) share, per request.
    # CPU per request of the whole tree, of the started process (front,
    # master) and of its children (workers), from /proc.
    local sw='' rsw='' rus='' ous='' multi=0
    if [ -n "$k0" ] && [ -n "$k1" ] && [ -n "$req" ] && [ "$req" != 0 ]; then
        read -r sw rsw rus ous multi <<< "$("$PY" -S -c '
import json, sys
a, b, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
def sw(k): return (b[k]["vol"] + b[k]["invol"]) - (a[k]["vol"] + a[k]["invol"])
def us(k): return round((b[k]["cpu"] - a[k]["cpu"]) * 1e6 / n, 2)
print(round((sw("root") + sw("others")) / n, 3), round(sw("root") / n, 3),
      us("root"), us("others"), int(b["procs"] > 1))' "$k0" "$k1" "$req")"
        echo "$p $w round $r: before $k0 after $k1 requests $req" >> "$T/logs/proc-counts.txt"
    fi
    if [ "$w" = close ]; then
        record close "$p" "$r" close_cps "$rps"
        record close "$p" "$r" close_errors "$errs"
        [ -n "$cpu" ] && [ -n "$req" ] && record close "$p" "$r" close_conn_per_cpu "$(calc "$req / max($cpu, 0.01)")"
        [ -n "$cpu" ] && record close "$p" "$r" close_cpu_s "$cpu"
        [ -n "$cpu" ] && record close "$p" "$r" close_cpu_pct "$(calc "round(100 * $cpu / ($t1 - $t0) / $PROXY_CPU_COUNT, 1)")"
        if [ -n "$b0" ] && [ -n "$b1" ]; then
            local bs0 bt0 bs1 bt1
            read -r bs0 bt0 <<< "$b0"; read -r bs1 bt1 <<< "$b1"
            record close "$p" "$r" close_cores_busy_pct "$(calc "round(100 * ($bs1 - $bs0) / ($bt1 - $bt0) / $PROXY_CPU_COUNT, 1)")"
        fi
        [ -n "$sw" ] && record close "$p" "$r" close_ctxsw_per_conn "$sw"
        [ -n "$cpu" ] && [ -n "$req" ] && [ "$req" != 0 ] && record close "$p" "$r" close_us_per_conn "$(calc "round($cpu * 1e6 / $req, 2)")"
        if [ "$multi" = 1 ] && [ -n "$rsw" ]; then
            record close "$p" "$r" close_root_ctxsw_per_conn "$rsw"
            record close "$p" "$r" close_root_us_per_conn "$rus"
            record close "$p" "$r" close_others_us_per_conn "$ous"
        fi
    else
        record keepalive "$p" "$r" ka_rps "$rps"
        record keepalive "$p" "$r" ka_p99_ms "$(json_get "$j" p99_ms)"
        record keepalive "$p" "$r" ka_errors "$errs"
        [ -n "$cpu" ] && [ -n "$req" ] && [ "$req" != 0 ] && record keepalive "$p" "$r" ka_cpu_us_per_req "$(calc "$cpu * 1e6 / $req")"
        [ -n "$sw" ] && record keepalive "$p" "$r" ka_ctxsw_per_req "$sw"
    fi
    log "  $w $p: $rps req/s, errors ${errs:-?}, proxy cpu ${cpu:+$(calc "round($cpu, 2)")}s${sw:+, $sw switches/req}"
}

run_bulk() {  # run_bulk PROXY ROUND
    local p=$1 r=$2 i c0 c1 res code size speed speeds=() bytes=0
    c0=$(proxy_cpu)
    for i in $(seq "$BULK_REPEAT"); do
        res=$(timeout --foreground -k 5 70 "${PIN_LOAD[@]}" curl -s -o /dev/null --max-time 60 \
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
    timeout --foreground -k 5 $((DURATION + 30)) "${PIN_LOAD[@]}" iperf3 -c 127.0.0.1 -p "$PROXY_PORT" -t "$DURATION" \
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
    j=$(timeout --foreground -k 5 100 "${PIN_LOAD[@]}" "${LIB[@]}" idle "$IDLE_CONNS" "$PROXY_PORT" "$P_HTTP" "$PROXY_PID" 1 60)
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

# trace_batches: one extra close cell of rrproxy, not recorded in the
# table, with benches/batches.bt attached to the front: the distribution of
# descriptors per handoff sendmsg that the front really produces.
trace_batches() {
    local out=$T/logs/batches.txt bt
    if ! start_proxy rrproxy "$P_HTTP"; then log "batches: rrproxy did not start"; return; fi
    rm -f "$out"
    setsid bpftrace "$HERE/batches.bt" "$PROXY_PID" > "$out" 2>&1 < /dev/null &
    bt=$!
    local i
    for i in $(seq 100); do grep -q Attaching "$out" 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    timeout --foreground -k 5 $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" \
        -d"${DURATION}s" --timeout 5s -H 'Connection: close' "http://127.0.0.1:$PROXY_PORT/" > "$T/logs/wrk-batches.txt" 2>&1
    kill -INT "$bt" 2>/dev/null
    for i in $(seq 50); do kill -0 "$bt" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$bt" 2>/dev/null; wait "$bt" 2>/dev/null
    stop_bg "$PROXY_PID"
    "${LIB[@]}" batches "$out" > "$T/batches-summary.txt" 2>&1
    log "$(head -2 "$T/batches-summary.txt" | tail -1)"
}

# trace_syscalls PROXY: one extra close cell of PROXY, after the measured
# rounds, with `perf stat` counting system calls, context switches and CPU
# (task-clock) per thread over exactly the wrk run (perf starts disabled
# and is switched on and off through its control fifo). Per connection,
# for the started process (front/master) and its children (workers):
# rows "syscalls per conn" and the breakdown printed under the table.
# perf's tracepoints slow the syscalls down a little, so this cell's rate
# and CPU are not in the table.
trace_syscalls() {
    local p=$1 out=$T/logs/perf-$1.txt roles=$T/perf-roles-$1.json perfpid i a j req
    if ! start_proxy "$p" "$P_HTTP"; then log "syscalls: $p did not start"; return; fi
    if [ "$WARMUP" != 0 ]; then
        timeout --foreground -k 5 $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" \
            -d"${WARMUP}s" --timeout 5s -H 'Connection: close' "http://127.0.0.1:$PROXY_PORT/" > /dev/null 2>&1
    fi
    "${LIB[@]}" tid-roles "$PROXY_PID" > "$roles"
    rm -f "$T/perf.ctl" "$T/perf.ack" && mkfifo "$T/perf.ctl" "$T/perf.ack" || return
    setsid perf stat --per-thread -x, -D -1 --control "fifo:$T/perf.ctl,$T/perf.ack" \
        -e "$("${LIB[@]}" perf-events)" -p "$("${LIB[@]}" tree-pids "$PROXY_PID" | tr ' ' ,)" \
        -o "$out" < /dev/null > "$T/logs/perf-$p.err" 2>&1 &
    perfpid=$!
    # Read-write opens: they do not block if perf never opens its ends.
    exec 7<>"$T/perf.ctl" 6<>"$T/perf.ack"
    echo enable >&7
    if ! read -r -t 30 -u 6 a; then
        log "syscalls: perf stat did not start: $(head -2 "$T/logs/perf-$p.err" | tr '\n' ' ')"
        exec 7>&- 6<&-; kill -KILL "$perfpid" 2>/dev/null; wait "$perfpid" 2>/dev/null
        stop_bg "$PROXY_PID"; return
    fi
    timeout --foreground -k 5 $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" \
        -d"${DURATION}s" --timeout 5s -H 'Connection: close' "http://127.0.0.1:$PROXY_PORT/" > "$T/logs/wrk-syscalls-$p.txt" 2>&1
    echo disable >&7
    read -r -t 10 -u 6 a
    exec 7>&- 6<&-
    kill -INT "$perfpid" 2>/dev/null
    for i in $(seq 50); do kill -0 "$perfpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$perfpid" 2>/dev/null; wait "$perfpid" 2>/dev/null
    stop_bg "$PROXY_PID"
    req=$(json_get "$("${LIB[@]}" wrk "$T/logs/wrk-syscalls-$p.txt")" requests)
    if [ -z "$req" ] || [ "$req" = 0 ]; then log "syscalls: no requests through $p"; return; fi
    j=$("${LIB[@]}" perf-parse "$out" "$roles" "$req") || return
    echo "{\"proxy\": \"$p\", \"requests\": $req, \"roles\": $j}" > "$T/syscalls-$p.json"
    cp "$T/syscalls-$p.json" "$T/logs/"
    "$PY" -S -c '
import json, sys
j = json.load(open(sys.argv[1]))
r = j["roles"]
print("all", r["all"]["total"])
if r.get("others"):
    print("root", r.get("root", {}).get("total", 0))
    print("others", r["others"]["total"])' "$T/syscalls-$p.json" | while read -r role v; do
        case "$role" in
            all) record close "$p" s close_sys_per_conn "$v" ;;
            root) record close "$p" s close_root_sys_per_conn "$v" ;;
            others) record close "$p" s close_others_sys_per_conn "$v" ;;
        esac
    done
    log "  syscalls $p: $(json_get "$j" all | cut -c1-200)"
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
    [ -n "${RRPROXY_ALT:-}" ] && [ -x "$RRPROXY_ALT" ] && echo "rrproxy-alt: $RRPROXY_ALT"
    echo "sysctl: somaxconn $(cat /proc/sys/net/core/somaxconn), tcp_tw_reuse $(cat /proc/sys/net/ipv4/tcp_tw_reuse), ip_local_port_range $(tr '\t' '-' < /proc/sys/net/ipv4/ip_local_port_range), pipe-user-pages-soft $(cat /proc/sys/fs/pipe-user-pages-soft)"
}

cpu_layout() {
    if [ "$PIN" = 1 ]; then
        echo "CPU sets (taskset): proxy $PROXY_CPUS, backends $BACKEND_CPUS, load generator $LOAD_CPUS${PIN_NOTE:+ ($PIN_NOTE)}"
    else
        echo "CPU sets: none, everything shares CPUs ${ALL_CPUS[*]}${PIN_NOTE:+ ($PIN_NOTE)}"
    fi
    echo "PROXY_CORES=$PROXY_CORES: HAProxy nbthread $PROXY_CORES, nginx worker_processes $PROXY_CORES, rrproxy --workers $RR_WORKERS (+ its front), pen 1 process"
}

# Every proxy's configuration, as it runs in this script.
print_configs() {
    local p f
    for p in "${want_proxies[@]}"; do
        [ "$p" = direct ] && continue
        write_proxy_config "$p" '$BACKEND_PORT' '$PORT'
        echo "--- $p"
        for f in "$T/$p/haproxy.cfg" "$T/$p/nginx.conf" "$T/$p/cmdline"; do
            [ -f "$f" ] && grep -v '^\s*$' "$f"
        done
    done
    echo "--- backends: nginx, worker_processes $BACKEND_NCPU, keep-alive on (keepalive_requests 1000000), sendfile; iperf3 -s"
    echo "--- load: wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s (after ${WARMUP}s of unmeasured warm-up), curl, iperf3 -c, benchlib.py idle"
}

n_proxies=${#want_proxies[@]}
est=0
for w in "${want_workloads[@]}"; do
    case "$w" in
        close|keepalive) est=$((est + n_proxies * (DURATION + WARMUP + 1))) ;;
        iperf3) est=$((est + n_proxies * (DURATION + 2))) ;;
        bulk) est=$((est + n_proxies * (BULK_REPEAT / 2 + 1))) ;;
        idle) est=$((est + (n_proxies - 1) * (2 + IDLE_CONNS / 2000))) ;;
    esac
done
est=$((est * ROUNDS))
{
    echo "rrproxy comparison $TS"
    versions
    echo "settings: DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS BULK_REPEAT=$BULK_REPEAT IDLE_CONNS=$IDLE_CONNS DEFER_ACCEPT=$DEFER_ACCEPT wrk -t$WRK_THREADS -c$WRK_CONNS"
    cpu_layout
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
    if [ "$w" = close ] && [ "$TRACE_BATCHES" = 1 ] && [[ " ${want_proxies[*]} " == *" rrproxy "* ]]; then
        trace_batches
    fi
    if [ "$w" = close ] && [ "$SYSCALLS" = 1 ]; then
        for p in "${want_proxies[@]}"; do
            [ "$p" = direct ] || trace_syscalls "$p"
        done
    fi
done

RUN_END=$(date +%s)
# How much CPU did processes other than this script's tree use meanwhile?
BUSY_END=$("${LIB[@]}" busy)
SELF_END=$("${LIB[@]}" tree-cpu $$)
FOREIGN=$(calc "round(max(0, ($BUSY_END - $BUSY_START) - ($SELF_END - $SELF_START)), 1)")
FOREIGN_PCT=$(calc "round(100 * $FOREIGN / ($(nproc) * max(1, $RUN_END - $RUN_START)))")
{
    echo
    echo "== results $TS (median of $ROUNDS interleaved rounds ±half their min-max range; ratio = median / $BASELINE's median in this run)"
    echo "load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time $((RUN_END - RUN_START)) s"
    echo "other processes on the machine used $FOREIGN CPU-seconds during the run (${FOREIGN_PCT}% of all CPU time)"
    if [ "${FOREIGN_PCT:-0}" -ge 10 ]; then
        echo "WARNING: the machine was busy with other work: numbers are noisy, compare ratios only"
    fi
    [ ${#SKIPPED[@]} -gt 0 ] && printf 'skipped: %s\n' "${SKIPPED[@]}"
    cpu_layout
    echo
    "${LIB[@]}" report "$CSV" "$PROXIES" "$BASELINE" "$OUT_DIR/$TS.json"
    [ -s "$T/batches-summary.txt" ] && { echo; cat "$T/batches-summary.txt"; }
    if compgen -G "$T/syscalls-*.json" > /dev/null; then
        echo
        "${LIB[@]}" show-syscalls $(for p in "${want_proxies[@]}"; do [ -f "$T/syscalls-$p.json" ] && echo "$T/syscalls-$p.json"; done)
    fi
    echo
    echo "Settings of every proxy (\$PORT, \$BACKEND_PORT: the loopback ports of the run):"
    print_configs
    echo
    echo "raw: $CSV  medians: $OUT_DIR/$TS.json  logs: $LOGS/"
} | tee "$OUT_DIR/$TS.txt"
