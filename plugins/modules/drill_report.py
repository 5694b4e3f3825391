#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: drill_report
short_description: Write the reports of a GPU fault drill (JUnit XML, JSON timeline, SVG picture)
version_added: 0.1.0
description:
  - Turns the phases and events of a drill (inject an XID, wait for detection and quarantine, drain,
    recovery, cleanup) into three files in I(dest), named after I(drill).
  - C(<drill>-junit.xml) is a JUnit XML report for CI systems, one test case per phase.
  - C(<drill>-timeline.json) is the normalised timeline with the reaction times of the detection and
    remediation stack.
  - C(<drill>-timeline.svg) is a picture of the drill, about 1000 pixels wide; a lane of phase bars,
    a lane of event markers per node, a time axis in seconds and a legend.
  - Each file is replaced atomically (a temporary file in I(dest), then a rename), and only when its
    content differs, so a rerun with the same input changes nothing. The same input always gives
    the same bytes.
  - Needs no access to Kubernetes; run it on the controller (C(delegate_to) C(localhost)).
author:
  - GPU Resilience maintainers (@gpu-resilience)
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Writes nothing; returns the summary and which files would be written.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The JSON timeline before and after (when I(formats) includes C(json)).
options:
  drill:
    description:
      - The drill id, used in the file names, the JUnit test suite's name and the titles.
      - 1 to 63 characters, lowercase letters, digits, C(.) and C(-), starting with a letter or digit.
    type: str
    required: true
  dest:
    description:
      - The directory to write the reports to; created (with its parents) when missing.
    type: path
    required: true
  phases:
    description:
      - The drill's phases, in the order they ran. Each becomes a JUnit test case and a bar in the picture.
      - The module checks each phase's keys and values itself; an unknown key fails with its name.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The phase's name.
        type: str
        required: true
      started:
        description:
          - When the phase started. An RFC 3339 time with a time zone (C(2026-11-22T18:20:01Z),
            C(2026-11-22T19:20:01.25+01:00); fractions kept to the microsecond) or epoch seconds
            (C(1795371601.25)).
          - Required unless I(status=skipped).
        type: raw
      finished:
        description:
          - When the phase finished, like I(started). Required unless I(status=skipped).
        type: raw
      status:
        description: How the phase ended.
        type: str
        required: true
        choices: [passed, failed, skipped, error]
      message:
        description: What happened, e.g. why the phase failed (the JUnit failure's message).
        type: str
      node:
        description: The node the phase was about, if one.
        type: str
      details:
        description: Anything more, kept in the JSON timeline and the JUnit test case's output.
        type: dict
  events:
    description:
      - What happened during the drill, in any order; they are sorted by time.
      - The reaction times in the summary are measured from the first C(inject) event to the first
        C(detect), C(quarantine), C(drain) and C(recovery) event, over the whole drill and per node.
      - An event belongs to the node it concerns (for C(recovery), the node whose workload recovered;
        say in I(detail) where it runs now). Events without I(node) get a lane of their own.
    type: list
    elements: dict
    default: []
    suboptions:
      time:
        description: When it happened, like I(phases[].started).
        type: raw
        required: true
      node:
        description: The node it happened to.
        type: str
      kind:
        description: What happened.
        type: str
        required: true
        choices: [inject, detect, quarantine, drain, evict, remediation, reschedule, recovery, cleanup, note]
      detail:
        description: A short description, e.g. C(XID 79 on GPU 2) or C(cordoned by NVSentinel).
        type: str
  target_nodes:
    description:
      - The nodes the drill injected faults into; each gets a lane in the picture, and a place in the
        per-node summary, even without events. Other nodes named by events follow them.
    type: list
    elements: str
    default: []
  started:
    description:
      - When the drill started, like I(phases[].started). Default, the earliest phase or event time.
    type: raw
  finished:
    description:
      - When the drill finished, like I(phases[].started). Default, the latest phase or event time.
    type: raw
  result:
    description:
      - The drill's result. Default, C(failed) when any phase failed or ended in error or
        I(verification) lists a difference, else C(passed).
    type: str
    choices: [passed, failed]
  verification:
    description:
      - The drill's self-check after its cleanup - the C(verification) that
        M(gpu_resilience.fault_injection.drill_ledger_info) returns with I(verify) (its C(checked) and
        C(differences)). Left out, the reports say nothing about it.
      - The JUnit report gets a test case C(cluster-as-before), failed with every difference; the JSON
        timeline a C(verification) (C(as_before), C(checked), C(differences)); the picture a note per
        difference.
    type: dict
    suboptions:
      checked:
        description: What was compared, in words.
        type: list
        elements: str
        default: []
      differences:
        description:
          - Each difference, a dict with C(text) (a sentence) and optionally C(object), C(field),
            C(before) and C(now).
        type: list
        elements: raw
        default: []
  formats:
    description:
      - Which reports to write.
    type: list
    elements: str
    choices: [junit, json, svg]
    default: [junit, json, svg]
notes:
  - Times without a time zone are refused rather than guessed. Times are given in UTC in the reports.
  - The reports hold whatever the phases and events say (messages, details, node names); do not put
    secrets in them.
seealso:
  - module: gpu_resilience.fault_injection.gpu_xid_inject
  - module: gpu_resilience.fault_injection.wait_node_cordon
"""

EXAMPLES = r"""
- name: Write the reports of an XID 79 drill
  gpu_resilience.fault_injection.drill_report:
    drill: xid79-drill
    dest: "{{ playbook_dir }}/reports"
    target_nodes: [gpu-node-1]
    started: "2026-11-22T18:19:54.8Z"
    finished: "2026-11-22T18:20:15.6Z"
    phases:
      - name: inject-xid79
        started: "2026-11-22T18:20:00.7Z"
        finished: "2026-11-22T18:20:01.15Z"
        status: passed
        message: XID 79 on GPU 2, CUDA shim armed
      - name: wait-quarantine
        started: "2026-11-22T18:20:01.15Z"
        finished: "2026-11-22T18:20:01.75Z"
        status: passed
      - name: recovery
        started: "2026-11-22T18:20:06.2Z"
        finished: "2026-11-22T18:21:06.2Z"
        status: failed
        message: trainer not running again after 60 s
        details:
          pods_pending: 1
    events:
      - {time: "2026-11-22T18:20:01Z", node: gpu-node-1, kind: inject, detail: XID 79 on GPU 2}
      - {time: "2026-11-22T18:20:01.4Z", node: gpu-node-1, kind: detect, detail: SysLogsXIDError}
      - {time: "2026-11-22T18:20:01.6Z", node: gpu-node-1, kind: quarantine, detail: cordoned by NVSentinel}
      - {time: "2026-11-22T18:20:06Z", node: gpu-node-1, kind: drain}
  delegate_to: localhost
  register: report

- name: Note when the wait starts, in epoch seconds
  ansible.builtin.set_fact:
    wait_started: "{{ now().timestamp() }}"

- name: Wait for the quarantine
  gpu_resilience.fault_injection.wait_node_cordon:
    name: gpu-node-1
    conditions: [{kind: cordoned}]
  register: quarantine
  ignore_errors: true

- name: Only a JUnit report, for CI, with epoch-second times
  gpu_resilience.fault_injection.drill_report:
    drill: xid79-ci
    dest: "{{ lookup('ansible.builtin.env', 'CI_PROJECT_DIR') }}/reports"
    formats: [junit]
    phases:
      - name: wait-quarantine
        started: "{{ wait_started }}"
        finished: "{{ now().timestamp() }}"
        status: "{{ 'failed' if quarantine is failed else 'passed' }}"
        message: "{{ quarantine.msg | default('') }}"
  delegate_to: localhost

- name: Fail the play when the drill failed, after the reports are written
  ansible.builtin.assert:
    that: report.summary.result == 'passed'
    fail_msg: "drill failed; see {{ report.files | join(', ') }}"
"""

RETURN = r"""
summary:
  description: The drill's summary, as in the JSON timeline. Times in seconds; C(null) when the event did not happen.
  returned: always
  type: dict
  contains:
    result:
      description: C(passed) or C(failed).
      type: str
      sample: passed
    duration_seconds:
      description: From the drill's start to its end.
      type: float
      sample: 20.8
    phases:
      description: How many phases there were, and how many ended in each status.
      type: dict
      sample: {total: 7, passed: 6, failed: 1, skipped: 0, error: 0}
    injected_at:
      description: The first C(inject) event's time (UTC).
      type: str
      sample: "2026-11-22T18:20:01Z"
    time_to_detect:
      description: From the first C(inject) event to the first C(detect) event.
      type: float
      sample: 0.4
    time_to_quarantine:
      description: From the first C(inject) event to the first C(quarantine) event.
      type: float
      sample: 0.6
    time_to_drain:
      description: From the first C(inject) event to the first C(drain) event.
      type: float
      sample: 5.0
    time_to_remediate:
      description: From the first C(inject) event to the first C(remediation) event (NVSentinel's fault-remediation).
      type: float
      sample: 0.7
    time_to_recover:
      description: From the first C(inject) event to the first C(recovery) event.
      type: float
      sample: 12.0
    time_to_last_recovery:
      description: From the first C(inject) event to the last C(recovery) event.
      type: float
      sample: 12.1
    as_before:
      description: Whether the self-check (I(verification)) found the cluster as before; null without it.
      type: bool
      sample: true
    differences:
      description: How many differences the self-check found; null without it.
      type: int
      sample: 0
    nodes:
      description:
        - Per node, the same measures from that node's first C(inject) event to its own events, its
          C(injected_at) and how many events it had.
      type: dict
      sample:
        gpu-node-1: {injected_at: "2026-11-22T18:20:01Z", time_to_detect: 0.4, time_to_quarantine: 0.6,
                     time_to_drain: 5.0, time_to_recover: 12.0, events: 6}
files:
  description: The paths of the reports, whether rewritten or already up to date.
  returned: always
  type: list
  elements: str
  sample: [/var/tmp/drills/xid79-drill-junit.xml, /var/tmp/drills/xid79-drill-timeline.json,
           /var/tmp/drills/xid79-drill-timeline.svg]
updated:
  description: The reports that were written (in check mode, that would be written) because their content changed.
  returned: always
  type: list
  elements: str
  sample: [/var/tmp/drills/xid79-drill-timeline.json]
"""

import hashlib
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_report
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_report import DrillReportError

# format -> (file name suffix, renderer)
REPORTS = (
    ("junit", "-junit.xml", drill_report.junit_xml),
    ("json", "-timeline.json", drill_report.timeline_json),
    ("svg", "-timeline.svg", drill_report.timeline_svg),
)


def argument_spec():
    return dict(
        drill=dict(type="str", required=True),
        dest=dict(type="path", required=True),
        # Checked by drill_report.build_report, not here: a sub-option named "message" is reserved.
        phases=dict(type="list", elements="dict", default=[]),
        events=dict(type="list", elements="dict", default=[], options=dict(
            time=dict(type="raw", required=True),
            node=dict(type="str"),
            kind=dict(type="str", required=True, choices=list(drill_report.EVENT_KINDS)),
            detail=dict(type="str"),
        )),
        target_nodes=dict(type="list", elements="str", default=[]),
        started=dict(type="raw"),
        finished=dict(type="raw"),
        result=dict(type="str", choices=list(drill_report.RESULTS)),
        verification=dict(type="dict", options=dict(
            checked=dict(type="list", elements="str", default=[]),
            differences=dict(type="list", elements="raw", default=[]),
        )),
        formats=dict(type="list", elements="str", choices=list(drill_report.FORMATS),
                     default=list(drill_report.FORMATS)),
    )


class ReportFileError(Exception):
    """A report file or dest that cannot be read or written."""


def read_current(path):
    """The file's bytes, or None when it does not exist."""
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        raise ReportFileError("%s is a directory, not a report file" % path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except (IOError, OSError) as e:
        raise ReportFileError("cannot read %s: %s" % (path, to_native(e)))


def write_atomically(module, path, content):
    """Write content to a temporary file beside path, then rename it over path."""
    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except (IOError, OSError) as e:
        raise ReportFileError("cannot create a temporary file in %s: %s" % (directory, to_native(e)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except (IOError, OSError) as e:
        os.unlink(tmp)
        raise ReportFileError("cannot write %s: %s" % (tmp, to_native(e)))
    module.atomic_move(tmp, path)


def digest(content):
    return "absent" if content is None else "sha256:" + hashlib.sha256(content).hexdigest()


def make_diff(plans):
    """The JSON timeline before and after; without it, each file's checksum before and after."""
    for fmt, path, content, current in plans:
        if fmt == "json":
            return dict(before_header=path, after_header=path,
                        before=current.decode("utf-8", "replace") if current is not None else "",
                        after=content.decode("utf-8"))
    return dict(before=dict((p[1], digest(p[3])) for p in plans), after=dict((p[1], digest(p[2])) for p in plans))


def run(module):
    p = module.params
    report = drill_report.build_report(p["drill"], phases=p["phases"], events=p["events"],
                                       target_nodes=p["target_nodes"], started=p["started"],
                                       finished=p["finished"], result=p["result"], verification=p["verification"])
    dest = p["dest"]
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ReportFileError("dest %s exists and is not a directory" % dest)
    if not p["formats"]:
        raise ReportFileError("formats is empty: give at least one of %s" % ", ".join(drill_report.FORMATS))
    plans = []
    for fmt, suffix, render in REPORTS:
        if fmt in p["formats"]:
            path = os.path.join(dest, p["drill"] + suffix)
            plans.append((fmt, path, render(report).encode("utf-8"), read_current(path)))
    updated = [path for _f, path, content, current in plans if content != current]
    create_dest = not os.path.isdir(dest)
    if not module.check_mode:
        if create_dest:
            try:
                os.makedirs(dest)
            except (IOError, OSError) as e:
                raise ReportFileError("cannot create dest %s: %s" % (dest, to_native(e)))
        for _f, path, content, current in plans:
            if content != current:
                write_atomically(module, path, content)
    result = dict(changed=bool(updated) or create_dest, summary=report["summary"],
                  files=[path for _f, path, _c, _cur in plans], updated=updated)
    if module._diff:
        result["diff"] = make_diff(plans)
    return result


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        result = run(module)
    except (DrillReportError, ReportFileError) as e:
        module.fail_json(msg=str(e))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
