#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvsentinel_phase
short_description: Wait for NVIDIA NVSentinel's quarantine, drain or remediation of nodes, as its stage does them
version_added: 0.1.0
description:
  - A drill's view of one of NVSentinel's phases after a fault, on each node, for the stage
    NVSentinel runs in (C(monitor), C(dry-run), C(full)); see C(docs/nvsentinel.md), "Stages".
  - C(quarantine) - stage full, fault-quarantine's cordon, labels and C(quarantineHealthEvent)
    annotation; stage dry-run, that annotation alone (no cordon, no label).
  - C(drain) - stage full, node-drainer's state C(drain-succeeded); stage dry-run, its decision
    (C(draining) or C(drain-succeeded)), its evictions server-side dry runs.
  - C(remediation) - stage full, the remediation object fault-remediation's configuration maps the
    health event's recommended action to (I(remediation)), its C(latestFaultRemediationState)
    annotation and state C(remediation-succeeded) (C(remediation-failed) for an action it has no
    template for); stage dry-run, nothing created.
  - Stage monitor, or health events NVSentinel reports as non-fatal (which its rule sets do not
    quarantine), expect no mark at all.
  - Fails as soon as a node carries a mark the stage rules out (a cordon in dry-run, any mark in
    monitor, state C(drain-failed) in full), naming it and who wrote it, as soon as a node it saw
    quarantined is handed back to service before the phase (fault-quarantine's
    C(quarantinedNodeUncordonedManually), after which NVSentinel cancelled the rest), and when the wait
    times out.
  - Watches the nodes and the remediation objects (no polling); the time reported is that of the API
    event in which the node reached the phase. Started before the fault (C(async)), it times NVSentinel
    from the fault on.
  - Never changes anything.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Does not wait; reports the nodes as they are.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  nodes:
    description: The nodes the fault was injected on.
    type: list
    elements: str
    required: true
  phase:
    description: The phase.
    type: str
    required: true
    choices: [quarantine, drain, remediation]
  stage:
    description: The stage NVSentinel runs in (M(gpu_resilience.fault_injection.nvsentinel_info) checks it).
    type: str
    required: true
    choices: [monitor, dry-run, full]
  records:
    description:
      - The records the fault writes on each node, as M(gpu_resilience.fault_injection.gpu_xid_inject)
        returns them (C(faults[].records), also in check mode); the catalog's expectation of them says
        whether NVSentinel quarantines (a fatal health event) and which recommended actions
        fault-remediation acts on.
    type: list
    elements: str
    required: true
  gpu_metadata:
    description: The nodes' GPU metadata as NVSentinel reads it (omit for nodes without it).
    type: dict
  remediation:
    description:
      - fault-remediation's remediation resource per recommended action, as
        M(gpu_resilience.fault_injection.nvsentinel_info) returns it (C(remediation)).
    type: dict
    default: {}
  since:
    description:
      - Remediation objects created before this time (RFC 3339) do not count. Default, when the module starts.
    type: str
  label_prefix:
    description: fault-quarantine's label prefix.
    type: str
    default: k8saas.nvidia.com/
  wait_timeout:
    description: Seconds to wait for every node to reach the phase.
    type: int
    default: 120
seealso:
  - module: gpu_resilience.fault_injection.nvsentinel_info
  - module: gpu_resilience.fault_injection.nvsentinel_detection
  - module: gpu_resilience.fault_injection.nvsentinel_restore
"""

EXAMPLES = r"""
- name: Watch for NVSentinel's remediation from before the fault
  gpu_resilience.fault_injection.nvsentinel_phase:
    nodes: [gpu-node-1]
    phase: remediation
    stage: full
    records: "{{ predicted.faults[0].records }}"
    remediation: "{{ nvsentinel.remediation }}"
    wait_timeout: 300
  async: 360
  poll: 0
  register: remediation_job
"""

RETURN = r"""
nodes:
  description: Per node - C(name), C(done), C(matched_at) (RFC 3339 time of the API event, null when not reached),
    C(elapsed) (seconds from the module's start), C(detail) (the phase's marks when it was reached, in a line),
    C(marks) (NVSentinel's marks and remediation objects now, each C(kind), C(detail), C(field), C(value),
    C(set_by)), C(forbidden).
  returned: always
  type: list
  elements: dict
acts:
  description: Whether NVSentinel acts in the phase in this stage (when not, C(done) holds from the start and
    C(matched_at) is no reaction time).
  returned: always
  type: bool
satisfied:
  description: Every node reached the phase and none carries a forbidden mark.
  returned: always
  type: bool
expect:
  description: What the phase waits for, in words.
  returned: always
  type: str
  sample: fault-remediation's RebootNode and state remediation-succeeded
plan:
  description: The expectation - C(stage), C(fatal), C(actions), C(objects), C(remediation_state), C(unsupported).
  returned: always
  type: dict
"""

import queue
import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drain, kube, nvsentinel
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import nvsentinel_stages as stages
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError


def argument_spec():
    return dict(nodes=dict(type="list", elements="str", required=True),
                phase=dict(type="str", required=True, choices=list(stages.PHASES)),
                stage=dict(type="str", required=True, choices=list(stages.STAGES)),
                records=dict(type="list", elements="str", required=True),
                gpu_metadata=dict(type="dict"),
                remediation=dict(type="dict", default={}),
                since=dict(type="str"),
                label_prefix=dict(type="str", default="k8saas.nvidia.com/"),
                wait_timeout=dict(type="int", default=120))


def resources_to_watch(remediation):
    """The distinct remediation resources ({api_version, kind}) of fault-remediation's configuration."""
    out = []
    for resource in (remediation or {}).values():
        item = dict(api_version=resource["api_version"], kind=resource["kind"])
        if item not in out:
            out.append(item)
    return out


class Phase(object):
    """The nodes and the remediation objects, followed by watches, held against the plan on every change."""

    def __init__(self, module, plan, started):
        self.module, self.params, self.plan, self.started = module, module.params, plan, started
        self.k8s = kube.client(module)
        self.node_res = kube.resource(self.k8s, "v1", "Node")
        self.since = nvsentinel.parse_time(self.params["since"]) if self.params["since"] else time.time()
        self.object_res = []
        for item in resources_to_watch(self.params["remediation"]):
            try:
                self.object_res.append(self.k8s.resource(item["kind"], item["api_version"]))
            except kube.ResourceNotFoundError:
                continue   # not served: nobody can create one
        self.nodes, self.objects, self.reached = {}, {}, {}
        self.held = set()   # nodes seen held by fault-quarantine during the watch

    def state(self, name):
        objects = stages.remediation_objects(list(self.objects.values()), name, self.since)
        return stages.phase_state(self.plan, self.params["phase"], self.nodes[name], objects,
                                  self.params["label_prefix"])

    def observe(self, when):
        """The first forbidden mark, as (node, sentence), or None; notes nodes that reached the phase."""
        for name in self.params["nodes"]:
            if name not in self.nodes:
                continue
            state = self.state(name)
            if state["forbidden"]:
                return name, state["forbidden"][0]
            if stages.held(self.nodes[name]):
                self.held.add(name)
            elif name in self.held and name not in self.reached and stages.handed_back(self.nodes[name]):
                return name, "the node was handed back to service (uncordoned) before NVSentinel got this far: its " \
                             "quarantine was cancelled"
            if state["done"] and name not in self.reached:
                mono, wall = when
                self.reached[name] = dict(elapsed=round(mono - self.started, 3), matched_at=drain.utc(wall),
                                          detail=stages.phase_detail(self.params["phase"], state["marks"]))
        return None

    def run(self):
        for name in self.params["nodes"]:
            node = kube.get(self.k8s, self.node_res, name)
            if node is None:
                raise KubeError("node %s not found" % name)
            self.nodes[name] = node
        for res in self.object_res:
            items, _version = kube.list_objects(self.k8s, res)
            self.objects.update(((res.kind, o["metadata"]["name"]), o) for o in items)
        bad = self.observe((time.monotonic(), time.time()))
        if bad or self.module.check_mode or len(self.reached) == len(self.params["nodes"]):
            return self.result(bad)
        return self.result(self.wait())

    def wait(self):
        deadline = self.started + self.params["wait_timeout"]
        updates = queue.Queue()
        selector = "metadata.name=" + self.params["nodes"][0] if len(self.params["nodes"]) == 1 else None
        watches = [kube.WatchThread(self.k8s, self.node_res, updates, "node", deadline, field_selector=selector)]
        watches += [kube.WatchThread(self.k8s, res, updates, "object:" + res.kind, deadline) for res in self.object_res]
        for watch in watches:
            watch.start()
        try:
            while len(self.reached) < len(self.params["nodes"]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    with kube.Waiting():
                        source, kind, payload, mono, wall = updates.get(timeout=remaining)
                except queue.Empty:
                    return None
                self.apply(source, kind, payload)
                bad = self.observe((mono, wall))
                if bad:
                    return bad
        finally:
            for watch in watches:
                watch.stop()
        return None

    def apply(self, source, kind, payload):
        if kind == "FAILED":
            raise payload
        if source == "node":
            for node in payload if kind == "SYNC" else [payload]:
                if node["metadata"]["name"] in self.params["nodes"] and kind != "DELETED":
                    self.nodes[node["metadata"]["name"]] = node
            return
        resource_kind = source.split(":", 1)[1]
        if kind == "SYNC":
            self.objects = dict((k, o) for k, o in self.objects.items() if k[0] != resource_kind)
        for obj in payload if kind == "SYNC" else [payload]:
            key = (resource_kind, obj["metadata"]["name"])
            if kind == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj

    def result(self, bad):
        nodes = []
        for name in self.params["nodes"]:
            state = self.state(name) if name in self.nodes else {"done": False, "marks": [], "forbidden": []}
            reached = self.reached.get(name)
            nodes.append(dict(name=name, done=reached is not None, matched_at=(reached or {}).get("matched_at"),
                              elapsed=(reached or {}).get("elapsed"), marks=state["marks"],
                              detail=((reached or {}).get("detail")
                                      or stages.phase_detail(self.params["phase"], state["marks"])),
                              forbidden=state["forbidden"]))
        expect = stages.phase_state(self.plan, self.params["phase"], self.nodes[self.params["nodes"][0]], [])["expect"]
        out = dict(changed=False, nodes=nodes, plan=self.plan, expect=expect,
                   acts=stages.acts(self.plan, self.params["phase"]),
                   satisfied=not bad and all(n["done"] for n in nodes))
        if bad:
            out["failed"] = True
            out["msg"] = "NVSentinel phase %s on %s: %s (stage %s)" % (self.params["phase"], bad[0], bad[1],
                                                                       self.plan["stage"])
        elif not out["satisfied"] and not self.module.check_mode:
            waiting = [n for n in nodes if not n["done"]]
            out["failed"] = True
            out["msg"] = "NVSentinel phase %s: no %s within %d s on %s (now: %s)" % (
                self.params["phase"], expect, self.params["wait_timeout"], ", ".join(n["name"] for n in waiting),
                "; ".join("%s: %s" % (n["name"], ", ".join(m["detail"] for m in n["marks"]) or "no NVSentinel mark")
                          for n in waiting))
        return out


def main():
    started = time.monotonic()
    module = kube.module(argument_spec(), supports_check_mode=True)
    params = module.params
    if not params["nodes"]:
        module.fail_json(msg="nodes must name at least one node")
    if params["wait_timeout"] < 0:
        module.fail_json(msg="wait_timeout must be 0 or more seconds, got %d" % params["wait_timeout"])
    try:
        if params["since"]:
            nvsentinel.parse_time(params["since"])
        expected, _stalls = nvsentinel.expectation(params["records"], params["gpu_metadata"])
        plan = stages.plan(params["stage"], expected, params["remediation"])
    except ValueError as e:
        module.fail_json(msg="cannot tell what NVSentinel should do: %s" % e, changed=False)
    try:
        result = Phase(module, plan, started).run()
    except KubeError as e:
        module.fail_json(msg=str(e), changed=False)
    if result.pop("failed", False):
        module.fail_json(**result)
    kube.finish(module, result)


if __name__ == "__main__":
    main()
