#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: drill_ledger_info
short_description: Read the write-ahead ledgers GPU fault drills keep in the cluster
version_added: 0.1.0
description:
  - Returns the ledgers that M(gpu_resilience.fault_injection.drill_ledger) wrote, oldest first, so
    that a cleanup, also a later and separate run after a drill's process was killed, knows what
    each drill changed and how to undo it.
  - A ledger whose C(ledger.json) cannot be read is returned with C(error) rather than failing the
    task, so that a cleanup still sees it.
  - Also returns the claims of the drills (module M(gpu_resilience.fault_injection.drill_claim)) in
    the namespace, so that a cleanup finds the claims of a drill killed before it opened its ledger.
  - With I(verify), checks for each ledger that the cluster is as the drill found it - the current
    state of everything in the ledger compared with what it recorded - and returns every
    difference. A drill's cleanup runs this last, before it closes the ledger.
  - Changes nothing.
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
    support: none
options:
  drill:
    description:
      - Only this drill's ledger. Default, every ledger in I(namespace).
    type: str
  namespace:
    description:
      - The namespace of the ledgers, the fault-injector agent's. A namespace that does not exist holds
        no ledgers (a warning says so).
    type: str
    default: gpu-fault-injection
  verify:
    description:
      - Compare the cluster with each ledger, and return the result as the ledger's C(verification).
      - Per C(node) entry, the marks a cleanup restores (the drills' and the detectors' labels,
        annotations and taints, and the cordon) and the conditions - C(Ready)'s status, and for the
        others whether they report a problem (C(True); a detector's condition that is C(False)
        again counts as none); per C(shim_patch) entry, that the workload exists without the CUDA
        shim and with the pod templates it had;
        per C(faults) entry, that no GPUFault of the drill is left; per C(object) entry, that the
        object is gone; per C(nvsentinel) entry, that no remediation object NVIDIA NVSentinel's
        fault-remediation made for the node since the drill's faults, and no NVSentinel Event about
        the node since then, is left.
    type: bool
    default: false
notes:
  - Needs C(list) on C(configmaps) and on C(leases) (API group C(coordination.k8s.io)) in I(namespace).
  - With I(verify), also C(get) (C(list) for more than five) on C(nodes), C(get) on the workloads and
    objects of the ledgers, and C(list) on C(gpufaults) in I(namespace); for C(nvsentinel) entries,
    C(list) on C(events) in namespace C(default) and on fault-remediation's resources.
seealso:
  - module: gpu_resilience.fault_injection.drill_ledger
  - module: gpu_resilience.fault_injection.node_marks_restore
"""

EXAMPLES = r"""
- name: What did earlier drills leave behind?
  gpu_resilience.fault_injection.drill_ledger_info:
  register: ledgers

- name: The ledger of one drill
  gpu_resilience.fault_injection.drill_ledger_info:
    drill: xid79-0412
  register: ledger

- name: Is the cluster as drill xid79-0412 found it?
  gpu_resilience.fault_injection.drill_ledger_info:
    drill: xid79-0412
    verify: true
  register: checked

- name: Say what differs
  ansible.builtin.debug:
    msg: "{{ checked.ledgers | map(attribute='verification.differences') | flatten | map(attribute='text') | list }}"
"""

RETURN = r"""
ledgers:
  description:
    - The ledgers in I(namespace) (only I(drill)'s when given), oldest first by C(created).
    - Each is the parsed ledger with the ConfigMap's C(name), C(namespace) and C(resource_version);
      a ledger whose C(ledger.json) does not parse has C(drill), C(created) (the ConfigMap's
      creation time), those three and C(error) instead.
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 1, drill: xid79-0412, created: "2026-11-22T18:19:58.104223Z", meta: {}, entries: [],
       name: gpu-drill-xid79-0412, namespace: gpu-fault-injection, resource_version: "48230"}
    - {drill: xid79-0411, created: "2026-11-22T17:02:11Z", name: gpu-drill-xid79-0411,
       namespace: gpu-fault-injection, resource_version: "47001",
       error: "ledger.json of ConfigMap gpu-drill-xid79-0411 is not JSON: Expecting value: line 1 column 1 (char 0)"}
claims:
  description:
    - Every drill's claims in I(namespace), also when I(drill) is given (a cleanup needs to know
      whose hands a node is in now), oldest first, each with the claim's Lease
      C(name), the holding C(drill), the C(target) (C({type, name}) for a node; C({type, api_version,
      kind, namespace, name}) for a workload), when it was C(acquired) and its C(age_seconds).
  returned: always
  type: list
  elements: dict
  sample:
    - {name: gpu-drill-claim.node.gpu-node-1, drill: xid79-0412, target: {type: node, name: gpu-node-1},
       acquired: "2026-11-22T18:19:57.902113Z", age_seconds: 12.4}
verification:
  description:
    - Returned in each ledger of I(ledgers) (not a top-level key) with I(verify), for the ledgers
      that parse - C(checked) (what was compared, in words), C(differences) (each with C(object),
      C(field), C(before), C(now) and C(text), a sentence), C(as_before) (no difference) and
      C(summary) (one sentence).
  returned: with verify, inside each ledger
  type: dict
  sample:
    checked: ["node gpu-node-1 (marks of the drills and detectors, cordon, conditions)"]
    differences:
      - object: node gpu-node-1
        field: "labels['fault-injection.gpu-resilience.io/drill']"
        before: null
        now: xid79-0413
        text: "node gpu-node-1: label fault-injection.gpu-resilience.io/drill was absent, now \"xid79-0413\""
    as_before: false
    summary: "The cluster is NOT as it was, 1 difference(s): ..."
namespace:
  description: The namespace read.
  returned: always
  type: str
  sample: gpu-fault-injection
"""

import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_claims, drill_ledger
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_verify, fault_api, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_patch
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_ledger import LedgerError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError


def read_ledgers(k8s, namespace, drill=None):
    """(ledgers, warnings) in namespace, oldest first."""
    if drill is not None:
        drill_ledger.validate_drill(drill)
    config_maps = kube.resource(k8s, "v1", "ConfigMap")
    items, _version = kube.list_objects(k8s, config_maps, namespace, drill_ledger.selector(drill))
    warnings = []
    if not items and kube.get(k8s, kube.resource(k8s, "v1", "Namespace"), namespace) is None:
        warnings.append("namespace %s does not exist, so it holds no drill ledgers" % namespace)
    return drill_ledger.sort_listed([drill_ledger.listed(o) for o in items]), warnings


def read_claims(k8s, namespace):
    """Every drill's claims in namespace, oldest first."""
    leases = kube.resource(k8s, drill_claims.API_VERSION, drill_claims.KIND)
    items, _version = kube.list_objects(k8s, leases, namespace, drill_claims.selector())
    now = time.time()
    claims = []
    for obj in items:
        claim = drill_claims.parse(obj)
        claims.append(dict(name=claim["name"], drill=claim["drill"], target=claim["target"], acquired=claim["acquired"],
                           age_seconds=drill_claims.age_seconds(claim, now)))
    return sorted(claims, key=lambda c: (str(c["acquired"] or ""), c["name"]))


def observe(k8s, namespace, ledgers):
    """What drill_verify.compare needs of the cluster, for every ledger at once (one read per object)."""
    wanted = [drill_verify.reads(ledger) for ledger in ledgers]
    nodes = sorted(set(n for w in wanted for n in w["nodes"]))
    observed = dict(nodes=kube.get_named(k8s, kube.resource(k8s, "v1", "Node"), nodes) if nodes else {},
                    workloads={}, faults={}, objects={})
    for entry in [e for w in wanted for e in w["workloads"] + w["objects"]]:
        key = drill_ledger.identity(entry)
        where = observed["workloads" if entry["type"] == "shim_patch" else "objects"]
        if key not in where:
            api_version = entry.get("api_version") or shim_patch.default_api_version(entry["kind"])
            where[key] = kube.get(k8s, kube.resource(k8s, api_version, entry["kind"]), entry["name"],
                                  entry.get("namespace") or None)
    observed["nvsentinel"] = nvsentinel_left(k8s, [e for w in wanted for e in w["nvsentinel"]])
    drills = sorted(set(d for w in wanted for d in w["faults"]))
    if drills:
        try:
            faults = kube.resource(k8s, fault_api.API_VERSION, fault_api.KIND)
        except KubeError:   # no GPUFault CRD (the agent was removed): no fault can be left
            faults = None
        for drill in drills:
            items = kube.list_objects(k8s, faults, namespace, "%s=%s" % (fault_api.DRILL_LABEL, drill))[0] if faults else []
            observed["faults"][drill] = sorted(o["metadata"]["name"] for o in items)
    return observed


def nvsentinel_left(k8s, entries):
    """{node: drill_verify.nvsentinel_left()} for nvsentinel entries: their remediation objects and the
    Events of namespace default (where NVSentinel writes them), read once."""
    if not entries:
        return {}
    events, _version = kube.list_objects(k8s, kube.resource(k8s, "v1", "Event"), "default")
    objects = []
    for item in sorted(set((r["api_version"], r["kind"]) for e in entries for r in e.get("remediation") or [])):
        try:
            objects += kube.list_objects(k8s, kube.resource(k8s, item[0], item[1]))[0]
        except KubeError:   # not served: none can be left
            continue
    return dict((e["node"], drill_verify.nvsentinel_left(e, objects, events)) for e in entries)


def verify(k8s, namespace, ledgers, claims):
    """Each readable ledger with its verification added."""
    readable = [ledger for ledger in ledgers if "error" not in ledger]
    observed = observe(k8s, namespace, readable)
    for ledger in readable:
        result = drill_verify.compare(ledger, observed, claims)
        result.update(as_before=not result["differences"],
                      summary=drill_verify.summary(result["checked"], result["differences"]))
        ledger["verification"] = result
    return ledgers


def main():
    module = kube.module(dict(drill=dict(type="str"), namespace=dict(type="str", default=drill_ledger.DEFAULT_NAMESPACE),
                              verify=dict(type="bool", default=False)),
                         supports_check_mode=True)
    params = module.params
    try:
        k8s = kube.client(module)
        ledgers, warnings = read_ledgers(k8s, params["namespace"], params["drill"])
        claims = read_claims(k8s, params["namespace"])
        if params["verify"]:
            ledgers = verify(k8s, params["namespace"], ledgers, claims)
    except (KubeError, LedgerError) as e:
        module.fail_json(msg=str(e), changed=False)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(changed=False, ledgers=ledgers, claims=claims, namespace=params["namespace"])


if __name__ == "__main__":
    main()
