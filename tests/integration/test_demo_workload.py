"""The demo GPU inference workload (role demo_workload, playbook demo_workload.yml) on the local
control plane.

The role deploys the server with the stand-in CUDA driver (compiled by its init container) on pods
that the local pod runner really runs on their 127.x pod IPs; every check below is a real HTTP
request to a pod IP. Then cuda_shim_patch loads the CUDA fault shim into the Deployment, and an
armed control line in one simulated node's control directory (what the node agent writes) makes
the pods on that node fail real requests while the pods on the other node keep answering; disarmed,
the restarted pods answer again. state=absent removes everything, the namespace the role made too.
"""
import http.client
import json
import os
import sys
import uuid

import pytest

from support import (ROOT, RUN_LABEL, RUNNER_STATE, ansible_module, ansible_playbook, exists, live_pods, run_playbook,
                     wait_until)

# The shim's control-file contract, imported the way the node agent does (beside xid_catalog.py).
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
import shim_control  # noqa: E402  pylint: disable=wrong-import-position

PLAYBOOK = "demo_workload.yml"
NAME = "gpu-inference"
PORT = 8000
MODEL = "demo-llm"
SELECTOR = "app.kubernetes.io/instance=" + NAME
MANAGED_BY = "gpu_resilience.fault_injection"
SHIM = "gpu_resilience.fault_injection.cuda_shim_patch"
SERVER = os.path.join(ROOT, "files", "demo", "inference_server.py")
FAKE_DRIVER = os.path.join(ROOT, "files", "shim", "tests")


@pytest.fixture(scope="module")
def demo_vars():
    return {"demo_workload_namespace": "it-demo-" + uuid.uuid4().hex[:8],
            "demo_workload_fake_driver": True,
            # Survey-style text, as AWX gives it.
            "demo_workload_pod_labels": RUN_LABEL + "=true",
            "demo_workload_replicas": "2",
            # One pod per node for sure, so that a fault on one node leaves the other pod serving.
            "demo_workload_spread": "DoNotSchedule"}


@pytest.fixture(scope="module")
def deployed(core, demo_vars):
    """The demo, deployed by the playbook; removed (and its namespace deleted) at the end whatever happened."""
    ns = demo_vars["demo_workload_namespace"]
    try:
        output, recap = run_playbook(PLAYBOOK, demo_vars)
        yield {"ns": ns, "output": output, "recap": recap}
    finally:
        if exists(lambda: core.read_namespace(ns)):
            ansible_playbook(PLAYBOOK, dict(demo_vars, demo_workload_state="absent"))
        if exists(lambda: core.read_namespace(ns)):
            core.delete_namespace(ns)


def pods(core, ns):
    """The demo's pods that are not going away, sorted by name."""
    return sorted((p for p in core.list_namespaced_pod(ns, label_selector=SELECTOR).items
                   if p.metadata.deletion_timestamp is None and p.status.pod_ip), key=lambda p: p.metadata.name)


def ask(ip, path="/v1/completions", prompt="Is the GPU healthy?"):
    """(status, JSON body) of one real request to a pod, or (None, error text) when none came back."""
    assert ip.startswith("127."), "pod IPs of the local control plane are on loopback, not %s" % ip
    conn = http.client.HTTPConnection(ip, PORT, timeout=10)
    try:
        if path == "/v1/completions":
            conn.request("POST", path, body=json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 8}),
                         headers={"Content-Type": "application/json"})
        else:
            conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except (OSError, http.client.HTTPException) as exc:
        return None, "%s: %s" % (type(exc).__name__, exc)
    finally:
        conn.close()


def failing(pod):
    """(status, answer) of a request to pod that did not succeed, else None."""
    result = ask(pod.status.pod_ip)
    return result if result[0] != 200 else None


def serving(pod):
    return ask(pod.status.pod_ip, "/health")[0] == 200 and ask(pod.status.pod_ip)[0] == 200


def shimmed(pod):
    return any(c.name.startswith("cuda-fault-shim") for c in pod.spec.init_containers or [])


def pods_when(core, ns, with_shim):
    """The two demo pods, on two nodes, once all have (or lack) the shim and answer 200."""
    now = pods(core, ns)
    if len(now) != 2 or any(shimmed(p) != with_shim for p in now) or len({p.spec.node_name for p in now}) != 2:
        return None
    return now if all(serving(p) for p in now) else None


def server_log(pod):
    path = os.path.join(RUNNER_STATE, "pods", "%s_%s_%s" % (pod.metadata.namespace, pod.metadata.name, pod.metadata.uid),
                        "server.log")
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.startswith("{")]
    except OSError:
        return []


def control_path(node):
    return os.path.join(RUNNER_STATE, "nodes", node, "host", shim_control.HOST_DIR.lstrip("/"), shim_control.CONTROL_FILE)


def write_control(node, text):
    """Replace a node's shim control file the way the node agent does: a temporary name, then rename."""
    path = control_path(node)
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp" % shim_control.CONTROL_FILE)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_present_deploys_the_objects_and_every_pod_answers(core, apps, policy, deployed):
    ns = deployed["ns"]
    namespace = core.read_namespace(ns)
    assert namespace.metadata.labels["app.kubernetes.io/managed-by"] == MANAGED_BY

    cm = core.read_namespaced_config_map(NAME, ns)
    with open(SERVER) as f:
        assert cm.data["inference_server.py"] == f.read()
    for name in ("fake_cuda.c", "cuda_api.h"):
        with open(os.path.join(FAKE_DRIVER, name)) as f:
            assert cm.data[name] == f.read()

    deployment = apps.api_client.sanitize_for_serialization(apps.read_namespaced_deployment(NAME, ns))
    template = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 2 and template["metadata"]["labels"][RUN_LABEL] == "true"
    assert template["metadata"]["annotations"]["checksum/demo-code"]
    (init,) = template["spec"]["initContainers"]
    (server,) = template["spec"]["containers"]
    assert "nvidia.com/gpu" not in json.dumps(init.get("resources"))
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1" and server["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert server["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    env = {e["name"]: e for e in server["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["DEMO_LIBCUDA"]["value"] == "/opt/gpu-demo-driver/libcuda.so.1" and env["DEMO_EXIT_ON_FATAL"]["value"] == "1"
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}

    service = core.read_namespaced_service(NAME, ns)
    assert service.spec.type == "ClusterIP" and [(p.name, p.port) for p in service.spec.ports] == [("http", PORT)]
    pdb = policy.read_namespaced_pod_disruption_budget(NAME, ns)
    assert pdb.spec.min_available == 1

    now = wait_until(lambda: pods_when(core, ns, False), 60, "two demo pods on two nodes answering")
    for pod in now:
        assert pod.metadata.name in deployed["output"]       # demo_workload_pods, shown by the role
        status, answer = ask(pod.status.pod_ip, prompt="Hello")
        assert status == 200 and answer["object"] == "text_completion" and answer["model"] == MODEL
        assert answer["choices"][0]["finish_reason"] in ("stop", "length") and answer["usage"]["completion_tokens"] >= 1
        start = [e for e in server_log(pod) if e["event"] == "start"]
        assert start and start[-1]["gpu_name"] == "Fake GPU 0" and start[-1]["host"] == pod.status.pod_ip


def test_second_present_run_and_check_mode_change_nothing(apps, core, deployed, demo_vars):
    ns = deployed["ns"]
    generation = apps.read_namespaced_deployment(NAME, ns).metadata.generation
    _out, recap = run_playbook(PLAYBOOK, demo_vars)
    assert recap["changed"] == 0, recap

    # Check mode reports a change and makes none.
    _out, recap = run_playbook(PLAYBOOK, dict(demo_vars, demo_workload_model="other-llm"), check=True)
    assert recap["changed"] >= 1
    deployment = apps.read_namespaced_deployment(NAME, ns)
    assert deployment.metadata.generation == generation
    assert {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}["DEMO_MODEL"] == MODEL

    # A namespace that does not exist yet cannot be previewed by the server: reported, not created.
    other = "it-demo-" + uuid.uuid4().hex[:8]
    out, recap = run_playbook(PLAYBOOK, dict(demo_vars, demo_workload_namespace=other), check=True)
    assert recap["changed"] >= 1 and "does not exist yet" in out
    assert not exists(lambda: core.read_namespace(other))


def test_the_armed_shim_fails_the_pods_of_one_node_only(core, deployed):
    ns = deployed["ns"]
    patched = ansible_module(SHIM, {"kind": "Deployment", "name": NAME, "namespace": ns, "state": "present",
                                    "runtime_control": True})
    assert patched["changed"] and not patched.get("failed"), patched
    assert patched["templates"][0]["containers"] == ["server"]
    # The shimmed pods: the runner compiles the shim and the driver, then the server starts.
    shimmed_pods = wait_until(lambda: pods_when(core, ns, True), 90, "two shimmed pods answering")
    node = shimmed_pods[0].spec.node_name
    target = [p for p in shimmed_pods if p.spec.node_name == node]
    others = [p for p in shimmed_pods if p.spec.node_name != node]
    assert target and others
    pid_before = {name: pid for name, pid, _entry in live_pods(ns, NAME, container="server")[node]}

    try:
        write_control(node, shim_control.render(True, 1, "it-demo-workload", xid=79))
        first = {}
        for pod in target:
            first[pod.metadata.name] = wait_until(lambda pod=pod: failing(pod), 30,
                                                  "a failing request on %s" % pod.metadata.name)
        # The first failure is the server's own answer: XID 79 is CUDA_ERROR_NO_DEVICE.
        for status, answer in first.values():
            assert status == 500, answer
            assert answer["error"]["code"] == "cuda_error" and answer["error"]["type"] == "server_error"
            assert answer["error"]["message"].startswith("CUDA error 100 (CUDA_ERROR_NO_DEVICE) in cu")
        # It exited with status 3 and, restarted while the shim is armed, cannot start: no answer.
        for pod in target:
            wait_until(lambda pod=pod: any(e["event"] == "fatal" and e.get("phase") == "start" and e["code"] == 100
                                           for e in server_log(pod)), 60,
                       "a restart of %s that fails at start" % pod.metadata.name)
            status, answer = ask(pod.status.pod_ip)
            assert status != 200, answer
            assert any(e["event"] == "exit" and e["status"] == 3 for e in server_log(pod))
        # The other node's pods never noticed.
        for pod in others:
            assert serving(pod)
            assert not [e for e in server_log(pod) if e["event"] == "fatal"]

        write_control(node, shim_control.render(False, 2, "it-demo-workload"))
        for pod in target:
            wait_until(lambda pod=pod: serving(pod), 60, "%s answering again once disarmed" % pod.metadata.name)
        pid_after = {name: pid for name, pid, _entry in live_pods(ns, NAME, container="server")[node]}
        assert set(pid_after) == set(pid_before) and all(pid_after[n] != pid_before[n] for n in pid_before)
        for pod in others:
            assert serving(pod)
    finally:
        if os.path.exists(control_path(node)):
            os.unlink(control_path(node))

    removed = ansible_module(SHIM, {"kind": "Deployment", "name": NAME, "namespace": ns, "state": "absent"})
    assert removed["changed"] and not removed.get("failed"), removed
    wait_until(lambda: pods_when(core, ns, False), 90, "two pods without the shim answering")


def test_absent_removes_everything(core, apps, deployed, demo_vars):
    ns = deployed["ns"]
    names = [p.metadata.name for p in pods(core, ns)]
    assert names
    _out, recap = run_playbook(PLAYBOOK, dict(demo_vars, demo_workload_state="absent"))
    assert recap["changed"] >= 1
    assert not exists(lambda: core.read_namespace(ns))
    assert not exists(lambda: apps.read_namespaced_deployment(NAME, ns))
    # The runner stopped the pods' processes.
    wait_until(lambda: not live_pods(ns, NAME, container="server"), 30, "the servers' processes to stop")
    _out, recap = run_playbook(PLAYBOOK, dict(demo_vars, demo_workload_state="absent"))
    assert recap["changed"] == 0, recap
