#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvsentinel_restore
short_description: Hand a node back from NVIDIA NVSentinel after a drill - its quarantine, remediation objects, conditions, Events
version_added: 0.1.0
description:
  - NVSentinel's platform-connectors keeps an entry for every unhealthy event in the node condition
    named after the check (C(SysLogsXIDError), C(SysLogsSXIDError), C(SysLogsGPUFallenOff)) until a
    healthy event (a GPU reset, a reboot) clears it, and caps the message at 1024 characters, so
    after a few injected faults later ones no longer fit. This module sets those conditions back
    to a baseline taken before the injection (a condition absent then is removed) and deletes the
    Kubernetes Events NVSentinel wrote for the node since a given time.
  - Only the conditions of those checks change; the node's other conditions and NVSentinel's
    datastore do not.
  - With I(release), first hands a node that NVSentinel's fault-quarantine holds (its
    C(quarantineHealthEventIsCordoned) annotation) back the way NVSentinel expects an operator to -
    by uncordoning it (cordoning it first where fault-quarantine did not, in its dry-run stage) - and
    waits until fault-quarantine has cancelled the node's quarantine in its datastore and removed its
    annotations and state label, and fault-remediation has cleared its annotation (15 s more at
    most; it keeps it when fault-quarantine found no open quarantine event to cancel), so that
    nothing NVSentinel had in progress acts on the node afterwards. fault-quarantine then leaves the
    annotation C(quarantinedNodeUncordonedManually) and its C(cordon-*) labels, which
    M(gpu_resilience.fault_injection.node_marks_restore) puts back as they were.
  - With I(remediation), deletes the remediation objects fault-remediation created for the node since
    I(events_since) (they are owned by the node and would otherwise stay until it is deleted).
  - Deletes node-drainer's Events on the node since I(events_since) too.
  - The write is a JSON patch of the node's status guarded by its resourceVersion, retried when
    the node changed in between.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
options:
  node:
    description: The node.
    type: str
    required: true
  baseline:
    description: The node's C(status.conditions) before the faults (for example from M(kubernetes.core.k8s_info)).
    type: list
    elements: dict
    required: true
  events_since:
    description:
      - Delete NVSentinel's Events on the node (reason C(<check>IsNotHealthy) or C(<check>IsHealthy))
        that last happened at this time (RFC 3339) or later. Omitted, no Event is deleted.
    type: str
  event_namespace:
    description: Where platform-connectors and node-drainer write their Events.
    type: str
    default: default
  release:
    description: Hand the node back from NVSentinel's quarantine first (see above).
    type: bool
    default: false
  remediation:
    description:
      - The remediation resources whose objects for the node, created since I(events_since), are deleted
        (M(gpu_resilience.fault_injection.nvsentinel_info)'s C(remediation) values, or a list of them).
    type: list
    elements: dict
    default: []
    suboptions:
      api_version:
        description: The resource's group/version.
        type: str
        required: true
      kind:
        description: Its kind.
        type: str
        required: true
      scope:
        description: Whether the objects are cluster-scoped (fault-remediation's objects of the chart are).
        type: str
        choices: [Cluster, Namespaced]
        default: Cluster
  wait_timeout:
    description: Seconds to wait for NVSentinel to take the node back with I(release).
    type: int
    default: 60
seealso:
  - module: gpu_resilience.fault_injection.nvsentinel_detection
"""

EXAMPLES = r"""
- name: The node's conditions before the drill
  kubernetes.core.k8s_info:
    kind: Node
    name: gpu-node-1
  register: before

- name: Put NVSentinel's conditions back and delete its Events of the drill
  gpu_resilience.fault_injection.nvsentinel_restore:
    node: gpu-node-1
    baseline: "{{ before.resources[0].status.conditions }}"
    events_since: "{{ fault.faults[0].injected_at }}"
"""

RETURN = r"""
released:
  description: Whether the node was handed back from fault-quarantine's hold (would be, in check mode).
  returned: always
  type: bool
remediation_deleted:
  description: The remediation objects deleted (that would be, in check mode), as C(Kind/name).
  returned: always
  type: list
  elements: str
  sample: [RebootNode/maintenance-gpu-node-1-436f7f86-7a08-45de-930a-0f6c116d90d8]
restored:
  description: The condition types set back (or removed).
  returned: always
  type: list
  elements: str
  sample: [SysLogsXIDError, SysLogsGPUFallenOff]
events_deleted:
  description: The names of the Events deleted (that would be, in check mode).
  returned: always
  type: list
  elements: str
diff:
  description: NVSentinel's conditions before and after.
  returned: in diff mode, when changed
  type: dict
"""

import queue
import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import kube, nvsentinel, xid_catalog
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import nvsentinel_stages as stages
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

MAX_ATTEMPTS = 5
REMEDIATION_ANNOTATION_GRACE = 15   # seconds fault-remediation gets to clear its annotation


def argument_spec():
    return dict(node=dict(type="str", required=True),
                baseline=dict(type="list", elements="dict", required=True),
                events_since=dict(type="str"),
                event_namespace=dict(type="str", default="default"),
                release=dict(type="bool", default=False),
                remediation=dict(type="list", elements="dict", default=[], options=dict(
                    api_version=dict(type="str", required=True), kind=dict(type="str", required=True),
                    scope=dict(type="str", default="Cluster", choices=["Cluster", "Namespaced"]))),
                wait_timeout=dict(type="int", default=60))


def release(k8s, module):
    """Hand the node back from fault-quarantine's hold and wait until NVSentinel let go of it; True
    when it held the node."""
    name, nodes = module.params["node"], kube.resource(k8s, "v1", "Node")
    node = kube.get(k8s, nodes, name)
    if node is None:
        raise KubeError("node %s not found" % name)
    steps = stages.release_steps(node)
    if not steps or module.check_mode:
        return bool(steps)
    deadline = time.monotonic() + module.params["wait_timeout"]
    updates = queue.Queue()
    watch = kube.WatchThread(k8s, nodes, updates, "node", deadline, field_selector="metadata.name=" + name)
    watch.start()
    try:
        for patch in steps:
            try:
                k8s.patch(nodes, patch, name=name, content_type="application/merge-patch+json")
            except kube.DynamicApiError as e:
                raise KubeError("%s node %s to hand it back to NVSentinel failed: %s" % (
                    "cordoning" if patch["spec"]["unschedulable"] else "uncordoning", name, kube.describe(e)))
        # fault-remediation clears its annotation once fault-quarantine's cancellation reaches it,
        # and keeps it when fault-quarantine found no open quarantine event to cancel (seen when
        # the uncordon came after the remediation): then, after a short grace, the annotation is a
        # record of a finished round, put back as it was with the node's other marks.
        while not stages.released(node):
            if stages.let_go(node):
                deadline = min(deadline, time.monotonic() + REMEDIATION_ANNOTATION_GRACE)
            remaining = deadline - time.monotonic()
            try:
                with kube.Waiting():
                    _source, kind, payload, _mono, _wall = updates.get(timeout=max(remaining, 0))
            except queue.Empty:
                if stages.let_go(node):
                    return True
                raise KubeError(
                    "node %s: NVSentinel did not let go of it within %d s of its uncordon (fault-quarantine's "
                    "annotation %s, the state label or fault-remediation's annotation is still there): is "
                    "fault-quarantine running? Its marks stay for a later run of the cleanup"
                    % (name, module.params["wait_timeout"], "quarantineHealthEventIsCordoned"))
            if kind == "FAILED":
                raise payload
            if kind == "SYNC" and payload:
                node = payload[0]
            elif kind in ("ADDED", "MODIFIED"):
                node = payload
    finally:
        watch.stop()
    return True


def delete_remediation(k8s, module):
    """The node's remediation objects since events_since, deleted (not in check mode); as Kind/name."""
    params = module.params
    since = nvsentinel.parse_time(params["events_since"]) if params["events_since"] else None
    doomed = []
    for item in params["remediation"]:
        try:
            res = k8s.resource(item["kind"], item["api_version"])
        except kube.ResourceNotFoundError:
            continue   # not served: none can exist
        objects, _version = kube.list_objects(k8s, res)
        for obj in stages.remediation_objects(objects, params["node"], since):
            meta = obj["metadata"]
            doomed.append("%s/%s" % (item["kind"], meta["name"]))
            if module.check_mode:
                continue
            try:
                k8s.delete(res, name=meta["name"], namespace=meta.get("namespace"))
            except kube.NotFoundError:
                continue
            except kube.DynamicApiError as e:
                raise KubeError("deleting %s %s failed: %s" % (item["kind"], meta["name"], kube.describe(e)))
    return doomed


def checks_only(conditions):
    return [c for c in conditions if c.get("type") in xid_catalog.NVSENTINEL_CHECKS]


def restore_conditions(k8s, module):
    """(condition types restored, diff); patches the node's status unless in check mode."""
    name, baseline = module.params["node"], module.params["baseline"]
    nodes = kube.resource(k8s, "v1", "Node")
    for _attempt in range(MAX_ATTEMPTS):
        node = kube.get(k8s, nodes, name)
        if node is None:
            raise KubeError("node %s not found" % name)
        current = (node.get("status") or {}).get("conditions") or []
        wanted, changed = nvsentinel.restore_conditions(current, baseline)
        diff = dict(before=checks_only(current), after=checks_only(wanted))
        if not changed or module.check_mode:
            return changed, diff
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": node["metadata"]["resourceVersion"]},
                 {"op": "replace", "path": "/status/conditions", "value": wanted}]
        try:
            k8s.patch(nodes.subresources["status"], patch, name=name, content_type="application/json-patch+json")
            return changed, diff
        except kube.DynamicApiError as e:
            if getattr(e, "status", None) not in (409, 422):
                raise KubeError("restoring the conditions of node %s failed: %s" % (name, kube.describe(e)))
    raise KubeError("node %s kept changing while its NVSentinel conditions were restored (%d conflicts in a row); "
                    "run the task again" % (name, MAX_ATTEMPTS))


def delete_events(k8s, module):
    params = module.params
    if not params["events_since"]:
        return []
    since = nvsentinel.parse_time(params["events_since"])
    events_res = kube.resource(k8s, "v1", "Event")
    items, _version = kube.list_objects(k8s, events_res, params["event_namespace"])
    doomed = sorted(e["metadata"]["name"] for e in stages.nvsentinel_events(items, params["node"], since))
    for name in doomed if not module.check_mode else ():
        try:
            k8s.delete(events_res, name=name, namespace=params["event_namespace"])
        except kube.NotFoundError:
            continue
        except kube.DynamicApiError as e:
            raise KubeError("deleting Event %s/%s failed: %s" % (params["event_namespace"], name, kube.describe(e)))
    return doomed


def main():
    module = kube.module(argument_spec(), supports_check_mode=True)
    if module.params["remediation"] and not module.params["events_since"]:
        module.fail_json(msg="remediation needs events_since: only the objects made since the drill began are deleted")
    try:
        if module.params["events_since"]:
            nvsentinel.parse_time(module.params["events_since"])
        k8s = kube.client(module)
        # In this order: once NVSentinel let go of the node, nothing it had in progress adds marks,
        # objects or Events after they were put back.
        released = release(k8s, module) if module.params["release"] else False
        removed = delete_remediation(k8s, module)
        restored, diff = restore_conditions(k8s, module)
        deleted = delete_events(k8s, module)
    except (KubeError, nvsentinel.NVSentinelError) as e:
        module.fail_json(msg=str(e), changed=False)
    kube.finish(module, dict(changed=bool(released or removed or restored or deleted), released=released,
                             remediation_deleted=removed, restored=restored, events_deleted=deleted, diff=diff))


if __name__ == "__main__":
    main()
