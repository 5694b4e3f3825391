"""Find the NVSentinel source tree and check that it is the pinned commit, before anything is built
from it. Every build from that source (build-nvsentinel.sh, tests/nvsentinel_compat/build.sh, the
lane in nvsentinel.py) goes through `path` / checked_source().

    nvsentinel_source.py path                       print the checked source directory: NVSENTINEL_SRC,
                                                    default ../shared/third_party/nvsentinel beside the
                                                    repository, against tools/versions.env's pins
    nvsentinel_source.py verify SRC COMMIT DIGEST   exit 0 if SRC holds that commit's build inputs
    nvsentinel_source.py digest SRC                 print SRC's digest (to pin a new commit)

The shared snapshot has no .git (documentation, demos and images were left out of it), so the
commit cannot be read from it. What is checked instead is the content of everything the build and
the deployment read (SOURCE_DIRS): each directory's git tree id, computed here from the files the
way git computes it (blob and tree objects, SHA-1), and one SHA-256 over the "<tree id> <dir>"
lines. On a git clone of https://github.com/NVIDIA/NVSentinel at the pinned commit the same ids
come out of `git rev-parse <commit>:<dir>`, so a clone and the snapshot are checked the same way;
a clone's HEAD is checked against the commit as well. Files ignored by git (build outputs left in a
clone) are not excluded: build from a clean tree.
"""
import hashlib
import os
import stat
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPSTREAM = "https://github.com/NVIDIA/NVSentinel.git"

# The Go modules built (build-nvsentinel.sh), the modules they replace with ../<dir>, and the chart.
SOURCE_DIRS = (
    "commons", "data-models", "store-client",
    "health-monitors/syslog-health-monitor", "platform-connectors", "fault-quarantine",
    "node-drainer", "fault-remediation", "labeler",
    "distros/kubernetes/nvsentinel",
)


def _object_id(kind, body):
    return hashlib.sha1(b"%s %d\0" % (kind, len(body)) + body).digest()


def tree_id(path):
    """Git's tree id of a directory (raw 20 bytes), or None when it holds no file (git keeps none)."""
    entries = []
    for name in os.listdir(path):
        if name == ".git":
            continue
        full = os.path.join(path, name)
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            mode, oid = b"120000", _object_id(b"blob", os.readlink(full).encode())
        elif stat.S_ISDIR(st.st_mode):
            mode, oid = b"40000", tree_id(full)
            if oid is None:
                continue
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                oid = _object_id(b"blob", f.read())
            mode = b"100755" if st.st_mode & stat.S_IXUSR else b"100644"
        else:
            continue
        # Git orders a tree's entries by name, a directory's name taken as ending in "/".
        key = name.encode() + (b"/" if mode == b"40000" else b"")
        entries.append((key, mode, name.encode(), oid))
    if not entries:
        return None
    entries.sort()
    return _object_id(b"tree", b"".join(mode + b" " + name + b"\0" + oid for _key, mode, name, oid in entries))


def tree_ids(src):
    ids = {}
    for d in SOURCE_DIRS:
        full = os.path.join(src, d)
        oid = tree_id(full) if os.path.isdir(full) else None
        ids[d] = oid.hex() if oid else "missing"
    return ids


def digest(ids):
    lines = "".join("%s %s\n" % (ids[d], d) for d in SOURCE_DIRS)
    return hashlib.sha256(lines.encode()).hexdigest()


def git_head(src):
    if not os.path.exists(os.path.join(src, ".git")):
        return None
    out = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip() if out.returncode == 0 else "unreadable (%s)" % out.stderr.strip()


def verify(src, commit, pinned):
    """The problems found (empty when src holds the pinned commit's build inputs)."""
    problems = []
    head = git_head(src)
    if head is not None and head != commit:
        problems.append("%s is a git checkout at %s, not the pinned commit %s" % (src, head, commit))
    ids = tree_ids(src)
    got = digest(ids)
    if got != pinned:
        problems.append("the build inputs in %s do not match NVSENTINEL_SOURCE_DIGEST: found %s, "
                        "pinned %s. Tree ids found (compare with `git rev-parse %s:<dir>`):\n%s"
                        % (src, got, pinned, commit[:12],
                           "\n".join("  %s %s" % (ids[d], d) for d in SOURCE_DIRS)))
    return problems


def versions():
    """tools/versions.env as a dict (an environment variable of the same name wins)."""
    pins = {}
    with open(os.path.join(ROOT, "tools", "versions.env"), encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and key.isupper() and not key.startswith("#"):
                pins[key] = os.environ.get(key) or value
    return pins


def source_dir():
    return os.path.abspath(os.environ.get("NVSENTINEL_SRC")
                           or os.path.join(ROOT, "..", "shared", "third_party", "nvsentinel"))


class SourceError(Exception):
    pass


def checked_source(pins=None):
    """The NVSentinel source directory, checked against the pins; SourceError says how to get it."""
    pins = pins or versions()
    src, commit = source_dir(), pins["NVSENTINEL_COMMIT"]
    if not os.path.isdir(src):
        raise SourceError(
            "no NVSentinel source at %s. Get the pinned commit and point NVSENTINEL_SRC at it:\n"
            "  git clone %s ~/src/nvsentinel\n  git -C ~/src/nvsentinel checkout --detach %s\n"
            "  export NVSENTINEL_SRC=~/src/nvsentinel" % (src, UPSTREAM, commit))
    problems = verify(src, commit, pins["NVSENTINEL_SOURCE_DIGEST"])
    if problems:
        raise SourceError("\n".join(problems + ["set NVSENTINEL_SRC to a clean checkout of %s" % commit]))
    return src


def main(argv):
    if argv == ["path"]:
        try:
            print(checked_source())
        except SourceError as e:
            print("nvsentinel_source: %s" % e, file=sys.stderr)
            return 1
        return 0
    if len(argv) == 4 and argv[0] == "verify":
        problems = verify(*argv[1:])
        for p in problems:
            print("nvsentinel_source: " + p, file=sys.stderr)
        return 1 if problems else 0
    if len(argv) == 2 and argv[0] == "digest":
        ids = tree_ids(argv[1])
        for d in SOURCE_DIRS:
            print("%s %s" % (ids[d], d), file=sys.stderr)
        print(digest(ids))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
