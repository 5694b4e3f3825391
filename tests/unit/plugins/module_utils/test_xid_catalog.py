"""Unit tests of plugins/module_utils/xid_catalog.py.

The catalog is loaded by file path, the way the node agent loads it, so these tests need neither
Ansible nor the collection installed. The detectors' patterns below are copied from their sources
(NVSentinel's syslog-health-monitor, the AWS GPU health-check suite) so that every rendered line
is proven to be recognised exactly as a real driver line would be.
"""
import ast
import itertools
import importlib.util
import sys
from pathlib import Path

import pytest

CATALOG_PATH = Path(__file__).resolve().parents[4] / "plugins" / "module_utils" / "xid_catalog.py"
_spec = importlib.util.spec_from_file_location("xid_catalog", CATALOG_PATH)
xc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xc)

from detectors import (NVS_XID, NVS_SXID, NVS_FALLEN, NVS_PCI_ID, NVS_HAS_XID, NVS_GPU_MAP, NVS_NVL5, NVS_XID13, NVS_XID74, AWS_XID_GREP, AWS_SXID_GREP, aws_code, aws_check0_severity)  # noqa: E402  pylint: disable=wrong-import-position


REQUIRED_XIDS = (13, 31, 32, 38, 39, 42, 43, 45, 48, 54, 56, 57, 60, 61, 62, 63, 64, 69, 74, 79, 81, 92, 94,
                 95, 109, 110, 119, 120, 121, 125, 126, 136, 140, 143, 144, 145, 146, 147, 148, 149, 150, 151,
                 154, 155, 156, 157, 158, 162, 163, 164, 165, 168)
NVL5 = tuple(range(144, 151))
# Full PCI address -> what the driver prints in XID lines.
PCIS = {
    "0000:b5:00.0": "0000:b5:00",
    "0003:00:00.0": "0003:00:00",
    "0000:3B:1f.7": "0000:3b:1f",
    "00000001:00:00.0": "0001:00:00",
}
FIELDS = ("code", "mnemonic", "name", "text", "defaults", "extra_lines", "text_verified",
          "nvsentinel_action", "aws_severity", "dcgm_health", "cuda_error", "sticky")


def journald_message(record):
    """journald's MESSAGE for a kmsg record: the leading "ident: " becomes SYSLOG_IDENTIFIER."""
    ident, sep, rest = record.partition(": ")
    assert sep and " " not in ident
    return rest


def forms(line):
    """The texts detectors see for one rendered record: dmesg of what is written, and MESSAGE."""
    written = xc.kmsg_text(line)
    return {"dmesg": "[ 1843.308145] " + written, "message": journald_message(written)}


def xid_line(lines):
    found = [line for line in lines if line.startswith("NVRM: Xid ")]
    assert len(found) == 1, lines
    return found[0]


# --- the catalog itself -------------------------------------------------------------------------

def test_catalog_has_every_required_code():
    assert set(REQUIRED_XIDS) <= set(xc.codes())
    assert list(xc.codes()) == sorted(xc.codes())


def test_catalog_is_self_consistent():
    assert xc.validate_catalog() == len(xc.XID_CATALOG) + len(xc.SXID_CATALOG)


@pytest.mark.parametrize("code", xc.codes())
def test_every_entry_has_every_field_with_a_valid_value(code):
    entry = xc.get(code)
    assert set(FIELDS) <= set(entry)
    assert entry["code"] == code
    assert entry["mnemonic"] and entry["mnemonic"] == entry["mnemonic"].upper()
    assert entry["name"] and entry["text"]
    assert entry["nvsentinel_action"] in ("NONE", "CONTACT_SUPPORT", "COMPONENT_RESET", "RESTART_VM", "RESTART_BM")
    assert entry["aws_severity"] in ("PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE")
    assert entry["dcgm_health"] in ("PASS", "WARN", "FAIL")
    number, name = entry["cuda_error"]
    assert xc.CUDA_ERRORS[name] == number and name.startswith("CUDA_")
    assert isinstance(entry["sticky"], bool) and isinstance(entry["text_verified"], bool)
    assert "%" not in entry["text"]  # str.format templates only, never printf


def test_entries_are_read_only():
    with pytest.raises(TypeError):
        xc.get(79)["aws_severity"] = "PASS"
    with pytest.raises(TypeError):
        xc.XID_CATALOG[1] = {}


def test_detector_values_follow_the_sources():
    expected_nvs = {13: "NONE", 31: "NONE", 32: "NONE", 38: "NONE", 39: "NONE", 43: "NONE", 45: "NONE",
                    60: "NONE", 63: "NONE", 69: "NONE", 92: "NONE", 94: "NONE",
                    42: "CONTACT_SUPPORT", 54: "CONTACT_SUPPORT", 56: "CONTACT_SUPPORT", 57: "CONTACT_SUPPORT",
                    61: "CONTACT_SUPPORT", 74: "CONTACT_SUPPORT",
                    48: "COMPONENT_RESET", 62: "COMPONENT_RESET", 64: "COMPONENT_RESET", 95: "COMPONENT_RESET",
                    119: "COMPONENT_RESET", 120: "COMPONENT_RESET", 140: "COMPONENT_RESET", 79: "RESTART_BM"}
    for code, action in expected_nvs.items():
        assert xc.get(code)["nvsentinel_action"] == action, code
    expected_aws = {54: "ISOLATE", 79: "REBOOT", 151: "REBOOT", 168: "REBOOT", 74: "RESET", 154: "RESET"}
    expected_aws.update((code, "RESET") for code in (48, 64, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158))
    expected_aws.update((code, "MONITOR") for code in (13, 31, 43, 63, 81, 92, 94, 121, 125, 126, 157,
                                                       162, 163, 164, 165) + NVL5)
    for code, severity in expected_aws.items():
        assert xc.get(code)["aws_severity"] == severity, code
    for code in (48, 74, 79, 94, 95, 119, 120, 140):
        assert xc.get(code)["dcgm_health"] == "FAIL", code


def test_cuda_errors_match_cuda_h_and_the_fault():
    assert dict(xc.CUDA_ERRORS) == {
        "CUDA_SUCCESS": 0, "CUDA_ERROR_NO_DEVICE": 100, "CUDA_ERROR_ECC_UNCORRECTABLE": 214,
        "CUDA_ERROR_NVLINK_UNCORRECTABLE": 220, "CUDA_ERROR_CONTAINED": 226, "CUDA_ERROR_ILLEGAL_ADDRESS": 700,
        "CUDA_ERROR_LAUNCH_TIMEOUT": 702, "CUDA_ERROR_LAUNCH_FAILED": 719, "CUDA_ERROR_KEY_ROTATION": 916,
        "CUDA_ERROR_UNKNOWN": 999}
    expected = {79: 100, 48: 214, 94: 214, 140: 214, 95: 999, 43: 702, 13: 700, 31: 700, 74: 220}
    expected.update((code, 220) for code in NVL5)
    for code, number in expected.items():
        assert xc.get(code)["cuda_error"][0] == number, code
        assert xc.get(code)["sticky"] is True, code
    for code in (63, 92, 154):  # informational: applications see nothing
        assert xc.get(code)["cuda_error"] == (0, "CUDA_SUCCESS") and xc.get(code)["sticky"] is False


def test_sxid_catalog_entries():
    assert set(xc.sxid_codes()) >= {11004, 12028, 20034, 22013, 24007, 28002, 28006}
    for code in xc.sxid_codes():
        entry = xc.get_sxid(code)
        assert entry["code"] == code and isinstance(entry["fatal"], bool) and entry["text"]
    assert xc.get_sxid(20034)["fatal"] and xc.get_sxid(24007)["fatal"]
    assert not xc.get_sxid(28006)["fatal"]


def test_recovery_actions():
    assert dict(xc.RECOVERY_ACTIONS) == {"None": 0, "GPU Reset Required": 1, "Node Reboot Required": 2,
                                         "Drain P2P": 3, "Drain and Reset": 4}
    assert xc.recovery_action_hex("Drain and Reset") == "0x4"
    assert xc.recovery_action_hex("none") == "0x0"


# --- every XID line is parsed by the detectors --------------------------------------------------

@pytest.mark.parametrize("code", xc.codes())
@pytest.mark.parametrize("pci", sorted(PCIS))
def test_xid_line_is_parsed_by_nvsentinel_in_dmesg_and_journal_form(code, pci):
    line = xid_line(xc.render_xid_lines(code, pci))
    assert line.startswith("NVRM: Xid (PCI:%s): %d, " % (PCIS[pci], code))
    for form, text in forms(line).items():
        match = NVS_XID.search(text)
        assert match, (form, text)
        assert (match.group(1), int(match.group(2))) == (PCIS[pci], code), form
    assert forms(line)["message"] == line
    assert forms(line)["dmesg"] == "[ 1843.308145] NVRM: " + line


@pytest.mark.parametrize("code", xc.codes())
def test_xid_line_is_parsed_by_the_aws_suite(code):
    records = xc.render_xid_lines(code, "0000:b5:00.0", uuid="GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")
    # journalctl -k prints MESSAGE after the identifier; a multi-line record continues indented.
    shown = []
    for record in records:
        first, *rest = journald_message(xc.kmsg_text(record)).split("\n")
        shown.append("2026-05-05T10:00:00+0000 gpu-node-1 NVRM: " + first)
        shown.extend("                                          " + more for more in rest)
    hits = [text for text in shown if AWS_XID_GREP.search(text)]
    assert len(hits) == 1, shown  # exactly one Xid per injection, nothing else counted
    assert aws_code(hits[0]) == str(code)
    assert aws_code(xid_line(records)) == str(code)  # the dmesg fallback sees the same


@pytest.mark.parametrize("code", xc.codes())
def test_default_rendering_gives_the_catalogued_verdicts(code):
    line = xid_line(xc.render_xid_lines(code, "0000:b5:00.0"))
    entry = xc.get(code)
    if code not in xc.NVL5_CODES:  # decoded by their text: test_xid_catalog_nvsentinel.py
        assert xc.nvsentinel_action(code, line) == entry["nvsentinel_action"]
    assert xc.aws_severity(code, line) == entry["aws_severity"]


FACT_SETS = [dict(zip(xc.AWS_NODE_FACTS, values)) for values in itertools.product((False, True), repeat=3)]


@pytest.mark.parametrize("code", xc.codes())
def test_aws_severity_agrees_with_the_suites_check0_on_every_node(code):
    """The catalog's AWS severity, with every combination of the node facts check 0 reads (A100,
    MIG, UVM in use), against the suite's classification (tests/unit/detectors.py); XID 154 with
    each recovery action."""
    variants = [{"recovery_action": action} for action in xc.RECOVERY_ACTIONS] if code == 154 else [{}]
    for params in variants:
        lines = [journald_message(xc.kmsg_text(record)) for record in xc.render_xid_lines(code, "0000:b5:00.0", **params)]
        line = xid_line(xc.render_xid_lines(code, "0000:b5:00.0", **params))
        for facts in FACT_SETS:
            oracle = aws_check0_severity(lines, facts["a100"], facts["mig"], facts["uvm_in_use"])
            assert xc.aws_severity(code, line, facts) == oracle, (code, params, facts)


def test_node_rules_of_the_aws_suite():
    assert xc.AWS_NODE_FACTS == ("a100", "mig", "uvm_in_use")
    assert xc.aws_node_facts(64) == ("a100",) and xc.aws_node_facts("95") == ("a100", "mig")
    assert xc.aws_node_facts(159) == ("uvm_in_use",) and xc.aws_node_facts(79) == ()
    assert xc.aws_severity(64, "", {"a100": True, "mig": True}) == "REBOOT"
    assert xc.aws_severity(95, "", {"a100": True, "mig": True}) == "RESET"
    assert xc.aws_severity(95, "", {"a100": True}) == "REBOOT"      # a fact not read counts as false
    assert xc.aws_severity(159, "", {"uvm_in_use": True}) == "RESET"
    assert xc.aws_severity(159) == "MONITOR" and xc.get(159)["nvsentinel_action"] == "CONTACT_SUPPORT"


@pytest.mark.parametrize("code", xc.codes())
def test_nvlink5_pattern_matches_exactly_the_nvlink5_xids(code):
    line = xid_line(xc.render_xid_lines(code, "0008:01:00.0"))
    match = NVS_NVL5.search(line)
    if code in NVL5:
        assert match, line
        assert (match.group(1), int(match.group(2))) == ("0008:01:00", code)
        assert match.group(3) == xc.get(code)["defaults"]["event"]
        assert match.group(4) in ("Fatal", "Nonfatal")
    else:
        assert match is None, line


def test_nvlink5_line_has_the_driver_spacing():
    line = xid_line(xc.render_xid_lines(149, "0009:01:00.0"))
    assert line == ("NVRM: Xid (PCI:0009:01:00): 149, NETIR_LINK_EVT  Fatal   XC0 i0 Link 01 "
                    "(0x021425c6 0x00000000 0x00000000 0x00000000 0x00000000 0x00000000)")
    nonfatal = xid_line(xc.render_xid_lines(145, "0009:01:00.0", params={"severity": "Nonfatal"}))
    assert NVS_NVL5.search(nonfatal).group(4) == "Nonfatal"


def test_xid13_and_xid74_details_match_nvsentinel_metadata_patterns():
    line13 = xid_line(xc.render_xid_lines(13, "0000:b5:00.0", params={"gpc": 7, "tpc": 7, "sm": 1}))
    assert NVS_XID13.search(line13).groups() == ("7", "7", "1")
    line74 = xid_line(xc.render_xid_lines(74, "0003:00:00.0"))
    assert line74 == ("NVRM: Xid (PCI:0003:00:00): 74, pid='<unknown>', name=<unknown>, "
                      "NVLink: fatal error detected on link 14(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)")
    assert NVS_XID74.search(line74).group(1) == "14"


def test_pid_and_process_name_are_parsed():
    line = xid_line(xc.render_xid_lines(119, "0002:00:00.0", pid=1582259, process_name="nvc:[driver]"))
    match = NVS_XID.search(line)
    assert match.group(3) == "1582259" and match.group(4) == "nvc:[driver]"


def test_gpu_uuid_line_maps_pci_to_uuid():
    records = xc.render_xid_lines(48, "0000:3B:00.0", uuid="GPU-F1648D72-C7C8-9814-2832-7A062B009188")
    assert records[0] == "NVRM: GPU at PCI:0000:3b:00: GPU-f1648d72-c7c8-9814-2832-7a062b009188"
    for text in forms(records[0]).values():
        assert NVS_GPU_MAP.search(text).groups() == ("0000:3b:00", "GPU-f1648d72-c7c8-9814-2832-7a062b009188")
        assert not NVS_XID.search(text)
    assert records[1].startswith("NVRM: Xid (PCI:0000:3b:00): 48, ")


# --- XID 79's extra records -----------------------------------------------------------------------

@pytest.mark.parametrize("pci", sorted(PCIS))
def test_xid79_fallen_off_the_bus_record(pci):
    records = xc.render_xid_lines(79, pci, params={"device_id": "26b5"})
    full = xc.format_pci_bdf(pci)
    assert records[0] == "NVRM: Xid (PCI:%s): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus." % PCIS[pci]
    assert "NVRM: GPU %s: GPU has fallen off the bus." % full in records
    fallen = [record for record in records if NVS_FALLEN.search(record)]
    assert len(fallen) == 1
    assert all(line.startswith("NVRM: ") for line in fallen[0].split("\n"))
    for form, text in forms(fallen[0]).items():
        match = NVS_FALLEN.search(text)
        assert match and match.group(1) == full, form
        assert NVS_PCI_ID.search(text).group(1) == "10de:26b5"
        assert not NVS_HAS_XID.search(text)  # else NVSentinel hands it to the XID parser
    for record in records:
        assert record.startswith("NVRM: ")


def test_only_xid79_has_extra_records():
    for code in xc.codes():
        count = len(xc.render_xid_lines(code, "0000:b5:00.0"))
        assert count == (3 if code == 79 else 1), code


# --- XID 154 recovery actions ---------------------------------------------------------------------

@pytest.mark.parametrize("action,hex_code,nvsentinel,aws", [
    ("None", "0x0", "NONE", "MONITOR"),
    ("GPU Reset Required", "0x1", "COMPONENT_RESET", "RESET"),
    ("Node Reboot Required", "0x2", "RESTART_BM", "REBOOT"),
    ("Drain P2P", "0x3", "CONTACT_SUPPORT", "RESET"),
    ("Drain and Reset", "0x4", "COMPONENT_RESET", "RESET"),
])
def test_xid154_text_decides_the_verdicts(action, hex_code, nvsentinel, aws):
    line = xid_line(xc.render_xid_lines(154, "0008:01:00.0", recovery_action=action))
    assert line == "NVRM: Xid (PCI:0008:01:00): 154, GPU recovery action changed from 0x0 (None) to %s (%s)" % (
        hex_code, action)
    for text in forms(line).values():
        assert int(NVS_XID.search(text).group(2)) == 154
        assert xc.nvsentinel_action(154, text) == nvsentinel
        assert xc.aws_severity(154, text) == aws
    assert aws_code(line) == "154"


def test_xid154_defaults_and_validation():
    line = xid_line(xc.render_xid_lines(154, "0008:01:00.0"))
    assert line.endswith("to 0x1 (GPU Reset Required)")
    assert xid_line(xc.render_xid_lines(154, "0008:01:00.0", recovery_action="node REBOOT required")).endswith(
        "0x2 (Node Reboot Required)")
    for bad in ("Reboot", "", "0x2", 2):
        with pytest.raises(ValueError):
            xc.render_xid_lines(154, "0008:01:00.0", recovery_action=bad)
    with pytest.raises(ValueError, match="XID 154 only"):
        xc.render_xid_lines(79, "0008:01:00.0", recovery_action="None")
    assert xc.nvsentinel_action(154, "GPU recovery action changed") == "CONTACT_SUPPORT"
    assert xc.aws_severity(154, "") == "MONITOR"


# --- SXid lines -------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", xc.sxid_codes())
@pytest.mark.parametrize("switch,link,pci", [(0, 4, "0000:06:00.0"), (3, 46, "0000:C1:00.0"), (7, 0, "00000002:05:00.0")])
def test_sxid_line_is_parsed_by_nvsentinel(code, switch, link, pci):
    records = xc.render_sxid_lines(code, pci, switch=switch, link=link)
    entry = xc.get_sxid(code)
    for form, text in forms(records[0]).items():
        match = NVS_SXID.search(text)
        assert match, (form, text)
        assert match.groups() == (str(switch), xc.format_pci_bdf(pci), str(code),
                                  "Fatal" if entry["fatal"] else "Non-fatal", "%02d" % link, entry["text"])
    for follow_up in records[1:]:
        assert NVS_SXID.search(follow_up) is None  # NVSentinel skips the detail records
    assert all(AWS_SXID_GREP.search(record) for record in records)
    assert not any(AWS_XID_GREP.search(record) for record in records)


def test_sxid_validation():
    with pytest.raises(xc.UnknownXidError):
        xc.render_sxid_lines(99999, "0000:06:00.0")
    for kwargs in ({"switch": -1}, {"switch": 64}, {"link": 256}, {"link": True}, {"switch": "1"}):
        with pytest.raises(ValueError):
            xc.render_sxid_lines(28006, "0000:06:00.0", **kwargs)
    with pytest.raises(ValueError):
        xc.render_sxid_lines(28006, "0000:06:00")  # SXid lines need the function
    line = xc.render_sxid_lines(20034, "0000:06:00.0", link=2, message="LTSSM Fault Up; $(reboot)")[0]
    assert line.endswith(", Fatal, Link 02 LTSSM Fault Up (reboot)")


# --- PCI addresses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pci,xid_form", sorted(PCIS.items()))
def test_pci_conversion(pci, xid_form):
    assert xc.xid_pci(pci) == xid_form
    assert xc.format_pci_bdf(pci) == xid_form + "." + pci[-1]


def test_extended_domain_keeps_its_digits_when_they_matter():
    assert xc.xid_pci("0000c1f5:00:00.0") == "c1f5:00:00"
    assert xc.xid_pci("10000000:00:00.0") == "10000000:00:00"
    assert xc.parse_pci("0000:b5:1f.7") == (0, 0xB5, 0x1F, 7)


@pytest.mark.parametrize("bad", [
    "", "0000:b5:00", "0000:b5:00.8", "0000:b5:20.0", "000:b5:00.0", "00000:b5:00.0", "0000:b5:0.0",
    "0000:g5:00.0", "0000:b5:00.0\n", " 0000:b5:00.0", "0000:b5:00.0 ", "0000-b5-00.0", "0000:b5:00:0",
    "0000:b5:00.0; rm -rf /", "$(reboot)", "0000:b5:00.0\nNVRM: Xid (PCI:0000:00:00): 79",
    "\uff10000:b5:00.0", "0000:b5:00.0%n", "a" * 10240, None, 1234, b"0000:b5:00.0",
])
def test_malformed_pci_addresses_are_rejected(bad):
    for call in (xc.parse_pci, xc.format_pci_bdf, xc.xid_pci):
        with pytest.raises(ValueError):
            call(bad)
    with pytest.raises(ValueError):
        xc.render_xid_lines(79, bad)


# --- unknown codes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [9999, 0, -79, 46, "abc", "", "79 ", "\u0667\u0669", 79.0, True, None, [79]])
def test_unknown_codes_raise_a_clear_error(bad):
    with pytest.raises(xc.UnknownXidError) as caught:
        xc.get(bad)
    assert isinstance(caught.value, ValueError)
    assert "valid codes" in str(caught.value) and "79" in str(caught.value)
    with pytest.raises(ValueError):
        xc.render_xid_lines(bad, "0000:b5:00.0")


def test_codes_given_as_decimal_strings_are_accepted():
    assert xc.get("79") is xc.get(79)
    assert xid_line(xc.render_xid_lines("48", "0000:b5:00.0")).startswith("NVRM: Xid (PCI:0000:b5:00): 48, ")


def test_detector_rules_for_codes_outside_the_catalog():
    assert xc.nvsentinel_action(999, "NVRM: Xid (PCI:0000:b5:00): 999, whatever") == "CONTACT_SUPPORT"
    assert xc.aws_severity(999, "NVRM: Xid (PCI:0000:b5:00): 999, whatever") == "MONITOR"
    assert xc.aws_severity(999, "", {"a100": True, "mig": True, "uvm_in_use": True}) == "MONITOR"


def test_severity_order():
    assert xc.SEVERITY_ORDER == ("PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE")
    assert xc.max_severity() == "PASS"
    assert xc.max_severity("MONITOR", "ISOLATE", "RESET") == "ISOLATE"
    assert xc.max_severity(*(xc.aws_severity(code) for code in (13, 48, 79))) == "REBOOT"


# --- hostile input ------------------------------------------------------------------------------------

def printable_ascii(text):
    return all(0x20 <= ord(char) < 0x7F for char in text)


HOSTILE = [
    "Out Of Range Address\nkernel: fake line",
    "first\r\nsecond\x1b[31m red \x00 nul",
    "%n%n%s%x%p format string",
    "$(reboot); `id` | rm -rf / && echo 'pwned' > /etc/passwd \\ \"q\"",
    "A" * 10240,
    "GPU \u2620 fault \u00e9t\u00e9 \ufeff \u202e reversed",
]


@pytest.mark.parametrize("message", HOSTILE)
@pytest.mark.parametrize("code", (13, 79, 145, 154))
def test_hostile_message_overrides_are_sanitised(message, code):
    records = xc.render_xid_lines(code, "0000:b5:00.0", message=message)
    line = xid_line(records)
    detail = line.split("): %d, " % code, 1)[1]
    assert printable_ascii(line) and "\n" not in line
    assert not set("%$`;|&<>\\\"") & set(detail.replace("pid='<unknown>', name=<unknown>, ", ""))
    assert len(detail) <= xc.MAX_MESSAGE_LEN + len("pid='<unknown>', name=<unknown>, ")
    # The line still reads as the same fault to every detector.
    for text in forms(line).values():
        assert int(NVS_XID.search(text).group(2)) == code
    assert aws_code(line) == str(code)


def test_message_override_keeps_the_preamble_and_is_capped():
    line = xid_line(xc.render_xid_lines(13, "0000:b5:00.0", message="custom   detail\ttext"))
    assert line == "NVRM: Xid (PCI:0000:b5:00): 13, pid='<unknown>', name=<unknown>, custom detail text"
    long_line = xid_line(xc.render_xid_lines(62, "0000:b5:00.0", message="B" * 10240))
    assert long_line == "NVRM: Xid (PCI:0000:b5:00): 62, " + "B" * xc.MAX_MESSAGE_LEN
    custom_154 = xid_line(xc.render_xid_lines(154, "0000:b5:00.0",
                                              message="GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"))
    assert xc.nvsentinel_action(154, custom_154) == "RESTART_BM"


@pytest.mark.parametrize("message", [
    "", "   ", "\x00\x01\x02", "%%%$$$```", "\u2620\u2620", 42, b"bytes",
    "fake NVRM: Xid (PCI:0000:00:00): 79, GPU has fallen off the bus", "see xid 79", "nvidia-nvswitch0 SXid",
])
def test_unusable_or_forging_messages_are_rejected(message):
    with pytest.raises(ValueError):
        xc.render_xid_lines(13, "0000:b5:00.0", message=message)
    with pytest.raises(ValueError):
        xc.sanitize_message(message)


def test_process_name_pid_params_and_uuid_are_validated():
    line = xid_line(xc.render_xid_lines(43, "0000:b5:00.0", pid=0, process_name="py,th\non3; $(id)\u00e9"))
    match = NVS_XID.search(line)
    assert match.group(3) == "0" and match.group(4) == "pyth on3 id"
    assert len(NVS_XID.search(xid_line(xc.render_xid_lines(
        43, "0000:b5:00.0", pid=1, process_name="x" * 500))).group(4)) == xc.MAX_PROCESS_NAME_LEN
    for bad_pid in (-1, True, "12", 1.5, xc.PID_MAX + 1):
        with pytest.raises(ValueError):
            xc.render_xid_lines(43, "0000:b5:00.0", pid=bad_pid)
    for bad_name in ("%%%", 12, ",,,"):
        with pytest.raises(ValueError):
            xc.render_xid_lines(43, "0000:b5:00.0", process_name=bad_name)
    for bad_params in ({"gpc": "1); rm -rf /"}, {"gpc": True}, {"gpc": -1}, {"gpc": "a b"},
                       {"nope": 1}, {"pid": 5}, {"gpc": "\u0661"}, {"gpc": "x" * 65}):
        with pytest.raises(ValueError):
            xc.render_xid_lines(13, "0000:b5:00.0", params=bad_params)
    for bad_uuid in ("GPU-1234", "gpu-f1648d72-c7c8-9814-2832-7a062b009188", "GPU-f1648d72-c7c8-9814-2832-7a062b00918g",
                     "GPU-f1648d72-c7c8-9814-2832-7a062b009188\nNVRM: Xid", 7):
        with pytest.raises(ValueError):
            xc.render_xid_lines(13, "0000:b5:00.0", uuid=bad_uuid)


def test_every_default_rendering_is_printable_ascii():
    for code in xc.codes():
        for record in xc.render_xid_lines(code, "0000:b5:00.0", uuid="GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"):
            assert record.startswith("NVRM: ")
            assert all(printable_ascii(line) for line in record.split("\n")), record
    for code in xc.sxid_codes():
        assert all(printable_ascii(record) for record in xc.render_sxid_lines(code, "0000:06:00.0"))


# --- journald payload -------------------------------------------------------------------------------

def test_kmsg_text_survives_journald_identifier_parsing():
    line = xid_line(xc.render_xid_lines(79, "0000:b5:00.0"))
    assert xc.kmsg_text(line) == "NVRM: " + line
    sxid = xc.render_sxid_lines(28006, "0000:c1:00.0", switch=3, link=46)[0]
    assert xc.kmsg_text(sxid) == "nvidia-nvswitch3: " + sxid
    assert journald_message(xc.kmsg_text(sxid)) == sxid
    for bad in ("no identifier here", ": empty ident", "two words: x"):
        with pytest.raises(ValueError):
            xc.kmsg_text(bad)


# --- portability: the node agent imports this file with the standard library only --------------------

def test_module_imports_only_the_standard_library_and_has_no_asserts():
    tree = ast.parse(CATALOG_PATH.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
        assert not isinstance(node, ast.Assert)  # ansible-test no-assert
    assert imported and imported <= set(sys.stdlib_module_names)
    ast.parse(CATALOG_PATH.read_text(), feature_version=(3, 8))  # Python 3.8 syntax
