#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: wait_node_cordon
short_description: Wait until Kubernetes nodes are quarantined (cordoned, tainted, NVSentinel) or released
version_added: 0.1.0
description:
  - Waits until one or more nodes reach a quarantine state, for example after a GPU fault was
    injected and the detection and remediation stack (NVIDIA NVSentinel, the AWS GPU health-check
    suite, the collection's health agent, an operator with C(kubectl cordon)) should react; or,
    with I(state=released), until the node is given back.
  - Waiting watches the nodes (one list, then a watch from its resourceVersion, listing again when
    the watch expires); it never polls with fixed sleeps, so the reported time is the time of the
    API event in which the node first reached the state.
  - Returns, per node, the time from the module's start to that event, which mark matched, who set
    it (NVSentinel's C(cordon-by) label and the field managers recorded in C(metadata.managedFields),
    e.g. C(fault-quarantine) or C(kubectl)), and the node's quarantine marks at the end.
  - Never changes anything.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Does not wait; returns the nodes' current marks and whether they already are in I(state).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  name:
    description:
      - The node to wait for.
      - Give exactly one of I(name), I(names) and I(label_selector).
    type: str
  names:
    description:
      - Several nodes to wait for.
    type: list
    elements: str
  label_selector:
    description:
      - Wait for the nodes this label selector chooses, e.g. C(nvidia.com/gpu.present=true).
      - The selection is followed while waiting (a node that stops matching the selector is no
        longer counted).
    type: str
  count:
    description:
      - How many of the chosen nodes must reach I(state).
      - Default is all of them.
    type: int
  state:
    description:
      - C(quarantined) waits until a node matches I(conditions) (see I(mode)).
      - C(released) waits until none of I(conditions) matches the node any more.
    type: str
    choices: [quarantined, released]
    default: quarantined
  conditions:
    description:
      - The marks that make a node quarantined.
      - "Default is C([{kind: cordoned}, {kind: nvsentinel}])."
    type: list
    elements: dict
    suboptions:
      kind:
        description:
          - C(cordoned) - C(spec.unschedulable) is true.
          - C(nvsentinel) - NVSentinel's fault-quarantine holds the node - its label
            C(<nvsentinel_label_prefix>cordon-by=NVSentinel), its state label
            C(dgxc.nvidia.com/nvsentinel-state) (any value) or its C(quarantineHealthEvent)
            annotation. With I(value), only that state, e.g. C(drain-succeeded).
          - C(taint) - a taint with I(key), and with I(value) and I(effect) when given, e.g. the AWS
            health-check suite's C(gpu-healthcheck.aws-samples.io/unhealthy=true:NoSchedule).
          - C(label) - a label with I(key), and with I(value) when given.
        type: str
        required: true
        choices: [cordoned, nvsentinel, taint, label]
      key:
        description: The taint's or label's key (I(kind=taint) and I(kind=label) only).
        type: str
      value:
        description:
          - The taint's or label's value; the NVSentinel state for I(kind=nvsentinel)
            (C(quarantined), C(draining), C(drain-succeeded), C(drain-failed), C(remediating),
            C(remediation-succeeded), C(remediation-failed)).
        type: str
      effect:
        description: The taint's effect (I(kind=taint) only).
        type: str
        choices: [NoSchedule, PreferNoSchedule, NoExecute]
  mode:
    description:
      - With I(state=quarantined), whether C(any) of I(conditions) or C(all) of them must match a node.
      - I(state=released) always waits until none matches.
    type: str
    choices: [any, all]
    default: any
  nvsentinel_label_prefix:
    description:
      - NVSentinel fault-quarantine's C(labelPrefix) setting, which its C(cordon-by),
        C(cordon-reason), C(cordon-timestamp), C(uncordon-by) and C(uncordon-timestamp) labels carry.
    type: str
    default: k8saas.nvidia.com/
  wait_timeout:
    description:
      - How many seconds to wait before failing. NVSentinel reads the journal every 15 seconds by
        default, so allow for that and for its rule evaluation.
    type: int
    default: 300
notes:
  - Needs C(get), C(list) and C(watch) on C(nodes).
  - On timeout the module fails with every node's current marks and what it was waiting for.
  - With a single I(name) the watch is limited to that node; with I(names), all nodes are watched
    and the others ignored.
seealso:
  - module: gpu_resilience.fault_injection.gpu_xid_inject
  - name: NVSentinel fault quarantine
    description: How NVSentinel cordons and taints nodes.
    link: https://github.com/NVIDIA/NVSentinel
"""

EXAMPLES = r"""
- name: GPU 2 of gpu-node-1 falls off the bus
  gpu_resilience.fault_injection.gpu_xid_inject:
    node: gpu-node-1
    gpu: "2"
    xid: 79

- name: Wait for NVSentinel to quarantine the node
  gpu_resilience.fault_injection.wait_node_cordon:
    name: gpu-node-1
    conditions:
      - kind: nvsentinel
    wait_timeout: 180
  register: quarantine

- name: How long detection took, and who did it
  ansible.builtin.debug:
    msg: >-
      {{ quarantine.nodes[0].name }} quarantined after {{ quarantine.nodes[0].elapsed }} s by
      {{ quarantine.nodes[0].set_by.cordon_by }} ({{ quarantine.nodes[0].set_by.managers | join(', ') }})

- name: Wait for the AWS health-check suite's taint on two of the GPU nodes
  gpu_resilience.fault_injection.wait_node_cordon:
    label_selector: nvidia.com/gpu.present=true
    count: 2
    conditions:
      - kind: taint
        key: gpu-healthcheck.aws-samples.io/unhealthy
        value: "true"
        effect: NoSchedule

- name: Wait until NVSentinel has drained the node (cordoned and drain succeeded)
  gpu_resilience.fault_injection.wait_node_cordon:
    name: gpu-node-1
    mode: all
    conditions:
      - kind: cordoned
      - kind: nvsentinel
        value: drain-succeeded

- name: Wait until the node is back in service
  gpu_resilience.fault_injection.wait_node_cordon:
    name: gpu-node-1
    state: released
    wait_timeout: 900

- name: Is any GPU node quarantined right now? (does not wait)
  gpu_resilience.fault_injection.wait_node_cordon:
    label_selector: nvidia.com/gpu.present=true
    count: 1
  check_mode: true
  register: now
"""

RETURN = r"""
waited_seconds:
  description:
    - Seconds the module spent blocked on watches, waiting for the cluster to reach the state it
      waits for (the rest of its run time is its own work); C(bench/drill.py) uses it to tell a
      drill's own overhead from the time the cluster took.
  returned: always
  type: float
  sample: 0.82
nodes:
  description: One entry per chosen node, by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The node.
      type: str
      sample: gpu-node-1
    matched:
      description: Whether the node is in I(state) at the end.
      type: bool
      sample: true
    elapsed:
      description: Seconds from the module's start to the API event in which the node reached
        I(state) (and stayed in it); null if it did not.
      type: float
      sample: 17.412
    matched_at:
      description: When the module saw that event (UTC).
      type: str
      sample: "2026-11-22T18:20:18.412301Z"
    matched_at_start:
      description: Whether the node already was in I(state) when the module started.
      type: bool
      sample: false
    matched_marks:
      description:
        - The marks that matched I(conditions) in that event (empty for I(state=released)).
        - C(field) names the node field; C(set_by) is the newest C(metadata.managedFields) entry
          that owns it (null when none does; node taints are an atomic list, so the owner of the
          whole list is given).
      type: list
      elements: dict
      sample:
        - kind: cordoned
          detail: spec.unschedulable is true
          field: spec.unschedulable
          value: true
          set_by: {manager: fault-quarantine, operation: Update, time: "2026-11-22T18:20:18Z", subresource: null}
        - kind: nvsentinel
          detail: cordoned by NVSentinel (GPU-fatal-error-ruleset)
          field: metadata.labels['k8saas.nvidia.com/cordon-by']
          value: NVSentinel
          set_by: {manager: fault-quarantine, operation: Update, time: "2026-11-22T18:20:18Z", subresource: null}
    set_by:
      description: Who quarantined (or released) the node - the field managers of the matched
        marks, and NVSentinel's C(cordon-by) and C(uncordon-by) labels.
      type: dict
      sample: {managers: [fault-quarantine], cordon_by: NVSentinel, uncordon_by: null}
    marks:
      description: The node's quarantine marks at the end.
      type: dict
      contains:
        unschedulable:
          description: C(spec.unschedulable).
          type: bool
        taints:
          description: All taints.
          type: list
          elements: dict
        labels:
          description: Labels with NVSentinel's and the AWS suite's prefixes.
          type: dict
        annotations:
          description: Annotations with those prefixes, and NVSentinel's own (C(quarantineHealthEvent), ...).
          type: dict
        conditions:
          description: Ready, any non-standard condition (e.g. NVSentinel's C(SysLogsXIDError)), and
            any pressure condition that is not False.
          type: list
          elements: dict
        nvsentinel:
          description: NVSentinel's marks, parsed (cordon_by, cordon_reason, cordon_timestamp,
            uncordon_by, uncordon_timestamp, state, is_cordoned, applied_taints, health_event).
          type: dict
        aws:
          description: The AWS health-check suite's marks (status, severity, last_check, mode, taints).
          type: dict
      sample:
        unschedulable: true
        taints: [{key: node.kubernetes.io/unschedulable, effect: NoSchedule, timeAdded: "2026-11-22T18:20:18Z"}]
        labels: {"k8saas.nvidia.com/cordon-by": NVSentinel, "dgxc.nvidia.com/nvsentinel-state": quarantined}
        annotations: {quarantineHealthEventIsCordoned: "True"}
        conditions: [{type: Ready, status: "True"}, {type: SysLogsXIDError, status: "True", reason: SysLogsXIDErrorIsNotHealthy}]
        nvsentinel: {cordon_by: NVSentinel, state: quarantined, is_cordoned: true}
        aws: {}
matched:
  description: The nodes in I(state) at the end.
  returned: always
  type: list
  elements: str
  sample: [gpu-node-1]
satisfied:
  description: Whether enough nodes are in I(state) (always true when the module succeeds outside
    check mode; in check mode, whether they already are).
  returned: always
  type: bool
  sample: true
waited:
  description: Whether the module had to watch (false in check mode and when the state already held).
  returned: always
  type: bool
  sample: true
elapsed:
  description: Seconds the module ran until it returned.
  returned: always
  type: float
  sample: 17.415
started_at:
  description:
    - When the module started (UTC); the nodes' I(elapsed) count from here.
    - Not called C(started), so that the module can run with C(async) (M(ansible.builtin.async_status)
      reads a C(started) key as its own).
  returned: always
  type: str
  sample: "2026-11-22T18:20:01.000123Z"
state:
  description: The state waited for.
  returned: always
  type: str
  sample: quarantined
conditions:
  description: The conditions, completed with their defaults, each with a C(description).
  returned: always
  type: list
  elements: dict
  sample: [{kind: cordoned, key: null, value: null, effect: null, description: cordoned (spec.unschedulable true)}]
"""

import datetime
import math
import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import fault_api, kube, node_marks
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

try:
    from urllib3.exceptions import HTTPError as TransportError
except ImportError:  # urllib3 comes with the kubernetes client, which AnsibleK8SModule requires
    class TransportError(Exception):
        pass

STATES = ("quarantined", "released")
# Watch failures after which listing again is the cure (expired version, API server restarting).
RELIST_STATUSES = (None, 0, 410, 429, 500, 502, 503, 504)


def argument_spec():
    return dict(
        name=dict(type="str"),
        names=dict(type="list", elements="str"),
        label_selector=dict(type="str"),
        count=dict(type="int"),
        state=dict(type="str", choices=list(STATES), default="quarantined"),
        conditions=dict(type="list", elements="dict", options=dict(
            kind=dict(type="str", required=True, choices=list(node_marks.KINDS)),
            key=dict(type="str", no_log=False),
            value=dict(type="str"),
            effect=dict(type="str", choices=list(node_marks.TAINT_EFFECTS)),
        )),
        mode=dict(type="str", choices=list(node_marks.MODES), default="any"),
        nvsentinel_label_prefix=dict(type="str", default=node_marks.NVSENTINEL_LABEL_PREFIX),
        wait_timeout=dict(type="int", default=300),
    )


def _utc(now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Relist(Exception):
    """The watch cannot go on from its resourceVersion: list again."""


class WaitTimeout(Exception):
    """The nodes did not reach the state in time; the message holds their marks."""

    def __init__(self, message, result):
        super(WaitTimeout, self).__init__(message)
        self.result = result


class NodeWaiter:
    def __init__(self, module, params, started, started_wall):
        self.module = module
        self.params = params
        self.started = started
        self.started_wall = started_wall
        self.state = params["state"]
        self.mode = params["mode"]
        self.prefix = params["nvsentinel_label_prefix"]
        self.conditions = node_marks.condition_specs(params["conditions"], self.prefix)
        if params["name"]:
            self.names = [params["name"]]
        elif params["names"]:
            self.names = []
            for name in params["names"]:
                if name not in self.names:
                    self.names.append(name)
        else:
            self.names = None
        for name in self.names or []:
            fault_api.validate_node_name(name)
        self.selector = params["label_selector"]
        self.field_selector = "metadata.name=" + self.names[0] if self.names and len(self.names) == 1 else None
        self.count = params["count"]
        self.latest = {}   # name -> the node as last seen
        self.reached = {}  # name -> when and how the node reached the state
        self.k8s = None
        self.nodes = None

    # --- state --------------------------------------------------------------------------------

    def holds(self, node):
        if self.state == "quarantined":
            return node_marks.matches(node, self.conditions, self.mode)
        return node_marks.released(node, self.conditions), []

    def observe(self, node, at_start=False):
        name = node["metadata"]["name"]
        self.latest[name] = node
        held, found = self.holds(node)
        if not held:
            self.reached.pop(name, None)
        elif name not in self.reached:
            self.reached[name] = dict(elapsed=round(time.monotonic() - self.started, 3), matched_at=_utc(),
                                      matched_at_start=at_start, matched_marks=found)

    def tracked(self):
        return list(self.names) if self.names is not None else sorted(self.latest)

    def needed(self):
        return self.count if self.count is not None else len(self.tracked())

    def done(self):
        tracked = self.tracked()
        return bool(tracked) and sum(1 for n in tracked if n in self.reached) >= self.needed()

    # --- API ----------------------------------------------------------------------------------

    def connect(self):
        self.k8s = kube.client(self.module)
        self.nodes = kube.resource(self.k8s, "v1", "Node")

    def list_nodes(self, first=False):
        try:
            result = self.k8s.get(self.nodes, label_selector=self.selector, field_selector=self.field_selector).to_dict()
        except kube.DynamicApiError as e:
            raise KubeError("listing nodes failed: %s" % kube.describe(e))
        items = result.get("items") or []
        if self.names is not None:
            items = [n for n in items if n["metadata"]["name"] in self.names]
            missing = [n for n in self.names if n not in set(i["metadata"]["name"] for i in items)]
            if missing:
                raise KubeError("node%s %s not found%s" % (
                    "s" if len(missing) > 1 else "", ", ".join(missing),
                    "" if first else " (deleted while waiting)"))
        elif first:
            if not items:
                raise KubeError("label_selector %r matches no nodes" % self.selector)
            if self.count is not None and self.count > len(items):
                raise KubeError("label_selector %r matches %d node(s) (%s); count is %d" % (
                    self.selector, len(items), ", ".join(sorted(i["metadata"]["name"] for i in items)), self.count))
        self.latest = {}
        listed = set()
        for node in items:
            listed.add(node["metadata"]["name"])
            self.observe(node, at_start=first)
        for name in list(self.reached):
            if name not in listed:
                del self.reached[name]
        return result["metadata"].get("resourceVersion")

    def watch(self, version, deadline):
        """Follow events until done or the deadline; returns the last resourceVersion seen."""
        remaining = deadline - time.monotonic()
        events = self.k8s.client.watch(self.nodes, label_selector=self.selector, field_selector=self.field_selector,
                                       resource_version=version, timeout=max(1, int(math.ceil(remaining))))
        try:
            for event in events:
                obj = event["raw_object"]
                kind = event["type"]
                if kind == "ERROR":
                    raise _Relist()
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    if self.names is not None and name in self.names:
                        raise KubeError("node %s was deleted while waiting for it" % name)
                    self.latest.pop(name, None)
                    self.reached.pop(name, None)
                elif self.names is None or name in self.names:
                    self.observe(obj)
                if self.done() or time.monotonic() >= deadline:
                    break
        finally:
            events.close()
        return version

    def run(self):
        self.connect()
        version = self.list_nodes(first=True)
        waited = False
        if not self.module.check_mode:
            deadline = self.started + self.params["wait_timeout"]
            while not self.done():
                if time.monotonic() >= deadline:
                    raise WaitTimeout(self.timeout_message(), self.result(waited=True))
                waited = True
                try:
                    with kube.Waiting():
                        version = self.watch(version, deadline)
                except _Relist:
                    version = self.list_nodes()
                except kube.ApiException as e:
                    if getattr(e, "status", None) not in RELIST_STATUSES:
                        raise KubeError("watching nodes failed: %s" % kube.describe(e))
                    version = self.list_nodes()
                except TransportError:
                    version = self.list_nodes()
        return self.result(waited=waited)

    # --- results ------------------------------------------------------------------------------

    def node_result(self, name):
        node = self.latest.get(name) or {"metadata": {"name": name}}
        summary = node_marks.marks(node, self.prefix)
        reached = self.reached.get(name)
        matched_marks = reached["matched_marks"] if reached else []
        managers = []
        for mark in matched_marks:
            manager = (mark.get("set_by") or {}).get("manager")
            if manager and manager not in managers:
                managers.append(manager)
        return dict(
            name=name,
            matched=reached is not None,
            elapsed=reached["elapsed"] if reached else None,
            matched_at=reached["matched_at"] if reached else None,
            matched_at_start=bool(reached and reached["matched_at_start"]),
            matched_marks=matched_marks,
            set_by=dict(managers=managers, cordon_by=summary["nvsentinel"].get("cordon_by"),
                        uncordon_by=summary["nvsentinel"].get("uncordon_by")),
            marks=summary,
        )

    def described_conditions(self):
        return [dict(kind=c["kind"], key=c["key"], value=c["value"], effect=c["effect"],
                     description=node_marks.describe(c)) for c in self.conditions]

    def result(self, waited):
        names = self.tracked()
        return dict(
            changed=False,
            nodes=[self.node_result(n) for n in names],
            matched=[n for n in names if n in self.reached],
            satisfied=self.done(),
            waited=waited,
            elapsed=round(time.monotonic() - self.started, 3),
            started_at=self.started_wall,
            state=self.state,
            conditions=self.described_conditions(),
        )

    def awaited(self):
        described = [node_marks.describe(c) for c in self.conditions]
        if self.state == "released":
            return "released (none of: %s)" % "; ".join(described)
        if len(described) == 1:
            return "quarantined (%s)" % described[0]
        return "quarantined (%s of: %s)" % (self.mode, "; ".join(described))

    def timeout_message(self):
        names = self.tracked()
        if self.names is not None:
            chosen = "node%s %s" % ("s" if len(names) > 1 else "", ", ".join(names))
        else:
            chosen = "the nodes matching label selector %r" % self.selector
        reached = sum(1 for n in names if n in self.reached)
        current = " | ".join("%s%s: %s" % (n, " (in that state)" if n in self.reached else "",
                                           node_marks.brief(node_marks.marks(self.latest.get(n) or {}, self.prefix)))
                             for n in names)
        return "timed out after %ds waiting for %s to be %s; %d of the %d node(s) needed got there. " \
               "Current marks: %s" % (self.params["wait_timeout"], chosen, self.awaited(), reached, self.needed(),
                                      current or "no nodes")


def check_params(params):
    """Parameter combinations that the argument spec cannot express."""
    if params["wait_timeout"] < 1:
        return "wait_timeout must be at least 1 second"
    if params["names"] is not None and not params["names"]:
        return "names must not be empty"
    if params["count"] is not None:
        if params["count"] < 1:
            return "count must be at least 1"
        chosen = [params["name"]] if params["name"] else params["names"]
        if chosen and params["count"] > len(set(chosen)):
            return "count is %d but only %d node(s) are named" % (params["count"], len(set(chosen)))
    if params["label_selector"] is not None and not params["label_selector"].strip():
        return "label_selector must not be empty"
    return None


def main():
    started = time.monotonic()
    started_wall = _utc()
    module = kube.module(argument_spec(), supports_check_mode=True,
                         mutually_exclusive=[("name", "names", "label_selector")],
                         required_one_of=[("name", "names", "label_selector")])
    problem = check_params(module.params)
    if problem:
        module.fail_json(msg=problem)
    try:
        waiter = NodeWaiter(module, module.params, started, started_wall)
        result = waiter.run()
    except WaitTimeout as e:
        module.fail_json(msg=str(e), **e.result)
    except (KubeError, node_marks.ConditionError, fault_api.FaultSpecError) as e:
        module.fail_json(msg=str(e), changed=False)
    module.exit_json(waited_seconds=kube.waited(), **result)


if __name__ == "__main__":
    main()
