# -*- coding: utf-8 -*-
# Copyright: contributors to gpu_resilience.fault_injection
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA XID / SXid catalog: the single source of truth for every fault this collection injects.

Everything the collection knows about an XID lives in this file and nowhere else: the exact
kernel-log text the NVIDIA driver writes, what the detectors under test conclude from it
(NVIDIA NVSentinel's syslog-health-monitor, the AWS GPU health-check suite, DCGM health watches)
and what a CUDA application sees when the fault hits it.

Consumers, all reading this one file:

* the collection's Ansible modules and action plugins (as module_utils);
* the node agent, which receives this file unchanged through a ConfigMap and imports it with
  the Python 3.8+ standard library only -- so this module must never import Ansible or any
  third-party package;
* the generator of the C header for the CUDA fault shim (``cuda_error`` and ``sticky``);
* the unit tests, which prove every rendered line is parsed by the detectors' own patterns.

Sources (checked against public copies; see the per-entry notes for the rest):

* NVIDIA XID catalog (docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html): mnemonic,
  description, resolution bucket.
* open-gpu-kernel-modules: the ``*_XID_MESSAGE_FMT`` strings (ECC, NVLink, GSP, FSP events).
* NVSentinel syslog-health-monitor: XID/SXid/fallen-off-bus patterns, bucket-to-action mapper,
  the XID 154 rule (text inside the last parentheses).
* AWS GPU health-check suite, check 0 (nvidia-smi): severities, the XID 154 escalation and the node
  rules (A100, MIG, UVM in use).
* DCGM health watches (4.x "devastating" and per-subsystem XID tables).
* cuda.h: CUresult numbers and which of them poison the context.

Writing the lines: each element returned by ``render_xid_lines``/``render_sxid_lines`` is ONE
kernel log record (XID 79's fallen-off-the-bus record spans three lines, as the driver prints
it, and must be written in a single /dev/kmsg write). journald takes a leading ``ident:`` of a
user-space kmsg record as SYSLOG_IDENTIFIER, so write ``kmsg_text(record)`` to keep the
journal's MESSAGE equal to the record.
"""

import re
import string
from types import MappingProxyType

# --------------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------------

# AWS suite severity ladder, mildest first; the worst one seen wins.
SEVERITY_ORDER = ("PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE")
# The suite's node status label for each severity.
STATUS_OF_SEVERITY = {"PASS": "pass", "MONITOR": "warn", "RESET": "fail", "REBOOT": "fail", "ISOLATE": "fail"}

# NVSentinel RecommendedAction names this catalog uses. RESTART_VM is what NVSentinel's mapper
# returns for NVIDIA's RESTART_VM bucket (XID 151).
NVSENTINEL_ACTIONS = ("NONE", "COMPONENT_RESET", "CONTACT_SUPPORT", "RESTART_VM", "RESTART_BM")

# dcgmHealthWatchResults_t, as printed by `dcgmi health -c`.
DCGM_HEALTH_VALUES = ("PASS", "WARN", "FAIL")

# CUresult values (cuda.h) the CUDA fault shim returns. CUDA_SUCCESS means the fault has no
# application-visible effect, so the shim does not fail any call for it.
CUDA_ERRORS = MappingProxyType({
    "CUDA_SUCCESS": 0,
    "CUDA_ERROR_NO_DEVICE": 100,
    "CUDA_ERROR_ECC_UNCORRECTABLE": 214,
    "CUDA_ERROR_NVLINK_UNCORRECTABLE": 220,
    "CUDA_ERROR_CONTAINED": 226,
    "CUDA_ERROR_ILLEGAL_ADDRESS": 700,
    "CUDA_ERROR_LAUNCH_TIMEOUT": 702,
    "CUDA_ERROR_LAUNCH_FAILED": 719,
    "CUDA_ERROR_KEY_ROTATION": 916,  # CUDA 12.8+; the number is what the shim returns
    "CUDA_ERROR_UNKNOWN": 999,
})

# XID 154 recovery actions: the driver's names and codes (NVML nvmlDeviceGpuRecoveryAction_t:
# NONE 0, GPU_RESET 1, NODE_REBOOT 2, DRAIN_P2P 3, DRAIN_AND_RESET 4). NVIDIA's catalog lists
# transitions to 0x1, 0x2 and 0x4 as observed and 0x3 as not yet observed.
RECOVERY_ACTIONS = MappingProxyType({
    "None": 0x0,
    "GPU Reset Required": 0x1,
    "Node Reboot Required": 0x2,
    "Drain P2P": 0x3,
    "Drain and Reset": 0x4,
})
DEFAULT_RECOVERY_ACTION = "GPU Reset Required"

# How NVSentinel's syslog monitor maps the text inside the last "(...)" of an XID 154 line; any
# other text (Drain P2P included) falls through to CONTACT_SUPPORT.
_NVSENTINEL_154 = {
    "GPU Reset Required": "COMPONENT_RESET",
    "Drain and Reset": "COMPONENT_RESET",
    "Node Reboot Required": "RESTART_BM",
    "None": "NONE",
}
# NVSentinel's rule for codes its catalog does not resolve (and for a 154 line without "(...)").
NVSENTINEL_UNKNOWN_ACTION = "CONTACT_SUPPORT"

# AWS check 0 escalates on XID 154 text, first match wins (case-insensitive substring search
# over the whole line, so the "from" action counts too).
_AWS_154 = (
    ("node reboot required", "REBOOT"),
    ("gpu reset required", "RESET"),
    ("drain and reset", "RESET"),
    ("drain p2p", "RESET"),
)
# AWS check 0's severity for codes it has no rule for.
AWS_UNKNOWN_SEVERITY = "MONITOR"
# AWS check 0's rules that depend on the node, not on the line: {code: (facts, severity)}, applied
# when every fact has the given value. The facts come from nvidia-smi on the node: a100 (a GPU's
# name contains "A100"), mig (MIG mode is enabled on a GPU), uvm_in_use (a process holds
# /dev/nvidia-uvm open). A fact that could not be read counts as false, as in the suite.
AWS_NODE_FACTS = ("a100", "mig", "uvm_in_use")
_AWS_NODE_RULES = MappingProxyType({
    64: (MappingProxyType({"a100": True}), "REBOOT"),
    95: (MappingProxyType({"a100": True, "mig": False}), "REBOOT"),
    159: (MappingProxyType({"uvm_in_use": True}), "RESET"),
})

# Limits for caller-supplied text. A kmsg record holds about 1 KB; real XID details are far
# shorter, and a short cap keeps a log line readable.
MAX_MESSAGE_LEN = 200
MAX_PROCESS_NAME_LEN = 32
PID_MAX = 4194304  # Linux PID_MAX_LIMIT

# The driver's "pid=..., name=..., " preamble; {pid}/{name} default to what it prints when it
# cannot attribute the fault to a process.
PREAMBLE = "pid={pid}, name={name}, "
_UNKNOWN_PID = "'<unknown>'"
_UNKNOWN_NAME = "<unknown>"

# Placeholders the renderer fills itself; callers cannot set them through params.
_COMPUTED_FIELDS = frozenset(("pid", "name", "pci", "pci_full", "action", "action_hex"))


class UnknownXidError(ValueError):
    """Raised for an XID or SXid code that is not in this catalog."""


# --------------------------------------------------------------------------------------------
# The XID table: one entry per XID
# --------------------------------------------------------------------------------------------
#
# Fields of every entry:
#   code, mnemonic, name      NVIDIA catalog mnemonic and description. Codes the current catalog
#                             lists as "Unused" on Ampere+ keep the legacy description.
#   text                      str.format template of what follows "NVRM: Xid (PCI:dddd:bb:dd): N, ".
#   defaults                  default for every placeholder of text/extra_lines (besides the
#                             computed pid, name, pci, pci_full, action, action_hex).
#   extra_lines               further records the driver writes with this XID (templates).
#   text_verified             True when text follows a public log line or the driver's format
#                             string; False where it is modelled on the catalog description.
#   nvsentinel_action         NVSentinel's RecommendedAction for the code (its "Xids" sheet row);
#                             144-150 and 154 lines are decided by their text and the metadata
#                             turns COMPONENT_RESET into RESTART_VM: see "What NVSentinel decides".
#   aws_severity              AWS check 0 severity for the default rendering.
#   dcgm_health               `dcgmi health -c` result with all watches set (`dcgmi health -s a`)
#                             after `dcgmi test --inject -f 230 -v <code>` (DCGM 4.x XID tables;
#                             PASS where DCGM does not classify the code). DCGM takes XIDs from
#                             the driver, not from the kernel log: a kmsg line never reaches it.
#   cuda_error                (CUresult number, name) the shim returns to the faulted process.
#   sticky                    True when every later call in that context fails too.


def _cuda(name):
    return (CUDA_ERRORS[name], name)


_OK = _cuda("CUDA_SUCCESS")
_ILLEGAL_ADDRESS = _cuda("CUDA_ERROR_ILLEGAL_ADDRESS")
_LAUNCH_FAILED = _cuda("CUDA_ERROR_LAUNCH_FAILED")
_LAUNCH_TIMEOUT = _cuda("CUDA_ERROR_LAUNCH_TIMEOUT")
_ECC = _cuda("CUDA_ERROR_ECC_UNCORRECTABLE")
_NVLINK = _cuda("CUDA_ERROR_NVLINK_UNCORRECTABLE")
_NO_DEVICE = _cuda("CUDA_ERROR_NO_DEVICE")
_UNKNOWN = _cuda("CUDA_ERROR_UNKNOWN")
_KEY_ROTATION = _cuda("CUDA_ERROR_KEY_ROTATION")

# NVLink5 (XIDs 144-150) line, as the driver's NVLINK_MSE_LEGACY_XID_MESSAGE_FMT prints it:
# "%s %s XC%01u i%01u Link %02d (0x%08x x6)" with " Fatal  " or "Nonfatal" as the second word
# (hence the double spaces of real lines). XC is the cross-containment flag, i the injected flag.
_NVL5 = "{event} {severity} XC{xc} i0 Link {link} (0x{intr_info} 0x{error_status} 0x00000000 0x00000000 0x00000000 0x00000000)"
_FATAL = " Fatal  "

# XID 79: the driver's own follow-up records. The second is the multi-line message NVSentinel's
# fallen-off-the-bus pattern matches; it must not contain "Xid": that handler skips such messages.
_FALLEN_OFF_BUS = (
    "NVRM: GPU {pci_full}: GPU has fallen off the bus.",
    "NVRM: The NVIDIA GPU {pci_full}\n"
    "NVRM: (PCI ID: 10de:{device_id}) installed in this system has\n"
    "NVRM: fallen off the bus and is not responding to commands.",
)


def _xid(code, mnemonic, name, text, nvsentinel, aws, dcgm, cuda, sticky,
         defaults=None, extra_lines=(), verified=True):
    return code, MappingProxyType({
        "code": code,
        "mnemonic": mnemonic,
        "name": name,
        "text": text,
        "defaults": MappingProxyType(dict(defaults or {})),
        "extra_lines": tuple(extra_lines),
        "text_verified": verified,
        "nvsentinel_action": nvsentinel,
        "aws_severity": aws,
        "dcgm_health": dcgm,
        "cuda_error": cuda,
        "sticky": sticky,
    })


# Reading the columns: NVSentinel action, AWS severity, DCGM health, CUDA error, sticky.
# NVSentinel's action is NVIDIA's "immediate action" bucket through NVSentinel's mapper:
# RESTART_APP/IGNORE -> NONE, RESET_GPU/WORKFLOW_XID_48 -> COMPONENT_RESET, RESTART_BM and
# RESTART_VM as named, any other bucket or none -> CONTACT_SUPPORT.
# Comments mark where a value is not what a reader might expect, and why.
XID_CATALOG = MappingProxyType(dict([
    _xid(13, "ROBUST_CHANNEL_GR_EXCEPTION", "Graphics Engine Exception",
         PREAMBLE + "Graphics SM Warp Exception on (GPC {gpc}, TPC {tpc}, SM {sm}): Out Of Range Address",
         "NONE", "MONITOR", "PASS", _ILLEGAL_ADDRESS, True,  # DCGM does not classify 13
         {"gpc": 1, "tpc": 3, "sm": 0}),
    _xid(31, "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", "GPU memory page fault",
         PREAMBLE + "channel 0x{channel}, intr 00000000. MMU Fault: ENGINE GRAPHICS GPC{gpc} GPCCLIENT_T1_{client} "
         "faulted @ {address}. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
         "NONE", "MONITOR", "WARN", _ILLEGAL_ADDRESS, True,
         {"channel": "00000002", "gpc": 6, "client": 13, "address": "0x6f6f_320c2000"}),
    _xid(32, "ROBUST_CHANNEL_PBDMA_ERROR", "Invalid or corrupted push buffer stream",
         PREAMBLE + "channel 0x{channel} intr0 00040000",
         "NONE", "MONITOR", "WARN", _LAUNCH_FAILED, True,  # AWS has no rule for 32
         {"channel": "00000013"}),
    _xid(38, "ROBUST_CHANNEL_FECS_ERR_WATCHDOG_TIMEOUT", "Driver firmware error",
         PREAMBLE + "channel 0x{channel}",
         "NONE", "MONITOR", "WARN", _LAUNCH_FAILED, True,  # AWS has no rule for 38
         {"channel": "00000010"}, verified=False),
    _xid(39, "ROBUST_CHANNEL_CE0_ERROR", "Copy Engine Exception",
         PREAMBLE + "channel 0x{channel}",
         "NONE", "MONITOR", "WARN", _LAUNCH_FAILED, True,  # AWS has no rule for 39
         {"channel": "00000018"}, verified=False),
    _xid(42, "ROBUST_CHANNEL_VIC_ERROR", "Video processor exception (Unused on Ampere and newer)",
         PREAMBLE + "channel 0x{channel}",
         "CONTACT_SUPPORT", "MONITOR", "WARN", _OK, False,
         {"channel": "00000020"}, verified=False),
    _xid(43, "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", "GPU stopped processing",
         PREAMBLE + "channel 0x{channel}",
         "NONE", "MONITOR", "WARN", _LAUNCH_TIMEOUT, True,
         {"channel": "00000008"}),
    # 45 follows another fault (or a killed process); the process is already going away. Its
    # bucket is WORKFLOW_XID_45: NONE as in NVSentinel's 2026-08 behaviour; a mapper without a
    # case for that bucket would give CONTACT_SUPPORT.
    _xid(45, "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL",
         "Preemptive cleanup, due to previous errors - Most likely to see when running multiple cuda applications "
         "and hitting a DBE",
         PREAMBLE + "channel 0x{channel}",
         "NONE", "MONITOR", "PASS", _OK, False,  # DCGM does not classify 45
         {"channel": "00000015"}),
    _xid(48, "ROBUST_CHANNEL_GPU_ECC_DBE", "Double Bit ECC Error",
         PREAMBLE + "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at "
         "physAddr {address} partition {partition}, subpartition {subpartition}",
         "COMPONENT_RESET", "RESET", "FAIL", _ECC, True,
         {"address": "0x7fdf0de80", "partition": 5, "subpartition": 1}),
    _xid(54, "SILENT_RUNNING_PWR_REDUCED_CLOCKING", "Auxiliary power is not connected to the GPU board",
         PREAMBLE + "Auxiliary power is not connected to the GPU board",
         "CONTACT_SUPPORT", "ISOLATE", "WARN", _OK, False, verified=False),
    _xid(56, "DISPLAY_CHANNEL_EXCEPTION", "Display Engine error (Unused on Ampere and newer)",
         PREAMBLE + "Display Engine error",
         "CONTACT_SUPPORT", "MONITOR", "WARN", _OK, False, verified=False),
    _xid(57, "FB_LINK_TRAINING_FAILURE_ERROR",
         "Error programming video memory interface (Unused on Ampere and newer)",
         PREAMBLE + "Error programming video memory interface",
         "CONTACT_SUPPORT", "MONITOR", "WARN", _OK, False, verified=False),
    _xid(60, "ROBUST_CHANNEL_SEC2_ERROR", "Video processor exception",
         PREAMBLE + "channel 0x{channel}",
         "NONE", "MONITOR", "WARN", _LAUNCH_FAILED, True,  # AWS has no rule for 60
         {"channel": "00000030"}, verified=False),
    _xid(61, "PMU_BREAKPOINT", "Internal micro-controller breakpoint/warning (Unused on Ampere and newer)",
         "{words}",
         "CONTACT_SUPPORT", "MONITOR", "WARN", _OK, False,
         {"words": "00000a9f 00000a85 00000a72 00003786 00001d3e 000027d6 01013289 00000000"}, verified=False),
    # 62 prints a register dump, no process preamble (as in public logs).
    _xid(62, "PMU_HALT_ERROR", "Internal micro-controller halt (newer drivers)",
         "{words}",
         "COMPONENT_RESET", "MONITOR", "WARN", _UNKNOWN, True,  # AWS has no rule for 62
         {"words": "023f0f30 00000000 00000000 202c0ffe 202bc4b6 2029bdb6 202bccb8 20297b2a"}),
    # 63: DCGM lists it under both the memory (WARN) and thermal (FAIL) watches; with all
    # watches set the worst, FAIL, is reported.
    _xid(63, "INFOROM_DRAM_RETIREMENT_EVENT", "GPU memory remapping event",
         PREAMBLE + "Row Remapper: New row (0x{row}) marked for remapping, reset gpu to activate.",
         "NONE", "MONITOR", "FAIL", _OK, False,
         {"row": "0000000e9b9107e0"}),
    # 64 accompanies 48/94; the application error comes from those.
    _xid(64, "INFOROM_DRAM_RETIREMENT_FAILURE", "GPU memory remapping failure",
         PREAMBLE + "Row Remapper Error: (0x{row}) - All reserved rows for bank are remapped",
         "COMPONENT_RESET", "RESET", "WARN", _OK, False,
         {"row": "00000002eebc4100"}),
    _xid(69, "ROBUST_CHANNEL_GR_CLASS_ERROR", "Graphics Engine class error",
         PREAMBLE + "Class Error: ChId {chid}, Class 0000cbc0, Offset 00000184, Data ffffffff, ErrorCode 00000004",
         "NONE", "MONITOR", "PASS", _LAUNCH_FAILED, True,  # AWS: no rule; DCGM: not classified
         {"chid": "0008"}),
    # 74: AWS uses its NVLINK_DEFAULT (RESET unless the operator changed it).
    _xid(74, "NVLINK_ERROR", "NVLINK Error",
         PREAMBLE + "NVLink: fatal error detected on link {link}(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
         "CONTACT_SUPPORT", "RESET", "FAIL", _NVLINK, True,
         {"link": 14}),
    _xid(79, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "GPU has fallen off the bus",
         PREAMBLE + "GPU has fallen off the bus.",
         "RESTART_BM", "REBOOT", "FAIL", _NO_DEVICE, True,
         {"device_id": "2330"}, extra_lines=_FALLEN_OFF_BUS),
    _xid(81, "ROBUST_CHANNEL_VGA_SUBSYSTEM_ERROR", "VGA Subsystem Error (Unused on Ampere and newer)",
         PREAMBLE + "VGA Subsystem Error",
         "CONTACT_SUPPORT", "MONITOR", "PASS", _OK, False, verified=False),  # DCGM does not classify 81
    _xid(92, "EXCESSIVE_SBE_INTERRUPTS", "High single-bit ECC error rate",
         PREAMBLE + "Disabling ECC single-bit error interrupts in framebuffer at logical partition {partition}, "
         "due to high error rate",
         "NONE", "MONITOR", "PASS", _OK, False,  # DCGM does not classify 92
         {"partition": 3}),
    # 94: DCGM 4.x lists it among the "devastating" XIDs (FAIL).
    _xid(94, "ROBUST_CHANNEL_CONTAINED_ERROR", "Contained memory error",
         PREAMBLE + "Contained: SM (0x1). RST: No, D-RST: No",
         "NONE", "MONITOR", "FAIL", _ECC, True),
    _xid(95, "ROBUST_CHANNEL_UNCONTAINED_ERROR", "Uncontained memory error",
         PREAMBLE + "Uncontained: LTC TAG (0x2,0x0). RST: Yes, D-RST: No",
         "COMPONENT_RESET", "RESET", "FAIL", _UNKNOWN, True),
    _xid(109, "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "Context Switch Timeout Error",
         PREAMBLE + "Ch {channel}, errorString CTX SWITCH TIMEOUT, Info 0x{info}",
         "COMPONENT_RESET", "RESET", "PASS", _LAUNCH_FAILED, True,  # DCGM does not classify 109
         {"channel": "00000008", "info": "58005"}),
    _xid(110, "SEC_FAULT_ERROR", "Security Fault Error",
         PREAMBLE + "Security Fault Error detected",
         "COMPONENT_RESET", "RESET", "PASS", _UNKNOWN, True, verified=False),  # DCGM: not classified
    _xid(119, "GSP_RPC_TIMEOUT", "GSP RPC Timeout",
         PREAMBLE + "Timeout after 6s of waiting for RPC response from GPU{gpu} GSP! Expected function 76 "
         "(GSP_RM_CONTROL) sequence {sequence} (0x20802a02 0x8).",
         "COMPONENT_RESET", "RESET", "FAIL", _UNKNOWN, True,
         {"gpu": 1, "sequence": 4761}),
    _xid(120, "GSP_ERROR", "GSP Error",
         PREAMBLE + "GSP task exception: load access fault",
         "COMPONENT_RESET", "RESET", "FAIL", _UNKNOWN, True),
    _xid(121, "C2C_ERROR", "C2C Error",
         PREAMBLE + "C2C link {link} corrected error",
         "NONE", "MONITOR", "WARN", _OK, False,
         {"link": 0}, verified=False),
    _xid(125, "INFOROM_FS_ERROR", "InfoROM filesystem error (Unused on Ampere and newer)",
         PREAMBLE + "InfoROM filesystem error",
         "CONTACT_SUPPORT", "MONITOR", "PASS", _OK, False, verified=False),  # DCGM: not classified
    _xid(126, "ROBUST_CHANNEL_CE10_ERROR", "CE10: Unknown Error",
         PREAMBLE + "channel 0x{channel}",
         "NONE", "MONITOR", "PASS", _LAUNCH_FAILED, True,  # DCGM does not classify 126
         {"channel": "00000024"}, verified=False),
    _xid(136, "ALI_TRAINING_FAIL", "Link Training Failed",
         PREAMBLE + "NVLink: Link training failed for link {link}(0x1, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0)",
         "COMPONENT_RESET", "RESET", "PASS", _NVLINK, True,  # DCGM does not classify 136
         {"link": 3}),
    _xid(140, "UNRECOVERABLE_ECC_ERROR_ESCAPE", "ECC Unrecovered Error",
         PREAMBLE + "An uncorrectable ECC error detected (possible firmware handling failure) "
         "DRAM:{dram}, LTC:{ltc}, MMU:{mmu}, PCIE:{pcie}",
         "COMPONENT_RESET", "RESET", "FAIL", _ECC, True,
         {"dram": 1, "ltc": 0, "mmu": 0, "pcie": 0}),
    _xid(143, "GPU_INIT_ERROR", "GPU Initialization Error",
         PREAMBLE + "Error status 0x{status} while polling for FSP boot complete, 0x0, 0x0, 0x0, 0x0, 0x0",
         "COMPONENT_RESET", "RESET", "PASS", _NO_DEVICE, True,  # DCGM does not classify 143
         {"status": "65"}),
    # 144-150: NVSentinel decodes a line in this form by its IntrInfo and error status and the
    # driver branch (NVL5_DECODE below); the entry's action is the Xids sheet's bucket for the
    # code (WORKFLOW_NVLINK5_ERR), which applies only to a line NVSentinel cannot decode. The
    # default lines decode (before R575 / from R575 on, nvsentinel_action): 144 NONE /
    # COMPONENT_RESET, 145 COMPONENT_RESET / NONE, 146 NONE / COMPONENT_RESET, 147 and 148 NONE,
    # 149 COMPONENT_RESET / NONE, 150 COMPONENT_RESET. AWS uses NVLINK5_DEFAULT.
    _xid(144, "NVLINK_SAW_ERROR", "NVLINK: SAW Error", _NVL5,
         "CONTACT_SUPPORT", "MONITOR", "PASS", _NVLINK, True,
         {"event": "SAW_MVB", "severity": _FATAL, "xc": 0, "link": "00",
          "intr_info": "00000001", "error_status": "00000002"}),
    _xid(145, "NVLINK_RLW_ERROR", "NVLINK: RLW Error", _NVL5,
         "CONTACT_SUPPORT", "MONITOR", "PASS", _NVLINK, True,
         {"event": "RLW_REMAP", "severity": _FATAL, "xc": 1, "link": "10",
          "intr_info": "00000082", "error_status": "00000040"}),
    _xid(146, "NVLINK_TLW_ERROR", "NVLINK: TLW Error", _NVL5,
         "CONTACT_SUPPORT", "MONITOR", "PASS", _NVLINK, True,
         {"event": "TLW_CTRL", "severity": _FATAL, "xc": 0, "link": "02",
          "intr_info": "00000009", "error_status": "00000004"}),
    _xid(147, "NVLINK_TREX_ERROR", "NVLINK: TREX Error", _NVL5,
         "CONTACT_SUPPORT", "MONITOR", "PASS", _NVLINK, True,
         {"event": "TREX", "severity": _FATAL, "xc": 0, "link": "04",
          "intr_info": "0000000e", "error_status": "00000002"}),
    _xid(148, "NVLINK_NVLPW_CTRL_ERROR", "NVLINK: NVLPW_CTRL Error", _NVL5,
         "CONTACT_SUPPORT", "MONITOR", "PASS", _NVLINK, True,
         {"event": "NVLPW_CTRL", "severity": _FATAL, "xc": 0, "link": "05",
          "intr_info": "0000000f", "error_status": "80000000"}),
    _xid(149, "NVLINK_NETIR_ERROR", "NVLINK: NETIR Error", _NVL5,
         "CONTACT_SUPPORT", "MONITOR", "PASS", _NVLINK, True,
         {"event": "NETIR_LINK_EVT", "severity": _FATAL, "xc": 0, "link": "01",
          "intr_info": "021425c6", "error_status": "00000000"}),
    _xid(150, "NVLINK_MSE_ERROR", "NVLINK: MSE Error", _NVL5,
         "CONTACT_SUPPORT", "MONITOR", "PASS", _NVLINK, True,
         {"event": "MSE_WATCHDOG", "severity": _FATAL, "xc": 0, "link": "00",
          "intr_info": "00000000", "error_status": "00000000"}),
    _xid(151, "ROBUST_CHANNEL_KEY_ROTATION_ERROR", "Key rotation Error",
         PREAMBLE + "Key rotation error on channel 0x{channel}",
         "RESTART_VM", "REBOOT", "PASS", _KEY_ROTATION, True,  # DCGM does not classify 151
         {"channel": "00000010"}, verified=False),
    # 154 summarises the recovery the driver wants; the detectors read the action from the text.
    # Values below are for the default action, GPU Reset Required.
    _xid(154, "GPU_RECOVERY_ACTION_CHANGED", "GPU Recovery Action Changed",
         "GPU recovery action changed from 0x0 (None) to {action_hex} ({action})",
         "COMPONENT_RESET", "RESET", "PASS", _OK, False),  # DCGM does not classify 154
    # 155 uses the driver's NVLINK_SW_LINK_DOWN_LEGACY_XID_MESSAGE_FMT.
    _xid(155, "NVLINK_SW_DEFINED_ERROR", "NVLINK: SW Defined Error",
         "NVLINK_SW_DEFINED_ERROR {severity} XC0 i0 Link {link} : Link Down While Active.",
         "COMPONENT_RESET", "RESET", "PASS", _NVLINK, True,  # DCGM does not classify 155
         {"severity": _FATAL, "link": "05"}),
    _xid(156, "RESOURCE_RETIREMENT_EVENT", "Resource Retirement Event",
         PREAMBLE + "Retiring TPC {tpc} from GPC {gpc} with a spare from the same GPC.",
         "COMPONENT_RESET", "RESET", "PASS", _OK, False,  # DCGM does not classify 156
         {"tpc": 4, "gpc": 2}),
    _xid(157, "RESOURCE_RETIREMENT_FAILURE", "Resource Retirement Failure",
         PREAMBLE + "Unable to retire TPC {tpc} from GPC {gpc} as there are no spare TPCs available.",
         "NONE", "MONITOR", "PASS", _OK, False,  # DCGM does not classify 157
         {"tpc": 7, "gpc": 3}),
    _xid(158, "GPU_FATAL_TIMEOUT", "GPU Fatal Timeout",
         PREAMBLE + "GPU fatal timeout detected",
         "COMPONENT_RESET", "RESET", "PASS", _UNKNOWN, True, verified=False),  # DCGM: not classified
    # 162-168: the catalog row has no resolution bucket, so NVSentinel falls back to
    # CONTACT_SUPPORT; AWS defaults (STRICT_PSHC off) are MONITOR, 168 REBOOT.
    # 159: NVIDIA's bucket CHECK_UVM, which NVSentinel's mapper does not name (CONTACT_SUPPORT);
    # AWS: RESET while UVM is in use, else MONITOR (the node rule above).
    _xid(159, "ROBUST_CHANNEL_CHI_NON_DATA_ERROR", "CHI Non-Data Error",
         PREAMBLE + "CHI Non-Data Error on C2C link {link}",
         "CONTACT_SUPPORT", "MONITOR", "PASS", _OK, False,  # DCGM does not classify 159
         {"link": 0}, verified=False),
    _xid(162, "PSHC_REENGAGED", "Power Smoothing HW Circuitry capability reengaged",
         PREAMBLE + "Power Smoothing HW Circuitry capability reengaged",
         "CONTACT_SUPPORT", "MONITOR", "PASS", _OK, False, verified=False),
    _xid(163, "PSHC_DISENGAGED", "Power Smoothing HW Circuitry capability disengaged",
         PREAMBLE + "Power Smoothing HW Circuitry capability disengaged",
         "CONTACT_SUPPORT", "MONITOR", "PASS", _OK, False, verified=False),
    _xid(164, "PSHC_LOW_LIFETIME", "Power Smoothing HW Circuitry low lifetime reached",
         PREAMBLE + "Power Smoothing HW Circuitry low lifetime reached",
         "CONTACT_SUPPORT", "MONITOR", "PASS", _OK, False, verified=False),
    _xid(165, "PSHC_ZERO_LIFETIME", "Power Smoothing HW Circuitry lifetime exhausted",
         PREAMBLE + "Power Smoothing HW Circuitry lifetime exhausted",
         "CONTACT_SUPPORT", "MONITOR", "PASS", _OK, False, verified=False),
    _xid(168, "REDUCED_GPU_MEMORY_CAPACITY", "Errors found in WPR (write protected region)",
         PREAMBLE + "Errors found in WPR (write protected region), GPU memory capacity reduced",
         "CONTACT_SUPPORT", "REBOOT", "PASS", _OK, False, verified=False),
]))


# --------------------------------------------------------------------------------------------
# SXid (NVSwitch) table
# --------------------------------------------------------------------------------------------
#
# Line: "nvidia-nvswitchN: SXid (PCI:dddd:bb:dd.f): CODE, Fatal|Non-fatal, Link NN TEXT", then the
# driver's two follow-up records (severity/engine instance, data words), as in NVIDIA's Fabric
# Manager guide. Codes and texts are from public logs.

def _sxid(code, fatal, text):
    return code, MappingProxyType({"code": code, "fatal": fatal, "text": text})


SXID_CATALOG = MappingProxyType(dict([
    _sxid(11004, False, "ingress invalid ACL (First)"),
    _sxid(12028, False, "egress non-posted PRIV error (First)"),
    _sxid(20009, False, "RX Short Error Rate"),
    _sxid(20034, True, "LTSSM Fault Up"),
    _sxid(22013, False, "Minion Link DLREQ interrupt"),
    _sxid(24007, True, "sourcetrack timeout error (First)"),
    _sxid(28002, False, "Therm Warn Deactivated"),
    _sxid(28006, False, "MC TS crumbstore MCTO (First)"),
]))
_SXID_DATA = "{{0x00140004, 0x00100000, 0x00140004, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000}}"


# --------------------------------------------------------------------------------------------
# Look-ups
# --------------------------------------------------------------------------------------------

def codes():
    """All XID codes in the catalog, ascending."""
    return tuple(sorted(XID_CATALOG))


def sxid_codes():
    """All SXid codes in the catalog, ascending."""
    return tuple(sorted(SXID_CATALOG))


_CODE_RE = re.compile(r"[0-9]{1,6}")


def _as_code(code):
    """An int code from an int or a decimal string; None for anything else (bool included)."""
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and _CODE_RE.fullmatch(code):
        return int(code)
    return None


def _lookup(table, code, kind):
    number = _as_code(code)
    if number is None or number not in table:
        valid = ", ".join(str(c) for c in sorted(table))
        raise UnknownXidError("unknown %s code %r; valid codes: %s" % (kind, code, valid))
    return table[number]


def get(code):
    """The read-only catalog entry of an XID code (int or decimal string).

    Raises UnknownXidError (a ValueError) naming the valid codes.
    """
    return _lookup(XID_CATALOG, code, "XID")


def get_sxid(code):
    """The read-only catalog entry of an SXid code; UnknownXidError if it is not catalogued."""
    return _lookup(SXID_CATALOG, code, "SXid")


# --------------------------------------------------------------------------------------------
# PCI addresses
# --------------------------------------------------------------------------------------------

# Full address only: domain of 4 or 8 hex digits (extended domains, e.g. Azure), bus, device,
# function. Anything else -- including hostile text -- is refused before it can reach a log line.
_PCI_RE = re.compile(r"([0-9a-fA-F]{4}|[0-9a-fA-F]{8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


def parse_pci(pci):
    """Split a full PCI address ``dddd:bb:dd.f`` into (domain, bus, device, function) ints."""
    if not isinstance(pci, str) or len(pci) > 16:
        raise ValueError("PCI address must be a string like 0000:3b:00.0, got %r" % (pci,))
    match = _PCI_RE.fullmatch(pci)
    if match is None:
        raise ValueError("malformed PCI address %r: expected dddd:bb:dd.f (hex domain of 4 or 8 digits, "
                         "hex bus and device, function 0-7)" % (pci,))
    domain, bus, device, function = (int(part, 16) for part in match.groups())
    if device > 0x1F:
        raise ValueError("malformed PCI address %r: device %#x is above 0x1f" % (pci, device))
    return domain, bus, device, function


def format_pci_bdf(pci):
    """Canonical full address as the driver prints it: lower case, ``%04x:%02x:%02x.%x``."""
    domain, bus, device, function = parse_pci(pci)
    return "%04x:%02x:%02x.%x" % (domain, bus, device, function)


def xid_pci(pci):
    """The ``dddd:bb:dd`` form XID lines use (no function), from a full PCI address."""
    return format_pci_bdf(pci).rsplit(".", 1)[0]


# --------------------------------------------------------------------------------------------
# Caller-supplied text
# --------------------------------------------------------------------------------------------

# What a message override may keep: no quotes, backslashes, %, $, `, ;, |, &, <, > or controls,
# so the text is inert for printf, shells and log parsers alike.
_MESSAGE_CHARS = frozenset(string.ascii_letters + string.digits + " _-.,:()[]{}/=+#@!?*")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + " _-.:[]/")
_PARAM_RE = re.compile(r"[0-9A-Za-z_.:/+-]{1,64}")
_UUID_RE = re.compile(r"GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Words that would make a detector read a second, forged XID out of the override.
_FORBIDDEN_WORDS = re.compile(r"xid|nvrm|nvswitch", re.IGNORECASE)


def _keep(text, allowed, limit):
    """Whitespace and controls become single spaces, other disallowed characters are dropped."""
    kept = []
    for char in text:
        if char in allowed:
            kept.append(char)
        elif char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F:
            kept.append(" ")
    return " ".join("".join(kept).split())[:limit].strip()


def sanitize_message(message):
    """A message override made safe for a kernel log line.

    Keeps printable ASCII from a conservative set, turns newlines and other controls into spaces,
    drops everything else (``%``, quotes, shell metacharacters, non-ASCII) and caps the length at
    MAX_MESSAGE_LEN. Raises ValueError when nothing usable is left, or when the text names
    Xid/NVRM/nvswitch (a detector could then parse a forged second code out of the line).
    """
    if not isinstance(message, str):
        raise ValueError("message must be a string, got %s" % type(message).__name__)
    clean = _keep(message, _MESSAGE_CHARS, MAX_MESSAGE_LEN)
    if not clean:
        raise ValueError("message is empty after removing unsafe characters")
    if _FORBIDDEN_WORDS.search(clean):
        raise ValueError("message must not contain 'Xid', 'NVRM' or 'nvswitch': detectors would parse it")
    return clean


def _process_name(name):
    if name is None:
        return _UNKNOWN_NAME
    if not isinstance(name, str):
        raise ValueError("process_name must be a string, got %s" % type(name).__name__)
    clean = _keep(name, _NAME_CHARS, MAX_PROCESS_NAME_LEN)
    if not clean:
        raise ValueError("process_name %r is empty after removing unsafe characters" % (name,))
    return clean


def _pid(pid):
    if pid is None:
        return _UNKNOWN_PID
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid <= PID_MAX:
        raise ValueError("pid must be an integer from 0 to %d, got %r" % (PID_MAX, pid))
    return str(pid)


def _uuid(uuid):
    if not isinstance(uuid, str) or _UUID_RE.fullmatch(uuid) is None:
        raise ValueError("uuid must look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got %r" % (uuid,))
    return "GPU-" + uuid[4:].lower()


def _param_value(key, value):
    if isinstance(value, bool):
        raise ValueError("parameter %r must be an integer or a short token, not a boolean" % key)
    if isinstance(value, int):
        if not 0 <= value < 2 ** 64:
            raise ValueError("parameter %r is out of range: %r" % (key, value))
        return str(value)
    if isinstance(value, str) and _PARAM_RE.fullmatch(value):
        return value
    raise ValueError("parameter %r must be a non-negative integer or 1-64 characters of "
                     "[0-9A-Za-z_.:/+-], got %r" % (key, value))


def recovery_action_hex(action):
    """``0x<n>`` code of an XID 154 recovery action name."""
    return "%#x" % RECOVERY_ACTIONS[_recovery_action(action)]


def _recovery_action(action):
    """Canonical recovery action name (matched case-insensitively); ValueError otherwise."""
    if isinstance(action, str):
        for name in RECOVERY_ACTIONS:
            if name.lower() == action.strip().lower():
                return name
    raise ValueError("unknown recovery action %r; valid: %s" % (action, ", ".join(RECOVERY_ACTIONS)))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def placeholders(template):
    """Names of the str.format fields of a template."""
    return {parsed[1] for parsed in string.Formatter().parse(template) if parsed[1]}


def _fields(entry, params):
    """Template values: entry defaults overridden by validated caller params."""
    allowed = set(entry["defaults"])
    values = {key: str(value) for key, value in entry["defaults"].items()}
    for key, value in (params or {}).items():
        if key not in allowed:
            raise ValueError("XID %d has no parameter %r; valid: %s"
                             % (entry["code"], key, ", ".join(sorted(allowed)) or "none"))
        values[key] = _param_value(key, value)
    return values


def _detail(entry, message, values):
    """The text after "N, ": the template, or a sanitised override behind the same preamble."""
    if message is None:
        return entry["text"].format(**values)
    preamble = PREAMBLE.format(**values) if entry["text"].startswith(PREAMBLE) else ""
    return preamble + sanitize_message(message)


def render_xid_lines(code, pci, *, message=None, pid=None, process_name=None,
                     recovery_action=None, uuid=None, params=None):
    """The kernel log records the driver writes for an XID on the GPU at ``pci``.

    code: catalog XID. pci: full address ``dddd:bb:dd.f``. message: replaces the detail text
    (sanitised; the pid/name preamble stays). pid/process_name: the process blamed (default
    ``'<unknown>'``/``<unknown>``). recovery_action: XID 154 only, a RECOVERY_ACTIONS name
    (default GPU Reset Required). uuid: when given, the driver's ``NVRM: GPU at PCI:...: GPU-...``
    line comes first, as before a GPU's first Xid; NVSentinel maps PCI to GPU UUID with it.
    params: values for the entry's placeholders (see the entry's ``defaults``).

    Returns records without priority prefix, each starting ``NVRM: ``; XID 79's fallen-off-the-bus
    record spans three lines and must be written as one record.
    """
    entry = get(code)
    values = _fields(entry, params)
    values.update(pid=_pid(pid), name=_process_name(process_name),
                  pci=xid_pci(pci), pci_full=format_pci_bdf(pci))
    if entry["code"] == 154:
        action = _recovery_action(DEFAULT_RECOVERY_ACTION if recovery_action is None else recovery_action)
        values.update(action=action, action_hex=recovery_action_hex(action))
    elif recovery_action is not None:
        raise ValueError("recovery_action applies to XID 154 only, not XID %d" % entry["code"])
    lines = []
    if uuid is not None:
        lines.append("NVRM: GPU at PCI:%s: %s" % (values["pci"], _uuid(uuid)))
    lines.append("NVRM: Xid (PCI:%s): %d, %s" % (values["pci"], entry["code"], _detail(entry, message, values)))
    lines.extend(template.format(**values) for template in entry["extra_lines"])
    return lines


def render_sxid_lines(code, pci, *, switch=0, link=0, message=None):
    """The records the NVSwitch driver writes for an SXid on switch ``switch``, port ``link``.

    pci is the switch's full address ``dddd:bb:dd.f`` (SXid lines keep the function). message
    replaces the error text (sanitised). Returns the SXid line and its two follow-up records.
    """
    entry = get_sxid(code)
    for label, value, top in (("switch", switch, 63), ("link", link, 255)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ValueError("%s must be an integer from 0 to %d, got %r" % (label, top, value))
    text = entry["text"] if message is None else sanitize_message(message)
    prefix = "nvidia-nvswitch%d: SXid (PCI:%s): %d, " % (switch, format_pci_bdf(pci), entry["code"])
    # Severity 0 accompanies non-fatal SXids in public logs; 1 is used for fatal ones.
    severity = 1 if entry["fatal"] else 0
    return [
        prefix + "%s, Link %02d %s" % ("Fatal" if entry["fatal"] else "Non-fatal", link, text),
        prefix + "Severity %d Engine instance %02d Sub-engine instance 00" % (severity, link),
        prefix + "Data " + _SXID_DATA.format(),
    ]


def kmsg_text(record):
    """What to write to /dev/kmsg so that journald's MESSAGE equals ``record``.

    journald strips a leading ``ident:`` from user-space kmsg records into SYSLOG_IDENTIFIER, so
    the record's own identifier (``NVRM``, ``nvidia-nvswitchN``) is written twice.
    """
    ident, sep, rest = record.partition(": ")
    if not sep or not rest or not ident or any(char.isspace() for char in ident):
        raise ValueError("record must start with an identifier such as 'NVRM: ', got %r" % (record[:40],))
    return ident + ": " + record


# --------------------------------------------------------------------------------------------
# What the detectors conclude
# --------------------------------------------------------------------------------------------

def nvsentinel_action(code, text="", driver_version=None):
    """NVSentinel's RecommendedAction for an XID line, before its GPU-metadata rule.

    text: the XID line (``NVRM: Xid (PCI:...): N, ...``). A 144-150 line in its NVLink5 form is
    decoded (nvl5_decode) for driver_version, the version NVSentinel reads from the node's GPU
    metadata (None: as before R575). XID 154 takes the text inside the last parentheses. Other
    catalog codes get their entry's action, other codes CONTACT_SUPPORT, NVSentinel's rule for
    codes its catalog does not resolve (NVIDIA's catalog knows more codes than this one, so that
    answer is approximate for those). nvsentinel_events applies the metadata rule.
    """
    number = _as_code(code)
    if number == 154:
        opening, closing = text.rfind("("), text.rfind(")")
        if opening == -1 or closing == -1 or opening > closing:
            return NVSENTINEL_UNKNOWN_ACTION
        return _NVSENTINEL_154.get(text[opening + 1:closing], NVSENTINEL_UNKNOWN_ACTION)
    decoded = nvl5_decode(text, driver_version)
    if decoded is not None and decoded["code"] == number:
        return decoded["action"]
    if number in XID_CATALOG:
        return XID_CATALOG[number]["nvsentinel_action"]
    return NVSENTINEL_UNKNOWN_ACTION


def aws_node_facts(code):
    """The node facts (AWS_NODE_FACTS) that the AWS suite's severity of this code depends on."""
    rule = _AWS_NODE_RULES.get(_as_code(code))
    return tuple(sorted(rule[0])) if rule else ()


def aws_severity(code, text="", facts=None):
    """The AWS health-check suite's severity for an XID line's code and text (default tunables).

    Catalog codes get their entry's severity, other codes MONITOR. XID 154 starts at MONITOR and
    escalates on its text: Node Reboot Required -> REBOOT; GPU Reset Required, Drain and Reset,
    Drain P2P -> RESET (first match wins, case-insensitive, anywhere in the line). ``facts``, a
    mapping of AWS_NODE_FACTS to booleans (missing ones false), applies the suite's node rules: on
    an A100, 64 -> REBOOT, and 95 -> REBOOT unless MIG is enabled; 159 -> RESET while UVM is in use.
    """
    number = _as_code(code)
    rule = _AWS_NODE_RULES.get(number)
    if rule and all(bool((facts or {}).get(fact)) == wanted for fact, wanted in rule[0].items()):
        return rule[1]
    if number == 154:
        lowered = text.lower()
        for phrase, severity in _AWS_154:
            if phrase in lowered:
                return severity
        return AWS_UNKNOWN_SEVERITY
    if number in XID_CATALOG:
        return XID_CATALOG[number]["aws_severity"]
    return AWS_UNKNOWN_SEVERITY


def max_severity(*severities):
    """The worst of some AWS severities (PASS when none are given)."""
    worst = "PASS"
    for severity in severities:
        if SEVERITY_ORDER.index(severity) > SEVERITY_ORDER.index(worst):
            worst = severity
    return worst


# --------------------------------------------------------------------------------------------
# Self-check (run by the unit tests)
# --------------------------------------------------------------------------------------------

def validate_catalog():
    """Raise ValueError on the first inconsistent entry; return the number of entries checked."""
    for code, entry in XID_CATALOG.items():
        problems = _entry_problems(code, entry)
        if problems:
            raise ValueError("XID %d: %s" % (code, "; ".join(problems)))
    for code, entry in SXID_CATALOG.items():
        if entry["code"] != code or not isinstance(entry["fatal"], bool) or not entry["text"]:
            raise ValueError("SXid %d: malformed entry" % code)
    return len(XID_CATALOG) + len(SXID_CATALOG)


def _entry_problems(code, entry):
    problems = []
    if entry["code"] != code:
        problems.append("code field %r" % entry["code"])
    if entry["nvsentinel_action"] not in NVSENTINEL_ACTIONS:
        problems.append("nvsentinel_action %r" % entry["nvsentinel_action"])
    if entry["aws_severity"] not in SEVERITY_ORDER:
        problems.append("aws_severity %r" % entry["aws_severity"])
    if entry["dcgm_health"] not in DCGM_HEALTH_VALUES:
        problems.append("dcgm_health %r" % entry["dcgm_health"])
    number, name = entry["cuda_error"]
    if CUDA_ERRORS.get(name) != number:
        problems.append("cuda_error %r" % (entry["cuda_error"],))
    if entry["sticky"] != (number != 0):
        problems.append("sticky must be true exactly when a CUDA error is returned")
    fields = set()
    for template in (entry["text"],) + entry["extra_lines"]:
        fields |= placeholders(template)
    missing = fields - _COMPUTED_FIELDS - set(entry["defaults"])
    if missing:
        problems.append("placeholders without defaults: %s" % ", ".join(sorted(missing)))
    return problems


# --------------------------------------------------------------------------------------------
# What NVSentinel decides
# --------------------------------------------------------------------------------------------
#
# NVIDIA NVSentinel's syslog-health-monitor and platform-connectors, read in the source snapshot
# of shared/third_party/nvsentinel (commit 42672ae8, after v1.19.0); docs/nvsentinel.md has the
# details with file references. In short:
#
# * Each check of the chart's enabledChecks (NVSENTINEL_CHECKS) reads the journal entries with
#   _TRANSPORT=kernel and hands each entry's MESSAGE to its handler (syslogmonitor.go). journald
#   moves a user-space kmsg record's leading "ident:" into SYSLOG_IDENTIFIER (journal_message), so
#   only records written with their identifier twice (kmsg_text) keep "NVRM: Xid ..." in MESSAGE.
# * SysLogsXIDError (pkg/xid): "NVRM: GPU at PCI:<pci>: GPU-..." lines teach it a PCI -> UUID
#   map; an XID line becomes one event: ErrorCode the code (144-150 in NVLink5 form:
#   "<code>.<subcode>", decoded by NVL5_DECODE), PCI as in the line without ".f", GPU_UUID from
#   gpu_metadata.json, else from the map. COMPONENT_RESET becomes RESTART_VM unless the UUID came
#   from the metadata. Fatal = the action is not NONE. The chart's cancellation rules add a
#   healthy event per cancelled code (NVSENTINEL_CANCELLATIONS).
# * SysLogsSXIDError (pkg/sxid): needs the metadata's NVLink table to name the GPU behind the
#   switch port. Fatal SXids CONTACT_SUPPORT, others NONE. Without the port in the table the
#   handler fails, and the monitor then reads that record again and again without advancing
#   (processOneEntryAndAdvance returns before journal.Next): its poll never ends, no later record
#   of any check is processed, and after a restart it resumes at the same record
#   (nvsentinel_stalls). Never inject an SXid on a node whose metadata does not map the port.
# * SysLogsGPUFallenOff (pkg/gpufallen): XID 79's "The NVIDIA GPU ... fallen off the bus" record
#   is a second event, RESTART_BM, ErrorCode GPU_FALLEN_OFF_BUS (its PCI, "dddd:bb:dd.f", never
#   equals an XID line's, so its duplicate filter does not apply).
# * platform-connectors (pkg/connectors/kubernetes): fatal events set the node condition named
#   after the check (NVSENTINEL_SIGNALS); non-fatal ones become Kubernetes Events.

NVSENTINEL_AGENT = "syslog-health-monitor"
NVSENTINEL_XID_CHECK = "SysLogsXIDError"
NVSENTINEL_SXID_CHECK = "SysLogsSXIDError"
NVSENTINEL_FALLEN_CHECK = "SysLogsGPUFallenOff"
# The chart's syslog-health-monitor enabledChecks, in the order the monitor runs them.
NVSENTINEL_CHECKS = (NVSENTINEL_XID_CHECK, NVSENTINEL_SXID_CHECK, NVSENTINEL_FALLEN_CHECK)
NVSENTINEL_FALLEN_ERROR_CODE = "GPU_FALLEN_OFF_BUS"
# The chart's syslog-health-monitor cancellations: an XID 162 event cancels code 163.
NVSENTINEL_CANCELLATIONS = MappingProxyType({"162": ("163",)})
# Where platform-connectors puts an event: node condition or Kubernetes Event.
NVSENTINEL_SIGNALS = ("condition", "event")
# NVSentinel decodes NVLink5 IntrInfo with the pattern of driver branches from R575 on, when it
# knows the driver version (from the GPU metadata), else with the older one.
NVSENTINEL_R575 = 575

# NVIDIA's resolution buckets that are not RecommendedAction names, as NVSentinel maps them
# (pkg/common/common.go MapActionStringToProto); any other bucket is CONTACT_SUPPORT.
NVSENTINEL_BUCKETS = MappingProxyType({
    "RESTART_APP": "NONE", "IGNORE": "NONE", "XID_154_EVAL": "NONE", "WORKFLOW_XID_45": "NONE",
    "WORKFLOW_XID_48": "COMPONENT_RESET", "RESET_GPU": "COMPONENT_RESET",
    "RECOVER_FEATURE_RESET_GPU": "COMPONENT_RESET",
    "WORKFLOW_XID_168": "RESTART_VM", "RESET_FABRIC": "RESTART_VM",
})

# The "Xid 144-150 Decode" sheet of NVSentinel's embedded catalog (pkg/common/Xid-Catalog.xlsx),
# rows in sheet order, rows of one subcode with the same bucket merged: (XID, subcode, IntrInfo
# pattern before R575, pattern from R575 on, error statuses, resolution bucket). A pattern is the
# IntrInfo's 32 bits, most significant first, "-" for any bit. A row matches when the line's
# IntrInfo fits the branch's pattern and its error status is one of the row's, compared as text
# ("0x%08x" in the line; case matters); a row without statuses takes any. First match wins; no
# match is NONE (RecommendedAction's zero value), not CONTACT_SUPPORT. NVSentinel reads columns A
# to F only (the sheet's alternative patterns in G-I are ignored).
_V1_SAW, _V2_SAW = "------000000----------0000100001", "------000000-------------0000001"
_V1_REMAP, _V2_REMAP = "------000000----------0010000010", "------000000-------------0000100"
_V1_RSPCOL, _V2_RSPCOL = "------000000----------0010100010", "------000000-------------0000101"
_V1_SRC, _V2_SRC = "------000000----------0011100010", "------000000-------------0000111"
_V1_TAG, _V2_TAG = "------000000----------0100000010", "------000000-------------0001000"
_V1_TLWCTRL, _V2_TLWCTRL = "------000000----------0100100011", "------000000-------------0001001"
_V1_TLWRX, _V1_TLWTX = "------000000----------0101000011", "------000000----------0101100011"
_V1_BER, _V2_BER = "------000000----------1000100110", "------000000-------------0010011"
_V1_MFDE, _V2_MFDE = "------000000----------1001000110", "------000000-------------0010100"
_V1_MSE, _V2_MSE = "------000000----------0000000000", "------000000-------------0000000"
_DEFECT = "0x80000000"  # the software-reported status every subcode lists


def _s(*low_bits):
    return tuple("0x%08x" % value for value in low_bits)


def _link_event(event, bucket):
    """A NETIR_LINK_EVT row: the link event type sits in IntrInfo bits 25-20; no error status."""
    return (149, "NETIR_LINK_EVT/NETIR_LINK_DOWN", "------%s----------0111000110" % event,
            "------%s-------------0010001" % event, (), bucket)


NVL5_DECODE = (
    (144, "SAW_MVB", _V1_SAW, _V2_SAW, _s(0x1, 0x4, 0x8, 0x20), "IGNORE"),
    (144, "SAW_MVB", _V1_SAW, _V2_SAW, _s(0x2, 0x10), "RESET_GPU"),
    (145, "RLW_CTRL", "------000000----------0001100010", "------000000-------------0000011", (_DEFECT,), "IGNORE"),
    (145, "RLW_REMAP", _V1_REMAP, _V2_REMAP, _s(0x1, 0x2, 0x4, 0x8, 0x10, 0x20), "XID_154_EVAL"),
    (145, "RLW_REMAP", _V1_REMAP, _V2_REMAP, _s(0x40, 0x80), "RESET_GPU"),
    (145, "RLW_REMAP", _V1_REMAP, _V2_REMAP, _s(0x100, 0x200) + (_DEFECT,), "IGNORE"),
    (145, "RLW_RSPCOL", _V1_RSPCOL, _V2_RSPCOL, _s(0x1) + (_DEFECT,), "IGNORE"),
    (145, "RLW_RSPCOL", _V1_RSPCOL, _V2_RSPCOL, _s(0x2), "RESET_GPU"),
    (145, "RLW_RXPIPE", "------000000---------00011000010", "------000000------------00000110", _s(0x1, 0x2, 0x4),
     "IGNORE"),
    (145, "RLW_RXPIPE", "------000000----------0011000010", "------000000-------------0000110", _s(0x8) + (_DEFECT,),
     "IGNORE"),
    (145, "RLW_SRC_TRACK", _V1_SRC, _V2_SRC, _s(0x1, 0x10, 0x20), "RESET_GPU"),
    (145, "RLW_SRC_TRACK", _V1_SRC, _V2_SRC, _s(0x2) + (_DEFECT,), "IGNORE"),
    (145, "RLW_SRC_TRACK", _V1_SRC, _V2_SRC, _s(0x4, 0x8), "XID_154_EVAL"),
    (145, "RLW_TAGSTATE", _V1_TAG, _V2_TAG, _s(0x1, 0x10000) + (_DEFECT,), "IGNORE"),
    (145, "RLW_TAGSTATE", _V1_TAG, _V2_TAG, _s(0x2, 0x20000, 0x100000), "RESET_GPU"),
    (146, "TLW_CTRL", _V1_TLWCTRL, _V2_TLWCTRL, _s(0x1, 0x2) + (_DEFECT,), "IGNORE"),
    (146, "TLW_CTRL", _V1_TLWCTRL, _V2_TLWCTRL, _s(0x4), "RESET_GPU"),
    (146, "TLW_RX/TLW_RX_PIPE0", _V1_TLWRX, "------000000-------------0001010", _s(0x1, 0x2) + (_DEFECT,), "IGNORE"),
    (146, "TLW_RX/TLW_RX_PIPE0", _V1_TLWRX, "------000000-------------0001010", _s(0x4), "RESET_GPU"),
    (146, "TLW_RX/TLW_RX_PIPE1", _V1_TLWRX, "------000000-------------0001011", _s(0x1, 0x2) + (_DEFECT,), "IGNORE"),
    (146, "TLW_RX/TLW_RX_PIPE1", _V1_TLWRX, "------000000-------------0001011", _s(0x4), "RESET_GPU"),
    (146, "TLW_TX/TLW_TX_PIPE0", _V1_TLWTX, "------000000-------------0001100", _s(0x1, 0x2) + (_DEFECT,), "IGNORE"),
    (146, "TLW_TX/TLW_TX_PIPE0", _V1_TLWTX, "------000000-------------0001100", _s(0x4), "RESET_GPU"),
    (146, "TLW_TX/TLW_TX_PIPE1", _V1_TLWTX, "------000000-------------0001101", _s(0x1, 0x2) + (_DEFECT,), "IGNORE"),
    (146, "TLW_TX/TLW_TX_PIPE1", _V1_TLWTX, "------000000-------------0001101", _s(0x4), "RESET_GPU"),
    (147, "TREX", "------000000----------0110000100", "------000000-------------0001110", _s(0x1) + (_DEFECT,), "IGNORE"),
    (148, "NVLPW_CTRL/NVLPW", "------000000----------0000000101", "------000000-------------0001111", (_DEFECT,),
     "IGNORE"),
    (149, "NETIR/NETIR_INT", "------000000----------0000000110", "------000000-------------0011000", (), "RESET_GPU"),
) + tuple(_link_event(event, bucket) for event, bucket in (
    ("000000", "RESET_GPU"), ("000001", "RESET_GPU"), ("000010", "RESET_GPU"), ("000100", "RESET_GPU"),
    ("001010", "RESET_GPU"), ("001111", "RESET_GPU"), ("010000", "RESET_GPU"), ("010001", "RESET_GPU"),
    ("010010", "RESET_GPU"), ("010101", "RESET_GPU"), ("010110", "RESET_GPU"), ("100000", "RESET_GPU"),
    ("100001", "RESET_GPU"), ("100010", "RESET_GPU"), ("100011", "RESET_GPU"), ("100100", "RESET_GPU"),
    ("100101", "RESET_GPU"), ("100110", "IGNORE"), ("101000", "IGNORE"), ("101010", "RESET_GPU"),
    ("101011", "RESET_GPU"),
)) + (
    (149, "NETIR_BER_EVENT", _V1_BER, _V2_BER, _s(0x0, 0x1, 0x2, 0x3), "IGNORE"),
    (149, "NETIR_MFDE_EVENT", _V1_MFDE, _V2_MFDE, _s(0x1), "RESET_GPU"),
    (149, "NETIR_MFDE_EVENT", _V1_MFDE, _V2_MFDE, _s(0x3), "IGNORE"),
    (149, "NETIR_MFDE_EVENT", _V1_MFDE, _V2_MFDE, _s(0x4, 0x5, 0x7), "RESET_GPU"),
    (150, "MSE Degraded", _V1_MSE, _V2_MSE, ("0x00000000", "0xFFFFFFFF"), "RESET_GPU"),
    (150, "MSE_WATCHDOG", _V1_MSE, _V2_MSE, ("0x00000000",), "RESET_GPU"),
)
NVL5_CODES = tuple(sorted(set(row[0] for row in NVL5_DECODE)))

# The driver lines NVSentinel's handlers match (pkg/patterns/xid.go, pkg/xid/parser/csv.go,
# pkg/xid/types.go, pkg/sxid/types.go, pkg/gpufallen/types.go), reduced to the groups it uses.
_NVS_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+)")
_NVS_NVL5 = re.compile(r"NVRM: Xid \(PCI:([^)]+)\): (\d+)(?:, pid=[^,]*)?(?:, name=[^,]*)?, "
                       r"(\w+)\s+(\w+)\s+(\w+)\s+(\w+)\s+Link\s+(-?\d+)\s+\((0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)")
_NVS_GPU_AT = re.compile(r"NVRM: GPU at PCI:([0-9a-fA-F:.]+): (GPU-[0-9a-fA-F-]+)")
_NVS_SXID = re.compile(r"nvidia-nvswitch(\d+): SXid \(PCI:([0-9a-fA-F:.]+)\): (\d+), (Fatal|Non-fatal), Link (\d+) (.+)")
_NVS_FALLEN = re.compile(r"(?s)NVRM: The NVIDIA GPU ([0-9a-fA-F:.]+).*?fallen off the bus and is not responding to commands")
_NVS_PCI_ID = re.compile(r"PCI ID: ([0-9a-fA-F:]+)")


def journal_message(written):
    """(SYSLOG_IDENTIFIER, MESSAGE) journald stores for a record user space wrote to /dev/kmsg.

    journald's syslog_parse_identifier (journald-syslog.c, applied by dev_kmsg_record to records
    whose facility is not kernel, which no user-space record has): the first word, when it ends
    with ":", is the identifier (without a "[pid]" suffix) and one blank after it is dropped.
    The inverse of kmsg_text for the records this catalog renders.
    """
    stripped = written.lstrip(" \t\n\r")
    word = re.match(r"[^ \t\n\r]*", stripped).group(0)
    if not word.endswith(":"):
        return None, written
    ident = word[:-1]
    if ident.endswith("]") and "[" in ident:
        ident = ident[:ident.rindex("[")]
    rest = stripped[len(word):]
    if rest[:1] in (" ", "\t", "\n", "\r"):
        rest = rest[1:]
    return ident, rest


def nvsentinel_bucket_action(bucket):
    """NVSentinel's RecommendedAction for one of NVIDIA's resolution buckets."""
    name = bucket.strip().upper()
    if name in NVSENTINEL_ACTIONS:
        return name
    return NVSENTINEL_BUCKETS.get(name, NVSENTINEL_UNKNOWN_ACTION)


def is_r575_or_newer(driver_version):
    """True for a driver version string of branch 575 or newer ("575.57.08"); False otherwise."""
    major = str(driver_version or "").split(".", 1)[0]
    return major.isdigit() and int(major) >= NVSENTINEL_R575


def intr_info_matches(pattern, intr_info):
    """Whether a 32-bit IntrInfo value fits a decode pattern ("-" for any bit)."""
    bits = format(intr_info & 0xFFFFFFFF, "032b")[-len(pattern):].rjust(len(pattern), "0")
    return all(want in ("-", got) for want, got in zip(pattern, bits))


def nvl5_decode(line, driver_version=None):
    """What NVSentinel makes of an NVLink5 XID line, or None when it does not decode it.

    None unless the line has the NVLink5 form and its code has decode rows (144-150): NVSentinel
    then treats it as any other XID line. Otherwise ``{code, subcode, error_code, action, row}``:
    error_code ``"<code>.<subcode>"`` with the subcode as the line writes it, action from the
    first matching row of NVL5_DECODE for the driver branch (NONE when no row matches, row None).
    """
    match = _NVS_NVL5.search(line or "")
    if match is None or int(match.group(2)) not in NVL5_CODES:
        return None
    code, subcode = int(match.group(2)), match.group(3)
    intr_info, status = int(match.group(8), 16), match.group(9)
    branch = 3 if is_r575_or_newer(driver_version) else 2
    for row in NVL5_DECODE:
        if row[0] == code and (not row[4] or status in row[4]) and intr_info_matches(row[branch], intr_info):
            return {"code": code, "subcode": subcode, "error_code": "%d.%s" % (code, subcode),
                    "action": nvsentinel_bucket_action(row[5]), "row": row}
    return {"code": code, "subcode": subcode, "error_code": "%d.%s" % (code, subcode), "action": "NONE", "row": None}


def _metadata_pci(pci):
    """PCI address as NVSentinel's metadata reader keys it: dddd:bb:dd, lower case."""
    parts = pci.split(":")
    if len(parts) != 3:
        return pci.lower()
    return ("%s:%s:%s" % (parts[0][-4:], parts[1], parts[2].split(".", 1)[0])).lower()


def _metadata_index(metadata):
    """(GPU by PCI, (GPU, port) by (NVSwitch PCI, port)) from gpu_metadata.json's content."""
    if metadata is None:
        return {}, {}
    if not isinstance(metadata, dict) or not isinstance(metadata.get("gpus", []), list):
        raise ValueError("GPU metadata must be gpu_metadata.json's content: a dict with a list 'gpus'")
    by_pci, links = {}, {}
    for gpu in metadata.get("gpus") or []:
        if not isinstance(gpu, dict) or not gpu.get("pci_address") or not gpu.get("uuid"):
            raise ValueError("every GPU of the metadata needs pci_address and uuid, got %r" % (gpu,))
        by_pci[_metadata_pci(gpu["pci_address"])] = gpu
        for link in gpu.get("nvlinks") or []:
            links[(_metadata_pci(link["remote_pci_address"]), int(link["remote_link_id"]))] = gpu
    return by_pci, links


def _event(check, error_code, action, pci, uuid=None, healthy=False, fatal=None, **extra):
    fatal = (action != "NONE") if fatal is None else fatal
    event = {"check": check, "error_code": error_code, "action": action, "fatal": fatal and not healthy,
             "healthy": healthy, "pci": pci, "gpu_uuid": uuid or None,
             "signal": "condition" if healthy or fatal else "event"}
    event.update(extra)
    return event


def nvsentinel_events(messages, metadata=None, cancellations=NVSENTINEL_CANCELLATIONS):
    """The health events NVSentinel's syslog-health-monitor publishes for one injection.

    messages: the journal MESSAGEs of the injection's records in order (journal_message of what
    was written; the records themselves for the agent's default record form). metadata: the
    node's gpu_metadata.json content as NVSentinel reads it (driver_version, gpus with uuid,
    pci_address, gpu_id and nvlinks), or None when the node has none. cancellations: the chart's
    rules, {error code: codes it cancels}.

    Returns one dict per event, in the order the monitor publishes them (its checks in turn):
    ``{check, error_code, action, fatal, healthy, pci, gpu_uuid, signal}`` (SXids add ``gpu``,
    ``nvswitch`` and ``link``; the fallen-off-the-bus event ``pci_id``). The monitor's state
    across injections (the PCI -> UUID map, recent XIDs) is not carried over.
    """
    by_pci, links = _metadata_index(metadata)
    driver = (metadata or {}).get("driver_version")
    return (_xid_events(messages, by_pci, driver, cancellations) + _sxid_events(messages, links)
            + _fallen_events(messages))


def _xid_events(messages, by_pci, driver, cancellations):
    events, seen_uuids = [], {}
    for message in messages:
        mapping = _NVS_GPU_AT.search(message)
        if mapping:
            seen_uuids[mapping.group(1).split(".", 1)[0]] = mapping.group(2)
            continue
        decoded = nvl5_decode(message, driver)
        match = _NVS_NVL5.search(message) if decoded else _NVS_XID.search(message)
        if match is None:
            continue
        pci = match.group(1).split(".", 1)[0]
        gpu = by_pci.get(_metadata_pci(pci))
        uuid = gpu["uuid"] if gpu else seen_uuids.get(pci)
        if decoded:
            code, action = decoded["error_code"], decoded["action"]
        else:
            code, action = match.group(2), nvsentinel_action(match.group(2), message, driver)
        if gpu is None and action == "COMPONENT_RESET":
            action = "RESTART_VM"
        events.append(_event(NVSENTINEL_XID_CHECK, code, action, pci, uuid))
        events.extend(_event(NVSENTINEL_XID_CHECK, cancelled, "NONE", pci, uuid, healthy=True)
                      for cancelled in cancellations.get(code, ()))
    return events


def nvsentinel_stalls(messages, metadata=None):
    """The MESSAGEs NVSentinel's syslog monitor cannot get past: SXids whose NVSwitch port the
    node's GPU metadata does not map to a GPU (all of them without metadata).

    At such a record the SysLogsSXIDError handler fails and the monitor retries it forever: no
    later record is processed by any check, also after a restart. [] when there is none.
    """
    links = _metadata_index(metadata)[1]
    return [message for message, match in _sxid_matches(messages)
            if (_metadata_pci(match.group(2)), int(match.group(5))) not in links]


def _sxid_matches(messages):
    for message in messages:
        match = _NVS_SXID.search(message)
        if match is not None:
            yield message, match


def _sxid_events(messages, links):
    events = []
    for _message, match in _sxid_matches(messages):
        gpu = links.get((_metadata_pci(match.group(2)), int(match.group(5))))
        if gpu is None:
            continue  # the monitor stalls here: nvsentinel_stalls
        fatal = match.group(4) != "Non-fatal"
        events.append(_event(NVSENTINEL_SXID_CHECK, str(int(match.group(3))), "CONTACT_SUPPORT" if fatal else "NONE",
                             match.group(2), gpu["uuid"], fatal=fatal, gpu=gpu.get("gpu_id"),
                             nvswitch=int(match.group(1)), link=int(match.group(5))))
    return events


def _fallen_events(messages):
    events, xid_pcis = [], set()
    for message in messages:
        xid = _NVS_XID.search(message)
        if xid:
            xid_pcis.add(xid.group(1))
            continue
        match = _NVS_FALLEN.search(message)
        if match is None or match.group(1) in xid_pcis:
            continue
        pci_id = _NVS_PCI_ID.search(message)
        events.append(_event(NVSENTINEL_FALLEN_CHECK, NVSENTINEL_FALLEN_ERROR_CODE, "RESTART_BM", match.group(1),
                             pci_id=pci_id.group(1) if pci_id else None))
    return events
