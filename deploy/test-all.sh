#!/usr/bin/env bash
# Install everything the test suite needs, start the services it uses, run it all.
#   deploy/test-all.sh [pytest args...]
# Slow soak/benchmark-sized tests run in their short form unless CORESTATE_SLOW=1.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install.sh --dev
python3 -m pytest "$@"
