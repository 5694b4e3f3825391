"""The GPU health agent (role gpu_healthcheck), end to end on the local control plane.

Both agents are deployed once for the module: the fault-injector agent (playbooks/deploy_agent.yml)
and the health agent (playbooks/healthcheck.yml), each with the local runner's pod label, so every
agent pod runs the deployed ConfigMap's code as a local process. The health agent reads the same
per-node kernel-log file the fault agent writes (source `file`, /host/dev/kmsg), and its checks run
the node's stand-in nvidia-smi and read its stand-in EFA devices (tools/localcluster/gpu_standins.py;
the runner gives the agent the node's tools as the NVIDIA container runtime does). XIDs injected
with gpu_xid_inject, and stand-in answers the tests flip, must then show up as the AWS suite's marks
on the node, in the suite's shapes; return_to_service.yml must clear them; the quarantine entry
point and the sweeper run their diagnostic Jobs (KWOK completes Job pods at once; a Job fails by its
deadline); the latency from the fault's status.injectedAt to the taint seen through a node watch is
measured over 20 runs and written to build/healthcheck-latency.json.

The health agent runs on gpu-node-0 and gpu-node-1 only (a test label selects them): gpu-node-2 is
left to other tests of the shared cluster. The two nodes start from a fresh boot (an empty kernel
log: the XIDs of earlier test files are not this file's). Whatever happens, the module fixture
removes both agents and restores every mark and stand-in answer of those nodes as it found them.
The tests run in file order.
"""
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import pytest
import yaml
from kubernetes import client, watch

from support import (ROOT, RUN_LABEL, RUNNER_STATE, ansible_env, ansible_module, ansible_playbook, live_pods,
                     localcluster, run_playbook, venv_tool, wait_until)

standins = localcluster.gpu_standins

NAMESPACE = "gpu-healthcheck"
AGENT = "gpu-healthcheck-agent"
SWEEPER = "gpu-healthcheck-sweeper"
PREFIX = "gpu-healthcheck.aws-samples.io/"
UNHEALTHY = PREFIX + "unhealthy"
MAINTENANCE = PREFIX + "maintenance"
MANAGED_BY = "gpu_resilience.fault_injection"
TEST_LABEL = "gpu-resilience.io/healthcheck-it"
NODES = ("gpu-node-0", "gpu-node-1")
LATENCY_NODE = "gpu-node-0"
LATENCY_RUNS = 20
LATENCY_FILE = os.path.join(ROOT, "build", "healthcheck-latency.json")
DRILL = "it-healthcheck"
INJECT = "gpu_resilience.fault_injection.gpu_xid_inject"
WAIT = "gpu_resilience.fault_injection.wait_node_cordon"
CODE_FILES = {
    "gpu_health_agent.py": os.path.join(ROOT, "files", "healthcheck", "gpu_health_agent.py"),
    "gpu_sweeper.py": os.path.join(ROOT, "files", "healthcheck", "gpu_sweeper.py"),
    "xid_catalog.py": os.path.join(ROOT, "plugins", "module_utils", "xid_catalog.py"),
    "node_marks.py": os.path.join(ROOT, "plugins", "module_utils", "node_marks.py"),
    "efa_loopback.py": os.path.join(ROOT, "files", "healthcheck", "efa_loopback.py"),
    "instance_profiles.json": os.path.join(ROOT, "files", "healthcheck", "instance_profiles.json"),
    "kube_api.py": os.path.join(ROOT, "files", "common", "kube_api.py"),
}
CHECKS = ("gpu_count", "gpu_state", "ecc", "retired_pages", "persistence_mode", "efa", "nvlink", "topology",
          "fabric_manager")
# Every check on, at the default interval (60 s): they run when an agent starts, after a return to
# service and when the configuration changes; the check test shortens the interval for its run.
HC_VARS = {
    "gpu_healthcheck_pod_labels": {RUN_LABEL: "true"},
    "gpu_healthcheck_node_selector": {TEST_LABEL: "true"},
    "gpu_healthcheck_kmsg_source": "file",
    "gpu_healthcheck_kmsg_path": "/host/dev/kmsg",
    "gpu_healthcheck_checks": dict((name, True) for name in CHECKS),
    "gpu_healthcheck_sweep_suspend": True,
    "gpu_healthcheck_cordon": False,
}
SUITE_LABEL_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{6}Z$")     # 2026-12-06T182410Z
FAULT_AGENT_VARS = {"fault_injector_agent_pod_labels": {RUN_LABEL: "true"}}


# --- helpers -----------------------------------------------------------------------------------

def our_keys(mapping):
    return dict((k, v) for k, v in (mapping or {}).items() if k.startswith(PREFIX) or k == TEST_LABEL)


def taint_body(taint):
    """A V1Taint as the API spells it."""
    body = {"key": taint.key, "effect": taint.effect}
    if taint.value is not None:
        body["value"] = taint.value
    return body


def snapshot(node):
    """The marks of a node that these tests may change."""
    taints = [taint_body(t) for t in node.spec.taints or [] if t.key.startswith(PREFIX)]
    return {"labels": our_keys(node.metadata.labels), "annotations": our_keys(node.metadata.annotations),
            "taints": taints, "unschedulable": bool(node.spec.unschedulable)}


def restore(core, name, before):
    """Put the node's marks back as they were (conditional on its resourceVersion, retried)."""
    for _attempt in range(10):
        node = core.read_node(name)
        labels = dict((k, None) for k in our_keys(node.metadata.labels))
        labels.update(before["labels"])
        annotations = dict((k, None) for k in our_keys(node.metadata.annotations))
        annotations.update(before["annotations"])
        others = [taint_body(t) for t in node.spec.taints or [] if not t.key.startswith(PREFIX)
                  and t.key != "node.kubernetes.io/unschedulable"]
        taints = others + before["taints"]
        body = {"metadata": {"resourceVersion": node.metadata.resource_version, "labels": labels,
                             "annotations": annotations},
                "spec": {"taints": taints or None, "unschedulable": before["unschedulable"] or None}}
        try:
            core.patch_node(name, body)
            return
        except client.ApiException as e:
            if e.status != 409:
                raise
    raise AssertionError("could not restore the marks of %s" % name)


def host_root(node):
    return os.path.join(RUNNER_STATE, "nodes", node, "host")


def node_marks(core, name):
    node = core.read_node(name)
    labels = node.metadata.labels or {}
    annotations = node.metadata.annotations or {}
    return {"status": labels.get(PREFIX + "status"), "severity": labels.get(PREFIX + "severity"),
            "last_check": labels.get(PREFIX + "last-check"),
            "unhealthy": [t.to_dict() for t in node.spec.taints or [] if t.key == UNHEALTHY],
            "cordoned": bool(node.spec.unschedulable),
            "agent_marks": json.loads(annotations.get(PREFIX + "agent-marks") or "{}"),
            "results": json.loads(annotations.get(PREFIX + "results") or "{}")}


def inject(node, xid, **args):
    result = ansible_module(INJECT, dict(node=node, gpu="2", xid=xid, drill=DRILL, **args))
    assert not result.get("failed"), result
    assert result["faults"][0]["phase"] == "Injected", result
    return result["faults"][0]


def wait_marks(node, conditions, mode="all", state="quarantined", timeout=30):
    result = ansible_module(WAIT, {"name": node, "state": state, "mode": mode, "conditions": conditions,
                                   "wait_timeout": timeout})
    assert not result.get("failed"), result
    return result


def return_to_service(*nodes):
    out, recap = run_playbook("return_to_service.yml", {"return_to_service_nodes": list(nodes)})
    return out, recap


def assert_clean(core, name):
    marks = node_marks(core, name)
    assert marks["severity"] == "PASS" and marks["status"] == "pass", marks
    assert marks["unhealthy"] == [] and marks["agent_marks"] == {"taint": False, "cordon": False, "labels": True}, marks


def live_agents():
    return live_pods(NAMESPACE, AGENT + "-")


def config_of(entry):
    """The config.json that the runner materialised for an agent pod."""
    with open(os.path.join(entry["dir"], "volumes", "config", "config.json")) as f:
        return json.load(f)


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apis(api_client):
    return {"rbac": client.RbacAuthorizationV1Api(api_client), "batch": client.BatchV1Api(api_client)}


@pytest.fixture(scope="module")
def stack(core):
    before = dict((name, snapshot(core.read_node(name))) for name in NODES)
    answers = dict((name, standins.read_state(host_root(name))) for name in NODES)
    try:
        for name in NODES:
            standins.reboot(host_root(name))
            core.patch_node(name, {"metadata": {"labels": {TEST_LABEL: "true"}}})
        ansible_playbook("healthcheck.yml", {"gpu_healthcheck_state": "absent"})
        run_playbook("deploy_agent.yml", FAULT_AGENT_VARS)
        out, recap = run_playbook("healthcheck.yml", HC_VARS)
        yield {"output": out, "recap": recap}
    finally:
        ansible_playbook("healthcheck.yml", {"gpu_healthcheck_state": "absent"})
        ansible_module(INJECT, {"state": "absent", "drill": DRILL})
        ansible_playbook("remove_agent.yml")
        for name in NODES:
            restore(core, name, before[name])
            standins.write_state(host_root(name), answers[name])


# --- deployment --------------------------------------------------------------------------------

def test_one_agent_per_selected_node_runs_the_config_map_code_and_marks_it(stack, core):
    agents = live_agents()
    assert sorted(agents) == list(NODES), agents
    for name in NODES:
        assert len(agents[name]) == 1, agents
        _pod, _pid, entry = agents[name][0]
        for key, path in CODE_FILES.items():
            with open(path, "rb") as f, open(os.path.join(entry["dir"], "volumes", "code", key), "rb") as g:
                assert g.read() == f.read(), "%s differs from %s" % (key, path)
        marks = node_marks(core, name)
        assert marks["severity"] == "PASS" and marks["results"]["agent"]["namespace"] == NAMESPACE, marks
        # Every check ran against the node's stand-ins, and passed.
        assert dict((check, entry["status"]) for check, entry in marks["results"]["check_results"].items()) == \
            dict((check, "pass") for check in CHECKS), marks["results"]["check_results"]
    # gpu-node-2 does not match the selector: no agent, no marks written there by this test.
    assert "gpu-node-2" not in agents
    for name in NODES:
        assert "%s: PASS" % name in stack["output"]


def test_config_map_holds_the_rendered_configuration(stack, core):
    data = core.read_namespaced_config_map("gpu-healthcheck-config", NAMESPACE).data
    config = json.loads(data["config.json"])
    assert config["prefix"] == PREFIX and config["taint_min_severity"] == "RESET" and config["cordon"] is False
    assert config["checks"] == HC_VARS["gpu_healthcheck_checks"] and config["instance_profiles"] == {}
    assert (config["taint"], config["labels"], config["boot_scan_lines"], config["retired_pages_sbe_max"],
            config["sweep_failure_severity"]) == (True, True, 4000, 60, "RESET")
    sweeper = json.loads(data["sweeper.json"])
    assert sweeper["node_selector"] == TEST_LABEL + "=true" and sweeper["max_nodes"] == 1
    assert sweeper["job"]["command"] == ["dcgmi", "diag", "-r", "2"] and sweeper["job"]["active_deadline_seconds"] == 1200


def test_rbac_is_least_privilege(stack, apis):
    rbac = apis["rbac"]

    def grants(rules):
        out = set()
        for rule in rules:
            assert not rule.resource_names and not rule.non_resource_urls, rule
            out |= {(g, r, v) for g in rule.api_groups for r in rule.resources for v in rule.verbs}
        return out

    assert grants(rbac.read_cluster_role(AGENT).rules) == {("", "nodes", v) for v in ("get", "list", "watch", "patch")}
    assert grants(rbac.read_cluster_role(SWEEPER).rules) == \
        {("", "nodes", v) for v in ("get", "list", "patch")} | {("", "pods", "list")}
    assert grants(rbac.read_namespaced_role(SWEEPER, NAMESPACE).rules) == \
        {("batch", "jobs", v) for v in ("get", "create", "delete")}
    for binding in (rbac.read_cluster_role_binding(AGENT), rbac.read_cluster_role_binding(SWEEPER),
                    rbac.read_namespaced_role_binding(SWEEPER, NAMESPACE)):
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == \
            [("ServiceAccount", binding.metadata.name, NAMESPACE)]
        assert binding.role_ref.name == binding.metadata.name
    # Nothing else of the role is cluster-wide.
    selector = "app.kubernetes.io/part-of=gpu-healthcheck"
    assert sorted(r.metadata.name for r in rbac.list_cluster_role(label_selector=selector).items) == [AGENT, SWEEPER]


def test_pods_have_no_network_exposure_and_read_only_host_mounts(stack, core, apps, apis):
    ds = apps.read_namespaced_daemon_set(AGENT, NAMESPACE)
    spec = ds.spec.template.spec
    assert not spec.host_network and not spec.host_pid
    assert spec.priority_class_name == "system-node-critical"      # as the AWS suite's agent
    (container,) = spec.containers
    assert not container.ports
    # The kernel log is a /dev path: privileged, as reading the host's /dev/kmsg needs.
    assert container.security_context.privileged is True and container.security_context.read_only_root_filesystem
    host = dict((v.name, v.host_path) for v in spec.volumes if v.host_path)
    assert {h.path: h.type for h in host.values()} == {"/dev/kmsg": "CharDevice", "/sys": "Directory",
                                                       "/proc/driver/nvidia": "Directory",
                                                       "/proc/sys/kernel/random/boot_id": "File"}
    for mount in container.volume_mounts:
        assert mount.read_only, mount
    # The code's checksum rolls the pods; the configuration's must not be there.
    assert list(ds.spec.template.metadata.annotations) == ["checksum/code"]
    assert "--kmsg-source" in container.command and container.command[container.command.index("--kmsg-source") + 1] == "file"
    assert core.list_namespaced_service(NAMESPACE).items == []
    cron = apis["batch"].read_namespaced_cron_job(SWEEPER, NAMESPACE)
    assert cron.spec.suspend is True and cron.spec.schedule == "0 3 * * *" and cron.spec.concurrency_policy == "Forbid"
    pod = cron.spec.job_template.spec.template.spec
    assert pod.service_account_name == SWEEPER and not pod.host_network and pod.security_context.run_as_non_root


def test_second_run_changes_nothing_and_check_mode_changes_nothing(stack, core):
    _out, recap = run_playbook("healthcheck.yml", HC_VARS)
    assert recap["changed"] == 0, recap
    before = core.read_namespaced_config_map("gpu-healthcheck-config", NAMESPACE).data
    out, recap = run_playbook("healthcheck.yml", dict(HC_VARS, gpu_healthcheck_interval_seconds=30), check=True)
    assert recap["changed"] == 1 and "ConfigMap gpu-healthcheck-config" in out, out[-3000:]
    assert core.read_namespaced_config_map("gpu-healthcheck-config", NAMESPACE).data == before


def test_results_and_labels_have_the_aws_suites_shapes(stack, core):
    """What the suite's readers read: checks[].check with the suite's check names and status words,
    the suite's top-level keys, and its last-check label format; ours beside them."""
    for name in NODES:
        marks = node_marks(core, name)
        results = marks["results"]
        assert SUITE_LABEL_TIME.fullmatch(marks["last_check"]), marks["last_check"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", results["timestamp"])
        assert (results["hostname"], results["instance_type"], results["status"], results["severity"]) == \
            (name, "p5.48xlarge", "pass", "PASS")
        assert results["checks"] == [{"check": "0-nvidia-smi", "status": "PASS", "severity": ""},
                                     {"check": "2-efa-enumeration", "status": "PASS", "severity": ""},
                                     {"check": "3-topology-check", "status": "PASS", "severity": ""}]
        assert results["node"] == name and results["findings"] == [] and results["log_position"]["source"] == "file"


def set_checks_interval(seconds):
    run_playbook("healthcheck.yml", dict(HC_VARS, gpu_healthcheck_interval_seconds=seconds))


def check_results(core, node):
    return node_marks(core, node)["results"].get("check_results") or {}


def test_every_check_fails_on_its_flipped_stand_in_answer_and_passes_again(stack, core):
    """Each check, old and new, against the node's stand-ins: one answer flipped per check on
    gpu-node-0 (gpu-node-1 stays healthy), each check fails at its severity, the suite's checks
    0, 2 and 3 fail, the node is tainted; answers back and a return to service, every check passes."""
    node, host = "gpu-node-0", host_root("gpu-node-0")
    healthy = standins.update(host, efa=31, gpus={
        7: {"present": False},                                             # gpu_count, topology
        3: {"pstate": "[GPU requires reset]"},                             # gpu_state
        2: {"ecc.errors.uncorrected.volatile.total": "3"},                 # ecc
        1: {"retired_pages.dbe": "1", "retired_pages.sbe": "61"},          # retired_pages
        0: {"persistence_mode": "Disabled"},                               # persistence_mode
        4: {"inactive_links": [5]},                                        # nvlink
        5: {"fabric.state": "In Progress", "fabric.status": "N/A"}})       # fabric_manager
    try:
        set_checks_interval(2)
        expected = {"gpu_count": "REBOOT", "gpu_state": "RESET", "ecc": "RESET", "retired_pages": "ISOLATE",
                    "persistence_mode": "MONITOR", "efa": "REBOOT", "nvlink": "RESET", "topology": "REBOOT",
                    "fabric_manager": "RESET"}
        wait_until(lambda: dict((check, entry["severity"]) for check, entry in check_results(core, node).items())
                   == expected, 60, "every check of %s to fail" % node)
        marks = node_marks(core, node)
        assert marks["status"] == "fail" and marks["severity"] == "ISOLATE" and marks["unhealthy"], marks
        assert marks["results"]["checks"] == [{"check": "0-nvidia-smi", "status": "FAIL", "severity": "ISOLATE"},
                                              {"check": "2-efa-enumeration", "status": "FAIL", "severity": "REBOOT"},
                                              {"check": "3-topology-check", "status": "FAIL", "severity": "REBOOT"}]
        assert "31 of 32 EFA devices" in check_results(core, node)["efa"]["detail"]
        assert node_marks(core, "gpu-node-1")["severity"] == "PASS"
    finally:
        standins.write_state(host, healthy)
        set_checks_interval(60)
    return_to_service(node)             # the agent runs its checks again at once
    assert_clean(core, node)
    assert set(entry["status"] for entry in check_results(core, node).values()) == {"pass"}


# --- detection and return to service -----------------------------------------------------------

def test_xid79_fails_the_node_at_reboot_and_taints_it(stack, core):
    node = "gpu-node-0"
    inject(node, 79)
    result = wait_marks(node, [{"kind": "taint", "key": UNHEALTHY, "value": "true", "effect": "NoSchedule"},
                               {"kind": "label", "key": PREFIX + "severity", "value": "REBOOT"},
                               {"kind": "label", "key": PREFIX + "status", "value": "fail"}])
    assert result["nodes"][0]["matched"], result
    marks = node_marks(core, node)
    assert marks["agent_marks"] == {"taint": True, "cordon": False, "labels": True} and not marks["cordoned"], marks
    (finding,) = marks["results"]["findings"]
    assert finding["xid"] == 79 and finding["severity"] == "REBOOT", finding
    # The other node saw nothing.
    assert node_marks(core, "gpu-node-1")["severity"] == "PASS"
    _out, recap = return_to_service(node)
    assert recap["changed"] >= 1
    assert_clean(core, node)
    # Nothing left to clear: a second return changes nothing.
    _out, recap = return_to_service(node)
    assert recap["changed"] == 0, recap


def test_xid13_warns_at_monitor_and_never_taints(stack, core):
    node = "gpu-node-1"
    inject(node, 13)
    wait_marks(node, [{"kind": "label", "key": PREFIX + "severity", "value": "MONITOR"},
                      {"kind": "label", "key": PREFIX + "status", "value": "warn"}])
    time.sleep(1.5)   # a later mark would not add a taint either
    marks = node_marks(core, node)
    assert marks["severity"] == "MONITOR" and marks["unhealthy"] == [] and not marks["cordoned"], marks
    assert marks["agent_marks"] == {"taint": False, "cordon": False, "labels": True}
    return_to_service(node)
    assert_clean(core, node)


def test_xid154_node_reboot_required_escalates_to_reboot(stack, core):
    node = "gpu-node-1"
    inject(node, 154, recovery_action="Node Reboot Required")
    wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}, {"kind": "label", "key": PREFIX + "severity", "value": "REBOOT"}])
    assert node_marks(core, node)["status"] == "fail"
    # This time the return cordons the node while it runs, and lifts its own cordon at the end.
    out, _recap = run_playbook("return_to_service.yml", {"return_to_service_nodes": [node],
                                                         "return_to_service_cordon": True})
    # One patch call for all nodes: the cordon task itself reports the change.
    cordon_task = out.split("Cordon the nodes for the time of their return", 1)
    assert len(cordon_task) == 2 and cordon_task[1].split("TASK [", 1)[0].count("changed: [localhost]") == 1, out
    assert_clean(core, node)
    after = core.read_node(node)
    assert not after.spec.unschedulable and PREFIX + "return-to-service-cordon" not in (after.metadata.annotations or {})


def test_cordon_setting_applies_without_restart_and_return_to_service_uncordons(stack, core, apps):
    node = "gpu-node-0"
    pods = sorted((p.metadata.name, p.metadata.uid) for p in core.list_namespaced_pod(NAMESPACE).items)
    generation = apps.read_namespaced_daemon_set(AGENT, NAMESPACE).metadata.generation
    try:
        _out, recap = run_playbook("healthcheck.yml", dict(HC_VARS, gpu_healthcheck_cordon=True))
        assert recap["changed"] == 1, recap            # the config ConfigMap, nothing else
        assert apps.read_namespaced_daemon_set(AGENT, NAMESPACE).metadata.generation == generation
        assert sorted((p.metadata.name, p.metadata.uid) for p in core.list_namespaced_pod(NAMESPACE).items) == pods
        # The kubelet (here the runner) refreshes the mounted ConfigMap; the agents re-read it.
        wait_until(lambda: all(config_of(entry)["cordon"] is True
                               for agents in live_agents().values() for _n, _p, entry in agents),
                   30, "the new config.json in the agents' volumes")
        time.sleep(1.5)   # the agents look at the file every second
        inject(node, 79)
        wait_marks(node, [{"kind": "cordoned"}, {"kind": "taint", "key": UNHEALTHY}])
        assert node_marks(core, node)["agent_marks"] == {"taint": True, "cordon": True, "labels": True}
        return_to_service(node)
        assert_clean(core, node)
        assert not node_marks(core, node)["cordoned"]
    finally:
        run_playbook("healthcheck.yml", HC_VARS)


def test_return_to_service_keeps_someone_elses_cordon(stack, core):
    """The agent tainted the node, an operator cordoned it: the return removes the agent's taint and
    leaves the operator's cordon."""
    node = "gpu-node-1"
    inject(node, 79)
    wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}])
    core.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        return_to_service(node)
        marks = node_marks(core, node)
        assert marks["unhealthy"] == [] and marks["severity"] == "PASS" and marks["cordoned"], marks
    finally:
        core.patch_node(node, {"spec": {"unschedulable": None}})
    assert_clean(core, node)


NVS_LABELS = {"k8saas.nvidia.com/cordon-by": "NVSentinel", "k8saas.nvidia.com/cordon-reason": "gpu-fatal-error-ruleset",
              "k8saas.nvidia.com/cordon-timestamp": "2026-11-22T18-20-18Z", "dgxc.nvidia.com/nvsentinel-state": "quarantined"}
NVS_TAINT = {"key": "AggregatedNodeHealth", "value": "False", "effect": "NoSchedule"}
NVS_ANNOTATIONS = {"quarantineHealthEvent": json.dumps([{"checkName": "SysLogsXIDError", "errorCode": ["79"]}]),
                   "quarantineHealthEventIsCordoned": "True",
                   "quarantineHealthEventAppliedTaints": json.dumps([NVS_TAINT])}


def test_nvsentinel_marks_stay_unless_asked_to_clear_them(stack, core):
    """NVSentinel quarantined the node as well: the return takes the agent's marks only; with
    return_to_service_clear_nvsentinel it also removes NVSentinel's labels, annotations, taint and cordon."""
    node = "gpu-node-1"
    inject(node, 79)
    wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}])
    current = core.read_node(node)
    core.patch_node(node, {"metadata": {"labels": NVS_LABELS, "annotations": NVS_ANNOTATIONS,
                                        "resourceVersion": current.metadata.resource_version},
                           "spec": {"unschedulable": True,
                                    "taints": [taint_body(t) for t in current.spec.taints or []] + [NVS_TAINT]}})
    try:
        return_to_service(node)
        after = core.read_node(node)
        assert after.spec.unschedulable and [t.key for t in after.spec.taints if t.key == NVS_TAINT["key"]]
        assert all(after.metadata.labels.get(k) == v for k, v in NVS_LABELS.items())
        assert "quarantineHealthEvent" in after.metadata.annotations
        assert_clean(core, node)
        out, recap = run_playbook("return_to_service.yml", {"return_to_service_nodes": [node],
                                                            "return_to_service_clear_nvsentinel": True})
        assert recap["changed"] >= 1, out[-3000:]
        after = core.read_node(node)
        assert not after.spec.unschedulable
        assert not [t for t in after.spec.taints or [] if t.key == NVS_TAINT["key"]]
        assert not set(NVS_LABELS) & set(after.metadata.labels or {})
        assert not set(NVS_ANNOTATIONS) & set(after.metadata.annotations or {})
        assert_clean(core, node)
    finally:
        current = core.read_node(node)
        core.patch_node(node, {"metadata": {"labels": dict((k, None) for k in NVS_LABELS),
                                            "annotations": dict((k, None) for k in NVS_ANNOTATIONS)},
                               "spec": {"unschedulable": None,
                                        "taints": [taint_body(t) for t in current.spec.taints or []
                                                   if t.key != NVS_TAINT["key"]] or None}})


def test_return_to_service_refuses_unknown_nodes_and_changes_nothing(stack):
    rc, out, recap = ansible_playbook("return_to_service.yml", {"return_to_service_nodes": "gpu-node-0,no-such-node"})
    assert rc != 0 and "Node(s) not found: no-such-node" in out, out[-3000:]
    assert recap["changed"] == 0


def agent_pod(node):
    (entry,) = live_agents().get(node) or [None]
    return entry[0] if entry else None


def test_boot_scan_finds_an_xid_logged_before_the_agent_started_and_a_restart_does_not_count_it_again(stack, core):
    """The AWS suite scans the current boot's kernel log: an XID logged while no agent ran (a node
    that booted with a bad GPU, an agent restart) is found; a restarted agent goes on from the log
    position it recorded on the node and counts nothing twice."""
    node = "gpu-node-1"
    core.patch_node(node, {"metadata": {"labels": {TEST_LABEL: None}}})
    try:
        wait_until(lambda: agent_pod(node) is None, 60, "the agent on %s to stop" % node)
        inject(node, 48)                                   # logged while no health agent runs
    finally:
        core.patch_node(node, {"metadata": {"labels": {TEST_LABEL: "true"}}})
    wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}, {"kind": "label", "key": PREFIX + "severity", "value": "RESET"}],
               timeout=60)
    first = agent_pod(node)
    (finding,) = node_marks(core, node)["results"]["findings"]
    assert (finding["xid"], finding["count"]) == (48, 1), finding
    # The agent restarts: the new one takes the finding back and does not count the record again.
    core.delete_namespaced_pod(first, NAMESPACE)
    wait_until(lambda: agent_pod(node) not in (None, first) and
               node_marks(core, node)["results"]["agent"].get("pod") == agent_pod(node), 60, "the new agent's marks")
    inject(node, 13)                                       # and goes on with what comes
    wait_until(lambda: 13 in [f.get("xid") for f in node_marks(core, node)["results"]["findings"]], 30, "XID 13")
    findings = dict((f["xid"], f["count"]) for f in node_marks(core, node)["results"]["findings"])
    assert findings == {48: 1, 13: 1}, findings
    return_to_service(node)
    assert_clean(core, node)


def test_node_facts_decide_the_suites_rules_for_159_and_95(stack, core):
    """XID 159 resets only while a CUDA process holds /dev/nvidia-uvm, XID 95 on an A100 without
    MIG reboots: the agent reads both from the node's (stand-in) nvidia-smi when the XID comes."""
    node, host = "gpu-node-0", host_root("gpu-node-0")
    inject(node, 159)
    wait_marks(node, [{"kind": "label", "key": PREFIX + "severity", "value": "MONITOR"}])
    healthy = standins.update(host, compute_apps=[{"pid": 4242, "gpu_bus_id": "00000000:75:00.0"}],
                              gpus=dict((index, {"name": "NVIDIA A100-SXM4-80GB"}) for index in range(8)))
    try:
        inject(node, 159)
        wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}, {"kind": "label", "key": PREFIX + "severity", "value": "RESET"}])
        inject(node, 95)
        wait_marks(node, [{"kind": "label", "key": PREFIX + "severity", "value": "REBOOT"}])
        facts = [f.get("facts") for f in node_marks(core, node)["results"]["findings"] if f.get("xid") == 95]
        assert facts == [{"a100": True, "mig": False}], facts
    finally:
        standins.write_state(host, healthy)
    return_to_service(node)
    assert_clean(core, node)


def test_taint_and_label_switches(stack, core):
    """The suite's ENABLE_TAINT=false and ENABLE_LABEL=false: the agent finds the XID (its results
    say so) but neither taints nor labels the node; switched back on, the marks return."""
    node = "gpu-node-0"
    run_playbook("healthcheck.yml", dict(HC_VARS, gpu_healthcheck_enable_taint=False, gpu_healthcheck_enable_label=False))
    try:
        wait_until(lambda: node_marks(core, node)["results"].get("config", {}).get("labels") is False, 60,
                   "the agent to apply the switches")
        inject(node, 79)
        wait_until(lambda: node_marks(core, node)["results"]["severity"] == "REBOOT", 30, "the finding of XID 79")
        marks = node_marks(core, node)
        assert marks["unhealthy"] == [] and (marks["status"], marks["severity"], marks["last_check"]) == (None, None, None)
        assert marks["agent_marks"] == {"taint": False, "cordon": False, "labels": False}
    finally:
        run_playbook("healthcheck.yml", HC_VARS)
    wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}, {"kind": "label", "key": PREFIX + "status", "value": "fail"}])
    return_to_service(node)
    assert_clean(core, node)


# --- quarantine and sweeper --------------------------------------------------------------------

def run_quarantine(tmp_path, node, extra=None):
    play = [{"name": "Quarantine diagnostic", "hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
             "tasks": [{"name": "Run the quarantine Job", "ansible.builtin.include_role": {
                 "name": "gpu_resilience.fault_injection.gpu_healthcheck", "tasks_from": "quarantine"},
                 "vars": dict({"gpu_healthcheck_quarantine_node": node, "gpu_healthcheck_quarantine_timeout": 5400,
                               "gpu_healthcheck_quarantine_poll_interval": 1}, **(extra or {}))}]}]
    path = tmp_path / "quarantine.yml"
    path.write_text(yaml.safe_dump(play))
    return subprocess.run([venv_tool("ansible-playbook"), str(path)], cwd=ROOT, env=ansible_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False)


def test_quarantine_runs_one_job_with_its_own_deadline_and_records_the_result(stack, core, apis, tmp_path):
    node = "gpu-node-0"
    proc = run_quarantine(tmp_path, node)
    assert proc.returncode == 0, proc.stdout[-4000:]
    annotations = core.read_node(node).metadata.annotations
    result = json.loads(annotations[PREFIX + "quarantine-result"])
    # The AWS suite's quarantine result (its recommendation: replace only for ISOLATE), ours beside.
    assert (result["suite"], result["node"], result["status"], result["severity"], result["recommendation"]) == \
        ("quarantine", node, "pass", "PASS", "investigate"), result
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", result["timestamp"])
    assert result["checks"] == [{"check": "4-dcgm-diag-l4", "status": "PASS", "severity": ""},
                                {"check": "6-efa-loopback", "status": "PASS", "severity": ""}], result
    assert result["action"] == "return-to-service" and result["outcome"] == "pass"
    assert result["finished"] and result["timeout_seconds"] == 5400
    job = apis["batch"].read_namespaced_job(result["job"], NAMESPACE)
    assert job.spec.active_deadline_seconds == 5400 and job.spec.backoff_limit == 0
    pod_spec = job.spec.template.spec
    terms = pod_spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert terms[0].match_fields[0].values == [node]
    assert pod_spec.containers[0].command == ["dcgmi", "diag", "-r", "4"]
    assert pod_spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
    # A p5.48xlarge has EFA devices: the EFA loopback test runs beside the diagnostic.
    efa = pod_spec.containers[1]
    assert efa.name == "efa-loopback" and efa.command == ["python3", "/opt/gpu-healthcheck/efa_loopback.py", "--timeout", "120"]
    assert PREFIX + "mode" not in (core.read_node(node).metadata.labels or {})
    assert node_marks(core, node)["severity"] == "PASS"          # a passed quarantine is no finding
    # A node that does not exist is refused before anything is created.
    proc = run_quarantine(tmp_path, "no-such-node")
    assert proc.returncode != 0 and "Node no-such-node not found" in proc.stdout


def test_quarantine_past_its_deadline_recommends_reboot(stack, core, tmp_path, namespace):
    """A GPU workload holds a GPU, so the Job (which requests them all) never starts: its own deadline
    ends it and the result says so; the mode label goes again."""
    node = "gpu-node-1"
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "holds-a-gpu"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                 "containers": [{"name": "c", "image": "example.invalid/none", "command": ["sleep", "3600"],
                                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})
    wait_until(lambda: core.read_namespaced_pod("holds-a-gpu", namespace).status.phase == "Running", 60,
               "the GPU pod to run")
    proc = run_quarantine(tmp_path, node, {"gpu_healthcheck_quarantine_timeout": 3,
                                           "gpu_healthcheck_quarantine_start_margin": 60})
    assert proc.returncode == 0, proc.stdout[-4000:]
    result = json.loads(core.read_node(node).metadata.annotations[PREFIX + "quarantine-result"])
    assert result["outcome"] == "timeout" and result["reason"] == "DeadlineExceeded", result
    assert (result["severity"], result["recommendation"], result["action"]) == ("REBOOT", "investigate", "reboot-and-retest")
    assert result["checks"] == [{"check": "4-dcgm-diag-l4", "status": "FAIL", "severity": "REBOOT"},
                                {"check": "6-efa-loopback", "status": "FAIL", "severity": "RESET"}], result
    assert PREFIX + "mode" not in (core.read_node(node).metadata.labels or {})
    # The verdict reaches the node's marks, as the suite's quarantine Job labels the node.
    wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}, {"kind": "label", "key": PREFIX + "severity", "value": "REBOOT"}])
    checks = node_marks(core, node)["results"]["checks"]
    assert {"check": "4-dcgm-diag-l4", "status": "FAIL", "severity": "REBOOT"} in checks, checks
    return_to_service(node)
    assert_clean(core, node)


def sweeper_env(core, tmp_path):
    """Environment for running gpu_sweeper.py here with the sweeper ServiceAccount's token."""
    token = core.create_namespaced_service_account_token(
        SWEEPER, NAMESPACE, {"spec": {"expirationSeconds": 600}}).status.token
    with open(os.environ["KUBECONFIG"]) as f:
        kubeconfig = yaml.safe_load(f)
    cluster = kubeconfig["clusters"][0]["cluster"]
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    with open(cluster["certificate-authority"], "rb") as f:
        (sa_dir / "ca.crt").write_bytes(f.read())
    host, port = cluster["server"].split("://", 1)[1].rsplit(":", 1)
    # kube_api.py is beside the sweeper in its ConfigMap; here it is in files/common.
    return dict(os.environ, KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port,
                KUBERNETES_SERVICEACCOUNT_DIR=str(sa_dir), POD_NAMESPACE=NAMESPACE,
                PYTHONPATH=os.path.dirname(CODE_FILES["kube_api.py"]))


def run_sweeper(env, config_path):
    proc = subprocess.run([sys.executable, CODE_FILES["gpu_sweeper.py"], "--config", str(config_path)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sweeper_sweeps_an_idle_node_and_removes_only_its_own_taint(stack, core, apis, tmp_path):
    config = json.loads(core.read_namespaced_config_map("gpu-healthcheck-config", NAMESPACE).data["sweeper.json"])
    path = tmp_path / "sweeper.json"
    path.write_text(json.dumps(config))
    finish_only = tmp_path / "finish-only.json"
    finish_only.write_text(json.dumps(dict(config, max_nodes=0)))
    env = sweeper_env(core, tmp_path)
    first = run_sweeper(env, path)
    assert len(first["started"]) == 1, first     # the cap: one node at a time
    node, job_name = first["started"][0]["node"], first["started"][0]["job"]
    swept = core.read_node(node)
    assert [t.key for t in swept.spec.taints if t.key == MAINTENANCE] == [MAINTENANCE]
    job = apis["batch"].read_namespaced_job(job_name, NAMESPACE)
    assert job.spec.active_deadline_seconds == 1200
    assert [t.key for t in job.spec.template.spec.tolerations][0] == MAINTENANCE
    # While it runs, someone else taints the node: that taint must survive the end of the sweep.
    other = {"key": "example.com/held", "value": "x", "effect": "NoSchedule"}
    core.patch_node(node, {"metadata": {"resourceVersion": swept.metadata.resource_version},
                           "spec": {"taints": [taint_body(t) for t in swept.spec.taints] + [other]}})
    try:
        wait_until(lambda: any(c.type == "Complete" and c.status == "True"
                               for c in apis["batch"].read_namespaced_job(job_name, NAMESPACE).status.conditions or []),
                   60, "the diagnostic Job to complete")
        second = run_sweeper(env, finish_only)
        assert second["finished"] == [{"node": node, "result": "pass", "job": job_name}], second
        assert second["started"] == []
        after = core.read_node(node)
        keys = [t.key for t in after.spec.taints or []]
        assert MAINTENANCE not in keys and "example.com/held" in keys
        result = json.loads(after.metadata.annotations[PREFIX + "sweep-result"])
        assert result["result"] == "pass" and result["job"] == job_name
        assert PREFIX + "sweep-state" not in after.metadata.annotations
        wait_until(lambda: not apis["batch"].list_namespaced_job(NAMESPACE, field_selector="metadata.name=" + job_name).items,
                   30, "the finished Job to be deleted")
        # The health agent did not touch the sweeper's marks meanwhile, and still reports PASS.
        assert node_marks(core, node)["severity"] == "PASS"
    finally:
        current = core.read_node(node)
        core.patch_node(node, {"spec": {"taints": [taint_body(t) for t in current.spec.taints or []
                                                   if t.key != "example.com/held"] or None}})


def test_a_failed_sweep_labels_the_node_failed_and_taints_it(stack, core, apis, tmp_path):
    """As the AWS suite's sweep Job does on a failed diagnostic: status=fail and the unhealthy taint
    (here through the health agent, at gpu_healthcheck_sweep_failure_severity). The diagnostic Job
    fails for real: it asks for more CPU than a node has, and its own deadline ends it."""
    config = json.loads(core.read_namespaced_config_map("gpu-healthcheck-config", NAMESPACE).data["sweeper.json"])
    config.update(min_interval_seconds=0)
    config["job"].update(active_deadline_seconds=2, resources={"requests": {"cpu": "1000"}})
    path = tmp_path / "sweeper.json"
    path.write_text(json.dumps(config))
    env = sweeper_env(core, tmp_path)
    started = run_sweeper(env, path)["started"]
    assert len(started) == 1, started
    node, job_name = started[0]["node"], started[0]["job"]
    wait_until(lambda: any(c.type == "Failed" and c.status == "True"
                           for c in apis["batch"].read_namespaced_job(job_name, NAMESPACE).status.conditions or []),
               60, "the diagnostic Job to fail")
    finish = tmp_path / "finish.json"
    finish.write_text(json.dumps(dict(config, max_nodes=0)))
    assert run_sweeper(env, finish)["finished"] == [{"node": node, "result": "fail", "job": job_name}]
    wait_marks(node, [{"kind": "taint", "key": UNHEALTHY}, {"kind": "label", "key": PREFIX + "status", "value": "fail"}])
    marks = node_marks(core, node)
    assert {"check": "1-dcgm-diag-l2", "status": "FAIL", "severity": "RESET"} in marks["results"]["checks"], marks
    assert MAINTENANCE not in [t.key for t in core.read_node(node).spec.taints or []]
    return_to_service(node)
    assert_clean(core, node)            # the failed sweep, older than the clear, does not come back


# --- latency -----------------------------------------------------------------------------------

def time_to_taint(core, node):
    """Seconds from the GPUFault's status.injectedAt to a node watch (started before) seeing the taint."""
    version = core.read_node(node).metadata.resource_version
    seen = {}
    watcher = watch.Watch()

    def follow():
        for event in watcher.stream(core.list_node, field_selector="metadata.name=" + node, resource_version=version,
                                    timeout_seconds=40):
            if any(t.key == UNHEALTHY for t in event["object"].spec.taints or []):
                seen["at"] = time.time()
                watcher.stop()
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.3)   # the watch is open before the fault is requested
    fault = inject(node, 79)
    thread.join(45)
    assert "at" in seen, "no taint seen on %s" % node
    return seen["at"] - parse_time(fault["injected_at"])


def test_latency_from_injection_to_mark(stack, core):
    runs = []
    for _run in range(LATENCY_RUNS):
        runs.append(time_to_taint(core, LATENCY_NODE))
        return_to_service(LATENCY_NODE)
        assert_clean(core, LATENCY_NODE)
    median, worst = statistics.median(runs), max(runs)
    print("\nXID 79 -> taint on %s over %d runs: median %.3f s, worst %.3f s" % (LATENCY_NODE, len(runs), median, worst))
    os.makedirs(os.path.dirname(LATENCY_FILE), exist_ok=True)
    with open(LATENCY_FILE, "w") as f:
        json.dump({"node": LATENCY_NODE, "xid": 79, "runs": [round(r, 4) for r in runs], "median_s": round(median, 4),
                   "worst_s": round(worst, 4), "from": "GPUFault status.injectedAt",
                   "to": "node watch event with the taint " + UNHEALTHY}, f, indent=2)
    assert median < 1.0 and worst < 3.0, runs


# --- removal -----------------------------------------------------------------------------------

def test_absent_removes_everything_and_is_idempotent(stack, core, apps, apis, tmp_path):
    # A sweep in flight when the sweeper goes: its marks go with it.
    config = json.loads(core.read_namespaced_config_map("gpu-healthcheck-config", NAMESPACE).data["sweeper.json"])
    config["min_interval_seconds"] = 0
    path = tmp_path / "sweeper.json"
    path.write_text(json.dumps(config))
    started = run_sweeper(sweeper_env(core, tmp_path), path)["started"]
    assert len(started) == 1, started
    held = started[0]["node"]
    assert MAINTENANCE in [t.key for t in core.read_node(held).spec.taints or []]
    _out, recap = run_playbook("healthcheck.yml", {"gpu_healthcheck_state": "absent"})
    released = core.read_node(held)
    assert MAINTENANCE not in [t.key for t in released.spec.taints or []]
    assert PREFIX + "sweep-state" not in (released.metadata.annotations or {})
    assert recap["changed"] > 0
    rbac = apis["rbac"]
    assert not [r for r in rbac.list_cluster_role().items if r.metadata.name in (AGENT, SWEEPER)]
    assert not [b for b in rbac.list_cluster_role_binding().items if b.metadata.name in (AGENT, SWEEPER)]
    wait_until(lambda: NAMESPACE not in [n.metadata.name for n in core.list_namespace().items], 120,
               "namespace %s to be gone" % NAMESPACE)
    wait_until(lambda: not live_agents(), 30, "the agent processes to stop")
    _out, recap = run_playbook("healthcheck.yml", {"gpu_healthcheck_state": "absent"})
    assert recap["changed"] == 0, recap
