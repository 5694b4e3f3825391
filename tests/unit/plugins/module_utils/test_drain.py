"""drain: pod selection, eviction requests, the retry schedule, budget matching and the messages, on
realistic Pod, PodDisruptionBudget and Status dicts."""
import copy
import json

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drain
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import gpu_node_drain

NODE = "gpu-node-1"


def pod(name, namespace="training", owner=("ReplicaSet", "trainer-7d9c8b5f4"), gpus=1, phase="Running",
        labels=None, annotations=None, init_gpus=0, requests_only=False, terminating=False):
    limits = {"cpu": "4", "memory": "16Gi"}
    requests = {"cpu": "2", "memory": "8Gi"}
    if gpus:
        (requests if requests_only else limits)["nvidia.com/gpu"] = str(gpus)
    containers = [{"name": "main", "image": "nvcr.io/nvidia/pytorch:25.01-py3",
                   "resources": {"limits": limits, "requests": requests}},
                  {"name": "sidecar", "image": "busybox:1.36", "resources": {}}]
    init = []
    if init_gpus:
        init.append({"name": "warmup", "image": "nvcr.io/nvidia/cuda:12.8.0-base",
                     "resources": {"limits": {"nvidia.com/gpu": str(init_gpus)}}})
    meta = {"name": name, "namespace": namespace, "uid": "uid-" + name, "resourceVersion": "4711",
            "labels": labels if labels is not None else {"app": "trainer"}, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": "uid-" + owner[1], "controller": True, "blockOwnerDeletion": True}]
    if terminating:
        meta["deletionTimestamp"] = "2026-11-22T18:20:18Z"
        meta["deletionGracePeriodSeconds"] = 30
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": NODE, "containers": containers, "initContainers": init},
            "status": {"phase": phase}}


def budget(name="trainer-pdb", namespace="training", selector=None, min_available=2, generation=1, observed=1,
           allowed=0, healthy=2, desired=2, expected=2):
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": namespace, "generation": generation},
            "spec": {"minAvailable": min_available,
                     "selector": {"matchLabels": {"app": "trainer"}} if selector is None else selector},
            "status": {"observedGeneration": observed, "disruptionsAllowed": allowed, "currentHealthy": healthy,
                       "desiredHealthy": desired, "expectedPods": expected}}


# What the API server answers (k8s.io/kubernetes pkg/registry/core/pod/storage/eviction.go).
REFUSED = json.dumps({
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": "Cannot evict pod as it would violate the pod's disruption budget.", "reason": "TooManyRequests",
    "details": {"causes": [{"reason": "DisruptionBudget",
                            "message": "The disruption budget trainer-pdb needs 2 healthy pods and has 2 currently"}]},
    "code": 429}).encode()
PROCESSING = {"kind": "Status", "status": "Failure", "reason": "TooManyRequests", "code": 429,
              "message": "Cannot evict pod as it would violate the pod's disruption budget.",
              "details": {"causes": [{"reason": "DisruptionBudget",
                                      "message": "The disruption budget web-pdb is still being processed by the server."}]}}
MULTIPLE = json.dumps({
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500,
    "message": "Internal error occurred: This pod has more than one PodDisruptionBudget, which the eviction "
               "subresource does not support.",
    "details": {"causes": [{"message": "This pod has more than one PodDisruptionBudget, which the eviction "
                                       "subresource does not support."}]}})


# --- selection ----------------------------------------------------------------------------------

def node_pods():
    return [
        pod("trainer-a"),
        pod("trainer-b", requests_only=True),
        pod("warmup-only", gpus=0, init_gpus=1, owner=("Job", "warmup")),
        pod("web-1", gpus=0, owner=("ReplicaSet", "web-5c6")),
        pod("zero-gpu", gpus=0, owner=("ReplicaSet", "web-5c6")),
        pod("dcgm-exporter-x", namespace="gpu-operator", gpus=1, owner=("DaemonSet", "dcgm-exporter")),
        pod("device-plugin-y", namespace="gpu-operator", gpus=0, owner=("DaemonSet", "nvidia-device-plugin")),
        pod("static-gpu-" + NODE, namespace="kube-system", owner=("Node", NODE),
            annotations={drain.MIRROR_ANNOTATION: "d41d8cd98f00b204e9800998ecf8427e"}),
        pod("bare", namespace="default"),
        pod("done", phase="Succeeded", owner=("Job", "eval")),
        pod("leaving", terminating=True),
    ]


def names(pods):
    return [drain.pod_key(p) for p in pods]


def test_gpu_mode_chooses_pods_asking_for_gpus_in_limits_requests_or_init_containers():
    targets, skipped = drain.select(node_pods(), "gpu")
    assert names(targets) == ["default/bare", "training/done", "training/leaving", "training/trainer-a",
                              "training/trainer-b", "training/warmup-only"]
    assert [(s["namespace"], s["name"], s["owner"]) for s in skipped] == [
        ("gpu-operator", "dcgm-exporter-x", "DaemonSet/dcgm-exporter"),
        ("kube-system", "static-gpu-" + NODE, "Node/" + NODE)]
    assert "DaemonSet" in skipped[0]["reason"] and "mirror" in skipped[1]["reason"]
    assert skipped[0]["uid"] == "uid-dcgm-exporter-x"


def test_all_mode_takes_every_pod_but_daemonsets_and_mirror_pods():
    targets, skipped = drain.select(node_pods(), "all")
    assert "training/web-1" in names(targets) and "training/zero-gpu" in names(targets)
    assert len(targets) == 8
    assert sorted(s["name"] for s in skipped) == ["dcgm-exporter-x", "device-plugin-y", "static-gpu-" + NODE]


def test_namespaces_and_another_gpu_resource():
    targets, skipped = drain.select(node_pods(), "all", namespaces=["gpu-operator", "default"])
    assert names(targets) == ["default/bare"] and len(skipped) == 2
    amd = pod("rocm", gpus=0)
    amd["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"] = "1"
    assert names(drain.select([amd] + node_pods(), "gpu", gpu_resource="amd.com/gpu")[0]) == ["training/rocm"]


def test_daemonset_pods_fail_without_ignore_daemonsets_as_kubectl_does():
    with pytest.raises(drain.DrainError, match=r"gpu-operator/dcgm-exporter-x, gpu-operator/device-plugin-y "
                                               r"cannot be drained .* ignore_daemonsets: true"):
        drain.select(node_pods(), "all", ignore_daemonsets=False)
    # Only the DaemonSet pods the selection chose count.
    drain.select([pod("trainer-a"), pod("device-plugin-y", gpus=0, owner=("DaemonSet", "dp"))], "gpu",
                 ignore_daemonsets=False)
    with pytest.raises(drain.DrainError, match="pods must be one of gpu, all"):
        drain.select([], "some")


@pytest.mark.parametrize("quantity, asks", [("1", True), ("8", True), (1, True), ("0", False), (0, False),
                                            ("0.0", False), ("500m", True), ("0m", False), (None, False)])
def test_quantities(quantity, asks):
    p = pod("q", gpus=0)
    if quantity is not None:
        p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = quantity
    assert drain.requests_resource(p) is asks


def test_owner_prefers_the_controller_reference():
    p = pod("x", owner=None)
    assert drain.owner_text(p) is None and drain.unmanaged([p]) == ["training/x"]
    p["metadata"]["ownerReferences"] = [{"kind": "ConfigMap", "name": "cm"},
                                        {"kind": "StatefulSet", "name": "db", "controller": True}]
    assert drain.owner_text(p) == "StatefulSet/db" and drain.unmanaged([p]) == []


def test_actions_and_records():
    assert drain.action(pod("a")) == drain.EVICT
    assert drain.action(pod("a"), disable_eviction=True) == drain.DELETE
    assert drain.action(pod("a", terminating=True), disable_eviction=True) == drain.WAIT
    record = drain.pod_record(pod("trainer-a", phase="Failed"))
    assert record == dict(namespace="training", name="trainer-a", uid="uid-trainer-a",
                          owner="ReplicaSet/trainer-7d9c8b5f4", phase="Failed", action="evict", attempts=0,
                          refusals=0, budget=None, retried_on=None, evicted=None, evicted_after=None, gone=None,
                          gone_after=None)


# --- requests -----------------------------------------------------------------------------------

def test_eviction_body_targets_only_this_incarnation():
    assert drain.eviction_body(pod("trainer-a")) == {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "trainer-a", "namespace": "training"},
        "deleteOptions": {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": "uid-trainer-a"}}}
    body = drain.eviction_body(pod("trainer-a"), grace_period=0)
    assert body["deleteOptions"]["gracePeriodSeconds"] == 0
    assert drain.delete_options(pod("b"), 30) == {"apiVersion": "v1", "kind": "DeleteOptions",
                                                  "preconditions": {"uid": "uid-b"}, "gracePeriodSeconds": 30}


def test_retry_schedule_doubles_from_half_a_second_to_the_cap():
    assert drain.retry_schedule(7) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert drain.retry_schedule(4, max_interval=60) == [0.5, 1.0, 2.0, 4.0]
    assert drain.retry_schedule(2, max_interval=0.2) == [0.2, 0.2]
    assert drain.retry_delay(0) == 0.0
    assert drain.retry_delay(10 ** 6, max_interval=30) == 30.0   # no overflow on very long drains


def test_refusals_name_their_budget():
    assert drain.refusing_budget(REFUSED) == "trainer-pdb"
    assert drain.refusing_budget(REFUSED.decode()) == "trainer-pdb"
    assert drain.refusing_budget(PROCESSING) == "web-pdb"
    assert drain.refusing_budget({"message": "Too many requests, please try again later."}) is None
    assert drain.refusing_budget("<html>proxy error</html>") is None
    assert drain.refusing_budget(None) is None
    assert not drain.is_multiple_budgets(REFUSED)
    assert drain.is_multiple_budgets(MULTIPLE) and drain.is_multiple_budgets(MULTIPLE.encode())
    assert drain.status_message(REFUSED) == ("Cannot evict pod as it would violate the pod's disruption budget. "
                                             "(The disruption budget trainer-pdb needs 2 healthy pods and has 2 "
                                             "currently)")


# --- budgets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("selector, labels, matches", [
    ({"matchLabels": {"app": "trainer"}}, {"app": "trainer", "tier": "gpu"}, True),
    ({"matchLabels": {"app": "trainer"}}, {"app": "web"}, False),
    ({}, {"anything": "x"}, True),                 # policy/v1: an empty selector selects every pod
    (None, {"app": "trainer"}, False),             # and a missing one none
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["trainer", "eval"]}]}, {"app": "eval"}, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {}, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {"app": "web"}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": ""}, False),
    ({"matchLabels": {"app": "trainer"}, "matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
     {"app": "trainer"}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "Gt", "values": ["1"]}]}, {"gpu": "2"}, False),
])
def test_selector_matching(selector, labels, matches):
    assert drain.selector_matches(selector, labels) is matches


def test_budgets_for_a_pod_are_those_of_its_namespace_that_select_it():
    budgets = [budget("b"), budget("a"), budget("other-ns", namespace="serving"),
               budget("web", selector={"matchLabels": {"app": "web"}})]
    assert drain.budgets_for(pod("trainer-a"), budgets) == ["a", "b"]


def test_a_budget_allows_only_once_its_controller_caught_up():
    assert not drain.budget_allows(budget(allowed=0))
    assert drain.budget_allows(budget(allowed=1))
    assert not drain.budget_allows(budget(allowed=2, generation=2, observed=1))   # spec changed, not yet counted
    fresh = budget()
    del fresh["status"]
    assert not drain.budget_allows(fresh)


def test_budget_text_and_summary():
    b = budget()
    assert drain.budget_text(b) == ("PodDisruptionBudget training/trainer-pdb (minAvailable 2; currentHealthy 2, "
                                    "desiredHealthy 2, disruptionsAllowed 0, expectedPods 2)")
    b["spec"] = {"maxUnavailable": "25%", "selector": {}}
    b["status"] = {}
    assert drain.budget_text(b) == ("PodDisruptionBudget training/trainer-pdb (maxUnavailable 25%; currentHealthy ?, "
                                    "desiredHealthy ?, disruptionsAllowed ?, expectedPods ?)")
    assert drain.budget_summary(budget()) == dict(namespace="training", name="trainer-pdb", min_available=2,
                                                  max_unavailable=None, current_healthy=2, desired_healthy=2,
                                                  disruptions_allowed=0, expected_pods=2)


# --- results ------------------------------------------------------------------------------------

def records():
    refused = drain.pod_record(pod("trainer-a"))
    refused.update(attempts=5, refusals=5, budget="trainer-pdb")
    evicted = drain.pod_record(pod("trainer-b"))
    evicted.update(attempts=1, evicted="2026-11-22T18:21:02.118934Z", evicted_after=0.1)
    leaving = drain.pod_record(pod("leaving", terminating=True))
    done = drain.pod_record(pod("done"))
    done.update(attempts=1, evicted="2026-11-22T18:21:02.2Z", gone="2026-11-22T18:21:02.3Z")
    return [refused, evicted, leaving, done]


def test_pending_depends_on_wait():
    assert [r["name"] for r in drain.pending(records(), wait=True)] == ["trainer-a", "trainer-b", "leaving"]
    assert [r["name"] for r in drain.pending(records(), wait=False)] == ["trainer-a"]


def test_timeout_message_names_each_pod_the_budget_and_the_fix():
    pods = {"training/trainer-b": pod("trainer-b", terminating=True)}
    msg = drain.timeout_message(NODE, 300, records(), True, {"training/trainer-pdb": budget()}, pods)
    assert msg.startswith("timed out after 300s draining node gpu-node-1: 3 pod(s) still on it. ")
    assert ("training/trainer-a: eviction refused 5 time(s) by PodDisruptionBudget training/trainer-pdb "
            "(minAvailable 2; currentHealthy 2, desiredHealthy 2, disruptionsAllowed 0, expectedPods 2)") in msg
    assert ("training/trainer-b: evicted at 2026-11-22T18:21:02.118934Z, still terminating since "
            "2026-11-22T18:20:18Z (grace period 30s)") in msg
    assert "training/leaving: already terminating, still terminating" in msg
    assert "training/done" not in msg
    assert "scale the workload up" in msg and "relax the PodDisruptionBudget" in msg
    assert "disable_eviction: true" in msg and "raise wait_timeout" in msg
    # Without the budget's status (no read access), the budget is still named.
    msg = drain.timeout_message(NODE, 300, records()[:1], False, {})
    assert "by PodDisruptionBudget training/trainer-pdb." in msg and "raise wait_timeout" not in msg


def test_timeout_message_for_a_429_without_a_budget_and_an_untried_pod():
    rate_limited = drain.pod_record(pod("a"))
    rate_limited.update(refusals=1, attempts=1)
    untried = drain.pod_record(pod("b"))
    msg = drain.timeout_message(NODE, 5, [rate_limited, untried], True, {})
    assert "training/a: eviction refused 1 time(s) by the API server (HTTP 429 without a budget named)" in msg
    assert "training/b: not evicted yet" in msg


def test_diff_shows_the_cordon_and_the_pods_removed():
    assert drain.diff(NODE, False, True, records()) == {
        "before": {"node": NODE, "unschedulable": False,
                   "pods": ["training/trainer-a", "training/trainer-b", "training/done"]},
        "after": {"node": NODE, "unschedulable": True, "pods": []}}


def test_multiple_budgets_message():
    msg = drain.multiple_budgets_message(pod("trainer-a"), ["a", "b"])
    assert "pod training/trainer-a" in msg and "more than one PodDisruptionBudget (a, b)" in msg
    assert "disable_eviction: true" in msg
    assert "the budgets in namespace training that select it" in drain.multiple_budgets_message(pod("x"), [])


def test_utc_is_rfc3339():
    assert drain.utc(1795371618.412301) == "2026-11-22T18:20:18.412301Z"


# --- the module's parameter checks --------------------------------------------------------------

def params(**kwargs):
    base = dict(name=NODE, cordon=True, pods="gpu", gpu_resource="nvidia.com/gpu", label_selector=None,
                namespaces=[], ignore_daemonsets=True, grace_period=None, disable_eviction=False,
                retry_max_interval=5.0, wait=True, wait_timeout=300)
    base.update(kwargs)
    return base


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"wait_timeout": 0}, "wait_timeout must be at least 1 second"),
    ({"grace_period": -1}, "grace_period must be 0 or more seconds"),
    ({"grace_period": 0}, None),
    ({"retry_max_interval": 0}, "retry_max_interval must be more than 0 seconds"),
    ({"gpu_resource": " "}, "gpu_resource must not be empty"),
    ({"label_selector": ""}, "label_selector must not be empty"),
    ({"namespaces": ["a", ""]}, "namespaces must not contain empty names"),
])
def test_check_params(changes, problem):
    assert gpu_node_drain.check_params(params(**changes)) == problem


def test_argument_spec_defaults_match_the_documentation():
    spec = gpu_node_drain.argument_spec()
    assert spec["pods"]["default"] == "gpu" and spec["gpu_resource"]["default"] == "nvidia.com/gpu"
    assert spec["cordon"]["default"] is True and spec["ignore_daemonsets"]["default"] is True
    assert spec["disable_eviction"]["default"] is False and spec["wait_timeout"]["default"] == 300
    assert spec["retry_max_interval"]["default"] == 5.0


# --- the module's bookkeeping of watch events ---------------------------------------------------

class StubModule:
    check_mode = False

    def __init__(self):
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


def drainer(*pods):
    d = gpu_node_drain.Drainer(StubModule(), params(), started=100.0, started_wall=1795371618.0)
    for p in pods:
        key = drain.pod_key(p)
        record = drain.pod_record(p)
        d.records.append(record)
        d.by_key[key] = record
        d.targets[key] = d.pods[key] = p
        d.next_try[key] = 100.0
    return d


def test_pod_events_count_a_pod_gone_when_deleted_or_replaced():
    a, b, c = pod("trainer-a"), pod("trainer-b"), pod("trainer-c")
    d = drainer(a, b, c)
    modified = copy.deepcopy(a)
    modified["metadata"]["deletionTimestamp"] = "2026-11-22T18:20:19Z"
    d.pod_event("MODIFIED", modified, 101.0, 1795371619.0)
    assert d.by_key["training/trainer-a"]["gone"] is None and d.pods["training/trainer-a"] is modified
    d.pod_event("DELETED", a, 102.5, 1795371620.5)
    assert d.by_key["training/trainer-a"]["gone"] == "2026-11-22T18:20:20.500000Z"
    assert d.by_key["training/trainer-a"]["gone_after"] == 2.5
    replaced = copy.deepcopy(b)
    replaced["metadata"]["uid"] = "uid-new"
    d.pod_event("ADDED", replaced, 103.0, 1795371621.0)
    assert d.by_key["training/trainer-b"]["gone_after"] == 3.0
    d.pod_event("DELETED", pod("someone-else"), 104.0, 1795371622.0)   # not ours: ignored
    d.pod_event("SYNC", [], 105.0, 1795371623.0)                        # a relist without trainer-c
    assert d.by_key["training/trainer-c"]["gone_after"] == 5.0
    assert d.by_key["training/trainer-a"]["gone_after"] == 2.5          # the first sighting counts


def test_a_budget_that_frees_up_retries_the_pods_it_refused_at_once():
    a, b, other = pod("trainer-a"), pod("trainer-b"), pod("web-1", labels={"app": "web"})
    d = drainer(a, b, other)
    for key in ("training/trainer-a", "training/web-1"):
        d.by_key[key].update(refusals=3, budget="trainer-pdb" if key.endswith("a") else "web-pdb")
        d.next_try[key] = 130.0
        d.trigger[key] = "backoff"
    d.budget_event("training", "MODIFIED", budget(allowed=0), 110.0)
    assert d.next_try["training/trainer-a"] == 130.0                    # still no disruption allowed
    d.budget_event("training", "MODIFIED", budget(allowed=2, generation=2, observed=1), 111.0)
    assert d.next_try["training/trainer-a"] == 130.0                    # spec changed, not counted yet
    d.budget_event("training", "MODIFIED", budget(allowed=2, generation=2, observed=2), 112.0)
    assert d.next_try["training/trainer-a"] == 112.0 and d.trigger["training/trainer-a"] == "budget"
    assert d.next_try["training/web-1"] == 130.0                        # another budget's pod waits
    assert d.next_try["training/trainer-b"] == 100.0 and "training/trainer-b" not in d.trigger  # never refused
    d.budget_event("training", "DELETED", budget("web-pdb", selector={"matchLabels": {"app": "web"}}), 113.0)
    assert d.next_try["training/web-1"] == 113.0 and "training/web-pdb" not in d.budgets
    d.budget_event("training", "SYNC", [budget("x", allowed=0)], 114.0)
    assert list(d.budgets) == ["training/x"]


def test_a_failed_budget_watch_warns_once_and_a_failed_pod_watch_fails():
    d = drainer(pod("trainer-a"))
    d.handle("budgets/training", "FAILED", gpu_node_drain.KubeError("listing PodDisruptionBudget failed: HTTP 403"),
             0, 0)
    d.handle("budgets/serving", "FAILED", gpu_node_drain.KubeError("listing PodDisruptionBudget failed: HTTP 403"),
             0, 0)
    assert len(d.module.warnings) == 1 and "backoff schedule only" in d.module.warnings[0]
    with pytest.raises(gpu_node_drain.KubeError, match="needs list and watch on pods"):
        d.handle("pods", "FAILED", gpu_node_drain.KubeError("listing Pod failed: HTTP 403"), 0, 0)
