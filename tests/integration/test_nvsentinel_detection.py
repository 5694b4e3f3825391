"""nvsentinel_detection, nvsentinel_restore and nvsentinel_info on outcomes the real NVSentinel gives
only when it is set up otherwise than the drill expects.

The real NVSentinel runs in tests/nvsentinel: there the drills (test_nvsentinel_drills.py) watch
its reports match the catalog and hand its nodes back, and all_xids.yml compares them code by code.
What stays here is what a correctly deployed NVSentinel cannot show: a report that differs from
the catalog (NVSentinel without GPU metadata, while the drill expects it), the restore's check and
diff modes on a node full of NVSentinel's conditions, the refusals, and a release older than
v1.14.0. The reports are still NVSentinel's own: tests/nvsentinel_compat runs its
syslog-health-monitor and platform-connectors code over exactly the records the fault agent writes
(as journald stores them), and the test writes what platform-connectors wrote, the node conditions
and the Kubernetes Event, to the node through the API server while the module watches (a stand-in
for platform-connectors' write). nvsentinel_info reads a DaemonSet that only carries NVSentinel's
image name (a stand-in for its chart's DaemonSet, with a release tag the lane's does not have) and
the fault agents' Leases (none deployed here; the record form check is unit-tested).

Everything written is removed: the conditions (a strategic-merge delete), the Events, the stand-in
namespace.
"""
import datetime
import json
import uuid

import pytest

from support import ansible_module
from test_nvsentinel_decisions import BUILD, cancellations_toml, chart, journal_entries, run, xc

DETECT = "gpu_resilience.fault_injection.nvsentinel_detection"
RESTORE = "gpu_resilience.fault_injection.nvsentinel_restore"
INFO = "gpu_resilience.fault_injection.nvsentinel_info"
NODE = "gpu-node-1"
GPU = {"index": 2, "pci": "0000:75:00.0", "uuid": "GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}
METADATA = {"driver_version": "570.172.08", "gpus": [{"gpu_id": GPU["index"], "uuid": GPU["uuid"],
                                                      "pci_address": GPU["pci"], "nvlinks": []}]}


def written(xid):
    """What the fault agent writes to /dev/kmsg for an XID on GPU (its default record form)."""
    return [xc.kmsg_text(record) for record in xc.render_xid_lines(xid, GPU["pci"], uuid=GPU["uuid"])]


@pytest.fixture(scope="module")
def decide():
    """A function: what NVSentinel writes at its start-up and for records (as written to /dev/kmsg)."""
    monitor, connector = chart()
    binary = run([BUILD]).strip()

    def decide_for(records, metadata):
        entries = journal_entries(records)
        request = {"node": NODE, "checks": monitor["enabledChecks"],
                   "cancellations_toml": cancellations_toml(monitor["cancellations"]),
                   "max_condition_message_length": connector["maxNodeConditionMessageLength"],
                   "compacted_message_length": connector["compactedHealthEventMsgLen"],
                   "scenarios": [{"name": "it", "metadata": metadata, "injections": [{"id": "it", "entries": entries}]}]}
        scenario = json.loads(run([binary], input=json.dumps(request)))["scenarios"][0]
        return scenario["startup"], scenario["injections"][0]
    return decide_for


@pytest.fixture()
def node_marks(core):
    """Removes the NVSentinel conditions and Events the test writes on the node."""
    written = {"conditions": set(), "events": []}
    yield written
    if written["conditions"]:
        core.patch_node_status(NODE, {"status": {"conditions": [{"type": t, "$patch": "delete"}
                                                                for t in sorted(written["conditions"])]}})
    for name in written["events"]:
        core.delete_namespaced_event(name, "default")
    left = [c.type for c in core.read_node(NODE).status.conditions if c.type in written["conditions"]]
    assert not left, left


def platform_connectors_writes(core, written, decided):
    """Write, as platform-connectors does, the conditions that are not the node's already and the Events."""
    present = dict((c.type, c) for c in core.read_node(NODE).status.conditions)
    changed = [c for c in decided["conditions"]
               if c["type"] not in present or present[c["type"]].message != c["message"]]
    if changed:
        now = "2026-12-06T20:00:00Z"
        core.patch_node_status(NODE, {"status": {"conditions": [dict(c, lastHeartbeatTime=now, lastTransitionTime=now)
                                                                for c in changed]}})
        written["conditions"].update(c["type"] for c in changed)
    for event in decided["events"]:
        name = "%s.%s" % (NODE, uuid.uuid4().hex[:16])
        core.create_namespaced_event("default", {
            "metadata": {"name": name}, "type": event["type"], "reason": event["reason"], "message": event["message"],
            "involvedObject": {"kind": "Node", "name": NODE, "uid": NODE}, "count": 1,
            "source": {"component": event["source_component"], "host": NODE},
            "firstTimestamp": _now(), "lastTimestamp": _now()})
        written["events"].append(name)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(core):
    return [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for c in core.read_node(NODE).status.conditions]


def test_a_different_report_is_named_not_failed(core, decide, node_marks):
    records = written(48)
    startup, decided = decide(records, None)  # NVSentinel without GPU metadata: RESTART_VM
    platform_connectors_writes(core, node_marks, startup)
    platform_connectors_writes(core, node_marks, decided)
    result = ansible_module(DETECT, {"node": NODE, "records": records, "gpu_metadata": METADATA, "baseline": [],
                                     "wait_timeout": 20})
    assert not result.get("failed") and not result["matched"]
    assert result["rows"][0]["problems"] == ["Recommended Action RESTART_VM, expected COMPONENT_RESET"]


def test_restore_puts_the_conditions_back_and_deletes_the_events(core, decide, node_marks):
    baseline, since = conditions(core), _now()
    startup, fatal = decide(written(79), METADATA)
    non_fatal = decide(written(13), METADATA)[1]
    for decided in (startup, fatal, non_fatal):
        platform_connectors_writes(core, node_marks, decided)
    dirty = conditions(core)
    args = {"node": NODE, "baseline": baseline, "events_since": since}
    result = ansible_module(RESTORE, args, check=True, diff=True)
    assert result["changed"] and result["restored"] == sorted(xc.NVSENTINEL_CHECKS)
    assert result["events_deleted"] == node_marks["events"] and conditions(core) == dirty
    assert len(result["diff"]["before"]) == 3 and result["diff"]["after"] == []
    result = ansible_module(RESTORE, args)
    assert result["changed"] and conditions(core) == baseline
    assert not [e for e in core.list_namespaced_event("default").items if e.metadata.name in node_marks["events"]]
    node_marks["events"], node_marks["conditions"] = [], set()
    assert ansible_module(RESTORE, args)["changed"] is False


def test_check_mode_timeout_and_refusals():
    records = written(79)[1:2]
    result = ansible_module(DETECT, {"node": NODE, "records": records, "wait_timeout": 30}, check=True)
    assert not result.get("failed") and not result["matched"] and "elapsed" not in result
    result = ansible_module(DETECT, {"node": NODE, "records": records, "wait_timeout": 1})
    assert not result["matched"] and result["rows"][0]["problems"] == [
        "no condition SysLogsXIDError entry with ErrorCode 79 on PCI 0000:75:00"]
    sxid = ["nvidia-nvswitch0: nvidia-nvswitch0: SXid (PCI:0000:06:00.0): 24007, Fatal, Link 12 sourcetrack timeout"]
    result = ansible_module(DETECT, {"node": NODE, "records": sxid})
    assert result["failed"] and "cannot get past" in result["msg"] and result["stalls"]
    result = ansible_module(DETECT, {"node": "no-such-node", "records": records})
    assert result["failed"] and "node no-such-node not found" in result["msg"]


@pytest.fixture()
def nvsentinel_namespace(core, apps):
    """A namespace with a DaemonSet that only carries NVSentinel's syslog-health-monitor image (no pods)."""
    name = "it-nvs-" + uuid.uuid4().hex[:6]
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def daemonset(apps, namespace, tag):
    apps.create_namespaced_daemon_set(namespace, {
        "metadata": {"name": "nvsentinel-syslog-health-monitor-regular"},
        "spec": {"selector": {"matchLabels": {"app": "shm"}}, "template": {
            "metadata": {"labels": {"app": "shm"}},
            "spec": {"nodeSelector": {"it.gpu-resilience.io/no-node": "true"},
                     "containers": [{"name": "syslog-health-monitor",
                                     "image": "ghcr.io/nvidia/nvsentinel/syslog-health-monitor:" + tag}]}}}})


def test_info_reads_the_version_and_finds_no_agent(apps, nvsentinel_namespace):
    result = ansible_module(INFO, {"namespace": nvsentinel_namespace})
    assert result["failed"] and "no DaemonSet in namespace %s runs" % nvsentinel_namespace in result["msg"]
    daemonset(apps, nvsentinel_namespace, "v1.13.2")
    result = ansible_module(INFO, {"namespace": nvsentinel_namespace})
    assert not result.get("failed"), result.get("msg")
    assert result["version"] == [1, 13, 2] and result["daemonset"] == "nvsentinel-syslog-health-monitor-regular"
    assert "older than v1.14.0" in result["findings"][0] and result["warnings"]
    result = ansible_module(INFO, {"namespace": nvsentinel_namespace, "nodes": [NODE]})
    assert result["failed"] and "no live fault agent on %s" % NODE in result["msg"]
