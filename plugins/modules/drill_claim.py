#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: drill_claim
short_description: Claim a GPU fault drill's target nodes and workloads, so that no other drill touches them
version_added: 0.1.0
description:
  - A node, and a workload, is drilled by one drill at a time. Two drills on one node corrupt each
    other - the second records the first one's marks as the node's state before, and its cleanup
    writes them back after the first has cleaned up.
  - With I(state=present) the drill claims its targets, all or none, before it records or changes
    anything. Each claim is a C(coordination.k8s.io/v1) Lease in I(namespace) named after the target
    (C(gpu-drill-claim.node.<node>), C(gpu-drill-claim.<kind>.<namespace>.<name>)), holder the drill
    id, created with a plain create, so of two drills racing for a target exactly one gets it.
  - A target is held by another drill when that drill's Lease exists, or, for a node, when the node
    still carries that drill's label C(fault-injection.gpu-resilience.io/drill) (its cleanup did not
    finish). Then the task fails and changes nothing - also when another drill wins a race for
    one target half-way, the claims this task made are deleted again - with a message that names
    the holding drill, the age of its claim, and how to release a stale claim.
  - Targets the drill holds already are kept, so a rerun changes nothing.
  - With I(state=absent) the drill's claims are released (deleted). Only Leases that name I(drill)
    as their holder are deleted, each only as it was read (a C(uid) precondition).
  - A claim has no duration and is not renewed - it lasts until the drill's cleanup releases it. The
    playbook C(gpu_resilience.fault_injection.cleanup) releases the claims of a drill that was killed.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Reads the claims and the nodes, fails as the real run would when a target is held, and
      returns the claims it would make or release.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The drill's claims (their names) before and after.
options:
  drill:
    description:
      - The drill id (the holder of the claims). 1 to 63 lowercase letters, digits, C(-) and C(.),
        starting and ending with a letter or digit.
    type: str
    required: true
  namespace:
    description: The namespace of the claims, the drill ledger's (the fault-injector agent's).
    type: str
    default: gpu-fault-injection
  state:
    description:
      - C(present) claims every target of I(nodes) and I(workloads), or none.
      - C(absent) releases every claim the drill holds (I(nodes) and I(workloads) must be empty).
    type: str
    choices: [present, absent]
    default: present
  nodes:
    description: The nodes to claim.
    type: list
    elements: str
    default: []
  workloads:
    description: The workloads to claim.
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description: The workload's kind, e.g. C(Deployment).
        type: str
        required: true
      api_version:
        description: Its API version (recorded on the claim; the claim's name does not depend on it).
        type: str
      namespace:
        description: Its namespace.
        type: str
        required: true
      name:
        description: Its name.
        type: str
        required: true
  meta:
    description:
      - Facts about the drill stored on each new claim (annotation
        C(fault-injection.gpu-resilience.io/claim-meta)), e.g. C(awx_job_id), which the refusal of
        another drill then names.
    type: dict
notes:
  - Needs C(list), C(get), C(create) and C(delete) on C(leases) (API group C(coordination.k8s.io)) in
    I(namespace), and C(get) on C(nodes) (C(list) for more than five nodes).
seealso:
  - module: gpu_resilience.fault_injection.drill_ledger
  - module: gpu_resilience.fault_injection.drill_ledger_info
"""

EXAMPLES = r"""
- name: Claim the drill's node and workload before recording anything
  gpu_resilience.fault_injection.drill_claim:
    drill: xid79-0412
    nodes: [gpu-node-1]
    workloads:
      - {kind: Deployment, namespace: inference, name: llm-server}
    meta:
      awx_job_id: "{{ lookup('ansible.builtin.env', 'JOB_ID') | default(omit, true) }}"

- name: Release them once the drill is undone
  gpu_resilience.fault_injection.drill_claim:
    drill: xid79-0412
    state: absent
"""

RETURN = r"""
claims:
  description:
    - I(state=present) - the drill's claims of the targets asked for, in claim order, each with
      C(created) (whether this task made it; in check mode, would make it).
    - I(state=absent) - the claims released (in check mode, that would be).
  returned: always
  type: list
  elements: dict
  sample:
    - name: gpu-drill-claim.node.gpu-node-1
      drill: xid79-0412
      target: {type: node, name: gpu-node-1}
      acquired: "2026-11-24T09:12:01.104223Z"
      created: true
namespace:
  description: The claims' namespace.
  returned: always
  type: str
  sample: gpu-fault-injection
"""

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_claims, drill_ledger, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_claims import ClaimError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_ledger import LedgerError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError


def argument_spec():
    return dict(
        drill=dict(type="str", required=True),
        namespace=dict(type="str", default=drill_ledger.DEFAULT_NAMESPACE),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        nodes=dict(type="list", elements="str", default=[]),
        workloads=dict(type="list", elements="dict", default=[], options=dict(
            kind=dict(type="str", required=True),
            api_version=dict(type="str"),
            namespace=dict(type="str", required=True),
            name=dict(type="str", required=True),
        )),
        meta=dict(type="dict"),
    )


class Refused(KubeError):
    """Another drill holds a target; nothing was changed."""


class Claims:
    """The claims of one namespace. k8s is kubernetes.core's client (or a stand-in in unit tests)."""

    def __init__(self, k8s, namespace, check_mode=False, now=drill_ledger.utc_now):
        self.k8s = k8s
        self.namespace = namespace
        self.check_mode = check_mode
        self.now = now
        self.leases = kube.resource(k8s, drill_claims.API_VERSION, drill_claims.KIND)
        self.nodes = kube.resource(k8s, "v1", "Node")

    def read(self, drill=None):
        """{lease name: parsed claim} of the namespace (of one drill when given)."""
        items, _version = kube.list_objects(self.k8s, self.leases, self.namespace, drill_claims.selector(drill))
        return dict((o["metadata"]["name"], drill_claims.parse(o)) for o in items)

    def node_labels(self, wanted):
        names = [t["name"] for t in wanted if t["type"] == "node"]
        labels = {}
        for name, node in kube.get_named(self.k8s, self.nodes, names).items():
            if node is None:
                raise KubeError("node %s not found: nothing was claimed. Check the node names (kubectl get nodes)" % name)
            labels[name] = ((node.get("metadata") or {}).get("labels") or {}).get(drill_claims.NODE_DRILL_LABEL)
        return labels

    # --- state=present -------------------------------------------------------------------------

    def present(self, drill, nodes, workloads, meta):
        drill_ledger.validate_drill(drill)
        wanted = drill_claims.targets(nodes, workloads)
        claims = self.read()
        found = drill_claims.conflicts(drill, wanted, claims, self.node_labels(wanted))
        if found:
            raise Refused(drill_claims.refusal(drill, found, self.namespace))
        missing = drill_claims.to_create(drill, wanted, claims)
        held = [n for n, c in claims.items() if c["drill"] == drill]
        result = dict(changed=bool(missing), namespace=self.namespace, claims=[],
                      diff=dict(before=sorted(held), after=sorted(set(held) | set(drill_claims.claim_name(t) for t in wanted))))
        made = {}
        if missing and not self.check_mode:
            made = self.create_all(drill, missing, meta)
        for target in wanted:
            name = drill_claims.claim_name(target)
            if target in missing:
                claim = made.get(name) or dict(name=name, drill=drill, target=target, acquired=None)
                result["claims"].append(dict(self.public(claim), created=True))
            else:
                result["claims"].append(dict(self.public(claims[name]), created=False))
        return result

    def create_all(self, drill, missing, meta):
        """Create a Lease per target, in order; on a conflict delete the ones made here and refuse."""
        made = {}
        now = self.now()
        for target in missing:
            body = drill_claims.lease(self.namespace, drill, target, now, meta)
            try:
                created = self.k8s.create(self.leases, body, namespace=self.namespace).to_dict()
            except kube.DynamicApiError as e:
                rollback = self.roll_back(made)
                if getattr(e, "status", None) == 409:
                    raise self.lost_race(drill, target, rollback)
                if getattr(e, "status", None) == 404:
                    raise KubeError("namespace %s does not exist: the claims live in the drill ledger's namespace, the "
                                    "fault-injector agent's; deploy the agent with the role %s first, or set namespace"
                                    % (self.namespace, drill_ledger.AGENT_ROLE))
                raise KubeError("creating the claim Lease %s/%s failed: %s%s" % (
                    self.namespace, body["metadata"]["name"], kube.describe(e), rollback))
            made[created["metadata"]["name"]] = drill_claims.parse(created)
        return made

    def lost_race(self, drill, target, rollback):
        """The refusal after another drill created target's claim between our list and our create."""
        name = drill_claims.claim_name(target)
        other = kube.get(self.k8s, self.leases, name, self.namespace)
        if other is not None and not drill_claims.is_claim(other):
            return KubeError("Lease %s/%s exists but is not a drill claim (it lacks the label %s); it is left alone: "
                             "delete or rename it to drill %s%s"
                             % (self.namespace, name, drill_claims.CLAIM_LABEL, drill_claims.describe_target(target),
                                rollback))
        claim = drill_claims.parse(other) if other else dict(name=name, drill="(released since)", acquired=None)
        found = [dict(target=target, holder=claim["drill"], how="claim", claim=claim)]
        return Refused(drill_claims.refusal(drill, found, self.namespace))

    def roll_back(self, made):
        """Delete the claims this task made; '' when all went, else what is left (for the message)."""
        left = []
        for name, claim in made.items():
            if not self.delete(name, claim["uid"]):
                left.append(name)
        if not left:
            return ""
        return "; the claims made before could not all be deleted again: delete Lease(s) %s in %s" % (
            ", ".join(left), self.namespace)

    def delete(self, name, uid):
        """Delete one claim as read (uid precondition); True when it is gone."""
        try:
            self.k8s.delete(self.leases, name=name, namespace=self.namespace, body={"preconditions": {"uid": uid}})
        except kube.NotFoundError:
            return True
        except kube.DynamicApiError as e:
            if getattr(e, "status", None) == 409:   # replaced since: another drill's claim now, not ours
                return True
            return False
        return True

    # --- state=absent --------------------------------------------------------------------------

    def absent(self, drill):
        drill_ledger.validate_drill(drill)
        mine = [c for c in self.read(drill).values() if c["drill"] == drill]
        result = dict(changed=bool(mine), namespace=self.namespace, claims=[self.public(c) for c in mine],
                      diff=dict(before=sorted(c["name"] for c in mine), after=[]))
        if self.check_mode:
            return result
        failed = [c["name"] for c in mine if not self.delete(c["name"], c["uid"])]
        if failed:
            raise KubeError("releasing the claim Lease(s) %s of drill %s in %s failed; run the task again"
                            % (", ".join(failed), drill, self.namespace))
        return result

    @staticmethod
    def public(claim):
        return dict((k, claim.get(k)) for k in ("name", "drill", "target", "acquired"))


def check_params(params):
    if params["state"] == "absent" and (params["nodes"] or params["workloads"]):
        return "state=absent releases every claim of the drill: leave nodes and workloads out"
    if params["state"] == "present" and not (params["nodes"] or params["workloads"]):
        return "state=present needs nodes or workloads to claim"
    return None


def main():
    module = kube.module(argument_spec(), supports_check_mode=True)
    params = module.params
    problem = check_params(params)
    if problem:
        module.fail_json(msg=problem, changed=False)
    try:
        claims = Claims(kube.client(module), params["namespace"], check_mode=module.check_mode)
        if params["state"] == "present":
            result = claims.present(params["drill"], params["nodes"], params["workloads"], params["meta"])
        else:
            result = claims.absent(params["drill"])
    except (KubeError, ClaimError, LedgerError) as e:
        module.fail_json(msg=str(e), changed=False)
    kube.finish(module, result)


if __name__ == "__main__":
    main()
