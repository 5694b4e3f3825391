#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: drill_ledger_info
short_description: Read the write-ahead ledgers GPU fault drills keep in the cluster
version_added: 0.1.0
description:
  - Returns the ledgers that M(gpu_resilience.fault_injection.drill_ledger) wrote, oldest first, so
    that a cleanup, also a later and separate run after a drill's process was killed, knows what
    each drill changed and how to undo it.
  - A ledger whose C(ledger.json) cannot be read is returned with C(error) rather than failing the
    task, so that a cleanup still sees it.
  - Changes nothing.
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
  drill:
    description:
      - Only this drill's ledger. Default, every ledger in I(namespace).
    type: str
  namespace:
    description:
      - The namespace of the ledgers, the fault-injector agent's. A namespace that does not exist holds
        no ledgers (a warning says so).
    type: str
    default: gpu-fault-injection
notes:
  - Needs C(list) on C(configmaps) in I(namespace).
seealso:
  - module: gpu_resilience.fault_injection.drill_ledger
  - module: gpu_resilience.fault_injection.node_marks_restore
"""

EXAMPLES = r"""
- name: What did earlier drills leave behind?
  gpu_resilience.fault_injection.drill_ledger_info:
  register: ledgers

- name: The ledger of one drill
  gpu_resilience.fault_injection.drill_ledger_info:
    drill: xid79-0412
  register: ledger
"""

RETURN = r"""
ledgers:
  description:
    - The ledgers in I(namespace) (only I(drill)'s when given), oldest first by C(created).
    - Each is the parsed ledger with the ConfigMap's C(name), C(namespace) and C(resource_version);
      a ledger whose C(ledger.json) does not parse has C(drill), C(created) (the ConfigMap's
      creation time), those three and C(error) instead.
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 1, drill: xid79-0412, created: "2026-11-22T18:19:58.104223Z", meta: {}, entries: [],
       name: gpu-drill-xid79-0412, namespace: gpu-fault-injection, resource_version: "48230"}
    - {drill: xid79-0411, created: "2026-11-22T17:02:11Z", name: gpu-drill-xid79-0411,
       namespace: gpu-fault-injection, resource_version: "47001",
       error: "ledger.json of ConfigMap gpu-drill-xid79-0411 is not JSON: Expecting value: line 1 column 1 (char 0)"}
namespace:
  description: The namespace read.
  returned: always
  type: str
  sample: gpu-fault-injection
"""

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_ledger, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_ledger import LedgerError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError


def read_ledgers(k8s, namespace, drill=None):
    """(ledgers, warnings) in namespace, oldest first."""
    if drill is not None:
        drill_ledger.validate_drill(drill)
    config_maps = kube.resource(k8s, "v1", "ConfigMap")
    items, _version = kube.list_objects(k8s, config_maps, namespace, drill_ledger.selector(drill))
    warnings = []
    if not items and kube.get(k8s, kube.resource(k8s, "v1", "Namespace"), namespace) is None:
        warnings.append("namespace %s does not exist, so it holds no drill ledgers" % namespace)
    return drill_ledger.sort_listed([drill_ledger.listed(o) for o in items]), warnings


def main():
    module = kube.module(dict(drill=dict(type="str"), namespace=dict(type="str", default=drill_ledger.DEFAULT_NAMESPACE)),
                         supports_check_mode=True)
    try:
        ledgers, warnings = read_ledgers(kube.client(module), module.params["namespace"], module.params["drill"])
    except (KubeError, LedgerError) as e:
        module.fail_json(msg=str(e), changed=False)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(changed=False, ledgers=ledgers, namespace=module.params["namespace"])


if __name__ == "__main__":
    main()
