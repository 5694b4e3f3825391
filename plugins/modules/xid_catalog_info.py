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
  - For each XID, the expectations are those of the line the injection module writes by default
    (for XID 154, its default recovery action).
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
seealso:
  - module: gpu_resilience.fault_injection.gpu_xid_inject
"""

EXAMPLES = r"""
- name: What should happen for XID 79 and 48
  gpu_resilience.fault_injection.xid_catalog_info:
    codes: [79, 48]
  register: catalog

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
      description: NVIDIA NVSentinel's recommended action for the default line.
      type: str
      sample: RESTART_BM
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
severity_order:
  description: The severities, mildest first.
  returned: always
  type: list
  elements: str
  sample: [PASS, MONITOR, RESET, REBOOT, ISOLATE]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog

SAMPLE_PCI = "0000:75:00.0"


def entry(code, taint_min_severity):
    """What the catalog expects for the default line of one code."""
    item = xid_catalog.get(code)
    line = xid_catalog.render_xid_lines(code, SAMPLE_PCI)[0]
    severity = xid_catalog.aws_severity(code, line)
    order = xid_catalog.SEVERITY_ORDER
    return dict(code=item["code"], mnemonic=item["mnemonic"], name=item["name"], aws_severity=severity,
                expect_status=xid_catalog.STATUS_OF_SEVERITY[severity],
                expect_taint=order.index(severity) >= order.index(taint_min_severity),
                nvsentinel_action=xid_catalog.nvsentinel_action(code, line), dcgm_health=item["dcgm_health"],
                cuda_error=dict(code=item["cuda_error"][0], name=item["cuda_error"][1]), sticky=item["sticky"],
                line=line)


def main():
    module = AnsibleModule(
        argument_spec=dict(codes=dict(type="list", elements="int"),
                           taint_min_severity=dict(type="str", choices=["RESET", "REBOOT", "ISOLATE"], default="RESET")),
        supports_check_mode=True)
    codes = module.params["codes"] or xid_catalog.codes()
    try:
        xids = [entry(code, module.params["taint_min_severity"]) for code in sorted(set(codes))]
    except ValueError as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=False, xids=xids, severity_order=list(xid_catalog.SEVERITY_ORDER))


if __name__ == "__main__":
    main()
