# -*- coding: utf-8 -*-
# Copyright: contributors to gpu_resilience.fault_injection
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU health agent: watches one Kubernetes GPU node's kernel log and GPUs, and marks the node the way
the AWS GPU health-check suite does, without that suite's known defects.

Run as::

    python3 gpu_health_agent.py --node NODE --config /etc/gpu-healthcheck/config.json \\
        [--kmsg-source kmsg|journal|file] [--kmsg-path /host/dev/kmsg] [--host-root /host] \\
        [--sys-dir /host/sys] [--nvidia-proc /host/proc/driver/nvidia] \\
        [--boot-id-file /host/proc/sys/kernel/random/boot_id]

with xid_catalog.py and node_marks.py (from plugins/module_utils), kube_api.py (files/common) and
instance_profiles.json in the same directory. Python 3.8+ standard library only. It opens no
listening socket and starts no shell; the only programs it runs are journalctl (source
``journal``), nvidia-smi and fi_info, each with an argument list and a timeout.

What it does:

* follows the kernel log continuously, in a thread of its own: ``/dev/kmsg``,
  ``journalctl -k -f -o json`` or a plain file that a fault agent appends to. It starts with the
  records of the current boot that it has not counted yet (the boot scan, at most
  ``boot_scan_lines``, as the AWS suite reads the last 4000 lines): a node that boots with a bad
  GPU is found, and a restarted agent goes on from the log position it recorded on the node.
  Every NVIDIA XID and SXid record becomes a finding, classified on the AWS suite's ladder
  PASS < MONITOR < RESET < REBOOT < ISOLATE by ``xid_catalog.aws_severity`` (XID 154 by its
  recovery action; 64, 95 and 159 with the node facts nvidia-smi gives: A100, MIG, UVM in use) or
  by the config's ``xid_severity_overrides``;
* runs lightweight checks every ``interval_seconds``: GPU count, GPU state, ECC, retired pages
  (pending, double-bit, single-bit above a threshold) and row remapping, persistence mode, EFA
  devices, NVLink, GPU topology and fabric manager registration. A check whose tool is absent
  reports ``skipped`` and why;
* takes a failed sweep (the sweeper's ``<prefix>sweep-result``) and a quarantine run's failed
  parts (``<prefix>quarantine-result``) as findings;
* marks its own node (and no other) through the Kubernetes API: labels ``<prefix>status``
  (pass|warn|fail), ``<prefix>severity`` and ``<prefix>last-check`` (unless ``labels`` is off);
  annotations ``<prefix>results`` (JSON, the suite's shape and the agent's own beside it) and
  ``<prefix>agent-marks`` (JSON: which of taint, cordon and labels the agent set); the taint
  ``<prefix>unhealthy=true:NoSchedule`` at or above ``taint_min_severity`` (never below RESET;
  none when ``taint`` is off); a cordon only when ``cordon`` is set, at or above
  ``cordon_min_severity``. A record that raises the node's severity is marked at once, not at the
  next check cycle; the records of a burst that arrive within BATCH_WINDOW go into the same update.

Severity is sticky: a finding stays active, and keeps the node at its severity, until an operator
sets the annotation ``<prefix>clear-findings-before`` to an RFC 3339 time (the return-to-service
playbook does). The agent then drops the findings last seen before that time and, if the node is
healthy, removes the marks it set itself. Findings survive a restart of the agent: it reads them
back from its results annotation. The agent never removes a mark it did not set: another
controller's cordon (NVSentinel, an operator), the sweeper's ``<prefix>maintenance`` taint, anyone
else's labels. It runs no DCGM diagnostic (that is the sweeper's job, on idle nodes), and it applies
a changed config file without a restart.

Layout, top-down: pure functions (configuration, kernel log records, classification, check
results, findings, node marks), then I/O (the node through kube_api, kernel log sources, tools),
then the agent's loops and the command line.
"""

import argparse
import copy
import datetime
import json
import os
import re
import select
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import namedtuple

# xid_catalog.py, node_marks.py and kube_api.py are shipped next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xid_catalog  # noqa: E402  pylint: disable=wrong-import-position
import node_marks  # noqa: E402  pylint: disable=wrong-import-position
from kube_api import ApiError, KubeClient, MERGE_PATCH  # noqa: E402  pylint: disable=wrong-import-position

AGENT_NAME = "gpu-health-agent"
FIELD_MANAGER = AGENT_NAME          # managedFields entry of the agent's node patches
DEFAULT_CONFIG_PATH = "/etc/gpu-healthcheck/config.json"
DEFAULT_KMSG_PATH = "/host/dev/kmsg"
SOURCES = ("kmsg", "journal", "file")
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")

# Timing. The watcher marks a record that raises the node's severity BATCH_WINDOW after reading it,
# so that the rest of a burst (8 GPUs x several records) joins the same update.
BATCH_WINDOW = 0.05
UPDATE_DELAY = 1.0          # other new findings reach the results annotation within this
CLEAR_MARK_DELAY = 10.0     # after a clear, the marks follow the re-run checks, or this at the latest
FILE_POLL = 0.02            # file source without inotify: how often a quiet file is looked at again
NOTIFY_SAFETY_POLL = 1.0    # file source with inotify: a look even without an event (a missed one)
READ_TIMEOUT = 1.0          # sources return at least this often, so a stop is noticed
TOOL_TIMEOUT = 20
FACT_TIMEOUT = 5            # nvidia-smi for a node fact, read while a kernel log record waits
TOOL_KILL_WAIT = 5
MARK_RETRY = 2.0
CONFLICT_RETRIES = 5
API_TIMEOUT = 15
WATCH_SECONDS = 300
NODE_POLL_SECONDS = 10      # node re-read interval when the API refuses this agent a watch
MAX_BACKOFF = 30

# Sizes.
MAX_CONFIG_BYTES = 1 << 20
MAX_LINE = 1024             # longer kernel log lines are cut before matching (a kmsg record is shorter)
MAX_TEXT = 240              # record text kept with a finding
MAX_PENDING = 1 << 16       # file source: an unterminated line longer than this is taken as it is
KMSG_READ_SIZE = 16384      # one /dev/kmsg record per read; the kernel's longest is 8 KiB
MAX_FINDINGS = 200          # kept in memory; the mildest and oldest go first
MAX_REPORTED_FINDINGS = 40  # in the results annotation (its size stays far below the API's limit)

# ============================================================================================
# Severities and mark names
# ============================================================================================

SEVERITIES = tuple(xid_catalog.SEVERITY_ORDER)            # PASS < MONITOR < RESET < REBOOT < ISOLATE
MARKING_SEVERITIES = SEVERITIES[SEVERITIES.index("RESET"):]  # what a taint or cordon threshold may name
STATUS_OF = xid_catalog.STATUS_OF_SEVERITY
# The AWS suite warns on every SXid and classifies none; an NVLink fault that matters comes with
# its own XID (74, 144-150), which carries the severity.
SXID_SEVERITY = "MONITOR"


def mark_name(full_name):
    """A mark's name without the AWS prefix (node_marks spells them with it); the agent's prefix is configurable."""
    return full_name[len(node_marks.AWS_PREFIX):]


STATUS_LABEL = mark_name(node_marks.AWS_STATUS_LABEL)              # status
SEVERITY_LABEL = mark_name(node_marks.AWS_SEVERITY_LABEL)          # severity
LAST_CHECK_LABEL = mark_name(node_marks.AWS_LAST_CHECK_LABEL)      # last-check
RESULTS_ANNOTATION = mark_name(node_marks.AWS_RESULTS_ANNOTATION)  # results
UNHEALTHY_TAINT = mark_name(node_marks.AWS_UNHEALTHY_TAINT["key"])  # unhealthy
UNHEALTHY_VALUE = node_marks.AWS_UNHEALTHY_TAINT["value"]
UNHEALTHY_EFFECT = node_marks.AWS_UNHEALTHY_TAINT["effect"]
# The agent's own bookkeeping and the operator's clear request (not marks of the AWS suite).
AGENT_MARKS_ANNOTATION = "agent-marks"
CLEAR_ANNOTATION = "clear-findings-before"


def rank(severity):
    return SEVERITIES.index(severity)


def at_least(severity, threshold):
    return rank(severity) >= rank(threshold)


def worst(severities):
    """The worst of some severities; PASS for none."""
    return xid_catalog.max_severity(*severities)


# ============================================================================================
# Time and logging: JSON lines, findings and mark changes on stdout, problems on stderr
# ============================================================================================

def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def rfc3339(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def label_time(moment):
    """A UTC time as the AWS suite writes it into a label (no colons there): 2026-11-22T184800Z."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")


def suite_time(moment):
    """A UTC time as the AWS suite writes it into its JSON: 2026-11-22T18:48:00Z."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


RFC3339_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_rfc3339(text):
    """An aware datetime from an RFC 3339 time (fractions and offsets allowed); ValueError otherwise."""
    match = RFC3339_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError("%r is not an RFC 3339 time such as 2026-11-22T18:48:00Z" % (text,))
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    micro = int((match.group(7) or "0")[:6].ljust(6, "0"))
    offset = datetime.timedelta(0)
    if match.group(9):
        offset = datetime.timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
        if match.group(9) == "-":
            offset = -offset
    moment = datetime.datetime(year, month, day, hour, minute, second, micro, datetime.timezone(offset))
    return moment.astimezone(datetime.timezone.utc)


def log(event, stream=None, **fields):
    entry = {"time": rfc3339(now_utc()), "event": event}
    entry.update(fields)
    out = stream or sys.stdout
    out.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
    out.flush()


def warn(event, level="warning", **fields):
    log(event, stream=sys.stderr, level=level, **fields)


def clip(text, limit=MAX_TEXT):
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ============================================================================================
# Configuration: a JSON file from a ConfigMap, validated and merged over the defaults
# ============================================================================================

CHECKS = ("gpu_count", "gpu_state", "ecc", "retired_pages", "persistence_mode", "efa", "nvlink", "topology",
          "fabric_manager")
PROFILE_FIELDS = {"gpus": int, "efa": int, "nvlink": bool}
PROFILES_FILE = "instance_profiles.json"   # shipped next to this file


def builtin_profiles(directory=os.path.dirname(os.path.abspath(__file__))):
    """The AWS suite's instance profiles ({type: {gpus, efa, nvlink}}) from instance_profiles.json."""
    with open(os.path.join(directory, PROFILES_FILE), encoding="utf-8") as handle:
        profiles = json.load(handle)
    return dict((name, profile) for name, profile in profiles.items() if not name.startswith("_"))


DEFAULT_CONFIG = {
    "prefix": node_marks.AWS_PREFIX,
    "interval_seconds": 60,
    # The AWS suite's ENABLE_TAINT and ENABLE_LABEL: false leaves taints, or the status, severity
    # and last-check labels, alone (the agent takes off only those it set itself).
    "taint": True,
    "labels": True,
    "taint_min_severity": "RESET",
    "cordon": False,
    "cordon_min_severity": "REBOOT",
    "checks": dict((name, True) for name in CHECKS),
    "instance_profiles": builtin_profiles(),
    "xid_severity_overrides": {},   # validated form: {int code: severity}
    # At start, the current boot's kernel log records not counted yet, at most this many (the AWS
    # suite reads the last 4000 lines of journalctl -k); 0: only what is logged from now on.
    "boot_scan_lines": 4000,
    # Single-bit ECC retired pages above this warn (the AWS suite's MAX_RETIRED_PAGES_SBE; NVIDIA's
    # limit is 64 per GPU).
    "retired_pages_sbe_max": 60,
    # A sweep whose diagnostic Job failed marks the node at this severity (the suite: status=fail
    # and the unhealthy taint).
    "sweep_failure_severity": "RESET",
}
MIN_INTERVAL, MAX_INTERVAL = 1, 86400
MAX_PROFILE_COUNT = 1024
MAX_BOOT_SCAN_LINES = 100000
PREFIX_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/")
CODE_RE = re.compile(r"[0-9]{1,6}")


class ConfigError(ValueError):
    """A configuration that cannot be applied; the message names the offending key."""


def default_config():
    return copy.deepcopy(DEFAULT_CONFIG)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _marking_severity(key, value):
    if value not in MARKING_SEVERITIES:
        raise ConfigError("%s must be one of %s, got %r: MONITOR findings (application-level XIDs such as 13) "
                          "never taint or cordon a node" % (key, ", ".join(MARKING_SEVERITIES), value))
    return value


def validate_config(raw):
    """(config, notes): the full configuration from a parsed JSON document, defaults for what it omits.

    ``checks`` and ``instance_profiles`` are merged over the defaults entry by entry. Unknown keys are
    ignored, each with a note. Raises ConfigError naming the first invalid value.
    """
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object, got %s" % type(raw).__name__)
    config = default_config()
    notes = ["unknown key %r ignored" % key for key in sorted(raw) if key not in DEFAULT_CONFIG]
    if "prefix" in raw:
        prefix = raw["prefix"]
        if not isinstance(prefix, str) or len(prefix) > 254 or not PREFIX_RE.fullmatch(prefix):
            raise ConfigError("prefix must be a DNS subdomain followed by '/', such as %s, got %r"
                              % (node_marks.AWS_PREFIX, prefix))
        config["prefix"] = prefix
    if "interval_seconds" in raw:
        interval = raw["interval_seconds"]
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ConfigError("interval_seconds must be a number from %d to %d, got %r" % (MIN_INTERVAL, MAX_INTERVAL, interval))
        config["interval_seconds"] = interval
    for key in ("taint_min_severity", "cordon_min_severity"):
        if key in raw:
            config[key] = _marking_severity(key, raw[key])
    for key in ("cordon", "taint", "labels"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError("%s must be true or false, got %r" % (key, raw[key]))
            config[key] = raw[key]
    for key, top in (("boot_scan_lines", MAX_BOOT_SCAN_LINES), ("retired_pages_sbe_max", MAX_PROFILE_COUNT * 64)):
        if key in raw:
            if not _is_int(raw[key]) or not 0 <= raw[key] <= top:
                raise ConfigError("%s must be an integer from 0 to %d, got %r" % (key, top, raw[key]))
            config[key] = raw[key]
    if "sweep_failure_severity" in raw:
        if raw["sweep_failure_severity"] not in SEVERITIES[1:]:
            raise ConfigError("sweep_failure_severity must be one of %s, got %r"
                              % (", ".join(SEVERITIES[1:]), raw["sweep_failure_severity"]))
        config["sweep_failure_severity"] = raw["sweep_failure_severity"]
    if "checks" in raw:
        _merge_checks(config, raw["checks"], notes)
    if "instance_profiles" in raw:
        _merge_profiles(config, raw["instance_profiles"], notes)
    if "xid_severity_overrides" in raw:
        config["xid_severity_overrides"] = _overrides(raw["xid_severity_overrides"])
    return config, notes


def _merge_checks(config, checks, notes):
    if not isinstance(checks, dict):
        raise ConfigError("checks must be an object of check name -> true/false, got %r" % (checks,))
    for name, enabled in checks.items():
        if name not in CHECKS:
            notes.append("unknown check %r ignored (known: %s)" % (name, ", ".join(CHECKS)))
        elif not isinstance(enabled, bool):
            raise ConfigError("checks.%s must be true or false, got %r" % (name, enabled))
        else:
            config["checks"][name] = enabled


def _merge_profiles(config, profiles, notes):
    if not isinstance(profiles, dict):
        raise ConfigError("instance_profiles must be an object of instance type -> {gpus, efa, nvlink}, got %r"
                          % (profiles,))
    for instance_type, profile in profiles.items():
        if not instance_type or not isinstance(profile, dict):
            raise ConfigError("instance_profiles.%s must be an object such as {\"gpus\": 8, \"efa\": 32, "
                              "\"nvlink\": true}, got %r" % (instance_type, profile))
        clean = {}
        for field, value in profile.items():
            kind = PROFILE_FIELDS.get(field)
            if kind is None:
                notes.append("instance_profiles.%s: unknown field %r ignored" % (instance_type, field))
            elif kind is bool and not isinstance(value, bool):
                raise ConfigError("instance_profiles.%s.%s must be true or false, got %r" % (instance_type, field, value))
            elif kind is int and (not _is_int(value) or not 0 <= value <= MAX_PROFILE_COUNT):
                raise ConfigError("instance_profiles.%s.%s must be an integer from 0 to %d, got %r"
                                  % (instance_type, field, MAX_PROFILE_COUNT, value))
            else:
                clean[field] = value
        config["instance_profiles"][instance_type] = clean


def _overrides(overrides):
    if not isinstance(overrides, dict):
        raise ConfigError("xid_severity_overrides must be an object of \"code\" -> severity, got %r" % (overrides,))
    clean = {}
    for code, severity in overrides.items():
        if not isinstance(code, str) or not CODE_RE.fullmatch(code):
            raise ConfigError("xid_severity_overrides: %r is not an XID code (a decimal number)" % (code,))
        if severity not in SEVERITIES:
            raise ConfigError("xid_severity_overrides.%s must be one of %s, got %r" % (code, ", ".join(SEVERITIES), severity))
        clean[int(code)] = severity
    return clean


def config_summary(config):
    """What the results annotation says about the thresholds in force."""
    return {"prefix": config["prefix"], "taint": config["taint"], "labels": config["labels"],
            "taint_min_severity": config["taint_min_severity"],
            "cordon_min_severity": config["cordon_min_severity"] if config["cordon"] else None,
            "xid_severity_overrides": dict((str(code), sev) for code, sev in sorted(config["xid_severity_overrides"].items()))}


# ============================================================================================
# Kernel log records: /dev/kmsg reads, journalctl JSON lines, plain files
# ============================================================================================

# A record's text (possibly several lines) and what the source says about it.
Record = namedtuple("Record", "text meta")

KMSG_ESCAPE_RE = re.compile(rb"\\x([0-9a-fA-F]{2})")
PRIORITY_RE = re.compile(rb"<(\d{1,3})>")


def kmsg_unescape(data):
    """/dev/kmsg escapes control bytes, non-ASCII bytes and backslashes as ``\\xNN``."""
    return KMSG_ESCAPE_RE.sub(lambda match: bytes((int(match.group(1), 16),)), data)


def parse_kmsg(data):
    """The records in what reads of /dev/kmsg returned.

    Each read returns one record, ``PRI,SEQ,USEC,FLAGS[,...];MESSAGE\\n``, followed by continuation
    lines `` KEY=VALUE\\n`` (the record's dictionary: SUBSYSTEM, DEVICE). Newlines inside the message
    arrive as ``\\x0a``. Several records in one buffer (a regular file read in tests) are split on
    lines that do not start with a space. Lines without a valid header are skipped.
    """
    records = []
    current = None
    for line in data.split(b"\n"):
        if not line:
            continue
        if line.startswith(b" "):
            key, sep, value = line[1:].partition(b"=")
            if current is not None and sep:
                current.meta["fields"][key.decode("ascii", "replace")] = kmsg_unescape(value).decode("utf-8", "replace")
            continue
        header, sep, message = line.partition(b";")
        parts = header.split(b",")
        if not sep or len(parts) < 3 or not all(part.isdigit() for part in parts[:3]):
            current = None
            continue
        priority, seq, usec = (int(part) for part in parts[:3])
        current = Record(kmsg_unescape(message).decode("utf-8", "replace"),
                         {"source": "kmsg", "priority": priority, "seq": seq, "usec": usec, "fields": {}})
        records.append(current)
    return records


def journal_value(value):
    """A journal JSON field as text: a string, an array of bytes, or an array of either (repeated field)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(_is_int(item) and 0 <= item < 256 for item in value):
            return bytes(value).decode("utf-8", "replace")
        parts = [journal_value(item) for item in value]
        return "\n".join(part for part in parts if part is not None)
    return None


def parse_journal(line):
    """A Record from one line of ``journalctl -o json``; None for an entry without a message.

    journald takes the leading ``identifier:`` of a user-space /dev/kmsg record (``NVRM: Xid ...``)
    as SYSLOG_IDENTIFIER and keeps only the rest as MESSAGE; the record is rebuilt as
    ``IDENTIFIER[PID]: MESSAGE``. Kernel records (identifier ``kernel``) keep MESSAGE as it is.
    Raises ValueError for a line that is not a JSON object.
    """
    entry = json.loads(line.decode("utf-8", "replace") if isinstance(line, bytes) else line)
    if not isinstance(entry, dict):
        raise ValueError("journal entry is not a JSON object")
    message = journal_value(entry.get("MESSAGE"))
    if message is None:
        return None
    ident = journal_value(entry.get("SYSLOG_IDENTIFIER"))
    if ident and ident != "kernel":
        pid = journal_value(entry.get("SYSLOG_PID"))
        message = "%s%s: %s" % (ident, "[%s]" % pid if pid else "", message)
    meta = {"source": "journal", "cursor": journal_value(entry.get("__CURSOR"))}
    stamp = journal_value(entry.get("__REALTIME_TIMESTAMP"))
    if stamp and stamp.isdigit():
        meta["usec"] = int(stamp)
    return Record(message, meta)


def split_file_records(data):
    """(records, rest): the complete records at the start of ``data`` and the unterminated rest.

    A line that starts with a priority prefix (``<3>``) begins a record and loses the prefix; a line
    without one continues the record before it in the same data (the driver's multi-line messages,
    written in one write), or begins one.
    """
    lines = data.split(b"\n")
    rest = lines.pop()
    records = []
    for raw in lines:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        match = PRIORITY_RE.match(line)
        if match or not records:
            priority = int(match.group(1)) if match else None
            text = line[match.end():] if match else line
            records.append([{"source": "file", "priority": priority}, [text]])
        else:
            records[-1][1].append(line)
    return [Record(b"\n".join(parts).decode("utf-8", "replace"), meta) for meta, parts in records], rest


# ============================================================================================
# Findings from records: the AWS suite's patterns, the catalog's severities
# ============================================================================================

# Findings that a diagnostic Job reports through an annotation on the node: the sweeper's
# <prefix>sweep-result (DCGM level 2) and the quarantine run's <prefix>quarantine-result.
JOB_FINDINGS = ("sweep", "quarantine")
SWEEP_RESULT_ANNOTATION = "sweep-result"
QUARANTINE_RESULT_ANNOTATION = "quarantine-result"

# grep -i "NVRM.*Xid", then sed 's/.*Xid[^)]*\):[[:space:]]*([0-9]+).*/\1/' as the AWS suite does.
XID_GREP_RE = re.compile(r"NVRM.*Xid", re.IGNORECASE)
XID_CODE_RE = re.compile(r".*Xid[^)]*\):\s*([0-9]+)")
XID_PCI_RE = re.compile(r"Xid\s*\(PCI:([0-9a-fA-F:.]+)\)", re.IGNORECASE)
# grep -i "SXid"; the code and switch as NVSentinel's SXid pattern reads them.
SXID_GREP_RE = re.compile(r"SXid", re.IGNORECASE)
SXID_RE = re.compile(r"SXid\s*\(PCI:([0-9a-fA-F:.]+)\):\s*([0-9]+)(?:,\s*(Fatal|Non-fatal))?", re.IGNORECASE)
NVSWITCH_RE = re.compile(r"nvidia-nvswitch(\d+):")


def parse_line(line):
    """The XID or SXid one kernel log line reports, as an observation dict; None for other lines.

    XID: ``{kind: xid, xid, pci, text}``; ``xid`` is None for a line that matches the suite's grep
    but not its code expression. SXid: ``{kind: sxid, sxid, pci, switch, fatal, text}``.
    """
    line = line[:MAX_LINE]
    if SXID_GREP_RE.search(line):
        match = SXID_RE.search(line)
        if match is None:
            return None
        switch = NVSWITCH_RE.search(line)
        return {"kind": "sxid", "sxid": int(match.group(2)), "pci": match.group(1).lower(),
                "switch": int(switch.group(1)) if switch else None,
                "fatal": match.group(3).lower() == "fatal" if match.group(3) else None, "text": clip(line.strip())}
    if not XID_GREP_RE.search(line):
        return None
    code = XID_CODE_RE.match(line)   # sed's leading ".*": anchored, one pass
    pci = XID_PCI_RE.search(line)
    return {"kind": "xid", "xid": int(code.group(1)) if code else None,
            "pci": pci.group(1).lower() if pci else None, "text": clip(line.strip())}


def record_observations(record):
    """The XIDs and SXids of a record, one per matching line (a record may span several lines)."""
    found = []
    for line in record.text.splitlines():
        observation = parse_line(line)
        if observation is not None:
            found.append(observation)
    return found


def xid_severity(code, text="", overrides=None, facts=None):
    """The severity of an XID: the config's override for the code, else the AWS suite's (catalog),
    with the node facts (A100, MIG, UVM in use) read when it was seen."""
    if overrides and code in overrides:
        return overrides[code]
    return xid_catalog.aws_severity(code, text, facts)


def finding_severity(finding, overrides=None):
    kind = finding["kind"]
    if kind == "xid":
        return xid_severity(finding["xid"], finding.get("text") or "", overrides, finding.get("facts"))
    if kind == "sxid":
        return SXID_SEVERITY
    return finding["severity"]


def finding_key(finding):
    """What makes two observations the same finding.

    XIDs: code, GPU and the catalog's own severity for the line and node, so that an XID 154 that
    asks for a reboot and a later one that asks for nothing stay two findings (the milder one cannot
    replace the worse). SXids: code and switch. Checks: the check. A failed sweep or quarantine: its
    Job (and the quarantine's part).
    """
    kind = finding["kind"]
    if kind == "xid":
        return ("xid", finding["xid"], finding.get("pci"),
                xid_catalog.aws_severity(finding["xid"], finding.get("text") or "", finding.get("facts")))
    if kind == "sxid":
        return ("sxid", finding["sxid"], finding.get("pci"))
    if kind in JOB_FINDINGS:
        return (kind, finding["job"], finding["check"])
    return ("check", finding["check"])


# ============================================================================================
# Lightweight checks: tool results -> {status, severity, detail}
# ============================================================================================
#
# Severity of each condition. The rule: the mildest severity that (a) takes the node out of new
# scheduling when it cannot run a full-size job correctly and (b) names a remediation that can fix
# it. A condition seen only indirectly or possibly transient warns (MONITOR) and never taints.
CHECK_SEVERITIES = {
    # Fewer GPUs than the instance type has: a GPU fell off the bus or did not initialise. The driver's
    # verdict for that (XID 79) is a reboot, which enumerates the GPUs again; the AWS suite's ISOLATE
    # (replace the instance) is left to the operator once a reboot did not help.
    "gpu_missing": "REBOOT",
    "gpu_extra": "MONITOR",            # more GPUs than the profile says: the profile is wrong, not the node
    "smi_failed": "REBOOT",            # nvidia-smi is there but cannot talk to the driver or a GPU
    "tool_timeout": "MONITOR",         # a hung tool: often load, sometimes a stuck GPU; warn only
    "gpu_reset_required": "RESET",     # nvidia-smi reports "[GPU requires reset]"
    "gpu_lost": "REBOOT",              # "[GPU is lost]" / "[Unknown Error]" in a GPU's values
    "value_error": "MONITOR",          # "[ERR!]" reading one value (a sensor)
    "ecc_uncorrectable": "RESET",      # volatile uncorrectable ECC errors > 0; a GPU reset clears them
    "retired_pages_pending": "REBOOT",  # a page waits for retirement at the next driver load
    "row_remap_pending": "RESET",      # a row waits for remapping, done by a GPU reset (XID 63's own words)
    "row_remap_failure": "ISOLATE",    # spare rows exhausted: only replacing the GPU helps
    "efa_missing": "REBOOT",           # fewer EFA devices than the instance type has
    "nvlink_inactive": "RESET",        # NVLink links train again when the GPU is reset
    # As the AWS suite rates them:
    "retired_pages_dbe": "ISOLATE",    # pages retired for double-bit (uncorrectable) errors
    "retired_pages_sbe": "MONITOR",    # single-bit retired pages above retired_pages_sbe_max
    "persistence_disabled": "MONITOR",  # persistence mode off: slow starts, state lost between jobs
    "topology_link_missing": "ISOLATE",  # a GPU pair without any path in nvidia-smi topo -m
    "nvlink_missing": "ISOLATE",       # NVLink expected (instance profile) but no NV# path at all
    "fabric_not_ready": "RESET",       # fabric manager has not registered a GPU in the NVSwitch fabric
    # A GPU missing from the topology is the same fault as gpu_missing, hence the same severity
    # (the suite says ISOLATE).
    "topology_gpu_missing": "REBOOT",
}
SMI_LOST_MARKERS = ("gpu is lost", "unknown error")
SMI_RESET_MARKER = "gpu requires reset"
SMI_UNSUPPORTED_MARKERS = ("not a valid field", "not supported", "is not supported")
NA_VALUES = ("n/a", "[n/a]", "[not supported]", "not supported", "")
YES_VALUES = ("yes", "1", "true", "enabled")
GPU_LINE_RE = re.compile(r"^GPU \d+:")
LINK_RE = re.compile(r"^\s*Link (\d+):\s*(.*)$")

# found: whether the executable exists; returncode None when it did not run to the end.
ToolResult = namedtuple("ToolResult", "found returncode stdout stderr timed_out error")


def tool_result(stdout="", returncode=0, stderr="", found=True, timed_out=False, error=None):
    """A ToolResult with the usual defaults (tests and the probe build them the same way)."""
    return ToolResult(found, returncode, stdout, stderr, timed_out, error)


def result(severity, detail, **extra):
    status = "pass" if severity == "PASS" else STATUS_OF[severity]
    entry = {"status": status, "severity": severity, "detail": detail}
    entry.update(extra)
    return entry


def skipped(reason, **extra):
    entry = {"status": "skipped", "severity": "PASS", "detail": reason}
    entry.update(extra)
    return entry


def tool_problem(name, tool, failure_severity, unsupported_ok=False):
    """The result for a tool that did not answer normally, or None when it did."""
    if not tool.found:
        return skipped(tool.error or "%s not found" % name.split(" ", 1)[0])
    if tool.timed_out:
        return result(CHECK_SEVERITIES["tool_timeout"], "%s timed out" % name)
    if tool.error:
        return result(CHECK_SEVERITIES["tool_timeout"], "%s could not run: %s" % (name, tool.error))
    if tool.returncode != 0:
        message = first_line(tool.stderr) or first_line(tool.stdout) or "no output"
        if unsupported_ok and any(marker in message.lower() for marker in SMI_UNSUPPORTED_MARKERS):
            return skipped("%s: %s" % (name, message))
        return result(failure_severity, "%s exited with status %s: %s" % (name, tool.returncode, message))
    return None


def first_line(text):
    for line in (text or "").splitlines():
        if line.strip():
            return clip(line.strip(), 200)
    return ""


def csv_rows(text):
    """Rows of ``--format=csv,noheader``: lists of stripped fields."""
    return [[field.strip() for field in line.split(",")] for line in (text or "").splitlines() if line.strip()]


def eval_gpu_count(smi, proc_count, expected, instance_type):
    """GPU count: nvidia-smi -L (else the driver's /proc entries) against the instance profile."""
    if smi.found:
        problem = tool_problem("nvidia-smi -L", smi, CHECK_SEVERITIES["smi_failed"])
        if problem:
            return problem
        count = sum(1 for line in smi.stdout.splitlines() if GPU_LINE_RE.match(line.strip()))
        source = "nvidia-smi -L"
    elif proc_count is not None:
        count, source = proc_count, "/proc/driver/nvidia/gpus"
    else:
        return skipped("nvidia-smi not found and no /proc/driver/nvidia/gpus")
    if expected is None:
        return skipped("no GPU count in the instance profile of %s" % (instance_type or "this node (no instance-type label)"),
                       count=count, source=source)
    if count < expected:
        return result(CHECK_SEVERITIES["gpu_missing"], "%d of %d GPUs present (%s)" % (count, expected, source),
                      count=count, expected=expected, source=source)
    if count > expected:
        return result(CHECK_SEVERITIES["gpu_extra"], "%d GPUs present, the profile of %s says %d (%s)"
                      % (count, instance_type, expected, source), count=count, expected=expected, source=source)
    return result("PASS", "%d GPUs present (%s)" % (count, source), count=count, expected=expected, source=source)


def eval_gpu_state(smi):
    """GPU state: nvidia-smi --query-gpu values that say a GPU is lost or needs a reset."""
    problem = tool_problem("nvidia-smi", smi, CHECK_SEVERITIES["smi_failed"])
    if problem:
        return problem
    severity, details = "PASS", []
    for row in csv_rows(smi.stdout):
        values = " ".join(row).lower()
        gpu = "GPU %s" % (row[0] if row else "?")
        if SMI_RESET_MARKER in values:
            found = "gpu_reset_required"
        elif any(marker in values for marker in SMI_LOST_MARKERS):
            found = "gpu_lost"
        elif "err!" in values:
            found = "value_error"
        else:
            continue
        severity = worst((severity, CHECK_SEVERITIES[found]))
        details.append("%s: %s" % (gpu, ", ".join(row[1:])))
    if not details:
        return result("PASS", "%d GPUs report normal state" % len(csv_rows(smi.stdout)))
    return result(severity, "; ".join(details))


def eval_ecc(smi):
    """ECC: volatile uncorrectable error counts (index, ecc.errors.uncorrected.volatile.total)."""
    problem = tool_problem("nvidia-smi", smi, CHECK_SEVERITIES["smi_failed"], unsupported_ok=True)
    if problem:
        return problem if problem["status"] == "skipped" else _warn_only(problem)
    bad, reported = [], 0
    for row in csv_rows(smi.stdout):
        if len(row) < 2 or row[-1].lower() in NA_VALUES:
            continue
        reported += 1
        if row[-1].isdigit() and int(row[-1]) > 0:
            bad.append("GPU %s: %s" % (row[0], row[-1]))
    if not reported:
        return skipped("no GPU reports ECC counts (ECC disabled or not supported)")
    if bad:
        return result(CHECK_SEVERITIES["ecc_uncorrectable"], "volatile uncorrectable ECC errors: " + ", ".join(bad))
    return result("PASS", "no volatile uncorrectable ECC errors on %d GPUs" % reported)


def eval_retired_pages(retired, remapped, sbe_max):
    """Retired pages (pre-Hopper: pending, single-bit and double-bit counts) and row remapping
    pending / failed (Ampere and newer), as the AWS suite's check 0 rates them.

    retired: ``index,retired_pages.pending,retired_pages.sbe,retired_pages.dbe``; remapped:
    ``index,remapped_rows.pending,remapped_rows.failure``. A query the driver does not support, or
    values N/A on every GPU, leave that half out.
    """
    if not retired.found and not remapped.found:
        return skipped(retired.error or "nvidia-smi not found")
    severity, details, supported = "PASS", [], False
    for name, tool, columns in (("retired_pages", retired, ("retired_pages_pending", "retired_pages_sbe", "retired_pages_dbe")),
                                ("remapped_rows", remapped, ("row_remap_pending", "row_remap_failure"))):
        problem = tool_problem("nvidia-smi (%s)" % name, tool, CHECK_SEVERITIES["smi_failed"], unsupported_ok=True)
        if problem:
            if problem["status"] != "skipped":
                severity = worst((severity, "MONITOR"))
                details.append(problem["detail"])
            continue
        for row in csv_rows(tool.stdout):
            for column, value in zip(columns, row[1:]):
                if value.lower() in NA_VALUES:
                    continue
                supported = True
                found = _retired_value(column, value, sbe_max)
                if found:
                    severity = worst((severity, CHECK_SEVERITIES[column]))
                    details.append("GPU %s: %s" % (row[0], found))
    if not supported and not details:
        return skipped("no GPU reports retired pages or row remapping")
    if not details:
        return result("PASS", "no retired pages or row remappings pending, single-bit retired pages at most %d" % sbe_max)
    return result(severity, "; ".join(details))


def _retired_value(column, value, sbe_max):
    """What a retired-pages or remapped-rows value says is wrong, or None."""
    if column in ("retired_pages_sbe", "retired_pages_dbe"):
        count = int(value) if value.isdigit() else 0
        if column == "retired_pages_dbe" and count > 0:
            return "%d page(s) retired for double-bit ECC errors" % count
        if column == "retired_pages_sbe" and count > sbe_max:
            return "%d page(s) retired for single-bit ECC errors (threshold %d)" % (count, sbe_max)
        return None
    return column.replace("_", " ") if value.lower() in YES_VALUES else None


def eval_persistence(smi):
    """Persistence mode (index, persistence_mode): the AWS suite warns where it is disabled."""
    problem = tool_problem("nvidia-smi (persistence_mode)", smi, CHECK_SEVERITIES["smi_failed"], unsupported_ok=True)
    if problem:
        return problem if problem["status"] == "skipped" else _warn_only(problem)
    rows = [row for row in csv_rows(smi.stdout) if len(row) >= 2 and row[1].lower() not in NA_VALUES]
    if not rows:
        return skipped("no GPU reports a persistence mode")
    disabled = [row[0] for row in rows if row[1].lower() == "disabled"]
    if disabled:
        return result(CHECK_SEVERITIES["persistence_disabled"], "persistence mode disabled on %d of %d GPUs (GPU %s)"
                      % (len(disabled), len(rows), ", ".join(disabled)), disabled=len(disabled))
    return result("PASS", "persistence mode enabled on %d GPUs" % len(rows), disabled=0)


TOPO_ROW_RE = re.compile(r"^GPU(\d+)\s")
NV_PATH_RE = re.compile(r"^NV\d+$")


def eval_topology(smi, expected_gpus, nvlink_expected):
    """GPU topology (nvidia-smi topo -m), as the AWS suite's check 3 reads it: every GPU in the
    matrix, a path between every pair (an off-diagonal X is none), and NVLink paths where the
    instance profile expects NVLink."""
    problem = tool_problem("nvidia-smi topo -m", smi, CHECK_SEVERITIES["smi_failed"], unsupported_ok=True)
    if problem:
        return problem if problem["status"] == "skipped" else _warn_only(problem)
    rows = [line.split() for line in smi.stdout.splitlines() if TOPO_ROW_RE.match(line)]
    if not rows:
        return skipped("nvidia-smi topo -m lists no GPU")
    count = len(rows)
    severity, details = "PASS", []
    if expected_gpus is not None and count < expected_gpus:
        severity = worst((severity, CHECK_SEVERITIES["topology_gpu_missing"]))
        details.append("%d of %d GPUs in the topology" % (count, expected_gpus))
    paths = [(row[0], column, entry) for index, row in enumerate(rows)
             for column, entry in enumerate(row[1:count + 1]) if column != index]
    unlinked = ["%s-GPU%d" % (name, column) for name, column, entry in paths if entry == "X"]
    if unlinked:
        severity = worst((severity, CHECK_SEVERITIES["topology_link_missing"]))
        details.append("no path between %s" % ", ".join(unlinked[:16]))
    nvlinks = sum(1 for _name, _column, entry in paths if NV_PATH_RE.match(entry))
    if nvlink_expected and paths and nvlinks == 0:
        severity = worst((severity, CHECK_SEVERITIES["nvlink_missing"]))
        details.append("no NVLink path between the GPUs, the instance profile expects NVLink")
    if details:
        return result(severity, "; ".join(details), gpus=count, nvlink_paths=nvlinks)
    return result("PASS", "%d GPUs, every pair connected%s" % (count, ", NVLink" if nvlinks else ""),
                  gpus=count, nvlink_paths=nvlinks)


def eval_fabric(smi, nvlink_expected):
    """Fabric manager, as the GPUs report their registration in the NVSwitch fabric
    (index, fabric.state, fabric.status): Completed and Success on every GPU. Only where the
    instance profile expects NVLink, like the AWS suite's check 3."""
    if not nvlink_expected:
        return skipped("the instance profile expects no NVLink fabric")
    problem = tool_problem("nvidia-smi (fabric.state)", smi, CHECK_SEVERITIES["smi_failed"], unsupported_ok=True)
    if problem:
        return problem if problem["status"] == "skipped" else _warn_only(problem)
    rows = [row for row in csv_rows(smi.stdout) if len(row) >= 3 and row[1].lower() not in NA_VALUES]
    if not rows:
        return skipped("no GPU is part of an NVSwitch fabric (fabric.state not supported)")
    waiting = ["GPU %s: %s/%s" % (row[0], row[1], row[2]) for row in rows
               if row[1].lower() != "completed" or row[2].lower() != "success"]
    if waiting:
        return result(CHECK_SEVERITIES["fabric_not_ready"], "fabric registration not complete: %s" % ", ".join(waiting))
    return result("PASS", "%d GPUs registered in the NVSwitch fabric" % len(rows))


def eval_efa(count, source, expected, instance_type):
    """EFA: devices present against the instance profile. count None: nothing to count with (source says why)."""
    if count is None:
        return skipped(source)
    if expected is None:
        return skipped("no EFA count in the instance profile of %s" % (instance_type or "this node (no instance-type label)"),
                       count=count, source=source)
    if count < expected:
        return result(CHECK_SEVERITIES["efa_missing"], "%d of %d EFA devices present (%s)" % (count, expected, source),
                      count=count, expected=expected, source=source)
    return result("PASS", "%d EFA devices present (%s)" % (count, source), count=count, expected=expected, source=source)


def eval_nvlink(smi):
    """NVLink: links that ``nvidia-smi nvlink -s`` reports inactive."""
    problem = tool_problem("nvidia-smi nvlink -s", smi, CHECK_SEVERITIES["smi_failed"], unsupported_ok=True)
    if problem:
        return problem if problem["status"] == "skipped" else _warn_only(problem)
    gpu, links, inactive = None, 0, []
    for line in smi.stdout.splitlines():
        if GPU_LINE_RE.match(line.strip()):
            gpu = line.strip().split(":", 1)[0]
            continue
        match = LINK_RE.match(line)
        if match:
            links += 1
            if "inactive" in match.group(2).lower():
                inactive.append("%s link %s" % (gpu or "GPU ?", match.group(1)))
    if not links:
        return skipped("no NVLink links reported")
    if inactive:
        return result(CHECK_SEVERITIES["nvlink_inactive"], "%d of %d NVLink links inactive: %s"
                      % (len(inactive), links, ", ".join(inactive[:16])), inactive=len(inactive), links=links)
    return result("PASS", "%d NVLink links active" % links, inactive=0, links=links)


def _warn_only(problem):
    """A failing query of a secondary check warns: gpu_count and gpu_state judge nvidia-smi itself."""
    return result("MONITOR", problem["detail"])


def _json_annotation(node, key):
    try:
        value = json.loads(node_annotations(node).get(key) or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _finished(result):
    try:
        return parse_rfc3339(result.get("finished") or "")
    except ValueError:
        return None


def job_observations(node, config):
    """Findings that the node's diagnostic Job results ask for: a failed sweep (<prefix>sweep-result,
    result fail) at sweep_failure_severity, and each part of a quarantine run
    (<prefix>quarantine-result, its checks) that warned or failed, at its severity. Each at the
    time its Job finished."""
    prefix, out = config["prefix"], []
    sweep = _json_annotation(node, prefix + SWEEP_RESULT_ANNOTATION)
    if sweep and sweep.get("result") == "fail" and sweep.get("job") and _finished(sweep):
        out.append({"kind": "sweep", "job": str(sweep["job"]), "check": "1-dcgm-diag-l2",
                    "severity": config["sweep_failure_severity"], "at": _finished(sweep),
                    "detail": clip("diagnostic Job %s failed (%s): %s" % (sweep["job"], sweep.get("reason") or "Failed",
                                                                          sweep.get("message") or "no message"))})
    quarantine = _json_annotation(node, prefix + QUARANTINE_RESULT_ANNOTATION)
    if quarantine and quarantine.get("job") and _finished(quarantine):
        for part in quarantine.get("checks") or []:
            if isinstance(part, dict) and part.get("severity") in SEVERITIES[1:] and part.get("check"):
                out.append({"kind": "quarantine", "job": str(quarantine["job"]), "check": str(part["check"]),
                            "severity": part["severity"], "at": _finished(quarantine),
                            "detail": clip("quarantine Job %s: %s %s" % (quarantine["job"], part["check"], part.get("status")))})
    return out


def check_observations(results):
    """Findings from one cycle's check results: one per check that did not pass."""
    return [{"kind": "check", "check": name, "severity": entry["severity"], "detail": entry["detail"]}
            for name, entry in sorted(results.items()) if entry.get("severity", "PASS") != "PASS"]


# ============================================================================================
# Findings: sticky, until an operator clears them
# ============================================================================================

class Findings:
    """The node's active findings and the latest check results; thread-safe, no I/O.

    An observation that matches an active finding (finding_key) updates its last time and count;
    a check finding only ever moves to a worse severity. Nothing but clear_before() and the size cap
    removes a finding: a later, milder result never replaces a worse one.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.items = {}     # key -> finding dict (times as datetimes)
        self.checks = {}    # check name -> latest result (with its time)

    def add(self, observations, when, overrides=None):
        """Add observations seen at ``when``: (severity before, severity after, [(finding, new)])."""
        with self.lock:
            before = self._severity(overrides)
            added = [self._add(observation, when) for observation in observations]
            after = self._severity(overrides)
            return before, after, [(self._export(finding, overrides), new) for finding, new in added]

    def add_checks(self, results, when, overrides=None):
        """Record a cycle's check results; their non-PASS results become (sticky) findings."""
        with self.lock:
            for name, entry in results.items():
                self.checks[name] = dict(entry, time=rfc3339(when))
        return self.add(check_observations(results), when, overrides)

    def _add(self, observation, when):
        key = finding_key(observation)
        finding = self.items.get(key)
        # A record read back from the log (the boot scan) or a Job's result keeps its own time.
        when = observation.pop("at", None) or when
        if finding is None:
            if len(self.items) >= MAX_FINDINGS:
                self._evict()
            finding = dict(observation, first=when, last=when, count=1)
            self.items[key] = finding
            return finding, True
        finding["last"] = max(finding["last"], when)
        finding["count"] += 1
        if finding["kind"] == "check" and rank(observation["severity"]) > rank(finding["severity"]):
            finding.update(severity=observation["severity"], detail=observation["detail"])
        return finding, False

    def _evict(self):
        victim = min(self.items, key=lambda key: (rank(finding_severity(self.items[key])), self.items[key]["last"]))
        del self.items[victim]

    def clear_before(self, cutoff):
        """Drop the findings last seen before ``cutoff``; returns them (exported)."""
        with self.lock:
            dropped = [key for key, finding in self.items.items() if finding["last"] < cutoff]
            return [self._export(self.items.pop(key)) for key in dropped]

    def restore(self, exported):
        """Take back findings from a results annotation (export form); returns how many were usable."""
        count = 0
        for entry in exported if isinstance(exported, list) else ():
            try:
                finding = self._import(entry)
            except (KeyError, TypeError, ValueError):
                continue
            with self.lock:
                key = finding_key(finding)
                if key not in self.items:
                    self.items[key] = finding
                    count += 1
        return count

    def snapshot(self, overrides=None):
        """The active findings, worst first, each with its severity under ``overrides``."""
        with self.lock:
            exported = [self._export(finding, overrides) for finding in self.items.values()]
        return sorted(exported, key=lambda entry: (-rank(entry["severity"]), entry["time"]))

    def latest_checks(self):
        with self.lock:
            return copy.deepcopy(self.checks)

    def severity(self, overrides=None):
        with self.lock:
            return self._severity(overrides)

    def has(self, observation):
        with self.lock:
            return finding_key(observation) in self.items

    def _severity(self, overrides):
        return worst(finding_severity(finding, overrides) for finding in self.items.values())

    @staticmethod
    def _export(finding, overrides=None):
        entry = dict((key, value) for key, value in finding.items() if key not in ("first", "last"))
        entry.update(severity=finding_severity(finding, overrides), time=rfc3339(finding["first"]),
                     last_seen=rfc3339(finding["last"]))
        return entry

    @staticmethod
    def _import(entry):
        kind = entry["kind"]
        finding = {"kind": kind, "first": parse_rfc3339(entry["time"]), "last": parse_rfc3339(entry.get("last_seen") or entry["time"]),
                   "count": int(entry.get("count") or 1)}
        if kind == "xid":
            finding.update(xid=int(entry["xid"]), pci=entry.get("pci"), text=str(entry.get("text") or ""))
            facts = entry.get("facts")
            if isinstance(facts, dict):
                finding["facts"] = dict((fact, facts[fact] is True) for fact in xid_catalog.AWS_NODE_FACTS if fact in facts)
        elif kind in JOB_FINDINGS and entry["severity"] in SEVERITIES:
            finding.update(job=str(entry["job"]), check=str(entry["check"]), severity=entry["severity"],
                           detail=str(entry.get("detail") or ""))
        elif kind == "sxid":
            finding.update(sxid=int(entry["sxid"]), pci=entry.get("pci"), switch=entry.get("switch"),
                           fatal=entry.get("fatal"), text=str(entry.get("text") or ""))
        elif kind == "check" and entry["severity"] in SEVERITIES:
            finding.update(check=str(entry["check"]), severity=entry["severity"], detail=str(entry.get("detail") or ""))
        else:
            raise ValueError("unknown finding %r" % (entry,))
        return finding


# ============================================================================================
# Node marks: what the node should carry, as one merge patch
# ============================================================================================

# patch: the merge patch; severity/status: the node's; taint/cordon: whether the agent holds them
# after the patch; changes: [{mark, from, to}] for the log.
MarkPlan = namedtuple("MarkPlan", "patch severity status taint cordon changes")


def _metadata(node):
    return node.get("metadata") or {}


def node_labels(node):
    return _metadata(node).get("labels") or {}


def node_annotations(node):
    return _metadata(node).get("annotations") or {}


def instance_type(node):
    labels = node_labels(node)
    for label in INSTANCE_TYPE_LABELS:
        if labels.get(label):
            return labels[label]
    return None


def agent_marks(node, prefix):
    """What the agent recorded as set by itself: {taint, cordon, labels} (False when it recorded
    nothing). Agents before the labels switch did not record their labels, but always wrote them."""
    try:
        recorded = json.loads(node_annotations(node).get(prefix + AGENT_MARKS_ANNOTATION) or "{}")
    except ValueError:
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    return {"taint": recorded.get("taint") is True, "cordon": recorded.get("cordon") is True,
            "labels": recorded.get("labels", bool(recorded)) is True}


def is_unhealthy_taint(taint, prefix):
    return taint.get("key") == prefix + UNHEALTHY_TAINT and taint.get("effect") == UNHEALTHY_EFFECT


def cordon_holder(node):
    """Who else holds the node's cordon, or None: NVSentinel's quarantine marks, or another field manager."""
    if node_marks.condition_marks(node, {"kind": "nvsentinel"}):
        return node_marks.NVSENTINEL_CORDONER
    owner = node_marks.who_set(node, ("spec", "unschedulable"))
    if owner and owner.get("manager") and owner["manager"] != FIELD_MANAGER:
        return owner["manager"]
    return None


# The AWS suite's checks as its results annotation names them, and which of the agent's checks and
# findings each one covers: check 0 reads nvidia-smi and the kernel log, 1 is the sweep's DCGM
# level 2, 2 counts EFA devices, 3 reads the topology, NVLink and fabric manager; 4 (DCGM level 4)
# and 6 (EFA loopback) are the quarantine run's.
SUITE_CHECKS = (
    ("0-nvidia-smi", ("gpu_count", "gpu_state", "ecc", "retired_pages", "persistence_mode")),
    ("1-dcgm-diag-l2", ()),
    ("2-efa-enumeration", ("efa",)),
    ("3-topology-check", ("nvlink", "topology", "fabric_manager")),
    ("4-dcgm-diag-l4", ()),
    ("6-efa-loopback", ()),
)
SUITE_CHECK_OF = dict((check, name) for name, checks in SUITE_CHECKS for check in checks)


def suite_check_of(finding):
    """The AWS suite's check a finding belongs to."""
    if finding["kind"] in ("xid", "sxid"):
        return "0-nvidia-smi"
    if finding["kind"] in JOB_FINDINGS:
        return finding["check"]
    return SUITE_CHECK_OF.get(finding["check"])


def suite_checks(findings, checks):
    """The results annotation's ``checks`` as the AWS suite writes it: [{check, status, severity}]
    with status PASS, WARN, FAIL or SKIP and severity "" unless it warns or fails. A check is
    listed when the agent ran a check of it or one of its findings is active; its status follows
    the worst active finding (sticky, like the node's), else its latest results."""
    out = []
    for name, covered in SUITE_CHECKS:
        severities = [finding["severity"] for finding in findings if suite_check_of(finding) == name]
        ran = [checks[check]["status"] for check in covered if check in checks]
        if not severities and not ran:
            continue
        severity = worst(severities)
        if severity != "PASS":
            status = "WARN" if severity == "MONITOR" else "FAIL"
        else:
            status = "SKIP" if all(state == "skipped" for state in ran) else "PASS"
        out.append({"check": name, "status": status, "severity": severity if severity != "PASS" else ""})
    return out


def results_document(node, severity, findings, checks, config, now, agent=None, cleared=None, position=None):
    """The ``<prefix>results`` annotation.

    The AWS suite's shape, where its readers look for it: timestamp, hostname, instance_type,
    status, severity and checks (a list of {check, status, severity}). Beside it, the agent's own:
    the node, the time with microseconds, the agent pod, each lightweight check's result
    (check_results), the active findings, the configuration in force, the clear last applied and the
    kernel log position counted up to (log_position: what a restarted agent must not count again).
    """
    name = _metadata(node).get("name")
    return {
        "timestamp": suite_time(now),
        "hostname": name,
        "instance_type": instance_type(node) or "unknown",
        "status": STATUS_OF[severity],
        "severity": severity,
        "checks": suite_checks(findings, checks),
        "node": name,
        "time": rfc3339(now),
        "agent": agent or {},
        "check_results": checks,
        "findings": findings[:MAX_REPORTED_FINDINGS],
        "findings_total": len(findings),
        "config": config_summary(config),
        "clear_findings_before": cleared,
        "log_position": position,
    }


def plan_marks(node, findings, checks, config, now, agent=None, old_prefix=None, cleared=None, position=None):
    """The merge patch that makes the node's marks match the findings.

    findings: the active findings (Findings.snapshot()), checks: the latest check results. The
    taint ``<prefix>unhealthy`` is added at or above taint_min_severity and removed below it only if
    the agent's agent-marks annotation says the agent added it; a taint someone else put there stays.
    Likewise the cordon (only with ``cordon`` set): set at or above cordon_min_severity if the node is
    schedulable, lifted below it only if the agent set it and nobody else (NVSentinel, another field
    manager) holds it. With ``taint`` or ``labels`` off (the AWS suite's ENABLE_TAINT and
    ENABLE_LABEL), the agent sets no taint, or no status, severity and last-check labels, and takes
    off those it set. Other taints, labels and annotations are not in the patch at all. When the
    taints or the cordon change, the patch carries the node's resourceVersion: a node changed since
    it was read makes the API answer 409 and the caller reads it again.

    old_prefix: the prefix before a config change; the agent's taint and bookkeeping under it go, and
    a cordon it held carries over.
    """
    prefix = config["prefix"]
    spec = node.get("spec") or {}
    taints = [taint for taint in spec.get("taints") or [] if isinstance(taint, dict)]
    labels, annotations = node_labels(node), node_annotations(node)
    severity = worst(finding["severity"] for finding in findings)
    status = STATUS_OF[severity]
    owned = agent_marks(node, prefix)
    new_taints = list(taints)
    patch_annotations = {}
    if old_prefix and old_prefix != prefix:
        old_owned = agent_marks(node, old_prefix)
        if old_owned["taint"]:
            new_taints = [taint for taint in new_taints if not is_unhealthy_taint(taint, old_prefix)]
        owned["cordon"] = owned["cordon"] or old_owned["cordon"]
        if old_prefix + AGENT_MARKS_ANNOTATION in annotations:
            patch_annotations[old_prefix + AGENT_MARKS_ANNOTATION] = None

    had_taint = any(is_unhealthy_taint(taint, prefix) for taint in taints)
    has_taint = any(is_unhealthy_taint(taint, prefix) for taint in new_taints)
    own_taint = owned["taint"] and has_taint
    want_taint = config["taint"] and at_least(severity, config["taint_min_severity"])
    if want_taint and not has_taint:
        new_taints.append({"key": prefix + UNHEALTHY_TAINT, "value": UNHEALTHY_VALUE, "effect": UNHEALTHY_EFFECT})
        own_taint = True
    elif own_taint and not want_taint:
        new_taints = [taint for taint in new_taints if not is_unhealthy_taint(taint, prefix)]
        own_taint = False

    cordoned = spec.get("unschedulable") is True
    unschedulable = cordoned
    own_cordon = owned["cordon"] and cordoned
    want_cordon = config["cordon"] and at_least(severity, config["cordon_min_severity"])
    if want_cordon and not cordoned:
        unschedulable = own_cordon = True
    elif own_cordon and not want_cordon:
        if cordon_holder(node) is None:
            unschedulable = False
        own_cordon = False

    patch_annotations[prefix + RESULTS_ANNOTATION] = json.dumps(
        results_document(node, severity, findings, checks, config, now, agent, cleared, position),
        sort_keys=True, separators=(",", ":"))
    patch_annotations[prefix + AGENT_MARKS_ANNOTATION] = json.dumps(
        {"taint": own_taint, "cordon": own_cordon, "labels": config["labels"]}, sort_keys=True)
    label_names = (prefix + STATUS_LABEL, prefix + SEVERITY_LABEL, prefix + LAST_CHECK_LABEL)
    if config["labels"]:
        patch_labels = dict(zip(label_names, (status, severity, label_time(now))))
    else:
        patch_labels = dict((label, None) for label in label_names if owned["labels"] and label in labels)
    metadata = {"labels": patch_labels, "annotations": patch_annotations}
    patch = {"metadata": metadata}
    if new_taints != taints or unschedulable != cordoned:
        if _metadata(node).get("resourceVersion"):
            metadata["resourceVersion"] = _metadata(node)["resourceVersion"]
        patch["spec"] = {}
        if new_taints != taints:
            patch["spec"]["taints"] = new_taints or None
        if unschedulable != cordoned:
            patch["spec"]["unschedulable"] = True if unschedulable else None
    changes = [{"mark": mark, "from": old, "to": new} for mark, old, new in (
        (prefix + STATUS_LABEL, labels.get(prefix + STATUS_LABEL), patch_labels.get(prefix + STATUS_LABEL)),
        (prefix + SEVERITY_LABEL, labels.get(prefix + SEVERITY_LABEL), patch_labels.get(prefix + SEVERITY_LABEL)),
        ("taint " + prefix + UNHEALTHY_TAINT, had_taint, any(is_unhealthy_taint(taint, prefix) for taint in new_taints)),
        ("cordon", cordoned, unschedulable)) if old != new]
    return MarkPlan(patch, severity, status, own_taint, own_cordon, changes)


# ============================================================================================
# The node, through the Kubernetes API (kube_api.py, the node programs' shared client)
# ============================================================================================

class NodeApi:
    """The calls the agent makes, all on its own node. Tests replace it with a fake."""

    def __init__(self, client, node):
        self.client = client
        self.node = node
        self.path = "/api/v1/nodes/" + urllib.parse.quote(node, safe="")

    def get(self):
        return self.client.request("GET", self.path)

    def patch(self, body):
        """JSON merge patch; a metadata.resourceVersion in the body makes it conditional (409 when stale)."""
        return self.client.request("PATCH", self.path, {"fieldManager": FIELD_MANAGER}, body, MERGE_PATCH)

    def watch(self, resource_version, timeout_seconds=WATCH_SECONDS):
        return self.client.watch("/api/v1/nodes", {"fieldSelector": "metadata.name=" + self.node,
                                                   "resourceVersion": resource_version}, timeout_seconds)


# ============================================================================================
# Kernel log sources: open(), read(timeout) -> [Record], close()
# ============================================================================================

class SourceError(Exception):
    """A kernel log source that stopped; the watcher opens it again after a pause."""


# Where a source has counted up to, persisted in the results annotation (log_position) so that a
# restarted agent neither misses nor counts again what the one before it read. The boot id tells
# whether the position belongs to the current boot: records of an earlier boot are gone.
def same_boot(position, source, boot_id):
    return isinstance(position, dict) and position.get("source") == source and position.get("boot_id") == boot_id


def read_boot_id(path):
    """The host's boot id (/proc/sys/kernel/random/boot_id), or None when it cannot be read."""
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read(64).strip() or None
    except (OSError, ValueError):
        return None


def since_boot(seconds):
    """The wall-clock time of a moment ``seconds`` after boot (a /dev/kmsg timestamp)."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return now_utc() - datetime.timedelta(seconds=max(0.0, time.clock_gettime(clock) - seconds))


class KmsgSource:
    """/dev/kmsg, read-only, one record per read. At open, the current boot's records after the
    position (all of them without one), at most the last ``scan``; then what the kernel logs."""

    def __init__(self, path, boot_id=None):
        self.path = path
        self.boot_id = boot_id
        self.fd = None
        self.seq = None         # sequence number of the last record read

    def describe(self):
        return "kmsg %s" % self.path

    def open(self, position=None, scan=0):
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if scan <= 0:
            os.lseek(self.fd, 0, os.SEEK_END)
            return []
        # SEEK_SET: the oldest record still in the kernel's buffer, which holds the current boot only.
        os.lseek(self.fd, 0, os.SEEK_SET)
        after = position.get("seq") if same_boot(position, "kmsg", self.boot_id) else None
        records = [record for record in self._drain() if after is None or record.meta["seq"] > after]
        for record in records:
            record.meta["time"] = since_boot(record.meta["usec"] / 1e6)
        return records[-scan:]

    def position(self):
        return None if self.seq is None else {"source": "kmsg", "boot_id": self.boot_id, "seq": self.seq}

    def _drain(self):
        """Every record readable now (a regular file standing in for the device: up to its end)."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, KMSG_READ_SIZE)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # The kernel overwrote records before they were read; the next read goes on after them.
                warn("kmsg_records_lost", path=self.path)
                continue
            if not data:
                break
            chunks.append(data)
        records = parse_kmsg(b"".join(chunks))
        if records:
            self.seq = records[-1].meta["seq"]
        return records

    def read(self, timeout):
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        records = self._drain()
        if not records:
            time.sleep(min(timeout, FILE_POLL))  # a regular file stands in for the device: at its end
        return records

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class JournalSource:
    """``journalctl -k -f -o json`` (argument list, no shell). At open: after the position's cursor
    when it is of the current boot, else the current boot's last ``scan`` kernel records (``-k``
    means the current boot); ``scan`` 0: from now on. After a restart of the process it goes on
    after the last cursor read, so nothing is lost or seen twice."""

    def __init__(self, host_root="/", journalctl="journalctl", boot_id=None):
        self.host_root = host_root
        self.journalctl = journalctl
        self.boot_id = boot_id
        self.cursor = None
        self.scan = 0
        self.process = None
        self.buffer = b""

    def describe(self):
        return "journal" + ("" if self.host_root in ("", "/") else " under %s" % self.host_root)

    def argv(self, executable):
        argv = [executable, "-k", "-f", "-o", "json", "--no-pager"]
        journals = [os.path.join(self.host_root, sub) for sub in ("var/log/journal", "run/log/journal")]
        if self.host_root not in ("", "/") and any(os.path.isdir(path) for path in journals):
            argv.append("--root=" + self.host_root)
        if self.cursor:
            argv += ["--after-cursor=" + self.cursor, "--no-tail"]
        elif self.scan > 0:
            argv += ["--lines=%d" % self.scan]
        else:
            argv += ["--since", "now"]
        return argv

    def open(self, position=None, scan=0):
        executable = shutil.which(self.journalctl)
        if not executable:
            raise SourceError("%s not found" % self.journalctl)
        if self.cursor is None and scan > 0 and same_boot(position, "journal", self.boot_id):
            self.cursor = position.get("cursor")
        self.scan = scan
        self.buffer = b""
        self.process = subprocess.Popen(  # pylint: disable=consider-using-with
            self.argv(executable), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            close_fds=True)
        return []   # the records before now arrive first through read()

    def position(self):
        return None if not self.cursor else {"source": "journal", "boot_id": self.boot_id, "cursor": self.cursor}

    def read(self, timeout):
        fd = self.process.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return []
        data = os.read(fd, 65536)
        if not data:
            raise SourceError("journalctl exited with status %s" % self.process.wait())
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        records = []
        for line in lines:
            if not line.strip():
                continue
            try:
                record = parse_journal(line)
            except ValueError:
                warn("journalctl_output", line=clip(line.decode("utf-8", "replace")))
                continue
            if record is not None:
                self.cursor = record.meta.get("cursor") or self.cursor
                if record.meta.get("usec"):
                    record.meta["time"] = datetime.datetime.fromtimestamp(record.meta["usec"] / 1e6, datetime.timezone.utc)
                records.append(record)
        return records

    def close(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(TOOL_KILL_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process.stdout.close()
            self.process = None


def inotify_watch(directory):
    """A non-blocking inotify descriptor that becomes readable when a file in directory is written,
    created or moved in (Linux, through libc); None where inotify is not available."""
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:   # not glibc: look the C library up (find_library runs ldconfig, hence second)
            import ctypes.util  # pylint: disable=import-outside-toplevel
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError, TypeError):
        return None
    if fd < 0:
        return None
    in_modify, in_attrib, in_moved_to, in_create = 0x2, 0x4, 0x80, 0x100
    if libc.inotify_add_watch(fd, os.fsencode(directory), in_modify | in_attrib | in_moved_to | in_create) < 0:
        os.close(fd)
        return None
    return fd


class FileSource:
    """A regular file that a writer appends kernel log records to (tests, simulated nodes), standing
    in for the kernel log of the current boot.

    At the first open: the records after the position when it is of the current boot, else the
    file's last ``scan`` records (none with ``scan`` 0); then it follows appends, starts over on a
    truncated file and switches to a new file put in place of the old one (rotation), from its
    beginning. A file created after the start is read from its beginning. Opened again after an
    error, it goes on where it was.

    A quiet file is waited on with inotify on its directory, so that an idle agent costs nothing
    and an append wakes it at once (hundreds of simulated nodes run an agent each on one machine);
    without inotify, it is looked at again every ``poll`` seconds.
    """

    def __init__(self, path, poll=FILE_POLL, boot_id=None):
        self.path = path
        self.poll = poll
        self.boot_id = boot_id
        self.notify = inotify_watch(os.path.dirname(os.path.abspath(path)))
        self.fd = None
        self.identity = None    # (st_dev, st_ino) of the open file
        self.offset = None      # None: not started yet (then the end of an existing file)
        self.rest = b""

    def describe(self):
        return "file %s" % self.path

    def open(self, position=None, scan=0):
        if self.offset is not None or not os.path.exists(self.path):
            self._try_open()
            return []
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        resume = position.get("offset") if same_boot(position, "file", self.boot_id) else None
        if scan <= 0:
            self.offset = size
        elif isinstance(resume, int) and 0 <= resume <= size:
            self.offset = resume
        else:
            self.offset = 0
        records = []
        if self._try_open():
            while True:
                batch = self.read(0)
                if not batch:
                    break
                records.extend(batch)
        return records[-scan:] if scan > 0 else []

    def position(self):
        if self.offset is None:
            return None
        return {"source": "file", "boot_id": self.boot_id, "offset": self.offset - len(self.rest)}

    def _try_open(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.offset is None:
                self.offset = 0
            return False
        stat = os.fstat(fd)
        identity = (stat.st_dev, stat.st_ino)
        if self.offset is None:
            self.offset = stat.st_size
        elif (self.identity is not None and identity != self.identity) or stat.st_size < self.offset:
            self.offset, self.rest = 0, b""
        os.lseek(fd, self.offset, os.SEEK_SET)
        self.fd, self.identity = fd, identity
        return True

    def read(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.fd is not None or self._try_open():
                data = os.read(self.fd, 65536)
                if data:
                    self.offset += len(data)
                    records, self.rest = split_file_records(self.rest + data)
                    if len(self.rest) > MAX_PENDING:
                        records.extend(split_file_records(self.rest + b"\n")[0])
                        self.rest = b""
                    if records:
                        return records
                    continue
                self._check_replaced()
            if time.monotonic() >= deadline:
                return []
            self._wait(deadline)

    def _wait(self, deadline):
        """Until the directory changes (or, without inotify, a poll interval), at most to deadline."""
        remaining = max(0.0, deadline - time.monotonic())
        if self.notify is None:
            time.sleep(min(self.poll, remaining))
            return
        if select.select([self.notify], [], [], min(remaining, NOTIFY_SAFETY_POLL))[0]:
            try:
                while os.read(self.notify, 4096):
                    pass
            except BlockingIOError:
                pass

    def _check_replaced(self):
        """At the end of the file: has it been truncated, or replaced by another one?"""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return
        if (stat.st_dev, stat.st_ino) != self.identity:
            self.close()
            self.offset, self.rest = 0, b""
            self._try_open()
        elif stat.st_size < self.offset:
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.offset, self.rest = 0, b""

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def make_source(kind, path, host_root="/", boot_id=None):
    if kind == "kmsg":
        return KmsgSource(path, boot_id=boot_id)
    if kind == "journal":
        return JournalSource(host_root, boot_id=boot_id)
    if kind == "file":
        return FileSource(path, boot_id=boot_id)
    raise ValueError("kernel log source must be one of %s, got %r" % (", ".join(SOURCES), kind))


# ============================================================================================
# Tools: nvidia-smi, fi_info and sysfs, behind a probe the tests replace
# ============================================================================================

def run_tool(argv, timeout=TOOL_TIMEOUT):
    """Run a tool (argument list, no shell) with a timeout; a ToolResult, never an exception."""
    executable = shutil.which(argv[0])
    if not executable:
        return tool_result(found=False, returncode=None, error="%s not found" % argv[0])
    try:
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            [executable] + list(argv[1:]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True)
    except OSError as e:
        return tool_result(returncode=None, error=str(e))
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.communicate(timeout=TOOL_KILL_WAIT)
        except subprocess.TimeoutExpired:
            # Stuck in the kernel (a hung GPU can do that): leave it rather than hang the checks.
            warn("tool_unkillable", argv=argv)
        return tool_result(returncode=None, timed_out=True)
    return tool_result(stdout.decode("utf-8", "replace"), process.returncode, stderr.decode("utf-8", "replace"))


class Probe:
    """Runs the checks' tools and reads the host's sysfs and /proc/driver/nvidia where the pod
    mounts them (never the container's own: that would be another machine's answer)."""

    def __init__(self, sys_dir="/host/sys", nvidia_proc="/host/proc/driver/nvidia", runner=run_tool):
        self.sys_dir = sys_dir
        self.nvidia_proc = nvidia_proc
        self.runner = runner

    def nvidia_smi(self, *args, timeout=TOOL_TIMEOUT):
        return self.runner(["nvidia-smi"] + list(args), timeout=timeout)

    def proc_gpu_count(self):
        """GPUs the driver registered (<nvidia_proc>/gpus/<pci>), or None without the directory."""
        base = os.path.join(self.nvidia_proc, "gpus")
        if not os.path.isdir(base):
            return None
        return sum(1 for name in os.listdir(base) if os.path.isdir(os.path.join(base, name)))

    def efa_devices(self):
        """(count, source): EFA devices in <sys>/class/infiniband, else from ``fi_info -p efa``; count None when neither works."""
        base = os.path.join(self.sys_dir, "class", "infiniband")
        if os.path.isdir(base):
            return sum(1 for name in os.listdir(base) if self._is_efa(base, name)), base
        tool = self.runner(["fi_info", "-p", "efa", "-t", "FI_EP_RDM"])
        if not tool.found:
            return None, "%s missing and fi_info not found" % base
        if tool.timed_out or tool.error:
            return None, "fi_info -p efa: %s" % (tool.error or "timed out")
        domains = set()
        for line in tool.stdout.splitlines():
            key, sep, value = line.strip().partition(":")
            if sep and key == "domain":
                domains.add(value.strip())
        return len(domains), "fi_info -p efa"

    @staticmethod
    def _is_efa(base, name):
        if "efa" in name.lower():
            return True
        driver = os.path.join(base, name, "device", "driver")
        return os.path.islink(driver) and os.path.basename(os.path.realpath(driver)) == "efa"

    def node_facts(self, needed):
        """The node facts the AWS suite's XID rules need (xid_catalog.AWS_NODE_FACTS), read now with
        nvidia-smi: {fact: bool}; a fact that cannot be read is left out (counts as false)."""
        queries = {"a100": ("--query-gpu=index,name", lambda rows: any("a100" in row[1].lower() for row in rows)),
                   "mig": ("--query-gpu=index,mig.mode.current", lambda rows: any(row[1].lower() == "enabled" for row in rows)),
                   # Every CUDA process holds /dev/nvidia-uvm; nvidia-smi sees them without hostPID.
                   "uvm_in_use": ("--query-compute-apps=pid,gpu_bus_id", lambda rows: any(row[0].isdigit() for row in rows))}
        facts = {}
        for fact in needed:
            query, judge = queries[fact]
            tool = self.nvidia_smi(query, "--format=csv,noheader", timeout=FACT_TIMEOUT)
            if tool.found and tool.returncode == 0 and not tool.timed_out:
                facts[fact] = judge([row for row in csv_rows(tool.stdout) if len(row) >= 2])
        return facts


def run_checks(config, node_instance_type, probe):
    """One cycle of the enabled checks: {check: {status, severity, detail, ...}}."""
    enabled = config["checks"]
    profile = (config["instance_profiles"].get(node_instance_type) or {}) if node_instance_type else {}
    results = {}
    if enabled["gpu_count"]:
        results["gpu_count"] = eval_gpu_count(probe.nvidia_smi("-L"), probe.proc_gpu_count(), profile.get("gpus"), node_instance_type)
    if enabled["gpu_state"]:
        results["gpu_state"] = eval_gpu_state(probe.nvidia_smi(
            "--query-gpu=index,pci.bus_id,pstate,temperature.gpu,power.draw", "--format=csv,noheader"))
    if enabled["ecc"]:
        results["ecc"] = eval_ecc(probe.nvidia_smi(
            "--query-gpu=index,ecc.errors.uncorrected.volatile.total", "--format=csv,noheader,nounits"))
    if enabled["retired_pages"]:
        results["retired_pages"] = eval_retired_pages(
            probe.nvidia_smi("--query-gpu=index,retired_pages.pending,retired_pages.sbe,retired_pages.dbe",
                             "--format=csv,noheader"),
            probe.nvidia_smi("--query-gpu=index,remapped_rows.pending,remapped_rows.failure", "--format=csv,noheader"),
            config["retired_pages_sbe_max"])
    if enabled["persistence_mode"]:
        results["persistence_mode"] = eval_persistence(probe.nvidia_smi("--query-gpu=index,persistence_mode",
                                                                        "--format=csv,noheader"))
    if enabled["efa"]:
        count, source = probe.efa_devices()
        results["efa"] = eval_efa(count, source, profile.get("efa"), node_instance_type)
    if enabled["nvlink"]:
        results["nvlink"] = eval_nvlink(probe.nvidia_smi("nvlink", "-s"))
    if enabled["topology"]:
        results["topology"] = eval_topology(probe.nvidia_smi("topo", "-m"), profile.get("gpus"), profile.get("nvlink"))
    if enabled["fabric_manager"]:
        nvlink = profile.get("nvlink")
        results["fabric_manager"] = eval_fabric(
            probe.nvidia_smi("--query-gpu=index,fabric.state,fabric.status", "--format=csv,noheader") if nvlink else None,
            nvlink)
    for name in CHECKS:
        if not enabled[name]:
            results[name] = skipped("disabled in the configuration")
    return results


# ============================================================================================
# The configuration file, re-read when it changes
# ============================================================================================

class ConfigFile:
    """The config file and the configuration in force.

    poll() looks at the file's identity (device, inode, mtime, size): kubelet and the local runner
    replace it atomically, which changes the inode. A changed file is applied if valid; an invalid
    or missing one leaves the configuration in force as it is (logged once per version of the file).
    """

    def __init__(self, path):
        self.path = path
        self.current = default_config()
        self.signature = None
        self.rejected = None

    def _signature(self):
        try:
            stat = os.stat(self.path)
        except OSError as e:
            return ("missing", e.errno)
        return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def poll(self):
        """(old, new) configuration when a changed file was applied, else None."""
        signature = self._signature()
        if signature in (self.signature, self.rejected):
            return None
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read(MAX_CONFIG_BYTES + 1)
            if len(text) > MAX_CONFIG_BYTES:
                raise ConfigError("the file is larger than %d bytes" % MAX_CONFIG_BYTES)
            config, notes = validate_config(json.loads(text))
        except (OSError, ValueError) as e:   # ConfigError and JSON errors are ValueErrors
            self.rejected = signature
            warn("config_rejected", level="error", path=self.path, error=str(e),
                 note="the configuration in force stays" if self.signature else "running with the defaults")
            return None
        for note in notes:
            warn("config_note", path=self.path, note=note)
        old, self.current = self.current, config
        self.signature, self.rejected = signature, None
        log("config_applied", path=self.path, changed=sorted(key for key in config if config[key] != old[key]),
            taint_min_severity=config["taint_min_severity"], cordon=config["cordon"],
            cordon_min_severity=config["cordon_min_severity"], interval_seconds=config["interval_seconds"])
        return old, config


# ============================================================================================
# The agent: kernel log watcher, node watch, checks, marker
# ============================================================================================

class HealthAgent:
    """Ties findings, configuration and the node together; each loop runs in its own thread.

    * follow_kernel_log: records -> findings; one that raises the node's severity asks for a mark
      in BATCH_WINDOW, others within UPDATE_DELAY. It starts with the boot scan: the current boot's
      records after the log position the node's results annotation carries;
    * watch_node: keeps a fresh copy of the node and notices a new clear-findings-before and the
      results of the sweep's and the quarantine's diagnostic Jobs;
    * check_loop: the lightweight checks every interval_seconds (at once after a clear or when the
      enabled checks change);
    * marker_loop: the only writer; applies plan_marks with optimistic concurrency.
    """

    def __init__(self, api, node_name, settings, probe=None, clock=now_utc, agent=None):
        self.api = api
        self.node_name = node_name
        self.settings = settings
        self.probe = probe or Probe()
        self.clock = clock
        self.agent = agent or {}
        self.findings = Findings()
        self.stop = threading.Event()
        self.node = None
        self.node_lock = threading.Lock()
        self.mark_lock = threading.Lock()
        self.wake = threading.Condition()
        self.due = None             # monotonic time of the next mark
        self.pending_since = None   # monotonic time the earliest unmarked escalation was read
        self.old_prefix = None      # prefix before a config change, until a mark has moved off it
        self.cleared = None         # the clear-findings-before value last applied
        self.cutoff = None          # ... as a time: records and Job results before it do not count
        self.position = None        # kernel log position counted up to (log_position)
        self.position_lock = threading.Lock()
        self.started = threading.Event()
        self.checks_now = threading.Event()

    # --- state ----------------------------------------------------------------------------------

    def config(self):
        return self.settings.current

    def cached_node(self):
        with self.node_lock:
            return self.node

    def set_node(self, node):
        with self.node_lock:
            self.node = node

    # --- start ----------------------------------------------------------------------------------

    def start(self):
        """Read the node (retrying until the API answers), take back its findings, apply a clear."""
        backoff = 1.0
        while not self.stop.is_set():
            try:
                node = self.api.get()
                break
            except ApiError as e:
                warn("node_read_failed", node=self.node_name, error=str(e), retry_in=backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        else:
            return
        self.set_node(node)
        self.restore(node)
        self.apply_clear(node)
        self.note_job_results(node)
        self.started.set()

    def restore(self, node):
        """Findings, the clear last applied and the log position from the agent's own results
        annotation: severity stays sticky across restarts, and nothing is counted twice."""
        text = node_annotations(node).get(self.config()["prefix"] + RESULTS_ANNOTATION)
        try:
            document = json.loads(text) if text else None
        except ValueError:
            document = None
        if not isinstance(document, dict) or document.get("node") != self.node_name:
            return 0
        count = self.findings.restore(document.get("findings"))
        self.cleared = document.get("clear_findings_before")
        self.cutoff = self._parse_cutoff(self.cleared)
        self.set_position(document.get("log_position"))
        if count:
            log("findings_restored", node=self.node_name, count=count,
                severity=self.findings.severity(self.config()["xid_severity_overrides"]))
        return count

    def apply_clear(self, node):
        """Drop the findings last seen before a new clear-findings-before; True when one was applied."""
        value = node_annotations(node).get(self.config()["prefix"] + CLEAR_ANNOTATION)
        if not value or value == self.cleared:
            return False
        self.cleared = value
        try:
            cutoff = parse_rfc3339(value)
        except ValueError as e:
            warn("clear_rejected", node=self.node_name, value=clip(value), error=str(e))
            return False
        # A time in the future clears what was seen so far, not what comes until then.
        self.cutoff = min(cutoff, self.clock())
        dropped = self.findings.clear_before(self.cutoff)
        log("findings_cleared", node=self.node_name, before=value, dropped=len(dropped),
            findings=[_finding_brief(finding) for finding in dropped])
        return True

    def _parse_cutoff(self, value):
        try:
            return min(parse_rfc3339(value), self.clock()) if value else None
        except ValueError:
            return None

    def note_job_results(self, node):
        """A failed sweep or quarantine recorded on the node becomes a finding (once per Job and
        part), unless it finished before the last clear."""
        observations = [observation for observation in job_observations(node, self.config())
                        if (self.cutoff is None or observation["at"] >= self.cutoff)
                        and not self.findings.has(observation)]
        if not observations:
            return []
        overrides = self.config()["xid_severity_overrides"]
        before, after, added = self.findings.add(observations, self.clock(), overrides)
        for finding, _new in added:
            log("finding", node=self.node_name, new=True, **_finding_brief(finding))
        self.request_mark(BATCH_WINDOW if rank(after) > rank(before) else UPDATE_DELAY)
        return added

    def set_position(self, position):
        with self.position_lock:
            self.position = position if isinstance(position, dict) else None

    def current_position(self):
        with self.position_lock:
            return copy.deepcopy(self.position)

    # --- marking --------------------------------------------------------------------------------

    def request_mark(self, delay=0.0, since=None):
        """Ask the marker for an update within ``delay`` seconds (the earliest request wins)."""
        with self.wake:
            due = time.monotonic() + delay
            if self.due is None or due < self.due:
                self.due = due
            if since is not None and (self.pending_since is None or since < self.pending_since):
                self.pending_since = since
            self.wake.notify()

    def marker_loop(self):
        while not self.stop.is_set():
            with self.wake:
                now = time.monotonic()
                if self.due is None or self.due > now:
                    self.wake.wait(1.0 if self.due is None else min(1.0, self.due - now))
                    continue
                self.due, since, self.pending_since = None, self.pending_since, None
            try:
                self.mark_once(since)
            except Exception as e:  # pylint: disable=broad-except
                # API down, node gone, an odd answer: the marks are retried, the agent goes on.
                warn("mark_failed", node=self.node_name, error="%s: %s" % (type(e).__name__, e), retry_in=MARK_RETRY)
                self.request_mark(MARK_RETRY, since)

    def mark_once(self, since=None):
        """Bring the node's marks in line with the findings; re-read and retry on 409. Returns the MarkPlan."""
        with self.mark_lock:
            config = self.config()
            node = self.cached_node()
            if node is None:
                node = self.api.get()
                self.set_node(node)
            attempts = 0
            while True:
                attempts += 1
                findings = self.findings.snapshot(config["xid_severity_overrides"])
                plan = plan_marks(node, findings, self.findings.latest_checks(), config, self.clock(),
                                  self.agent, self.old_prefix, self.cleared, self.current_position())
                try:
                    updated = self.api.patch(plan.patch)
                except ApiError as e:
                    if e.status != 409 or attempts >= CONFLICT_RETRIES:
                        raise
                    # The node changed since it was read (taints are read-modify-write): read it again.
                    node = self.api.get()
                    self.set_node(node)
                    continue
                self.set_node(updated)
                self.old_prefix = None
                break
            fields = {"node": self.node_name, "severity": plan.severity, "status": plan.status,
                      "agent_taint": plan.taint, "agent_cordon": plan.cordon, "attempts": attempts}
            if since is not None:
                fields["latency_ms"] = round((time.monotonic() - since) * 1000, 1)
            if plan.changes:
                log("marks_changed", changes=plan.changes, **fields)
            elif since is not None:
                log("marked", **fields)
            return plan

    # --- kernel log -----------------------------------------------------------------------------

    def on_records(self, records, seen=None, scanned=False):
        """Findings from records just read; returns the findings added or updated.

        scanned: records the boot scan read back from before the agent started; each counts at its
        own time (when the source knows it), and one logged before the last clear not at all.
        """
        seen = time.monotonic() if seen is None else seen
        observations, facts = [], {}    # node facts read once per batch (a boot scan may hold many)
        for record in records:
            at = record.meta.get("time") if scanned else None
            if at is not None and self.cutoff is not None and at < self.cutoff:
                continue
            for observation in record_observations(record):
                if observation["kind"] == "xid" and observation["xid"] is None:
                    warn("xid_line_unparsed", node=self.node_name, text=observation["text"])
                    continue
                if observation["kind"] == "xid":
                    needed = xid_catalog.aws_node_facts(observation["xid"])
                    if needed:
                        if needed not in facts:
                            facts[needed] = self.probe.node_facts(needed)
                        observation["facts"] = dict(facts[needed])
                if at is not None:
                    observation["at"] = at
                observations.append(observation)
        if not observations:
            return []
        overrides = self.config()["xid_severity_overrides"]
        before, after, added = self.findings.add(observations, self.clock(), overrides)
        for finding, new in added:
            log("finding", node=self.node_name, new=new, **_finding_brief(finding))
        if rank(after) > rank(before):
            self.request_mark(BATCH_WINDOW, since=seen)
        else:
            self.request_mark(UPDATE_DELAY)
        return [finding for finding, new in added]

    def follow_kernel_log(self, source):
        """Follow the kernel log once start() has read the node: first the boot scan (the records of
        the current boot after the log position, at most boot_scan_lines), then what comes."""
        backoff = 1.0
        while not self.started.wait(READ_TIMEOUT):
            if self.stop.is_set():
                return
        while not self.stop.is_set():
            try:
                scanned = source.open(self.current_position(), self.config()["boot_scan_lines"])
                log("kernel_log_followed", node=self.node_name, source=source.describe(), scanned=len(scanned),
                    position=source.position())
                self.on_records(scanned, scanned=True)
                self.set_position(source.position())
                while not self.stop.is_set():
                    records = source.read(READ_TIMEOUT)
                    if records:
                        self.on_records(records)
                        self.set_position(source.position())
                    backoff = 1.0
            except Exception as e:  # pylint: disable=broad-except
                # The device, the journal process or the file went away: open it again after a pause.
                warn("kernel_log_error", node=self.node_name, source=source.describe(),
                     error="%s: %s" % (type(e).__name__, e), retry_in=backoff)
            finally:
                source.close()
            self.stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    # --- node -----------------------------------------------------------------------------------

    def on_node(self, node):
        self.set_node(node)
        self.note_job_results(node)
        if self.apply_clear(node):
            # Re-run the checks so that the marks follow what is true now; mark anyway after a while.
            self.checks_now.set()
            self.request_mark(CLEAR_MARK_DELAY)

    def watch_node(self):
        """Follow the node through a watch (list/watch on nodes); poll it when the API refuses the watch."""
        backoff, polling, version = 1.0, False, None
        while not self.stop.is_set():
            try:
                if version is None or polling:
                    node = self.api.get()
                    self.on_node(node)
                    version = _metadata(node).get("resourceVersion")
                    if polling:
                        self.stop.wait(NODE_POLL_SECONDS)
                        continue
                version = self._watch_once(version)
                backoff = 1.0
            except ApiError as e:
                if e.status == 403 and not polling:
                    polling = True
                    warn("node_watch_refused", node=self.node_name, error=str(e),
                         note="reading the node every %d s instead; grant list and watch on nodes" % NODE_POLL_SECONDS)
                    continue
                version = None
                warn("node_watch_error", node=self.node_name, error=str(e), retry_in=backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as e:  # pylint: disable=broad-except
                version = None
                warn("node_watch_error", node=self.node_name, error="%s: %s" % (type(e).__name__, e), retry_in=backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _watch_once(self, version):
        """One watch from ``version``; the last resourceVersion seen, or None to read the node again."""
        for event in self.api.watch(version):
            if self.stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    return None
                raise ApiError(obj.get("code") or 0, obj.get("reason") or "", obj.get("message") or "")
            version = _metadata(obj).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED"):
                self.on_node(obj)
            elif kind == "DELETED":
                warn("node_deleted", node=self.node_name)
                return None
        return version

    # --- checks ---------------------------------------------------------------------------------

    def run_checks_once(self):
        config = self.config()
        node = self.cached_node() or {}
        results = run_checks(config, instance_type(node), self.probe)
        before, after, added = self.findings.add_checks(results, self.clock(), config["xid_severity_overrides"])
        for finding, new in added:
            if new:
                log("finding", node=self.node_name, new=new, **_finding_brief(finding))
        log("checks_completed", node=self.node_name, severity=after,
            results=dict((name, entry["status"]) for name, entry in sorted(results.items())))
        self.request_mark(0.0, since=time.monotonic() if rank(after) > rank(before) else None)
        return results

    def check_loop(self):
        last = None
        while not self.stop.is_set():
            interval = self.config()["interval_seconds"]
            now = time.monotonic()
            if last is None or now - last >= interval or self.checks_now.is_set():
                self.checks_now.clear()
                last = now
                try:
                    self.run_checks_once()
                except Exception as e:  # pylint: disable=broad-except
                    warn("checks_failed", node=self.node_name, error="%s: %s" % (type(e).__name__, e))
                continue
            self.checks_now.wait(min(1.0, interval - (now - last)))

    # --- configuration --------------------------------------------------------------------------

    def poll_config(self):
        """Apply a changed config file: marks follow at once (thresholds, prefix, overrides)."""
        change = self.settings.poll()
        if change is None:
            return False
        old, new = change
        if old["prefix"] != new["prefix"] and self.old_prefix is None:
            self.old_prefix = old["prefix"]
        if old["checks"] != new["checks"] or old["instance_profiles"] != new["instance_profiles"]:
            self.checks_now.set()
        self.request_mark(0.0)
        return True

    # --- run ------------------------------------------------------------------------------------

    def run(self, source):
        """Start the loops and poll the config file every second until stopped.

        The kernel log is followed once the node is read (its results annotation holds the log
        position to go on from): records logged meanwhile are read by the boot scan.
        """
        threads = [threading.Thread(target=self.follow_kernel_log, args=(source,), name="kernel-log", daemon=True)]
        threads[0].start()
        self.start()
        threads += [threading.Thread(target=target, name=name, daemon=True) for name, target in (
            ("node-watch", self.watch_node), ("marker", self.marker_loop), ("checks", self.check_loop))]
        for thread in threads[1:]:
            thread.start()
        self.request_mark(0.0)
        while not self.stop.wait(1.0):
            self.poll_config()
            dead = [thread.name for thread in threads if not thread.is_alive()]
            if dead:
                warn("agent_thread_died", node=self.node_name, threads=dead)
                self.stop.set()
                return 1
        with self.wake:
            self.wake.notify_all()
        return 0


def _finding_brief(finding):
    """A finding's fields for a log line."""
    return dict((key, finding[key]) for key in ("kind", "xid", "sxid", "check", "job", "pci", "switch", "severity",
                                                "facts", "count", "time", "detail", "text") if key in finding)


# ============================================================================================
# Command line
# ============================================================================================

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="GPU health agent: marks its node from XIDs and GPU checks.")
    parser.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node (env NODE_NAME)")
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="the JSON configuration (re-read when it changes)")
    parser.add_argument("--kmsg-source", choices=SOURCES, default="kmsg",
                        help="kmsg: the kernel log device; journal: journalctl -k -f; file: a file records are appended to")
    parser.add_argument("--kmsg-path", default=DEFAULT_KMSG_PATH, help="the device or file (sources kmsg and file)")
    parser.add_argument("--host-root", default="/", help="where the host's journal directories are mounted under (source journal)")
    parser.add_argument("--sys-dir", default="/host/sys", help="the host's /sys (EFA devices)")
    parser.add_argument("--nvidia-proc", default="/host/proc/driver/nvidia", help="the host's /proc/driver/nvidia (GPU count)")
    parser.add_argument("--boot-id-file", default="/host/proc/sys/kernel/random/boot_id",
                        help="the host's boot id: whether the log position in the node's results is of the current boot")
    args = parser.parse_args(argv)
    if not args.node:
        parser.error("--node is required (or the environment variable NODE_NAME)")
    return args


def main(argv=None):
    args = parse_args(argv)
    agent_info = {"pod": os.environ.get("POD_NAME"), "namespace": os.environ.get("POD_NAMESPACE")}
    settings = ConfigFile(args.config)
    settings.poll()
    try:
        client = KubeClient.in_cluster(AGENT_NAME, API_TIMEOUT)
    except (ApiError, OSError, ssl.SSLError) as e:
        warn("agent_failed", level="error", error="cannot reach the Kubernetes API: %s" % e)
        return 1
    agent = HealthAgent(NodeApi(client, args.node), args.node, settings, Probe(args.sys_dir, args.nvidia_proc),
                        agent=agent_info)

    def on_signal(signum, frame):  # pylint: disable=unused-argument
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    boot_id = read_boot_id(args.boot_id_file)
    if boot_id is None:
        warn("boot_id_unknown", path=args.boot_id_file,
             note="the log position cannot tell boots apart: a restart goes on from it in any boot")
    source = make_source(args.kmsg_source, args.kmsg_path, args.host_root, boot_id)
    log("agent_started", node=args.node, source=source.describe(), config=args.config, boot_id=boot_id, **agent_info)
    status = agent.run(source)
    log("agent_stopped", node=args.node)
    return status


if __name__ == "__main__":
    sys.exit(main())
