"""Unit tests of the sweeper, files/healthcheck/gpu_sweeper.py: idle detection, the cap, which
maintenance taint is its own, the Job it creates, the outcome it records, and whole runs against
an in-memory API (nodes with resourceVersions and conflicts, pods, Jobs).

The sweeper is loaded by file path, the way it runs from its ConfigMap.
"""
import copy
import datetime
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT / "files" / "common") not in sys.path:
    sys.path.insert(0, str(ROOT / "files" / "common"))
_spec = importlib.util.spec_from_file_location("gpu_sweeper", ROOT / "files" / "healthcheck" / "gpu_sweeper.py")
sweeper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweeper)

PREFIX = "gpu-healthcheck.aws-samples.io/"
MAINTENANCE = {"key": PREFIX + "maintenance", "value": "sweep", "effect": "NoSchedule"}
UNHEALTHY = {"key": PREFIX + "unhealthy", "value": "true", "effect": "NoSchedule"}
STANDING = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
NOW = datetime.datetime(2026, 11, 22, 3, 0, 0, tzinfo=datetime.timezone.utc)


def config(**overrides):
    raw = {"prefix": PREFIX, "namespace": "gpu-healthcheck", "max_nodes": 2, "min_interval_seconds": 86400}
    raw.update(overrides)
    return sweeper.load_config(raw)


def node(name, taints=None, unschedulable=False, ready=True, gpus=8, annotations=None, rv="100"):
    obj = {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "resourceVersion": rv, "labels": {"nvidia.com/gpu.present": "true"},
                        "annotations": dict(annotations or {})},
           "spec": {},
           "status": {"allocatable": {"cpu": "192", "nvidia.com/gpu": str(gpus)},
                      "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    if taints:
        obj["spec"]["taints"] = copy.deepcopy(taints)
    if unschedulable:
        obj["spec"]["unschedulable"] = True
    return obj


def pod(name, node_name, gpus=0, phase="Running", init_gpus=0, limit_only=False, namespace="team-a"):
    def container(count):
        if not count:
            return {"name": "c", "resources": {"requests": {"cpu": "1"}}}
        resources = {"limits": {"nvidia.com/gpu": str(count)}}
        if not limit_only:
            resources["requests"] = {"nvidia.com/gpu": count}
        return {"name": "c", "resources": resources}
    spec = {"containers": [container(gpus)]}
    if node_name:
        spec["nodeName"] = node_name
    if init_gpus:
        spec["initContainers"] = [container(init_gpus)]
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": {"phase": phase}}


def state_annotation(job="gpu-sweep-x", taint_added=True, by=sweeper.SWEEPER_NAME):
    return {PREFIX + "sweep-state": json.dumps({"by": by, "job": job, "started": "2026-11-22T02:00:00Z",
                                                "taint_added": taint_added, "version": 1})}


def result_annotation(finished):
    return {PREFIX + "sweep-result": json.dumps({"result": "pass", "finished": finished})}


# --- configuration -----------------------------------------------------------------------------

def test_defaults_and_validation():
    cfg = sweeper.load_config({})
    assert cfg["prefix"] == PREFIX and cfg["job"]["command"] == ["dcgmi", "diag", "-r", "2"]
    assert cfg["job"]["active_deadline_seconds"] != 900   # its own deadline, not a generic one
    for bad, words in [({"prefix": "no-slash"}, "prefix"), ({"max_nodes": -1}, "max_nodes"),
                       ({"max_nodes": True}, "max_nodes"), ({"job": {"command": "dcgmi diag"}}, "command"),
                       ({"job": {"active_deadline_seconds": 0}}, "active_deadline_seconds"),
                       ({"job": {"nope": 1}}, "unknown job setting"), ({"typo": 1}, "unknown setting"),
                       ({"job": {"name_prefix": "Bad_Prefix"}}, "name_prefix"),
                       ({"job": {"tolerations": "all"}}, "tolerations")]:
        with pytest.raises(sweeper.ConfigError, match=words):
            sweeper.load_config(bad)


# --- idle detection ----------------------------------------------------------------------------

@pytest.mark.parametrize("the_pod, gpus", [
    (pod("a", "n", gpus=1), 1),
    (pod("a", "n", gpus=4, limit_only=True), 4),          # a limit alone is the request
    (pod("a", "n", gpus=0), 0),
    (pod("a", "n", gpus=0, init_gpus=2), 2),               # an init container holds GPUs too
    (pod("a", "n", gpus=3, init_gpus=2), 3),
])
def test_pod_gpus(the_pod, gpus):
    assert sweeper.pod_gpus(the_pod, "nvidia.com/gpu") == gpus


def test_sidecars_add_to_the_main_containers():
    p = pod("a", "n", gpus=1)
    p["spec"]["initContainers"] = [{"name": "side", "restartPolicy": "Always",
                                    "resources": {"requests": {"nvidia.com/gpu": "1"}}}]
    assert sweeper.pod_gpus(p, "nvidia.com/gpu") == 2


def test_busy_nodes_counts_only_active_bound_gpu_pods():
    pods = [pod("train", "gpu-0", gpus=8), pod("web", "gpu-1", gpus=0), pod("done", "gpu-2", gpus=8, phase="Succeeded"),
            pod("crashed", "gpu-2", gpus=8, phase="Failed"), pod("starting", "gpu-3", gpus=1, phase="Pending"),
            pod("unbound", None, gpus=8, phase="Pending")]
    assert sweeper.busy_nodes(pods, "nvidia.com/gpu") == {"gpu-0": ["team-a/train"], "gpu-3": ["team-a/starting"]}


@pytest.mark.parametrize("the_node, busy, words", [
    (node("n"), {}, None),
    (node("n"), {"n": ["team-a/train"]}, "GPU pods running"),
    (node("n", unschedulable=True), {}, "cordoned"),
    (node("n", ready=False), {}, "not Ready"),
    (node("n", gpus=0), {}, "no allocatable"),
    (node("n", taints=[UNHEALTHY]), {}, "has taint " + PREFIX + "unhealthy"),
    (node("n", taints=[MAINTENANCE]), {}, "has taint " + PREFIX + "maintenance"),   # someone else's sweep
    (node("n", taints=[STANDING]), {}, None),                                          # a standing GPU taint is fine
    (node("n", annotations=state_annotation()), {}, "already being swept"),
    (node("n", annotations=result_annotation("2026-11-21T12:00:00Z")), {}, "swept"),
    (node("n", annotations=result_annotation("2026-11-20T12:00:00Z")), {}, None),
])
def test_skip_reason(the_node, busy, words):
    reason = sweeper.skip_reason(the_node, busy, config(), NOW)
    assert (reason is None) if words is None else (words in reason), reason


# --- picking and the cap -----------------------------------------------------------------------

def test_cap_counts_sweeps_in_flight_and_prefers_least_recently_swept():
    nodes = [node("gpu-a", annotations=result_annotation("2026-11-19T00:00:00Z")),
             node("gpu-b"),
             node("gpu-c", annotations=result_annotation("2026-11-18T00:00:00Z")),
             node("gpu-d", annotations=state_annotation(), taints=[MAINTENANCE]),
             node("gpu-e")]
    picked, skipped, in_flight = sweeper.pick_nodes(nodes, [pod("x", "gpu-e", gpus=2)], config(max_nodes=3), NOW)
    # gpu-d is still under sweep: 3 - 1 = 2 new ones; never swept first, then the oldest sweep.
    assert [n["metadata"]["name"] for n in picked] == ["gpu-b", "gpu-c"]
    assert in_flight == ["gpu-d"]
    assert skipped["gpu-a"].startswith("over the cap") and skipped["gpu-e"].startswith("GPU pods")
    assert skipped["gpu-d"] == "already being swept"


def test_cap_reached_by_running_sweeps_starts_nothing():
    nodes = [node("gpu-a", annotations=state_annotation()), node("gpu-b")]
    picked, skipped, _running = sweeper.pick_nodes(nodes, [], config(max_nodes=1), NOW)
    assert picked == [] and "over the cap" in skipped["gpu-b"]
    assert sweeper.pick_nodes([node("gpu-b")], [], config(max_nodes=0), NOW)[0] == []


# --- which taint is its own --------------------------------------------------------------------

def test_a_maintenance_taint_is_its_own_only_when_its_record_says_it_added_it():
    ours = node("n", taints=[STANDING, MAINTENANCE, UNHEALTHY], annotations=state_annotation(taint_added=True))
    assert sweeper.sweeper_owns_taint(ours, PREFIX)
    assert sweeper.taints_without_own(ours, PREFIX) == [STANDING, UNHEALTHY]
    # The taint was there before the sweep started: it is someone else's.
    theirs = node("n", taints=[MAINTENANCE], annotations=state_annotation(taint_added=False))
    assert not sweeper.sweeper_owns_taint(theirs, PREFIX) and sweeper.taints_without_own(theirs, PREFIX) == [MAINTENANCE]
    # No record, a record of another writer, or a record that is not JSON: not its own.
    for annotations in ({}, state_annotation(by="someone-else"), {PREFIX + "sweep-state": "{not json"}):
        other = node("n", taints=[MAINTENANCE], annotations=annotations)
        assert not sweeper.sweeper_owns_taint(other, PREFIX)
    # A taint with the same key but another value or effect is not the maintenance taint.
    assert not sweeper.is_maintenance_taint(dict(MAINTENANCE, value="firmware"), PREFIX)
    assert not sweeper.is_maintenance_taint(dict(MAINTENANCE, effect="NoExecute"), PREFIX)


def test_finish_patch_removes_only_its_taint_and_its_record():
    ours = node("n", taints=[UNHEALTHY, MAINTENANCE], annotations=dict(state_annotation(), other="keep"), rv="7")
    patch = sweeper.finish_patch(ours, PREFIX, {"result": "pass"})
    assert patch["spec"]["taints"] == [UNHEALTHY]            # the agent's unhealthy taint stays
    assert patch["metadata"] == {"resourceVersion": "7", "annotations": {
        PREFIX + "sweep-state": None, PREFIX + "sweep-result": json.dumps({"result": "pass"})}}
    theirs = node("n", taints=[MAINTENANCE], annotations=state_annotation(taint_added=False))
    assert "spec" not in sweeper.finish_patch(theirs, PREFIX, {"result": "pass"})


def test_start_patch_records_whether_it_added_the_taint():
    fresh = node("n", taints=[STANDING], rv="42")
    patch = sweeper.start_patch(fresh, PREFIX, "gpu-sweep-n-1", NOW)
    assert patch["metadata"]["resourceVersion"] == "42"
    assert patch["spec"]["taints"] == [STANDING, MAINTENANCE]
    state = json.loads(patch["metadata"]["annotations"][PREFIX + "sweep-state"])
    assert state["taint_added"] is True and state["job"] == "gpu-sweep-n-1" and state["by"] == sweeper.SWEEPER_NAME
    held = sweeper.start_patch(node("n", taints=[MAINTENANCE]), PREFIX, "j", NOW)
    assert held["spec"]["taints"] == [MAINTENANCE]
    assert json.loads(held["metadata"]["annotations"][PREFIX + "sweep-state"])["taint_added"] is False


# --- the Job and its outcome -------------------------------------------------------------------

def test_job_name_is_a_short_unique_dns_label():
    long_node = "ip-10-0-0-1." + "x" * 200
    name = sweeper.job_name("gpu-sweep-", long_node, NOW)
    assert len(name) <= 63 and name.startswith("gpu-sweep-ip-10-0-0-1-x")
    assert sweeper.job_name("gpu-sweep-", long_node, NOW + datetime.timedelta(seconds=1)) != name


def test_diag_job_is_pinned_tolerates_the_maintenance_taint_and_has_its_own_deadline():
    cfg = config(job={"active_deadline_seconds": 1800, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    job = sweeper.diag_job(cfg, "gpu-healthcheck", "gpu-node-0", 8, "gpu-sweep-gpu-node-0-abc", NOW)
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] == 1800 and spec["backoffLimit"] == 0
    pod_spec = spec["template"]["spec"]
    assert pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-0"]}]}]}
    assert pod_spec["tolerations"][0] == {"key": PREFIX + "maintenance", "operator": "Equal", "value": "sweep",
                                          "effect": "NoSchedule"}
    assert not any(t.get("key") == PREFIX + "unhealthy" for t in pod_spec["tolerations"])
    (container,) = pod_spec["containers"]
    assert container["command"] == ["dcgmi", "diag", "-r", "2"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod_spec["restartPolicy"] == "Never" and pod_spec["automountServiceAccountToken"] is False


def test_job_outcome():
    assert sweeper.job_outcome({"status": {"active": 1}}, [], NOW) is None
    done = {"status": {"completionTime": "2026-11-22T03:04:00Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}}
    assert sweeper.job_outcome(done, [], NOW) == {"result": "pass", "reason": "Completed", "message": "",
                                                  "finished": "2026-11-22T03:04:00Z"}
    failed_pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"state": {"terminated": {"exitCode": 226, "message": "Diagnostic: Memory  Fail - GPU 3\n"}}}]}}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                         "lastTransitionTime": "2026-11-22T03:05:00Z"}]}}
    outcome = sweeper.job_outcome(failed, [failed_pod], NOW)
    assert outcome["result"] == "fail" and outcome["reason"] == "BackoffLimitExceeded"
    assert outcome["message"] == "Diagnostic: Memory  Fail - GPU 3"
    assert sweeper.job_outcome(None, [], NOW)["result"] == "lost"


# --- whole runs against an in-memory API -------------------------------------------------------

class FakeApi:
    """Nodes (merge patches with resourceVersion preconditions), pods and Jobs."""

    def __init__(self, nodes, pods=()):
        self.nodes = dict((n["metadata"]["name"], copy.deepcopy(n)) for n in nodes)
        self.pods = list(pods)
        self.jobs = {}
        self.rv = 1000
        self.conflict_once = set()
        self.after_patch = None
        self.deleted_jobs = []

    def list_nodes(self, _selector):
        return [copy.deepcopy(n) for n in self.nodes.values()]

    def get_node(self, name):
        return copy.deepcopy(self.nodes[name])

    def patch_node(self, name, patch):
        current = self.nodes[name]
        wanted = patch["metadata"].get("resourceVersion")
        if name in self.conflict_once:
            self.conflict_once.discard(name)
            self.rv += 1
            current["metadata"]["resourceVersion"] = str(self.rv)
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise sweeper.ApiError(409, "Conflict", "the object has been modified")
        annotations = current["metadata"].setdefault("annotations", {})
        for key, value in (patch["metadata"].get("annotations") or {}).items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        if "spec" in patch:
            current["spec"]["taints"] = copy.deepcopy(patch["spec"]["taints"])
        self.rv += 1
        current["metadata"]["resourceVersion"] = str(self.rv)
        if self.after_patch:
            self.after_patch(name)
        return copy.deepcopy(current)

    def list_active_pods(self, node_name=None):
        return [p for p in self.pods if sweeper.pod_is_active(p)
                and (node_name is None or p["spec"].get("nodeName") == node_name)]

    def list_job_pods(self, _namespace, _job):
        return []

    def get_job(self, _namespace, name):
        return copy.deepcopy(self.jobs.get(name))

    def create_job(self, _namespace, job):
        self.jobs[job["metadata"]["name"]] = copy.deepcopy(job)
        return job

    def delete_job(self, _namespace, name):
        self.deleted_jobs.append(name)
        self.jobs.pop(name, None)


def run(api, cfg, now=NOW):
    return sweeper.Sweeper(api, cfg, "gpu-healthcheck", clock=lambda: now).run()


def test_a_run_sweeps_idle_nodes_and_the_next_one_records_the_result():
    api = FakeApi([node("gpu-a", taints=[UNHEALTHY]), node("gpu-b"), node("gpu-c"), node("gpu-d", unschedulable=True)],
                  [pod("train", "gpu-c", gpus=8)])
    summary = run(api, config(max_nodes=2))
    assert [s["node"] for s in summary["started"]] == ["gpu-b"]
    assert set(summary["skipped"]) == {"gpu-a", "gpu-c", "gpu-d"}
    b = api.nodes["gpu-b"]
    assert b["spec"]["taints"] == [MAINTENANCE]
    assert len(api.jobs) == 1
    job = list(api.jobs.values())[0]
    assert job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["gpu-b"]
    # Still running: nothing changes, and the node is not swept twice.
    summary = run(api, config(max_nodes=2))
    assert summary["started"] == [] and summary["running"] == ["gpu-b"] and len(api.jobs) == 1
    # Meanwhile the health agent taints the node; then the diagnostic completes.
    b["spec"]["taints"].insert(0, dict(UNHEALTHY))
    job_name = job["metadata"]["name"]
    api.jobs[job_name]["status"] = {"completionTime": "2026-11-22T03:20:00Z",
                                    "conditions": [{"type": "Complete", "status": "True"}]}
    later = NOW + datetime.timedelta(hours=1)
    summary = run(api, config(max_nodes=2), now=later)
    assert summary["finished"] == [{"node": "gpu-b", "result": "pass", "job": job_name}]
    assert b["spec"]["taints"] == [UNHEALTHY]                 # only its own taint went
    assert PREFIX + "sweep-state" not in b["metadata"]["annotations"]
    result = json.loads(b["metadata"]["annotations"][PREFIX + "sweep-result"])
    assert result["result"] == "pass" and result["job"] == job_name and result["command"][0] == "dcgmi"
    assert api.deleted_jobs == [job_name]
    # Swept an hour ago and now unhealthy: not picked again.
    assert "gpu-b" in summary["skipped"] and summary["started"] == []


def test_a_lost_job_releases_the_node():
    api = FakeApi([node("gpu-a", taints=[MAINTENANCE], annotations=state_annotation(job="gone"))])
    summary = run(api, config(max_nodes=0))
    assert summary["finished"][0]["result"] == "lost"
    assert api.nodes["gpu-a"]["spec"]["taints"] == []


def test_a_gpu_pod_that_starts_while_marking_makes_it_back_off():
    api = FakeApi([node("gpu-a")])

    def gpu_pod_arrives(name):
        if not api.pods:
            api.pods.append(pod("late", name, gpus=1, phase="Pending"))
    api.after_patch = gpu_pod_arrives
    summary = run(api, config(max_nodes=1))
    assert summary["started"] == [] and summary["backed_off"] == ["gpu-a"]
    assert api.jobs == {} and api.nodes["gpu-a"]["spec"]["taints"] == []
    assert PREFIX + "sweep-state" not in api.nodes["gpu-a"]["metadata"]["annotations"]


def test_a_conflict_is_retried_on_the_fresh_node():
    api = FakeApi([node("gpu-a")])
    api.conflict_once.add("gpu-a")
    summary = run(api, config(max_nodes=1))
    assert [s["node"] for s in summary["started"]] == ["gpu-a"] and len(api.jobs) == 1


def test_dry_run_changes_nothing():
    api = FakeApi([node("gpu-a"), node("gpu-b", taints=[MAINTENANCE], annotations=state_annotation(job="gone"))])
    before = copy.deepcopy(api.nodes)
    summary = sweeper.Sweeper(api, config(max_nodes=2), "gpu-healthcheck", clock=lambda: NOW, dry_run=True).run()
    assert [s["node"] for s in summary["started"]] == ["gpu-a"] and summary["finished"][0]["node"] == "gpu-b"
    assert api.nodes == before and api.jobs == {}
