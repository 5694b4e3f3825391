# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of gpu_xid_inject: module parameters to GPUFault specs, predictions, results."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import agents, fault_api, xid_catalog

_INDEX = re.compile(r"^[0-9]{1,2}$")


def gpu_selector(gpu):
    """The module's `gpu` string (index, PCI address, GPU UUID or "all") as a spec selector."""
    text = str(gpu).strip()
    if text == "all":
        selector = {"all": True}
    elif _INDEX.match(text):
        selector = {"index": int(text)}
    elif text.upper().startswith("GPU-"):
        selector = {"uuid": text}
    else:
        selector = {"pci": text}
    return fault_api.validate_gpu_selector(selector)


def spec_for(params, node):
    """The validated GPUFault spec the module's parameters ask for on one node."""
    spec = {"node": node, "method": params["method"]}
    if params.get("sxid"):
        spec["sxid"] = dict((k, v) for k, v in params["sxid"].items() if v is not None)
    elif params.get("xid") is not None:
        spec["xid"] = params["xid"]
        spec["gpu"] = gpu_selector(params["gpu"])
    if params.get("shim"):
        spec["shim"] = params["shim"]
    if params.get("text") is not None:
        spec["message"] = params["text"]
    if params.get("recovery_action") is not None:
        spec["recoveryAction"] = params["recovery_action"]
    return fault_api.validate_spec(spec)


def duplicates(names):
    """The names given more than once, each once, in the order they first repeat."""
    seen, out = set(), []
    for name in names:
        if name in seen and name not in out:
            out.append(name)
        seen.add(name)
    return out


def is_control_plane(node, control_plane_labels):
    return bool(set(control_plane_labels) & set((node.get("metadata") or {}).get("labels") or {}))


def check_listed_nodes(names, node_items, control_plane_labels):
    """Refuse a list of target nodes if any is missing or a control-plane node, naming all of them.

    node_items is one list of the cluster's Nodes: one API call whatever the number of targets.
    """
    by_name = dict((n["metadata"]["name"], n) for n in node_items)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise fault_api.FaultSpecError("node(s) not found: %s" % ", ".join(missing))
    control = [n for n in names if is_control_plane(by_name[n], control_plane_labels)]
    if control:
        raise fault_api.FaultSpecError("refusing control-plane node(s): %s" % ", ".join(control))


def agent_states(nodes, namespace, leases, now):
    """{node: agents.agent_state} from one list of the agent namespace's Leases, all judged at the same now."""
    by_name = dict((lease["metadata"]["name"], lease) for lease in leases)
    return dict((node, agents.agent_state(node, namespace, by_name.get(fault_api.lease_name(node)), now))
                for node in nodes)


def predicted_records(spec, gpus, record_form):
    """The records the agent would write for spec on the selected GPUs (what check mode reports)."""
    if "xid" not in spec and "sxid" not in spec:
        return []
    if spec["method"] == "dcgm":
        return ["dcgmi test --inject --gpuid %d -f 230 -v %d" % (gpu["index"], spec["xid"]) for gpu in gpus]
    if "sxid" in spec:
        sxid = spec["sxid"]
        lines = xid_catalog.render_sxid_lines(sxid["code"], sxid["pci"], switch=sxid["nvswitch"],
                                              link=sxid["link"], message=spec.get("message"))
    else:
        lines = []
        for gpu in gpus:
            lines += xid_catalog.render_xid_lines(spec["xid"], gpu["pci"], message=spec.get("message"),
                                                  recovery_action=spec.get("recoveryAction"),
                                                  uuid=gpu.get("uuid"))
    if record_form == "dmesg":
        return lines
    return [xid_catalog.kmsg_text(line) for line in lines]


def same_request(existing, spec):
    """True if an existing GPUFault asks for exactly this spec (a rerun with the same name)."""
    current = dict(existing.get("spec") or {})
    current.setdefault("method", "kmsg")
    try:
        return fault_api.validate_spec(current) == spec
    except fault_api.FaultSpecError:
        return False


def result_of(obj):
    """The module's return entry for a GPUFault object."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    gpus = status.get("gpus") or []
    entry = {
        "name": obj["metadata"].get("name"),
        "namespace": obj["metadata"].get("namespace"),
        "node": spec.get("node"),
        "phase": status.get("phase"),
        "gpus": gpus,
        "pci_addresses": [g.get("pci") for g in gpus],
        "records": status.get("records") or [],
        "injected_at": status.get("injectedAt"),
        "agent": status.get("agent"),
        "error": status.get("error"),
        "shim_control": status.get("shimControl"),
    }
    if "xid" in spec:
        entry["xid"] = spec["xid"]
    if "sxid" in spec:
        entry["sxid"] = spec["sxid"]["code"]
    return entry


def is_final(obj):
    return (obj.get("status") or {}).get("phase") in fault_api.FINAL_PHASES
