# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is a node's fault-injector agent alive, and which GPUs does it see?

Each agent renews a Lease named after its node (fault_api.lease_name) and publishes its node's GPU
inventory on it. A Lease renewed within its duration means a live agent; a pod's Ready condition
does not (on simulated nodes it is always Ready, and on real ones it says nothing about the watch).
Pure functions: the caller reads the Lease.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import fault_api

DEPLOY_HINT = "deploy it with the gpu_resilience.fault_injection.fault_injector_agent role"


def parse_time(value):
    """An RFC 3339 timestamp as the API server writes it (with or without microseconds)."""
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    text = str(value).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None


def agent_state(node, namespace, lease, now):
    """{alive, reason, holder, age_seconds, inventory, record_form} for a node's agent Lease (or None)."""
    name = fault_api.lease_name(node)
    state = {"node": node, "lease": name, "alive": False, "holder": None, "age_seconds": None,
             "inventory": [], "record_form": "journald"}
    if lease is None:
        state["reason"] = ("no fault-injector agent runs on node %s (no Lease %s/%s); %s"
                           % (node, namespace, name, DEPLOY_HINT))
        return state
    spec = lease.get("spec") or {}
    annotations = lease.get("metadata", {}).get("annotations") or {}
    state["holder"] = spec.get("holderIdentity")
    state["record_form"] = annotations.get(fault_api.RECORD_FORM_ANNOTATION) or "journald"
    renewed = parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds") or 0
    if renewed is None:
        state["reason"] = "the agent Lease %s/%s of node %s was never renewed; %s" % (namespace, name, node, DEPLOY_HINT)
        return state
    age = (now - renewed).total_seconds()
    state["age_seconds"] = round(age, 3)
    if age > duration:
        state["reason"] = ("the fault-injector agent on node %s stopped renewing its Lease %s/%s %.0fs ago "
                           "(pod %s); check the agent pod's logs or redeploy the agent"
                           % (node, namespace, name, age, state["holder"]))
        return state
    try:
        state["inventory"] = parse_inventory(annotations.get(fault_api.INVENTORY_ANNOTATION))
    except ValueError as e:
        state["reason"] = "the agent on node %s published an unreadable GPU inventory: %s" % (node, e)
        return state
    state["alive"] = True
    state["reason"] = None
    return state


def parse_inventory(text):
    """The agent's GPU list, validated (the Lease is written by a pod, not trusted blindly)."""
    if not text:
        return []
    gpus = json.loads(text)
    if not isinstance(gpus, list):
        raise ValueError("expected a JSON list")
    out = []
    for gpu in gpus:
        if not isinstance(gpu, dict) or not isinstance(gpu.get("index"), int):
            raise ValueError("each GPU needs an integer index")
        out.append({"index": gpu["index"], "minor": gpu.get("minor"),
                    "pci": fault_api.normalize_pci(gpu.get("pci")), "uuid": gpu.get("uuid")})
    return sorted(out, key=lambda g: g["index"])
