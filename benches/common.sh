# Helpers shared by the benchmark scripts (sourced, not run): where things
# are (HERE, ROOT, PY, BENCHLIB, RRPROXY), the command line every script
# takes (bench_args), and starting and stopping what a run starts. The
# process helpers expect T (the run's temporary directory, with a logs/
# folder) and STARTED (an array of the pids, which are process group ids,
# of everything started).

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# The real interpreter, not a version-manager shim: it runs many times.
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || PY=python3
BENCHLIB=("$PY" -S "$HERE/benchlib.py")
RRPROXY=${RRPROXY:-$ROOT/target/release/rrproxy}

# The options every script takes: --rrproxy PATH (the binary to measure)
# and --help (the script's leading comment). Usage: bench_args "$@"
bench_args() {
    local name
    name=$(basename "$0")
    while [ $# -gt 0 ]; do
        case "$1" in
            --rrproxy) RRPROXY=$2; shift 2 ;;
            --rrproxy=*) RRPROXY=${1#*=}; shift ;;
            -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
            *) echo "$name: unknown argument $1 (try --help)" >&2; exit 2 ;;
        esac
    done
}

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
