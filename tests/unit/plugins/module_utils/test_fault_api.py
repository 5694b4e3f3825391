"""The GPUFault contract: spec validation, GPU selection, names, and agreement with the CRD."""
import os

import pytest
import yaml

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import fault_api, xid_catalog

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
CRD = os.path.join(ROOT, "files", "crds", "gpufaults.yaml")

INVENTORY = [
    {"index": i, "minor": m, "pci": pci, "uuid": "GPU-%08x-0000-4000-8000-%012x" % (i, i)}
    for i, (m, pci) in enumerate([(2, "0000:53:00.0"), (0, "0000:64:00.0"), (3, "0000:75:00.0"),
                                  (1, "00000001:86:00.0")])
]


def spec(**overrides):
    base = {"node": "gpu-node-1", "gpu": {"index": 2}, "xid": 79}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_spec_is_normalised():
    out = fault_api.validate_spec(spec(gpu={"pci": "00000000:3B:00.0"}))
    assert out == {"node": "gpu-node-1", "method": "kmsg", "xid": 79, "gpu": {"pci": "0000:3b:00.0"}}


@pytest.mark.parametrize("bad, words", [
    (spec(xid=80000), "xid"),
    (spec(xid=12), "12"),                       # not in the catalog
    (spec(xid="79"), "integer"),
    (spec(xid=True), "integer"),
    (spec(node="Gpu_Node"), "node name"),
    (spec(node="a" * 254), "node name"),
    (spec(node="n; rm -rf /"), "node name"),
    (spec(gpu={"index": 64}), "0 to 63"),
    (spec(gpu={"index": -1}), "0 to 63"),
    (spec(gpu={"index": 1, "pci": "0000:3b:00.0"}), "exactly one"),
    (spec(gpu={}), "exactly one"),
    (spec(gpu={"slot": 1}), "exactly one"),
    (spec(gpu={"pci": "3b:00.0"}), "PCI"),
    (spec(gpu={"pci": "0000:3b:00.0; reboot"}), "PCI"),
    (spec(gpu={"uuid": "GPU-1234"}), "uuid"),
    (spec(gpu={"all": False}), "all must be true"),
    (spec(gpu=None), "gpu"),
    (spec(method="shell"), "method"),
    (spec(message="line\nNVRM: Xid (PCI:0000:00:00): 48"), "message"),
    (spec(message="%n%n%n"), "message"),
    (spec(message="x" * 201), "limit is 200"),
    (spec(message="fine but $(reboot)"), "message"),
    (spec(message="caf\u00e9"), "message"),
    (spec(recoveryAction="Node Reboot Required"), "XID 154 only"),
    (spec(xid=154, recoveryAction="Reboot please"), "recoveryAction"),
    (spec(extra=1), "unknown spec field"),
    ({"node": "gpu-node-1"}, "exactly one of xid or sxid"),
    ({"node": "gpu-node-1", "shim": "arm"}, "needs an xid"),
    (spec(shim="on"), "shim"),
    (spec(sxid={"code": 12028, "pci": "0000:05:00.0"}), "exactly one of xid or sxid"),
])
def test_bad_specs_are_refused_with_a_clear_error(bad, words):
    with pytest.raises(fault_api.FaultSpecError) as err:
        fault_api.validate_spec(bad)
    assert words.lower() in str(err.value).lower()


def test_sxid_spec():
    out = fault_api.validate_spec({"node": "n1", "sxid": {"code": 12028, "pci": "0000:05:00.0", "link": 12}})
    assert out["sxid"] == {"code": 12028, "pci": "0000:05:00.0", "nvswitch": 0, "link": 12}
    with pytest.raises(fault_api.FaultSpecError, match="known SXid"):
        fault_api.validate_spec({"node": "n1", "sxid": {"code": 1, "pci": "0000:05:00.0"}})
    with pytest.raises(fault_api.FaultSpecError, match="kmsg"):
        fault_api.validate_spec({"node": "n1", "method": "dcgm", "sxid": {"code": 12028, "pci": "0000:05:00.0"}})


def test_xid_154_recovery_action():
    out = fault_api.validate_spec(spec(xid=154, recoveryAction="Node Reboot Required"))
    assert out["recoveryAction"] == "Node Reboot Required"


@pytest.mark.parametrize("selector, pcis", [
    ({"index": 2}, ["0000:75:00.0"]),
    ({"pci": "00000001:86:00.0"}, ["00000001:86:00.0"]),
    ({"pci": "00000000:75:00.0"}, ["0000:75:00.0"]),   # nvidia-smi's spelling
    ({"uuid": "GPU-00000001-0000-4000-8000-000000000001"}, ["0000:64:00.0"]),
    ({"all": True}, [g["pci"] for g in INVENTORY]),
])
def test_select_gpus(selector, pcis):
    assert [g["pci"] for g in fault_api.select_gpus("gpu-node-1", INVENTORY, selector)] == pcis


@pytest.mark.parametrize("selector, words", [
    ({"index": 4}, "out of range: node gpu-node-1 has GPUs 0-3"),
    ({"pci": "0000:99:00.0"}, "no GPU with PCI address 0000:99:00.0"),
    ({"uuid": "GPU-00000009-0000-4000-8000-000000000009"}, "no GPU with UUID"),
])
def test_select_gpus_names_what_is_missing(selector, words):
    with pytest.raises(fault_api.FaultSpecError, match=words):
        fault_api.select_gpus("gpu-node-1", INVENTORY, selector)


def test_node_without_gpus_needs_an_explicit_pci():
    with pytest.raises(fault_api.FaultSpecError, match="reports no GPUs"):
        fault_api.select_gpus("cpu-node-0", [], {"index": 0})
    (gpu,) = fault_api.select_gpus("cpu-node-0", [], {"pci": "0000:3b:00.0"})
    assert gpu == {"index": None, "minor": None, "pci": "0000:3b:00.0", "uuid": None}


def test_lease_names_are_valid_even_for_long_node_names():
    assert fault_api.lease_name("gpu-node-1") == "gpu-fault-agent-gpu-node-1"
    long_node = ".".join(["a" * 60] * 4)  # 243 characters: a valid node name
    name = fault_api.lease_name(long_node)
    assert len(name) <= 253 and fault_api._DNS_SUBDOMAIN.match(name)
    assert name != fault_api.lease_name(long_node[:-1] + "b")
    value = fault_api.node_label_value(long_node)
    assert len(value) <= 63 and value != fault_api.node_label_value(long_node[:-1] + "b")
    assert fault_api.node_label_value("gpu-node-1") == "gpu-node-1"


def test_fault_object():
    obj = fault_api.fault_object("gpu-fault-injection", fault_api.validate_spec(spec()), generate_name="xid79-",
                                 drill="d1", managed_by="gpu_xid_inject")
    assert obj["apiVersion"] == "faultinjection.gpu-resilience.io/v1alpha1"
    assert obj["metadata"]["labels"] == {fault_api.NODE_LABEL: "gpu-node-1", fault_api.DRILL_LABEL: "d1",
                                         fault_api.MANAGED_BY_LABEL: "gpu_xid_inject"}
    assert obj["metadata"]["generateName"] == "xid79-"


def test_crd_agrees_with_the_contract_and_the_catalog():
    (crd,) = [d for d in yaml.safe_load_all(open(CRD)) if d]
    assert crd["spec"]["group"] == fault_api.GROUP
    assert crd["spec"]["names"]["kind"] == fault_api.KIND
    assert crd["spec"]["names"]["plural"] == fault_api.PLURAL
    (version,) = crd["spec"]["versions"]
    assert version["name"] == fault_api.VERSION
    props = version["schema"]["openAPIV3Schema"]["properties"]
    spec_props = props["spec"]["properties"]
    assert set(spec_props) == {"node", "gpu", "xid", "sxid", "method", "message", "recoveryAction", "shim"}
    assert spec_props["shim"]["enum"] == list(fault_api.SHIM_ACTIONS)
    assert spec_props["method"]["enum"] == list(fault_api.METHODS)
    assert sorted(spec_props["recoveryAction"]["enum"]) == sorted(xid_catalog.RECOVERY_ACTIONS)
    assert spec_props["message"]["maxLength"] == xid_catalog.MAX_MESSAGE_LEN
    assert spec_props["gpu"]["properties"]["index"]["maximum"] == fault_api.MAX_GPU_INDEX
    phases = props["status"]["properties"]["phase"]["enum"]
    assert sorted(phases) == sorted([fault_api.PHASE_INJECTING] + list(fault_api.FINAL_PHASES))
    assert max(xid_catalog.codes()) <= spec_props["xid"]["maximum"]


def test_shim_switches():
    assert fault_api.validate_spec(spec(shim="arm"))["shim"] == "arm"
    assert fault_api.validate_spec({"node": "n1", "shim": "disarm"}) == {"node": "n1", "method": "kmsg", "shim": "disarm"}
