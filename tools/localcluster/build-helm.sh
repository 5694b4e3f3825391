#!/usr/bin/env bash
# Build Helm from its Go module (helm.sh/helm/v4 at HELM_VERSION from tools/versions.env; the
# environment may override it) and cache it outside the repo. Prints the binary's path.
# Helm renders NVSentinel's chart for the local control plane (tools/localcluster/nvsentinel.py).
set -euo pipefail

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
CACHE_ROOT=${GPU_FI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-resilience-fi}
log() { printf '[build-helm] %s\n' "$*" >&2; }

go_version=$(go env GOVERSION); go_version=${go_version#go}
[ -n "${HELM_VERSION:-}" ] || HELM_VERSION=$(sed -n 's/^HELM_VERSION=//p' "$(dirname "$0")/../versions.env")
[ -n "$HELM_VERSION" ] || { log "HELM_VERSION is not set in tools/versions.env"; exit 1; }
out="$CACHE_ROOT/bin/helm-$HELM_VERSION-go$go_version"
[ -x "$out/helm" ] && { echo "$out/helm"; exit 0; }

mkdir -p "$out"
# One build per version at a time: parallel callers wait here, then find it cached.
exec 9>"$out.lock"
flock 9
[ -x "$out/helm" ] && { echo "$out/helm"; exit 0; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
log "building helm $HELM_VERSION"
# A wrapper module, as for etcd and KWOK in build-binaries.sh: the pinned version, built as released.
printf 'module localcluster/helm\ngo %s\nrequire helm.sh/helm/v4 %s\n' "$go_version" "$HELM_VERSION" >"$work/go.mod"
echo 'package tools' >"$work/tools.go"
(cd "$work" && nice -n 10 go build -trimpath \
   -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
   -o "$out/helm.tmp" helm.sh/helm/v4/cmd/helm)
mv "$out/helm.tmp" "$out/helm"
log "built $out/helm"
echo "$out/helm"
