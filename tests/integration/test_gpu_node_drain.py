"""gpu_node_drain on the local control plane: GPU workloads pinned to gpu-node-1 are drained while a
PodDisruptionBudget refuses, then allows, their evictions.

Each test builds, in its own namespace, two replicas of a GPU Deployment (nvidia.com/gpu: 1 each), a
CPU-only Deployment and a DaemonSet, all on gpu-node-1 (KWOK makes their pods Running and Ready, so
budgets count them healthy). Replacements of evicted pods stay Pending: they are pinned to the
cordoned node. The fixture uncordons gpu-node-1 afterwards whatever the test did; the drains name
the test's namespace, so pods that other tests leave on the node are never touched.
"""
import datetime
import json
import threading
import time

import pytest

from support import ansible_module, wait_until

MODULE = "gpu_resilience.fault_injection.gpu_node_drain"
NODE = "gpu-node-1"
GPU = "nvidia.com/gpu"
PLACEHOLDER = "(traceback unavailable)"


@pytest.fixture()
def node(core):
    """gpu-node-1, its cordon put back as it was afterwards."""
    before = bool(core.read_node(NODE).spec.unschedulable)
    yield NODE
    core.patch_node(NODE, {"spec": {"unschedulable": True if before else None}})


def pinned(labels, containers, node_selector=False):
    spec = {"containers": containers, "terminationGracePeriodSeconds": 5}
    if node_selector:
        spec["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    else:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}}}
    return {"metadata": {"labels": labels}, "spec": spec}


def container(gpus=0):
    c = {"name": "main", "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m"}}}
    if gpus:
        c["resources"]["limits"] = {GPU: str(gpus)}
    return c


def deployment(name, replicas, gpus):
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": pinned(labels, [container(gpus)])}}


def budget(name, min_available, app="gpu-train"):
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}}}


def pods_on_node(core, ns):
    """name -> uid of the namespace's pods on the node."""
    return dict((p.metadata.name, p.metadata.uid) for p in core.list_namespaced_pod(ns).items
                if p.spec.node_name == NODE and not p.metadata.deletion_timestamp)


def ready_on_node(core, ns, prefix):
    return sorted(p.metadata.name for p in core.list_namespaced_pod(ns).items
                  if p.metadata.name.startswith(prefix) and p.spec.node_name == NODE and p.status.phase == "Running"
                  and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []))


@pytest.fixture()
def workloads(core, apps, ns):
    """The GPU Deployment (2 pods), the CPU Deployment (1 pod) and the DaemonSet (1 pod), all Ready on gpu-node-1."""
    apps.create_namespaced_deployment(ns, deployment("gpu-train", 2, 1))
    apps.create_namespaced_deployment(ns, deployment("cpu-web", 1, 0))
    apps.create_namespaced_daemon_set(ns, {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "node-agent"},
        "spec": {"selector": {"matchLabels": {"app": "node-agent"}},
                 "template": pinned({"app": "node-agent"}, [container()], node_selector=True)}})
    wait_until(lambda: len(ready_on_node(core, ns, "gpu-train-")) == 2 and ready_on_node(core, ns, "cpu-web-")
               and ready_on_node(core, ns, "node-agent-"), 60, "the workloads Ready on " + NODE)
    return pods_on_node(core, ns)


@pytest.fixture()
def ns(namespace):
    return namespace


def add_budget(policy, ns, body, expect_allowed=0):
    """Create a budget and wait until its controller has counted the pods."""
    policy.create_namespaced_pod_disruption_budget(ns, body)
    name = body["metadata"]["name"]

    def counted():
        pdb = policy.read_namespaced_pod_disruption_budget(name, ns)
        s = pdb.status
        return s is not None and s.observed_generation == pdb.metadata.generation and s.expected_pods == 2 \
            and s.disruptions_allowed == expect_allowed
    wait_until(counted, 30, "PodDisruptionBudget %s/%s counted" % (ns, name))


def refused_evictions(api_client):
    """Evictions the API server answered with 429 so far (its apiserver_request_total counter)."""
    response = api_client.call_api(*api_client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    response.read()
    total = 0
    for line in response.data.decode().splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="pods"' in line \
                and 'subresource="eviction"' in line and 'code="429"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def drain(args, check=False, diff=False, timeout=180):
    return ansible_module(MODULE, args, check=check, diff=diff, timeout=timeout)


def no_traceback(result):
    return "Traceback" not in json.dumps(result) and result.get("exception", PLACEHOLDER) == PLACEHOLDER


def epoch(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def by_name(result):
    return dict((p["name"], p) for p in result["pods"])


class Relaxer(threading.Thread):
    """Sets the budget's minAvailable to 0 once the API server has refused `refusals` evictions, so the
    drain has provably been refused and retried before the budget frees up."""

    def __init__(self, api_client, policy, ns, name, refusals):
        super().__init__(daemon=True)
        self.api_client, self.policy, self.ns, self.name = api_client, policy, ns, name
        self.baseline = refused_evictions(api_client)
        self.refusals = refusals
        self.done = threading.Event()
        self.patched_at = None
        self.seen = None
        self.error = None

    def run(self):
        try:
            deadline = time.monotonic() + 60
            while not self.done.is_set() and time.monotonic() < deadline:
                self.seen = refused_evictions(self.api_client) - self.baseline
                if self.seen >= self.refusals:
                    self.patched_at = time.time()
                    self.policy.patch_namespaced_pod_disruption_budget(self.name, self.ns, {"spec": {"minAvailable": 0}})
                    return
                self.done.wait(0.1)  # the counter has no watch: a short poll
        except Exception as e:  # reported by the test
            self.error = e


def test_refused_evictions_are_retried_until_the_budget_allows_them(api_client, core, policy, node, ns, workloads):
    add_budget(policy, ns, budget("gpu-train", 2))
    gpu_pods = sorted(n for n in workloads if n.startswith("gpu-train-"))
    others = dict((n, u) for n, u in workloads.items() if not n.startswith("gpu-train-"))
    # 4 refusals per pod come at 0, 0.5, 1.5 and 3.5 s; with retry_max_interval 60 the next backoff
    # retry is due at 7.5 s, so an eviction soon after the budget frees up was started by the budget watch.
    relaxer = Relaxer(api_client, policy, ns, "gpu-train", refusals=8)
    relaxer.start()
    try:
        result = drain({"name": node, "namespaces": [ns], "retry_max_interval": 60, "wait_timeout": 120})
    finally:
        relaxer.done.set()
        relaxer.join(10)
    assert relaxer.error is None, relaxer.error
    assert not result.get("failed"), result
    assert relaxer.patched_at, "the budget was never relaxed (refusals seen: %s)" % relaxer.seen
    assert result["changed"] is True and result["cordoned"] is True and result["node"] == node
    assert core.read_node(node).spec.unschedulable is True
    pods = by_name(result)
    assert sorted(pods) == gpu_pods
    for name, pod in pods.items():
        assert pod["namespace"] == ns and pod["uid"] == workloads[name] and pod["action"] == "evict"
        assert pod["owner"].startswith("ReplicaSet/gpu-train-") and pod["phase"] == "Running"
        assert pod["refusals"] >= 1 and pod["attempts"] == pod["refusals"] + 1 and pod["budget"] == "gpu-train"
        assert pod["retried_on"] == "budget", pod
        evicted, gone = epoch(pod["evicted"]), epoch(pod["gone"])
        assert relaxer.patched_at - 0.05 <= evicted <= relaxer.patched_at + 3, (pod, relaxer.patched_at)
        assert evicted <= gone and pod["evicted_after"] <= pod["gone_after"] <= result["elapsed"]
    assert sum(p["refusals"] for p in pods.values()) >= 8
    print("\nrefusals %s; budget relaxed at +%.2f s; evicted +%s s, gone +%s s after the module's start" % (
        [p["refusals"] for p in pods.values()], relaxer.patched_at - epoch(result["started"]),
        [p["evicted_after"] for p in pods.values()], [p["gone_after"] for p in pods.values()]))
    assert [b["name"] for b in result["budgets"]] == ["gpu-train"]
    assert result["skipped_pods"] == []   # pods=gpu: the DaemonSet pod asks for no GPU, so it is not chosen
    assert epoch(result["started"]) < epoch(result["finished"])
    # The CPU pod and the DaemonSet pod stay; the GPU pods are gone from the node.
    now = pods_on_node(core, ns)
    assert dict((n, u) for n, u in now.items() if n in others) == others
    assert not [n for n in now if n.startswith("gpu-train-")]

    again = drain({"name": node, "namespaces": [ns]})
    assert not again.get("failed"), again
    assert again["changed"] is False and again["cordoned"] is False and again["pods"] == []


def test_timeout_names_the_budget_that_refuses(core, policy, node, ns, workloads):
    add_budget(policy, ns, budget("gpu-train", 2))
    result = drain({"name": node, "namespaces": [ns], "wait_timeout": 3})
    assert result.get("failed") and no_traceback(result), result
    msg = result["msg"]
    assert "timed out after 3s draining node %s: 2 pod(s) still on it" % node in msg, msg
    assert "PodDisruptionBudget %s/gpu-train (minAvailable 2; currentHealthy 2, desiredHealthy 2, " \
           "disruptionsAllowed 0, expectedPods 2)" % ns in msg, msg
    assert "relax the PodDisruptionBudget" in msg and "disable_eviction: true" in msg and "scale" in msg
    for name in (n for n in workloads if n.startswith("gpu-train-")):
        assert "%s/%s: eviction refused" % (ns, name) in msg
    # The partial result comes with the failure: refusals counted, nothing evicted, the node stays cordoned.
    assert result["cordoned"] is True and result["changed"] is True
    assert all(p["refusals"] >= 2 and p["evicted"] is None and p["gone"] is None for p in result["pods"])
    assert result["budgets"][0]["disruptions_allowed"] == 0
    assert core.read_node(node).spec.unschedulable is True
    assert pods_on_node(core, ns) == workloads


def test_check_mode_changes_nothing_and_lists_what_would_go(core, policy, node, ns, workloads):
    add_budget(policy, ns, budget("gpu-train", 2))
    assert core.read_node(node).spec.unschedulable is not True
    result = drain({"name": node, "namespaces": [ns]}, check=True, diff=True)
    assert not result.get("failed"), result
    gpu_pods = sorted(n for n in workloads if n.startswith("gpu-train-"))
    assert result["changed"] is True and result["cordoned"] is True
    assert sorted(by_name(result)) == gpu_pods
    assert all(p["attempts"] == 0 and p["evicted"] is None and p["action"] == "evict" for p in result["pods"])
    diff = result["diff"]
    assert diff["before"] == {"node": node, "unschedulable": False, "pods": ["%s/%s" % (ns, n) for n in gpu_pods]}
    assert diff["after"] == {"node": node, "unschedulable": True, "pods": []}

    everything = drain({"name": node, "namespaces": [ns], "pods": "all"}, check=True)
    assert sorted(by_name(everything)) == sorted(n for n in workloads if not n.startswith("node-agent-"))
    (skipped,) = everything["skipped_pods"]
    assert skipped["name"].startswith("node-agent-") and skipped["owner"] == "DaemonSet/node-agent"
    assert "DaemonSet" in skipped["reason"]
    # Nothing changed: not cordoned, no refusal asked for, every pod still there.
    assert core.read_node(node).spec.unschedulable is not True
    assert pods_on_node(core, ns) == workloads


def test_all_pods_deleted_without_eviction_keep_the_daemonset(core, policy, node, ns, workloads):
    add_budget(policy, ns, budget("gpu-train", 2))
    result = drain({"name": node, "namespaces": [ns], "pods": "all", "disable_eviction": True, "grace_period": 0,
                    "wait_timeout": 60})
    assert not result.get("failed"), result
    assert result["changed"] is True and result["cordoned"] is True
    assert sorted(by_name(result)) == sorted(n for n in workloads if not n.startswith("node-agent-"))
    assert all(p["action"] == "delete" and p["attempts"] == 1 and p["refusals"] == 0 and p["gone"]
               for p in result["pods"])
    assert [s["owner"] for s in result["skipped_pods"]] == ["DaemonSet/node-agent"]
    assert list(pods_on_node(core, ns)) == [n for n in workloads if n.startswith("node-agent-")]
    again = drain({"name": node, "namespaces": [ns], "pods": "all"})
    assert not again.get("failed") and again["changed"] is False and again["pods"] == [], again


def test_overlapping_budgets_fail_naming_both(core, policy, node, ns, workloads):
    add_budget(policy, ns, budget("gpu-train", 0), expect_allowed=2)
    add_budget(policy, ns, budget("gpu-train-too", 1), expect_allowed=1)
    result = drain({"name": node, "namespaces": [ns], "wait_timeout": 30})
    assert result.get("failed") and no_traceback(result), result
    assert "more than one PodDisruptionBudget (gpu-train, gpu-train-too)" in result["msg"], result["msg"]
    assert pods_on_node(core, ns) == workloads


def test_statefulset_pod_recreated_under_its_name_counts_as_gone(apps, core, node, ns):
    labels = {"app": "gpu-db"}
    apps.create_namespaced_stateful_set(ns, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "gpu-db"},
        "spec": {"replicas": 1, "serviceName": "gpu-db", "selector": {"matchLabels": labels},
                 "template": pinned(labels, [container(1)])}})
    wait_until(lambda: ready_on_node(core, ns, "gpu-db-") == ["gpu-db-0"], 60, "gpu-db-0 Ready")
    first = pods_on_node(core, ns)["gpu-db-0"]
    # Not cordoned: the StatefulSet puts gpu-db-0 back on the same node, under the same name.
    result = drain({"name": node, "namespaces": [ns], "cordon": False, "wait_timeout": 60})
    assert not result.get("failed"), result
    assert result["cordoned"] is False and result["changed"] is True
    (pod,) = result["pods"]
    assert pod["uid"] == first and pod["attempts"] == 1 and pod["evicted"] and pod["gone"]
    wait_until(lambda: ready_on_node(core, ns, "gpu-db-") == ["gpu-db-0"], 60, "gpu-db-0 back")
    assert pods_on_node(core, ns)["gpu-db-0"] != first
    assert core.read_node(node).spec.unschedulable is not True


@pytest.mark.parametrize("args, words", [
    ({"name": "no-such-node"}, "node no-such-node not found"),
    ({"name": "gpu-node-1; reboot"}, "not a valid Kubernetes node name"),
    ({"name": NODE, "pods": "all", "ignore_daemonsets": False}, "ignore_daemonsets: true"),
    ({"name": NODE, "wait_timeout": 0}, "wait_timeout must be at least 1"),
])
def test_bad_input_fails_clearly_and_changes_nothing(core, node, ns, workloads, args, words):
    args = dict(args, namespaces=[ns])
    result = drain(args)
    assert result.get("failed") and no_traceback(result), result
    assert words in result["msg"], result["msg"]
    assert core.read_node(NODE).spec.unschedulable is not True
    assert pods_on_node(core, ns) == workloads
