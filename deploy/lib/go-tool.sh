# Build a Go program from the Go module proxy once and cache the binary; sourced by
# deploy/storage/s3.sh and deploy/storage/gcs.sh after deploy/lib/service.sh.
#
#   go_tool DIR NAME PACKAGE VERSION   print the path of DIR/NAME, running
#                                      `GOBIN=DIR go install PACKAGE@VERSION` first unless
#                                      DIR/.NAME.version already says VERSION
#
# A lock keeps parallel starts from building into the same directory; the stamp is
# written last, so a build that was cut short is done again.

go_tool() {
  local dir=$1 name=$2 package=$3 version=$4
  mkdir -p "$dir"
  local stamp="$dir/.$name.version"
  exec 7>"$dir/.$name.lock"
  command -v flock >/dev/null && flock 7
  if [[ ! -x "$dir/$name" || "$(cat "$stamp" 2>/dev/null)" != "$version" ]]; then
    command -v go >/dev/null \
      || die "building $name needs Go (https://go.dev/dl/, 1.22 or newer; it fetches the toolchain the module asks for)"
    say "building $name $version from the Go module proxy into $dir (once)" >&2
    local t0=$SECONDS
    rm -f "$stamp"
    if ! GOBIN="$dir" GOFLAGS="${GOFLAGS:-} -trimpath" go install "$package@$version" >"$dir/.$name.build.log" 2>&1; then
      tail -n 30 "$dir/.$name.build.log" >&2
      die "go install $package@$version failed (log above)"
    fi
    echo "$version" >"$stamp"
    say "built $name in $((SECONDS - t0)) s" >&2
  fi
  exec 7>&-
  printf '%s\n' "$dir/$name"
}
