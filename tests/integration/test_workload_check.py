"""workload_check on the local control plane, against a real (tiny) OpenAI-style server.

Each test gets a Deployment of two replicas whose container is a small Python HTTP server that the
local pod runner really runs on the pod's IP. It serves /v1/models and /v1/completions, /healthz
for the test's own readiness check, and /stats (how many completions it answered), so a test can
see that the module is probing before it injects the failure. The server answers 503 while a
marker file exists in a hostPath directory: the test creates it in the node's host directory,
like a GPU fault that breaks only the pods on one node.

Placement is deterministic: the pods may run on gpu-node-0..2 with at most one per node (required
anti-affinity), and gpu-node-2 is cordoned while the Deployment is created, so the first two land on
gpu-node-0 and gpu-node-1 and a replacement can only go to gpu-node-2. Every node the tests cordon
is put back as it was.
"""
import concurrent.futures
import datetime
import http.client
import json
import os
import shutil
import time
import urllib.request

import pytest
from kubernetes import client

from support import RUN_LABEL, RUNNER_STATE, ansible_module, wait_until

MODULE = "gpu_resilience.fault_injection.workload_check"
PORT = 8000
NODES = ("gpu-node-0", "gpu-node-1", "gpu-node-2")
MODEL = "tiny-llm"
# Proxies from the environment must not see loopback pod traffic.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

SERVER = r'''
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POD = os.environ["POD_NAME"]
MARKER = os.path.join(os.environ["MARKER_DIR"], "fail")
lock = threading.Lock()
stats = {"completions": 0}


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, obj):
        data = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": "tiny-llm", "object": "model"}]})
        elif self.path == "/healthz":
            self.reply(200, ("ok " + POD).encode())
        elif self.path == "/stats":
            with lock:
                self.reply(200, dict(stats))
        else:
            self.reply(404, {"error": {"message": "no such path"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with lock:
            stats["completions"] += 1
        if self.path != "/v1/completions":
            self.reply(404, {"error": {"message": "no such path"}})
        elif os.path.exists(MARKER):
            self.reply(503, {"error": {"message": "CUDA error: GPU fault on " + POD}})
        elif body.get("model") != "tiny-llm" or not body.get("prompt") or body.get("max_tokens") != 4:
            self.reply(400, {"error": {"message": "bad request %r" % body}})
        else:
            self.reply(200, {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                             "choices": [{"index": 0, "text": " pong from " + POD, "finish_reason": "length"}]})

    def log_message(self, fmt, *a):
        pass


ThreadingHTTPServer((os.environ["POD_IP"], int(sys.argv[1])), Handler).serve_forever()
'''


# --- helpers -----------------------------------------------------------------------------------

def delete(call):
    """Clean-up that tolerates what is already gone."""
    try:
        call()
    except client.ApiException as e:
        if e.status != 404:
            raise


def http_get(ip, path, timeout=2.0):
    with HTTP.open("http://%s:%d%s" % (ip, PORT, path), timeout=timeout) as resp:
        return resp.read()


def answers(ip):
    try:
        return http_get(ip, "/healthz").startswith(b"ok ")
    except (OSError, http.client.HTTPException):
        return False


def completions(ip):
    return json.loads(http_get(ip, "/stats"))["completions"]


def marker_dir(ns, node):
    """The hostPath directory /tmp/wcheck/<ns> as the node's host root holds it."""
    return os.path.join(RUNNER_STATE, "nodes", node, "host", "tmp", "wcheck", ns)


def break_node(ns, node):
    os.makedirs(marker_dir(ns, node), exist_ok=True)
    with open(os.path.join(marker_dir(ns, node), "fail"), "w") as f:
        f.write("GPU fault\n")


def live_pods(core, ns, app):
    return [p for p in core.list_namespaced_pod(ns, label_selector="app=" + app).items
            if p.metadata.deletion_timestamp is None]


def pods_by_node(core, ns, app):
    return dict((p.spec.node_name, p) for p in live_pods(core, ns, app) if p.spec.node_name)


def placed_on(core, ns, app, nodes):
    """The live pods by node once they are exactly on `nodes`, else None."""
    by_node = pods_by_node(core, ns, app)
    return by_node if set(by_node) == nodes else None


def deployment(name, ns):
    labels = {"app": name, RUN_LABEL: "true"}
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "MARKER_DIR", "value": "/fault"}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name},
                                             "matchExpressions": [{"key": RUN_LABEL, "operator": "Exists"}]},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "terminationGracePeriodSeconds": 2,
                     "affinity": {
                         "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                             {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                                    "values": list(NODES)}]}]}},
                         "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                             {"labelSelector": {"matchLabels": {"app": name}},
                              "topologyKey": "kubernetes.io/hostname"}]}},
                     "containers": [{
                         "name": "server", "image": "local/none",
                         "command": ["python3", "-c", SERVER], "args": [str(PORT)],
                         "ports": [{"name": "http", "containerPort": PORT}],
                         "env": env,
                         "volumeMounts": [{"name": "fault", "mountPath": "/fault"}]}],
                     "volumes": [{"name": "fault", "hostPath": {"path": "/tmp/wcheck/" + ns,
                                                                "type": "DirectoryOrCreate"}}]}}},
    }


class Nodes:
    """Cordons nodes for a test and puts each back as it was."""

    def __init__(self, core):
        self.core = core
        self.before = {}

    def cordon(self, node, on=True):
        if node not in self.before:
            self.before[node] = bool(self.core.read_node(node).spec.unschedulable)
        self.core.patch_node(node, {"spec": {"unschedulable": True if on else None}})

    def restore(self):
        for node, was in self.before.items():
            self.core.patch_node(node, {"spec": {"unschedulable": True if was else None}})


@pytest.fixture()
def nodes(core):
    cordons = Nodes(core)
    yield cordons
    cordons.restore()


@pytest.fixture()
def app(core, apps, namespace, nodes):
    """The two-replica server, one pod on gpu-node-0 and one on gpu-node-1, both answering."""
    name = "llm"
    nodes.cordon("gpu-node-2")
    apps.create_namespaced_deployment(namespace, deployment(name, namespace))
    try:
        placed = wait_until(lambda: placed_on(core, namespace, name, {"gpu-node-0", "gpu-node-1"}), 60,
                            "two pods placed on gpu-node-0 and gpu-node-1")
        nodes.cordon("gpu-node-2", on=False)
        for pod in placed.values():
            wait_until(lambda pod=pod: core.read_namespaced_pod(pod.metadata.name, namespace).status.pod_ip, 30,
                       "an IP for " + pod.metadata.name)
        placed = pods_by_node(core, namespace, name)
        for pod in placed.values():
            wait_until(lambda pod=pod: answers(pod.status.pod_ip), 60, "HTTP from " + pod.metadata.name)
        yield dict(name=name, namespace=namespace, pods=placed)
    finally:
        delete(lambda: apps.delete_namespaced_deployment(name, namespace))
        for node in NODES:
            shutil.rmtree(marker_dir(namespace, node), ignore_errors=True)


class Background:
    """The module running in a thread, so the test can act while it waits."""

    def __init__(self, args, check=False):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.future = self.pool.submit(ansible_module, MODULE, args, check, False, 180)

    def result(self):
        try:
            return self.future.result(timeout=180)
        finally:
            self.pool.shutdown(wait=True)


def probed(ip, before, future, times=2):
    """Wait until the module has sent `times` completions to the server at ip (it is probing, and has
    not returned)."""
    wait_until(lambda: future.done() or completions(ip) >= before + times, 60,
               "the module to probe %s" % ip, interval=0.05)
    assert not future.done(), "the module returned before the test acted: %r" % (future.result(),)


def utc(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def no_traceback(result):
    return "Traceback" not in json.dumps(result) and result.get("exception", PLACEHOLDER) == PLACEHOLDER


PLACEHOLDER = "(traceback unavailable)"


def by_name(result):
    return dict((p["name"], p) for p in result["pods"])


# --- tests -------------------------------------------------------------------------------------

def test_serving_baseline_every_replica_answers_a_completion(apps, app):
    ns, name = app["namespace"], app["name"]
    args = {"name": name, "namespace": ns, "wait_timeout": 30}
    result = ansible_module(MODULE, args)
    assert not result.get("failed"), result
    assert result["changed"] is False and result["satisfied"] is True and result["expect"] == "serving"
    names = sorted(p.metadata.name for p in app["pods"].values())
    assert sorted(result["counted"]) == names and result["failing"] == []
    assert result["min_pods"] == 2
    assert result["workload"] == {"kind": "Deployment", "api_version": "apps/v1", "name": name, "namespace": ns,
                                  "selector": "app=%s,%s" % (name, RUN_LABEL), "desired": 2, "template_hash": None}
    pods = by_name(result)
    for node, pod in app["pods"].items():
        found = pods[pod.metadata.name]
        assert found["node"] == node and found["ip"] == pod.status.pod_ip and found["ready"] is True
        assert found["phase"] == "Running" and found["restarts"] == 0 and found["model"] == MODEL
        probe = found["probe"]
        assert probe["ok"] is True and probe["status"] == 200 and probe["error"] is None, probe
        assert probe["url"] == "http://%s:%d/v1/completions" % (pod.status.pod_ip, PORT)
        assert "pong from " + pod.metadata.name in probe["excerpt"] and len(probe["excerpt"]) <= 200
        assert 0 < probe["elapsed"] < 5
        assert found["verdict"].startswith("serving: answers (HTTP 200")
    assert result["rounds"] >= 1 and 0 < result["elapsed"] < 30
    assert utc(result["started"]) <= utc(result["finished"])
    assert abs((utc(result["finished"]) - utc(result["started"])).total_seconds() - result["elapsed"]) < 0.5
    print("\nbaseline: %d pods serving after %.3f s, %d round(s)" % (len(names), result["elapsed"],
                                                                     result["rounds"]))

    # Check mode does the same (it only reads), and so does a label selector with an HTTP probe on a
    # named port, and the newest pod template of the Deployment.
    checked = ansible_module(MODULE, args, check=True)
    assert not checked.get("failed") and checked["satisfied"] is True and sorted(checked["counted"]) == names
    plain = ansible_module(MODULE, {"label_selector": "app=" + name, "namespace": ns, "min_pods": 2,
                                    "probe": {"type": "http", "port": "http", "path": "/healthz",
                                              "expected_body_regex": "^ok llm-"}})
    assert not plain.get("failed"), plain
    assert sorted(plain["counted"]) == names and plain["workload"]["kind"] is None
    assert all(p["probe"]["excerpt"] == "ok " + p["name"] for p in plain["pods"])
    replicasets = apps.list_namespaced_replica_set(ns, label_selector="app=" + name).items
    (rs,) = replicasets
    current = ansible_module(MODULE, dict(args, template_current=True, probe={"type": "none"}))
    assert not current.get("failed"), current
    assert current["workload"]["template_hash"] == rs.metadata.labels["pod-template-hash"]
    assert sorted(current["counted"]) == names
    assert all(p["template_hash"] == rs.metadata.labels["pod-template-hash"] and p["probe"] is None
               for p in current["pods"])

    # The same through a fixed URL: one address answers for the workload.
    ip = app["pods"]["gpu-node-0"].status.pod_ip
    through_url = ansible_module(MODULE, dict(args, probe={"url": "http://%s:%d/" % (ip, PORT), "model": MODEL}))
    assert not through_url.get("failed"), through_url
    assert through_url["url_probe"]["ok"] is True
    assert through_url["url_probe"]["url"] == "http://%s:%d/v1/completions" % (ip, PORT)
    assert sorted(through_url["counted"]) == names and all(p["probe"] is None for p in through_url["pods"])


def test_failing_waits_for_the_fault_on_one_node(app):
    ns, name = app["namespace"], app["name"]
    broken, healthy = app["pods"]["gpu-node-0"], app["pods"]["gpu-node-1"]
    before = completions(broken.status.pod_ip)
    other_before = completions(healthy.status.pod_ip)
    running = Background({"name": name, "namespace": ns, "expect": "failing", "nodes": ["gpu-node-0"],
                          "wait_timeout": 60})
    probed(broken.status.pod_ip, before, running.future)
    break_node(ns, "gpu-node-0")
    result = running.result()
    assert not result.get("failed"), result
    assert result["satisfied"] is True and result["changed"] is False
    assert result["counted"] == [broken.metadata.name] and result["failing"] == [broken.metadata.name]
    pods = by_name(result)
    failed = pods[broken.metadata.name]
    assert failed["probe"]["ok"] is False and failed["probe"]["status"] == 503
    assert "GPU fault on " + broken.metadata.name in failed["probe"]["excerpt"]
    assert failed["failed"]["reason"] == "probe failed: HTTP 503, expected 200", failed
    # It waited: the failure came after at least two good rounds, and it stopped right after it.
    assert result["rounds"] >= 3 and failed["failed"]["at"] <= result["elapsed"]
    assert failed["verdict"].startswith("failed: probe failed: HTTP 503")
    assert pods[healthy.metadata.name]["verdict"] == "not tracked (not in scope)"
    # Only the pods on the nodes named are probed.
    assert completions(healthy.status.pod_ip) == other_before
    print("\nfailure on gpu-node-0 seen %.3f s after start, %d round(s)" % (failed["failed"]["at"],
                                                                            result["rounds"]))


def test_failing_all_when_the_pod_is_deleted(core, app):
    ns, name = app["namespace"], app["name"]
    victim = app["pods"]["gpu-node-1"]
    before = completions(victim.status.pod_ip)
    running = Background({"name": name, "namespace": ns, "expect": "failing", "failing_pods": "all",
                          "nodes": ["gpu-node-1"], "wait_timeout": 60})
    probed(victim.status.pod_ip, before, running.future)
    core.delete_namespaced_pod(victim.metadata.name, ns)
    result = running.result()
    assert not result.get("failed"), result
    assert result["satisfied"] is True and result["failing"] == [victim.metadata.name]
    found = by_name(result)[victim.metadata.name]
    # The watch event usually comes first; a round that runs just after the runner stopped the
    # process but before the event arrived sees the connection fail instead. Either is the deletion.
    reason = found["failed"]["reason"]
    assert reason in ("being deleted", "gone (deleted)") or (
        reason.startswith("probe failed: ") and found["probe"]["status"] is None), found


def test_serving_again_once_the_pods_left_the_excluded_node(core, app, nodes):
    ns, name = app["namespace"], app["name"]
    stays, leaves = app["pods"]["gpu-node-0"], app["pods"]["gpu-node-1"]
    nodes.cordon("gpu-node-1")
    args = {"name": name, "namespace": ns, "exclude_nodes": ["gpu-node-1"], "probe": {"port": "http"}}

    # Looking once while a pod is still on gpu-node-1 fails, and says why, even though the one pod
    # elsewhere would be enough.
    once = ansible_module(MODULE, dict(args, wait_timeout=0, min_pods=1))
    assert once.get("failed") is True and once["satisfied"] is False and no_traceback(once), once
    assert once["msg"].startswith("not satisfied (wait_timeout 0: looked once): expected Deployment %s/%s to be "
                                  "serving" % (ns, name)), once["msg"]
    assert "no pod left on gpu-node-1" in once["msg"]
    assert "1 pod(s) still on excluded nodes (%s on gpu-node-1)" % leaves.metadata.name in once["msg"]
    assert once["rounds"] == 1 and once["counted"] == [stays.metadata.name]

    before = completions(stays.status.pod_ip)
    running = Background(dict(args, wait_timeout=90))
    probed(stays.status.pod_ip, before, running.future)
    deleted_at = time.monotonic()
    core.delete_namespaced_pod(leaves.metadata.name, ns)
    result = running.result()
    waited = time.monotonic() - deleted_at
    assert not result.get("failed"), result
    moved = pods_by_node(core, ns, name)
    assert set(moved) == {"gpu-node-0", "gpu-node-2"}, moved
    assert sorted(result["counted"]) == sorted(p.metadata.name for p in moved.values())
    assert all(p["node"] != "gpu-node-1" or p["gone"] or p["terminating"] for p in result["pods"])
    replacement = by_name(result)[moved["gpu-node-2"].metadata.name]
    assert replacement["probe"]["ok"] is True and replacement["probe"]["status"] == 200
    print("\nserving on gpu-node-0 and gpu-node-2 %.3f s after the pod on gpu-node-1 was deleted "
          "(module: %.3f s, %d rounds)" % (waited, result["elapsed"], result["rounds"]))


def test_timeout_names_the_workload_and_each_pods_verdict(app):
    ns, name = app["namespace"], app["name"]
    broken, healthy = app["pods"]["gpu-node-0"], app["pods"]["gpu-node-1"]
    break_node(ns, "gpu-node-0")
    started = time.monotonic()
    result = ansible_module(MODULE, {"name": name, "namespace": ns, "wait_timeout": 2, "interval": 0.2})
    took = time.monotonic() - started
    assert result.get("failed") is True and result["satisfied"] is False and no_traceback(result), result
    msg = result["msg"]
    assert msg.startswith("timed out after 2s waiting for Deployment %s/%s to be serving: at least 2 pod(s) "
                          "Running and Ready, each answering an OpenAI completion (POST /v1/completions: HTTP 200 "
                          "with choices)" % (ns, name)), msg
    assert "2 of the 2 pod(s) needed are Running and Ready; 1 of them answer" in msg
    assert "%s (gpu-node-0, %s): probe failed: HTTP 503, expected 200" % (broken.metadata.name,
                                                                          broken.status.pod_ip) in msg
    assert "%s (gpu-node-1, %s): serving: answers (HTTP 200" % (healthy.metadata.name, healthy.status.pod_ip) in msg
    assert result["failing"] == [broken.metadata.name] and result["counted"] == [healthy.metadata.name]
    # Rounds every 0.2 s for 2 s, not one look and a sleep.
    assert result["rounds"] >= 5 and 2 <= result["elapsed"] < 4 and took < 30, result
    assert by_name(result)[broken.metadata.name]["probe"]["status"] == 503


def test_clear_errors_for_a_missing_workload_namespace_or_port(app):
    ns, name = app["namespace"], app["name"]
    missing = ansible_module(MODULE, {"name": "no-such-llm", "namespace": ns, "wait_timeout": 5})
    assert missing.get("failed") is True and no_traceback(missing), missing
    assert missing["msg"] == "Deployment %s/no-such-llm not found: check kind, name and namespace " \
                             "(api_version apps/v1)" % ns
    no_ns = ansible_module(MODULE, {"name": name, "namespace": ns + "-gone"})
    assert no_ns.get("failed") is True and no_traceback(no_ns)
    assert no_ns["msg"] == "namespace %s-gone does not exist (looking for Deployment %s)" % (ns, name)
    selector_ns = ansible_module(MODULE, {"label_selector": "app=x", "namespace": ns + "-gone"})
    assert selector_ns["msg"] == "namespace %s-gone does not exist" % ns
    port = ansible_module(MODULE, {"name": name, "namespace": ns, "probe": {"port": "grpc"}})
    assert port.get("failed") is True and no_traceback(port)
    assert "has a port named 'grpc' (named ports: http=8000): fix probe.port" in port["msg"], port["msg"]
    kind = ansible_module(MODULE, {"kind": "StatefulSet", "name": name, "namespace": ns})
    assert kind["msg"].startswith("StatefulSet %s/%s not found" % (ns, name)), kind
    nothing = ansible_module(MODULE, {"label_selector": "app=nothing", "namespace": ns, "expect": "failing"})
    assert nothing.get("failed") is True and nothing["msg"] == (
        "the pods matching 'app=nothing' in namespace %s: no pod when the check started, so none can fail; run "
        "expect=failing while the pods are there (pods seen: none)" % ns)
