"""Unit tests of the node agent, files/agent/gpu_fault_agent.py.

The agent is loaded by file path with files/agent and plugins/module_utils on sys.path, the way it
runs from its ConfigMap. The Kubernetes API is an in-memory fake with resourceVersion semantics;
/proc and /dev/kmsg are trees and regular files under tmp_path. The detectors' patterns are those
of NVSentinel's syslog-health-monitor and the AWS GPU health-check suite.
"""
import copy
import datetime
import importlib.util
import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
AGENT_DIR = ROOT / "files" / "agent"
MODULE_UTILS = ROOT / "plugins" / "module_utils"
for _path in (str(MODULE_UTILS), str(AGENT_DIR), str(ROOT / "files" / "common")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

_spec = importlib.util.spec_from_file_location("gpu_fault_agent", AGENT_DIR / "gpu_fault_agent.py")
agent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agent)
fault_api = agent.fault_api
shim_control = agent.shim_control
xid_catalog = agent.xid_catalog

from detectors import NVS_XID, NVS_SXID, NVS_FALLEN, AWS_XID_GREP, AWS_SXID_GREP, aws_code  # noqa: E402  pylint: disable=wrong-import-position


def journald(payload):
    """What journald stores for a user-space /dev/kmsg record: (SYSLOG_IDENTIFIER, MESSAGE).

    Priority prefix and trailing newline go; then leading whitespace is skipped, and a first
    whitespace-delimited token ending in ':' becomes the identifier, the rest after one
    whitespace character the message.
    """
    text = payload.decode("ascii")
    match = re.match(r"<(\d+)>", text)
    assert match, "record without priority prefix"
    text = text[match.end():]
    if text.endswith("\n"):
        text = text[:-1]
    stripped = text.lstrip(" \t\n")
    token = re.match(r"[^ \t\n]*", stripped).group(0)
    if len(token) > 1 and token.endswith(":"):
        rest = stripped[len(token):]
        if rest[:1] in (" ", "\t", "\n"):
            rest = rest[1:]
        return token[:-1], rest
    return None, text


def journalctl_k(payload, host="gpu-node-1"):
    """The line `journalctl -k` prints for a record (short format)."""
    ident, message = journald(payload)
    return "Nov 22 18:00:00 %s %s: %s" % (host, ident or "kernel", message)


def dmesg(payload):
    return payload.decode("ascii")[len("<3>"):].rstrip("\n")


# --- fixtures -------------------------------------------------------------------------------
NODE = "gpu-node-1"
POD = "gpu-fault-agent-x7k2p"
UUIDS = ["GPU-%08x-1111-4222-8333-%012x" % (i, i) for i in range(4)]
INFO = """Model: \t\t NVIDIA H100 80GB HBM3
IRQ:   \t\t 356
GPU UUID: \t {uuid}
Video BIOS: \t 96.00.89.00.01
Bus Type: \t PCIe
DMA Size: \t 52 bits
DMA Mask: \t 0xfffffffffffff
Bus Location: \t {pci}
Device Minor: \t {minor}
GPU Excluded:\t No
"""


def make_gpu(proc, dirname, minor, uuid, location=None, text=None):
    directory = proc / "driver" / "nvidia" / "gpus" / dirname
    directory.mkdir(parents=True)
    content = text if text is not None else INFO.format(uuid=uuid, pci=location or dirname, minor=minor)
    (directory / "information").write_text(content)


@pytest.fixture
def proc(tmp_path):
    """Three GPUs; directory order, minor and PCI order all differ."""
    root = tmp_path / "proc"
    make_gpu(root, "0000:b5:00.0", 0, UUIDS[1])
    make_gpu(root, "00000001:00:00.0", 1, UUIDS[2])
    make_gpu(root, "0000:3b:00.0", 3, UUIDS[0])
    return root


@pytest.fixture
def kmsg(tmp_path):
    path = tmp_path / "kmsg"
    path.write_bytes(b"")
    return path


class FakeApi:
    """In-memory GPUFaults and Leases with resourceVersion checks, like the API server."""

    def __init__(self):
        self.faults = {}
        self.leases = {}
        self.rv = 100
        self.puts = []           # status bodies PUT, in order
        self.conflicts = []      # callables run instead of a status PUT: (obj) -> raise or not
        self.on_put = None
        self.events = []

    def _next(self):
        self.rv += 1
        return str(self.rv)

    def add(self, name, spec, status=None, generation=1):
        obj = {"metadata": {"name": name, "namespace": "drills", "uid": "uid-" + name,
                            "generation": generation, "labels": {fault_api.NODE_LABEL: spec.get("node")},
                            "resourceVersion": self._next()},
               "spec": spec}
        if status is not None:
            obj["status"] = status
        self.faults[name] = obj
        return copy.deepcopy(obj)

    # ClusterApi interface
    def list_faults(self, selector):
        return [copy.deepcopy(obj) for obj in self.faults.values()], str(self.rv)

    def watch_faults(self, selector, resource_version, timeout_seconds):
        events, self.events = self.events, []
        return iter(events)

    def get_fault(self, name):
        if name not in self.faults:
            raise agent.ApiError(404, "NotFound", "gpufaults %s not found" % name)
        return copy.deepcopy(self.faults[name])

    def replace_fault_status(self, body):
        name = body["metadata"]["name"]
        if self.on_put:
            self.on_put(body)
        if self.conflicts:
            self.conflicts.pop(0)(self, name)
        stored = self.faults.get(name)
        if stored is None:
            raise agent.ApiError(404, "NotFound", name)
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise agent.ApiError(409, "Conflict", "the object has been modified")
        assert body["apiVersion"] == fault_api.API_VERSION and body["kind"] == fault_api.KIND
        self.puts.append(copy.deepcopy(body["status"]))
        stored["status"] = copy.deepcopy(body["status"])
        stored["metadata"]["resourceVersion"] = self._next()
        return copy.deepcopy(stored)

    def get_lease(self, name):
        if name not in self.leases:
            raise agent.ApiError(404, "NotFound", name)
        return copy.deepcopy(self.leases[name])

    def create_lease(self, lease):
        name = lease["metadata"]["name"]
        if name in self.leases:
            raise agent.ApiError(409, "AlreadyExists", name)
        lease = copy.deepcopy(lease)
        lease["metadata"].update(uid="lease-uid", resourceVersion=self._next())
        self.leases[name] = lease
        return copy.deepcopy(lease)

    def replace_lease(self, lease):
        name = lease["metadata"]["name"]
        stored = self.leases.get(name)
        if stored is None:
            raise agent.ApiError(404, "NotFound", name)
        if lease["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise agent.ApiError(409, "Conflict", name)
        lease = copy.deepcopy(lease)
        lease["metadata"]["resourceVersion"] = self._next()
        self.leases[name] = lease
        return copy.deepcopy(lease)

    def delete_lease(self, name, uid=None, resource_version=None):
        stored = self.leases.get(name)
        if stored is None:
            raise agent.ApiError(404, "NotFound", name)
        if resource_version and stored["metadata"]["resourceVersion"] != resource_version:
            raise agent.ApiError(409, "Conflict", "precondition failed")
        del self.leases[name]
        return {}


def claimed_by_other(api, name):
    """A rival agent's claim lands between this agent's read and its write."""
    stored = api.faults[name]
    stored["status"] = {"phase": fault_api.PHASE_INJECTING, "agent": "gpu-fault-agent-rival"}
    stored["metadata"]["resourceVersion"] = api._next()  # pylint: disable=protected-access


def relabelled(api, name):
    """Someone edits the object's labels (not its status) before the claim lands."""
    stored = api.faults[name]
    stored["metadata"]["labels"]["team"] = "sre"
    stored["metadata"]["resourceVersion"] = api._next()  # pylint: disable=protected-access


@pytest.fixture
def api():
    return FakeApi()


@pytest.fixture
def controller(api, proc, kmsg):
    return make_controller(api, proc, kmsg)


def make_controller(api, proc, kmsg, **kwargs):
    return agent.FaultController(api, NODE, POD, lambda: agent.discover_gpus(str(proc / "driver" / "nvidia")), str(kmsg),
                                 sleep=lambda seconds: None, **kwargs)


def xid_spec(**overrides):
    spec = {"node": NODE, "gpu": {"index": 0}, "xid": 79, "method": "kmsg"}
    spec.update(overrides)
    return spec


def payloads(kmsg):
    """Split the file back into the payloads written (a record may contain newlines)."""
    data = kmsg.read_bytes()
    if not data:
        return []
    parts = data.split(b"\n<3>")
    parts[0] = parts[0][len(b"<3>"):]
    return [b"<3>" + part + (b"" if part.endswith(b"\n") else b"\n") for part in parts]


# ============================================================================================
# Discovery
# ============================================================================================

def test_discovery_orders_by_pci_with_extended_domains(proc):
    gpus = agent.discover_gpus(str(proc / "driver" / "nvidia"))
    assert [(g["index"], g["pci"], g["minor"], g["uuid"]) for g in gpus] == [
        (0, "0000:3b:00.0", 3, UUIDS[0]),
        (1, "0000:b5:00.0", 0, UUIDS[1]),
        (2, "0001:00:00.0", 1, UUIDS[2]),   # 8-digit domain directory, canonical address
    ]
    assert gpus[0]["model"] == "NVIDIA H100 80GB HBM3"
    assert any(g["minor"] != g["index"] for g in gpus)


def test_discovery_skips_malformed_entries(tmp_path, capsys):
    root = tmp_path / "proc"
    make_gpu(root, "0000:3b:00.0", 3, UUIDS[0])
    make_gpu(root, "not-a-pci-address", 1, UUIDS[1])
    make_gpu(root, "0000:5e:00.0", "abc", UUIDS[2])
    make_gpu(root, "0000:6e:00.0", 2, UUIDS[3], location="0000:99:00.0")
    make_gpu(root, "0000:7e:00.0", 4, None, text="garbage\x00\x01 without fields")
    (root / "driver" / "nvidia" / "gpus" / "0000:8e:00.0").mkdir()   # no information file
    make_gpu(root, "0000:9e:00.0", 5, "N/A")                          # kept, without UUID
    make_gpu(root, "00000000:3b:00.0", 3, UUIDS[0])                   # same GPU, other spelling
    gpus = agent.discover_gpus(str(root / "driver" / "nvidia"))
    assert [(g["index"], g["pci"], g["minor"], g["uuid"]) for g in gpus] == [
        (0, "0000:3b:00.0", 3, UUIDS[0]), (1, "0000:9e:00.0", 5, None)]
    warnings = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    ignored = sorted(w["entry"] for w in warnings if w["event"] == "gpu_entry_ignored")
    assert len(ignored) == 6
    assert all(w["level"] == "warning" for w in warnings)


def test_discovery_without_driver_is_empty(tmp_path):
    assert not agent.discover_gpus(str(tmp_path / "driver" / "nvidia"))


def test_inventory_annotation_is_compact_and_has_no_model(proc):
    text = agent.inventory_annotation(agent.discover_gpus(str(proc / "driver" / "nvidia")))
    assert " " not in text
    assert json.loads(text)[2] == {"index": 2, "minor": 1, "pci": "0001:00:00.0", "uuid": UUIDS[2]}


# ============================================================================================
# Record forms against the detectors
# ============================================================================================

def kmsg_payloads(records, form):
    return [agent.kmsg_payload(agent.record_text(record, form)) for record in records]


def test_journald_form_xid79_reaches_nvsentinel_and_aws():
    records = xid_catalog.render_xid_lines(79, "0000:3b:00.0", uuid=UUIDS[0])
    payloads = kmsg_payloads(records, "journald")
    journal = [journald(p) for p in payloads]
    assert all(ident == "NVRM" for ident, _msg in journal)
    assert [msg for _ident, msg in journal] == records            # MESSAGE is the driver's text
    xids = [NVS_XID.search(msg) for _ident, msg in journal]
    assert [(m.group(1), m.group(2)) for m in xids if m] == [("0000:3b:00", "79")]
    fallen = [NVS_FALLEN.search(msg) for _ident, msg in journal]
    assert [m.group(1) for m in fallen if m] == ["0000:3b:00.0"]
    lines = [journalctl_k(p) for p in payloads]
    assert [aws_code(line) for line in lines if AWS_XID_GREP.search(line)] == ["79"]


@pytest.mark.parametrize("action", sorted(xid_catalog.RECOVERY_ACTIONS))
def test_journald_form_xid154_keeps_recovery_action(action):
    records = xid_catalog.render_xid_lines(154, "00000001:00:00.0", recovery_action=action)
    (payload,) = kmsg_payloads(records, "journald")
    ident, message = journald(payload)
    assert ident == "NVRM"
    match = NVS_XID.search(message)
    assert match and match.group(1) == "0001:00:00" and match.group(2) == "154"
    assert message[message.rfind("(") + 1:message.rfind(")")] == action   # NVSentinel's 154 rule
    assert aws_code(journalctl_k(payload)) == "154"


def test_journald_form_sxid():
    records = xid_catalog.render_sxid_lines(24007, "0000:05:00.0", switch=3, link=12)
    journal = [journald(p) for p in kmsg_payloads(records, "journald")]
    assert {ident for ident, _msg in journal} == {"nvidia-nvswitch3"}
    first = NVS_SXID.search(journal[0][1])
    assert first.groups()[:5] == ("3", "0000:05:00.0", "24007", "Fatal", "12")
    assert all(AWS_SXID_GREP.search(msg) for _ident, msg in journal)


def test_dmesg_form_is_the_driver_text():
    records = xid_catalog.render_xid_lines(79, "0000:b5:00.0", uuid=UUIDS[1])
    payloads = kmsg_payloads(records, "dmesg")
    assert [dmesg(p) for p in payloads] == records
    assert [NVS_XID.search(dmesg(p)).group(2) for p in payloads if NVS_XID.search(dmesg(p))] == ["79"]
    assert NVS_FALLEN.search(dmesg(payloads[-1]))
    sxid = kmsg_payloads(xid_catalog.render_sxid_lines(28002, "0000:05:00.0", switch=1, link=4), "dmesg")
    assert NVS_SXID.search(dmesg(sxid[0])).group(4) == "Non-fatal"
    # Why journald is the default: through the journal, the dmesg form loses its "NVRM: ".
    ident, message = journald(payloads[1])
    assert ident == "NVRM" and not NVS_XID.search(message)


def test_payload_is_one_record_with_priority():
    payload = agent.kmsg_payload("NVRM: NVRM: Xid (PCI:0000:3b:00): 13, x")
    assert payload.startswith(b"<3>NVRM: NVRM: Xid") and payload.endswith(b"\n") and payload.count(b"\n") == 1
    with pytest.raises(ValueError):
        agent.kmsg_payload("NVRM: " + "x" * 2000)
    with pytest.raises(ValueError):
        agent.record_text("NVRM: Xid", "syslog")


# ============================================================================================
# Lease
# ============================================================================================

MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_lease_body(proc):
    now = datetime.datetime(2026, 11, 22, 18, 0, 0, tzinfo=datetime.timezone.utc)
    inventory = agent.discover_gpus(str(proc / "driver" / "nvidia"))
    lease = agent.lease_body("drills", NODE, POD, inventory, 30, now)
    assert lease["metadata"]["name"] == fault_api.lease_name(NODE)
    assert lease["spec"] == {"holderIdentity": POD, "leaseDurationSeconds": 30,
                             "renewTime": "2026-11-22T18:00:00.000000Z", "acquireTime": "2026-11-22T18:00:00.000000Z"}
    annotation = lease["metadata"]["annotations"][fault_api.INVENTORY_ANNOTATION]
    assert json.loads(annotation) == [agent.public_gpu(g) for g in inventory]
    later = now + datetime.timedelta(seconds=10, microseconds=5)
    renewed = agent.lease_body("drills", NODE, POD, [], 30, later, existing=lease)
    assert renewed["spec"]["renewTime"] == "2026-11-22T18:00:10.000005Z"
    assert renewed["spec"]["acquireTime"] == lease["spec"]["acquireTime"]
    assert renewed["metadata"]["annotations"][fault_api.INVENTORY_ANNOTATION] == "[]"
    taken = agent.lease_body("drills", NODE, "gpu-fault-agent-new", [], 30, later, existing=renewed)
    assert taken["spec"]["leaseTransitions"] == 1 and taken["spec"]["acquireTime"] == renewed["spec"]["renewTime"]
    assert MICROTIME.match(agent.rfc3339(agent.now_utc()))


def test_lease_keeper_creates_takes_over_and_releases(api, proc):
    name = fault_api.lease_name(NODE)
    keeper = agent.LeaseKeeper(api, "drills", NODE, POD, 30, lambda: agent.discover_gpus(str(proc / "driver" / "nvidia")))
    keeper.renew()
    assert api.leases[name]["spec"]["holderIdentity"] == POD
    assert len(json.loads(api.leases[name]["metadata"]["annotations"][fault_api.INVENTORY_ANNOTATION])) == 3
    keeper.renew()
    assert MICROTIME.match(api.leases[name]["spec"]["renewTime"])
    # Another agent takes the Lease over; this one's next renewal takes it back after a 409.
    rival = agent.LeaseKeeper(api, "drills", NODE, "gpu-fault-agent-rival", 30, list)
    rival.renew()
    keeper.renew()
    assert api.leases[name]["spec"]["holderIdentity"] == POD
    assert api.leases[name]["spec"]["leaseTransitions"] == 2
    keeper.release()
    assert name not in api.leases


def test_lease_keeper_leaves_a_successors_lease(api):
    keeper = agent.LeaseKeeper(api, "drills", NODE, POD, 30, list)
    keeper.renew()
    agent.LeaseKeeper(api, "drills", NODE, "gpu-fault-agent-next", 30, list).renew()
    keeper.release()
    assert api.leases[fault_api.lease_name(NODE)]["spec"]["holderIdentity"] == "gpu-fault-agent-next"


# ============================================================================================
# Controller
# ============================================================================================

def test_claims_before_writing_then_reports(api, controller, kmsg, capsys):
    obj = api.add("xid79", xid_spec(gpu={"index": 2}), generation=3)

    def check_claim(body):
        if body["status"]["phase"] == fault_api.PHASE_INJECTING:
            assert kmsg.read_bytes() == b"", "records written before the claim"
    api.on_put = check_claim
    controller.handle(obj)
    assert [s["phase"] for s in api.puts] == ["Injecting", "Injected"]
    claim, final = api.puts
    assert claim["agent"] == POD and MICROTIME.match(claim["claimedAt"])
    assert final["gpus"] == [{"index": 2, "minor": 1, "pci": "0001:00:00.0", "uuid": UUIDS[2]}]
    assert final["observedGeneration"] == 3 and MICROTIME.match(final["injectedAt"])
    assert final["claimedAt"] == claim["claimedAt"] and "error" not in final
    written = payloads(kmsg)
    assert final["records"] == [p[3:-1].decode() for p in written]
    assert final["records"][1].startswith("NVRM: NVRM: Xid (PCI:0001:00:00): 79, ")
    assert [journald(p)[1] for p in written] == xid_catalog.render_xid_lines(79, "0001:00:00.0", uuid=UUIDS[2])
    (outcome,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert outcome["event"] == "fault" and outcome["phase"] == "Injected" and outcome["xid"] == 79
    assert outcome["gpus"] == [2] and outcome["fault"] == "xid79" and outcome["node"] == NODE


def test_conflict_on_claim_writes_nothing(api, controller, kmsg):
    obj = api.add("xid79", xid_spec())
    api.conflicts.append(claimed_by_other)
    controller.handle(obj)
    assert kmsg.read_bytes() == b"" and not api.puts
    assert api.faults["xid79"]["status"]["agent"] == "gpu-fault-agent-rival"


def test_conflict_without_claim_retries(api, controller, kmsg):
    obj = api.add("xid79", xid_spec())
    api.conflicts.append(relabelled)
    controller.handle(obj)
    assert [s["phase"] for s in api.puts] == ["Injecting", "Injected"]
    assert len(payloads(kmsg)) == 4


def refused(api, kmsg, error_part):
    assert kmsg.read_bytes() == b""
    assert [s["phase"] for s in api.puts] == ["Failed"], "refusals are never claimed"
    assert error_part in api.puts[0]["error"]
    assert api.puts[0]["agent"] == POD and not api.puts[0]["records"]


def test_fault_for_another_node_is_refused(api, controller, kmsg):
    controller.handle(api.add("elsewhere", xid_spec(node="gpu-node-2")))
    refused(api, kmsg, "GPUFault elsewhere is addressed to node gpu-node-2; this agent runs on gpu-node-1")


@pytest.mark.parametrize("overrides, error_part", [
    ({"xid": 2}, "unknown XID code 2"),
    ({"xid": "79"}, "integer"),
    ({"gpu": {"pci": "0000:3b:00"}}, "malformed PCI address"),
    ({"gpu": {"pci": "0000:3b:00.0; reboot"}}, "PCI address"),
    ({"gpu": {"index": 3}}, "GPU index 3 is out of range"),
    ({"gpu": {"pci": "0000:3c:00.0"}}, "has no GPU with PCI address"),
    ({"gpu": {"uuid": "GPU-00000000-0000-0000-0000-000000000000"}}, "has no GPU with UUID"),
    ({"message": "ok\n<3>NVRM: Xid (PCI:0000:3b:00): 79, forged"}, "message"),
    ({"message": "forged Xid (PCI:0000:3b:00): 48, x"}, "must not contain"),
    ({"message": "\x1b[2J cleared"}, "message"),
    ({"message": "nvidia-nvswitch0: SXid"}, "must not contain"),
    ({"message": "bad %s $(reboot) `id` 'q'"}, "message"),
    ({"message": "x" * 201}, "limit is 200"),
    ({"recoveryAction": "Node Reboot Required"}, "XID 154 only"),
    ({"method": "sh"}, "method"),
    ({"extra": "field"}, "unknown spec field"),
])
def test_invalid_faults_are_refused(api, controller, kmsg, overrides, error_part):
    controller.handle(api.add("bad", xid_spec(**overrides)))
    refused(api, kmsg, error_part)


def test_message_override_reaches_the_record(api, controller, kmsg):
    controller.handle(api.add("msg", xid_spec(xid=13, message="Graphics SM Warp Exception on (GPC 2, TPC 1)")))
    assert api.puts[-1]["phase"] == "Injected"
    assert api.puts[-1]["records"][1].endswith("name=<unknown>, Graphics SM Warp Exception on (GPC 2, TPC 1)")


def test_records_only_come_from_the_catalog_renderer(proc):
    """Even a spec that skipped validation cannot put raw text into a record."""
    gpus = agent.discover_gpus(str(proc / "driver" / "nvidia"))[:1]
    hostile = {"node": NODE, "xid": 13, "method": "kmsg", "message": "x\n<0>NVRM: Xid (PCI:0000:3b:00): 79, y"}
    with pytest.raises(ValueError):
        agent._plan_xid(hostile, gpus, "journald")  # pylint: disable=protected-access
    plan = agent._plan_xid(dict(hostile, message="a;b $c"), gpus, "journald")  # pylint: disable=protected-access
    assert plan.records[1].endswith(", ab c") and all(p.count(b"\n") == 1 for p in plan.actions)


def test_injecting_at_start_is_failed_not_reinjected(api, controller, kmsg):
    api.add("orphan", xid_spec(), status={"phase": "Injecting", "agent": POD, "claimedAt": "2026-11-22T18:00:00.000000Z"})
    controller.sync()
    assert kmsg.read_bytes() == b""
    assert api.faults["orphan"]["status"]["phase"] == "Failed"
    assert api.faults["orphan"]["status"]["error"] == agent.RESTARTED_ERROR
    controller.sync()
    assert kmsg.read_bytes() == b"" and len(api.puts) == 1


def test_live_claim_of_another_agent_in_a_watch_event_is_left_alone(api, controller, kmsg):
    obj = api.add("theirs", xid_spec(), status={"phase": "Injecting", "agent": "gpu-fault-agent-rival"})
    controller.handle(obj)
    assert not api.puts and kmsg.read_bytes() == b""


def test_same_fault_seen_twice_is_written_once(api, controller, kmsg):
    stale = api.add("once", xid_spec())
    controller.handle(stale)
    controller.handle(stale)              # e.g. the ADDED event after the list
    controller.sync()
    api.events = [{"type": "MODIFIED", "object": api.get_fault("once")}, {"type": "ADDED", "object": stale}]
    controller.watch_once("1")
    assert len(payloads(kmsg)) == 4
    assert [s["phase"] for s in api.puts] == ["Injecting", "Injected"]


def test_finished_faults_are_ignored(api, controller, kmsg):
    api.add("done", xid_spec(), status={"phase": "Injected"})
    api.add("failed", xid_spec(), status={"phase": "Failed", "error": "x"})
    controller.sync()
    assert not api.puts and kmsg.read_bytes() == b""


def test_all_gpus_and_xid154(api, controller, kmsg):
    controller.handle(api.add("all", xid_spec(xid=154, gpu={"all": True}, recoveryAction="Drain P2P")))
    final = api.puts[-1]
    assert [g["index"] for g in final["gpus"]] == [0, 1, 2]
    messages = [journald(p)[1] for p in payloads(kmsg)]
    assert [NVS_XID.search(m).group(1) for m in messages if NVS_XID.search(m)] == [
        "0000:3b:00", "0000:b5:00", "0001:00:00"]
    assert all(m.endswith("(Drain P2P)") for m in messages if NVS_XID.search(m))


def test_gpu_selected_by_8_digit_pci_and_uuid(api, controller, kmsg):
    controller.handle(api.add("by-pci", xid_spec(xid=48, gpu={"pci": "00000001:00:00.0"})))
    controller.handle(api.add("by-uuid", xid_spec(xid=48, gpu={"uuid": UUIDS[1].upper()})))
    injected = [s for s in api.puts if s["phase"] == "Injected"]
    assert [s["gpus"][0]["index"] for s in injected] == [2, 1]


def test_sxid_fault(api, controller, kmsg):
    spec = {"node": NODE, "sxid": {"code": 28002, "pci": "0000:05:00.0", "nvswitch": 2, "link": 7}}
    controller.handle(api.add("sxid", spec))
    final = api.puts[-1]
    assert final["phase"] == "Injected" and final["gpus"] == []
    ident, message = journald(payloads(kmsg)[0])
    assert ident == "nvidia-nvswitch2"
    assert NVS_SXID.search(message).groups()[:5] == ("2", "0000:05:00.0", "28002", "Non-fatal", "07")


def test_dmesg_record_form(api, proc, kmsg):
    controller = make_controller(api, proc, kmsg, record_form="dmesg")
    controller.handle(api.add("dm", xid_spec(xid=13)))
    assert [dmesg(p) for p in payloads(kmsg)] == xid_catalog.render_xid_lines(13, "0000:3b:00.0", uuid=UUIDS[0])


def test_missing_kmsg_is_refused_before_claim(api, proc, tmp_path):
    controller = make_controller(api, proc, tmp_path / "no-kmsg")
    controller.handle(api.add("nokmsg", xid_spec()))
    assert [s["phase"] for s in api.puts] == ["Failed"] and "does not exist" in api.puts[0]["error"]


def test_write_error_after_claim_reports_what_was_written(api, controller, kmsg, monkeypatch):
    real_write, calls = os.write, []

    def failing_write(fd, data):
        calls.append(data)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(agent.os, "write", failing_write)
    controller.handle(api.add("partial", xid_spec()))
    final = api.puts[-1]
    assert final["phase"] == "Failed" and "record 3" in final["error"] and "No space left" in final["error"]
    assert final["records"] == [p[3:-1].decode() for p in payloads(kmsg)] and len(final["records"]) == 2


def test_each_record_is_its_own_open(api, controller, kmsg, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(agent.os, "open", lambda *a: opened.append(a[1]) or real_open(*a))
    controller.handle(api.add("opens", xid_spec(gpu={"all": True})))
    assert len(opened) == 12
    assert all(flags & os.O_WRONLY and flags & os.O_APPEND and not flags & os.O_CREAT for flags in opened)


def test_status_write_failure_is_retried_later(api, controller, kmsg):
    obj = api.add("flaky", xid_spec())

    def unavailable(fake, name):
        raise agent.ApiError(503, "ServiceUnavailable", "etcd leader changed")
    api.conflicts.extend([lambda fake, name: None] + [unavailable] * agent.FaultController.STATUS_RETRIES)
    controller.handle(obj)
    assert api.faults["flaky"]["status"]["phase"] == "Injecting"
    controller.sync()                       # next sighting: report, do not inject again
    assert api.faults["flaky"]["status"]["phase"] == "Injected"
    assert len(payloads(kmsg)) == 4 and not controller.unreported


def lost_answer(api, name):
    """The claim lands, but its answer never reaches the agent (timeout, connection reset)."""
    api.on_put = None
    stored = api.faults[name]
    stored["status"] = copy.deepcopy(api.last_body["status"])
    stored["metadata"]["resourceVersion"] = api._next()  # pylint: disable=protected-access
    raise agent.ApiError(0, "ConnectionError", "timed out")


def remember_body(api):
    def hook(body):
        api.last_body = copy.deepcopy(body)
    return hook


def test_claim_whose_answer_was_lost_is_resumed_once(api, controller, kmsg):
    api.add("lost", xid_spec())
    api.on_put = remember_body(api)
    api.conflicts.append(lost_answer)
    controller.sync()
    assert api.faults["lost"]["status"]["phase"] == "Injecting" and kmsg.read_bytes() == b""
    assert controller.needs_resync
    controller.sync()                       # the claim is recognised as this process's own
    controller.sync()
    assert api.faults["lost"]["status"]["phase"] == "Injected"
    assert len(payloads(kmsg)) == 4


def test_lost_claim_of_a_previous_process_is_abandoned(api, proc, kmsg):
    api.add("lost", xid_spec())
    first = make_controller(api, proc, kmsg)
    api.on_put = remember_body(api)
    api.conflicts.append(lost_answer)
    first.sync()
    make_controller(api, proc, kmsg).sync()   # restarted container: same pod name, new process
    assert api.faults["lost"]["status"]["error"] == agent.RESTARTED_ERROR
    assert kmsg.read_bytes() == b""


def test_report_survives_errors_while_rereading(api, controller, kmsg, monkeypatch):
    obj = api.add("reread", xid_spec())

    def conflict(fake, name):
        raise agent.ApiError(409, "Conflict", "modified")
    api.conflicts.extend([lambda fake, name: None, conflict])
    real_get = api.get_fault

    def broken_get(name):
        raise agent.ApiError(500, "InternalError", "etcdserver: request timed out")
    monkeypatch.setattr(api, "get_fault", broken_get)
    with pytest.raises(agent.ApiError):
        controller.handle(obj)
    monkeypatch.setattr(api, "get_fault", real_get)
    controller.sync()
    assert api.faults["reread"]["status"]["phase"] == "Injected" and len(payloads(kmsg)) == 4


def test_watch_bookmarks_and_expiry(api, controller, kmsg):
    api.add("w", xid_spec())
    new = api.get_fault("w")
    new["metadata"]["resourceVersion"] = "150"
    api.events = [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "140"}}},
                  {"type": "ADDED", "object": new}]
    api.faults["w"]["metadata"]["resourceVersion"] = "150"
    assert controller.watch_once("120") == "150"
    assert api.faults["w"]["status"]["phase"] == "Injected"
    api.events = [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]
    assert controller.watch_once("150") is None


def test_shutdown_claims_nothing_new(api, controller, kmsg):
    controller.stopping.set()
    controller.handle(api.add("late", xid_spec()))
    assert not api.puts and kmsg.read_bytes() == b""


# ============================================================================================
# dcgm
# ============================================================================================

def fake_dcgmi(tmp_path, rc=0):
    script = tmp_path / "dcgmi"
    log_path = tmp_path / "dcgmi.log"
    script.write_text("#!/bin/sh\necho \"$@\" >> '%s'\n%s\n" % (
        log_path, "echo 'Error: unable to inject: no GPU 5' >&2; exit 3" if rc else "echo Successfully injected"))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log_path


def test_dcgm_runs_dcgmi_per_gpu(api, proc, kmsg, tmp_path):
    script, log_path = fake_dcgmi(tmp_path)
    controller = make_controller(api, proc, kmsg, dcgmi=str(script))
    controller.handle(api.add("dcgm", xid_spec(method="dcgm", xid=48, gpu={"all": True})))
    final = api.puts[-1]
    assert final["phase"] == "Injected"
    assert final["records"] == ["%s test --inject --gpuid %d -f 230 -v 48" % (script, i) for i in range(3)]
    assert log_path.read_text().splitlines() == ["test --inject --gpuid %d -f 230 -v 48" % i for i in range(3)]
    assert kmsg.read_bytes() == b""
    assert agent.dcgm_argv("dcgmi", 1, 79) == ["dcgmi", "test", "--inject", "--gpuid", "1", "-f", "230", "-v", "79"]


def test_dcgm_failure_reports_stderr(api, proc, kmsg, tmp_path):
    script, _log_path = fake_dcgmi(tmp_path, rc=3)
    controller = make_controller(api, proc, kmsg, dcgmi=str(script))
    controller.handle(api.add("dcgm", xid_spec(method="dcgm", xid=48)))
    final = api.puts[-1]
    assert [s["phase"] for s in api.puts] == ["Injecting", "Failed"]
    assert "exited with status 3: Error: unable to inject: no GPU 5" in final["error"] and final["records"] == []


def test_dcgm_missing(api, proc, kmsg, tmp_path):
    missing = tmp_path / "bin" / "dcgmi"
    controller = make_controller(api, proc, kmsg, dcgmi=str(missing))
    controller.handle(api.add("dcgm", xid_spec(method="dcgm")))
    refused(api, kmsg, "dcgmi not found at %s; install DCGM or use method kmsg" % missing)
    with pytest.raises(agent.FaultRefused, match="dcgmi not found at no-such-dcgmi-here"):
        agent.resolve_dcgmi("no-such-dcgmi-here")


def test_dcgm_sxid_is_refused(api, controller, kmsg):
    controller.handle(api.add("s", {"node": NODE, "method": "dcgm", "sxid": {"code": 28002, "pci": "0000:05:00.0"}}))
    refused(api, kmsg, "method kmsg")


# ============================================================================================
# API client and command line
# ============================================================================================

class RecordingClient:
    """Stands in for kube_api.KubeClient: records each call, answers from a queue."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def request(self, method, path, query=None, body=None, content_type="application/json"):
        self.calls.append((method, path, query, body))
        return self.answers.pop(0)

    def watch(self, path, query, timeout_seconds):
        self.calls.append(("WATCH", path, query, timeout_seconds))
        return iter(self.answers.pop(0))


def test_cluster_api_paths():
    """The calls the agent makes, on the shared client (tested itself in test_kube_api.py)."""
    client = RecordingClient([{"kind": "Lease"}, {}, {"items": [1], "metadata": {"resourceVersion": "7"}}, [{"type": "ADDED"}]])
    api = agent.ClusterApi(client, "drills")
    assert api.get_lease("l1") == {"kind": "Lease"}
    api.replace_fault_status({"metadata": {"name": "f1"}, "status": {}})
    assert api.list_faults("faultinjection.gpu-resilience.io/node=n1") == ([1], "7")
    assert list(api.watch_faults("faultinjection.gpu-resilience.io/node=n1", "7", 60)) == [{"type": "ADDED"}]
    assert client.calls[0][:2] == ("GET", "/apis/coordination.k8s.io/v1/namespaces/drills/leases/l1")
    assert client.calls[1][:2] == ("PUT", "/apis/faultinjection.gpu-resilience.io/v1alpha1/namespaces/drills/gpufaults/f1/status")
    assert client.calls[2][2] == {"labelSelector": "faultinjection.gpu-resilience.io/node=n1"}
    assert client.calls[3] == ("WATCH", "/apis/faultinjection.gpu-resilience.io/v1alpha1/namespaces/drills/gpufaults",
                               {"labelSelector": "faultinjection.gpu-resilience.io/node=n1", "resourceVersion": "7"}, 60)


def test_args_defaults_from_environment(monkeypatch):
    monkeypatch.setenv("NODE_NAME", NODE)
    monkeypatch.setenv("POD_NAMESPACE", "drills")
    monkeypatch.setenv("POD_NAME", POD)
    args = agent.parse_args([])
    assert (args.node, args.namespace, args.pod_name) == (NODE, "drills", POD)
    assert (args.kmsg, args.nvidia_proc, args.dcgmi, args.record_form) == ("/host/dev/kmsg", "/host/proc/driver/nvidia", "dcgmi", "journald")
    assert (args.lease_seconds, args.renew_seconds) == (30, 10)


@pytest.mark.parametrize("argv", [
    ["--namespace", "drills", "--pod-name", POD],
    ["--node", "Bad_Node", "--namespace", "drills", "--pod-name", POD],
    ["--node", NODE, "--namespace", "drills", "--pod-name", POD, "--renew-seconds", "30"],
    ["--node", NODE, "--namespace", "drills", "--pod-name", POD, "--record-form", "syslog"],
])
def test_args_rejected(argv, monkeypatch):
    for name in ("NODE_NAME", "POD_NAMESPACE", "POD_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        agent.parse_args(argv)


def test_agent_file_is_standalone():
    """Standard library plus the shipped modules only; no listening socket, no shell."""
    source = (AGENT_DIR / "gpu_fault_agent.py").read_text()
    imports = {name.split(".", maxsplit=1)[0] for name in re.findall(r"^(?:import|from) ([\w.]+)", source, re.MULTILINE)}
    stdlib = getattr(sys, "stdlib_module_names", imports)
    assert imports - set(stdlib) <= {"xid_catalog", "fault_api", "shim_control", "kube_api"}
    for forbidden in ("bind(", "listen(", "shell=True", "os.system", "socketserver", "http.server"):
        assert forbidden not in source


# ============================================================================================
# The CUDA fault shim's control file
# ============================================================================================

@pytest.fixture
def shim_dir(tmp_path):
    path = tmp_path / "shim"
    path.mkdir()
    return path


def control(shim_dir):
    return shim_control.parse((shim_dir / shim_control.CONTROL_FILE).read_text())


def test_arming_writes_the_control_line_before_the_records(api, proc, kmsg, shim_dir):
    order = []
    real_write = agent.write_kmsg
    controller = make_controller(api, proc, kmsg, shim_dir=str(shim_dir))
    agent.write_kmsg = lambda path, payloads: order.append(("kmsg", (shim_dir / "control").exists())) \
        or real_write(path, payloads)
    try:
        controller.handle(api.add("arm79", xid_spec(gpu={"index": 2}, shim="arm")))
    finally:
        agent.write_kmsg = real_write
    assert order == [("kmsg", True)]   # the control file existed when the records went out
    state = control(shim_dir)
    gpu2 = agent.discover_gpus(str(proc / "driver" / "nvidia"))[2]["pci"]
    assert state["armed"] and state["xid"] == 79 and state["error"] == 100 and state["gpu"] == gpu2
    assert state["fault"] == "arm79"
    status = api.faults["arm79"]["status"]
    assert status["phase"] == fault_api.PHASE_INJECTED and status["shimControl"].startswith("v1 armed=1 xid=79")
    assert payloads(kmsg)


def test_arming_all_gpus_targets_none_and_disarm_stands_alone(api, proc, kmsg, shim_dir):
    controller = make_controller(api, proc, kmsg, shim_dir=str(shim_dir))
    controller.handle(api.add("arm48", xid_spec(gpu={"all": True}, xid=48, shim="arm")))
    assert control(shim_dir)["error"] == 214 and "gpu" not in control(shim_dir)
    before = kmsg.read_bytes()
    controller.handle(api.add("off", {"node": NODE, "shim": "disarm"}))
    assert not control(shim_dir)["armed"] and kmsg.read_bytes() == before   # nothing logged
    assert api.faults["off"]["status"]["phase"] == fault_api.PHASE_INJECTED


def test_shim_fault_without_the_control_directory_is_refused(api, proc, kmsg, tmp_path):
    controller = make_controller(api, proc, kmsg, shim_dir=str(tmp_path / "missing"))
    controller.handle(api.add("arm79", xid_spec(shim="arm")))
    status = api.faults["arm79"]["status"]
    assert status["phase"] == fault_api.PHASE_FAILED and "shim control directory" in status["error"]
    assert kmsg.read_bytes() == b""


def test_deleting_the_arming_fault_disarms(api, proc, kmsg, shim_dir):
    controller = make_controller(api, proc, kmsg, shim_dir=str(shim_dir))
    controller.handle(api.add("arm79", xid_spec(shim="arm")))
    controller.release_shim(deleted="someone-else")
    assert control(shim_dir)["armed"]
    controller.release_shim(deleted="arm79")
    assert not control(shim_dir)["armed"] and control(shim_dir)["fault"] == "arm79"


def test_a_deletion_missed_while_down_disarms_at_the_next_list(api, proc, kmsg, shim_dir):
    controller = make_controller(api, proc, kmsg, shim_dir=str(shim_dir))
    controller.handle(api.add("arm79", xid_spec(shim="arm")))
    controller.sync()
    assert control(shim_dir)["armed"]          # the fault still exists
    del api.faults["arm79"]
    controller.sync()
    assert not control(shim_dir)["armed"]
