"""drill_ledger, drill_claim and node_marks_restore on the local control plane: a drill records the
nodes' state in its ledger, the node is then marked as a drill and a detector would mark it, and the
restoration puts exactly the in-scope marks back; a drill killed half-way leaves its ledger for a
later run to find. Claims are all or none and released only by their drill, also by cleanup.yml for
a drill killed before its ledger; cleanup.yml's verify-only mode names a mark changed behind a
drill's back and changes nothing.

gpu-node-1 (and, restored together with it, gpu-node-2) is changed (a label, a taint and a cordon);
the `node` and `nodes` fixtures put their marks back as they were after every test, whatever
happened. The ledgers live in the agent's namespace
gpu-fault-injection, created here when missing and then deleted again.
"""
import json
import signal
import subprocess
import sys
import uuid

import pytest
from kubernetes import client

from support import ROOT, ansible_env, ansible_module, ansible_playbook, exists, kill_run, venv_tool, wait_until

LEDGER = "gpu_resilience.fault_injection.drill_ledger"
CLAIM = "gpu_resilience.fault_injection.drill_claim"
CLAIM_LABEL = "fault-injection.gpu-resilience.io/drill-claim"
RESTORE = "gpu_resilience.fault_injection.node_marks_restore"
NS = "gpu-fault-injection"
NODE = "gpu-node-1"
OTHER_NODE = "gpu-node-2"
DRILL_PREFIX = "fault-injection.gpu-resilience.io/"
AWS = "gpu-healthcheck.aws-samples.io/"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
OUT_OF_SCOPE = "it.gpu-resilience.io/drill-ledger-owner"
# The scope node_marks_restore restores by default, written out independently of the module.
PREFIXES = (DRILL_PREFIX, AWS, "k8saas.nvidia.com/", "dgxc.nvidia.com/")
KEYS = ("quarantineHealthEvent", "quarantineHealthEventIsCordoned", "quarantineHealthEventAppliedTaints",
        "quarantineHealthEventAppliedLabels", "quarantineHealthEventCordonPreExisting",
        "quarantinedNodeUncordonedManually", "quarantinedNodeUntaintedManually", "latestFaultRemediationState")
IGNORED = (AWS + "last-check", AWS + "results")
TEST_LABELS = (DRILL_PREFIX + "drill", AWS + "status")
TEST_ANNOTATIONS = (OUT_OF_SCOPE, "quarantineHealthEvent")
UNHEALTHY = {"key": AWS + "unhealthy", "value": "true", "effect": "NoSchedule"}
PLACEHOLDER = "(traceback unavailable)"


@pytest.fixture(scope="module")
def agent_namespace(core):
    """The agent's namespace: used as found, or created for these tests and deleted after them."""
    created = False
    try:
        found = core.read_namespace(NS)
        if found.status.phase == "Terminating":
            wait_until(lambda: not exists(lambda: core.read_namespace(NS)), 120, "namespace %s to go away" % NS)
            found = None
    except client.ApiException as e:
        if e.status != 404:
            raise
        found = None
    if found is None:
        core.create_namespace({"metadata": {"name": NS, "labels": {"gpu-resilience.io/test": "true"}}})
        created = True
    yield NS
    if created:
        core.delete_namespace(NS)


@pytest.fixture()
def drill(core, agent_namespace):
    """A fresh drill id; its ledger and its claims (and those of <id>-b) are deleted afterwards."""
    name = "it-" + uuid.uuid4().hex[:8]
    yield name
    try:
        core.delete_namespaced_config_map("gpu-drill-" + name, agent_namespace)
    except client.ApiException as e:
        if e.status != 404:
            raise
    coordination = client.CoordinationV1Api(core.api_client)
    for holder in (name, name + "-b"):
        coordination.delete_collection_namespaced_lease(agent_namespace, label_selector=CLAIM_LABEL + "=" + holder)


def claims(core):
    """Lease name -> holder of the drill claims in the agent's namespace."""
    leases = client.CoordinationV1Api(core.api_client).list_namespaced_lease(NS, label_selector=CLAIM_LABEL)
    return dict((lease.metadata.name, lease.spec.holder_identity) for lease in leases.items)


def remember_marks(api_client, core, name):
    """A function that puts the marks the tests touch on the node back as they are now."""
    before = core.read_node(name)
    taints = [api_client.sanitize_for_serialization(t) for t in before.spec.taints or []]

    def put_back():
        core.patch_node(name, {
            "spec": {"unschedulable": True if before.spec.unschedulable else None, "taints": taints or None},
            "metadata": {
                "labels": dict((k, (before.metadata.labels or {}).get(k)) for k in TEST_LABELS),
                "annotations": dict((k, (before.metadata.annotations or {}).get(k)) for k in TEST_ANNOTATIONS)}})
    return put_back


@pytest.fixture()
def node(api_client, core):
    """gpu-node-1, with the marks the tests touch put back as they were afterwards."""
    put_back = remember_marks(api_client, core, NODE)
    yield NODE
    put_back()


@pytest.fixture()
def nodes(api_client, core):
    """gpu-node-1 and gpu-node-2, with the marks the tests touch put back as they were afterwards."""
    names = (NODE, OTHER_NODE)
    put_backs = [remember_marks(api_client, core, name) for name in names]
    yield names
    for put_back in put_backs:
        put_back()


def raw_node(api_client, core, name=NODE):
    return api_client.sanitize_for_serialization(core.read_node(name))


def in_scope(key):
    return key not in IGNORED and (key in KEYS or key.startswith(PREFIXES))


def scoped(state):
    """The in-scope marks of a snapshot-shaped dict: what the restoration must make equal."""
    return {
        "unschedulable": state["unschedulable"],
        "labels": dict((k, v) for k, v in state["labels"].items() if in_scope(k)),
        "annotations": dict((k, v) for k, v in state["annotations"].items() if in_scope(k)),
        "taints": sorted((json.dumps(t, sort_keys=True) for t in state["taints"]
                          if t["key"] == UNSCHEDULABLE_TAINT or in_scope(t["key"]))),
    }


def state_of(obj):
    """A node (as the API returns it) in the ledger's snapshot shape."""
    return {"unschedulable": obj["spec"].get("unschedulable") is True,
            "taints": obj["spec"].get("taints") or [],
            "labels": obj["metadata"].get("labels") or {},
            "annotations": obj["metadata"].get("annotations") or {}}


def ledger_map(core, drill):
    return core.read_namespaced_config_map("gpu-drill-" + drill, NS)


def clean_failure(result, fragment):
    assert result.get("failed"), result
    assert fragment in result["msg"], result["msg"]
    assert "Traceback" not in json.dumps(result) and result.get("exception", PLACEHOLDER) == PLACEHOLDER


def mark_as_drilled(core, drill, name=NODE):
    """What a drill and the health agent do to the node: a drill label, the agent's status label and
    taint, NVSentinel's annotation, a cordon; and another controller's annotation on the side."""
    core.patch_node(name, {"metadata": {"labels": {DRILL_PREFIX + "drill": drill}}}, field_manager="fault-scenario")
    core.patch_node(name, {"metadata": {"labels": {AWS + "status": "fail"},
                                        "annotations": {"quarantineHealthEvent": "[]"}}},
                    field_manager="gpu-health-agent")
    current = core.read_node(name)
    taints = list(current.spec.taints or []) + [client.V1Taint(**UNHEALTHY)]
    core.patch_node(name, {"spec": {"taints": taints, "unschedulable": True}}, field_manager="gpu-health-agent")
    core.patch_node(name, {"metadata": {"annotations": {OUT_OF_SCOPE: "team-a"}}}, field_manager="someone-else")
    # The node lifecycle controller adds the cordon's taint; wait for it so nothing changes the node
    # behind the restoration.
    wait_until(lambda: any(t.key == UNSCHEDULABLE_TAINT for t in core.read_node(name).spec.taints or []), 30,
               "the node lifecycle controller's unschedulable taint on " + name)


def test_records_the_nodes_then_restores_the_drilled_node_exactly(api_client, core, drill, node):
    meta = {"playbook": "test_drill_ledger.py", "owner": "it", "targets": [NODE]}
    entries = [{"type": "node", "node": "gpu-node-0"}, {"type": "node", "node": NODE},
               {"type": "note", "text": "about to mark " + NODE}]
    recorded = ansible_module(LEDGER, {"drill": drill, "meta": meta, "entries": entries})
    assert recorded.get("changed") and recorded["created"] and not recorded.get("failed"), recorded
    assert [(e["type"], e["seq"]) for e in recorded["added"]] == [("node", 1), ("node", 2), ("note", 3)]
    snapshot = recorded["ledger"]["entries"][1]["before"]
    untouched = raw_node(api_client, core)
    assert snapshot["resourceVersion"] == untouched["metadata"]["resourceVersion"]
    assert snapshot["uid"] == untouched["metadata"]["uid"]
    assert state_of(untouched) == dict((k, snapshot[k]) for k in ("unschedulable", "taints", "labels", "annotations"))
    stored = ledger_map(core, drill)
    assert stored.metadata.labels == {"app.kubernetes.io/managed-by": "gpu_resilience.fault_injection",
                                      "fault-injection.gpu-resilience.io/drill-ledger": drill}
    assert json.loads(stored.data["ledger.json"]) == recorded["ledger"]

    mark_as_drilled(core, drill)
    drilled = raw_node(api_client, core)
    assert scoped(state_of(drilled)) != scoped(snapshot)

    # Recording the node again keeps the state before the drill.
    again = ansible_module(LEDGER, {"drill": drill, "meta": meta, "entries": [{"type": "node", "node": NODE}]})
    assert again.get("changed") is False and again["added"] == [], again
    assert again["ledger"]["entries"][1]["before"] == snapshot
    assert ledger_map(core, drill).metadata.resource_version == stored.metadata.resource_version

    # Check mode: predicts, changes nothing.
    predicted = ansible_module(RESTORE, {"name": NODE, "before": snapshot}, check=True, diff=True)
    assert predicted.get("changed") and not predicted.get("failed"), predicted
    assert predicted["patch"][0] == {"op": "test", "path": "/metadata/resourceVersion",
                                     "value": drilled["metadata"]["resourceVersion"]}
    assert predicted["diff"]["after"]["labels"] == scoped(snapshot)["labels"]
    assert raw_node(api_client, core)["metadata"]["resourceVersion"] == drilled["metadata"]["resourceVersion"]

    restored = ansible_module(RESTORE, {"name": NODE, "before": snapshot}, diff=True)
    assert restored.get("changed") and not restored.get("failed"), restored
    assert restored["restored"]["unschedulable"] == {"from": True, "to": False}
    assert restored["restored"]["labels"][DRILL_PREFIX + "drill"] == {"from": drill, "to": None}
    assert [t["key"] for t in restored["restored"]["taints"]["from"]] == [AWS + "unhealthy", UNSCHEDULABLE_TAINT]
    after = raw_node(api_client, core)
    assert scoped(state_of(after)) == scoped(snapshot)
    assert after["metadata"]["annotations"][OUT_OF_SCOPE] == "team-a", "an out-of-scope mark must stay"
    assert restored["node"]["resource_version"] == after["metadata"]["resourceVersion"]
    assert restored["diff"]["after"] == predicted["diff"]["after"]

    rerun = ansible_module(RESTORE, {"name": NODE, "before": snapshot})
    assert rerun.get("changed") is False and rerun["patch"] == [] and rerun["restored"] == {}, rerun
    assert raw_node(api_client, core)["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


def test_restores_several_nodes_in_one_call(api_client, core, drill, nodes):
    recorded = ansible_module(LEDGER, {"drill": drill, "entries": [{"type": "node", "node": n} for n in nodes]})
    assert recorded.get("changed") and not recorded.get("failed"), recorded
    snapshots = dict((e["node"], e["before"]) for e in recorded["ledger"]["entries"])
    for name in nodes:
        mark_as_drilled(core, drill, name)
    drilled = dict((name, raw_node(api_client, core, name)) for name in nodes)
    listed = [{"name": name, "before": snapshots[name]} for name in nodes]

    # A node that is gone fails the whole call before any node is changed.
    missing = ansible_module(RESTORE, {"nodes": listed + [{"name": "gpu-node-9", "before": snapshots[NODE]}]})
    clean_failure(missing, "node gpu-node-9 not found: a node deleted since the drill cannot be restored")
    assert "no node was changed" in missing["msg"] and missing.get("changed") is False
    for name in nodes:
        assert raw_node(api_client, core, name)["metadata"]["resourceVersion"] == \
            drilled[name]["metadata"]["resourceVersion"]

    predicted = ansible_module(RESTORE, {"nodes": listed}, check=True, diff=True)
    assert predicted.get("changed") and not predicted.get("failed"), predicted
    assert [(n["name"], n["changed"]) for n in predicted["nodes"]] == [(name, True) for name in nodes]
    assert sorted(predicted["diff"]["after"]) == sorted(nodes)
    for name in nodes:
        assert predicted["diff"]["after"][name]["labels"] == scoped(snapshots[name])["labels"]
        assert raw_node(api_client, core, name)["metadata"]["resourceVersion"] == \
            drilled[name]["metadata"]["resourceVersion"]

    restored = ansible_module(RESTORE, {"nodes": listed})
    assert restored.get("changed") and not restored.get("failed"), restored
    assert "patch" not in restored and "node" not in restored, "the single form's keys are per entry"
    for name, entry in zip(nodes, restored["nodes"]):
        assert entry["name"] == name and entry["changed"], entry
        assert entry["restored"]["unschedulable"] == {"from": True, "to": False}
        after = raw_node(api_client, core, name)
        assert scoped(state_of(after)) == scoped(snapshots[name])
        assert after["metadata"]["annotations"][OUT_OF_SCOPE] == "team-a", "an out-of-scope mark must stay"
        assert entry["node"]["resource_version"] == after["metadata"]["resourceVersion"]

    rerun = ansible_module(RESTORE, {"nodes": listed})
    assert rerun.get("changed") is False and not rerun.get("failed"), rerun
    assert [(n["changed"], n["patch"]) for n in rerun["nodes"]] == [(False, [])] * len(nodes)


def test_a_drill_killed_half_way_leaves_its_ledger_for_a_later_run(core, drill, tmp_path):
    playbook = tmp_path / "drill.yml"
    playbook.write_text("""\
- name: A drill that is killed after writing its ledger
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Record what the drill is about to change
      gpu_resilience.fault_injection.drill_ledger:
        drill: %(drill)s
        meta: {playbook: drill.yml, owner: it, awx_job_id: 4242}
        entries:
          - {type: node, node: gpu-node-0}
          - {type: note, text: about to inject}
    - name: The drill's process is killed while it waits here
      ansible.builtin.wait_for:
        path: %(never)s
        timeout: 600
""" % {"drill": drill, "never": str(tmp_path / "never")})
    proc = subprocess.Popen([venv_tool("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
                             "-e", "ansible_python_interpreter=" + sys.executable],
                            cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or exists(lambda: ledger_map(core, drill)), 120,
                   "the drill's ledger")
        assert proc.poll() is None, "the drill ended by itself:\n" + proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            kill_run(proc)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # A damaged ledger of another drill must not hide this one, nor fail the listing.
    damaged = drill + "-damaged"
    core.create_namespaced_config_map(NS, {"metadata": {"name": "gpu-drill-" + damaged, "labels": {
        "app.kubernetes.io/managed-by": "gpu_resilience.fault_injection",
        "fault-injection.gpu-resilience.io/drill-ledger": damaged}}, "data": {"ledger.json": '{"version": 1, "ent'}})
    try:
        found = ansible_module(LEDGER + "_info", {"namespace": NS})
        assert not found.get("failed") and found.get("changed") is False, found
        mine = [item for item in found["ledgers"] if item.get("drill") == drill]
        assert len(mine) == 1 and "error" not in mine[0]
        assert mine[0]["meta"] == {"playbook": "drill.yml", "owner": "it", "awx_job_id": 4242}
        assert [e["type"] for e in mine[0]["entries"]] == ["node", "note"]
        assert mine[0]["entries"][0]["before"]["labels"]["kubernetes.io/hostname"] == "gpu-node-0"
        assert mine[0]["name"] == "gpu-drill-" + drill and mine[0]["namespace"] == NS
        bad = [item for item in found["ledgers"] if item.get("drill") == damaged]
        assert len(bad) == 1 and "is not JSON" in bad[0]["error"], found["ledgers"]
        created = [item["created"] for item in found["ledgers"] if item.get("drill") in (drill, damaged)]
        assert created == sorted(created)
        only = ansible_module(LEDGER + "_info", {"drill": drill})
        assert [item["drill"] for item in only["ledgers"]] == [drill]
        # The damaged one is never overwritten, and can be deleted.
        refused = ansible_module(LEDGER, {"drill": damaged, "entries": [{"type": "note", "text": "x"}]})
        clean_failure(refused, "is not JSON")
    finally:
        removed = ansible_module(LEDGER, {"drill": damaged, "state": "absent"})
    assert removed.get("changed") and not exists(lambda: ledger_map(core, damaged)), removed

    # The cleanup closes the ledger: deleted once, then nothing to do.
    closed = ansible_module(LEDGER, {"drill": drill, "state": "absent"}, diff=True)
    assert closed.get("changed") and closed["ledger"]["drill"] == drill, closed
    assert not exists(lambda: ledger_map(core, drill))
    assert ansible_module(LEDGER, {"drill": drill, "state": "absent"}).get("changed") is False


def test_check_mode_writes_no_ledger(core, drill):
    result = ansible_module(LEDGER, {"drill": drill, "entries": [{"type": "node", "node": NODE}]}, check=True, diff=True)
    assert result.get("changed") and result["created"] and not result.get("failed"), result
    assert result["ledger"]["entries"][0]["before"]["labels"]["kubernetes.io/hostname"] == NODE
    assert json.loads(result["diff"]["after"]) == result["ledger"] and result["diff"]["before"] == ""
    assert not exists(lambda: ledger_map(core, drill))


def test_a_missing_node_is_named_and_nothing_is_recorded(core, drill):
    result = ansible_module(LEDGER, {"drill": drill, "entries": [{"type": "note", "text": "start"},
                                                                 {"type": "node", "node": "gpu-node-9"}]})
    clean_failure(result, "node gpu-node-9 not found")
    assert not exists(lambda: ledger_map(core, drill))
    snapshot = {"unschedulable": False, "taints": [], "labels": {}, "annotations": {}}
    clean_failure(ansible_module(RESTORE, {"name": "gpu-node-9", "before": snapshot}),
                  "node gpu-node-9 not found: a node deleted since the drill cannot be restored")
    clean_failure(ansible_module(RESTORE, {"name": NODE, "before": {"labels": {}}}), "is not a node snapshot")


def test_a_missing_namespace_names_the_agent_role(core):
    namespace = "it-absent-" + uuid.uuid4().hex[:6]
    result = ansible_module(LEDGER, {"drill": "d1", "namespace": namespace, "entries": [{"type": "note", "text": "x"}]})
    clean_failure(result, "namespace %s does not exist" % namespace)
    assert "gpu_resilience.fault_injection.fault_injector_agent" in result["msg"]
    clean_failure(ansible_module(LEDGER, {"drill": "Bad_Id"}), "must be 1 to 63 lowercase letters")


def test_claims_are_all_or_none_and_only_their_drill_releases_them(core, drill):
    other = drill + "-b"
    workload = {"kind": "Deployment", "namespace": "it-claims", "name": "web"}
    made = ansible_module(CLAIM, {"drill": drill, "nodes": [NODE], "workloads": [workload], "meta": {"awx_job_id": "4242"}})
    assert made.get("changed") and not made.get("failed"), made
    mine = {"gpu-drill-claim.deployment.it-claims.web": drill, "gpu-drill-claim.node.gpu-node-1": drill}
    assert claims(core) == mine

    # A fleet drill overlapping it is refused whole, in check mode too, and creates nothing.
    for check in (True, False):
        refused = ansible_module(CLAIM, {"drill": other, "nodes": [OTHER_NODE, NODE]}, check=check)
        clean_failure(refused, "node gpu-node-1 is held by drill %s since " % drill)
        assert "AWX job 4242" in refused["msg"] and "nothing was changed" in refused["msg"]
        assert "ansible-playbook gpu_resilience.fault_injection.cleanup -e fault_cleanup_drill=" + drill in refused["msg"]
        assert claims(core) == mine
    # So is one on the same workload, elsewhere.
    clean_failure(ansible_module(CLAIM, {"drill": other, "nodes": ["gpu-node-0"], "workloads": [workload]}),
                  "Deployment it-claims/web is held by drill " + drill)
    # A node carrying the label of a drill whose cleanup did not finish is refused as well.
    core.patch_node(OTHER_NODE, {"metadata": {"labels": {DRILL_PREFIX + "drill": "it-killed"}}})
    try:
        clean_failure(ansible_module(CLAIM, {"drill": other, "nodes": [OTHER_NODE]}),
                      "node gpu-node-2 carries the label %sdrill=it-killed of drill it-killed" % DRILL_PREFIX)
    finally:
        core.patch_node(OTHER_NODE, {"metadata": {"labels": {DRILL_PREFIX + "drill": None}}})
    assert claims(core) == mine

    # Another node is free; each drill releases its own claims only.
    assert ansible_module(CLAIM, {"drill": other, "nodes": [OTHER_NODE]}).get("changed")
    released = ansible_module(CLAIM, {"drill": other, "state": "absent"})
    assert [c["name"] for c in released["claims"]] == ["gpu-drill-claim.node.gpu-node-2"] and claims(core) == mine
    assert ansible_module(CLAIM, {"drill": drill, "state": "absent"}).get("changed") and claims(core) == {}


def test_cleanup_releases_the_claims_of_a_drill_killed_before_its_ledger(core, drill):
    assert ansible_module(CLAIM, {"drill": drill, "nodes": [NODE, OTHER_NODE]}).get("changed")
    rc, out, _recap = ansible_playbook("cleanup.yml", {"fault_cleanup_drill": drill})
    assert rc == 0, out[-4000:]
    assert "%s: no ledger; 2 claim(s) released" % drill in out
    assert claims(core) == {}


def test_verify_only_names_a_mark_changed_behind_the_drills_back_then_cleanup_restores_it(
        api_client, core, drill, node):
    recorded = ansible_module(LEDGER, {"drill": drill, "entries": [{"type": "node", "node": NODE}]})
    assert recorded.get("changed") and not recorded.get("failed"), recorded
    snapshot = recorded["ledger"]["entries"][0]["before"]
    # Behind the drill's back: a detector's label and taint.
    core.patch_node(NODE, {"metadata": {"labels": {AWS + "status": "fail"}}}, field_manager="someone-else")
    taints = list(core.read_node(NODE).spec.taints or []) + [client.V1Taint(**UNHEALTHY)]
    core.patch_node(NODE, {"spec": {"taints": taints}}, field_manager="someone-else")
    changed = raw_node(api_client, core)

    rc, out, _recap = ansible_playbook("cleanup.yml", {"fault_cleanup_drill": drill, "fault_cleanup_verify_only": True})
    assert rc != 0, out[-4000:]
    assert "The cluster is not as the drill(s) found it, 2 difference(s)" in out, out[-4000:]
    assert 'node gpu-node-1: label %sstatus was absent, now \\"fail\\" (written by someone-else)' % AWS in out, out[-4000:]
    assert "node gpu-node-1: taint %sunhealthy=true:NoSchedule added" % AWS in out
    assert "Nothing was changed (fault_cleanup_verify_only)" in out
    assert raw_node(api_client, core)["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
    assert exists(lambda: ledger_map(core, drill))

    rc, out, _recap = ansible_playbook("cleanup.yml", {"fault_cleanup_drill": drill})
    assert rc == 0, out[-4000:]
    assert "%s: 0 fault(s) deleted, 0 workload(s) unshimmed, marks of 1 node(s) as before (1 restored)" % drill in out
    assert "The cluster was put back as it was: checked node gpu-node-1" in out
    assert scoped(state_of(raw_node(api_client, core))) == scoped(snapshot)
    assert not exists(lambda: ledger_map(core, drill))
