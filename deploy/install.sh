#!/usr/bin/env bash
# Install CoreState and what its tests use on a fresh Debian machine.
#   deploy/install.sh          the package and its runtime dependencies (pip)
#   deploy/install.sh --dev    also the test tools and oracles: pytest, restic, borg
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
if [[ "${1:-}" == "--dev" ]]; then
  command -v restic >/dev/null || need_apt+=(restic)
  command -v borg >/dev/null || need_apt+=(borgbackup)
  command -v setpriv >/dev/null || need_apt+=(util-linux)
  command -v mkfs.xfs >/dev/null || need_apt+=(xfsprogs)  # reflink tests on a loop-mounted XFS
fi
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ "${1:-}" == "--dev" ]]; then
  $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test,kafka]"
else
  $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore -e .
fi
