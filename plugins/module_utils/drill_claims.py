# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Claims: one drill per node and per workload at a time.

Two drills on the same node corrupt each other: the second records the first one's marks as the
node's state "before", and its cleanup writes them back after the first has cleaned up. So a drill
claims its targets before it records anything, and a target that another drill holds is refused.

A claim is a ``coordination.k8s.io/v1`` Lease in the ledger's namespace, one per target, named
after it (:func:`claim_name`), created with a plain create: the API server lets exactly one create
of a name succeed, so two drills racing for a target cannot both win (the loser gets HTTP 409).
``spec.holderIdentity`` is the drill id and ``spec.acquireTime`` when it claimed; the label
``CLAIM_LABEL=<drill>`` finds a drill's claims, the annotation ``TARGET_ANNOTATION`` says what is
claimed and ``META_ANNOTATION`` who asked (e.g. the AWX job). A claim has no duration: it lasts
until the drill's cleanup releases it, also when the drill was killed (``cleanup.yml`` releases
the claims of a killed drill, with or without its ledger).

A node is also held by a drill whose label (``NODE_DRILL_LABEL=<drill>``, set by the drill on its
targets) it still carries without a claim: that drill's cleanup did not finish, and a new drill
would record its leftovers as the node's state before.

Pure functions; the module ``drill_claim`` reads and writes the Leases.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_ledger, drill_report, fault_api
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_patch

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
NAME_PREFIX = "gpu-drill-claim"
GROUP = "fault-injection.gpu-resilience.io"
CLAIM_LABEL = GROUP + "/drill-claim"
TARGET_ANNOTATION = GROUP + "/claim-target"
META_ANNOTATION = GROUP + "/claim-meta"
# The label a drill puts on its target nodes (role fault_scenario, phase baseline).
NODE_DRILL_LABEL = GROUP + "/drill"
TARGET_TYPES = ("node", "workload")
CLEANUP_PLAYBOOK = "gpu_resilience.fault_injection.cleanup"


class ClaimError(ValueError):
    """A target or a claim that cannot be used; the message says which and why."""


def selector(drill=None):
    """The label selector of the claims in a namespace (of one drill when given)."""
    return "%s=%s,%s" % (drill_ledger.MANAGED_BY_LABEL, drill_ledger.MANAGED_BY,
                         CLAIM_LABEL + ("=" + drill if drill else ""))


# --- targets ---------------------------------------------------------------------------------

def node_target(node):
    try:
        fault_api.validate_node_name(node)
    except fault_api.FaultSpecError as e:
        raise ClaimError(str(e))
    return {"type": "node", "name": node}


def workload_target(raw):
    """A workload to claim, checked: kind, namespace, name (api_version optional, informative)."""
    if not isinstance(raw, dict):
        raise ClaimError("a workload must be a dict with kind, namespace and name, got %r" % (raw,))
    kind, namespace, name = raw.get("kind"), raw.get("namespace"), raw.get("name")
    try:
        shim_patch.validate_kind(kind)
        shim_patch.validate_dns_label(namespace, "workload namespace")
        shim_patch.validate_dns_subdomain(name, "workload name")
    except shim_patch.ShimPatchError as e:
        raise ClaimError(str(e))
    api_version = raw.get("api_version") or shim_patch.default_api_version(kind) or ""
    return {"type": "workload", "api_version": api_version, "kind": kind, "namespace": namespace, "name": name}


def targets(nodes=(), workloads=()):
    """The targets, checked, once each, in claim order (by claim name, so that two drills that
    want the same targets race for the same one first and the loser has created nothing)."""
    found = {}
    for target in [node_target(n) for n in nodes or ()] + [workload_target(w) for w in workloads or ()]:
        found.setdefault(claim_name(target), target)
    return [found[name] for name in sorted(found)]


def claim_name(target):
    """gpu-drill-claim.node.<node> or gpu-drill-claim.<kind>.<namespace>.<name>: the parts are
    separated by dots, which neither a kind nor a namespace can contain, so no two targets share a
    name; a name too long for an object keeps its head and gets a hash."""
    if target["type"] == "node":
        name = "%s.node.%s" % (NAME_PREFIX, target["name"])
    else:
        name = "%s.%s.%s.%s" % (NAME_PREFIX, target["kind"].lower(), target["namespace"], target["name"])
    return fault_api.bounded_name(name, name)


def describe_target(target):
    if target["type"] == "node":
        return "node %s" % target["name"]
    return "%s %s/%s" % (target["kind"], target["namespace"], target["name"])


# --- claims ------------------------------------------------------------------------------------

def lease(namespace, drill, target, now, meta=None):
    """The Lease that claims target for drill (now: an RFC 3339 time with microseconds)."""
    drill_ledger.validate_drill(drill)
    annotations = {TARGET_ANNOTATION: json.dumps(target, sort_keys=True)}
    if meta:
        annotations[META_ANNOTATION] = json.dumps(meta, sort_keys=True)
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": claim_name(target), "namespace": namespace,
                     "labels": {drill_ledger.MANAGED_BY_LABEL: drill_ledger.MANAGED_BY, CLAIM_LABEL: drill},
                     "annotations": annotations},
        "spec": {"holderIdentity": drill, "acquireTime": now, "renewTime": now},
    }


def is_claim(obj):
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(drill_ledger.MANAGED_BY_LABEL) == drill_ledger.MANAGED_BY and CLAIM_LABEL in labels


def parse(obj):
    """A claim Lease as {name, drill, target, acquired, meta, uid, resource_version}."""
    metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "name": metadata.get("name"),
        "drill": spec.get("holderIdentity") or (metadata.get("labels") or {}).get(CLAIM_LABEL),
        "target": _json(annotations.get(TARGET_ANNOTATION)),
        "acquired": spec.get("acquireTime") or metadata.get("creationTimestamp"),
        "meta": _json(annotations.get(META_ANNOTATION)) or {},
        "uid": metadata.get("uid"),
        "resource_version": metadata.get("resourceVersion"),
    }


def _json(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def age_seconds(claim, now=None):
    """Seconds since the claim was acquired (None when its time cannot be read)."""
    try:
        since = drill_report.parse_time(claim.get("acquired"), "acquireTime")
    except drill_report.DrillReportError:
        return None
    now = time.time() if now is None else now
    return max(0.0, now - drill_report.seconds(since))


# --- who holds what ------------------------------------------------------------------------------

def conflicts(drill, wanted, claims, node_labels):
    """The targets of wanted that another drill holds, in wanted's order.

    claims: the claims found ({lease name: parsed claim}); node_labels: {node: the value of its
    NODE_DRILL_LABEL, or None}. Each conflict is {target, holder, how, claim}: how is ``claim``
    (holder's Lease) or ``label`` (the node carries holder's label and holder has no claim on it).
    """
    found = []
    for target in wanted:
        claim = claims.get(claim_name(target))
        if claim and claim["drill"] != drill:
            found.append({"target": target, "holder": claim["drill"], "how": "claim", "claim": claim})
            continue
        label = node_labels.get(target["name"]) if target["type"] == "node" else None
        if label and label != drill:
            found.append({"target": target, "holder": label, "how": "label", "claim": None})
    return found


def refusal(drill, found, namespace, now=None):
    """The message of a refused claim: who holds each target, since when, and how to release it."""
    lines = []
    for conflict in found:
        what = describe_target(conflict["target"])
        if conflict["how"] == "claim":
            claim = conflict["claim"]
            age = age_seconds(claim, now)
            job = (claim.get("meta") or {}).get("awx_job_id")
            lines.append("%s is held by drill %s since %s (%s ago%s; Lease %s/%s)" % (
                what, conflict["holder"], claim.get("acquired") or "an unknown time",
                drill_report.fmt_duration(age) if age is not None else "unknown",
                ", AWX job %s" % job if job else "", namespace, claim["name"]))
        else:
            lines.append("%s carries the label %s=%s of drill %s, which holds no claim on it: that drill's cleanup did "
                         "not finish" % (what, NODE_DRILL_LABEL, conflict["holder"], conflict["holder"]))
    holders = sorted(set(c["holder"] for c in found))
    return ("Drill %s refused: one drill per node and per workload at a time, and %s; nothing was changed. "
            "Wait for %s to finish, or choose other targets. If %s no longer running (its run was killed), "
            "undo it and release its claims with: %s."
            % (drill, "; ".join(lines), _drills(holders), "it is" if len(holders) == 1 else "one is",
               " and ".join("ansible-playbook %s -e fault_cleanup_drill=%s" % (CLEANUP_PLAYBOOK, h) for h in holders)))


def _drills(names):
    return ("drill " if len(names) == 1 else "drills ") + ", ".join(names)


def to_create(drill, wanted, claims):
    """The targets of wanted that drill does not hold yet (the caller has ruled out conflicts)."""
    return [t for t in wanted if (claims.get(claim_name(t)) or {}).get("drill") != drill]
