#!/usr/bin/env bash
# Every test of the collection, from a fresh machine: installs what is missing (cached virtualenv,
# cached control-plane binaries), brings up the local control plane, runs each stage, brings it down.
#
#   tools/test.sh                 all stages
#   tools/test.sh unit lint ...   only the named stages (unit integration molecule nvsentinel sanity lint)
#
# The nvsentinel stage brings up a cluster of its own with NVIDIA NVSentinel (tests/nvsentinel/conftest.py).
#
# Every stage runs even if an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
stages=("$@"); [ ${#stages[@]} -gt 0 ] || stages=(unit integration molecule nvsentinel sanity lint)

step() { printf '\n=== %s ===\n' "$*"; }
t_start=$(date +%s)
step "setup: Python virtualenv"
VENV=$(tools/venv.sh) || exit 1
export PATH="$VENV/bin:$PATH"
step "setup: collection tree"
tools/collection-tree.sh >/dev/null || exit 1
export ANSIBLE_COLLECTIONS_PATH="$root/build/collections"

needs_cluster=0
for s in "${stages[@]}"; do case $s in integration|molecule) needs_cluster=1;; esac; done
if [ $needs_cluster = 1 ]; then
  step "setup: control-plane binaries (built once per version, then cached)"
  LOCALCLUSTER_BIN_DIR=$(tools/localcluster/build-binaries.sh) || exit 1
  export LOCALCLUSTER_BIN_DIR
  step "setup: local control plane"
  tools/local-cluster up --nodes 3 --journal >/dev/null || { tools/local-cluster down; exit 1; }
  eval "$(tools/local-cluster env)"
  trap 'step "teardown: local control plane"; tools/local-cluster down' EXIT
fi
t_setup=$(( $(date +%s) - t_start ))

declare -A result seconds
run_stage() {
  local name=$1; shift
  step "stage: $name"
  local t0 rc
  t0=$(date +%s)
  "$@"; rc=$?
  seconds[$name]=$(( $(date +%s) - t0 ))
  if [ $rc = 0 ]; then result[$name]=passed; else result[$name]="FAILED (exit $rc)"; fi
}

for s in "${stages[@]}"; do
  case $s in
    unit)        run_stage unit python -m pytest -q --durations=15 tests/unit ;;
    integration) run_stage integration python -m pytest -q --durations=30 tests/integration ;;
    molecule)    run_stage molecule env LOCALCLUSTER_KEEP=1 molecule test -s default ;;
    nvsentinel)  run_stage nvsentinel python -m pytest -q -s --durations=15 tests/nvsentinel ;;
    sanity)      run_stage sanity tools/sanity.sh ;;
    lint)        run_stage lint tools/lint.sh ;;
    *) echo "unknown stage: $s (unit integration molecule nvsentinel sanity lint)"; exit 2 ;;
  esac
done

step "summary"
printf '%-12s %s\n' setup "${t_setup}s"
passed=0; failed=0
for s in "${stages[@]}"; do
  printf '%-12s %-18s %ss\n' "$s" "${result[$s]}" "${seconds[$s]}"
  if [ "${result[$s]}" = passed ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
printf 'total        %ss\n' $(( $(date +%s) - t_start ))
echo "stages: $passed passed, $failed failed"
[ $failed = 0 ]
