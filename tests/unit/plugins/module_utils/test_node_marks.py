"""node_marks: quarantine conditions, matching, summaries and managedFields owners, on realistic Node dicts."""
import copy
import json

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import node_marks
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import wait_node_cordon

T_CREATED = "2026-11-22T17:57:47Z"
T_FAULT = "2026-11-22T18:20:18Z"
T_LATER = "2026-11-22T18:41:02Z"

BASE_LABELS = {
    "kubernetes.io/hostname": "gpu-node-2",
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.count": "8",
    "node.kubernetes.io/instance-type": "p5.48xlarge",
}

HEALTH_EVENT = [{
    "version": 1, "agent": "syslog-health-monitor", "componentClass": "GPU", "checkName": "SysLogsXIDError",
    "isFatal": True, "isHealthy": False, "message": "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS",
    "recommendedAction": "RESTART_BM", "errorCode": ["79"], "nodeName": "gpu-node-2",
    "entitiesImpacted": [{"entityType": "PCI", "entityValue": "0000:75:00"}],
}]


def ready(status="True"):
    return {"type": "Ready", "status": status, "reason": "KubeletReady", "message": "kubelet is posting ready status",
            "lastTransitionTime": T_CREATED}


def pressure(kind):
    return {"type": kind, "status": "False", "reason": "KubeletHas" + kind, "lastTransitionTime": T_CREATED}


def base_node(name="gpu-node-2"):
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "resourceVersion": "7555", "labels": dict(BASE_LABELS),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": T_CREATED,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {
                     ".": {}, "f:kubernetes.io/hostname": {}, "f:nvidia.com/gpu.present": {}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": T_LATER,
                 "subresource": "status", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}}}}}},
            ],
        },
        "spec": {"podCIDR": "127.128.2.0/24", "podCIDRs": ["127.128.2.0/24"]},
        "status": {"conditions": [ready(), pressure("MemoryPressure"), pressure("DiskPressure"),
                                  pressure("PIDPressure")]},
    }


def nvsentinel_quarantined():
    """What NVSentinel's fault-quarantine leaves on a node after an XID 79 (client-go Update calls)."""
    node = base_node()
    meta = node["metadata"]
    meta["labels"].update({
        "k8saas.nvidia.com/cordon-by": "NVSentinel",
        "k8saas.nvidia.com/cordon-reason": "GPU-fatal-error-ruleset",
        "k8saas.nvidia.com/cordon-timestamp": "2026-11-22T18-20-18Z",
        "dgxc.nvidia.com/nvsentinel-state": "quarantined",
    })
    meta["annotations"].update({
        "quarantineHealthEvent": json.dumps(HEALTH_EVENT),
        "quarantineHealthEventIsCordoned": "True",
        "quarantineHealthEventAppliedTaints": '[{"Key":"AggregatedNodeHealth","Value":"False","Effect":"NoSchedule"}]',
    })
    node["spec"]["unschedulable"] = True
    node["spec"]["taints"] = [
        {"key": "AggregatedNodeHealth", "value": "False", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": T_FAULT},
    ]
    node["status"]["conditions"].append({
        "type": "SysLogsXIDError", "status": "True", "reason": "SysLogsXIDErrorIsNotHealthy",
        "message": "ErrorCode:79 PCI:0000:75:00 GPU has fallen off the bus. Recommended Action=RESTART_BM;",
        "lastTransitionTime": T_FAULT})
    meta["managedFields"] += [
        {"manager": "fault-quarantine", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "fieldsType": "FieldsV1", "fieldsV1": {
             "f:metadata": {
                 "f:annotations": {"f:quarantineHealthEvent": {}, "f:quarantineHealthEventAppliedTaints": {},
                                   "f:quarantineHealthEventIsCordoned": {}},
                 "f:labels": {"f:dgxc.nvidia.com/nvsentinel-state": {}, "f:k8saas.nvidia.com/cordon-by": {},
                              "f:k8saas.nvidia.com/cordon-reason": {}, "f:k8saas.nvidia.com/cordon-timestamp": {}}},
             "f:spec": {"f:unschedulable": {}}}},
        # The node lifecycle controller adds node.kubernetes.io/unschedulable; taints are an atomic
        # list, so its Update takes the whole list.
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:taints": {}}}},
        {"manager": "platform-connectors", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "subresource": "status", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {
             "k:{\"type\":\"SysLogsXIDError\"}": {".": {}, "f:status": {}, "f:message": {}}}}}},
    ]
    return node


def aws_tainted():
    """The AWS GPU health-check suite's quarantine: taint, labels and result annotation."""
    node = base_node("gpu-node-1")
    node["metadata"]["labels"].update({
        "gpu-healthcheck.aws-samples.io/status": "fail",
        "gpu-healthcheck.aws-samples.io/severity": "REBOOT",
        "gpu-healthcheck.aws-samples.io/last-check": "2026-11-22T18-20-40Z",
        "gpu-healthcheck.aws-samples.io/mode": "quarantine",
    })
    node["metadata"]["annotations"]["gpu-healthcheck.aws-samples.io/quarantine-result"] = json.dumps(
        {"severity": "REBOOT", "xids": [79]})
    node["spec"]["taints"] = [{"key": "gpu-healthcheck.aws-samples.io/unhealthy", "value": "true",
                               "effect": "NoSchedule"}]
    node["metadata"]["managedFields"] += [
        {"manager": "kubectl-taint", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:taints": {}}}},
        {"manager": "kubectl-label", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {
             "f:gpu-healthcheck.aws-samples.io/status": {}, "f:gpu-healthcheck.aws-samples.io/severity": {},
             "f:gpu-healthcheck.aws-samples.io/last-check": {}, "f:gpu-healthcheck.aws-samples.io/mode": {}}}}},
    ]
    return node


def kubectl_cordoned():
    """`kubectl cordon gpu-node-0`: only spec.unschedulable, field manager kubectl."""
    node = base_node("gpu-node-0")
    node["spec"]["unschedulable"] = True
    node["spec"]["taints"] = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": T_FAULT}]
    node["metadata"]["managedFields"] += [
        {"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:unschedulable": {}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:taints": {}}}},
    ]
    return node


def nvsentinel_released():
    """After NVSentinel's healthy event: cordon marks gone, uncordon-by/-timestamp labels added."""
    node = base_node()
    node["metadata"]["labels"].update({
        "k8saas.nvidia.com/uncordon-by": "NVSentinel",
        "k8saas.nvidia.com/uncordon-timestamp": "2026-11-22T18-41-02Z",
    })
    node["metadata"]["managedFields"].append(
        {"manager": "fault-quarantine", "operation": "Update", "apiVersion": "v1", "time": T_LATER,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {
             "f:k8saas.nvidia.com/uncordon-by": {}, "f:k8saas.nvidia.com/uncordon-timestamp": {}}}}})
    return node


DEFAULTS = node_marks.condition_specs(None)


# --- condition specs ----------------------------------------------------------------------------

def test_default_conditions_are_cordon_or_nvsentinel():
    assert DEFAULTS == [
        {"kind": "cordoned", "key": None, "value": None, "effect": None},
        {"kind": "nvsentinel", "key": None, "value": None, "effect": None, "prefix": "k8saas.nvidia.com/"},
    ]
    assert node_marks.condition_specs([]) == DEFAULTS


def test_conditions_from_module_options():
    specs = node_marks.condition_specs([
        {"kind": "taint", "key": "gpu-healthcheck.aws-samples.io/unhealthy", "value": "true", "effect": "NoSchedule"},
        {"kind": "label", "key": "gpu-healthcheck.aws-samples.io/status", "value": "fail", "effect": None},
        {"kind": "nvsentinel", "key": None, "value": "drain-succeeded", "effect": None},
    ], nvsentinel_prefix="nvsentinel.example.com/")
    assert specs[0] == {"kind": "taint", "key": "gpu-healthcheck.aws-samples.io/unhealthy", "value": "true",
                        "effect": "NoSchedule"}
    assert specs[2]["prefix"] == "nvsentinel.example.com/" and specs[2]["value"] == "drain-succeeded"


@pytest.mark.parametrize("condition, words", [
    ({"kind": "taint"}, "needs a key"),
    ({"kind": "label", "value": "x"}, "needs a key"),
    ({"kind": "cordoned", "key": "x"}, "takes no key"),
    ({"kind": "cordoned", "value": "true"}, "takes no value"),
    ({"kind": "nvsentinel", "value": "broken"}, "NVSentinel's states"),
    ({"kind": "label", "key": "a", "effect": "NoSchedule"}, "takes no effect"),
    ({"kind": "taint", "key": "a", "effect": "NoWay"}, "effect must be one of"),
    ({"kind": "drained"}, "kind must be one of"),
    ("cordoned", "must be a dict"),
])
def test_bad_conditions(condition, words):
    with pytest.raises(node_marks.ConditionError, match=words):
        node_marks.condition_specs([condition])


def test_describe():
    assert node_marks.describe(DEFAULTS[0]) == "cordoned (spec.unschedulable true)"
    assert "k8saas.nvidia.com/cordon-by=NVSentinel" in node_marks.describe(DEFAULTS[1])
    taint = node_marks.condition_specs([{"kind": "taint", "key": "gpu-healthcheck.aws-samples.io/unhealthy",
                                         "value": "true", "effect": "NoSchedule"}])[0]
    assert node_marks.describe(taint) == "taint gpu-healthcheck.aws-samples.io/unhealthy=true:NoSchedule"
    label = node_marks.condition_specs([{"kind": "label", "key": "a/b"}])[0]
    assert node_marks.describe(label) == "label a/b"


# --- matching -----------------------------------------------------------------------------------

def test_nvsentinel_quarantine_matches_with_who_set_it():
    node = nvsentinel_quarantined()
    ok, found = node_marks.matches(node, DEFAULTS, "any")
    assert ok
    by_field = dict((m["field"], m) for m in found)
    assert set(by_field) == {"spec.unschedulable", "metadata.labels['k8saas.nvidia.com/cordon-by']",
                             "metadata.labels['dgxc.nvidia.com/nvsentinel-state']",
                             "metadata.annotations['quarantineHealthEvent']"}
    cordon = by_field["spec.unschedulable"]
    assert cordon["kind"] == "cordoned" and cordon["value"] is True
    assert cordon["set_by"] == {"manager": "fault-quarantine", "operation": "Update", "time": T_FAULT,
                                "subresource": None}
    label = by_field["metadata.labels['k8saas.nvidia.com/cordon-by']"]
    assert label["kind"] == "nvsentinel" and label["value"] == "NVSentinel"
    assert label["detail"] == "cordoned by NVSentinel (GPU-fatal-error-ruleset)"
    assert label["set_by"]["manager"] == "fault-quarantine"
    assert by_field["metadata.labels['dgxc.nvidia.com/nvsentinel-state']"]["value"] == "quarantined"
    assert by_field["metadata.annotations['quarantineHealthEvent']"]["value"] == "SysLogsXIDError"
    assert node_marks.matches(node, DEFAULTS, "all")[0]
    assert not node_marks.released(node, DEFAULTS)


def test_nvsentinel_later_states_and_a_chosen_state():
    node = nvsentinel_quarantined()
    node["metadata"]["labels"]["dgxc.nvidia.com/nvsentinel-state"] = "drain-succeeded"
    only_nvsentinel = node_marks.condition_specs([{"kind": "nvsentinel"}])
    assert node_marks.matches(node, only_nvsentinel)[0]
    drained = node_marks.condition_specs([{"kind": "nvsentinel", "value": "drain-succeeded"}])
    ok, found = node_marks.matches(node, drained)
    assert ok and [m["detail"] for m in found] == ["NVSentinel state drain-succeeded"]
    remediating = node_marks.condition_specs([{"kind": "nvsentinel", "value": "remediating"}])
    assert node_marks.matches(node, remediating) == (False, [])


def test_nvsentinel_taint_only_quarantine_is_seen_through_its_annotation():
    node = base_node()
    node["metadata"]["annotations"]["quarantineHealthEvent"] = json.dumps(HEALTH_EVENT)
    node["spec"]["taints"] = [{"key": "AggregatedNodeHealth", "value": "False", "effect": "NoSchedule"}]
    ok, found = node_marks.matches(node, node_marks.condition_specs([{"kind": "nvsentinel"}]))
    assert ok and [m["field"] for m in found] == ["metadata.annotations['quarantineHealthEvent']"]
    assert not node_marks.matches(node, node_marks.condition_specs([{"kind": "cordoned"}]))[0]


def test_nvsentinel_label_prefix_is_configurable():
    node = nvsentinel_quarantined()
    labels = node["metadata"]["labels"]
    for name in ("cordon-by", "cordon-reason", "cordon-timestamp"):
        labels["nvsentinel.example.com/" + name] = labels.pop("k8saas.nvidia.com/" + name)
    del labels["dgxc.nvidia.com/nvsentinel-state"]
    del node["metadata"]["annotations"]["quarantineHealthEvent"]
    default = node_marks.condition_specs([{"kind": "nvsentinel"}])
    assert not node_marks.matches(node, default)[0]
    custom = node_marks.condition_specs([{"kind": "nvsentinel"}], "nvsentinel.example.com/")
    ok, found = node_marks.matches(node, custom)
    assert ok and found[0]["field"] == "metadata.labels['nvsentinel.example.com/cordon-by']"
    assert node_marks.marks(node, "nvsentinel.example.com/")["nvsentinel"]["cordon_by"] == "NVSentinel"


def test_cordon_by_someone_else_is_not_nvsentinel():
    node = kubectl_cordoned()
    node["metadata"]["labels"]["k8saas.nvidia.com/cordon-by"] = "ops-team"
    assert not node_marks.matches(node, node_marks.condition_specs([{"kind": "nvsentinel"}]))[0]


def test_aws_taint_and_label():
    node = aws_tainted()
    taint = node_marks.condition_specs([{"kind": "taint", "key": "gpu-healthcheck.aws-samples.io/unhealthy",
                                         "value": "true", "effect": "NoSchedule"}])
    ok, found = node_marks.matches(node, taint)
    assert ok
    (mark,) = found
    assert mark["kind"] == "taint" and mark["value"] == "gpu-healthcheck.aws-samples.io/unhealthy=true:NoSchedule"
    assert mark["field"] == "spec.taints[effect=NoSchedule,key=gpu-healthcheck.aws-samples.io/unhealthy]"
    assert mark["set_by"]["manager"] == "kubectl-taint"
    for other in ({"value": "false"}, {"effect": "NoExecute"}, {"key": "gpu-healthcheck.aws-samples.io/maintenance"}):
        wanted = dict({"kind": "taint", "key": "gpu-healthcheck.aws-samples.io/unhealthy"}, **other)
        assert not node_marks.matches(node, node_marks.condition_specs([wanted]))[0], other
    key_only = node_marks.condition_specs([{"kind": "taint", "key": "gpu-healthcheck.aws-samples.io/unhealthy"}])
    assert node_marks.matches(node, key_only)[0]
    label = node_marks.condition_specs([{"kind": "label", "key": "gpu-healthcheck.aws-samples.io/status",
                                         "value": "fail"}])
    ok, found = node_marks.matches(node, label)
    assert ok and found[0]["detail"] == "label gpu-healthcheck.aws-samples.io/status=fail"
    assert found[0]["set_by"]["manager"] == "kubectl-label"
    assert not node_marks.matches(node, node_marks.condition_specs([{"kind": "label", "value": "pass",
                                                                     "key": "gpu-healthcheck.aws-samples.io/status"}]))[0]
    assert not node_marks.matches(node, DEFAULTS)[0] and node_marks.released(node, DEFAULTS)


def test_kubectl_cordon():
    node = kubectl_cordoned()
    ok, found = node_marks.matches(node, DEFAULTS)
    assert ok and [m["kind"] for m in found] == ["cordoned"]
    assert found[0]["set_by"] == {"manager": "kubectl", "operation": "Update", "time": T_FAULT, "subresource": None}
    assert not node_marks.matches(node, DEFAULTS, "all")[0]


def test_mode_all_needs_every_condition():
    node = aws_tainted()
    node["spec"]["unschedulable"] = True
    both = node_marks.condition_specs([{"kind": "cordoned"},
                                       {"kind": "taint", "key": "gpu-healthcheck.aws-samples.io/unhealthy"}])
    ok, found = node_marks.matches(node, both, "all")
    assert ok and [m["kind"] for m in found] == ["cordoned", "taint"]
    del node["spec"]["unschedulable"]
    ok, found = node_marks.matches(node, both, "all")
    assert not ok and [m["kind"] for m in found] == ["taint"]
    assert node_marks.matches(node, both, "any")[0]
    with pytest.raises(node_marks.ConditionError):
        node_marks.matches(node, both, "most")


def test_released_node():
    node = nvsentinel_released()
    assert node_marks.released(node, DEFAULTS)
    assert node_marks.matches(node, DEFAULTS) == (False, [])
    summary = node_marks.marks(node)
    assert summary["unschedulable"] is False
    assert summary["nvsentinel"] == {"uncordon_by": "NVSentinel", "uncordon_timestamp": "2026-11-22T18-41-02Z"}
    assert node_marks.who_set(node, ("metadata", "labels", "k8saas.nvidia.com/uncordon-by"))["time"] == T_LATER


def test_unschedulable_false_is_not_cordoned():
    node = base_node()
    node["spec"]["unschedulable"] = False
    assert node_marks.released(node, DEFAULTS)


# --- who set it ---------------------------------------------------------------------------------

def test_who_set_atomic_and_keyed_taints():
    node = nvsentinel_quarantined()
    taint = ("spec", "taints", {"key": "AggregatedNodeHealth", "effect": "NoSchedule"})
    # Atomic list: the last Update of the list owns every taint in it.
    assert node_marks.who_set(node, taint)["manager"] == "kube-controller-manager"
    # A server-side apply keys the list's elements (as older API servers did for taints).
    applied = copy.deepcopy(node)
    applied["metadata"]["managedFields"] = [
        {"manager": "health-agent", "operation": "Apply", "apiVersion": "v1", "time": T_LATER,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:taints": {
             "k:{\"effect\":\"NoSchedule\",\"key\":\"AggregatedNodeHealth\"}": {".": {}, "f:value": {}}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": T_FAULT,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:taints": {
             "k:{\"effect\":\"NoSchedule\",\"key\":\"node.kubernetes.io/unschedulable\"}": {".": {}}}}}},
    ]
    assert node_marks.who_set(applied, taint) == {"manager": "health-agent", "operation": "Apply", "time": T_LATER,
                                                  "subresource": None}
    other = ("spec", "taints", {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"})
    assert node_marks.who_set(applied, other)["manager"] == "kube-controller-manager"
    missing = ("spec", "taints", {"key": "nope", "effect": "NoSchedule"})
    assert node_marks.who_set(applied, missing) is None


def test_who_set_newest_owner_and_none():
    node = nvsentinel_quarantined()
    assert node_marks.who_set(node, ("metadata", "labels", "kubernetes.io/hostname"))["manager"] == "kubelet"
    assert node_marks.who_set(node, ("metadata", "labels", "not-there")) is None
    assert node_marks.who_set(node, ("spec", "unschedulable"))["manager"] == "fault-quarantine"
    condition = ("status", "conditions", {"type": "SysLogsXIDError"})
    assert node_marks.who_set(node, condition) == {"manager": "platform-connectors", "operation": "Update",
                                                   "time": T_FAULT, "subresource": "status"}
    co_owned = copy.deepcopy(node)
    co_owned["metadata"]["managedFields"].append(
        {"manager": "drill", "operation": "Apply", "apiVersion": "v1", "time": T_LATER,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:unschedulable": {}}}})
    assert node_marks.who_set(co_owned, ("spec", "unschedulable"))["manager"] == "drill"
    bare = base_node()
    del bare["metadata"]["managedFields"]
    assert node_marks.who_set(bare, ("spec", "unschedulable")) is None


# --- summary ------------------------------------------------------------------------------------

def test_marks_of_an_nvsentinel_quarantined_node():
    summary = node_marks.marks(nvsentinel_quarantined())
    assert summary["name"] == "gpu-node-2" and summary["unschedulable"] is True
    assert summary["taints"] == [
        {"key": "AggregatedNodeHealth", "value": "False", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": T_FAULT}]
    assert summary["labels"] == {
        "k8saas.nvidia.com/cordon-by": "NVSentinel", "k8saas.nvidia.com/cordon-reason": "GPU-fatal-error-ruleset",
        "k8saas.nvidia.com/cordon-timestamp": "2026-11-22T18-20-18Z", "dgxc.nvidia.com/nvsentinel-state": "quarantined"}
    assert set(summary["annotations"]) == {"quarantineHealthEvent", "quarantineHealthEventIsCordoned",
                                           "quarantineHealthEventAppliedTaints"}
    assert [c["type"] for c in summary["conditions"]] == ["Ready", "SysLogsXIDError"]
    assert summary["nvsentinel"] == {
        "cordon_by": "NVSentinel", "cordon_reason": "GPU-fatal-error-ruleset",
        "cordon_timestamp": "2026-11-22T18-20-18Z", "state": "quarantined", "is_cordoned": True,
        "applied_taints": [{"Key": "AggregatedNodeHealth", "Value": "False", "Effect": "NoSchedule"}],
        "health_event": "SysLogsXIDError"}
    assert summary["aws"] == {}
    line = node_marks.brief(summary)
    assert line.startswith("unschedulable; taints: AggregatedNodeHealth=False:NoSchedule")
    assert "k8saas.nvidia.com/cordon-by=NVSentinel" in line and "conditions: SysLogsXIDError=True" in line


def test_marks_of_an_aws_quarantined_node():
    summary = node_marks.marks(aws_tainted())
    assert summary["aws"] == {"status": "fail", "severity": "REBOOT", "last_check": "2026-11-22T18-20-40Z",
                              "mode": "quarantine", "taints": ["gpu-healthcheck.aws-samples.io/unhealthy=true:NoSchedule"],
                              "quarantine_result": {"severity": "REBOOT", "xids": [79]}}
    assert "nvidia.com/gpu.present" not in summary["labels"]
    assert summary["annotations"] == {"gpu-healthcheck.aws-samples.io/quarantine-result":
                                      '{"severity": "REBOOT", "xids": [79]}'}
    assert summary["nvsentinel"] == {}


def test_marks_of_a_bare_and_a_sick_node():
    summary = node_marks.marks({"metadata": {"name": "x"}})
    assert summary == {"name": "x", "unschedulable": False, "taints": [], "labels": {}, "annotations": {},
                       "conditions": [], "nvsentinel": {}, "aws": {}}
    assert node_marks.brief(summary) == "schedulable; taints: none; labels: none; annotations: none"
    sick = base_node()
    sick["status"]["conditions"] = [ready("False"), dict(pressure("DiskPressure"), status="True")]
    assert [(c["type"], c["status"]) for c in node_marks.marks(sick)["conditions"]] == [
        ("Ready", "False"), ("DiskPressure", "True")]


def test_health_event_that_is_not_json():
    node = base_node()
    node["metadata"]["annotations"]["quarantineHealthEvent"] = "x" * 300
    assert node_marks.nvsentinel_summary(node)["health_event"].endswith("...")


# --- the module's parameter checks ------------------------------------------------------------

def params(**overrides):
    base = dict(name="gpu-node-2", names=None, label_selector=None, count=None, state="quarantined",
                conditions=None, mode="any", nvsentinel_label_prefix="k8saas.nvidia.com/", wait_timeout=300)
    base.update(overrides)
    return base


@pytest.mark.parametrize("overrides, words", [
    (dict(wait_timeout=0), "wait_timeout must be at least 1"),
    (dict(name=None, names=[]), "names must not be empty"),
    (dict(count=0), "count must be at least 1"),
    (dict(count=2), "count is 2 but only 1 node(s) are named"),
    (dict(name=None, names=["a", "b", "a"], count=3), "count is 3 but only 2"),
    (dict(name=None, label_selector=" "), "label_selector must not be empty"),
])
def test_module_rejects(overrides, words):
    assert words in wait_node_cordon.check_params(params(**overrides))


def test_module_accepts():
    assert wait_node_cordon.check_params(params()) is None
    assert wait_node_cordon.check_params(params(name=None, label_selector="nvidia.com/gpu.present=true", count=5)) is None
