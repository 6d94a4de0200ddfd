#!/usr/bin/env bash
# benches/sni.sh - TLS passthrough routing by server name (SNI), side by
# side: HAProxy (`tcp-request inspect-delay` + `req.ssl_sni`), nginx stream
# (`ssl_preread` + `map`) and rrproxy, each routing to three nginx HTTPS
# backends by name, and each plainly forwarding (round-robin, no look at
# the bytes) to the same three, plus a `direct` row (no proxy). Measures
# new TLS connections per second (full handshakes, no resumption) and per
# proxy CPU-second, and checks every reply came from the backend its name
# routes to. What the table means: benches/README.md, "SNI routing".
#
# Usage: benches/sni.sh [--rrproxy PATH] [-h]
# Environment (defaults in brackets):
#   DURATION=10        seconds of load per cell              [10, QUICK: 3]
#   ROUNDS=3           interleaved repeats of every row      [3, QUICK: 1]
#   QUICK=1            a ~40 s smoke run
#   CLIENTS=4          load processes (one connection at a time each)
#   PROXY_CORES=1      HAProxy nbthread, nginx worker_processes, rrproxy --workers
#   PIN=1              proxy on the last PROXY_CORES CPUs, backends and load
#                      on the others (taskset); PIN=0: no pinning
#   PROXIES            subset/order of: direct haproxy-sni haproxy-plain
#                      nginx-sni nginx-plain rrproxy-plain rrproxy-sni
#   RRPROXY_SNI_CONFIG a config file for rrproxy routing by SNI; {port},
#                      {b1}, {b2}, {b3} are replaced with the listening port
#                      and the three backends' ports, {workers} with
#                      PROXY_CORES. It must send a.bench.test to {b1},
#                      b.bench.test to {b2} and anything else to {b3}.
#                      [benches/sni-rrproxy.toml: three [[service]] tables]
#   RRPROXY=PATH       rrproxy binary                 [target/release/rrproxy]
#   OUT_DIR            where results go               [target/bench-results]

set -uo pipefail   # no -e: one failing cell must not abort the run

# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_args "$@"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then DURATION=${DURATION:-3}; ROUNDS=${ROUNDS:-1}
else DURATION=${DURATION:-10}; ROUNDS=${ROUNDS:-3}; fi
CLIENTS=${CLIENTS:-4}
PROXY_CORES=${PROXY_CORES:-1}
PIN=${PIN:-1}
PROXIES=${PROXIES:-direct haproxy-sni haproxy-plain nginx-sni nginx-plain rrproxy-plain rrproxy-sni}
RRPROXY_SNI_CONFIG=${RRPROXY_SNI_CONFIG:-$(dirname "${BASH_SOURCE[0]}")/sni-rrproxy.toml}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}
NGINX_STREAM_MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
TLSLOAD=("$PY" -S "$HERE/tlsload.py")

NCPU=$(nproc)
PIN_PROXY=() PIN_REST=()
if [ "$PIN" = 1 ] && [ "$NCPU" -gt "$PROXY_CORES" ] && command -v taskset >/dev/null; then
    PIN_PROXY=(taskset -c "$((NCPU - PROXY_CORES))-$((NCPU - 1))")
    PIN_REST=(taskset -c "0-$((NCPU - PROXY_CORES - 1))")
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/rrproxy-sni.XXXXXX")
mkdir -p "$T/logs" "$OUT_DIR"
STARTED=()
cleanup() {
    local p
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do stop_bg "$p"; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

command -v nginx >/dev/null || { echo "sni.sh: nginx is required (the backends)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "sni.sh: openssl is required (the certificate)" >&2; exit 1; }
"$PY" -c 'import ssl' || { echo "sni.sh: python3 with ssl is required (the load)" >&2; exit 1; }

read -r -a PORTS <<< "$("${BENCHLIB[@]}" freeports 10)"
B1=${PORTS[0]} B2=${PORTS[1]} B3=${PORTS[2]}
declare -A PPORT=([haproxy-sni]=${PORTS[3]} [haproxy-plain]=${PORTS[4]} [nginx-sni]=${PORTS[5]}
                  [nginx-plain]=${PORTS[6]} [rrproxy-plain]=${PORTS[7]} [rrproxy-sni]=${PORTS[8]} [direct]=$B1)

# ------------------------------------------------------------ backends
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=bench.test -addext "subjectAltName=DNS:bench.test,DNS:*.bench.test" \
    -keyout "$T/key.pem" -out "$T/cert.pem" 2>"$T/logs/openssl.log" \
    || { echo "sni.sh: openssl req failed: $(cat "$T/logs/openssl.log")" >&2; exit 1; }
for i in 1 2 3; do
    port=${PORTS[$((i - 1))]} dir=$T/b$i
    mkdir -p "$dir"
    cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $T/logs/b$i.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $T/cert.pem;
        ssl_certificate_key $T/key.pem;
        location / { return 200 "b$i\n"; }
    }
}
EOF
    start_bg "b$i" "${PIN_REST[@]}" nginx -e "$T/logs/b$i.log" -p "$dir" -c "$dir/nginx.conf"
    wait_port "$port" 10 "$BG_PID" || { echo "sni.sh: backend b$i did not start: $(cat "$T/logs/b$i.log")" >&2; exit 1; }
done

# ------------------------------------------------------------ proxies
# write_proxy NAME PORT: the proxy's configuration (or command line) in $T/NAME/.
write_proxy() {
    local name=$1 port=$2 dir=$T/$1
    mkdir -p "$dir"
    case "$name" in
        haproxy-*)
            {
                echo "global"
                echo "    nbthread $PROXY_CORES"
                echo "    maxconn 4096"
                echo "defaults"
                echo "    mode tcp"
                echo "    timeout connect 5s"
                echo "    timeout client 30s"
                echo "    timeout server 30s"
                echo "frontend fe"
                echo "    bind 127.0.0.1:$port"
                if [ "$name" = haproxy-sni ]; then
                    # HAProxy's documented SNI passthrough: wait (up to 5 s)
                    # for a whole ClientHello, then route on its name.
                    echo "    tcp-request inspect-delay 5s"
                    echo "    tcp-request content accept if { req.ssl_hello_type 1 }"
                    echo "    use_backend b1 if { req.ssl_sni -i a.bench.test }"
                    echo "    use_backend b2 if { req.ssl_sni -i b.bench.test }"
                    echo "    default_backend b3"
                    for i in 1 2 3; do
                        echo "backend b$i"
                        echo "    server s$i 127.0.0.1:${PORTS[$((i - 1))]}"
                    done
                else
                    echo "    default_backend all"
                    echo "backend all"
                    echo "    balance roundrobin"
                    for i in 1 2 3; do echo "    server s$i 127.0.0.1:${PORTS[$((i - 1))]}"; done
                fi
            } > "$dir/haproxy.cfg" ;;
        nginx-*)
            {
                echo "load_module $NGINX_STREAM_MODULE;"
                echo "daemon off;"
                echo "master_process on;"
                echo "worker_processes $PROXY_CORES;"
                echo "pid $dir/nginx.pid;"
                echo "error_log $T/logs/$name.log warn;"
                echo "events { worker_connections 8192; }"
                echo "stream {"
                if [ "$name" = nginx-sni ]; then
                    echo "    map \$ssl_preread_server_name \$backend {"
                    echo "        a.bench.test 127.0.0.1:$B1;"
                    echo "        b.bench.test 127.0.0.1:$B2;"
                    echo "        default 127.0.0.1:$B3;"
                    echo "    }"
                    echo "    server { listen 127.0.0.1:$port reuseport; ssl_preread on; proxy_pass \$backend; }"
                else
                    echo "    upstream all { server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3; }"
                    echo "    server { listen 127.0.0.1:$port reuseport; proxy_pass all; }"
                fi
                echo "}"
            } > "$dir/nginx.conf" ;;
        rrproxy-plain)
            echo "$RRPROXY -q --listen 127.0.0.1:$port --backend 127.0.0.1:$B1 --backend 127.0.0.1:$B2 --backend 127.0.0.1:$B3 --workers $PROXY_CORES --policy round-robin --metrics off --control off" > "$dir/cmdline" ;;
        rrproxy-sni)
            sed -e "s/{port}/$port/g" -e "s/{b1}/$B1/g" -e "s/{b2}/$B2/g" -e "s/{b3}/$B3/g" \
                -e "s/{workers}/$PROXY_CORES/g" "$RRPROXY_SNI_CONFIG" > "$dir/rrproxy.toml"
            echo "$RRPROXY -q --config $dir/rrproxy.toml --metrics off --control off" > "$dir/cmdline" ;;
    esac
}

# start_proxy NAME: sets PROXY_PID (empty for direct). Non-zero if it did not come up.
start_proxy() {
    local name=$1 port=${PPORT[$1]} dir=$T/$1
    PROXY_PID=
    [ "$name" = direct ] && return 0
    write_proxy "$name" "$port"
    case "$name" in
        haproxy-*) start_bg "$name" "${PIN_PROXY[@]}" haproxy -db -f "$dir/haproxy.cfg" ;;
        nginx-*) start_bg "$name" "${PIN_PROXY[@]}" nginx -e "$T/logs/$name.log" -p "$dir" -c "$dir/nginx.conf" ;;
        # shellcheck disable=SC2046
        rrproxy-*) start_bg "$name" "${PIN_PROXY[@]}" $(cat "$dir/cmdline") ;;
    esac
    PROXY_PID=$BG_PID
    if ! wait_port "$port" 10 "$PROXY_PID"; then
        stop_bg "$PROXY_PID"; PROXY_PID=
        return 1
    fi
    sleep 0.3   # multi-process proxies: let the workers finish starting
}

# ------------------------------------------------------------ the run
want=()
skip() { echo "skipped: $*" >> "$T/skipped"; }
for p in $PROXIES; do
    case "$p" in
        direct) want+=("$p") ;;
        haproxy-*) if command -v haproxy >/dev/null; then want+=("$p"); else skip "$p: haproxy not installed"; fi ;;
        nginx-*) if [ -f "$NGINX_STREAM_MODULE" ]; then want+=("$p"); else skip "$p: $NGINX_STREAM_MODULE missing"; fi ;;
        rrproxy-plain) if [ -x "$RRPROXY" ]; then want+=("$p"); else skip "$p: $RRPROXY not built (cargo build --release)"; fi ;;
        rrproxy-sni)
            if [ -z "$RRPROXY_SNI_CONFIG" ]; then skip "$p: set RRPROXY_SNI_CONFIG (see --help)"
            elif [ ! -x "$RRPROXY" ]; then skip "$p: $RRPROXY not built"
            else want+=("$p"); fi ;;
        *) echo "sni.sh: unknown proxy $p" >&2; exit 2 ;;
    esac
done

STAMP=$(date +%Y%m%d-%H%M%S)
CSV=$OUT_DIR/sni-$STAMP.csv
: > "$CSV"
log "backends b1 b2 b3 on $B1 $B2 $B3; rows: ${want[*]}; $ROUNDS round(s) of ${DURATION}s, $CLIENTS clients"
for round in $(seq "$ROUNDS"); do
    for p in "${want[@]}"; do
        if ! start_proxy "$p"; then
            log "$p did not start: $(tail -3 "$T/logs/$p.log" 2>/dev/null)"
            continue
        fi
        case "$p" in
            *-plain) routes=(a.bench.test='*' b.bench.test='*' c.bench.test='*') ;;
            direct) routes=(a.bench.test=b1 b.bench.test=b1 c.bench.test=b1) ;;
            *) routes=(a.bench.test=b1 b.bench.test=b2 c.bench.test=b3) ;;
        esac
        # One unmeasured second of the same load first (handshake caches,
        # worker start-up).
        "${PIN_REST[@]}" "${TLSLOAD[@]}" run "${PPORT[$p]}" 1 "$CLIENTS" "${routes[@]}" > /dev/null
        cpu0=0; [ -n "$PROXY_PID" ] && cpu0=$("${BENCHLIB[@]}" tree-cpu "$PROXY_PID")
        out=$("${PIN_REST[@]}" "${TLSLOAD[@]}" run "${PPORT[$p]}" "$DURATION" "$CLIENTS" "${routes[@]}")
        cpu1=0; [ -n "$PROXY_PID" ] && cpu1=$("${BENCHLIB[@]}" tree-cpu "$PROXY_PID")
        stop_bg "$PROXY_PID"
        line=$("$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); print("%s,%s,%d,%d,%d,%s,%.2f" % (sys.argv[2], sys.argv[3], r["ok"], r["failed"], r["misrouted"], r["seconds"], float(sys.argv[5]) - float(sys.argv[4])))' "$out" "$p" "$round" "$cpu0" "$cpu1")
        echo "$line" >> "$CSV"
        log "round $round $p: $out"
    done
done

{
    echo "# benches/sni.sh $STAMP: $(nproc) CPUs, PROXY_CORES=$PROXY_CORES, pinned: ${PIN_PROXY[*]:-no}, $CLIENTS clients, ${DURATION}s x $ROUNDS"
    [ -f "$T/skipped" ] && cat "$T/skipped"
    "${TLSLOAD[@]}" report "$CSV"
    echo
    command -v haproxy >/dev/null && echo "haproxy: $(haproxy -v | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    [ -x "$RRPROXY" ] && echo "rrproxy: $("$RRPROXY" --version 2>&1 | head -1)"
    for p in "${want[@]}"; do
        for f in "$T/$p"/haproxy.cfg "$T/$p"/nginx.conf "$T/$p"/cmdline "$T/$p"/rrproxy.toml; do
            [ -f "$f" ] && { echo "--- $p: $(basename "$f")"; cat "$f"; }
        done
    done
} | tee "$OUT_DIR/sni-$STAMP.txt"
