#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gpu_xid_inject
short_description: Write a realistic NVIDIA XID (or NVSwitch SXid) into a GPU node's kernel log
version_added: 0.1.0
description:
  - Creates C(GPUFault) objects that the fault-injector agent on each target node carries out. The
    agent writes the driver's own XID lines, for the selected GPU's PCI address, to the node's
    C(/dev/kmsg) (or injects the XID into DCGM), exactly once, and records what it wrote in the
    object's status.
  - The module first reads the agents' Leases (one list call for any number of nodes), so a node
    without a live agent, a GPU the node does not have, or an unknown XID fails with a clear error
    and creates nothing, on any node.
  - With I(nodes), every node is checked before any fault is created; the faults are then created a
    few at a time in parallel and waited for together, so one call injects into a whole fleet.
  - It then waits, by watching the objects, for the agents' outcome and returns the exact records written.
  - With I(state=absent) it deletes fault objects (the kernel log itself cannot be unwritten).
  - Each run with I(state=present) and no I(name) injects a new fault, as a driver would log a new
    XID; give I(name) to make reruns idempotent.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
  - gpu_resilience.fault_injection.agent
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: A server-side dry run; returns the records the agent would write.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
options:
  state:
    description:
      - C(present) injects; C(absent) deletes matching fault objects.
    type: str
    choices: [present, absent]
    default: present
  node:
    description:
      - Target node. Give exactly one of I(node), I(nodes) or I(node_selector) for I(state=present).
      - With I(state=absent), only faults for this node are deleted.
    type: str
  nodes:
    description:
      - Target nodes, injected in one call; the faults are returned in this order.
      - Each must exist, must not be a control-plane node, and must run a live agent with the selected
        GPU; if any node fails, the error names every such node and nothing is created.
      - The list must not be empty or name a node twice. I(name) needs a list of one node.
      - With I(state=absent), only faults for these nodes are deleted.
    type: list
    elements: str
  node_selector:
    description:
      - Label selector choosing target nodes, e.g. C(nvidia.com/gpu.present=true).
      - The first I(count) matching nodes (by name) that run a live agent are used. Control-plane
        nodes are never chosen.
    type: str
  count:
    description:
      - How many nodes to take from I(node_selector).
    type: int
    default: 1
  gpu:
    description:
      - Which GPU of the node. An index in nvidia-smi order (PCI bus order, which is not always the
        device minor), a full PCI address (C(0000:3b:00.0), also extended domains such as
        C(00000001:00:00.0)), a GPU UUID (C(GPU-...)), or C(all).
      - A node whose agent reports no GPUs accepts only an explicit PCI address.
    type: str
    default: "0"
  xid:
    description:
      - The XID code, from the collection's XID catalog (e.g. 13, 31, 48, 63, 74, 79, 94, 95, 119, 154).
      - Give I(xid) or I(sxid) for I(state=present).
    type: int
  sxid:
    description:
      - An NVSwitch SXid event instead of a GPU XID.
    type: dict
    suboptions:
      code:
        description: The SXid code, from the catalog (e.g. 12028, 20034, 24007).
        type: int
        required: true
      pci:
        description: The NVSwitch's full PCI address.
        type: str
        required: true
      nvswitch:
        description: The switch number in C(nvidia-nvswitchN).
        type: int
        default: 0
      link:
        description: The NVLink port.
        type: int
        default: 0
  text:
    description:
      - Replace the driver text after the XID code's fixed fields. Letters, digits, spaces and
        C(_-.,:()[]{}/=+#@!?*) only, at most 200 characters, and never the words Xid, NVRM or
        nvswitch (a detector would read a forged code from them).
    type: str
  recovery_action:
    description:
      - For XID 154, the recovery action the driver announces.
    type: str
    choices: [None, GPU Reset Required, Node Reboot Required, Drain P2P, Drain and Reset]
  shim:
    description:
      - Also switch the node's CUDA fault shim (installed in workloads by
        M(gpu_resilience.fault_injection.cuda_shim_patch)), in the same step and just before the
        records are written, so shimmed applications fail as the log line appears.
      - C(arm) makes every shimmed process on the node return this XID's CUDA error (only on the
        selected GPU when one GPU is selected); C(disarm) switches it off and needs no I(xid).
      - Deleting the fault that armed the shim (I(state=absent)) disarms it again.
    type: str
    choices: [arm, disarm]
  method:
    description:
      - C(kmsg) writes driver lines to the kernel log (what NVSentinel and log-based detectors read);
        C(dcgm) injects the XID as DCGM field 230 with C(dcgmi) on the node (what DCGM health watches read).
    type: str
    choices: [kmsg, dcgm]
    default: kmsg
  name:
    description:
      - Name of the fault object. A rerun with the same name and request changes nothing; the same
        name with a different request fails. Only with a single target node.
      - With I(state=absent), delete this fault.
    type: str
  drill:
    description:
      - Label value that groups the faults of one drill, so a later cleanup can find them.
      - With I(state=absent), delete the faults of this drill.
    type: str
notes:
  - The agent validates every request again; the Kubernetes API's RBAC on C(gpufaults) in
    I(agent_namespace) decides who may inject.
  - With I(state=absent) and none of I(name), I(node), I(drill), every fault created by this module
    in I(agent_namespace) is deleted.
seealso:
  - name: NVIDIA XID errors
    description: NVIDIA's catalog of XID codes.
    link: https://docs.nvidia.com/deploy/xid-errors/
"""

EXAMPLES = r"""
- name: GPU 2 of gpu-node-1 falls off the bus
  gpu_resilience.fault_injection.gpu_xid_inject:
    node: gpu-node-1
    gpu: "2"
    xid: 79
  register: fault

- name: Show what the driver "wrote"
  ansible.builtin.debug:
    var: fault.faults[0].records

- name: XID 79 on GPU 0 of a list of nodes, in one call (every node checked before any fault is created)
  gpu_resilience.fault_injection.gpu_xid_inject:
    nodes:
      - gpu-node-1
      - gpu-node-2
      - gpu-node-3
    gpu: "0"
    xid: 79
    drill: fleet-drill-7
  register: fleet

- name: Uncorrectable ECC on every GPU of two GPU nodes, grouped for cleanup
  gpu_resilience.fault_injection.gpu_xid_inject:
    node_selector: nvidia.com/gpu.present=true
    count: 2
    gpu: all
    xid: 48
    drill: ecc-drill-42

- name: The driver asks for a node reboot (XID 154)
  gpu_resilience.fault_injection.gpu_xid_inject:
    node: gpu-node-0
    gpu: GPU-5a3e0c4b-8b7e-4f5e-9a1c-2d3e4f5a6b7c
    xid: 154
    recovery_action: Node Reboot Required

- name: What would be written, changing nothing
  gpu_resilience.fault_injection.gpu_xid_inject:
    node: gpu-node-1
    gpu: "0000:75:00.0"
    xid: 79
  check_mode: true

- name: XID 79 on GPU 2, and every shimmed CUDA process on the node fails with CUDA_ERROR_NO_DEVICE
  gpu_resilience.fault_injection.gpu_xid_inject:
    node: gpu-node-1
    gpu: "2"
    xid: 79
    shim: arm
    drill: xid79-drill

- name: Remove the fault objects of a drill (deleting the arming fault disarms the shim)
  gpu_resilience.fault_injection.gpu_xid_inject:
    state: absent
    drill: ecc-drill-42
"""

RETURN = r"""
waited_seconds:
  description:
    - Seconds the module spent blocked on the watch of its faults, waiting for the node agents to
      write them (the rest of its run time is its own work); C(bench/drill.py) uses it to tell a
      drill's own overhead from the time the cluster took.
  returned: when the module waited
  type: float
  sample: 0.12
faults:
  description: One entry per fault object created, found, or (state=absent) deleted; with
    I(state=present), in the order of the target nodes.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The GPUFault object's name (in check mode, absent when the server would generate it).
      type: str
      sample: xid79-gpu-node-1-7xk2p
    node:
      description: The node.
      type: str
      sample: gpu-node-1
    xid:
      description: The XID code (absent for SXid faults).
      type: int
      sample: 79
    phase:
      description: C(Injected) or C(Failed) (the agent's outcome), C(Injecting) if not waited for, or
        C(DryRun) in check mode.
      type: str
      sample: Injected
    gpus:
      description: The GPUs written for, as the agent saw them.
      type: list
      elements: dict
      sample: [{index: 2, minor: 3, pci: "0000:75:00.0", uuid: GPU-ebed76ae-9504-51a7-b9fc-6f4400179196}]
    pci_addresses:
      description: The GPUs' full PCI addresses.
      type: list
      elements: str
      sample: ["0000:75:00.0"]
    records:
      description: The exact kernel-log records written (in check mode, the records that would be written).
      type: list
      elements: str
      sample: ["NVRM: NVRM: Xid (PCI:0000:75:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."]
    injected_at:
      description: When the agent wrote the records.
      type: str
      sample: "2026-11-22T18:20:01.123456Z"
    agent:
      description: The agent pod that carried the fault out.
      type: str
      sample: gpu-fault-agent-x7k2p
    error:
      description: The agent's error, for a failed fault.
      type: str
      sample: null
    shim_control:
      description: The CUDA shim control line the agent wrote on the node, when I(shim) was given.
      type: str
      sample: v1 armed=1 xid=79 error=100 gpu=0000:75:00.0 fault=xid79-gpu-node-1-7xk2p seq=1795461601123
nodes:
  description: The target nodes, in order.
  returned: state=present
  type: list
  elements: str
  sample: [gpu-node-1]
"""

import concurrent.futures
import datetime

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import agents, fault_api, injection, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
MANAGED_BY = "gpu_xid_inject"
# Creates in flight at once for a list of nodes: enough to hide the API round trips, few enough not
# to flood the API server (or trip its priority and fairness limits) on a fleet drill.
MAX_CREATE_WORKERS = 8


def argument_spec():
    return dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        node=dict(type="str"),
        nodes=dict(type="list", elements="str"),
        node_selector=dict(type="str"),
        count=dict(type="int", default=1),
        gpu=dict(type="str", default="0"),
        xid=dict(type="int"),
        sxid=dict(type="dict", options=dict(
            code=dict(type="int", required=True), pci=dict(type="str", required=True),
            nvswitch=dict(type="int", default=0), link=dict(type="int", default=0))),
        text=dict(type="str"),
        recovery_action=dict(type="str", choices=["None", "GPU Reset Required", "Node Reboot Required",
                                                  "Drain P2P", "Drain and Reset"]),
        method=dict(type="str", choices=["kmsg", "dcgm"], default="kmsg"),
        shim=dict(type="str", choices=["arm", "disarm"]),
        name=dict(type="str"),
        drill=dict(type="str"),
        agent_namespace=dict(type="str", default="gpu-fault-injection"),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=60),
    )


class Injector:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.namespace = self.params["agent_namespace"]
        self.k8s = kube.client(module)
        self.faults = kube.resource(self.k8s, fault_api.API_VERSION, fault_api.KIND,
                                    "install the GPUFault CRD with the fault_injector_agent role")
        self.leases = kube.resource(self.k8s, "coordination.k8s.io/v1", "Lease")
        self.nodes = kube.resource(self.k8s, "v1", "Node")

    # --- state=present ------------------------------------------------------------------------

    def present(self):
        targets, states = self.target_nodes()
        planned = self.plan(targets, states)
        if self.params["name"]:
            existing = kube.get(self.k8s, self.faults, self.params["name"], self.namespace)
            if existing is not None:
                return self.rerun(existing, planned[0][0])
        created = self.create_all(planned)
        if self.module.check_mode or not self.params["wait"]:
            return dict(changed=True, faults=created, nodes=targets, diff=self.diff({}, planned))
        outcome = self.wait([f["name"] for f in created])
        failed = [f for f in outcome if f["phase"] == fault_api.PHASE_FAILED]
        if failed:
            raise KubeError("the agent could not inject: %s (the GPUFault objects stay as the record; "
                            "delete them with state=absent)" % "; ".join(
                                "%s on %s: %s" % (f["name"], f["node"], f["error"]) for f in failed))
        return dict(changed=True, faults=outcome, nodes=targets, diff=self.diff({}, planned))

    @staticmethod
    def diff(before, planned):
        return dict(before=before, after=dict(("GPUFault for " + spec["node"], spec) for spec, _g, _a in planned))

    def plan(self, targets, states):
        """(spec, gpus, agent) per target node, every node checked before anything is created."""
        planned, problems = [], []
        for node in targets:
            agent = states[node]
            try:
                spec = injection.spec_for(self.params, node)
                gpus = fault_api.select_gpus(node, agent["inventory"], spec["gpu"]) if "gpu" in spec else []
            except fault_api.FaultSpecError as e:
                if str(e) not in problems:  # a bad xid reads the same on every node: say it once
                    problems.append(str(e))
                continue
            planned.append((spec, gpus, agent))
        if problems:
            raise fault_api.FaultSpecError("; ".join(problems))
        return planned

    def target_nodes(self):
        """([node], {node: agent state}): the target nodes in order, each with a live agent."""
        if self.params["node"]:
            return self.single_node(fault_api.validate_node_name(self.params["node"]))
        if self.params["nodes"] is not None:
            return self.listed_nodes(self.params["nodes"])
        return self.selected_nodes()

    def single_node(self, node):
        if kube.get(self.k8s, self.nodes, node) is None:
            raise KubeError("node %s not found" % node)
        lease = kube.get(self.k8s, self.leases, fault_api.lease_name(node), self.namespace)
        agent = agents.agent_state(node, self.namespace, lease, datetime.datetime.now(datetime.timezone.utc))
        if not agent["alive"]:
            raise KubeError(agent["reason"])
        return [node], {node: agent}

    def listed_nodes(self, names):
        for name in names:
            fault_api.validate_node_name(name)
        # One list of all Nodes, not a GET per node: a fleet drill names hundreds.
        items, _version = kube.list_objects(self.k8s, self.nodes)
        injection.check_listed_nodes(names, items, CONTROL_PLANE_LABELS)
        states = self.agents_of(names)
        dead = [states[n]["reason"] for n in names if not states[n]["alive"]]
        if dead:
            raise KubeError("%d of %d target node(s) have no live fault-injector agent: %s"
                            % (len(dead), len(names), "; ".join(dead)))
        return list(names), states

    def selected_nodes(self):
        items, _version = kube.list_objects(self.k8s, self.nodes, label_selector=self.params["node_selector"])
        names = sorted(n["metadata"]["name"] for n in items
                       if not injection.is_control_plane(n, CONTROL_PLANE_LABELS))
        states = self.agents_of(names)
        alive = [n for n in names if states[n]["alive"]]
        if len(alive) < self.params["count"]:
            raise KubeError("node_selector %r matches %d node(s) (%s), of which %d run a live agent; %d needed"
                            % (self.params["node_selector"], len(names), ", ".join(names) or "none",
                               len(alive), self.params["count"]))
        chosen = alive[:self.params["count"]]
        return chosen, dict((n, states[n]) for n in chosen)

    def agents_of(self, nodes):
        """Each node's agent state from ONE list of the namespace's Leases (not a GET per node)."""
        if not nodes:
            return {}
        leases, _version = kube.list_objects(self.k8s, self.leases, self.namespace)
        return injection.agent_states(nodes, self.namespace, leases, datetime.datetime.now(datetime.timezone.utc))

    def create_all(self, planned):
        """Create the faults, a few at a time, returned in the order planned; name every create that failed."""
        if len(planned) == 1:
            return [self.create(*planned[0])]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_CREATE_WORKERS, len(planned))) as pool:
            outcomes = list(pool.map(self.try_create, planned))
        errors = [error for _entry, error in outcomes if error]
        if errors:
            made = [entry["name"] for entry, _error in outcomes if entry and entry.get("name")]
            raise KubeError("%d of %d GPUFault creates failed: %s%s" % (
                len(errors), len(planned), "; ".join(errors),
                "" if self.module.check_mode or not made else
                " (created, and staying as the record: %s; delete them with state=absent)" % ", ".join(made)))
        return [entry for entry, _error in outcomes]

    def try_create(self, plan):
        try:
            return self.create(*plan), None
        except KubeError as e:
            return None, str(e)

    def create(self, spec, gpus, agent):
        if "xid" in spec or "sxid" in spec:
            prefix = "%s%d-%s-" % ("xid" if "xid" in spec else "sxid", spec.get("xid") or spec["sxid"]["code"],
                                   spec["node"])
        else:
            prefix = "shim-%s-%s-" % (spec["shim"], spec["node"])
        obj = fault_api.fault_object(self.namespace, spec, name=self.params["name"],
                                     generate_name=prefix[:40].rstrip("-.") + "-",
                                     drill=self.params["drill"], managed_by=MANAGED_BY)
        try:
            made = self.k8s.create(self.faults, obj, namespace=self.namespace).to_dict()
        except (kube.DynamicApiError, kube.TransportError) as e:
            raise KubeError("creating the GPUFault for node %s failed: %s" % (spec["node"], kube.describe(e)))
        entry = injection.result_of(made)
        if self.module.check_mode:
            entry.update(phase="DryRun", gpus=gpus, pci_addresses=[g["pci"] for g in gpus],
                         records=injection.predicted_records(spec, gpus, agent["record_form"]))
            if not self.params["name"]:
                entry.pop("name", None)
        return entry

    def rerun(self, existing, spec):
        if not injection.same_request(existing, spec):
            raise KubeError("GPUFault %s/%s already exists with a different request (%s); faults are "
                            "immutable: delete it with state=absent or choose another name"
                            % (self.namespace, self.params["name"], existing.get("spec")))
        if self.params["wait"] and not self.module.check_mode and not injection.is_final(existing):
            return dict(changed=False, faults=self.wait([self.params["name"]]), nodes=[spec["node"]])
        return dict(changed=False, faults=[injection.result_of(existing)], nodes=[spec["node"]])

    def wait(self, names):
        done = kube.wait_for(self.k8s, self.faults, self.namespace, fault_api.MANAGED_BY_LABEL + "=" + MANAGED_BY,
                             names, injection.is_final, self.params["wait_timeout"])
        return [injection.result_of(done[n]) for n in names]

    # --- state=absent -------------------------------------------------------------------------

    def absent(self):
        selector = [fault_api.MANAGED_BY_LABEL + "=" + MANAGED_BY]
        if self.params["node"]:
            selector.append(fault_api.NODE_LABEL + "=" + fault_api.validate_node_name(self.params["node"]))
        if self.params["drill"]:
            selector.append(fault_api.DRILL_LABEL + "=" + self.params["drill"])
        items, _version = kube.list_objects(self.k8s, self.faults, self.namespace, ",".join(selector))
        if self.params["name"]:
            items = [o for o in items if o["metadata"]["name"] == self.params["name"]]
        if self.params["nodes"] is not None:
            # Filtered here rather than in a set-based selector, which would grow with the fleet.
            wanted = set(fault_api.node_label_value(n) for n in self.params["nodes"])
            items = [o for o in items if (o["metadata"].get("labels") or {}).get(fault_api.NODE_LABEL) in wanted]
        deleted = []
        for obj in sorted(items, key=lambda o: o["metadata"]["name"]):
            name = obj["metadata"]["name"]
            try:
                self.k8s.delete(self.faults, name=name, namespace=self.namespace)
            except kube.NotFoundError:
                continue
            except kube.DynamicApiError as e:
                raise KubeError("deleting GPUFault %s/%s failed: %s" % (self.namespace, name, kube.describe(e)))
            deleted.append(injection.result_of(obj))
        return dict(changed=bool(deleted), faults=deleted,
                    diff=dict(before=dict((o["metadata"]["name"], o.get("spec")) for o in items), after={}))


def check_params(params):
    """Parameter combinations that the argument spec cannot express."""
    nodes = params.get("nodes")
    if nodes is not None and not nodes:
        return "nodes must name at least one node"
    if nodes and injection.duplicates(nodes):
        return "nodes lists %s more than once" % ", ".join(injection.duplicates(nodes))
    if params["state"] == "absent":
        return "give at most one of node or nodes" if params["node"] and nodes else None
    if [bool(params["node"]), nodes is not None, bool(params["node_selector"])].count(True) != 1:
        return "give exactly one of node, nodes or node_selector"
    if params["xid"] is not None and params["sxid"] is not None:
        return "give exactly one of xid or sxid"
    if params["shim"] == "arm" and params["xid"] is None:
        return "shim=arm needs an xid: the shim returns that XID's CUDA error"
    if params["xid"] is None and params["sxid"] is None and params["shim"] != "disarm":
        return "give exactly one of xid or sxid (only shim=disarm needs neither)"
    if params["count"] < 1:
        return "count must be at least 1"
    if params["name"] and ((params["node_selector"] and params["count"] != 1) or (nodes and len(nodes) != 1)):
        return "name needs a single target node"
    if params["wait_timeout"] < 1:
        return "wait_timeout must be at least 1 second"
    return None


def main():
    module = kube.module(argument_spec(), supports_check_mode=True)
    problem = check_params(module.params)
    if problem:
        module.fail_json(msg=problem)
    try:
        injector = Injector(module)
        result = injector.present() if module.params["state"] == "present" else injector.absent()
    except (KubeError, fault_api.FaultSpecError) as e:
        module.fail_json(msg=str(e))
    kube.finish(module, result)


if __name__ == "__main__":
    main()
