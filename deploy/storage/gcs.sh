#!/usr/bin/env bash
# A Google Cloud Storage emulator on 127.0.0.1: fake-gcs-server (BSD-2), the JSON API
# with uploads (simple, multipart, resumable), built once from the Go module proxy.
#
#   deploy/storage/gcs.sh start    build it once, start it, and return only when it answers
#   deploy/storage/gcs.sh stop     SIGTERM, wait up to GCS_STOP_TIMEOUT s, then SIGKILL
#   deploy/storage/gcs.sh status   exit 0 if running and answering, 3 otherwise
#   deploy/storage/gcs.sh env      print the export line a client needs
#                                  (STORAGE_EMULATOR_HOST), for `eval "$(... env)"`
#   deploy/storage/gcs.sh logs [N] the last N (default 100) lines of its log
#
# Environment (defaults in brackets):
#   GCS_PORT              HTTP port [4443]
#   GCS_DATA_DIR          buckets (data/), pid file and gcs.log [deploy/storage/.data/gcs-<GCS_PORT>]
#   STORAGE_BIN           where built servers are cached [deploy/storage/.bin]
#   FAKE_GCS_SERVER       a fake-gcs-server binary to run instead of building one
#   GCS_START_TIMEOUT     seconds to wait for it to answer, after any build [60]
#   GCS_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL [10]
#
# The emulator takes no credentials: clients reach it through STORAGE_EMULATOR_HOST.
# Objects live on disk in the data dir, so they survive a restart.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION=v1.56.1

PORT="${GCS_PORT:-4443}"
DATA="${GCS_DATA_DIR:-$HERE/.data/gcs-$PORT}"
BIN="${STORAGE_BIN:-$HERE/.bin}"
START_TIMEOUT="${GCS_START_TIMEOUT:-60}"
STOP_TIMEOUT="${GCS_STOP_TIMEOUT:-10}"

SERVICE=gcs
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
# shellcheck source=../lib/go-tool.sh
. "$HERE/../lib/go-tool.sh"
DATA="$(abspath "$DATA")"
BIN="$(abspath "$BIN")"
PIDFILE="$DATA/gcs.pid"
LOGFILE="$DATA/gcs.log"
ENDPOINT="http://127.0.0.1:$PORT"
WHERE="at $ENDPOINT"

running_pid() { pid_running "-port $PORT "; }

reachable() { http_answers "$ENDPOINT/storage/v1/b" 200; }

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if reachable; then say "already running (pid $pid) $WHERE"; return 0; fi
    say "pid $pid is starting; waiting for it"
  else
    rm -f "$PIDFILE"
    command -v curl >/dev/null || die "the readiness probe needs curl"
    local exe="${FAKE_GCS_SERVER:-}"
    [[ -n "$exe" ]] || exe="$(go_tool "$BIN" fake-gcs-server github.com/fsouza/fake-gcs-server "$VERSION")"
    port_open "$PORT" && die "127.0.0.1:$PORT is already taken by another process"
    mkdir -p "$DATA/data"
    [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    # The public host and external URL are what it writes into resumable-upload
    # locations and media links: this address, not storage.googleapis.com.
    nohup setsid "$exe" -scheme http -host 127.0.0.1 -port "$PORT" \
      -public-host "127.0.0.1:$PORT" -external-url "$ENDPOINT" \
      -backend filesystem -filesystem-root "$DATA/data" -log-level warn \
      </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  await_start "$pid" "; data in $DATA"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status "; data in $DATA" ;;
  env) printf 'export STORAGE_EMULATOR_HOST=%q\n' "$ENDPOINT" ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|env|logs [N]" >&2; exit 2 ;;
esac
