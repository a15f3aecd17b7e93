#!/usr/bin/env bash
# Install CoreState into the Python environment that runs this script.
#
#   deploy/install.sh          the package with everything the product uses on one
#                              machine: backup, restore, continuous protection with
#                              ransomware detection (River), metrics (OpenTelemetry)
#   deploy/install.sh --dev    also every optional backend and transport (Kafka, S3,
#                              Azure, GCS), the test tools (pytest, mypy), and from
#                              Debian the oracles and peers the tests use: restic, borg
#                              and xfsprogs (reflink tests on a loop-mounted XFS)
#
# It installs into $PYTHON (default: the python3 on PATH, so an active virtual
# environment). It does not start any service and fetches no Kafka jars: each
# deploy/*/…sh start script fetches what its service needs on its first start.
# At the end it prints what it installed.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
PY=${PYTHON:-python3}

need_apt=()
if ((dev)); then
  command -v restic >/dev/null || need_apt+=(restic)
  command -v borg >/dev/null || need_apt+=(borgbackup)
  command -v setpriv >/dev/null || need_apt+=(util-linux)
  command -v mkfs.xfs >/dev/null || need_apt+=(xfsprogs)
fi
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "install: apt packages ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

extras=metrics
((dev)) && extras=metrics,kafka,s3,azure,gcs,test
echo "install: corestate[$extras] (editable) into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[$extras]"
# Byte-compile the package now: every command and every backup worker process starts
# from it, also where PYTHONDONTWRITEBYTECODE keeps Python from caching it itself.
"$PY" -m compileall -q corestate

echo "installed:" >&2
"$PY" - <<'PYEOF' >&2
import importlib.metadata as md
names = ["corestate", "river", "opentelemetry-sdk", "confluent-kafka", "faust-streaming",
         "minio", "azure-storage-blob", "google-cloud-storage", "pytest"]
for n in names:
    try:
        print(f"  {n} {md.version(n)}")
    except md.PackageNotFoundError:
        pass
PYEOF
if ((dev)); then
  command -v restic >/dev/null && echo "  $(restic version 2>&1 | head -1)" >&2
  command -v borg >/dev/null && echo "  $(borg --version 2>&1 | head -1)" >&2
  command -v mkfs.xfs >/dev/null && echo "  $(mkfs.xfs -V 2>&1 | head -1)" >&2
fi
