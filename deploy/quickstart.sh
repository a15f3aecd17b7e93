#!/usr/bin/env bash
# Install CoreState and protect one directory on the embedded default (no services).
#   deploy/quickstart.sh DIR [REPO]
# The repository defaults to ~/.local/share/corestate/repo; its password is generated
# once into ~/.config/corestate/password (keep a copy: without it nothing restores).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: deploy/quickstart.sh DIR [REPO]}
repo=${2:-${CORESTATE_REPOSITORY:-$HOME/.local/share/corestate/repo}}
pwfile=${CORESTATE_PASSWORD_FILE:-$HOME/.config/corestate/password}

"$here/install.sh"
if [[ -z "${CORESTATE_PASSWORD:-}" && ! -s "$pwfile" ]]; then
  mkdir -p "$(dirname "$pwfile")"
  (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$pwfile")
  echo "generated a repository password in $pwfile"
fi
export CORESTATE_PASSWORD_FILE=$pwfile
if [[ ! -e "$repo/config" ]]; then
  corestate init --repo "$repo"
fi
corestate backup --repo "$repo" "$src"
corestate snapshots --repo "$repo"
