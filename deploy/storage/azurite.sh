#!/usr/bin/env bash
# An Azure Blob Storage emulator on 127.0.0.1: Azurite 3.35.0 (MIT) from npm, installed
# once into deploy/storage/.npm (never globally). 3.36 and later need a newer Node than 20.
#
#   deploy/storage/azurite.sh start    install it once, start the blob service, and return
#                                      only when it answers
#   deploy/storage/azurite.sh stop     SIGTERM, wait up to AZURITE_STOP_TIMEOUT s, then SIGKILL
#   deploy/storage/azurite.sh status   exit 0 if running and answering, 3 otherwise
#   deploy/storage/azurite.sh env      print the export line a client needs
#                                      (AZURE_CONNECTION_STRING), for `eval "$(... env)"`
#   deploy/storage/azurite.sh logs [N] the last N (default 100) lines of its log
#
# Environment (defaults in brackets):
#   AZURITE_PORT          blob service port [10000]
#   AZURITE_DATA_DIR      blobs and their metadata, pid file and azurite.log
#                         [deploy/storage/.data/azurite-<AZURITE_PORT>]
#   AZURITE_NPM_DIR       where the npm package is installed [deploy/storage/.npm]
#   AZURITE_START_TIMEOUT seconds to wait for it to answer, after any install [60]
#   AZURITE_STOP_TIMEOUT  seconds to wait after SIGTERM before SIGKILL [10]
#
# Terms: the emulator has one account, devstoreaccount1, with the well-known key that
# Microsoft publishes for it; its blob endpoint is http://127.0.0.1:<port>/devstoreaccount1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION=3.35.0

PORT="${AZURITE_PORT:-10000}"
DATA="${AZURITE_DATA_DIR:-$HERE/.data/azurite-$PORT}"
NPM_DIR="${AZURITE_NPM_DIR:-$HERE/.npm}"
START_TIMEOUT="${AZURITE_START_TIMEOUT:-60}"
STOP_TIMEOUT="${AZURITE_STOP_TIMEOUT:-10}"

SERVICE=azurite
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
DATA="$(abspath "$DATA")"
NPM_DIR="$(abspath "$NPM_DIR")"
PIDFILE="$DATA/azurite.pid"
LOGFILE="$DATA/azurite.log"
ACCOUNT=devstoreaccount1
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ENDPOINT="http://127.0.0.1:$PORT/$ACCOUNT"
WHERE="at $ENDPOINT"

running_pid() { pid_running "--blobPort $PORT "; }

# An unsigned request gets an HTTP error from the blob service: it is serving.
reachable() { http_answers "$ENDPOINT?comp=list"; }

# npm install once per version; a lock keeps parallel starts apart and the stamp is
# written last, so an install cut short is done again.
install_azurite() {
  mkdir -p "$NPM_DIR"
  exec 7>"$NPM_DIR/.lock"
  command -v flock >/dev/null && flock 7
  if [[ "$(cat "$NPM_DIR/.version" 2>/dev/null)" != "$VERSION" || ! -x "$NPM_DIR/node_modules/.bin/azurite-blob" ]]; then
    command -v npm >/dev/null || die "installing Azurite needs Node.js 18 or 20 and npm (Debian: apt-get install nodejs npm)"
    say "installing azurite@$VERSION from npm into $NPM_DIR (once)"
    local t0=$SECONDS
    rm -f "$NPM_DIR/.version"
    if ! npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-save --loglevel=error \
        "azurite@$VERSION" >"$NPM_DIR/.npm.log" 2>&1; then
      tail -n 30 "$NPM_DIR/.npm.log" >&2
      die "npm install azurite@$VERSION failed (log above)"
    fi
    echo "$VERSION" >"$NPM_DIR/.version"
    say "installed in $((SECONDS - t0)) s"
  fi
  exec 7>&-
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if reachable; then say "already running (pid $pid) $WHERE"; return 0; fi
    say "pid $pid is starting; waiting for it"
  else
    rm -f "$PIDFILE"
    command -v curl >/dev/null || die "the readiness probe needs curl"
    install_azurite
    port_open "$PORT" && die "127.0.0.1:$PORT is already taken by another process"
    mkdir -p "$DATA/data"
    [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    nohup setsid "$NPM_DIR/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 \
      --blobPort "$PORT" --location "$DATA/data" --disableTelemetry \
      --skipApiVersionCheck --loose </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  await_start "$pid" "; data in $DATA"
}

cmd_env() {
  printf 'export AZURE_CONNECTION_STRING=%q\n' \
    "DefaultEndpointsProtocol=http;AccountName=$ACCOUNT;AccountKey=$KEY;BlobEndpoint=$ENDPOINT;"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status "; data in $DATA" ;;
  env) cmd_env ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|env|logs [N]" >&2; exit 2 ;;
esac
