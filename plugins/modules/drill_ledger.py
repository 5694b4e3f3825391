#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: drill_ledger
short_description: Keep a GPU fault drill's write-ahead ledger in the cluster, for an exact cleanup later
version_added: 0.1.0
description:
  - A drill changes the cluster - it gives a workload the CUDA shim, creates GPUFault objects, labels,
    cordons and drains nodes, and the detector it provokes taints and labels them. Before each change
    the drill records here what it is about to do and what is needed to undo it. A cleanup, also a
    later and separate run (another AWX job, after the drill's process was killed), reads the ledgers
    with M(gpu_resilience.fault_injection.drill_ledger_info) and undoes each entry.
  - The ledger of drill I(drill) is the ConfigMap C(gpu-drill-<drill>) in I(namespace), labelled
    C(app.kubernetes.io/managed-by=gpu_resilience.fault_injection) and
    C(fault-injection.gpu-resilience.io/drill-ledger=<drill>). Its data key C(ledger.json) holds a
    JSON object with C(version) (1), C(drill), C(created) (RFC 3339), C(meta) and C(entries).
  - For a C(node) entry the module reads the node and stores its state before the drill in the
    entry's C(before) - C(unschedulable), C(taints), C(labels), C(annotations), C(conditions) (type,
    status, reason, message, lastTransitionTime), C(resourceVersion) and C(uid) - the format that
    M(gpu_resilience.fault_injection.node_marks_restore) restores. The first record of a node wins;
    a later entry for the same node adds nothing, so the record stays the state before the drill.
  - Every write is conditional on the ConfigMap's C(resourceVersion); when someone else changed the
    ledger in between (HTTP 409), the module reads it again and redoes its update, a few times.
  - The ledger has no owner, so it outlives the drill's objects until I(state=absent) deletes it.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Writes nothing; reads the ledger and the nodes of new C(node) entries and returns the
      ledger as it would be.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The ledger's JSON before and after.
options:
  drill:
    description:
      - The drill id. 1 to 63 lowercase letters, digits, C(-) and C(.), starting and ending with a
        letter or digit (it is a label value and part of the ConfigMap's name).
    type: str
    required: true
  namespace:
    description:
      - The namespace of the ledgers, the fault-injector agent's (created by the role
        C(gpu_resilience.fault_injection.fault_injector_agent)).
    type: str
    default: gpu-fault-injection
  state:
    description:
      - C(present) creates the ledger if missing and records I(meta) and I(entries).
      - C(absent) deletes the ledger (nothing happens when there is none).
    type: str
    choices: [present, absent]
    default: present
  meta:
    description:
      - Free facts about the drill (for example C(playbook), C(owner), C(awx_job_id), C(targets),
        C(workload)), stored when the ledger is created.
      - Given again later, it is merged into the stored meta - new keys are added, differing values
        replaced, nested dicts merged - never replaced whole.
    type: dict
  entries:
    description:
      - What the drill is about to change, in order (I(state=present) only).
      - Each is a dict with C(type) and the keys of that type; more keys are stored as given.
      - C(node) - C(node), the node's name. The module adds C(before), the node's state now; a node
        that does not exist fails the task and nothing is recorded.
      - C(shim_patch) - C(api_version), C(kind), C(namespace), C(name) of a workload given the
        CUDA shim; C(api_version) may be left out for the kinds that
        M(gpu_resilience.fault_injection.cuda_shim_patch) knows (C(pod_template_path) for the others).
        The module adds C(before) - whether the workload exists, whether it carries the shim, and a
        sha256 of its pod templates - which the drill's self-check compares after the cleanup.
      - C(faults) - C(drill), the drill id of the GPUFault objects.
      - C(object) - C(api_version), C(kind), C(namespace) (empty for a cluster-scoped object),
        C(name) of any object the drill creates or changes.
      - C(nvsentinel) - C(node), a node NVIDIA NVSentinel reacts to the drill's faults on, with what
        role C(fault_cleanup) needs to hand it back (C(stage), C(namespace), C(since), C(records),
        C(gpu_metadata), C(remediation), C(remediation_actions)).
      - C(note) - C(text).
      - An entry whose type and these keys are already recorded is not added again (also when its
        other keys differ). The ledger adds C(seq) and C(recorded) to each entry.
    type: list
    elements: dict
    default: []
notes:
  - Needs C(get), C(list), C(create), C(update) and C(delete) on C(configmaps) in I(namespace), and
    C(get) on C(nodes) for C(node) entries (C(list) for more than five), and C(get) on the workload of a
    C(shim_patch) entry.
  - A ConfigMap holds at most 1 MiB; a node's snapshot takes about as much as its labels and
    annotations, so a ledger holds hundreds of nodes.
  - A ledger whose C(ledger.json) cannot be read is never overwritten (I(state=present) fails);
    M(gpu_resilience.fault_injection.drill_ledger_info) returns it with C(error), and I(state=absent) deletes it.
seealso:
  - module: gpu_resilience.fault_injection.node_marks_restore
  - module: gpu_resilience.fault_injection.cuda_shim_patch
  - module: gpu_resilience.fault_injection.gpu_xid_inject
"""

EXAMPLES = r"""
- name: Open the ledger of drill xid79-0412 and record the target node before touching it
  gpu_resilience.fault_injection.drill_ledger:
    drill: xid79-0412
    meta:
      playbook: xid79_e2e.yml
      owner: sre-oncall
      awx_job_id: "{{ awx_job_id | default('') }}"
      targets: [gpu-node-1]
    entries:
      - type: node
        node: gpu-node-1

- name: Record the shim patch and the faults before making them
  gpu_resilience.fault_injection.drill_ledger:
    drill: xid79-0412
    entries:
      - type: shim_patch
        api_version: apps/v1
        kind: Deployment
        namespace: training
        name: llm-trainer
      - type: faults
        drill: xid79-0412

- name: Cleanup, from any later run - what was left behind?
  gpu_resilience.fault_injection.drill_ledger_info:
  register: ledgers

- name: Put the nodes' marks back as they were before each drill
  gpu_resilience.fault_injection.node_marks_restore:
    name: "{{ item.node }}"
    before: "{{ item.before }}"
  loop: "{{ ledgers.ledgers | rejectattr('error', 'defined') | map(attribute='entries') | flatten
            | selectattr('type', 'equalto', 'node') }}"
  loop_control:
    label: "{{ item.node }}"

- name: Close the ledger once everything is undone
  gpu_resilience.fault_injection.drill_ledger:
    drill: xid79-0412
    state: absent
"""

RETURN = r"""
ledger:
  description:
    - The ledger after the task (I(state=present); as it would be in check mode), or the ledger
      deleted (I(state=absent); null when there was none or it could not be read).
  returned: state is present or absent
  type: dict
  sample:
    version: 1
    drill: xid79-0412
    created: "2026-11-22T18:19:58.104223Z"
    meta: {playbook: xid79_e2e.yml, owner: sre-oncall, targets: [gpu-node-1]}
    entries:
      - type: node
        node: gpu-node-1
        seq: 1
        recorded: "2026-11-22T18:19:58.104223Z"
        before:
          unschedulable: false
          taints: []
          labels: {"kubernetes.io/hostname": gpu-node-1, "nvidia.com/gpu.present": "true"}
          annotations: {"node.alpha.kubernetes.io/ttl": "0"}
          conditions: [{type: Ready, status: "True", reason: KubeletReady}]
          resourceVersion: "48213"
          uid: 0b6f0f0e-5d1c-4a5e-9a57-1f7b9d2a3c11
added:
  description: The entries this task added, as stored (empty when all were already recorded).
  returned: state is present
  type: list
  elements: dict
  sample: [{type: faults, drill: xid79-0412, seq: 3, recorded: "2026-11-22T18:20:01.000123Z"}]
created:
  description: Whether this task created the ledger.
  returned: state is present
  type: bool
  sample: false
name:
  description: The ledger's ConfigMap.
  returned: state is present or absent
  type: str
  sample: gpu-drill-xid79-0412
namespace:
  description: The ledger's namespace.
  returned: always
  type: str
  sample: gpu-fault-injection
resource_version:
  description: The ConfigMap's resourceVersion after the task (null in check mode when it would change,
    and when there is no ledger).
  returned: state is present
  type: str
  sample: "48230"
"""

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_ledger, drill_verify, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import node_restore, shim_patch
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_ledger import LedgerError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

STATES = ("present", "absent")
MAX_ATTEMPTS = 5


def argument_spec():
    return dict(
        drill=dict(type="str", required=True),
        namespace=dict(type="str", default=drill_ledger.DEFAULT_NAMESPACE),
        state=dict(type="str", choices=list(STATES), default="present"),
        meta=dict(type="dict"),
        entries=dict(type="list", elements="dict", default=[]),
    )


class Conflict(Exception):
    """The ledger changed between our read and our write (HTTP 409)."""


class Ledgers:
    """The ledgers of one namespace. k8s is kubernetes.core's client (or a stand-in in unit tests)."""

    def __init__(self, k8s, namespace, check_mode=False, now=drill_ledger.utc_now):
        self.k8s = k8s
        self.namespace = namespace
        self.check_mode = check_mode
        self.now = now
        self.config_maps = kube.resource(k8s, "v1", "ConfigMap")
        self.nodes = kube.resource(k8s, "v1", "Node")
        self.namespaces = kube.resource(k8s, "v1", "Namespace")
        self.warnings = []

    def where(self, drill):
        return "ConfigMap %s/%s" % (self.namespace, drill_ledger.ledger_name(drill))

    # --- reads ---------------------------------------------------------------------------------

    def namespace_exists(self):
        """True or False; None when we may not read namespaces (the write then tells)."""
        try:
            return kube.get(self.k8s, self.namespaces, self.namespace) is not None
        except KubeError:
            return None

    def missing_namespace(self):
        return KubeError("namespace %s does not exist: the drill ledger lives in the fault-injector agent's namespace; "
                         "deploy the agent with the role %s first, or set namespace"
                         % (self.namespace, drill_ledger.AGENT_ROLE))

    def read(self, drill):
        """(the ConfigMap or None, the parsed ledger or None)."""
        obj = kube.get(self.k8s, self.config_maps, drill_ledger.ledger_name(drill), self.namespace)
        if obj is None:
            return None, None
        if not drill_ledger.is_ledger(obj):
            raise KubeError("%s exists but is not a drill ledger (it lacks the labels %s=%s and %s); it is left alone: "
                            "rename or delete it, or use another drill id"
                            % (self.where(drill), drill_ledger.MANAGED_BY_LABEL, drill_ledger.MANAGED_BY,
                               drill_ledger.DRILL_LABEL))
        return obj, drill_ledger.parse(obj)

    def snapshots(self, nodes):
        """node -> its snapshot; fails naming every node that does not exist. A few nodes are read
        one by one; a fleet's with one list of all nodes (one request instead of hundreds)."""
        found, missing = {}, []
        for name, node in kube.get_named(self.k8s, self.nodes, nodes).items():
            if node is None:
                missing.append(name)
            else:
                found[name] = node_restore.snapshot(node)
        if missing:
            raise KubeError("node%s %s not found, so %s state before the drill cannot be recorded; nothing was "
                            "recorded. Check the node names (kubectl get nodes)"
                            % ("s" if len(missing) > 1 else "", ", ".join(missing), "their" if len(missing) > 1 else "its"))
        return found

    def workload(self, entry):
        """What the drill's self-check compares afterwards of a workload given the shim."""
        api_version = entry.get("api_version") or shim_patch.default_api_version(entry["kind"])
        if not api_version:
            raise KubeError("%s: give its api_version (kind %s is not one cuda_shim_patch knows)"
                            % (drill_ledger.describe_entry(entry), entry["kind"]))
        res = kube.resource(self.k8s, api_version, entry["kind"])
        obj = kube.get(self.k8s, res, entry["name"], entry["namespace"])
        try:
            return drill_verify.workload_state(obj, entry["kind"], entry.get("pod_template_path"))
        except shim_patch.ShimPatchError as e:
            raise KubeError("%s: %s" % (drill_ledger.describe_entry(entry), e))

    # --- state=present -------------------------------------------------------------------------

    def present(self, drill, meta, entries):
        drill_ledger.validate_drill(drill)
        entries = [drill_ledger.validate_entry(e, n) for n, e in enumerate(entries or [], 1)]
        snapshots, workloads = {}, {}
        for _attempt in range(MAX_ATTEMPTS):
            obj, stored = self.read_for_update(drill)
            # A node or workload is read once per run: a retry after a conflict reuses the first
            # reading, so the state recorded is the one seen before this task wrote anything.
            wanted = [n for n in drill_ledger.nodes_to_snapshot(stored, entries) if n not in snapshots]
            snapshots.update(self.snapshots(wanted))
            for entry in drill_ledger.workloads_to_read(stored, entries):
                if drill_ledger.identity(entry) not in workloads:
                    workloads[drill_ledger.identity(entry)] = self.workload(entry)
            ledger, added, created = drill_ledger.update(stored, drill, meta, entries, snapshots, self.now(), workloads)
            changed = stored != ledger
            result = dict(changed=changed, ledger=ledger, added=added, created=created,
                          name=drill_ledger.ledger_name(drill), namespace=self.namespace,
                          resource_version=obj["metadata"].get("resourceVersion") if obj else None,
                          diff=dict(before=drill_ledger.dump(stored) + "\n" if stored else "",
                                    after=drill_ledger.dump(ledger) + "\n",
                                    before_header="%s (ledger.json)" % self.where(drill),
                                    after_header="%s (ledger.json)" % self.where(drill)))
            if not changed:
                return result
            if self.check_mode:
                result["resource_version"] = None
                return result
            try:
                written = self.write(obj, ledger)
            except Conflict:
                continue
            result["resource_version"] = written["metadata"].get("resourceVersion")
            return result
        raise KubeError("%s kept changing while it was being updated (%d conflicts in a row); run the task again"
                        % (self.where(drill), MAX_ATTEMPTS))

    def read_for_update(self, drill):
        obj, stored = None, None
        try:
            obj, stored = self.read(drill)
        except LedgerError as e:
            raise KubeError("%s; the ledger is left as it is: repair its ledger.json, or delete it with state=absent "
                            "after undoing the drill by hand" % e)
        if obj is None and self.namespace_exists() is False:
            raise self.missing_namespace()
        return obj, stored

    def write(self, obj, ledger):
        """Create the ConfigMap or replace it at the version read; Conflict when that is stale."""
        drill = ledger["drill"]
        try:
            if obj is None:
                body = drill_ledger.config_map(self.namespace, ledger)
                return self.k8s.create(self.config_maps, body, namespace=self.namespace).to_dict()
            body = drill_ledger.config_map(self.namespace, ledger, obj["metadata"]["resourceVersion"])
            return self.k8s.replace(self.config_maps, body, namespace=self.namespace).to_dict()
        except kube.DynamicApiError as e:
            status = getattr(e, "status", None)
            if status == 409:   # replaced in between, or created in between (AlreadyExists)
                raise Conflict()
            if status == 404 and obj is None:
                raise self.missing_namespace()
            if status == 404:   # deleted in between: start again from nothing
                raise Conflict()
            raise KubeError("writing %s failed: %s" % (self.where(drill), kube.describe(e)))

    # --- state=absent --------------------------------------------------------------------------

    def absent(self, drill):
        drill_ledger.validate_drill(drill)
        name = drill_ledger.ledger_name(drill)
        for _attempt in range(MAX_ATTEMPTS):
            obj = kube.get(self.k8s, self.config_maps, name, self.namespace)
            result = dict(changed=False, ledger=None, name=name, namespace=self.namespace,
                          diff=dict(before="", after=""))
            if obj is None:
                return result
            if not drill_ledger.is_ledger(obj):
                raise KubeError("%s is not a drill ledger (it lacks the labels %s=%s and %s); it is left alone"
                                % (self.where(drill), drill_ledger.MANAGED_BY_LABEL, drill_ledger.MANAGED_BY,
                                   drill_ledger.DRILL_LABEL))
            try:
                ledger = drill_ledger.parse(obj)
                result["diff"]["before"] = drill_ledger.dump(ledger) + "\n"
            except LedgerError as e:
                ledger = None
                self.warnings.append("deleting %s, whose ledger could not be read: %s" % (self.where(drill), e))
                result["diff"]["before"] = (obj.get("data") or {}).get(drill_ledger.DATA_KEY) or ""
            result.update(changed=True, ledger=ledger)
            if self.check_mode:
                return result
            # Deleted only at the version read, so the ledger returned is exactly the one deleted.
            precondition = {"preconditions": {"resourceVersion": obj["metadata"]["resourceVersion"]}}
            try:
                self.k8s.delete(self.config_maps, name=name, namespace=self.namespace, body=precondition)
            except kube.NotFoundError:
                result.update(changed=False, ledger=None)
                return result
            except kube.DynamicApiError as e:
                if getattr(e, "status", None) == 409:
                    continue
                raise KubeError("deleting %s failed: %s" % (self.where(drill), kube.describe(e)))
            return result
        raise KubeError("%s kept changing while it was being deleted (%d conflicts in a row); run the task again"
                        % (self.where(drill), MAX_ATTEMPTS))


def check_params(params):
    if params["state"] == "absent":
        if params["entries"]:
            return "entries are recorded only with state=present"
        if params["meta"]:
            return "meta is recorded only with state=present"
    return None


def main():
    module = kube.module(argument_spec(), supports_check_mode=True)
    problem = check_params(module.params)
    if problem:
        module.fail_json(msg=problem)
    params = module.params
    ledgers = None
    try:
        ledgers = Ledgers(kube.client(module), params["namespace"], check_mode=module.check_mode)
        if params["state"] == "present":
            result = ledgers.present(params["drill"], params["meta"], params["entries"])
        else:
            result = ledgers.absent(params["drill"])
    except (KubeError, LedgerError) as e:
        module.fail_json(msg=str(e), changed=False)
    kube.finish(module, result, ledgers.warnings)


if __name__ == "__main__":
    main()
