"""gpu_xid_inject against a stand-in API server: `nodes` checks every node with one list of Nodes and
one list of Leases, creates nothing unless all pass, creates in parallel and returns the faults in
the order given; the argument spec and the parameter rules through `ansible localhost -m`."""
import copy
import datetime
import itertools
import json
import threading
import time

import pytest

from kubernetes.client.rest import ApiException
from kubernetes.dynamic.exceptions import api_exception

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import fault_api, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import gpu_xid_inject

from ansible_cli import run_module

NAMESPACE = "gpu-fault-injection"
GPUS = [{"index": i, "minor": i + 1, "pci": "0000:%02x:00.0" % (0x53 + 0x11 * i), "uuid": None} for i in range(2)]
CONTROL_PLANE = {"node-role.kubernetes.io/control-plane": ""}


def now_text(seconds_ago=0):
    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node(name, labels=None):
    return {"kind": "Node", "metadata": {"name": name, "labels": dict(labels or {})}}


def lease(node_name, seconds_ago=1):
    return {"kind": "Lease", "metadata": {"name": fault_api.lease_name(node_name), "namespace": NAMESPACE,
                                          "annotations": {fault_api.INVENTORY_ANNOTATION: json.dumps(GPUS)}},
            "spec": {"holderIdentity": "agent-" + node_name, "leaseDurationSeconds": 30,
                     "renewTime": now_text(seconds_ago)}}


def api_error(status, message):
    error = ApiException(status=status, reason={404: "Not Found", 500: "Internal Server Error"}[status])
    error.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    error.headers = {"Content-Type": "application/json"}
    return api_exception(error)


class Resource:
    def __init__(self, kind):
        self.kind = kind


class Result:
    def __init__(self, obj):
        self.obj = copy.deepcopy(obj)

    def to_dict(self):
        return copy.deepcopy(self.obj)


def _selected(obj, selector):
    labels = obj["metadata"].get("labels") or {}
    for term in (selector or "").split(","):
        key, eq, value = term.partition("=")
        if term and (key not in labels or (eq and labels[key] != value)):
            return False
    return True


class FakeK8s:
    """Nodes, Leases and GPUFaults; every call recorded. An instant agent finishes each created fault,
    so the module's wait finds them done in its first list. create_delay: seconds per node, to make
    the parallel creates finish out of order."""

    def __init__(self, nodes, leases, dry_run=False, create_delay=None, fail_create=()):
        self.objects = {}
        self.calls = []
        self.dry_run = dry_run
        self.create_delay = create_delay or {}
        self.fail_create = set(fail_create)
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.suffix = itertools.count(1)
        for obj in list(nodes) + list(leases):
            self.objects[(obj["kind"], obj["metadata"].get("namespace") or "", obj["metadata"]["name"])] = obj

    def calls_of(self, verb, kind):
        return [c for c in self.calls if c[0] == verb and c[1] == kind]

    def faults(self):
        return [o for (kind, _ns, _n), o in self.objects.items() if kind == "GPUFault"]

    def resource(self, kind, api_version):
        return Resource(kind)

    def get(self, res, name=None, namespace=None, label_selector=None, **_kwargs):
        with self.lock:
            self.calls.append(("get" if name else "list", res.kind, name))
        if name:
            obj = self.objects.get((res.kind, namespace or "", name))
            if obj is None:
                raise api_error(404, '%ss "%s" not found' % (res.kind.lower(), name))
            return Result(obj)
        items = [o for (kind, ns, _n), o in sorted(self.objects.items())
                 if kind == res.kind and (namespace is None or ns == namespace) and _selected(o, label_selector)]
        return Result({"items": items, "metadata": {"resourceVersion": "1"}})

    def create(self, res, body, namespace=None, **_kwargs):
        target = body["spec"]["node"]
        with self.lock:
            self.calls.append(("create", res.kind, target))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.create_delay.get(target, 0))
            if target in self.fail_create:
                raise api_error(500, "etcdserver: request timed out")
            return Result(self.store(body, namespace))
        finally:
            with self.lock:
                self.in_flight -= 1

    def store(self, body, namespace):
        obj = copy.deepcopy(body)
        metadata = obj["metadata"]
        metadata.setdefault("name", metadata.get("generateName", "") + "x%d" % next(self.suffix))
        if self.dry_run:
            return obj
        gpus = GPUS if obj["spec"].get("gpu") == {"all": True} else GPUS[obj["spec"]["gpu"]["index"]:][:1]
        obj["status"] = {"phase": fault_api.PHASE_INJECTED, "gpus": gpus, "records": ["rec " + obj["spec"]["node"]],
                         "agent": "agent-" + obj["spec"]["node"], "injectedAt": now_text()}
        with self.lock:
            self.objects[("GPUFault", namespace, metadata["name"])] = obj
        return obj


class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = dict(state="present", node=None, nodes=None, node_selector=None, count=1, gpu="0", xid=79,
                           sxid=None, text=None, recovery_action=None, method="kmsg", shim=None, name=None,
                           drill="d1", agent_namespace=NAMESPACE, wait=True, wait_timeout=5)
        self.params.update(params)


def fleet(count, **kwargs):
    names = ["gpu-node-%d" % i for i in range(count)]
    return names, FakeK8s([node(n) for n in names], [lease(n) for n in names], **kwargs)


def run(cluster, monkeypatch, check_mode=False, **params):
    """The module's present() or absent() on the fake; its failure as a pytest.raises-able exception."""
    assert gpu_xid_inject.check_params(FakeModule(**params).params) is None
    cluster.dry_run = check_mode
    monkeypatch.setattr(kube, "client", lambda module: cluster)
    injector = gpu_xid_inject.Injector(FakeModule(check_mode=check_mode, **params))
    return injector.present() if injector.params["state"] == "present" else injector.absent()


def test_nodes_are_injected_in_parallel_and_returned_in_the_order_given(monkeypatch):
    names, cluster = fleet(20)
    order = list(reversed(names))
    # The first nodes given are the slowest to create: completion order is the opposite of the list's.
    cluster.create_delay = dict((n, 0.03 * (20 - i) / 20) for i, n in enumerate(order))
    result = run(cluster, monkeypatch, nodes=order)
    assert result["changed"] is True and result["nodes"] == order
    assert [f["node"] for f in result["faults"]] == order
    assert all(f["phase"] == "Injected" and f["records"] == ["rec " + f["node"]] for f in result["faults"])
    assert all(f["name"].startswith("xid79-%s-" % f["node"]) for f in result["faults"])
    assert len(cluster.faults()) == 20 and all(
        o["metadata"]["labels"][fault_api.DRILL_LABEL] == "d1" for o in cluster.faults())
    assert 1 < cluster.most_in_flight <= gpu_xid_inject.MAX_CREATE_WORKERS


def test_nodes_are_read_with_one_list_of_nodes_and_one_list_of_leases(monkeypatch):
    names, cluster = fleet(12)
    run(cluster, monkeypatch, nodes=names)
    assert len(cluster.calls_of("list", "Node")) == 1 and cluster.calls_of("get", "Node") == []
    assert len(cluster.calls_of("list", "Lease")) == 1 and cluster.calls_of("get", "Lease") == []
    assert len(cluster.calls_of("list", "GPUFault")) == 1   # one wait for all twelve
    assert len(cluster.calls_of("create", "GPUFault")) == 12


def test_node_selector_reads_the_leases_with_one_list(monkeypatch):
    gpu = {"nvidia.com/gpu.present": "true"}
    cluster = FakeK8s([node("cp-0", dict(gpu, **CONTROL_PLANE)), node("cpu-0"), node("gpu-a", gpu), node("gpu-b", gpu),
                       node("gpu-c", gpu), node("gpu-d", gpu)],
                      [lease("cp-0"), lease("cpu-0"), lease("gpu-a", seconds_ago=120), lease("gpu-b"), lease("gpu-c"),
                       lease("gpu-d")])
    result = run(cluster, monkeypatch, node_selector="nvidia.com/gpu.present=true", count=2)
    assert result["nodes"] == ["gpu-b", "gpu-c"]
    assert len(cluster.calls_of("list", "Lease")) == 1 and cluster.calls_of("get", "Lease") == []


def test_missing_nodes_are_all_named_and_nothing_is_created(monkeypatch):
    _names, cluster = fleet(3)
    with pytest.raises(fault_api.FaultSpecError, match="node.s. not found: gpu-node-7, gpu-node-9$"):
        run(cluster, monkeypatch, nodes=["gpu-node-0", "gpu-node-7", "gpu-node-1", "gpu-node-9"])
    assert cluster.calls_of("create", "GPUFault") == [] and cluster.calls_of("list", "Lease") == []


def test_control_plane_nodes_are_refused(monkeypatch):
    cluster = FakeK8s([node("gpu-node-0"), node("cp-0", CONTROL_PLANE),
                       node("old-master", {"node-role.kubernetes.io/master": ""})],
                      [lease(n) for n in ("gpu-node-0", "cp-0", "old-master")])
    with pytest.raises(fault_api.FaultSpecError, match="refusing control-plane node.s.: cp-0, old-master$"):
        run(cluster, monkeypatch, nodes=["gpu-node-0", "cp-0", "old-master"])
    assert cluster.calls_of("create", "GPUFault") == []


def test_nodes_without_a_live_agent_are_each_explained_and_nothing_is_created(monkeypatch):
    names = ["gpu-node-0", "gpu-node-1", "gpu-node-2", "cpu-node-0"]
    cluster = FakeK8s([node(n) for n in names], [lease("gpu-node-0"), lease("gpu-node-1", seconds_ago=120),
                                                 lease("gpu-node-2")])
    with pytest.raises(kube.KubeError) as info:
        run(cluster, monkeypatch, nodes=names)
    message = str(info.value)
    assert message.startswith("2 of 4 target node(s) have no live fault-injector agent: ")
    assert "agent on node gpu-node-1 stopped renewing its Lease" in message
    assert "no fault-injector agent runs on node cpu-node-0" in message
    assert "gpu-node-0" not in message and "gpu-node-2" not in message
    assert cluster.calls_of("create", "GPUFault") == [] and cluster.faults() == []


def test_a_gpu_one_node_lacks_fails_every_node_before_anything_is_created(monkeypatch):
    names, cluster = fleet(3)
    one_gpu = cluster.objects[("Lease", NAMESPACE, fault_api.lease_name("gpu-node-1"))]
    one_gpu["metadata"]["annotations"][fault_api.INVENTORY_ANNOTATION] = json.dumps(GPUS[:1])
    with pytest.raises(fault_api.FaultSpecError, match="GPU index 1 is out of range: node gpu-node-1 has GPUs 0-0$"):
        run(cluster, monkeypatch, nodes=names, gpu="1")
    assert cluster.calls_of("create", "GPUFault") == []


def test_invalid_names_are_refused_before_any_call(monkeypatch):
    _names, cluster = fleet(3)
    with pytest.raises(fault_api.FaultSpecError, match="not a valid Kubernetes node name"):
        run(cluster, monkeypatch, nodes=["gpu-node-0", "gpu-node-1; reboot"])
    assert cluster.calls == []


def test_check_mode_predicts_every_node_and_creates_nothing(monkeypatch):
    names, cluster = fleet(3)
    result = run(cluster, monkeypatch, check_mode=True, nodes=names, gpu="1")
    assert result["changed"] is True and [f["node"] for f in result["faults"]] == names
    for fault in result["faults"]:
        assert fault["phase"] == "DryRun" and "name" not in fault
        assert fault["pci_addresses"] == [GPUS[1]["pci"]]
        assert any("Xid (PCI:0000:64:00): 79" in r for r in fault["records"])
    # Server-side dry runs, as for a single node: the API checks each object, nothing is stored.
    assert len(cluster.calls_of("create", "GPUFault")) == 3 and cluster.faults() == []
    assert cluster.calls_of("list", "GPUFault") == []   # nothing to wait for


def test_failed_creates_are_named_and_the_created_faults_listed(monkeypatch):
    names, cluster = fleet(4, fail_create=["gpu-node-2"])
    with pytest.raises(kube.KubeError) as info:
        run(cluster, monkeypatch, nodes=names)
    message = str(info.value)
    assert message.startswith("1 of 4 GPUFault creates failed: creating the GPUFault for node gpu-node-2 failed: "
                              "HTTP 500")
    created = [o["metadata"]["name"] for o in sorted(cluster.faults(), key=lambda o: o["spec"]["node"])]
    assert len(created) == 3 and message.endswith(
        " (created, and staying as the record: %s; delete them with state=absent)" % ", ".join(created))


def test_a_named_fault_on_a_list_of_one_node_is_idempotent(monkeypatch):
    names, cluster = fleet(2)
    first = run(cluster, monkeypatch, nodes=names[1:], name="f1")
    again = run(cluster, monkeypatch, nodes=names[1:], name="f1")
    assert first["changed"] is True and again["changed"] is False
    assert again["faults"][0]["name"] == "f1" and len(cluster.faults()) == 1


def test_absent_with_nodes_deletes_only_their_faults(monkeypatch):
    names, cluster = fleet(3)
    run(cluster, monkeypatch, nodes=names)
    deleted = []
    cluster.delete = lambda res, name=None, namespace=None: deleted.append(name) or cluster.objects.pop(
        ("GPUFault", namespace, name))
    result = run(cluster, monkeypatch, state="absent", nodes=["gpu-node-0", "gpu-node-2"])
    assert sorted(f["node"] for f in result["faults"]) == ["gpu-node-0", "gpu-node-2"]
    assert [o["spec"]["node"] for o in cluster.faults()] == ["gpu-node-1"]


@pytest.mark.parametrize("params, words", [
    (dict(node="a", nodes=["b"]), "give exactly one of node, nodes or node_selector"),
    (dict(nodes=["a"], node_selector="x=y"), "give exactly one of node, nodes or node_selector"),
    (dict(node="a", nodes=["b"], node_selector="x=y"), "give exactly one of node, nodes or node_selector"),
    (dict(), "give exactly one of node, nodes or node_selector"),
    (dict(nodes=[]), "nodes must name at least one node"),
    (dict(state="absent", nodes=[]), "nodes must name at least one node"),
    (dict(state="absent", node="a", nodes=["b"]), "give at most one of node or nodes"),
    (dict(nodes=["a", "b"], name="f"), "name needs a single target node"),
    (dict(nodes=["a", "b", "a", "c", "b", "a"]), "nodes lists a, b more than once"),
    (dict(state="absent", nodes=["a", "a"]), "nodes lists a more than once"),
])
def test_parameter_rules(params, words):
    assert gpu_xid_inject.check_params(FakeModule(**params).params) == words


def test_parameter_rules_accept_one_target():
    for params in (dict(node="a"), dict(nodes=["a", "b"]), dict(nodes=["a"], name="f"), dict(node_selector="x=y"),
                   dict(state="absent"), dict(state="absent", nodes=["a"])):
        assert gpu_xid_inject.check_params(FakeModule(**params).params) is None, params


def ansible_run(args):
    """The module through `ansible localhost -m`, with a kubeconfig that does not exist."""
    return run_module("gpu_resilience.fault_injection.gpu_xid_inject", args)


@pytest.mark.parametrize("args, words", [
    ({"node": "gpu-node-0", "nodes": ["gpu-node-1"], "xid": 79}, "give exactly one of node, nodes or node_selector"),
    ({"nodes": "gpu-node-0,gpu-node-0", "xid": 79}, None),
])
def test_the_module_takes_nodes_as_a_list(args, words):
    result = ansible_run(args)
    assert result.get("failed") is True and "Traceback" not in json.dumps(result), result
    if words:
        assert result["msg"] == words
    else:  # a comma-separated string is a list to Ansible; this one names a node twice
        assert result["msg"] == "nodes lists gpu-node-0 more than once", result
