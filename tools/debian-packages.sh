#!/usr/bin/env bash
# Install the named Debian packages that are missing (as root; `apt-get update` once, only when
# something is missing). The packages come from the machine's Debian stable release, whose updates
# carry security fixes only: a package name that includes its major version (postgresql-15) pins it.
#
#   tools/debian-packages.sh shellcheck postgresql-15 ...
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "tools/debian-packages.sh: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "tools/debian-packages.sh: installing ${missing[*]}" >&2
# One installer at a time on the machine: parallel test stages queue here.
exec 9>/var/lib/apt/lists/gpu-resilience-fi.lock
flock 9
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
