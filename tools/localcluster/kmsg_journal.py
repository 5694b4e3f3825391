"""The node journal bridge: a real systemd journal for every simulated node, fed from its /dev/kmsg.

On a real node the kernel turns each write to /dev/kmsg into a record, and journald reads the
records back and stores them in the journal. A simulated node's /dev/kmsg is a regular file that
the fault agent appends its writes to (<nodes>/<node>/host/dev/kmsg); this bridge does both
steps for it, following the file as it grows:

    kmsg_journal.py --nodes-dir <runner state>/nodes --state-dir <cluster state>/journal-bridge

1. The kernel's side (Linux kernel/printk/printk.c): each write becomes a record as
   devkmsg_write() makes it (the `<N>` prefix, LOG_USER for user space), numbered and timed, and
   reads back in /dev/kmsg's format, `PRI,SEQ,USEC,FLAGS;TEXT` (info_print_ext_header(),
   msg_add_ext_text()).
2. journald's side (systemd v252, Debian 12's): each record becomes a journal entry by the rules
   of src/journal/journald-kmsg.c dev_kmsg_record() and journald-syslog.c
   syslog_parse_identifier(), with the fields dispatch_message_real() (journald-server.c) adds.
3. Debian's systemd-journal-remote writes the entries, in journal export format, to a real journal
   file: <nodes>/<node>/host/var/log/journal/<machine-id>/system.journal. It keeps the trusted
   fields (_TRANSPORT, _BOOT_ID, ...) as given and takes __REALTIME_TIMESTAMP,
   __MONOTONIC_TIMESTAMP and _BOOT_ID for the entry's own timestamps and boot
   (src/shared/journal-importer.c process_special_field()).

Each node's identity comes from its host root, written by localcluster.py: _MACHINE_ID from
etc/machine-id, _BOOT_ID from proc/sys/kernel/random/boot_id (the node "booted" when that file was
written: monotonic times count from its mtime), _HOSTNAME is the node's name. What the bridge has
read is kept per node in the state dir (the file's inode and offset, and the next kernel sequence
number, journald's kernel-seqnum): a restarted bridge goes on where it stopped and never writes a
record twice. As journald does, the sequence number is saved before the entry is written, so a
bridge killed in between loses that batch rather than duplicating it.

A node's journal exists from its "boot", as on a real node: the bridge starts it with the kernel's
first record, its banner (init/main.c prints linux_banner with KERN_NOTICE; the text is the host's
/proc/version, the kernel the simulated nodes run on), and journald's own "Journal started". A
reader that opens a journal seeks to its last kernel record and reads what follows; without a
kernel record there (a journal made by the first fault), it would miss the first fault. A reboot
(the node's boot_id file rewritten, as gpu_standins.reboot does) starts a new boot in the same
journal, as on a real node: the banner and "Journal started" again, the kernel's numbering from 0,
monotonic times from the new boot, the records under the new _BOOT_ID.

Not simulated: udev's device fields (_UDEV_*: the simulated devices have no udev database), the
kernel's rate limit on /dev/kmsg writes, and journald's other messages ("Missed N kernel messages").
The pure functions come first, in pipeline order; the follower and the CLI after them.
"""
import argparse
import contextlib
import ctypes
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from podns import LIBC  # noqa: E402  (libc through ctypes, loaded once for the tools)

# --- 1. the kernel: writes to /dev/kmsg and what reading /dev/kmsg returns ----------------------

DEFAULT_MESSAGE_LOGLEVEL = 4    # CONFIG_MESSAGE_LOGLEVEL_DEFAULT: a write without a prefix
LOG_USER = 1
PRINTKRB_RECORD_MAX = 1024      # devkmsg_write() refuses longer writes with EINVAL
_PREFIX = re.compile(rb"<(\d*)>")


def split_writes(data):
    """(writes, consumed): the writes in the simulated /dev/kmsg file's bytes `data`, and how
    many bytes they span. A write is one record; writers end it with a newline, and the driver's
    multi-line messages are one write: a line that starts with a `<N>` prefix begins a write, a
    line without one continues the write before it. Bytes after the last newline are a write in
    progress and stay unread."""
    end = data.rfind(b"\n") + 1
    writes = []
    for line in data[:end].split(b"\n")[:-1]:
        if _PREFIX.match(line) or not writes:
            writes.append(line + b"\n")
        else:
            writes[-1] += line + b"\n"
    return writes, end


def devkmsg_write(payload):
    """(facility, level, text) of the record the kernel makes of one write (devkmsg_write()):
    a leading <N> (digits as simple_strtoul reads them, even none) gives level N & 7 and, unless
    N >> 3 is 0, facility N >> 3: user space cannot claim the kernel's facility 0. No prefix: the
    default level and LOG_USER. One trailing newline is dropped (printk_sprint()). None for a
    write the kernel refuses (longer than PRINTKRB_RECORD_MAX)."""
    if len(payload) > PRINTKRB_RECORD_MAX:
        return None
    facility, level, text = LOG_USER, DEFAULT_MESSAGE_LOGLEVEL, payload
    match = _PREFIX.match(payload)
    if match:
        value = int(match.group(1) or b"0") & 0xFFFFFFFF     # an unsigned int, as in the kernel
        level = value & 7
        if (value >> 3) & 0xFF:
            facility = (value >> 3) & 0xFF
        text = payload[match.end():]
    if text.endswith(b"\n"):
        text = text[:-1]
    return facility, level, text


def kmsg_escape(data):
    """/dev/kmsg's escaping of a record's text and dictionary values (msg_add_ext_text()):
    bytes below 0x20, from 0x7f up, and the backslash become \\xNN."""
    return b"".join(b"\\x%02x" % byte if byte < 0x20 or byte >= 0x7F or byte == 0x5C else bytes((byte,))
                    for byte in data)


def kmsg_read_format(facility, level, seq, usec, text, dictionary=()):
    """One record as a read of /dev/kmsg returns it (info_print_ext_header() and
    msg_print_ext_body()): `PRI,SEQ,USEC,-;TEXT\\n`, then ` KEY=VALUE\\n` per dictionary entry
    (SUBSYSTEM, DEVICE: the kernel's own records carry them)."""
    out = b"%d,%d,%d,-;%s\n" % ((facility << 3) | level, seq, usec, kmsg_escape(text))
    for key, value in dictionary:
        out += b" %s=%s\n" % (kmsg_escape(key), kmsg_escape(value))
    return out


# --- 2. journald (systemd v252) ----------------------------------------------------------------

LOG_KERN = 0
N_IOVEC_KERNEL_FIELDS = 64      # journald-server.h: dictionary lines read per record
WHITESPACE = b" \t\n\r"         # basic/string-util.h
_SIMPLE_ESCAPES = {ord("a"): b"\a", ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r",
                   ord("t"): b"\t", ord("v"): b"\v", ord("\\"): b"\\", ord('"'): b'"', ord("'"): b"'",
                   ord("s"): b" "}


def _unichar_is_valid(code):
    """basic/utf8.c unichar_is_valid()."""
    return (code < 0x110000 and (code & 0xFFFFF800) != 0xD800 and not 0xFDD0 <= code <= 0xFDEF
            and (code & 0xFFFE) != 0xFFFE)


def _cunescape_one(data, i):
    """basic/escape.c cunescape_one() for the escape whose letter is at data[i]:
    (bytes, length consumed after the backslash), or None for an invalid escape."""
    char = data[i]
    if char in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[char], 1
    hexdigits, octdigits = b"0123456789abcdefABCDEF", b"01234567"
    if char == ord("x"):
        digits = data[i + 1:i + 3]
        if len(digits) == 2 and all(d in hexdigits for d in digits) and digits != b"00":
            return bytes((int(digits, 16),)), 3
        return None
    if char in (ord("u"), ord("U")):
        width = 4 if char == ord("u") else 8
        digits = data[i + 1:i + 1 + width]
        if len(digits) != width or not all(d in hexdigits for d in digits):
            return None
        code = int(digits, 16)
        if code == 0 or (width == 8 and not _unichar_is_valid(code)):
            return None
        return chr(code).encode("utf-8", "surrogatepass"), 1 + width
    if char in octdigits:
        digits = data[i:i + 3]
        if len(digits) == 3 and all(d in octdigits for d in digits):
            value = int(digits, 8)
            if value != 0 and value <= 255:
                return bytes((value,)), 3
        return None
    return None


def cunescape_relax(data):
    """basic/escape.c cunescape_length_with_prefix() with UNESCAPE_RELAX, as journald unescapes
    kmsg text: C escapes (\\n, \\x41, \\101, \\u00e9, ...) are decoded; an invalid escape or a
    trailing backslash is kept literally."""
    out, i, n = bytearray(), 0, len(data)
    while i < n:
        if data[i] != 0x5C:
            out.append(data[i])
            i += 1
            continue
        decoded = _cunescape_one(data, i + 1) if i + 1 < n else None
        if decoded is None:
            out.append(0x5C)          # taken literally; what follows is read as it is
            i += 1
            continue
        out += decoded[0]
        i += 1 + decoded[1]
    return bytes(out)


def syslog_parse_identifier(text):
    """journald-syslog.c syslog_parse_identifier(): (identifier, pid, consumed) from a message's
    first whitespace-delimited word when it ends with ":" (`NVRM:`, `sshd[42]:`), the single
    whitespace after it consumed too; (None, None, 0) otherwise. The scan stops at a NUL, as C's
    string functions do."""
    text = text.split(b"\0", 1)[0]
    start = len(text) - len(text.lstrip(WHITESPACE))
    word = re.match(rb"[^ \t\n\r]*", text[start:]).group(0)
    if not word or not word.endswith(b":"):
        return None, None, 0
    end = len(word)
    ident, pid = word[:-1], None
    if ident.endswith(b"]"):
        opening = ident.rfind(b"[")
        if opening >= 0:
            pid, ident = ident[opening + 1:-1], ident[:opening]
    if start + end < len(text) and text[start + end] in WHITESPACE:
        end += 1
    return ident, pid, start + end


def dev_kmsg_record(record):
    """journald-kmsg.c dev_kmsg_record(): (seq, fields) for one /dev/kmsg read (bytes), the fields
    a list of (name, value bytes) in journald's order; None for a record journald drops. The
    kernel-seqnum check, which needs journald's state, is the caller's (KmsgJournal)."""
    header, sep, rest = record.partition(b";")
    parts = header.split(b",")
    if not sep or len(parts) < 3 or b"\n" not in rest:
        return None
    try:
        priority, seq, usec = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not 0 <= priority <= 999 or seq < 0 or usec < 0:
        return None
    message, _nl, rest = rest.partition(b"\n")
    fields = []
    while rest.startswith(b" ") and len(fields) < N_IOVEC_KERNEL_FIELDS:
        line, newline, rest = rest[1:].partition(b"\n")
        if not newline:
            return None                      # an unterminated dictionary line: "goto finish"
        fields.append(_field(b"_KERNEL_" + cunescape_relax(line)))
    fields += [("_SOURCE_MONOTONIC_TIMESTAMP", b"%d" % usec), ("_TRANSPORT", b"kernel"),
               ("PRIORITY", b"%d" % (priority & 7)), ("SYSLOG_FACILITY", b"%d" % (priority >> 3))]
    if priority >> 3 == LOG_KERN:
        fields.append(("SYSLOG_IDENTIFIER", b"kernel"))
    else:
        ident, pid, consumed = syslog_parse_identifier(message)
        message = message[consumed:]
        if ident is not None:
            fields.append(("SYSLOG_IDENTIFIER", ident))
        if pid is not None:
            fields.append(("SYSLOG_PID", pid))
    # journald's iovecs are C strings: a value ends at its first NUL.
    fields.append(("MESSAGE", cunescape_relax(message).split(b"\0", 1)[0]))
    return seq, [(name, value.split(b"\0", 1)[0]) for name, value in fields]


def _field(assignment):
    name, _eq, value = assignment.partition(b"=")
    return name.decode("ascii", "replace"), value


def node_fields(boot_id, machine_id, hostname):
    """What dispatch_message_real() (journald-server.c) adds to a kernel record: no client
    context (no _PID, _UID, ...), the boot, machine and host of the node, the runtime scope."""
    return [("_BOOT_ID", boot_id.encode()), ("_MACHINE_ID", machine_id.encode()),
            ("_HOSTNAME", hostname.encode()), ("_RUNTIME_SCOPE", b"system")]


SD_MESSAGE_JOURNAL_START = b"f77379a8490b408bbe5f6940505a777b"   # sd-messages.h
KERN_NOTICE = 5


def journal_started():
    """journald's message when it starts a journal (journald-server.c: server_driver_message()
    with SD_MESSAGE_JOURNAL_START, "Journal started"): a driver message of systemd-journald."""
    return [("SYSLOG_FACILITY", b"3"), ("SYSLOG_IDENTIFIER", b"systemd-journald"), ("_TRANSPORT", b"driver"),
            ("PRIORITY", b"6"), ("MESSAGE_ID", SD_MESSAGE_JOURNAL_START), ("MESSAGE", b"Journal started")]


# --- 3. journal export format (systemd's JOURNAL_EXPORT_FORMATS) --------------------------------

def export_entry(fields, realtime_usec, monotonic_usec):
    """One entry in journal export format: the timestamps, then each field as NAME=value, or in
    the binary form (NAME, newline, little-endian 64-bit length, value) when the value has a
    newline; an empty line ends the entry."""
    out = [b"__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n" % (realtime_usec, monotonic_usec)]
    for name, value in fields:
        if b"\n" in value:
            out.append(name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            out.append(name.encode() + b"=" + value + b"\n")
    out.append(b"\n")
    return b"".join(out)


def id128(text):
    """A machine or boot id as the journal writes it: 32 lowercase hex digits, no dashes."""
    value = text.strip().replace("-", "").lower()
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ValueError("not a 128-bit id: %r" % text)
    return value


# ================================================================================================
# I/O: following the nodes' files, writing their journals.
# ================================================================================================

JOURNAL_REMOTE = ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
READ_CHUNK = 1 << 20
IDENTITY_RETRY = 2.0      # a node whose machine-id or boot_id is not written yet: look again


def log(event, **fields):
    print(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, **fields}, default=str),
          file=sys.stderr, flush=True)


def write_json(path, value):
    """Atomically: a reader (or a restarted bridge) sees the old state or the new one."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


class Inotify:
    """Directory watches through libc's inotify (Python has no binding): which watched directory
    had a file created, written or moved in."""

    EVENTS = 0x2 | 0x8 | 0x80 | 0x100     # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

    def __init__(self):
        self.libc = LIBC
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths = {}

    def watch(self, path):
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.EVENTS)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch %s" % path)
        self.paths[wd] = path

    def read(self):
        """The watched directories that had events since the last read."""
        changed = set()
        with contextlib.suppress(BlockingIOError):
            while True:
                data = os.read(self.fd, 65536)
                offset = 0
                while offset < len(data):
                    wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                    changed.add(self.paths.get(wd))
                    offset += 16 + length
        changed.discard(None)
        return changed


class Node:
    """One simulated node: its /dev/kmsg file, its journal, what has been read."""

    def __init__(self, name, host, state_path):
        self.name, self.host, self.state_path = name, host, state_path
        self.kmsg = os.path.join(host, "dev", "kmsg")
        self.identity = None      # (machine id, boot id, boot time in µs) once readable
        try:
            with open(state_path) as f:
                self.state = json.load(f)
        except (OSError, ValueError):
            self.state = {"inode": None, "offset": 0, "nextSeq": 0, "bootId": None}

    def load_identity(self):
        """(machine id, boot id, boot time in µs), or None while the files are not written. Read
        again when the boot id file changes: the node rebooted (gpu_standins.reboot), and its
        records from then on belong to the new boot."""
        boot_path = os.path.join(self.host, "proc", "sys", "kernel", "random", "boot_id")
        try:
            booted = os.stat(boot_path).st_mtime_ns // 1000
            if self.identity is not None and self.identity[2] == booted:
                return self.identity
            with open(os.path.join(self.host, "etc", "machine-id")) as f:
                machine_id = id128(f.read())
            with open(boot_path) as f:
                boot_id = id128(f.read())
        except (OSError, ValueError):
            return None
        if self.state.get("bootId") != boot_id:      # a new boot: the kernel counts afresh
            self.state.update(bootId=boot_id, nextSeq=0)
        self.identity = (machine_id, boot_id, booted)
        return self.identity

    def boot_started(self):
        """Whether the journal has this boot's first entries (a journal goes on across boots)."""
        return os.path.exists(self.journal) and self.state.get("journalBoot") == self.identity[1]

    @property
    def journal(self):
        return os.path.join(self.host, "var", "log", "journal", self.identity[0], "system.journal")

    def read_new(self):
        """The writes appended since the last call; a replaced or truncated file is read anew."""
        try:
            with open(self.kmsg, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.state["inode"] or st.st_size < self.state["offset"]:
                    self.state.update(inode=st.st_ino, offset=0)
                f.seek(self.state["offset"])
                data = f.read(READ_CHUNK)
        except FileNotFoundError:
            return []
        writes, consumed = split_writes(data)
        if len(data) == READ_CHUNK:
            if len(writes) > 1:              # the last write may go on in the next chunk
                consumed -= len(writes.pop())
            elif not writes:                 # a chunk without a newline: no write is that long
                writes, consumed = [data], len(data)
        self.state["offset"] += consumed
        return writes

    def has_new(self):
        try:
            st = os.stat(self.kmsg)
        except FileNotFoundError:
            return False
        return st.st_ino != self.state["inode"] or st.st_size != self.state["offset"]

    def boot_entries(self, banner):
        """The entries a node's journal starts with: the kernel's banner (the record the kernel
        numbers first) and journald's "Journal started", both at the node's boot."""
        machine_id, boot_id, booted = self.identity
        seq = self.state["nextSeq"]
        self.state["nextSeq"] = seq + 1
        _seq, kernel = dev_kmsg_record(kmsg_read_format(LOG_KERN, KERN_NOTICE, seq, 0, banner))
        ids = node_fields(boot_id, machine_id, self.name)
        return [export_entry(kernel + ids, booted, 0), export_entry(journal_started() + ids, booted, 0)]

    def entries(self, writes, now_usec):
        """Export-format entries of the writes, numbered from the node's next sequence number."""
        machine_id, boot_id, booted = self.identity
        monotonic = max(now_usec - booted, 0)
        out = []
        for payload in writes:
            record = devkmsg_write(payload)
            if record is None:
                log("kmsg.refused", node=self.name, bytes=len(payload),
                    reason="longer than the kernel accepts (%d)" % PRINTKRB_RECORD_MAX)
                continue
            # The kernel numbers the record; journald's kernel-seqnum moves past it before the
            # entry is written (dev_kmsg_record()): the caller saves the state first, likewise.
            seq = self.state["nextSeq"]
            self.state["nextSeq"] = seq + 1
            parsed = dev_kmsg_record(kmsg_read_format(*record[:2], seq, monotonic, record[2]))
            if parsed is None:
                continue
            fields = parsed[1] + node_fields(boot_id, machine_id, self.name)
            out.append(export_entry(fields, now_usec, monotonic))
        return out


class Bridge:
    def __init__(self, nodes_dir, state_dir, journal_remote):
        self.nodes_dir, self.state_dir, self.journal_remote = nodes_dir, state_dir, journal_remote
        self.nodes = {}
        self.inotify = Inotify()
        self.stop = False

    def discover(self):
        """Nodes whose host root exists; each gets a watch on its /dev. Returns the new ones."""
        new = set()
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.nodes_dir)):
                host = os.path.join(self.nodes_dir, name, "host")
                if name not in self.nodes and os.path.isdir(host):
                    os.makedirs(os.path.join(host, "dev"), exist_ok=True)
                    node = Node(name, host, os.path.join(self.state_dir, name + ".json"))
                    self.inotify.watch(os.path.join(host, "dev"))
                    self.nodes[name] = node
                    new.add(name)
                    log("node.follow", node=name, kmsg=node.kmsg, offset=node.state["offset"])
        return new

    def flush(self, node):
        """Everything new in the node's file into its journal (started first if the node has none).
        False if it must be retried (the node's identity files are not written yet)."""
        if node.load_identity() is None:
            return False
        if not node.boot_started():
            entries = node.boot_entries(kernel_banner())
            node.state["journalBoot"] = node.identity[1]
            write_json(node.state_path, node.state)
            self.write(node, b"".join(entries), len(entries))
        if not node.has_new():
            return True
        while not self.stop:
            writes = node.read_new()
            if not writes:
                return True
            entries = node.entries(writes, time.time_ns() // 1000)
            write_json(node.state_path, node.state)
            if entries:
                self.write(node, b"".join(entries), len(entries))

    def write(self, node, data, count):
        os.makedirs(os.path.dirname(node.journal), mode=0o755, exist_ok=True)
        result = subprocess.run([self.journal_remote, "--split-mode=none", "--output=" + node.journal, "-"],
                                input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if result.returncode != 0:
            log("journal.write-failed", node=node.name, entries=count, rc=result.returncode,
                error=result.stderr.decode("utf-8", "replace")[-2000:])
        else:
            log("journal.write", node=node.name, entries=count, journal=node.journal)

    def run(self):
        os.makedirs(self.nodes_dir, exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)
        self.inotify.watch(self.nodes_dir)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        self.discover()
        pending = set(self.nodes)
        log("bridge.start", nodes=sorted(self.nodes), journalRemote=self.journal_remote)
        while not self.stop:
            pending = {name for name in pending if not self.flush(self.nodes[name])}
            timeout = IDENTITY_RETRY if pending else None
            ready, _w, _x = select.select([self.inotify.fd, wake_r], [], [], timeout)
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            changed = self.inotify.read() if self.inotify.fd in ready else set()
            if self.nodes_dir in changed:
                pending |= self.discover()   # a new node's journal starts at once
            pending |= {n for n, node in self.nodes.items() if os.path.dirname(node.kmsg) in changed}
        log("bridge.stopped")

    def _request_stop(self, *_):
        self.stop = True


def kernel_banner():
    with open("/proc/version", "rb") as f:
        return f.read().rstrip(b"\n")


def find_journal_remote():
    for path in JOURNAL_REMOTE:
        if os.access(path, os.X_OK):
            return path
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--nodes-dir", required=True, help="the pod runner's nodes/ directory")
    parser.add_argument("--state-dir", required=True, help="where the bridge keeps what it has read")
    parser.add_argument("--journal-remote", default=find_journal_remote(),
                        help="systemd-journal-remote (Debian package systemd-journal-remote)")
    args = parser.parse_args(argv)
    if not args.journal_remote:
        parser.error("systemd-journal-remote not found in %s: install the Debian package "
                     "systemd-journal-remote (tools/debian-packages.sh systemd-journal-remote)"
                     % " or ".join(JOURNAL_REMOTE))
    Bridge(os.path.abspath(args.nodes_dir), os.path.abspath(args.state_dir), args.journal_remote).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
