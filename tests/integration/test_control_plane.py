"""The local control plane is a real one: its controllers, scheduler and admission act on our objects.

Each test exercises behaviour a mock would not have: the DaemonSet controller and the scheduler
placing pods, cordons honoured, PodDisruptionBudgets enforced by the Eviction API, and rolling
updates driven by the Deployment controller.
"""
import ipaddress
import os

import pytest
from kubernetes import client

from support import localcluster, wait_until

GPU_SELECTOR = "nvidia.com/gpu.present=true"
PAUSE = {"name": "main", "image": "registry.invalid/pause:3.10", "command": ["/pause"]}


def gpu_nodes(core):
    return sorted(n.metadata.name for n in core.list_node(label_selector=GPU_SELECTOR).items)


def pods(core, ns, selector):
    return core.list_namespaced_pod(ns, label_selector=selector).items


def running(pod):
    return pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None


def running_pods(core, ns, selector, count):
    """The Running pods matching selector if there are exactly `count` of them, else None."""
    found = [p for p in pods(core, ns, selector) if running(p)]
    return found if len(found) == count else None


def deployment(name, replicas, labels, **pod_spec):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [dict(PAUSE)], **pod_spec}}},
    }


def scheduled_by_default_scheduler(core, ns, pod_name):
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=" + pod_name).items
    return any(e.reason == "Scheduled" and "default-scheduler" in (e.reporting_component or e.source.component or "")
               for e in events)


def test_daemonset_gets_one_running_pod_per_gpu_node(core, apps, namespace):
    nodes = gpu_nodes(core)
    assert len(nodes) >= 2, "the local cluster should have at least two GPU nodes"
    labels = {"app": "gpu-ds"}
    apps.create_namespaced_daemon_set(namespace, {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "gpu-ds"},
        "spec": {"selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"nodeSelector": {"nvidia.com/gpu.present": "true"},
                                       "containers": [dict(PAUSE)]}}}})

    def all_running():
        found = [p for p in pods(core, namespace, "app=gpu-ds") if running(p)]
        return found if len(found) == len(nodes) else None

    found = wait_until(all_running, 60, "one Running DaemonSet pod per GPU node")
    assert sorted(p.spec.node_name for p in found) == nodes  # one per GPU node, none elsewhere
    for pod in found:
        assert pod.metadata.owner_references[0].kind == "DaemonSet"
        assert pod.status.pod_ip.startswith("127."), pod.status.pod_ip
        assert pod.status.host_ip.startswith("127."), pod.status.host_ip
        wait_until(lambda: scheduled_by_default_scheduler(core, namespace, pod.metadata.name), 30,
                   "a Scheduled event from default-scheduler for " + pod.metadata.name)
    ds = apps.read_namespaced_daemon_set_status("gpu-ds", namespace)
    assert ds.status.desired_number_scheduled == len(nodes)
    # Distinct nodes hand out addresses from distinct loopback pod CIDRs.
    assert len({p.status.pod_ip for p in found}) == len(found)


@pytest.fixture()
def cordoned_node(core):
    node = gpu_nodes(core)[0]
    core.patch_node(node, {"spec": {"unschedulable": True}})
    yield node
    core.patch_node(node, {"spec": {"unschedulable": None}})


def test_cordoned_node_gets_no_new_pods(core, apps, namespace, cordoned_node):
    # A pod that may only run on the cordoned node stays Pending, marked unschedulable.
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pinned"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": cordoned_node}, "containers": [dict(PAUSE)]}})

    def unschedulable():
        pod = core.read_namespaced_pod("pinned", namespace)
        cond = [c for c in (pod.status.conditions or []) if c.type == "PodScheduled"]
        return cond and cond[0].status == "False" and cond[0].reason == "Unschedulable"

    wait_until(unschedulable, 30, "the scheduler to mark the pinned pod Unschedulable")
    assert core.read_namespaced_pod("pinned", namespace).spec.node_name is None

    # Spread replicas land everywhere except the cordoned node.
    labels = {"app": "spread"}
    apps.create_namespaced_deployment(namespace, deployment("spread", 6, labels))
    placed = wait_until(lambda: running_pods(core, namespace, "app=spread", 6), 60, "6 running replicas")
    assert cordoned_node not in {p.spec.node_name for p in placed}


def test_eviction_blocked_by_pdb_is_refused_with_429(core, apps, policy, namespace):
    labels = {"app": "guarded"}
    apps.create_namespaced_deployment(namespace, deployment("guarded", 2, labels))
    policy.create_namespaced_pod_disruption_budget(namespace, {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": labels}}})

    def settled():
        pdb = policy.read_namespaced_pod_disruption_budget("guarded", namespace)
        return pdb.status and pdb.status.current_healthy == 2 and pdb.status.disruptions_allowed == 0

    wait_until(settled, 60, "the disruption controller to count 2 healthy pods")
    victim = pods(core, namespace, "app=guarded")[0].metadata.name
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": victim, "namespace": namespace}}
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod_eviction(victim, namespace, eviction)
    assert refused.value.status == 429
    assert "disruption budget" in refused.value.body

    # Once the budget allows it, the same eviction goes through: the 429 came from the budget.
    policy.patch_namespaced_pod_disruption_budget("guarded", namespace, {"spec": {"minAvailable": 1}})
    wait_until(lambda: policy.read_namespaced_pod_disruption_budget("guarded", namespace)
               .status.disruptions_allowed == 1, 30, "the budget to allow one disruption")
    core.create_namespaced_pod_eviction(victim, namespace, eviction)
    wait_until(lambda: victim not in {p.metadata.name for p in pods(core, namespace, "app=guarded")},
               30, "the evicted pod to go away")


def test_strategic_merge_patch_rolls_out_new_pods(core, apps, namespace):
    labels = {"app": "rolling"}
    apps.create_namespaced_deployment(namespace, deployment("rolling", 3, labels))
    before = wait_until(lambda: running_pods(core, namespace, "app=rolling", 3), 60, "3 running replicas")
    old_uids = {p.metadata.uid for p in before}

    # A strategic merge patch merges the container list by name: only env is added to "main".
    apps.patch_namespaced_deployment("rolling", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "main", "env": [{"name": "ROLLOUT", "value": "2"}]}]}}}})

    def rolled_out():
        d = apps.read_namespaced_deployment_status("rolling", namespace)
        st = d.status
        if not (st.observed_generation == d.metadata.generation and st.updated_replicas == 3
                and st.replicas == 3 and st.available_replicas == 3):
            return None
        current = [p for p in pods(core, namespace, "app=rolling") if running(p)]
        return current if len(current) == 3 else None

    after = wait_until(rolled_out, 90, "the rollout to finish")
    assert old_uids.isdisjoint(p.metadata.uid for p in after)
    for pod in after:
        (main,) = pod.spec.containers
        assert main.image == PAUSE["image"]  # merged, not replaced
        assert [(e.name, e.value) for e in main.env] == [("ROLLOUT", "2")]
    replica_sets = apps.list_namespaced_replica_set(namespace, label_selector="app=rolling").items
    assert len(replica_sets) == 2


def _sockets_of(pids):
    """Map socket inode -> pid for every socket the given processes hold."""
    inodes = {}
    for pid in pids:
        fd_dir = "/proc/%d/fd" % pid
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    return inodes


def _tcp_table():
    """(local ip, remote ip, state, inode) for every IPv4/IPv6 TCP and UDP socket on the machine."""
    rows = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open("/proc/net/" + table) as f:
            next(f)
            for line in f:
                cols = line.split()
                rows.append((_ip(cols[1]), _ip(cols[2]), cols[3], cols[9]))
    return rows


def _ip(hex_addr):
    raw = bytes.fromhex(hex_addr.split(":")[0])
    if len(raw) == 4:
        return ipaddress.ip_address(raw[::-1])
    # /proc stores IPv6 as four little-endian 32-bit words.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.ip_address(words)


def _loopback(ip):
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip in ipaddress.ip_network("127.0.0.0/8") or ip == ipaddress.ip_address("::1")


def test_every_socket_of_the_cluster_is_on_loopback():
    state = os.environ.get("LOCALCLUSTER_DIR")
    assert state, "LOCALCLUSTER_DIR must name the cluster's state directory (tools/local-cluster env)"
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                if localcluster.marked_by(state, f.read()):
                    pids.append(int(entry))
        except OSError:
            continue
    assert len(pids) >= 6, "expected etcd, API server, controller-manager, scheduler, KWOK and runner"
    owned = _sockets_of(pids)
    checked = 0
    for local, remote, _state, inode in _tcp_table():
        if inode in owned:
            checked += 1
            assert _loopback(local), "pid %d uses local address %s" % (owned[inode], local)
            assert remote.is_unspecified or _loopback(remote), "pid %d talks to %s" % (owned[inode], remote)
    assert checked > 0
