#!/usr/bin/env bash
# Build the local control plane's binaries from their Go modules and cache them outside the repo.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler  <- k8s.io/kubernetes
#   etcd                                                     <- go.etcd.io/etcd/server/v3
#   kwok                                                     <- sigs.k8s.io/kwok
#
# k8s.io/kubernetes cannot be required as-is: its go.mod points every k8s.io staging module at
# ./staging/src/... . A small wrapper module requires it and replaces each staging module with the
# matching published v0.<minor>.<patch> release. Versions come from tools/versions.env (K8S_VERSION,
# ETCD_VERSION, KWOK_VERSION; the environment may override them). Output: one directory per version
# set, printed on stdout.
set -euo pipefail

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
CACHE_ROOT=${GPU_FI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-resilience-fi}
log() { printf '[build-binaries] %s\n' "$*" >&2; }

go_version=$(go env GOVERSION); go_version=${go_version#go}

# The pinned versions; a variable already set in the environment wins.
while IFS='=' read -r key value; do
  [ -n "${!key:-}" ] || export "$key=$value"
done < <(grep -E '^[A-Z0-9_]+=' "$(dirname "$0")/../versions.env")
for key in K8S_VERSION ETCD_VERSION KWOK_VERSION; do
  [ -n "${!key:-}" ] || { log "$key is not set in tools/versions.env"; exit 1; }
done
out="$CACHE_ROOT/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-go$go_version"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

complete=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || complete=0; done
[ -s "$out/kwok-stages.yaml" ] || complete=0
if [ "$complete" = 1 ]; then log "cached: $out"; echo "$out"; exit 0; fi

mkdir -p "$out"
# One build per version set at a time: parallel callers wait here, then find it cached.
exec 9>"$out.lock"
flock 9
complete=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || complete=0; done
[ -s "$out/kwok-stages.yaml" ] || complete=0
if [ "$complete" = 1 ]; then log "cached: $out"; echo "$out"; exit 0; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# --- Kubernetes --------------------------------------------------------------------------------
if ! [ -x "$out/kube-apiserver" ] || ! [ -x "$out/kube-controller-manager" ] || ! [ -x "$out/kube-scheduler" ]; then
  log "building Kubernetes $K8S_VERSION"
  staging=v0.${K8S_VERSION#v1.}
  k8smod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  mkdir "$work/k8s"
  {
    echo "module localcluster/kubernetes"
    echo "go $(sed -n 's/^go //p' "$k8smod")"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "replace ("
    sed -nE 's#^[[:space:]]*(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+$#\t\1 => \1 '"$staging"'#p' "$k8smod"
    echo ")"
  } >"$work/k8s/go.mod"
  echo 'package tools' >"$work/k8s/tools.go"
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  (cd "$work/k8s" && go mod download k8s.io/kubernetes \
    && go build -trimpath -ldflags "$ldflags" -o "$out/" \
         k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
         k8s.io/kubernetes/cmd/kube-scheduler)
fi

# --- etcd and KWOK: plain modules, built through a wrapper so their own replace lines don't apply --
build_simple() { # name module version package
  local name=$1 mod=$2 ver=$3 pkg=$4
  [ -x "$out/$name" ] && return 0
  log "building $name $ver"
  mkdir -p "$work/$name"
  printf 'module localcluster/%s\ngo %s\nrequire %s %s\n' "$name" "$go_version" "$mod" "$ver" >"$work/$name/go.mod"
  echo 'package tools' >"$work/$name/tools.go"
  (cd "$work/$name" && go build -trimpath -ldflags "-s -w" -o "$out/$name" "$pkg")
}
build_simple etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
build_simple kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok

# KWOK run standalone needs its Stage objects (node init, lease heartbeat, pod ready/complete/delete).
# Take the ones KWOK's own cluster tool uses, from the same module version, rather than keeping a copy.
if ! [ -s "$out/kwok-stages.yaml" ]; then
  kwokdir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$kwokdir/kustomize/stage/$f"
  done >"$out/kwok-stages.yaml.tmp"
  mv "$out/kwok-stages.yaml.tmp" "$out/kwok-stages.yaml"
fi

for b in "${bins[@]}"; do [ -x "$out/$b" ] || { log "missing $out/$b"; exit 1; }; done
log "built into $out"
echo "$out"
