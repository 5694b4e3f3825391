"""xid_catalog_info run for real through `ansible localhost -m`: the catalog's expectations, NVSentinel's included."""
from ansible_cli import run_module

MODULE = "gpu_resilience.fault_injection.xid_catalog_info"


def test_every_code_with_nvsentinel_metadata():
    result = run_module(MODULE, {"taint_min_severity": "RESET"})  # (an empty -a is raw params)
    assert not result.get("failed") and result["changed"] is False
    xids = dict((x["code"], x) for x in result["xids"])
    sxids = dict((x["code"], x) for x in result["sxids"])
    assert len(xids) == 53 and len(sxids) == 8
    assert [(e["check"], e["action"], e["signal"]) for e in xids[79]["nvsentinel_events"]] == [
        ("SysLogsXIDError", "RESTART_BM", "condition"), ("SysLogsGPUFallenOff", "RESTART_BM", "condition")]
    assert (xids[48]["nvsentinel_action"], xids[48]["nvsentinel_signal"]) == ("COMPONENT_RESET", "condition")
    assert (xids[13]["nvsentinel_action"], xids[13]["nvsentinel_signal"]) == ("NONE", "event")
    assert xids[145]["nvsentinel_events"][0]["error_code"] == "145.RLW_REMAP"
    assert xids[145]["nvsentinel_action"] == "COMPONENT_RESET" and xids[144]["nvsentinel_action"] == "NONE"
    assert [e["error_code"] for e in xids[162]["nvsentinel_events"]] == ["162", "163"]
    assert xids[79]["expect_status"] == "fail" and xids[79]["cuda_error"] == {"code": 100, "name": "CUDA_ERROR_NO_DEVICE"}
    assert sxids[24007]["nvsentinel_events"][0]["action"] == "CONTACT_SUPPORT" and not sxids[24007]["nvsentinel_stalls"]
    assert sxids[28006]["nvsentinel_events"][0]["signal"] == "event"


def test_without_metadata_and_with_an_r575_driver():
    result = run_module(MODULE, {"codes": [48, 145], "sxid_codes": [24007], "nvsentinel_gpu_metadata": False})
    xids = dict((x["code"], x) for x in result["xids"])
    assert xids[48]["nvsentinel_action"] == "RESTART_VM" and xids[145]["nvsentinel_action"] == "RESTART_VM"
    assert result["sxids"][0]["nvsentinel_stalls"] is True and result["sxids"][0]["nvsentinel_events"] == []
    r575 = run_module(MODULE, {"codes": [145, 146], "sxid_codes": [28006], "nvsentinel_driver_version": "575.57.08"})
    assert [x["nvsentinel_action"] for x in r575["xids"]] == ["NONE", "COMPONENT_RESET"]


def test_unknown_codes_fail_naming_the_valid_ones():
    result = run_module(MODULE, {"sxid_codes": [1]})
    assert result["failed"] and "unknown SXid code 1" in result["msg"] and "24007" in result["msg"]
