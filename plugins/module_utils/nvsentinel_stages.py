# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA NVSentinel's rollout stages, and what each leaves on a node, phase by phase.

Teams roll NVSentinel out in stages; a drill names the stage its cluster runs and expects exactly
that stage's marks (docs/nvsentinel.md, "Stages"; read in NVSentinel's source and observed on the
local control plane's NVSentinel):

- ``monitor``: fault-quarantine, node-drainer and fault-remediation are not deployed (the chart's
  default): platform-connectors' node conditions and Events only; no NVSentinel mark on the node.
- ``dry-run``: the three run with ``--dry-run=true`` (the chart's ``global.dryRun``).
  fault-quarantine records its decision, the annotations ``quarantineHealthEvent`` and
  ``quarantineHealthEventIsCordoned``, but neither cordons nor labels (``applyLabels`` is skipped,
  the state label with it); node-drainer evicts as a server-side dry run, so pods stay, and still
  writes its state label (the state manager is not dry-run aware): ``draining`` while pods are
  left, ``drain-succeeded`` when none are; fault-remediation creates its remediation object as a
  server-side dry run (nothing is created) and still writes ``remediating`` and
  ``remediation-succeeded``, without its ``latestFaultRemediationState`` annotation.
- ``full``: fault-quarantine cordons, labels (``cordon-by`` ... and the state ``quarantined``) and
  annotates; node-drainer evicts (``draining``, ``drain-succeeded`` or ``drain-failed``);
  fault-remediation creates the remediation object its configuration maps the health event's
  recommended action to (the chart: ``RESTART_BM``, ``RESTART_VM``, ``COMPONENT_RESET`` ->
  janitor's ``RebootNode``), annotates ``latestFaultRemediationState`` and labels
  ``remediation-succeeded``; an action it has no template for ends as ``remediation-failed``.

Only a fatal health event (the catalog's ``fatal``: any action but NONE) is quarantined by the
chart's rule sets; a drill whose XID NVSentinel reports as non-fatal expects no mark in any stage.

Handing a node back (a drill's cleanup): NVSentinel's own way for an operator to return a node it
quarantined is to uncordon it. fault-quarantine sees the uncordon of a node carrying its
``quarantineHealthEventIsCordoned`` annotation, removes its annotations and the state label, adds
``quarantinedNodeUncordonedManually`` and cancels the node's quarantining health events in its
datastore; node-drainer and fault-remediation see the cancellation and stop (fault-remediation
clears its annotation). Whatever NVSentinel had left in progress is then over, so restoring the
node's marks afterwards is final. In dry-run the node was never cordoned: the release cordons it
first (fault-quarantine takes no action on a cordon), then uncordons. Remediation objects are
owned by the node (garbage-collected only when the node is deleted): the drill deletes the ones
made for it.

Pure functions on objects as the API returns them; the modules nvsentinel_info, nvsentinel_phase
and nvsentinel_restore do the reading and writing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import node_marks, nvsentinel

STAGES = ("monitor", "dry-run", "full")
# The components that act on a node, by image name (NVSentinel's images are named after them).
FAULT_QUARANTINE, NODE_DRAINER, FAULT_REMEDIATION = "fault-quarantine", "node-drainer", "fault-remediation"
COMPONENTS = (FAULT_QUARANTINE, NODE_DRAINER, FAULT_REMEDIATION)
PHASES = ("quarantine", "drain", "remediation")
# fault-quarantine's circuit breaker (its --circuit-breaker-* flags): a ConfigMap in NVSentinel's
# namespace whose status TRIPPED stops every new quarantine until an operator resets it.
BREAKER_CONFIG_MAP = "circuit-breaker"
BREAKER_TRIPPED = "TRIPPED"
# fault-remediation's configuration (chart: ConfigMap fault-remediation, key config.toml).
REMEDIATION_CONFIG_KEY = "config.toml"
REMEDIATION_MANAGED_BY = ("app.kubernetes.io/managed-by", "nvsentinel")   # the label on its objects
# node-drainer's Events on a node (its AwaitingPodCompletion, ...), beside platform-connectors'.
NODE_DRAINER_EVENT_SOURCE = "nvsentinel-node-drainer"

_DRAINED = ("drain-succeeded", "remediating", "remediation-succeeded", "remediation-failed")
_DRAIN_DECIDED = ("draining",) + _DRAINED


class StageError(ValueError):
    """A stage or a configuration of NVSentinel that a drill cannot use as given."""


# --- which stage runs -------------------------------------------------------------------------------

def components(deployments):
    """{component: {deployment, replicas, ready, dry_run}} of fault-quarantine, node-drainer and
    fault-remediation among Deployments (dicts as the API returns them); a component without a
    Deployment is left out. dry_run: the container's ``--dry-run`` flag (Go's flag forms)."""
    found = {}
    for deployment in deployments or []:
        for component in COMPONENTS:
            try:
                info = nvsentinel.workload_version(deployment, component)
            except nvsentinel.NVSentinelError:
                continue
            spec = (deployment.get("spec") or {}).get("template", {}).get("spec") or {}
            container = next(c for c in spec.get("containers") or [] if c.get("name") == info["container"])
            status = deployment.get("status") or {}
            found[component] = {"deployment": deployment["metadata"]["name"],
                                "replicas": (deployment.get("spec") or {}).get("replicas", 1),
                                "ready": status.get("readyReplicas") or 0,
                                "dry_run": dry_run_flag(container.get("args") or [])}
    return found


def dry_run_flag(args):
    """The value of Go's boolean flag --dry-run (or -dry-run) in a container's args."""
    value = False
    for index, arg in enumerate(args):
        name, sep, text = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name != "dry-run":
            continue
        if sep:
            value = text.lower() in ("1", "t", "true")
        elif index + 1 < len(args) and args[index + 1].lower() in ("true", "false"):
            value = args[index + 1].lower() == "true"
        else:
            value = True
    return value


def deployed_stage(found):
    """The stage the components() found make, or None for a mix that is none of them."""
    running = dict((name, info) for name, info in found.items() if info["replicas"] > 0)
    if not running:
        return "monitor"
    if set(running) == set(COMPONENTS):
        flags = set(info["dry_run"] for info in running.values())
        if flags == {True}:
            return "dry-run"
        if flags == {False}:
            return "full"
    return None


def describe_components(found):
    """``fault-quarantine (dry-run), node-drainer (dry-run), fault-remediation not deployed``."""
    words = []
    for name in COMPONENTS:
        info = found.get(name)
        if info is None:
            words.append("%s not deployed" % name)
        elif info["replicas"] == 0:
            words.append("%s scaled to 0" % name)
        else:
            words.append("%s%s" % (name, " (dry-run)" if info["dry_run"] else ""))
    return ", ".join(words)


def stage_problems(wanted, found, namespace, breaker=None):
    """Why a drill expecting stage ``wanted`` cannot run against the components found ([] when it can).

    breaker: fault-quarantine's circuit-breaker ConfigMap (None when absent).
    """
    if wanted not in STAGES:
        raise StageError("stage must be one of %s, got %r" % (", ".join(STAGES), wanted))
    problems = []
    deployed = deployed_stage(found)
    if deployed != wanted:
        problems.append(
            "the drill expects NVSentinel's stage %s, but NVSentinel in namespace %s runs %s (%s): set the "
            "drill's stage to %s, or deploy NVSentinel in stage %s (%s)" % (
                wanted, namespace, describe_components(found),
                "stage " + deployed if deployed else "a mix that is none of monitor, dry-run, full",
                deployed or "the stage it runs once it is one", wanted, STAGE_VALUES[wanted]))
    for name in COMPONENTS if wanted != "monitor" else ():
        info = found.get(name)
        if info and info["replicas"] > 0 and info["ready"] < info["replicas"]:
            problems.append("%s (Deployment %s/%s) has %d of %d replica(s) ready" % (
                name, namespace, info["deployment"], info["ready"], info["replicas"]))
    status = ((breaker or {}).get("data") or {}).get("status")
    if wanted != "monitor" and status == BREAKER_TRIPPED:
        problems.append("fault-quarantine's circuit breaker is %s (ConfigMap %s/%s): it quarantines no node until "
                        "an operator resets it, so the drill would see no quarantine; reset it (its status CLOSED) "
                        "once the nodes it counted are healthy" % (BREAKER_TRIPPED, namespace, BREAKER_CONFIG_MAP))
    return problems


# The chart values that make each stage (tools/localcluster/nvsentinel.py deploys them).
_ENABLED = "global.faultQuarantine.enabled, global.nodeDrainer.enabled and global.faultRemediation.enabled"
STAGE_VALUES = {
    "monitor": "chart values %s false" % _ENABLED,
    "dry-run": "chart values %s true, global.dryRun true" % _ENABLED,
    "full": "chart values %s true, global.dryRun false" % _ENABLED,
}


# --- fault-remediation's configuration --------------------------------------------------------------

def remediation_resources(config_toml):
    """{recommended action: {api_version, kind, scope}} from fault-remediation's config.toml
    (its ``remediationActions`` tables). StageError when it is not TOML."""
    import tomllib  # Python 3.11, the collection's minimum on the controller
    try:
        config = tomllib.loads(config_toml or "")
    except tomllib.TOMLDecodeError as e:
        raise StageError("fault-remediation's %s is not TOML: %s" % (REMEDIATION_CONFIG_KEY, e))
    out = {}
    for action, table in sorted((config.get("remediationActions") or {}).items()):
        if isinstance(table, dict) and table.get("kind") and table.get("apiGroup") and table.get("version"):
            out[action] = {"api_version": "%s/%s" % (table["apiGroup"], table["version"]), "kind": table["kind"],
                           "scope": table.get("scope") or "Cluster"}
    return out


def fatal_actions(expected):
    """The recommended actions of the fatal unhealthy health events in an expectation
    (xid_catalog.nvsentinel_events), in order, once each."""
    actions = []
    for event in expected:
        if event["fatal"] and not event["healthy"] and event["action"] not in actions:
            actions.append(event["action"])
    return actions


def plan(stage, expected, resources):
    """What each phase expects of NVSentinel for the drill's health events, in a stage.

    ``{fatal, quarantine, drain, remediation, objects}``: each phase ``expect`` (a sentence),
    objects: the remediation resources fault-remediation creates in stage full (``[{api_version,
    kind}]``), remediation: the state label it ends with there.
    """
    if stage not in STAGES:
        raise StageError("stage must be one of %s, got %r" % (", ".join(STAGES), stage))
    actions = fatal_actions(expected)
    objects, unsupported = [], []
    for action in actions:
        resource = (resources or {}).get(action)
        if resource is None:
            unsupported.append(action)
        elif dict(api_version=resource["api_version"], kind=resource["kind"]) not in objects:
            objects.append(dict(api_version=resource["api_version"], kind=resource["kind"]))
    return {"stage": stage, "fatal": bool(actions), "actions": actions,
            "objects": objects if stage == "full" else [],
            "remediation_state": "remediation-failed" if unsupported else "remediation-succeeded",
            "unsupported": unsupported}


# --- a node in a phase --------------------------------------------------------------------------------

def _mark(node, kind, detail, path, value):
    return {"kind": kind, "detail": detail, "field": node_marks.field_name(path), "value": value,
            "set_by": node_marks.who_set(node, path)}


def nvsentinel_marks(node, prefix=node_marks.NVSENTINEL_LABEL_PREFIX):
    """Every mark of fault-quarantine, node-drainer and fault-remediation on a node, as
    ``{kind, detail, field, value, set_by}``; the cordon only when fault-quarantine wrote it."""
    meta = node.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    found = []
    if (node.get("spec") or {}).get("unschedulable") is True:
        who = node_marks.who_set(node, ("spec", "unschedulable"))
        if (who or {}).get("manager") == FAULT_QUARANTINE or labels.get(prefix + node_marks.CORDON_BY) == \
                node_marks.NVSENTINEL_CORDONER:
            found.append(_mark(node, "cordon", "cordoned by fault-quarantine", ("spec", "unschedulable"), True))
    for name in node_marks.NVSENTINEL_CORDON_LABELS:
        if prefix + name in labels:
            found.append(_mark(node, "label", "label %s%s=%s" % (prefix, name, labels[prefix + name]),
                               ("metadata", "labels", prefix + name), labels[prefix + name]))
    if node_marks.NVSENTINEL_STATE_LABEL in labels:
        value = labels[node_marks.NVSENTINEL_STATE_LABEL]
        found.append(_mark(node, "state", "state %s" % value, ("metadata", "labels", node_marks.NVSENTINEL_STATE_LABEL),
                           value))
    for key in (node_marks.QUARANTINE_EVENT_ANNOTATION, node_marks.QUARANTINE_IS_CORDONED_ANNOTATION,
                node_marks.REMEDIATION_STATE_ANNOTATION):
        if annotations.get(key):
            found.append(_mark(node, "annotation", "annotation %s" % key, ("metadata", "annotations", key),
                               annotations[key] if len(annotations[key]) <= 80 else annotations[key][:77] + "..."))
    return found


def remediation_objects(objects, node_name, since=None):
    """The remediation objects (dicts) fault-remediation made for a node: its label, the node in
    spec.nodeName, created at since (seconds since the epoch) or later."""
    key, value = REMEDIATION_MANAGED_BY
    out = []
    for obj in objects or []:
        meta = obj.get("metadata") or {}
        if (meta.get("labels") or {}).get(key) != value or (obj.get("spec") or {}).get("nodeName") != node_name:
            continue
        created = meta.get("creationTimestamp")
        if since is not None and created and nvsentinel.parse_time(created) < int(since):
            continue
        out.append(obj)
    return out


def phase_state(plan_, phase, node, objects=(), prefix=node_marks.NVSENTINEL_LABEL_PREFIX):
    """Where a node is in a phase of the plan: ``{done, marks, forbidden, expect, acts}``.

    done: the stage's marks for the phase are all there; marks: what of NVSentinel's the node
    carries now (and the remediation objects); forbidden: marks the stage (or a non-fatal
    expectation) rules out, each a sentence; expect: what the phase waits for, in words; acts:
    whether NVSentinel does anything in the phase (when it does not, done holds from the start).
    objects: the node's remediation objects (remediation_objects()).
    """
    state = _phase_state(plan_, phase, node, objects, prefix)
    state["acts"] = acts(plan_, phase)
    return state


def acts(plan_, phase):
    """Whether NVSentinel's components act (or record a decision) in a phase of the plan."""
    if phase not in PHASES:
        raise StageError("phase must be one of %s, got %r" % (", ".join(PHASES), phase))
    if not plan_["fatal"] or plan_["stage"] == "monitor":
        return False
    return plan_["stage"] == "full" or phase != "remediation"


def _phase_state(plan_, phase, node, objects, prefix):
    if phase not in PHASES:
        raise StageError("phase must be one of %s, got %r" % (", ".join(PHASES), phase))
    marks = nvsentinel_marks(node, prefix)
    kinds = dict((m["kind"], m) for m in marks)
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    state = (kinds.get("state") or {}).get("value")
    has_event = bool(annotations.get(node_marks.QUARANTINE_EVENT_ANNOTATION))
    made = ["%s %s" % (o.get("kind"), (o.get("metadata") or {}).get("name")) for o in objects]
    marks = marks + [{"kind": "object", "detail": text, "field": None, "value": None, "set_by": None} for text in made]
    stage, forbidden = plan_["stage"], []
    if stage == "monitor" or not plan_["fatal"]:
        why = ("in stage monitor NVSentinel only reports" if stage == "monitor"
               else "NVSentinel reports the drill's health events as non-fatal, which its rule sets do not quarantine")
        forbidden = ["%s, yet the node carries %s" % (why, m["detail"]) for m in marks]
        return {"done": True, "marks": marks, "forbidden": forbidden, "expect": "no NVSentinel mark (%s)" % why}
    if stage == "dry-run":
        forbidden += ["in stage dry-run fault-quarantine does not cordon, yet the node was cordoned by %s" % _who(
            kinds["cordon"])] if "cordon" in kinds else []
        forbidden += ["in stage dry-run fault-quarantine writes no label, yet the node carries %s" % m["detail"]
                      for m in marks if m["kind"] == "label"]
        forbidden += ["in stage dry-run fault-remediation creates nothing, yet %s exists" % text for text in made]
        if annotations.get(node_marks.REMEDIATION_STATE_ANNOTATION):
            forbidden.append("in stage dry-run fault-remediation records no remediation, yet the node carries the "
                             "annotation %s" % node_marks.REMEDIATION_STATE_ANNOTATION)
        if phase == "quarantine":
            expect = "fault-quarantine's decision recorded (annotation %s), no cordon" % (
                node_marks.QUARANTINE_EVENT_ANNOTATION)
            return {"done": has_event, "marks": marks, "forbidden": forbidden, "expect": expect}
        if phase == "drain":
            return {"done": state in _DRAIN_DECIDED, "marks": marks, "forbidden": forbidden,
                    "expect": "node-drainer's decision (state draining or drain-succeeded), its evictions dry runs"}
        return {"done": True, "marks": marks, "forbidden": forbidden,
                "expect": "fault-remediation creates nothing (no remediation object, no %s)" % (
                    node_marks.REMEDIATION_STATE_ANNOTATION)}
    # full
    if state in ("drain-failed", "remediation-failed") and not (
            phase == "remediation" and state == plan_["remediation_state"]):
        forbidden.append("NVSentinel reports state %s" % state)
    if phase == "quarantine":
        done = "cordon" in kinds and has_event and state is not None
        return {"done": done, "marks": marks, "forbidden": forbidden,
                "expect": "fault-quarantine's cordon, its labels and annotation %s" % (
                    node_marks.QUARANTINE_EVENT_ANNOTATION)}
    if phase == "drain":
        return {"done": state in _DRAINED, "marks": marks, "forbidden": forbidden,
                "expect": "node-drainer's state drain-succeeded"}
    kinds_made = set(o.get("kind") for o in objects)
    wanted = [o["kind"] for o in plan_["objects"]]
    done = state == plan_["remediation_state"] and all(kind in kinds_made for kind in wanted) and (
        not wanted or bool(annotations.get(node_marks.REMEDIATION_STATE_ANNOTATION)))
    return {"done": done, "marks": marks, "forbidden": forbidden,
            "expect": "fault-remediation's %s and state %s" % (
                " and ".join(wanted) or "no remediation object", plan_["remediation_state"])}


# The marks that tell each phase's story (the rest are another phase's).
PHASE_MARK_KINDS = {"quarantine": ("cordon", "label", "annotation"), "drain": ("state",),
                    "remediation": ("object", "state")}


def phase_detail(phase, marks):
    """The marks of a phase_state() that belong to the phase, in a line."""
    return "; ".join(m["detail"] for m in marks if m["kind"] in PHASE_MARK_KINDS[phase]
                     and not (phase == "quarantine" and m["field"] and node_marks.REMEDIATION_STATE_ANNOTATION in m["field"]))


def _who(mark):
    return (mark.get("set_by") or {}).get("manager") or "an unknown writer"


# --- handing the node back ------------------------------------------------------------------------------

def held(node):
    """Whether fault-quarantine holds the node (its quarantineHealthEventIsCordoned annotation)."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(node_marks.QUARANTINE_IS_CORDONED_ANNOTATION))


def handed_back(node):
    """fault-quarantine has seen the node returned to service by hand (its
    quarantinedNodeUncordonedManually annotation) and cancelled what NVSentinel had in progress."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return annotations.get(node_marks.UNCORDONED_MANUALLY_ANNOTATION) == node_marks.NVSENTINEL_TRUE


def release_steps(node):
    """The node patches that hand a node fault-quarantine holds back to NVSentinel's own
    return-to-service: cordon it when it is not (dry-run), then uncordon it. [] when not held."""
    if not held(node):
        return []
    steps = [] if (node.get("spec") or {}).get("unschedulable") is True else [{"spec": {"unschedulable": True}}]
    return steps + [{"spec": {"unschedulable": None}}]


def let_go(node):
    """fault-quarantine has taken the node back (its hold annotation gone) and node-drainer and
    fault-remediation have stopped (the state label gone); fault-remediation's annotation may stay."""
    meta = node.get("metadata") or {}
    return not held(node) and node_marks.NVSENTINEL_STATE_LABEL not in (meta.get("labels") or {})


def released(node):
    """fault-quarantine has taken the node back (its hold annotation gone), and node-drainer and
    fault-remediation have stopped (the state label and fault-remediation's annotation gone)."""
    meta = node.get("metadata") or {}
    return not held(node) and node_marks.NVSENTINEL_STATE_LABEL not in (meta.get("labels") or {}) and \
        node_marks.REMEDIATION_STATE_ANNOTATION not in (meta.get("annotations") or {})


def nvsentinel_events(events, node, since, checks=None):
    """NVSentinel's Events about a node that last happened at since or later: platform-connectors'
    (reasons of its checks) and node-drainer's (its source)."""
    check_events = nvsentinel.platform_connectors_events(events, node, since, **({"checks": checks} if checks else {}))
    drainer = [e for e in nvsentinel.recent_events(events, since)
               if ((e.get("source") or {}).get("component") == NODE_DRAINER_EVENT_SOURCE
                   or e.get("reportingComponent") == NODE_DRAINER_EVENT_SOURCE)
               and (e.get("involvedObject") or {}).get("kind") == "Node"
               and (e.get("involvedObject") or {}).get("name") == node]
    seen = set(id(e) for e in check_events)
    return check_events + [e for e in drainer if id(e) not in seen]
