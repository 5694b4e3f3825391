"""drill_report run for real through `ansible localhost -m`: files, idempotence, check and diff mode, errors."""
import json
import os
import xml.etree.ElementTree as ET

import pytest

from ansible_cli import run_module

FQCN = "gpu_resilience.fault_injection.drill_report"
NAMES = ("xid79-drill-junit.xml", "xid79-drill-timeline.json", "xid79-drill-timeline.svg")


def ansible_module(args, check=False, diff=False):
    """Run drill_report on localhost with the virtualenv's ansible; return the task result."""
    return run_module(FQCN, args, *(["--check"] if check else []) + (["--diff"] if diff else []))


def drill_args(dest):
    events = []
    for node, offset in (("gpu-node-1", 0.0), ("gpu-node-2", 0.1)):
        for kind, after in (("inject", 0), ("detect", 0.4), ("quarantine", 0.6), ("drain", 5), ("recovery", 12)):
            events.append(dict(time=1795371601.0 + offset + after, node=node, kind=kind, detail=kind + " seen"))
    return dict(
        drill="xid79-drill", dest=str(dest), target_nodes=["gpu-node-1", "gpu-node-2"],
        phases=[
            dict(name="inject-xid79", started="2026-11-22T18:20:00.7Z", finished="2026-11-22T18:20:01.15Z",
                 status="passed", details=dict(xid=79)),
            dict(name="wait-quarantine", started="2026-11-22T18:20:01.15Z", finished="2026-11-22T18:20:01.75Z",
                 status="passed"),
            dict(name="recovery", started="2026-11-22T19:20:01.75+01:00", finished="2026-11-22T18:20:13.3Z",
                 status="failed", message="trainer <not> \"ready\" ]]>"),
        ],
        events=events)


def snapshot(directory):
    return dict((name, os.stat(os.path.join(directory, name)).st_ino) for name in sorted(os.listdir(directory)))


def test_writes_three_reports_then_changes_nothing(tmp_path):
    dest = tmp_path / "reports" / "nested"
    first = ansible_module(drill_args(dest))
    assert first.get("failed") is not True, first
    assert first["changed"] is True
    assert first["files"] == [str(dest / name) for name in NAMES]
    assert first["updated"] == first["files"]
    assert sorted(os.listdir(dest)) == sorted(NAMES)  # no temporary files left

    summary = first["summary"]
    assert (summary["time_to_detect"], summary["time_to_quarantine"], summary["time_to_drain"],
            summary["time_to_recover"], summary["result"]) == (0.4, 0.6, 5.0, 12.0, "failed")
    with open(dest / NAMES[1]) as f:
        doc = json.load(f)
    assert doc["summary"] == summary
    suite = ET.parse(str(dest / NAMES[0])).getroot().find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("xid79-drill", "3", "1")
    assert suite.findall("testcase")[2].find("failure").get("message") == "trainer <not> \"ready\" ]]>"
    svg = ET.parse(str(dest / NAMES[2])).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and svg.get("width") == "1000"

    before = snapshot(dest)
    second = ansible_module(drill_args(dest))
    assert second["changed"] is False and second["updated"] == []
    assert snapshot(dest) == before  # not rewritten


def test_check_mode_writes_nothing(tmp_path):
    dest = tmp_path / "reports"
    result = ansible_module(drill_args(dest), check=True)
    assert result["changed"] is True
    assert result["updated"] == [str(dest / name) for name in NAMES]
    assert result["summary"]["time_to_detect"] == 0.4
    assert not dest.exists()

    ansible_module(drill_args(dest))
    before = dict((name, (dest / name).read_bytes()) for name in NAMES)
    changed = drill_args(dest)
    changed["phases"][2]["status"] = "passed"
    result = ansible_module(changed, check=True)
    assert result["changed"] is True and len(result["updated"]) == 3
    assert dict((name, (dest / name).read_bytes()) for name in NAMES) == before


def test_diff_mode_shows_the_json(tmp_path):
    dest = tmp_path / "reports"
    ansible_module(drill_args(dest))
    changed = drill_args(dest)
    changed["phases"][2].update(status="passed", message="trainer ready on gpu-node-3")
    result = ansible_module(changed, diff=True)
    assert result["changed"] is True
    diff = result["diff"]
    assert diff["before_header"] == diff["after_header"] == str(dest / NAMES[1])
    assert json.loads(diff["before"])["result"] == "failed"
    assert json.loads(diff["after"])["result"] == "passed"
    assert (dest / NAMES[1]).read_text() == diff["after"]


def test_formats_select_the_reports(tmp_path):
    args = drill_args(tmp_path)
    args["formats"] = ["junit"]
    result = ansible_module(args)
    assert result["files"] == [str(tmp_path / NAMES[0])]
    assert os.listdir(tmp_path) == [NAMES[0]]


@pytest.mark.parametrize("change, words", [
    (dict(drill="XID79 drill"), "'XID79 drill' is not a valid drill id"),
    (dict(drill="../escape"), "is not a valid drill id"),
    (dict(started="2026-11-22T18:19:54"), "started: '2026-11-22T18:19:54' has no time zone"),
    (dict(result="maybe"), "value of result must be one of: passed, failed"),
])
def test_bad_input_fails_clearly(tmp_path, change, words):
    args = drill_args(tmp_path / "reports")
    args.update(change)
    result = ansible_module(args)
    assert result["failed"] is True
    assert words in result["msg"]
    assert not (tmp_path / "reports").exists()


def test_bad_event_kind_fails_clearly(tmp_path):
    args = drill_args(tmp_path)
    args["events"][3]["kind"] = "explode"
    result = ansible_module(args)
    assert result["failed"] is True
    assert "kind" in result["msg"] and "explode" in result["msg"]
    assert os.listdir(tmp_path) == []


def test_phase_fields_are_checked(tmp_path):
    args = drill_args(tmp_path)
    args["phases"][1]["finshed"] = args["phases"][1].pop("finished")
    result = ansible_module(args)
    assert result["failed"] is True
    assert result["msg"].startswith("phases[1] (wait-quarantine): unknown key(s) finshed; the keys are name, started")
    args = drill_args(tmp_path)
    args["phases"][0]["status"] = "ok"
    result = ansible_module(args)
    assert result["failed"] is True and "status 'ok' is not one of passed, failed, skipped, error" in result["msg"]
    assert os.listdir(tmp_path) == []


def test_dest_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    result = ansible_module(drill_args(tmp_path / "file"))
    assert result["failed"] is True and "is not a directory" in result["msg"]
