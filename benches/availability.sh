#!/usr/bin/env bash
# benches/availability.sh - availability of rrproxy (and HAProxy, where the
# same fault applies) under load while workers are killed, the workers are
# rolled, or a backend flaps. How to read the table: benches/README.md,
# section "Availability run".
#
# Usage: benches/availability.sh [--rrproxy PATH] [-h]
# Environment (defaults in brackets):
#   DURATION=20     seconds of load per cell                     [20, QUICK: 6]
#   QUICK=1         short smoke run (~1.5 min)
#   SCENARIOS       subset/order of: baseline kill kill-2w roll roll-b2b upgrade flap
#   PROXIES         subset/order of: rrproxy haproxy
#   CONCURRENCY=50  requests in flight (one new connection per request)
#   KEEPALIVE=1     persistent HTTP/1.1 connections instead   [0]
#   TIMEOUT=5       seconds a request may take before it counts as failed
#   LOADGEN=ab      load with ApacheBench (ab -r) instead of availlib.py
#   WORKERS=2       rrproxy workers (HAProxy: nbthread)
#   KILL_WORKERS=8  rrproxy workers in the `kill` scenario     [8]
#   KILL_EVERY=1    seconds between kills in `kill`            [1]
#   KILL2_EVERY=4   seconds between kills in `kill-2w`         [4]
#   ROLL_EVERY=2    seconds between reload starts in `roll`     [2]
#   UPGRADE_EVERY=2 seconds between upgrade starts in `upgrade` [2]
#   FLAP_DOWN=2 FLAP_UP=2  seconds backend 2 is down / up in `flap`
#   FLAP_SIGNAL=QUIT  how backend 2 is stopped: QUIT (graceful) or KILL
#   BACKEND_KA_REQUESTS=1000000  nginx keepalive_requests on the backends
#   RRPROXY=PATH    rrproxy binary                 [target/release/rrproxy]
#   OUT_DIR         where results go               [target/bench-results]

set -uo pipefail   # no -e: one failing cell must not abort the run

# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LIB=("$PY" -S "$HERE/availlib.py")
bench_args "$@"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then DURATION=${DURATION:-6}; else DURATION=${DURATION:-20}; fi
SCENARIOS=${SCENARIOS:-baseline kill kill-2w roll roll-b2b upgrade flap}
PROXIES=${PROXIES:-rrproxy haproxy}
CONCURRENCY=${CONCURRENCY:-50}
KEEPALIVE=${KEEPALIVE:-0}
TIMEOUT=${TIMEOUT:-5}
LOADGEN=${LOADGEN:-availlib}
WORKERS=${WORKERS:-2}
KILL_WORKERS=${KILL_WORKERS:-8}
KILL_EVERY=${KILL_EVERY:-1}
KILL2_EVERY=${KILL2_EVERY:-4}
ROLL_EVERY=${ROLL_EVERY:-2}
UPGRADE_EVERY=${UPGRADE_EVERY:-2}
FLAP_DOWN=${FLAP_DOWN:-2}
FLAP_UP=${FLAP_UP:-2}
FLAP_SIGNAL=${FLAP_SIGNAL:-QUIT}
# With KEEPALIVE=1, how many requests a backend serves on one connection
# before it closes it (Connection: close). High by default so that
# connections last the whole run: the hardest case for draining.
BACKEND_KA_REQUESTS=${BACKEND_KA_REQUESTS:-1000000}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}
# rrproxy parks a slot after 5 crashes in 30 s (src/supervisor/respawn.rs).
CRASH_LIMIT=5
CRASH_WINDOW=30

# ------------------------------------------------------------ bookkeeping

T=$(mktemp -d /tmp/rravail.XXXXXX)
STARTED=()          # pids (= process group ids) of everything we started
TS=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR" "$T/logs"
BASE=$OUT_DIR/availability-$TS
ROWS=$T/rows.jsonl
: > "$ROWS"
RUN_START=$(date +%s)

# Shared helpers: log, kill_tree, stop_bg, start_bg, wait_port.
now() { date +%s.%N; }
have() { command -v "$1" >/dev/null 2>&1; }

# Backend 2 is restarted by the flap loop, in a subshell: its current pid
# lives in a file, not in STARTED.
B2_PIDFILE=$T/b2.pid

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    [ -n "${INJECTOR:-}" ] && kill_tree "$INJECTOR" KILL
    [ -n "${LOADER:-}" ] && kill_tree "$LOADER" KILL
    [ -f "$B2_PIDFILE" ] && STARTED+=("$(cat "$B2_PIDFILE")")
    for p in "${STARTED[@]}"; do kill_tree "$p" TERM; done
    sleep 0.3
    for p in "${STARTED[@]}"; do kill_tree "$p" KILL; wait "$p" 2>/dev/null; done
    if [ -d "$T/logs" ]; then
        mkdir -p "$BASE-logs" && cp -r "$T/logs/." "$BASE-logs/" 2>/dev/null
    fi
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------ prerequisites

case "$LOADGEN" in
    availlib) ;;
    ab) have ab || { echo "availability.sh: LOADGEN=ab but ab is not installed" >&2; exit 1; } ;;
    *) echo "availability.sh: LOADGEN is availlib or ab" >&2; exit 2 ;;
esac
for tool in nginx curl setsid; do
    have "$tool" || { echo "availability.sh: $tool is required" >&2; exit 1; }
done
want_proxies=()
for p in $PROXIES; do
    case "$p" in
        rrproxy)
            if [ -x "$RRPROXY" ]; then want_proxies+=("$p")
            else log "SKIP rrproxy: no binary at $RRPROXY (cargo build --release, or set RRPROXY)"; fi ;;
        haproxy)
            if have haproxy; then want_proxies+=("$p"); else log "SKIP haproxy: not installed"; fi ;;
        *) echo "availability.sh: unknown proxy '$p'" >&2; exit 2 ;;
    esac
done
for s in $SCENARIOS; do
    case "$s" in
        baseline|kill|kill-2w|roll|roll-b2b|upgrade|flap) ;;
        *) echo "availability.sh: unknown scenario '$s'" >&2; exit 2 ;;
    esac
done
[ ${#want_proxies[@]} -gt 0 ] || { echo "availability.sh: no proxy to run" >&2; exit 1; }

# A slot killed every KILL_WORKERS * KILL_EVERY seconds must stay under the
# crash limit, or rrproxy parks it (by design) and the scenario measures that.
for pair in "kill $KILL_WORKERS $KILL_EVERY" "kill-2w $WORKERS $KILL2_EVERY"; do
    read -r scen w every <<< "$pair"
    case " $SCENARIOS " in *" $scen "*) ;; *) continue ;; esac
    per_slot=$("$PY" -S -c "print(float($w) * float($every))")
    in_window=$("$PY" -S -c "import math; print(int(min(math.floor($CRASH_WINDOW / $per_slot) + 1, math.ceil(($DURATION - 1) / $per_slot))))")
    if [ "$in_window" -ge "$CRASH_LIMIT" ]; then
        log "WARNING: $scen kills each of $w slots every ${per_slot}s: up to $in_window crashes in ${CRASH_WINDOW}s, rrproxy will park slots"
    fi
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null
PORTS=($("${BENCHLIB[@]}" freeports 5))
P_B1=${PORTS[0]}; P_B2=${PORTS[1]}; P_RR=${PORTS[2]}; P_RRM=${PORTS[3]}; P_HA=${PORTS[4]}
RR_CTL=$T/rrproxy.sock

# ------------------------------------------------------------ backends

# Two nginx instances, one per backend port, so that one can be stopped.
write_backend_conf() {  # write_backend_conf N PORT
    local d=$T/backend$1
    mkdir -p "$d"
    cat > "$d/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $d/nginx.pid;
error_log $T/logs/backend$1.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests $BACKEND_KA_REQUESTS;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
}

start_backend() {  # start_backend N PORT: sets BG_PID
    start_bg "backend$1" nginx -e "$T/logs/backend$1.log" -p "$T/backend$1" -c "$T/backend$1/nginx.conf"
    wait_port "$2" 10 "$BG_PID" || { log "backend $1 did not start: $(tail -3 "$T/logs/backend$1.log")"; return 1; }
}

# Backend 2 from the flap loop (a subshell): pid to the file.
start_b2() {
    setsid nginx -e "$T/logs/backend2.log" -p "$T/backend2" -c "$T/backend2/nginx.conf" \
        >>"$T/logs/backend2.log" 2>&1 < /dev/null &
    echo $! > "$B2_PIDFILE"
    wait_port "$P_B2" 10 "$!"
}

# Stop backend 2 with FLAP_SIGNAL; KILL it if it is not gone in 5 s.
stop_b2() {
    local pid i
    pid=$(cat "$B2_PIDFILE" 2>/dev/null) || return 0
    if [ "$FLAP_SIGNAL" = KILL ]; then
        kill -KILL -- "-$pid" 2>/dev/null   # a crash: master and worker at once
    else
        kill -s "$FLAP_SIGNAL" "$pid" 2>/dev/null   # the master stops its worker
    fi
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill_tree "$pid" KILL
    rm -f "$B2_PIDFILE"
}

ensure_b2() {
    if [ ! -f "$B2_PIDFILE" ] || ! kill -0 "$(cat "$B2_PIDFILE")" 2>/dev/null; then
        stop_b2
        start_b2 || log "backend 2 did not restart"
    fi
}

# ------------------------------------------------------------ proxies

# start_proxy NAME WORKERS: sets PROXY_PID (the front / HAProxy master).
start_proxy() {
    local name=$1 workers=$2
    PROXY_PID=
    case "$name" in
        rrproxy)
            rm -f "$RR_CTL"
            start_bg rrproxy "$RRPROXY" -q --listen "127.0.0.1:$P_RR" \
                --backend "127.0.0.1:$P_B1" --backend "127.0.0.1:$P_B2" \
                --workers "$workers" --policy round-robin \
                --metrics "127.0.0.1:$P_RRM" --control "$RR_CTL" \
                --health-interval 200ms --health-timeout 1s --rise 2 --fall 2 \
                --connect-timeout 5s --drain-timeout 5s
            PROXY_PID=$BG_PID; PROXY_PORT=$P_RR ;;
        haproxy)
            # Master-worker mode (-W) with a master CLI (-S): a reload
            # (SIGUSR2 to the master) hands the listening sockets over to
            # the new worker, the old one finishes its connections. In the
            # upgrade scenario the stats socket also has `expose-fd
            # listeners` (HAProxy's documented seamless reload; in
            # master-worker mode the master passes `-x sockpair@FD` to the
            # new worker by itself, management.txt, "-x"), so the new worker
            # takes the old one's listening sockets instead of binding new
            # ones.
            local HA_EXPOSE=
            [ "${SCEN:-}" = upgrade ] && HA_EXPOSE=" expose-fd listeners"
            cat > "$T/haproxy.cfg" <<EOF
global
    nbthread $workers
    maxconn 4000
    stats socket $T/haproxy-stats.sock mode 600 level admin$HA_EXPOSE
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    # One more attempt, on another server, when a connect fails:
    # like rrproxy, which tries every other backend once.
    retries 1
    option redispatch 1
frontend fe
    bind 127.0.0.1:$P_HA
    default_backend be
backend be
    balance roundrobin
    # Like rrproxy's --health-interval 200ms --rise 2 --fall 2, where
    # failed real connects also count towards --fall.
    default-server check inter 200 rise 2 fall 2 observe layer4 error-limit 2 on-error mark-down
    server s1 127.0.0.1:$P_B1
    server s2 127.0.0.1:$P_B2
EOF
            start_bg haproxy haproxy -W -db -S "$T/haproxy-master.sock" -f "$T/haproxy.cfg"
            PROXY_PID=$BG_PID; PROXY_PORT=$P_HA ;;
    esac
    if ! wait_port "$PROXY_PORT" 10 "$PROXY_PID"; then
        stop_bg "$PROXY_PID"; PROXY_PID=
        return 1
    fi
    # Let every worker finish starting.
    if [ "$name" = rrproxy ]; then
        local i up
        for i in $(seq 50); do
            up=$(rr_ctl --json status 2>/dev/null | "$PY" -S -c 'import json,sys; print(json.load(sys.stdin).get("workers_up", 0))' 2>/dev/null)
            [ "${up:-0}" = "$workers" ] && break
            sleep 0.1
        done
    else
        sleep 0.3
    fi
    return 0
}

rr_ctl() { timeout -k 2 30 "$RRPROXY" ctl --control "$RR_CTL" "$@"; }

# The front's pid now: an upgrade replaces the front process (same process
# group, so kill_tree still reaches it).
rr_front_pid() {
    rr_ctl --json status 2>/dev/null | "$PY" -S -c 'import json,sys; print(json.load(sys.stdin).get("pid", ""))' 2>/dev/null
}

# ------------------------------------------------------------ fault injectors
# Each runs in the background while the load runs, from about 1 s after the
# load starts until about DURATION - 1 s, and writes one line per event to
# $EVENTS: "EPOCH KIND key=value...". KIND kill/reload/backend_down/
# backend_up are the faults failures get attributed to.

ev() { echo "$(now) $*" >> "$EVENTS"; }
# ev_at EPOCH KIND...: an event that began at EPOCH (taken just before the
# action, so that no failure it causes can precede it).
ev_at() { local t=$1; shift; echo "$t $*" >> "$EVENTS"; }

inject_kill() {  # inject_kill WORKERS EVERY
    local workers=$1 every=$2 end i=0 next slot pid t0
    end=$("$PY" -S -c "print($(now) + $DURATION - 2)")
    sleep 1
    next=$(now)
    while "$PY" -S -c "import sys; sys.exit(0 if $(now) < $end else 1)"; do
        read -r slot pid <<< "$(rr_ctl --json workers 2>/dev/null | "${LIB[@]}" slotpid $((i % workers)) 2>/dev/null)"
        if [ -n "$pid" ] && [ "$pid" != 0 ]; then
            t0=$(now)
            kill -KILL "$pid" 2>/dev/null && ev_at "$t0" kill "slot=$slot" "pid=$pid"
        else
            ev note "no-serving-worker"
        fi
        i=$((i + 1))
        next=$("$PY" -S -c "print($next + $every)")
        sleep "$("$PY" -S -c "print(max(0, $next - $(now)))")"
    done
}

inject_roll_rr() {  # inject_roll_rr EVERY (0 = back to back)
    local every=$1 end t0 rc out
    end=$("$PY" -S -c "print($(now) + $DURATION - 2)")
    sleep 1
    while "$PY" -S -c "import sys; sys.exit(0 if $(now) < $end else 1)"; do
        t0=$(now)
        ev_at "$t0" reload
        out=$(rr_ctl reload 2>&1); rc=$?
        ev reload_done "rc=$rc" "secs=$("$PY" -S -c "print(round($(now) - $t0, 3))")" "msg=$(echo "$out" | head -1 | tr ' ' '_')"
        [ "$every" != 0 ] && sleep "$("$PY" -S -c "print(max(0, $t0 + $every - $(now)))")"
    done
}

# An upgrade every EVERY seconds: `ctl upgrade` returns once the new front
# serves; the workers are then replaced (old ones draining together), and the upgrade counts
# as done (upgrade_done) when `ctl status` no longer shows that roll.
inject_upgrade_rr() {  # inject_upgrade_rr EVERY
    local every=$1 end t0 rc out st i
    end=$("$PY" -S -c "print($(now) + $DURATION - 2)")
    sleep 1
    while "$PY" -S -c "import sys; sys.exit(0 if $(now) < $end else 1)"; do
        t0=$(now)
        ev_at "$t0" upgrade
        out=$(rr_ctl upgrade 2>&1); rc=$?
        ev upgrade_front "rc=$rc" "secs=$("$PY" -S -c "print(round($(now) - $t0, 3))")" "msg=$(echo "$out" | head -1 | tr ' ' '_' | cut -c1-120)"
        for i in $(seq 200); do
            st=$(rr_ctl --json status 2>/dev/null | "$PY" -S -c 'import json,sys; d=json.load(sys.stdin); print(int(bool(d.get("rolling_restart") or d.get("upgrading"))))' 2>/dev/null)
            [ "$st" = 0 ] && break
            sleep 0.05
        done
        ev upgrade_done "rc=$rc" "secs=$("$PY" -S -c "print(round($(now) - $t0, 3))")"
        sleep "$("$PY" -S -c "print(max(0, $t0 + $every - $(now)))")"
    done
}

inject_roll_ha() {  # inject_roll_ha EVERY
    local every=$1 end t0
    end=$("$PY" -S -c "print($(now) + $DURATION - 2)")
    sleep 1
    while "$PY" -S -c "import sys; sys.exit(0 if $(now) < $end else 1)"; do
        t0=$(now)
        kill -USR2 "$PROXY_PID" && ev_at "$t0" reload "master=$PROXY_PID"
        sleep "$("$PY" -S -c "print(max(0, $t0 + $every - $(now)))")"
    done
}

inject_flap() {
    local end t0
    end=$("$PY" -S -c "print($(now) + $DURATION - 2 - $FLAP_DOWN)")
    sleep 1
    while "$PY" -S -c "import sys; sys.exit(0 if $(now) < $end else 1)"; do
        ev backend_down "signal=$FLAP_SIGNAL" "pid=$(cat "$B2_PIDFILE" 2>/dev/null)"
        stop_b2
        ev backend_stopped
        sleep "$FLAP_DOWN"
        t0=$(now)
        start_b2 || ev note "backend-2-did-not-restart"
        ev_at "$t0" backend_up "pid=$(cat "$B2_PIDFILE" 2>/dev/null)"
        sleep "$FLAP_UP"
    done
}

# ------------------------------------------------------------ one cell

describe() {  # describe SCENARIO PROXY
    case "$1" in
        baseline) echo "no faults" ;;
        kill) echo "kill -9 the serving worker of one slot every ${KILL_EVERY}s, slots in turn; rrproxy --workers $KILL_WORKERS (each slot killed every $("$PY" -S -c "print($KILL_WORKERS * $KILL_EVERY)")s, under the park limit of $CRASH_LIMIT crashes in ${CRASH_WINDOW}s)" ;;
        kill-2w) echo "kill -9 a worker every ${KILL2_EVERY}s, the 2 slots in turn (each every $("$PY" -S -c "print(2 * $KILL2_EVERY)")s); rrproxy --workers $WORKERS" ;;
        roll) echo "a rolling restart every ${ROLL_EVERY}s: rrproxy \`ctl reload\` (since the upgrade work an alias of \`ctl upgrade\`: it returns once a new front serves, the workers are then replaced), HAProxy SIGUSR2 to the master (-W, seamless reload)" ;;
        roll-b2b) echo "rrproxy \`ctl reload\` back to back for the whole run" ;;
        upgrade) echo "an upgrade every ${UPGRADE_EVERY}s: rrproxy \`ctl upgrade\` (a new front process takes the listeners and state, then the workers are replaced, the old ones draining together; done when \`ctl status\` shows no roll), HAProxy SIGUSR2 to the master (-W, which passes the listening sockets to the new worker with -x sockpair@), stats socket with \`expose-fd listeners\`" ;;
        flap) echo "backend 2 stopped (nginx SIG$FLAP_SIGNAL) for ${FLAP_DOWN}s, started, up for ${FLAP_UP}s, repeated; health checks every 200ms, rise 2, fall 2" ;;
    esac
}

na_row() {  # na_row SCENARIO PROXY WHY: a cell that does not apply
    "$PY" -S -c 'import json, sys; print(json.dumps({"scenario": sys.argv[1], "proxy": sys.argv[2], "na": sys.argv[3], "notes": []}))' "$@" >> "$ROWS"
}

run_cell() {  # run_cell SCENARIO PROXY
    local s=$1 p=$2 workers=$WORKERS tag=$1-$2 notes=()
    local loadout=$T/logs/load-$tag.json
    case "$s/$p" in
        kill/haproxy|kill-2w/haproxy)
            na_row "$s" "$p" "HAProxy runs one worker process (threads inside it); kill -9 of it takes the whole proxy down (the 2.6 master logs 'exit-on-failure: killing every processes' and exits; it never respawns a worker)"
            return ;;
        roll-b2b/haproxy)
            na_row "$s" "$p" "an HAProxy reload returns before the new worker serves: there is no back-to-back"
            return ;;
    esac
    [ "$s" = kill ] && workers=$KILL_WORKERS
    SCEN=$s
    EVENTS=$T/logs/events-$tag.txt
    : > "$EVENTS"
    ensure_b2
    local lf=$T/logs/$p.log lines_before=0
    [ -f "$lf" ] && lines_before=$(wc -l < "$lf")
    if ! start_proxy "$p" "$workers"; then
        log "$tag: proxy did not start: $(tail -3 "$lf" 2>/dev/null | tr '\n' ' ')"
        echo "{\"scenario\":\"$s\",\"proxy\":\"$p\",\"notes\":[\"proxy did not start\"]}" >> "$ROWS"
        return
    fi
    if [ "$(curl -s --max-time 5 "http://127.0.0.1:$PROXY_PORT/")" != ok ]; then
        notes+=(--note "sanity request through the proxy failed before the run")
    fi
    log "$tag: ${DURATION}s of load, $(describe "$s" "$p" | cut -c1-100)"
    local ka=()
    [ "$KEEPALIVE" = 1 ] && ka=(--keepalive)
    local gen=(load)
    [ "$LOADGEN" = ab ] && gen=(ab --raw "$T/logs/ab-$tag.txt")
    setsid timeout -k 5 $((DURATION + TIMEOUT + 20)) "${LIB[@]}" "${gen[@]}" --port "$PROXY_PORT" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --timeout "$TIMEOUT" "${ka[@]}" \
        --start-file "$T/load-started" > "$loadout" 2> "$T/logs/load-$tag.err" < /dev/null &
    LOADER=$!
    local i
    for i in $(seq 40); do [ -s "$T/load-started" ] && break; sleep 0.05; done
    rm -f "$T/load-started"
    INJECTOR=
    case "$s/$p" in
        kill/rrproxy) ( inject_kill "$KILL_WORKERS" "$KILL_EVERY" ) & INJECTOR=$! ;;
        kill-2w/rrproxy) ( inject_kill "$WORKERS" "$KILL2_EVERY" ) & INJECTOR=$! ;;
        roll/rrproxy) ( inject_roll_rr "$ROLL_EVERY" ) & INJECTOR=$! ;;
        roll-b2b/rrproxy) ( inject_roll_rr 0 ) & INJECTOR=$! ;;
        roll/haproxy) ( inject_roll_ha "$ROLL_EVERY" ) & INJECTOR=$! ;;
        upgrade/rrproxy) ( inject_upgrade_rr "$UPGRADE_EVERY" ) & INJECTOR=$! ;;
        upgrade/haproxy) ( inject_roll_ha "$UPGRADE_EVERY" ) & INJECTOR=$! ;;
        flap/*) ( inject_flap ) & INJECTOR=$! ;;
    esac
    wait "$LOADER"
    local rc=$?
    LOADER=
    [ $rc -ne 0 ] && notes+=(--note "load client exited $rc: $(tail -2 "$T/logs/load-$tag.err" | tr '\n' ' ')")
    if [ -n "$INJECTOR" ]; then
        # The injector stops by itself before the load ends; bound it anyway.
        for i in $(seq 300); do kill -0 "$INJECTOR" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$INJECTOR" 2>/dev/null && { kill_tree "$INJECTOR" KILL; notes+=(--note "fault injector had to be stopped"); }
        wait "$INJECTOR" 2>/dev/null
        INJECTOR=
    fi
    local counters=()
    if [ "$p" = rrproxy ]; then
        curl -s --max-time 5 "http://127.0.0.1:$P_RRM/metrics" > "$T/logs/metrics-$tag.prom"
        rr_ctl --json workers > "$T/logs/workers-$tag.json" 2>&1
        counters=(--prom "$T/logs/metrics-$tag.prom")
        if grep -q '"parked"' "$T/logs/workers-$tag.json"; then
            notes+=(--note "a worker slot was parked at the end: $(tr -d '\n' < "$T/logs/workers-$tag.json" | cut -c1-300)")
        fi
    elif [ "$s" != roll ] && [ "$s" != upgrade ] && have socat; then
        # After reloads the stats socket is the last worker's: counters
        # would cover only the end of the run, so roll has none.
        echo "show stat" | timeout 5 socat - "UNIX-CONNECT:$T/haproxy-stats.sock" > "$T/logs/hastat-$tag.csv" 2>&1
        counters=(--hastat "$T/logs/hastat-$tag.csv")
    fi
    if { [ "$s" = roll ] || [ "$s" = upgrade ]; } && [ "$p" = haproxy ]; then
        local loaded
        loaded=$(tail -n +$((lines_before + 1)) "$lf" | grep -c 'Loading success')
        notes+=(--note "HAProxy logged $((loaded - 1)) successful reloads")
    fi
    if [ "$p" = rrproxy ] && grep -q '^[0-9.]* reload_done' "$EVENTS"; then
        local r
        r=$("$PY" -S -c "
import sys
ok = bad = 0; secs = []
for line in open(sys.argv[1]):
    t = line.split()
    if len(t) > 1 and t[1] == 'reload_done':
        kv = dict(x.split('=', 1) for x in t[2:] if '=' in x)
        if kv.get('rc') == '0': ok += 1
        else: bad += 1
        secs.append(float(kv.get('secs', 0)))
print('%d rolling restarts completed, %d failed; each took %.0f-%.0f ms' % (ok, bad, 1000 * min(secs), 1000 * max(secs)))
" "$EVENTS")
        notes+=(--note "$r")
    fi
    if [ "$p" = rrproxy ] && grep -q '^[0-9.]* upgrade_done' "$EVENTS"; then
        local r
        r=$("$PY" -S -c "
import sys
ok = bad = 0; front = []; done = []
for line in open(sys.argv[1]):
    t = line.split()
    if len(t) < 2:
        continue
    kv = dict(x.split('=', 1) for x in t[2:] if '=' in x)
    if t[1] == 'upgrade_front':
        front.append(float(kv.get('secs', 0)))
        if kv.get('rc') == '0': ok += 1
        else: bad += 1
    elif t[1] == 'upgrade_done':
        done.append(float(kv.get('secs', 0)))
print('%d upgrades completed, %d refused or failed; the new front served after %.0f-%.0f ms, the whole upgrade (workers replaced) took %.0f-%.0f ms'
      % (ok, bad, 1000 * min(front), 1000 * max(front), 1000 * min(done), 1000 * max(done)))
" "$EVENTS")
        notes+=(--note "$r")
        local failed_msgs
        failed_msgs=$(grep '^[0-9.]* upgrade_front rc=[^0]' "$EVENTS" | head -2 | sed 's/.*msg=//' | tr '\n_' '; ')
        [ -n "$failed_msgs" ] && notes+=(--note "upgrade errors: $failed_msgs")
    fi
    # An upgrade replaces rrproxy's front: stop the one running now, so it
    # drains its workers its own way.
    local alive=$PROXY_PID
    if [ "$p" = rrproxy ]; then
        local cur; cur=$(rr_front_pid)
        if [ -n "$cur" ] && [ "$cur" != "$PROXY_PID" ]; then
            alive=$cur
            notes+=(--note "the front is now pid $cur (started as $PROXY_PID)")
        fi
    fi
    if ! kill -0 "$alive" 2>/dev/null; then
        notes+=(--note "proxy exited during the run: $(tail -3 "$lf" 2>/dev/null | tr '\n' ' ')")
    fi
    if [ "$alive" != "$PROXY_PID" ]; then
        kill -TERM "$alive" 2>/dev/null
        for i in $(seq 50); do kill -0 "$alive" 2>/dev/null || break; sleep 0.1; done
    fi
    stop_bg "$PROXY_PID"
    # Lines the proxy logged in this cell, for the logs directory.
    tail -n +$((lines_before + 1)) "$lf" > "$T/logs/$tag.proxy.log" 2>/dev/null
    "${LIB[@]}" cell --scenario "$s" --proxy "$p" --what "$(describe "$s" "$p")" \
        --load "$loadout" --events "$EVENTS" --proxy-log "$T/logs/$tag.proxy.log" \
        "${counters[@]}" "${notes[@]}" >> "$ROWS" 2> "$T/logs/cell-$tag.err" \
        || log "$tag: could not summarise: $(tail -2 "$T/logs/cell-$tag.err")"
    tail -1 "$ROWS" | "$PY" -S -c '
import json, sys
r = json.loads(sys.stdin.read())
if r.get("requests") is None:
    print("  -> no result: %s" % "; ".join(r.get("notes", [])))
else:
    print("  -> %d requests, %d failed (%s%%), %d faults" % (r["requests"], r["failures"], r["availability_pct"], r.get("faults", 0)))
' >&2
}

# ------------------------------------------------------------ main

n_cells=0
for s in $SCENARIOS; do
    for p in "${want_proxies[@]}"; do
        case "$s/$p" in kill/haproxy|kill-2w/haproxy|roll-b2b/haproxy) continue ;; esac
        n_cells=$((n_cells + 1))
    done
done
{
    echo "rrproxy availability run $TS"
    echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    [ -x "$RRPROXY" ] && echo "rrproxy: $RRPROXY ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'))"
    have haproxy && echo "haproxy: $(haproxy -v | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "settings: LOADGEN=$LOADGEN DURATION=$DURATION CONCURRENCY=$CONCURRENCY KEEPALIVE=$KEEPALIVE TIMEOUT=$TIMEOUT WORKERS=$WORKERS KILL_WORKERS=$KILL_WORKERS KILL_EVERY=$KILL_EVERY KILL2_EVERY=$KILL2_EVERY ROLL_EVERY=$ROLL_EVERY UPGRADE_EVERY=$UPGRADE_EVERY FLAP_DOWN=$FLAP_DOWN FLAP_UP=$FLAP_UP FLAP_SIGNAL=$FLAP_SIGNAL BACKEND_KA_REQUESTS=$BACKEND_KA_REQUESTS"
    echo "scenarios: $SCENARIOS; proxies: ${want_proxies[*]}"
    echo "estimated time: ~$(( (n_cells * (DURATION + 4) + 5) / 60 + 1 )) min"
} | tee "$BASE.meta.txt" >&2

write_backend_conf 1 "$P_B1"
write_backend_conf 2 "$P_B2"
start_backend 1 "$P_B1" || exit 1
start_b2 || { log "backend 2 did not start: $(tail -3 "$T/logs/backend2.log")"; exit 1; }

for s in $SCENARIOS; do
    for p in "${want_proxies[@]}"; do
        run_cell "$s" "$p"
    done
done

RUN_END=$(date +%s)
cp "$ROWS" "$BASE.jsonl"
{
    echo
    echo "== availability $TS: $([ "$KEEPALIVE" = 1 ] && echo "keep-alive" || echo "one new connection per request"), $CONCURRENCY in flight, ${DURATION}s per cell, load by $LOADGEN"
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time $((RUN_END - RUN_START)) s"
    echo
    "${LIB[@]}" table "$ROWS"
    echo
    echo "raw: $BASE.jsonl  logs: $BASE-logs/"
} | tee "$BASE.txt"
