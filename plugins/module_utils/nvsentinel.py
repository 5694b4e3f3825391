# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA NVSentinel as the detector of a drill: what the drill reads of it, as pure functions.

- Which NVSentinel runs: its version from a workload's image tag, and the preflight findings
  (a release before v1.14.0; the fault agent's record form that NVSentinel cannot see).
- What it wrote: the node conditions and Kubernetes Events of platform-connectors, parsed.
- Whether that is what the catalog expects (xid_catalog.nvsentinel_events), entry by entry.

The formats are platform-connectors' (pkg/connectors/kubernetes/process_node_events.go, in the
snapshot of shared/third_party/nvsentinel; docs/nvsentinel.md): a condition of the check's name,
status True, reason ``<check>IsNotHealthy``, whose message holds one entry per unhealthy event,
each ``ErrorCode:<code> <TYPE>:<value> ... <event message> Recommended Action=<ACTION>;``; a
non-fatal event is a Kubernetes Event in namespace ``default`` on the Node, with the same reason
and an entry of the same form as its message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import agents, xid_catalog

# The release from which syslog-health-monitor matches kernel records on _TRANSPORT=kernel
# (2026-07-13); earlier ones filtered at times on SYSLOG_FACILITY=0, which no record user space
# writes to /dev/kmsg carries, so injected records could go unseen.
MIN_VERSION = (1, 14, 0)
MIN_VERSION_TEXT = "v1.14.0"
MONITOR_COMPONENT = xid_catalog.NVSENTINEL_AGENT  # the image name of the component the drill needs
EVENT_NAMESPACE = "default"                        # where platform-connectors writes its Events
NO_HEALTH_FAILURES = "No Health Failures"
UNHEALTHY_SUFFIX, HEALTHY_SUFFIX = "IsNotHealthy", "IsHealthy"
TRUNCATED = "..."

_VERSION_TAG = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+.].*)?")
_ENTITY = re.compile(r"([A-Z][A-Z0-9_]*):(\S+)")
_ACTION_MARKER = "Recommended Action="


class NVSentinelError(ValueError):
    """A setting or an object that cannot be used with NVSentinel as it is."""


# --- which NVSentinel -----------------------------------------------------------------------------

def image_version(image):
    """``{image, repository, tag, version}`` of a container image reference.

    version is (major, minor, patch) when the tag is a release (``v1.19.0``, ``1.19.0-rc.1``),
    None for any other tag (``main``, a commit) or an image pinned by digest only.
    """
    if not isinstance(image, str) or not image:
        raise NVSentinelError("image must be a non-empty string, got %r" % (image,))
    name = image.split("@", 1)[0]
    repository, tag = name, None
    if ":" in name.rsplit("/", 1)[-1]:
        repository, tag = name.rsplit(":", 1)
    match = _VERSION_TAG.fullmatch(tag or "")
    return {"image": image, "repository": repository, "tag": tag,
            "version": tuple(int(part) for part in match.groups()) if match else None}


def workload_version(obj, component=MONITOR_COMPONENT):
    """The image version of NVSentinel's ``component`` in a Deployment or DaemonSet (a dict as the
    API returns it): the first container whose image repository ends with ``/<component>``.

    Raises NVSentinelError when no container runs that component.
    """
    spec = (((obj or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        info = image_version(container.get("image") or "-")
        if info["repository"].rsplit("/", 1)[-1] == component:
            info["container"] = container.get("name")
            return info
    meta = (obj or {}).get("metadata") or {}
    raise NVSentinelError("%s %s/%s runs no %s container" % (
        (obj or {}).get("kind", "workload"), meta.get("namespace"), meta.get("name"), component))


def version_findings(info):
    """Preflight warnings for a workload_version() result: [] when the version is v1.14.0 or newer."""
    if info["version"] is None:
        return ["cannot tell NVSentinel's version from the image %s (tag %s): releases before %s may not see "
                "injected kernel records" % (info["image"], info["tag"] or "none", MIN_VERSION_TEXT)]
    if info["version"] < MIN_VERSION:
        return ["NVSentinel %s (%s) is older than %s: before %s syslog-health-monitor filtered kernel records "
                "at times on SYSLOG_FACILITY=0, which no record written to /dev/kmsg from user space carries, so "
                "it may not see injected XIDs; upgrade NVSentinel" % (
                    ".".join(map(str, info["version"])), info["image"], MIN_VERSION_TEXT, MIN_VERSION_TEXT)]
    return []


def check_record_form(record_form, node=None):
    """Refuse a fault-agent record form NVSentinel cannot see; returns None when it can.

    NVSentinel reads the journal's MESSAGE. journald stores a user-space /dev/kmsg record's leading
    ``ident:`` as SYSLOG_IDENTIFIER, so a record written as the driver prints it (form dmesg) is
    stored as ``Xid (PCI:...)`` without the ``NVRM:`` NVSentinel's patterns start with. Decided
    by the catalog's own model: the XID 79 records written in the form give no NVSentinel event.
    """
    records = xid_catalog.render_xid_lines(79, "0000:75:00.0")
    written = [xid_catalog.kmsg_text(r) if record_form == "journald" else r for r in records]
    if record_form not in ("journald", "dmesg"):
        raise NVSentinelError("unknown record form %r: journald or dmesg" % (record_form,))
    if xid_catalog.nvsentinel_events([xid_catalog.journal_message(text)[1] for text in written]):
        return None
    raise NVSentinelError(
        "the fault agent%s writes records in form %s: journald stores a user-space kernel record's leading "
        "'NVRM:' as SYSLOG_IDENTIFIER, so the journal's MESSAGE starts 'Xid (PCI:...' and NVSentinel, which "
        "matches 'NVRM: Xid' in MESSAGE, sees none of the injected records. Deploy the agent with "
        "fault_injector_agent_record_form: journald (the default)" % (" on " + node if node else "", record_form))


def gpu_metadata(gpus, driver_version="", nvswitch_ports=()):
    """The gpu_metadata.json NVSentinel's metadata-collector writes for these GPUs, as far as
    NVSentinel's syslog monitor reads it (xid_catalog.nvsentinel_events).

    gpus: the fault agent's inventory entries ``{index, pci, uuid}`` (a GPU whose UUID the agent
    could not read is left out). nvswitch_ports: the NVSwitch ports each GPU's NVLinks reach,
    ``{gpu: index, switch_pci, port}``: an SXid on a port not listed stalls NVSentinel's monitor.
    driver_version: the node's driver ("" when unknown).
    """
    out = []
    gpus = [gpu for gpu in gpus if gpu.get("uuid")]
    for gpu in gpus:
        links = [{"link_id": number, "remote_pci_address": port["switch_pci"], "remote_link_id": int(port["port"])}
                 for number, port in enumerate(p for p in nvswitch_ports if p["gpu"] == gpu["index"])]
        out.append({"gpu_id": gpu["index"], "uuid": gpu["uuid"], "pci_address": gpu["pci"], "nvlinks": links})
    unknown = set(port["gpu"] for port in nvswitch_ports) - set(gpu["index"] for gpu in gpus)
    if unknown:
        raise NVSentinelError("NVSwitch ports name GPU(s) %s, which the node does not have" % sorted(unknown))
    return {"driver_version": driver_version or "", "gpus": out}


def expectation(records, metadata=None):
    """(the health events the catalog expects NVSentinel to publish for records exactly as the fault
    agent wrote them to /dev/kmsg, the records that would stall its syslog monitor); ValueError on
    records the catalog cannot read."""
    messages = [xid_catalog.journal_message(record)[1] for record in records]
    return xid_catalog.nvsentinel_events(messages, metadata), xid_catalog.nvsentinel_stalls(messages, metadata)


# --- what NVSentinel wrote ------------------------------------------------------------------------

def parse_message(message):
    """The entries of a condition's or Event's message, each
    ``{error_codes, entities, action, truncated, text}``.

    entities is a list of [TYPE, value] in message order (PCI, GPU_UUID, ...); action None when
    truncation cut it off. "No Health Failures" and the truncation marker are not entries.
    """
    entries = []
    for part in (message or "").split(";"):
        if not part.strip() or part.strip() == TRUNCATED or part.strip().lower() == NO_HEALTH_FAILURES.lower():
            continue
        entries.append(_entry(part))
    return entries


def _entry(text):
    action = None
    head = text
    at = text.rfind(_ACTION_MARKER)
    if at >= 0:
        action = text[at + len(_ACTION_MARKER):].strip() or None
        head = text[:at]
    codes, entities = [], []
    tokens = head.split()
    for index, token in enumerate(tokens):
        if token.startswith("ErrorCode:"):
            codes.append(token[len("ErrorCode:"):])
            continue
        match = _ENTITY.fullmatch(token)
        if match is None:
            tokens = tokens[index:]
            break
        entities.append([match.group(1), match.group(2)])
    else:
        tokens = []
    return {"error_codes": codes, "entities": entities, "action": action,
            "truncated": action is None or any(token.endswith(TRUNCATED) for token in tokens), "text": " ".join(tokens)}


def parse_condition(condition):
    """A node condition as ``{check, status, reason, healthy, entries}`` (a dict as the API returns it)."""
    return {"check": condition.get("type"), "status": condition.get("status"), "reason": condition.get("reason"),
            "healthy": condition.get("status") != "True", "entries": parse_message(condition.get("message"))}


def parse_event(event):
    """A Kubernetes Event of platform-connectors as ``{check, reason, healthy, node, entries}``."""
    reason = event.get("reason") or ""
    check = reason[:-len(UNHEALTHY_SUFFIX)] if reason.endswith(UNHEALTHY_SUFFIX) else (
        reason[:-len(HEALTHY_SUFFIX)] if reason.endswith(HEALTHY_SUFFIX) else None)
    involved = event.get("involvedObject") or {}
    return {"check": check, "reason": reason, "healthy": reason.endswith(HEALTHY_SUFFIX),
            "node": involved.get("name") if involved.get("kind") == "Node" else None,
            "entries": parse_message(event.get("message"))}


# --- does it match the catalog ----------------------------------------------------------------------

def _entity(entry, kind):
    for name, value in entry["entities"]:
        if name == kind:
            return value
    return None


def _same_fault(expected, entry):
    return expected["error_code"] in entry["error_codes"] and _entity(entry, "PCI") == expected["pci"]


def observe(expected, conditions, events, node=None, baseline=None):
    """Compare the catalog's expected events with what platform-connectors wrote.

    expected: xid_catalog.nvsentinel_events(). conditions: the node's status.conditions; events:
    Kubernetes Events (dicts as the API returns them; others' are ignored when node is given).
    baseline: the node's conditions before the injection: their entries do not count.

    Returns ``{rows, extra, mismatches}``: one row per expected event ``{expected, signal,
    observed, problems, match}`` (an unhealthy fatal event is looked for in the check's
    condition, a non-fatal one among the Events, a healthy one must leave no unhealthy entry of
    its code), extra: the entries no expected event accounts for, mismatches: how many rows do
    not match plus the extra entries.
    """
    before = set()
    for condition in baseline or []:
        parsed = parse_condition(condition)
        before.update((parsed["check"], e["text"], tuple(e["error_codes"])) for e in parsed["entries"])
    found = []  # (signal, check, healthy-holder, entry)
    for condition in conditions or []:
        parsed = parse_condition(condition)
        for entry in parsed["entries"]:
            if (parsed["check"], entry["text"], tuple(entry["error_codes"])) not in before:
                found.append({"signal": "condition", "check": parsed["check"], "status": parsed["status"],
                              "reason": parsed["reason"], "entry": entry})
    for event in events or []:
        parsed = parse_event(event)
        if node is not None and parsed["node"] != node:
            continue
        for entry in parsed["entries"]:
            found.append({"signal": "event", "check": parsed["check"], "status": None, "reason": parsed["reason"],
                          "entry": entry})
    rows, used = [], set()
    for want in expected:
        rows.append(_row(want, found, used))
    extra = [item for index, item in enumerate(found) if index not in used]
    return {"rows": rows, "extra": extra,
            "mismatches": sum(1 for row in rows if not row["match"]) + len(extra)}


def _row(want, found, used):
    candidates = [index for index, item in enumerate(found)
                  if index not in used and item["check"] == want["check"] and _same_fault(want, item["entry"])]
    if want["healthy"]:
        # A cancellation leaves no unhealthy entry of the cancelled code on that GPU.
        problems = ["an unhealthy %s entry for code %s is still there" % (want["check"], want["error_code"])] \
            if candidates else []
        return {"expected": want, "signal": want["signal"], "observed": None, "problems": problems,
                "match": not problems}
    same_signal = [index for index in candidates if found[index]["signal"] == want["signal"]]
    pick = (same_signal or candidates or [None])[0]
    if pick is None:
        return {"expected": want, "signal": None, "observed": None, "match": False,
                "problems": ["no %s with ErrorCode %s on PCI %s" % (
                    _where(want), want["error_code"], want["pci"])]}
    used.add(pick)
    item = found[pick]
    entry = item["entry"]
    problems = []
    if item["signal"] != want["signal"]:
        problems.append("found as %s, expected as %s" % (_ARTICLE[item["signal"]], _ARTICLE[want["signal"]]))
    if item["signal"] == "condition" and (item["status"] != "True" or item["reason"] != want["check"] + UNHEALTHY_SUFFIX):
        problems.append("condition %s is %s (%s), expected True (%s%s)" % (
            want["check"], item["status"], item["reason"], want["check"], UNHEALTHY_SUFFIX))
    if entry["action"] != want["action"]:
        problems.append("Recommended Action %s, expected %s" % (entry["action"], want["action"]))
    if _entity(entry, "GPU_UUID") != want["gpu_uuid"]:
        problems.append("GPU_UUID %s, expected %s" % (_entity(entry, "GPU_UUID"), want["gpu_uuid"]))
    return {"expected": want, "signal": item["signal"], "observed": entry, "problems": problems, "match": not problems}


_ARTICLE = {"condition": "a node condition", "event": "a Kubernetes Event"}


def _where(want):
    if want["signal"] == "condition":
        return "condition %s entry" % want["check"]
    return "Event %s%s" % (want["check"], UNHEALTHY_SUFFIX)


def restore_conditions(current, baseline, checks=xid_catalog.NVSENTINEL_CHECKS):
    """(the node's conditions with those of NVSentinel's checks as in baseline, the types that change).

    current, baseline: status.conditions lists. A check condition absent from baseline is removed;
    every other condition is kept as it is now.
    """
    before = dict((c.get("type"), c) for c in baseline or [] if c.get("type") in checks)
    now = dict((c.get("type"), c) for c in current or [] if c.get("type") in checks)
    changed = sorted(t for t in set(before) | set(now) if _condition_state(before.get(t)) != _condition_state(now.get(t)))
    out = []
    for condition in current or []:
        kind = condition.get("type")
        if kind not in now:
            out.append(condition)          # not NVSentinel's: as it is
        elif kind in before:
            out.append(before[kind])       # NVSentinel's, back to the baseline
    out += [before[kind] for kind in sorted(before) if kind not in now]
    return out, changed


def _condition_state(condition):
    return None if condition is None else (condition.get("status"), condition.get("reason"), condition.get("message"))


def platform_connectors_events(events, node, since, checks=xid_catalog.NVSENTINEL_CHECKS):
    """The Events platform-connectors wrote for the node's checks that last happened at since or later."""
    reasons = set(check + suffix for check in checks for suffix in (UNHEALTHY_SUFFIX, HEALTHY_SUFFIX))
    return [event for event in recent_events(events, since) if event.get("reason") in reasons
            and (event.get("involvedObject") or {}).get("kind") == "Node"
            and (event.get("involvedObject") or {}).get("name") == node]


def complete(seen):
    """True when every expected event of an observe() result has been found (matching or not)."""
    return all(row["observed"] is not None or row["expected"]["healthy"] for row in seen["rows"])


def parse_time(text):
    """Seconds since the epoch of an RFC 3339 time as the API server writes it; NVSentinelError otherwise."""
    moment = agents.parse_time(text) if isinstance(text, str) else None
    if moment is None:
        raise NVSentinelError("not an RFC 3339 time: %r" % (text,))
    return moment.timestamp()


def event_time(event):
    """When a Kubernetes Event last happened (seconds since the epoch), or None."""
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if event.get(key):
            return parse_time(event[key])
    created = (event.get("metadata") or {}).get("creationTimestamp")
    return parse_time(created) if created else None


def recent_events(events, since):
    """The Events not older than since (seconds since the epoch; Event times have whole seconds)."""
    floor = int(since) if since is not None else None
    return [event for event in events if floor is None or (event_time(event) or time.time()) >= floor]


def findings(seen):
    """(the expected events found, one sentence per difference) of an observe() result. Each found is
    ``{check, signal, error_codes, action, detail}``, detail ``SysLogsXIDError condition ErrorCode 79
    RESTART_BM``; a difference ``SysLogsXIDError condition 79 RESTART_BM: Recommended Action ...``."""
    found, problems = [], []
    for row in seen["rows"]:
        if row["observed"] is not None:
            entry = row["observed"]
            found.append({"check": row["expected"]["check"], "signal": row["signal"], "error_codes": entry["error_codes"],
                          "action": entry["action"], "detail": "%s %s ErrorCode %s %s" % (
                              row["expected"]["check"], row["signal"], ",".join(entry["error_codes"]), entry["action"])})
        problems += ["%s: %s" % (describe(row["expected"]), problem) for problem in row["problems"]]
    problems += ["also %s %s ErrorCode %s %s" % (item["check"], item["signal"], ",".join(item["entry"]["error_codes"]),
                                                 item["entry"]["action"]) for item in seen["extra"]]
    return found, problems


def describe(expected):
    """One line for an expected event: ``SysLogsXIDError condition 79 RESTART_BM``."""
    if expected["healthy"]:
        return "%s clears %s" % (expected["check"], expected["error_code"])
    return "%s %s %s %s" % (expected["check"], expected["signal"], expected["error_code"], expected["action"])
