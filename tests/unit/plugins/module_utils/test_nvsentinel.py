"""nvsentinel: NVSentinel's version and preflight findings, and its conditions and Events against the catalog.

The condition and Event texts below are what NVSentinel's platform-connectors wrote for the
catalog's records when tests/nvsentinel_compat ran it (node gpu-node-1 with GPU metadata, driver
R570, GPU 0000:75:00.0); tests/integration/test_nvsentinel_decisions.py checks all of them.
"""
import copy

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import nvsentinel, xid_catalog as xc
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import nvsentinel_info

NODE = "gpu-node-1"
PCI = "0000:75:00.0"
UUID = "GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
META = {"driver_version": "570.172.08", "gpus": [{"gpu_id": 2, "uuid": UUID, "pci_address": "00000000:75:00.0",
                                                  "nvlinks": [{"link_id": 3, "remote_pci_address": "00000000:06:00.0",
                                                               "remote_link_id": 12}]}]}

XID79_CONDITIONS = [
    {"type": "SysLogsXIDError", "status": "True", "reason": "SysLogsXIDErrorIsNotHealthy",
     "message": "ErrorCode:79 PCI:0000:75:00 GPU_UUID:GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9 MESSAGE=NVRM: Xid "
                "(PCI:0000:75:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus. "
                "Recommended Action=RESTART_BM;"},
    {"type": "SysLogsSXIDError", "status": "False", "reason": "SysLogsSXIDErrorIsHealthy", "message": "No Health Failures"},
    {"type": "SysLogsGPUFallenOff", "status": "True", "reason": "SysLogsGPUFallenOffIsNotHealthy",
     "message": "ErrorCode:GPU_FALLEN_OFF_BUS PCI:0000:75:00.0 PCI_ID:10de:2330 MESSAGE=NVRM: The NVIDIA GPU "
                "0000:75:00.0\nNVRM: (PCI ID: 10de:2330) installed in this system has\nNVRM: fallen off the bus and "
                "is not responding to commands. Recommended Action=RESTART_BM;"},
]
BASELINE = [{"type": check, "status": "False", "reason": check + "IsHealthy", "message": "No Health Failures"}
            for check in xc.NVSENTINEL_CHECKS]
XID13_EVENT = {
    "metadata": {"name": "gpu-node-1.18a2b3c4d5e6f708", "namespace": "default"}, "type": "SysLogsXIDError",
    "reason": "SysLogsXIDErrorIsNotHealthy", "involvedObject": {"kind": "Node", "name": NODE},
    "source": {"component": "syslog-health-monitor", "host": NODE},
    "message": "ErrorCode:13 PCI:0000:75:00 GPU_UUID:GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9 GPC:1 TPC:3 SM:0 "
               "MESSAGE=NVRM: Xid (PCI:0000:75:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception "
               "on (GPC 1, TPC 3, SM 0): Out Of Range Address Recommended Action=NONE;"}
SXID_CONDITION = {
    "type": "SysLogsSXIDError", "status": "True", "reason": "SysLogsSXIDErrorIsNotHealthy",
    "message": "ErrorCode:24007 NVSWITCH:3 PCI:0000:06:00.0 NVLINK:12 GPU:2 GPU_UUID:GPU-3a1b2c3d-4e5f-6071-8293-"
               "a4b5c6d7e8f9 MESSAGE=nvidia-nvswitch3: SXid (PCI:0000:06:00.0): 24007, Fatal, Link 12 sourcetrack "
               "timeout error (First) Recommended Action=CONTACT_SUPPORT;"}
# Seven XIDs at once: the message grew past 1024 characters and was compacted.
COMPACTED = ("ErrorCode:48 PCI:0000:10:00 GPU_UUID:GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e800 ... Recommended "
             "Action=RESTART_VM;ErrorCode:62 PCI:0000:11:00 GPU_UUID:GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e801 ... "
             "Recommended Action=RESTART_VM;")


def expected(code, meta=None, **kwargs):
    meta = META if meta is None else meta
    records = xc.render_xid_lines(code, PCI, uuid=UUID, **kwargs)
    return xc.nvsentinel_events([xc.journal_message(xc.kmsg_text(r))[1] for r in records], meta)


# --- which NVSentinel ---------------------------------------------------------------------------------

@pytest.mark.parametrize("image,repository,tag,version", [
    ("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.19.0", "ghcr.io/nvidia/nvsentinel/syslog-health-monitor",
     "v1.19.0", (1, 19, 0)),
    ("registry.local:5000/nvsentinel/syslog-health-monitor:1.14.0-rc.1",
     "registry.local:5000/nvsentinel/syslog-health-monitor", "1.14.0-rc.1", (1, 14, 0)),
    ("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:main", "ghcr.io/nvidia/nvsentinel/syslog-health-monitor",
     "main", None),
    ("ghcr.io/nvidia/nvsentinel/syslog-health-monitor@sha256:" + "a" * 64,
     "ghcr.io/nvidia/nvsentinel/syslog-health-monitor", None, None),
    ("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.13.2@sha256:" + "b" * 64,
     "ghcr.io/nvidia/nvsentinel/syslog-health-monitor", "v1.13.2", (1, 13, 2)),
    ("registry.local:5000/syslog-health-monitor", "registry.local:5000/syslog-health-monitor", None, None),
])
def test_image_version(image, repository, tag, version):
    info = nvsentinel.image_version(image)
    assert (info["repository"], info["tag"], info["version"]) == (repository, tag, version)


def daemonset(*images):
    return {"kind": "DaemonSet", "metadata": {"name": "nvsentinel-syslog-health-monitor", "namespace": "nvsentinel"},
            "spec": {"template": {"spec": {"containers": [{"name": "c%d" % n, "image": image}
                                                          for n, image in enumerate(images)]}}}}


def test_workload_version_and_findings():
    ds = daemonset("docker.io/bitnamilegacy/os-shell:12", "ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.19.0")
    info = nvsentinel.workload_version(ds)
    assert info["version"] == (1, 19, 0) and info["container"] == "c1"
    assert nvsentinel.version_findings(info) == []
    old = nvsentinel.workload_version(daemonset("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.13.9"))
    warning, = nvsentinel.version_findings(old)
    assert "1.13.9" in warning and "v1.14.0" in warning and "SYSLOG_FACILITY=0" in warning
    unknown = nvsentinel.workload_version(daemonset("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:main"))
    assert "cannot tell" in nvsentinel.version_findings(unknown)[0]
    with pytest.raises(nvsentinel.NVSentinelError, match="runs no syslog-health-monitor container"):
        nvsentinel.workload_version(daemonset("ghcr.io/nvidia/nvsentinel/fault-quarantine:v1.19.0"))
    for bad in ("", None, 5):
        with pytest.raises(nvsentinel.NVSentinelError):
            nvsentinel.image_version(bad)


def test_record_form_dmesg_is_refused_with_the_reason():
    assert nvsentinel.check_record_form("journald") is None
    with pytest.raises(nvsentinel.NVSentinelError) as caught:
        nvsentinel.check_record_form("dmesg", node="gpu-node-1")
    text = str(caught.value)
    assert "gpu-node-1" in text and "SYSLOG_IDENTIFIER" in text and "fault_injector_agent_record_form: journald" in text
    with pytest.raises(nvsentinel.NVSentinelError, match="unknown record form"):
        nvsentinel.check_record_form("syslog")


def test_info_refuses_agents_nvsentinel_cannot_see():
    live = {"alive": True, "reason": None, "record_form": "journald"}
    assert nvsentinel_info.record_forms({"gpu-node-1": live}) == {"gpu-node-1": "journald"}
    with pytest.raises(KubeError, match="gpu-node-2 writes records in form dmesg"):
        nvsentinel_info.record_forms({"gpu-node-1": live, "gpu-node-2": dict(live, record_form="dmesg")})
    with pytest.raises(KubeError, match="no live fault agent on gpu-node-3 .no Lease."):
        nvsentinel_info.record_forms({"gpu-node-3": {"alive": False, "reason": "no Lease", "record_form": "journald"}})
    ds = daemonset("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.19.0")
    assert nvsentinel_info.monitor([daemonset("nginx:1"), ds], "nvsentinel")[1]["version"] == (1, 19, 0)
    with pytest.raises(KubeError, match="no DaemonSet in namespace nvsentinel runs NVSentinel's syslog-health-monitor"):
        nvsentinel_info.monitor([daemonset("nginx:1")], "nvsentinel")


def test_gpu_metadata_from_the_agent_inventory():
    gpus = [{"index": 0, "pci": "0000:53:00.0", "uuid": "GPU-a"}, {"index": 2, "pci": PCI, "uuid": UUID}]
    meta = nvsentinel.gpu_metadata(gpus, "570.172.08", [{"gpu": 2, "switch_pci": "0000:06:00.0", "port": 12}])
    assert meta["driver_version"] == "570.172.08" and meta["gpus"][0]["nvlinks"] == []
    assert meta["gpus"][1] == {"gpu_id": 2, "uuid": UUID, "pci_address": PCI, "nvlinks": [
        {"link_id": 0, "remote_pci_address": "0000:06:00.0", "remote_link_id": 12}]}
    sxid = xc.render_sxid_lines(24007, "0000:06:00.0", switch=0, link=12)
    assert xc.nvsentinel_events(sxid, meta)[0]["gpu_uuid"] == UUID
    with pytest.raises(nvsentinel.NVSentinelError, match="GPU.s. .5."):
        nvsentinel.gpu_metadata(gpus, "", [{"gpu": 5, "switch_pci": "0000:06:00.0", "port": 1}])


def test_event_times():
    assert nvsentinel.parse_time("2026-12-06T20:15:22.261Z") == 1796588122.261
    assert nvsentinel.parse_time("2026-12-06T21:15:22+01:00") == 1796588122.0
    for bad in ("yesterday", "", None, 5):
        with pytest.raises(nvsentinel.NVSentinelError):
            nvsentinel.parse_time(bad)
    old, new = dict(XID13_EVENT, lastTimestamp="2026-12-06T20:15:21Z"), dict(XID13_EVENT, lastTimestamp="2026-12-06T20:15:22Z")
    assert nvsentinel.recent_events([old, new], 1796588122.9) == [new]  # whole seconds
    assert nvsentinel.recent_events([old], None) == [old]


# --- parsing --------------------------------------------------------------------------------------

def test_parse_condition_entries():
    parsed = nvsentinel.parse_condition(XID79_CONDITIONS[2])
    assert (parsed["check"], parsed["healthy"]) == ("SysLogsGPUFallenOff", False)
    entry, = parsed["entries"]
    assert entry["error_codes"] == ["GPU_FALLEN_OFF_BUS"] and entry["action"] == "RESTART_BM"
    assert entry["entities"] == [["PCI", "0000:75:00.0"], ["PCI_ID", "10de:2330"]]
    assert entry["text"].startswith("MESSAGE=NVRM: The NVIDIA GPU") and not entry["truncated"]
    assert nvsentinel.parse_condition(XID79_CONDITIONS[1])["entries"] == []
    sxid, = nvsentinel.parse_condition(SXID_CONDITION)["entries"]
    assert sxid["entities"] == [["NVSWITCH", "3"], ["PCI", "0000:06:00.0"], ["NVLINK", "12"], ["GPU", "2"],
                                ["GPU_UUID", UUID]]


def test_parse_compacted_and_truncated_messages():
    first, second = nvsentinel.parse_message(COMPACTED)
    assert first["error_codes"] == ["48"] and first["action"] == "RESTART_VM" and first["truncated"]
    assert ["PCI", "0000:11:00"] in second["entities"]
    cut, = nvsentinel.parse_message("ErrorCode:95 PCI:0000:13:00 GPU_UUID:GPU-3a1b...;...")
    assert cut["action"] is None and cut["truncated"]
    assert nvsentinel.parse_message("") == [] and nvsentinel.parse_message(None) == []


def test_parse_event():
    parsed = nvsentinel.parse_event(XID13_EVENT)
    assert (parsed["check"], parsed["healthy"], parsed["node"]) == ("SysLogsXIDError", False, NODE)
    assert parsed["entries"][0]["entities"][:2] == [["PCI", "0000:75:00"], ["GPU_UUID", UUID]]
    assert nvsentinel.parse_event({"reason": "Scheduled"})["check"] is None


# --- against the catalog ------------------------------------------------------------------------------

def test_xid79_observed_as_expected():
    seen = nvsentinel.observe(expected(79), XID79_CONDITIONS, [], node=NODE, baseline=BASELINE)
    assert seen["mismatches"] == 0 and not seen["extra"]
    assert [row["signal"] for row in seen["rows"]] == ["condition", "condition"]


def test_non_fatal_event_observed_as_expected():
    seen = nvsentinel.observe(expected(13), BASELINE, [XID13_EVENT], node=NODE, baseline=BASELINE)
    assert seen["mismatches"] == 0 and seen["rows"][0]["signal"] == "event"
    other_node = dict(XID13_EVENT, involvedObject={"kind": "Node", "name": "gpu-node-2"})
    assert nvsentinel.observe(expected(13), BASELINE, [other_node], node=NODE)["rows"][0]["problems"] == [
        "no Event SysLogsXIDErrorIsNotHealthy with ErrorCode 13 on PCI 0000:75:00"]


def test_wrong_action_uuid_and_signal_are_named():
    conditions = copy.deepcopy(XID79_CONDITIONS)
    conditions[0]["message"] = conditions[0]["message"].replace("RESTART_BM", "RESTART_VM").replace(UUID, "GPU-x")
    seen = nvsentinel.observe(expected(79), conditions, [], node=NODE, baseline=BASELINE)
    assert seen["mismatches"] == 1
    assert seen["rows"][0]["problems"] == ["Recommended Action RESTART_VM, expected RESTART_BM",
                                           "GPU_UUID GPU-x, expected %s" % UUID]
    as_event = [dict(XID13_EVENT, message=XID79_CONDITIONS[0]["message"])]
    seen = nvsentinel.observe(expected(79)[:1], BASELINE, as_event, node=NODE, baseline=BASELINE)
    assert seen["rows"][0]["problems"] == ["found as a Kubernetes Event, expected as a node condition"]


def test_missing_and_extra_observations():
    seen = nvsentinel.observe(expected(79), BASELINE, [], node=NODE, baseline=BASELINE)
    assert seen["mismatches"] == 2 and all(not row["match"] for row in seen["rows"])
    assert seen["rows"][1]["problems"] == ["no condition SysLogsGPUFallenOff entry with ErrorCode GPU_FALLEN_OFF_BUS "
                                           "on PCI 0000:75:00.0"]
    seen = nvsentinel.observe([], XID79_CONDITIONS, [XID13_EVENT], node=NODE, baseline=BASELINE)
    assert seen["mismatches"] == 3 and len(seen["extra"]) == 3


def test_baseline_entries_do_not_count():
    seen = nvsentinel.observe([], XID79_CONDITIONS, [], node=NODE, baseline=XID79_CONDITIONS)
    assert seen["mismatches"] == 0


def test_condition_status_and_reason_are_checked():
    conditions = copy.deepcopy(XID79_CONDITIONS)
    conditions[0]["status"] = "Unknown"
    row = nvsentinel.observe(expected(79), conditions, [], node=NODE)["rows"][0]
    assert row["problems"] == ["condition SysLogsXIDError is Unknown (SysLogsXIDErrorIsNotHealthy), expected True "
                               "(SysLogsXIDErrorIsNotHealthy)"]


def test_cancellation_leaves_no_unhealthy_entry():
    condition = {"type": "SysLogsXIDError", "status": "True", "reason": "SysLogsXIDErrorIsNotHealthy",
                 "message": "ErrorCode:162 PCI:0000:75:00 GPU_UUID:%s MESSAGE=NVRM: Xid (PCI:0000:75:00): 162, "
                            "x Recommended Action=CONTACT_SUPPORT;" % UUID}
    seen = nvsentinel.observe(expected(162), [condition], [], node=NODE, baseline=BASELINE)
    assert seen["mismatches"] == 0 and seen["rows"][1]["expected"]["healthy"]
    still = dict(condition, message=condition["message"] + condition["message"].replace("162", "163"))
    seen = nvsentinel.observe(expected(162), [still], [], node=NODE)
    assert seen["rows"][1]["problems"] == ["an unhealthy SysLogsXIDError entry for code 163 is still there"]


def test_describe():
    assert [nvsentinel.describe(e) for e in expected(162)] == ["SysLogsXIDError condition 162 CONTACT_SUPPORT",
                                                               "SysLogsXIDError clears 163"]


# --- putting NVSentinel's conditions back ----------------------------------------------------------

READY = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}


def test_restore_conditions_to_the_baseline():
    current = [READY] + XID79_CONDITIONS
    restored, changed = nvsentinel.restore_conditions(current, [READY] + BASELINE)
    assert changed == ["SysLogsGPUFallenOff", "SysLogsXIDError"]  # SysLogsSXIDError already was
    assert restored[0] == READY and sorted(c["type"] for c in restored[1:]) == sorted(xc.NVSENTINEL_CHECKS)
    assert all(c["status"] == "False" for c in restored[1:])
    # Without them in the baseline, they go; other conditions stay.
    restored, changed = nvsentinel.restore_conditions(current, [READY])
    assert restored == [READY] and changed == sorted(xc.NVSENTINEL_CHECKS)
    # A baseline condition the node lost comes back; nothing to do when equal.
    restored, changed = nvsentinel.restore_conditions([READY], [READY, XID79_CONDITIONS[0]])
    assert restored == [READY, XID79_CONDITIONS[0]] and changed == ["SysLogsXIDError"]
    assert nvsentinel.restore_conditions(current, current) == (current, [])


def test_platform_connectors_events_of_the_node():
    mine = dict(XID13_EVENT, lastTimestamp="2026-12-06T20:15:22Z")
    other_reason = dict(mine, reason="Scheduled")
    other_node = dict(mine, involvedObject={"kind": "Node", "name": "gpu-node-2"})
    older = dict(mine, lastTimestamp="2026-12-06T20:15:20Z")
    assert nvsentinel.platform_connectors_events([mine, other_reason, other_node, older], NODE,
                                                 nvsentinel.parse_time("2026-12-06T20:15:21Z")) == [mine]
