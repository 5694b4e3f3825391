"""The node journal bridge (tools/localcluster/kmsg_journal.py): kernel records written to a
simulated node's /dev/kmsg appear in that node's systemd journal as journald would store them,
read back with journalctl, which uses the same libsystemd code as NVSentinel's sdjournal reader.

This file runs a bridge of its own on a directory of pretend nodes; the cluster's bridge is tested
with the fault agent in test_gpu_xid_inject.py.
"""
import os
import signal
import subprocess
import sys


from support import ROOT, journal_identity, localcluster, node_journal, wait_until

gpu_standins = localcluster.gpu_standins

BRIDGE = os.path.join(ROOT, "tools", "localcluster", "kmsg_journal.py")
XID79 = "NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."


USER_SPACE = "SYSLOG_FACILITY=1"   # records user space wrote to /dev/kmsg (not the node's boot entries)


def append(host, payload):
    with open(os.path.join(host, "dev", "kmsg"), "ab") as f:
        f.write(payload)


# --- the bridge on its own ---------------------------------------------------------------------

def test_bridge_follows_each_nodes_file_and_survives_restarts(tmp_path):
    nodes, hosts = tmp_path / "nodes", {}
    for i, name in enumerate(("node-a", "node-b")):
        host = nodes / name / "host"
        (host / "dev").mkdir(parents=True)
        (host / "etc").mkdir()
        (host / "etc" / "machine-id").write_text("%032x\n" % (i + 1))
        (host / "proc" / "sys" / "kernel" / "random").mkdir(parents=True)
        (host / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text("%08x-0000-4000-8000-%012x\n" % (i, i))
        hosts[name] = str(host)
    log = open(tmp_path / "bridge.log", "ab")

    def start():
        return subprocess.Popen([sys.executable, BRIDGE, "--nodes-dir", str(nodes), "--state-dir", str(tmp_path / "state")],
                                stdout=log, stderr=log)

    bridge = start()
    try:
        append(hosts["node-a"], b"<3>NVRM: " + XID79.encode() + b"\n")
        append(hosts["node-b"], b"<6>plain user text\n")
        wait_until(lambda: node_journal(hosts["node-a"], USER_SPACE) and node_journal(hosts["node-b"], USER_SPACE), 20,
                   "both journals")
        (a,), (b,) = node_journal(hosts["node-a"], USER_SPACE), node_journal(hosts["node-b"], USER_SPACE)
        assert (a["MESSAGE"], a["SYSLOG_IDENTIFIER"], a["PRIORITY"], a["_HOSTNAME"]) == (XID79, "NVRM", "3", "node-a")
        assert (a["_MACHINE_ID"], a["_BOOT_ID"]) == journal_identity(hosts["node-a"])
        assert (b["MESSAGE"], b["PRIORITY"], b["_HOSTNAME"]) == ("plain user text", "6", "node-b")
        assert "SYSLOG_IDENTIFIER" not in b

        bridge.kill()                        # no goodbye: the saved state must be enough
        bridge.wait()
        bridge = start()
        append(hosts["node-a"], b"<4>NVRM: NVRM: second\n")
        wait_until(lambda: len(node_journal(hosts["node-a"], USER_SPACE)) == 2, 20, "the second record")
        # A new /dev/kmsg file (a node's fresh kernel log) is read from its beginning.
        os.replace(os.path.join(hosts["node-b"], "dev", "kmsg"), os.path.join(hosts["node-b"], "dev", "kmsg.old"))
        append(hosts["node-b"], b"<3>after the rotation\n")
        wait_until(lambda: len(node_journal(hosts["node-b"], USER_SPACE)) == 2, 20, "node-b's new file")
        assert [e["MESSAGE"] for e in node_journal(hosts["node-a"], USER_SPACE)] == [XID79, "NVRM: second"]
        assert [e["MESSAGE"] for e in node_journal(hosts["node-b"], USER_SPACE)] == ["plain user text", "after the rotation"]
        # Each journal starts at the node's boot: the kernel's banner, then journald's first message.
        assert [(e["_TRANSPORT"], e["SYSLOG_IDENTIFIER"]) for e in node_journal(hosts["node-b"])[:2]] == [
            ("kernel", "kernel"), ("driver", "systemd-journald")]
        # One boot: the second record, after the restart, is later on the same monotonic clock.
        first, second = node_journal(hosts["node-a"], USER_SPACE)
        assert first["_BOOT_ID"] == second["_BOOT_ID"]
        assert int(first["__MONOTONIC_TIMESTAMP"]) < int(second["__MONOTONIC_TIMESTAMP"])
        # A reboot (gpu_standins.reboot: a new boot id, an empty kernel log) is a new boot in the
        # same journal: banner and "Journal started" again, then the record, under the new boot id.
        gpu_standins.reboot(hosts["node-a"])
        append(hosts["node-a"], b"<3>NVRM: after the reboot\n")
        wait_until(lambda: len(node_journal(hosts["node-a"], USER_SPACE)) == 3, 20, "the record after the reboot")
        boot_id = journal_identity(hosts["node-a"])[1]
        assert boot_id != first["_BOOT_ID"]
        new_boot = node_journal(hosts["node-a"], "_BOOT_ID=" + boot_id)
        assert [(e["SYSLOG_IDENTIFIER"], e["MESSAGE"]) for e in new_boot][1:] == [
            ("systemd-journald", "Journal started"), ("NVRM", "after the reboot")]
        assert new_boot[0]["SYSLOG_IDENTIFIER"] == "kernel" and new_boot[0]["__MONOTONIC_TIMESTAMP"] == "0"
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(10) == 0               # a clean stop on SIGTERM
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        log.close()
