# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reports of a GPU fault drill: a JUnit XML file for CI, a JSON timeline, and an SVG picture.

Pure functions, no I/O: the module ``drill_report`` reads its options, calls :func:`build_report`
and the three renderers, and writes the files.

Times are RFC 3339 strings with a time zone (``2026-11-22T18:20:01Z``,
``2026-11-22T19:20:01.123456+01:00``; fractions are kept to the microsecond) or epoch seconds (int,
float, or a string holding one). Internally every time is an integer number of microseconds since
the epoch, so durations are exact; the reports give times in UTC (``...Z``) and durations in seconds.

The summary measures the detection and remediation stack from the first ``inject`` event: the time
to the first ``detect``, ``quarantine``, ``drain``, ``remediation`` and ``recovery`` event (and to the last
``recovery``), over the whole drill and per node. A measure is ``None`` (JSON ``null``) when its
event did not happen, or when nothing was injected.

The *verification* is the drill's self-check after its cleanup (``drill_verify``): what was
compared with the ledger and every difference found. The reports list each difference (the JUnit
test case ``cluster-as-before``, the JSON timeline's ``verification``, a note in the picture); a
difference makes the drill's result ``failed``.

Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import math
import re
import xml.etree.ElementTree as ET

DRILL_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
STATUSES = ("passed", "failed", "skipped", "error")
RESULTS = ("passed", "failed")
EVENT_KINDS = ("inject", "detect", "quarantine", "drain", "evict", "remediation", "reschedule", "recovery", "cleanup",
               "note")
FORMATS = ("junit", "json", "svg")
PHASE_KEYS = ("name", "started", "finished", "status", "message", "node", "details")
VERIFICATION_KEYS = ("checked", "differences")
DIFFERENCE_KEYS = ("object", "field", "before", "now", "text")
VERIFICATION_CASE = "cluster-as-before"
EVENT_KEYS = ("time", "node", "kind", "detail")
# summary key -> the event kind it measures (from the first inject)
MEASURES = (("time_to_detect", "detect"), ("time_to_quarantine", "quarantine"), ("time_to_drain", "drain"),
            ("time_to_remediate", "remediation"), ("time_to_recover", "recovery"))
# Measures only some detection stacks have (NVSentinel's fault-remediation): not "not seen" when absent.
OPTIONAL_MEASURES = ("remediation",)
JUNIT_CLASS_PREFIX = "gpu_resilience.drill."

_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
                      r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_US = 1000000
# Epoch seconds beyond this (the year 5138) are almost surely milliseconds or microseconds.
_MAX_EPOCH_SECONDS = 1e11
# Characters that XML 1.0 does not allow, and lone surrogates (which no UTF-8 file can hold).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SURROGATES = re.compile("[\ud800-\udfff]")


class DrillReportError(ValueError):
    """Input that cannot be reported; the message says which field and why."""


# --- times -----------------------------------------------------------------------------------------

def parse_time(value, what="time"):
    """Microseconds since the epoch (UTC) for an RFC 3339 string or epoch seconds."""
    if isinstance(value, bool) or value is None:
        raise DrillReportError("%s: expected an RFC 3339 time or epoch seconds, got %r" % (what, value))
    if isinstance(value, (int, float)):
        return _epoch_us(float(value), value, what)
    if not isinstance(value, str):
        raise DrillReportError("%s: expected an RFC 3339 time or epoch seconds, got %s %r"
                               % (what, type(value).__name__, value))
    text = value.strip()
    if _NUMBER.match(text):
        return _epoch_us(float(text), value, what)
    m = _RFC3339.match(text)
    if not m:
        raise DrillReportError("%s: %r is neither an RFC 3339 time (2026-11-22T18:20:01.5Z) nor epoch seconds"
                               % (what, value))
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zulu, sign, off_h, off_m = m.groups()[6:]
    if not zulu and not sign:
        raise DrillReportError("%s: %r has no time zone; add Z (UTC) or an offset such as +01:00" % (what, value))
    leap = second == 60  # a leap second: the instant just before the next second
    try:
        moment = datetime.datetime(year, month, day, hour, minute, 59 if leap else second,
                                   tzinfo=datetime.timezone.utc)
    except ValueError as e:
        raise DrillReportError("%s: %r is not a valid date and time (%s)" % (what, value, e))
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    if leap:
        micro = _US - 1
    offset = 0
    if sign:
        if int(off_h) > 23 or int(off_m) > 59:
            raise DrillReportError("%s: %r has an invalid time zone offset" % (what, value))
        offset = (int(off_h) * 3600 + int(off_m) * 60) * (1 if sign == "+" else -1)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds - offset) * _US + micro


def _epoch_us(seconds, raw, what):
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise DrillReportError("%s: %r is not a valid number of epoch seconds" % (what, raw))
    if seconds > _MAX_EPOCH_SECONDS:
        raise DrillReportError("%s: %r is too large for epoch seconds (milliseconds? divide by 1000)" % (what, raw))
    return int(round(seconds * _US))


def format_time(us):
    """RFC 3339 in UTC, with the fraction only when there is one: 2026-11-22T18:20:00.4Z."""
    whole, micro = divmod(us, _US)
    moment = _EPOCH + datetime.timedelta(seconds=whole)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if micro:
        text += ("." + "%06d" % micro).rstrip("0")
    return text + "Z"


def seconds(us):
    """A microsecond count as seconds (exact to the microsecond)."""
    return us / _US


def fmt_seconds(value, digits=2):
    """A short human form of a number of seconds: 0.4, 12, 5.25 (no unit)."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        digits = min(digits, 1)
    text = ("%." + str(digits) + "f") % value
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_duration(value):
    """Seconds for a title: 14.2 s, or 3 min 12.5 s from a minute on."""
    if value is None:
        return "-"
    if value >= 60:
        minutes, rest = divmod(value, 60)
        return "%d min %s s" % (minutes, fmt_seconds(rest, 1))
    return fmt_seconds(value) + " s"


# --- input -----------------------------------------------------------------------------------------

def validate_drill(drill):
    """The drill id, checked: it names files, so lowercase letters, digits, '.' and '-' only."""
    if not isinstance(drill, str) or not DRILL_ID.match(drill):
        raise DrillReportError("drill %r is not a valid drill id: 1 to 63 characters, lowercase letters, digits, "
                               "'.' and '-', starting with a letter or digit" % (drill,))
    return drill


def clean_text(value):
    """Strings as they can be stored in a UTF-8 file: lone surrogates become U+FFFD."""
    if value is None:
        return None
    return _SURROGATES.sub("\ufffd", value if isinstance(value, str) else str(value))


def _clean_data(value):
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return dict((clean_text(str(k)), _clean_data(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_clean_data(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return clean_text(str(value))


def _optional_text(entry, key, what):
    value = entry.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DrillReportError("%s: %s must be a string, got %r" % (what, key, value))
    return clean_text(str(value))


def _check_keys(raw, allowed, what):
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise DrillReportError("%s: unknown key(s) %s; the keys are %s" % (what, ", ".join(unknown), ", ".join(allowed)))


def _phase(index, raw):
    what = "phases[%d]" % index
    if not isinstance(raw, dict):
        raise DrillReportError("%s: expected a dict with name, started, finished, status, got %r" % (what, raw))
    name = _optional_text(raw, "name", what)
    if name:
        what = "%s (%s)" % (what, name)
    _check_keys(raw, PHASE_KEYS, what)
    if not name:
        raise DrillReportError("%s: name is required" % what)
    status = raw.get("status")
    if status not in STATUSES:
        raise DrillReportError("%s: status %r is not one of %s" % (what, status, ", ".join(STATUSES)))
    started, finished = raw.get("started"), raw.get("finished")
    if started is None and finished is None and status != "skipped":
        raise DrillReportError("%s: started and finished are required (only a skipped phase may have no times)"
                               % what)
    if (started is None) != (finished is None) and status != "skipped":
        raise DrillReportError("%s: %s is required" % (what, "started" if started is None else "finished"))
    start_us = parse_time(started, what + ": started") if started is not None else None
    end_us = parse_time(finished, what + ": finished") if finished is not None else None
    if start_us is None:
        start_us = end_us
    if end_us is None:
        end_us = start_us
    if start_us is not None and end_us < start_us:
        raise DrillReportError("%s: finished (%s) is before started (%s)"
                               % (what, format_time(end_us), format_time(start_us)))
    details = raw.get("details")
    if details is not None and not isinstance(details, dict):
        raise DrillReportError("%s: details must be a dict, got %r" % (what, details))
    return dict(name=name, status=status, node=_optional_text(raw, "node", what),
                message=_optional_text(raw, "message", what), details=_clean_data(details) if details else None,
                start_us=start_us, end_us=end_us)


def _event(index, raw):
    what = "events[%d]" % index
    if not isinstance(raw, dict):
        raise DrillReportError("%s: expected a dict with time, node, kind, detail, got %r" % (what, raw))
    _check_keys(raw, EVENT_KEYS, what)
    kind = raw.get("kind")
    if kind not in EVENT_KINDS:
        raise DrillReportError("%s: kind %r is not one of %s" % (what, kind, ", ".join(EVENT_KINDS)))
    what = "%s (%s)" % (what, kind)
    if raw.get("time") is None:
        raise DrillReportError("%s: time is required" % what)
    return dict(time_us=parse_time(raw["time"], what + ": time"), kind=kind,
                node=_optional_text(raw, "node", what) or None, detail=_optional_text(raw, "detail", what),
                index=index)


# --- the report --------------------------------------------------------------------------------------

def _verification(raw):
    """The self-check's result, checked: {as_before, checked: [text], differences: [{..., text}]}."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise DrillReportError("verification must be a dict with checked and differences, got %r" % (raw,))
    _check_keys(raw, VERIFICATION_KEYS, "verification")
    checked, differences = raw.get("checked") or [], raw.get("differences") or []
    if not isinstance(checked, list) or not all(isinstance(c, str) for c in checked):
        raise DrillReportError("verification: checked must be a list of strings, got %r" % (checked,))
    if not isinstance(differences, list):
        raise DrillReportError("verification: differences must be a list, got %r" % (differences,))
    out = []
    for index, item in enumerate(differences):
        what = "verification.differences[%d]" % index
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise DrillReportError("%s: expected a dict with text (or a string), got %r" % (what, item))
        _check_keys(item, DIFFERENCE_KEYS, what)
        if not _optional_text(item, "text", what):
            raise DrillReportError("%s: text is required" % what)
        out.append(_clean_data(dict((k, item.get(k)) for k in DIFFERENCE_KEYS)))
    return {"as_before": not out, "checked": [clean_text(c) for c in checked], "differences": out}


def build_report(drill, phases=None, events=None, target_nodes=None, started=None, finished=None, result=None,
                 verification=None):
    """The drill's report as a JSON-ready dict (the content of the JSON timeline).

    ``started``/``finished`` default to the earliest and latest time among the phases and events;
    ``result`` defaults to ``failed`` when a phase failed or ended in error or the verification
    found a difference, else ``passed``. ``verification`` is the self-check's ``{checked,
    differences}`` (None: it did not run). Raises DrillReportError with the offending field on bad
    input.
    """
    validate_drill(drill)
    checked = _verification(verification)
    if result is not None and result not in RESULTS:
        raise DrillReportError("result %r is not one of %s" % (result, ", ".join(RESULTS)))
    if phases is not None and not isinstance(phases, (list, tuple)):
        raise DrillReportError("phases must be a list, got %r" % (phases,))
    if events is not None and not isinstance(events, (list, tuple)):
        raise DrillReportError("events must be a list, got %r" % (events,))
    norm_phases = [_phase(i, p) for i, p in enumerate(phases or [])]
    norm_events = sorted((_event(i, e) for i, e in enumerate(events or [])),
                         key=lambda e: (e["time_us"], e["index"]))
    targets = []
    for node in target_nodes or []:
        if not isinstance(node, str) or not node:
            raise DrillReportError("target_nodes: %r is not a node name" % (node,))
        node = clean_text(node)
        if node not in targets:
            targets.append(node)
    nodes = list(targets)  # the target nodes, then any other node an event names

    times = [p[k] for p in norm_phases for k in ("start_us", "end_us") if p[k] is not None]
    times += [e["time_us"] for e in norm_events]
    start_us = parse_time(started, "started") if started is not None else (min(times) if times else None)
    end_us = parse_time(finished, "finished") if finished is not None else (max(times) if times else None)
    if start_us is None and end_us is None:
        raise DrillReportError("nothing to report: give started (and finished), or at least one timed phase or event")
    if start_us is None:
        start_us = min(times + [end_us])
    if end_us is None:
        end_us = max(times + [start_us])
    if end_us < start_us:
        raise DrillReportError("finished (%s) is before started (%s)" % (format_time(end_us), format_time(start_us)))
    if result is None:
        bad = any(p["status"] in ("failed", "error") for p in norm_phases) or (checked and not checked["as_before"])
        result = "failed" if bad else "passed"

    first_inject = _first(norm_events, "inject")
    node_inject = {}
    for e in norm_events:
        if e["kind"] == "inject" and e["node"] and e["node"] not in node_inject:
            node_inject[e["node"]] = e["time_us"]

    out_phases = []
    for p in norm_phases:
        timed = p["start_us"] is not None
        out_phases.append(dict(
            name=p["name"], status=p["status"], node=p["node"],
            started=format_time(p["start_us"]) if timed else None,
            finished=format_time(p["end_us"]) if timed else None,
            start_seconds=seconds(p["start_us"] - start_us) if timed else None,
            duration_seconds=seconds(p["end_us"] - p["start_us"]) if timed else 0.0,
            message=p["message"], details=p["details"]))

    out_events = []
    for e in norm_events:
        origin = node_inject.get(e["node"], first_inject)
        out_events.append(dict(
            time=format_time(e["time_us"]), seconds_since_start=seconds(e["time_us"] - start_us),
            seconds_since_inject=seconds(e["time_us"] - origin) if origin is not None else None,
            node=e["node"], kind=e["kind"], detail=e["detail"]))
        if e["node"] and e["node"] not in nodes:
            nodes.append(e["node"])

    report = dict(
        drill=drill, result=result, started=format_time(start_us), finished=format_time(end_us),
        duration_seconds=seconds(end_us - start_us), target_nodes=targets, phases=out_phases, events=out_events,
        verification=checked)
    report["summary"] = summarize(report, norm_events, nodes, first_inject, node_inject)
    return report


def _first(events, kind, node=None):
    for e in events:
        if e["kind"] == kind and (node is None or e["node"] == node):
            return e["time_us"]
    return None


def _last(events, kind):
    found = None
    for e in events:
        if e["kind"] == kind:
            found = e["time_us"]
    return found


def _measures(events, origin, node=None):
    out = {}
    for key, kind in MEASURES:
        at = _first(events, kind, node)
        out[key] = seconds(at - origin) if origin is not None and at is not None else None
    return out


def summarize(report, events, nodes, first_inject, node_inject):
    """The summary: result, phase counts and the reaction times, overall and per node."""
    counts = dict((s, 0) for s in STATUSES)
    for p in report["phases"]:
        counts[p["status"]] += 1
    summary = dict(result=report["result"], duration_seconds=report["duration_seconds"],
                   phases=dict(total=len(report["phases"]), **counts),
                   injected_at=format_time(first_inject) if first_inject is not None else None)
    summary.update(_measures(events, first_inject))
    last = _last(events, "recovery")
    summary["time_to_last_recovery"] = (seconds(last - first_inject)
                                        if first_inject is not None and last is not None else None)
    per_node = {}
    for node in nodes:
        origin = node_inject.get(node)
        entry = dict(injected_at=format_time(origin) if origin is not None else None)
        entry.update(_measures(events, origin, node))
        entry["events"] = sum(1 for e in events if e["node"] == node)
        per_node[node] = entry
    summary["nodes"] = per_node
    verification = report.get("verification")
    summary["as_before"] = verification["as_before"] if verification else None
    summary["differences"] = len(verification["differences"]) if verification else None
    return summary


# --- JSON ------------------------------------------------------------------------------------------

def timeline_json(report):
    """The JSON timeline file's text (stable: same report, same text)."""
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --- JUnit XML -------------------------------------------------------------------------------------

def xml_text(value):
    """Text that any XML 1.0 parser accepts: characters XML forbids become U+FFFD."""
    return _XML_INVALID.sub("\ufffd", "" if value is None else str(value))


def _junit_time(value):
    return "%.3f" % (value or 0.0)


def _junit_stamp(text):
    # The JUnit schema's timestamp: ISO 8601 without zone or fraction (in UTC here).
    return text[:19]


def junit_xml(report):
    """The JUnit XML file's text: one testsuite named after the drill, one testcase per phase."""
    phases = report["phases"]
    counts = report["summary"]["phases"]
    verification = report.get("verification")
    extra_case = 1 if verification else 0
    extra_failure = 1 if verification and verification["differences"] else 0
    totals = dict(tests=str(len(phases) + extra_case), failures=str(counts["failed"] + extra_failure),
                  errors=str(counts["error"]),
                  skipped=str(counts["skipped"]), time=_junit_time(report["duration_seconds"]))
    root = ET.Element("testsuites", dict(name=xml_text("gpu_resilience drill " + report["drill"]), **totals))
    suite = ET.SubElement(root, "testsuite", dict(name=xml_text(report["drill"]), timestamp=_junit_stamp(
        report["started"]), **totals))
    props = ET.SubElement(suite, "properties")

    def prop(name, value):
        ET.SubElement(props, "property", dict(name=name, value=xml_text(value)))

    prop("drill", report["drill"])
    prop("result", report["result"])
    prop("started", report["started"])
    prop("finished", report["finished"])
    prop("target_nodes", ",".join(report["target_nodes"]))
    for node in report["target_nodes"]:
        prop("target_node", node)
    for key, _kind in MEASURES + (("time_to_last_recovery", None),):
        if report["summary"][key] is not None:
            prop(key, fmt_seconds(report["summary"][key], 6))

    classname = xml_text(JUNIT_CLASS_PREFIX + report["drill"])
    for p in phases:
        case = ET.SubElement(suite, "testcase", dict(name=xml_text(p["name"]), classname=classname,
                                                     time=_junit_time(p["duration_seconds"])))
        message = p["message"] or ""
        if p["status"] == "failed":
            failure = ET.SubElement(case, "failure", dict(message=xml_text(message or "phase failed"),
                                                          type="DrillPhaseFailed"))
            failure.text = xml_text(_phase_text(p))
        elif p["status"] == "error":
            error = ET.SubElement(case, "error", dict(message=xml_text(message or "phase ended in error"),
                                                      type="DrillPhaseError"))
            error.text = xml_text(_phase_text(p))
        elif p["status"] == "skipped":
            ET.SubElement(case, "skipped", dict(message=xml_text(message)) if message else {})
        out = ET.SubElement(case, "system-out")
        out.text = xml_text(_phase_text(p))
    if report.get("verification"):
        _verification_case(suite, classname, report["verification"])
    suite_out = ET.SubElement(suite, "system-out")
    suite_out.text = xml_text(_events_text(report))
    _indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _verification_case(suite, classname, verification):
    """The self-check as a test case: failed with every difference, or passed with what was checked."""
    case = ET.SubElement(suite, "testcase", dict(name=VERIFICATION_CASE, classname=classname, time="0.000"))
    lines = ["checked: %s" % c for c in verification["checked"]]
    if verification["differences"]:
        texts = [d["text"] for d in verification["differences"]]
        failure = ET.SubElement(case, "failure", dict(
            message=xml_text("%d difference(s) from before the drill: %s" % (len(texts), "; ".join(texts))),
            type="ClusterNotAsBefore"))
        failure.text = xml_text("\n".join(["difference: %s" % t for t in texts] + lines))
    out = ET.SubElement(case, "system-out")
    out.text = xml_text("\n".join(lines) or "nothing was recorded, so nothing was compared")


def _phase_text(p):
    lines = ["phase: %s" % p["name"], "status: %s" % p["status"]]
    if p["node"]:
        lines.append("node: %s" % p["node"])
    if p["started"]:
        lines.append("started: %s" % p["started"])
        lines.append("finished: %s" % p["finished"])
    if p["message"]:
        lines.append("message: %s" % p["message"])
    if p["details"]:
        lines.append("details: %s" % json.dumps(p["details"], sort_keys=True, ensure_ascii=False))
    return "\n".join(lines)


def _events_text(report):
    lines = ["drill %s: %s in %s" % (report["drill"], report["result"], fmt_duration(report["duration_seconds"]))]
    for e in report["events"]:
        since = e["seconds_since_inject"]
        lines.append("%s  %-10s %-11s %s%s" % (
            e["time"], e["kind"], e["node"] or "-",
            "(+%s s since inject) " % fmt_seconds(since, 3) if since is not None else "", e["detail"] or ""))
    return "\n".join(line.rstrip() for line in lines)


def _indent(elem, level=0):
    """Pretty-print in place (ElementTree.indent exists only from Python 3.9)."""
    pad = "\n" + "  " * level
    children = list(elem)
    if children:
        if not elem.text or not elem.text.strip():
            elem.text = pad + "  "
        for child in children:
            _indent(child, level + 1)
        if not children[-1].tail or not children[-1].tail.strip():
            children[-1].tail = pad
    if level and (not elem.tail or not elem.tail.strip()):
        elem.tail = pad


# --- SVG timeline ----------------------------------------------------------------------------------

SVG_NS = "http://www.w3.org/2000/svg"
SVG_WIDTH = 1000
SVG_FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
# status -> (bar colour, text colour on the bar)
PHASE_COLORS = {"passed": ("#2e7d32", "#ffffff"), "failed": ("#c62828", "#ffffff"),
                "skipped": ("#bdbdbd", "#212121"), "error": ("#ef6c00", "#212121")}
RESULT_COLORS = {"passed": "#2e7d32", "failed": "#c62828"}
EVENT_COLORS = {"inject": "#8e24aa", "detect": "#ffb300", "quarantine": "#d32f2f", "drain": "#1565c0",
                "remediation": "#5e35b1",
                "evict": "#6d4c41", "reschedule": "#00897b", "recovery": "#43a047", "cleanup": "#546e7a",
                "note": "#757575"}
LEGEND_KINDS = ("inject", "detect", "quarantine", "drain", "recovery")  # always shown; the others when used
FAULT_WINDOW_COLOR = "#f8bbd0"
TEXT_COLOR = "#212121"
MUTED_COLOR = "#616161"

_PHASE_ROW = 24
_TIER = 14


def text_width(text, size, bold=False):
    """An estimate, on the generous side, of the rendered width of text in DejaVu Sans, in pixels."""
    em = 0.0
    for ch in text:
        if ch.isdigit():
            em += 0.64
        elif ch in " .,:;'|!iljft()[]":
            em += 0.36
        elif ch.isupper() or ch in "mwMW@%+=<>~#&":
            em += 0.84
        elif ch.islower():
            em += 0.62
        else:
            em += 0.66
    return em * size * (1.12 if bold else 1.04)


def truncate(text, max_width, size, bold=False):
    """text, shortened with an ellipsis to fit max_width pixels."""
    if text_width(text, size, bold) <= max_width:
        return text
    while text and text_width(text + "\u2026", size, bold) > max_width:
        text = text[:-1]
    return text + "\u2026"


def _num(value):
    text = "%.1f" % value
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def _el(parent, tag, text=None, **attrs):
    """A child element; attribute names use _ for -, numbers are rounded to 0.1 px."""
    clean = {}
    for key, value in attrs.items():
        if value is None:
            continue
        key = key.rstrip("_").replace("_", "-")
        clean[key] = _num(value) if isinstance(value, float) else xml_text(value)
    elem = ET.SubElement(parent, tag, clean)
    if text is not None:
        elem.text = xml_text(text)
    return elem


def _text(parent, x, y, text, size=12, color=TEXT_COLOR, anchor=None, bold=False, italic=False):
    return _el(parent, "text", text, x=float(x), y=float(y), font_size=str(size), fill=color, text_anchor=anchor,
               font_weight="bold" if bold else None, font_style="italic" if italic else None)


def _star(x, y, outer=7.5, inner=3.2):
    points = []
    for i in range(10):
        r = outer if i % 2 == 0 else inner
        a = math.pi * i / 5 - math.pi / 2
        points.append("%s,%s" % (_num(x + r * math.cos(a)), _num(y + r * math.sin(a))))
    return " ".join(points)


def _poly(points):
    return " ".join("%s,%s" % (_num(px), _num(py)) for px, py in points)


def marker(parent, kind, x, y):
    """The marker of an event kind at (x, y): each kind its own shape and colour."""
    color = EVENT_COLORS[kind]
    x, y = float(x), float(y)
    if kind == "inject":
        _el(parent, "polygon", points=_star(x, y), fill=color, stroke="#ffffff", stroke_width="0.8")
    elif kind == "detect":
        _el(parent, "circle", cx=x, cy=y, r="5.5", fill=color, stroke="#5d4037", stroke_width="1.2")
    elif kind == "quarantine":
        _el(parent, "rect", x=x - 5, y=y - 5, width="10", height="10", fill=color, stroke="#ffffff",
            stroke_width="0.8")
    elif kind == "drain":
        _el(parent, "polygon", points=_poly([(x, y - 6.5), (x + 6.5, y), (x, y + 6.5), (x - 6.5, y)]), fill=color,
            stroke="#ffffff", stroke_width="0.8")
    elif kind == "evict":
        _el(parent, "path", d="M%s %sL%s %sM%s %sL%s %s" % tuple(_num(v) for v in (
            x - 4.5, y - 4.5, x + 4.5, y + 4.5, x - 4.5, y + 4.5, x + 4.5, y - 4.5)),
            stroke=color, stroke_width="2.5", fill="none")
    elif kind == "remediation":
        _el(parent, "polygon", points=_poly([(x - 6, y - 3.5), (x, y - 7), (x + 6, y - 3.5), (x + 6, y + 3.5),
                                             (x, y + 7), (x - 6, y + 3.5)]), fill=color, stroke="#ffffff",
            stroke_width="0.8")
    elif kind == "reschedule":
        _el(parent, "polygon", points=_poly([(x - 5, y - 6), (x + 6.5, y), (x - 5, y + 6)]), fill=color,
            stroke="#ffffff", stroke_width="0.8")
    elif kind == "recovery":
        _el(parent, "polygon", points=_poly([(x, y - 7), (x + 6.5, y + 5), (x - 6.5, y + 5)]), fill=color,
            stroke="#ffffff", stroke_width="0.8")
    elif kind == "cleanup":
        _el(parent, "rect", x=x - 4.5, y=y - 4.5, width="9", height="9", fill="#ffffff", stroke=color,
            stroke_width="2")
    else:
        _el(parent, "circle", cx=x, cy=y, r="4.5", fill="#ffffff", stroke=color, stroke_width="2")


def nice_step(span, target=10):
    """A tick step of 1, 2 or 5 times a power of ten giving at most about `target` ticks."""
    raw = span / float(target)
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * magnitude >= raw:
            return m * magnitude
    return 10 * magnitude


def _event_label(e):
    since = e["seconds_since_inject"]
    if since is None:
        return "%s t=%s s" % (e["kind"], fmt_seconds(e["seconds_since_start"]))
    if e["kind"] == "inject" and since == 0:
        return "inject t0"
    return "%s %s%s s" % (e["kind"], "+" if since >= 0 else "", fmt_seconds(since))


def _event_tip(e):
    tip = "%s %s at %s" % (e["node"] or "drill", e["kind"], e["time"])
    if e["seconds_since_inject"] is not None:
        tip += " (%s s since inject)" % fmt_seconds(e["seconds_since_inject"], 6)
    return tip + (": " + e["detail"] if e["detail"] else "")


def _phase_tip(p):
    tip = "%s: %s" % (p["name"], p["status"])
    if p["started"]:
        tip += ", %s s from %s" % (fmt_seconds(p["duration_seconds"], 6), p["started"])
    if p["node"]:
        tip += " on " + p["node"]
    return tip + (": " + p["message"] if p["message"] else "")


def _layout_phases(phases, xpos, right_limit):
    """Place the timed phases in rows so that no bar or label overlaps another."""
    placed, row_ends = [], []
    order = sorted((p for p in phases if p["started"]), key=lambda p: p["start_seconds"])
    for p in order:
        x0 = xpos(p["start_seconds"])
        x1 = max(xpos(p["start_seconds"] + p["duration_seconds"]), x0 + 2)
        label = "%s %s s" % (p["name"], fmt_seconds(p["duration_seconds"]))
        label = truncate(label, 260, 11)
        width = text_width(label, 11)
        if width + 10 <= x1 - x0:
            where, extent = "inside", (x0, x1)
        elif x1 + 5 + width <= right_limit:
            where, extent = "right", (x0, x1 + 5 + width)
        else:
            where, extent = "left", (x0 - 5 - width, x1)
        row = next((i for i, end in enumerate(row_ends) if end + 6 <= extent[0]), None)
        if row is None:
            row = len(row_ends)
            row_ends.append(extent[1])
        else:
            row_ends[row] = extent[1]
        placed.append(dict(phase=p, x0=x0, x1=x1, label=label, where=where, row=row))
    return placed, max(1, len(row_ends))


def _layout_events(events, xpos, right_limit):
    """Label positions for a lane's markers, stacked in tiers above the lane's line.

    Labels start at their marker (or end there, at the right edge). Working from the latest event
    back, each label takes the lowest tier where it overlaps no other label, its leader line (from
    the marker up to the label) crosses no label below, and no leader line from above crosses it:
    a burst of events becomes a staircase, the earliest label highest."""
    items = []
    for e in events:
        x = xpos(e["seconds_since_start"])
        label = truncate(_event_label(e), 220, 11)
        width = text_width(label, 11)
        if x + 3 + width <= right_limit:
            extent, anchor = (x + 3, x + 3 + width), None
        else:
            extent, anchor = (x - 3 - width, x - 3), "end"
        items.append(dict(event=e, x=x, label=label, extent=extent, anchor=anchor))

    def overlaps(a, b):
        return a["extent"][0] < b["extent"][1] + 8 and b["extent"][0] < a["extent"][1] + 8

    def crosses(leader, label):  # leader's vertical line passes through label's box
        return label["extent"][0] - 2 <= leader["x"] <= label["extent"][1] + 2

    done = []
    for item in reversed(items):
        tier = None
        for t in range(len(items)):
            if any(o["tier"] == t and overlaps(item, o) for o in done):
                continue
            if any(o["tier"] < t and crosses(item, o) for o in done):
                continue
            if any(o["tier"] > t and crosses(o, item) for o in done):
                continue
            tier = t
            break
        if tier is None:  # no tier clears every leader line: at least keep the labels apart
            tier = next(t for t in range(len(items) + 1)
                        if not any(o["tier"] == t and overlaps(item, o) for o in done))
        item["tier"] = tier
        done.append(item)
    return items, (max(i["tier"] for i in items) + 1 if items else 0)


def _plot_right(events, plot_left, plot_right, lo, hi, right_limit):
    """Narrow the plot so that the labels of the last events fit to the right of their markers (up to
    a third of the width; beyond that they go to the left of their markers)."""
    best = plot_right
    for e in events:
        f = (e["seconds_since_start"] - lo) / (hi - lo)
        need = text_width(truncate(_event_label(e), 220, 11), 11) + 3
        if f > 0 and plot_left + f * (plot_right - plot_left) + need > right_limit:
            best = min(best, plot_left + (right_limit - need - plot_left) / f)
    return max(best, plot_right - (plot_right - plot_left) / 3)


def timeline_svg(report, width=SVG_WIDTH):
    """The SVG picture of the drill: a lane of phase bars, a lane of event markers per node, a time axis in
    seconds since the drill's start, a legend. Deterministic: the same report gives the same text."""
    width = int(width)
    events = report["events"]
    summary = report["summary"]
    node_events = dict((n, [e for e in events if e["node"] == n]) for n in summary["nodes"])
    loose = [e for e in events if not e["node"]]
    lanes = [("drill", "phases", None)] + [(n, "events", node_events[n]) for n in summary["nodes"]]
    if loose:
        lanes.append(("drill events", "events", loose))

    label_width = min(220.0, max(80.0, max(text_width(name, 13, True) for name, _k, _e in lanes) + 12))
    plot_left = 20 + label_width + 16
    plot_right = width - 36.0
    right_limit = width - 14.0
    offsets = [0.0, report["duration_seconds"]]
    for p in report["phases"]:
        if p["started"]:
            offsets += [p["start_seconds"], p["start_seconds"] + p["duration_seconds"]]
    offsets += [e["seconds_since_start"] for e in events]
    lo, hi = min(offsets), max(offsets)
    if hi - lo < 1e-6:
        hi = lo + 1.0
    plot_right = _plot_right(events, plot_left, plot_right, lo, hi, right_limit)
    scale = (plot_right - plot_left) / (hi - lo)

    def xpos(t):
        return plot_left + (t - lo) * scale

    svg = ET.Element("svg", {"xmlns": SVG_NS, "width": str(width), "height": "0", "viewBox": "0 0 %d 0" % width,
                             "font-family": SVG_FONT, "font-size": "12"})
    result = report["result"]
    title = "Drill %s: %s in %s" % (report["drill"], result, fmt_duration(report["duration_seconds"]))
    _el(svg, "title", title)
    _el(svg, "rect", x="0", y="0", width="100%", height="100%", fill="#ffffff")

    # header: title, result badge, times and nodes, the reaction times
    badge = result.upper()
    badge_w = text_width(badge, 14, True) + 24
    _text(svg, 20, 34, truncate("Drill %s \u2014 %s total" % (report["drill"], fmt_duration(
        report["duration_seconds"])), width - 60 - badge_w, 20, True), size=20, bold=True)
    _el(svg, "rect", x=float(width - 20 - badge_w), y="14", width=float(badge_w), height="28", rx="6",
        fill=RESULT_COLORS[result])
    _text(svg, width - 20 - badge_w / 2, 33, badge, size=14, color="#ffffff", anchor="middle", bold=True)
    line = "started %s \u00b7 finished %s \u00b7 target nodes: %s" % (
        report["started"], report["finished"], ", ".join(report["target_nodes"]) or "none")
    _text(svg, 20, 58, truncate(line, width - 40, 12), color=MUTED_COLOR)
    parts = []
    for key, kind in MEASURES:
        value = summary[key]
        if value is None and kind in OPTIONAL_MEASURES:
            continue
        parts.append("%s %s" % (kind,
                                "+%s s" % fmt_seconds(value) if value is not None else "not seen"))
    if summary["injected_at"] is None:
        reaction = "no inject event: reaction times not measured"
    else:
        reaction = "reaction to the first inject: " + " \u00b7 ".join(parts)
        if summary["time_to_last_recovery"] is not None and summary["time_to_last_recovery"] != summary[
                "time_to_recover"]:
            reaction += " (last recovery +%s s)" % fmt_seconds(summary["time_to_last_recovery"])
    _text(svg, 20, 78, truncate(reaction, width - 40, 12, True), bold=True)

    # lane geometry first, so backgrounds and grid lines go under the bars and markers
    top = 110.0
    inject_t = next((e["seconds_since_start"] for e in events if e["kind"] == "inject"), None)
    lanes_top = top
    geometry = []
    for name, kind, lane_events in lanes:
        if kind == "phases":
            placed, rows = _layout_phases(report["phases"], xpos, right_limit)
            height = 14.0 + rows * _PHASE_ROW
            geometry.append(dict(name=name, kind=kind, top=top, height=height, placed=placed))
        else:
            items, tiers = _layout_events(lane_events, xpos, right_limit)
            height = 44.0 + tiers * _TIER if items else 36.0
            geometry.append(dict(name=name, kind=kind, top=top, height=height, items=items, tiers=tiers))
        top += height
    lanes_bottom = top

    back = _el(svg, "g", id="lanes")
    for i, lane in enumerate(geometry):
        _el(back, "rect", x="12", y=lane["top"], width=str(width - 24), height=lane["height"],
            fill="#f5f5f5" if i % 2 == 0 else "#ffffff")
        _el(back, "line", x1="12", y1=lane["top"], x2=str(width - 12), y2=lane["top"], stroke="#e0e0e0")
    _el(back, "line", x1="12", y1=lanes_bottom, x2=str(width - 12), y2=lanes_bottom, stroke="#e0e0e0")

    step = nice_step(hi - lo)
    grid = _el(svg, "g", id="grid", stroke="#e0e0e0", stroke_width="1")
    ticks = []
    k = int(math.ceil(lo / step - 1e-9))
    while k * step <= hi + 1e-9:
        ticks.append(k * step)
        k += 1
    for t in ticks:
        _el(grid, "line", x1=xpos(t), y1=lanes_top, x2=xpos(t), y2=lanes_bottom)

    if inject_t is not None:
        xi = xpos(inject_t)
        _el(svg, "line", x1=xi, y1=lanes_top - 6, x2=xi, y2=lanes_bottom, stroke=EVENT_COLORS["inject"],
            stroke_width="1.2", stroke_dasharray="5 3")
        label = "t0 = first inject, %s" % (summary["injected_at"] or "")
        if xi + 4 + text_width(label, 11) <= right_limit:
            _text(svg, xi + 4, lanes_top - 8, label, size=11, color=EVENT_COLORS["inject"])
        else:
            _text(svg, xi - 4, lanes_top - 8, label, size=11, color=EVENT_COLORS["inject"], anchor="end")

    for lane in geometry:
        group = _el(svg, "g", id=None)
        label_y = lane["top"] + (23 if lane["kind"] == "phases" else lane["height"] - 17)
        lane_label = _text(group, 20, label_y, truncate(lane["name"], label_width - 4, 13, True), size=13,
                           bold=True)
        _el(lane_label, "title", lane["name"])
        if lane["kind"] == "phases":
            _draw_phases(group, lane, plot_left, label_y)
        else:
            _draw_events(group, lane, xpos, plot_left, plot_right, hi)

    # time axis
    axis_y = lanes_bottom + 8
    axis = _el(svg, "g", id="axis")
    _el(axis, "line", x1=plot_left, y1=axis_y, x2=plot_right, y2=axis_y, stroke=TEXT_COLOR, stroke_width="1")
    for t in ticks:
        _el(axis, "line", x1=xpos(t), y1=axis_y, x2=xpos(t), y2=axis_y + 5, stroke=TEXT_COLOR, stroke_width="1")
        _text(axis, xpos(t), axis_y + 18, "%s s" % fmt_seconds(t, 3), size=11, anchor="middle")
    _text(axis, (plot_left + plot_right) / 2, axis_y + 36, "seconds since the drill started (%s)" % report["started"],
          size=11, color=MUTED_COLOR, anchor="middle")

    y = _draw_legend(svg, events, axis_y + 62, width)
    y = _draw_notes(svg, report, y, width)
    height = int(math.ceil(y + 10))
    svg.set("height", str(height))
    svg.set("viewBox", "0 0 %d %d" % (width, height))
    _indent(svg)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


def _draw_phases(group, lane, plot_left, label_y):
    if not lane["placed"]:
        _text(group, plot_left + 6, label_y, "no timed phases", size=11, color=MUTED_COLOR, italic=True)
        return
    for item in lane["placed"]:
        p = item["phase"]
        fill, ink = PHASE_COLORS[p["status"]]
        box = _el(group, "g")
        _el(box, "title", _phase_tip(p))
        y = lane["top"] + 8 + item["row"] * _PHASE_ROW
        _el(box, "rect", x=item["x0"], y=y, width=item["x1"] - item["x0"], height="18", rx="3", fill=fill)
        if item["where"] == "inside":
            _text(box, (item["x0"] + item["x1"]) / 2, y + 13, item["label"], size=11, color=ink, anchor="middle")
        elif item["where"] == "right":
            _text(box, item["x1"] + 5, y + 13, item["label"], size=11)
        else:
            _text(box, item["x0"] - 5, y + 13, item["label"], size=11, anchor="end")


def _draw_events(group, lane, xpos, plot_left, plot_right, hi):
    base = lane["top"] + lane["height"] - 20
    _el(group, "line", x1=plot_left, y1=base, x2=plot_right, y2=base, stroke="#9e9e9e", stroke_width="1")
    items = lane["items"]
    if not items:
        _text(group, plot_left + 6, base - 6, "no events", size=11, color=MUTED_COLOR, italic=True)
        return
    inject = next((i["event"] for i in items if i["event"]["kind"] == "inject"), None)
    if inject is not None:
        recovery = next((i["event"] for i in items if i["event"]["kind"] == "recovery"
                         and i["event"]["seconds_since_start"] >= inject["seconds_since_start"]), None)
        x0 = xpos(inject["seconds_since_start"])
        x1 = xpos(recovery["seconds_since_start"] if recovery else hi)
        window = _el(group, "rect", x=x0, y=base - 4, width=max(x1 - x0, 1.0), height="8", fill=FAULT_WINDOW_COLOR)
        _el(window, "title", "fault window: inject to %s" % ("recovery" if recovery else "end of drill (no recovery)"))
    for item in items:
        text_y = base - 12 - item["tier"] * _TIER
        if item["tier"]:
            _el(group, "line", x1=item["x"], y1=base - 7, x2=item["x"], y2=text_y + 2, stroke="#9e9e9e",
                stroke_width="0.8")
    for item in items:
        e = item["event"]
        text_y = base - 12 - item["tier"] * _TIER
        mark = _el(group, "g")
        _el(mark, "title", _event_tip(e))
        marker(mark, e["kind"], item["x"], base)
        x = item["extent"][1] if item["anchor"] else item["extent"][0]
        _text(mark, x, text_y, item["label"], size=11, anchor=item["anchor"])


def _legend_item(svg, x, y, kind, label, size=11):
    group = _el(svg, "g")
    if kind in PHASE_COLORS:
        _el(group, "rect", x=float(x), y=float(y - 10), width="18", height="12", rx="2", fill=PHASE_COLORS[kind][0])
        swatch = 24
    elif kind == "window":
        _el(group, "rect", x=float(x), y=float(y - 8), width="18", height="8", fill=FAULT_WINDOW_COLOR)
        swatch = 24
    else:
        marker(group, kind, x + 7, y - 4)
        swatch = 18
    _text(group, x + swatch, y, label, size=size)
    return swatch + text_width(label, size) + 18


def _draw_legend(svg, events, y, width):
    used = set(e["kind"] for e in events)
    entries = [("_", "Phases:")] + [(s, s) for s in STATUSES] + [("_", "Events:")]
    entries += [(k, k) for k in EVENT_KINDS if k in LEGEND_KINDS or k in used]
    entries.append(("window", "fault window (inject \u2192 recovery)"))
    x = 20.0
    for kind, label in entries:
        if kind == "_":
            need = text_width(label, 11, True) + 10
        else:
            need = 24 + text_width(label, 11) + 18
        if x + need > width - 20:
            x, y = 20.0, y + 20
        if kind == "_":
            _text(svg, x, y, label, size=11, bold=True)
            x += need
        else:
            x += _legend_item(svg, x, y, kind, label)
    return y + 8


def _draw_notes(svg, report, y, width):
    bad = [p for p in report["phases"] if p["status"] in ("failed", "error")]
    untimed = [p["name"] for p in report["phases"] if not p["started"]]
    verification = report.get("verification")
    if not bad and not untimed and not verification:
        return y
    y += 14
    for p in bad:
        line = "%s %s: %s" % (p["status"].upper(), p["name"], p["message"] or "(no message)")
        _text(svg, 20, y, truncate(line, width - 40, 12), color=PHASE_COLORS[p["status"]][0])
        y += 18
    if verification:
        differences = verification["differences"]
        head = ("NOT AS BEFORE: %d difference(s) from before the drill" % len(differences) if differences else
                "AS BEFORE: the cluster was put back as it was (%d item(s) checked)" % len(verification["checked"]))
        _text(svg, 20, y, truncate(head, width - 40, 12, True), color=RESULT_COLORS["failed" if differences else "passed"],
              bold=True)
        y += 18
        for d in differences:
            _text(svg, 32, y, truncate(d["text"], width - 52, 12), color=RESULT_COLORS["failed"])
            y += 18
    if untimed:
        _text(svg, 20, y, truncate("skipped, not timed: " + ", ".join(untimed), width - 40, 12), color=MUTED_COLOR)
        y += 18
    return y
