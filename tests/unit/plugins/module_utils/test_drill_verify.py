"""drill_verify: a drill's ledger compared with the cluster after its cleanup (node marks and conditions,
workload pod templates, faults, objects), and the ledger's record of a workload before the shim."""
import copy

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_ledger, drill_verify, node_restore
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_patch
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import drill_ledger as ledger_module

from test_node_restore import AWS, AWS_TAINT, DRILL, FakeK8s, node

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "gpu-inference", "namespace": "gpu-demo", "annotations": {}},
              "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "x"}},
                                                   "spec": {"containers": [{"name": "server", "image": "python:3.12"}]}}}}
SHIM = {"type": "shim_patch", "api_version": "", "kind": "Deployment", "namespace": "gpu-demo", "name": "gpu-inference"}


def ledger(before_node=None, workload=None, extra=()):
    entries = [dict(type="node", node="gpu-node-1", before=node_restore.snapshot(before_node or node())),
               dict(SHIM, before=drill_verify.workload_state(workload or DEPLOYMENT, "Deployment")),
               dict(type="faults", drill="drill-a")] + list(extra)
    return {"drill": "drill-a", "entries": entries}


def observed(now_node=None, workload="as recorded", faults=(), objects=None):
    return {"nodes": {"gpu-node-1": now_node if now_node is not None else node()},
            "workloads": {drill_ledger.identity(SHIM): DEPLOYMENT if workload == "as recorded" else workload},
            "faults": {"drill-a": list(faults)}, "objects": objects or {}}


def texts(result):
    return [d["text"] for d in result["differences"]]


def test_a_cluster_as_recorded_has_no_difference_and_says_what_was_checked():
    result = drill_verify.compare(ledger(), observed())
    assert result["differences"] == []
    assert result["checked"] == ["node gpu-node-1 (marks of the drills and detectors, cordon, conditions)",
                                 "Deployment gpu-demo/gpu-inference (pod template, shim)", "the GPUFaults of drill drill-a"]
    assert drill_verify.summary(result["checked"], []).startswith("The cluster was put back as it was: checked node gpu-node-1")


def test_every_kind_of_node_difference_is_named_with_who_wrote_it():
    now = node(labels={AWS + "status": "fail", AWS + "last-check": "now"}, taints=[AWS_TAINT], unschedulable=True,
               annotations={"quarantineHealthEvent": "[]", "example.com/other": "x"})
    now["status"]["conditions"] = [{"type": "Ready", "status": "False"}, {"type": "SysLogsXIDError", "status": "True"}]
    now["metadata"]["managedFields"] = [{"manager": "gpu-health-agent", "operation": "Update", "time": "2026-11-24T09:00:00Z",
                                         "fieldsV1": {"f:metadata": {"f:labels": {"f:%sstatus" % AWS: {}}}}}]
    result = drill_verify.compare(ledger(), observed(now))
    assert texts(result) == [
        'node gpu-node-1: label %sstatus was absent, now "fail" (written by gpu-health-agent)' % AWS,
        'node gpu-node-1: annotation quarantineHealthEvent was absent, now "[]"',
        "node gpu-node-1: taint %sunhealthy=true:NoSchedule added" % AWS,
        "node gpu-node-1: cordoned (it was not)",
        'node gpu-node-1: condition Ready was "True", now "False"',
        'node gpu-node-1: condition SysLogsXIDError was absent, now "True"',
    ]
    # The heartbeat (last-check) and other controllers' annotations are not the drill's: not compared.
    first = result["differences"][0]
    assert (first["object"], first["field"], first["before"], first["now"]) == (
        "node gpu-node-1", "labels['%sstatus']" % AWS, None, "fail")


def test_marks_gone_since_are_differences_too():
    before = node(labels={AWS + "status": "warn"}, taints=[AWS_TAINT], unschedulable=True)
    result = drill_verify.compare(ledger(before), observed(node()))
    assert texts(result) == ['node gpu-node-1: label %sstatus was "warn", now absent' % AWS,
                             "node gpu-node-1: taint %sunhealthy=true:NoSchedule removed" % AWS,
                             "node gpu-node-1: uncordoned (it was cordoned)"]


@pytest.mark.parametrize("now, claims", [
    (node(labels={DRILL + "drill": "drill-c"}), []),
    (node(labels={AWS + "status": "fail"}), [{"drill": "drill-c", "target": {"type": "node", "name": "gpu-node-1"}}]),
])
def test_a_node_in_another_drills_hands_says_so(now, claims):
    result = drill_verify.compare(ledger(), observed(now), claims)
    assert len(result["differences"]) == 1
    assert result["differences"][0]["text"].endswith("(the node is in drill drill-c's hands now: left to its cleanup)")


def test_a_condition_compares_by_whether_it_reports_a_problem():
    # NVSentinel keeps its condition once the node is healthy again, False: as good as none.
    healed = node()
    healed["status"]["conditions"] = [{"type": "Ready", "status": "True"}, {"type": "SysLogsXIDError", "status": "False"}]
    assert drill_verify.compare(ledger(), observed(healed))["differences"] == []
    unknown = node()
    unknown["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    assert texts(drill_verify.compare(ledger(), observed(unknown))) == [
        'node gpu-node-1: condition Ready was "True", now "Unknown"']


def test_a_ledger_without_conditions_compares_no_conditions():
    before = node_restore.snapshot(node())
    del before["conditions"]
    entry = dict(type="node", node="gpu-node-1", before=before)
    now = node()
    now["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert drill_verify.compare({"drill": "d", "entries": [entry]}, observed(now))["differences"] == []


def test_a_gone_node_workload_fault_or_object_is_a_difference():
    shimmed = copy.deepcopy(DEPLOYMENT)
    shimmed["metadata"]["annotations"][shim_patch.ANNOTATION] = "{}"
    shimmed["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "LD_PRELOAD", "value": "/x.so"}]
    config_map = {"type": "object", "api_version": "v1", "kind": "ConfigMap", "namespace": "gpu-demo", "name": "probe"}
    result = drill_verify.compare(ledger(extra=[config_map]), dict(observed(workload=shimmed, faults=["f-1", "f-2"]),
                                  objects={drill_ledger.identity(config_map): {"metadata": {"name": "probe"}}}))
    found = texts(result)
    assert found[0] == "Deployment gpu-demo/gpu-inference still carries the CUDA shim (annotation %s)" % shim_patch.ANNOTATION
    assert found[1].startswith("Deployment gpu-demo/gpu-inference: its pod template differs from before the drill (sha256 ")
    assert found[2:] == ["2 GPUFault(s) of drill drill-a are left: f-1, f-2",
                         "ConfigMap gpu-demo/probe, which the drill created, still exists"]
    gone = drill_verify.compare(ledger(), dict(observed(workload=None), nodes={"gpu-node-1": None}))
    assert texts(gone) == ["node gpu-node-1 no longer exists", "Deployment gpu-demo/gpu-inference no longer exists"]


def test_the_template_hash_ignores_what_is_not_the_template():
    scaled = copy.deepcopy(DEPLOYMENT)
    scaled["spec"]["replicas"] = 5
    scaled["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "4"
    assert drill_verify.workload_state(scaled, "Deployment") == drill_verify.workload_state(DEPLOYMENT, "Deployment")
    assert drill_verify.workload_state(None, "Deployment") == {"exists": False}


def test_the_summary_lists_each_difference():
    result = drill_verify.compare(ledger(), observed(faults=["f-1"]))
    assert drill_verify.summary(result["checked"], result["differences"]) == (
        "The cluster is NOT as it was, 1 difference(s): 1 GPUFault(s) of drill drill-a are left: f-1.")
    assert drill_verify.summary([], []).startswith("Nothing to compare")


def test_the_ledger_records_the_workload_before_the_shim_once():
    api = FakeK8s(nodes=[node()])
    api.put(copy.deepcopy(DEPLOYMENT))
    ledgers = ledger_module.Ledgers(api, "gpu-fault-injection", now=lambda: "2026-11-24T09:00:00.000000Z")
    first = ledgers.present("drill-a", None, [dict(SHIM)])
    recorded = first["ledger"]["entries"][0]["before"]
    assert recorded == drill_verify.workload_state(DEPLOYMENT, "Deployment") and recorded["shim"] is False
    # The shim goes in; recording the entry again keeps the state from before.
    api.objects[("Deployment", "gpu-demo", "gpu-inference")]["metadata"]["annotations"][shim_patch.ANNOTATION] = "{}"
    again = ledgers.present("drill-a", None, [dict(SHIM)])
    assert not again["changed"] and again["ledger"]["entries"][0]["before"] == recorded
    with pytest.raises(drill_ledger.LedgerError, match="before is the workload's state"):
        ledgers.present("drill-a", None, [dict(SHIM, before={})])


def test_nvsentinels_objects_and_events_of_the_drill_must_be_gone():
    entry = {"type": "nvsentinel", "node": "gpu-node-1", "since": "2026-12-06T22:04:00Z",
             "remediation": [{"api_version": "janitor.dgxc.nvidia.com/v1alpha1", "kind": "RebootNode"}]}
    reboot = {"kind": "RebootNode", "metadata": {"name": "maintenance-gpu-node-1-4f58",
                                                 "creationTimestamp": "2026-12-06T22:04:01Z",
                                                 "labels": {"app.kubernetes.io/managed-by": "nvsentinel"}},
              "spec": {"nodeName": "gpu-node-1"}}
    event = {"metadata": {"name": "gpu-node-1.187"}, "reason": "SysLogsXIDErrorIsNotHealthy",
             "involvedObject": {"kind": "Node", "name": "gpu-node-1"}, "lastTimestamp": "2026-12-06T22:04:02Z"}
    left = drill_verify.nvsentinel_left(entry, [reboot], [event])
    assert left == {"objects": ["RebootNode/maintenance-gpu-node-1-4f58"], "events": ["gpu-node-1.187"]}
    result = drill_verify.compare({"drill": "d", "entries": [entry]}, {"nvsentinel": {"gpu-node-1": left}})
    assert result["checked"] == ["NVSentinel on node gpu-node-1 (its remediation objects and Events since the fault)"]
    assert [d["text"] for d in result["differences"]] == [
        "NVSentinel on node gpu-node-1: 1 remediation object(s) of the drill left: RebootNode/maintenance-gpu-node-1-4f58",
        "NVSentinel on node gpu-node-1: 1 Event(s) of the drill left: gpu-node-1.187"]
    clean = drill_verify.compare({"drill": "d", "entries": [entry]},
                                 {"nvsentinel": {"gpu-node-1": drill_verify.nvsentinel_left(entry, [], [])}})
    assert clean["differences"] == []
