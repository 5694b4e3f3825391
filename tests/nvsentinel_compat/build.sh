#!/usr/bin/env bash
# Build nvsentinel-decide (this directory) against NVIDIA NVSentinel's source and print its path.
# Built once per NVSentinel source and Go version, cached outside the repo.
#
#   tests/nvsentinel_compat/build.sh            the binary's path (built if not cached)
#   tests/nvsentinel_compat/build.sh --source   the NVSentinel source directory
#
# The source is $NVSENTINEL_SRC, default <repo>/../shared/third_party/nvsentinel: the unmodified
# snapshot of NVSENTINEL_COMMIT (tools/versions.env). The program's go.mod replaces NVSentinel's
# modules with that directory; its go.sum pins every other module. The cache key is the pinned
# commit, a hash of the source files the build reads (so an edited or different source builds
# anew) and the Go version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
log() { printf '[nvsentinel-decide] %s\n' "$*" >&2; }

commit=$(sed -n 's/^NVSENTINEL_COMMIT=//p' "$root/tools/versions.env")
src=${NVSENTINEL_SRC:-$root/../shared/third_party/nvsentinel}
if ! [ -f "$src/health-monitors/syslog-health-monitor/go.mod" ]; then
  log "no NVSentinel source at $src (set NVSENTINEL_SRC). To fetch the pinned commit:"
  log "  git clone https://github.com/NVIDIA/NVSentinel.git nvsentinel && git -C nvsentinel checkout $commit"
  log "  export NVSENTINEL_SRC=\$PWD/nvsentinel"
  exit 1
fi
src=$(cd "$src" && pwd)
if [ "${1:-}" = --source ]; then echo "$src"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0
modules=(data-models commons store-client platform-connectors health-monitors/syslog-health-monitor)
go_version=$(go env GOVERSION); go_version=${go_version#go}
hash=$( { (cd "$src" && find "${modules[@]}" -type f \( -name '*.go' -o -name go.mod -o -name go.sum -o -name '*.xlsx' \) \
            -print0 | sort -z | xargs -0 sha256sum); (cd "$here" && sha256sum -- *.go go.mod go.sum); } \
        | sha256sum | cut -c1-12)
out="${GPU_FI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-resilience-fi}/nvsentinel-decide/${commit:0:12}-$hash-go$go_version"
bin="$out/nvsentinel-decide"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

mkdir -p "$out"
# One build at a time: parallel callers wait here, then find it built.
exec 9>"$out.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp "$here"/*.go "$here/go.mod" "$here/go.sum" "$work/"
for m in "${modules[@]}"; do
  (cd "$work" && go mod edit -replace "github.com/nvidia/nvsentinel/$m=$src/$m")
done
log "building against $src (Go $go_version)"
start=$(date +%s)
(cd "$work" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"
