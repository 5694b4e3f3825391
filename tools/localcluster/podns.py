"""Namespaces of the local pod runner's image-mode pods (podrunner.py), set up as a container
runtime sets them up on a real node. Two commands, each given one JSON spec as its argument:

    podns.py sandbox SPEC   the pod's sandbox (kubelet's pause container): creates the pod's
                            network and UTS namespaces and holds them while it runs (`lo` up with
                            the pod's IP, hostname = pod name) and runs the pod's forwarders
    podns.py exec SPEC      one container: joins its pod's namespaces, unshares a mount namespace
                            (propagation private), bind-mounts the container's volumes at their
                            mountPaths, hides what it must not see, then execs the program (same pid)

    sandbox SPEC  {"podIP": "127.140.0.5", "hostname": "<pod name>",
                   "endpoints": ["127.0.0.1:26443"],  host services, reachable inside at the same address
                   "ports": [8080],                   containerPorts, reachable on the host at podIP:port
                   "readyFd": 3}                      gets "ready\\n" once everything listens
    exec SPEC     {"sandbox": {"pid": 123, "startTime": 456} or null (the host's network),
                   "mounts": [{"path": "/etc/config", "source": "/host/dir-or-file", "readOnly": true}],
                   "hide": ["/runner/state"],         covered by an empty read-only tmpfs
                   "staging": "/runner/state/pods/<pod>/rootfs",   an empty directory for this setup
                   "workingDir": "/", "argv": ["prog", "arg"]}     (the environment is this process's)

Mountpoints are created as runc creates them: inside a volume when the mountPath lies in one;
never on the host's own filesystem. A mountPath under a host directory that lacks it (e.g.
/nvsentinel/var/log) gets that directory replaced, in this mount namespace only, by a tmpfs
"skeleton" holding bind mounts of all its entries plus the new mountpoint; for the root directory
the skeleton becomes the container's root (chroot). Symlinks in mountPaths resolve inside the
container's root, as runc's securejoin does (/var/run -> /run).

Python 3.11 has no os.unshare/os.setns: the system calls go through ctypes. Runs as root.
"""
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # run with -I: no script dir
import forwarder  # noqa: E402  (sibling module)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # runc's default
EXIT_SETUP, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 128, 126, 127   # as runtimes report them


# --- pure parts --------------------------------------------------------------------------------

def path_parts(path):
    """The components of an absolute container path; ValueError for a relative one or ".."."""
    if not path.startswith("/"):
        raise ValueError("mountPath %r is not absolute" % path)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("mountPath %r contains '..'" % path)
    return parts


def mount_order(mounts):
    """Mounts parents first: by number of path components, stable otherwise (containerd's CRI
    sorts a container's mounts the same way), so /var/run is mounted before /var/run/secrets."""
    return sorted(mounts, key=lambda mount: len(path_parts(mount["path"])))


def resolve_in_root(root, path, max_links=40):
    """The host path of container path `path` when the container's / is `root`: symlinks are
    followed relative to root (an absolute target starts again at root), ".." stops at root.
    Components that do not exist are kept as given. Reads the filesystem; changes nothing."""
    todo = [part for part in path.split("/") if part not in ("", ".")]
    done, links = [], 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            links += 1
            if links > max_links:
                raise OSError(40, "too many levels of symbolic links", path)   # ELOOP
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def nearest_existing(path):
    """The longest existing prefix directory of a host path."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def is_within(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def find_program(name, path_var):
    """argv[0] as execve needs it: as given when it has a "/", else looked up in PATH."""
    if "/" in name:
        return name
    return shutil.which(name, path=path_var or DEFAULT_PATH)


# --- system calls ------------------------------------------------------------------------------

def _libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


LIBC = _libc()


def _call(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "%s: %s" % (what, os.strerror(errno)))


def unshare(flags):
    _call(LIBC.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd, nstype):
    _call(LIBC.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name):
    data = name.encode()
    _call(LIBC.sethostname(ctypes.c_char_p(data), ctypes.c_size_t(len(data))), "sethostname")


def _bytes(text):
    return None if text is None else os.fsencode(text)


def mount(source, target, fstype, flags, data=None):
    _call(LIBC.mount(_bytes(source), _bytes(target), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data)),
          "mount %s on %s" % (source, target))


def proc_start_time(pid):
    """Kernel start time of a live pid (None if gone or a zombie): tells a recorded process from
    a later one that reused its pid."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


# --- sandbox -----------------------------------------------------------------------------------

def run_sandbox(spec):
    """Create the pod's namespaces, start the forwarders, report ready, hold until SIGTERM."""
    # Threads inherit this mask, so the signals reach the sigwait() at the end and nothing else.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    pod_ip = spec["podIP"]
    forwarder.parse_endpoint("%s:1" % pod_ip)            # a pod IP on loopback, or ValueError
    endpoints = [forwarder.parse_endpoint(e) for e in spec.get("endpoints") or []]
    # Host side, created before leaving the host's network namespace: the published ports.
    published = [(port, forwarder.listen((pod_ip, int(port)))) for port in spec.get("ports") or []]
    host_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    unshare(CLONE_NEWNET | CLONE_NEWUTS)
    sethostname(spec["hostname"])
    ip = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "ip"
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    subprocess.run([ip, "address", "add", pod_ip + "/32", "dev", "lo"], check=True)
    inside = [(endpoint, forwarder.listen(endpoint)) for endpoint in endpoints]
    for port, listener in published:
        # This thread is in the pod's namespace now: connections to the pod are made in it.
        forwarder.Forward(listener, forwarder.connector((pod_ip, int(port)))).start()
    failed = []

    def host_side():
        # This thread goes back to the host's namespace; the accept threads it starts inherit it,
        # so the sockets they create to reach each endpoint are on the host.
        try:
            setns(host_ns, CLONE_NEWNET)
            for endpoint, listener in inside:
                forwarder.Forward(listener, forwarder.connector(endpoint)).start()
        except OSError as e:
            failed.append(e)

    thread = threading.Thread(target=host_side, daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    os.close(host_ns)
    print("podns sandbox: pod %s, hostname %s, endpoints %s, ports %s" % (
        pod_ip, spec["hostname"], spec.get("endpoints"), spec.get("ports")), file=sys.stderr, flush=True)
    os.write(spec["readyFd"], b"ready\n")
    os.close(spec["readyFd"])
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0


# --- container ---------------------------------------------------------------------------------

def join_sandbox(sandbox):
    """Enter the network and UTS namespaces of the pod's sandbox process."""
    pid, start = sandbox["pid"], sandbox["startTime"]
    fds = [os.open("/proc/%d/ns/%s" % (pid, ns), os.O_RDONLY | os.O_CLOEXEC) for ns in ("net", "uts")]
    # Checked after opening: the descriptors name the namespaces of the process that was checked.
    if proc_start_time(pid) != start:
        raise OSError(3, "the pod's sandbox (pid %d) is gone" % pid)   # ESRCH
    for fd, nstype in zip(fds, (CLONE_NEWNET, CLONE_NEWUTS)):
        setns(fd, nstype)
        os.close(fd)


class Rootfs:
    """The container's filesystem view, built in a fresh mount namespace. `root` is the host path
    of the container's / (the host's / until a skeleton replaces it)."""

    def __init__(self, staging):
        mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=16m")
        # Held by descriptor: a volume mounted over an ancestor of `staging` (an emptyDir at
        # /work, say) must not hide it from the skeletons made after.
        self.staging = fd_path(staging)
        self.root = "/"
        self.ours = []          # host paths of our binds and of what we created: may create inside
        self.skeletons = set()  # host paths of skeleton directories: may create entries directly
        self.readonly = []
        self.count = 0

    def host(self, path):
        return resolve_in_root(self.root, path)

    def _may_create_in(self, directory):
        return directory in self.skeletons or any(is_within(directory, own) for own in self.ours)

    def _skeleton(self, directory):
        """Replace `directory` (in this namespace) with a tmpfs copy of it: the same entries,
        each a bind mount of the original (symlinks copied), and room for new mountpoints."""
        self.count += 1
        skel = os.path.join(self.staging, "s%d" % self.count)
        os.mkdir(skel)
        info = os.stat(directory)
        os.chmod(skel, stat.S_IMODE(info.st_mode))
        os.chown(skel, info.st_uid, info.st_gid)
        for name in os.listdir(directory):
            src, dst = os.path.join(directory, name), os.path.join(skel, name)
            mode = os.lstat(src).st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), dst)
                continue
            if stat.S_ISDIR(mode):
                os.mkdir(dst)
            else:
                open(dst, "x").close()   # noqa: SIM115  (a file to bind a file, socket or device on)
            mount(src, dst, None, MS_BIND | MS_REC)
        if directory == self.root:
            # The new root (entered with chroot at the end) holds copies of the mounts made so
            # far (MS_REC): what was recorded under the old root is now under the new one.
            def rerooted(paths):
                return [os.path.join(skel, os.path.relpath(path, directory)) for path in paths]
            self.ours, self.readonly = rerooted(self.ours), rerooted(self.readonly)
            self.skeletons = set(rerooted(self.skeletons)) | {skel}
            self.root = skel
        else:
            mount(skel, directory, None, MS_BIND | MS_REC)
            self.skeletons.add(directory)

    def ensure(self, path, is_dir):
        """The host path of container path `path`, created (directory or empty file) if missing."""
        target = self.host(path)
        if os.path.lexists(target):
            return target
        parent = nearest_existing(os.path.dirname(target))
        if not self._may_create_in(parent):
            self._skeleton(parent)
            target = self.host(path)
            parent = nearest_existing(os.path.dirname(target))
        first = target
        while os.path.dirname(first) != parent:
            first = os.path.dirname(first)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if is_dir:
            os.mkdir(target, 0o755)
        else:
            open(target, "x").close()    # noqa: SIM115
        if not any(is_within(parent, own) for own in self.ours):
            self.ours.append(first)      # created in a skeleton's tmpfs: ours from here down
        return target

    def bind(self, path, source, read_only):
        target = self.ensure(path, os.path.isdir(source))
        mount(source, target, None, MS_BIND | MS_REC)
        self.ours.append(target)
        if read_only:
            self.readonly.append(target)

    def hide(self, path):
        target = self.host(path)
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=4k")

    def finish(self, working_dir):
        """Read-only remounts (after every mountpoint was created), then enter the root."""
        for target in reversed(self.readonly):
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        if self.root != "/":
            os.chdir(self.root)
            os.chroot(".")
        os.chdir(working_dir)


def fd_path(path):
    """A /proc/self/fd path for `path`, opened now (O_PATH, closed on exec): it keeps naming
    that file or directory whatever is mounted over its path later."""
    return "/proc/self/fd/%d" % os.open(path, os.O_PATH | os.O_CLOEXEC)


def run_exec(spec):
    """Become the container: namespaces, mounts, then execve (this pid, the given environment)."""
    try:
        if spec.get("sandbox"):
            join_sandbox(spec["sandbox"])
        unshare(CLONE_NEWNS)
        mount(None, "/", None, MS_REC | MS_PRIVATE)   # nothing we mount propagates to the host
        # Sources are opened before the first mount (in this namespace: mount(2) only binds from
        # the caller's own), as a runtime resolves them on the host, outside the container's root.
        mounts = mount_order(spec.get("mounts") or [])
        sources = [fd_path(item["source"]) for item in mounts]
        rootfs = Rootfs(spec["staging"])
        for item, source in zip(mounts, sources):
            try:
                rootfs.bind(item["path"], source, item.get("readOnly", False))
            except OSError as e:
                raise OSError(e.errno, "volumeMount %s from %s: %s" % (item["path"], item["source"], e)) from None
        working_dir = spec.get("workingDir") or "/"
        rootfs.ensure(working_dir, True)
        for path in spec.get("hide") or []:
            rootfs.hide(path)
        rootfs.finish(working_dir)
    except (OSError, ValueError) as e:
        print("podns exec: container setup failed: %s" % e, file=sys.stderr, flush=True)
        return EXIT_SETUP
    argv = spec["argv"]
    program = find_program(argv[0], os.environ.get("PATH"))
    if program is None:
        print("podns exec: %r: executable file not found in $PATH" % argv[0], file=sys.stderr, flush=True)
        return EXIT_NOT_FOUND
    try:
        os.execve(program, argv, os.environ)
    except OSError as e:
        print("podns exec: %s: %s" % (program, e), file=sys.stderr, flush=True)
        return EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else EXIT_NOT_EXECUTABLE


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("sandbox", "exec"):
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    return run_sandbox(spec) if argv[0] == "sandbox" else run_exec(spec)


if __name__ == "__main__":
    sys.exit(main())
