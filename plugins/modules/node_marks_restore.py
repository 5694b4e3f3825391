#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: node_marks_restore
short_description: Put nodes' quarantine marks back exactly as a drill ledger recorded them
version_added: 0.1.0
description:
  - Restores a node's cordon, taints, labels and annotations from I(before), the snapshot that
    M(gpu_resilience.fault_injection.drill_ledger) stored in a C(node) entry before a drill touched
    the node.
  - Only marks in I(scope) are restored - the drill's own, the detectors' (the AWS GPU health-check
    suite and the collection's health agent, NVIDIA NVSentinel) and the cordon. A label or
    annotation in scope that the node gained since is removed, one whose value changed gets its old
    value back, one that was removed is added again. The in-scope taints are made equal to the
    snapshot's (other taints keep their place). Everything else - the kubelet's labels, other
    controllers' annotations, the node lifecycle controller's C(node.kubernetes.io/unreachable)
    taint - is never touched.
  - The change is one JSON patch that starts with a C(test) of the node's C(resourceVersion), so it
    applies only to the node as it was read; when the node changed in between, the module reads it
    again and computes the patch again, a few times.
  - Nothing is written when the marks already are as recorded, so a rerun reports no change.
  - With I(nodes), several nodes are restored in one task - for a fleet drill, one module run
    instead of one per node. All nodes are read with one list call; each node then gets its own
    guarded patch as above, and only a node whose patch meets a conflict is read again on its own.
    Every name and snapshot is checked and every node looked up before the first patch, so a bad
    entry or a deleted node changes nothing.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Computes the patch and the marks after it, applies nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The node's in-scope marks before and after; with I(nodes), keyed by node name.
options:
  name:
    description:
      - The node.
      - Give either I(name) and I(before), or I(nodes).
    type: str
  before:
    description:
      - The node's state before the drill, the C(before) of the node's entry in its drill ledger -
        C(unschedulable), C(taints), C(labels), C(annotations) (C(resourceVersion) and C(uid) are
        only informative).
      - Required with I(name).
    type: dict
  nodes:
    description:
      - Several nodes to restore in one task, each with its own snapshot; instead of I(name) and
        I(before).
      - Each node may be listed once. An empty list restores nothing.
    type: list
    elements: dict
    suboptions:
      name:
        description: The node.
        type: str
        required: true
      before:
        description: The node's state before the drill, as for the top-level I(before).
        type: dict
        required: true
  drill:
    description:
      - The drill the marks are restored for (its id). Then marks of other drills are never written
        back - a node that now carries another drill's label C(fault-injection.gpu-resilience.io/drill)
        is in that drill's hands and is left alone (returned with C(held_by), and a warning), and
        another drill's label in I(before) is not restored (that drill's cleanup removes it).
      - Without it, the in-scope marks are made equal to I(before) whoever set them.
    type: str
  scope:
    description: Which marks are restored; each suboption has its default when left out.
    type: dict
    suboptions:
      prefixes:
        description:
          - Labels, annotations and taints whose key starts with one of these are restored.
          - The defaults are the collection's own marks, the AWS GPU health-check suite's (also set
            by the collection's health agent), and NVSentinel's labels and state label.
        type: list
        elements: str
        default: [fault-injection.gpu-resilience.io/, gpu-healthcheck.aws-samples.io/, k8saas.nvidia.com/, dgxc.nvidia.com/]
      keys:
        description:
          - Exact label, annotation and taint keys that are restored too.
          - The default is the annotations of NVSentinel's fault-quarantine and fault-remediation, which have no prefix.
        type: list
        elements: str
        default: [quarantineHealthEvent, quarantineHealthEventIsCordoned, quarantineHealthEventAppliedTaints,
                  quarantineHealthEventAppliedLabels, quarantineHealthEventCordonPreExisting,
                  quarantinedNodeUncordonedManually, quarantinedNodeUntaintedManually, latestFaultRemediationState]
      ignore:
        description:
          - Keys never restored although in scope. The defaults are the health agent's heartbeat,
            rewritten on every check, whose old value means nothing.
        type: list
        elements: str
        default: [gpu-healthcheck.aws-samples.io/last-check, gpu-healthcheck.aws-samples.io/results]
      unschedulable:
        description:
          - Whether C(spec.unschedulable) (the cordon) is restored, together with the
            C(node.kubernetes.io/unschedulable) taint that the node lifecycle controller keeps in step
            with it.
        type: bool
        default: true
      taints:
        description: Whether taints are restored at all.
        type: bool
        default: true
notes:
  - Needs C(get) and C(patch) on C(nodes), and C(list) with I(nodes).
  - A node deleted since the drill cannot be restored; the module fails naming it. With I(nodes),
    it fails before changing any node.
  - With I(nodes), a patch that fails stops the task there; the message names the node and the
    nodes already restored (which stay restored), and a rerun restores the rest.
  - A node re-created under the same name (another C(uid)) is restored all the same, with a warning.
  - The health agent or NVSentinel may mark the node again if they still see a fault; stop the fault
    first (delete the drill's GPUFaults, disarm the shim).
seealso:
  - module: gpu_resilience.fault_injection.drill_ledger
  - module: gpu_resilience.fault_injection.wait_node_cordon
"""

EXAMPLES = r"""
- name: Read the drill's ledger
  gpu_resilience.fault_injection.drill_ledger:
    state: info
    drill: xid79-0412
  register: found

- name: Put every target node's marks back as they were before the drill, in one task
  gpu_resilience.fault_injection.node_marks_restore:
    nodes: >-
      {%- set out = [] -%}
      {%- for entry in found.ledgers[0].entries if entry.type == 'node' -%}
      {%-   set _ = out.append({'name': entry.node, 'before': entry.before}) -%}
      {%- endfor -%}
      {{ out }}
  register: restored

- name: Say which nodes needed it
  ansible.builtin.debug:
    msg: "{{ restored.nodes | selectattr('changed') | map(attribute='name') | list }}"

- name: Put one node's marks back
  gpu_resilience.fault_injection.node_marks_restore:
    name: gpu-node-1
    before: "{{ node_entry.before }}"

- name: Restore the detectors' marks but leave the cordon as it is
  gpu_resilience.fault_injection.node_marks_restore:
    name: gpu-node-1
    before: "{{ node_entry.before }}"
    scope:
      unschedulable: false

- name: What would be restored (changes nothing)
  gpu_resilience.fault_injection.node_marks_restore:
    name: gpu-node-1
    before: "{{ node_entry.before }}"
  check_mode: true
  diff: true
  register: would
"""

RETURN = r"""
patch:
  description:
    - The JSON patch applied (in check mode, that would be applied); empty when nothing differs.
      It starts with a C(test) of C(metadata.resourceVersion).
  returned: with I(name)
  type: list
  elements: dict
  sample:
    - {op: test, path: /metadata/resourceVersion, value: "48311"}
    - {op: remove, path: /metadata/labels/gpu-healthcheck.aws-samples.io~1status}
    - {op: remove, path: /spec/taints}
    - {op: remove, path: /spec/unschedulable}
held_by:
  description:
    - With I(drill), the other drill whose label the node carries, so its marks were left alone;
      null when the node was restored (or found as recorded).
  returned: with I(name)
  type: str
  sample: null
restored:
  description:
    - What changed, from the value found on the node to the value restored (null - absent).
    - C(labels) and C(annotations) map each changed key to C({from, to}); C(taints) (the in-scope
      taints) and C(unschedulable) are C({from, to}). Only the parts that change are present.
  returned: with I(name)
  type: dict
  sample:
    labels: {"gpu-healthcheck.aws-samples.io/status": {from: fail, to: null}}
    taints:
      from: [{key: gpu-healthcheck.aws-samples.io/unhealthy, value: "true", effect: NoSchedule}]
      to: []
    unschedulable: {from: true, to: false}
node:
  description: The node after the task (in check mode, as it would be).
  returned: with I(name)
  type: dict
  contains:
    name:
      description: The node.
      type: str
    resource_version:
      description: Its resourceVersion (the one read, in check mode or when nothing changed).
      type: str
    unschedulable:
      description: C(spec.unschedulable).
      type: bool
    taints:
      description: All its taints.
      type: list
      elements: dict
    labels:
      description: Its in-scope labels.
      type: dict
    annotations:
      description: Its in-scope annotations.
      type: dict
  sample:
    name: gpu-node-1
    resource_version: "48320"
    unschedulable: false
    taints: []
    labels: {}
    annotations: {}
nodes:
  description:
    - One entry per node of I(nodes), in their order, each with the keys the single form returns.
  returned: with I(nodes)
  type: list
  elements: dict
  contains:
    name:
      description: The node.
      type: str
    changed:
      description: Whether the node's marks were (in check mode, would be) changed.
      type: bool
    patch:
      description: As the top-level I(patch), for this node.
      type: list
      elements: dict
    held_by:
      description: As the top-level I(held_by), for this node.
      type: str
    restored:
      description: As the top-level I(restored), for this node.
      type: dict
    node:
      description: As the top-level I(node), for this node.
      type: dict
  sample:
    - name: gpu-node-1
      changed: true
      held_by: null
      patch:
        - {op: test, path: /metadata/resourceVersion, value: "48311"}
        - {op: remove, path: /spec/unschedulable}
      restored: {unschedulable: {from: true, to: false}}
      node: {name: gpu-node-1, resource_version: "48320", unschedulable: false, taints: [], labels: {}, annotations: {}}
    - name: gpu-node-2
      changed: false
      held_by: null
      patch: []
      restored: {}
      node: {name: gpu-node-2, resource_version: "48102", unschedulable: false, taints: [], labels: {}, annotations: {}}
restored_nodes:
  description:
    - When a task with I(nodes) fails while patching, the nodes it had restored before (they stay
      restored).
  returned: on failure with I(nodes), once every node was found
  type: list
  elements: str
  sample: [gpu-node-1]
"""

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_claims, drill_ledger, fault_api
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import kube, node_marks
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import node_restore
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.node_restore import RestoreError

MAX_ATTEMPTS = 5
DEFAULT_KEYS = list(node_marks.NVSENTINEL_ANNOTATIONS)


def argument_spec():
    return dict(
        name=dict(type="str"),
        before=dict(type="dict"),
        nodes=dict(type="list", elements="dict", options=dict(
            name=dict(type="str", required=True),
            before=dict(type="dict", required=True),
        )),
        drill=dict(type="str"),
        scope=dict(type="dict", apply_defaults=True, options=dict(
            prefixes=dict(type="list", elements="str", default=list(node_restore.DEFAULT_PREFIXES)),
            keys=dict(type="list", elements="str", default=DEFAULT_KEYS, no_log=False),
            ignore=dict(type="list", elements="str", default=list(node_restore.DEFAULT_IGNORE)),
            unschedulable=dict(type="bool", default=True),
            taints=dict(type="bool", default=True),
        )),
    )


MODULE_RULES = dict(
    mutually_exclusive=[("name", "nodes"), ("before", "nodes")],
    required_one_of=[("name", "nodes")],
    required_together=[("name", "before")],
)


class Conflict(Exception):
    """The node changed between our read and our patch; current is the node as read since, if it was."""

    def __init__(self, current=None):
        super(Conflict, self).__init__()
        self.current = current


class BatchFailed(KubeError):
    """Restoring one node of a list failed; restored names the nodes patched before it."""

    def __init__(self, message, restored):
        super(BatchFailed, self).__init__(message)
        self.restored = restored


class Restorer:
    """Restores one node. k8s is kubernetes.core's client (or a stand-in in unit tests)."""

    def __init__(self, k8s, name, before, scope, check_mode=False, res=None, drill=None):
        self.k8s = k8s
        self.name = fault_api.validate_node_name(name)
        self.before = node_restore.validate_snapshot(before)
        self.scope = node_restore.make_scope(**scope)
        self.check_mode = check_mode
        self.res = res or kube.resource(k8s, "v1", "Node")
        self.owner = (drill_claims.NODE_DRILL_LABEL, drill_ledger.validate_drill(drill)) if drill else None
        self.warnings = []

    def run(self, node=None):
        """Restore the node; node is the node as already read (by a list), if it was."""
        for _attempt in range(MAX_ATTEMPTS):
            if node is None:
                node = self.read()
            self.check_uid(node)
            planned = node_restore.plan(node, self.before, self.scope, self.owner)
            holder = planned["held_by"]
            if holder:
                self.warnings.append("node %s carries the label %s=%s: it is in drill %s's hands now, so its marks are "
                                     "left to that drill's cleanup" % (self.name, drill_claims.NODE_DRILL_LABEL, holder, holder))
            if not planned["changed"] or self.check_mode:
                return self.result(planned, node, planned["changed"])
            try:
                after = self.apply(planned["patch"], node)
            except Conflict as e:
                # The patch is recomputed from the node as it is now (read again unless just read).
                node = e.current
                continue
            return self.result(planned, after, True)
        raise KubeError("node %s kept changing while its marks were being restored (%d conflicts in a row); "
                        "run the task again" % (self.name, MAX_ATTEMPTS))

    def read(self):
        node = kube.get(self.k8s, self.res, self.name)
        if node is None:
            raise KubeError("node %s not found: a node deleted since the drill cannot be restored; if it is gone "
                            "for good, drop it from the drill's cleanup" % self.name)
        return node

    def check_uid(self, node):
        was, now = self.before.get("uid"), node["metadata"].get("uid")
        if was and now and was != now:
            warning = ("node %s was re-created since the snapshot (uid %s, now %s); its marks are restored all the same"
                       % (self.name, was, now))
            if warning not in self.warnings:
                self.warnings.append(warning)

    def apply(self, patch, node):
        try:
            return self.k8s.patch(self.res, patch, name=self.name,
                                  content_type="application/json-patch+json").to_dict()
        except kube.DynamicApiError as e:
            status = getattr(e, "status", None)
            if status == 409:
                raise Conflict()
            if status == 404:
                raise KubeError("node %s was deleted while its marks were being restored" % self.name)
            if status == 422:
                self.check_moved_on(node)
            raise KubeError("patching node %s failed: %s" % (self.name, kube.describe(e)))

    def check_moved_on(self, node):
        """Conflict if the node's resourceVersion is no longer the one read.

        A failed test op is reported as 422 Invalid, like a patch the server rejects: it was our
        test when the node has moved on.
        """
        current = kube.get(self.k8s, self.res, self.name)
        if current is None or current["metadata"].get("resourceVersion") != node["metadata"].get("resourceVersion"):
            raise Conflict(current)

    def result(self, planned, node, changed):
        state = node_restore.snapshot(node)
        if changed and self.check_mode:
            marks = planned["after"]
            taints = self.predicted_taints(planned, state)
        else:
            marks = node_restore.scoped_marks(state, self.scope)
            taints = state["taints"]
        return dict(
            changed=changed,
            held_by=planned["held_by"],
            patch=planned["patch"] if changed else [],
            restored=planned["restored"] if changed else {},
            node=dict(name=self.name, resource_version=state["resourceVersion"],
                      unschedulable=marks.get("unschedulable", state["unschedulable"]),
                      taints=taints, labels=marks["labels"], annotations=marks["annotations"]),
            diff=dict(before=planned["current"], after=marks),
        )

    @staticmethod
    def predicted_taints(planned, state):
        for op in planned["patch"]:
            if op["path"] == "/spec/taints":
                return op.get("value", [])
        return state["taints"]


class BatchRestorer:
    """Restores several nodes: one list of all nodes up front, then each node's own guarded patch.

    Every name and snapshot is checked, and every node looked up, before the first patch, so a
    mistake in the list or a deleted node changes nothing. A node is read again on its own only
    when its patch meets a conflict.
    """

    def __init__(self, k8s, entries, scope, check_mode=False, drill=None):
        names = [entry["name"] for entry in entries]
        node_restore.check_batch(names)
        res = kube.resource(k8s, "v1", "Node")
        self.k8s = k8s
        self.res = res
        self.restorers = [self.member(k8s, entry, scope, check_mode, res, drill) for entry in entries]

    @staticmethod
    def member(k8s, entry, scope, check_mode, res, drill):
        try:
            return Restorer(k8s, entry["name"], entry["before"], scope, check_mode=check_mode, res=res, drill=drill)
        except RestoreError as e:
            raise RestoreError("node %s: %s" % (entry["name"], e))

    @property
    def warnings(self):
        return [warning for restorer in self.restorers for warning in restorer.warnings]

    def run(self):
        found = self.read_all()
        results, restored = [], []
        for restorer in self.restorers:
            try:
                result = restorer.run(found[restorer.name])
            except KubeError as e:
                raise BatchFailed("%s; %s" % (e, node_restore.progress(restored)), restored)
            if result["changed"]:
                restored.append(restorer.name)
            results.append(result)
        return self.summary(results)

    def read_all(self):
        items, _version = kube.list_objects(self.k8s, self.res)
        found = dict((item["metadata"]["name"], item) for item in items)
        missing = [r.name for r in self.restorers if r.name not in found]
        if missing:
            raise KubeError("node%s %s not found: a node deleted since the drill cannot be restored; if it is gone for "
                            "good, drop it from the drill's cleanup (no node was changed)"
                            % ("s" if len(missing) > 1 else "", ", ".join(missing)))
        return found

    def summary(self, results):
        nodes, before, after = [], {}, {}
        for restorer, result in zip(self.restorers, results):
            diff = result.pop("diff")
            before[restorer.name], after[restorer.name] = diff["before"], diff["after"]
            nodes.append(dict(result, name=restorer.name))
        return dict(changed=any(n["changed"] for n in nodes), nodes=nodes, diff=dict(before=before, after=after))


def failure(params, error):
    """The message for a failed run: a bad snapshot of the single form names its node."""
    if isinstance(error, RestoreError) and params["name"]:
        return "node %s: %s" % (params["name"], error)
    return str(error)


def main():
    module = kube.module(argument_spec(), supports_check_mode=True, **MODULE_RULES)
    params = module.params
    restorer = None
    try:
        k8s = kube.client(module)
        if params["nodes"] is not None:
            restorer = BatchRestorer(k8s, params["nodes"], params["scope"], check_mode=module.check_mode,
                                     drill=params["drill"])
        else:
            restorer = Restorer(k8s, params["name"], params["before"], params["scope"], check_mode=module.check_mode,
                                drill=params["drill"])
        result = restorer.run()
    except (KubeError, RestoreError, fault_api.FaultSpecError, drill_ledger.LedgerError) as e:
        extra = dict(changed=False)
        if isinstance(e, BatchFailed):
            # The nodes of the list restored before the failure stay restored: say so.
            extra = dict(changed=bool(e.restored), restored_nodes=e.restored)
        module.fail_json(msg=failure(params, e), **extra)
    kube.finish(module, result, restorer.warnings)


if __name__ == "__main__":
    main()
