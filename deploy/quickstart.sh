#!/usr/bin/env bash
# Install CoreState and protect one directory on the embedded default (no services).
#
#   deploy/quickstart.sh DIR [REPO]
#
# 1. Installs the package (deploy/install.sh) into the active virtual environment, or,
#    when none is active, into a private one at ~/.local/share/corestate/venv, and links
#    its `corestate` command into ~/.local/bin (printing the line to add to your shell
#    profile if that directory is not on PATH).
# 2. Generates a repository password once into ~/.config/corestate/password (keep a
#    copy: without it nothing restores) unless CORESTATE_PASSWORD is set.
# 3. Creates the repository REPO (default ~/.local/share/corestate/repo) and makes it the
#    default in ~/.config/corestate/config.toml (`corestate config --help`), so the next
#    commands need no --repo and no password; a config naming another repository is kept.
# 4. Backs DIR up once and lists the snapshots.
# XDG_DATA_HOME and XDG_CONFIG_HOME move ~/.local/share and ~/.config, as usual.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: deploy/quickstart.sh DIR [REPO]}
data_home=${XDG_DATA_HOME:-$HOME/.local/share}/corestate
config_home=${XDG_CONFIG_HOME:-$HOME/.config}/corestate
repo=${2:-${CORESTATE_REPOSITORY:-$data_home/repo}}
pwfile=${CORESTATE_PASSWORD_FILE:-$config_home/password}

say() { echo "quickstart: $*" >&2; }
die() { say "$*"; exit 1; }

[[ -d "$src" ]] || die "$src is not a directory"
py=${PYTHON:-python3}
command -v "$py" >/dev/null || die "no $py found: install Python 3.11 or newer first"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "CoreState needs Python 3.11 or newer; $py is $("$py" -c 'import platform; print(platform.python_version())')"

# 1. Install.
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  bin=$VIRTUAL_ENV/bin
  say "installing into the active virtual environment $VIRTUAL_ENV"
else
  venv=$data_home/venv
  if [[ ! -x "$venv/bin/python" ]]; then
    say "creating a private virtual environment in $venv"
    mkdir -p "$data_home"
    "$py" -m venv "$venv" ||
      die "could not create $venv (on Debian or Ubuntu: apt-get install python3-venv)"
  fi
  bin=$venv/bin
fi
PYTHON=$bin/python "$here/install.sh"
corestate=$bin/corestate
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  links=$HOME/.local/bin
  mkdir -p "$links"
  if [[ -e "$links/corestate" && ! -L "$links/corestate" ]]; then
    say "left $links/corestate alone (not a link we made); this install is $corestate"
  else
    ln -sfn "$corestate" "$links/corestate"
    say "linked $links/corestate -> $corestate"
  fi
  case ":$PATH:" in
    *":$links:"*) ;;
    *) say "$links is not on your PATH; add this line to ~/.profile (or ~/.bashrc) and open a new shell:"
       echo "    export PATH=\"$links:\$PATH\"" >&2 ;;
  esac
fi

# 2. Password.
if [[ -z "${CORESTATE_PASSWORD:-}" && ! -s "$pwfile" ]]; then
  mkdir -p "$(dirname "$pwfile")"
  (umask 077; "$py" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$pwfile")
  say "generated a repository password in $pwfile (keep a copy elsewhere)"
fi
pwargs=()
[[ -z "${CORESTATE_PASSWORD:-}" ]] && pwargs=(--password-file "$pwfile")

# 3. Repository and defaults.
if [[ ! -e "$repo/config" ]]; then
  "$corestate" init --repo "$repo" "${pwargs[@]}" --quiet
  say "created the repository $repo"
fi
current=$(env -u CORESTATE_REPOSITORY "$corestate" config --json |
  "$py" -c 'import json, sys; print(json.load(sys.stdin)["repository"] or "")')
wanted=$("$py" -c 'import os, sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])))' "$repo")
if [[ -z "$current" ]]; then
  "$corestate" config --save --repo "$repo" "${pwargs[@]}"
elif [[ "$current" != "$wanted" ]]; then
  say "your config file already names the repository $current; kept it (use --repo $repo for this one)"
fi

# 4. First backup.
"$corestate" backup --repo "$repo" "${pwargs[@]}" "$src"
"$corestate" snapshots --repo "$repo" "${pwargs[@]}"
cat >&2 <<EOF

quickstart: done. Next, for example (\`corestate config\` shows where the repository and
password come from):
    corestate snapshots
    corestate protect $(printf %q "$src")    # a snapshot within seconds of every change
    corestate restore latest --target /tmp/restore
EOF
