#!/usr/bin/env bash
# benches/features.sh - what the client-address and access-control features
# cost on the new-connection workload (wrk -H 'Connection: close'), for
# rrproxy and for HAProxy with the same feature, as ratios to the same proxy
# without it in the same run (medians of interleaved rounds).
# What it measures and how to read it: benches/README.md, "Feature costs".
#
# Usage: benches/features.sh [--rrproxy PATH] [-h]
# Environment (defaults in brackets):
#   DURATION=5      seconds per wrk run                    [5, QUICK: 2]
#   ROUNDS=5        interleaved rounds of every cell       [5, QUICK: 1]
#   QUICK=1         ~30 s smoke run
#   RRPROXY=PATH    rrproxy binary                         [target/release/rrproxy]
#   RR_WORKERS      rrproxy --workers (default 2, like HAProxy nbthread 2)
#   PROXIES         subset/order of: rrproxy haproxy
#   FEATURES        subset/order of: send-proxy-v2 acl-10k accept-proxy
#   ACL_SIZE        CIDRs in the access list               [10000]
#   WRK_THREADS, WRK_CONNS   wrk -t / -c                    [2, 50]
#   OUT_DIR         where results go                       [target/bench-results]

set -uo pipefail   # no -e: one failing cell must not abort the matrix

# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LIB=("${BENCHLIB[@]}")
bench_args "$@"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-2}; ROUNDS=${ROUNDS:-1}
else
    DURATION=${DURATION:-5}; ROUNDS=${ROUNDS:-5}
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-50}
PROXIES=${PROXIES:-rrproxy haproxy}
FEATURES=${FEATURES:-send-proxy-v2 acl-10k accept-proxy}
ACL_SIZE=${ACL_SIZE:-10000}
RR_WORKERS=${RR_WORKERS:-2}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}

T=$(mktemp -d /tmp/rrfeat.XXXXXX)
STARTED=()
TS=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR" "$T/logs"
CSV=$OUT_DIR/features-$TS.csv
LOGS=$OUT_DIR/features-$TS-logs
echo "proxy,variant,round,cps,cpu_us_per_conn,errors" > "$CSV"

# Shared helpers: log, kill_tree, stop_bg, start_bg, wait_port.

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do kill_tree "$p" TERM; done
    sleep 0.3
    for p in "${STARTED[@]}"; do kill_tree "$p" KILL; wait "$p" 2>/dev/null; done
    mkdir -p "$LOGS" && cp -r "$T/logs/." "$LOGS/" 2>/dev/null
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

have() { command -v "$1" >/dev/null 2>&1; }
calc() { "$PY" -S -c "print($1)" 2>/dev/null; }
json_get() { "$PY" -S -c "import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print('' if v is None else v)" "$1" "$2"; }

for tool in nginx wrk curl setsid; do
    have "$tool" || { echo "features.sh: $tool is required" >&2; exit 1; }
done
want=()
for p in $PROXIES; do
    case "$p" in
        rrproxy) if [ -x "$RRPROXY" ]; then want+=(rrproxy); else log "SKIP rrproxy: no binary at $RRPROXY (cargo build --release)"; fi ;;
        haproxy) if have haproxy; then want+=(haproxy); else log "SKIP haproxy: not installed"; fi ;;
        *) echo "features.sh: unknown proxy '$p'" >&2; exit 2 ;;
    esac
done
for f in $FEATURES; do
    case "$f" in
        send-proxy-v2|acl-10k|accept-proxy) ;;
        *) echo "features.sh: unknown feature '$f'" >&2; exit 2 ;;
    esac
done
[ ${#want[@]} -gt 0 ] || { echo "features.sh: nothing to run" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
MAXCONN=$(( (NOFILE - 1000) / 2 ))

PORTS=($("${LIB[@]}" freeports 4))
P_HTTP=${PORTS[0]}; P_PP=${PORTS[1]}; P_RR=${PORTS[2]}; P_HA=${PORTS[3]}

# ------------------------------------------------------------ inputs

# The access list: ACL_SIZE networks, one of them 127.0.0.0/8 (the clients),
# the others spread over the rest of the IPv4 space (/16 to /32), as an
# allow list: every client is looked up, every one is admitted.
"$PY" -S - "$ACL_SIZE" "$T/acl.txt" "$T/acl.toml" <<'EOF'
import random, sys
n, txt, toml = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rnd = random.Random(12)
nets = ["127.0.0.0/8"]
while len(nets) < n:
    a = rnd.getrandbits(32)
    if a >> 24 == 127:
        continue
    p = rnd.randint(16, 32)
    a &= (0xFFFFFFFF << (32 - p)) & 0xFFFFFFFF
    nets.append("%d.%d.%d.%d/%d" % (a >> 24, a >> 16 & 255, a >> 8 & 255, a & 255, p))
with open(txt, "w") as f:
    f.write("\n".join(nets) + "\n")
with open(toml, "w") as f:
    f.write("allow = [\n" + "".join('  "%s",\n' % c for c in nets) + "]\n")
EOF

# wrk sends one request per connection (Connection: close); for the
# accept-proxy cells each request starts with a PROXY v2 header from
# 127.0.0.1 (what a load balancer in front would send).
cat > "$T/accept.lua" <<'EOF'
local function be16(n) return string.char(math.floor(n / 256), n % 256) end
local header = "\r\n\r\n\0\r\nQUIT\n" .. string.char(0x21, 0x11) .. be16(12)
    .. string.char(127, 0, 0, 1) .. string.char(127, 0, 0, 1) .. be16(40000) .. be16(80)
wrk.headers["Connection"] = "close"
-- wrk parses the first request of its first thread as HTTP before the
-- run, which one with a header in front fails: that one call (and only
-- that one) gets the plain request. (setup runs before the check.)
local threads = 0
setup = function(thread)
    thread:set("id", threads)
    threads = threads + 1
end
local plain, req, calls = nil, nil, 0
request = function()
    if plain == nil then
        plain = wrk.format("GET", "/")
        req = header .. plain
    end
    calls = calls + 1
    if id == 0 and calls == 1 then return plain end
    return req
end
EOF
cat > "$T/close.lua" <<'EOF'
wrk.headers["Connection"] = "close"
EOF

# ------------------------------------------------------------ backend

mkdir -p "$T/nginx"
cat > "$T/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $T/nginx/nginx.pid;
error_log $T/logs/backend-nginx.log warn;
events { worker_connections $((NOFILE - 100)); }
http {
    access_log off;
    keepalive_timeout 300s;
    client_body_temp_path $T/nginx/body;
    proxy_temp_path $T/nginx/proxy;
    fastcgi_temp_path $T/nginx/fastcgi;
    uwsgi_temp_path $T/nginx/uwsgi;
    scgi_temp_path $T/nginx/scgi;
    server {
        listen 127.0.0.1:$P_HTTP backlog=4096;
        location = / { return 200 "ok\n"; }
    }
    # The same, for proxies that send a PROXY header (send-proxy cells).
    server {
        listen 127.0.0.1:$P_PP proxy_protocol backlog=4096;
        location = / { return 200 "ok\n"; }
    }
}
EOF
start_bg backend-nginx nginx -e "$T/logs/backend-nginx.log" -p "$T/nginx" -c "$T/nginx/nginx.conf"
wait_port "$P_HTTP" 10 "$BG_PID" || { echo "backend nginx did not start" >&2; exit 1; }

# ------------------------------------------------------------ proxies

# start_proxy PROXY VARIANT: sets PROXY_PID and PROXY_PORT.
start_proxy() {
    local p=$1 v=$2 dir=$T/$1-$2 bport=$P_HTTP
    mkdir -p "$dir"
    [ "$v" = send-proxy-v2 ] && bport=$P_PP
    case "$p" in
        rrproxy)
            PROXY_PORT=$P_RR
            local args=(-q --listen "127.0.0.1:$PROXY_PORT" --workers "$RR_WORKERS"
                --policy round-robin --metrics off --control off)
            case "$v" in
                base) args+=(--backend "127.0.0.1:$bport") ;;
                send-proxy-v2) args+=(--backend "127.0.0.1:$bport,send-proxy=v2") ;;
                acl-10k) args+=(--backend "127.0.0.1:$bport" --config "$T/acl.toml") ;;
                accept-proxy) args+=(--backend "127.0.0.1:$bport" --accept-proxy 127.0.0.1/32) ;;
            esac
            start_bg "rrproxy" "$RRPROXY" "${args[@]}" ;;
        haproxy)
            PROXY_PORT=$P_HA
            {
                echo "global"
                echo "    nbthread 2"
                echo "    maxconn $MAXCONN"
                echo "defaults"
                echo "    mode tcp"
                echo "    maxconn $MAXCONN"
                echo "    timeout connect 5s"
                echo "    timeout client 5m"
                echo "    timeout server 5m"
                echo "frontend fe"
                if [ "$v" = accept-proxy ]; then
                    echo "    bind 127.0.0.1:$PROXY_PORT accept-proxy"
                else
                    echo "    bind 127.0.0.1:$PROXY_PORT"
                fi
                [ "$v" = acl-10k ] && echo "    tcp-request connection reject if !{ src -f $T/acl.txt }"
                echo "    default_backend be"
                echo "backend be"
                if [ "$v" = send-proxy-v2 ]; then
                    echo "    server s1 127.0.0.1:$bport send-proxy-v2"
                else
                    echo "    server s1 127.0.0.1:$bport"
                fi
            } > "$dir/haproxy.cfg"
            start_bg haproxy haproxy -db -f "$dir/haproxy.cfg" ;;
    esac
    PROXY_PID=$BG_PID
    if ! wait_port "$PROXY_PORT" 10 "$PROXY_PID"; then
        stop_bg "$PROXY_PID"; PROXY_PID=
        return 1
    fi
    sleep 0.3
}

# run_cell PROXY VARIANT ROUND
run_cell() {
    local p=$1 v=$2 r=$3 out=$T/logs/wrk-$1-$2-$3.txt script=$T/close.lua c0 c1 j rps req errs cpu sane
    if ! start_proxy "$p" "$v"; then
        log "  $p $v: did not start: $(tail -2 "$T/logs/$p.log" | tr '\n' ' ')"
        return
    fi
    if [ "$v" = accept-proxy ]; then
        script=$T/accept.lua
        sane=$(curl -s --max-time 5 --haproxy-protocol "http://127.0.0.1:$PROXY_PORT/")
    else
        sane=$(curl -s --max-time 5 "http://127.0.0.1:$PROXY_PORT/")
    fi
    [ "$sane" = ok ] || log "  WARNING $p $v: sanity request failed"
    c0=$("${LIB[@]}" tree-cpu "$PROXY_PID")
    timeout --foreground -k 5 $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" \
        --timeout 5s -s "$script" "http://127.0.0.1:$PROXY_PORT/" > "$out" 2>&1
    c1=$("${LIB[@]}" tree-cpu "$PROXY_PID")
    stop_bg "$PROXY_PID"
    j=$("${LIB[@]}" wrk "$out")
    rps=$(json_get "$j" rps); req=$(json_get "$j" requests); errs=$(json_get "$j" errors)
    cpu=$(calc "($c1 - $c0) * 1e6 / max(1, ${req:-0})")
    echo "$p,$v,$r,${rps:-},${cpu:-},${errs:-}" >> "$CSV"
    log "  $p $v: ${rps:-?} conn/s, $(calc "round(${cpu:-0}, 1)") proxy CPU us/conn, errors ${errs:-?}"
}

# ------------------------------------------------------------ main

variants=(base $FEATURES)
cells=()
for p in "${want[@]}"; do for v in "${variants[@]}"; do cells+=("$p:$v"); done; done
{
    echo "rrproxy feature costs $TS"
    echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    have haproxy && echo "haproxy: $(haproxy -v | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "rrproxy: $RRPROXY ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')) --workers $RR_WORKERS"
    echo "settings: DURATION=$DURATION ROUNDS=$ROUNDS ACL_SIZE=$ACL_SIZE wrk -t$WRK_THREADS -c$WRK_CONNS, Connection: close"
    echo "estimated time: ~$(( ${#cells[@]} * ROUNDS * (DURATION + 2) / 60 + 1 )) min"
} | tee "$OUT_DIR/features-$TS.meta.txt" >&2

n=${#cells[@]}
for r in $(seq "$ROUNDS"); do
    log "== round $r"
    # Interleaved: every round runs every cell, in a rotated order.
    for i in $(seq 0 $((n - 1))); do
        cell=${cells[$(( (i + r - 1) % n ))]}
        run_cell "${cell%%:*}" "${cell#*:}" "$r"
    done
done

{
    echo
    echo "== feature costs $TS: median of $ROUNDS interleaved rounds; each ratio is the"
    echo "   median over rounds of (with the feature / the same proxy without it, same round)"
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    "$PY" -S - "$CSV" <<'EOF'
import csv, sys
from collections import defaultdict

def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2

rows = defaultdict(dict)   # (proxy, variant) -> round -> (cps, cpu, errors)
for row in csv.DictReader(open(sys.argv[1])):
    try:
        rows[(row["proxy"], row["variant"])][row["round"]] = (
            float(row["cps"]), float(row["cpu_us_per_conn"]), int(float(row["errors"] or 0)))
    except ValueError:
        continue
proxies = []
for (p, _v) in rows:
    if p not in proxies:
        proxies.append(p)
variants = []
for (_p, v) in rows:
    if v not in variants:
        variants.append(v)
print("| feature | proxy | new conn/s | ratio | proxy CPU us/conn | ratio | errors |")
print("|---|---|--:|--:|--:|--:|--:|")
for v in variants:
    for p in proxies:
        cur, base = rows.get((p, v), {}), rows.get((p, "base"), {})
        if not cur:
            continue
        cps = median([c[0] for c in cur.values()])
        cpu = median([c[1] for c in cur.values()])
        errs = sum(c[2] for c in cur.values())
        both = [r for r in cur if r in base]
        rc = median([cur[r][0] / base[r][0] for r in both if base[r][0]])
        ru = median([cur[r][1] / base[r][1] for r in both if base[r][1]])
        fmt = lambda x, f: "-" if x is None else f % x
        ratio = lambda x: "-" if v == "base" or x is None else "%.3f" % x
        print("| %s | %s | %s | %s | %s | %s | %d |" % (
            v, p, fmt(cps, "%.0f"), ratio(rc), fmt(cpu, "%.1f"), ratio(ru), errs))
EOF
    echo
    echo "raw: $CSV  logs: $LOGS/"
} | tee "$OUT_DIR/features-$TS.txt"
