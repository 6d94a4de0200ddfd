#!/usr/bin/env bash
# benches/status_cost.sh - what looking costs: rrproxy with 4 workers and
# 1,000 backends (health checks off, no traffic: only the looking costs
# anything), then
#   1. time and size of /metrics, /status.json (every row), /status.json
#      one page (100 rows, what the page's script fetches) and /status (the
#      HTML page), each the median of REQUESTS sequential curl requests;
#   2. the front's CPU over SECONDS with nobody looking, then over SECONDS
#      with the page open in headless Chromium (its script fetching
#      /status.json once a second, in real time), from /proc/PID/stat.
# What the figures mean: benches/README.md, "Status page cost".
#
# Usage: benches/status_cost.sh [--rrproxy PATH] [-h]
# Environment (defaults in brackets):
#   REQUESTS=21        requests per route                     [21]
#   SECONDS_OPEN=30    seconds of each CPU window             [30]
#   BACKENDS=1000      backends                               [1000]
#   RRPROXY=PATH       rrproxy binary                 [target/release/rrproxy]

set -uo pipefail

# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_args "$@"

REQUESTS=${REQUESTS:-21}
SECONDS_OPEN=${SECONDS_OPEN:-30}
BACKENDS=${BACKENDS:-1000}
STARTED=()
T=$(mktemp -d /tmp/rrproxy-status-cost.XXXXXX)
mkdir -p "$T/logs"
trap 'for p in "${STARTED[@]}"; do stop_bg "$p"; done; rm -rf "$T"' EXIT

for tool in curl chromium; do
    command -v "$tool" >/dev/null || { echo "status_cost.sh: needs $tool" >&2; exit 1; }
done
[ -x "$RRPROXY" ] || { echo "status_cost.sh: no binary at $RRPROXY (cargo build --release)" >&2; exit 1; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
LISTEN=$(free_port)
METRICS=$(free_port)
{
    echo "listen = \"127.0.0.1:$LISTEN\""
    echo "metrics = \"127.0.0.1:$METRICS\""
    echo "control = \"$T/ctl.sock\""
    echo "workers = 4"
    echo "health-interval = \"off\""
    printf 'backends = ['
    for i in $(seq 0 $((BACKENDS - 1))); do
        printf '"127.0.%d.%d:9",' $((i / 250 + 1)) $((i % 250 + 1))
    done
    echo ']'
} >"$T/rrproxy.toml"

start_bg rrproxy "$RRPROXY" --config "$T/rrproxy.toml"
FRONT=$BG_PID
wait_port "$METRICS" 20 "$FRONT" || { cat "$T/logs/rrproxy.log" >&2; exit 1; }
for i in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS/readyz")" = 200 ] && break
    sleep 0.05
done
log "rrproxy $("$RRPROXY" --version) pid $FRONT: 4 workers, $BACKENDS backends"

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "| route | size (bytes) | time, median of $REQUESTS (ms) |"
echo "|---|---|---|"
for route in /metrics /status.json '/status.json?per_page=100' /status; do
    : >"$T/times"
    size=0
    for i in $(seq "$REQUESTS"); do
        read -r t s < <(curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://127.0.0.1:$METRICS$route")
        echo "$t" >>"$T/times"
        size=$s
    done
    ms=$(median <"$T/times" | awk '{ printf "%.1f", $1 * 1000 }')
    echo "| \`$route\` | $size | $ms |"
done

ticks() { awk '{ print $14 + $15 }' "/proc/$FRONT/stat"; }
HZ=$(getconf CLK_TCK)
cpu_window() {
    local a b
    a=$(ticks)
    sleep "$SECONDS_OPEN"
    b=$(ticks)
    awk -v d=$((b - a)) -v hz="$HZ" -v s="$SECONDS_OPEN" 'BEGIN { printf "%.2f%% of a core (%.2f CPU-s in %d s)", 100 * d / hz / s, d / hz, s }'
}
echo
echo "front CPU, nobody looking: $(cpu_window)"
PROFILE="$T/profile"
start_bg chromium chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --disable-extensions --disable-background-networking \
    --user-data-dir="$PROFILE" --remote-debugging-port=0 "http://127.0.0.1:$METRICS/status"
CHROME=$BG_PID
sleep 3
echo "front CPU, the page open in Chromium: $(cpu_window)"
kill -0 "$CHROME" 2>/dev/null || { echo "chromium exited early" >&2; cat "$T/logs/chromium.log" >&2; exit 1; }
stop_bg "$CHROME"
