"""Fault drills end to end on the local control plane: xid79_e2e.yml, cleanup.yml, fleet_drill.yml.

The stack is the real one: the fault-injector agent and the health agent (their code from the
ConfigMaps the roles deploy, run by the pod runner), and the demo inference server (real HTTP on
its pod IPs, CUDA calls into the stand-in driver through the fault shim). The drill must pass with
its three reports; failed at the end of each phase in turn, and once killed outright and then
cleaned up by a separate run, it must leave every object it could touch exactly as it found it.

Drills run together: of two on one node exactly one proceeds and the other is refused before any
change, one on another node passes beside it, and a fleet drill overlapping it is refused whole.
A drill's self-check names a mark another drill put on its node behind its back.
"""
import copy
import json
import os
import queue
import subprocess
import threading
import time
import xml.etree.ElementTree as ET

import pytest
import yaml
from kubernetes import client, dynamic, watch

from support import (ROOT, RUNNER_STATE, ansible_env, ansible_playbook, kill_run, localcluster, run_playbook,
                     venv_tool, wait_until)

DRILL_VARS = os.path.join(ROOT, "tools", "localcluster", "drill-vars.yml")
with open(DRILL_VARS) as f:
    VARS = yaml.safe_load(f)
DEMO_NS = VARS["fault_scenario_workload_namespace"]
AGENT_NS = "gpu-fault-injection"
HC_PREFIX = "gpu-healthcheck.aws-samples.io/"
# The health agent's heartbeat: rewritten every cycle whether or not a drill runs.
VOLATILE = {HC_PREFIX + "last-check", HC_PREFIX + "results"}
# Controller bookkeeping that a rollout moves on (the same template gets a new revision number).
REVISION = {"deployment.kubernetes.io/revision", "deployment.kubernetes.io/revision-history"}
PHASES = ["preflight", "baseline", "shim-passthrough", "inject", "workload-fails", "detect", "quarantine",
          "remove-shim", "drain", "remediation", "reschedule", "recovery"]
GPU_NODES = ["gpu-node-0", "gpu-node-1", "gpu-node-2"]
DRILL_LABEL = "fault-injection.gpu-resilience.io/drill"
CLAIM_LABEL = "fault-injection.gpu-resilience.io/drill-claim"


def health_marks(core):
    """node -> the health agent's labels and annotations on it."""
    return {n.metadata.name: {k for k in list(n.metadata.labels or {}) + list(n.metadata.annotations or {})
                              if k.startswith(HC_PREFIX)} for n in core.list_node().items}


@pytest.fixture(scope="module")
def stack(core):
    """The fault-injector agent, the health agent and the demo workload, as tools/e2e.sh deploys them.

    The health agent's own marks stay on the nodes when it is removed (by design: a faulty node stays
    marked); the ones it put on nodes that had none before are taken off again, so that the tests
    that follow find the nodes as this file found them.
    """
    before = health_marks(core)
    # The simulated GPU nodes start from a fresh boot: the health agent's boot scan would count the
    # XIDs that earlier test files left in their kernel logs.
    for node in core.list_node(label_selector="nvidia.com/gpu.present=true").items:
        localcluster.gpu_standins.reboot(os.path.join(RUNNER_STATE, "nodes", node.metadata.name, "host"))
    run_playbook("deploy_agent.yml", VARS)
    run_playbook("healthcheck.yml", VARS)
    run_playbook("demo_workload.yml", VARS)
    yield
    ansible_playbook("demo_workload.yml", dict(VARS, demo_workload_state="absent"))
    ansible_playbook("healthcheck.yml", dict(VARS, gpu_healthcheck_state="absent"))
    for node, keys in health_marks(core).items():
        added = {k: None for k in keys - before.get(node, set())}
        if added:
            core.patch_node(node, {"metadata": {"labels": added, "annotations": added}})


def _meta(obj, drop=()):
    meta = obj["metadata"]
    return {"name": meta["name"],
            "labels": {k: v for k, v in (meta.get("labels") or {}).items() if k not in drop},
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k not in drop}}


def dump(api_client):
    """Every object a drill could touch, without what changes whether or not a drill runs."""
    dyn = dynamic.DynamicClient(api_client)

    def get(api_version, kind, namespace=None):
        return dyn.resources.get(api_version=api_version, kind=kind).get(namespace=namespace).to_dict()["items"]

    out = {"nodes": {}, "workload": {}, "agent": {}}
    for node in get("v1", "Node"):
        out["nodes"][node["metadata"]["name"]] = dict(_meta(node, VOLATILE),
                                                      unschedulable=node["spec"].get("unschedulable", False),
                                                      taints=node["spec"].get("taints") or [],
                                                      conditions=sorted((dict((k, c.get(k)) for k in (
                                                          "type", "status", "reason", "message"))
                                                          for c in node["status"].get("conditions") or []),
                                                          key=lambda c: c["type"]))
    out["workload"]["deployments"] = [dict(_meta(d, REVISION), spec=d["spec"])
                                      for d in get("apps/v1", "Deployment", DEMO_NS)]
    out["workload"]["replicasets"] = sorted(
        (dict(_meta(r, REVISION), replicas=r["spec"]["replicas"], template=r["spec"]["template"])
         for r in get("apps/v1", "ReplicaSet", DEMO_NS)), key=lambda r: r["name"])
    out["workload"]["configmaps"] = sorted((dict(_meta(c), data=c.get("data")) for c in get("v1", "ConfigMap", DEMO_NS)),
                                           key=lambda c: c["name"])
    out["workload"]["services"] = [dict(_meta(s), spec=s["spec"]) for s in get("v1", "Service", DEMO_NS)]
    out["workload"]["pdbs"] = [dict(_meta(p), spec=p["spec"]) for p in get("policy/v1", "PodDisruptionBudget", DEMO_NS)]
    out["agent"]["gpufaults"] = sorted(f["metadata"]["name"] for f in get(
        "faultinjection.gpu-resilience.io/v1alpha1", "GPUFault", AGENT_NS))
    out["agent"]["configmaps"] = sorted(c["metadata"]["name"] for c in get("v1", "ConfigMap", AGENT_NS))
    out["agent"]["leases"] = sorted(c["metadata"]["name"] for c in get("coordination.k8s.io/v1", "Lease", AGENT_NS))
    return out


def differences(before, after, path=""):
    """Readable differences between two dumps (empty when identical)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            out += differences(before.get(key, "<absent>"), after.get(key, "<absent>"), "%s/%s" % (path, key))
        return out
    return [] if before == after else ["%s: %s -> %s" % (path, json.dumps(before)[:300], json.dumps(after)[:300])]


def drill(tmp_path, check=False, **extra):
    """Run xid79_e2e.yml; (rc, output, the JSON timeline or None)."""
    drill_id = extra.setdefault("fault_scenario_drill_id", "it-drill-%d" % (time.time() * 1000 % 10 ** 9))
    extra.setdefault("fault_scenario_report_dir", str(tmp_path))
    rc, out, _recap = ansible_playbook("xid79_e2e.yml", dict(VARS, **extra), check=check, timeout=900)
    timeline = tmp_path / (drill_id + "-timeline.json")
    return rc, out, json.loads(timeline.read_text()) if timeline.exists() else None


def test_the_drill_passes_with_its_reports_and_leaves_the_cluster_as_it_was(stack, api_client, tmp_path):
    before = dump(api_client)
    rc, out, timeline = drill(tmp_path)
    assert rc == 0, out[-8000:]
    phases = {p["name"]: p for p in timeline["phases"]}
    assert [p["name"] for p in timeline["phases"]] == PHASES + ["cleanup"]
    # Every phase passes but remediation, NVSentinel's phase: the health agent remediates nothing.
    assert {n: p["status"] for n, p in phases.items()} == dict(
        {n: "passed" for n in PHASES + ["cleanup"]}, remediation="skipped"), timeline["phases"]
    assert "remediates nothing" in phases["remediation"]["message"]
    summary = timeline["summary"]
    for key in ("time_to_detect", "time_to_quarantine", "time_to_drain", "time_to_recover"):
        assert summary[key] is not None and summary[key] >= 0, summary
    assert summary["time_to_detect"] < 5, summary
    drill_id = timeline["drill"]
    for suffix in ("-junit.xml", "-timeline.json", "-timeline.svg"):
        assert (tmp_path / (drill_id + suffix)).stat().st_size > 0
    junit = (tmp_path / (drill_id + "-junit.xml")).read_text()
    assert 'failures="0"' in junit and "workload-fails" in junit and 'name="cluster-as-before"' in junit
    assert "pod(s) failing" in phases["workload-fails"]["message"]
    # Checked, not assumed: the node, the workload's pod template and the faults, as recorded.
    assert timeline["verification"]["as_before"] is True, timeline["verification"]
    assert len(timeline["verification"]["checked"]) == 3 and "cluster: The cluster was put back as it was" in out
    assert differences(before, dump(api_client)) == []


# remediation is NVSentinel's phase (skipped with the health agent): tests/nvsentinel stops drills there.
@pytest.mark.parametrize("phase", [p for p in PHASES if p != "remediation"])
def test_a_drill_failed_at_any_phase_leaves_the_cluster_as_it_was(stack, api_client, tmp_path, phase):
    before = dump(api_client)
    rc, out, timeline = drill(tmp_path, fault_scenario_abort_at=phase)
    assert rc != 0, out[-4000:]
    assert "stopped at the end of phase %s" % phase in out
    statuses = {p["name"]: p["status"] for p in timeline["phases"]}
    assert statuses[phase] == "failed" and statuses["cleanup"] == "passed", timeline["phases"]
    later = PHASES[PHASES.index(phase) + 1:]
    assert all(statuses[name] == "skipped" for name in later), statuses
    assert differences(before, dump(api_client)) == []


def ledger_says(custom_core, drill_id, what):
    try:
        cm = custom_core.read_namespaced_config_map("gpu-drill-" + drill_id, AGENT_NS)
    except Exception:  # pylint: disable=broad-except
        return False
    return what in (cm.data or {}).get("ledger.json", "")


def test_a_killed_drill_is_undone_by_a_separate_cleanup_run(stack, api_client, core, tmp_path):
    before = dump(api_client)
    drill_id = "it-killed-%d" % (time.time() * 1000 % 10 ** 9)
    extra = dict(VARS, fault_scenario_drill_id=drill_id, fault_scenario_report_dir=str(tmp_path))
    proc = subprocess.Popen([venv_tool("ansible-playbook"), os.path.join(ROOT, "playbooks", "xid79_e2e.yml"),
                             "-e", json.dumps(extra)], cwd=ROOT, env=ansible_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Killed once the fault is in and the detector has tainted the node: the worst moment.
        def quarantined():
            return ledger_says(core, drill_id, '"faults"') and any(
                t.key == HC_PREFIX + "unhealthy" for n in core.list_node().items for t in (n.spec.taints or []))
        wait_until(quarantined, 120, "the drill to quarantine its node")
    finally:
        kill_run(proc)
    assert differences(before, dump(api_client)) != []
    assert claim_holders(core) and set(claim_holders(core).values()) == {drill_id}
    out, _recap = run_playbook("cleanup.yml", {})
    assert drill_id in out and "claim(s) released; The cluster was put back as it was" in out
    assert claim_holders(core) == {}
    assert differences(before, dump(api_client)) == []
    _out, recap = run_playbook("cleanup.yml", {})
    assert recap["changed"] == 0


def test_check_mode_runs_the_whole_drill_and_changes_nothing(stack, api_client, tmp_path):
    before = dump(api_client)
    rc, out, timeline = drill(tmp_path, check=True)
    assert rc == 0, out[-6000:]
    statuses = {p["name"]: p["status"] for p in timeline["phases"]}
    assert statuses["preflight"] == statuses["baseline"] == statuses["inject"] == "passed", statuses
    assert statuses["detect"] == statuses["recovery"] == "skipped", statuses
    assert differences(before, dump(api_client)) == []


@pytest.mark.parametrize("extra, words", [
    ({"fault_scenario_target_nodes": "gpu-node-0,gpu-node-1", "fault_scenario_max_nodes": 2,
      "fault_scenario_max_percent": 100}, "set fault_scenario_confirm=true"),
    ({"fault_scenario_target_nodes": "gpu-node-0,gpu-node-1"}, "exceed fault_scenario_max_nodes=1"),
    ({"fault_scenario_target_nodes": "gpu-node-0,gpu-node-1", "fault_scenario_max_nodes": 2,
      "fault_scenario_confirm": True, "fault_scenario_max_percent": 50}, "over fault_scenario_max_percent=50"),
    ({"fault_scenario_allowed_namespaces": "team-a,team-b"}, "is not in fault_scenario_allowed_namespaces"),
    ({"fault_scenario_target_node": "no-such-node"}, "node(s) not found: no-such-node"),
    ({"fault_scenario_target_node": "cpu-node-0"}, "cpu-node-0"),
    ({"fault_scenario_xid": 7777}, "unknown XID code 7777"),
    ({"fault_scenario_gpu": "0000:zz:00.0"}, "0000:zz:00.0"),
    ({"fault_scenario_drill_id": "Bad_Id"}, "must be 1 to 63 lowercase"),
])
def test_an_unsafe_or_bad_drill_is_refused_and_changes_nothing(stack, api_client, tmp_path, extra, words):
    before = dump(api_client)
    extra = copy.deepcopy(extra)
    extra.setdefault("fault_scenario_drill_id", "it-refused-%d" % (time.time() * 1000 % 10 ** 9))
    rc, out, _timeline = drill(tmp_path, **extra)
    assert rc != 0
    assert words in out, out[-4000:]
    drill_id = extra["fault_scenario_drill_id"] if "Bad" not in extra["fault_scenario_drill_id"] else "invalid-drill-id"
    timeline = json.loads((tmp_path / (drill_id + "-timeline.json")).read_text())
    assert timeline["phases"][0]["status"] == "failed", timeline["phases"]
    assert differences(before, dump(api_client)) == []


def test_control_plane_nodes_are_never_drilled(stack, api_client, core, tmp_path):
    label = "node-role.kubernetes.io/control-plane"
    core.patch_node("gpu-node-2", {"metadata": {"labels": {label: ""}}})
    try:
        rc, out, _timeline = drill(tmp_path, fault_scenario_target_node="gpu-node-2")
        assert rc != 0 and "refusing control-plane node(s): gpu-node-2" in out, out[-4000:]
    finally:
        core.patch_node("gpu-node-2", {"metadata": {"labels": {label: None}}})


def test_a_fleet_drill_quarantines_every_node_and_cleans_up(stack, api_client, tmp_path):
    before = dump(api_client)
    drill_id = "it-fleet-%d" % (time.time() * 1000 % 10 ** 9)
    rc, out, _recap = ansible_playbook("fleet_drill.yml", dict(
        VARS, fault_scenario_drill_id=drill_id, fault_scenario_report_dir=str(tmp_path), fault_scenario_node_count=2,
        fault_scenario_max_nodes=2, fault_scenario_max_percent=70, fault_scenario_confirm=True), timeout=600)
    assert rc == 0, out[-8000:]
    timeline = json.loads((tmp_path / (drill_id + "-timeline.json")).read_text())
    nodes = timeline["summary"]["nodes"]
    assert len(nodes) == 2 and all(n["time_to_quarantine"] is not None for n in nodes.values()), nodes
    assert differences(before, dump(api_client)) == []


def test_all_xids_matches_the_catalog_and_leaves_the_node_as_it_was(stack, api_client):
    """A sample across the severities (MONITOR, PASS, RESET, REBOOT, XID 154's text); the whole
    catalog runs the same way with all_xids_codes empty (README: the all_xids.yml figure)."""
    before = dump(api_client)
    out, _recap = run_playbook("all_xids.yml", {"all_xids_node": "gpu-node-2", "all_xids_codes": "13,63,48,79,154"})
    assert "5 XIDs, 0 mismatches" in out, out[-6000:]
    assert differences(before, dump(api_client)) == []


# --- drills at the same time ------------------------------------------------------------------------

def claim_holders(core):
    """Claim Lease name -> the drill holding it."""
    leases = client.CoordinationV1Api(core.api_client).list_namespaced_lease(AGENT_NS, label_selector=CLAIM_LABEL)
    return dict((lease.metadata.name, lease.spec.holder_identity) for lease in leases.items)


def workload_node(core):
    """The node a workload drill picks: the one running most of the workload's pods, then by name."""
    pods = core.list_namespaced_pod(DEMO_NS, label_selector="app.kubernetes.io/instance=" + VARS["fault_scenario_workload_name"])
    counts = {}
    for pod in pods.items:
        if pod.spec.node_name and not pod.metadata.deletion_timestamp:
            counts[pod.spec.node_name] = counts.get(pod.spec.node_name, 0) + 1
    return sorted(counts, key=lambda n: (-counts[n], n))[0]


class Recorder(object):
    """Every change to the nodes and to the Leases and ConfigMaps of the agent's namespace while
    drills run, from watches: (kind, name, the drill it names: a node's drill label, a Lease's
    holder, a ledger's drill)."""

    def __init__(self, api_client):
        core, coordination = client.CoreV1Api(api_client), client.CoordinationV1Api(api_client)
        self.seen = queue.Queue()
        self.stopped = threading.Event()
        self.watches = []
        for kind, lister, args, owner in (
                ("Node", core.list_node, (), lambda o: (o.metadata.labels or {}).get(DRILL_LABEL)),
                ("Lease", coordination.list_namespaced_lease, (AGENT_NS,), lambda o: o.spec.holder_identity),
                ("ConfigMap", core.list_namespaced_config_map, (AGENT_NS,),
                 lambda o: (o.metadata.labels or {}).get("fault-injection.gpu-resilience.io/drill-ledger"))):
            version = lister(*args).metadata.resource_version
            stream = watch.Watch()
            self.watches.append(stream)
            threading.Thread(target=self.follow, args=(stream, kind, lister, args, owner, version), daemon=True).start()

    def follow(self, stream, kind, lister, args, owner, version):
        try:
            for event in stream.stream(lister, *args, resource_version=version, timeout_seconds=900):
                self.seen.put((kind, event["object"].metadata.name, owner(event["object"])))
        except Exception as e:  # pylint: disable=broad-except
            if not self.stopped.is_set():   # a watch that broke while the drills ran: the record is incomplete
                self.seen.put((kind, "watch failed", repr(e)))

    def stop(self):
        self.stopped.set()
        for stream in self.watches:
            stream.stop()
        found = []
        while not self.seen.empty():
            found.append(self.seen.get())
        return found


def start(playbook, tmp_path, drill_id, **extra):
    """ansible-playbook playbooks/<playbook> in the background; (process, its log file)."""
    log = tmp_path / (drill_id + ".log")
    variables = dict(VARS, fault_scenario_drill_id=drill_id, fault_scenario_report_dir=str(tmp_path), **extra)
    with open(log, "w") as out:
        proc = subprocess.Popen([venv_tool("ansible-playbook"), os.path.join(ROOT, "playbooks", playbook),
                                 "-e", json.dumps(variables)], cwd=ROOT, env=ansible_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def outcome(run, tmp_path, drill_id):
    """(rc, output, timeline) of a run started by start()."""
    proc, log = run
    try:
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            kill_run(proc)
    timeline = tmp_path / (drill_id + "-timeline.json")
    return rc, log.read_text(), json.loads(timeline.read_text()) if timeline.exists() else None


def refused_before_any_change(rc, out, timeline, holder, what):
    assert rc != 0 and "%s is held by drill %s since " % (what, holder) in out, out[-6000:]
    assert "nothing was changed" in out and "It had changed nothing: it had not opened its ledger" in out
    statuses = {p["name"]: p["status"] for p in timeline["phases"]}
    assert statuses["preflight"] == "failed" and statuses["cleanup"] == "passed", statuses
    assert all(statuses[name] == "skipped" for name in PHASES[1:]), statuses
    assert timeline["verification"] is None


def test_drills_together_one_per_node_and_a_fleet_over_a_held_node_is_refused_whole(
        stack, api_client, core, tmp_path):
    before = dump(api_client)
    target = workload_node(core)
    elsewhere, spare = [n for n in GPU_NODES if n != target]
    stamp = int(time.time() * 1000 % 10 ** 9)
    first, second, beside, fleet = ("it-race-a-%d" % stamp, "it-race-b-%d" % stamp, "it-beside-%d" % stamp,
                                    "it-fleet-over-%d" % stamp)
    recorder = Recorder(api_client)
    runs = {first: start("xid79_e2e.yml", tmp_path, first), second: start("xid79_e2e.yml", tmp_path, second),
            beside: start("fleet_drill.yml", tmp_path, beside, fault_scenario_workload_name="",
                          fault_scenario_target_nodes=[elsewhere])}
    try:
        winner = wait_until(lambda: claim_holders(core).get("gpu-drill-claim.node." + target), 120,
                            "one of the two drills to claim " + target)
        # While the winner holds its node: a fleet drill over it and a free node.
        runs[fleet] = start("fleet_drill.yml", tmp_path, fleet, fault_scenario_workload_name="",
                            fault_scenario_target_nodes=[target, spare], fault_scenario_max_nodes=2,
                            fault_scenario_max_percent=70, fault_scenario_confirm=True)
        results = dict((drill_id, outcome(run, tmp_path, drill_id)) for drill_id, run in runs.items())
    finally:
        for run in runs.values():
            if run[0].poll() is None:
                kill_run(run[0])
        seen = recorder.stop()
    loser = second if winner == first else first

    # Exactly one of the two proceeds, and passes; the drill on another node passes beside it.
    for drill_id in (winner, beside):
        rc, out, timeline = results[drill_id]
        assert rc == 0 and timeline["result"] == "passed", out[-8000:]
        assert timeline["verification"]["as_before"] is True, timeline["verification"]
    assert results[beside][2]["target_nodes"] == [elsewhere]
    # The other is refused in preflight, naming the winner; so is the fleet drill, whole.
    refused_before_any_change(*results[loser], holder=winner, what="Deployment %s/%s" % (
        DEMO_NS, VARS["fault_scenario_workload_name"]))
    refused_before_any_change(*results[fleet], holder=winner, what="node " + target)
    # Before any change: neither ever claimed, recorded or labelled anything, not even the free node.
    assert [s for s in seen if s[2] in (loser, fleet) or s[1] == "watch failed"] == []
    assert ("Lease", "gpu-drill-claim.node." + target, winner) in seen
    assert ("Lease", "gpu-drill-claim.node." + elsewhere, beside) in seen
    assert claim_holders(core) == {}
    assert differences(before, dump(api_client)) == []


def test_the_self_check_names_a_mark_changed_behind_the_drills_back(stack, api_client, core, tmp_path):
    before = dump(api_client)
    drill_id = "it-selfcheck-%d" % (time.time() * 1000 % 10 ** 9)
    node = "gpu-node-2"
    stream = watch.Watch()
    run = start("fleet_drill.yml", tmp_path, drill_id, fault_scenario_workload_name="",
                fault_scenario_target_nodes=[node], fault_scenario_abort_at="baseline")
    try:
        # The moment the drill has labelled its node, another drill's label replaces it.
        for event in stream.stream(core.list_node, field_selector="metadata.name=" + node, timeout_seconds=120):
            if (event["object"].metadata.labels or {}).get(DRILL_LABEL) == drill_id:
                core.patch_node(node, {"metadata": {"labels": {DRILL_LABEL: "it-someone-else"}}},
                                field_manager="it-another-drill")
                break
        rc, out, timeline = outcome(run, tmp_path, drill_id)
    finally:
        stream.stop()
        core.patch_node(node, {"metadata": {"labels": {DRILL_LABEL: None}}})
    text = ('node %s: label %s was absent, now "it-someone-else" (written by it-another-drill) (the node is in drill '
            "it-someone-else's hands now: left to its cleanup)" % (node, DRILL_LABEL))
    assert rc != 0 and "The cluster is NOT as it was, 1 difference(s)" in out, out[-6000:]
    differing = timeline["verification"]["differences"]
    assert [d["text"] for d in differing] == [text]
    assert timeline["result"] == "failed" and timeline["summary"]["as_before"] is False
    cases = dict((c.get("name"), c) for c in ET.parse(str(tmp_path / (drill_id + "-junit.xml"))).iter("testcase"))
    assert cases["cluster-as-before"].find("failure").get("type") == "ClusterNotAsBefore"
    picture = (tmp_path / (drill_id + "-timeline.svg")).read_text()
    assert "NOT AS BEFORE: 1 difference(s)" in picture and text[:70] in picture
    assert claim_holders(core) == {}
    assert differences(before, dump(api_client)) == []
