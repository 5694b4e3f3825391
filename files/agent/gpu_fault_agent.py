# -*- coding: utf-8 -*-
# Copyright: contributors to gpu_resilience.fault_injection
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""GPU fault agent: carries out the GPUFault objects addressed to one Kubernetes node.

Run as ``python3 gpu_fault_agent.py --node NODE --namespace NS --pod-name POD`` with
xid_catalog.py and fault_api.py in the same directory (a ConfigMap on a stock Python image, or
the image of files/agent/Dockerfile). Python 3.8+ standard library only.

What it does:

* discovers the node's GPUs from ``<nvidia-proc>/gpus/<pci>/information`` (the host's /proc/driver/nvidia);
* keeps a Lease named after the node, renewed every few seconds, whose annotation carries the
  GPU inventory: modules read it to know an agent runs and which GPUs it can target. The Lease
  is deleted on SIGTERM/SIGINT so that its absence means "no agent";
* lists and watches the GPUFault objects labelled for its node and injects each one exactly
  once: it claims the object (status phase Injecting, optimistic concurrency on the
  resourceVersion) before it writes anything, then reports Injected or Failed.

Injection writes the catalog's driver records to /dev/kmsg (method kmsg) or runs
``dcgmi test --inject`` (method dcgm). The agent opens no listening socket and starts no
process other than dcgmi; everything it is asked to do arrives through the Kubernetes API,
whose RBAC is the access control, and is validated here again before anything is written.

Layout, top-down: pure functions (GPU discovery, record forms, Lease and status bodies), then
the injectors, the Kubernetes API client, the fault controller and the command line.
"""

import argparse
import copy
import datetime
import functools
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import namedtuple

# xid_catalog.py, fault_api.py, shim_control.py and kube_api.py are shipped next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xid_catalog  # noqa: E402  pylint: disable=wrong-import-position
import fault_api  # noqa: E402  pylint: disable=wrong-import-position
import shim_control  # noqa: E402  pylint: disable=wrong-import-position
from kube_api import ApiError, KubeClient  # noqa: E402  pylint: disable=wrong-import-position

AGENT_NAME = "gpu-fault-agent"
GPUS_DIR = "gpus"
RECORD_FORMS = ("journald", "dmesg")
KMSG_PRIORITY = b"<3>"          # err, as the driver logs XIDs
KMSG_MAX_RECORD = 976           # the kernel refuses longer /dev/kmsg writes (LOG_LINE_MAX - prefix)
DCGM_XID_FIELD = "230"          # DCGM_FI_DEV_XID_ERRORS
DCGM_TIMEOUT = 30
MAX_ERROR_LEN = 1000            # status.error and dcgmi output kept in status
LEASE_API = "/apis/coordination.k8s.io/v1"
FAULT_API = "/apis/%s/%s" % (fault_api.GROUP, fault_api.VERSION)
RESTARTED_ERROR = "agent restarted during injection; records may be partially written"
GPU_UUID_RE = fault_api.GPU_UUID


# ============================================================================================
# Logging: JSON lines. Fault outcomes and lifecycle events go to stdout, problems to stderr.
# ============================================================================================

def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def rfc3339(moment):
    """RFC 3339 with microseconds, the form Lease MicroTime fields require."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log(event, stream=None, **fields):
    entry = {"time": rfc3339(now_utc()), "event": event}
    entry.update(fields)
    out = stream or sys.stdout
    out.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
    out.flush()


def warn(event, **fields):
    log(event, stream=sys.stderr, level="warning", **fields)


def truncate(text, limit=MAX_ERROR_LEN):
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ============================================================================================
# GPU discovery
# ============================================================================================

def parse_information(text):
    """The ``Key: value`` lines of a driver information file, as a dict of stripped strings."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def gpu_from_information(dirname, text):
    """One GPU {pci, minor, uuid, model} from its directory name and information file.

    Raises ValueError for an entry that cannot be a GPU of this driver (bad directory name,
    missing or non-numeric Device Minor, Bus Location disagreeing with the directory). A missing
    or malformed UUID is kept as None: the GPU still exists and still counts for the index.
    """
    pci = xid_catalog.format_pci_bdf(dirname)  # ValueError for a name that is no PCI address
    fields = parse_information(text)
    minor = fields.get("Device Minor", "")
    if not minor.isdigit():
        raise ValueError("Device Minor %r is not a number" % (minor,))
    location = fields.get("Bus Location")
    if location and xid_catalog.format_pci_bdf(location) != pci:
        raise ValueError("Bus Location %s does not match the directory name" % (location,))
    uuid = fields.get("GPU UUID")
    if uuid is not None and not GPU_UUID_RE.match(uuid):
        uuid = None
    return {"pci": pci, "minor": int(minor), "uuid": uuid, "model": fields.get("Model")}


def discover_gpus(nvidia_proc):
    """The node's GPUs in nvidia-smi order (PCI bus order), each {index, minor, pci, uuid, model}.

    The index is the position in PCI order, as nvidia-smi and CUDA (PCI_BUS_ID order) number the
    GPUs; the device minor (/dev/nvidiaN) is a different number and is reported separately.
    Malformed entries are skipped with a warning, so one odd directory does not stop the agent.
    """
    base = os.path.join(nvidia_proc, GPUS_DIR)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    gpus = {}
    for name in names:
        try:
            with open(os.path.join(base, name, "information"), encoding="utf-8", errors="replace") as handle:
                gpu = gpu_from_information(name, handle.read(65536))
        except (OSError, ValueError) as e:
            warn("gpu_entry_ignored", entry=name, error=str(e))
            continue
        if gpu["pci"] in gpus:
            warn("gpu_entry_ignored", entry=name, error="duplicate of PCI address %s" % gpu["pci"])
            continue
        if gpu["uuid"] is None:
            warn("gpu_uuid_missing", entry=name)
        gpus[gpu["pci"]] = gpu
    ordered = sorted(gpus.values(), key=lambda gpu: xid_catalog.parse_pci(gpu["pci"]))
    return [dict(gpu, index=index) for index, gpu in enumerate(ordered)]


def public_gpu(gpu):
    """What the Lease annotation and a fault's status say about a GPU (no model)."""
    return {key: gpu.get(key) for key in ("index", "minor", "pci", "uuid")}


def inventory_annotation(inventory):
    """Compact JSON of the inventory, for the Lease annotation."""
    return json.dumps([public_gpu(gpu) for gpu in inventory], separators=(",", ":"), sort_keys=True)


# ============================================================================================
# Record forms: what is written to /dev/kmsg for one driver record
# ============================================================================================

def record_text(record, form):
    """The text to write for a driver record, so that the detectors read the record itself.

    journald (default): journald takes a leading ``identifier:`` of a user-space kmsg record as
    SYSLOG_IDENTIFIER and keeps only the rest as MESSAGE; NVSentinel matches MESSAGE against
    ``NVRM: Xid ...``. The record's own identifier is therefore written twice (the catalog's
    kmsg_text), and MESSAGE ends up equal to the record as the driver prints it.
    dmesg: the record as the driver prints it, for readers of dmesg / the kernel ring buffer.
    """
    if form == "journald":
        return xid_catalog.kmsg_text(record)
    if form == "dmesg":
        return record
    raise ValueError("record form %r is not one of %s" % (form, ", ".join(RECORD_FORMS)))


def kmsg_payload(text):
    """One /dev/kmsg write: priority prefix, the text, a trailing newline (kmsg accepts one)."""
    payload = KMSG_PRIORITY + text.encode("ascii") + b"\n"
    if len(payload) > KMSG_MAX_RECORD:
        raise ValueError("record of %d bytes is longer than /dev/kmsg accepts" % len(payload))
    return payload


def dcgm_argv(dcgmi, gpu_index, xid):
    """``dcgmi test --inject`` for one GPU; --gpuid is explicit because dcgmi defaults it to 1."""
    return [dcgmi, "test", "--inject", "--gpuid", str(gpu_index), "-f", DCGM_XID_FIELD, "-v", str(xid)]


# ============================================================================================
# Lease and status bodies
# ============================================================================================

def lease_body(namespace, node, pod, inventory, duration, now, existing=None, record_form="journald"):
    """The agent Lease, created or taken over by ``pod``, renewed at ``now`` (a datetime).

    Besides the inventory it tells modules the record form, so check mode predicts exact records.
    """
    lease = copy.deepcopy(existing) if existing else {
        "metadata": {"name": fault_api.lease_name(node), "namespace": namespace},
        "spec": {},
    }
    lease["apiVersion"] = "coordination.k8s.io/v1"
    lease["kind"] = "Lease"
    metadata = lease.setdefault("metadata", {})
    metadata.setdefault("labels", {})["app.kubernetes.io/name"] = AGENT_NAME
    annotations = metadata.setdefault("annotations", {})
    annotations[fault_api.INVENTORY_ANNOTATION] = inventory_annotation(inventory)
    annotations[fault_api.RECORD_FORM_ANNOTATION] = record_form
    spec = lease.setdefault("spec", {})
    stamp = rfc3339(now)
    if spec.get("holderIdentity") != pod:
        if existing:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["acquireTime"] = stamp
    spec.setdefault("acquireTime", stamp)
    spec.update(holderIdentity=pod, leaseDurationSeconds=int(duration), renewTime=stamp)
    return lease


def fault_name(obj):
    return (obj.get("metadata") or {}).get("name", "?")


def fault_key(obj):
    """The object's uid: a fault deleted and created again under its name is a new fault."""
    metadata = obj.get("metadata") or {}
    return metadata.get("uid") or metadata.get("name")


def fault_phase(obj):
    return (obj.get("status") or {}).get("phase")


def claim_status(pod, now):
    return {"phase": fault_api.PHASE_INJECTING, "agent": pod, "claimedAt": rfc3339(now)}


def final_status(obj, pod, now, gpus=(), records=(), error=None, claimed_at=None, shim=None):
    """Status phase Injected, or Failed when ``error`` is given (with what was written so far)."""
    status = {
        "phase": fault_api.PHASE_FAILED if error else fault_api.PHASE_INJECTED,
        "agent": pod,
        "gpus": [public_gpu(gpu) for gpu in gpus],
        "records": list(records),
    }
    if claimed_at:
        status["claimedAt"] = claimed_at
    if shim:
        status["shimControl"] = shim.strip()
    if error:
        status["error"] = truncate(error)
    else:
        status["injectedAt"] = rfc3339(now)
    generation = (obj.get("metadata") or {}).get("generation")
    if isinstance(generation, int):
        status["observedGeneration"] = generation
    return status


def with_status(obj, status):
    """The full object for a PUT to the status subresource (apiVersion/kind: list items lack them)."""
    body = dict(obj, status=status)
    body["apiVersion"] = fault_api.API_VERSION
    body["kind"] = fault_api.KIND
    return body


# ============================================================================================
# Plans: everything about a fault is decided, validated and rendered before it is claimed
# ============================================================================================

class FaultRefused(Exception):
    """A fault this agent will not carry out; nothing has been written for it."""


class InjectionError(Exception):
    """Injection stopped part-way; ``done`` records had been written (or commands run)."""

    def __init__(self, message, done):
        super().__init__(message)
        self.done = done


# method: kmsg|dcgm; gpus: inventory entries; records: status strings; actions: kmsg payloads or argv lists
# shim: the control line to write (arming or disarming the node's CUDA fault shim), or None.
Plan = namedtuple("Plan", "spec method gpus records actions shim")


def resolve_dcgmi(dcgmi):
    """The dcgmi executable to run; FaultRefused when it is not there."""
    if os.sep in dcgmi:
        found = dcgmi if os.path.isfile(dcgmi) and os.access(dcgmi, os.X_OK) else None
    else:
        found = shutil.which(dcgmi)
    if not found:
        raise FaultRefused("dcgmi not found at %s; install DCGM or use method kmsg" % dcgmi)
    return found


def plan_fault(obj, node, inventory, record_form, dcgmi="dcgmi", seq=None):
    """Validate a GPUFault against this node and render what injecting it writes or runs.

    Raises FaultRefused with the reason when the fault must not be carried out. The spec is
    validated again here (the API is not trusted blindly), and message overrides only reach a
    record through the catalog's renderer, which sanitises them.
    """
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise FaultRefused("GPUFault %s has no spec" % fault_name(obj))
    if spec.get("node") != node:
        raise FaultRefused("GPUFault %s is addressed to node %s; this agent runs on %s"
                           % (fault_name(obj), spec.get("node"), node))
    try:
        spec = fault_api.validate_spec(spec)
        if "sxid" in spec:
            plan = _plan_sxid(spec, record_form)
        elif "xid" not in spec:   # shim: disarm on its own
            plan = Plan(spec, "shim", [], [], [], None)
        else:
            selector = dict(spec["gpu"])
            if "pci" in selector:  # compare canonical addresses: 00000001:00:00.0 is 0001:00:00.0
                selector["pci"] = xid_catalog.format_pci_bdf(selector["pci"])
            gpus = fault_api.select_gpus(node, inventory, selector)
            plan = _plan_dcgm(spec, gpus, dcgmi) if spec["method"] == "dcgm" else _plan_xid(spec, gpus, record_form)
        return plan._replace(shim=shim_line(spec, plan.gpus, fault_name(obj), seq))
    except (fault_api.FaultSpecError, ValueError) as e:  # UnknownXidError is a ValueError
        raise FaultRefused("GPUFault %s: %s" % (fault_name(obj), e)) from e


def shim_line(spec, gpus, name, seq=None):
    """The shim control line a fault asks for, or None. One GPU is targeted; several mean all."""
    if "shim" not in spec:
        return None
    seq = int(time.time() * 1000) if seq is None else seq
    if spec["shim"] == "disarm":
        return shim_control.render(False, seq, name)
    target = gpus[0]["pci"] if len(gpus) == 1 and "all" not in spec.get("gpu", {}) else None
    return shim_control.render(True, seq, name, xid=spec["xid"], gpu=target)


def _plan_xid(spec, gpus, record_form):
    records = []
    for gpu in gpus:
        records.extend(xid_catalog.render_xid_lines(
            spec["xid"], gpu["pci"], message=spec.get("message"),
            recovery_action=spec.get("recoveryAction"), uuid=gpu.get("uuid")))
    return _kmsg_plan(spec, gpus, records, record_form)


def _plan_sxid(spec, record_form):
    sxid = spec["sxid"]
    records = xid_catalog.render_sxid_lines(sxid["code"], sxid["pci"], switch=sxid["nvswitch"],
                                            link=sxid["link"], message=spec.get("message"))
    return _kmsg_plan(spec, [], records, record_form)


def _kmsg_plan(spec, gpus, records, record_form):
    texts = [record_text(record, record_form) for record in records]
    return Plan(spec, "kmsg", list(gpus), texts, [kmsg_payload(text) for text in texts], None)


def _plan_dcgm(spec, gpus, dcgmi):
    if any(gpu.get("index") is None for gpu in gpus):
        raise FaultRefused("method dcgm needs a GPU the driver lists; the node reports none")
    executable = resolve_dcgmi(dcgmi)
    commands = [dcgm_argv(executable, gpu["index"], spec["xid"]) for gpu in gpus]
    return Plan(spec, "dcgm", list(gpus), [" ".join(argv) for argv in commands], commands, None)


# ============================================================================================
# Injectors
# ============================================================================================

def write_kmsg(path, payloads):
    """Write each payload as one record to the kernel log device.

    Each record gets its own open(): the kernel rate-limits user-space writes per open file
    (10 records per 5 s unless printk.devkmsg=on) and drops the excess while reporting success,
    so a burst on one descriptor (XID 79 on eight GPUs) would silently lose records.
    """
    for done, payload in enumerate(payloads):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                written = os.write(fd, payload)
            finally:
                os.close(fd)
        except OSError as e:
            raise InjectionError("writing record %d to %s failed: %s" % (done + 1, path, e), done) from e
        if written != len(payload):
            raise InjectionError("short write of record %d to %s" % (done + 1, path), done)
    return len(payloads)


def run_dcgm(commands, timeout=DCGM_TIMEOUT):
    """Run each dcgmi argv (no shell); InjectionError with its stderr on the first failure."""
    for done, argv in enumerate(commands):
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise InjectionError("%s timed out after %d s" % (" ".join(argv), timeout), done) from None
        except OSError as e:
            raise InjectionError("could not run %s: %s" % (argv[0], e), done) from e
        if result.returncode != 0:
            output = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
            raise InjectionError("%s exited with status %d: %s"
                                 % (" ".join(argv), result.returncode, truncate(output, 500)), done)
    return len(commands)


def write_shim_control(directory, text):
    """Replace the node's shim control file atomically: shimmed processes never read half a line."""
    target = os.path.join(directory, shim_control.CONTROL_FILE)
    temporary = os.path.join(directory, ".%s.%d.tmp" % (shim_control.CONTROL_FILE, os.getpid()))
    try:
        with open(temporary, "w", encoding="ascii") as f:
            f.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as e:
        raise InjectionError("writing the shim control file %s failed: %s" % (target, e), 0) from e


def read_shim_control(directory):
    """The node's current shim control state, or None (no file, or not a control line)."""
    try:
        with open(os.path.join(directory, shim_control.CONTROL_FILE), encoding="ascii") as f:
            return shim_control.parse(f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def kmsg_writable(path):
    """Why the kernel log cannot be written, or None. Checked before a fault is claimed."""
    if not os.path.exists(path):
        return "kernel log device %s does not exist (is the host's /dev/kmsg mounted?)" % path
    if not os.access(path, os.W_OK):
        return "kernel log device %s is not writable by this agent" % path
    return None


# ============================================================================================
# The GPUFault objects and the Lease, through the Kubernetes API (kube_api.py, the node programs'
# shared client)
# ============================================================================================

class ClusterApi:
    """The few API calls the agent makes, on one namespace. Tests replace it with a fake."""

    def __init__(self, client, namespace):
        self.client = client
        self.faults = "%s/namespaces/%s/%s" % (FAULT_API, urllib.parse.quote(namespace), fault_api.PLURAL)
        self.leases = "%s/namespaces/%s/leases" % (LEASE_API, urllib.parse.quote(namespace))

    def list_faults(self, selector):
        """(items, resourceVersion) of the faults matching a label selector."""
        answer = self.client.request("GET", self.faults, {"labelSelector": selector})
        return answer.get("items") or [], (answer.get("metadata") or {}).get("resourceVersion")

    def watch_faults(self, selector, resource_version, timeout_seconds):
        return self.client.watch(self.faults, {"labelSelector": selector, "resourceVersion": resource_version},
                                 timeout_seconds)

    def get_fault(self, name):
        return self.client.request("GET", self.faults + "/" + urllib.parse.quote(name))

    def replace_fault_status(self, obj):
        """PUT the status subresource; the body's resourceVersion makes a stale write a 409."""
        path = "%s/%s/status" % (self.faults, urllib.parse.quote(fault_name(obj)))
        return self.client.request("PUT", path, body=obj)

    def get_lease(self, name):
        return self.client.request("GET", self.leases + "/" + urllib.parse.quote(name))

    def create_lease(self, lease):
        return self.client.request("POST", self.leases, body=lease)

    def replace_lease(self, lease):
        return self.client.request("PUT", self.leases + "/" + urllib.parse.quote(lease["metadata"]["name"]),
                                   body=lease)

    def delete_lease(self, name, uid=None, resource_version=None):
        """Delete, preconditioned on the Lease still being the one this agent last wrote."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {}}
        if uid:
            body["preconditions"]["uid"] = uid
        if resource_version:
            body["preconditions"]["resourceVersion"] = resource_version
        return self.client.request("DELETE", self.leases + "/" + urllib.parse.quote(name), body=body)


# ============================================================================================
# Lease keeper
# ============================================================================================

class LeaseKeeper:
    """Creates, renews (with a fresh GPU inventory) and finally deletes the node's agent Lease."""

    def __init__(self, api, namespace, node, pod, duration, inventory_fn, clock=now_utc, record_form="journald"):
        self.api = api
        self.record_form = record_form
        self.namespace = namespace
        self.node = node
        self.pod = pod
        self.duration = duration
        self.inventory_fn = inventory_fn
        self.clock = clock
        self.name = fault_api.lease_name(node)
        self.current = None   # the Lease as last written by this agent

    def renew(self):
        """One renewal; returns the inventory it published. ApiError when the API refuses."""
        inventory = self.inventory_fn()
        for attempt in range(2):
            try:
                self.current = self._write(inventory)
                return inventory
            except ApiError as e:
                # 409: someone else wrote it, 404: it was deleted; start from what is there now.
                if e.status not in (404, 409) or attempt:
                    raise
                self.current = None
        return inventory

    def _write(self, inventory):
        existing = self.current
        if existing is None:
            try:
                existing = self.api.get_lease(self.name)
            except ApiError as e:
                if e.status != 404:
                    raise
                body = lease_body(self.namespace, self.node, self.pod, inventory, self.duration, self.clock(),
                                  record_form=self.record_form)
                lease = self.api.create_lease(body)
                log("lease_created", lease=self.name, gpus=len(inventory))
                return lease
            holder = (existing.get("spec") or {}).get("holderIdentity")
            if holder != self.pod:
                log("lease_taken_over", lease=self.name, previous_holder=holder)
        body = lease_body(self.namespace, self.node, self.pod, inventory, self.duration, self.clock(), existing,
                          record_form=self.record_form)
        return self.api.replace_lease(body)

    def release(self):
        """Delete the Lease if it is still the one this agent wrote (not a successor's)."""
        metadata = (self.current or {}).get("metadata") or {}
        try:
            self.api.delete_lease(self.name, metadata.get("uid"), metadata.get("resourceVersion"))
            log("lease_deleted", lease=self.name)
        except ApiError as e:
            if e.status == 404:
                log("lease_deleted", lease=self.name, note="already gone")
            elif e.status == 409:
                warn("lease_left", lease=self.name, error="renewed by another agent since; left in place")
            else:
                warn("lease_delete_failed", lease=self.name, error=str(e))


# ============================================================================================
# Fault controller
# ============================================================================================

class FaultController:
    """Carries out each GPUFault for this node exactly once.

    Exactly once rests on the claim: the first status write moves a fault from no phase to
    Injecting with the object's resourceVersion, so of any number of agents only one succeeds,
    and records are written only after that. This process also remembers what it claimed, so an
    object seen again (relist, watch echo of its own writes) is never injected twice.
    """

    CONFLICT_RETRIES = 3
    STATUS_RETRIES = 5

    def __init__(self, api, node, pod, inventory_fn, kmsg_path, record_form="journald", dcgmi="dcgmi",
                 clock=now_utc, sleep=time.sleep, shim_dir=None):
        self.api = api
        self.node = node
        self.pod = pod
        self.inventory_fn = inventory_fn
        self.kmsg_path = kmsg_path
        self.record_form = record_form
        self.dcgmi = dcgmi
        self.shim_dir = shim_dir   # the node's shim control directory, or None: shim faults refused
        self.clock = clock
        self.sleep = sleep
        self.selector = "%s=%s" % (fault_api.NODE_LABEL, fault_api.node_label_value(node))
        self.claimed = set()       # uids this process claimed
        self.attempted = {}        # uid -> claimedAt of a claim sent, whose answer may have been lost
        self.unreported = {}       # uid -> final status not yet accepted by the API
        self.busy = threading.Lock()  # held while a fault is being handled; shutdown waits for it
        self.stopping = threading.Event()
        self.needs_resync = False  # an API error left some fault unhandled: list again

    # --- one object ---------------------------------------------------------------------------

    def handle(self, obj, listed=False):
        """React to one GPUFault as seen in a list (``listed``) or a watch event."""
        with self.busy:
            key = fault_key(obj)
            phase = fault_phase(obj)
            if key in self.unreported:
                self._report(obj, self.unreported[key])
            elif phase in fault_api.FINAL_PHASES or key in self.claimed:
                return
            elif phase == fault_api.PHASE_INJECTING:
                # Seen in a list, a claim this process does not hold is one a previous agent
                # left behind when it died. In a watch event it may be a live agent's claim.
                if self._lost_claim(obj):
                    self._resume(obj)
                elif listed:
                    self._abandon(obj)
            elif phase:
                warn("fault_phase_unknown", fault=fault_name(obj), phase=phase)
            elif not self.stopping.is_set():
                self._start(obj)

    def _start(self, obj):
        """Refuse, or claim and inject, a fault no agent has touched; conflicts re-read it."""
        for _attempt in range(self.CONFLICT_RETRIES):
            try:
                plan = self._plan(obj)
                first = claim_status(self.pod, self.clock())
            except FaultRefused as e:
                plan, first = None, final_status(obj, self.pod, self.clock(), error=str(e))
            if plan is not None:
                self.attempted[fault_key(obj)] = first["claimedAt"]
            try:
                current = self.api.replace_fault_status(with_status(obj, first))
            except ApiError as e:
                if e.status != 409:
                    raise
                fresh = self._reread(obj)
                if fresh is None or fault_phase(fresh):
                    log("fault_skipped", fault=fault_name(obj), node=self.node,
                        reason="claimed or finished by another agent" if fresh else "deleted")
                    return
                obj = fresh
                continue
            if plan is None:
                self._log_outcome(obj, first)
                return
            self.claimed.add(fault_key(obj))
            self._inject(current, plan)
            return
        warn("fault_conflict", fault=fault_name(obj), error="kept changing; will retry at the next resync")

    def _lost_claim(self, obj):
        """A claim this process sent that landed although its answer did not reach us."""
        status = obj.get("status") or {}
        sent = self.attempted.get(fault_key(obj))
        return bool(sent) and status.get("agent") == self.pod and status.get("claimedAt") == sent

    def _resume(self, obj):
        """Carry out a fault claimed by this process, nothing written yet."""
        self.claimed.add(fault_key(obj))
        try:
            plan = self._plan(obj)
        except FaultRefused as e:
            status = final_status(obj, self.pod, self.clock(), error=str(e),
                                  claimed_at=(obj.get("status") or {}).get("claimedAt"))
            self._log_outcome(obj, status)
            self._report(obj, status)
            return
        self._inject(obj, plan)

    def _plan(self, obj):
        plan = plan_fault(obj, self.node, self.inventory_fn(), self.record_form, self.dcgmi)
        if plan.shim and not (self.shim_dir and os.path.isdir(self.shim_dir)):
            raise FaultRefused("GPUFault %s switches the CUDA shim, but the shim control directory %s is "
                               "not there (is the host's %s mounted?)"
                               % (fault_name(obj), self.shim_dir, shim_control.HOST_DIR))
        if plan.method == "kmsg" and plan.actions:
            problem = kmsg_writable(self.kmsg_path)
            if problem:
                raise FaultRefused(problem)
        return plan

    def _inject(self, obj, plan):
        claimed_at = (obj.get("status") or {}).get("claimedAt")
        shim = None
        try:
            if plan.shim:
                # The shim switches first, so the application fails as the log line appears.
                write_shim_control(self.shim_dir, plan.shim)
                shim = plan.shim
            if plan.method == "kmsg":
                write_kmsg(self.kmsg_path, plan.actions)
            elif plan.method == "dcgm":
                run_dcgm(plan.actions)
            status = final_status(obj, self.pod, self.clock(), plan.gpus, plan.records, claimed_at=claimed_at,
                                  shim=shim)
        except InjectionError as e:
            status = final_status(obj, self.pod, self.clock(), plan.gpus, plan.records[:e.done],
                                  error=str(e), claimed_at=claimed_at, shim=shim)
        except Exception as e:  # pylint: disable=broad-except
            # Claimed means this agent owes the fault a final phase, whatever went wrong.
            status = final_status(obj, self.pod, self.clock(), plan.gpus, (),
                                  error="%s: %s" % (type(e).__name__, e), claimed_at=claimed_at)
        self._log_outcome(obj, status)
        self._report(obj, status)

    def _abandon(self, obj):
        status = dict(obj.get("status") or {})
        status.update(phase=fault_api.PHASE_FAILED, error=RESTARTED_ERROR)
        self._log_outcome(obj, status)
        self._report(obj, status)

    def _report(self, obj, status):
        """Write a final status, re-reading on conflicts; kept for a later retry if the API fails."""
        key, name = fault_key(obj), fault_name(obj)
        self.unreported[key] = status   # until the API accepts it; any later sighting retries
        for attempt in range(self.STATUS_RETRIES):
            try:
                if obj is None or fault_key(obj) != key:   # deleted (perhaps re-created): nothing to report
                    break
                self.api.replace_fault_status(with_status(obj, status))
                break
            except ApiError as e:
                if e.status == 404:
                    break
                warn("fault_status_retry", fault=name, error=str(e))
                self.sleep(min(0.5 * 2 ** attempt, 5))
                if e.status == 409:
                    obj = self._reread(obj)
        else:
            warn("fault_status_unwritten", fault=name, error="will retry when the fault is seen again")
            self.needs_resync = True
            return
        self.unreported.pop(key, None)

    def _reread(self, obj):
        try:
            return self.api.get_fault(fault_name(obj))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def _log_outcome(self, obj, status):
        spec = obj.get("spec") or {}
        fields = {"fault": fault_name(obj), "node": self.node, "phase": status.get("phase"),
                  "gpus": [gpu.get("index") if gpu.get("index") is not None else gpu.get("pci")
                           for gpu in status.get("gpus") or []],
                  "error": status.get("error")}
        for key in ("xid", "sxid"):
            if key in spec:
                fields[key] = spec[key].get("code") if isinstance(spec[key], dict) else spec[key]
        log("fault", **fields)

    # --- list and watch -----------------------------------------------------------------------

    def sync(self):
        """List this node's faults, handle each, and return the resourceVersion to watch from."""
        items, resource_version = self.api.list_faults(self.selector)
        for obj in items:
            self._handle_safely(obj, listed=True)
        self.release_shim(present={fault_name(obj) for obj in items})
        return resource_version

    def release_shim(self, deleted=None, present=None):
        """Disarm the node's shim when the fault that armed it is gone, so cleanup is exact.

        Called with the name of a deleted fault (watch), or with every fault that exists (list),
        which catches a deletion this agent missed while it was not running.
        """
        if not self.shim_dir:
            return
        state = read_shim_control(self.shim_dir)
        if not state or not state["armed"]:
            return
        gone = state["fault"] == deleted if deleted else (present is not None and state["fault"] not in present)
        if gone:
            with self.busy:
                write_shim_control(self.shim_dir, shim_control.render(False, int(time.time() * 1000), state["fault"]))
            log("shim_disarmed", fault=state["fault"], reason="the fault that armed it was deleted")

    def _handle_safely(self, obj, listed=False):
        try:
            self.handle(obj, listed)
        except ApiError as e:
            # The object stays as it is; the next resync picks it up again.
            self.needs_resync = True
            warn("fault_api_error", fault=fault_name(obj), error=str(e))

    def watch_once(self, resource_version, timeout_seconds=300):
        """Follow one watch; returns the last resourceVersion, or None when a relist is needed."""
        for event in self.api.watch_faults(self.selector, resource_version, timeout_seconds):
            if self.stopping.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:   # resourceVersion too old: start from a fresh list
                    return None
                raise ApiError(obj.get("code") or 0, obj.get("reason") or "", obj.get("message") or "")
            resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
            if kind in ("ADDED", "MODIFIED"):
                self._handle_safely(obj)
            elif kind == "DELETED":
                try:
                    self.release_shim(deleted=fault_name(obj))
                except InjectionError as e:
                    warn("shim_release_failed", fault=fault_name(obj), error=str(e))
        return resource_version

    def run(self, resync_seconds=600, watch_seconds=300, max_backoff=30):
        """List, then watch; relist on 410 and periodically, reconnect with backoff on errors."""
        resource_version, listed_at, backoff = None, 0.0, 1
        while not self.stopping.is_set():
            try:
                if resource_version is None or self.needs_resync or time.monotonic() - listed_at > resync_seconds:
                    self.needs_resync = False
                    resource_version = self.sync()
                    listed_at = time.monotonic()
                resource_version = self.watch_once(resource_version, watch_seconds)
                if resource_version is None:
                    log("watch_expired", note="relisting")
                backoff = 1
            except Exception as e:  # pylint: disable=broad-except
                # Whatever went wrong (API, network, an odd object), the watch must go on.
                if isinstance(e, ApiError) and e.status == 410:
                    resource_version = None
                warn("watch_error", error="%s: %s" % (type(e).__name__, e), retry_in=backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, max_backoff)


# ============================================================================================
# Command line
# ============================================================================================

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="GPU fault agent: injects the GPUFault objects of one node.")
    parser.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node (env NODE_NAME)")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"), help="namespace (env POD_NAMESPACE)")
    parser.add_argument("--pod-name", default=os.environ.get("POD_NAME"), help="this pod (env POD_NAME)")
    parser.add_argument("--kmsg", default="/host/dev/kmsg", help="the host's /dev/kmsg")
    # The driver's directory itself, so that the mount and the flag name the same path.
    parser.add_argument("--shim-dir", default=shim_control.AGENT_DIR,
                        help="the host's CUDA fault shim control directory (%s)" % shim_control.HOST_DIR)
    parser.add_argument("--nvidia-proc", default="/host/proc/driver/nvidia", help="the host's /proc/driver/nvidia")
    parser.add_argument("--dcgmi", default="dcgmi", help="dcgmi executable (method dcgm)")
    parser.add_argument("--record-form", choices=RECORD_FORMS, default="journald",
                        help="journald: MESSAGE in the journal reads like the driver's line (default); "
                             "dmesg: the text in dmesg does")
    parser.add_argument("--lease-seconds", type=int, default=30)
    parser.add_argument("--renew-seconds", type=int, default=10)
    args = parser.parse_args(argv)
    for option in ("node", "namespace", "pod_name"):
        if not getattr(args, option):
            parser.error("--%s is required (or its environment variable)" % option.replace("_", "-"))
    try:
        fault_api.validate_node_name(args.node)
    except fault_api.FaultSpecError as e:
        parser.error(str(e))
    if not 0 < args.renew_seconds < args.lease_seconds:
        parser.error("--renew-seconds must be positive and shorter than --lease-seconds")
    return args


def main(argv=None):
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum, frame):  # pylint: disable=unused-argument
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        api = ClusterApi(KubeClient.in_cluster(AGENT_NAME), args.namespace)
    except (ApiError, OSError, ssl.SSLError) as e:
        warn("agent_failed", error="cannot reach the Kubernetes API: %s" % e)
        return 1
    inventory = functools.partial(discover_gpus, args.nvidia_proc)
    keeper = LeaseKeeper(api, args.namespace, args.node, args.pod_name, args.lease_seconds, inventory,
                         record_form=args.record_form)
    controller = FaultController(api, args.node, args.pod_name, inventory, args.kmsg,
                                 record_form=args.record_form, dcgmi=args.dcgmi, shim_dir=args.shim_dir)
    gpus = inventory()
    log("agent_started", node=args.node, namespace=args.namespace, pod=args.pod_name,
        gpus=[public_gpu(gpu) for gpu in gpus], record_form=args.record_form, kmsg=args.kmsg)
    if kmsg_writable(args.kmsg):
        warn("kmsg_unavailable", error=kmsg_writable(args.kmsg))

    watcher = None
    while not stop.is_set():
        try:
            keeper.renew()
        except (ApiError, OSError) as e:
            warn("lease_renew_failed", error=str(e))
        if watcher is None:  # watch only once the Lease says an agent runs
            watcher = threading.Thread(target=controller.run, name="watch", daemon=True)
            watcher.start()
        elif not watcher.is_alive():
            warn("watch_thread_died")
            return 1
        stop.wait(args.renew_seconds)

    log("agent_stopping", node=args.node)
    controller.stopping.set()
    # Let a fault being injected finish, so it is not left in phase Injecting.
    if controller.busy.acquire(timeout=DCGM_TIMEOUT):  # pylint: disable=consider-using-with
        controller.busy.release()
    keeper.release()
    log("agent_stopped", node=args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
