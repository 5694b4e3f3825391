#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvsentinel_info
short_description: Check that NVIDIA NVSentinel can see the faults a drill will inject
version_added: 0.1.0
description:
  - The preflight of a drill whose detector is NVIDIA NVSentinel.
  - Finds NVSentinel's syslog-health-monitor DaemonSet and reads the NVSentinel version it runs
    from its image tag; warns when it is older than v1.14.0 (earlier releases filtered kernel
    records at times on C(SYSLOG_FACILITY=0), which no record written to C(/dev/kmsg) from user
    space carries) or when the tag names no release.
  - Refuses nodes whose fault agent writes records in the C(dmesg) form
    (C(fault_injector_agent_record_form)); journald stores such a record's leading C(NVRM:) as
    C(SYSLOG_IDENTIFIER), so NVSentinel, which matches C(NVRM:) followed by C(Xid) in the journal's C(MESSAGE),
    would see none of them. The form is read from each agent's Lease.
  - Reads which of fault-quarantine, node-drainer and fault-remediation NVSentinel runs and with
    which C(--dry-run) setting (from the Deployments its chart rendered), so the stage it runs in
    (C(monitor), C(dry-run), C(full); see C(docs/nvsentinel.md), "Stages"), fault-quarantine's
    circuit breaker, and fault-remediation's remediation resource per recommended action (its
    ConfigMap). With I(stage), fails when NVSentinel runs another stage (naming what it runs and
    the chart values that make each stage), when a component of the stage has no ready replica, or
    when the circuit breaker is tripped (nothing would be quarantined).
  - Never changes anything.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  namespace:
    description: The namespace NVSentinel is installed in.
    type: str
    default: nvsentinel
  nodes:
    description:
      - The nodes the drill will inject on; each needs a live fault agent writing the C(journald)
        record form.
    type: list
    elements: str
    default: []
  stage:
    description:
      - The stage the drill expects NVSentinel to run in; omitted, the stage is reported, not checked.
    type: str
    choices: [monitor, dry-run, full]
  agent_namespace:
    description: The namespace of the fault agents (role C(fault_injector_agent)).
    type: str
    default: gpu-fault-injection
  driver_version:
    description:
      - The NVIDIA driver version NVSentinel's metadata-collector finds on the nodes, for
        C(gpu_metadata); it decides how NVSentinel decodes NVLink5 XIDs 144-150 (R575 or newer).
    type: str
    default: ""
  nvswitch_ports:
    description:
      - The NVSwitch ports the nodes' GPUs reach, for C(gpu_metadata) (NVSentinel attributes an SXid to
        the GPU behind its port).
    type: list
    elements: dict
    default: []
    suboptions:
      gpu:
        description: The GPU's index (as the fault agent reports it).
        type: int
        required: true
      switch_pci:
        description: The NVSwitch's PCI address, as in its SXid lines.
        type: str
        required: true
      port:
        description: The switch port (the SXid line's C(Link)).
        type: int
        required: true
seealso:
  - module: gpu_resilience.fault_injection.nvsentinel_detection
"""

EXAMPLES = r"""
- name: NVSentinel can see what the drill injects on gpu-node-1
  gpu_resilience.fault_injection.nvsentinel_info:
    nodes: [gpu-node-1]
  register: nvsentinel
"""

RETURN = r"""
version:
  description: NVSentinel's version, C([major, minor, patch]), or null when the image tag names no release.
  returned: always
  type: list
  elements: int
  sample: [1, 19, 0]
image:
  description: The syslog-health-monitor image.
  returned: always
  type: str
  sample: ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.19.0
daemonset:
  description: The DaemonSet that runs it.
  returned: always
  type: str
  sample: nvsentinel-syslog-health-monitor-regular
findings:
  description: The warnings (also shown as warnings).
  returned: always
  type: list
  elements: str
record_forms:
  description: The record form of each node's fault agent.
  returned: always
  type: dict
  sample: {gpu-node-1: journald}
stage:
  description: The stage NVSentinel runs in, from its Deployments; null for a mix that is none of the three.
  returned: always
  type: str
  sample: full
components:
  description: Per component (C(fault-quarantine), C(node-drainer), C(fault-remediation)) that is deployed -
    C(deployment), C(replicas), C(ready), C(dry_run).
  returned: always
  type: dict
  sample: {fault-quarantine: {deployment: fault-quarantine, replicas: 1, ready: 1, dry_run: false}}
remediation:
  description: fault-remediation's remediation resource per recommended action (empty when it is not deployed).
  returned: always
  type: dict
  sample: {RESTART_BM: {api_version: janitor.dgxc.nvidia.com/v1alpha1, kind: RebootNode, scope: Cluster}}
circuit_breaker:
  description: The status of fault-quarantine's circuit breaker (C(CLOSED), C(TRIPPED)), null when it has none.
  returned: always
  type: str
  sample: CLOSED
gpu_metadata:
  description:
    - Per node, the GPU metadata NVSentinel's metadata-collector would write for it, from its fault
      agent's GPU inventory, I(driver_version) and I(nvswitch_ports), in the form
      M(gpu_resilience.fault_injection.nvsentinel_detection) takes.
  returned: always
  type: dict
  sample: {gpu-node-1: {driver_version: "570.172.08", gpus: [{gpu_id: 0, uuid: GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9,
                                                                pci_address: "0000:53:00.0", nvlinks: []}]}}
"""

import datetime

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import injection, kube, nvsentinel
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import nvsentinel_stages as stages
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError


def argument_spec():
    return dict(namespace=dict(type="str", default="nvsentinel"),
                nodes=dict(type="list", elements="str", default=[]),
                stage=dict(type="str", choices=list(stages.STAGES)),
                agent_namespace=dict(type="str", default="gpu-fault-injection"),
                driver_version=dict(type="str", default=""),
                nvswitch_ports=dict(type="list", elements="dict", default=[], options=dict(
                    gpu=dict(type="int", required=True), switch_pci=dict(type="str", required=True),
                    port=dict(type="int", required=True))))


def monitor(daemonsets, namespace):
    """(DaemonSet name, workload_version) of the DaemonSet running syslog-health-monitor."""
    for daemonset in daemonsets:
        try:
            return daemonset["metadata"]["name"], nvsentinel.workload_version(daemonset)
        except nvsentinel.NVSentinelError:
            continue
    raise KubeError("no DaemonSet in namespace %s runs NVSentinel's %s: install NVSentinel with its syslog health "
                    "monitor, or set namespace" % (namespace, nvsentinel.MONITOR_COMPONENT))


def record_forms(states):
    """{node: record form} of live agents; KubeError naming the nodes without one, or with a form NVSentinel cannot see."""
    dead = sorted(node for node, state in states.items() if not state["alive"])
    if dead:
        raise KubeError("no live fault agent on %s (%s)" % (", ".join(dead), "; ".join(states[n]["reason"] for n in dead)))
    forms = dict((node, state["record_form"]) for node, state in states.items())
    for node in sorted(forms):
        try:
            nvsentinel.check_record_form(forms[node], node)
        except nvsentinel.NVSentinelError as e:
            raise KubeError(str(e))
    return forms


def remediation_config(k8s, namespace, found):
    """fault-remediation's remediation resources, from the ConfigMap its Deployment mounts."""
    info = found.get(stages.FAULT_REMEDIATION)
    if not info:
        return {}
    deployment = kube.get(k8s, kube.resource(k8s, "apps/v1", "Deployment"), info["deployment"], namespace)
    volumes = (((deployment or {}).get("spec") or {}).get("template", {}).get("spec") or {}).get("volumes") or []
    for name in [v["configMap"]["name"] for v in volumes if (v.get("configMap") or {}).get("name")]:
        config_map = kube.get(k8s, kube.resource(k8s, "v1", "ConfigMap"), name, namespace) or {}
        text = (config_map.get("data") or {}).get(stages.REMEDIATION_CONFIG_KEY)
        if text and "remediationActions" in text:
            return stages.remediation_resources(text)
    return {}


def stage_info(k8s, namespace):
    """(components, stage, remediation resources, the circuit-breaker ConfigMap or None)."""
    deployments, _version = kube.list_objects(k8s, kube.resource(k8s, "apps/v1", "Deployment"), namespace)
    found = stages.components(deployments)
    breaker = kube.get(k8s, kube.resource(k8s, "v1", "ConfigMap"), stages.BREAKER_CONFIG_MAP, namespace)
    return found, stages.deployed_stage(found), remediation_config(k8s, namespace, found), breaker


def main():
    module = kube.module(argument_spec(), supports_check_mode=True)
    params = module.params
    try:
        k8s = kube.client(module)
        daemonsets, _version = kube.list_objects(k8s, kube.resource(k8s, "apps/v1", "DaemonSet"), params["namespace"])
        name, info = monitor(daemonsets, params["namespace"])
        forms, metadata = {}, {}
        if params["nodes"]:
            leases, _version = kube.list_objects(k8s, kube.resource(k8s, "coordination.k8s.io/v1", "Lease"),
                                                 params["agent_namespace"])
            states = injection.agent_states(sorted(set(params["nodes"])), params["agent_namespace"], leases,
                                            datetime.datetime.now(datetime.timezone.utc))
            forms = record_forms(states)
            metadata = dict((node, nvsentinel.gpu_metadata(state["inventory"], params["driver_version"],
                                                           params["nvswitch_ports"])) for node, state in states.items())
        found, stage, remediation, breaker = stage_info(k8s, params["namespace"])
        problems = stages.stage_problems(params["stage"], found, params["namespace"], breaker) if params["stage"] else []
    except (KubeError, nvsentinel.NVSentinelError, stages.StageError) as e:
        module.fail_json(msg=str(e), changed=False)
    findings = nvsentinel.version_findings(info)
    result = dict(changed=False, version=list(info["version"]) if info["version"] else None,
                  image=info["image"], daemonset=name, findings=findings, record_forms=forms,
                  gpu_metadata=metadata, stage=stage, components=found, remediation=remediation,
                  circuit_breaker=((breaker or {}).get("data") or {}).get("status"))
    if problems:
        module.fail_json(msg="NVSentinel cannot run this drill as asked: %s." % "; ".join(problems), **result)
    kube.finish(module, result, findings)


if __name__ == "__main__":
    main()
