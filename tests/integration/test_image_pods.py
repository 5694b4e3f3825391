"""Image-mode pods: the local pod runner runs a chart-style DaemonSet (images, no command, no label
of ours) from an image map, each pod in its own namespaces, as NVSentinel's pods will run.

The "image" is a small stdlib program mapped in a map file of this module's own; it answers, over
HTTP on its fixed port, what it sees from inside its pod: its volumes at their mountPaths, the API
server and a declared host endpoint at their host addresses, its hostname, the node's boot id.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid

import pytest

from support import ROOT, RUNNER_STATE, alive, delete, localcluster, runner_entry, wait_for, wait_until

PORT = 8080          # the same fixed port in every pod of the DaemonSet
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

PROGRAM = r'''
import json, os, socket, ssl, sys, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return "error: %s" % e.strerror


def write(path):
    try:
        with open(path, "w") as f:
            f.write(os.environ["HOSTNAME"])
        return "ok"
    except OSError as e:
        return e.strerror


def whoami():
    url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
        os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
    req = urllib.request.Request(url, method="POST", data=json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(), headers={
        "Authorization": "Bearer " + read(SA + "/token").strip(), "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=SA + "/ca.crt")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.load(resp)["status"]["userInfo"]["username"]


def endpoint():
    host, port = os.environ["ENDPOINT"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        return conn.recv(100).decode()


def hidden():
    try:
        return os.listdir(os.environ["RUNNER_STATE_DIR"])
    except OSError as e:
        return e.strerror


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        reply = {
            "pid": os.getpid(), "argv": sys.argv, "cwd": os.getcwd(), "hostname": socket.gethostname(),
            "env": {k: os.environ.get(k) for k in ("IMAGE_ENV", "NODE_NAME", "HOSTNAME",
                                                   "KUBERNETES_SERVICE_HOST")},
            "config": read("/etc/echo/config.json"), "subPath": read("/etc/echo-greeting.txt"),
            "init": read("/shared/init.txt"), "bootId": read("/proc/sys/kernel/random/boot_id").strip(),
            "writeConfig": write("/etc/echo/new"), "writeReadOnlyHostPath": write("/host-ro/new"),
            "writeHostPath": write("/var/lib/echo/" + os.environ["HOSTNAME"]),
            "runnerState": hidden(), "whoami": whoami(), "endpoint": endpoint(),
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
'''


# --- helpers -----------------------------------------------------------------------------------

def get(ip, timeout=10):
    with HTTP.open("http://%s:%d/" % (ip, PORT), timeout=timeout) as resp:
        return json.load(resp)


def answer(ip, when=lambda reply: True):
    def check():
        try:
            reply = get(ip)
        except (OSError, ValueError):
            return None
        return reply if when(reply) else None
    return check


def ns_inode(pid, kind):
    try:
        return os.stat("/proc/%d/ns/%s" % (pid, kind)).st_ino
    except OSError:
        return None


def held_namespaces(state):
    """Inodes of the network and mount namespaces that the processes of the cluster in `state`
    (all carry LOCALCLUSTER_STATE) are in now. Only the cluster's own processes count: the kernel
    reuses a freed namespace's inode number for the next one, whoever makes it."""
    held = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                if not localcluster.marked_by(state, f.read()):
                    continue
        except OSError:
            continue
        held |= {ns_inode(int(pid), kind) for kind in ("net", "mnt")}
    return held - {None}


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" - ")[0].split(" ", 4)[4] for line in f)


def running_pods(core, ns):
    return sorted((p for p in core.list_namespaced_pod(ns).items
                   if p.status.phase == "Running" and p.status.pod_ip and not p.metadata.deletion_timestamp),
                  key=lambda p: p.spec.node_name)


def processes(uid):
    """(container pid, sandbox pid) that the runner's index records for a pod."""
    entry = runner_entry(uid) or {}
    return (((entry.get("containers") or {}).get("echo") or {}).get("pid"),
            (entry.get("sandbox") or {}).get("pid"))


class EndpointServer:
    """A host service on loopback (as PostgreSQL will be): greets each connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"endpoint-ok")

    def close(self):
        self.sock.close()


def write_map(directory, name, images, endpoints):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as f:
        json.dump({"images": images, "endpoints": endpoints}, f)
    os.replace(path + ".tmp", path)
    return path


def daemonset(name, image, shell_image):
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "nodeSelector": {"nvidia.com/gpu.present": "true"}, "terminationGracePeriodSeconds": 3,
            "initContainers": [{
                "name": "prepare", "image": shell_image + ":1.0",
                "command": ["sh", "-c", "echo prepared by $(POD_NAME) > /shared/init.txt"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [{"name": "work", "mountPath": "/shared"}]}],
            "containers": [{
                "name": "echo", "image": image + ":v1.2.3@sha256:" + "0" * 64,
                "args": ["--port", str(PORT)],                 # replaces the image's cmd
                "ports": [{"name": "http", "containerPort": PORT}],
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "RUNNER_STATE_DIR", "value": os.path.realpath(RUNNER_STATE)}],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/echo", "readOnly": True},
                    {"name": "config", "mountPath": "/etc/echo-greeting.txt", "subPath": "greeting.txt"},
                    {"name": "state", "mountPath": "/var/lib/echo"},
                    {"name": "host-ro", "mountPath": "/host-ro", "readOnly": True},
                    {"name": "work", "mountPath": "/shared"}]}],
            "volumes": [
                {"name": "config", "configMap": {"name": name}},
                {"name": "state", "hostPath": {"path": "/var/lib/echo", "type": "DirectoryOrCreate"}},
                {"name": "host-ro", "hostPath": {"path": "/etc/echo-ro", "type": "DirectoryOrCreate"}},
                {"name": "work", "emptyDir": {}}]}}},
    }


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """This module's image map file (unique repositories, removed afterwards) and its endpoint."""
    maps = os.environ.get("LOCALCLUSTER_IMAGE_MAPS")
    assert maps, "LOCALCLUSTER_IMAGE_MAPS must name the cluster's image map directory (tools/local-cluster env)"
    program = tmp_path_factory.mktemp("image") / "echo.py"
    program.write_text(PROGRAM)
    tag = uuid.uuid4().hex[:8]
    repository, shell = "registry.example.test/it-%s/echo" % tag, "registry.example.test/it-%s/shell" % tag
    server = EndpointServer()
    path = write_map(maps, "it-image-pods-%s.json" % tag, {
        repository: {"entrypoint": [sys.executable, str(program)], "cmd": ["--port", "1"],
                     "env": {"IMAGE_ENV": "from-the-image"}},
        shell: {"cmd": ["sh"]},
    }, [server.address])
    yield {"repository": repository, "shell": shell, "endpoint": server.address, "map": path,
           "program": str(program)}
    os.unlink(path)
    server.close()


@pytest.fixture()
def echo(core, apps, namespace, image):
    name = "echo-" + uuid.uuid4().hex[:6]
    core.create_namespaced_config_map(namespace, {"metadata": {"name": name}, "data": {
        "config.json": '{"level": "debug"}', "greeting.txt": "hello from a subPath"}})
    body = daemonset(name, image["repository"], image["shell"])
    body["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "ENDPOINT", "value": image["endpoint"]})
    apps.create_namespaced_daemon_set(namespace, body)

    def three_running():
        pods = running_pods(core, namespace)
        return pods if len(pods) == 3 else None

    pods = wait_for(core, namespace, three_running, "3 Running pods of " + name)
    yield name, pods
    delete(lambda: apps.delete_namespaced_daemon_set(name, namespace))


# --- tests -------------------------------------------------------------------------------------

def test_each_pod_runs_in_its_own_namespaces_with_its_volumes_at_their_mount_paths(core, namespace, echo, image):
    _name, pods = echo
    replies = {}
    for pod in pods:
        replies[pod.spec.node_name] = wait_for(core, namespace, answer(pod.status.pod_ip),
                                               "HTTP from %s on %s:%d" % (pod.metadata.name, pod.status.pod_ip, PORT))
    for pod in pods:
        reply, node = replies[pod.spec.node_name], pod.spec.node_name
        with open(os.path.join(RUNNER_STATE, "nodes", node, "host", "proc", "sys", "kernel", "random", "boot_id")) as f:
            boot_id = f.read().strip()
        assert reply == {**reply, **{
            # kubelet's argv: the image's entrypoint, the container's args instead of its cmd.
            "argv": [image["program"], "--port", str(PORT)],
            "cwd": "/", "hostname": pod.metadata.name,
            "env": {"IMAGE_ENV": "from-the-image", "NODE_NAME": node, "HOSTNAME": pod.metadata.name,
                    "KUBERNETES_SERVICE_HOST": "127.0.0.1"},
            "config": '{"level": "debug"}', "subPath": "hello from a subPath",
            "init": "prepared by %s\n" % pod.metadata.name, "bootId": boot_id,
            "writeConfig": "Read-only file system", "writeReadOnlyHostPath": "Read-only file system",
            "writeHostPath": "ok",
            "runnerState": [],                        # other nodes' host roots, other pods: hidden
            "whoami": "system:serviceaccount:%s:default" % namespace,   # the API at 127.0.0.1:P
            "endpoint": "endpoint-ok",                # the declared host endpoint, same address
        }}, reply
        # The hostPath is this node's own host root, and only this node's got the pod's file.
        for other in ("gpu-node-0", "gpu-node-1", "gpu-node-2"):
            marker = os.path.join(RUNNER_STATE, "nodes", other, "host", "var", "lib", "echo", pod.metadata.name)
            assert os.path.exists(marker) == (other == node)
        container, sandbox = processes(pod.metadata.uid)
        assert ns_inode(container, "net") == ns_inode(sandbox, "net") != ns_inode(os.getpid(), "net")
        assert ns_inode(container, "mnt") != ns_inode(os.getpid(), "mnt")
    assert len({r["pid"] for r in replies.values()}) == 3      # three servers, one port each
    # Nothing the containers mounted shows in the host's mount table.
    assert not [m for m in host_mounts() if os.path.realpath(RUNNER_STATE) in m]


def test_container_and_sandbox_restart_and_nothing_remains_after_deletion(core, apps, namespace, echo):
    name, pods = echo
    pod = pods[0]
    ip, uid = pod.status.pod_ip, pod.metadata.uid
    first = wait_for(core, namespace, answer(ip), "HTTP from " + pod.metadata.name)
    mounts_before = host_mounts()

    os.kill(first["pid"], 9)                           # the container dies: it restarts
    second = wait_for(core, namespace, answer(ip, lambda r: r["pid"] != first["pid"]), "the restarted container")
    assert runner_entry(uid)["containers"]["echo"]["restarts"] == 1

    _container, old_sandbox = processes(uid)
    os.kill(old_sandbox, 9)                            # the sandbox dies: a new one, the pod restarts
    third = wait_for(core, namespace, answer(ip, lambda r: r["pid"] != second["pid"]), "the pod in a new sandbox")
    container, sandbox = processes(uid)
    assert third["pid"] == container and sandbox != old_sandbox and not alive(old_sandbox)
    assert ns_inode(container, "net") == ns_inode(sandbox, "net")
    assert runner_entry(uid)["sandbox"]["restarts"] == 1

    pids = {pid for p in pods for pid in processes(p.metadata.uid)}
    # The pods' own namespaces (a sandbox shares the host's mount namespace, not ours to check).
    spaces = {ns_inode(pid, kind) for pid in pids for kind in ("net", "mnt")} - \
        {ns_inode(os.getpid(), kind) for kind in ("net", "mnt")}
    apps.delete_namespaced_daemon_set(name, namespace)
    wait_for(core, namespace, lambda: not core.list_namespaced_pod(namespace).items, "the pods to be deleted")
    wait_for(core, namespace, lambda: not any(alive(pid) for pid in pids), "the pods' processes to end", timeout=20)
    assert not spaces & held_namespaces(os.environ["LOCALCLUSTER_DIR"])
    with pytest.raises(ConnectionRefusedError):           # no listener left on the pod IP
        socket.create_connection((ip, PORT), timeout=2)
    assert host_mounts() == mounts_before
    wait_for(core, namespace, lambda: all(runner_entry(p.metadata.uid) is None for p in pods),
             "the pods to leave the runner's index")


def test_a_pod_with_an_unmapped_image_fails_with_a_message_naming_it(core, namespace, image):
    body = {"metadata": {"name": "half-mapped"}, "spec": {
        "nodeName": "gpu-node-0",
        "containers": [{"name": "echo", "image": image["repository"] + ":v1"},
                       {"name": "other", "image": "registry.example.test/not-mapped/at-all:v2"}]}}
    pod = core.create_namespaced_pod(namespace, body)

    def failed():
        entry = runner_entry(pod.metadata.uid)
        return entry if entry and entry["phase"] == "failed" else None

    entry = wait_for(core, namespace, failed, "the runner to fail the pod")
    assert "image registry.example.test/not-mapped/at-all:v2 (registry.example.test/not-mapped/at-all): " \
           "not in the image map" in entry["message"]
    assert all(c["pid"] is None and c["started"] is None for c in entry["containers"].values())


# --- `tools/local-cluster down` ----------------------------------------------------------------

def test_down_leaves_no_process_namespace_or_mount(image, tmp_path):
    """A cluster of its own (one node, other ports), an image-mode pod on it, then `down`."""
    state = str(tmp_path / "cluster")
    env = dict(os.environ, LOCALCLUSTER_DIR=state,
               LOCALCLUSTER_PORT_BASE=str(int(os.environ.get("LOCALCLUSTER_PORT_BASE", "26000")) + 500),
               LOCALCLUSTER_POD_NET=str(int(os.environ.get("LOCALCLUSTER_POD_NET", "128")) + 8))
    tool = [os.path.join(ROOT, "tools", "local-cluster")]
    mounts_before = host_mounts()
    subprocess.run(tool + ["up", "--nodes", "1", "--cpu-nodes", "0"], env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    try:
        from kubernetes import client, config
        api = config.new_client_from_config(config_file=os.path.join(state, "kubeconfig"))
        core = client.CoreV1Api(api)
        with open(image["map"]) as f:
            write_map(os.path.join(state, "image-maps"), "it.json", **json.load(f))
        core.create_namespaced_pod("default", {"metadata": {"name": "echo"}, "spec": {
            "nodeName": "gpu-node-0", "containers": [{
                "name": "echo", "image": image["repository"], "args": ["--port", str(PORT)],
                "env": [{"name": "ENDPOINT", "value": image["endpoint"]}]}]}})
        index = os.path.join(state, "runner", "pods", "index.json")

        def running():
            try:
                with open(index) as f:
                    pods = json.load(f)["pods"].values()
            except (OSError, ValueError, KeyError):
                return None
            found = [(p["containers"]["echo"]["pid"], p["sandbox"]["pid"]) for p in pods
                     if p.get("sandbox") and p["containers"]["echo"]["pid"]]
            return found[0] if found else None

        pids = wait_until(running, 60, "the pod's container and sandbox")
    finally:
        subprocess.run(tool + ["down"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)
    assert not any(alive(pid) for pid in pids)
    assert not localcluster.stragglers(localcluster.Layout(state, 0))   # no process of that cluster
    assert host_mounts() == mounts_before and not os.path.exists(state)
