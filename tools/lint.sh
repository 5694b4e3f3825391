#!/usr/bin/env bash
# Lint: ansible-lint (production profile, offline; includes yamllint) and antsibull-changelog lint.
#
#   tools/lint.sh [ansible-lint options...]
#
# The collection is loaded through build/collections (tools/collection-tree.sh), kubernetes.core
# from the virtualenv's `ansible` package. Both linters always run; the exit status is non-zero
# if either fails.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1

VENV=$(tools/venv.sh) || { echo "tools/lint.sh: FAILED: could not create the virtualenv (tools/venv.sh)" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"
tools/collection-tree.sh >/dev/null || { echo "tools/lint.sh: FAILED: tools/collection-tree.sh" >&2; exit 1; }
export ANSIBLE_COLLECTIONS_PATH="$root/build/collections"

failed=()
echo "tools/lint.sh: ansible-lint" >&2
ansible-lint --profile production --offline "$@" || failed+=(ansible-lint)
echo "tools/lint.sh: antsibull-changelog lint" >&2
antsibull-changelog lint || failed+=("antsibull-changelog lint")

if [ ${#failed[@]} -gt 0 ]; then
  echo "tools/lint.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "tools/lint.sh: passed" >&2
