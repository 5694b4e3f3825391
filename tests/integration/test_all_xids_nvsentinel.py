"""all_xids.yml with detector nvsentinel, in check mode, against the local control plane.

NVSentinel does not run here yet, so the run is the playbook's dry run: the real fault agent is
deployed and every XID and SXid goes through the whole NVSentinel path (nvsentinel_info's preflight
on a DaemonSet that only carries NVSentinel's image name, a stand-in for its chart's; the catalog's
expectation from the records the agent would write; nvsentinel_detection and nvsentinel_restore
in check mode), and the table lists what NVSentinel is expected to do for each. With NVSentinel
running, the same playbook run for real fills the observed column.
"""
import uuid

import pytest

from support import RUN_LABEL, ansible_playbook, run_playbook

NODE = "gpu-node-2"


@pytest.fixture(scope="module")
def agent():
    run_playbook("deploy_agent.yml", {"fault_injector_agent_pod_labels": {RUN_LABEL: "true"}})
    yield
    run_playbook("remove_agent.yml")


@pytest.fixture(scope="module")
def nvsentinel_namespace(core, apps):
    name = "it-nvs-" + uuid.uuid4().hex[:6]
    core.create_namespace({"metadata": {"name": name}})
    apps.create_namespaced_daemon_set(name, {
        "metadata": {"name": "nvsentinel-syslog-health-monitor-regular"},
        "spec": {"selector": {"matchLabels": {"app": "shm"}}, "template": {
            "metadata": {"labels": {"app": "shm"}},
            "spec": {"nodeSelector": {"it.gpu-resilience.io/no-node": "true"},
                     "containers": [{"name": "syslog-health-monitor",
                                     "image": "ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.19.0"}]}}}})
    yield name
    core.delete_namespace(name)


def rows(out):
    """{code: table line} from the printed table."""
    found = {}
    for line in out.splitlines():
        text = line.strip().strip('",')
        words = text.split()
        if words and words[0].isdigit():
            found[words[0]] = text
        elif len(words) > 1 and words[0] == "SXid" and words[1].isdigit():
            found["SXid " + words[1]] = text
    return found


def test_all_xids_nvsentinel_dry_run_lists_what_nvsentinel_must_do(agent, nvsentinel_namespace):
    extra = {"all_xids_node": NODE, "all_xids_detector": "nvsentinel", "all_xids_codes": "13,79",
             "all_xids_sxid_codes": "24007", "all_xids_nvsentinel_namespace": nvsentinel_namespace}
    rc, out, recap = ansible_playbook("all_xids.yml", extra, check=True)
    assert rc == 0 and recap["failed"] == 0, out[-6000:]
    found = rows(out)
    assert "condition RESTART_BM + condition RESTART_BM" in found["79"] and "none -" in found["79"], found
    assert "event NONE" in found["13"] and "condition CONTACT_SUPPORT" in found["SXid 24007"], found
    assert "3 XIDs and SXids" in out
