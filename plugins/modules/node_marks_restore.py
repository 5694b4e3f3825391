#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: node_marks_restore
short_description: Put a node's quarantine marks back exactly as a drill ledger recorded them
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
    details: The node's in-scope marks before and after.
options:
  name:
    description: The node.
    type: str
    required: true
  before:
    description:
      - The node's state before the drill, the C(before) of the node's entry in its drill ledger -
        C(unschedulable), C(taints), C(labels), C(annotations) (C(resourceVersion) and C(uid) are
        only informative).
    type: dict
    required: true
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
          - The default is NVSentinel fault-quarantine's annotations, which have no prefix.
        type: list
        elements: str
        default: [quarantineHealthEvent, quarantineHealthEventIsCordoned, quarantineHealthEventAppliedTaints,
                  quarantineHealthEventAppliedLabels, quarantineHealthEventCordonPreExisting,
                  quarantinedNodeUncordonedManually, quarantinedNodeUntaintedManually, quarantineValidationHealthEvent]
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
  - Needs C(get) and C(patch) on C(nodes).
  - A node deleted since the drill cannot be restored; the module fails naming it.
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

- name: Put each target node's marks back as they were before the drill
  gpu_resilience.fault_injection.node_marks_restore:
    name: "{{ item.node }}"
    before: "{{ item.before }}"
  loop: "{{ found.ledgers[0].entries | selectattr('type', 'equalto', 'node') }}"
  loop_control:
    label: "{{ item.node }}"

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
  returned: always
  type: list
  elements: dict
  sample:
    - {op: test, path: /metadata/resourceVersion, value: "48311"}
    - {op: remove, path: /metadata/labels/gpu-healthcheck.aws-samples.io~1status}
    - {op: remove, path: /spec/taints}
    - {op: remove, path: /spec/unschedulable}
restored:
  description:
    - What changed, from the value found on the node to the value restored (null - absent).
    - C(labels) and C(annotations) map each changed key to C({from, to}); C(taints) (the in-scope
      taints) and C(unschedulable) are C({from, to}). Only the parts that change are present.
  returned: always
  type: dict
  sample:
    labels: {"gpu-healthcheck.aws-samples.io/status": {from: fail, to: null}}
    taints:
      from: [{key: gpu-healthcheck.aws-samples.io/unhealthy, value: "true", effect: NoSchedule}]
      to: []
    unschedulable: {from: true, to: false}
node:
  description: The node after the task (in check mode, as it would be).
  returned: always
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
"""

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import fault_api, kube, node_marks
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import node_restore
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.node_restore import RestoreError

MAX_ATTEMPTS = 5
DEFAULT_KEYS = list(node_marks.NVSENTINEL_ANNOTATIONS)


def argument_spec():
    return dict(
        name=dict(type="str", required=True),
        before=dict(type="dict", required=True),
        scope=dict(type="dict", apply_defaults=True, options=dict(
            prefixes=dict(type="list", elements="str", default=list(node_restore.DEFAULT_PREFIXES)),
            keys=dict(type="list", elements="str", default=DEFAULT_KEYS, no_log=False),
            ignore=dict(type="list", elements="str", default=list(node_restore.DEFAULT_IGNORE)),
            unschedulable=dict(type="bool", default=True),
            taints=dict(type="bool", default=True),
        )),
    )


class Conflict(Exception):
    """The node changed between our read and our patch."""


class Restorer:
    """Restores one node. k8s is kubernetes.core's client (or a stand-in in unit tests)."""

    def __init__(self, k8s, name, before, scope, check_mode=False):
        self.k8s = k8s
        self.name = fault_api.validate_node_name(name)
        self.before = node_restore.validate_snapshot(before)
        self.scope = node_restore.make_scope(**scope)
        self.check_mode = check_mode
        self.nodes = kube.resource(k8s, "v1", "Node")
        self.warnings = []

    def run(self):
        for _attempt in range(MAX_ATTEMPTS):
            node = kube.get(self.k8s, self.nodes, self.name)
            if node is None:
                raise KubeError("node %s not found: a node deleted since the drill cannot be restored; if it is gone "
                                "for good, drop it from the drill's cleanup" % self.name)
            self.check_uid(node)
            planned = node_restore.plan(node, self.before, self.scope)
            if not planned["changed"] or self.check_mode:
                return self.result(planned, node, planned["changed"])
            try:
                after = self.apply(planned["patch"], node)
            except Conflict:
                continue
            return self.result(planned, after, True)
        raise KubeError("node %s kept changing while its marks were being restored (%d conflicts in a row); "
                        "run the task again" % (self.name, MAX_ATTEMPTS))

    def check_uid(self, node):
        was, now = self.before.get("uid"), node["metadata"].get("uid")
        if was and now and was != now:
            warning = ("node %s was re-created since the snapshot (uid %s, now %s); its marks are restored all the same"
                       % (self.name, was, now))
            if warning not in self.warnings:
                self.warnings.append(warning)

    def apply(self, patch, node):
        try:
            return self.k8s.patch(self.nodes, patch, name=self.name,
                                  content_type="application/json-patch+json").to_dict()
        except kube.DynamicApiError as e:
            status = getattr(e, "status", None)
            if status == 409:
                raise Conflict()
            if status == 404:
                raise KubeError("node %s was deleted while its marks were being restored" % self.name)
            if status == 422 and self.moved_on(node):
                # A failed test op is reported as 422 Invalid, like a patch the server rejects: it
                # was our test when the node's resourceVersion is no longer the one tested.
                raise Conflict()
            raise KubeError("patching node %s failed: %s" % (self.name, kube.describe(e)))

    def moved_on(self, node):
        current = kube.get(self.k8s, self.nodes, self.name)
        return current is None or current["metadata"].get("resourceVersion") != node["metadata"].get("resourceVersion")

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


def main():
    module = kube.module(argument_spec(), supports_check_mode=True)
    restorer = None
    try:
        restorer = Restorer(kube.client(module), module.params["name"], module.params["before"],
                            module.params["scope"], check_mode=module.check_mode)
        result = restorer.run()
    except (KubeError, RestoreError, fault_api.FaultSpecError) as e:
        module.fail_json(msg="%s%s" % ("node %s: " % module.params["name"] if isinstance(e, RestoreError) else "", e),
                         changed=False)
    kube.finish(module, result, restorer.warnings)


if __name__ == "__main__":
    main()
