# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sources and build recipe of the CUDA fault shim (files/shim/cuda_fault_shim.c).

The shim is shipped as C source and compiled where it runs (an init container), so that it always
matches the node's C library. Two files make the build directory:

* ``SOURCE_FILE``: ``files/shim/cuda_fault_shim.c``, unchanged;
* ``HEADER_FILE``: ``xid_table.h``, generated here from the XID catalog by ``xid_header()`` (never
  committed: the catalog is the single source of truth). ``tools/gen-shim-header`` writes it by hand.

``compile_argv(src_dir, out_path)`` is the one compiler command line; it needs a C11 compiler and
the C library headers, nothing from CUDA.

Standard library only: importable without Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import os

try:
    from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog
except ImportError:  # used outside any collection (tools/gen-shim-header, the node agent)
    import xid_catalog

SOURCE_FILE = "cuda_fault_shim.c"
HEADER_FILE = "xid_table.h"
LIBRARY = "libcudafault.so"

# files/shim, relative to this file (plugins/module_utils/shim_source.py) in the collection.
SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "files", "shim")


def source_path():
    """Absolute path of the shim's C source in this collection."""
    return os.path.normpath(os.path.join(SOURCE_DIR, SOURCE_FILE))


def source_text():
    """The shim's C source, as text."""
    with io.open(source_path(), "r", encoding="utf-8") as handle:
        return handle.read()


def compile_argv(src_dir, out_path, compiler="cc"):
    """The exact compiler command that builds LIBRARY from SOURCE_FILE and HEADER_FILE in src_dir."""
    return [compiler, "-std=gnu11", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra",
            "-o", out_path, os.path.join(src_dir, SOURCE_FILE), "-I", src_dir, "-ldl", "-lpthread"]


def _comment(text):
    """Text made safe inside a C block comment."""
    return str(text).replace("*/", "* /").replace("/*", "/ *")


def xid_header():
    """The text of HEADER_FILE: one {xid, cuda_error, sticky} row per catalog XID, sorted by XID."""
    errors = sorted((number, name) for name, number in xid_catalog.CUDA_ERRORS.items())
    lines = [
        "/* %s: generated from plugins/module_utils/xid_catalog.py by shim_source.xid_header()." % HEADER_FILE,
        " * Do not edit and do not commit: regenerate with tools/gen-shim-header.",
        " *",
        " * CUresult values (cudaError_t has the same numbers for these codes):",
    ]
    lines += [" *   %-34s %d" % (_comment(name), number) for number, name in errors]
    lines += [
        " */",
        "#ifndef CUDA_FAULT_XID_TABLE_H",
        "#define CUDA_FAULT_XID_TABLE_H",
        "",
        "struct cf_xid_entry {",
        "    int xid;         /* NVIDIA XID code */",
        "    int cuda_error;  /* CUresult the faulted process sees; 0: no application-visible effect */",
        "    int sticky;      /* 1: the failed context keeps failing, as after a real fault */",
        "};",
        "",
        "static const struct cf_xid_entry cf_xid_table[] = {",
    ]
    for code in sorted(xid_catalog.XID_CATALOG):
        entry = xid_catalog.XID_CATALOG[code]
        number, name = entry["cuda_error"]
        lines.append("    {%d, %d, %d},  /* XID %d %s: %s */" % (
            code, number, 1 if entry["sticky"] else 0, code, _comment(entry["mnemonic"]), _comment(name)))
    lines += [
        "};",
        "",
        "#define CF_XID_TABLE_LEN (sizeof(cf_xid_table) / sizeof(cf_xid_table[0]))",
        "",
        "#endif /* CUDA_FAULT_XID_TABLE_H */",
        "",
    ]
    return "\n".join(lines)
