# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of the modules that work through the fault-injector node agent."""

    DOCUMENTATION = r"""
options:
  agent_namespace:
    description:
      - Namespace of the fault-injector agent (the C(gpu_resilience.fault_injection.fault_injector_agent) role).
      - Fault objects are created there, and each node's agent Lease is read from there.
    type: str
    default: gpu-fault-injection
  wait:
    description:
      - Wait until the agents report the outcome. Waiting watches the objects; it does not poll.
    type: bool
    default: true
  wait_timeout:
    description:
      - How many seconds to wait for the agents before failing.
    type: int
    default: 60
"""
