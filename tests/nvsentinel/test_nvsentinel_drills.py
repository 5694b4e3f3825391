"""Drills with NVIDIA NVSentinel as the detector, against the real NVSentinel, in each of its stages.

xid79_e2e.yml with fault_scenario_detector=nvsentinel, as a user runs it: the fault agent, the demo
inference workload (real requests, the CUDA shim), NVSentinel built from source and deployed by its
chart in the stage under test (tools/local-cluster up --nvsentinel --nvsentinel-stage). Each drill
must pass, phase by phase, with exactly its stage's marks, and leave every node mark, node
condition, Event and object it could touch as it found them (the dump below, taken before and
after); so must a drill stopped at the end of each of NVSentinel's phases. Then all_xids.yml
compares NVSentinel's reports with the catalog for a subset of XIDs and an SXid.

Cost: NVSentinel reads the journal every 15 s (the chart's --polling-interval), so each drill waits
up to that for detection. The drills that need no workload (the aborts) run without one, one
cluster serves every stage, and all_xids runs a representative subset (the full run's wall time is
in the README).

Every drill that NVSentinel quarantines is on one node: fault-quarantine's circuit breaker trips,
for good, once half of the GPU nodes (2 of 3) were cordoned within 5 minutes.
"""
import json
import os
import subprocess
import time

import pytest
from kubernetes import client

from support import ROOT, ansible_playbook, run_playbook
# The integration tests' drill helpers: the variables, and the dump of everything a drill could touch.
from test_drills import VARS, differences, dump

NODE = "gpu-node-1"
REBOOT = ("janitor.dgxc.nvidia.com", "v1alpha1", "rebootnodes")
PHASES = ["preflight", "baseline", "shim-passthrough", "inject", "workload-fails", "detect", "quarantine",
          "remove-shim", "drain", "remediation", "reschedule", "recovery", "cleanup"]

pytestmark = pytest.mark.usefixtures("nvsentinel_cluster")


def local_cluster_stage(stage):
    """Redeploy NVSentinel in a stage on the running cluster (the chart rendered again, applied, pruned)."""
    started = time.monotonic()
    up = subprocess.run([os.path.join(ROOT, "tools", "local-cluster"), "up", "--nodes", "3", "--nvsentinel",
                         "--nvsentinel-stage", stage], capture_output=True, text=True, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    print("\n[nvsentinel] stage %s deployed in %.1f s" % (stage, time.monotonic() - started))


@pytest.fixture(scope="module")
def stack(nvsentinel_cluster):
    """The fault agent and the demo workload; NVSentinel back in stage full afterwards."""
    run_playbook("deploy_agent.yml", VARS)
    run_playbook("demo_workload.yml", VARS)
    yield
    ansible_playbook("demo_workload.yml", dict(VARS, demo_workload_state="absent"))
    local_cluster_stage("full")


def everything(api_client):
    """The integration tests' dump, and what NVSentinel writes besides node marks and conditions:
    its Events about the nodes and fault-remediation's objects."""
    out = dump(api_client)
    core = client.CoreV1Api(api_client)
    out["node_events"] = sorted("%s %s %s" % (e.involved_object.name, e.reason, e.metadata.name)
                                for e in core.list_namespaced_event("default").items if e.involved_object.kind == "Node")
    out["remediation"] = sorted(o["metadata"]["name"]
                                for o in client.CustomObjectsApi(api_client).list_cluster_custom_object(*REBOOT)["items"])
    return out


def drill(tmp_path, stage, **extra):
    """xid79_e2e.yml with NVSentinel in `stage` on NODE; (rc, output, the JSON timeline or None)."""
    drill_id = "it-nvs-%s-%d" % (stage, time.time() * 1000 % 10 ** 9)
    extra = dict(VARS, fault_scenario_detector="nvsentinel", fault_scenario_nvsentinel_stage=stage,
                 fault_scenario_target_node=NODE, fault_scenario_drill_id=drill_id,
                 fault_scenario_report_dir=str(tmp_path), **extra)
    rc, out, _recap = ansible_playbook("xid79_e2e.yml", extra, timeout=900)
    path = tmp_path / (drill_id + "-timeline.json")
    return rc, out, json.loads(path.read_text()) if path.exists() else None


def phases(timeline):
    return {p["name"]: p for p in timeline["phases"]}


def events(timeline, kind):
    return [e for e in timeline["events"] if e["kind"] == kind]


def passes_and_leaves_all_as_it_was(api_client, tmp_path, stage, **extra):
    """Run a whole drill; check it passed with its self-check and the dump is as before. Returns the timeline."""
    before = everything(api_client)
    rc, out, timeline = drill(tmp_path, stage, **extra)
    assert rc == 0, out[-8000:]
    assert [p["name"] for p in timeline["phases"]] == PHASES
    assert all(p["status"] == "passed" for p in timeline["phases"]), timeline["phases"]
    assert timeline["verification"]["as_before"] is True, timeline["verification"]
    assert differences(before, everything(api_client)) == []
    # Detection: the catalog's two XID 79 conditions, each checked (ErrorCode, PCI, UUID, action).
    assert phases(timeline)["detect"]["message"].startswith(
        NODE + ": SysLogsXIDError condition ErrorCode 79 RESTART_BM; SysLogsGPUFallenOff condition ErrorCode "
        "GPU_FALLEN_OFF_BUS RESTART_BM after"), phases(timeline)["detect"]
    assert 0 < timeline["summary"]["time_to_detect"] < 20   # the journal is read every 15 s
    return timeline


# --- stage full ----------------------------------------------------------------------------------------

def test_full_stage_cordons_drains_remediates_and_the_drill_puts_all_back(stack, api_client, tmp_path):
    timeline = passes_and_leaves_all_as_it_was(api_client, tmp_path, "full", fault_scenario_drain="detector")
    by = phases(timeline)
    assert "cordoned by fault-quarantine; label k8saas.nvidia.com/cordon-by=NVSentinel" in by["quarantine"]["message"]
    assert "state drain-succeeded" in by["drain"]["message"] and "by the drill" not in by["drain"]["message"]
    assert "RebootNode maintenance-%s-" % NODE in by["remediation"]["message"]
    assert "state remediation-succeeded" in by["remediation"]["message"]
    summary = timeline["summary"]
    # The condition (platform-connectors) and the cordon (fault-quarantine) both follow the same
    # health event, in either order; drain, remediation and recovery come after both.
    assert max(summary["time_to_detect"], summary["time_to_quarantine"]) <= summary["time_to_drain"] \
        <= summary["time_to_remediate"] < summary["time_to_recover"], summary
    assert [e["detail"][:12] for e in events(timeline, "remediation")] == ["NVSentinel: "]


@pytest.mark.parametrize("phase", ["detect", "quarantine", "drain", "remediation"])
def test_full_stage_drill_stopped_at_each_nvsentinel_phase_puts_all_back(stack, api_client, tmp_path, phase):
    """Without a workload (NVSentinel's phases do not need one): NVSentinel is mid-way through its
    pipeline when the cleanup starts, and must end as it began."""
    before = everything(api_client)
    rc, out, timeline = drill(tmp_path, "full", fault_scenario_workload_name="", fault_scenario_abort_at=phase)
    assert rc != 0 and "stopped at the end of phase %s" % phase in out, out[-4000:]
    statuses = {p["name"]: p["status"] for p in timeline["phases"]}
    assert statuses[phase] == "failed" and statuses["cleanup"] == "passed", timeline["phases"]
    assert timeline["verification"]["as_before"] is True, timeline["verification"]
    assert differences(before, everything(api_client)) == []


# --- stage dry-run -------------------------------------------------------------------------------------

def test_dry_run_stage_records_decisions_acts_on_nothing_and_the_drill_puts_all_back(stack, api_client, tmp_path):
    local_cluster_stage("dry-run")
    timeline = passes_and_leaves_all_as_it_was(api_client, tmp_path, "dry-run")
    by = phases(timeline)
    # fault-quarantine's decision without a cordon; node-drainer's without an eviction (the drill's
    # own drain moved the workload); fault-remediation created nothing.
    assert by["quarantine"]["message"].startswith(NODE + ": annotation quarantineHealthEvent"), by["quarantine"]
    assert "cordon" not in by["quarantine"]["message"]
    assert "state draining" in by["drain"]["message"] or "state drain-succeeded" in by["drain"]["message"]
    assert "by the drill" in by["drain"]["message"]
    assert "stage dry-run: fault-remediation creates nothing" in by["remediation"]["message"]
    assert events(timeline, "remediation") == []


# --- stage monitor -------------------------------------------------------------------------------------

def test_monitor_stage_only_reports_and_the_drill_puts_all_back(stack, api_client, tmp_path):
    local_cluster_stage("monitor")
    timeline = passes_and_leaves_all_as_it_was(api_client, tmp_path, "monitor")
    by = phases(timeline)
    for phase in ("quarantine", "remediation"):
        assert by[phase]["message"] == NODE + ": stage monitor: no NVSentinel mark (in stage monitor NVSentinel only " \
                                              "reports)", by[phase]
    assert events(timeline, "quarantine") == [] and events(timeline, "remediation") == []


def test_a_drill_expecting_another_stage_is_refused_before_any_change(stack, api_client, tmp_path):
    before = everything(api_client)
    rc, out, timeline = drill(tmp_path, "full")
    assert rc != 0
    assert ("the drill expects NVSentinel's stage full, but NVSentinel in namespace nvsentinel runs fault-quarantine "
            "not deployed, node-drainer not deployed, fault-remediation not deployed (stage monitor)") in out
    assert phases(timeline)["preflight"]["status"] == "failed" and timeline["verification"] is None
    assert differences(before, everything(api_client)) == []


def rows(out):
    """{code: the all_xids table line} from the printed table."""
    found = {}
    for line in out.splitlines():
        words = line.strip().strip('",').split()
        if words and words[0].isdigit():
            found[words[0]] = " ".join(words)
        elif len(words) > 1 and words[0] == "SXid" and words[1].isdigit():
            found["SXid " + words[1]] = " ".join(words)
    return found


def test_all_xids_matches_nvsentinels_reports(stack, api_client):
    """A representative subset of all_xids.yml against NVSentinel (stage monitor, as the playbook
    asks): a non-fatal XID (an Event), a GPU reset (COMPONENT_RESET: the node has GPU metadata),
    XID 79's two conditions, an NVLink5 XID decoded by driver branch, and a fatal SXid attributed
    to its GPU through the node's NVLink table. Every code costs up to one 15 s journal poll; the
    whole catalog's run is in the README."""
    before = everything(api_client)
    # The playbook's NVSwitch port is GPU 0's first NVLink on the lane's nodes (localcluster.node_nvlinks).
    extra = {"all_xids_node": NODE, "all_xids_detector": "nvsentinel", "all_xids_codes": "13,48,79,145",
             "all_xids_sxid_codes": "24007", "all_xids_nvsentinel_driver_version": "570.148.08"}
    rc, out, _recap = ansible_playbook("all_xids.yml", extra, timeout=900)
    assert rc == 0, out[-6000:]
    found = rows(out)
    assert "5 XIDs and SXids, 0 mismatches" in out
    assert found["13"].endswith("event NONE event NONE yes"), found
    assert found["79"].endswith("condition RESTART_BM + condition RESTART_BM condition RESTART_BM + condition "
                                "RESTART_BM yes"), found
    assert found["SXid 24007"].endswith("condition CONTACT_SUPPORT condition CONTACT_SUPPORT yes"), found
    assert differences(before, everything(api_client)) == []
