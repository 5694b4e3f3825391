#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvsentinel_restore
short_description: Put back the node conditions NVIDIA NVSentinel set for injected faults, and delete its Events
version_added: 0.1.0
description:
  - NVSentinel's platform-connectors keeps an entry for every unhealthy event in the node condition
    named after the check (C(SysLogsXIDError), C(SysLogsSXIDError), C(SysLogsGPUFallenOff)) until a
    healthy event (a GPU reset, a reboot) clears it, and caps the message at 1024 characters, so
    after a few injected faults later ones no longer fit. This module sets those conditions back
    to a baseline taken before the injection (a condition absent then is removed) and deletes the
    Kubernetes Events NVSentinel wrote for the node since a given time.
  - Only the conditions of those checks change; the node's other conditions and NVSentinel's
    datastore do not. Run it where NVSentinel only monitors (no quarantine or remediation), or
    after NVSentinel's own remediation has finished, so that it does not act on events whose
    conditions are gone.
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
    description: Where platform-connectors writes its Events.
    type: str
    default: default
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

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import kube, nvsentinel, xid_catalog
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

MAX_ATTEMPTS = 5


def argument_spec():
    return dict(node=dict(type="str", required=True),
                baseline=dict(type="list", elements="dict", required=True),
                events_since=dict(type="str"),
                event_namespace=dict(type="str", default="default"))


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
    doomed = sorted(e["metadata"]["name"] for e in nvsentinel.platform_connectors_events(items, params["node"], since))
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
    try:
        if module.params["events_since"]:
            nvsentinel.parse_time(module.params["events_since"])
        k8s = kube.client(module)
        restored, diff = restore_conditions(k8s, module)
        deleted = delete_events(k8s, module)
    except (KubeError, nvsentinel.NVSentinelError) as e:
        module.fail_json(msg=str(e), changed=False)
    kube.finish(module, dict(changed=bool(restored or deleted), restored=restored, events_deleted=deleted, diff=diff))


if __name__ == "__main__":
    main()
