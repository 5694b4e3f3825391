# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writes one JSON line per task result to $TASK_CLOCK_LOG: when it started and ended, its action,
and how long it waited on the cluster (the modules' `waited_seconds`, and the delays between the attempts
of an until loop, such as async_status polling a background watcher). bench/drill.py reads it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: task_clock
type: aggregate
short_description: times each task and what it waited on the cluster, for bench/drill.py
description:
  - Appends one JSON line per task result to the file named by the environment variable C(TASK_CLOCK_LOG).
requirements:
  - enable in configuration (C(ANSIBLE_CALLBACKS_ENABLED=task_clock))
"""


def _waited(result, delay):
    """Seconds a task result spent waiting on the cluster."""
    items = result.get("results") if isinstance(result.get("results"), list) else [result]
    total = 0.0
    for item in items:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("waited_seconds"), (int, float)):
            total += item["waited_seconds"]
        attempts = item.get("attempts")
        if isinstance(attempts, int) and attempts > 1:
            total += (attempts - 1) * float(delay or 0)
    return total


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_clock"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.path = os.environ.get("TASK_CLOCK_LOG")
        self.started = {}

    def _write(self, record):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def v2_playbook_on_start(self, playbook):
        self._write({"event": "playbook_start", "time": time.time()})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.started[task._uuid] = time.time()

    def _done(self, result, status):
        task = result._task
        self._write({"event": "task", "status": status, "name": task.get_name(), "action": task.action,
                     "start": self.started.get(task._uuid), "end": time.time(),
                     "waited": round(_waited(result._result, getattr(task, "delay", 0)), 3)})

    def v2_runner_on_ok(self, result):
        self._done(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._done(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        self._write({"event": "playbook_end", "time": time.time()})
