# Helpers shared by compare.sh and availability.sh (sourced, not run).
# Expects: BENCHLIB (the benchlib.py command as an array), T (the run's
# temporary directory, with a logs/ folder) and STARTED (an array of the
# pids, which are process group ids, of everything started).

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Kill one started process: its process group, and every descendant we
# can still see (in case one moved to a group of its own).
kill_tree() {
    local pid=$1 sig=${2:-TERM} kids
    kids=$("${BENCHLIB[@]}" tree-pids "$pid" 2>/dev/null)
    kill -s "$sig" -- "-$pid" 2>/dev/null
    # shellcheck disable=SC2086
    [ -n "$kids" ] && kill -s "$sig" $kids 2>/dev/null
    return 0
}

# Stop one started process: TERM, then KILL after 5 s, then reap it.
stop_bg() {
    local pid=$1 i kids
    [ -z "$pid" ] && return 0
    kids=$("${BENCHLIB[@]}" tree-pids "$pid" 2>/dev/null)
    # TERM the leader only, so that a master process (nginx, rrproxy's
    # front) shuts its workers down its own way; KILL what is left later.
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill_tree "$pid" KILL
    # shellcheck disable=SC2086
    [ -n "$kids" ] && kill -KILL $kids 2>/dev/null
    wait "$pid" 2>/dev/null
    local keep=() p
    for p in "${STARTED[@]}"; do [ "$p" != "$pid" ] && keep+=("$p"); done
    STARTED=("${keep[@]}")
    return 0
}

# start_bg NAME CMD...: run CMD in its own process group, output to a log.
# Sets BG_PID.
start_bg() {
    local name=$1; shift
    setsid "$@" >>"$T/logs/$name.log" 2>&1 < /dev/null &
    BG_PID=$!
    STARTED+=("$BG_PID")
}

# wait_port PORT [SECONDS [PID]]: wait until something accepts on
# 127.0.0.1:PORT; give up early if PID exits.
wait_port() {
    local port=$1 secs=${2:-10} pid=${3:-} i
    for i in $(seq $((secs * 20))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.05
    done
    return 1
}
