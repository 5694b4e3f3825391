#!/usr/bin/env bash
# The main job on the local control plane, from a fresh machine: set-up, cluster, the detection
# stack and a demo GPU workload, then the drill (default playbooks/xid79_e2e.yml). Reports go to
# build/reports (FAULT_DRILL_REPORT_DIR). The cluster is brought down afterwards unless KEEP_CLUSTER=1.
#
#   tools/e2e.sh                              # the XID 79 drill
#   tools/e2e.sh playbooks/all_xids.yml -e all_xids_node=gpu-node-1
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
playbook=${1:-playbooks/xid79_e2e.yml}
shift || true
VENV=$(tools/venv.sh)
export PATH="$VENV/bin:$PATH"
tools/collection-tree.sh >/dev/null
export ANSIBLE_COLLECTIONS_PATH="$root/build/collections"
LOCALCLUSTER_BIN_DIR=$(tools/localcluster/build-binaries.sh)
export LOCALCLUSTER_BIN_DIR
if [ "${KEEP_CLUSTER:-0}" != 1 ]; then trap 'tools/local-cluster down' EXIT; fi
tools/local-cluster up --nodes "${NODES:-3}" >/dev/null
eval "$(tools/local-cluster env)"
export FAULT_DRILL_REPORT_DIR=${FAULT_DRILL_REPORT_DIR:-$root/build/reports}
vars=(-e @tools/localcluster/drill-vars.yml)

step() { printf '\n=== %s ===\n' "$*"; }
timed() {  # timed NAME command...: run, and keep its wall time for the summary
  local name=$1 t0; shift
  step "$name"
  t0=$(date +%s%N)
  "$@"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  times+=("$(printf '%-16s %4d.%01d s' "$name" $((ms / 1000)) $((ms % 1000 / 100)))")
}
times=()
timed smoke ansible-playbook playbooks/smoke.yml
timed fault-agent ansible-playbook playbooks/deploy_agent.yml "${vars[@]}"
timed health-agent ansible-playbook playbooks/healthcheck.yml "${vars[@]}"
timed demo-workload ansible-playbook playbooks/demo_workload.yml "${vars[@]}"
timed "$(basename "$playbook" .yml)" ansible-playbook "$playbook" "${vars[@]}" "$@"
step summary
printf '%s\n' "${times[@]}"
echo "reports: $FAULT_DRILL_REPORT_DIR"
