#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: xid_catalog_info
short_description: What the collection's XID catalog says about NVIDIA XID codes
version_added: 0.1.0
description:
  - Returns entries of the XID catalog that the fault injection module, the node agent, the CUDA
    fault shim and the health agent all read (C(plugins/module_utils/xid_catalog.py)), so that a
    playbook can compare what a detector did with what the catalog expects, without a copy of it.
  - For each XID, the expectations are those of the records the injection module writes by default
    (for XID 154, its default recovery action), for a GPU at PCI C(0000:75:00.0); for each SXid,
    of the records of NVSwitch 0 at C(0000:06:00.0), port 12.
  - NVIDIA NVSentinel's expectations are what its syslog-health-monitor and platform-connectors
    decide for those records (see C(docs/nvsentinel.md)), with the node's GPU metadata or without
    it, and for the driver branch in that metadata.
  - Needs no access to Kubernetes and changes nothing.
author:
  - GPU Resilience maintainers (@gpu-resilience)
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  codes:
    description:
      - The XID codes to return. Default, every code of the catalog.
      - An unknown code fails, naming the valid ones.
    type: list
    elements: int
  taint_min_severity:
    description:
      - The severity from which the collection's health agent taints a node (its setting
        C(gpu_healthcheck_taint_min_severity)), for the C(expect_taint) of each entry.
    type: str
    choices: [RESET, REBOOT, ISOLATE]
    default: RESET
  sxid_codes:
    description:
      - The NVSwitch SXid codes to return. Default, every SXid of the catalog.
      - An unknown code fails, naming the valid ones.
    type: list
    elements: int
  nvsentinel_gpu_metadata:
    description:
      - Whether the node has the GPU metadata NVSentinel's metadata-collector writes
        (C(gpu_metadata.json)), listing the GPU and the NVSwitch port of the SXids.
      - Without it NVSentinel recommends C(RESTART_VM) instead of C(COMPONENT_RESET), and an SXid
        stalls its syslog monitor (C(nvsentinel_stalls)).
    type: bool
    default: true
  nvsentinel_driver_version:
    description:
      - The NVIDIA driver version in that metadata (for example C(575.57.08)); it decides how
        NVSentinel decodes NVLink5 XIDs 144-150. Empty, as NVSentinel does without it, decodes them
        as drivers before R575.
    type: str
    default: ""
seealso:
  - module: gpu_resilience.fault_injection.gpu_xid_inject
"""

EXAMPLES = r"""
- name: What should happen for XID 79 and 48
  gpu_resilience.fault_injection.xid_catalog_info:
    codes: [79, 48]
  register: catalog

- name: What NVSentinel decides on a node without GPU metadata (COMPONENT_RESET becomes RESTART_VM)
  gpu_resilience.fault_injection.xid_catalog_info:
    codes: [48]
    sxid_codes: [24007]
    nvsentinel_gpu_metadata: false
  register: no_metadata

- name: NVLink5 XIDs on a node with an R575 driver
  gpu_resilience.fault_injection.xid_catalog_info:
    codes: [144, 145, 146, 147, 148, 149, 150]
    nvsentinel_driver_version: "575.57.08"
  register: nvlink5

- name: Every code the catalog knows
  gpu_resilience.fault_injection.xid_catalog_info:
  register: everything
"""

RETURN = r"""
xids:
  description: One entry per code, ascending.
  returned: always
  type: list
  elements: dict
  contains:
    code:
      description: The XID code.
      type: int
      sample: 79
    mnemonic:
      description: NVIDIA's mnemonic.
      type: str
      sample: GPU_HAS_FALLEN_OFF_THE_BUS
    name:
      description: NVIDIA's description.
      type: str
      sample: GPU has fallen off the bus
    aws_severity:
      description: The AWS GPU health-check suite's severity of the default line (PASS, MONITOR, RESET, REBOOT, ISOLATE).
      type: str
      sample: REBOOT
    expect_status:
      description: The health agent's C(status) label for that severity (pass, warn, fail).
      type: str
      sample: fail
    expect_taint:
      description: Whether the health agent taints the node for it, at I(taint_min_severity).
      type: bool
      sample: true
    nvsentinel_action:
      description: NVIDIA NVSentinel's recommended action for the XID (its C(SysLogsXIDError) event).
      type: str
      sample: RESTART_BM
    nvsentinel_signal:
      description:
        - Where NVSentinel reports the XID, C(condition) (the node condition C(SysLogsXIDError),
          status True, for a fatal event) or C(event) (a Kubernetes Event, for a non-fatal one).
      type: str
      sample: condition
    nvsentinel_events:
      description:
        - Every health event NVSentinel publishes for the records, in order. XID 79 has two
          (C(SysLogsXIDError) and C(SysLogsGPUFallenOff)); XID 162 a healthy one that cancels 163.
        - Each has C(check), C(error_code) (C(145.RLW_REMAP) for NVLink5 lines), C(action),
          C(fatal), C(healthy), C(signal) (C(condition) or C(event)), C(pci) and C(gpu_uuid).
      type: list
      elements: dict
      sample: [{check: SysLogsXIDError, error_code: "79", action: RESTART_BM, fatal: true, healthy: false,
                signal: condition, pci: "0000:75:00", gpu_uuid: GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9}]
    dcgm_health:
      description: What C(dcgmi health -c) reports after DCGM's own injection of the code.
      type: str
      sample: FAIL
    cuda_error:
      description: The CUDA error the shim returns for it.
      type: dict
      sample: {code: 100, name: CUDA_ERROR_NO_DEVICE}
    sticky:
      description: Whether every later CUDA call of the faulted context fails too.
      type: bool
      sample: true
    line:
      description: The default XID line (for a GPU at PCI C(0000:75:00.0)).
      type: str
      sample: "NVRM: Xid (PCI:0000:75:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
sxids:
  description: One entry per SXid code, ascending.
  returned: always
  type: list
  elements: dict
  contains:
    code:
      description: The SXid code.
      type: int
      sample: 24007
    fatal:
      description: Whether the driver reports it as fatal.
      type: bool
      sample: true
    text:
      description: The driver's error text.
      type: str
      sample: sourcetrack timeout error (First)
    line:
      description: The default SXid line.
      type: str
      sample: "nvidia-nvswitch0: SXid (PCI:0000:06:00.0): 24007, Fatal, Link 12 sourcetrack timeout error (First)"
    nvsentinel_events:
      description: As for the XIDs (check C(SysLogsSXIDError); C(CONTACT_SUPPORT) when fatal, else C(NONE)).
      type: list
      elements: dict
    nvsentinel_stalls:
      description:
        - True when the node's GPU metadata does not map the NVSwitch port to a GPU (always without
          metadata). NVSentinel's syslog monitor then retries the record forever and processes no
          later record of any check, also after a restart. Never inject such an SXid on a node
          watched by NVSentinel.
      type: bool
      sample: false
severity_order:
  description: The severities, mildest first.
  returned: always
  type: list
  elements: str
  sample: [PASS, MONITOR, RESET, REBOOT, ISOLATE]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import nvsentinel, xid_catalog

SAMPLE_GPU = {"index": 0, "pci": "0000:75:00.0", "uuid": "GPU-3a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}
SAMPLE_SWITCH = {"index": 0, "pci": "0000:06:00.0", "port": 12}
_EVENT_KEYS = ("check", "error_code", "action", "fatal", "healthy", "signal", "pci", "gpu_uuid")


def nvsentinel_context(has_metadata, driver_version):
    """The sample node's GPU metadata as NVSentinel would read it, or None."""
    if not has_metadata:
        return None
    return nvsentinel.gpu_metadata([SAMPLE_GPU], driver_version, [
        {"gpu": SAMPLE_GPU["index"], "switch_pci": SAMPLE_SWITCH["pci"], "port": SAMPLE_SWITCH["port"]}])


def nvsentinel_expectation(records, metadata):
    """(events, stalls) NVSentinel produces for records the fault agent writes (journald form)."""
    messages = [xid_catalog.journal_message(xid_catalog.kmsg_text(record))[1] for record in records]
    events = [dict((k, e[k]) for k in _EVENT_KEYS) for e in xid_catalog.nvsentinel_events(messages, metadata)]
    return events, bool(xid_catalog.nvsentinel_stalls(messages, metadata))


def entry(code, taint_min_severity, metadata=None):
    """What the catalog expects for the default records of one XID."""
    item = xid_catalog.get(code)
    records = xid_catalog.render_xid_lines(code, SAMPLE_GPU["pci"], uuid=SAMPLE_GPU["uuid"])
    line = [r for r in records if r.startswith("NVRM: Xid ")][0]
    severity = xid_catalog.aws_severity(code, line)
    order = xid_catalog.SEVERITY_ORDER
    events = nvsentinel_expectation(records, metadata)[0]
    return dict(code=item["code"], mnemonic=item["mnemonic"], name=item["name"], aws_severity=severity,
                expect_status=xid_catalog.STATUS_OF_SEVERITY[severity],
                expect_taint=order.index(severity) >= order.index(taint_min_severity),
                nvsentinel_action=events[0]["action"], nvsentinel_signal=events[0]["signal"],
                nvsentinel_events=events, dcgm_health=item["dcgm_health"],
                cuda_error=dict(code=item["cuda_error"][0], name=item["cuda_error"][1]), sticky=item["sticky"],
                line=line)


def sxid_entry(code, metadata=None):
    """What the catalog expects for the default records of one SXid."""
    item = xid_catalog.get_sxid(code)
    records = xid_catalog.render_sxid_lines(code, SAMPLE_SWITCH["pci"], switch=SAMPLE_SWITCH["index"],
                                            link=SAMPLE_SWITCH["port"])
    events, stalls = nvsentinel_expectation(records, metadata)
    return dict(code=item["code"], fatal=item["fatal"], text=item["text"], line=records[0],
                nvsentinel_events=events, nvsentinel_stalls=stalls)


def main():
    module = AnsibleModule(
        argument_spec=dict(codes=dict(type="list", elements="int"),
                           sxid_codes=dict(type="list", elements="int"),
                           taint_min_severity=dict(type="str", choices=["RESET", "REBOOT", "ISOLATE"], default="RESET"),
                           nvsentinel_gpu_metadata=dict(type="bool", default=True),
                           nvsentinel_driver_version=dict(type="str", default="")),
        supports_check_mode=True)
    params = module.params
    metadata = nvsentinel_context(params["nvsentinel_gpu_metadata"], params["nvsentinel_driver_version"])
    try:
        xids = [entry(code, params["taint_min_severity"], metadata)
                for code in sorted(set(params["codes"] or xid_catalog.codes()))]
        sxids = [sxid_entry(code, metadata) for code in sorted(set(params["sxid_codes"] or xid_catalog.sxid_codes()))]
    except ValueError as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=False, xids=xids, sxids=sxids, severity_order=list(xid_catalog.SEVERITY_ORDER))


if __name__ == "__main__":
    main()
