#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvsentinel_detection
short_description: Wait until NVIDIA NVSentinel reports injected GPU faults, and compare with the catalog
version_added: 0.1.0
description:
  - After M(gpu_resilience.fault_injection.gpu_xid_inject) wrote records to a node's kernel log,
    waits until NVIDIA NVSentinel has reported every health event the collection's XID catalog
    expects for them, and compares each report with the expectation.
  - NVSentinel's platform-connectors reports a fatal event in the node condition named after the
    check (C(SysLogsXIDError), C(SysLogsSXIDError), C(SysLogsGPUFallenOff)), status True, reason
    C(<check>IsNotHealthy); a non-fatal one as a Kubernetes Event on the node with the same
    reason. Each report is checked for its ErrorCode, PCI, GPU UUID and Recommended Action.
  - The expectation comes from the records as journald stores them, the node's GPU metadata (it
    decides C(COMPONENT_RESET) against C(RESTART_VM), the GPU UUID, NVLink5 decoding and whether
    an SXid can be attributed) and the chart's defaults; see C(docs/nvsentinel.md).
  - Waiting watches the node and its Events (no polling); the reported time is that of the API
    event in which the last expected report appeared.
  - Never changes anything. A report that differs is returned, not failed on; the module fails on
    bad input, on API errors, and when the records make NVSentinel's syslog monitor stall.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Does not wait; compares once with what the cluster holds now.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  node:
    description: The node the records were written on.
    type: str
    required: true
  records:
    description:
      - The records exactly as the fault agent wrote them to C(/dev/kmsg), as
        M(gpu_resilience.fault_injection.gpu_xid_inject) returns them (C(faults[].records)).
    type: list
    elements: str
    required: true
  gpu_metadata:
    description:
      - The node's C(gpu_metadata.json) as NVSentinel's metadata-collector writes it (at least
        C(driver_version) and C(gpus) with C(uuid), C(pci_address), C(gpu_id) and C(nvlinks)).
      - Omit it for a node without that file.
    type: dict
  baseline:
    description:
      - The node's C(status.conditions) before the records were written; their entries do not count.
      - Default, the node's conditions when the module starts.
    type: list
    elements: dict
  since:
    description:
      - Events that last happened before this time (RFC 3339, for example the fault's
        C(injected_at)) do not count.
      - Default, when the module starts.
    type: str
  event_namespace:
    description: Where platform-connectors writes its Events.
    type: str
    default: default
  wait_timeout:
    description:
      - Seconds to wait for every expected report. NVSentinel's syslog monitor reads the journal
        every C(--polling-interval) (15 s in its chart).
    type: int
    default: 60
seealso:
  - module: gpu_resilience.fault_injection.gpu_xid_inject
  - module: gpu_resilience.fault_injection.xid_catalog_info
"""

EXAMPLES = r"""
- name: XID 48 on GPU 0 of gpu-node-1
  gpu_resilience.fault_injection.gpu_xid_inject:
    node: gpu-node-1
    gpu: "0"
    xid: 48
  register: fault

- name: NVSentinel reports it as the catalog expects
  gpu_resilience.fault_injection.nvsentinel_detection:
    node: gpu-node-1
    records: "{{ fault.faults[0].records }}"
    since: "{{ fault.faults[0].injected_at }}"
    gpu_metadata: "{{ node_gpu_metadata }}"
  register: detected

- name: Fail on any difference
  ansible.builtin.assert:
    that: detected.matched
    fail_msg: "{{ detected.rows | rejectattr('match') | map(attribute='problems') | list }}"
"""

RETURN = r"""
expected:
  description: The health events the catalog expects, in the order NVSentinel publishes them.
  returned: always
  type: list
  elements: dict
  sample: [{check: SysLogsXIDError, error_code: "48", action: COMPONENT_RESET, fatal: true, healthy: false,
            signal: condition, pci: "0000:75:00", gpu_uuid: GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9}]
rows:
  description:
    - One per expected event - C(expected), C(signal) (where it was found, C(condition) or C(event)),
      C(observed) (the parsed entry, C(error_codes), C(entities), C(action), C(text)), C(problems)
      and C(match).
  returned: always
  type: list
  elements: dict
extra:
  description: Reports no expected event accounts for (NVSentinel reported more than the catalog expects).
  returned: always
  type: list
  elements: dict
mismatches:
  description: Rows that do not match plus extra reports.
  returned: always
  type: int
  sample: 0
found:
  description: Each expected event found - C(check), C(signal), C(error_codes), C(action) and C(detail) (those in a line).
  returned: always
  type: list
  elements: dict
  sample: [{check: SysLogsXIDError, signal: condition, error_codes: ["79"], action: RESTART_BM,
            detail: SysLogsXIDError condition ErrorCode 79 RESTART_BM}]
problems:
  description: One sentence per difference from the catalog (a missing, different or extra report).
  returned: always
  type: list
  elements: str
matched:
  description: True when every expected event was reported as expected and nothing else was.
  returned: always
  type: bool
  sample: true
elapsed:
  description: Seconds from the module's start to the API event in which the last expected report appeared.
  returned: when every expected event was reported
  type: float
  sample: 14.2
observed_at:
  description: The wall time (RFC 3339) of that API event.
  returned: when every expected event was reported
  type: str
  sample: "2026-12-06T20:15:36.512Z"
first_elapsed:
  description: Seconds from the module's start to the API event in which the first expected report appeared
    (NVSentinel publishes XID 79's two reports one after the other; its quarantine may come in between).
  returned: when every expected event was reported
  type: float
  sample: 14.1
first_observed_at:
  description: The wall time (RFC 3339) of that API event - when NVSentinel first reported the fault.
  returned: when every expected event was reported
  type: str
  sample: "2026-12-06T20:15:36.482Z"
conditions:
  description: The node's conditions at the end.
  returned: always
  type: list
  elements: dict
events:
  description: The Events that counted (on the node, since I(since)).
  returned: always
  type: list
  elements: dict
"""

import queue
import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drain, kube, nvsentinel
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError


def argument_spec():
    return dict(
        node=dict(type="str", required=True),
        records=dict(type="list", elements="str", required=True),
        gpu_metadata=dict(type="dict"),
        baseline=dict(type="list", elements="dict"),
        since=dict(type="str"),
        event_namespace=dict(type="str", default="default"),
        wait_timeout=dict(type="int", default=60),
    )


def expectation(params):
    """(expected events, stalled records) for the records as journald stores them; ValueError on bad input."""
    return nvsentinel.expectation(params["records"], params["gpu_metadata"])


class Detection(object):
    """The node and its Events, followed by two watches, compared with the expectation on every change."""

    def __init__(self, module, expected, started):
        self.module = module
        self.params = module.params
        self.expected = expected
        self.started = started
        self.k8s = kube.client(module)
        self.nodes = kube.resource(self.k8s, "v1", "Node")
        self.events_res = kube.resource(self.k8s, "v1", "Event")
        self.node = None
        self.events = {}
        self.first = None   # (monotonic, wall) of the API event with the first expected report
        self.since = nvsentinel.parse_time(self.params["since"]) if self.params["since"] else time.time()

    def seen(self):
        node = self.node or {}
        conditions = (node.get("status") or {}).get("conditions") or []
        events = nvsentinel.recent_events(list(self.events.values()), self.since)
        baseline = self.params["baseline"] if self.params["baseline"] is not None else self.baseline
        return nvsentinel.observe(self.expected, conditions, events, node=self.params["node"], baseline=baseline), \
            conditions, events

    def run(self):
        name = self.params["node"]
        self.node = kube.get(self.k8s, self.nodes, name)
        if self.node is None:
            raise KubeError("node %s not found" % name)
        self.baseline = (self.node.get("status") or {}).get("conditions") or []
        items, _version = kube.list_objects(self.k8s, self.events_res, self.params["event_namespace"])
        self.events = dict((e["metadata"]["uid"], e) for e in items if _on_node(e, name))
        if self.module.check_mode:
            return self.result(None)
        return self.wait(name)

    def wait(self, name):
        deadline = self.started + self.params["wait_timeout"]
        updates = queue.Queue()
        watches = [kube.WatchThread(self.k8s, self.nodes, updates, "node", deadline,
                                    field_selector="metadata.name=" + name),
                   kube.WatchThread(self.k8s, self.events_res, updates, "events", deadline,
                                    namespace=self.params["event_namespace"],
                                    field_selector="involvedObject.kind=Node,involvedObject.name=" + name)]
        for watch in watches:
            watch.start()
        when = None
        try:
            while True:
                seen = self.seen()[0]
                if self.first is None and any(row["observed"] is not None for row in seen["rows"]):
                    self.first = when or (time.monotonic(), time.time())
                if nvsentinel.complete(seen):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    with kube.Waiting():
                        source, kind, payload, mono, wall = updates.get(timeout=remaining)
                except queue.Empty:
                    break
                self.apply(source, kind, payload)
                when = (mono, wall)
        finally:
            for watch in watches:
                watch.stop()
        return self.result(when)

    def apply(self, source, kind, payload):
        if kind == "FAILED":
            raise payload
        if source == "node":
            if kind == "SYNC":
                self.node = payload[0] if payload else self.node
            elif kind != "DELETED":
                self.node = payload
            return
        if kind == "SYNC":
            self.events = dict((e["metadata"]["uid"], e) for e in payload)
        elif kind == "DELETED":
            self.events.pop(payload["metadata"]["uid"], None)
        else:
            self.events[payload["metadata"]["uid"]] = payload

    def result(self, when):
        seen, conditions, events = self.seen()
        found, problems = nvsentinel.findings(seen)
        out = dict(changed=False, expected=self.expected, rows=seen["rows"], extra=seen["extra"],
                   mismatches=seen["mismatches"], matched=seen["mismatches"] == 0, found=found, problems=problems,
                   conditions=conditions, events=events)
        if nvsentinel.complete(seen) and not self.module.check_mode:
            mono, wall = when or (time.monotonic(), time.time())
            out["elapsed"] = round(mono - self.started, 3)
            out["observed_at"] = drain.utc(wall)
            mono, wall = self.first or (mono, wall)
            out["first_elapsed"] = round(mono - self.started, 3)
            out["first_observed_at"] = drain.utc(wall)
        return out


def _on_node(event, name):
    involved = event.get("involvedObject") or {}
    return involved.get("kind") == "Node" and involved.get("name") == name


def main():
    started = time.monotonic()
    module = kube.module(argument_spec(), supports_check_mode=True)
    if module.params["wait_timeout"] < 0:
        module.fail_json(msg="wait_timeout must be 0 or more seconds, got %d" % module.params["wait_timeout"])
    try:
        expected, stalls = expectation(module.params)
        if module.params["since"]:
            nvsentinel.parse_time(module.params["since"])
    except ValueError as e:
        module.fail_json(msg="cannot tell what NVSentinel should report: %s" % e, changed=False)
    if stalls:
        module.fail_json(msg="NVSentinel's syslog monitor on %s cannot get past %s: the node's GPU metadata maps no GPU "
                             "to that NVSwitch port, so its SXid handler fails on the record and the monitor retries it "
                             "forever, processing no later record of any check (also after a restart). Give the node "
                             "GPU metadata with that port, or inject SXids only on ports it lists"
                             % (module.params["node"], stalls[0].split("\n")[0]), changed=False, stalls=stalls)
    try:
        result = Detection(module, expected, started).run()
    except KubeError as e:
        module.fail_json(msg=str(e), changed=False)
    kube.finish(module, result)


if __name__ == "__main__":
    main()
