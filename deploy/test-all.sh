#!/usr/bin/env bash
# Install everything the test suite needs and run it all; this is what CI runs.
#
#   deploy/test-all.sh [pytest args...]
#
# Uses the active virtual environment, else creates (or reuses) .venv in the checkout,
# so nothing installed by hand elsewhere can make a run pass. Tests start the services
# they need (Kafka broker, schema registry, storage servers, Prometheus) through the
# scripts under deploy/ and stop them at the end. Slow soak and benchmark-sized tests run
# their short form unless CORESTATE_SLOW=1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    echo "test-all: creating the virtual environment .venv" >&2
    python3 -m venv .venv
  fi
  export VIRTUAL_ENV="$PWD/.venv"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
fi
export PYTHON="$VIRTUAL_ENV/bin/python"
deploy/install.sh --dev
exec "$PYTHON" -m pytest "$@"
