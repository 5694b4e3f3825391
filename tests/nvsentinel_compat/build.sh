#!/usr/bin/env bash
# Build nvsentinel-decide (this directory) against NVIDIA NVSentinel's source and print its path.
# Built once per NVSentinel source and Go version, cached outside the repo.
#
#   tests/nvsentinel_compat/build.sh            the binary's path (built if not cached)
#   tests/nvsentinel_compat/build.sh --source   the NVSentinel source directory
#
# The source is $NVSENTINEL_SRC, default <repo>/../shared/third_party/nvsentinel, checked to be
# NVSENTINEL_COMMIT of tools/versions.env by tools/localcluster/nvsentinel_source.py. The program's
# go.mod replaces NVSentinel's modules with that directory; its go.sum pins every other module. The
# cache key is the pinned commit, a hash of this program's files and the Go version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
log() { printf '[nvsentinel-decide] %s\n' "$*" >&2; }

# The checked source directory (NVSENTINEL_SRC, or how to get it when it is missing or different).
src=$(python3 "$root/tools/localcluster/nvsentinel_source.py" path)
commit=$(sed -n 's/^NVSENTINEL_COMMIT=//p' "$root/tools/versions.env")
if [ "${1:-}" = --source ]; then echo "$src"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0
modules=(data-models commons store-client platform-connectors health-monitors/syslog-health-monitor)
go_version=$(go env GOVERSION); go_version=${go_version#go}
# The source is the pinned commit (checked above); this program's own files complete the key.
hash=$(cd "$here" && sha256sum -- *.go go.mod go.sum | sha256sum | cut -c1-12)
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
