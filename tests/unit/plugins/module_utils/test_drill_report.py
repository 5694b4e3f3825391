"""drill_report's pure logic: times, the summary of a realistic XID 79 drill, the JUnit XML, the SVG."""
import copy
import json
import os
import re
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_report as dr
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_report import DrillReportError

SVG = "{http://www.w3.org/2000/svg}"
NODES = ["gpu-node-1", "gpu-node-2"]
HOSTILE = "<script>alert(\"x\")</script> & 'quoted' ]]> done"


def xid79_drill():
    """XID 79 on two nodes: inject at t0, detect +0.4 s, quarantine +0.6 s, drain +5 s, recovery +12 s
    (gpu-node-2 injected 0.1 s after gpu-node-1); the events come unsorted, as gathered."""
    events = []
    for node, ts in (("gpu-node-2", ["01.1", "01.5", "01.7", "06.1", "13.1"]),
                     ("gpu-node-1", ["01", "01.4", "01.6", "06", "13"])):
        for kind, t in zip(("inject", "detect", "quarantine", "drain", "recovery"), ts):
            events.append(dict(time="2026-11-22T18:20:%sZ" % t, node=node, kind=kind, detail="%s on %s" % (kind, node)))
    events.append(dict(time="2026-11-22T18:20:06.3Z", node="gpu-node-1", kind="evict", detail="pod trainer-0"))
    events.append(dict(time="2026-11-22T18:20:15.2Z", node=None, kind="cleanup", detail="GPUFault objects deleted"))
    phases = [
        dict(name="preflight", started="2026-11-22T18:19:54.8Z", finished="2026-11-22T18:19:59.9Z", status="passed",
             message="agents live on 2 nodes"),
        dict(name="inject-xid79", started="2026-11-22T18:20:00.7Z", finished="2026-11-22T18:20:01.15Z",
             status="passed", details={"xid": 79, "gpu": "2"}),
        dict(name="wait-quarantine", started="2026-11-22T18:20:01.15Z", finished="2026-11-22T18:20:01.75Z",
             status="passed"),
        dict(name="drain", started="2026-11-22T18:20:01.75Z", finished="2026-11-22T18:20:06.2Z", status="passed"),
        dict(name="recovery", started="2026-11-22T18:20:06.2Z", finished="2026-11-22T18:20:13.3Z", status="passed"),
        dict(name="cleanup", started="2026-11-22T18:20:13.3Z", finished="2026-11-22T18:20:15.6Z", status="passed"),
    ]
    return dict(drill="xid79-drill", phases=phases, events=events, target_nodes=list(NODES))


def report_of(**changes):
    args = xid79_drill()
    args.update(changes)
    return dr.build_report(**args)


# --- times ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "2026-11-22T18:20:01Z", "2026-11-22t18:20:01z", "2026-11-22 18:20:01Z", "2026-11-22T19:20:01+01:00",
    "2026-11-22T12:50:01-05:30", "2026-11-23T03:20:01+0900", "2026-11-22T18:20:01.000Z", 1795371601,
    1795371601.0, "1795371601", " 1795371601.000 ",
])
def test_the_same_instant_in_every_form(value):
    assert dr.parse_time(value) == 1795371601 * 1000000
    assert dr.format_time(dr.parse_time(value)) == "2026-11-22T18:20:01Z"


def test_fractions_are_kept_to_the_microsecond():
    assert dr.parse_time("2026-11-22T18:20:01.4Z") - dr.parse_time("2026-11-22T18:20:01Z") == 400000
    assert dr.parse_time("2026-11-22T18:20:01.123456789Z") % 1000000 == 123456  # nanoseconds cut
    assert dr.parse_time(1795371601.25) == dr.parse_time("2026-11-22T19:20:01.25+01:00")
    assert dr.format_time(dr.parse_time("2026-11-22T18:20:01.120Z")) == "2026-11-22T18:20:01.12Z"


def test_offsets_across_midnight_and_leap_second():
    assert dr.format_time(dr.parse_time("2026-11-23T00:30:00+01:00")) == "2026-11-22T23:30:00Z"
    assert dr.format_time(dr.parse_time("2016-12-31T23:59:60Z")) == "2016-12-31T23:59:59.999999Z"


@pytest.mark.parametrize("value, words", [
    ("2026-11-22T18:20:01", "no time zone"),
    ("2026-11-22T18:20:01.5", "no time zone"),
    ("2026-02-30T18:20:01Z", "not a valid date"),
    ("2026-11-22T18:20:01+25:00", "invalid time zone offset"),
    ("yesterday", "neither an RFC 3339 time"),
    (1795371601123, "milliseconds"),
    (-5, "not a valid number"),
    (float("nan"), "not a valid number"),
    (True, "expected an RFC 3339 time"),
    ([1], "expected an RFC 3339 time"),
])
def test_bad_times_are_refused_clearly(value, words):
    with pytest.raises(DrillReportError, match=words):
        dr.parse_time(value, "events[0]: time")


def test_timezones_do_not_change_the_summary():
    local = xid79_drill()
    for e in local["events"]:  # the same instants written in UTC-03:00
        us = dr.parse_time(e["time"]) - 3 * 3600 * 1000000
        e["time"] = dr.format_time(us).replace("Z", "-03:00")
    assert dr.build_report(**local)["summary"] == report_of()["summary"]
    assert dr.build_report(**local)["events"] == report_of()["events"]


# --- the report ------------------------------------------------------------------------------------

def test_realistic_xid79_summary():
    report = report_of()
    s = report["summary"]
    assert s["result"] == "passed"
    assert s["injected_at"] == "2026-11-22T18:20:01Z"
    assert (s["time_to_detect"], s["time_to_quarantine"], s["time_to_drain"], s["time_to_recover"]) == \
        (0.4, 0.6, 5.0, 12.0)
    assert s["time_to_last_recovery"] == 12.1
    assert s["phases"] == dict(total=6, passed=6, failed=0, skipped=0, error=0)
    assert list(s["nodes"]) == NODES
    for node, injected in (("gpu-node-1", "2026-11-22T18:20:01Z"), ("gpu-node-2", "2026-11-22T18:20:01.1Z")):
        entry = s["nodes"][node]
        assert entry["injected_at"] == injected
        assert (entry["time_to_detect"], entry["time_to_quarantine"], entry["time_to_drain"],
                entry["time_to_recover"]) == (0.4, 0.6, 5.0, 12.0)
    assert s["nodes"]["gpu-node-1"]["events"] == 6 and s["nodes"]["gpu-node-2"]["events"] == 5


def test_timeline_is_normalised_and_sorted():
    report = report_of()
    assert (report["started"], report["finished"], report["duration_seconds"]) == \
        ("2026-11-22T18:19:54.8Z", "2026-11-22T18:20:15.6Z", 20.8)
    times = [e["time"] for e in report["events"]]
    assert times == sorted(times, key=dr.parse_time)
    first = report["events"][0]
    assert first == dict(time="2026-11-22T18:20:01Z", seconds_since_start=6.2, seconds_since_inject=0.0,
                         node="gpu-node-1", kind="inject", detail="inject on gpu-node-1")
    detect2 = next(e for e in report["events"] if e["node"] == "gpu-node-2" and e["kind"] == "detect")
    assert detect2["seconds_since_inject"] == 0.4  # from gpu-node-2's own inject
    cleanup = report["events"][-1]
    assert cleanup["node"] is None and cleanup["seconds_since_inject"] == 14.2  # from the first inject
    drain = report["phases"][3]
    assert (drain["start_seconds"], drain["duration_seconds"]) == (6.95, 4.45)
    assert report["phases"][1]["details"] == {"xid": 79, "gpu": "2"}
    doc = json.loads(dr.timeline_json(report))
    assert list(doc) == ["drill", "result", "started", "finished", "duration_seconds", "target_nodes", "phases",
                         "events", "verification", "summary"]
    assert doc["verification"] is None and doc["summary"]["as_before"] is None
    assert doc == report


def test_given_drill_times_and_result_win():
    report = report_of(started="2026-11-22T18:19:50Z", finished=1795371620.0, result="failed")
    assert (report["started"], report["finished"], report["result"]) == \
        ("2026-11-22T18:19:50Z", "2026-11-22T18:20:20Z", "failed")
    assert report["events"][0]["seconds_since_start"] == 11.0


def test_missing_events_give_null_measures():
    args = xid79_drill()
    args["events"] = [e for e in args["events"] if e["kind"] not in ("quarantine", "recovery")
                      and not (e["kind"] == "detect" and e["node"] == "gpu-node-2")]
    s = dr.build_report(**args)["summary"]
    assert s["time_to_detect"] == 0.4 and s["time_to_drain"] == 5.0
    assert s["time_to_quarantine"] is None and s["time_to_recover"] is None and s["time_to_last_recovery"] is None
    assert s["nodes"]["gpu-node-2"]["time_to_detect"] is None
    assert s["nodes"]["gpu-node-1"]["time_to_detect"] == 0.4


def test_no_inject_no_measures_and_nodes_without_events():
    args = xid79_drill()
    args["events"] = [e for e in args["events"] if e["kind"] != "inject"]
    args["target_nodes"] = NODES + ["gpu-node-3"]
    report = dr.build_report(**args)
    s = report["summary"]
    assert s["injected_at"] is None
    assert all(s[k] is None for k in ("time_to_detect", "time_to_quarantine", "time_to_drain", "time_to_recover",
                                      "time_to_last_recovery"))
    assert s["nodes"]["gpu-node-3"] == dict(injected_at=None, time_to_detect=None, time_to_quarantine=None,
                                            time_to_drain=None, time_to_remediate=None, time_to_recover=None, events=0)
    assert all(e["seconds_since_inject"] is None for e in report["events"])
    assert "no inject event" in dr.timeline_svg(report)


def test_nodes_only_named_by_events_follow_the_targets():
    args = xid79_drill()
    args["events"].append(dict(time="2026-11-22T18:20:09Z", node="gpu-node-3", kind="reschedule",
                               detail="trainer-0 started"))
    report = dr.build_report(**args)
    assert report["target_nodes"] == NODES
    assert list(report["summary"]["nodes"]) == NODES + ["gpu-node-3"]
    assert report["summary"]["nodes"]["gpu-node-3"]["injected_at"] is None


def test_result_follows_the_phases_unless_given():
    args = xid79_drill()
    args["phases"][4]["status"] = "error"
    assert dr.build_report(**args)["result"] == "failed"
    args["phases"][4]["status"] = "skipped"
    assert dr.build_report(**args)["result"] == "passed"


def test_skipped_phase_without_times():
    args = xid79_drill()
    args["phases"].append(dict(name="reboot", status="skipped", message="not needed"))
    report = dr.build_report(**args)
    reboot = report["phases"][-1]
    assert (reboot["started"], reboot["finished"], reboot["start_seconds"], reboot["duration_seconds"]) == \
        (None, None, None, 0.0)
    assert "skipped, not timed: reboot" in dr.timeline_svg(report)


@pytest.mark.parametrize("drill", ["", "Xid79", "-xid", ".xid", "xid 79", "xid_79", "a" * 64, "../etc", None, 79])
def test_bad_drill_ids(drill):
    with pytest.raises(DrillReportError, match="not a valid drill id"):
        dr.build_report(drill, started=0)


@pytest.mark.parametrize("drill", ["x", "xid79", "xid79-2026.11.22", "0", "a" * 63])
def test_good_drill_ids(drill):
    assert dr.validate_drill(drill) == drill


@pytest.mark.parametrize("change, words", [
    (dict(phases=[dict(name="p", started=10, finished=5, status="passed")]), r"phases\[0\] \(p\): finished .* before"),
    (dict(phases=[dict(name="p", started=10, finished=15, status="ok")]), "status 'ok' is not one of"),
    (dict(phases=[dict(name="p", started=10, finished=15)]), "status None is not one of"),
    (dict(phases=[dict(name="p", started=10, status="failed")]), r"phases\[0\] \(p\): finished is required"),
    (dict(phases=[dict(name="p", status="passed")]), "started and finished are required"),
    (dict(phases=[dict(started=1, finished=2, status="passed")]), r"phases\[0\]: name is required"),
    (dict(phases=[dict(name="p", started=1, finished="soon", status="passed")]), r"\(p\): finished: 'soon'"),
    (dict(phases=[dict(name="p", started=1, finished=2, status="passed", details=[1])]), "details must be a dict"),
    (dict(phases=[dict(name="p", started=1, finshed=2, status="passed")]),
     r"phases\[0\] \(p\): unknown key\(s\) finshed; the keys are name, started, finished"),
    (dict(events=[dict(time=1, kind="note", when=2)]), r"events\[0\]: unknown key\(s\) when"),
    (dict(events=[dict(time=1, kind="explode")]), r"events\[0\]: kind 'explode'"),
    (dict(events=[dict(kind="detect")]), r"events\[0\] \(detect\): time is required"),
    (dict(events=[dict(time="2026-11-22T18:20:01", kind="detect")]), "no time zone"),
    (dict(result="maybe"), "result 'maybe'"),
    (dict(started=20, finished=10), "finished .* is before started"),
    (dict(target_nodes=[""]), "not a node name"),
])
def test_bad_input_names_the_field(change, words):
    args = dict(drill="d", phases=[], events=[], started=1)
    args.update(change)
    with pytest.raises(DrillReportError, match=words):
        dr.build_report(**args)


def test_nothing_to_report():
    with pytest.raises(DrillReportError, match="nothing to report"):
        dr.build_report("d")
    report = dr.build_report("d", started="2026-11-22T18:20:01Z")
    assert report["duration_seconds"] == 0.0 and report["finished"] == report["started"]
    ET.fromstring(dr.timeline_svg(report))
    ET.fromstring(dr.junit_xml(report))


def test_the_input_is_not_modified():
    args = xid79_drill()
    before = copy.deepcopy(args)
    dr.build_report(**args)
    assert args == before


# --- JUnit XML --------------------------------------------------------------------------------------

def failing_drill():
    args = xid79_drill()
    args["phases"][2].update(status="failed", message="no quarantine within 120 s", details={"marks": []})
    args["phases"][3].update(status="skipped", message="node not quarantined")
    args["phases"][5].update(status="error", message="GPUFault object stuck in Terminating")
    return dr.build_report(**args)


def test_junit_counts_properties_and_cases():
    root = ET.fromstring(dr.junit_xml(failing_drill()))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    assert suite.get("name") == "xid79-drill"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("6", "1", "1", "1")
    assert suite.get("time") == "20.800" and suite.get("timestamp") == "2026-11-22T18:19:54"
    props = [(p.get("name"), p.get("value")) for p in suite.find("properties")]
    assert ("result", "failed") in props and ("target_nodes", "gpu-node-1,gpu-node-2") in props
    assert ("target_node", "gpu-node-1") in props and ("target_node", "gpu-node-2") in props
    assert ("time_to_detect", "0.4") in props
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "preflight", "inject-xid79", "wait-quarantine", "drain", "recovery", "cleanup"]
    assert {c.get("classname") for c in cases} == {"gpu_resilience.drill.xid79-drill"}
    assert [c.get("time") for c in cases] == ["5.100", "0.450", "0.600", "4.450", "7.100", "2.300"]


def test_junit_failure_error_skipped():
    cases = dict((c.get("name"), c) for c in ET.fromstring(dr.junit_xml(failing_drill())).iter("testcase"))
    failure = cases["wait-quarantine"].find("failure")
    assert failure.get("message") == "no quarantine within 120 s"
    assert "details: {\"marks\": []}" in failure.text
    error = cases["cleanup"].find("error")
    assert error.get("message") == "GPUFault object stuck in Terminating"
    assert cases["drain"].find("skipped").get("message") == "node not quarantined"
    for name in ("preflight", "inject-xid79", "recovery"):
        assert [child.tag for child in cases[name]] == ["system-out"]
    assert "details: {\"gpu\": \"2\", \"xid\": 79}" in cases["inject-xid79"].find("system-out").text


def test_junit_suite_output_lists_the_events():
    suite = ET.fromstring(dr.junit_xml(report_of())).find("testsuite")
    lines = suite.find("system-out").text.splitlines()
    assert lines[0] == "drill xid79-drill: passed in 20.8 s"
    assert lines[2].startswith("2026-11-22T18:20:01.1Z  inject     gpu-node-2  (+0 s since inject)")
    assert lines[3].startswith("2026-11-22T18:20:01.4Z  detect     gpu-node-1  (+0.4 s since inject)")


# --- escaping ---------------------------------------------------------------------------------------

def hostile_report():
    args = xid79_drill()
    args["target_nodes"] = NODES + [HOSTILE]
    args["phases"][2].update(name="wait " + HOSTILE, status="failed", message=HOSTILE, details={HOSTILE: HOSTILE},
                             node=HOSTILE)
    args["phases"][3].update(status="skipped", message="\x00bell\x07 " + HOSTILE)
    args["events"].append(dict(time="2026-11-22T18:20:02Z", node=HOSTILE, kind="note", detail=HOSTILE))
    return dr.build_report(**args)


def test_junit_escapes_hostile_strings():
    text = dr.junit_xml(hostile_report())
    assert "<script>" not in text and "]]>" not in text
    root = ET.fromstring(text)  # well-formed
    case = next(c for c in root.iter("testcase") if c.get("name") == "wait " + HOSTILE)
    assert case.find("failure").get("message") == HOSTILE
    assert "node: " + HOSTILE in case.find("failure").text
    skipped = next(c for c in root.iter("testcase") if c.get("name") == "drain").find("skipped")
    assert skipped.get("message") == "\ufffdbell\ufffd " + HOSTILE  # characters XML cannot hold
    assert ("target_node", HOSTILE) in [(p.get("name"), p.get("value")) for p in root.iter("property")]


def test_svg_escapes_hostile_strings():
    text = dr.timeline_svg(hostile_report())
    assert "<script" not in text and "]]>" not in text
    root = ET.fromstring(text)
    assert root.find(SVG + "script") is None and not list(root.iter(SVG + "script"))
    titles = [t.text for t in root.iter(SVG + "title")]
    assert any(t and t.endswith(": " + HOSTILE) for t in titles)  # the note's tooltip, intact
    assert "FAILED wait " + HOSTILE + ": " + HOSTILE in [t.text for t in root.iter(SVG + "text")]


def test_json_keeps_hostile_strings_exactly():
    report = hostile_report()
    doc = json.loads(dr.timeline_json(report))
    assert doc["phases"][2]["message"] == HOSTILE and doc["phases"][2]["details"] == {HOSTILE: HOSTILE}
    assert doc["phases"][3]["message"] == "\x00bell\x07 " + HOSTILE


def test_lone_surrogates_are_replaced():
    report = report_of(target_nodes=["gpu-\udcff"])
    assert report["target_nodes"] == ["gpu-\ufffd"]
    dr.timeline_json(report).encode("utf-8")


# --- SVG --------------------------------------------------------------------------------------------

def test_svg_is_well_formed_and_readable():
    text = dr.timeline_svg(report_of())
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg ')
    root = ET.fromstring(text)
    assert root.tag == SVG + "svg"
    assert root.get("width") == "1000" and root.get("viewBox") == "0 0 1000 %s" % root.get("height")
    assert 300 < int(root.get("height")) < 800
    texts = [t.text for t in root.iter(SVG + "text")]
    assert texts[0] == "Drill xid79-drill \u2014 20.8 s total" and "PASSED" in texts
    for lane in ["drill"] + NODES + ["drill events"]:
        assert lane in texts
    for label in ("inject t0", "detect +0.4 s", "quarantine +0.6 s", "drain +5 s", "recovery +12 s"):
        assert texts.count(label) == 2, label  # once per node
    for tick in ("0 s", "5 s", "10 s", "15 s", "20 s"):
        assert tick in texts
    for legend in ("passed", "failed", "skipped", "error", "inject", "detect", "quarantine", "drain", "recovery"):
        assert legend in texts
    bars = [r for r in root.iter(SVG + "rect") if r.get("fill") == dr.PHASE_COLORS["passed"][0]
            and r.get("height") == "18"]
    assert len(bars) == 6
    assert "reaction to the first inject: detect +0.4 s \u00b7 quarantine +0.6 s \u00b7 drain +5 s \u00b7 " \
           "recovery +12 s (last recovery +12.1 s)" in texts


def test_svg_is_deterministic():
    first = dr.timeline_svg(report_of())
    assert dr.timeline_svg(report_of()) == first
    shuffled = xid79_drill()
    shuffled["events"].reverse()  # no two events at the same time: order of input does not matter
    assert dr.timeline_svg(dr.build_report(**shuffled)) == first
    assert dr.junit_xml(report_of()) == dr.junit_xml(report_of())
    assert dr.timeline_json(report_of()) == dr.timeline_json(report_of())


def test_svg_failure_lines_and_colours():
    root = ET.fromstring(dr.timeline_svg(failing_drill()))
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "FAILED" in texts
    assert "FAILED wait-quarantine: no quarantine within 120 s" in texts
    assert "ERROR cleanup: GPUFault object stuck in Terminating" in texts
    fills = [r.get("fill") for r in root.iter(SVG + "rect") if r.get("height") == "18"]
    assert fills.count(dr.PHASE_COLORS["failed"][0]) == 1 and fills.count(dr.PHASE_COLORS["error"][0]) == 1
    assert fills.count(dr.PHASE_COLORS["skipped"][0]) == 1


def boxes(items):
    return [(i["tier"], i["extent"]) for i in items]


def test_event_labels_never_overlap_in_a_burst():
    t0 = 1795371601.0
    kinds = ["inject", "detect", "quarantine", "drain", "evict", "evict", "reschedule", "recovery", "note", "cleanup"]
    events = [dict(time=t0 + i * 0.1, node="n", kind=k) for i, k in enumerate(kinds)]
    report = dr.build_report("burst", events=events, finished=t0 + 60)
    items, tiers = dr._layout_events(report["events"], lambda t: 100 + t * 14, 986)
    assert tiers == len(kinds)
    for a in items:
        for b in items:
            if a is not b and a["tier"] == b["tier"]:
                assert a["extent"][1] <= b["extent"][0] or b["extent"][1] <= a["extent"][0]
            if a is not b and b["tier"] < a["tier"]:  # a's leader line passes b's tier
                assert not b["extent"][0] - 2 <= a["x"] <= b["extent"][1] + 2
    ET.fromstring(dr.timeline_svg(report))


def test_spread_events_share_the_lowest_tier():
    t0 = 1795371601.0
    events = [dict(time=t0 + i * 10, node="n", kind="note") for i in range(5)]
    report = dr.build_report("spread", events=events)
    items, tiers = dr._layout_events(report["events"], lambda t: 100 + t * 20, 986)
    assert tiers == 1 and {i["tier"] for i in items} == {0}


def test_labels_at_the_right_edge_stay_inside():
    report = report_of()
    root = ET.fromstring(dr.timeline_svg(report))
    for t in root.iter(SVG + "text"):
        x = float(t.get("x"))
        width = dr.text_width(t.text, float(t.get("font-size")), t.get("font-weight") == "bold")
        left = {"middle": x - width / 2, "end": x - width}.get(t.get("text-anchor"), x)
        assert 0 <= left and left + width <= 1000, t.text


@pytest.mark.parametrize("span, step", [(1, 0.1), (20.8, 5), (126.9, 20), (3600, 500), (0.004, 0.0005)])
def test_tick_steps(span, step):
    assert dr.nice_step(span) == pytest.approx(step)


@pytest.mark.parametrize("value, text", [(0.4, "0.4"), (5.0, "5"), (12.125, "12.12"), (-0.2, "-0.2"), (0.0, "0"),
                                         (123.46, "123.5"), (None, "-")])
def test_fmt_seconds(value, text):
    assert dr.fmt_seconds(value) == text


def test_fmt_duration():
    assert dr.fmt_duration(20.8) == "20.8 s"
    assert dr.fmt_duration(126.9) == "2 min 6.9 s"


def test_docs_example_is_current():
    """docs/images/xid79-timeline-example.svg is this drill as the module writes it (formats: [svg]); after
    a change to the picture, write it again with the module from xid79_drill() and copy it there."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "docs", "images",
                        "xid79-timeline-example.svg")
    with open(path, encoding="utf-8") as f:
        assert f.read() == dr.timeline_svg(report_of()), "docs/images/xid79-timeline-example.svg is out of date"


# --- the self-check (verification) ------------------------------------------------------------------

DIFFERENCE = {"object": "node gpu-node-1", "field": "labels['fault-injection.gpu-resilience.io/drill']",
              "before": None, "now": "other-drill",
              "text": "node gpu-node-1: label fault-injection.gpu-resilience.io/drill was absent, now \"other-drill\""}
CHECKED = ["node gpu-node-1 (marks of the drills and detectors, cordon, conditions)", "the GPUFaults of drill x"]


def test_a_clean_self_check_is_reported_and_passes():
    report = report_of(verification={"checked": CHECKED, "differences": []})
    assert report["result"] == "passed"
    assert report["verification"] == {"as_before": True, "checked": CHECKED, "differences": []}
    assert (report["summary"]["as_before"], report["summary"]["differences"]) == (True, 0)
    suite = ET.fromstring(dr.junit_xml(report)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("7", "0")
    case = suite.findall("testcase")[-1]
    assert case.get("name") == "cluster-as-before" and case.find("failure") is None
    assert case.find("system-out").text.splitlines() == ["checked: " + c for c in CHECKED]
    texts = [t.text for t in ET.fromstring(dr.timeline_svg(report)).iter(SVG + "text")]
    assert "AS BEFORE: the cluster was put back as it was (2 item(s) checked)" in texts


def test_every_difference_is_in_each_report_and_fails_the_drill():
    report = report_of(verification={"checked": CHECKED, "differences": [DIFFERENCE, "workload gone"]})
    assert report["result"] == "failed" and report["summary"]["differences"] == 2
    assert report["verification"]["differences"][1] == {"object": None, "field": None, "before": None, "now": None,
                                                        "text": "workload gone"}
    assert json.loads(dr.timeline_json(report))["verification"]["differences"][0] == DIFFERENCE
    suite = ET.fromstring(dr.junit_xml(report)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("7", "1")
    failure = suite.findall("testcase")[-1].find("failure")
    assert failure.get("type") == "ClusterNotAsBefore"
    assert failure.get("message") == "2 difference(s) from before the drill: %s; workload gone" % DIFFERENCE["text"]
    assert failure.text.splitlines()[:2] == ["difference: " + DIFFERENCE["text"], "difference: workload gone"]
    texts = [t.text for t in ET.fromstring(dr.timeline_svg(report)).iter(SVG + "text")]
    assert "NOT AS BEFORE: 2 difference(s) from before the drill" in texts
    assert DIFFERENCE["text"] in texts and "workload gone" in texts


@pytest.mark.parametrize("verification, fragment", [
    ("yes", "verification must be a dict"),
    ({"checked": CHECKED, "extra": 1}, "verification: unknown key(s) extra"),
    ({"checked": "node"}, "checked must be a list of strings"),
    ({"differences": [{"object": "node n"}]}, "verification.differences[0]: text is required"),
    ({"differences": [{"text": "x", "why": "y"}]}, "unknown key(s) why"),
    ({"differences": [3]}, "expected a dict with text"),
])
def test_bad_verification_is_named(verification, fragment):
    with pytest.raises(DrillReportError, match=re.escape(fragment)):
        report_of(verification=verification)


def test_nvsentinels_remediation_is_measured_and_shown_only_when_it_happened():
    args = xid79_drill()
    inject = next(e for e in args["events"] if e["kind"] == "inject")
    assert "remediation" not in dr.timeline_svg(dr.build_report(**args)).split("reaction to the first inject")[1][:200]
    args["events"] = args["events"] + [dict(inject, kind="remediation", detail="NVSentinel: RebootNode",
                                            time=dr.format_time(dr.parse_time(inject["time"], "t") + 700000))]
    report = dr.build_report(**args)
    measured = report["summary"]["time_to_remediate"]
    assert measured is not None and measured >= 0.7
    assert "remediation +%s s" % dr.fmt_seconds(measured) in dr.timeline_svg(report)
