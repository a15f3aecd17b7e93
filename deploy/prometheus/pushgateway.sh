#!/usr/bin/env bash
# A real Prometheus Pushgateway (Debian's 1.5) on 127.0.0.1, for one-shot commands started
# with --metrics-push (cron backups, checks).
#
#   deploy/prometheus/pushgateway.sh start    unpack Debian's package once, start, and
#                                             return when it is ready
#   deploy/prometheus/pushgateway.sh stop     SIGTERM, wait up to PUSHGATEWAY_STOP_TIMEOUT s, then SIGKILL
#   deploy/prometheus/pushgateway.sh status   exit 0 if running and ready, 3 otherwise
#   deploy/prometheus/pushgateway.sh logs [N] the last N (default 100) lines of its log
#
# Environment (defaults in brackets):
#   PUSHGATEWAY_PORT           HTTP port [9091]
#   PUSHGATEWAY_DATA_DIR       persistence file, pid file, log [deploy/prometheus/.data/pushgateway-<PORT>]
#   PUSHGATEWAY_LIBS           the unpacked Debian package [deploy/prometheus/.libs]
#   PUSHGATEWAY_START_TIMEOUT  seconds to wait for it to be ready [30]
#   PUSHGATEWAY_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL [30]
#
# Prometheus scrapes it with honor_labels (deploy/prometheus/prometheus.yml, job
# pushgateway): start prometheus.sh with PROMETHEUS_PUSHGATEWAY=127.0.0.1:<port>.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PORT="${PUSHGATEWAY_PORT:-9091}"
DATA="${PUSHGATEWAY_DATA_DIR:-$HERE/.data/pushgateway-$PORT}"
LIBS="${PUSHGATEWAY_LIBS:-$HERE/.libs}"
START_TIMEOUT="${PUSHGATEWAY_START_TIMEOUT:-30}"
STOP_TIMEOUT="${PUSHGATEWAY_STOP_TIMEOUT:-30}"

SERVICE=pushgateway
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
DATA="$(abspath "$DATA")"
LIBS="$(abspath "$LIBS")"
PIDFILE="$DATA/pushgateway.pid"
LOGFILE="$DATA/pushgateway.log"
WHERE="on http://127.0.0.1:$PORT"

running_pid() { pid_running "--persistence.file=$DATA/metrics.store"; }
reachable() { http_ok /-/ready; }

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if reachable; then say "already running (pid $pid) $WHERE"; return 0; fi
    say "pid $pid is starting; waiting for it"
  else
    rm -f "$PIDFILE"
    unpack_deb prometheus-pushgateway "$LIBS"
    port_open "$PORT" && die "127.0.0.1:$PORT is already taken by another process"
    mkdir -p "$DATA"
    [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    nohup setsid "$LIBS/usr/bin/prometheus-pushgateway" --web.listen-address="127.0.0.1:$PORT" \
      --persistence.file="$DATA/metrics.store" </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  await_start "$pid"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|logs [N]" >&2; exit 2 ;;
esac
