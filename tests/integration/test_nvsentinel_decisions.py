"""The catalog expects what NVIDIA NVSentinel really decides, proven by running NVSentinel's code.

tests/nvsentinel_compat/build.sh builds a small program from NVSentinel's source (NVSENTINEL_SRC)
that runs its syslog-health-monitor (SyslogMonitor, with the chart's checks and cancellation
rules) and platform-connectors (gRPC handler, ring buffer, Kubernetes connector on client-go's
fake clientset) over journal entries. Every record the catalog renders goes in as the fault agent
writes it (its record forms) and the kernel and journald store it (the node journal bridge's
rules): every XID (XID 154 with every recovery action), every SXid, and one line per NVLink5
decode row for each driver branch; on a node with GPU metadata and a driver before R575, with
one from R575 on, and without GPU metadata; and once more written in the agent's `dmesg` record
form. For each injection the test compares, with 0 mismatches allowed (all listed):

- the health events NVSentinel publishes (check, fatal, healthy, error code, recommended action,
  PCI, GPU UUID) with xid_catalog.nvsentinel_events;
- the node conditions and Events platform-connectors writes, read back through
  nvsentinel.observe (the parser the drills use), with the same expectation.

Needs no cluster; Go builds the program once per NVSentinel source (cached outside the repo).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from support import ROOT

subprocess.run([os.path.join(ROOT, "tools", "collection-tree.sh")], check=True, stdout=subprocess.DEVNULL)
sys.path.insert(0, os.path.join(ROOT, "build", "collections"))
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import (  # noqa: E402  pylint: disable=wrong-import-position
    nvsentinel, xid_catalog as xc)


def load(name, path, *search):
    for directory in search:
        if directory not in sys.path:
            sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What the agent writes (its record forms) and what the kernel and journald make of it (the node
# journal bridge's rules): the journal entries NVSentinel reads come from these, not from the catalog.
agent = load("gpu_fault_agent", os.path.join(ROOT, "files", "agent", "gpu_fault_agent.py"),
             os.path.join(ROOT, "plugins", "module_utils"), os.path.join(ROOT, "files", "agent"),
             os.path.join(ROOT, "files", "common"))
kmsg_journal = load("kmsg_journal", os.path.join(ROOT, "tools", "localcluster", "kmsg_journal.py"))

BUILD = os.path.join(ROOT, "tests", "nvsentinel_compat", "build.sh")
NODE = "gpu-node-1"
GPU = {"gpu_id": 2, "pci": "0000:75:00.0", "uuid": "GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}
SWITCH = {"pci": "0000:06:00.0", "index": 3, "link": 12}
DRIVERS = {"R570": "570.172.08", "R575": "575.57.08"}


def run(argv, **kwargs):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False, **kwargs)
    if proc.returncode:
        pytest.fail("%s failed (exit %d):\n%s" % (" ".join(argv), proc.returncode, proc.stderr[-4000:]))
    return proc.stdout


def chart():
    """The settings of NVSentinel's chart that decide what the test must feed its code."""
    base = os.path.join(run([BUILD, "--source"]).strip(), "distros", "kubernetes", "nvsentinel")
    with open(os.path.join(base, "charts", "syslog-health-monitor", "values.yaml")) as f:
        monitor = yaml.safe_load(f)
    with open(os.path.join(base, "values.yaml")) as f:
        connector = yaml.safe_load(f)["platformConnector"]["k8sConnector"]
    return monitor, connector


def cancellations_toml(rules):
    """The chart's cancellations.toml (charts/syslog-health-monitor/templates/configmap.yaml)."""
    lines = []
    for check in rules:
        lines += ["[[checks]]", "  name = %s" % json.dumps(check["name"]),
                  "  enabled = %s" % str(check["enabled"]).lower()]
        for rule in check.get("rules") or []:
            lines += ["  [[checks.cancellations]]", "    onErrorCode = %s" % json.dumps(rule["onErrorCode"]),
                      "    cancelErrorCodes = %s" % json.dumps(rule["cancelErrorCodes"])]
    return "\n".join(lines) + "\n"


def metadata(driver):
    """gpu_metadata.json as metadata-collector writes it (NVML's 8-digit PCI domains), for GPU only,
    whose NVLink 3 goes to port SWITCH['link'] of the NVSwitch."""
    return {"version": "1.0", "timestamp": "2026-12-01T00:00:00Z", "node_name": NODE, "driver_version": driver,
            "chassis_serial": None, "nvswitches": ["0000" + SWITCH["pci"]],
            "gpus": [{"gpu_id": GPU["gpu_id"], "uuid": GPU["uuid"], "pci_address": "0000" + GPU["pci"],
                      "serial_number": "1650924060001", "device_name": "NVIDIA GB200",
                      "nvlinks": [{"link_id": 3, "remote_pci_address": "0000" + SWITCH["pci"],
                                   "remote_link_id": SWITCH["link"]}]}]}


def nvl5_lines():
    """(id, records) per NVLink5 decode row, branch and error status: a line that row decodes."""
    out = []
    for number, row in enumerate(xc.NVL5_DECODE):
        code, subcode, v1, v2, statuses = row[:5]
        for branch, pattern in (("R570", v1), ("R575", v2)):
            for status in statuses or ("0x00000000",):
                params = {"event": subcode.split("/")[-1].replace(" ", "_"),
                          "intr_info": "%08x" % int(pattern.replace("-", "0"), 2), "error_status": status[2:]}
                out.append(("nvl5-%d-row%d-%s-%s" % (code, number, branch, status),
                            xc.render_xid_lines(code, GPU["pci"], uuid=GPU["uuid"], params=params)))
    # A line no row decodes: NONE, not CONTACT_SUPPORT.
    for code in xc.NVL5_CODES:
        out.append(("nvl5-%d-nomatch" % code, xc.render_xid_lines(
            code, GPU["pci"], uuid=GPU["uuid"], params={"intr_info": "0000ffff", "error_status": "00000400"})))
    return out


def catalog_records():
    """(id, records) for every record the catalog renders, as the fault agent renders them."""
    out = [("xid-%d" % code, xc.render_xid_lines(code, GPU["pci"], uuid=GPU["uuid"])) for code in xc.codes()]
    out += [("xid-154-%s" % action.replace(" ", "-"),
             xc.render_xid_lines(154, GPU["pci"], uuid=GPU["uuid"], recovery_action=action))
            for action in xc.RECOVERY_ACTIONS if action != xc.DEFAULT_RECOVERY_ACTION]
    out += [("sxid-%d" % code, xc.render_sxid_lines(code, SWITCH["pci"], switch=SWITCH["index"], link=SWITCH["link"]))
            for code in xc.sxid_codes()]
    return out


def journal_entries(texts):
    """The journal entries for texts the agent writes to /dev/kmsg (one write each): the kernel's
    devkmsg_write and /dev/kmsg read format, then journald's dev_kmsg_record."""
    out = []
    for seq, text in enumerate(texts):
        facility, level, body = kmsg_journal.devkmsg_write(agent.kmsg_payload(text))
        record = kmsg_journal.kmsg_read_format(facility, level, seq, 1000000 + seq, body)
        out.append(dict((name, value.decode()) for name, value in kmsg_journal.dev_kmsg_record(record)[1]))
    return out


def entries(records, form):
    """The journal entries of records the agent writes in a record form (its record_text)."""
    return journal_entries([agent.record_text(record, form) for record in records])


SCENARIOS = (  # name, metadata, record form, injections
    ("metadata, driver R570", metadata(DRIVERS["R570"]), "journald", "all"),
    ("metadata, driver R575", metadata(DRIVERS["R575"]), "journald", "all"),
    ("no GPU metadata", None, "journald", "all"),
    ("record form dmesg", metadata(DRIVERS["R570"]), "dmesg", "catalog"),
)


@pytest.fixture(scope="module")
def decided():
    """NVSentinel's results and the inputs, per scenario: {name: (metadata, {id: (messages, result)})}."""
    monitor, connector = chart()
    binary = run([BUILD]).strip()
    plan, scenarios = {}, []
    for name, meta, form, which in SCENARIOS:
        injections = catalog_records() + (nvl5_lines() if which == "all" else [])
        plan[name] = (meta, dict((ident, [e["MESSAGE"] for e in entries(records, form)])
                                 for ident, records in injections))
        scenarios.append({"name": name, "metadata": meta, "injections": [
            {"id": ident, "entries": entries(records, form)} for ident, records in injections]})
    request = {"node": NODE, "checks": monitor["enabledChecks"],
               "cancellations_toml": cancellations_toml(monitor["cancellations"]),
               "max_condition_message_length": connector["maxNodeConditionMessageLength"],
               "compacted_message_length": connector["compactedHealthEventMsgLen"], "scenarios": scenarios}
    output = json.loads(run([binary], input=json.dumps(request)))
    results = {}
    for scenario in output["scenarios"]:
        meta, messages = plan[scenario["name"]]
        results[scenario["name"]] = (meta, scenario, dict(
            (r["id"], (messages[r["id"]], r)) for r in scenario["injections"]))
    return results


def published(event):
    """A health event NVSentinel published, in the catalog's terms."""
    entities = dict((e["type"], e["value"]) for e in event["entities"])
    return {"check": event["check_name"], "error_code": ",".join(event["error_code"]),
            "action": event["recommended_action"], "fatal": event["is_fatal"], "healthy": event["is_healthy"],
            "pci": entities.get("PCI"), "gpu_uuid": entities.get("GPU_UUID")}


KEYS = ("check", "error_code", "action", "fatal", "healthy", "pci", "gpu_uuid")


@pytest.mark.parametrize("form", ["journald", "dmesg"])
def test_the_catalogs_journal_model_agrees_with_the_node_journal_bridge(form):
    """journal_message (what nvsentinel_detection expects NVSentinel to read) against the bridge's
    rules, for every record of every catalog XID and SXid."""
    records = [r for _code, rs in catalog_records() for r in rs]
    texts = [agent.record_text(record, form) for record in records]
    assert [xc.journal_message(text)[1] for text in texts] == [e["MESSAGE"] for e in journal_entries(texts)]
    assert all(e["_TRANSPORT"] == "kernel" for e in journal_entries(texts))


def test_the_catalog_knows_the_charts_checks_and_cancellations():
    monitor = chart()[0]
    assert tuple(monitor["enabledChecks"]) == xc.NVSENTINEL_CHECKS
    rules = dict((rule["onErrorCode"], tuple(rule["cancelErrorCodes"]))
                 for check in monitor["cancellations"] if check["enabled"] and check["name"] == xc.NVSENTINEL_XID_CHECK
                 for rule in check["rules"])
    assert rules == dict(xc.NVSENTINEL_CANCELLATIONS)


@pytest.mark.parametrize("scenario", [s[0] for s in SCENARIOS])
def test_nvsentinel_publishes_the_events_the_catalog_expects(decided, scenario):
    meta, results = decided[scenario][0], decided[scenario][2]
    mismatches = []
    for ident, (messages, result) in results.items():
        expected = [dict((k, e[k]) for k in KEYS) for e in xc.nvsentinel_events(messages, meta)]
        observed = [published(e) for e in result["health_events"]]
        if expected != observed:
            mismatches.append("%s:\n  catalog:    %s\n  NVSentinel: %s" % (ident, expected, observed))
        if xc.nvsentinel_stalls(messages, meta) != result["stalled"]:
            mismatches.append("%s: stalls on %s, the catalog says %s" % (
                ident, result["stalled"], xc.nvsentinel_stalls(messages, meta)))
    assert not mismatches, "%d of %d injections differ:\n%s" % (len(mismatches), len(results), "\n".join(mismatches))


@pytest.mark.parametrize("scenario", [s[0] for s in SCENARIOS])
def test_conditions_and_events_read_back_as_the_catalog_expects(decided, scenario):
    meta, output, results = decided[scenario]
    baseline = output["startup"]["conditions"]
    # Start-up: a monitor without state clears each check's condition (status False, no entry).
    assert sorted(c["type"] for c in baseline) == sorted(xc.NVSENTINEL_CHECKS)
    assert all(c["status"] == "False" and c["reason"] == c["type"] + "IsHealthy" for c in baseline), baseline
    mismatches = []
    for ident, (messages, result) in results.items():
        conditions = [dict(c) for c in result["conditions"]]
        events = [{"reason": e["reason"], "message": e["message"], "type": e["type"],
                   "involvedObject": {"kind": e["involved_kind"], "name": e["involved_name"]}}
                  for e in result["events"] if e["namespace"] == nvsentinel.EVENT_NAMESPACE]
        seen = nvsentinel.observe(xc.nvsentinel_events(messages, meta), conditions, events, node=NODE,
                                  baseline=baseline)
        if seen["mismatches"]:
            mismatches.append("%s: %s; extra: %s" % (ident, [(nvsentinel.describe(r["expected"]), r["problems"])
                                                             for r in seen["rows"] if not r["match"]], seen["extra"]))
    assert not mismatches, "%d of %d injections differ:\n%s" % (len(mismatches), len(results), "\n".join(mismatches))


def test_what_the_catalog_records_show(decided):
    """The facts the drills rely on, as NVSentinel's code showed them."""
    with_meta, r575, without, dmesg = (decided[name][2] for name in (
        "metadata, driver R570", "metadata, driver R575", "no GPU metadata", "record form dmesg"))

    def events(results, ident):
        return [published(e) for e in results[ident][1]["health_events"]]

    # XID 79: two events, both RESTART_BM, both node conditions.
    assert [(e["check"], e["error_code"], e["action"]) for e in events(with_meta, "xid-79")] == [
        ("SysLogsXIDError", "79", "RESTART_BM"), ("SysLogsGPUFallenOff", "GPU_FALLEN_OFF_BUS", "RESTART_BM")]
    assert sorted(c["type"] for c in with_meta["xid-79"][1]["conditions"] if c["status"] == "True") == [
        "SysLogsGPUFallenOff", "SysLogsXIDError"]
    # NVLink5: error code with the subcode, decided by the driver branch.
    assert events(with_meta, "xid-145")[0]["error_code"] == "145.RLW_REMAP"
    assert events(with_meta, "xid-145")[0]["action"] == "COMPONENT_RESET"
    assert events(r575, "xid-145")[0]["action"] == "NONE"
    assert all(events(with_meta, "nvl5-%d-nomatch" % code)[0]["action"] == "NONE" for code in xc.NVL5_CODES)
    # Without GPU metadata: COMPONENT_RESET becomes RESTART_VM, the UUID comes from the driver's
    # "GPU at PCI" line, SXids give no event...
    assert events(without, "xid-48")[0]["action"] == "RESTART_VM"
    assert events(without, "xid-48")[0]["gpu_uuid"] == GPU["uuid"]
    assert all(not events(without, "sxid-%d" % code) for code in xc.sxid_codes())
    # ... and stall the monitor: it cannot get past the SXid record.
    assert all(len(without["sxid-%d" % code][1]["stalled"]) == 1 for code in xc.sxid_codes())
    assert not any(pair[1]["stalled"] for pair in with_meta.values())
    assert events(with_meta, "sxid-24007")[0]["action"] == "CONTACT_SUPPORT"
    # A non-fatal XID is an Event, not a condition.
    assert [e["reason"] for e in with_meta["xid-13"][1]["events"]] == ["SysLogsXIDErrorIsNotHealthy"]
    assert not [c for c in with_meta["xid-13"][1]["conditions"] if c["status"] == "True"]
    # The agent's dmesg record form: NVSentinel sees nothing at all.
    assert not [ident for ident, pair in dmesg.items() if pair[1]["health_events"]]
