"""The GPU health agent (role gpu_healthcheck), end to end on the local control plane.

Both agents are deployed once for the module: the fault-injector agent (playbooks/deploy_agent.yml)
and the health agent (playbooks/healthcheck.yml), each with the local runner's pod label, so every
agent pod runs the deployed ConfigMap's code as a local process. The health agent reads the same
per-node kernel-log file the fault agent writes (source `file`, /host/dev/kmsg). XIDs injected with
gpu_xid_inject must then show up as the AWS suite's marks on the node; return_to_service.yml must
clear them; the quarantine entry point and the sweeper run their diagnostic Jobs (KWOK completes Job
pods at once); the latency from the fault's status.injectedAt to the taint seen through a node
watch is measured over 20 runs and written to build/healthcheck-latency.json.

The health agent runs on gpu-node-0 and gpu-node-1 only (a test label selects them): gpu-node-2 is
left to other tests of the shared cluster. Whatever happens, the module fixture removes both agents
and restores every mark of those nodes as it found them. The tests run in file order.
"""
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest
import yaml
from kubernetes import client, watch

from support import (ROOT, RUN_LABEL, ansible_env, ansible_module, ansible_playbook, live_pods,
                     run_playbook, venv_tool, wait_until)

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
}
# The checks read the real machine's /proc, /sys and nvidia-smi (the simulated nodes have no
# tools), so they are off here: what is tested is the kernel-log path.
CHECKS_OFF = dict((name, False) for name in ("gpu_count", "gpu_state", "ecc", "retired_pages", "efa", "nvlink"))
HC_VARS = {
    "gpu_healthcheck_pod_labels": {RUN_LABEL: "true"},
    "gpu_healthcheck_node_selector": {TEST_LABEL: "true"},
    "gpu_healthcheck_kmsg_source": "file",
    "gpu_healthcheck_kmsg_path": "/host/dev/kmsg",
    "gpu_healthcheck_checks": CHECKS_OFF,
    "gpu_healthcheck_sweep_suspend": True,
    "gpu_healthcheck_cordon": False,
}
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


def node_marks(core, name):
    node = core.read_node(name)
    labels = node.metadata.labels or {}
    annotations = node.metadata.annotations or {}
    return {"status": labels.get(PREFIX + "status"), "severity": labels.get(PREFIX + "severity"),
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
    assert marks["unhealthy"] == [] and marks["agent_marks"] == {"taint": False, "cordon": False}, marks


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
    try:
        for name in NODES:
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
    # gpu-node-2 does not match the selector: no agent, no marks written there by this test.
    assert "gpu-node-2" not in agents
    for name in NODES:
        assert "%s: PASS" % name in stack["output"]


def test_config_map_holds_the_rendered_configuration(stack, core):
    data = core.read_namespaced_config_map("gpu-healthcheck-config", NAMESPACE).data
    config = json.loads(data["config.json"])
    assert config["prefix"] == PREFIX and config["taint_min_severity"] == "RESET" and config["cordon"] is False
    assert config["checks"] == CHECKS_OFF and config["instance_profiles"]["p5.48xlarge"] == {"gpus": 8, "efa": 32}
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
    (container,) = spec.containers
    assert not container.ports
    # The kernel log is a /dev path: privileged, as reading the host's /dev/kmsg needs.
    assert container.security_context.privileged is True and container.security_context.read_only_root_filesystem
    host = dict((v.name, v.host_path) for v in spec.volumes if v.host_path)
    assert {h.path: h.type for h in host.values()} == {"/dev/kmsg": "CharDevice", "/sys": "Directory",
                                                       "/proc/driver/nvidia": "Directory"}
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


# --- detection and return to service -----------------------------------------------------------

def test_xid79_fails_the_node_at_reboot_and_taints_it(stack, core):
    node = "gpu-node-0"
    inject(node, 79)
    result = wait_marks(node, [{"kind": "taint", "key": UNHEALTHY, "value": "true", "effect": "NoSchedule"},
                               {"kind": "label", "key": PREFIX + "severity", "value": "REBOOT"},
                               {"kind": "label", "key": PREFIX + "status", "value": "fail"}])
    assert result["nodes"][0]["matched"], result
    marks = node_marks(core, node)
    assert marks["agent_marks"] == {"taint": True, "cordon": False} and not marks["cordoned"], marks
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
    assert marks["agent_marks"] == {"taint": False, "cordon": False}
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
        assert node_marks(core, node)["agent_marks"] == {"taint": True, "cordon": True}
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
    assert result["severity"] == "PASS" and result["recommendation"] == "return-to-service", result
    assert result["outcome"] == "pass" and result["finished"] and result["timeout_seconds"] == 5400
    job = apis["batch"].read_namespaced_job(result["job"], NAMESPACE)
    assert job.spec.active_deadline_seconds == 5400 and job.spec.backoff_limit == 0
    pod_spec = job.spec.template.spec
    terms = pod_spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert terms[0].match_fields[0].values == [node]
    assert pod_spec.containers[0].command == ["dcgmi", "diag", "-r", "4"]
    assert pod_spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
    assert PREFIX + "mode" not in (core.read_node(node).metadata.labels or {})
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
    assert result["severity"] == "REBOOT" and result["recommendation"] == "reboot-and-retest"
    assert PREFIX + "mode" not in (core.read_node(node).metadata.labels or {})


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
    return dict(os.environ, KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port,
                KUBERNETES_SERVICEACCOUNT_DIR=str(sa_dir), POD_NAMESPACE=NAMESPACE)


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
