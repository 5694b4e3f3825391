"""What the detectors operators run look for, as test oracles: NVIDIA NVSentinel's syslog-health-monitor
patterns and the AWS GPU health-check suite's grep and sed (see shared/reference/gpu-faults.md).

Injected records are tested against these, not against our own parsers.
"""
import re

# --- NVSentinel syslog-health-monitor ---------------------------------------------------------
NVS_XID = re.compile(
    r"NVRM: Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+)(?:, pid=(\d+))?(?:, name=([^,]+))?(?:, Ch ([0-9a-fA-F]+))?")
NVS_SXID = re.compile(
    r"nvidia-nvswitch(\d+): SXid \(PCI:([0-9a-fA-F:.]+)\): (\d+), (Fatal|Non-fatal), Link (\d+) (.+)")
NVS_FALLEN = re.compile(
    r"(?s)NVRM: The NVIDIA GPU ([0-9a-fA-F:.]+).*?fallen off the bus and is not responding to commands")
NVS_PCI_ID = re.compile(r"PCI ID: ([0-9a-fA-F:]+)")
NVS_HAS_XID = re.compile(r"\bXid\b")  # the fallen-off-bus handler ignores messages with this
NVS_GPU_MAP = re.compile(r"NVRM: GPU at PCI:([0-9a-fA-F:.]+): (GPU-[0-9a-fA-F-]+)")
NVS_NVL5 = re.compile(
    r"NVRM: Xid \(PCI:([^)]+)\): (\d+)(?:, pid=[^,]*)?(?:, name=[^,]*)?, "
    r"(\w+)\s+(\w+)\s+(\w+)\s+(\w+)\s+Link\s+(-?\d+)\s+\((0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)")
NVS_XID13 = re.compile(r"\(GPC\s+(\d+),\s*TPC\s+(\d+),\s*SM\s+(\d+)\)")
NVS_XID74 = re.compile(r"link\s+(\d+)\(" + r",\s*".join([r"(0x[0-9a-fA-F]+)"] * 7) + r"\)")

# --- AWS GPU health-check suite (check 0) -------------------------------------------------------
AWS_XID_GREP = re.compile(r"NVRM.*Xid", re.IGNORECASE)   # grep -i "NVRM.*Xid"
AWS_SXID_GREP = re.compile(r"SXid", re.IGNORECASE)       # grep -i "SXid"


def aws_code(line):
    """sed -nE 's/.*Xid[^)]*\\):[[:space:]]*([0-9]+).*/\\1/p' in Python."""
    result = re.sub(r".*Xid[^)]*\):\s*([0-9]+).*", r"\1", line)
    return result if result != line else None
