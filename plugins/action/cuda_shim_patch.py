# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of cuda_shim_patch: hands the module the shim's files from the collection.

On the controller it reads the C source from the collection's files/shim (its only home) and
generates the XID table header from the XID catalog, then runs the module with both in the
internal option ``shim_files``. Nothing is read when the task gives ``library_path`` (a prebuilt
library) or removes the shim (``state: absent``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_source

MODULE = "gpu_resilience.fault_injection.cuda_shim_patch"
INTERNAL = "shim_files"
SHIM_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "files", "shim")


def shim_files(shim_dir=SHIM_DIR):
    """{file name: text} for the ConfigMap: the C source, and the header generated from the catalog."""
    path = os.path.join(shim_dir, shim_source.SOURCE_FILE)
    try:
        with open(path, "rb") as f:
            source = to_text(f.read(), errors="surrogate_or_strict")
    except (IOError, OSError) as e:
        raise ValueError("cannot read the shim source %s (%s): reinstall the collection, or give library_path "
                         "for a prebuilt library" % (path, e))
    return {shim_source.SOURCE_FILE: source, shim_source.HEADER_FILE: shim_source.xid_header()}


def summary(files):
    """What the invocation shows instead of the files' text."""
    return dict((name, "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()) for name, text in files.items())


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        if args.get(INTERNAL) is not None:
            result.update(failed=True, msg="%s is internal: the action plugin sets it from the collection" % INTERNAL)
            return result
        files = None
        if args.get("state", "present") != "absent" and not args.get("library_path"):
            try:
                files = shim_files()
            except ValueError as e:
                result.update(failed=True, msg=to_text(e))
                return result
            args[INTERNAL] = files
        result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        module_args = (result.get("invocation") or {}).get("module_args")
        if files is not None and isinstance(module_args, dict) and module_args.get(INTERNAL):
            module_args[INTERNAL] = summary(files)
        return result
