"""Unit tests of the GPU health agent, files/healthcheck/gpu_health_agent.py.

The agent is loaded by file path with plugins/module_utils on sys.path, the way it runs from its
ConfigMap beside xid_catalog.py and node_marks.py. Kernel log records come from the catalog's own
renderer (what the fault agent writes); the Kubernetes API is an in-memory fake with JSON merge
patch and resourceVersion semantics; tools are fakes behind the agent's probe.
"""
import copy
import datetime
import importlib.util
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULE_UTILS = ROOT / "plugins" / "module_utils"
for _path in (str(MODULE_UTILS), str(ROOT / "files" / "common")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

_spec = importlib.util.spec_from_file_location("gpu_health_agent", ROOT / "files" / "healthcheck" / "gpu_health_agent.py")
agent_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agent_mod)
xid_catalog = agent_mod.xid_catalog
node_marks = agent_mod.node_marks

from detectors import AWS_XID_GREP, AWS_SXID_GREP, aws_code  # noqa: E402  pylint: disable=wrong-import-position

PREFIX = "gpu-healthcheck.aws-samples.io/"
TAINT_KEY = PREFIX + "unhealthy"
MAINTENANCE = {"key": PREFIX + "maintenance", "value": "sweep", "effect": "NoSchedule"}
NOW = datetime.datetime(2026, 11, 22, 18, 48, 0, tzinfo=datetime.timezone.utc)
PCI = "0000:75:00.0"
LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def config(**overrides):
    return agent_mod.validate_config(dict(overrides))[0]


def file_payload(record):
    """What the fault agent appends for one record (journald form, priority err)."""
    return b"<3>" + xid_catalog.kmsg_text(record).encode("ascii") + b"\n"


def kmsg_read(record, seq=100):
    """What one read of /dev/kmsg returns for a user-space write of the journald form."""
    text = xid_catalog.kmsg_text(record).encode("ascii")
    escaped = b"".join(b"\\x%02x" % byte if byte < 32 or byte >= 127 or byte == 0x5C else bytes((byte,)) for byte in text)
    return b"11,%d,123456789,-;" % seq + escaped + b"\n"


def journal_line(record):
    """journalctl -o json for a user-space kmsg record: journald splits 'IDENT: ' off."""
    text = xid_catalog.kmsg_text(record)
    ident, rest = text.split(": ", 1)
    return json.dumps({"MESSAGE": rest, "SYSLOG_IDENTIFIER": ident, "_TRANSPORT": "kernel",
                       "__CURSOR": "s=abc;i=%d" % len(text), "__REALTIME_TIMESTAMP": "1795286880000000"})


def xid_records(code, pci=PCI, **kwargs):
    return xid_catalog.render_xid_lines(code, pci, **kwargs)


def observations_of(payload):
    records, rest = agent_mod.split_file_records(payload)
    assert rest == b""
    return [obs for record in records for obs in agent_mod.record_observations(record)]


# ============================================================================================
# Record parsing: /dev/kmsg, journald, plain file
# ============================================================================================

def test_kmsg_record_with_escapes_and_continuation_lines():
    data = (b"3,4711,98765432,-;NVRM: NVRM: Xid (PCI:0000:75:00): 79, pid='<unknown>', name=<unknown>, "
            b"GPU has fallen off the bus. \\x5c done\n SUBSYSTEM=pci\n DEVICE=+pci:0000:75:00.0\n")
    (record,) = agent_mod.parse_kmsg(data)
    assert record.text.endswith("GPU has fallen off the bus. \\ done")
    assert record.meta["priority"] == 3 and record.meta["seq"] == 4711 and record.meta["usec"] == 98765432
    assert record.meta["fields"] == {"SUBSYSTEM": "pci", "DEVICE": "+pci:0000:75:00.0"}
    (obs,) = agent_mod.record_observations(record)
    assert obs["xid"] == 79 and obs["pci"] == "0000:75:00"


def test_kmsg_multi_line_record_arrives_escaped():
    fallen = xid_records(79)[-1]          # the driver's three-line fallen-off-the-bus record
    assert "\n" in fallen
    (record,) = agent_mod.parse_kmsg(kmsg_read(fallen))
    assert record.text == xid_catalog.kmsg_text(fallen)
    assert agent_mod.record_observations(record) == []   # no Xid in it: the XID line carries the fault


def test_kmsg_several_records_and_a_bad_header():
    data = kmsg_read(xid_records(13)[0], 1) + b"garbage without header\n SUBSYSTEM=x\n" + kmsg_read(xid_records(48)[0], 2)
    records = agent_mod.parse_kmsg(data)
    assert [record.meta["seq"] for record in records] == [1, 2]
    assert [agent_mod.record_observations(r)[0]["xid"] for r in records] == [13, 48]
    assert records[0].meta["fields"] == {}


def test_journal_identifier_split_is_rebuilt():
    record = agent_mod.parse_journal(journal_line(xid_records(79)[0]))
    assert record.text == xid_catalog.kmsg_text(xid_records(79)[0])
    assert record.meta["cursor"].startswith("s=abc") and record.meta["usec"] == 1795286880000000
    assert agent_mod.record_observations(record)[0]["xid"] == 79
    # A record written once ("NVRM: Xid ...") loses NVRM to the identifier: it comes back.
    single = json.dumps({"MESSAGE": "Xid (PCI:0000:75:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable",
                         "SYSLOG_IDENTIFIER": "NVRM"})
    assert agent_mod.record_observations(agent_mod.parse_journal(single))[0]["xid"] == 48


def test_journal_kernel_records_pid_and_byte_arrays():
    kernel = json.dumps({"MESSAGE": "NVRM: Xid (PCI:0000:b5:00): 13, pid=1, name=x, Graphics", "SYSLOG_IDENTIFIER": "kernel"})
    assert agent_mod.parse_journal(kernel).text.startswith("NVRM: Xid")
    with_pid = json.dumps({"MESSAGE": "hello", "SYSLOG_IDENTIFIER": "app", "SYSLOG_PID": "42"})
    assert agent_mod.parse_journal(with_pid).text == "app[42]: hello"
    raw = "NVRM: Xid (PCI:0000:b5:00): 79, \x1b GPU has fallen off the bus."
    as_bytes = json.dumps({"MESSAGE": list(raw.encode()), "SYSLOG_IDENTIFIER": [107, 101, 114, 110, 101, 108]})
    record = agent_mod.parse_journal(as_bytes.encode())
    assert record.text == raw and agent_mod.record_observations(record)[0]["xid"] == 79
    assert agent_mod.parse_journal(json.dumps({"MESSAGE": ["a", "b"]})).text == "a\nb"
    assert agent_mod.parse_journal(json.dumps({"PRIORITY": "3"})) is None
    with pytest.raises(ValueError):
        agent_mod.parse_journal(b"Failed to open journal")
    with pytest.raises(ValueError):
        agent_mod.parse_journal(b"[1, 2]")


def test_file_records_fault_agent_forms_multi_line_and_partial():
    records = xid_records(79, uuid="GPU-12345678-1234-1234-1234-123456789abc")
    data = b"".join(file_payload(record) for record in records) + b"<3>NVRM: NVRM: Xid (PCI:0000:75:00): 4"
    parsed, rest = agent_mod.split_file_records(data)
    assert rest == b"<3>NVRM: NVRM: Xid (PCI:0000:75:00): 4"
    assert [record.text for record in parsed] == [xid_catalog.kmsg_text(record) for record in records]
    assert all(record.meta["priority"] == 3 for record in parsed)
    found = [obs for record in parsed for obs in agent_mod.record_observations(record)]
    assert [(obs["kind"], obs["xid"], obs["pci"]) for obs in found] == [("xid", 79, "0000:75:00")]
    # Lines without a priority prefix (dmesg text) each count; CRLF is tolerated.
    dmesg = b"NVRM: Xid (PCI:0000:b5:00): 13, pid=9, name=a, x\r\nNVRM: Xid (PCI:0000:b6:00): 48, pid=9, name=a, y\n"
    assert [obs["xid"] for obs in observations_of(dmesg)] == [13, 48]


@pytest.mark.parametrize("code", xid_catalog.codes())
def test_every_catalog_xid_is_read_from_all_three_sources(code):
    """Whatever the fault agent injects is found, with the code the AWS suite's sed extracts."""
    records = xid_records(code)
    xid_lines = [record for record in records if AWS_XID_GREP.search(record)]
    expected = [int(aws_code(xid_catalog.kmsg_text(line))) for line in xid_lines]
    from_file = observations_of(b"".join(file_payload(record) for record in records))
    from_kmsg = [obs for record in records for r in agent_mod.parse_kmsg(kmsg_read(record))
                 for obs in agent_mod.record_observations(r)]
    from_journal = [obs for record in records for obs in agent_mod.record_observations(agent_mod.parse_journal(journal_line(record)))]
    for found in (from_file, from_kmsg, from_journal):
        assert [obs["xid"] for obs in found] == expected == [code]
        assert found[0]["pci"] == xid_catalog.xid_pci(PCI)


@pytest.mark.parametrize("code", xid_catalog.sxid_codes())
def test_every_catalog_sxid_is_read(code):
    records = xid_catalog.render_sxid_lines(code, "0000:05:00.0", switch=3, link=12)
    found = observations_of(b"".join(file_payload(record) for record in records))
    assert all(AWS_SXID_GREP.search(record) for record in records)
    assert {(obs["kind"], obs["sxid"], obs["pci"], obs["switch"]) for obs in found} == {("sxid", code, "0000:05:00.0", 3)}
    assert found[0]["fatal"] is xid_catalog.get_sxid(code)["fatal"]


def test_line_parsing_edges():
    assert agent_mod.parse_line("NVRM: GPU at PCI:0000:75:00: GPU-12345678-1234-1234-1234-123456789abc") is None
    assert agent_mod.parse_line("NVRM: GPU 0000:75:00.0: GPU has fallen off the bus.") is None
    assert agent_mod.parse_line("usb 1-1: new device") is None
    # grep -i: case does not matter for NVRM; the code expression wants "Xid" as the driver writes it.
    assert agent_mod.parse_line("nvrm: Xid (PCI:0000:01:00): 31, pid=1, name=a, MMU Fault")["xid"] == 31
    assert agent_mod.parse_line("NVRM: XID (PCI:0000:01:00): 31, MMU Fault")["xid"] is None
    # The code is what follows the LAST "Xid ...):" (greedy, as sed), not the PCI bus.
    assert agent_mod.parse_line("NVRM: NVRM: Xid (PCI:0000:01:00): 119, pid=1, name=a, Timeout")["xid"] == 119
    long_line = "NVRM: " + "Xid (" * 5000
    started = time.monotonic()
    assert agent_mod.parse_line(long_line)["xid"] is None
    assert time.monotonic() - started < 1.0


# ============================================================================================
# Classification
# ============================================================================================

@pytest.mark.parametrize("code, severity", [(13, "MONITOR"), (48, "RESET"), (79, "REBOOT"), (54, "ISOLATE"),
                                            (74, "RESET"), (94, "MONITOR"), (119, "RESET")])
def test_catalog_severities(code, severity):
    (obs,) = observations_of(b"".join(file_payload(record) for record in xid_records(code)))
    assert agent_mod.finding_severity(obs) == severity


@pytest.mark.parametrize("action, severity", [("None", "MONITOR"), ("GPU Reset Required", "RESET"),
                                              ("Node Reboot Required", "REBOOT"), ("Drain and Reset", "RESET"),
                                              ("Drain P2P", "RESET")])
def test_xid_154_follows_its_recovery_action(action, severity):
    (obs,) = observations_of(b"".join(file_payload(r) for r in xid_records(154, recovery_action=action)))
    assert obs["xid"] == 154 and agent_mod.finding_severity(obs) == severity


def test_unknown_code_and_overrides():
    obs = agent_mod.parse_line("NVRM: Xid (PCI:0000:75:00): 999, pid='<unknown>', name=<unknown>, Something new")
    assert agent_mod.finding_severity(obs) == "MONITOR"
    cfg = config(xid_severity_overrides={"999": "ISOLATE", "79": "MONITOR", "154": "REBOOT"})
    overrides = cfg["xid_severity_overrides"]
    assert overrides == {999: "ISOLATE", 79: "MONITOR", 154: "REBOOT"}
    assert agent_mod.finding_severity(obs, overrides) == "ISOLATE"
    assert agent_mod.xid_severity(79, "", overrides) == "MONITOR"
    assert agent_mod.xid_severity(154, "(None)", overrides) == "REBOOT"
    assert agent_mod.xid_severity(48, "", overrides) == "RESET"
    sxid = agent_mod.parse_line("nvidia-nvswitch1: SXid (PCI:0000:05:00.0): 24007, Fatal, Link 03 sourcetrack")
    assert agent_mod.finding_severity(sxid, overrides) == "MONITOR" and sxid["fatal"] is True


def test_vocabularies_match_node_marks():
    assert agent_mod.SEVERITIES == node_marks.AWS_SEVERITIES
    assert set(agent_mod.STATUS_OF.values()) <= set(node_marks.AWS_STATUSES)
    assert PREFIX + agent_mod.STATUS_LABEL == node_marks.AWS_STATUS_LABEL
    assert PREFIX + agent_mod.UNHEALTHY_TAINT == node_marks.AWS_UNHEALTHY_TAINT["key"]
    assert agent_mod.MARKING_SEVERITIES == ("RESET", "REBOOT", "ISOLATE")


# ============================================================================================
# Configuration
# ============================================================================================

def test_config_defaults_and_merge():
    cfg, notes = agent_mod.validate_config({})
    assert cfg == agent_mod.default_config() and notes == []
    assert cfg["taint_min_severity"] == "RESET" and cfg["cordon"] is False and cfg["interval_seconds"] == 60
    cfg, notes = agent_mod.validate_config({
        "checks": {"efa": False, "dcgm": True}, "interval_seconds": 2.5, "extra": 1,
        "instance_profiles": {"p4de.24xlarge": {"gpus": 8, "efa": 4, "nvswitch": 6}, "p5.48xlarge": {"gpus": 8}},
        "cordon": True, "cordon_min_severity": "ISOLATE", "prefix": "health.example.com/"})
    assert cfg["checks"]["efa"] is False and cfg["checks"]["gpu_count"] is True
    assert cfg["instance_profiles"]["p4de.24xlarge"] == {"gpus": 8, "efa": 4}
    assert cfg["instance_profiles"]["p5.48xlarge"] == {"gpus": 8}
    assert cfg["instance_profiles"]["p4d.24xlarge"] == {"gpus": 8, "efa": 4, "nvlink": True}
    assert cfg["cordon"] is True and cfg["cordon_min_severity"] == "ISOLATE" and cfg["prefix"] == "health.example.com/"
    assert len(notes) == 3 and any("'extra'" in note for note in notes) and any("dcgm" in note for note in notes)


@pytest.mark.parametrize("raw, words", [
    ([], "JSON object"),
    ({"taint_min_severity": "MONITOR"}, "never taint"),
    ({"taint_min_severity": "PASS"}, "taint_min_severity"),
    ({"cordon_min_severity": "reboot"}, "cordon_min_severity"),
    ({"prefix": "gpu-healthcheck.aws-samples.io"}, "prefix"),
    ({"prefix": "Bad_Prefix/"}, "prefix"),
    ({"interval_seconds": 0}, "interval_seconds"),
    ({"interval_seconds": True}, "interval_seconds"),
    ({"interval_seconds": "60"}, "interval_seconds"),
    ({"cordon": "yes"}, "cordon"),
    ({"checks": {"ecc": 1}}, "checks.ecc"),
    ({"checks": ["ecc"]}, "checks"),
    ({"instance_profiles": {"p5.48xlarge": {"gpus": -1}}}, "p5.48xlarge.gpus"),
    ({"instance_profiles": {"p5.48xlarge": 8}}, "p5.48xlarge"),
    ({"xid_severity_overrides": {"x79": "REBOOT"}}, "x79"),
    ({"xid_severity_overrides": {"79": "FATAL"}}, "xid_severity_overrides.79"),
])
def test_config_errors(raw, words):
    with pytest.raises(agent_mod.ConfigError, match=re.escape(words)):
        agent_mod.validate_config(raw)


def write_config(path, raw):
    """Replace the file atomically, as kubelet and the local runner do."""
    temporary = str(path) + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(raw if isinstance(raw, str) else json.dumps(raw))
    os.replace(temporary, path)


def test_config_file_reload_and_rejects(tmp_path, capsys):
    path = tmp_path / "config.json"
    settings = agent_mod.ConfigFile(str(path))
    assert settings.poll() is None and settings.current == agent_mod.default_config()   # missing: defaults
    assert "running with the defaults" in capsys.readouterr().err
    assert settings.poll() is None and capsys.readouterr().err == ""                     # logged once
    write_config(path, {"taint_min_severity": "REBOOT"})
    old, new = settings.poll()
    assert old["taint_min_severity"] == "RESET" and new["taint_min_severity"] == "REBOOT"
    assert settings.poll() is None
    write_config(path, "{not json")
    assert settings.poll() is None and settings.current["taint_min_severity"] == "REBOOT"
    assert "config_rejected" in capsys.readouterr().err
    write_config(path, {"taint_min_severity": "MONITOR"})
    assert settings.poll() is None and settings.current["taint_min_severity"] == "REBOOT"
    write_config(path, {"taint_min_severity": "ISOLATE", "cordon": True})
    assert settings.poll()[1]["taint_min_severity"] == "ISOLATE" and settings.current["cordon"] is True


# ============================================================================================
# Checks
# ============================================================================================

R = agent_mod.tool_result
ABSENT = R(found=False, returncode=None, error="nvidia-smi not found")
SMI_L = "".join("GPU %d: NVIDIA H100 80GB HBM3 (UUID: GPU-%08d-1111-2222-3333-444444444444)\n" % (i, i) for i in range(8))


def test_gpu_count():
    check = agent_mod.eval_gpu_count
    assert check(R(SMI_L), None, 8, "p5.48xlarge")["status"] == "pass"
    missing = check(R("\n".join(SMI_L.splitlines()[:7])), None, 8, "p5.48xlarge")
    assert (missing["status"], missing["severity"], missing["count"]) == ("fail", "REBOOT", 7)
    assert check(R(SMI_L), None, 4, "p4.test")["severity"] == "MONITOR"
    assert check(R(SMI_L), None, None, "g5.xlarge")["status"] == "skipped"
    assert check(ABSENT, None, 8, "p5.48xlarge")["detail"].startswith("nvidia-smi not found")
    assert check(ABSENT, 7, 8, "p5.48xlarge")["severity"] == "REBOOT"     # the driver's /proc entries count
    failed = check(R("", 9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."), None, 8, "p5")
    assert failed["severity"] == "REBOOT" and "status 9" in failed["detail"]
    assert check(R(returncode=None, timed_out=True), None, 8, "p5")["severity"] == "MONITOR"


def test_gpu_state():
    normal = "0, 00000000:53:00.0, P0, 35, 70.00 W\n1, 00000000:64:00.0, P0, 36, 71.00 W\n"
    assert agent_mod.eval_gpu_state(R(normal))["status"] == "pass"
    assert agent_mod.eval_gpu_state(R(normal + "2, 00000000:75:00.0, [GPU requires reset], [N/A], [N/A]\n"))["severity"] == "RESET"
    assert agent_mod.eval_gpu_state(R(normal + "2, 00000000:75:00.0, [Unknown Error], [Unknown Error], x\n"))["severity"] == "REBOOT"
    assert agent_mod.eval_gpu_state(R(normal + "2, 00000000:75:00.0, P0, [ERR!], 70 W\n"))["severity"] == "MONITOR"
    lost = R(normal, 15, "Unable to determine the device handle for GPU0000:75:00.0: Unknown Error")
    assert agent_mod.eval_gpu_state(lost)["severity"] == "REBOOT"
    assert agent_mod.eval_gpu_state(ABSENT)["status"] == "skipped"


def test_ecc_and_retired_pages():
    assert agent_mod.eval_ecc(R("0, 0\n1, 0\n"))["status"] == "pass"
    assert agent_mod.eval_ecc(R("0, 0\n1, 3\n"))["severity"] == "RESET"
    assert agent_mod.eval_ecc(R("0, [N/A]\n1, [N/A]\n"))["status"] == "skipped"
    assert agent_mod.eval_ecc(R("", 2, "Field \"ecc.errors\" is not a valid field to query."))["status"] == "skipped"
    assert agent_mod.eval_ecc(R("", 15, "Unknown Error"))["severity"] == "MONITOR"   # gpu_state judges that
    unsupported = R("", 2, 'Field "remapped_rows.pending" is not a valid field to query.')

    def retired(pages, rows, sbe_max=60):
        return agent_mod.eval_retired_pages(pages, rows, sbe_max)
    assert retired(R("0, No, 0, 0\n1, No, 60, 0\n"), unsupported)["status"] == "pass"
    assert retired(R("0, No, 0, 0\n1, Yes, 0, 0\n"), unsupported)["severity"] == "REBOOT"
    # The AWS suite's check 0: double-bit retired pages isolate, single-bit ones above 60 warn.
    dbe = retired(R("0, No, 0, 0\n1, No, 2, 1\n"), unsupported)
    assert dbe["severity"] == "ISOLATE" and "GPU 1: 1 page(s) retired for double-bit ECC errors" in dbe["detail"]
    sbe = retired(R("0, No, 61, 0\n"), unsupported)
    assert sbe["severity"] == "MONITOR" and "61 page(s) retired for single-bit ECC errors (threshold 60)" in sbe["detail"]
    assert retired(R("0, No, 61, 0\n"), unsupported, sbe_max=61)["status"] == "pass"
    assert retired(R("0, [N/A], [N/A], [N/A]\n"), R("0, Yes, No\n"))["severity"] == "RESET"
    assert retired(R("0, [N/A], [N/A], [N/A]\n"), R("0, No, Yes\n"))["severity"] == "ISOLATE"
    assert retired(R("0, [N/A], [N/A], [N/A]\n"), R("0, No, No\n"))["status"] == "pass"
    assert retired(R("0, [N/A], [N/A], [N/A]\n"), R("0, [N/A], [N/A]\n"))["status"] == "skipped"
    assert retired(ABSENT, ABSENT) == agent_mod.skipped("nvidia-smi not found")


TOPO_H100 = (
    "\tGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
    "GPU0\t X \tNV18\tNV18\tSYS\t0-47\t0\t\tN/A\n"
    "GPU1\tNV18\t X \tNV18\tSYS\t0-47\t0\t\tN/A\n"
    "GPU2\tNV18\tNV18\t X \tSYS\t48-95\t1\t\tN/A\n"
    "NIC0\tSYS\tSYS\tSYS\t X \n\nLegend:\n\n  X    = Self\n  NV#  = Connection traversing a bonded set of # NVLinks\n")


def test_persistence_topology_and_fabric():
    persistence = agent_mod.eval_persistence
    assert persistence(R("0, Enabled\n1, Enabled\n"))["status"] == "pass"
    off = persistence(R("0, Enabled\n1, Disabled\n"))
    assert off["severity"] == "MONITOR" and off["disabled"] == 1 and "GPU 1" in off["detail"]
    assert persistence(R("0, [N/A]\n"))["status"] == "skipped"
    assert persistence(ABSENT)["status"] == "skipped"
    topology = agent_mod.eval_topology
    ok = topology(R(TOPO_H100), 3, True)
    assert ok["status"] == "pass" and ok["gpus"] == 3 and ok["nvlink_paths"] == 6
    assert topology(R(TOPO_H100), 4, True)["severity"] == "REBOOT"          # a GPU missing, as gpu_count
    unlinked = topology(R(TOPO_H100.replace("GPU1\tNV18\t X \tNV18", "GPU1\tNV18\t X \tX")), 3, True)
    assert unlinked["severity"] == "ISOLATE" and "GPU1-GPU2" in unlinked["detail"]
    pcie = TOPO_H100.replace("NV18", "SYS")
    assert topology(R(pcie), 3, True)["severity"] == "ISOLATE"             # NVLink expected, none
    assert topology(R(pcie), 3, False)["status"] == "pass"                 # L40S: PCIe only
    assert topology(R(""), 3, True)["status"] == "skipped"
    assert topology(R("", 9, "NVML failure"), 3, True)["severity"] == "MONITOR"
    fabric = agent_mod.eval_fabric
    assert fabric(R("0, Completed, Success\n1, Completed, Success\n"), True)["status"] == "pass"
    waiting = fabric(R("0, Completed, Success\n1, In Progress, N/A\n"), True)
    assert waiting["severity"] == "RESET" and "GPU 1: In Progress/N/A" in waiting["detail"]
    assert fabric(R("0, Not Supported, Not Supported\n"), True)["status"] == "skipped"
    assert fabric(R("", 2, 'Field "fabric.state" is not a valid field to query.'), True)["status"] == "skipped"
    assert fabric(None, False) == agent_mod.skipped("the instance profile expects no NVLink fabric")


def test_efa_and_nvlink():
    assert agent_mod.eval_efa(32, "/sys/class/infiniband", 32, "p5.48xlarge")["status"] == "pass"
    assert agent_mod.eval_efa(31, "/sys/class/infiniband", 32, "p5.48xlarge")["severity"] == "REBOOT"
    assert agent_mod.eval_efa(None, "/sys/class/infiniband missing and fi_info not found", 32, "p5")["status"] == "skipped"
    assert agent_mod.eval_efa(4, "fi_info -p efa", None, None)["status"] == "skipped"
    links = "GPU 0: NVIDIA H100 (UUID: GPU-x)\n\t Link 0: 26.562 GB/s\n\t Link 1: 26.562 GB/s\n"
    assert agent_mod.eval_nvlink(R(links))["status"] == "pass"
    bad = agent_mod.eval_nvlink(R(links + "GPU 1: NVIDIA H100 (UUID: GPU-y)\n\t Link 0: <inactive>\n"))
    assert (bad["severity"], bad["inactive"], bad["links"]) == ("RESET", 1, 3) and "GPU 1 link 0" in bad["detail"]
    assert agent_mod.eval_nvlink(R(""))["status"] == "skipped"
    assert agent_mod.eval_nvlink(ABSENT) == agent_mod.skipped("nvidia-smi not found")


class FakeRunner:
    """Answers tool argv lists from a table; records every call."""

    def __init__(self, answers=None):
        self.answers = answers or {}
        self.calls = []

    def __call__(self, argv, timeout=None):
        self.calls.append(list(argv))
        for prefix, answer in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return answer
        return R(found=False, returncode=None, error="%s not found" % argv[0])


def probe_at(root, runner):
    return agent_mod.Probe(str(root / "sys"), str(root / "proc" / "driver" / "nvidia"), runner)


def test_run_checks_without_tools_skips_with_reasons(tmp_path):
    runner = FakeRunner()
    results = agent_mod.run_checks(config(checks={"nvlink": False}), "p5.48xlarge", probe_at(tmp_path, runner))
    assert set(results) == set(agent_mod.CHECKS)
    assert all(entry["status"] == "skipped" for entry in results.values())
    assert results["gpu_count"]["detail"] == "nvidia-smi not found and no /proc/driver/nvidia/gpus"
    assert results["efa"]["detail"] == "%s missing and fi_info not found" % (tmp_path / "sys" / "class" / "infiniband")
    assert results["nvlink"]["detail"] == "disabled in the configuration"
    assert results["ecc"]["detail"] == results["retired_pages"]["detail"] == "nvidia-smi not found"
    assert not any("dcgmi" in call[0] for call in runner.calls)   # no diagnostics, ever


def test_run_checks_with_tools_and_host_tree(tmp_path):
    ib = tmp_path / "sys" / "class" / "infiniband"
    for index in range(31):
        (ib / ("rdmap%ds0" % index) / "device").mkdir(parents=True)
        drivers = tmp_path / "drivers" / "efa"
        drivers.mkdir(parents=True, exist_ok=True)
        os.symlink(str(drivers), str(ib / ("rdmap%ds0" % index) / "device" / "driver"))
    (ib / "efa_31").mkdir()
    (ib / "mlx5_0" / "device").mkdir(parents=True)
    gpus = tmp_path / "proc" / "driver" / "nvidia" / "gpus"
    for index in range(8):
        (gpus / ("0000:%02x:00.0" % (0x53 + index))).mkdir(parents=True)
    runner = FakeRunner({("nvidia-smi", "-L"): R(SMI_L),
                         ("nvidia-smi", "--query-gpu=index,ecc.errors.uncorrected.volatile.total"): R("0, 0\n1, 2\n"),
                         ("nvidia-smi", "nvlink"): R("")})
    probe = probe_at(tmp_path, runner)
    assert probe.proc_gpu_count() == 8 and probe.efa_devices() == (32, str(ib))
    results = agent_mod.run_checks(config(), "p5.48xlarge", probe)
    assert results["gpu_count"]["status"] == "pass" and results["efa"]["status"] == "pass"
    assert results["ecc"]["severity"] == "RESET"
    assert results["gpu_state"]["status"] == "skipped"
    observations = agent_mod.check_observations(results)
    assert observations == [{"kind": "check", "check": "ecc", "severity": "RESET", "detail": results["ecc"]["detail"]}]


def test_efa_from_fi_info(tmp_path):
    fi_info = "provider: efa\n    fabric: efa\n    domain: rdmap16s27-rdm\nprovider: efa\n    domain: rdmap32s27-rdm\n"
    probe = probe_at(tmp_path, FakeRunner({("fi_info",): R(fi_info)}))
    assert probe.efa_devices() == (2, "fi_info -p efa")


def test_run_tool_real_processes(tmp_path):
    assert agent_mod.run_tool(["no-such-tool-here"]).found is False
    done = agent_mod.run_tool([sys.executable, "-c", "import sys; print('out'); sys.stderr.write('err'); sys.exit(3)"])
    assert (done.returncode, done.stdout.strip(), done.stderr) == (3, "out", "err")
    slow = agent_mod.run_tool([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert slow.timed_out and slow.returncode is None


# ============================================================================================
# Findings: sticky severity, clearing, restoring
# ============================================================================================

def xid_observation(code, pci="0000:75:00", **kwargs):
    (line,) = [r for r in xid_records(code, pci + ".0", **kwargs) if "Xid" in r]
    return agent_mod.parse_line(line)


def test_sticky_severity_against_later_milder_results():
    findings = agent_mod.Findings()
    findings.add([xid_observation(79)], NOW)
    findings.add_checks({"gpu_count": agent_mod.result("PASS", "8 GPUs present")}, NOW + datetime.timedelta(minutes=1))
    assert findings.severity() == "REBOOT"
    # XID 154 asking for a reboot, then one asking for nothing: two findings, REBOOT stays.
    other = agent_mod.Findings()
    other.add([xid_observation(154, recovery_action="Node Reboot Required")], NOW)
    before, after, added = other.add([xid_observation(154, recovery_action="None")], NOW)
    assert (before, after) == ("REBOOT", "REBOOT") and added[0][1] is True
    assert [f["severity"] for f in other.snapshot()] == ["REBOOT", "MONITOR"]
    # A check finding goes up, never down.
    findings.add_checks({"ecc": agent_mod.result("MONITOR", "a")}, NOW)
    findings.add_checks({"ecc": agent_mod.result("RESET", "b")}, NOW)
    findings.add_checks({"ecc": agent_mod.result("PASS", "c")}, NOW)
    findings.add_checks({"ecc": agent_mod.result("MONITOR", "d")}, NOW)
    ecc = [f for f in findings.snapshot() if f.get("check") == "ecc"][0]
    assert (ecc["severity"], ecc["detail"], ecc["count"]) == ("RESET", "b", 3)
    assert findings.latest_checks()["ecc"]["detail"] == "d"


def test_repeats_count_and_clear_before():
    findings = agent_mod.Findings()
    early, late = NOW - datetime.timedelta(hours=1), NOW + datetime.timedelta(minutes=5)
    findings.add([xid_observation(79)] * 3, early)
    findings.add([xid_observation(13, "0000:86:00")], late)
    (xid79,) = [f for f in findings.snapshot() if f["xid"] == 79]
    assert xid79["count"] == 3 and xid79["time"] == agent_mod.rfc3339(early)
    dropped = findings.clear_before(NOW)
    assert [f["xid"] for f in dropped] == [79]
    assert findings.severity() == "MONITOR"
    assert findings.clear_before(NOW) == []


def test_restore_from_results_annotation():
    findings = agent_mod.Findings()
    findings.add([xid_observation(79), xid_observation(48, "0000:86:00")], NOW)
    findings.add_checks({"efa": agent_mod.result("REBOOT", "31 of 32")}, NOW)
    exported = json.loads(json.dumps(findings.snapshot()))
    again = agent_mod.Findings()
    assert again.restore(exported + [{"kind": "bogus"}, "x", {"kind": "xid", "xid": "nan", "time": "x"}]) == 3
    assert again.snapshot() == findings.snapshot()
    assert again.restore(exported) == 0


def test_finding_cap_drops_mildest_oldest():
    findings = agent_mod.Findings()
    findings.add([xid_observation(79)], NOW)
    for index in range(agent_mod.MAX_FINDINGS + 5):
        findings.add([xid_observation(13, "0000:%02x:00" % (index % 256), )], NOW + datetime.timedelta(seconds=index))
    assert len(findings.items) <= agent_mod.MAX_FINDINGS
    assert findings.severity() == "REBOOT"


# ============================================================================================
# Mark computation
# ============================================================================================

def make_node(name="gpu-node-2", labels=None, annotations=None, taints=None, unschedulable=None, managed=None):
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "resourceVersion": "100",
                         "labels": dict({"node.kubernetes.io/instance-type": "p5.48xlarge"}, **(labels or {})),
                         "annotations": dict(annotations or {})},
            "spec": {}}
    if taints:
        node["spec"]["taints"] = copy.deepcopy(taints)
    if unschedulable is not None:
        node["spec"]["unschedulable"] = unschedulable
    if managed:
        node["metadata"]["managedFields"] = managed
    return node


def snapshot(*observations, when=NOW):
    findings = agent_mod.Findings()
    findings.add(list(observations), when)
    return findings.snapshot()


def plan(node, findings, cfg=None, **kwargs):
    return agent_mod.plan_marks(node, findings, {}, cfg or config(), NOW, {"pod": "agent-x"}, **kwargs)


def merge(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def test_monitor_never_taints():
    node = make_node()
    marks = plan(node, snapshot(xid_observation(13)))
    labels = marks.patch["metadata"]["labels"]
    assert labels[PREFIX + "status"] == "warn" and labels[PREFIX + "severity"] == "MONITOR"
    # The AWS suite's label format: ISO 8601 without the colons a label value cannot hold.
    assert LABEL_VALUE_RE.fullmatch(labels[PREFIX + "last-check"]) and labels[PREFIX + "last-check"] == "2026-11-22T184800Z"
    assert "spec" not in marks.patch and "resourceVersion" not in marks.patch["metadata"]
    assert json.loads(marks.patch["metadata"]["annotations"][PREFIX + "agent-marks"]) == \
        {"taint": False, "cordon": False, "labels": True}
    results = json.loads(marks.patch["metadata"]["annotations"][PREFIX + "results"])
    assert results["severity"] == "MONITOR" and results["findings"][0]["xid"] == 13 and results["agent"] == {"pod": "agent-x"}
    assert results["findings"][0]["pci"] == "0000:75:00" and results["findings"][0]["time"].startswith("2026-11-22T18:48:00")


def test_reset_and_above_taint_with_precondition():
    node = make_node(taints=[MAINTENANCE])
    marks = plan(node, snapshot(xid_observation(48)))
    assert marks.patch["metadata"]["resourceVersion"] == "100"
    assert marks.patch["spec"]["taints"] == [MAINTENANCE, {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    assert marks.patch["metadata"]["labels"][PREFIX + "status"] == "fail" and marks.taint is True
    assert "unschedulable" not in marks.patch["spec"]
    assert {change["mark"] for change in marks.changes} == {PREFIX + "status", PREFIX + "severity", "taint " + TAINT_KEY}
    # A threshold of REBOOT leaves a RESET finding untainted.
    assert "spec" not in plan(node, snapshot(xid_observation(48)), config(taint_min_severity="REBOOT")).patch


def test_cordon_only_when_configured():
    reboot = snapshot(xid_observation(79))
    assert "unschedulable" not in plan(make_node(), reboot).patch["spec"]
    cordoning = config(cordon=True)
    marks = plan(make_node(), reboot, cordoning)
    assert marks.patch["spec"]["unschedulable"] is True and marks.cordon is True
    assert "unschedulable" not in plan(make_node(), snapshot(xid_observation(48)), cordoning).patch["spec"]
    assert plan(make_node(), snapshot(xid_observation(54)), config(cordon=True, cordon_min_severity="ISOLATE")).cordon is True


NVSENTINEL_LABELS = {"k8saas.nvidia.com/cordon-by": "NVSentinel", "k8saas.nvidia.com/cordon-reason": "gpu-fatal",
                     "dgxc.nvidia.com/nvsentinel-state": "quarantined"}


def test_foreign_marks_are_never_removed():
    operator_taint = {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    node = make_node(labels=dict(NVSENTINEL_LABELS, team="ml-infra"), unschedulable=True,
                     taints=[MAINTENANCE, operator_taint, {"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
                     annotations={"quarantineHealthEvent": "{}", "owner": "ops"})
    marks = plan(node, [], config(cordon=True))
    assert "spec" not in marks.patch        # the unhealthy taint was not the agent's; the cordon is NVSentinel's
    assert set(marks.patch["metadata"]["labels"]) == {PREFIX + "status", PREFIX + "severity", PREFIX + "last-check"}
    assert set(marks.patch["metadata"]["annotations"]) == {PREFIX + "results", PREFIX + "agent-marks"}
    after = merge(node, marks.patch)
    assert after["spec"] == node["spec"] and after["metadata"]["labels"]["team"] == "ml-infra"
    assert after["metadata"]["annotations"]["owner"] == "ops"
    # Wanting the taint that someone else already set does not make it the agent's.
    again = plan(node, snapshot(xid_observation(79)), config(cordon=True))
    assert "spec" not in again.patch and (again.taint, again.cordon) == (False, False)


def test_own_marks_removed_when_healthy_only_own():
    ours = {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    node = make_node(taints=[MAINTENANCE, ours], unschedulable=True,
                     annotations={PREFIX + "agent-marks": json.dumps({"taint": True, "cordon": True})})
    marks = plan(node, [], config(cordon=True))
    assert marks.patch["spec"] == {"taints": [MAINTENANCE], "unschedulable": None}
    assert marks.patch["metadata"]["resourceVersion"] == "100"
    assert (marks.taint, marks.cordon) == (False, False)
    after = merge(node, marks.patch)
    assert after["spec"] == {"taints": [MAINTENANCE]}
    assert after["metadata"]["labels"][PREFIX + "status"] == "pass"
    # The last taint going away removes the list.
    alone = make_node(taints=[ours], annotations={PREFIX + "agent-marks": json.dumps({"taint": True, "cordon": False})})
    assert plan(alone, []).patch["spec"] == {"taints": None}


def test_own_cordon_stays_when_someone_else_holds_it():
    recorded = {PREFIX + "agent-marks": json.dumps({"taint": False, "cordon": True})}
    with_nvsentinel = make_node(labels=NVSENTINEL_LABELS, unschedulable=True, annotations=recorded)
    marks = plan(with_nvsentinel, [], config(cordon=True))
    assert "spec" not in marks.patch and marks.cordon is False
    managed = [{"manager": "kubectl-cordon", "operation": "Update", "time": "2026-11-22T18:50:00Z",
                "fieldsV1": {"f:spec": {"f:unschedulable": {}}}}]
    by_operator = make_node(unschedulable=True, annotations=recorded, managed=managed)
    assert "spec" not in plan(by_operator, [], config(cordon=True)).patch
    ours = [dict(managed[0], manager=agent_mod.FIELD_MANAGER)]
    by_agent = make_node(unschedulable=True, annotations=recorded, managed=ours)
    assert plan(by_agent, [], config(cordon=True)).patch["spec"] == {"unschedulable": None}
    # The operator cordoned first: the agent never claims it, and it stays after the findings go.
    operator_first = make_node(unschedulable=True)
    claimed = plan(operator_first, snapshot(xid_observation(79)), config(cordon=True))
    assert claimed.cordon is False and "unschedulable" not in claimed.patch["spec"]


def test_sticky_plan_after_pass_cycle_and_cleared():
    findings = agent_mod.Findings()
    findings.add([xid_observation(79)], NOW - datetime.timedelta(minutes=10))
    findings.add_checks({name: agent_mod.result("PASS", "ok") for name in agent_mod.CHECKS}, NOW)
    marks = agent_mod.plan_marks(make_node(), findings.snapshot(), findings.latest_checks(), config(), NOW)
    assert marks.severity == "REBOOT" and marks.taint is True
    results = json.loads(marks.patch["metadata"]["annotations"][PREFIX + "results"])
    assert results["check_results"]["gpu_count"]["status"] == "pass" and results["findings"][0]["xid"] == 79
    # Sticky in the suite's view too: check 0 fails with the XID although its checks passed since.
    assert results["checks"][0] == {"check": "0-nvidia-smi", "status": "FAIL", "severity": "REBOOT"}
    findings.clear_before(NOW - datetime.timedelta(minutes=1))
    tainted = merge(make_node(), marks.patch)
    cleared = agent_mod.plan_marks(tainted, findings.snapshot(), findings.latest_checks(), config(), NOW,
                                   cleared="2026-11-22T18:47:00Z")
    assert cleared.severity == "PASS" and cleared.patch["spec"] == {"taints": None}
    assert json.loads(cleared.patch["metadata"]["annotations"][PREFIX + "results"])["clear_findings_before"] == "2026-11-22T18:47:00Z"


def test_prefix_change_moves_own_marks():
    old = PREFIX
    new_prefix = "health.example.com/"
    node = make_node(taints=[MAINTENANCE, {"key": old + "unhealthy", "value": "true", "effect": "NoSchedule"}],
                     unschedulable=True, annotations={old + "agent-marks": json.dumps({"taint": True, "cordon": True})})
    marks = plan(node, snapshot(xid_observation(79)), config(prefix=new_prefix, cordon=True), old_prefix=old)
    assert marks.patch["spec"]["taints"] == [MAINTENANCE, {"key": new_prefix + "unhealthy", "value": "true", "effect": "NoSchedule"}]
    assert marks.patch["metadata"]["annotations"][old + "agent-marks"] is None
    assert json.loads(marks.patch["metadata"]["annotations"][new_prefix + "agent-marks"]) == \
        {"taint": True, "cordon": True, "labels": True}
    assert new_prefix + "status" in marks.patch["metadata"]["labels"]


def test_time_helpers():
    parse = agent_mod.parse_rfc3339
    assert parse("2026-11-22T18:48:00Z") == NOW
    assert parse("2026-11-22T19:48:00.123456789+01:00") == NOW + datetime.timedelta(microseconds=123456)
    assert parse("2026-11-22t18:48:00z") == NOW
    for bad in ("2026-11-22", "yesterday", None, "2026-11-22T18:48:00"):
        with pytest.raises(ValueError):
            parse(bad)
    assert agent_mod.label_time(NOW) == "2026-11-22T184800Z" and agent_mod.suite_time(NOW) == "2026-11-22T18:48:00Z"


def test_results_annotation_has_the_aws_suites_shape_and_ours_beside_it():
    """What the suite's readers read (checks[].check, status, severity, timestamp, hostname,
    instance_type), with the suite's check names and vocabulary; the agent's own keys beside."""
    findings = agent_mod.Findings()
    findings.add_checks({"gpu_count": agent_mod.result("PASS", "8 GPUs"), "efa": agent_mod.result("REBOOT", "31 of 32"),
                         "nvlink": agent_mod.skipped("no links"), "topology": agent_mod.skipped("none"),
                         "fabric_manager": agent_mod.skipped("no fabric"),
                         "persistence_mode": agent_mod.result("MONITOR", "disabled on GPU 3")}, NOW)
    findings.add([xid_observation(13)], NOW)
    marks = agent_mod.plan_marks(make_node(), findings.snapshot(), findings.latest_checks(), config(), NOW,
                                 {"pod": "agent-x"}, position={"source": "file", "boot_id": "b1", "offset": 42})
    results = json.loads(marks.patch["metadata"]["annotations"][PREFIX + "results"])
    suite = dict((key, results[key]) for key in ("timestamp", "hostname", "instance_type", "status", "severity", "checks"))
    assert suite == {"timestamp": "2026-11-22T18:48:00Z", "hostname": "gpu-node-2", "instance_type": "p5.48xlarge",
                     "status": "fail", "severity": "REBOOT",
                     "checks": [{"check": "0-nvidia-smi", "status": "WARN", "severity": "MONITOR"},
                                {"check": "2-efa-enumeration", "status": "FAIL", "severity": "REBOOT"},
                                {"check": "3-topology-check", "status": "SKIP", "severity": ""}]}
    assert results["check_results"]["efa"]["detail"] == "31 of 32" and results["node"] == "gpu-node-2"
    assert results["log_position"] == {"source": "file", "boot_id": "b1", "offset": 42}
    assert results["time"] == "2026-11-22T18:48:00.000000Z" and results["agent"] == {"pod": "agent-x"}
    healthy = agent_mod.plan_marks(make_node(labels={"node.kubernetes.io/instance-type": None}), [],
                                   {"gpu_count": agent_mod.result("PASS", "8 GPUs")}, config(), NOW)
    doc = json.loads(healthy.patch["metadata"]["annotations"][PREFIX + "results"])
    assert doc["checks"] == [{"check": "0-nvidia-smi", "status": "PASS", "severity": ""}]
    assert doc["status"] == "pass" and doc["severity"] == "PASS" and doc["instance_type"] == "unknown"


def test_job_findings_belong_to_the_suites_checks():
    sweep = {"kind": "sweep", "job": "gpu-sweep-x", "check": "1-dcgm-diag-l2", "severity": "RESET", "detail": "failed"}
    quarantine = {"kind": "quarantine", "job": "gpu-quarantine-x", "check": "6-efa-loopback", "severity": "RESET",
                  "detail": "FAIL"}
    checks = agent_mod.suite_checks(snapshot(sweep, quarantine), {})
    assert checks == [{"check": "1-dcgm-diag-l2", "status": "FAIL", "severity": "RESET"},
                      {"check": "6-efa-loopback", "status": "FAIL", "severity": "RESET"}]


def test_taint_and_label_switches():
    """The AWS suite's ENABLE_TAINT and ENABLE_LABEL: off, the agent sets no taint and no labels,
    and takes off only those it set itself."""
    reboot = snapshot(xid_observation(79))
    no_taint = plan(make_node(), reboot, config(taint=False))
    assert "spec" not in no_taint.patch and no_taint.taint is False
    assert no_taint.patch["metadata"]["labels"][PREFIX + "severity"] == "REBOOT"
    ours = {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    tainted = make_node(taints=[ours], annotations={PREFIX + "agent-marks": json.dumps({"taint": True, "cordon": False})})
    assert plan(tainted, reboot, config(taint=False)).patch["spec"] == {"taints": None}
    labelled = merge(make_node(labels={"team": "ml"}), plan(make_node(labels={"team": "ml"}), reboot).patch)
    no_labels = plan(labelled, reboot, config(labels=False))
    assert no_labels.patch["metadata"]["labels"] == {PREFIX + "status": None, PREFIX + "severity": None,
                                                     PREFIX + "last-check": None}
    after = merge(labelled, no_labels.patch)
    assert after["metadata"]["labels"] == {"team": "ml", "node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert json.loads(after["metadata"]["annotations"][PREFIX + "agent-marks"])["labels"] is False
    assert json.loads(after["metadata"]["annotations"][PREFIX + "results"])["severity"] == "REBOOT"
    # Labels someone else wrote (the agent recorded none) stay.
    theirs = make_node(labels={PREFIX + "status": "pass"},
                       annotations={PREFIX + "agent-marks": json.dumps({"taint": False, "cordon": False, "labels": False})})
    assert plan(theirs, reboot, config(labels=False)).patch["metadata"]["labels"] == {}
    with pytest.raises(agent_mod.ConfigError, match="taint must be true or false"):
        agent_mod.validate_config({"taint": "false"})


# ============================================================================================
# The agent against a fake API
# ============================================================================================

class FakeNodeApi:
    """One node with resourceVersion semantics; merge patches with an optional precondition."""

    def __init__(self, node):
        self.node = copy.deepcopy(node)
        self.patches = []
        self.gets = 0
        self.before_patch = []     # callables run before the next patches (a concurrent writer)
        self.lock = threading.Lock()

    def bump(self):
        self.node["metadata"]["resourceVersion"] = str(int(self.node["metadata"]["resourceVersion"]) + 1)

    def get(self):
        with self.lock:
            self.gets += 1
            return copy.deepcopy(self.node)

    def patch(self, body):
        with self.lock:
            if self.before_patch:
                self.before_patch.pop(0)(self)
            self.patches.append(copy.deepcopy(body))
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != self.node["metadata"]["resourceVersion"]:
                raise agent_mod.ApiError(409, "Conflict", "the object has been modified")
            body = copy.deepcopy(body)
            body.get("metadata", {}).pop("resourceVersion", None)
            self.node = merge(self.node, body)
            self.bump()
            return copy.deepcopy(self.node)

    def taints(self):
        return [t["key"] for t in self.node["spec"].get("taints") or []]

    def label(self, name):
        return self.node["metadata"].get("labels", {}).get(PREFIX + name)


class StaticConfig:
    def __init__(self, cfg=None):
        self.current = cfg or config()

    def poll(self):
        return None


def make_agent(api, settings=None, probe=None):
    return agent_mod.HealthAgent(api, "gpu-node-2", settings or StaticConfig(),
                                 probe or agent_mod.Probe("/nonexistent/sys", "/nonexistent/nvidia", FakeRunner()),
                                 agent={"pod": "agent-x", "namespace": "ns"})


def file_records(*codes):
    return agent_mod.split_file_records(b"".join(file_payload(r) for code in codes for r in xid_records(code)))[0]


def add_sweeper_taint(api):
    api.node["spec"].setdefault("taints", []).append(dict(MAINTENANCE))
    api.bump()


def test_taint_conflict_is_retried_and_keeps_the_concurrent_taint(capsys):
    api = FakeNodeApi(make_node())
    agent = make_agent(api)
    agent.set_node(api.get())
    agent.on_records(file_records(79))
    api.before_patch.append(add_sweeper_taint)   # the sweeper taints the node between read and write
    marks = agent.mark_once()
    assert [p.get("metadata", {}).get("resourceVersion") for p in api.patches] == ["100", "101"]
    assert api.taints() == [MAINTENANCE["key"], TAINT_KEY]
    assert api.label("severity") == "REBOOT" and api.label("status") == "fail" and marks.taint is True
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    changed = [entry for entry in logged if entry["event"] == "marks_changed"]
    assert changed and changed[0]["attempts"] == 2
    assert any(entry["event"] == "finding" and entry["xid"] == 79 for entry in logged)


def test_conflicts_give_up_after_retries():
    api = FakeNodeApi(make_node())
    agent = make_agent(api)
    agent.on_records(file_records(48))
    api.before_patch.extend([add_sweeper_taint] * agent_mod.CONFLICT_RETRIES)
    with pytest.raises(agent_mod.ApiError):
        agent.mark_once()
    assert len(api.patches) == agent_mod.CONFLICT_RETRIES


def test_config_reload_applies_new_threshold_without_restart(tmp_path):
    path = tmp_path / "config.json"
    write_config(path, {"taint_min_severity": "RESET"})
    settings = agent_mod.ConfigFile(str(path))
    settings.poll()
    api = FakeNodeApi(make_node())
    agent = make_agent(api, settings)
    agent.on_records(file_records(48))
    agent.mark_once()
    assert api.taints() == [TAINT_KEY]
    write_config(path, {"taint_min_severity": "REBOOT"})
    assert agent.poll_config() is True and agent.due is not None
    agent.mark_once()
    assert api.taints() == [] and api.label("status") == "fail"       # still RESET, no longer tainting
    write_config(path, "[broken")
    assert agent.poll_config() is False
    agent.on_records(file_records(79))
    agent.mark_once()
    assert api.taints() == [TAINT_KEY]        # the REBOOT threshold in force still applies
    write_config(path, {"taint_min_severity": "REBOOT", "xid_severity_overrides": {"79": "MONITOR", "48": "MONITOR"}})
    assert agent.poll_config() is True
    agent.mark_once()
    assert api.taints() == [] and api.label("severity") == "MONITOR"


def test_clear_findings_before_removes_only_own_marks(capsys):
    operator = {"key": "example.com/reserved", "value": "team-a", "effect": "NoSchedule"}
    api = FakeNodeApi(make_node(labels=dict(NVSENTINEL_LABELS, team="ml"), taints=[operator]))
    agent = make_agent(api, StaticConfig(config(cordon=True)))
    agent.start()
    agent.on_records(file_records(79))
    agent.mark_once()
    assert api.node["spec"]["unschedulable"] is True and api.taints() == [operator["key"], TAINT_KEY]
    add_sweeper_taint(api)
    # Findings stay through passing check cycles.
    agent.findings.add_checks({"gpu_count": agent_mod.result("PASS", "8 GPUs")}, agent_mod.now_utc())
    agent.mark_once()
    assert api.label("severity") == "REBOOT"
    # The return-to-service playbook clears them.
    stamp = agent_mod.rfc3339(agent_mod.now_utc() + datetime.timedelta(seconds=1))
    api.node["metadata"]["annotations"][PREFIX + "clear-findings-before"] = stamp
    api.bump()
    agent.on_node(api.get())
    assert agent.checks_now.is_set()
    agent.mark_once()
    assert api.taints() == [operator["key"], MAINTENANCE["key"]]
    assert api.node["spec"]["unschedulable"] is True     # NVSentinel holds it too: not lifted
    assert api.label("status") == "pass" and api.label("severity") == "PASS"
    assert api.node["metadata"]["labels"]["team"] == "ml"
    results = json.loads(api.node["metadata"]["annotations"][PREFIX + "results"])
    assert results["clear_findings_before"] == stamp and results["findings"] == []
    assert any(json.loads(line)["event"] == "findings_cleared" for line in capsys.readouterr().out.splitlines())
    # The same value again changes nothing; a new XID after the clear counts.
    assert agent.apply_clear(api.get()) is False
    agent.on_records(file_records(48))
    agent.mark_once()
    assert api.label("severity") == "RESET"


def test_clear_lifts_own_cordon_and_bad_clear_value_is_ignored():
    api = FakeNodeApi(make_node())
    agent = make_agent(api, StaticConfig(config(cordon=True)))
    agent.on_records(file_records(79))
    agent.mark_once()
    assert api.node["spec"]["unschedulable"] is True
    api.node["metadata"]["annotations"][PREFIX + "clear-findings-before"] = "last tuesday"
    assert agent.apply_clear(api.get()) is False and agent.findings.severity() == "REBOOT"
    api.node["metadata"]["annotations"][PREFIX + "clear-findings-before"] = "2999-01-01T00:00:00Z"
    assert agent.apply_clear(api.get()) is True
    agent.mark_once()
    assert "unschedulable" not in api.node["spec"] and api.taints() == []
    # A clear time in the future does not swallow what comes later.
    agent.on_records(file_records(48))
    assert agent.findings.severity() == "RESET"


def test_restart_takes_findings_back():
    api = FakeNodeApi(make_node())
    first = make_agent(api)
    first.on_records(file_records(79))
    first.mark_once()
    second = make_agent(api)
    second.start()
    assert second.findings.severity() == "REBOOT"
    second.findings.add_checks({"gpu_count": agent_mod.result("PASS", "8 GPUs")}, agent_mod.now_utc())
    second.mark_once()
    assert api.taints() == [TAINT_KEY] and api.label("severity") == "REBOOT"
    # Results of another node (a copied annotation) are not taken.
    api.node["metadata"]["annotations"][PREFIX + "results"] = api.node["metadata"]["annotations"][PREFIX + "results"].replace(
        '"node":"gpu-node-2"', '"node":"gpu-node-9"')
    third = make_agent(api)
    third.start()
    assert third.findings.severity() == "PASS"


def test_check_cycle_marks_and_logs(capsys):
    runner = FakeRunner({("nvidia-smi", "-L"): R("\n".join(SMI_L.splitlines()[:7]))})
    api = FakeNodeApi(make_node())
    agent = make_agent(api, probe=agent_mod.Probe("/nonexistent/sys", "/nonexistent/nvidia", runner))
    agent.set_node(api.get())
    results = agent.run_checks_once()
    assert results["gpu_count"]["severity"] == "REBOOT"
    agent.mark_once()
    assert api.taints() == [TAINT_KEY]
    marked = json.loads(api.node["metadata"]["annotations"][PREFIX + "results"])
    assert marked["check_results"]["gpu_count"]["status"] == "fail" and marked["findings"][0]["check"] == "gpu_count"
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert "checks_completed" in events and "finding" in events


def test_marker_thread_batches_a_burst_into_one_update():
    api = FakeNodeApi(make_node())
    agent = make_agent(api)
    agent.set_node(api.get())
    thread = threading.Thread(target=agent.marker_loop, daemon=True)
    thread.start()
    try:
        pcis = ["0000:%02x:00.0" % bus for bus in (0x53, 0x64, 0x75, 0x86, 0x97, 0xa8, 0xb9, 0xca)]
        for pci in pcis:   # 8 GPUs, each its XID 79 records, as the fault agent writes them
            agent.on_records(agent_mod.split_file_records(b"".join(file_payload(r) for r in xid_records(79, pci)))[0])
        deadline = time.monotonic() + 3
        while not api.patches and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(agent_mod.UPDATE_DELAY + 0.3)
    finally:
        agent.stop.set()
        thread.join(5)
    assert len(api.patches) == 1
    results = json.loads(api.node["metadata"]["annotations"][PREFIX + "results"])
    assert results["findings_total"] == 8 and api.taints() == [TAINT_KEY]


def test_node_watch_events(monkeypatch):
    api = FakeNodeApi(make_node())
    agent = make_agent(api)
    cleared = copy.deepcopy(api.node)
    cleared["metadata"]["annotations"][PREFIX + "clear-findings-before"] = "2026-11-22T18:00:00Z"
    cleared["metadata"]["resourceVersion"] = "105"
    events = [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "104"}}},
              {"type": "MODIFIED", "object": cleared}]
    monkeypatch.setattr(api, "watch", lambda version, timeout=None: iter(events), raising=False)
    assert agent._watch_once("100") == "105"  # pylint: disable=protected-access
    assert agent.cleared == "2026-11-22T18:00:00Z" and agent.cached_node()["metadata"]["resourceVersion"] == "105"
    events[:] = [{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}]
    assert agent._watch_once("105") is None  # pylint: disable=protected-access
    events[:] = [{"type": "ERROR", "object": {"code": 500, "reason": "InternalError", "message": "x"}}]
    with pytest.raises(agent_mod.ApiError):
        agent._watch_once("105")  # pylint: disable=protected-access


# ============================================================================================
# Sources against real files, and the watcher's latency
# ============================================================================================

def test_file_source_starts_at_end_follows_truncation_and_rotation(tmp_path):
    path = tmp_path / "kmsg"
    path.write_bytes(file_payload(xid_records(13)[0]))              # old: not reported again
    source = agent_mod.FileSource(str(path), poll=0.005)
    source.open()
    try:
        assert source.read(0.05) == []
        with open(path, "ab") as handle:
            handle.write(b"<3>NVRM: NVRM: Xid (PCI:0000:75:00): 4")     # half a record first
        assert source.read(0.05) == []
        with open(path, "ab") as handle:
            handle.write(b"8, pid='<unknown>', name=<unknown>, An uncorrectable double bit error\n")
        (record,) = source.read(0.5)
        assert agent_mod.record_observations(record)[0]["xid"] == 48
        path.write_bytes(b"")                                          # truncated
        assert source.read(0.05) == []
        with open(path, "ab") as handle:
            handle.write(file_payload(xid_records(79)[0]))
        assert [agent_mod.record_observations(r)[0]["xid"] for r in source.read(0.5)] == [79]
        rotated = tmp_path / "kmsg.new"
        rotated.write_bytes(file_payload(xid_records(54)[0]))
        os.replace(rotated, path)                                      # replaced: read from its start
        assert [agent_mod.record_observations(r)[0]["xid"] for r in source.read(0.5)] == [54]
    finally:
        source.close()


def test_file_source_created_later_is_read_from_start(tmp_path):
    path = tmp_path / "later"
    source = agent_mod.FileSource(str(path), poll=0.005)
    source.open()
    assert source.read(0.02) == []
    path.write_bytes(file_payload(xid_records(48)[0]))
    assert len(source.read(0.5)) == 1
    source.close()


def test_file_source_sleeps_on_inotify_and_wakes_on_an_append(tmp_path):
    """An idle agent costs nothing (no polling) and still sees an append at once: with a poll of
    60 s, only the inotify wake-up can deliver the record within the test's bound."""
    path = tmp_path / "kmsg"
    path.write_bytes(b"")
    source = agent_mod.FileSource(str(path), poll=60.0)
    assert source.notify is not None, "inotify is available on Linux"
    source.open()

    def append_later():
        time.sleep(0.2)
        with open(path, "ab") as handle:
            handle.write(file_payload(xid_records(79)[0]))

    writer = threading.Thread(target=append_later)
    writer.start()
    started = time.monotonic()
    try:
        records = source.read(30.0)
        elapsed = time.monotonic() - started
        assert [agent_mod.record_observations(r)[0]["xid"] for r in records] == [79]
        assert 0.15 <= elapsed < 5.0, elapsed
    finally:
        writer.join()
        source.close()


def test_file_source_without_inotify_polls(tmp_path, monkeypatch):
    monkeypatch.setattr(agent_mod, "inotify_watch", lambda directory: None)
    path = tmp_path / "kmsg"
    path.write_bytes(b"")
    source = agent_mod.FileSource(str(path), poll=0.005)
    assert source.notify is None
    source.open()
    with open(path, "ab") as handle:
        handle.write(file_payload(xid_records(48)[0]))
    assert len(source.read(0.5)) == 1
    source.close()


def test_kmsg_source_seeks_to_end(tmp_path):
    path = tmp_path / "kmsg"
    path.write_bytes(kmsg_read(xid_records(13)[0], 1))
    source = agent_mod.KmsgSource(str(path))
    source.open()
    try:
        assert source.read(0.05) == []
        with open(path, "ab") as handle:
            handle.write(kmsg_read(xid_records(79)[0], 2) + kmsg_read(xid_records(79)[-1], 3))
        records = source.read(0.5)
        assert [r.meta["seq"] for r in records] == [2, 3]
        assert agent_mod.record_observations(records[0])[0]["xid"] == 79
    finally:
        source.close()


def test_file_source_boot_scan_and_resume(tmp_path):
    """The records logged before the start (the current boot's), at most the last `scan`; from a
    position of the same boot, only what came after it; a position of another boot counts for nothing."""
    path = tmp_path / "kmsg"
    path.write_bytes(b"".join(file_payload(xid_records(code)[0]) for code in (13, 48, 79)))
    source = agent_mod.FileSource(str(path), poll=0.005, boot_id="boot-1")
    codes = [agent_mod.record_observations(r)[0]["xid"] for r in source.open(None, 4000)]
    assert codes == [13, 48, 79] and source.position() == {"source": "file", "boot_id": "boot-1", "offset": path.stat().st_size}
    position = source.position()
    source.close()
    with open(path, "ab") as handle:
        handle.write(file_payload(xid_records(54)[0]))
    again = agent_mod.FileSource(str(path), poll=0.005, boot_id="boot-1")
    assert [agent_mod.record_observations(r)[0]["xid"] for r in again.open(position, 4000)] == [54]
    again.close()
    other_boot = agent_mod.FileSource(str(path), poll=0.005, boot_id="boot-2")
    assert [agent_mod.record_observations(r)[0]["xid"] for r in other_boot.open(position, 2)] == [79, 54]
    other_boot.close()
    no_scan = agent_mod.FileSource(str(path), poll=0.005, boot_id="boot-1")
    assert no_scan.open(None, 0) == [] and no_scan.position()["offset"] == path.stat().st_size
    no_scan.close()


def test_kmsg_source_boot_scan_and_resume(tmp_path):
    path = tmp_path / "kmsg"
    path.write_bytes(b"".join(kmsg_read(xid_records(code)[0], seq) for seq, code in ((1, 13), (2, 48), (3, 79))))
    source = agent_mod.KmsgSource(str(path), boot_id="boot-1")
    records = source.open(None, 2)
    assert [r.meta["seq"] for r in records] == [2, 3] and source.position() == {"source": "kmsg", "boot_id": "boot-1", "seq": 3}
    # 123456789 us after boot: long before now, as an old record is.
    assert records[0].meta["time"] < agent_mod.now_utc() - datetime.timedelta(seconds=100)
    source.close()
    with open(path, "ab") as handle:
        handle.write(kmsg_read(xid_records(54)[0], 4))
    again = agent_mod.KmsgSource(str(path), boot_id="boot-1")
    assert [r.meta["seq"] for r in again.open({"source": "kmsg", "boot_id": "boot-1", "seq": 3}, 4000)] == [4]
    again.close()
    other = agent_mod.KmsgSource(str(path), boot_id="boot-2")
    assert [r.meta["seq"] for r in other.open({"source": "kmsg", "boot_id": "boot-1", "seq": 3}, 4000)] == [1, 2, 3, 4]
    other.close()


def test_journal_source_scans_the_boot_or_goes_on_after_the_cursor():
    def argv(position, scan):
        source = agent_mod.JournalSource("/", boot_id="boot-1")
        if scan > 0 and agent_mod.same_boot(position, "journal", "boot-1"):
            source.cursor = position["cursor"]
        source.scan = scan
        return source.argv("journalctl")[6:]
    assert argv(None, 4000) == ["--lines=4000"]
    assert argv({"source": "journal", "boot_id": "boot-1", "cursor": "s=1"}, 4000) == ["--after-cursor=s=1", "--no-tail"]
    assert argv({"source": "journal", "boot_id": "boot-0", "cursor": "s=1"}, 4000) == ["--lines=4000"]
    assert argv(None, 0) == ["--since", "now"]


def test_journal_source_with_a_stand_in_journalctl(tmp_path, monkeypatch):
    script = tmp_path / "journalctl"
    argv_file = tmp_path / "argv.json"
    lines = [journal_line(xid_records(79)[0]), "-- No entries --"]
    script.write_text("#!%s\nimport json, sys, time\nopen(%r, 'w').write(json.dumps(sys.argv[1:]))\n"
                      "print(%r, flush=True)\ntime.sleep(30)\n" % (sys.executable, str(argv_file), "\n".join(lines)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    source = agent_mod.JournalSource("/")
    source.open()
    try:
        records = []
        deadline = time.monotonic() + 5
        while not records and time.monotonic() < deadline:
            records = source.read(0.5)
        assert agent_mod.record_observations(records[0])[0]["xid"] == 79
        assert source.cursor.startswith("s=abc")
        assert json.loads(argv_file.read_text()) == ["-k", "-f", "-o", "json", "--no-pager", "--since", "now"]
        assert source.argv("journalctl")[-2:] == ["--after-cursor=" + source.cursor, "--no-tail"]
    finally:
        source.close()
    assert source.process is None


def test_watcher_thread_finds_an_appended_record_fast(tmp_path):
    """Record appended to the followed file -> finding in the agent, well under 0.5 s."""
    path = tmp_path / "kmsg"
    path.write_bytes(file_payload(xid_records(79, "0000:53:00.0")[0]))    # before the start: no boot scan here
    api = FakeNodeApi(make_node())
    agent = make_agent(api, StaticConfig(config(boot_scan_lines=0)))
    agent.started.set()
    thread = threading.Thread(target=agent.follow_kernel_log, args=(agent_mod.FileSource(str(path)),), daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        latencies = []
        for code, pci in ((79, "0000:75:00.0"), (48, "0000:86:00.0"), (54, "0000:97:00.0")):
            written = time.monotonic()
            with open(path, "ab") as handle:
                handle.write(b"".join(file_payload(r) for r in xid_records(code, pci)))
            while not any(f.get("xid") == code for f in agent.findings.snapshot()):
                assert time.monotonic() - written < 0.5, "no finding within 0.5 s"
                time.sleep(0.002)
            latencies.append(time.monotonic() - written)
    finally:
        agent.stop.set()
        thread.join(5)
    assert max(latencies) < 0.5
    assert {f["pci"] for f in agent.findings.snapshot()} == {"0000:75:00", "0000:86:00", "0000:97:00"}


def test_record_to_node_marked_latency(tmp_path):
    """Record appended -> node tainted through the (fake) API: watcher, batching and marker together."""
    path = tmp_path / "kmsg"
    path.write_bytes(b"")
    api = FakeNodeApi(make_node())
    agent = make_agent(api)
    agent.set_node(api.get())
    agent.started.set()
    threads = [threading.Thread(target=agent.follow_kernel_log, args=(agent_mod.FileSource(str(path)),), daemon=True),
               threading.Thread(target=agent.marker_loop, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        written = time.monotonic()
        with open(path, "ab") as handle:
            handle.write(b"".join(file_payload(r) for r in xid_records(79)))
        while TAINT_KEY not in api.taints():
            assert time.monotonic() - written < 0.5, "node not marked within 0.5 s"
            time.sleep(0.002)
    finally:
        agent.stop.set()
        for thread in threads:
            thread.join(5)
    assert api.label("severity") == "REBOOT"


def run_source_until(agent, source, done, timeout=5.0):
    """Follow `source` in the agent's kernel-log thread until done() (or fail after timeout)."""
    thread = threading.Thread(target=agent.follow_kernel_log, args=(source,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, "not done within %s s" % timeout
            time.sleep(0.005)
    finally:
        agent.stop.set()
        thread.join(5)


def xid_counts(agent):
    return dict((f["xid"], f["count"]) for f in agent.findings.snapshot() if f["kind"] == "xid")


def test_boot_scan_finds_an_xid_logged_before_the_start_and_a_restart_does_not_count_it_again(tmp_path):
    path = tmp_path / "kmsg"
    path.write_bytes(b"".join(file_payload(r) for r in xid_records(79)))      # the node booted with a bad GPU
    api = FakeNodeApi(make_node())
    first = make_agent(api)
    first.start()
    run_source_until(first, agent_mod.FileSource(str(path), boot_id="boot-1"), lambda: 79 in xid_counts(first))
    first.mark_once()
    assert api.label("severity") == "REBOOT" and TAINT_KEY in api.taints()
    results = json.loads(api.node["metadata"]["annotations"][PREFIX + "results"])
    assert results["log_position"] == {"source": "file", "boot_id": "boot-1", "offset": path.stat().st_size}
    # The agent restarts; meanwhile the driver logs another XID.
    with open(path, "ab") as handle:
        handle.write(file_payload(xid_records(48, "0000:86:00.0")[0]))
    second = make_agent(api)
    second.start()
    assert xid_counts(second) == {79: 1}                                     # taken back from the node
    run_source_until(second, agent_mod.FileSource(str(path), boot_id="boot-1"), lambda: 48 in xid_counts(second))
    assert xid_counts(second) == {79: 1, 48: 1}                              # 79 not counted twice
    second.mark_once()
    findings = json.loads(api.node["metadata"]["annotations"][PREFIX + "results"])["findings"]
    assert sorted((f["xid"], f["count"]) for f in findings) == [(48, 1), (79, 1)]


def test_boot_scan_skips_what_a_return_to_service_cleared(tmp_path):
    """A node returned to service without a reboot keeps its old XIDs in the kernel log: an agent
    that starts without a log position (a first install) does not count those logged before the clear."""
    path = tmp_path / "kmsg"
    path.write_bytes(kmsg_read(xid_records(79)[0], 1))                      # 123 s after boot: long ago
    api = FakeNodeApi(make_node(annotations={PREFIX + "clear-findings-before": agent_mod.rfc3339(agent_mod.now_utc())}))
    agent = make_agent(api, StaticConfig(config()))
    agent.clock = agent_mod.now_utc
    agent.start()
    source = agent_mod.KmsgSource(str(path), boot_id="boot-1")
    run_source_until(agent, source, lambda: agent.current_position() is not None)
    assert xid_counts(agent) == {} and agent.current_position()["seq"] == 1


def test_boot_scan_lines_caps_the_scan(tmp_path):
    path = tmp_path / "kmsg"
    path.write_bytes(b"".join(file_payload(xid_records(code)[0]) for code in (13, 48, 79)))
    agent = make_agent(FakeNodeApi(make_node()), StaticConfig(config(boot_scan_lines=1)))
    agent.start()
    run_source_until(agent, agent_mod.FileSource(str(path)), lambda: agent.current_position() is not None)
    assert xid_counts(agent) == {79: 1}


def sweep_result(result="fail", job="gpu-sweep-gpu-node-2-abc", finished="2026-11-22T18:40:00Z"):
    return {PREFIX + "sweep-result": json.dumps({"result": result, "reason": "BackoffLimitExceeded", "job": job,
                                                 "finished": finished, "message": "dcgmi diag -r 2: FAIL"})}


def test_a_failed_sweep_marks_the_node_once_until_cleared():
    """The AWS suite labels a node whose sweep failed status=fail and taints it: here the failed
    sweep is a finding (sweep_failure_severity), counted once however often the node is seen."""
    api = FakeNodeApi(make_node(annotations=sweep_result()))
    agent = make_agent(api)
    agent.start()
    agent.on_node(api.get())
    agent.mark_once()
    (finding,) = agent.findings.snapshot()
    assert (finding["kind"], finding["check"], finding["severity"], finding["count"]) == ("sweep", "1-dcgm-diag-l2", "RESET", 1)
    assert finding["time"].startswith("2026-11-22T18:40:00") and "BackoffLimitExceeded" in finding["detail"]
    assert api.label("status") == "fail" and TAINT_KEY in api.taints()
    checks = json.loads(api.node["metadata"]["annotations"][PREFIX + "results"])["checks"]
    assert {"check": "1-dcgm-diag-l2", "status": "FAIL", "severity": "RESET"} in checks
    # A passed sweep, or a failed one before the clear, is no finding.
    assert agent_mod.job_observations(make_node(annotations=sweep_result("pass")), config()) == []
    api.node["metadata"]["annotations"][PREFIX + "clear-findings-before"] = "2026-11-22T18:45:00Z"
    agent.on_node(api.get())
    assert agent.findings.snapshot() == []
    agent.on_node(api.get())
    assert agent.findings.snapshot() == []
    cfg = config(sweep_failure_severity="ISOLATE")
    assert agent_mod.job_observations(make_node(annotations=sweep_result()), cfg)[0]["severity"] == "ISOLATE"


def test_a_quarantine_results_failed_parts_are_findings():
    result = {"job": "gpu-quarantine-gpu-node-2-1", "finished": "2026-11-22T18:40:00Z", "severity": "ISOLATE",
              "recommendation": "replace", "checks": [{"check": "4-dcgm-diag-l4", "status": "FAIL", "severity": "ISOLATE"},
                                                      {"check": "6-efa-loopback", "status": "PASS", "severity": ""}]}
    node = make_node(annotations={PREFIX + "quarantine-result": json.dumps(result)})
    (finding,) = agent_mod.job_observations(node, config())
    assert (finding["kind"], finding["check"], finding["severity"]) == ("quarantine", "4-dcgm-diag-l4", "ISOLATE")
    assert agent_mod.job_observations(make_node(annotations={PREFIX + "quarantine-result": "not json"}), config()) == []


def facts_runner(gpu_name="NVIDIA A100-SXM4-80GB", mig="Disabled", apps=""):
    return FakeRunner({("nvidia-smi", "--query-gpu=index,name"): R("0, %s\n1, %s\n" % (gpu_name, gpu_name)),
                       ("nvidia-smi", "--query-gpu=index,mig.mode.current"): R("0, %s\n1, %s\n" % (mig, mig)),
                       ("nvidia-smi", "--query-compute-apps=pid,gpu_bus_id"): R(apps)})


@pytest.mark.parametrize("code,runner,severity", [
    (95, facts_runner(), "REBOOT"),                                  # A100, MIG off
    (95, facts_runner(mig="Enabled"), "RESET"),
    (64, facts_runner(mig="Enabled"), "REBOOT"),                     # A100, MIG or not
    (64, facts_runner("NVIDIA H100 80GB HBM3"), "RESET"),
    (159, facts_runner(apps="4242, 00000000:75:00.0\n"), "RESET"),  # a CUDA process holds /dev/nvidia-uvm
    (159, facts_runner(apps=""), "MONITOR"),
    (159, FakeRunner(), "MONITOR"),                                  # no nvidia-smi: facts false, as the suite
])
def test_node_facts_decide_the_aws_rules(code, runner, severity):
    agent = make_agent(FakeNodeApi(make_node()), probe=agent_mod.Probe("/none/sys", "/none/nvidia", runner))
    (finding,) = agent.on_records(file_records(code))
    assert finding["severity"] == severity
    restored = agent_mod.Findings()
    restored.restore(json.loads(json.dumps(agent.findings.snapshot())))
    assert restored.severity() == severity                            # the facts travel with the finding


def test_node_facts_are_read_once_per_batch():
    runner = facts_runner(apps="4242, 00000000:75:00.0\n")
    agent = make_agent(FakeNodeApi(make_node()), probe=agent_mod.Probe("/none/sys", "/none/nvidia", runner))
    records = agent_mod.split_file_records(b"".join(file_payload(r) for pci in ("0000:53:00.0", "0000:64:00.0")
                                                    for r in xid_records(159, pci)))[0]
    assert [f["severity"] for f in agent.on_records(records, scanned=True)] == ["RESET", "RESET"]
    assert sum(1 for call in runner.calls if call[1].startswith("--query-compute-apps")) == 1


# ============================================================================================
# API client and command line
# ============================================================================================

def test_node_api_calls_on_the_shared_client():
    """Only its own node: read, merge patch as field manager gpu-health-agent, watch by name (the
    client itself is tested in test_kube_api.py)."""
    calls = []

    class Client:
        def request(self, method, path, query=None, body=None, content_type="application/json"):
            calls.append((method, path, query, body, content_type))
            return {}

        def watch(self, path, query, timeout_seconds):
            calls.append(("WATCH", path, query, timeout_seconds))
            return iter(())

    api = agent_mod.NodeApi(Client(), "gpu-node-2")
    api.get()
    api.patch({"metadata": {"labels": {"a": "b"}}})
    list(api.watch("41"))
    assert calls == [("GET", "/api/v1/nodes/gpu-node-2", None, None, "application/json"),
                     ("PATCH", "/api/v1/nodes/gpu-node-2", {"fieldManager": "gpu-health-agent"},
                      {"metadata": {"labels": {"a": "b"}}}, "application/merge-patch+json"),
                     ("WATCH", "/api/v1/nodes", {"fieldSelector": "metadata.name=gpu-node-2", "resourceVersion": "41"},
                      agent_mod.WATCH_SECONDS)]


def test_parse_args(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "gpu-node-2")
    args = agent_mod.parse_args([])
    assert (args.node, args.config, args.kmsg_source, args.kmsg_path, args.host_root) == (
        "gpu-node-2", "/etc/gpu-healthcheck/config.json", "kmsg", "/host/dev/kmsg", "/")
    args = agent_mod.parse_args(["--node", "n1", "--kmsg-source", "file", "--kmsg-path", "/tmp/k", "--host-root", "/host"])
    assert (args.node, args.kmsg_source, args.host_root) == ("n1", "file", "/host")
    monkeypatch.delenv("NODE_NAME")
    with pytest.raises(SystemExit):
        agent_mod.parse_args([])
    with pytest.raises(SystemExit):
        agent_mod.parse_args(["--node", "n", "--kmsg-source", "dmesg"])
