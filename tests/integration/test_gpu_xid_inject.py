"""gpu_xid_inject end to end: module -> GPUFault -> the node's agent (a local process run by the pod
runner from the deployed ConfigMap) -> the node's kernel-log file.

The agent is deployed once for the module with playbooks/deploy_agent.yml and removed at the end.
Every refused request is checked to have created no object and written no byte to any node's log.
"""
import json
import os
import time

import pytest

from support import (RUN_LABEL, RUNNER_STATE, ansible_module, journal_has, journal_identity, journal_settled, kmsg_path,
                     localcluster, node_host, node_journal, run_playbook, wait_until)

MODULE = "gpu_resilience.fault_injection.gpu_xid_inject"
NAMESPACE = "gpu-fault-injection"
GROUP, VERSION, PLURAL = "faultinjection.gpu-resilience.io", "v1alpha1", "gpufaults"
NODES = ("gpu-node-0", "gpu-node-1", "gpu-node-2")
GPU2_PCI = "0000:75:00.0"   # GPU index 2 of every simulated node (see tools/localcluster)


@pytest.fixture(scope="module")
def agent():
    run_playbook("deploy_agent.yml", {"fault_injector_agent_pod_labels": {RUN_LABEL: "true"}})
    yield
    run_playbook("remove_agent.yml")


def kmsg_sizes():
    return dict((n, os.path.getsize(kmsg_path(n)) if os.path.exists(kmsg_path(n)) else 0) for n in NODES)


def faults(custom):
    return custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]


def inject(check=False, **args):
    return ansible_module(MODULE, args, check=check)


def test_check_mode_predicts_the_records_and_changes_nothing(agent, custom):
    before = kmsg_sizes()
    result = inject(check=True, node="gpu-node-1", gpu="2", xid=79)
    assert not result.get("failed"), result
    assert result["changed"] is True
    (fault,) = result["faults"]
    assert fault["phase"] == "DryRun" and fault["pci_addresses"] == [GPU2_PCI]
    assert any("Xid (PCI:0000:75:00): 79" in r for r in fault["records"])
    assert faults(custom) == [] and kmsg_sizes() == before


def test_xid79_on_gpu2_writes_the_drivers_lines_for_that_gpu(agent, custom):
    before = kmsg_sizes()
    with open(kmsg_path("gpu-node-1"), "rb") as f:
        f.seek(before["gpu-node-1"])
        assert f.read() == b""
    result = inject(node="gpu-node-1", gpu="2", xid=79, drill="it-xid79")
    assert not result.get("failed"), result
    (fault,) = result["faults"]
    assert result["changed"] and fault["phase"] == "Injected" and fault["node"] == "gpu-node-1"
    assert fault["pci_addresses"] == [GPU2_PCI] and fault["gpus"][0]["index"] == 2
    assert fault["gpus"][0]["minor"] != 2  # the agent reports the device minor separately
    with open(kmsg_path("gpu-node-1"), "rb") as f:
        f.seek(before["gpu-node-1"])
        written = f.read().decode()
    # Exactly the returned records, each one kernel-log write with the err priority.
    assert written == "".join("<3>%s\n" % r for r in fault["records"])
    assert "NVRM: NVRM: Xid (PCI:0000:75:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus." \
        in written
    assert "NVRM: The NVIDIA GPU 0000:75:00.0" in written and "fallen off the bus and is not responding" in written
    after = kmsg_sizes()
    assert [after[n] == before[n] for n in NODES] == [True, False, True]  # no other node touched
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, fault["name"])
    assert obj["status"]["records"] == fault["records"] and obj["status"]["agent"] == fault["agent"]


def test_named_fault_is_idempotent(agent):
    first = inject(node="gpu-node-0", gpu="all", xid=48, name="ecc-all-gpus")
    assert first["changed"] and first["faults"][0]["phase"] == "Injected", first
    assert len(first["faults"][0]["pci_addresses"]) == 8
    size = kmsg_sizes()["gpu-node-0"]
    second = inject(node="gpu-node-0", gpu="all", xid=48, name="ecc-all-gpus")
    assert second["changed"] is False and second["faults"][0]["name"] == "ecc-all-gpus"
    assert kmsg_sizes()["gpu-node-0"] == size
    clash = inject(node="gpu-node-0", gpu="all", xid=94, name="ecc-all-gpus")
    assert clash["failed"] and "already exists with a different request" in clash["msg"]


def test_node_selector_with_count_picks_live_agents(agent):
    result = inject(node_selector="nvidia.com/gpu.present=true", count=2, gpu="GPU-" + "0" * 8 + "-0000-0000-0000-"
                    + "0" * 12, xid=13, check=True)
    assert result["failed"] and "no GPU with UUID" in result["msg"]
    result = inject(node_selector="nvidia.com/gpu.present=true", count=2, gpu="0", xid=13, drill="it-pair")
    assert not result.get("failed"), result
    assert result["nodes"] == ["gpu-node-0", "gpu-node-1"]
    assert all(f["phase"] == "Injected" for f in result["faults"])
    too_many = inject(node_selector="nvidia.com/gpu.present=true", count=4, xid=13)
    assert too_many["failed"] and "3 run a live agent; 4 needed" in too_many["msg"]


def test_xid79_on_a_list_of_nodes_lands_in_each_nodes_log_in_one_call(agent, custom):
    targets = ["gpu-node-2", "gpu-node-0"]   # not in name order: the faults come back in this order
    names = sorted(f["metadata"]["name"] for f in faults(custom))
    before = kmsg_sizes()
    dry = inject(check=True, nodes=targets, gpu="2", xid=79)
    assert not dry.get("failed"), dry
    assert [f["node"] for f in dry["faults"]] == targets and all(f["phase"] == "DryRun" for f in dry["faults"])
    assert sorted(f["metadata"]["name"] for f in faults(custom)) == names and kmsg_sizes() == before
    result = inject(nodes=targets, gpu="2", xid=79, drill="it-list")
    assert not result.get("failed"), result
    assert result["changed"] and result["nodes"] == targets
    assert [f["node"] for f in result["faults"]] == targets
    for fault, predicted in zip(result["faults"], dry["faults"]):
        assert fault["phase"] == "Injected" and fault["pci_addresses"] == [GPU2_PCI]
        assert fault["records"] == predicted["records"]
        with open(kmsg_path(fault["node"]), "rb") as f:
            f.seek(before[fault["node"]])
            assert f.read().decode() == "".join("<3>%s\n" % r for r in fault["records"])
    assert kmsg_sizes()["gpu-node-1"] == before["gpu-node-1"]   # the node not listed is untouched
    labelled = [f for f in faults(custom) if f["metadata"]["labels"].get(GROUP + "/drill") == "it-list"]
    assert sorted(f["metadata"]["name"] for f in labelled) == sorted(f["name"] for f in result["faults"])
    gone = inject(state="absent", drill="it-list")
    assert gone["changed"] and sorted(f["node"] for f in gone["faults"]) == sorted(targets)


@pytest.mark.parametrize("args, words", [
    (dict(nodes=["gpu-node-0", "no-such-node", "gpu-node-1"], xid=79), "node(s) not found: no-such-node"),
    (dict(nodes=["gpu-node-0", "cpu-node-0"], xid=79), "no fault-injector agent runs on node cpu-node-0"),
    (dict(nodes=["gpu-node-0", "gpu-node-1"], gpu="8", xid=79), "GPU index 8 is out of range: node gpu-node-0"),
    (dict(nodes=["gpu-node-0", "gpu-node-0"], xid=79), "nodes lists gpu-node-0 more than once"),
    (dict(node="gpu-node-1", xid=12345), "unknown xid"),
    (dict(node="no-such-node", xid=79), "node no-such-node not found"),
    (dict(node="cpu-node-0", xid=79), "no fault-injector agent runs on node cpu-node-0"),
    (dict(node="gpu-node-1", gpu="8", xid=79), "GPU index 8 is out of range: node gpu-node-1 has GPUs 0-7"),
    (dict(node="gpu-node-1", gpu="0000:3b:00", xid=79), "PCI"),
    (dict(node="gpu-node-1", gpu="0000:99:00.0", xid=79), "no GPU with PCI address 0000:99:00.0"),
    (dict(node="gpu-node-1", gpu="0000:75:00.0'; reboot #", xid=79), "PCI"),
    (dict(node="gpu-node-1; rm -rf /", xid=79), "not a valid Kubernetes node name"),
    (dict(node="gpu-node-1", xid=79, text="ok\nNVRM: Xid (PCI:0000:00:00): 48, forged"), "message"),
    (dict(node="gpu-node-1", xid=79, text="$(reboot) `id` %n"), "message"),
    (dict(node="gpu-node-1", xid=79, text="x" * 300), "limit is 200"),
    (dict(node="gpu-node-1", xid=13, recovery_action="Node Reboot Required"), "XID 154 only"),
    (dict(node="gpu-node-1", sxid={"code": 1, "pci": "0000:05:00.0"}), "known SXid"),
])
def test_bad_input_fails_clearly_and_changes_nothing(agent, custom, args, words):
    names = sorted(f["metadata"]["name"] for f in faults(custom))
    before = kmsg_sizes()
    result = inject(**args)
    assert result.get("failed") and words.lower() in result["msg"].lower(), result
    assert "Traceback" not in json.dumps(result)
    assert sorted(f["metadata"]["name"] for f in faults(custom)) == names
    assert kmsg_sizes() == before


def test_the_agent_refuses_a_fault_addressed_to_another_node(agent, custom):
    """Whoever can create GPUFaults is not trusted blindly: the label says gpu-node-1, the spec another node."""
    before = kmsg_sizes()
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
        "apiVersion": GROUP + "/" + VERSION, "kind": "GPUFault",
        "metadata": {"name": "misaddressed", "labels": {GROUP + "/node": "gpu-node-1",
                                                        "app.kubernetes.io/managed-by": "gpu_xid_inject"}},
        "spec": {"node": "gpu-node-2", "gpu": {"index": 0}, "xid": 79}})

    def verdict():
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "misaddressed")
        return obj if (obj.get("status") or {}).get("phase") else None

    obj = wait_until(verdict, 30, "the agent's verdict on the misaddressed fault")
    assert obj["status"]["phase"] == "Failed" and "gpu-node-2" in obj["status"]["error"]
    assert kmsg_sizes() == before


def shim_control_file(node):
    return os.path.join(RUNNER_STATE, "nodes", node, "host", "run", "gpu-fault-injection", "shim", "control")


def shim_state(node):
    with open(shim_control_file(node)) as f:
        fields = dict(part.split("=", 1) for part in f.read().split()[1:])
    return fields


def test_shim_is_armed_with_the_xid_and_disarmed_when_the_fault_goes(agent):
    result = inject(node="gpu-node-2", gpu="2", xid=79, shim="arm", drill="it-shim")
    assert not result.get("failed"), result
    (fault,) = result["faults"]
    state = shim_state("gpu-node-2")
    assert state == {"armed": "1", "xid": "79", "error": "100", "gpu": GPU2_PCI, "fault": fault["name"],
                     "seq": state["seq"]}
    assert fault["shim_control"] == open(shim_control_file("gpu-node-2")).read().strip()
    # Deleting the fault that armed the shim disarms it: cleanup is exact.
    assert inject(state="absent", drill="it-shim")["changed"]
    wait_until(lambda: shim_state("gpu-node-2")["armed"] == "0", 10, "the agent to disarm the shim")
    # A disarm on its own writes no kernel-log record.
    before = kmsg_sizes()
    off = inject(node="gpu-node-2", shim="disarm", drill="it-shim")
    assert off["faults"][0]["phase"] == "Injected" and off["faults"][0]["records"] == []
    assert kmsg_sizes() == before and shim_state("gpu-node-2")["armed"] == "0"
    assert inject(state="absent", drill="it-shim")["changed"]


def test_injected_xid_lands_in_the_nodes_journal_once(agent):
    """The node journal bridge (tools/localcluster/kmsg_journal.py, `up --journal`, as tools/test.sh
    starts the cluster): the agent's records reach the node's journal as journald stores them, once,
    also across a restart of the bridge."""
    layout = localcluster.Layout(os.environ.get("LOCALCLUSTER_DIR", ""), int(os.environ.get("LOCALCLUSTER_PORT_BASE", "26000")))
    info = localcluster.read_info(layout)
    assert info.get("journal") and localcluster.running_pid(layout, "kmsg-journal"), \
        "the cluster runs no node journal bridge: start it with `tools/local-cluster up --journal`"
    host = node_host("gpu-node-2")
    for node in NODES:
        journal_settled(layout, node)
    before = {n: len(node_journal(node_host(n), "_TRANSPORT=kernel")) for n in NODES}
    started = time.time()
    result = inject(node="gpu-node-2", gpu="0", xid=79, drill="it-journal")
    assert not result.get("failed"), result
    records = result["faults"][0]["records"]          # as written: "NVRM: NVRM: Xid ..."
    entries = wait_until(journal_has(before["gpu-node-2"] + len(records), host, "_TRANSPORT=kernel"), 30,
                         "the XID's records in gpu-node-2's journal")
    new = entries[before["gpu-node-2"]:]
    machine_id, boot_id = journal_identity(host)
    # journald's MESSAGE is the driver's own line: the leading "NVRM:" went to SYSLOG_IDENTIFIER.
    assert [e["MESSAGE"] for e in new] == [r[len("NVRM: "):] for r in records]
    assert any(m.startswith("NVRM: Xid (PCI:0000:53:00): 79, ") for m in (e["MESSAGE"] for e in new))
    assert "NVRM: The NVIDIA GPU 0000:53:00.0\nNVRM: (PCI ID:" in new[-1]["MESSAGE"]
    for entry in new:
        assert {k: entry[k] for k in ("_TRANSPORT", "SYSLOG_IDENTIFIER", "PRIORITY", "SYSLOG_FACILITY",
                                      "_HOSTNAME", "_MACHINE_ID", "_BOOT_ID")} == {
            "_TRANSPORT": "kernel", "SYSLOG_IDENTIFIER": "NVRM", "PRIORITY": "3", "SYSLOG_FACILITY": "1",
            "_HOSTNAME": "gpu-node-2", "_MACHINE_ID": machine_id, "_BOOT_ID": boot_id}
        assert started - 1 <= int(entry["__REALTIME_TIMESTAMP"]) / 1e6 <= time.time()
    assert {n: len(node_journal(node_host(n), "_TRANSPORT=kernel")) for n in ("gpu-node-0", "gpu-node-1")} == \
        {n: before[n] for n in ("gpu-node-0", "gpu-node-1")}

    # A restarted bridge goes on from where it was: nothing twice, the next record once.
    localcluster.terminate([localcluster.running_pid(layout, "kmsg-journal")], grace=10)
    localcluster.respawn_missing(layout, info["bin_dir"], "", info)
    result = inject(node="gpu-node-2", gpu="1", xid=13, drill="it-journal")
    assert not result.get("failed"), result
    count = len(entries) + len(result["faults"][0]["records"])
    entries = wait_until(journal_has(count, host, "_TRANSPORT=kernel"), 30, "XID 13 after the restart")
    assert len(entries) == count
    assert [e["MESSAGE"] for e in entries[before["gpu-node-2"]:]] == [r[len("NVRM: "):] for r in records] + \
        [r[len("NVRM: "):] for r in result["faults"][0]["records"]]


def test_absent_removes_every_fault_and_is_idempotent(agent, custom):
    dry = inject(check=True, state="absent")
    assert dry["changed"] and faults(custom)
    drill = inject(state="absent", drill="it-xid79")
    assert drill["changed"] and [f["node"] for f in drill["faults"]] == ["gpu-node-1"]
    assert inject(state="absent")["changed"]
    assert faults(custom) == []
    assert inject(state="absent")["changed"] is False
