#!/usr/bin/env bash
# A real Prometheus (Debian's 2.42) on 127.0.0.1, scraping CoreState with the project's
# scrape config and alert rules.
#
#   deploy/prometheus/prometheus.sh start    unpack Debian's package once, write the
#                                            config, start, and return when it is ready
#   deploy/prometheus/prometheus.sh stop     SIGTERM, wait up to PROMETHEUS_STOP_TIMEOUT s, then SIGKILL
#   deploy/prometheus/prometheus.sh status   exit 0 if running and ready, 3 otherwise
#   deploy/prometheus/prometheus.sh reload   re-read the config, rules and targets
#   deploy/prometheus/prometheus.sh promtool ARGS...   Debian's promtool (unpacked once)
#   deploy/prometheus/prometheus.sh logs [N] the last N (default 100) lines of its log
#
# Environment (defaults in brackets):
#   PROMETHEUS_PORT             HTTP port (UI and API) [9090]
#   PROMETHEUS_DATA_DIR         config copy, targets, TSDB, pid file, log
#                               [deploy/prometheus/.data/<PROMETHEUS_PORT>]
#   PROMETHEUS_TARGETS          comma-separated HOST:PORT of CoreState processes started
#                               with --metrics-listen, written to targets/corestate-env.yml
#   PROMETHEUS_PUSHGATEWAY      HOST:PORT of a Pushgateway, written to targets/pushgateway-env.yml
#   PROMETHEUS_SCRAPE_INTERVAL  scrape and rule evaluation interval [15s]
#   PROMETHEUS_LIBS             the unpacked Debian package [deploy/prometheus/.libs]
#   PROMETHEUS_START_TIMEOUT    seconds to wait for it to be ready [60]
#   PROMETHEUS_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL [30]
#
# Terms: the *config* is deploy/prometheus/prometheus.yml and rules/*.yml, copied into the
# data dir at each start; *targets* are file-based service discovery files in
# <data dir>/targets/ (corestate-*.yml for /metrics listeners, pushgateway-*.yml for
# Pushgateways), re-read every 5 s: add a file there to scrape another process.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PORT="${PROMETHEUS_PORT:-9090}"
DATA="${PROMETHEUS_DATA_DIR:-$HERE/.data/$PORT}"
LIBS="${PROMETHEUS_LIBS:-$HERE/.libs}"
INTERVAL="${PROMETHEUS_SCRAPE_INTERVAL:-15s}"
START_TIMEOUT="${PROMETHEUS_START_TIMEOUT:-60}"
STOP_TIMEOUT="${PROMETHEUS_STOP_TIMEOUT:-30}"

SERVICE=prometheus
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
DATA="$(abspath "$DATA")"
LIBS="$(abspath "$LIBS")"
PIDFILE="$DATA/prometheus.pid"
LOGFILE="$DATA/prometheus.log"
CONFIG="$DATA/prometheus.yml"
WHERE="on http://127.0.0.1:$PORT"
BIN="$LIBS/usr/bin/prometheus"

running_pid() { pid_running "--config.file=$CONFIG"; }
reachable() { http_ok /-/ready; }

# YAML file_sd list of the comma-separated HOST:PORT in $2, written to $1.
write_targets() {
  local file=$1 list=$2 t
  { echo "# Written by deploy/prometheus/prometheus.sh from the environment."
    echo "- targets:"
    IFS=, read -ra items <<<"$list"
    for t in "${items[@]}"; do [[ -n "$t" ]] && echo "    - \"$t\""; done
  } >"$file"
}

write_config() {
  mkdir -p "$DATA/targets" "$DATA/rules"
  sed -e "s/^\(  *\)\(scrape_interval\|evaluation_interval\): .*/\1\2: $INTERVAL/" \
    "$HERE/prometheus.yml" >"$CONFIG"
  cp "$HERE"/rules/*.yml "$DATA/rules/"
  rm -f "$DATA/rules/"*_test.yml
  [[ -n "${PROMETHEUS_TARGETS:-}" ]] && write_targets "$DATA/targets/corestate-env.yml" "$PROMETHEUS_TARGETS"
  [[ -n "${PROMETHEUS_PUSHGATEWAY:-}" ]] && write_targets "$DATA/targets/pushgateway-env.yml" "$PROMETHEUS_PUSHGATEWAY"
  "$LIBS/usr/bin/promtool" check config "$CONFIG" >/dev/null || die "promtool rejects $CONFIG"
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if reachable; then say "already running (pid $pid) $WHERE"; return 0; fi
    say "pid $pid is starting; waiting for it"
  else
    rm -f "$PIDFILE"
    unpack_deb prometheus "$LIBS"
    port_open "$PORT" && die "127.0.0.1:$PORT is already taken by another process"
    mkdir -p "$DATA"
    [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    write_config
    nohup setsid "$BIN" --config.file="$CONFIG" --storage.tsdb.path="$DATA/tsdb" \
      --web.listen-address="127.0.0.1:$PORT" --web.enable-lifecycle \
      --web.console.templates="$LIBS/usr/share/prometheus/consoles" \
      --web.console.libraries="$LIBS/usr/share/prometheus/console_libraries" \
      </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  await_start "$pid" "; data in $DATA"
}

cmd_reload() {
  running_pid >/dev/null || die "not running"
  write_config
  kill -HUP "$(running_pid)"
  say "reloaded $CONFIG"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status "; data in $DATA" ;;
  reload) cmd_reload ;;
  promtool) shift; unpack_deb prometheus "$LIBS"; exec "$LIBS/usr/bin/promtool" "$@" ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|reload|promtool ARGS|logs [N]" >&2; exit 2 ;;
esac
