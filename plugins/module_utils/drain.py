# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Draining the GPU workloads off a node: which pods go, how each is evicted, when a refused
eviction is tried again, and how the outcome is reported.

Pure functions on Pod and PodDisruptionBudget dicts (as the API returns them): no Kubernetes
client, no I/O, no clock (times are passed in). The module gpu_node_drain does the API calls.

The rules follow ``kubectl drain``: DaemonSet pods and mirror (static) pods are never evicted,
finished pods are evicted like any other (a PodDisruptionBudget always allows it), a pod already
being deleted is waited for rather than evicted again, and an eviction that a budget refuses
(HTTP 429) is tried again until the budget allows it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import re

GPU_RESOURCE = "nvidia.com/gpu"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"   # the kubelet's copy of a static pod
POD_MODES = ("gpu", "all")
FINISHED_PHASES = ("Succeeded", "Failed")

# What the module does with a chosen pod.
EVICT = "evict"
DELETE = "delete"    # disable_eviction: a plain DELETE, no PodDisruptionBudget check
WAIT = "wait"        # already terminating: wait for it, do not evict it again

# Retry schedule for refused evictions: 0.5 s, doubling, capped at the module's retry_max_interval
# (kubectl drain waits 5 s between attempts; starting lower catches a budget that frees up at once).
FIRST_RETRY = 0.5
DEFAULT_MAX_INTERVAL = 5.0

# The eviction subresource's answers (k8s.io/kubernetes pkg/registry/core/pod/storage/eviction.go).
DISRUPTION_BUDGET_CAUSE = "DisruptionBudget"
MULTIPLE_BUDGETS_TEXT = "more than one PodDisruptionBudget"
_BUDGET_NAME = re.compile(r"[Tt]he disruption budget (\S+) (?:needs|is still)")

FIX_REFUSED = ("let the budget allow the disruption (scale the workload up so more pods are healthy than the "
               "budget needs), relax the PodDisruptionBudget (lower minAvailable or raise maxUnavailable), or "
               "set disable_eviction: true to delete the pods without asking the budget")


class DrainError(ValueError):
    """The drain cannot go ahead as asked; the message names the pods and the fix."""


# --- times --------------------------------------------------------------------------------------

def utc(epoch):
    """RFC 3339 UTC time of a POSIX timestamp, to the microsecond."""
    when = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- pods ---------------------------------------------------------------------------------------

def pod_key(pod):
    meta = pod.get("metadata") or {}
    return "%s/%s" % (meta.get("namespace"), meta.get("name"))


def controller(pod):
    """The pod's controller ownerReference (the one with controller: true), else its first owner, else None."""
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    for ref in owners:
        if ref.get("controller"):
            return ref
    return owners[0] if owners else None


def owner_text(pod):
    """The pod's owner as kind/name (e.g. ReplicaSet/trainer-7d9c8), or None for a bare pod."""
    ref = controller(pod)
    return "%s/%s" % (ref.get("kind"), ref.get("name")) if ref else None


def is_daemonset_pod(pod):
    ref = controller(pod)
    return bool(ref) and ref.get("kind") == "DaemonSet"


def is_mirror_pod(pod):
    return MIRROR_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})


def is_terminating(pod):
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _nonzero(quantity):
    """Whether a resource quantity asks for anything ("0", "0m", 0 do not)."""
    if quantity is None:
        return False
    text = str(quantity).strip()
    match = re.match(r"^[+]?([0-9]*\.?[0-9]*)", text)
    number = match.group(1) if match else ""
    if number in ("", "."):
        return bool(text)
    return float(number) != 0


def requests_resource(pod, resource=GPU_RESOURCE):
    """Whether a container or init container of the pod asks for resource (in limits or requests)."""
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.get("resources") or {}
        for part in ("limits", "requests"):
            if _nonzero((resources.get(part) or {}).get(resource)):
                return True
    return False


def select(pods, mode="gpu", gpu_resource=GPU_RESOURCE, namespaces=None, ignore_daemonsets=True):
    """Choose the pods of a node to drain.

    pods: the node's pods (already narrowed by the module's label selector). Returns
    (targets, skipped): targets are the pods to evict or wait for, sorted by namespace/name;
    skipped are dicts (namespace, name, uid, owner, reason) for the chosen pods a drain leaves
    alone (DaemonSet and mirror pods). With mode "gpu" only pods asking for gpu_resource are
    chosen; with "all", every pod. Raises DrainError for DaemonSet pods when ignore_daemonsets is
    false, as kubectl drain does without --ignore-daemonsets.
    """
    if mode not in POD_MODES:
        raise DrainError("pods must be one of %s, got %r" % (", ".join(POD_MODES), mode))
    wanted = set(namespaces or ())
    targets, skipped, daemonset_pods = [], [], []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if wanted and meta.get("namespace") not in wanted:
            continue
        if mode == "gpu" and not requests_resource(pod, gpu_resource):
            continue
        if is_mirror_pod(pod):
            skipped.append(_skip(pod, "mirror pod of a static pod: the kubelet owns it and the API cannot evict it"))
        elif is_daemonset_pod(pod):
            daemonset_pods.append(pod)
            skipped.append(_skip(pod, "DaemonSet pod: its DaemonSet would recreate it on the node at once"))
        else:
            targets.append(pod)
    if daemonset_pods and not ignore_daemonsets:
        raise DrainError("DaemonSet-managed pods %s cannot be drained (the DaemonSet recreates them on the node, "
                         "cordoned or not); set ignore_daemonsets: true to leave them running, as kubectl drain "
                         "--ignore-daemonsets does" % ", ".join(sorted(pod_key(p) for p in daemonset_pods)))
    targets.sort(key=pod_key)
    skipped.sort(key=lambda s: (s["namespace"], s["name"]))
    return targets, skipped


def _skip(pod, reason):
    meta = pod.get("metadata") or {}
    return dict(namespace=meta.get("namespace"), name=meta.get("name"), uid=meta.get("uid"),
                owner=owner_text(pod), reason=reason)


def unmanaged(targets):
    """The chosen pods no controller owns: nothing recreates them once evicted."""
    return [pod_key(p) for p in targets if controller(p) is None]


def action(pod, disable_eviction=False):
    if is_terminating(pod):
        return WAIT
    return DELETE if disable_eviction else EVICT


# --- requests -----------------------------------------------------------------------------------

def delete_options(pod, grace_period=None):
    """DeleteOptions for evicting or deleting pod: only this incarnation of it (uid precondition),
    so a StatefulSet pod recreated under the same name is never hit by a retry."""
    options = {"apiVersion": "v1", "kind": "DeleteOptions",
               "preconditions": {"uid": (pod.get("metadata") or {}).get("uid")}}
    if grace_period is not None:
        options["gracePeriodSeconds"] = int(grace_period)
    return options


def eviction_body(pod, grace_period=None):
    """The policy/v1 Eviction to POST to the pod's eviction subresource."""
    meta = pod.get("metadata") or {}
    return {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "deleteOptions": delete_options(pod, grace_period)}


def retry_delay(refusals, max_interval=DEFAULT_MAX_INTERVAL):
    """Seconds to wait after the refusals-th refusal before trying again: 0.5, 1, 2, 4, ... capped."""
    if refusals < 1:
        return 0.0
    # The exponent is capped so a long drain never computes a huge power.
    return min(FIRST_RETRY * (2 ** min(refusals - 1, 30)), float(max_interval))


def retry_schedule(count, max_interval=DEFAULT_MAX_INTERVAL):
    """The first count delays, for documentation and tests."""
    return [retry_delay(n, max_interval) for n in range(1, count + 1)]


def _status(body):
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {"message": body}
    return body if isinstance(body, dict) else {}


def status_message(body):
    """The message of an API Status body (bytes, text or dict), with its causes."""
    status = _status(body)
    causes = [c.get("message") for c in (status.get("details") or {}).get("causes") or [] if c.get("message")]
    message = status.get("message") or ""
    return "%s%s" % (message, " (%s)" % "; ".join(causes) if causes else "")


def refusing_budget(body):
    """The name of the PodDisruptionBudget a 429 eviction answer names, or None."""
    status = _status(body)
    texts = [c.get("message") or "" for c in (status.get("details") or {}).get("causes") or []
             if c.get("reason") == DISRUPTION_BUDGET_CAUSE or c.get("type") == DISRUPTION_BUDGET_CAUSE]
    texts.append(status.get("message") or "")
    for text in texts:
        match = _BUDGET_NAME.search(text)
        if match:
            return match.group(1)
    return None


def is_multiple_budgets(body):
    """Whether an eviction's 500 answer is the 'more than one PodDisruptionBudget' refusal."""
    return MULTIPLE_BUDGETS_TEXT in (_status(body).get("message") or "")


# --- PodDisruptionBudgets -----------------------------------------------------------------------

def selector_matches(selector, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions) selects labels.

    As for policy/v1 budgets: an empty selector selects every pod, a missing one none.
    """
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def budgets_for(pod, budgets):
    """Names of the budgets (in the pod's namespace) that cover pod, sorted."""
    meta = pod.get("metadata") or {}
    return sorted(b["metadata"]["name"] for b in budgets
                  if b["metadata"].get("namespace") == meta.get("namespace")
                  and selector_matches((b.get("spec") or {}).get("selector"), meta.get("labels")))


def budget_allows(budget):
    """Whether the budget, as last seen, would let an eviction through: its controller has caught up
    with its spec and it allows at least one disruption. A freed-up budget triggers a retry at once."""
    status = budget.get("status") or {}
    generation = (budget.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False
    return (status.get("disruptionsAllowed") or 0) > 0


def budget_summary(budget):
    """The budget's spec and status in short, for results and messages."""
    meta = budget.get("metadata") or {}
    spec = budget.get("spec") or {}
    status = budget.get("status") or {}
    return dict(namespace=meta.get("namespace"), name=meta.get("name"),
                min_available=spec.get("minAvailable"), max_unavailable=spec.get("maxUnavailable"),
                current_healthy=status.get("currentHealthy"), desired_healthy=status.get("desiredHealthy"),
                disruptions_allowed=status.get("disruptionsAllowed"), expected_pods=status.get("expectedPods"))


def budget_text(budget):
    s = budget_summary(budget)
    rule = []
    if s["min_available"] is not None:
        rule.append("minAvailable %s" % s["min_available"])
    if s["max_unavailable"] is not None:
        rule.append("maxUnavailable %s" % s["max_unavailable"])
    return "PodDisruptionBudget %s/%s (%s; currentHealthy %s, desiredHealthy %s, disruptionsAllowed %s, " \
           "expectedPods %s)" % (s["namespace"], s["name"], ", ".join(rule) or "no rule",
                                 _n(s["current_healthy"]), _n(s["desired_healthy"]),
                                 _n(s["disruptions_allowed"]), _n(s["expected_pods"]))


def _n(value):
    return "?" if value is None else value


# --- results ------------------------------------------------------------------------------------

def pod_record(pod, disable_eviction=False):
    """The result entry of a chosen pod, before anything is done to it."""
    meta = pod.get("metadata") or {}
    return dict(namespace=meta.get("namespace"), name=meta.get("name"), uid=meta.get("uid"), owner=owner_text(pod),
                phase=(pod.get("status") or {}).get("phase"), action=action(pod, disable_eviction),
                attempts=0, refusals=0, budget=None, retried_on=None,
                evicted=None, evicted_after=None, gone=None, gone_after=None)


def diff(node, unschedulable_before, unschedulable_after, records):
    """Diff mode's before/after: the node's cordon and the pods the drain removes from it."""
    removed = ["%s/%s" % (r["namespace"], r["name"]) for r in records if r["action"] != WAIT]
    return dict(before=dict(node=node, unschedulable=bool(unschedulable_before), pods=removed),
                after=dict(node=node, unschedulable=bool(unschedulable_after), pods=[]))


def pending(records, wait):
    """The records the drain is not done with: not yet evicted, or (when waiting) not yet gone."""
    out = []
    for r in records:
        if r["gone"] is not None:
            continue
        if wait or (r["action"] != WAIT and r["evicted"] is None):
            out.append(r)
    return out


def timeout_message(node, timeout, records, wait, budgets, pods=None):
    """Why the drain did not finish: each pod still there and what holds it, and the fix.

    budgets: {namespace/name: budget dict} as last seen; pods: {namespace/name: pod dict} as last seen.
    """
    pods = pods or {}
    left = pending(records, wait)
    parts = []
    refused = False
    for r in left:
        key = "%s/%s" % (r["namespace"], r["name"])
        if r["evicted"] is None and r["action"] != WAIT:
            if r["refusals"]:
                refused = True
                if r["budget"]:
                    budget = budgets.get("%s/%s" % (r["namespace"], r["budget"]))
                    held = budget_text(budget) if budget else "PodDisruptionBudget %s/%s" % (r["namespace"], r["budget"])
                else:
                    held = "the API server (HTTP 429 without a budget named)"
                parts.append("%s: eviction refused %d time(s) by %s" % (key, r["refusals"], held))
            else:
                parts.append("%s: not evicted yet" % key)
        else:
            pod = pods.get(key) or {}
            meta = pod.get("metadata") or {}
            since = " since %s" % meta["deletionTimestamp"] if meta.get("deletionTimestamp") else ""
            grace = meta.get("deletionGracePeriodSeconds")
            what = "evicted at %s" % r["evicted"] if r["evicted"] else "already terminating"
            parts.append("%s: %s, still terminating%s%s" % (
                key, what, since, " (grace period %ss)" % grace if grace is not None else ""))
    fixes = []
    if refused:
        fixes.append("To let the evictions through: " + FIX_REFUSED + ".")
    if any(r["evicted"] is not None or r["action"] == WAIT for r in left):
        fixes.append("For pods slow to terminate: raise wait_timeout, or set grace_period lower.")
    return "timed out after %ss draining node %s: %d pod(s) still on it. %s.%s" % (
        timeout, node, len(left), "; ".join(parts), (" " + " ".join(fixes)) if fixes else "")


def multiple_budgets_message(pod, names):
    return ("evicting pod %s failed: it is covered by more than one PodDisruptionBudget (%s), which the eviction "
            "API does not support; make the budgets' selectors not overlap (or merge them into one), or set "
            "disable_eviction: true to delete the pods without asking the budgets"
            % (pod_key(pod), ", ".join(names) if names else "the budgets in namespace %s that select it"
               % (pod.get("metadata") or {}).get("namespace")))
