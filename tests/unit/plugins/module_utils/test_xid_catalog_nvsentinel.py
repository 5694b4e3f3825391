"""The catalog's model of what NVIDIA NVSentinel decides (xid_catalog, section "What NVSentinel decides").

These pin the model's rules case by case; tests/integration/test_nvsentinel_decisions.py proves the
model against NVSentinel's own code for every record the catalog renders.
"""
import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog as xc

PCI = "0000:75:00.0"
UUID = "GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
SWITCH = "0000:06:00.0"


def metadata(driver="570.172.08", pci="00000000:75:00.0", links=((3, "00000000:06:00.0", 12),)):
    return {"driver_version": driver, "gpus": [{"gpu_id": 2, "uuid": UUID, "pci_address": pci, "nvlinks": [
        {"link_id": local, "remote_pci_address": remote, "remote_link_id": port} for local, remote, port in links]}]}


def messages(records):
    """What journald stores as MESSAGE for records the agent writes in its default form."""
    return [xc.journal_message(xc.kmsg_text(record))[1] for record in records]


def events(code, meta=None, **kwargs):
    return xc.nvsentinel_events(messages(xc.render_xid_lines(code, PCI, uuid=UUID, **kwargs)), meta)


def brief(found):
    return [(e["check"], e["error_code"], e["action"], e["signal"]) for e in found]


# --- journald -----------------------------------------------------------------------------------

@pytest.mark.parametrize("written,expected", [
    ("NVRM: NVRM: Xid (PCI:0000:75:00): 79, x", ("NVRM", "NVRM: Xid (PCI:0000:75:00): 79, x")),
    ("NVRM: Xid (PCI:0000:75:00): 79, x", ("NVRM", "Xid (PCI:0000:75:00): 79, x")),
    ("nvidia-nvswitch3: nvidia-nvswitch3: SXid", ("nvidia-nvswitch3", "nvidia-nvswitch3: SXid")),
    ("agent[42]: started", ("agent", "started")),
    ("  NVRM:  two blanks", ("NVRM", " two blanks")),
    ("NVRM:\nnext line", ("NVRM", "next line")),
    ("no identifier here", (None, "no identifier here")),
    (":", ("", "")),
])
def test_journal_message_follows_journalds_identifier_rule(written, expected):
    assert xc.journal_message(written) == expected


def test_journal_message_inverts_kmsg_text_for_every_rendered_record():
    for code in xc.codes():
        for record in xc.render_xid_lines(code, PCI, uuid=UUID):
            assert xc.journal_message(xc.kmsg_text(record))[1] == record
    for code in xc.sxid_codes():
        for record in xc.render_sxid_lines(code, SWITCH, switch=3, link=12):
            assert xc.journal_message(xc.kmsg_text(record))[1] == record


# --- buckets, driver branch, NVLink5 decoding ------------------------------------------------------

@pytest.mark.parametrize("bucket,action", [
    ("RESTART_APP", "NONE"), ("IGNORE", "NONE"), ("XID_154_EVAL", "NONE"), ("WORKFLOW_XID_45", "NONE"),
    ("RESET_GPU", "COMPONENT_RESET"), ("WORKFLOW_XID_48", "COMPONENT_RESET"), (" reset_gpu ", "COMPONENT_RESET"),
    ("RECOVER_FEATURE_RESET_GPU", "COMPONENT_RESET"), ("WORKFLOW_XID_168", "RESTART_VM"), ("RESET_FABRIC", "RESTART_VM"),
    ("RESTART_BM", "RESTART_BM"), ("CONTACT_SUPPORT", "CONTACT_SUPPORT"), ("WORKFLOW_NVLINK5_ERR", "CONTACT_SUPPORT"),
    ("CHECK_MECHANICALS", "CONTACT_SUPPORT"), ("", "CONTACT_SUPPORT"),
])
def test_bucket_actions(bucket, action):
    assert xc.nvsentinel_bucket_action(bucket) == action


@pytest.mark.parametrize("version,newer", [
    ("575.57.08", True), ("580.65.06", True), ("575", True), ("570.172.08", False), ("535.1", False),
    ("", False), (None, False), ("R575", False), ("abc.1", False),
])
def test_driver_branch(version, newer):
    assert xc.is_r575_or_newer(version) is newer


def test_intr_info_patterns():
    assert xc.intr_info_matches("------000000----------0010000010", 0x82)
    assert xc.intr_info_matches("------000000----------0010000010", 0xFC000082)  # "-" bits are free
    assert not xc.intr_info_matches("------000000----------0010000010", 0x00100082)  # bit 20 must be 0
    assert not xc.intr_info_matches("------000000-------------0000100", 0x82)
    assert xc.intr_info_matches("-" * 32, 0xFFFFFFFF)


# What the default 144-150 lines decode to (the comment of the XID table says the same).
DEFAULT_NVL5 = {144: ("NONE", "COMPONENT_RESET"), 145: ("COMPONENT_RESET", "NONE"), 146: ("NONE", "COMPONENT_RESET"),
                147: ("NONE", "NONE"), 148: ("NONE", "NONE"), 149: ("COMPONENT_RESET", "NONE"),
                150: ("COMPONENT_RESET", "COMPONENT_RESET")}


@pytest.mark.parametrize("code", xc.NVL5_CODES)
def test_default_nvlink5_lines_by_driver_branch(code):
    line = xc.render_xid_lines(code, PCI)[0]
    before, after = DEFAULT_NVL5[code]
    assert xc.nvsentinel_action(code, line) == before
    assert xc.nvsentinel_action(code, line, driver_version="570.172.08") == before
    assert xc.nvsentinel_action(code, line, driver_version="575.57.08") == after
    decoded = xc.nvl5_decode(line)
    assert decoded["error_code"] == "%d.%s" % (code, xc.get(code)["defaults"]["event"])
    assert xc.get(code)["nvsentinel_action"] == "CONTACT_SUPPORT"  # the Xids sheet's bucket


def test_nvlink5_error_code_and_row():
    line = xc.render_xid_lines(145, PCI)[0]
    decoded = xc.nvl5_decode(line)
    assert decoded["error_code"] == "145.RLW_REMAP" and decoded["code"] == 145
    assert decoded["row"][1] == "RLW_REMAP" and decoded["row"][5] == "RESET_GPU"
    # The subcode is the line's word, whatever the row: NVSentinel writes what the driver printed.
    other = xc.render_xid_lines(145, PCI, params={"event": "RLW_SRC_TRACK"})[0]
    assert xc.nvl5_decode(other)["error_code"] == "145.RLW_SRC_TRACK"


def test_nvlink5_line_no_row_decodes_is_none_not_contact_support():
    line = xc.render_xid_lines(145, PCI, params={"intr_info": "0000ffff", "error_status": "00000400"})[0]
    decoded = xc.nvl5_decode(line)
    assert decoded["action"] == "NONE" and decoded["row"] is None
    assert xc.nvsentinel_action(145, line) == "NONE"


def test_nvlink5_error_status_compares_as_text():
    upper = xc.render_xid_lines(150, PCI, params={"error_status": "FFFFFFFF"})[0]
    lower = xc.render_xid_lines(150, PCI, params={"error_status": "ffffffff"})[0]
    assert xc.nvl5_decode(upper)["action"] == "COMPONENT_RESET"
    assert xc.nvl5_decode(lower)["action"] == "NONE"


def test_nvlink5_first_matching_row_wins():
    """Rows sharing a pattern before R575 (TLW_RX pipes 0 and 1): the first one decides."""
    pipe1 = [row for row in xc.NVL5_DECODE if row[1] == "TLW_RX/TLW_RX_PIPE1" and row[5] == "RESET_GPU"][0]
    line = xc.render_xid_lines(146, PCI, params={"event": "TLW_RX_PIPE1", "error_status": "00000004",
                                                 "intr_info": "%08x" % int(pipe1[2].replace("-", "0"), 2)})[0]
    assert xc.nvl5_decode(line)["row"][1] == "TLW_RX/TLW_RX_PIPE0"
    assert xc.nvl5_decode(line, "575.1")["row"] is None  # pipe 1's R575 pattern differs from this IntrInfo


def test_lines_that_are_not_nvlink5_are_not_decoded():
    override = xc.render_xid_lines(145, PCI, message="link degraded")[0]
    assert xc.nvl5_decode(override) is None
    assert xc.nvsentinel_action(145, override) == "CONTACT_SUPPORT"  # the Xids sheet's bucket
    shaped = "NVRM: Xid (PCI:0000:75:00): 74, RLW_REMAP  Fatal   XC1 i0 Link 10 (0x00000082 0x00000040 0x0)"
    assert xc.nvl5_decode(shaped) is None  # 74 has no decode rows
    assert xc.nvl5_decode("") is None and xc.nvl5_decode(None) is None


def test_decode_table_covers_every_nvlink5_code_in_sheet_order():
    assert xc.NVL5_CODES == (144, 145, 146, 147, 148, 149, 150)
    codes = [row[0] for row in xc.NVL5_DECODE]
    assert codes == sorted(codes)
    for row in xc.NVL5_DECODE:
        assert len(row[2]) == 32 and len(row[3]) == 32 and set(row[2] + row[3]) <= set("01-"), row
        assert row[5] in ("IGNORE", "RESET_GPU", "XID_154_EVAL"), row
        assert all(status.startswith("0x") and len(status) == 10 for status in row[4]), row


def test_xid154_needs_parentheses_in_order():
    assert xc.nvsentinel_action(154, "GPU recovery action changed to 0x2 ) (Node Reboot Required") == "CONTACT_SUPPORT"


# --- events --------------------------------------------------------------------------------------

def test_xid79_gives_two_events():
    found = events(79, metadata())
    assert brief(found) == [("SysLogsXIDError", "79", "RESTART_BM", "condition"),
                            ("SysLogsGPUFallenOff", "GPU_FALLEN_OFF_BUS", "RESTART_BM", "condition")]
    assert found[0]["pci"] == "0000:75:00" and found[0]["gpu_uuid"] == UUID
    assert found[1]["pci"] == PCI and found[1]["gpu_uuid"] is None and found[1]["pci_id"] == "10de:2330"


def test_metadata_decides_component_reset_and_the_uuid():
    assert brief(events(48, metadata())) == [("SysLogsXIDError", "48", "COMPONENT_RESET", "condition")]
    assert events(48, metadata())[0]["gpu_uuid"] == UUID
    # No metadata: RESTART_VM, the UUID from the driver's "GPU at PCI" line.
    assert brief(events(48)) == [("SysLogsXIDError", "48", "RESTART_VM", "condition")]
    assert events(48)[0]["gpu_uuid"] == UUID
    # Metadata without this GPU: the same.
    other = metadata(pci="00000000:3b:00.0")
    assert events(48, other)[0]["action"] == "RESTART_VM"
    # Neither: no UUID at all.
    bare = xc.nvsentinel_events(messages(xc.render_xid_lines(48, PCI)))
    assert bare[0]["gpu_uuid"] is None and bare[0]["action"] == "RESTART_VM"
    # Other actions are not touched.
    assert events(79)[0]["action"] == "RESTART_BM" and events(13)[0]["action"] == "NONE"


def test_metadata_pci_addresses_are_normalised():
    line = xc.render_xid_lines(48, "00000001:00:00.0", uuid=UUID)
    meta = metadata(pci="00000001:00:00.0")
    assert xc.nvsentinel_events(messages(line), meta)[0]["action"] == "COMPONENT_RESET"


def test_non_fatal_events_go_to_kubernetes_events():
    assert brief(events(13, metadata())) == [("SysLogsXIDError", "13", "NONE", "event")]
    assert events(13, metadata())[0]["fatal"] is False


def test_xid154_recovery_actions():
    assert events(154, metadata(), recovery_action="Node Reboot Required")[0]["action"] == "RESTART_BM"
    assert events(154, metadata(), recovery_action="None")[0]["signal"] == "event"
    assert events(154, metadata(), recovery_action="Drain P2P")[0]["action"] == "CONTACT_SUPPORT"
    assert events(154, recovery_action="Drain and Reset")[0]["action"] == "RESTART_VM"


def test_cancellation_rules_add_a_healthy_event():
    found = events(162, metadata())
    assert brief(found) == [("SysLogsXIDError", "162", "CONTACT_SUPPORT", "condition"),
                            ("SysLogsXIDError", "163", "NONE", "condition")]
    assert found[1]["healthy"] and not found[1]["fatal"] and found[1]["gpu_uuid"] == UUID
    assert brief(xc.nvsentinel_events(messages(xc.render_xid_lines(162, PCI)), cancellations={})) == [
        ("SysLogsXIDError", "162", "CONTACT_SUPPORT", "condition")]


def test_nvlink5_events_by_driver_in_the_metadata():
    assert events(145, metadata())[0]["error_code"] == "145.RLW_REMAP"
    assert events(145, metadata())[0]["action"] == "COMPONENT_RESET"
    assert events(145, metadata(driver="575.57.08"))[0]["action"] == "NONE"
    assert events(145)[0]["action"] == "RESTART_VM"  # no metadata: before R575, then the metadata rule


def test_sxids_need_the_port_in_the_metadata():
    records = xc.render_sxid_lines(24007, SWITCH, switch=3, link=12)
    found = xc.nvsentinel_events(messages(records), metadata())
    assert brief(found) == [("SysLogsSXIDError", "24007", "CONTACT_SUPPORT", "condition")]
    assert (found[0]["pci"], found[0]["gpu_uuid"], found[0]["gpu"], found[0]["nvswitch"], found[0]["link"]) == (
        SWITCH, UUID, 2, 3, 12)
    assert xc.nvsentinel_stalls(messages(records), metadata()) == []
    nonfatal = xc.nvsentinel_events(messages(xc.render_sxid_lines(28006, SWITCH, switch=3, link=12)), metadata())
    assert brief(nonfatal) == [("SysLogsSXIDError", "28006", "NONE", "event")]
    for meta in (None, metadata(links=((3, "00000000:06:00.0", 13),))):
        assert xc.nvsentinel_events(messages(records), meta) == []
        assert xc.nvsentinel_stalls(messages(records), meta) == [records[0]]


def test_records_written_as_the_driver_prints_them_are_invisible():
    for code in xc.codes():
        written = xc.render_xid_lines(code, PCI, uuid=UUID)  # record form dmesg
        assert xc.nvsentinel_events([xc.journal_message(text)[1] for text in written], metadata()) == []
    sxid = xc.render_sxid_lines(24007, SWITCH, switch=3, link=12)
    assert xc.nvsentinel_events([xc.journal_message(text)[1] for text in sxid], metadata()) == []


def test_every_catalog_record_has_an_expectation_with_metadata():
    for code in xc.codes():
        found = events(code, metadata())
        assert found and found[0]["check"] == "SysLogsXIDError" and found[0]["signal"] in xc.NVSENTINEL_SIGNALS
        assert found[0]["action"] in xc.NVSENTINEL_ACTIONS
    for code in xc.sxid_codes():
        found = xc.nvsentinel_events(messages(xc.render_sxid_lines(code, SWITCH, switch=3, link=12)), metadata())
        assert len(found) == 1 and found[0]["fatal"] is xc.get_sxid(code)["fatal"]


@pytest.mark.parametrize("bad", [[], "json", {"gpus": "x"}, {"gpus": [{"uuid": UUID}]}, {"gpus": [{"pci_address": PCI}]}])
def test_bad_metadata_is_refused(bad):
    with pytest.raises(ValueError):
        xc.nvsentinel_events(["NVRM: Xid (PCI:0000:75:00): 48, x"], bad)
