# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GPUFault API: the contract between the modules that ask for faults and the node agent that
carries them out.

A fault is a namespaced ``GPUFault`` object in the agent's namespace. RBAC on that resource is the
access control (no port is open on any node), the objects are the registry and audit trail, and they
survive agent restarts. Each object carries the target node as a label so that every node agent
watches only its own objects.

The agent proves it is alive, and publishes its node's GPU inventory, through a Lease named after its
node. Modules read that Lease before creating a fault, so a missing agent or GPU fails early and
creates nothing.

Standard library only: this file is shipped unchanged to the node agent together with
xid_catalog.py, and imported by the modules from the collection.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

try:
    from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog
except ImportError:  # shipped beside the node agent, outside any collection
    import xid_catalog

GROUP = "faultinjection.gpu-resilience.io"
VERSION = "v1alpha1"
API_VERSION = GROUP + "/" + VERSION
KIND = "GPUFault"
PLURAL = "gpufaults"

NODE_LABEL = GROUP + "/node"              # which node agent carries the fault out
DRILL_LABEL = GROUP + "/drill"            # groups the faults of one drill, for cleanup
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
INVENTORY_ANNOTATION = GROUP + "/gpus"    # on the agent's Lease: JSON list of the node's GPUs
RECORD_FORM_ANNOTATION = GROUP + "/record-form"  # on the agent's Lease: journald or dmesg
LEASE_PREFIX = "gpu-fault-agent-"

PHASE_INJECTING = "Injecting"   # claimed by an agent; records are being written
PHASE_INJECTED = "Injected"
PHASE_FAILED = "Failed"
FINAL_PHASES = (PHASE_INJECTED, PHASE_FAILED)

METHODS = ("kmsg", "dcgm")
SHIM_ACTIONS = ("arm", "disarm")  # the node's CUDA fault shim, switched in the same step (shim_control)
MAX_GPU_INDEX = 63

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GPU_UUID = re.compile(r"^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class FaultSpecError(ValueError):
    """A GPUFault spec, or a request for one, that cannot be carried out as given."""


def validate_node_name(name):
    if not isinstance(name, str) or not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise FaultSpecError("node %r is not a valid Kubernetes node name" % (name,))
    return name


def lease_name(node):
    """The agent Lease of a node; long node names are shortened with a hash to stay a valid name."""
    validate_node_name(node)
    return bounded_name(LEASE_PREFIX + node, node)


def bounded_name(name, seed):
    """name when it fits an object name (253 characters); else its head and a hash of seed, so that
    two long names stay apart."""
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:12]
    return name[:240].rstrip(".-") + "-" + digest


def normalize_pci(pci):
    """A full PCI address in the kernel's canonical form (``0000:3b:00.0``; nvidia-smi's
    ``00000000:3B:00.0`` becomes that too), validated by the catalog's strict parser."""
    if not isinstance(pci, str):
        raise FaultSpecError("PCI address %r must be a string like 0000:3b:00.0" % (pci,))
    try:
        return xid_catalog.format_pci_bdf(pci)
    except ValueError as e:
        raise FaultSpecError(str(e))


def node_label_value(node):
    """The node as a label value: label values stop at 63 characters, node names at 253."""
    validate_node_name(node)
    if len(node) <= 63:
        return node
    digest = hashlib.sha256(node.encode("ascii")).hexdigest()[:12]
    return node[:50].rstrip(".-") + "-" + digest


def validate_gpu_selector(gpu):
    """Exactly one of index, pci, uuid or all=true."""
    if not isinstance(gpu, dict):
        raise FaultSpecError("gpu must be an object with one of: index, pci, uuid, all")
    keys = [k for k in ("index", "pci", "uuid", "all") if gpu.get(k) is not None]
    unknown = sorted(set(gpu) - {"index", "pci", "uuid", "all"})
    if unknown or len(keys) != 1:
        raise FaultSpecError("gpu must name exactly one of index, pci, uuid or all (got %s)"
                             % (", ".join(sorted(gpu)) or "nothing"))
    key = keys[0]
    value = gpu[key]
    if key == "index":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GPU_INDEX:
            raise FaultSpecError("gpu index %r must be an integer from 0 to %d" % (value, MAX_GPU_INDEX))
    elif key == "pci":
        value = normalize_pci(value)
    elif key == "uuid":
        if not isinstance(value, str) or not GPU_UUID.match(value):
            raise FaultSpecError("gpu uuid %r must look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" % (value,))
    elif value is not True:
        raise FaultSpecError("gpu all must be true when given")
    return {key: value}


def validate_message(message):
    """An operator's override of the driver text, accepted only as the catalog would write it.

    The catalog's sanitiser is the one rule for what may reach a kernel log line; here anything it
    would change is refused with a clear error rather than silently edited.
    """
    if message is None:
        return None
    if not isinstance(message, str):
        raise FaultSpecError("message must be a string")
    if len(message) > xid_catalog.MAX_MESSAGE_LEN:
        raise FaultSpecError("message is %d characters long; the limit is %d"
                             % (len(message), xid_catalog.MAX_MESSAGE_LEN))
    try:
        clean = xid_catalog.sanitize_message(message)
    except ValueError as e:
        raise FaultSpecError("message refused: %s" % e)
    if clean != message:
        dropped = sorted(set(message) - set(clean)) or ["surrounding spaces"]
        raise FaultSpecError("message may hold letters, digits, spaces and _-.,:()[]{}/=+#@!?* only; "
                             "found %s" % ", ".join(repr(c) for c in dropped[:5]))
    return message


def validate_spec(spec):
    """Check a GPUFault spec and return it normalised; raise FaultSpecError naming what is wrong.

    Both sides run this: the module before it creates an object, the agent again before it writes
    anything, because whoever can create GPUFault objects is not trusted blindly.
    """
    if not isinstance(spec, dict):
        raise FaultSpecError("spec must be an object")
    allowed = {"node", "gpu", "xid", "sxid", "method", "message", "recoveryAction", "shim"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise FaultSpecError("unknown spec field(s): %s" % ", ".join(unknown))
    out = {"node": validate_node_name(spec.get("node")), "method": spec.get("method") or "kmsg"}
    if out["method"] not in METHODS:
        raise FaultSpecError("method %r is not one of %s" % (out["method"], ", ".join(METHODS)))
    shim = spec.get("shim")
    if shim is not None:
        if shim not in SHIM_ACTIONS:
            raise FaultSpecError("shim %r is not one of %s" % (shim, ", ".join(SHIM_ACTIONS)))
        out["shim"] = shim
    if shim == "arm" and spec.get("xid") is None:
        raise FaultSpecError("arming the CUDA shim needs an xid: the shim returns that XID's CUDA error")
    if spec.get("xid") is not None and spec.get("sxid") is not None:
        raise FaultSpecError("give exactly one of xid or sxid")
    if spec.get("xid") is None and spec.get("sxid") is None:
        if shim != "disarm":
            raise FaultSpecError("give exactly one of xid or sxid (only shim: disarm stands alone)")
    elif spec.get("xid") is not None:
        out["xid"] = _validate_xid(spec["xid"])
        out["gpu"] = validate_gpu_selector(spec.get("gpu"))
    else:
        out["sxid"] = _validate_sxid(spec["sxid"])
        if out["method"] != "kmsg":
            raise FaultSpecError("SXid events can only be written to the kernel log (method kmsg)")
    if spec.get("message") is not None:
        out["message"] = validate_message(spec["message"])
    action = spec.get("recoveryAction")
    if action is not None:
        if out.get("xid") != 154:
            raise FaultSpecError("recoveryAction applies to XID 154 only")
        if action not in xid_catalog.RECOVERY_ACTIONS:
            raise FaultSpecError("recoveryAction %r is not one of: %s"
                                 % (action, ", ".join(sorted(xid_catalog.RECOVERY_ACTIONS))))
        out["recoveryAction"] = action
    return out


def _validate_xid(code):
    if isinstance(code, bool) or not isinstance(code, int):
        raise FaultSpecError("xid %r must be an integer" % (code,))
    try:
        xid_catalog.get(code)
    except xid_catalog.UnknownXidError as e:
        raise FaultSpecError(str(e))
    return code


def _validate_sxid(sxid):
    if not isinstance(sxid, dict):
        raise FaultSpecError("sxid must be an object: {code, pci, nvswitch, link}")
    unknown = sorted(set(sxid) - {"code", "pci", "nvswitch", "link"})
    if unknown:
        raise FaultSpecError("unknown sxid field(s): %s" % ", ".join(unknown))
    code = sxid.get("code")
    if isinstance(code, bool) or not isinstance(code, int) or code not in xid_catalog.sxid_codes():
        raise FaultSpecError("sxid code %r is not a known SXid; known: %s"
                             % (code, ", ".join(str(c) for c in xid_catalog.sxid_codes())))
    out = {"code": code, "pci": normalize_pci(sxid.get("pci"))}
    for key, limit in (("nvswitch", 63), ("link", 255)):
        value = sxid.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise FaultSpecError("sxid %s %r must be an integer from 0 to %d" % (key, value, limit))
        out[key] = value
    return out


def select_gpus(node, inventory, selector):
    """The inventory entries a GPU selector picks on a node; a clear error when none match.

    ``inventory`` is the agent's list of {index, minor, pci, uuid}. A node without GPUs can still
    be targeted with an explicit PCI address (e.g. a GPU the driver no longer lists).
    """
    selector = validate_gpu_selector(selector)
    key, value = next(iter(selector.items()))
    if not inventory:
        if key == "pci":
            return [{"index": None, "minor": None, "pci": value, "uuid": None}]
        raise FaultSpecError("node %s reports no GPUs (no /proc/driver/nvidia/gpus entries); give an "
                             "explicit PCI address to inject anyway" % node)
    if key == "all":
        return list(inventory)
    for gpu in inventory:
        if key == "pci" and normalize_pci(gpu["pci"]) == value:
            return [gpu]
        if key == "uuid" and (gpu.get("uuid") or "").lower() == value.lower():
            return [gpu]
        if key == "index" and gpu["index"] == value:
            return [gpu]
    if key == "index":
        raise FaultSpecError("GPU index %d is out of range: node %s has GPUs 0-%d"
                             % (value, node, len(inventory) - 1))
    field, what = ("pci", "PCI address") if key == "pci" else ("uuid", "UUID")
    raise FaultSpecError("node %s has no GPU with %s %s; it has: %s"
                         % (node, what, value, ", ".join(str(g.get(field)) for g in inventory)))


def fault_object(namespace, spec, name=None, generate_name=None, drill=None, managed_by=None):
    """The GPUFault manifest for a validated spec."""
    labels = {NODE_LABEL: node_label_value(spec["node"])}
    if drill:
        labels[DRILL_LABEL] = drill
    if managed_by:
        labels[MANAGED_BY_LABEL] = managed_by
    metadata = {"namespace": namespace, "labels": labels}
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = generate_name or "xid-"
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
