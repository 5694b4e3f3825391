#!/usr/bin/env bash
# The main job on the local control plane, from a fresh machine: set-up, cluster, playbook.
# The cluster is brought down afterwards unless KEEP_CLUSTER=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
playbook=${1:-playbooks/smoke.yml}
VENV=$(tools/venv.sh)
export PATH="$VENV/bin:$PATH"
tools/collection-tree.sh >/dev/null
export ANSIBLE_COLLECTIONS_PATH="$root/build/collections"
LOCALCLUSTER_BIN_DIR=$(tools/localcluster/build-binaries.sh)
export LOCALCLUSTER_BIN_DIR
if [ "${KEEP_CLUSTER:-0}" != 1 ]; then trap 'tools/local-cluster down' EXIT; fi
tools/local-cluster up --nodes "${NODES:-3}" >/dev/null
eval "$(tools/local-cluster env)"
ansible-playbook "$playbook"
