"""Unit tests of the image-mode pods' namespaces (tools/localcluster/podns.py): the pure path
rules, then the two commands run for real (as root, no cluster): `exec` in a mount namespace of
its own, `sandbox` with its network namespace and forwarders."""
import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[3] / "tools" / "localcluster" / "podns.py"
sys.path.insert(0, str(TOOL.parent))
_spec = importlib.util.spec_from_file_location("podns", TOOL)
ns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ns)


# --- pure rules --------------------------------------------------------------------------------

@pytest.mark.parametrize("path, parts", [
    ("/", []), ("/var/run/", ["var", "run"]), ("/etc//config/./x", ["etc", "config", "x"]),
])
def test_path_parts(path, parts):
    assert ns.path_parts(path) == parts


@pytest.mark.parametrize("path", ["relative/path", "/etc/../root", ""])
def test_path_parts_refuses(path):
    with pytest.raises(ValueError):
        ns.path_parts(path)


def test_mount_order_puts_parents_first_and_keeps_the_rest_in_order():
    mounts = [{"path": p} for p in ("/var/run/secrets/kubernetes.io/serviceaccount", "/etc/b",
                                    "/var/run/", "/etc/a", "/nvsentinel/var/log", "/var/lib/nvsentinel")]
    assert [m["path"] for m in ns.mount_order(mounts)] == [
        "/etc/b", "/var/run/", "/etc/a", "/nvsentinel/var/log", "/var/lib/nvsentinel",
        "/var/run/secrets/kubernetes.io/serviceaccount"]


def test_resolve_in_root_follows_links_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")               # absolute: starts again at root
    (root / "var" / "lock").symlink_to("../run/lock")       # relative
    (root / "loop").symlink_to("loop")
    r = str(root)
    assert ns.resolve_in_root(r, "/var/run/secrets") == r + "/run/secrets"
    assert ns.resolve_in_root(r, "/var/lock/x") == r + "/run/lock/x"
    assert ns.resolve_in_root(r, "/../../etc") == r + "/etc"    # ".." stops at the root
    assert ns.resolve_in_root(r, "/missing/dir") == r + "/missing/dir"
    assert ns.resolve_in_root("/", "/") == "/"
    with pytest.raises(OSError, match="symbolic links"):
        ns.resolve_in_root(r, "/loop/x")


def test_find_program(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert ns.find_program("tool", str(tmp_path)) == str(tool)
    assert ns.find_program("/abs/prog", "") == "/abs/prog"
    assert ns.find_program("./rel", "") == "./rel"
    assert ns.find_program("no-such-tool-here", str(tmp_path)) is None
    assert ns.find_program("sh", "") == shutil_which("sh")     # empty PATH: runc's default


def shutil_which(name):
    import shutil
    return shutil.which(name, path=ns.DEFAULT_PATH)


# --- exec, for real ----------------------------------------------------------------------------

def mount_table():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" - ")[0].split(" ", 4)[4] for line in f)


@pytest.fixture()
def pod(tmp_path):
    """Volumes of a pretend pod, a state directory to hide and an empty staging directory."""
    state = tmp_path / "state"
    (state / "nodes" / "other-node" / "host").mkdir(parents=True)
    (state / "pods" / "p" / "rootfs").mkdir(parents=True)
    config = state / "pods" / "p" / "volumes" / "config"
    config.mkdir(parents=True)
    (config / "config.json").write_text('{"a": 1}')
    host = state / "nodes" / "this-node" / "host"
    (host / "var" / "log" / "journal").mkdir(parents=True)
    (host / "var" / "run" / "nvsentinel").mkdir(parents=True)
    boot = host / "proc" / "sys" / "kernel" / "random"
    boot.mkdir(parents=True)
    (boot / "boot_id").write_text("0b6c1a8e-8f0e-4a5e-9a53-1d5a6c2f0e77\n")
    return {"state": state, "config": config, "host": host, "staging": state / "pods" / "p" / "rootfs"}


def run_exec(pod, mounts, script, working_dir="/", env=None):
    # A path that no host has at its root: its mountpoints need the root skeleton.
    spec = {"sandbox": None, "mounts": mounts, "hide": [str(pod["state"])],
            "staging": str(pod["staging"]), "workingDir": working_dir, "argv": ["sh", "-c", script]}
    return subprocess.run([sys.executable, "-I", "-S", str(TOOL), "exec", json.dumps(spec)],
                          env=env or {"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          timeout=30, check=False)


def test_exec_puts_volumes_at_their_mount_paths_and_leaks_no_mount(pod):
    top = "/podns-test-" + uuid.uuid4().hex[:8]
    host = pod["host"]
    mounts = [
        {"path": "/var/run/", "source": str(host / "var" / "run" / "nvsentinel")},
        {"path": top + "/var/log", "source": str(host / "var" / "log"), "readOnly": True},
        {"path": "/etc/podns-test/config.json", "source": str(pod["config"] / "config.json"),
         "readOnly": True},                                                  # a subPath file
        {"path": "/var/run/secrets/kubernetes.io/serviceaccount", "source": str(pod["config"]),
         "readOnly": True},
        {"path": "/proc/sys/kernel/random/boot_id",
         "source": str(host / "proc" / "sys" / "kernel" / "random" / "boot_id"), "readOnly": True},
    ]
    before = mount_table()
    script = ("set -e; (cd %(top)s/var/log; ls -d journal); cat /etc/podns-test/config.json; echo;"
              "cat /var/run/secrets/kubernetes.io/serviceaccount/config.json; echo;"
              "cat /proc/sys/kernel/random/boot_id; touch /run/written-by-pod;"
              "touch %(top)s/var/log/x 2>/dev/null && echo WRITABLE || echo read-only;"
              "ls -A %(state)s | wc -l; ls /usr/bin/env; pwd" % {"top": top, "state": pod["state"]})
    result = run_exec(pod, mounts, script, working_dir=top)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == [
        "journal", '{"a": 1}', '{"a": 1}', "0b6c1a8e-8f0e-4a5e-9a53-1d5a6c2f0e77", "read-only",
        "0",                     # the runner's state (other nodes, other pods) is hidden
        "/usr/bin/env", top, ""]                             # the host's own files stay visible
    # The container wrote through its hostPath; its mountpoints were made inside the volume, as
    # runc makes them; nothing was created on the host's own filesystem; no mount is left.
    run_dir = host / "var" / "run" / "nvsentinel"
    assert sorted(os.listdir(run_dir)) == ["secrets", "written-by-pod"]
    assert not os.path.exists(top) and not os.path.exists("/etc/podns-test")
    assert mount_table() == before


def test_exec_binds_sources_that_an_earlier_mount_covers(pod, tmp_path):
    """A volume mounted over an ancestor of the runner's state (here /tmp, which holds the
    pretend state) must not hide the sources and the staging directory of the mounts after it."""
    assert str(tmp_path).startswith("/tmp/")
    scratch = pod["state"] / "pods" / "p" / "volumes" / "tmp"
    scratch.mkdir()
    top = "/podns-test-" + uuid.uuid4().hex[:8]                  # needs the root skeleton
    mounts = [{"path": "/tmp", "source": str(scratch)},
              {"path": top, "source": str(pod["config"]), "readOnly": True}]
    result = run_exec(pod, mounts, "ls -A /tmp | wc -l; cat %s/config.json" % top)
    assert (result.returncode, result.stdout) == (0, '0\n{"a": 1}'), result.stderr


def test_exec_reports_what_is_missing(pod):
    result = run_exec(pod, [], "exit 0", env={"PATH": "/nonexistent"})
    assert result.returncode == ns.EXIT_NOT_FOUND
    assert "'sh': executable file not found in $PATH" in result.stderr
    bad = [{"path": "/etc/x", "source": str(pod["state"] / "no-such-volume")}]
    result = run_exec(pod, bad, "exit 0")
    assert result.returncode == ns.EXIT_SETUP and "container setup failed" in result.stderr


def test_exec_passes_the_exit_code_and_environment_through(pod):
    result = run_exec(pod, [], 'echo "$GREETING"; exit 7',
                      env={"PATH": os.environ["PATH"], "GREETING": "hi there"})
    assert (result.returncode, result.stdout) == (7, "hi there\n")


# --- sandbox and exec together -----------------------------------------------------------------

class Sandbox:
    def __init__(self, pod_ip, endpoints, ports):
        read, write = os.pipe()
        spec = {"podIP": pod_ip, "hostname": "pod-" + pod_ip.replace(".", "-"),
                "endpoints": endpoints, "ports": ports, "readyFd": write}
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(TOOL), "sandbox", json.dumps(spec)],
                                     pass_fds=(write,), stderr=subprocess.PIPE)
        os.close(write)
        with os.fdopen(read, "rb") as ready:
            self.ready = ready.read()
        self.spec = {"pid": self.proc.pid, "startTime": ns.proc_start_time(self.proc.pid)}

    def netns(self):
        return os.stat("/proc/%d/ns/net" % self.proc.pid).st_ino

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(10)


def test_two_sandboxes_serve_one_port_and_reach_the_host(pod):
    host_server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=host_server.serve_forever, daemon=True).start()
    endpoint = "127.0.0.1:%d" % host_server.server_address[1]
    # The pod's program: answers its hostname on 0.0.0.0:8080 and says whether the endpoint on the
    # host answers at the host's own address, from inside the pod's network namespace.
    program = ("import os, socket, urllib.error, urllib.request\n"
               "try:\n"
               "    urllib.request.urlopen('http://%s/', timeout=5)\n"
               "except urllib.error.HTTPError as e:\n"
               "    status = e.code\n"
               "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
               "s.bind(('0.0.0.0', 8080)); s.listen(); print('listening', flush=True)\n"
               "while True:\n"
               "    c, _ = s.accept(); c.sendall(('%%s %%s' %% (socket.gethostname(), status)).encode()); c.close()\n"
               % endpoint)
    sandboxes, containers = [], []
    try:
        for ip in ("127.251.0.10", "127.251.0.11"):
            sandbox = Sandbox(ip, [endpoint], [8080])
            assert sandbox.ready == b"ready\n", sandbox.proc.stderr.read()
            sandboxes.append(sandbox)
            spec = {"sandbox": sandbox.spec, "mounts": [], "hide": [], "staging": str(pod["staging"]),
                    "workingDir": "/", "argv": [sys.executable, "-c", program]}
            containers.append(subprocess.Popen([sys.executable, "-I", "-S", str(TOOL), "exec", json.dumps(spec)],
                                               env={"PATH": os.environ["PATH"]}, stdout=subprocess.PIPE))
        answers = {}
        for ip, container in zip(("127.251.0.10", "127.251.0.11"), containers):
            assert container.stdout.readline() == b"listening\n"
            with socket.create_connection((ip, 8080), timeout=5) as conn:
                answers[ip] = conn.recv(100).decode()
        # 501: the host's server answered (it implements no GET) through the endpoint relay.
        assert answers == {"127.251.0.10": "pod-127-251-0-10 501", "127.251.0.11": "pod-127-251-0-11 501"}
        assert sandboxes[0].netns() != sandboxes[1].netns() != os.stat("/proc/self/ns/net").st_ino
        netns = [s.netns() for s in sandboxes]
    finally:
        for proc in containers:
            proc.kill()
            proc.wait()
        codes = [sandbox.stop() for sandbox in sandboxes]
        host_server.shutdown()
    assert codes == [0, 0]
    # Nothing holds the pods' network namespaces any more, and nothing listens on their IPs.
    held = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            held.add(os.stat("/proc/%s/ns/net" % pid).st_ino)
        except OSError:
            pass
    assert not held & set(netns)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.251.0.10", 8080), timeout=2)


def test_sandbox_refuses_an_endpoint_off_loopback():
    sandbox = Sandbox("127.251.0.12", ["10.0.0.1:5432"], [])
    assert sandbox.ready == b""
    assert sandbox.proc.wait(10) != 0
    assert b"not on 127.0.0.0/8" in sandbox.proc.stderr.read()
