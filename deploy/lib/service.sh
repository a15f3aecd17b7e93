# One service run in the background on 127.0.0.1, with a pid file and a log in its data
# directory: the shared part of deploy/kafka/broker.sh, deploy/registry/registry.sh (via
# jvm-service.sh) and the storage servers under deploy/storage/.
#
# The sourcing script sets: SERVICE (name in messages), PORT, WHERE (where it answers,
# for messages), PIDFILE, LOGFILE, START_TIMEOUT, STOP_TIMEOUT; and defines running_pid
# (prints the pid of this service if alive) and reachable (succeeds when the service
# answers requests, not just its port).

# Relative paths given by the caller are taken from the caller's cwd.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
say() { printf '%s[%s]: %s\n' "$SERVICE" "$PORT" "$*"; }
die() { printf '%s[%s]: error: %s\n' "$SERVICE" "$PORT" "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Wait until the service started as pid $1 answers; on failure show the log's tail,
# kill it and exit 1. $2: extra words for the "started" line.
await_start() {
  local pid=$1 extra=${2:-} t0=$SECONDS
  while ((SECONDS - t0 < START_TIMEOUT)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      tail -n 40 "$LOGFILE" >&2
      die "the $SERVICE exited during start-up (log above, full log in $LOGFILE)"
    fi
    if port_open "$PORT" && reachable; then
      say "started (pid $pid) $WHERE in $((SECONDS - t0)) s$extra"
      return 0
    fi
    sleep 0.5
  done
  tail -n 40 "$LOGFILE" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  die "the $SERVICE did not answer $WHERE within ${START_TIMEOUT} s (killed it; log above, full log in $LOGFILE)"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < STOP_TIMEOUT)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after ${STOP_TIMEOUT} s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  say "stopped (pid $pid) in $((SECONDS - t0)) s"
}

# $1: extra words for the "running" line.
cmd_status() {
  local pid
  if pid="$(running_pid)" && reachable; then
    say "running (pid $pid) $WHERE${1:-}"
    return 0
  fi
  if [[ -n "${pid:-}" ]]; then say "pid $pid is alive but does not answer $WHERE"
  else say "not running"; fi
  return 3
}

cmd_logs() {
  [[ -f "$LOGFILE" ]] || die "no log at $LOGFILE"
  tail -n "${1:-100}" "$LOGFILE"
}
