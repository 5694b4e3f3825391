#!/usr/bin/env bash
# The main job on the local control plane, from a fresh machine: set-up, cluster, the detection
# stack and a demo GPU workload, then the drill (default playbooks/xid79_e2e.yml). Reports go to
# build/reports (FAULT_DRILL_REPORT_DIR). The cluster is brought down afterwards unless KEEP_CLUSTER=1.
#
# DETECTOR=gpu_healthcheck (default): the collection's health agent detects. DETECTOR=nvsentinel:
# NVIDIA NVSentinel, built from source and deployed by its chart (tools/local-cluster up
# --nvsentinel), in stage NVSENTINEL_STAGE (full, the default: it cordons, drains and remediates;
# dry-run; monitor), and the drill expects that stage.
#
#   tools/e2e.sh                              # the XID 79 drill
#   DETECTOR=nvsentinel tools/e2e.sh          # the same against NVSentinel
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
detector=${DETECTOR:-gpu_healthcheck}
stage=${NVSENTINEL_STAGE:-full}
case "$detector" in
  gpu_healthcheck) cluster=() ;;
  nvsentinel) cluster=(--nvsentinel --nvsentinel-stage "$stage") ;;
  *) echo "tools/e2e.sh: DETECTOR must be gpu_healthcheck or nvsentinel, not $detector" >&2; exit 2 ;;
esac
if [ "${KEEP_CLUSTER:-0}" != 1 ]; then trap 'tools/local-cluster down' EXIT; fi
timed() {  # timed NAME command...: run, and keep its wall time for the summary
  local name=$1 t0; shift
  printf '\n=== %s ===\n' "$name"
  t0=$(date +%s%N)
  "$@"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  times+=("$(printf '%-16s %4d.%01d s' "$name" $((ms / 1000)) $((ms % 1000 / 100)))")
}
times=()
timed cluster tools/local-cluster up --nodes "${NODES:-3}" "${cluster[@]}" >/dev/null
eval "$(tools/local-cluster env)"
export FAULT_DRILL_REPORT_DIR=${FAULT_DRILL_REPORT_DIR:-$root/build/reports}
vars=(-e @tools/localcluster/drill-vars.yml -e fault_scenario_detector="$detector")
if [ "$detector" = nvsentinel ]; then
  # NVSentinel's node-drainer drains where it acts (stage full); elsewhere the drill moves the workload.
  vars+=(-e fault_scenario_nvsentinel_stage="$stage" -e fault_scenario_drain="$([ "$stage" = full ] && echo detector || echo own)")
fi

timed smoke ansible-playbook playbooks/smoke.yml
timed fault-agent ansible-playbook playbooks/deploy_agent.yml "${vars[@]}"
if [ "$detector" = gpu_healthcheck ]; then
  timed health-agent ansible-playbook playbooks/healthcheck.yml "${vars[@]}"
fi
timed demo-workload ansible-playbook playbooks/demo_workload.yml "${vars[@]}"
timed "$(basename "$playbook" .yml)" ansible-playbook "$playbook" "${vars[@]}" "$@"
printf '\n=== %s ===\n' summary
printf '%s\n' "${times[@]}"
echo "reports: $FAULT_DRILL_REPORT_DIR"
