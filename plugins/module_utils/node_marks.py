# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quarantine marks on Kubernetes Node objects: what they are, whether a node carries them, and who
set them.

Pure functions on Node dicts (as the API returns them): no Kubernetes client, no I/O. The modules
that wait for a detection stack to react (wait_node_cordon) and the collection's own health agent
use the constants here, so every name of a mark that NVSentinel or the AWS GPU health-check suite
sets is written down once.

A *condition* is a dict ``{kind, key, value, effect}``:

- ``cordoned``: ``spec.unschedulable`` is true;
- ``nvsentinel``: NVSentinel's fault-quarantine holds the node (its ``cordon-by`` label, its state
  label, or its ``quarantineHealthEvent`` annotation); with ``value``, only that state;
- ``taint``: a taint with ``key`` (and ``value``, ``effect`` when given);
- ``label``: a label with ``key`` (and ``value`` when given).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# --- NVIDIA NVSentinel (fault-quarantine, node-drainer, fault-remediation) ---------------------
# Every key they write on a Node, as in the source snapshot of shared/third_party/nvsentinel
# (tests/unit/plugins/module_utils/test_nvsentinel_source.py checks them there): fault-quarantine
# the cordon, the cordon/uncordon labels, the state label and its annotations; node-drainer and
# fault-remediation the state label (commons/pkg/statemanager); fault-remediation its annotation.
# fault-quarantine's default rule sets apply no taint and no label: a rule set's own taint or
# label is the operator's key, recorded in quarantineHealthEventAppliedTaints/Labels.
# platform-connectors writes node conditions named after each check
# (xid_catalog.NVSENTINEL_CHECKS) and Kubernetes Events (module_utils/nvsentinel.py).

NVSENTINEL_LABEL_PREFIX = "k8saas.nvidia.com/"  # fault-quarantine's labelPrefix, as shipped
NVSENTINEL_CORDONER = "NVSentinel"              # value of <prefix>cordon-by / uncordon-by
CORDON_BY = "cordon-by"
CORDON_REASON = "cordon-reason"
CORDON_TIMESTAMP = "cordon-timestamp"
UNCORDON_BY = "uncordon-by"
UNCORDON_REASON = "uncordon-reason"
UNCORDON_TIMESTAMP = "uncordon-timestamp"
NVSENTINEL_CORDON_LABELS = (CORDON_BY, CORDON_REASON, CORDON_TIMESTAMP)
NVSENTINEL_UNCORDON_LABELS = (UNCORDON_BY, UNCORDON_REASON, UNCORDON_TIMESTAMP)

NVSENTINEL_STATE_LABEL = "dgxc.nvidia.com/nvsentinel-state"
NVSENTINEL_STATE_PREFIX = "dgxc.nvidia.com/"
# The state label's values, in lifecycle order. The label is removed when the node is healthy again,
# so any value means the node is in NVSentinel's hands.
NVSENTINEL_STATES = ("quarantined", "draining", "drain-succeeded", "drain-failed", "remediating",
                     "remediation-succeeded", "remediation-failed")

# fault-quarantine's and fault-remediation's annotations carry no prefix.
QUARANTINE_EVENT_ANNOTATION = "quarantineHealthEvent"                   # JSON: the health event(s)
QUARANTINE_IS_CORDONED_ANNOTATION = "quarantineHealthEventIsCordoned"   # "True"
QUARANTINE_APPLIED_TAINTS_ANNOTATION = "quarantineHealthEventAppliedTaints"  # JSON list of taints
QUARANTINE_APPLIED_LABELS_ANNOTATION = "quarantineHealthEventAppliedLabels"
QUARANTINE_CORDON_PRE_EXISTING_ANNOTATION = "quarantineHealthEventCordonPreExisting"
UNCORDONED_MANUALLY_ANNOTATION = "quarantinedNodeUncordonedManually"
UNTAINTED_MANUALLY_ANNOTATION = "quarantinedNodeUntaintedManually"
REMEDIATION_STATE_ANNOTATION = "latestFaultRemediationState"  # fault-remediation's, JSON
NVSENTINEL_QUARANTINE_ANNOTATIONS = (QUARANTINE_EVENT_ANNOTATION, QUARANTINE_IS_CORDONED_ANNOTATION,
                                     QUARANTINE_APPLIED_TAINTS_ANNOTATION, QUARANTINE_APPLIED_LABELS_ANNOTATION,
                                     QUARANTINE_CORDON_PRE_EXISTING_ANNOTATION, UNCORDONED_MANUALLY_ANNOTATION,
                                     UNTAINTED_MANUALLY_ANNOTATION)
NVSENTINEL_ANNOTATIONS = NVSENTINEL_QUARANTINE_ANNOTATIONS + (REMEDIATION_STATE_ANNOTATION,)
NVSENTINEL_TRUE = "True"

# --- AWS GPU health-check suite (Kubernetes variant) ---------------------------------------------

AWS_PREFIX = "gpu-healthcheck.aws-samples.io/"
AWS_STATUS_LABEL = AWS_PREFIX + "status"            # pass | warn | fail | agent-stopped
AWS_SEVERITY_LABEL = AWS_PREFIX + "severity"        # PASS < MONITOR < RESET < REBOOT < ISOLATE
AWS_LAST_CHECK_LABEL = AWS_PREFIX + "last-check"
AWS_MODE_LABEL = AWS_PREFIX + "mode"                # quarantine
AWS_STATUSES = ("pass", "warn", "fail", "agent-stopped")
AWS_SEVERITIES = ("PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE")
AWS_UNHEALTHY_TAINT = {"key": AWS_PREFIX + "unhealthy", "value": "true", "effect": "NoSchedule"}
AWS_MAINTENANCE_TAINT = {"key": AWS_PREFIX + "maintenance", "value": "sweep", "effect": "NoSchedule"}
AWS_RESULTS_ANNOTATION = AWS_PREFIX + "results"                     # JSON
AWS_QUARANTINE_RESULT_ANNOTATION = AWS_PREFIX + "quarantine-result"  # JSON

# --- Kubernetes ---------------------------------------------------------------------------------

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"  # added by the node lifecycle controller
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
STANDARD_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
KINDS = ("cordoned", "nvsentinel", "taint", "label")
MODES = ("any", "all")
DEFAULT_CONDITIONS = ({"kind": "cordoned"}, {"kind": "nvsentinel"})


class ConditionError(ValueError):
    """A condition that cannot be checked as given."""


# --- conditions ---------------------------------------------------------------------------------

def condition_specs(conditions, nvsentinel_prefix=NVSENTINEL_LABEL_PREFIX):
    """Validated, normalised conditions from the module's ``conditions`` option (None: the defaults).

    Each result is ``{kind, key, value, effect}`` (absent parts None), plus ``prefix`` for
    ``nvsentinel`` conditions. Raises ConditionError naming the offending entry.
    """
    if not conditions:
        conditions = DEFAULT_CONDITIONS
    specs = []
    for number, raw in enumerate(conditions, 1):
        if not isinstance(raw, dict):
            raise ConditionError("condition %d must be a dict with a kind, got %r" % (number, raw))
        kind = raw.get("kind")
        key, value, effect = raw.get("key"), raw.get("value"), raw.get("effect")
        where = "condition %d (kind %s)" % (number, kind)
        if kind not in KINDS:
            raise ConditionError("condition %d: kind must be one of %s, got %r" % (number, ", ".join(KINDS), kind))
        if value is not None and not isinstance(value, str):
            value = str(value)
        if kind in ("taint", "label"):
            if not key:
                raise ConditionError("%s needs a key" % where)
        elif key:
            raise ConditionError("%s takes no key" % where)
        if kind == "cordoned" and value is not None:
            raise ConditionError("%s takes no value" % where)
        if kind == "nvsentinel" and value is not None and value not in NVSENTINEL_STATES:
            raise ConditionError("%s: value must be one of NVSentinel's states %s, got %r"
                                 % (where, ", ".join(NVSENTINEL_STATES), value))
        if effect is not None:
            if kind != "taint":
                raise ConditionError("%s takes no effect (only taint conditions do)" % where)
            if effect not in TAINT_EFFECTS:
                raise ConditionError("%s: effect must be one of %s, got %r" % (where, ", ".join(TAINT_EFFECTS), effect))
        spec = {"kind": kind, "key": key or None, "value": value, "effect": effect}
        if kind == "nvsentinel":
            spec["prefix"] = nvsentinel_prefix
        specs.append(spec)
    return specs


def describe(condition):
    """A condition in words, for messages."""
    kind = condition["kind"]
    if kind == "cordoned":
        return "cordoned (spec.unschedulable true)"
    if kind == "nvsentinel":
        prefix = condition.get("prefix", NVSENTINEL_LABEL_PREFIX)
        if condition.get("value"):
            return "NVSentinel state %s (label %s=%s)" % (condition["value"], NVSENTINEL_STATE_LABEL, condition["value"])
        return "NVSentinel quarantine (label %s%s=%s, label %s, or annotation %s)" % (
            prefix, CORDON_BY, NVSENTINEL_CORDONER, NVSENTINEL_STATE_LABEL, QUARANTINE_EVENT_ANNOTATION)
    if kind == "taint":
        return "taint %s" % _taint_text(condition["key"], condition.get("value"), condition.get("effect"))
    return "label %s%s" % (condition["key"], "=" + condition["value"] if condition.get("value") is not None else "")


def _taint_text(key, value, effect):
    return "%s%s%s" % (key, "=" + value if value is not None else "", ":" + effect if effect else "")


# --- matching -----------------------------------------------------------------------------------

def matches(node, conditions, mode="any"):
    """(whether the node is in the state the conditions describe, the marks that matched).

    mode ``any``: at least one condition holds; ``all``: every condition holds. Each matched mark
    is ``{kind, detail, field, value, set_by}`` where ``field`` names the node field that carries
    the mark and ``set_by`` is who_set() for it.
    """
    if mode not in MODES:
        raise ConditionError("mode must be one of %s, got %r" % (", ".join(MODES), mode))
    found = []
    held = []
    for condition in conditions:
        marks_found = condition_marks(node, condition)
        held.append(bool(marks_found))
        found.extend(marks_found)
    ok = any(held) if mode == "any" else bool(held) and all(held)
    return ok, found


def released(node, conditions):
    """True when none of the conditions holds on the node any more."""
    return not any(condition_marks(node, c) for c in conditions)


def condition_marks(node, condition):
    """The marks on the node that satisfy one condition (empty when it does not hold)."""
    kind = condition["kind"]
    if kind == "cordoned":
        if _spec(node).get("unschedulable") is True:
            return [_mark(node, "cordoned", "spec.unschedulable is true", ("spec", "unschedulable"), True)]
        return []
    if kind == "nvsentinel":
        return _nvsentinel_marks(node, condition)
    if kind == "taint":
        return [_mark(node, "taint", "taint %s" % _taint_text(t["key"], t.get("value"), t.get("effect")),
                      ("spec", "taints", {"key": t["key"], "effect": t.get("effect")}),
                      _taint_text(t["key"], t.get("value"), t.get("effect")))
                for t in _taints(node) if _taint_matches(t, condition)]
    labels = _labels(node)
    key = condition["key"]
    if key in labels and (condition.get("value") is None or labels[key] == condition["value"]):
        return [_mark(node, "label", "label %s=%s" % (key, labels[key]), ("metadata", "labels", key), labels[key])]
    return []


def _taint_matches(taint, condition):
    if taint.get("key") != condition["key"]:
        return False
    if condition.get("value") is not None and (taint.get("value") or "") != condition["value"]:
        return False
    return not condition.get("effect") or taint.get("effect") == condition["effect"]


def _nvsentinel_marks(node, condition):
    labels, annotations = _labels(node), _annotations(node)
    prefix = condition.get("prefix", NVSENTINEL_LABEL_PREFIX)
    state = labels.get(NVSENTINEL_STATE_LABEL)
    wanted = condition.get("value")
    if wanted:
        if state == wanted:
            return [_mark(node, "nvsentinel", "NVSentinel state %s" % state,
                          ("metadata", "labels", NVSENTINEL_STATE_LABEL), state)]
        return []
    found = []
    cordon_by = prefix + CORDON_BY
    if labels.get(cordon_by) == NVSENTINEL_CORDONER:
        reason = labels.get(prefix + CORDON_REASON)
        found.append(_mark(node, "nvsentinel", "cordoned by NVSentinel%s" % (" (%s)" % reason if reason else ""),
                           ("metadata", "labels", cordon_by), NVSENTINEL_CORDONER))
    if state:
        found.append(_mark(node, "nvsentinel", "NVSentinel state %s" % state,
                           ("metadata", "labels", NVSENTINEL_STATE_LABEL), state))
    if annotations.get(QUARANTINE_EVENT_ANNOTATION):
        found.append(_mark(node, "nvsentinel", "NVSentinel quarantine health event recorded",
                           ("metadata", "annotations", QUARANTINE_EVENT_ANNOTATION),
                           _summarise_event(annotations[QUARANTINE_EVENT_ANNOTATION])))
    return found


def _mark(node, kind, detail, path, value):
    return {"kind": kind, "detail": detail, "field": field_name(path), "value": value,
            "set_by": who_set(node, path)}


def _summarise_event(text):
    """The quarantine event annotation's check names, or the raw text when it is not JSON."""
    parsed = _json(text)
    events = parsed if isinstance(parsed, list) else [parsed] if isinstance(parsed, dict) else None
    if not events:
        return text if len(text) <= 200 else text[:197] + "..."
    names = []
    for event in events:
        if isinstance(event, dict):
            name = event.get("checkName") or event.get("CheckName")
            if name and name not in names:
                names.append(name)
    return ", ".join(names) if names else "%d event(s)" % len(events)


# --- who set it ---------------------------------------------------------------------------------

def field_name(path):
    """A field path tuple as text: spec.unschedulable, metadata.labels['x/y'], spec.taints[key=..]."""
    text = ""
    for part in path:
        if isinstance(part, dict):
            text += "[%s]" % ",".join("%s=%s" % (k, part[k]) for k in sorted(part) if part[k] is not None)
        elif text.endswith(("labels", "annotations")):
            text += "['%s']" % part
        else:
            text += ("." if text else "") + part
    return text


def who_set(node, path):
    """Who last wrote the field at path, from metadata.managedFields; None when no entry owns it.

    path is a tuple of field names, with a dict for an element of a keyed list (a taint is keyed by
    key and effect). Node taints are an atomic list on current API servers: then the owner of the
    whole list is returned. Returns ``{manager, operation, time, subresource}`` of the newest
    owning entry (a field applied by several managers is co-owned).
    """
    owners = []
    for entry in node.get("metadata", {}).get("managedFields") or []:
        fields = entry.get("fieldsV1")
        if isinstance(fields, dict) and _owns(fields, path):
            owners.append(entry)
    if not owners:
        return None
    newest = max(owners, key=lambda e: e.get("time") or "")
    return {"manager": newest.get("manager"), "operation": newest.get("operation"),
            "time": newest.get("time"), "subresource": newest.get("subresource")}


def _owns(fields, path):
    node = fields
    for index, part in enumerate(path):
        if isinstance(part, dict):
            child = _keyed_child(node, part)
            if child is None:
                # An atomic list: whoever owns the list owns each element. The caller got here
                # through the list's own entry, so it is owned.
                return not any(k.startswith(("k:", "v:", "i:")) for k in node)
            node = child
            continue
        key = "f:" + part
        if key not in node:
            return False
        node = node[key]
        if not isinstance(node, dict):
            return index == len(path) - 1
    return True


def _keyed_child(fields, wanted):
    for name, child in fields.items():
        if not name.startswith("k:"):
            continue
        key = _json(name[2:])
        if isinstance(key, dict) and all(key.get(k) == v for k, v in wanted.items() if v is not None):
            return child
    return None


# --- summary ------------------------------------------------------------------------------------

def marks(node, nvsentinel_prefix=NVSENTINEL_LABEL_PREFIX):
    """The node's quarantine-relevant state, for reports.

    ``{name, unschedulable, taints, labels, annotations, conditions, nvsentinel, aws}``: labels and
    annotations only with the known prefixes (NVSentinel's, AWS's) and NVSentinel's own annotation
    keys; conditions Ready, the non-standard ones (NVSentinel's, node-problem-detector's) and any
    standard pressure condition that is not False; nvsentinel and aws are parsed summaries (empty
    dicts when the node carries none of their marks).
    """
    labels, annotations = _labels(node), _annotations(node)
    prefixes = _known_prefixes(nvsentinel_prefix)
    return {
        "name": node.get("metadata", {}).get("name"),
        "unschedulable": _spec(node).get("unschedulable") is True,
        "taints": [dict((k, t[k]) for k in ("key", "value", "effect", "timeAdded") if t.get(k) is not None)
                   for t in _taints(node)],
        "labels": dict((k, v) for k, v in labels.items() if k.startswith(prefixes)),
        "annotations": dict((k, v) for k, v in annotations.items()
                            if k.startswith(prefixes) or k in NVSENTINEL_ANNOTATIONS),
        "conditions": _conditions_of_interest(node),
        "nvsentinel": nvsentinel_summary(node, nvsentinel_prefix),
        "aws": aws_summary(node),
    }


def _known_prefixes(nvsentinel_prefix):
    return tuple(p for p in (nvsentinel_prefix, NVSENTINEL_LABEL_PREFIX, NVSENTINEL_STATE_PREFIX, AWS_PREFIX) if p)


def nvsentinel_summary(node, prefix=NVSENTINEL_LABEL_PREFIX):
    """NVSentinel's marks, parsed; only the keys the node carries."""
    labels, annotations = _labels(node), _annotations(node)
    summary = {}
    for name in NVSENTINEL_CORDON_LABELS + NVSENTINEL_UNCORDON_LABELS:
        if prefix + name in labels:
            summary[name.replace("-", "_")] = labels[prefix + name]
    if NVSENTINEL_STATE_LABEL in labels:
        summary["state"] = labels[NVSENTINEL_STATE_LABEL]
    if QUARANTINE_IS_CORDONED_ANNOTATION in annotations:
        summary["is_cordoned"] = annotations[QUARANTINE_IS_CORDONED_ANNOTATION] == NVSENTINEL_TRUE
    if QUARANTINE_APPLIED_TAINTS_ANNOTATION in annotations:
        summary["applied_taints"] = _json(annotations[QUARANTINE_APPLIED_TAINTS_ANNOTATION],
                                          annotations[QUARANTINE_APPLIED_TAINTS_ANNOTATION])
    if QUARANTINE_EVENT_ANNOTATION in annotations:
        summary["health_event"] = _summarise_event(annotations[QUARANTINE_EVENT_ANNOTATION])
    if annotations.get(UNCORDONED_MANUALLY_ANNOTATION) == NVSENTINEL_TRUE:
        summary["uncordoned_manually"] = True
    return summary


def aws_summary(node):
    """The AWS health-check suite's marks; only the keys the node carries."""
    labels, annotations = _labels(node), _annotations(node)
    summary = {}
    for label in (AWS_STATUS_LABEL, AWS_SEVERITY_LABEL, AWS_LAST_CHECK_LABEL, AWS_MODE_LABEL):
        if label in labels:
            summary[label[len(AWS_PREFIX):].replace("-", "_")] = labels[label]
    taints = [_taint_text(t["key"], t.get("value"), t.get("effect")) for t in _taints(node)
              if t.get("key", "").startswith(AWS_PREFIX)]
    if taints:
        summary["taints"] = taints
    if AWS_QUARANTINE_RESULT_ANNOTATION in annotations:
        summary["quarantine_result"] = _json(annotations[AWS_QUARANTINE_RESULT_ANNOTATION],
                                             annotations[AWS_QUARANTINE_RESULT_ANNOTATION])
    return summary


def _conditions_of_interest(node):
    found = []
    for c in node.get("status", {}).get("conditions") or []:
        kind = c.get("type")
        if kind in STANDARD_CONDITIONS and c.get("status") == "False":
            continue
        found.append(dict((k, c[k]) for k in ("type", "status", "reason", "message", "lastTransitionTime")
                          if c.get(k) is not None))
    return found


def brief(summary):
    """One line for a marks() summary, for failure messages."""
    parts = ["unschedulable" if summary["unschedulable"] else "schedulable"]
    parts.append("taints: %s" % (", ".join(_taint_text(t["key"], t.get("value"), t.get("effect"))
                                           for t in summary["taints"]) or "none"))
    parts.append("labels: %s" % (", ".join("%s=%s" % kv for kv in sorted(summary["labels"].items())) or "none"))
    annotations = sorted(summary["annotations"])
    parts.append("annotations: %s" % (", ".join(annotations) or "none"))
    unusual = ["%s=%s" % (c["type"], c["status"]) for c in summary["conditions"]
               if not (c["type"] == "Ready" and c.get("status") == "True")]
    if unusual:
        parts.append("conditions: %s" % ", ".join(unusual))
    return "; ".join(parts)


# --- small helpers ------------------------------------------------------------------------------

def _spec(node):
    return node.get("spec") or {}


def _labels(node):
    return node.get("metadata", {}).get("labels") or {}


def _annotations(node):
    return node.get("metadata", {}).get("annotations") or {}


def _taints(node):
    return [t for t in _spec(node).get("taints") or [] if isinstance(t, dict) and t.get("key")]


def _json(text, default=None):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default
