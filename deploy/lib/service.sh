# Shared by the scripts under deploy/ that run one service in the background on
# 127.0.0.1, with a pid file and a log in its data directory (Kafka and the schema
# registry via jvm-service.sh, Prometheus, the Pushgateway, the storage servers).
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

# Unpack Debian package $1 into directory $2 once (apt-get download + dpkg -x: the
# package's files without its service scripts or dependencies); a stamp names the
# version unpacked. Runs `apt-get update` first if apt does not know the package yet.
unpack_deb() {
  local pkg=$1 dir=$2
  [[ -f "$dir/.$pkg.version" ]] && return 0
  command -v apt-get >/dev/null && command -v dpkg >/dev/null \
    || die "$pkg comes from Debian's package: apt-get and dpkg are needed"
  mkdir -p "$dir"
  local tmp
  tmp="$(mktemp -d)"
  say "fetching Debian's $pkg into $dir"
  if ! (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
    local sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
  fi
  local deb
  deb="$(ls "$tmp"/"$pkg"_*.deb | head -n1)"
  dpkg -x "$deb" "$dir" || { rm -rf "$tmp"; die "dpkg -x $deb failed"; }
  dpkg-deb -f "$deb" Version >"$dir/.$pkg.version"
  rm -rf "$tmp"
  say "unpacked $pkg $(cat "$dir/.$pkg.version")"
}

# The pid in $PIDFILE, if that process is alive and its command line contains $1.
pid_running() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1" || return 1
  echo "$pid"
}

# Does URL $1 answer with an HTTP status matching the pattern $2 (default: any status)?
# (curl: for services whose readiness needs more than a bare HTTP/1.0 GET)
http_answers() {
  local code
  code="$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null)" || true
  [[ "$code" =~ ^${2:-[1-5][0-9][0-9]}$ ]]
}

# Does http://127.0.0.1:$PORT$1 answer 200?
http_ok() {
  local path=$1
  exec 4<>"/dev/tcp/127.0.0.1/$PORT" 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&4
  local status
  IFS= read -r -t 5 status <&4 || { exec 4>&-; return 1; }
  exec 4>&-
  [[ "$status" == *" 200 "* ]]
}
