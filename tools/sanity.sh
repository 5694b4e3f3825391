#!/usr/bin/env bash
# ansible-test sanity on a fresh copy of the collection (ansible-test rejects symlinked trees).
#
#   tools/sanity.sh [ansible-test sanity options...]   e.g. --test validate-modules
#
# The copy is build/sanity/ansible_collections/gpu_resilience/fault_injection (git-tracked and
# untracked-but-not-ignored files only), next to a copy of the virtualenv's kubernetes.core so
# the import test can resolve it. Each sanity test runs in its own virtualenv that ansible-test
# builds from PyPI on first use (--venv) and caches under ~/.ansible/test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fail() { echo "tools/sanity.sh: FAILED: $*" >&2; exit 1; }

VENV=$(tools/venv.sh) || fail "could not create the virtualenv (tools/venv.sh)"
# ansible-test's shellcheck test needs Debian's shellcheck (it reports "skipped" without it).
tools/debian-packages.sh shellcheck || fail "could not install shellcheck"
export PATH="$VENV/bin:$PATH"
pyver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

sanity_root="$root/build/sanity"
mkdir -p "$root/build"
# One run at a time: each run replaces the copy under build/sanity.
exec 9>"$root/build/sanity.lock"
flock 9
collection=$(tools/collection-tree.sh --copy "$sanity_root") || fail "could not copy the collection"

k8s_core=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/ansible_collections/kubernetes/core
[ -f "$k8s_core/MANIFEST.json" ] || fail "kubernetes.core not found at $k8s_core (is ansible in requirements.txt?)"
rm -rf "$sanity_root/ansible_collections/kubernetes/core"
mkdir -p "$sanity_root/ansible_collections/kubernetes"
cp -a "$k8s_core" "$sanity_root/ansible_collections/kubernetes/core"

# ansible-test bootstraps pip into each sanity virtualenv with a get-pip script that it would
# download from a host outside the package registries, caching it in ~/.ansible/test/cache. Put an
# equivalent script in the cache first, so nothing but PyPI is contacted: it installs the same pip
# version from its wheel, downloaded from PyPI.
pip_version=$("$VENV/bin/python" -c 'import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="'"$pyver"'"))["pip"])') ||
  fail "could not read the pip version ansible-test bootstraps"
pip_cache="$HOME/.ansible/test/cache"
get_pip="$pip_cache/get_pip_${pip_version//./_}.py"
if [ ! -f "$get_pip" ]; then
  wheel_dir="$pip_cache/pip-$pip_version-wheel"
  mkdir -p "$wheel_dir"
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$wheel_dir" "pip==$pip_version" ||
    fail "could not download pip $pip_version from PyPI"
  cat > "$get_pip.tmp" <<PY
# Stand-in for get-pip.py $pip_version, written by tools/sanity.sh of gpu_resilience.fault_injection:
# installs pip from the pip $pip_version wheel in $wheel_dir.
import glob
import os
import sys

wheel = glob.glob(os.path.join("$wheel_dir", "pip-$pip_version-*.whl"))[0]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall"] + args))
PY
  mv "$get_pip.tmp" "$get_pip"
fi

echo "tools/sanity.sh: ansible-test sanity in $collection (Python $pyver)" >&2
cd "$collection"
if ! ansible-test sanity --venv --python "$pyver" "$@"; then
  fail "ansible-test sanity reported errors (details above; the copy is in $collection)"
fi
echo "tools/sanity.sh: passed" >&2
