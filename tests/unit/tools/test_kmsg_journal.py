"""Unit tests of the node journal bridge's rules (tools/localcluster/kmsg_journal.py): the kernel's
handling of /dev/kmsg writes and reads, journald's (systemd v252) kmsg and identifier rules, the
journal export format. Expected values follow the C sources cited in the module."""
import importlib.util
import os
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tools" / "localcluster"))
_spec = importlib.util.spec_from_file_location("kmsg_journal", ROOT / "tools" / "localcluster" / "kmsg_journal.py")
kj = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kj)
_spec = importlib.util.spec_from_file_location("xid_catalog", ROOT / "plugins" / "module_utils" / "xid_catalog.py")
xid_catalog = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xid_catalog)


# --- the simulated /dev/kmsg file: one write per record ----------------------------------------

@pytest.mark.parametrize("data, writes, consumed", [
    (b"", [], 0),
    (b"<3>a\n<4>b\n", [b"<3>a\n", b"<4>b\n"], 10),
    # The driver's multi-line message is one write: lines without a prefix continue it.
    (b"<3>NVRM: x\nNVRM: y\nNVRM: z\n<3>w\n", [b"<3>NVRM: x\nNVRM: y\nNVRM: z\n", b"<3>w\n"], 32),
    (b"<3>a\n<3>b", [b"<3>a\n"], 5),                 # a write still in progress stays unread
    (b"plain\nmore\n", [b"plain\nmore\n"], 11),     # no prefix at all: one write
    (b"<3>a\n\n<3>b\n", [b"<3>a\n\n", b"<3>b\n"], 11),
])
def test_split_writes(data, writes, consumed):
    assert kj.split_writes(data) == (writes, consumed)


@pytest.mark.parametrize("payload, record", [
    (b"<3>NVRM: Xid\n", (1, 3, b"NVRM: Xid")),       # err, and LOG_USER: a user-space write
    (b"<11>x\n", (1, 3, b"x")),                       # user.err
    (b"<0>x", (1, 0, b"x")),                          # facility 0 (kernel) cannot be claimed
    (b"<30>x", (3, 6, b"x")),                         # daemon.info
    (b"x\n", (1, 4, b"x")),                           # no prefix: default level, LOG_USER
    (b"<>x", (1, 0, b"x")),                           # simple_strtoul reads no digits: 0
    (b"<abc>x", (1, 4, b"<abc>x")),                   # not a prefix
    (b"<3", (1, 4, b"<3")),
    (b"<3>x\n\n", (1, 3, b"x\n")),                    # only one trailing newline is dropped
    (b"<3>a\nb\n", (1, 3, b"a\nb")),                  # inner newlines stay in the text
    (b"<%d>x" % (2 ** 32 + 11), (1, 3, b"x")),        # an unsigned int, as the kernel reads it
])
def test_devkmsg_write(payload, record):
    assert kj.devkmsg_write(payload) == record


def test_devkmsg_write_refuses_what_the_kernel_refuses():
    assert kj.devkmsg_write(b"<3>" + b"x" * (kj.PRINTKRB_RECORD_MAX - 3)) == (1, 3, b"x" * 1021)
    assert kj.devkmsg_write(b"<3>" + b"x" * (kj.PRINTKRB_RECORD_MAX - 2)) is None


def test_kmsg_read_format_escapes_as_the_kernel_does():
    assert kj.kmsg_read_format(1, 3, 5, 123, b"a\nb\\c\td\x7f\xc3\xa9") == \
        b"11,5,123,-;a\\x0ab\\x5cc\\x09d\\x7f\\xc3\\xa9\n"
    assert kj.kmsg_read_format(0, 6, 9, 1, b"nvidia: probe", [(b"SUBSYSTEM", b"pci"),
                                                              (b"DEVICE", b"+pci:0000:53:00.0")]) == \
        b"6,9,1,-;nvidia: probe\n SUBSYSTEM=pci\n DEVICE=+pci:0000:53:00.0\n"


# --- journald ----------------------------------------------------------------------------------

@pytest.mark.parametrize("escaped, raw", [
    (b"a\\x0ab", b"a\nb"),
    (b"\\x00", b"\\x00"),            # a NUL is refused: the backslash is taken literally
    (b"\\q", b"\\q"),
    (b"abc\\", b"abc\\"),            # trailing backslash
    (b"\\101\\060", b"A0"),          # octal
    (b"\\000\\400", b"\\000\\400"),  # octal NUL and > 255 refused
    (b"\\u00e9", "\u00e9".encode()),
    (b"\\U0001F600", "\U0001F600".encode()),
    (b"\\UFFFFFFFF", b"\\UFFFFFFFF"),  # not a code point
    (b"\\U0000D800", b"\\U0000D800"),  # a surrogate is refused in the 32-bit form
    (b"\\s\\t\\\\\\\"", b" \t\\\""),
    (b"\\x4", b"\\x4"),              # too short
    (b"\\xzz", b"\\xzz"),
])
def test_cunescape_relax(escaped, raw):
    assert kj.cunescape_relax(escaped) == raw


def test_cunescape_undoes_the_kernels_escaping():
    text = bytes(range(1, 256))
    assert kj.cunescape_relax(kj.kmsg_escape(text)) == text


@pytest.mark.parametrize("message, result", [
    (b"NVRM: NVRM: Xid (PCI:0000:53:00): 79", (b"NVRM", None, 6)),
    (b"sshd[42]: accepted", (b"sshd", b"42", 10)),
    (b"  lead: x", (b"lead", None, 8)),             # leading whitespace is skipped and consumed
    (b"no colon here", (None, None, 0)),
    (b"trailing:", (b"trailing", None, 9)),
    (b"tab:\tx", (b"tab", None, 5)),
    (b"NVRM:  two", (b"NVRM", None, 6)),            # only one separator is consumed
    (b"[12]: x", (b"", b"12", 6)),
    (b"a]: x", (b"a]", None, 4)),                   # "]" without "[": part of the identifier
    (b"x[1]y: m", (b"x[1]y", None, 7)),
    (b":", (b"", None, 1)),
    (b"", (None, None, 0)),
    (b"kernel-ish message: no", (None, None, 0)),   # only the first word counts
])
def test_syslog_parse_identifier(message, result):
    assert kj.syslog_parse_identifier(message) == result


def test_dev_kmsg_record_of_a_user_space_write():
    record = b"11,7,1234,-;NVRM: NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>'\n"
    assert kj.dev_kmsg_record(record) == (7, [
        ("_SOURCE_MONOTONIC_TIMESTAMP", b"1234"), ("_TRANSPORT", b"kernel"), ("PRIORITY", b"3"),
        ("SYSLOG_FACILITY", b"1"), ("SYSLOG_IDENTIFIER", b"NVRM"),
        ("MESSAGE", b"NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>'")])


def test_dev_kmsg_record_of_a_kernel_record_with_its_dictionary():
    record = b"3,8,99,-;sshd[1]: not parsed\\x0asecond line\n SUBSYSTEM=pci\n DEVICE=+pci:0000:53:00.0\n"
    assert kj.dev_kmsg_record(record) == (8, [
        ("_KERNEL_SUBSYSTEM", b"pci"), ("_KERNEL_DEVICE", b"+pci:0000:53:00.0"),
        ("_SOURCE_MONOTONIC_TIMESTAMP", b"99"), ("_TRANSPORT", b"kernel"), ("PRIORITY", b"3"),
        ("SYSLOG_FACILITY", b"0"), ("SYSLOG_IDENTIFIER", b"kernel"),
        # The kernel's own records keep their text whole: no identifier is taken from them.
        ("MESSAGE", b"sshd[1]: not parsed\nsecond line")])


def test_dev_kmsg_record_without_flags_field_and_pid():
    # Kernel 3.5 had no flags field; a pid becomes SYSLOG_PID.
    assert kj.dev_kmsg_record(b"14,1,5;app[77]: hello\n") == (1, [
        ("_SOURCE_MONOTONIC_TIMESTAMP", b"5"), ("_TRANSPORT", b"kernel"), ("PRIORITY", b"6"),
        ("SYSLOG_FACILITY", b"1"), ("SYSLOG_IDENTIFIER", b"app"), ("SYSLOG_PID", b"77"),
        ("MESSAGE", b"hello")])


@pytest.mark.parametrize("record", [
    b"", b"abc", b"1000,1,1,-;priority above 999\n", b"3,1,1,-;no newline", b"3,x,1,-;m\n",
    b"3,1,y,-;m\n", b"-1,1,1,-;m\n",
    b"3,1,1,-;m\n SUBSYSTEM=pci",          # an unterminated dictionary line drops the record
])
def test_dev_kmsg_record_drops_what_journald_drops(record):
    assert kj.dev_kmsg_record(record) is None


def journald_message(driver_record):
    """The agent's write of a driver record (kmsg_text, priority err) through the kernel and
    journald: (SYSLOG_IDENTIFIER, MESSAGE)."""
    payload = b"<3>" + xid_catalog.kmsg_text(driver_record).encode() + b"\n"
    _seq, fields = kj.dev_kmsg_record(kj.kmsg_read_format(*kj.devkmsg_write(payload)[:2], 0, 1,
                                                          kj.devkmsg_write(payload)[2]))
    fields = dict(fields)
    return fields["SYSLOG_IDENTIFIER"], fields["MESSAGE"]


def test_the_agents_xid_record_reaches_messages_as_the_driver_prints_it():
    record = "NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
    assert journald_message(record) == (b"NVRM", record.encode())


def test_the_fallen_off_the_bus_message_keeps_its_lines():
    record = ("NVRM: The NVIDIA GPU 0000:53:00.0\nNVRM: (PCI ID: 10de:2330) installed in this system has\n"
              "NVRM: fallen off the bus and is not responding to commands.")
    assert journald_message(record) == (b"NVRM", record.encode())


def test_node_fields():
    assert kj.node_fields("b" * 32, "a" * 32, "gpu-node-0") == [
        ("_BOOT_ID", b"b" * 32), ("_MACHINE_ID", b"a" * 32), ("_HOSTNAME", b"gpu-node-0"),
        ("_RUNTIME_SCOPE", b"system")]


# --- export format -----------------------------------------------------------------------------

def test_export_entry_text_and_binary_fields():
    data = kj.export_entry([("PRIORITY", b"3"), ("MESSAGE", b"two\nlines"), ("EMPTY", b"")], 1700, 42)
    assert data == (b"__REALTIME_TIMESTAMP=1700\n__MONOTONIC_TIMESTAMP=42\nPRIORITY=3\n"
                    b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nEMPTY=\n\n")


@pytest.mark.parametrize("text, value", [
    ("0123456789abcdef0123456789ABCDEF\n", "0123456789abcdef0123456789abcdef"),
    ("0b6c1a8e-8f0e-4a5e-9a53-1d5a6c2f0e77", "0b6c1a8e8f0e4a5e9a531d5a6c2f0e77"),
])
def test_id128(text, value):
    assert kj.id128(text) == value


@pytest.mark.parametrize("text", ["", "xyz", "0123456789abcdef0123456789abcde"])
def test_id128_refuses(text):
    with pytest.raises(ValueError):
        kj.id128(text)


def test_a_journal_starts_with_journalds_own_message():
    fields = dict(kj.journal_started())
    assert fields["_TRANSPORT"] == b"driver" and fields["MESSAGE"] == b"Journal started"
    assert fields["SYSLOG_IDENTIFIER"] == b"systemd-journald" and len(fields["MESSAGE_ID"]) == 32


def test_a_node_journal_starts_with_the_kernel_banner_then_journald(tmp_path):
    node = kj.Node("gpu-node-0", str(tmp_path), str(tmp_path / "state.json"))
    node.identity = ("a" * 32, "b" * 32, 1_000_000)
    kernel, started = node.boot_entries(b"Linux version 6.1.0 (gcc) #1 SMP")
    assert b"_TRANSPORT=kernel\n" in kernel and b"SYSLOG_IDENTIFIER=kernel\n" in kernel
    assert b"PRIORITY=5\n" in kernel and b"MESSAGE=Linux version 6.1.0 (gcc) #1 SMP\n" in kernel
    assert kernel.startswith(b"__REALTIME_TIMESTAMP=1000000\n__MONOTONIC_TIMESTAMP=0\n")
    assert b"_TRANSPORT=driver\n" in started and b"_BOOT_ID=" + b"b" * 32 in started
    assert node.state["nextSeq"] == 1   # the agent's first write is the kernel's second record


def test_a_reboot_starts_a_new_boot_in_the_same_journal(tmp_path):
    random = tmp_path / "proc" / "sys" / "kernel" / "random"
    random.mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "machine-id").write_text("a" * 32 + "\n")
    (random / "boot_id").write_text("00000000-0000-4000-8000-000000000001\n")
    node = kj.Node("gpu-node-0", str(tmp_path), str(tmp_path / "state.json"))
    machine_id, first_boot, booted = node.load_identity()
    assert (machine_id, first_boot) == ("a" * 32, "00000000000040008000000000000001")
    assert not node.boot_started()
    node.boot_entries(b"Linux version 6.1.0")
    node.state["journalBoot"] = first_boot
    os.makedirs(os.path.dirname(node.journal))
    open(node.journal, "wb").close()
    node.entries([b"<3>NVRM: Xid (PCI:0000:53:00): 79, GPU has fallen off the bus.\n"], booted + 5_000_000)
    assert node.boot_started() and node.state["nextSeq"] == 2 and node.load_identity()[1] == first_boot

    (random / "boot_id").write_text("00000000-0000-4000-8000-000000000002\n")
    os.utime(random / "boot_id", ns=(booted * 1000 + 10**9, booted * 1000 + 10**9))
    assert node.load_identity() == ("a" * 32, "00000000000040008000000000000002", booted + 1_000_000)
    assert node.state["nextSeq"] == 0 and not node.boot_started()   # counted afresh, banner again
    (entry,) = node.entries([b"<3>NVRM: after the reboot\n"], booted + 3_000_000)
    assert b"_BOOT_ID=00000000000040008000000000000002\n" in entry and b"__MONOTONIC_TIMESTAMP=2000000\n" in entry
