"""wait_node_cordon on the local control plane: the module watches gpu-node-2 while the test puts on
(or takes off) the marks NVSentinel's fault-quarantine, the AWS health-check suite or an operator
would, as the same kind of API calls with the same field managers.

Only gpu-node-2 is marked (other tests use gpu-node-0 and gpu-node-1), and the fixture puts the
node's marks back as they were after every test. Custom taints use PreferNoSchedule so a DaemonSet
another test rolls out at the same moment still lands on the node.
"""
import concurrent.futures
import datetime
import json
import re
import time

import pytest

from support import ansible_module, wait_until

MODULE = "gpu_resilience.fault_injection.wait_node_cordon"
NODE = "gpu-node-2"
PREFIX = "k8saas.nvidia.com/"
STATE_LABEL = "dgxc.nvidia.com/nvsentinel-state"
AWS = "gpu-healthcheck.aws-samples.io/"
IT_LABEL = "gpu-resilience.io/it-wait-node-cordon"

HEALTH_EVENT = [{"version": 1, "agent": "syslog-health-monitor", "componentClass": "GPU",
                 "checkName": "SysLogsXIDError", "isFatal": True, "isHealthy": False,
                 "message": "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "recommendedAction": "RESTART_BM",
                 "errorCode": ["79"], "nodeName": NODE,
                 "entitiesImpacted": [{"entityType": "PCI", "entityValue": "0000:75:00"}]}]
NVSENTINEL_LABELS = {PREFIX + "cordon-by": "NVSentinel", PREFIX + "cordon-reason": "GPU-fatal-error-ruleset",
                     PREFIX + "cordon-timestamp": "2026-11-22T18-20-18Z", STATE_LABEL: "quarantined"}
NVSENTINEL_ANNOTATIONS = {"quarantineHealthEvent": json.dumps(HEALTH_EVENT),
                          "quarantineHealthEventIsCordoned": "True",
                          "quarantineHealthEventAppliedTaints": "[]"}
UNCORDON_LABELS = {PREFIX + "uncordon-by": "NVSentinel", PREFIX + "uncordon-timestamp": "2026-11-22T18-41-02Z"}
TEST_LABELS = list(NVSENTINEL_LABELS) + list(UNCORDON_LABELS) + [AWS + "status", AWS + "severity", IT_LABEL]
TEST_TAINTS = (AWS + "unhealthy",)


@pytest.fixture()
def node(api_client, core):
    """gpu-node-2, with its quarantine marks restored afterwards whatever the test did."""
    before = core.read_node(NODE)
    taints = [api_client.sanitize_for_serialization(t) for t in before.spec.taints or []
              if t.key not in TEST_TAINTS and t.key != "node.kubernetes.io/unschedulable"]
    yield NODE
    core.patch_node(NODE, {
        "spec": {"unschedulable": True if before.spec.unschedulable else None, "taints": taints or None},
        "metadata": {
            "labels": dict((k, (before.metadata.labels or {}).get(k)) for k in TEST_LABELS),
            "annotations": dict((k, (before.metadata.annotations or {}).get(k)) for k in NVSENTINEL_ANNOTATIONS)}})


def quarantine(core, manager="fault-quarantine"):
    """What NVSentinel's fault-quarantine writes when a rule set cordons: one update of the node."""
    core.patch_node(NODE, {"spec": {"unschedulable": True},
                           "metadata": {"labels": NVSENTINEL_LABELS, "annotations": NVSENTINEL_ANNOTATIONS}},
                    field_manager=manager)


def unquarantine(core):
    """NVSentinel's healthy event: uncordon, drop its labels and annotations, record uncordon-by."""
    labels = dict((k, None) for k in NVSENTINEL_LABELS)
    labels.update(UNCORDON_LABELS)
    core.patch_node(NODE, {"spec": {"unschedulable": None},
                           "metadata": {"labels": labels,
                                        "annotations": dict((k, None) for k in NVSENTINEL_ANNOTATIONS)}},
                    field_manager="fault-quarantine")


def node_watches(api_client):
    """How many node watches the API server is serving (its apiserver_longrunning_requests gauge)."""
    response = api_client.call_api(*api_client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    response.read()
    total = 0
    for line in response.data.decode().splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'resource="nodes"' in line \
                and 'verb="WATCH"' in line and 'subresource=""' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


class Running:
    """The module running in the background; entered once it watches the nodes."""

    def __init__(self, api_client, args, check=False):
        self.api_client, self.args, self.check = api_client, args, check
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def __enter__(self):
        baseline = node_watches(self.api_client)
        self.future = self.pool.submit(ansible_module, MODULE, self.args, self.check, False, 120)
        wait_until(lambda: self.future.done() or node_watches(self.api_client) > baseline, 60,
                   "the module to start watching nodes", interval=0.05)
        assert not self.future.done(), "the module returned before it watched: %r" % (self.future.result(),)
        return self

    def result(self):
        return self.future.result(timeout=120)

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True)


def no_traceback(result):
    """A clean failure: ansible reports no traceback (it always adds this placeholder to failures)."""
    return "Traceback" not in json.dumps(result) and result.get("exception", PLACEHOLDER) == PLACEHOLDER


PLACEHOLDER = "(traceback unavailable)"


def utc(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def test_waits_for_the_nvsentinel_quarantine_and_says_who_set_it(api_client, core, node):
    with Running(api_client, {"name": node, "wait_timeout": 60}) as running:
        time.sleep(1)
        patched_at = time.time()
        quarantine(core)
        result = running.result()
    assert not result.get("failed"), result
    assert result["changed"] is False and result["satisfied"] is True and result["waited"] is True
    assert result["matched"] == [node] and result["state"] == "quarantined"
    (found,) = result["nodes"]
    print("\nNVSentinel quarantine of %s seen after %.3f s (module start -> event); module ran %.3f s"
          % (node, found["elapsed"], result["elapsed"]))
    assert found["matched"] is True and found["matched_at_start"] is False
    assert found["elapsed"] < 5
    # elapsed counts from the module's start to the event: the patch came after start, and within a second.
    offset = utc(result["started_at"]) + found["elapsed"] - patched_at
    assert -0.1 < offset < 1.0, (offset, result["started_at"], found["elapsed"], patched_at)
    by_field = dict((m["field"], m) for m in found["matched_marks"])
    cordon = by_field["spec.unschedulable"]
    assert cordon["kind"] == "cordoned" and cordon["set_by"]["manager"] == "fault-quarantine"
    assert cordon["set_by"]["operation"] == "Update"
    label = by_field["metadata.labels['k8saas.nvidia.com/cordon-by']"]
    assert label["kind"] == "nvsentinel" and label["value"] == "NVSentinel"
    assert label["set_by"]["manager"] == "fault-quarantine"
    assert by_field["metadata.labels['dgxc.nvidia.com/nvsentinel-state']"]["value"] == "quarantined"
    assert by_field["metadata.annotations['quarantineHealthEvent']"]["value"] == "SysLogsXIDError"
    assert found["set_by"] == {"managers": ["fault-quarantine"], "cordon_by": "NVSentinel", "uncordon_by": None}
    marks = found["marks"]
    assert marks["unschedulable"] is True
    assert marks["nvsentinel"]["state"] == "quarantined" and marks["nvsentinel"]["is_cordoned"] is True
    assert marks["nvsentinel"]["cordon_reason"] == "GPU-fatal-error-ruleset"
    assert marks["annotations"]["quarantineHealthEventIsCordoned"] == "True"
    assert [c["type"] for c in marks["conditions"]] == ["Ready"]


def test_waits_until_nvsentinel_releases_the_node(api_client, core, node):
    quarantine(core)
    with Running(api_client, {"name": node, "state": "released", "wait_timeout": 60}) as running:
        time.sleep(1)
        unquarantine(core)
        result = running.result()
    assert not result.get("failed"), result
    (found,) = result["nodes"]
    assert found["matched"] and not found["matched_at_start"] and found["elapsed"] < 5
    assert found["matched_marks"] == []
    assert found["set_by"]["uncordon_by"] == "NVSentinel" and found["set_by"]["cordon_by"] is None
    assert found["marks"]["unschedulable"] is False
    assert found["marks"]["nvsentinel"] == {"uncordon_by": "NVSentinel", "uncordon_timestamp": "2026-11-22T18-41-02Z"}


def test_taint_and_label_conditions_all_of_them(api_client, core, node):
    conditions = [{"kind": "taint", "key": AWS + "unhealthy", "value": "true", "effect": "PreferNoSchedule"},
                  {"kind": "label", "key": AWS + "status", "value": "fail"}]
    with Running(api_client, {"name": node, "conditions": conditions, "mode": "all", "wait_timeout": 60}) as running:
        core.patch_node(node, {"spec": {"taints": [{"key": AWS + "unhealthy", "value": "true",
                                                    "effect": "PreferNoSchedule"}]}}, field_manager="kubectl-taint")
        time.sleep(1)
        assert not running.future.done(), "returned with only the taint: %r" % (running.future.result(),)
        core.patch_node(node, {"metadata": {"labels": {AWS + "status": "fail", AWS + "severity": "REBOOT"}}},
                        field_manager="kubectl-label")
        result = running.result()
    assert not result.get("failed"), result
    (found,) = result["nodes"]
    assert found["matched"] and 1 <= found["elapsed"] < 6
    assert [(m["kind"], m["set_by"]["manager"]) for m in found["matched_marks"]] == [
        ("taint", "kubectl-taint"), ("label", "kubectl-label")]
    assert found["matched_marks"][0]["value"] == AWS + "unhealthy=true:PreferNoSchedule"
    assert found["marks"]["aws"] == {"status": "fail", "severity": "REBOOT",
                                     "taints": [AWS + "unhealthy=true:PreferNoSchedule"]}

    # Already there: returns at once, without watching.
    again = ansible_module(MODULE, {"name": node, "conditions": conditions[1:]})
    assert again["satisfied"] and not again["waited"] and again["nodes"][0]["matched_at_start"], again


def test_label_selector_with_count(api_client, core, node):
    args = {"label_selector": "nvidia.com/gpu.present=true", "count": 1, "wait_timeout": 60,
            "conditions": [{"kind": "label", "key": IT_LABEL}]}
    with Running(api_client, args) as running:
        core.patch_node(node, {"metadata": {"labels": {IT_LABEL: "marked"}}}, field_manager="it-test")
        result = running.result()
    assert not result.get("failed"), result
    assert result["matched"] == [node]
    assert [n["name"] for n in result["nodes"]] == ["gpu-node-0", "gpu-node-1", "gpu-node-2"]
    assert [n["matched"] for n in result["nodes"]] == [False, False, True]
    mark = result["nodes"][2]["matched_marks"][0]
    assert mark["detail"] == "label %s=marked" % IT_LABEL and mark["set_by"]["manager"] == "it-test"


def test_timeout_fails_cleanly_with_the_current_marks(core, node):
    quarantine(core, manager="kubectl")
    started = time.monotonic()
    result = ansible_module(MODULE, {"name": node, "wait_timeout": 2,
                                     "conditions": [{"kind": "nvsentinel", "value": "drain-succeeded"}]})
    took = time.monotonic() - started
    assert result.get("failed") is True, result
    msg = result["msg"]
    assert msg.startswith("timed out after 2s waiting for node gpu-node-2 to be quarantined "
                          "(NVSentinel state drain-succeeded (label dgxc.nvidia.com/nvsentinel-state=drain-succeeded))")
    assert "0 of the 1 node(s) needed got there" in msg
    assert "gpu-node-2: unschedulable;" in msg and "dgxc.nvidia.com/nvsentinel-state=quarantined" in msg
    assert "k8saas.nvidia.com/cordon-by=NVSentinel" in msg and "quarantineHealthEvent" in msg
    assert no_traceback(result)
    assert result["changed"] is False and result["satisfied"] is False
    assert 2 <= result["elapsed"] < 4 and took < 30
    (found,) = result["nodes"]
    assert found["matched"] is False and found["marks"]["nvsentinel"]["state"] == "quarantined"


@pytest.mark.parametrize("args, words", [
    ({"name": "no-such-node"}, "node no-such-node not found"),
    ({"names": [NODE, "no-such-node", "gone-too"]}, "nodes no-such-node, gone-too not found"),
    ({"label_selector": "gpu-resilience.io/no-such-label=1"}, "matches no nodes"),
    ({"label_selector": "nvidia.com/gpu.present=true", "count": 4}, "matches 3 node(s)"),
    ({"name": "gpu node 2"}, "not a valid Kubernetes node name"),
    ({"name": NODE, "conditions": [{"kind": "taint"}]}, "condition 1 (kind taint) needs a key"),
    ({"name": NODE, "label_selector": "a=b"}, "mutually exclusive"),
    ({}, "one of the following is required"),
])
def test_refuses_clearly(args, words):
    started = time.monotonic()
    result = ansible_module(MODULE, dict(args, wait_timeout=60))
    assert result.get("failed") is True and words in result["msg"], result
    assert no_traceback(result)
    assert time.monotonic() - started < 30


def test_check_mode_does_not_wait(core, node):
    started = time.monotonic()
    clean = ansible_module(MODULE, {"name": node, "wait_timeout": 60}, check=True)
    assert time.monotonic() - started < 30
    assert not clean.get("failed"), clean
    assert clean["changed"] is False and clean["satisfied"] is False and clean["waited"] is False
    assert clean["nodes"][0]["matched"] is False and clean["nodes"][0]["elapsed"] is None
    quarantine(core)
    held = ansible_module(MODULE, {"name": node}, check=True)
    assert held["changed"] is False and held["satisfied"] is True and held["waited"] is False
    (found,) = held["nodes"]
    assert found["matched_at_start"] and found["set_by"]["cordon_by"] == "NVSentinel"
    assert re.match(r"^\d{4}-\d\d-\d\dT", found["matched_at"])
    # The module changed nothing on the node.
    after = core.read_node(node)
    assert after.spec.unschedulable is True and after.metadata.labels[STATE_LABEL] == "quarantined"
