"""The fault_injector_agent role, end to end on the local control plane.

playbooks/deploy_agent.yml runs through ansible-playbook (the virtualenv's, with the collection from
build/collections) with the local runner's pod label, so every agent pod on a simulated GPU node
runs the deployed ConfigMap's code as a local process. The tests then check what the role promised:
the CRD, one live agent per GPU node and none elsewhere, fresh Leases carrying each node's GPUs,
least-privilege RBAC, no network exposure, a second run that changes nothing, a GPUFault carried out
into the node's kernel-log file, and a removal that leaves nothing behind and is itself idempotent.

The tests in this module run in file order and share one deployment.
"""
import datetime
import json
import os
import re
import uuid

import pytest
from kubernetes import client

from support import (PLAYBOOK_TIMINGS, ROOT, RUN_LABEL, RUNNER_STATE, ansible_playbook, exists, kmsg_path,
                     live_pods, run_playbook, wait_until)

NAMESPACE = "gpu-fault-injection"
AGENT = "gpu-fault-agent"
CRD = "gpufaults.faultinjection.gpu-resilience.io"
GROUP, VERSION, PLURAL = "faultinjection.gpu-resilience.io", "v1alpha1", "gpufaults"
INVENTORY_ANNOTATION = GROUP + "/gpus"
MANAGED_BY = "gpu_resilience.fault_injection"
GPU_SELECTOR = "nvidia.com/gpu.present=true"
GPUS_PER_NODE = 8
AGENT_SOURCE = os.path.join(ROOT, "files", "agent", "gpu_fault_agent.py")
DEPLOY_VARS = {"fault_injector_agent_pod_labels": {RUN_LABEL: "true"}}

# The Role grants exactly this: (apiGroup, resource, verb).
EXPECTED_GRANTS = {(GROUP, "gpufaults", verb) for verb in ("get", "list", "watch")} \
    | {(GROUP, "gpufaults/status", verb) for verb in ("get", "update", "patch")} \
    | {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update", "delete")} \
    | {(group, "events", verb) for group in ("", "events.k8s.io") for verb in ("create", "patch")}


# --- helpers -----------------------------------------------------------------------------------


def live_agents():
    return live_pods(NAMESPACE, AGENT + "-")


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return [arg.decode() for arg in f.read().split(b"\0") if arg]


def gpus_dir(node):
    return os.path.join(RUNNER_STATE, "nodes", node, "host", "proc", "driver", "nvidia", "gpus")


def read_lease(coordination, node):
    return coordination.read_namespaced_lease(AGENT + "-" + node, NAMESPACE)


def lease_problem(lease, pod_name):
    """Why the Lease does not show a live agent in pod_name, or None if it does."""
    spec = lease.spec
    if spec.holder_identity != pod_name:
        return "held by %s, not by the node's agent pod %s" % (spec.holder_identity, pod_name)
    if spec.renew_time is None:
        return "never renewed"
    age = (datetime.datetime.now(datetime.timezone.utc) - spec.renew_time).total_seconds()
    if age > spec.lease_duration_seconds:
        return "last renewed %.0fs ago, longer than its %ss duration" % (age, spec.lease_duration_seconds)
    return None


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apis(api_client):
    return {
        "ext": client.ApiextensionsV1Api(api_client),
        "rbac": client.RbacAuthorizationV1Api(api_client),
        "coordination": client.CoordinationV1Api(api_client),
        "custom": client.CustomObjectsApi(api_client),
    }


@pytest.fixture(scope="module")
def nodes(core):
    gpu = sorted(n.metadata.name for n in core.list_node(label_selector=GPU_SELECTOR).items)
    other = sorted(n.metadata.name for n in core.list_node().items if n.metadata.name not in gpu)
    assert gpu, "the local cluster has no GPU nodes (label %s)" % GPU_SELECTOR
    assert other, "the local cluster has no node without GPUs (e.g. cpu-node-0)"
    return {"gpu": gpu, "other": other}


@pytest.fixture(scope="module")
def deployed(nodes):
    """Deploy the agent once for the module (after removing any leftover of an earlier run);
    remove it at the end whatever happened."""
    run_playbook("remove_agent.yml")
    out, recap = run_playbook("deploy_agent.yml", DEPLOY_VARS)
    yield {"output": out, "recap": recap}
    ansible_playbook("remove_agent.yml")
    print("\nplaybook timings (s): %s" % json.dumps(PLAYBOOK_TIMINGS, sort_keys=True))


# --- tests -------------------------------------------------------------------------------------

def test_crd_is_established(deployed, apis):
    crd = apis["ext"].read_custom_resource_definition(CRD)
    conditions = {c.type: c.status for c in crd.status.conditions or []}
    assert conditions.get("Established") == "True", conditions
    assert crd.spec.scope == "Namespaced" and crd.spec.names.kind == "GPUFault"


def test_one_agent_per_gpu_node_runs_the_config_map_code(deployed, nodes, core):
    agents = live_agents()
    for node in nodes["gpu"]:
        assert len(agents.get(node, [])) == 1, "expected one live agent on %s: %s" % (node, agents)
    for node in nodes["other"]:
        assert node not in agents, "an agent runs on %s, which has no GPUs" % node
    with open(AGENT_SOURCE, "rb") as f:
        source = f.read()
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(NAMESPACE).items}
    for node in nodes["gpu"]:
        pod_name, pid, entry = agents[node][0]
        assert pods[pod_name].spec.node_name == node
        # The process runs the ConfigMap's copy of the agent, materialised in the pod's volume.
        script = os.path.join(entry["dir"], "volumes", "agent-code", "gpu_fault_agent.py")
        assert cmdline(pid)[1] == script, cmdline(pid)
        with open(script, "rb") as f:
            assert f.read() == source, "the deployed agent differs from files/agent/gpu_fault_agent.py"


def test_every_gpu_node_has_a_fresh_lease_with_its_gpus(deployed, nodes, core, apis):
    pods = {p.spec.node_name: p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items
            if p.metadata.deletion_timestamp is None}
    for node in nodes["gpu"]:
        lease = read_lease(apis["coordination"], node)
        assert lease_problem(lease, pods[node]) is None, "%s: %s" % (node, lease_problem(lease, pods[node]))
        inventory = json.loads(lease.metadata.annotations[INVENTORY_ANNOTATION])
        assert len(inventory) == GPUS_PER_NODE, inventory
        assert [gpu["index"] for gpu in inventory] == list(range(GPUS_PER_NODE))
        assert sorted(gpu["pci"] for gpu in inventory) == sorted(os.listdir(gpus_dir(node)))
    # The play reported the same inventory (fact fault_injector_agent_nodes).
    for node in nodes["gpu"]:
        assert "%s: GPUs %d" % (node, GPUS_PER_NODE) in deployed["output"], deployed["output"][-3000:]


def test_rbac_is_least_privilege(deployed, apis):
    rbac = apis["rbac"]
    roles = rbac.list_namespaced_role(NAMESPACE).items
    assert [r.metadata.name for r in roles] == [AGENT]
    grants = set()
    for rule in roles[0].rules:
        assert not rule.resource_names and not rule.non_resource_urls, rule
        grants |= {(g, r, v) for g in rule.api_groups for r in rule.resources for v in rule.verbs}
    assert grants == EXPECTED_GRANTS, \
        "extra: %s, missing: %s" % (grants - EXPECTED_GRANTS, EXPECTED_GRANTS - grants)
    bindings = rbac.list_namespaced_role_binding(NAMESPACE).items
    assert [b.metadata.name for b in bindings] == [AGENT]
    assert bindings[0].role_ref.kind == "Role" and bindings[0].role_ref.name == AGENT
    assert [(s.kind, s.name, s.namespace) for s in bindings[0].subjects] == [("ServiceAccount", AGENT, NAMESPACE)]
    # Nothing cluster-wide: no ClusterRole or ClusterRoleBinding from the role, and no cluster
    # binding that names the agent's ServiceAccount.
    # (Other roles of the collection, e.g. gpu_healthcheck, may own ClusterRoles: select this role's objects.)
    selector = "app.kubernetes.io/managed-by=%s,app.kubernetes.io/name=%s" % (MANAGED_BY, AGENT)
    assert rbac.list_cluster_role(label_selector=selector).items == []
    assert rbac.list_cluster_role_binding(label_selector=selector).items == []
    assert not [r.metadata.name for r in rbac.list_cluster_role().items if AGENT in r.metadata.name]
    for binding in rbac.list_cluster_role_binding().items:
        for subject in binding.subjects or []:
            assert not (subject.kind == "ServiceAccount" and subject.namespace == NAMESPACE), binding.metadata.name


def test_agent_is_not_exposed_on_the_network(deployed, core, apps):
    ds = apps.read_namespaced_daemon_set(AGENT, NAMESPACE)
    spec = ds.spec.template.spec
    assert not spec.host_network
    assert spec.host_pid is True
    for container in spec.containers:
        assert not container.ports, container.ports
        assert container.security_context.privileged is True
        assert container.security_context.read_only_root_filesystem is True
    assert core.list_namespaced_service(NAMESPACE).items == []
    for pod in core.list_namespaced_pod(NAMESPACE).items:
        assert not pod.spec.host_network


def test_second_deploy_changes_nothing(deployed):
    _out, recap = run_playbook("deploy_agent.yml", DEPLOY_VARS)
    assert recap["changed"] == 0, recap


def test_check_mode_reports_but_changes_nothing(deployed, core, apps, apis):
    _out, recap = run_playbook("deploy_agent.yml", DEPLOY_VARS, check=True)
    assert recap["changed"] == 0, recap
    generation = apps.read_namespaced_daemon_set(AGENT, NAMESPACE).metadata.generation
    _out, recap = run_playbook("remove_agent.yml", check=True)
    assert recap["changed"] > 0, recap
    assert exists(lambda: apis["ext"].read_custom_resource_definition(CRD))
    assert exists(lambda: core.read_namespace(NAMESPACE))
    assert apps.read_namespaced_daemon_set(AGENT, NAMESPACE).metadata.generation == generation
    assert core.read_namespaced_config_map(AGENT, NAMESPACE).data


def test_gpufault_is_injected_into_the_node_kernel_log(deployed, nodes, apis):
    node = "gpu-node-1" if "gpu-node-1" in nodes["gpu"] else nodes["gpu"][0]
    inventory = json.loads(read_lease(apis["coordination"], node).metadata.annotations[INVENTORY_ANNOTATION])
    pci = next(gpu["pci"] for gpu in inventory if gpu["index"] == 2)
    bdf = pci.rsplit(".", 1)[0]                 # dddd:bb:dd, as the driver writes it in XID lines
    path = kmsg_path(node)
    offset = os.path.getsize(path) if os.path.exists(path) else 0

    name = "it-xid79-" + uuid.uuid4().hex[:6]
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
        "apiVersion": GROUP + "/" + VERSION, "kind": "GPUFault",
        "metadata": {"name": name, "labels": {GROUP + "/node": node}},
        "spec": {"node": node, "gpu": {"index": 2}, "xid": 79}})

    def phase():
        obj = apis["custom"].get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        status = obj.get("status") or {}
        return status if status.get("phase") in ("Injected", "Failed") else None

    status = wait_until(phase, 60, "GPUFault %s to be carried out" % name)
    assert status["phase"] == "Injected", status
    assert [gpu["pci"] for gpu in status.get("gpus") or []] == [pci], status

    with open(path, "rb") as f:
        f.seek(offset)
        written = f.read().decode("ascii", "replace")
    assert re.search(r"NVRM: Xid \(PCI:%s\): 79, " % re.escape(bdf), written), written
    # The fallen-off-the-bus record names the full address.
    assert "NVIDIA GPU %s" % pci in written, written


def test_remove_leaves_nothing_behind(deployed, core, apis):
    _out, recap = run_playbook("remove_agent.yml")
    assert recap["changed"] > 0, recap
    assert not exists(lambda: apis["ext"].read_custom_resource_definition(CRD))
    assert not exists(lambda: core.read_namespace(NAMESPACE))
    leases = apis["coordination"].list_lease_for_all_namespaces().items
    assert not [lease.metadata.name for lease in leases if lease.metadata.name.startswith(AGENT + "-")]
    # The runner stops the processes of deleted pods (SIGTERM, then SIGKILL after the grace).
    wait_until(lambda: not live_agents(), 30, "the agent processes to end")

    _out, recap = run_playbook("remove_agent.yml")
    assert recap["changed"] == 0, recap
