"""nvsentinel_stages: which stage NVSentinel runs, what each stage leaves on a node phase by phase,
and how a drill hands a node back.

The node marks below are those NVSentinel wrote on the local control plane (tests/nvsentinel) for
XID 79: stage full, cordon, labels and annotations by fault-quarantine, the state label by
node-drainer and fault-remediation, a RebootNode; stage dry-run, the two annotations and the state
label only.
"""
import json

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import nvsentinel_stages as stages
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog as xc

NODE = "gpu-node-1"
IMAGE = "ghcr.io/nvidia/nvsentinel/%s:v1.19.0"
REBOOT = {"api_version": "janitor.dgxc.nvidia.com/v1alpha1", "kind": "RebootNode", "scope": "Cluster"}
RESOURCES = {"RESTART_BM": REBOOT, "COMPONENT_RESET": REBOOT, "RESTART_VM": REBOOT}
XID79 = xc.nvsentinel_events([xc.journal_message(xc.kmsg_text(r))[1] for r in xc.render_xid_lines(79, "0000:53:00.0")])
XID13 = xc.nvsentinel_events([xc.journal_message(xc.kmsg_text(r))[1] for r in xc.render_xid_lines(13, "0000:53:00.0")])


def deployment(component, dry_run, replicas=1, ready=1, arg_form="--dry-run=%s"):
    return {"metadata": {"name": component},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": component, "image": IMAGE % component, "args": ["--metrics-port=2112", arg_form % dry_run]}]}}},
            "status": {"readyReplicas": ready}}


def node(unschedulable=False, labels=None, annotations=None, managers=()):
    fields = [{"manager": m, "operation": "Update", "time": "2026-12-06T22:04:00Z", "fieldsV1": f} for m, f in managers]
    return {"metadata": {"name": NODE, "labels": dict(labels or {}), "annotations": dict(annotations or {}),
                         "managedFields": fields},
            "spec": {"unschedulable": True} if unschedulable else {}}


FQ_CORDON = ("fault-quarantine", {"f:spec": {"f:unschedulable": {}}})
HELD = {"quarantineHealthEvent": json.dumps([{"checkName": "SysLogsXIDError", "errorCode": ["79"]}]),
        "quarantineHealthEventIsCordoned": "True"}
CORDON_LABELS = {"k8saas.nvidia.com/cordon-by": "NVSentinel", "k8saas.nvidia.com/cordon-reason": "Syslog-fatal-error-ruleset",
                 "k8saas.nvidia.com/cordon-timestamp": "2026-12-06T22-04-00Z"}
STATE = "dgxc.nvidia.com/nvsentinel-state"


def reboot(name="maintenance-gpu-node-1-4f58", created="2026-12-06T22:04:00Z", node_name=NODE):
    return {"kind": "RebootNode", "metadata": {"name": name, "creationTimestamp": created,
                                               "labels": {"app.kubernetes.io/managed-by": "nvsentinel"}},
            "spec": {"nodeName": node_name}}


# --- which stage runs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, stage", [
    ({}, "monitor"),
    ({"fault-quarantine": "true", "node-drainer": "true", "fault-remediation": "true"}, "dry-run"),
    ({"fault-quarantine": "false", "node-drainer": "false", "fault-remediation": "false"}, "full"),
    ({"fault-quarantine": "true", "node-drainer": "false", "fault-remediation": "false"}, None),
    ({"fault-quarantine": "false"}, None),
])
def test_the_stage_deployed(flags, stage):
    found = stages.components([deployment(c, v) for c, v in flags.items()] + [
        {"metadata": {"name": "labeler"}, "spec": {"template": {"spec": {"containers": [
            {"name": "labeler", "image": IMAGE % "labeler"}]}}}}])
    assert stages.deployed_stage(found) == stage
    assert set(found) == set(flags)


def test_dry_run_flag_forms_and_scaled_down_components():
    assert stages.dry_run_flag(["--dry-run"]) and stages.dry_run_flag(["-dry-run", "true"])
    assert not stages.dry_run_flag(["--dry-run=false"]) and not stages.dry_run_flag(["--dry-runner=true"])
    found = stages.components([deployment(c, "false", replicas=0) for c in stages.COMPONENTS])
    assert stages.deployed_stage(found) == "monitor"
    assert stages.describe_components(found) == \
        "fault-quarantine scaled to 0, node-drainer scaled to 0, fault-remediation scaled to 0"


def test_a_drill_expecting_another_stage_is_told_what_runs_and_how_to_deploy_each():
    found = stages.components([deployment(c, "true") for c in stages.COMPONENTS])
    (problem,) = stages.stage_problems("full", found, "nvsentinel")
    assert "expects NVSentinel's stage full" in problem and "stage dry-run" in problem
    assert "fault-quarantine (dry-run), node-drainer (dry-run), fault-remediation (dry-run)" in problem
    assert "global.dryRun false" in problem
    assert stages.stage_problems("dry-run", found, "nvsentinel") == []
    (problem,) = stages.stage_problems("monitor", found, "nvsentinel")
    assert "global.faultQuarantine.enabled" in problem
    with pytest.raises(stages.StageError):
        stages.stage_problems("canary", found, "nvsentinel")


def test_unready_components_and_a_tripped_breaker_are_refused():
    found = stages.components([deployment("fault-quarantine", "false", ready=0)] +
                              [deployment(c, "false") for c in ("node-drainer", "fault-remediation")])
    breaker = {"data": {"status": "TRIPPED", "cursor": "RESUME"}}
    problems = stages.stage_problems("full", found, "nvsentinel", breaker)
    assert len(problems) == 2 and "0 of 1 replica(s) ready" in problems[0] and "circuit breaker is TRIPPED" in problems[1]
    assert stages.stage_problems("monitor", {}, "nvsentinel", breaker) == []


# --- fault-remediation's configuration -------------------------------------------------------------------

def test_remediation_resources_from_the_charts_config():
    config = '''[template]
mountPath = "/etc/config"
[remediationActions."RESTART_BM"]
apiGroup = "janitor.dgxc.nvidia.com"
version = "v1alpha1"
kind = "RebootNode"
scope = "Cluster"
[remediationActions."REPLACE_VM"]
apiGroup = "janitor.dgxc.nvidia.com"
version = "v1alpha1"
kind = "TerminateNode"
'''
    assert stages.remediation_resources(config) == {
        "REPLACE_VM": {"api_version": "janitor.dgxc.nvidia.com/v1alpha1", "kind": "TerminateNode", "scope": "Cluster"},
        "RESTART_BM": REBOOT}
    with pytest.raises(stages.StageError, match="not TOML"):
        stages.remediation_resources("[broken")


def test_the_plan_follows_the_catalogs_fatal_actions():
    plan = stages.plan("full", XID79, RESOURCES)
    assert plan["fatal"] and plan["actions"] == ["RESTART_BM"]
    assert plan["objects"] == [{"api_version": REBOOT["api_version"], "kind": "RebootNode"}]
    assert plan["remediation_state"] == "remediation-succeeded"
    assert stages.plan("dry-run", XID79, RESOURCES)["objects"] == []
    assert not stages.plan("full", XID13, RESOURCES)["fatal"]
    unsupported = stages.plan("full", XID79, {})
    assert unsupported["remediation_state"] == "remediation-failed" and unsupported["unsupported"] == ["RESTART_BM"]


# --- a node in a phase -----------------------------------------------------------------------------------

FULL = stages.plan("full", XID79, RESOURCES)
DRY = stages.plan("dry-run", XID79, RESOURCES)
MONITOR = stages.plan("monitor", XID79, RESOURCES)


def test_full_stage_phases():
    clean = node()
    assert not stages.phase_state(FULL, "quarantine", clean)["done"]
    quarantined = node(True, dict(CORDON_LABELS, **{STATE: "quarantined"}), HELD, [FQ_CORDON])
    state = stages.phase_state(FULL, "quarantine", quarantined)
    assert state["done"] and not state["forbidden"]
    assert [m["detail"] for m in state["marks"]][0] == "cordoned by fault-quarantine"
    assert state["marks"][0]["set_by"]["manager"] == "fault-quarantine"
    assert not stages.phase_state(FULL, "drain", quarantined)["done"]
    drained = node(True, dict(CORDON_LABELS, **{STATE: "drain-succeeded"}), HELD, [FQ_CORDON])
    assert stages.phase_state(FULL, "drain", drained)["done"]
    remediated = node(True, dict(CORDON_LABELS, **{STATE: "remediation-succeeded"}),
                      dict(HELD, latestFaultRemediationState='{"equivalenceGroups":{}}'), [FQ_CORDON])
    assert not stages.phase_state(FULL, "remediation", remediated)["done"]   # no RebootNode yet
    state = stages.phase_state(FULL, "remediation", remediated, [reboot()])
    assert state["done"] and "RebootNode maintenance-gpu-node-1-4f58" in [m["detail"] for m in state["marks"]]
    failed = node(True, dict(CORDON_LABELS, **{STATE: "drain-failed"}), HELD, [FQ_CORDON])
    assert stages.phase_state(FULL, "drain", failed)["forbidden"] == ["NVSentinel reports state drain-failed"]


def test_dry_run_stage_phases_and_what_it_forbids():
    decided = node(False, {STATE: "draining"}, HELD)
    for phase in ("quarantine", "drain", "remediation"):
        state = stages.phase_state(DRY, phase, decided)
        assert state["done"] and not state["forbidden"], (phase, state)
    assert not stages.phase_state(DRY, "quarantine", node())["done"]
    assert not stages.phase_state(DRY, "drain", node(False, {}, HELD))["done"]
    cordoned = node(True, dict(CORDON_LABELS), HELD, [FQ_CORDON])
    forbidden = stages.phase_state(DRY, "quarantine", cordoned)["forbidden"]
    assert forbidden[0] == "in stage dry-run fault-quarantine does not cordon, yet the node was cordoned by fault-quarantine"
    assert len(forbidden) == 4   # and its three labels
    made = stages.phase_state(DRY, "remediation", decided, [reboot()])["forbidden"]
    assert made == ["in stage dry-run fault-remediation creates nothing, yet RebootNode maintenance-gpu-node-1-4f58 exists"]
    # The drill's own cordon (its drain, standing in for NVSentinel's) is not fault-quarantine's.
    own = node(True, {STATE: "draining"}, HELD, [("gpu_node_drain", {"f:spec": {"f:unschedulable": {}}})])
    assert not stages.phase_state(DRY, "drain", own)["forbidden"]


def test_monitor_and_non_fatal_faults_forbid_every_mark():
    assert stages.phase_state(MONITOR, "quarantine", node()) == {
        "done": True, "marks": [], "forbidden": [], "expect": "no NVSentinel mark (in stage monitor NVSentinel only reports)",
        "acts": False}
    state = stages.phase_state(MONITOR, "drain", node(False, {STATE: "draining"}))
    assert state["forbidden"] == ["in stage monitor NVSentinel only reports, yet the node carries state draining"]
    xid13 = stages.plan("full", XID13, RESOURCES)
    state = stages.phase_state(xid13, "quarantine", node(True, CORDON_LABELS, HELD, [FQ_CORDON]))
    assert state["done"] and "non-fatal" in state["forbidden"][0]
    with pytest.raises(stages.StageError):
        stages.phase_state(FULL, "recovery", node())


def test_remediation_objects_of_the_node_since_the_drill():
    objects = [reboot(), reboot("old", created="2026-12-06T21:00:00Z"), reboot("other", node_name="gpu-node-2"),
               dict(reboot("mine"), metadata={"name": "mine", "labels": {}})]
    since = 1796594640.5   # 2026-12-06T22:04:00.5Z: the object's second counts
    assert [o["metadata"]["name"] for o in stages.remediation_objects(objects, NODE, since)] == [
        "maintenance-gpu-node-1-4f58"]


# --- handing the node back -------------------------------------------------------------------------------

def test_release_uncordons_a_held_node_and_cordons_first_in_dry_run():
    assert stages.release_steps(node(True, CORDON_LABELS, HELD)) == [{"spec": {"unschedulable": None}}]
    assert stages.release_steps(node(False, {STATE: "drain-succeeded"}, HELD)) == [
        {"spec": {"unschedulable": True}}, {"spec": {"unschedulable": None}}]
    assert stages.release_steps(node(True)) == []   # not NVSentinel's: nothing to hand back
    assert not stages.released(node(False, {STATE: "remediation-succeeded"}))
    assert not stages.released(node(False, {}, {"latestFaultRemediationState": "{}"}))
    # Let go: fault-quarantine's hold and the state label gone; fault-remediation's record may stay.
    assert stages.let_go(node(False, {}, {"latestFaultRemediationState": "{}"}))
    assert not stages.let_go(node(False, {STATE: "remediating"})) and not stages.let_go(node(True, {}, HELD))
    assert stages.released(node(False, CORDON_LABELS, {"quarantinedNodeUncordonedManually": "True"}))
    assert stages.handed_back(node(False, CORDON_LABELS, {"quarantinedNodeUncordonedManually": "True"}))
    assert not stages.handed_back(node(True, CORDON_LABELS, HELD))


def test_nvsentinel_events_are_platform_connectors_and_node_drainers():
    def event(name, reason, component, when="2026-12-06T22:04:01Z", about=NODE):
        return {"metadata": {"name": name}, "reason": reason, "source": {"component": component},
                "involvedObject": {"kind": "Node", "name": about}, "lastTimestamp": when}
    events = [event("a", "SysLogsXIDErrorIsNotHealthy", "syslog-health-monitor"),
              event("b", "AwaitingPodCompletion", "nvsentinel-node-drainer"),
              event("c", "RegisteredNode", "node-controller"),
              event("d", "AwaitingPodCompletion", "nvsentinel-node-drainer", when="2026-12-06T21:00:00Z"),
              event("e", "AwaitingPodCompletion", "nvsentinel-node-drainer", about="gpu-node-2")]
    assert [e["metadata"]["name"] for e in stages.nvsentinel_events(events, NODE, 1796594640)] == ["a", "b"]


def test_which_phases_nvsentinel_acts_in():
    assert [stages.acts(FULL, p) for p in stages.PHASES] == [True, True, True]
    assert [stages.acts(DRY, p) for p in stages.PHASES] == [True, True, False]
    assert [stages.acts(MONITOR, p) for p in stages.PHASES] == [False, False, False]
    assert not stages.acts(stages.plan("full", XID13, RESOURCES), "quarantine")
