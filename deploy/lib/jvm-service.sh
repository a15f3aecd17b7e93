# Shared by deploy/kafka/broker.sh and deploy/registry/registry.sh: a JVM service, i.e.
# deploy/lib/service.sh (pid file, start wait, stop, status, logs) plus the Java check.
#
# The sourcing script sets what service.sh asks for, and JAVA_NEEDS (what the Java
# check names).

# shellcheck source=service.sh
. "$(dirname "${BASH_SOURCE[0]}")/service.sh"

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# Java 17+ and Maven, installed from Debian packages when missing.
ensure_tools() {
  local need=()
  command -v "$JAVA" >/dev/null || need+=(default-jre-headless)
  command -v mvn >/dev/null || need+=(maven)
  if ((${#need[@]})); then
    say "installing ${need[*]} (Debian packages)"
    local sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    JAVA=java
  fi
  local v
  v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [[ -n "$v" && "$v" -ge 17 ]] || die "$JAVA_NEEDS needs Java 17 or newer; $JAVA is ${v:-unknown} (set JAVA_HOME)"
}
