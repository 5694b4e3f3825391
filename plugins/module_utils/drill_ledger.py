# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A drill's write-ahead ledger: what a drill is about to change, kept in the cluster so that a later,
separate run (another AWX job, after the drill's process was killed) can undo it exactly.

The ledger of drill ``<drill>`` is the ConfigMap ``gpu-drill-<drill>`` in the fault-injector
agent's namespace. Its data key ``ledger.json`` holds::

    {"version": 1, "drill": "<drill>", "created": "<RFC 3339>", "meta": {...}, "entries": [...]}

Each entry has a ``type`` and the keys that identify what it is about:

- ``node``: ``node``; the module adds ``before``, the node's state before the drill (see
  ``node_restore.snapshot``);
- ``shim_patch``: ``api_version`` (empty: cuda_shim_patch's default for the kind), ``kind``,
  ``namespace``, ``name`` (a workload given the CUDA shim); the module adds ``before``, what the
  drill's self-check compares afterwards (``drill_verify.workload_state``);
- ``faults``: ``drill`` (the GPUFault objects made for that drill id);
- ``object``: ``api_version``, ``kind``, ``namespace`` (empty for cluster-scoped objects), ``name``;
- ``nvsentinel``: ``node``, a node NVSentinel reacts to the drill's faults on; the cleanup waits
  for NVSentinel, hands the node back and deletes what it made (role fault_cleanup: ``stage``,
  ``namespace``, ``since``, ``records``, ``gpu_metadata``, ``remediation``, ``remediation_actions``);
- ``note``: ``text``.

An entry may carry more keys (what the cleanup needs to know); they are stored as given. An entry
whose identity (type and identity keys) is already recorded is not recorded again, so the first
record of a node keeps the state before the drill. Each entry gets ``seq`` (1, 2, ...) and
``recorded`` (when it was added).

Pure functions, standard library only: the module ``drill_ledger`` reads and writes the ConfigMap.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import copy
import datetime
import gzip
import json
import re

VERSION = 1
DATA_KEY = "ledger.json"
# A fleet drill's ledger holds a snapshot of every target node (a few KB each, far more with node
# feature discovery's labels), and a ConfigMap holds at most 1 MiB. Above this size the ledger is
# stored gzipped under binaryData (the same JSON, typically a twentieth of the size).
GZIP_KEY = DATA_KEY + ".gz"
INLINE_LIMIT = 256 * 1024
NAME_PREFIX = "gpu-drill-"
DEFAULT_NAMESPACE = "gpu-fault-injection"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "gpu_resilience.fault_injection"
DRILL_LABEL = "fault-injection.gpu-resilience.io/drill-ledger"
AGENT_ROLE = "gpu_resilience.fault_injection.fault_injector_agent"

ENTRY_TYPES = ("node", "shim_patch", "faults", "object", "nvsentinel", "note")
# type -> the keys that say what the entry is about; two entries with the same values are one.
IDENTITY_KEYS = {
    "node": ("node",),
    "shim_patch": ("api_version", "kind", "namespace", "name"),
    "faults": ("drill",),
    "object": ("api_version", "kind", "namespace", "name"),
    "nvsentinel": ("node",),
    "note": ("text",),
}
# Identity keys that may be empty: cluster-scoped objects have no namespace, and cuda_shim_patch
# finds the api_version of the kinds it knows itself.
OPTIONAL_IDENTITY_KEYS = {"object": ("namespace",), "shim_patch": ("api_version",)}
# Keys the ledger sets itself.
RESERVED_KEYS = ("seq", "recorded")
NODE_SNAPSHOT_KEY = "before"

# A DNS-1123 subdomain of at most 63 characters is both a valid label value and a valid part of
# the ConfigMap's name.
_DRILL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class LedgerError(ValueError):
    """A drill id, an entry or a stored ledger that cannot be used; the message says why."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- names ----------------------------------------------------------------------------------------

def validate_drill(drill, what="drill"):
    if not isinstance(drill, str) or not 1 <= len(drill) <= 63 or not _DRILL.match(drill):
        raise LedgerError("%s %r must be 1 to 63 lowercase letters, digits, '-' and '.', starting and ending with "
                          "a letter or digit (no '..', '.-' or '-.'): it is a label value and part of a name"
                          % (what, drill))
    return drill


def ledger_name(drill):
    return NAME_PREFIX + validate_drill(drill)


def selector(drill=None):
    """The label selector of the ledgers in a namespace (of one drill when given)."""
    return "%s=%s,%s" % (MANAGED_BY_LABEL, MANAGED_BY, DRILL_LABEL + ("=" + drill if drill else ""))


# --- entries --------------------------------------------------------------------------------------

def validate_entry(raw, number):
    """A requested entry, checked and normalised (identity keys as strings); LedgerError names it."""
    where = "entries[%d]" % number
    if not isinstance(raw, dict):
        raise LedgerError("%s must be a dict with a type, got %r" % (where, raw))
    kind = raw.get("type")
    if kind not in ENTRY_TYPES:
        raise LedgerError("%s: type must be one of %s, got %r" % (where, ", ".join(ENTRY_TYPES), kind))
    where = "%s (type %s)" % (where, kind)
    entry = copy.deepcopy(raw)
    for key in RESERVED_KEYS:
        if key in entry:
            raise LedgerError("%s: %s is set by the ledger, leave it out" % (where, key))
    if kind in ("node", "shim_patch") and NODE_SNAPSHOT_KEY in entry:
        raise LedgerError("%s: before is the %s's state, which the module reads itself; leave it out"
                          % (where, "node" if kind == "node" else "workload"))
    optional = OPTIONAL_IDENTITY_KEYS.get(kind, ())
    for key in IDENTITY_KEYS[kind]:
        value = entry.get(key)
        if value is None or value == "":
            if key in optional:
                entry[key] = ""
                continue
            required = [k for k in IDENTITY_KEYS[kind] if k not in optional]
            raise LedgerError("%s has no %s (it needs %s)" % (where, key, ", ".join(required)))
        if not isinstance(value, str):
            raise LedgerError("%s: %s must be a string, got %r" % (where, key, value))
    if kind in ("node", "nvsentinel") and (len(entry["node"]) > 253 or not _NODE.match(entry["node"])):
        raise LedgerError("%s: %r is not a valid Kubernetes node name" % (where, entry["node"]))
    if kind == "faults":
        validate_drill(entry["drill"], "%s: drill" % where)
    try:
        json.dumps(entry)
    except (TypeError, ValueError) as e:
        raise LedgerError("%s cannot be stored as JSON: %s" % (where, e))
    return entry


def identity(entry):
    """(type, identity values...): what makes two entries the same."""
    return (entry["type"],) + tuple(entry.get(k) or "" for k in IDENTITY_KEYS[entry["type"]])


def describe_entry(entry):
    kind = entry["type"]
    if kind == "node":
        return "node %s" % entry["node"]
    if kind == "nvsentinel":
        return "NVSentinel on node %s" % entry["node"]
    if kind == "faults":
        return "the GPUFaults of drill %s" % entry["drill"]
    if kind == "note":
        return "note %r" % entry["text"]
    where = entry["namespace"] + "/" if entry.get("namespace") else ""
    return "%s %s %s%s" % (kind, entry["kind"], where, entry["name"])


def nodes_to_snapshot(ledger, entries):
    """The nodes of node entries that the ledger does not hold yet (in order, once each)."""
    known = set(identity(e) for e in (ledger or {}).get("entries") or [])
    nodes = []
    for entry in entries:
        if entry["type"] == "node" and identity(entry) not in known and entry["node"] not in nodes:
            nodes.append(entry["node"])
    return nodes


# --- the ledger -----------------------------------------------------------------------------------

def new_ledger(drill, meta, now):
    return {"version": VERSION, "drill": validate_drill(drill), "created": now, "meta": copy.deepcopy(meta or {}),
            "entries": []}


def merge_meta(old, new):
    """old with new merged in: new keys added, differing values replaced, nested dicts merged."""
    merged = copy.deepcopy(old or {})
    for key, value in (new or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_meta(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def workloads_to_read(ledger, entries):
    """The shim_patch entries that the ledger does not hold yet (once each): their workloads' state
    before the shim goes in is recorded with them."""
    known = set(identity(e) for e in (ledger or {}).get("entries") or [])
    found = []
    for entry in entries:
        if entry["type"] == "shim_patch" and identity(entry) not in known and entry not in found:
            found.append(entry)
    return found


def update(ledger, drill, meta, entries, snapshots, now, workloads=None):
    """(the ledger after recording meta and entries, the entries added, whether it was created).

    ``ledger`` is the stored ledger (None when there is none yet); ``entries`` are validated
    entries; ``snapshots`` maps each node of a new node entry to its snapshot, ``workloads`` the
    identity of each new shim_patch entry to its workload's state (left out: none recorded). The
    ledger given is not changed.
    """
    created = ledger is None
    result = new_ledger(drill, meta, now) if created else copy.deepcopy(ledger)
    if not created and meta:
        result["meta"] = merge_meta(result.get("meta"), meta)
    known = set(identity(e) for e in result["entries"])
    seq = max([e.get("seq") or 0 for e in result["entries"]] + [0])
    added = []
    for entry in entries:
        key = identity(entry)
        if key in known:
            continue
        known.add(key)
        seq += 1
        stored = copy.deepcopy(entry)
        if entry["type"] == "node":
            if entry["node"] not in snapshots:
                raise LedgerError("no snapshot of node %s to record" % entry["node"])
            stored[NODE_SNAPSHOT_KEY] = copy.deepcopy(snapshots[entry["node"]])
        elif entry["type"] == "shim_patch" and key in (workloads or {}):
            stored[NODE_SNAPSHOT_KEY] = copy.deepcopy(workloads[key])
        stored["seq"] = seq
        stored["recorded"] = now
        result["entries"].append(stored)
        added.append(stored)
    return result, added, created


def dump(ledger):
    """The ledger as stored: sorted keys and one key a line, so the same ledger is the same text and
    ``kubectl get`` shows it readably."""
    return json.dumps(ledger, indent=1, sort_keys=True, ensure_ascii=False)


def parse(config_map):
    """The ledger a ConfigMap holds; LedgerError says what is wrong with it."""
    name = (config_map.get("metadata") or {}).get("name")
    text = (config_map.get("data") or {}).get(DATA_KEY)
    packed = (config_map.get("binaryData") or {}).get(GZIP_KEY)
    if text is None and packed is not None:
        try:
            text = gzip.decompress(base64.b64decode(packed)).decode("utf-8")
        except (ValueError, OSError, EOFError) as e:
            raise LedgerError("%s of ConfigMap %s is not gzipped base64: %s" % (GZIP_KEY, name, e))
    if text is None:
        raise LedgerError("ConfigMap %s has no %s" % (name, DATA_KEY))
    try:
        ledger = json.loads(text)
    except ValueError as e:
        raise LedgerError("%s of ConfigMap %s is not JSON: %s" % (DATA_KEY, name, e))
    if not isinstance(ledger, dict):
        raise LedgerError("%s of ConfigMap %s is not a JSON object" % (DATA_KEY, name))
    if ledger.get("version") != VERSION:
        raise LedgerError("%s of ConfigMap %s has version %r; this collection reads version %d"
                          % (DATA_KEY, name, ledger.get("version"), VERSION))
    if not isinstance(ledger.get("entries"), list) or not all(isinstance(e, dict) and e.get("type") in ENTRY_TYPES
                                                              for e in ledger["entries"]):
        raise LedgerError("%s of ConfigMap %s has no valid entries list" % (DATA_KEY, name))
    if not isinstance(ledger.get("meta", {}), dict):
        raise LedgerError("%s of ConfigMap %s has a meta that is not an object" % (DATA_KEY, name))
    return ledger


def is_ledger(config_map):
    """Whether a ConfigMap carries the ledger labels (a ConfigMap of the same name that does not is
    someone else's and is never overwritten or deleted)."""
    labels = (config_map.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and DRILL_LABEL in labels


def config_map(namespace, ledger, resource_version=None):
    """The ConfigMap that stores the ledger (with resource_version: a conditional replacement)."""
    metadata = {
        "name": ledger_name(ledger["drill"]),
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY, DRILL_LABEL: ledger["drill"]},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    text = dump(ledger)
    if len(text.encode("utf-8")) <= INLINE_LIMIT:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {DATA_KEY: text}}
    # mtime=0: the same ledger gives the same bytes, so an unchanged ledger is never rewritten.
    packed = base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "binaryData": {GZIP_KEY: packed}}


def listed(config_map_obj):
    """A stored ledger as the info state returns it: the parsed ledger with the ConfigMap's name,
    namespace and resource_version, or, when it does not parse, those with ``error`` (a cleanup
    must still see a damaged ledger)."""
    metadata = config_map_obj.get("metadata") or {}
    where = {"name": metadata.get("name"), "namespace": metadata.get("namespace"),
             "resource_version": metadata.get("resourceVersion")}
    try:
        ledger = parse(config_map_obj)
    except LedgerError as e:
        result = {"drill": (metadata.get("labels") or {}).get(DRILL_LABEL), "created": metadata.get("creationTimestamp"),
                  "error": str(e)}
        result.update(where)
        return result
    result = copy.deepcopy(ledger)
    result.update(where)
    return result


def sort_listed(ledgers):
    """Oldest first (by the ledger's created time), then by name."""
    return sorted(ledgers, key=lambda ledger: (str(ledger.get("created") or ""), ledger.get("name") or ""))
