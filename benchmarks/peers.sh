#!/bin/sh
# Build the benchmark peers that Debian does not ship, once, into benchmarks/.peers/
# (git-ignored):  restic 0.18.1 (go install) and rustic 0.11.4 (cargo install).
# Idempotent: a peer whose binary already reports the wanted version is left alone.
# Usage: benchmarks/peers.sh [restic|rustic ...]   (default: both)
# PEERS_DIR overrides the directory. Builds run under `nice -n 19` (rustic takes
# ~15 minutes on 2 cores).
set -eu
dir=${PEERS_DIR:-$(cd "$(dirname "$0")" && pwd)/.peers}
restic_version=0.18.1
rustic_version=0.11.4
mkdir -p "$dir/bin"

has() {  # has BINARY VERSION: the cached binary reports VERSION
    [ -x "$dir/bin/$1" ] && "$dir/bin/$1" version 2>/dev/null | grep -q "$2" ||
        { [ -x "$dir/bin/$1" ] && "$dir/bin/$1" --version 2>/dev/null | grep -q "$2"; }
}

build_restic() {
    if has restic "$restic_version"; then echo "restic $restic_version: cached"; return; fi
    command -v go >/dev/null || { echo "peers.sh: go not found, cannot build restic" >&2; return 1; }
    GOBIN="$dir/bin" nice -n 19 go install "github.com/restic/restic/cmd/restic@v$restic_version"
    echo "restic $restic_version: built"
}

build_rustic() {
    if has rustic "$rustic_version"; then echo "rustic $rustic_version: cached"; return; fi
    command -v cargo >/dev/null || { echo "peers.sh: cargo not found, cannot build rustic" >&2; return 1; }
    nice -n 19 cargo install rustic-rs --locked --no-default-features \
        --version "$rustic_version" --root "$dir"
    echo "rustic $rustic_version: built"
}

[ $# -gt 0 ] || set -- restic rustic
for peer in "$@"; do
    case $peer in
        restic) build_restic ;;
        rustic) build_rustic ;;
        *) echo "peers.sh: unknown peer '$peer' (restic, rustic)" >&2; exit 2 ;;
    esac
done
