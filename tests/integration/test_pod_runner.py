"""The local pod runner runs real processes for pods on simulated nodes.

Real objects on the local control plane: the Deployment controller makes the pods, the scheduler
places them, KWOK gives them a 127.x IP, and the runner (started by `tools/local-cluster up`)
starts their programs. The tests talk to those programs over HTTP on the pod IP and read the
runner's index (<state>/pods/index.json) for pids.
"""
import http.client
import json
import os
import socket
import time
import urllib.request
import uuid

import pytest

from support import RUN_LABEL, RUNNER_STATE, alive, delete, exists, runner_entry, tail, wait_for, wait_until
PORT = 8080

# Serves what the pod's process sees. Stdlib only: the runner has no images, only local programs.
SERVER = r'''
import argparse, json, os, ssl, sys, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", required=True)
parser.add_argument("--greeting", required=True)
args = parser.parse_args()
SA_DIR = os.environ.get("KUBERNETES_SERVICEACCOUNT_DIR",
                        "/var/run/secrets/kubernetes.io/serviceaccount")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def whoami():
    """Who the API server says we are, with the mounted token and CA (a SelfSubjectReview)."""
    url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
        os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "Authorization": "Bearer " + read(os.path.join(SA_DIR, "token")).strip(),
        "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return json.load(resp)["status"]["userInfo"]
    except Exception as e:
        return {"error": repr(e)}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        token = read(os.path.join(SA_DIR, "token"))
        reply = {
            "pid": os.getpid(), "argv": sys.argv, "cwd": os.getcwd(),
            "env": {k: os.environ.get(k) for k in ("LITERAL", "NODE_NAME", "COLOR", "POD_IP",
                                                   "HOSTNAME", "KUBERNETES_SERVICE_HOST")},
            "greeting": read(args.greeting),
            "tokenReadable": bool(token and token.strip()),
            "whoami": whoami() if self.path == "/whoami" else None,
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *a):
        pass


host, port = args.listen.rsplit(":", 1)
HTTPServer((host, int(port)), Handler).serve_forever()
'''

# Proxies from the environment must not see loopback pod traffic.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- helpers -----------------------------------------------------------------------------------

def get(ip, path="/", timeout=2.0):
    with HTTP.open("http://%s:%d%s" % (ip, PORT, path), timeout=timeout) as resp:
        return json.load(resp)


def answer(ip, path="/", when=lambda reply: True):
    """A check for wait_for: the server's reply once it answers and `when` holds, else None."""
    def check():
        try:
            reply = get(ip, path)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return reply if when(reply) else None
    return check


def refused(ip):
    try:
        socket.create_connection((ip, PORT), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def running_pods(core, ns, selector):
    return [p for p in core.list_namespaced_pod(ns, label_selector=selector).items
            if p.status.phase == "Running" and p.status.pod_ip
            and p.metadata.deletion_timestamp is None]


def one_running_pod(core, ns, selector, other_than=None):
    def check():
        pods = [p for p in running_pods(core, ns, selector) if p.metadata.uid != other_than]
        return pods[0] if len(pods) == 1 else None
    return check


def started_pid(uid, container):
    """The pid the runner recorded for a container of the pod, once it is running."""
    def check():
        entry = runner_entry(uid)
        return ((entry or {}).get("containers", {}).get(container) or {}).get("pid")
    return check


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ns(core):
    """One namespace for this module's objects, deleted at the end (its pods go with it)."""
    name = "it-runner-" + uuid.uuid4().hex[:6]
    core.create_namespace({"metadata": {"name": name, "labels": {"gpu-resilience.io/test": "true"}}})
    wait_until(lambda: exists(lambda: core.read_namespaced_service_account("default", name)), 30,
               "default ServiceAccount in " + name)
    core.create_namespaced_config_map(name, {"metadata": {"name": "echo-app"},
                                             "data": {"server.py": SERVER}})
    core.create_namespaced_config_map(name, {"metadata": {"name": "echo-settings"},
                                             "data": {"color": "teal"}})
    yield name
    delete(lambda: core.delete_namespace(name))


def echo_deployment(name, greeting_config_map):
    labels = {"app": name, RUN_LABEL: "true"}
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "LITERAL", "value": "plain-value"},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "echo-settings", "key": "color"}}},
    ]
    container = {
        "name": "server", "image": "local/none", "command": ["python3", "/app/server.py"],
        "args": ["--listen=$(POD_IP):%d" % PORT, "--greeting", "/etc/greeting/message.txt"],
        "env": env,
        "volumeMounts": [{"name": "app", "mountPath": "/app", "readOnly": True},
                         {"name": "greeting", "mountPath": "/etc/greeting", "readOnly": True}]}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "terminationGracePeriodSeconds": 3,
                     "containers": [container],
                     "volumes": [{"name": "app", "configMap": {"name": "echo-app"}},
                                 {"name": "greeting", "configMap": {"name": greeting_config_map}}]}}},
    }


@pytest.fixture()
def echo(core, apps, ns):
    """A fresh echo Deployment with its own greeting ConfigMap; returns (name, running pod)."""
    name = "echo-" + uuid.uuid4().hex[:6]
    core.create_namespaced_config_map(ns, {"metadata": {"name": name + "-greeting"},
                                           "data": {"message.txt": "hello from " + name}})
    apps.create_namespaced_deployment(ns, echo_deployment(name, name + "-greeting"))
    pod = wait_for(core, ns, one_running_pod(core, ns, "app=" + name), "a Running pod of " + name)
    yield name, pod
    delete(lambda: apps.delete_namespaced_deployment(name, ns))


# --- tests -------------------------------------------------------------------------------------

def test_deployment_pod_serves_http_with_its_environment_and_files(core, ns, echo):
    name, pod = echo
    ip = pod.status.pod_ip
    assert ip.startswith("127."), ip
    reply = wait_for(core, ns, answer(ip, "/whoami"), "HTTP on %s:%d" % (ip, PORT))

    assert reply["env"] == {"LITERAL": "plain-value", "NODE_NAME": pod.spec.node_name,
                            "COLOR": "teal", "POD_IP": ip, "HOSTNAME": pod.metadata.name,
                            "KUBERNETES_SERVICE_HOST": "127.0.0.1"}
    assert reply["greeting"] == "hello from " + name
    assert reply["tokenReadable"] is True
    # The token is a real one, bound to this pod, and the mounted CA verifies the API server.
    assert reply["whoami"].get("username") == "system:serviceaccount:%s:default" % ns, reply["whoami"]
    assert reply["whoami"]["extra"]["authentication.kubernetes.io/pod-name"] == [pod.metadata.name]
    # Container paths were mapped onto the pod's materialised volumes.
    volumes = os.path.join(os.path.realpath(RUNNER_STATE), "pods",
                           "%s_%s_%s" % (ns, pod.metadata.name, pod.metadata.uid), "volumes")
    assert reply["argv"] == [os.path.join(volumes, "app", "server.py"), "--listen=%s:%d" % (ip, PORT),
                             "--greeting", os.path.join(volumes, "greeting", "message.txt")]

    entry = runner_entry(pod.metadata.uid)
    assert entry["podIP"] == ip and entry["node"] == pod.spec.node_name
    assert entry["containers"]["server"]["pid"] == reply["pid"]
    assert alive(reply["pid"])


def test_config_map_change_reaches_the_running_pod(core, ns, echo):
    name, pod = echo
    ip = pod.status.pod_ip
    first = wait_for(core, ns, answer(ip), "HTTP on %s:%d" % (ip, PORT))
    assert first["greeting"] == "hello from " + name

    changed_at = time.monotonic()
    core.patch_namespaced_config_map(name + "-greeting", ns, {"data": {"message.txt": "changed"}})
    reply = wait_for(core, ns, answer(ip, when=lambda r: r["greeting"] == "changed"),
                     "the new greeting from the running pod", timeout=10)
    assert time.monotonic() - changed_at < 10
    assert reply["pid"] == first["pid"]            # the same process, reading the refreshed file


def test_replaced_pod_gets_a_new_process(core, ns, echo):
    name, pod = echo
    old = wait_for(core, ns, answer(pod.status.pod_ip), "HTTP from the first pod")

    core.delete_namespaced_pod(pod.metadata.name, ns)
    new_pod = wait_for(core, ns, one_running_pod(core, ns, "app=" + name, other_than=pod.metadata.uid),
                       "the Deployment's replacement pod")
    assert new_pod.status.pod_ip.startswith("127.")
    new = wait_for(core, ns, answer(new_pod.status.pod_ip, when=lambda r: r["pid"] != old["pid"]),
                   "HTTP from the replacement pod's own process")
    assert new["env"]["HOSTNAME"] == new_pod.metadata.name
    wait_for(core, ns, lambda: not alive(old["pid"]), "the old pod's process %d to end" % old["pid"],
             timeout=20)
    wait_for(core, ns, lambda: runner_entry(pod.metadata.uid) is None, "the old pod to leave the index")


def test_scaled_to_zero_process_is_stopped(core, apps, ns, echo):
    name, pod = echo
    ip = pod.status.pod_ip
    reply = wait_for(core, ns, answer(ip), "HTTP on %s:%d" % (ip, PORT))

    apps.patch_namespaced_deployment(name, ns, {"spec": {"replicas": 0}})
    wait_for(core, ns, lambda: not core.list_namespaced_pod(ns, label_selector="app=" + name).items,
             "the pod to be deleted")
    wait_for(core, ns, lambda: not alive(reply["pid"]), "process %d to end" % reply["pid"], timeout=20)
    assert refused(ip)
    assert runner_entry(pod.metadata.uid) is None


def test_init_container_prepares_a_file_before_the_main_container(core, ns):
    labels = {"app": "init-demo", RUN_LABEL: "true"}
    writer = ("import os, sys\n"
              "marker, target, text = sys.argv[1:]\n"
              "if not os.path.exists(marker):\n"
              "    open(marker, 'w').close()\n"
              "    sys.exit(3)  # the first attempt fails: init containers are retried\n"
              "open(target, 'w').write(text)\n")
    reader = ("import sys, time\n"
              "print('main saw: ' + open(sys.argv[1]).read(), flush=True)\n"
              "time.sleep(3600)\n")
    core.create_namespaced_pod(ns, {"metadata": {"name": "init-demo", "labels": labels}, "spec": {
        "terminationGracePeriodSeconds": 2,
        "initContainers": [{
            "name": "prepare", "image": "local/none", "command": ["python3", "-c", writer],
            "args": ["/work/.tried", "/work/ready.txt", "prepared for $(POD_NAME)"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        "containers": [{
            "name": "main", "image": "local/none", "command": ["python3", "-c", reader, "/data/ready.txt"],
            "volumeMounts": [{"name": "work", "mountPath": "/data"}]}],
        "volumes": [{"name": "work", "emptyDir": {}}]}})
    pod = wait_for(core, ns, one_running_pod(core, ns, "app=init-demo"), "the init-demo pod Running")
    uid = pod.metadata.uid
    wait_for(core, ns, started_pid(uid, "main"), "the main container to start")

    entry = runner_entry(uid)
    log_path = os.path.join(entry["dir"], "main.log")
    wait_for(core, ns, lambda: "main saw:" in tail(log_path), "the main container's output")
    assert tail(log_path).strip() == "main saw: prepared for init-demo"
    prepare, main = entry["containers"]["prepare"], entry["containers"]["main"]
    assert prepare["exitCode"] == 0 and prepare["restarts"] == 1 and prepare["pid"] is None
    assert prepare["started"] < main["started"]
    core.delete_namespaced_pod("init-demo", ns)
    wait_for(core, ns, lambda: not alive(main["pid"]), "the init-demo main process to end", timeout=20)
