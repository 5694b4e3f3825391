"""gpu_xid_inject's pure logic: parameters to specs, predictions, agent liveness from Leases."""
import datetime
import json

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import agents, fault_api, injection
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import gpu_xid_inject

NOW = datetime.datetime(2026, 11, 22, 18, 0, 0, tzinfo=datetime.timezone.utc)
GPUS = [{"index": 0, "minor": 1, "pci": "0000:53:00.0", "uuid": "GPU-ebed76ae-9504-51a7-b9fc-6f4400179196"},
        {"index": 1, "minor": 0, "pci": "0000:64:00.0", "uuid": "GPU-00000000-9504-51a7-b9fc-6f4400179196"}]


def params(**overrides):
    base = dict(state="present", node="gpu-node-1", nodes=None, node_selector=None, count=1, gpu="0", xid=79, sxid=None,
                text=None, recovery_action=None, method="kmsg", shim=None, name=None, drill=None,
                agent_namespace="gpu-fault-injection", wait=True, wait_timeout=60)
    base.update(overrides)
    return base


@pytest.mark.parametrize("text, selector", [
    ("2", {"index": 2}), (" 7 ", {"index": 7}), ("all", {"all": True}),
    ("0000:3B:00.0", {"pci": "0000:3b:00.0"}), ("00000001:00:00.0", {"pci": "0001:00:00.0"}), ("00000000:3B:00.0", {"pci": "0000:3b:00.0"}),
    ("GPU-ebed76ae-9504-51a7-b9fc-6f4400179196", {"uuid": "GPU-ebed76ae-9504-51a7-b9fc-6f4400179196"}),
])
def test_gpu_selector(text, selector):
    assert injection.gpu_selector(text) == selector


@pytest.mark.parametrize("text", ["64", "-1", "3b:00.0", "0000:3b:00.0;reboot", "GPU-123", "", "first"])
def test_bad_gpu_selector(text):
    with pytest.raises(fault_api.FaultSpecError):
        injection.gpu_selector(text)


def test_spec_for_xid_and_sxid():
    assert injection.spec_for(params(gpu="1", xid=154, recovery_action="Node Reboot Required"), "n1") == {
        "node": "n1", "method": "kmsg", "xid": 154, "gpu": {"index": 1}, "recoveryAction": "Node Reboot Required"}
    sxid = injection.spec_for(params(xid=None, sxid={"code": 12028, "pci": "0000:05:00.0", "nvswitch": 3,
                                                     "link": 12}), "n1")
    assert sxid == {"node": "n1", "method": "kmsg", "sxid": {"code": 12028, "pci": "0000:05:00.0",
                                                             "nvswitch": 3, "link": 12}}


def test_predicted_records_match_the_catalog_in_both_forms():
    spec = injection.spec_for(params(), "n1")
    dmesg = injection.predicted_records(spec, GPUS[:1], "dmesg")
    journald = injection.predicted_records(spec, GPUS[:1], "journald")
    assert any("Xid (PCI:0000:53:00): 79" in r for r in dmesg)
    assert all(j == "NVRM: " + d or j.startswith("NVRM: NVRM:") for d, j in zip(dmesg, journald))
    dcgm = injection.predicted_records(injection.spec_for(params(method="dcgm"), "n1"), GPUS, "journald")
    assert dcgm == ["dcgmi test --inject --gpuid 0 -f 230 -v 79", "dcgmi test --inject --gpuid 1 -f 230 -v 79"]


def test_same_request():
    spec = injection.spec_for(params(), "n1")
    assert injection.same_request({"spec": {"node": "n1", "xid": 79, "gpu": {"index": 0}}}, spec)
    assert not injection.same_request({"spec": {"node": "n1", "xid": 48, "gpu": {"index": 0}}}, spec)
    assert not injection.same_request({"spec": {"garbage": True}}, spec)


def test_result_of():
    obj = {"metadata": {"name": "f1", "namespace": "ns"}, "spec": {"node": "n1", "xid": 79},
           "status": {"phase": "Injected", "gpus": GPUS[:1], "records": ["r"], "injectedAt": "t", "agent": "p"}}
    out = injection.result_of(obj)
    assert out["pci_addresses"] == ["0000:53:00.0"] and out["xid"] == 79 and out["records"] == ["r"]
    assert injection.is_final(obj) and not injection.is_final({"status": {"phase": "Injecting"}})


def lease(renewed_seconds_ago, duration=30, inventory=None, holder="agent-1"):
    renew = (NOW - datetime.timedelta(seconds=renewed_seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ann = {fault_api.INVENTORY_ANNOTATION: json.dumps(GPUS if inventory is None else inventory)}
    return {"metadata": {"name": "x", "annotations": ann},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew}}


def test_fresh_lease_is_a_live_agent_with_its_inventory():
    state = agents.agent_state("gpu-node-1", "ns", lease(3), NOW)
    assert state["alive"] and state["inventory"] == GPUS and state["holder"] == "agent-1"
    assert state["record_form"] == "journald"


@pytest.mark.parametrize("obj, words", [
    (None, "no fault-injector agent runs on node gpu-node-1"),
    (lease(45), "stopped renewing its Lease"),
    (lease(3, inventory=[{"index": 0, "pci": "not-a-pci"}]), "unreadable GPU inventory"),
    ({"metadata": {}, "spec": {"leaseDurationSeconds": 30}}, "never renewed"),
])
def test_dead_or_broken_agents_are_explained(obj, words):
    state = agents.agent_state("gpu-node-1", "ns", obj, NOW)
    assert not state["alive"] and words in state["reason"]


@pytest.mark.parametrize("overrides, words", [
    (dict(node=None), "exactly one of node, nodes or node_selector"),
    (dict(node_selector="a=b"), "exactly one of node, nodes or node_selector"),
    (dict(node=None, nodes=["a"], node_selector="x=y"), "exactly one of node, nodes or node_selector"),
    (dict(node=None, nodes=["a", "b"], name="f"), "single target node"),
    (dict(xid=None), "exactly one of xid or sxid"),
    (dict(xid=None, shim="arm"), "shim=arm needs an xid"),
    (dict(sxid={"code": 12028}), "exactly one of xid or sxid"),
    (dict(node=None, node_selector="a=b", count=0), "count"),
    (dict(node=None, node_selector="a=b", count=2, name="f"), "single target node"),
    (dict(wait_timeout=0), "wait_timeout"),
])
def test_module_parameter_combinations(overrides, words):
    assert words in gpu_xid_inject.check_params(params(**overrides))
    assert gpu_xid_inject.check_params(params(state="absent", **overrides)) is None


def test_module_arguments_match_its_documentation():
    import yaml
    from ansible_collections.gpu_resilience.fault_injection.plugins.doc_fragments import agent
    documented = set(yaml.safe_load(gpu_xid_inject.DOCUMENTATION)["options"])
    documented |= set(yaml.safe_load(agent.ModuleDocFragment.DOCUMENTATION)["options"])
    assert documented == set(gpu_xid_inject.argument_spec())


def test_duplicates_are_named_once_in_order():
    assert injection.duplicates(["a", "b", "b", "a", "c", "b"]) == ["b", "a"]
    assert injection.duplicates(["a", "b"]) == [] and injection.duplicates([]) == []


def node(name, **labels):
    return {"metadata": {"name": name, "labels": labels}}


def test_listed_nodes_must_exist_and_not_be_control_plane():
    items = [node("n1"), node("n2", **{"node-role.kubernetes.io/control-plane": ""}),
             node("n3", **{"node-role.kubernetes.io/master": "true"}), node("n4")]
    labels = gpu_xid_inject.CONTROL_PLANE_LABELS
    injection.check_listed_nodes(["n4", "n1"], items, labels)
    with pytest.raises(fault_api.FaultSpecError, match=r"^node\(s\) not found: n9, n0$"):
        injection.check_listed_nodes(["n9", "n1", "n2", "n0"], items, labels)
    with pytest.raises(fault_api.FaultSpecError, match=r"^refusing control-plane node\(s\): n3, n2$"):
        injection.check_listed_nodes(["n3", "n1", "n2"], items, labels)
    assert injection.is_control_plane(items[1], labels) and not injection.is_control_plane({"metadata": {}}, labels)


def test_agent_states_from_one_list_of_leases():
    fresh = dict(lease(3), metadata=dict(lease(3)["metadata"], name=fault_api.lease_name("n1")))
    stale = dict(lease(45), metadata=dict(lease(45)["metadata"], name=fault_api.lease_name("n2")))
    other = dict(lease(3), metadata=dict(lease(3)["metadata"], name="unrelated"))
    states = injection.agent_states(["n1", "n2", "n3"], "ns", [other, stale, fresh], NOW)
    assert states["n1"]["alive"] and states["n1"]["inventory"] == GPUS
    assert not states["n2"]["alive"] and "stopped renewing" in states["n2"]["reason"]
    assert not states["n3"]["alive"] and "no fault-injector agent runs on node n3" in states["n3"]["reason"]


def test_shim_only_disarm():
    assert gpu_xid_inject.check_params(params(xid=None, shim="disarm")) is None
    spec = injection.spec_for(params(xid=None, shim="disarm"), "n1")
    assert spec == {"node": "n1", "method": "kmsg", "shim": "disarm"}
    assert injection.predicted_records(spec, [], "journald") == []
