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
  - The module first reads the agent's Lease on each node, so a node without a live agent, a GPU the
    node does not have, or an unknown XID fails with a clear error and creates nothing.
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
      - Target node. Give I(node) or I(node_selector) for I(state=present).
      - With I(state=absent), only faults for this node are deleted.
    type: str
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
faults:
  description: One entry per fault object created, found, or (state=absent) deleted.
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
  description: The target nodes.
  returned: state=present
  type: list
  elements: str
  sample: [gpu-node-1]
"""

import datetime

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import agents, fault_api, injection, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
MANAGED_BY = "gpu_xid_inject"


def argument_spec():
    return dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        node=dict(type="str"),
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
        targets = self.target_nodes()
        planned = []
        for node in targets:
            agent = self.live_agent(node)
            spec = injection.spec_for(self.params, node)
            gpus = fault_api.select_gpus(node, agent["inventory"], spec["gpu"]) if "gpu" in spec else []
            planned.append((spec, gpus, agent))
        if self.params["name"]:
            existing = kube.get(self.k8s, self.faults, self.params["name"], self.namespace)
            if existing is not None:
                return self.rerun(existing, planned[0][0])
        created = [self.create(spec, gpus, agent) for spec, gpus, agent in planned]
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

    def target_nodes(self):
        if self.params["node"]:
            node = fault_api.validate_node_name(self.params["node"])
            if kube.get(self.k8s, self.nodes, node) is None:
                raise KubeError("node %s not found" % node)
            return [node]
        items, _version = kube.list_objects(self.k8s, self.nodes, label_selector=self.params["node_selector"])
        names = sorted(n["metadata"]["name"] for n in items
                       if not set(CONTROL_PLANE_LABELS) & set(n["metadata"].get("labels") or {}))
        alive = [n for n in names if self.agent_of(n)["alive"]]
        if len(alive) < self.params["count"]:
            raise KubeError("node_selector %r matches %d node(s) (%s), of which %d run a live agent; %d needed"
                            % (self.params["node_selector"], len(names), ", ".join(names) or "none",
                               len(alive), self.params["count"]))
        return alive[:self.params["count"]]

    def agent_of(self, node):
        lease = kube.get(self.k8s, self.leases, fault_api.lease_name(node), self.namespace)
        return agents.agent_state(node, self.namespace, lease, datetime.datetime.now(datetime.timezone.utc))

    def live_agent(self, node):
        agent = self.agent_of(node)
        if not agent["alive"]:
            raise KubeError(agent["reason"])
        return agent

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
        except kube.DynamicApiError as e:
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
    if params["state"] == "absent":
        return None
    if bool(params["node"]) == bool(params["node_selector"]):
        return "give exactly one of node or node_selector"
    if params["xid"] is not None and params["sxid"] is not None:
        return "give exactly one of xid or sxid"
    if params["shim"] == "arm" and params["xid"] is None:
        return "shim=arm needs an xid: the shim returns that XID's CUDA error"
    if params["xid"] is None and params["sxid"] is None and params["shim"] != "disarm":
        return "give exactly one of xid or sxid (only shim=disarm needs neither)"
    if params["count"] < 1:
        return "count must be at least 1"
    if params["name"] and (params["node_selector"] and params["count"] != 1):
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
