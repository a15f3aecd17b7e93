#!/usr/bin/env bash
# A real S3 server on 127.0.0.1: versitygw (Apache-2.0), an S3 gateway over a local
# directory, built once from the Go module proxy. Not MinIO's server (AGPL).
#
#   deploy/storage/s3.sh start    build versitygw once, start it, and return only when it
#                                 answers HTTP
#   deploy/storage/s3.sh stop     SIGTERM, wait up to S3_STOP_TIMEOUT s, then SIGKILL
#   deploy/storage/s3.sh status   exit 0 if running and answering, 3 otherwise
#   deploy/storage/s3.sh env      print the export lines a client needs (keys, region, the
#                                 repository URL prefix), for `eval "$(... env)"`
#   deploy/storage/s3.sh logs [N] the last N (default 100) lines of its log
#
# Environment (defaults in brackets):
#   S3_PORT               HTTP port [7070]
#   S3_DATA_DIR           buckets (data/), users (iam/), pid file and s3.log
#                         [deploy/storage/.data/s3-<S3_PORT>]
#   AWS_ACCESS_KEY_ID     the root user's access key [corestate]
#   AWS_SECRET_ACCESS_KEY the root user's secret key [corestate-secret]
#   S3_REGION             the region it answers for [us-east-1]
#   STORAGE_BIN           where built servers are cached [deploy/storage/.bin]
#   VERSITYGW             a versitygw binary to run instead of building one
#   S3_START_TIMEOUT      seconds to wait for it to answer, after any build [60]
#   S3_STOP_TIMEOUT       seconds to wait after SIGTERM before SIGKILL [10]
#
# Terms: the *data dir* is one server's whole state (buckets are its subdirectories of
# data/, object metadata sits in user xattrs, which ext4 has); delete it to start from
# an empty server. Object Lock (governance and compliance retention) and bucket policies
# work; storage classes are accepted and not kept (every object reads back STANDARD).
# The keys reach the server through its environment, never its command line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION=v1.8.0

PORT="${S3_PORT:-7070}"
DATA="${S3_DATA_DIR:-$HERE/.data/s3-$PORT}"
ACCESS="${AWS_ACCESS_KEY_ID:-corestate}"
SECRET="${AWS_SECRET_ACCESS_KEY:-corestate-secret}"
REGION="${S3_REGION:-us-east-1}"
BIN="${STORAGE_BIN:-$HERE/.bin}"
START_TIMEOUT="${S3_START_TIMEOUT:-60}"
STOP_TIMEOUT="${S3_STOP_TIMEOUT:-10}"

SERVICE=s3
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
# shellcheck source=../lib/go-tool.sh
. "$HERE/../lib/go-tool.sh"
DATA="$(abspath "$DATA")"
BIN="$(abspath "$BIN")"
PIDFILE="$DATA/s3.pid"
LOGFILE="$DATA/s3.log"
ENDPOINT="http://127.0.0.1:$PORT"
WHERE="at $ENDPOINT"

running_pid() { pid_running "--port 127.0.0.1:$PORT "; }

# Any HTTP answer will do (an unsigned request gets 403): the server is serving.
reachable() { http_answers "$ENDPOINT/"; }

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if reachable; then say "already running (pid $pid) $WHERE"; return 0; fi
    say "pid $pid is starting; waiting for it"
  else
    rm -f "$PIDFILE"
    command -v curl >/dev/null || die "the readiness probe needs curl"
    local exe="${VERSITYGW:-}"
    [[ -n "$exe" ]] || exe="$(go_tool "$BIN" versitygw github.com/versity/versitygw/cmd/versitygw "$VERSION")"
    port_open "$PORT" && die "127.0.0.1:$PORT is already taken by another process"
    mkdir -p "$DATA/data" "$DATA/iam"
    [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    # nohup and setsid keep it alive after this shell is gone; both exec, so $! is its pid.
    ROOT_ACCESS_KEY="$ACCESS" ROOT_SECRET_KEY="$SECRET" \
      nohup setsid "$exe" --port "127.0.0.1:$PORT" --region "$REGION" --iam-dir "$DATA/iam" \
      --quiet posix "$DATA/data" </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  await_start "$pid" "; data in $DATA"
}

cmd_env() {
  printf 'export AWS_ACCESS_KEY_ID=%q AWS_SECRET_ACCESS_KEY=%q AWS_DEFAULT_REGION=%q\n' \
    "$ACCESS" "$SECRET" "$REGION"
  printf '# repositories: s3:%s/BUCKET[/PREFIX]\n' "$ENDPOINT"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status "; data in $DATA" ;;
  env) cmd_env ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|env|logs [N]" >&2; exit 2 ;;
esac
