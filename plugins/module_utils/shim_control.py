# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CUDA fault shim's control contract: environment variables, the node-level control file,
and the paths shared by the shim (files/shim), the module that installs it (cuda_shim_patch) and
the node agent that arms it at run time.

Arming at run time: the node agent writes one small file per node, in a host directory that every
shimmed container mounts read-only. The shim notices the change with inotify in a background thread
and flips an atomic flag, so intercepted calls never touch the file. Format, one ASCII line:

    v1 armed=1 xid=79 error=100 gpu=0000:75:00.0 fault=<GPUFault name> seq=<n>
    v1 armed=0 fault=<GPUFault name> seq=<n>

``gpu`` (a full PCI address) limits the failure to one GPU; without it every GPU fails. ``error``
is the CUresult from the XID catalog, so the shim applies exactly what the catalog says. The file is
replaced atomically (write to a temporary name in the same directory, then rename). When the file
is absent, the environment decides: ``CUDA_FAULT_INJECTION_ENABLED=1`` with ``CUDA_XID_TYPE=<xid>``
arms a process from its start (compatible with the seed library).

Standard library only: shipped beside the node agent.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

try:
    from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog
except ImportError:  # shipped beside the node agent, outside any collection
    import xid_catalog

# The node's control directory (a hostPath), where containers mount it, and where the agent does.
HOST_DIR = "/run/gpu-fault-injection/shim"
CONTAINER_DIR = "/run/gpu-fault-injection/shim"
AGENT_DIR = "/host/run/gpu-fault-injection/shim"
CONTROL_FILE = "control"
VERSION_TAG = "v1"

# Environment read by the shim.
ENV_ENABLED = "CUDA_FAULT_INJECTION_ENABLED"    # "1": armed from the start (seed compatible)
ENV_XID = "CUDA_XID_TYPE"                       # the XID whose CUDA error the shim returns
ENV_CONTROL = "CUDA_FAULT_CONTROL_FILE"         # default CONTAINER_DIR/CONTROL_FILE
ENV_GPU = "CUDA_FAULT_GPU"                      # optional: only this GPU fails (PCI address or ordinal)
ENV_AFTER_CALLS = "CUDA_FAULT_AFTER_CALLS"      # optional: fail only after N intercepted calls
ENV_AFTER_SECONDS = "CUDA_FAULT_AFTER_SECONDS"  # optional: fail only N seconds after arming

_LINE = re.compile(r"^v1( [a-z]+=[0-9A-Za-z:.\-]+)+$")


def cuda_error(xid):
    """The CUresult the shim returns for an XID (from the catalog)."""
    return xid_catalog.get(xid)["cuda_error"][0]


def render(armed, seq, fault, xid=None, gpu=None):
    """The control file's content for a state."""
    fields = ["armed=%d" % (1 if armed else 0)]
    if armed:
        if xid is None:
            raise ValueError("arming the shim needs an XID")
        fields += ["xid=%d" % xid, "error=%d" % cuda_error(xid)]
        if gpu:
            fields.append("gpu=" + xid_catalog.format_pci_bdf(gpu))
    fields += ["fault=" + _safe_name(fault), "seq=%d" % int(seq)]
    return VERSION_TAG + " " + " ".join(fields) + "\n"


def parse(text):
    """The control file's fields as a dict (ValueError if it is not a v1 control line)."""
    line = text.strip()
    if not _LINE.match(line):
        raise ValueError("not a v1 shim control line: %r" % line[:80])
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    if fields.get("armed") not in ("0", "1"):
        raise ValueError("armed must be 0 or 1 in %r" % line[:80])
    out = {"armed": fields["armed"] == "1", "fault": fields.get("fault"), "seq": int(fields.get("seq", "0"))}
    for key in ("xid", "error"):
        if key in fields:
            if not fields[key].isdigit():
                raise ValueError("%s must be a number in %r" % (key, line[:80]))
            out[key] = int(fields[key])
    if out["armed"] and not ("xid" in out and "error" in out):
        raise ValueError("an armed control line needs xid and error: %r" % line[:80])
    if "gpu" in fields:
        out["gpu"] = xid_catalog.format_pci_bdf(fields["gpu"])   # strict: raises on a malformed address
    return out


def _safe_name(name):
    if not name or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name) or len(name) > 253:
        raise ValueError("fault name %r is not a Kubernetes object name" % (name,))
    return name
