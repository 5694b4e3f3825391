# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is the cluster as a drill found it? The current state of everything in a drill's ledger, compared
with what the ledger recorded before the drill changed it.

After its cleanup a drill checks this instead of assuming it; ``cleanup.yml`` checks it for any
drill whose ledger is there (``fault_cleanup_verify_only``). What is compared, per ledger entry:

- ``node``: the marks the cleanup restores (node_marks_restore's default scope: the drills' and
  the detectors' labels, annotations and taints, and the cordon), and the conditions (the
  kubelet's and the detectors': compared, never restored): Ready's status, and for the others
  whether they report a problem (True). A node that now carries another
  drill's label, or is claimed by another drill, is in that drill's hands: its differences say so;
- ``shim_patch``: the workload still exists, carries no shim record, and its pod templates hash to
  what the ledger recorded before the shim went in (:func:`workload_state`);
- ``faults``: no GPUFault of the drill is left;
- ``object``: the object the drill created is gone;
- ``nvsentinel``: no remediation object fault-remediation made for the node since the drill's
  faults, and no NVSentinel Event about the node since then, is left.

Pure functions; the module ``drill_ledger_info`` (option ``verify``) reads what :func:`reads` asks
for and calls :func:`compare`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_claims, drill_ledger
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import node_marks, node_restore, shim_patch
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import nvsentinel, nvsentinel_stages

# The marks cleanup restores: node_marks_restore's default scope.
SCOPE = node_restore.make_scope(keys=node_marks.NVSENTINEL_ANNOTATIONS)
NODE_CHECKED = "marks of the drills and detectors, cordon, conditions"
READY = "Ready"


# --- what is recorded of a workload ---------------------------------------------------------------

def workload_state(obj, kind, pod_template_path=None):
    """What a ledger records of a workload before the shim goes in, and what is compared after:
    whether it exists, whether it carries the shim's record, and a hash of its pod templates."""
    if obj is None:
        return {"exists": False}
    locations = shim_patch.template_locations(obj, kind, pod_template_path)
    templates = [shim_patch.get_path(obj, loc["path"]) for loc in locations]
    text = json.dumps(templates, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {"exists": True, "templates_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "shim": shim_patch.ANNOTATION in annotations}


# --- what to read -----------------------------------------------------------------------------------

def reads(ledger):
    """What the comparison needs from the cluster: {nodes: [name], workloads: [entry], faults:
    [drill], objects: [entry]}, in the ledger's order."""
    entries = ledger.get("entries") or []
    return {
        "nodes": [e["node"] for e in entries if e["type"] == "node"],
        "workloads": [e for e in entries if e["type"] == "shim_patch"],
        "faults": [e["drill"] for e in entries if e["type"] == "faults"],
        "objects": [e for e in entries if e["type"] == "object"],
        "nvsentinel": [e for e in entries if e["type"] == "nvsentinel"],
    }


def nvsentinel_left(entry, objects, events):
    """What NVSentinel made about an nvsentinel entry's node since its ``since`` and is still there:
    ``{objects: [Kind/name], events: [name]}``. objects: remediation objects of the entry's
    resources; events: the Events of its namespace ``default``."""
    since = nvsentinel.parse_time(entry["since"]) if entry.get("since") else None
    made = nvsentinel_stages.remediation_objects(objects, entry["node"], since)
    reported = nvsentinel_stages.nvsentinel_events(events, entry["node"], since)
    return {"objects": sorted("%s/%s" % (o.get("kind"), o["metadata"]["name"]) for o in made),
            "events": sorted(e["metadata"]["name"] for e in reported)}


# --- the comparison ---------------------------------------------------------------------------------

def compare(ledger, observed, claims=()):
    """{checked: [what was compared, in words], differences: [{object, field, before, now, text}]}.

    observed: {nodes: {name: node or None}, workloads: {identity: object or None}, faults: {drill:
    [names left]}, objects: {identity: object or None}, nvsentinel: {node: nvsentinel_left()}}
    (identity: drill_ledger.identity of the entry); claims: every claim in the namespace
    (drill_claims.parse), to tell whose hands a node is in now.
    """
    drill = ledger.get("drill")
    claimed = dict((c["target"]["name"], c["drill"]) for c in claims
                   if isinstance(c.get("target"), dict) and c["target"].get("type") == "node")
    checked, differences = [], []
    for entry in ledger.get("entries") or []:
        kind = entry["type"]
        if kind == "node":
            checked.append("node %s (%s)" % (entry["node"], NODE_CHECKED))
            differences += node_differences(entry["node"], entry.get("before"), observed["nodes"].get(entry["node"]),
                                            drill, claimed.get(entry["node"]))
        elif kind == "shim_patch":
            checked.append("%s (pod template, shim)" % _where(entry))
            differences += workload_differences(entry, observed["workloads"].get(drill_ledger.identity(entry)))
        elif kind == "faults":
            checked.append("the GPUFaults of drill %s" % entry["drill"])
            left = observed["faults"].get(entry["drill"]) or []
            if left:
                differences.append(difference("the GPUFaults of drill %s" % entry["drill"], "objects", [], left,
                                              "%d GPUFault(s) of drill %s are left: %s"
                                              % (len(left), entry["drill"], ", ".join(left))))
        elif kind == "nvsentinel":
            where = "NVSentinel on node %s" % entry["node"]
            checked.append("%s (its remediation objects and Events since the fault)" % where)
            left = (observed.get("nvsentinel") or {}).get(entry["node"]) or {"objects": [], "events": []}
            for field, noun in (("objects", "remediation object(s)"), ("events", "Event(s)")):
                if left[field]:
                    differences.append(difference(where, field, [], left[field], "%s: %d %s of the drill left: %s" % (
                        where, len(left[field]), noun, ", ".join(left[field]))))
        elif kind == "object":
            where = _where(entry)
            checked.append("%s (deleted)" % where)
            if observed["objects"].get(drill_ledger.identity(entry)) is not None:
                differences.append(difference(where, "exists", False, True,
                                              "%s, which the drill created, still exists" % where))
    return {"checked": checked, "differences": differences}


def difference(obj, field, before, now, text):
    return {"object": obj, "field": field, "before": before, "now": now, "text": text}


def node_differences(name, before, node, drill, claimed_by=None):
    where = "node " + name
    if node is None:
        return [difference(where, "exists", True, False, "%s no longer exists" % where)]
    if not isinstance(before, dict):
        return [difference(where, "before", None, None, "%s: the ledger holds no state before the drill" % where)]
    now = node_restore.snapshot(node)
    was, is_ = node_restore.scoped_marks(before, SCOPE), node_restore.scoped_marks(now, SCOPE)
    out = []
    for field, noun in (("labels", "label"), ("annotations", "annotation")):
        for key in sorted(set(was[field]) | set(is_[field])):
            old, new = was[field].get(key), is_[field].get(key)
            if old != new:
                out.append(difference(where, "%s['%s']" % (field, key), old, new, "%s: %s %s was %s, now %s%s" % (
                    where, noun, key, _value(old), _value(new), _by(node, ("metadata", field, key), new))))
    old_taints, new_taints = _taint_texts(was["taints"]), _taint_texts(is_["taints"])
    for text in sorted(set(new_taints) - set(old_taints)):
        out.append(difference(where, "taints", None, text, "%s: taint %s added%s" % (
            where, text, _by(node, ("spec", "taints"), text))))
    for text in sorted(set(old_taints) - set(new_taints)):
        out.append(difference(where, "taints", text, None, "%s: taint %s removed" % (where, text)))
    if was["unschedulable"] != is_["unschedulable"]:
        out.append(difference(where, "unschedulable", was["unschedulable"], is_["unschedulable"], "%s: %s%s" % (
            where, "cordoned (it was not)" if is_["unschedulable"] else "uncordoned (it was cordoned)",
            _by(node, ("spec", "unschedulable"), is_["unschedulable"] or None))))
    if "conditions" in before:
        old_c = dict((c["type"], c.get("status")) for c in before["conditions"])
        new_c = dict((c["type"], c.get("status")) for c in now["conditions"])
        for kind in sorted(set(old_c) | set(new_c)):
            old, new = old_c.get(kind), new_c.get(kind)
            if _condition_state(kind, old) != _condition_state(kind, new):
                out.append(difference(where, "conditions['%s']" % kind, old, new, "%s: condition %s was %s, now %s"
                                      % (where, kind, _value(old), _value(new))))
    holder = node_restore.foreign_drill(now, (drill_claims.NODE_DRILL_LABEL, drill)) or (
        claimed_by if claimed_by and claimed_by != drill else None)
    if out and holder:
        note = " (the node is in drill %s's hands now: left to its cleanup)" % holder
        for item in out:
            item["text"] += note
    return out


def workload_differences(entry, obj):
    where = _where(entry)
    if obj is None:
        return [difference(where, "exists", True, False, "%s no longer exists" % where)]
    before = entry.get("before") or {}
    now = workload_state(obj, entry["kind"], entry.get("pod_template_path"))
    out = []
    if now["shim"]:
        out.append(difference(where, "annotations['%s']" % shim_patch.ANNOTATION, None, "present",
                              "%s still carries the CUDA shim (annotation %s)" % (where, shim_patch.ANNOTATION)))
    if before.get("templates_sha256") and before["templates_sha256"] != now["templates_sha256"]:
        out.append(difference(where, "pod templates", before["templates_sha256"], now["templates_sha256"],
                              "%s: its pod template differs from before the drill (sha256 %s, now %s)"
                              % (where, before["templates_sha256"][:12], now["templates_sha256"][:12])))
    return out


def _where(entry):
    """A workload or object entry as Kind namespace/name."""
    return "%s %s%s" % (entry["kind"], entry["namespace"] + "/" if entry.get("namespace") else "", entry["name"])


def _condition_state(kind, status):
    """What the self-check compares of a condition: Ready's status; of any other condition only
    whether it reports a problem (True). A detector's condition that is False once the node is
    healthy again (NVSentinel keeps its SysLogsXIDError condition, False) is as good as none."""
    if kind == READY:
        return status
    return status == "True"


def _value(value):
    if value is None:
        return "absent"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + '..."'


def _taint_texts(taints):
    return ["%s%s:%s" % (t["key"], "=" + t["value"] if t.get("value") else "", t.get("effect")) for t in taints]


def _by(node, path, now):
    """' (written by <manager>)' for a mark that is there now and whose writer managedFields names."""
    if now is None:
        return ""
    who = node_marks.who_set(node, path)
    return " (written by %s)" % who["manager"] if who and who.get("manager") else ""


def summary(checked, differences):
    """One sentence for a drill's final message."""
    if not checked:
        return "Nothing to compare: the drill had recorded nothing, so it had changed nothing."
    if not differences:
        return "The cluster was put back as it was: checked %s." % "; ".join(checked)
    return "The cluster is NOT as it was, %d difference(s): %s." % (
        len(differences), "; ".join(d["text"] for d in differences))
