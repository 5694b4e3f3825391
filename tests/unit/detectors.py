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


# AWS check 0's classification (checks/0-nvidia-smi-check.sh of aws-samples/awsome-distributed-training,
# commit a3a38566, default tunables NVLINK_DEFAULT=RESET, NVLINK5_DEFAULT=MONITOR, STRICT_PSHC=0),
# transcribed case by case: the oracle the catalog's AWS severities are tested against. The A100
# rules, MIG and UVM are the script's is_a100, mig_enabled and uvm_in_use.
_AWS_RANK = ("PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE")


def _aws_code_severity(code, a100, mig, uvm):
    if code == 54:
        return "ISOLATE"
    if code in (79, 151, 168):
        return "REBOOT"
    if code == 64:
        return "REBOOT" if a100 else "RESET"
    if code == 95:
        return "REBOOT" if a100 and not mig else "RESET"
    if code in (48, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158, 74):
        return "RESET"
    if code == 159:
        return "RESET" if uvm else "MONITOR"
    return "MONITOR"    # 144-150, 162-165, 13, 31, 94, 126, 43, 63, 92, 121, 154, 157, 81, 125, unknown


def aws_check0_severity(lines, a100=False, mig=False, uvm=False):
    """The severity check 0 gives a kernel log (its lines), PASS when no line is an XID."""
    xid_lines = [line for line in lines if AWS_XID_GREP.search(line)]
    codes = sorted({int(code) for code in map(aws_code, xid_lines) if code is not None})
    if not xid_lines:
        return "PASS"
    worst = "MONITOR"
    for code in codes:
        worst = max(worst, _aws_code_severity(code, a100, mig, uvm), key=_AWS_RANK.index)
    if 154 in codes:
        text = "\n".join(line for line in xid_lines if re.search(r"Xid.*154", line, re.IGNORECASE)).lower()
        for phrase, severity in (("node reboot required", "REBOOT"), ("gpu reset required", "RESET"),
                                 ("drain and reset", "RESET"), ("drain p2p", "RESET")):
            if phrase in text:
                worst = max(worst, severity, key=_AWS_RANK.index)
                break
    return worst
