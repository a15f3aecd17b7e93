#!/usr/bin/env bash
# A real schema registry on 127.0.0.1: Apicurio Registry 3.0.9, whose Confluent-compatible
# API (what `--schema-registry` and confluent-kafka's clients speak) is at
# http://127.0.0.1:<port>/apis/ccompat/v7.
#
#   deploy/registry/registry.sh start    fetch and unpack it once, start, and return only
#                                        when the Confluent API answers
#   deploy/registry/registry.sh stop     SIGTERM, wait up to REGISTRY_STOP_TIMEOUT s, then SIGKILL
#   deploy/registry/registry.sh status   exit 0 if running and answering, 3 otherwise
#   deploy/registry/registry.sh url      print the Confluent-compatible URL
#   deploy/registry/registry.sh logs [N] the last N (default 100) lines of its log
#
# Environment (defaults in brackets):
#   REGISTRY_PORT           HTTP port [8081]
#   REGISTRY_DATA_DIR       pid file, registry.log, Vert.x cache [deploy/registry/.data/<REGISTRY_PORT>]
#   REGISTRY_HEAP           JVM memory/GC options [-Xmx384m -XX:+UseSerialGC]
#   REGISTRY_LIBS           the fetched and unpacked distribution [deploy/registry/.libs]
#   REGISTRY_START_TIMEOUT  seconds to wait for it to answer [90]
#   REGISTRY_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL [30]
#   PYTHON                  interpreter for the readiness probe [python3]
#
# Terms: the *libs dir* holds the tar.gz that Maven copies from deploy/registry/pom.xml and
# its unpacked tree, with a stamp (the pom's sha256) so it is fetched again only when the
# pom changes. Schemas live in an in-memory database (Apicurio's default): a restart
# starts from an empty registry, which is what tests want.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"

PORT="${REGISTRY_PORT:-8081}"
DATA="${REGISTRY_DATA_DIR:-$HERE/.data/$PORT}"
HEAP="${REGISTRY_HEAP:--Xmx384m -XX:+UseSerialGC}"
LIBS="${REGISTRY_LIBS:-$HERE/.libs}"
START_TIMEOUT="${REGISTRY_START_TIMEOUT:-90}"
STOP_TIMEOUT="${REGISTRY_STOP_TIMEOUT:-30}"
PY="${PYTHON:-python3}"

SERVICE=registry
JAVA_NEEDS="Apicurio Registry 3.0"
# shellcheck source=../lib/jvm-service.sh
. "$HERE/../lib/jvm-service.sh"
DATA="$(abspath "$DATA")"
LIBS="$(abspath "$LIBS")"
PIDFILE="$DATA/registry.pid"
LOGFILE="$DATA/registry.log"
URL="http://127.0.0.1:$PORT/apis/ccompat/v7"
WHERE="at $URL"

# The runner jar of the unpacked distribution, if there is one.
runner_jar() { compgen -G "$LIBS/app/apicurio-registry-app-*-runner.jar" | head -n1; }

# Copy and unpack the distribution once per pom version. A lock keeps parallel starts
# from fetching into the same directory; the stamp is written last, so a fetch that was
# cut short is done again.
fetch_app() {
  mkdir -p "$LIBS"
  local want have=""
  want="$(sha256sum "$POM" "$HERE"/stub/io/apicurio/*/*/*.pom | sha256sum | cut -d' ' -f1)"
  exec 8>"$LIBS/.lock"
  command -v flock >/dev/null && flock 8
  [[ -f "$LIBS/.pom.sha256" ]] && have="$(cat "$LIBS/.pom.sha256")"
  if [[ "$have" != "$want" ]] || [[ -z "$(runner_jar)" ]]; then
    say "fetching Apicurio Registry from Maven Central into $LIBS"
    local t0=$SECONDS
    rm -rf "$LIBS/app" "$LIBS"/*.tar.gz "$LIBS/.pom.sha256"
    if ! mvn -B -ntp -q -f "$POM" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DoutputDirectory="$LIBS" >"$LIBS/.mvn.log" 2>&1; then
      tail -n 40 "$LIBS/.mvn.log" >&2
      die "mvn could not copy the distribution of $POM"
    fi
    local tgz
    tgz="$(compgen -G "$LIBS/apicurio-registry-app-*-all.tar.gz" | head -n1)" \
      || die "no apicurio-registry-app tar.gz in $LIBS"
    mkdir -p "$LIBS/app"
    tar -xzf "$tgz" -C "$LIBS/app" || die "cannot unpack $tgz"
    rm -f "$tgz"  # the unpacked tree is what runs; the tar.gz stays in ~/.m2
    [[ -n "$(runner_jar)" ]] || die "$tgz has no apicurio-registry-app-*-runner.jar"
    echo "$want" >"$LIBS/.pom.sha256"
    say "fetched and unpacked in $((SECONDS - t0)) s"
  fi
  exec 8>&-
}

# The pid in the pid file, if that process is alive and is our registry.
running_pid() { pid_running "-Dquarkus.http.port=$PORT "; }

# Does the Confluent-compatible API answer? The port opens before the API is served.
reachable() {
  "$PY" - "$URL" <<'EOF' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/subjects", timeout=3) as r:
    sys.exit(0 if r.status == 200 and isinstance(json.load(r), list) else 1)
EOF
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if reachable; then say "already running (pid $pid) at $URL"; return 0; fi
    say "pid $pid is starting; waiting for it"
  else
    rm -f "$PIDFILE"
    ensure_tools
    fetch_app
    port_open "$PORT" && die "127.0.0.1:$PORT is already taken by another process"
    mkdir -p "$DATA"
    [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    # nohup and setsid keep the registry alive after this shell and its terminal are
    # gone; both exec, so $! is the JVM's pid.
    # shellcheck disable=SC2086 # HEAP is a list of JVM options
    nohup setsid "$JAVA" $HEAP -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" \
      -Dvertx.cacheDirBase="$DATA/vertx-cache" -Dquarkus.log.console.color=false \
      -jar "$(runner_jar)" </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  await_start "$pid"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "$URL" ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|url|logs [N]" >&2; exit 2 ;;
esac
