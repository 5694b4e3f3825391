"""NVIDIA NVSentinel, built from source and deployed by its own chart, against the collection's faults.

The fault agent (playbooks/deploy_agent.yml) injects through gpu_xid_inject; the node's journal
bridge feeds the record to the node's journal; NVSentinel's syslog-health-monitor reads it there,
platform-connectors sets the node condition, fault-quarantine cordons, node-drainer drains and
fault-remediation creates its remediation object. The audit log tells who wrote what. Each test
uses its own node and puts back everything NVSentinel changed on it (conditions, marks, Events, the
remediation object), so later tests and runs see a clean cluster.
"""
import datetime
import json
import os
import sys

import pytest

from support import RUN_LABEL, ansible_module, localcluster, run_playbook, wait_until
# Run here as well, on this cluster: PostgreSQL and the pod sandboxes' relays are on loopback too.
from test_control_plane import test_every_socket_of_the_cluster_is_on_loopback  # noqa: F401 pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
sys.path.insert(0, os.path.join(ROOT, "tools", "localcluster"))
import nvsentinel  # noqa: E402
import nvsentinel_source  # noqa: E402
import xid_catalog  # noqa: E402

NS = nvsentinel.NAMESPACE
SA = "system:serviceaccount:%s:" % NS
CHECK = "SysLogsXIDError"
REBOOT = ("janitor.dgxc.nvidia.com", "v1alpha1", "rebootnodes")
REMEDIATION_ANNOTATION = "latestFaultRemediationState"   # fault-remediation's, on the node
STATE_LABEL = "dgxc.nvidia.com/nvsentinel-state"
# syslog-health-monitor polls the journal every 15 s (fixed in the chart): detection takes up to that.
DETECT_TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("nvsentinel_cluster")


@pytest.fixture(scope="module")
def agent(nvsentinel_cluster):
    """The fault agent on every GPU node; it goes with the cluster (its removal is tested elsewhere)."""
    run_playbook("deploy_agent.yml", {"fault_injector_agent_pod_labels": {RUN_LABEL: "true"}})


def audit_records(since):
    """The API server's audit records from byte offset `since` of its log."""
    with open(os.path.join(os.environ["LOCALCLUSTER_DIR"], "audit.log"), "rb") as f:
        f.seek(since)
        return [json.loads(line) for line in f if line.strip()]


def audit_mark():
    return os.path.getsize(os.path.join(os.environ["LOCALCLUSTER_DIR"], "audit.log"))


def writes_to_node(records, node):
    """(user, verb, subresource) of every change of the node, in order."""
    return [(r["user"]["username"], r["verb"], r["objectRef"].get("subresource", ""))
            for r in records
            if r.get("objectRef", {}).get("resource") == "nodes" and r["objectRef"].get("name") == node
            and r["verb"] in ("update", "patch") and r.get("responseStatus", {}).get("code", 200) < 300]


def condition(node_obj, kind=CHECK):
    return next((c for c in node_obj.status.conditions or [] if c.type == kind), None)


def marks(node_obj):
    """What a detector changes on a node, for before/after comparisons (not the kubelet's heartbeats)."""
    return {"unschedulable": bool(node_obj.spec.unschedulable),
            "taints": sorted((t.key, t.effect) for t in node_obj.spec.taints or []),
            "labels": node_obj.metadata.labels or {}, "annotations": node_obj.metadata.annotations or {},
            "conditions": sorted((c.type, c.status, c.message) for c in node_obj.status.conditions or []
                                 if c.type != "Ready")}


def node_events(core, node):
    """The Events about a node (platform-connectors writes them in `default`)."""
    return core.list_namespaced_event("default", field_selector="involvedObject.name=" + node).items


@pytest.fixture()
def restore(api_client, core):
    """Snapshots a node; afterwards puts it back with the collection's own modules, as a drill's
    cleanup does: nvsentinel_restore hands the node back from NVSentinel (its uncordon cancels what
    NVSentinel had in progress, such as fault-remediation's requeued second XID 79 event), deletes
    fault-remediation's RebootNode and puts NVSentinel's conditions and Events back; then
    node_marks_restore (cordon, NVSentinel's labels and annotations)."""
    taken = {}

    def snapshot(name):
        node = core.read_node(name)
        taken[name] = (node, api_client.sanitize_for_serialization(node),
                       datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       {e.metadata.name for e in node_events(core, name)})
        return node

    yield snapshot
    for name, (before, raw, since, events) in taken.items():
        handed_back = ansible_module("gpu_resilience.fault_injection.nvsentinel_restore", {
            "node": name, "baseline": raw["status"].get("conditions") or [], "events_since": since, "release": True,
            "remediation": [{"api_version": "/".join(REBOOT[:2]), "kind": "RebootNode"}]})
        assert not handed_back.get("failed"), handed_back
        marks_back = ansible_module("gpu_resilience.fault_injection.node_marks_restore", {
            "name": name, "before": {"unschedulable": bool(before.spec.unschedulable),
                                     "taints": raw["spec"].get("taints") or [],
                                     "labels": raw["metadata"].get("labels") or {},
                                     "annotations": raw["metadata"].get("annotations") or {}}})
        assert not marks_back.get("failed"), marks_back
        wait_until(lambda: marks(core.read_node(name)) == marks(before)
                   and {e.metadata.name for e in node_events(core, name)} == events, 30, "%s as before the test" % name)


def inject(node, xid, gpu="2"):
    result = ansible_module("gpu_resilience.fault_injection.gpu_xid_inject",
                            {"node": node, "gpu": gpu, "xid": xid, "drill": "it-nvsentinel"})
    assert not result.get("failed"), result
    (fault,) = result["faults"]
    assert fault["phase"] == "Injected", fault
    return fault


def test_nvsentinel_runs_as_its_chart_deploys_it(nvsentinel_cluster, core, api_client):
    """Every pod of the chart runs the binary built from the pinned source, under the chart's
    ServiceAccount; each GPU node's gpu_metadata.json lists that node's GPUs."""
    state = os.environ["LOCALCLUSTER_DIR"]
    with open(os.path.join(state, "cluster.json"), encoding="utf-8") as f:
        assert json.load(f)["nvsentinel"] is True
    with open(os.path.join(os.environ["LOCALCLUSTER_RUNNER_STATE"], "pods", "index.json"), encoding="utf-8") as f:
        index = json.load(f)["pods"]
    seen = set()
    for pod in core.list_namespaced_pod(NS).items:
        entry = index[pod.metadata.uid]
        image = pod.spec.containers[0].image
        binary = image.rsplit("/", 1)[1].split(":")[0]
        assert image.endswith(":" + nvsentinel_source.versions()["NVSENTINEL_COMMIT"])
        pid = entry["containers"][pod.spec.containers[0].name]["pid"]
        exe = os.path.realpath("/proc/%d/exe" % pid)
        assert os.path.basename(exe) == binary and os.path.basename(os.path.dirname(exe)).startswith(
            nvsentinel_source.versions()["NVSENTINEL_COMMIT"]), exe
        # The chart's ServiceAccount of each component; syslog-health-monitor gets none (it only
        # talks to platform-connectors' socket), so it runs as the namespace's default.
        assert pod.spec.service_account_name == ("default" if binary == "syslog-health-monitor" else binary)
        seen.add(binary)
    assert seen == set(nvsentinel.BINARIES)
    for node in localcluster.gpu_node_names(3):
        path = os.path.join(os.environ["LOCALCLUSTER_RUNNER_STATE"], "nodes", node, "host", nvsentinel.METADATA_FILE)
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        assert [g["uuid"] for g in meta["gpus"]] == [u for _p, _m, u in localcluster.node_gpus(node, 8)]


def test_xid79_sets_the_condition_and_fault_quarantine_cordons(agent, core, custom, restore):
    node = "gpu-node-1"
    before = restore(node)
    # NVSentinel's first journal poll reported the node healthy.
    assert condition(before).status == "False" and not before.spec.unschedulable
    mark = audit_mark()
    fault = inject(node, 79)
    gpu = fault["gpus"][0]

    # platform-connectors: the condition, with what NVSentinel read from the journal.
    def failing():
        cond = condition(core.read_node(node))
        return cond if cond.status == "True" else None

    cond = wait_until(failing, DETECT_TIMEOUT, "condition %s=True on %s" % (CHECK, node))
    action = xid_catalog.nvsentinel_action(79)
    for part in ("ErrorCode:79", gpu["pci"][:-2], gpu["uuid"], "Recommended Action=" + action):
        assert part in cond.message, (part, cond.message)

    # fault-quarantine: the cordon, with its own labels and annotations, seen by the collection's module.
    waited = ansible_module("gpu_resilience.fault_injection.wait_node_cordon",
                            {"name": node, "conditions": [{"kind": "nvsentinel"}], "mode": "all",
                             "wait_timeout": 60})
    assert not waited.get("failed"), waited
    quarantined = core.read_node(node)
    assert quarantined.spec.unschedulable is True
    assert quarantined.metadata.labels["k8saas.nvidia.com/cordon-by"] == "NVSentinel"
    assert quarantined.metadata.annotations["quarantineHealthEventIsCordoned"] == "True"
    # The health events it quarantined for: XID 79's, and (in either order) the driver's
    # "fallen off the bus" message that follows it, which NVSentinel reads as a second fault.
    events = json.loads(quarantined.metadata.annotations["quarantineHealthEvent"])
    assert ["79"] in [e["errorCode"] for e in events if e["agent"] == "syslog-health-monitor"], events

    # fault-remediation: after node-drainer has drained the node, the reboot it asks janitor for.
    reboot = wait_until(lambda: [o for o in custom.list_cluster_custom_object(*REBOOT)["items"]
                                 if o["spec"]["nodeName"] == node], 60, "a RebootNode for " + node)
    assert reboot[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "nvsentinel"

    # NVSentinel's last word on the node (and nothing races the restore afterwards): no janitor
    # here to report the reboot done, so fault-remediation's creating it is the success.
    def remediated():
        now = core.read_node(node)
        return now if ((now.metadata.labels or {}).get(STATE_LABEL) == "remediation-succeeded"
                       and REMEDIATION_ANNOTATION in (now.metadata.annotations or {})) else None

    done = wait_until(remediated, 30, "fault-remediation's state on " + node)
    assert reboot[0]["metadata"]["name"] in done.metadata.annotations[REMEDIATION_ANNOTATION]

    # Who wrote: the condition by platform-connectors, the cordon by fault-quarantine, the reboot
    # by fault-remediation, each with the ServiceAccount the chart gave it.
    records = audit_records(mark)
    writes = writes_to_node(records, node)
    assert (SA + "platform-connectors", "patch", "status") in writes or \
        (SA + "platform-connectors", "update", "status") in writes, writes
    assert any(user == SA + "fault-quarantine" and sub == "" for user, _verb, sub in writes), writes
    assert not [w for w in writes if not w[0].startswith("system:")], writes  # nothing of the test's own
    created = [r["user"]["username"] for r in records
               if r.get("objectRef", {}).get("resource") == "rebootnodes" and r["verb"] == "create"]
    assert created == [SA + "fault-remediation"]


def test_a_non_fatal_xid_makes_an_event_and_no_condition(agent, core, restore):
    node = "gpu-node-2"
    before = restore(node)
    xid = 13
    assert xid_catalog.nvsentinel_action(xid) == "NONE"  # what the catalog expects NVSentinel to conclude
    mark = audit_mark()
    known = {e.metadata.name for e in node_events(core, node)}
    inject(node, xid)
    (event,) = wait_until(lambda: [e for e in node_events(core, node) if e.metadata.name not in known],
                          DETECT_TIMEOUT, "an Event for XID 13 on " + node)
    assert event.involved_object.kind == "Node" and event.type == CHECK and "ErrorCode:13" in event.message, event
    now = core.read_node(node)
    assert condition(now).status == "False" and marks(now) == marks(before)
    users = {r["user"]["username"] for r in audit_records(mark)
             if r.get("objectRef", {}).get("resource") == "events" and r["verb"] == "create"}
    assert SA + "platform-connectors" in users
