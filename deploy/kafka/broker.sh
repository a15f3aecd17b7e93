#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1.
#
#   deploy/kafka/broker.sh start    fetch the jars once, format storage once, start, and
#                                   return only when the broker answers a metadata request
#   deploy/kafka/broker.sh stop     SIGTERM, wait up to KAFKA_STOP_TIMEOUT s, then SIGKILL
#   deploy/kafka/broker.sh status   exit 0 if running and reachable, 3 otherwise
#   deploy/kafka/broker.sh logs [N] the last N (default 100) lines of the broker's log
#
# Environment (defaults in brackets):
#   KAFKA_PORT            PLAINTEXT listener port [9092]
#   KAFKA_CONTROLLER_PORT KRaft controller listener port [KAFKA_PORT+1]
#   KAFKA_DATA_DIR        server.properties, log dirs, pid file, broker.log
#                         [deploy/kafka/.data/<KAFKA_PORT>]
#   KAFKA_HEAP            JVM memory/GC options [-Xmx768m -XX:+UseSerialGC]
#   KAFKA_LIBS            the copied runtime jars [deploy/kafka/.libs]
#   KAFKA_START_TIMEOUT   seconds to wait for the broker to answer [90]
#   KAFKA_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL [30]
#   PYTHON                interpreter for the readiness probe [python3]; with confluent_kafka
#                         importable it asks for metadata, else it sends an ApiVersions request
#
# Terms: the *libs dir* holds the jars that Maven copies from deploy/kafka/pom.xml, with a
# stamp (the pom's sha256) so they are fetched again only when the pom changes; the *data
# dir* is one broker's whole state: delete it to start from an empty cluster.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
LOG4J="$HERE/log4j2.properties"

PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
DATA="${KAFKA_DATA_DIR:-$HERE/.data/$PORT}"
HEAP="${KAFKA_HEAP:--Xmx768m -XX:+UseSerialGC}"
LIBS="${KAFKA_LIBS:-$HERE/.libs}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
PY="${PYTHON:-python3}"

SERVICE=kafka
JAVA_NEEDS="Kafka"
# shellcheck source=../lib/jvm-service.sh
. "$HERE/../lib/jvm-service.sh"
DATA="$(abspath "$DATA")"
LIBS="$(abspath "$LIBS")"
PIDFILE="$DATA/kafka.pid"
PROPS="$DATA/server.properties"
WHERE="on 127.0.0.1:$PORT"
LOGFILE="$DATA/broker.log"

# Copy the runtime classpath once per pom version. A lock keeps parallel starts from
# fetching into the same directory; the stamp is written last, so a fetch that was cut
# short is done again.
fetch_jars() {
  mkdir -p "$LIBS"
  local want have=""
  want="$(sha256sum "$POM" | cut -d' ' -f1)"
  exec 8>"$LIBS/.lock"
  command -v flock >/dev/null && flock 8
  [[ -f "$LIBS/.pom.sha256" ]] && have="$(cat "$LIBS/.pom.sha256")"
  if [[ "$have" != "$want" ]] || ! compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
    say "fetching jars from Maven Central into $LIBS"
    local t0=$SECONDS
    rm -f "$LIBS"/*.jar "$LIBS/.pom.sha256"
    if ! mvn -B -ntp -q -f "$POM" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DoutputDirectory="$LIBS" -DincludeScope=runtime >"$LIBS/.mvn.log" 2>&1; then
      tail -n 40 "$LIBS/.mvn.log" >&2
      die "mvn could not copy the jars of $POM"
    fi
    echo "$want" >"$LIBS/.pom.sha256"
    say "fetched $(ls "$LIBS"/*.jar | wc -l) jars in $((SECONDS - t0)) s"
  fi
  exec 8>&-
  local jar
  jar="$(ls "$LIBS"/kafka_2.13-*.jar 2>/dev/null | head -n1)"
  [[ -n "$jar" ]] || die "no kafka_2.13 jar in $LIBS"
  # Entry names sit uncompressed in a jar's central directory, so grep finds them.
  for cls in kafka/tools/StorageTool.class kafka/Kafka.class; do
    LC_ALL=C grep -qaF "$cls" "$jar" || die "$jar lacks ${cls%.class} (wrong artifact or version in $POM)"
  done
}

# The JVM and its options, shared by StorageTool and the broker.
java_cmd() {
  # shellcheck disable=SC2086 # HEAP is a list of JVM options
  printf '%s\0' "$JAVA" $HEAP -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J" -cp "$LIBS/*"
}
java_run() {
  local cmd=()
  mapfile -d '' cmd < <(java_cmd)
  "${cmd[@]}" "$@"
}

write_props() {
  mkdir -p "$DATA/logs"
  cat >"$PROPS" <<EOF
# Written by deploy/kafka/broker.sh on each start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA/logs
# One node: every internal topic has one replica (transactions hang otherwise) and few
# partitions (the first group join is slow with the default 50).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
# Records up to 8 MiB plus headroom for batch and record overhead.
message.max.bytes=9437184
replica.fetch.max.bytes=9437184
EOF
}

format_storage() {
  [[ -f "$DATA/logs/meta.properties" ]] && return 0
  local id
  id="$(java_run kafka.tools.StorageTool random-uuid 2>>"$LOGFILE" | tail -n1)"
  [[ "$id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid gave '$id' (see $LOGFILE)"
  # Static voters (controller.quorum.voters), so no --standalone.
  java_run kafka.tools.StorageTool format -t "$id" -c "$PROPS" >>"$LOGFILE" 2>&1 \
    || { tail -n 20 "$LOGFILE" >&2; die "formatting $DATA/logs failed"; }
  echo "$id" >"$DATA/cluster.id"
  say "formatted $DATA/logs (cluster id $id)"
}

# The pid in the pid file, if that process is alive and is our broker.
running_pid() { pid_running "kafka.Kafka $PROPS"; }

# Does the broker answer a Kafka request? A TCP connect alone is not enough: the port is
# bound before the broker processes requests.
reachable() {
  command -v "$PY" >/dev/null || { port_open "$PORT"; return; }
  "$PY" - "$PORT" <<'EOF' 2>/dev/null
import socket, struct, sys
port = int(sys.argv[1])
try:
    from confluent_kafka.admin import AdminClient
except ImportError:
    AdminClient = None
if AdminClient is not None:
    md = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0}).list_topics(timeout=3)
    sys.exit(0 if md.brokers else 1)
# ApiVersions v0: api_key 18, version 0, correlation id 1, client id "probe".
body = struct.pack(">hhih", 18, 0, 1, 5) + b"probe"
with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
    s.sendall(struct.pack(">i", len(body)) + body)
    head = s.recv(10)
sys.exit(0 if len(head) == 10 and struct.unpack(">iih", head)[1:] == (1, 0) else 1)
EOF
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if reachable; then say "already running (pid $pid) on 127.0.0.1:$PORT"; return 0; fi
    say "pid $pid is starting; waiting for it"
  else
    rm -f "$PIDFILE"
    ensure_tools
    fetch_jars
    port_open "$PORT" && die "127.0.0.1:$PORT is already taken by another process"
    port_open "$CPORT" && die "127.0.0.1:$CPORT (controller) is already taken by another process"
    mkdir -p "$DATA"
    [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    write_props
    format_storage
    # nohup and setsid keep the broker alive after this shell and its terminal are gone;
    # both exec, so $! is the JVM's pid.
    local cmd=()
    mapfile -d '' cmd < <(java_cmd)
    nohup setsid "${cmd[@]}" kafka.Kafka "$PROPS" </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  await_start "$pid" "; data in $DATA"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status "; data in $DATA" ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|logs [N]" >&2; exit 2 ;;
esac
