#!/usr/bin/env bash
# Make this repository loadable as the collection gpu_resilience.fault_injection.
#
#   tools/collection-tree.sh
#       Links build/collections/ansible_collections/gpu_resilience/fault_injection to the repo
#       root (idempotent). Use ANSIBLE_COLLECTIONS_PATH=build/collections for ansible-playbook,
#       ansible-lint, molecule and pytest: edits in the repo are seen at once.
#   tools/collection-tree.sh --copy DEST
#       Writes a real copy of the tracked and untracked-but-not-ignored files to
#       DEST/ansible_collections/gpu_resilience/fault_injection, replacing any previous copy.
#       ansible-test needs this: it rejects a collection reached through a symlink. The copy is
#       a git work tree of its own (nothing committed), so ansible-test lists its files.
#
# Prints the collection directory on stdout.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
namespace=gpu_resilience
name=fault_injection

die() { echo "tools/collection-tree.sh: $*" >&2; exit 1; }

case "${1:-}" in
  "")
    parent="$root/build/collections/ansible_collections/$namespace"
    link="$parent/$name"
    mkdir -p "$parent"
    if [ -L "$link" ]; then
      [ "$(readlink "$link")" = "$root" ] || ln -sfn "$root" "$link"
    elif [ -e "$link" ]; then
      die "$link exists and is not a symlink; remove it"
    else
      ln -s "$root" "$link"
    fi
    echo "$link"
    ;;
  --copy)
    if [ $# -ne 2 ] || [ -z "$2" ]; then die "usage: $0 [--copy DEST]"; fi
    mkdir -p "$2"
    dest=$(cd "$2" && pwd)
    # A copy inside the repository would be picked up by the next copy unless git ignores it.
    case "$dest/" in
      "$root/build/"*) ;;
      "$root/"*) die "DEST inside the repository must be under build/ (got $dest)" ;;
    esac
    target="$dest/ansible_collections/$namespace/$name"
    rm -rf "$target"
    mkdir -p "$target"
    # Only what git would ship: tracked files plus new files that are not ignored; tracked files
    # already deleted from the working tree are skipped.
    (
      cd "$root"
      git ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do
          if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
        done |
        tar --null --no-recursion -T - -cf - | tar -xf - -C "$target"
    ) || die "copying the collection to $target failed"
    # Make the copy its own git work tree. Otherwise tools that list files through an enclosing
    # repository (ansible-test does) would find this repository, where build/ is ignored, and
    # see no files at all.
    git -C "$target" init -q || die "git init in $target failed"
    echo "$target"
    ;;
  -h|--help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    die "usage: $0 [--copy DEST]"
    ;;
esac
