# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exact restoration of a node's quarantine marks from a snapshot taken before a drill.

A drill (and the detector it provokes) cordons a node, taints it, labels and annotates it. The drill
ledger (``drill_ledger``) records a *snapshot* of each target node before the first change, made
by :func:`snapshot`; ``node_marks_restore`` later computes, with :func:`plan`, the smallest JSON
patch that makes the node's *in-scope* marks equal to the snapshot again:

- labels and annotations whose key starts with one of the scope's prefixes or is one of its exact
  keys, less the ignored keys (a health agent's heartbeat, rewritten every cycle, is never restored);
- taints with such a key, and the ``node.kubernetes.io/unschedulable`` taint when the scope
  includes ``spec.unschedulable`` (the node lifecycle controller keeps that taint in step with the
  cordon, so the two are restored together);
- ``spec.unschedulable``.

Everything else on the node belongs to other controllers (the kubelet's labels, the node lifecycle
controller's ``node.kubernetes.io/unreachable`` taint, cloud providers' annotations) and is never
touched. The patch starts with a ``test`` of ``metadata.resourceVersion``, so it applies only to
the node it was computed from.

Standard library only: the default exact keys (NVSentinel's unprefixed annotations) are passed in
by the caller from ``node_marks.NVSENTINEL_ANNOTATIONS``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy

# Marks a drill or a detector sets: the collection's own, the AWS GPU health-check suite's (also the
# collection's health agent's), NVSentinel fault-quarantine's labels and its state label.
DEFAULT_PREFIXES = ("fault-injection.gpu-resilience.io/", "gpu-healthcheck.aws-samples.io/", "k8saas.nvidia.com/",
                    "dgxc.nvidia.com/")
# The health agent's heartbeat: rewritten on every check, so the snapshot's value is only stale.
DEFAULT_IGNORE = ("gpu-healthcheck.aws-samples.io/last-check", "gpu-healthcheck.aws-samples.io/results")
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
SNAPSHOT_KEYS = ("unschedulable", "taints", "labels", "annotations", "resourceVersion")
TAINT_FIELDS = ("key", "value", "effect", "timeAdded")
# A condition's message and transition time too: a detector's conditions (NVSentinel's) are put
# back from the snapshot after a drill, whole.
CONDITION_FIELDS = ("type", "status", "reason", "message", "lastTransitionTime")
SCOPE_KEYS = ("prefixes", "keys", "ignore", "unschedulable", "taints")


class RestoreError(ValueError):
    """A snapshot or scope that cannot be used; the message says which part and why."""


# --- snapshot -------------------------------------------------------------------------------------

def snapshot(node):
    """The state of a node (a dict as the API returns it) that restoration needs.

    ``{unschedulable, taints, labels, annotations, conditions, resourceVersion, uid}``: all labels,
    annotations and taints (the scope is chosen when restoring, so nothing is left out here), taints
    with only their API fields, and each condition's type, status, reason, message and transition
    time (conditions are the kubelet's and the detectors' to set: the self-check compares them, and
    only NVSentinel's are put back, by nvsentinel_restore).
    """
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    return {
        "unschedulable": spec.get("unschedulable") is True,
        "taints": [_taint(t) for t in spec.get("taints") or [] if isinstance(t, dict) and t.get("key")],
        "labels": dict(metadata.get("labels") or {}),
        "annotations": dict(metadata.get("annotations") or {}),
        "conditions": sorted((dict((k, c[k]) for k in CONDITION_FIELDS if c.get(k) is not None)
                              for c in (node.get("status") or {}).get("conditions") or []
                              if isinstance(c, dict) and c.get("type")), key=lambda c: c["type"]),
        "resourceVersion": metadata.get("resourceVersion"),
        "uid": metadata.get("uid"),
    }


def validate_snapshot(before):
    """The snapshot, checked; RestoreError names the first part that is not one."""
    if not isinstance(before, dict):
        raise RestoreError("before must be a node snapshot (a dict with %s), got %s"
                           % (", ".join(SNAPSHOT_KEYS), type(before).__name__))
    missing = [k for k in ("unschedulable", "taints", "labels", "annotations") if k not in before]
    if missing:
        raise RestoreError("before is not a node snapshot: it lacks %s (use the before of a drill_ledger node entry)"
                           % ", ".join(missing))
    if not isinstance(before["unschedulable"], bool):
        raise RestoreError("before.unschedulable must be true or false, got %r" % (before["unschedulable"],))
    for field in ("labels", "annotations"):
        marks = before[field]
        if not isinstance(marks, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in marks.items()):
            raise RestoreError("before.%s must map strings to strings" % field)
    taints = before["taints"]
    if not isinstance(taints, list):
        raise RestoreError("before.taints must be a list of taints")
    for number, taint in enumerate(taints, 1):
        if not isinstance(taint, dict) or not isinstance(taint.get("key"), str) or not taint["key"]:
            raise RestoreError("before.taints[%d] must be a taint with a key, got %r" % (number, taint))
        if not isinstance(taint.get("effect"), str) or not taint["effect"]:
            raise RestoreError("before.taints[%d] (%s) has no effect" % (number, taint["key"]))
        unknown = sorted(set(taint) - set(TAINT_FIELDS))
        if unknown:
            raise RestoreError("before.taints[%d] (%s) has unknown fields %s" % (number, taint["key"], ", ".join(unknown)))
    return before


# --- several nodes --------------------------------------------------------------------------------

def check_batch(names):
    """RestoreError when a node is listed more than once: its two snapshots would fight."""
    seen, twice = set(), []
    for name in names:
        if name in seen and name not in twice:
            twice.append(name)
        seen.add(name)
    if twice:
        raise RestoreError("nodes lists %s more than once; give each node once, with its own before"
                           % ", ".join(twice))
    return names


def progress(restored):
    """How far a list got before a failure, for its message."""
    if not restored:
        return "no node had been restored yet"
    return "restored before the failure (and left restored): %s" % ", ".join(restored)


# --- scope ----------------------------------------------------------------------------------------

def make_scope(prefixes=DEFAULT_PREFIXES, keys=(), ignore=DEFAULT_IGNORE, unschedulable=True, taints=True):
    """A checked scope dict; RestoreError for an empty prefix (it would match every key)."""
    prefixes = tuple(prefixes or ())
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix:
            raise RestoreError("scope.prefixes must be non-empty strings (an empty prefix would match every key), "
                               "got %r" % (prefix,))
    for name, values in (("keys", keys), ("ignore", ignore)):
        for value in values or ():
            if not isinstance(value, str) or not value:
                raise RestoreError("scope.%s must be non-empty strings, got %r" % (name, value))
    return {"prefixes": prefixes, "keys": frozenset(keys or ()), "ignore": frozenset(ignore or ()),
            "unschedulable": bool(unschedulable), "taints": bool(taints)}


def in_scope(key, scope):
    """Whether a label or annotation key is one the restoration owns."""
    if key in scope["ignore"]:
        return False
    return key in scope["keys"] or key.startswith(scope["prefixes"])


def taint_in_scope(taint, scope):
    if not scope["taints"]:
        return False
    if taint["key"] == UNSCHEDULABLE_TAINT:
        return scope["unschedulable"]
    return in_scope(taint["key"], scope)


def scoped_marks(state, scope):
    """The in-scope part of a snapshot-shaped state: what restoration compares and shows."""
    result = {
        "labels": dict((k, v) for k, v in state["labels"].items() if in_scope(k, scope)),
        "annotations": dict((k, v) for k, v in state["annotations"].items() if in_scope(k, scope)),
    }
    if scope["taints"]:
        result["taints"] = [t for t in state["taints"] if taint_in_scope(t, scope)]
    if scope["unschedulable"]:
        result["unschedulable"] = state["unschedulable"]
    return result


# --- the plan -------------------------------------------------------------------------------------

def plan(node, before, scope, owner=None):
    """What restoring ``before`` on ``node`` takes.

    ``owner``, when given, is ``(label key, drill id)``: the restoration is done for that drill,
    and marks of other drills are never written back. The key is the label a drill puts on its
    nodes. A node that now carries another drill's label is in that drill's hands: it is left
    alone (``held_by`` names the drill). A value of that label in ``before`` that names another
    drill is not restored (it was that drill's, and its own cleanup removes it).

    Returns ``{changed, patch, restored, current, after}``:

    - ``patch``: the JSON patch (RFC 6902) as a list, starting with a ``test`` of
      ``metadata.resourceVersion``; empty when nothing differs;
    - ``restored``: per part, what changes: ``labels`` and ``annotations`` map each key to
      ``{from, to}`` (None: absent), ``taints`` and ``unschedulable`` are ``{from, to}``;
    - ``current`` and ``after``: the node's in-scope marks now and once the patch is applied;
    - ``held_by``: the other drill whose label the node carries (then nothing is restored), or None.
    """
    validate_snapshot(before)
    current = snapshot(node)
    if owner:
        holder = foreign_drill(current, owner)
        if holder:
            marks = scoped_marks(current, scope)
            return {"changed": False, "patch": [], "restored": {}, "current": marks, "after": marks, "held_by": holder}
        before = without_foreign_drill(before, owner)
    ops = []
    restored = {}
    for field in ("labels", "annotations"):
        changes = _map_ops(field, current[field], before[field], scope, ops)
        if changes:
            restored[field] = changes
    after = copy.deepcopy(current)
    for field in ("labels", "annotations"):
        for key, change in restored.get(field, {}).items():
            if change["to"] is None:
                del after[field][key]
            else:
                after[field][key] = change["to"]
    if scope["taints"]:
        wanted = _restored_taints(current["taints"], before["taints"], scope)
        if [_comparable(t) for t in wanted] != [_comparable(t) for t in current["taints"]]:
            restored["taints"] = {"from": [t for t in current["taints"] if taint_in_scope(t, scope)],
                                  "to": [t for t in wanted if taint_in_scope(t, scope)]}
            if wanted:
                ops.append({"op": "add", "path": "/spec/taints", "value": wanted})
            else:
                ops.append({"op": "remove", "path": "/spec/taints"})
            after["taints"] = wanted
    if scope["unschedulable"] and current["unschedulable"] != before["unschedulable"]:
        restored["unschedulable"] = {"from": current["unschedulable"], "to": before["unschedulable"]}
        if before["unschedulable"]:
            ops.append({"op": "add", "path": "/spec/unschedulable", "value": True})
        elif "unschedulable" in (node.get("spec") or {}):
            ops.append({"op": "remove", "path": "/spec/unschedulable"})
        after["unschedulable"] = before["unschedulable"]
    patch = []
    if ops:
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": current["resourceVersion"]}] + ops
    return {"changed": bool(ops), "patch": patch, "restored": restored,
            "current": scoped_marks(current, scope), "after": scoped_marks(after, scope), "held_by": None}


def foreign_drill(state, owner):
    """The drill other than owner's whose label a snapshot-shaped state carries, or None."""
    key, drill = owner
    value = state["labels"].get(key)
    return value if value and value != drill else None


def without_foreign_drill(before, owner):
    """before without another drill's label: that mark is never written back."""
    if not foreign_drill(before, owner):
        return before
    cleaned = copy.deepcopy(before)
    del cleaned["labels"][owner[0]]
    return cleaned


def _map_ops(field, current, before, scope, ops):
    """JSON patch ops that make the in-scope keys of metadata.<field> equal before's; their changes."""
    changes = {}
    for key in sorted(set(current) | set(before)):
        if not in_scope(key, scope) or current.get(key) == before.get(key):
            continue
        changes[key] = {"from": current.get(key), "to": before.get(key)}
    if not changes:
        return changes
    base = "/metadata/" + field
    if not current:
        # No map on the node yet (or an empty one): add it whole, with only the keys to re-add.
        ops.append({"op": "add", "path": base, "value": dict((k, c["to"]) for k, c in changes.items())})
        return changes
    for key, change in changes.items():
        path = base + "/" + _pointer(key)
        if change["to"] is None:
            ops.append({"op": "remove", "path": path})
        else:
            ops.append({"op": "add", "path": path, "value": change["to"]})
    return changes


def _restored_taints(current, before, scope):
    """The node's taint list with its in-scope taints made equal to before's.

    Out-of-scope taints keep their place; in-scope taints that before also has keep theirs; the
    in-scope taints before had and the node lacks are appended in before's order.
    """
    wanted = [t for t in before if taint_in_scope(t, scope)]
    pending = [_comparable(t) for t in wanted]
    result = []
    for taint in current:
        if not taint_in_scope(taint, scope):
            result.append(taint)
            continue
        form = _comparable(taint)
        if form in pending:
            pending.remove(form)
            result.append(taint)
    kept = [_comparable(t) for t in result]
    for taint in wanted:
        form = _comparable(taint)
        if form in kept:
            kept.remove(form)
        else:
            result.append(_taint(taint))
    return result


def _taint(taint):
    """A taint with only its API fields, an empty value or time left out (as the API server does)."""
    return dict((k, taint[k]) for k in TAINT_FIELDS if taint.get(k) not in (None, ""))


def _comparable(taint):
    return tuple(taint.get(k) or None for k in TAINT_FIELDS)


def _pointer(key):
    """A map key as a JSON pointer segment (RFC 6901): ``~`` and ``/`` escaped."""
    return key.replace("~", "~0").replace("/", "~1")
