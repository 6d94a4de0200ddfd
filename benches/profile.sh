#!/usr/bin/env bash
# benches/profile.sh - where rrproxy's time goes on new connections: the
# front and one worker pinned to one CPU, an nginx backend and wrk
# (-H 'Connection: close') on another; `perf stat` (task clock, context
# switches) and `perf record -e cpu-clock -g` of the front and the worker.
# See benches/README.md, "Issue 13's targets" and "Profile notes".
#
# Usage: benches/profile.sh [RRPROXY] [OUT_DIR]
#   RRPROXY  [target/release/rrproxy]   OUT_DIR  [target/bench-results/profile-TS]
# Needs: nginx, wrk, perf (Debian linux-perf), taskset, setsid, python3.
# Then:  perf report -i OUT_DIR/front.data --children --sort sym
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${1:-$ROOT/target/release/rrproxy}
OUT=${2:-$ROOT/target/bench-results/profile-$(date +%Y%m%d-%H%M%S)}
LOAD_CPU=${LOAD_CPU:-0}; PROXY_CPU=${PROXY_CPU:-1}
for t in nginx wrk perf taskset setsid python3; do
    command -v "$t" >/dev/null || { echo "profile.sh: $t is required" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "profile.sh: no rrproxy at $BIN" >&2; exit 1; }
mkdir -p "$OUT"
T=$(mktemp -d /tmp/rrprof.XXXXXX)
read -r PB PP <<< "$(python3 -S "$HERE/benchlib.py" freeports 2)"
NG=; RP=
cleanup() {
    [ -n "$RP" ] && { kill -TERM "$RP" 2>/dev/null; sleep 1; kill -KILL -- "-$RP" 2>/dev/null; }
    [ -n "$NG" ] && { kill -KILL -- "-$NG" 2>/dev/null; wait "$NG" 2>/dev/null; }
    rm -rf "$T"
}
trap cleanup EXIT
cat > "$T/nginx.conf" <<NGINX
daemon off; master_process on; worker_processes 1; pid $T/nginx.pid; error_log $T/nginx.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $T/b; proxy_temp_path $T/p; fastcgi_temp_path $T/f; uwsgi_temp_path $T/u; scgi_temp_path $T/s;
  server { listen 127.0.0.1:$PB backlog=4096; location = / { return 200 "ok\n"; } } }
NGINX
setsid taskset -c "$LOAD_CPU" nginx -p "$T" -c "$T/nginx.conf" > "$T/nginx.out" 2>&1 & NG=$!
setsid taskset -c "$PROXY_CPU" "$BIN" -q --listen "127.0.0.1:$PP" --backend "127.0.0.1:$PB" \
    --workers 1 --policy round-robin --metrics off --control off > "$OUT/rrproxy.log" 2>&1 & RP=$!
sleep 1
W=$(python3 -S "$HERE/benchlib.py" tree-pids "$RP" | tr ' ' '\n' | grep -v "^$RP$" | head -1)
[ -n "$W" ] || { echo "profile.sh: no worker under the front $RP" >&2; exit 1; }
echo "front $RP, worker $W; load on CPU $LOAD_CPU, proxy on CPU $PROXY_CPU"
taskset -c "$LOAD_CPU" wrk -t1 -c50 -d12s -H 'Connection: close' "http://127.0.0.1:$PP/" > "$OUT/wrk.txt" 2>&1 & WK=$!
sleep 2
perf stat -e task-clock,context-switches,cpu-migrations -p "$RP" -o "$OUT/stat-front.txt" -- sleep 4 &
PS=$!
perf stat -e task-clock,context-switches,cpu-migrations -p "$W" -o "$OUT/stat-worker.txt" -- sleep 4
wait "$PS"; sleep 0.2
perf record -q -e cpu-clock -F 2000 -g -p "$RP" -o "$OUT/front.data" -- sleep 3 2>/dev/null &
PR=$!
perf record -q -e cpu-clock -F 2000 -g -p "$W" -o "$OUT/worker.data" -- sleep 3 2>/dev/null
wait "$PR" "$WK"
grep -E "requests in|Requests/sec" "$OUT/wrk.txt"
for x in front worker; do
    echo "== $x"
    grep -E "task-clock|context-switches" "$OUT/stat-$x.txt"
    perf report -i "$OUT/$x.data" --children --sort sym --stdio 2>/dev/null \
        | grep -E '^ +[0-9].*(__x64_sys_|__sys_sendmsg|__sys_recvmsg|finish_task_switch)' | head -12
done
echo "profiles: $OUT/front.data $OUT/worker.data"
