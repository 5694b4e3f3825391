#!/usr/bin/env bash
# Build NVIDIA NVSentinel's components from source and cache them outside the repo, for the local
# control plane's NVSentinel lane (tools/local-cluster up --nvsentinel). Prints the output directory.
#
#   syslog-health-monitor  <- health-monitors/syslog-health-monitor (cgo, -tags systemd: libsystemd)
#   platform-connectors, fault-quarantine, node-drainer, fault-remediation, labeler
#
# Not janitor: what fault-remediation creates for a reboot is a janitor RebootNode object (its CRD
# comes with the chart); janitor itself would carry it out through a cloud provider's API.
#
# The source directory comes from NVSENTINEL_SRC (default: ../shared/third_party/nvsentinel beside
# the repository) and must hold NVSENTINEL_COMMIT of tools/versions.env (nvsentinel_source.py path
# finds and checks it). NVSentinel is a multi-module repository: each component is built in its own
# module directory, with its own go.mod, go.sum and `replace ../<module>` lines, dependencies from
# the Go module proxy. Nothing is written into the source tree. Output:
# $GPU_FI_CACHE/nvsentinel/<commit>-go<version>/, one build at a time per output (flock).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly
CACHE_ROOT=${GPU_FI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-resilience-fi}
log() { printf '[build-nvsentinel] %s\n' "$*" >&2; }

while IFS='=' read -r key value; do
  [ -n "${!key:-}" ] || export "$key=$value"
done < <(grep -E '^NVSENTINEL_[A-Z_]+=' "$root/tools/versions.env")
for key in NVSENTINEL_COMMIT NVSENTINEL_SOURCE_DIGEST; do
  [ -n "${!key:-}" ] || { log "$key is not set in tools/versions.env"; exit 1; }
done
# The checked source directory (NVSENTINEL_SRC, or how to get it when it is missing or different).
src=$(python3 "$here/nvsentinel_source.py" path)
go_version=$(go env GOVERSION); go_version=${go_version#go}
out="$CACHE_ROOT/nvsentinel/$NVSENTINEL_COMMIT-go$go_version"
# name:module directory:CGO_ENABLED:build tags (as in each component's Dockerfile or .ko.yaml)
components=(
  syslog-health-monitor:health-monitors/syslog-health-monitor:1:systemd
  platform-connectors:platform-connectors:0:
  fault-quarantine:fault-quarantine:0:
  node-drainer:node-drainer:0:
  fault-remediation:fault-remediation:0:
  labeler:labeler:0:
)
complete() {
  local c
  for c in "${components[@]}"; do [ -x "$out/${c%%:*}" ] || return 1; done
}
if complete; then log "cached: $out"; echo "$out"; exit 0; fi

# syslog-health-monitor reads the journal through go-systemd's sdjournal, which links libsystemd.
"$root/tools/debian-packages.sh" libsystemd-dev pkgconf

mkdir -p "$out"
exec 9>"$out.lock"
flock 9
if complete; then log "cached: $out"; echo "$out"; exit 0; fi
ldflags="-s -w -X main.version=${NVSENTINEL_COMMIT:0:12} -X main.commit=$NVSENTINEL_COMMIT"
for c in "${components[@]}"; do
  IFS=: read -r name dir cgo tags <<<"$c"
  [ -x "$out/$name" ] && continue
  log "building $name (from $dir)"
  t0=$(date +%s)
  (cd "$src/$dir" && CGO_ENABLED=$cgo nice -n 10 go build -trimpath -tags "$tags" -ldflags "$ldflags" \
     -o "$out/$name.tmp" .)
  mv "$out/$name.tmp" "$out/$name"
  log "built $name in $(( $(date +%s) - t0 ))s"
done
log "built into $out"
echo "$out"
