"""The node journal bridge (tools/localcluster/kmsg_journal.py): kernel records written to a
simulated node's /dev/kmsg appear in that node's systemd journal as journald would store them,
read back with journalctl, which uses the same libsystemd code as NVSentinel's sdjournal reader.

The cluster must run with the bridge (`tools/local-cluster up --journal`, as tools/test.sh starts
it); the first test runs a bridge of its own on a directory of pretend nodes.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support import ROOT, RUN_LABEL, RUNNER_STATE, ansible_module, localcluster, run_playbook, wait_until

BRIDGE = os.path.join(ROOT, "tools", "localcluster", "kmsg_journal.py")
XID79 = "NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."


def journal(host, *matches):
    """The entries of a node's journal (journalctl -o json), oldest first."""
    directory = os.path.join(host, "var", "log", "journal")
    if not os.path.isdir(directory):
        return []
    out = subprocess.run(["journalctl", "--directory=" + directory, "-o", "json", "--no-pager", *matches],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [json.loads(line) for line in out.splitlines()]


def identity(host):
    with open(os.path.join(host, "etc", "machine-id")) as f:
        machine_id = f.read().strip()
    with open(os.path.join(host, "proc", "sys", "kernel", "random", "boot_id")) as f:
        boot_id = f.read().strip().replace("-", "")
    return machine_id, boot_id


def at_least(count, host, *matches):
    """A check for wait_until: the node's journal entries once there are `count` of them."""
    def check():
        entries = journal(host, *matches)
        return entries if len(entries) >= count else None
    return check


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
        wait_until(lambda: journal(hosts["node-a"]) and journal(hosts["node-b"]), 20, "both journals")
        (a,), (b,) = journal(hosts["node-a"]), journal(hosts["node-b"])
        assert (a["MESSAGE"], a["SYSLOG_IDENTIFIER"], a["PRIORITY"], a["_HOSTNAME"]) == (XID79, "NVRM", "3", "node-a")
        assert (a["_MACHINE_ID"], a["_BOOT_ID"]) == identity(hosts["node-a"])
        assert (b["MESSAGE"], b["PRIORITY"], b["_HOSTNAME"]) == ("plain user text", "6", "node-b")
        assert "SYSLOG_IDENTIFIER" not in b

        bridge.kill()                        # no goodbye: the saved state must be enough
        bridge.wait()
        bridge = start()
        append(hosts["node-a"], b"<4>NVRM: NVRM: second\n")
        wait_until(lambda: len(journal(hosts["node-a"])) == 2, 20, "the second record")
        # A new /dev/kmsg file (a node's fresh kernel log) is read from its beginning.
        os.replace(os.path.join(hosts["node-b"], "dev", "kmsg"), os.path.join(hosts["node-b"], "dev", "kmsg.old"))
        append(hosts["node-b"], b"<3>after the rotation\n")
        wait_until(lambda: len(journal(hosts["node-b"])) == 2, 20, "node-b's new file")
        assert [e["MESSAGE"] for e in journal(hosts["node-a"])] == [XID79, "NVRM: second"]
        assert [e["MESSAGE"] for e in journal(hosts["node-b"])] == ["plain user text", "after the rotation"]
        # One boot: the second record, after the restart, is later on the same monotonic clock.
        first, second = journal(hosts["node-a"])
        assert first["_BOOT_ID"] == second["_BOOT_ID"]
        assert int(first["__MONOTONIC_TIMESTAMP"]) < int(second["__MONOTONIC_TIMESTAMP"])
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(10) == 0               # a clean stop on SIGTERM
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        log.close()


# --- on the cluster, through the fault agent ---------------------------------------------------

@pytest.fixture(scope="module")
def cluster_journal():
    """The cluster's bridge, which must be running: tests that need it fail otherwise."""
    layout = localcluster.Layout(os.environ.get("LOCALCLUSTER_DIR", ""), int(os.environ.get("LOCALCLUSTER_PORT_BASE", "26000")))
    info = localcluster.read_info(layout)
    assert info.get("journal") and localcluster.running_pid(layout, "kmsg-journal"), \
        "the cluster runs no node journal bridge: start it with `tools/local-cluster up --journal`"
    return layout, info


@pytest.fixture(scope="module")
def agent(cluster_journal):
    run_playbook("deploy_agent.yml", {"fault_injector_agent_pod_labels": {RUN_LABEL: "true"}})
    yield
    run_playbook("remove_agent.yml")


def node_host(node):
    return os.path.join(RUNNER_STATE, "nodes", node, "host")


def test_injected_xid_lands_in_the_nodes_journal_once(cluster_journal, agent):
    layout, info = cluster_journal
    host = node_host("gpu-node-2")
    before = {n: len(journal(node_host(n))) for n in ("gpu-node-0", "gpu-node-1", "gpu-node-2")}
    started = time.time()
    result = ansible_module("gpu_resilience.fault_injection.gpu_xid_inject",
                            {"node": "gpu-node-2", "gpu": "0", "xid": 79, "drill": "it-journal"})
    assert not result.get("failed"), result
    records = result["faults"][0]["records"]          # as written: "NVRM: NVRM: Xid ..."
    entries = wait_until(at_least(before["gpu-node-2"] + len(records), host, "_TRANSPORT=kernel"), 30,
                         "the XID's records in gpu-node-2's journal")
    new = entries[before["gpu-node-2"]:]
    machine_id, boot_id = identity(host)
    # journald's MESSAGE is the driver's own line: the leading "NVRM:" went to SYSLOG_IDENTIFIER.
    assert [e["MESSAGE"] for e in new] == [r[len("NVRM: "):] for r in records]
    assert XID79 in [e["MESSAGE"] for e in new]
    assert "NVRM: The NVIDIA GPU 0000:53:00.0\nNVRM: (PCI ID:" in new[-1]["MESSAGE"]
    for entry in new:
        assert {k: entry[k] for k in ("_TRANSPORT", "SYSLOG_IDENTIFIER", "PRIORITY", "SYSLOG_FACILITY",
                                      "_HOSTNAME", "_MACHINE_ID", "_BOOT_ID")} == {
            "_TRANSPORT": "kernel", "SYSLOG_IDENTIFIER": "NVRM", "PRIORITY": "3", "SYSLOG_FACILITY": "1",
            "_HOSTNAME": "gpu-node-2", "_MACHINE_ID": machine_id, "_BOOT_ID": boot_id}
        assert started - 1 <= int(entry["__REALTIME_TIMESTAMP"]) / 1e6 <= time.time()
    assert {n: len(journal(node_host(n))) for n in ("gpu-node-0", "gpu-node-1")} == \
        {n: before[n] for n in ("gpu-node-0", "gpu-node-1")}

    # A restarted bridge goes on from where it was: nothing twice, the next record once.
    localcluster.terminate([localcluster.running_pid(layout, "kmsg-journal")], grace=10)
    localcluster.respawn_missing(layout, info["bin_dir"], "", info)
    result = ansible_module("gpu_resilience.fault_injection.gpu_xid_inject",
                            {"node": "gpu-node-2", "gpu": "1", "xid": 13, "drill": "it-journal"})
    assert not result.get("failed"), result
    count = len(entries) + len(result["faults"][0]["records"])
    entries = wait_until(at_least(count, host, "_TRANSPORT=kernel"), 30, "XID 13 after the restart")
    assert len(entries) == count
    assert [e["MESSAGE"] for e in entries[before["gpu-node-2"]:]].count(XID79) == 1
