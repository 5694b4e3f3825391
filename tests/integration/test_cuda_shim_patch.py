"""cuda_shim_patch end to end on the local control plane.

A Deployment (two replicas of a GPU container plus a sidecar without GPUs, with its own env and
LD_PRELOAD) and a DynamoGraphDeployment (a minimal CRD installed here; two GPU services and a
frontend) are patched through `ansible`: the real Deployment controller and scheduler roll the new
pods onto the pinned node, arming changes only the environment, and `state: absent`, run as its own
`ansible` invocation from the recorded annotation only, leaves both pod templates byte-identical.
Every refused request is checked to have changed nothing.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from kubernetes import client

from support import ROOT, RUN_LABEL, RUNNER_STATE, ansible_module, exists, wait_until

MODULE = "gpu_resilience.fault_injection.cuda_shim_patch"
ANNOTATION = "fault-injection.gpu-resilience.io/cuda-shim"
MANAGED = "app.kubernetes.io/managed-by=cuda_shim_patch"
PIN = "gpu-node-1"
LABELS = {"app": "shim-web"}
DGD_GROUP, DGD_VERSION, DGD_PLURAL = "nvidia.com", "v1alpha1", "dynamographdeployments"
DGD_CRD = "dynamographdeployments.nvidia.com"
SHIM_SOURCE = os.path.join(ROOT, "files", "shim", "cuda_fault_shim.c")


def dumps(obj):
    return json.dumps(obj, sort_keys=True)


@pytest.fixture(scope="module")
def dgd_crd(api_client):
    """A minimal DynamoGraphDeployment CRD (schema-less spec), unless the cluster already has one."""
    ext = client.ApiextensionsV1Api(api_client)
    created = False
    if not exists(lambda: ext.read_custom_resource_definition(DGD_CRD)):
        ext.create_custom_resource_definition({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": DGD_CRD},
            "spec": {"group": DGD_GROUP, "scope": "Namespaced",
                     "names": {"kind": "DynamoGraphDeployment", "listKind": "DynamoGraphDeploymentList",
                               "plural": DGD_PLURAL, "singular": "dynamographdeployment", "shortNames": ["dgd"]},
                     "versions": [{"name": DGD_VERSION, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                       "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                       "status": {"type": "object",
                                                  "x-kubernetes-preserve-unknown-fields": True}}}}}]}})
        created = True

    def established():
        crd = ext.read_custom_resource_definition(DGD_CRD)
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    wait_until(established, 30, "the DynamoGraphDeployment CRD to be established")
    yield
    if created:
        ext.delete_custom_resource_definition(DGD_CRD)


@pytest.fixture(scope="module")
def ns(core):
    name = "it-shim-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name, "labels": {"gpu-resilience.io/test": "true"}}})
    wait_until(lambda: exists(lambda: core.read_namespaced_service_account("default", name)), 30,
               "default ServiceAccount in " + name)
    yield name
    core.delete_namespace(name)


def deployment(name, containers, labels):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}}}}


APP = {"name": "app", "image": "registry.invalid/llm-server:1", "command": ["/serve"],
       "env": [{"name": "MODEL", "value": "llama"}, {"name": "LD_PRELOAD", "value": "/usr/lib/libjemalloc.so"}],
       "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}}
PROXY = {"name": "proxy", "image": "registry.invalid/proxy:1", "command": ["/proxy"],
         "env": [{"name": "PORT", "value": "8080"}]}

DGD = {
    "apiVersion": DGD_GROUP + "/" + DGD_VERSION, "kind": "DynamoGraphDeployment", "metadata": {"name": "graph"},
    "spec": {"backendFramework": "vllm",
             "envs": [{"name": "LD_PRELOAD", "value": "/usr/lib/libtcmalloc.so"}],
             "services": {
                 "Frontend": {"componentType": "frontend", "replicas": 1,
                              "extraPodSpec": {"mainContainer": {"name": "main", "image": "dynamo:1"}}},
                 "VllmDecodeWorker": {"componentType": "worker", "replicas": 2,
                                      "resources": {"limits": {"gpu": "1"}},
                                      "envs": [{"name": "DYN_LOG", "value": "debug"}],
                                      "extraPodSpec": {"mainContainer": {"name": "main", "image": "dynamo:1",
                                                                         "args": ["python3 -m dynamo.vllm"]}}},
                 "VllmPrefillWorker": {"componentType": "worker", "replicas": 1,
                                       "resources": {"limits": {"gpu": "2"}, "requests": {"gpu": "2"}},
                                       "extraPodSpec": {"tolerations": [{"key": "nvidia.com/gpu",
                                                                         "operator": "Exists"}],
                                                        "mainContainer": {"name": "main", "image": "dynamo:1"}}}}}}


def rolled_out(apps, ns, name):
    d = apps.read_namespaced_deployment(name, ns)
    s = d.status
    return (s.observed_generation or 0) >= d.metadata.generation and s.updated_replicas == d.spec.replicas \
        and s.replicas == d.spec.replicas and s.available_replicas == d.spec.replicas


@pytest.fixture(scope="module")
def workloads(apps, batch, custom, dgd_crd, ns):
    apps.create_namespaced_deployment(ns, deployment("web", [copy.deepcopy(APP), copy.deepcopy(PROXY)], LABELS))
    apps.create_namespaced_deployment(ns, deployment("cpu-only", [copy.deepcopy(PROXY)], {"app": "cpu-only"}))
    custom.create_namespaced_custom_object(DGD_GROUP, DGD_VERSION, ns, DGD_PLURAL, copy.deepcopy(DGD))
    batch.create_namespaced_job(ns, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "batch"},
                                     "spec": {"suspend": True, "template": {"spec": {
                                         "restartPolicy": "Never", "containers": [copy.deepcopy(APP)]}}}})
    wait_until(lambda: rolled_out(apps, ns, "web"), 60, "the Deployment's first rollout")
    return {"web": template(apps, ns), "graph": services(custom, ns)}


def raw_deployment(apps, ns, name="web"):
    return apps.api_client.sanitize_for_serialization(apps.read_namespaced_deployment(name, ns))


def template(apps, ns, name="web"):
    return dumps(raw_deployment(apps, ns, name)["spec"]["template"])


def services(custom, ns):
    return dumps(custom.get_namespaced_custom_object(DGD_GROUP, DGD_VERSION, ns, DGD_PLURAL, "graph")["spec"])


def shim(ns, check=False, diff=False, **args):
    args.setdefault("kind", "Deployment")
    args.setdefault("name", "web")
    args.setdefault("namespace", ns)
    return ansible_module(MODULE, args, check=check, diff=diff)


def shim_config_maps(core, ns):
    return sorted(c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector=MANAGED).items)


def live_pods(core, ns):
    return [p for p in core.list_namespaced_pod(ns, label_selector="app=shim-web").items
            if p.metadata.deletion_timestamp is None]


def shimmed(pod):
    return any(c.name.startswith("cuda-fault-shim") for c in pod.spec.init_containers or [])


def pods_when(core, ns, with_shim):
    """The Deployment's two live pods once all of them have (or have not) the shim, else None."""
    pods = live_pods(core, ns)
    return pods if len(pods) == 2 and all(shimmed(p) == with_shim for p in pods) else None


def env_of(container):
    return dict((e["name"], e.get("value")) for e in container.get("env") or [])


def without_env(tpl):
    tpl = copy.deepcopy(tpl)
    for c in tpl["spec"]["containers"]:
        c.pop("env", None)
    return tpl


def test_check_mode_changes_nothing_and_diffs_the_templates(core, apps, ns, workloads):
    before = raw_deployment(apps, ns)
    result = shim(ns, check=True, diff=True, state="armed", xid=79, pin_node=PIN)
    assert not result.get("failed"), result
    assert result["changed"] is True
    diff = result["diff"] if isinstance(result["diff"], dict) else result["diff"][0]
    assert json.loads(dumps(diff["before"]["spec.template"])) == before["spec"]["template"]
    after = diff["after"]["spec.template"]
    assert env_of(after["spec"]["containers"][0])["CUDA_FAULT_INJECTION_ENABLED"] == "1"
    assert env_of(after["spec"]["containers"][0])["CUDA_XID_TYPE"] == "79"
    assert after["spec"]["containers"][1] == before["spec"]["template"]["spec"]["containers"][1]
    now = raw_deployment(apps, ns)
    assert now["metadata"]["generation"] == before["metadata"]["generation"]
    assert ANNOTATION not in (now["metadata"].get("annotations") or {})
    assert template(apps, ns) == workloads["web"] and shim_config_maps(core, ns) == []


def test_patch_rolls_pinned_pods_with_the_shim_in_the_gpu_container_only(core, apps, ns, workloads):
    result = shim(ns, pin_node=PIN, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["rollout"] == {"desired": 2, "updated": 2, "available": 2}
    (tpl,) = result["templates"]
    assert tpl["path"] == "spec.template" and tpl["containers"] == ["app"]
    library = tpl["library"]
    assert library.endswith("/libcudafault.so")

    # The real controller replaced the pods: every new one is on the pinned node.
    pods = wait_until(lambda: pods_when(core, ns, True), 60, "two shimmed pods")
    assert sorted(p.spec.node_name for p in pods) == [PIN, PIN]
    for pod in pods:
        spec = core.api_client.sanitize_for_serialization(pod)["spec"]
        app, proxy = spec["containers"]
        assert env_of(app) == {"MODEL": "llama", "LD_PRELOAD": library + ":/usr/lib/libjemalloc.so",
                               "CUDA_FAULT_CONTROL_FILE": "/run/gpu-fault-injection/shim/control",
                               "CUDA_FAULT_INJECTION_ENABLED": "0"}
        assert sorted(m["mountPath"] for m in app["volumeMounts"] if "fault" in m["mountPath"]) == [
            os.path.dirname(library), "/run/gpu-fault-injection/shim"]
        assert all(m["readOnly"] for m in app["volumeMounts"] if "fault" in m["mountPath"])
        assert proxy["env"] == PROXY["env"] and not any("fault" in m["mountPath"]
                                                        for m in proxy.get("volumeMounts") or [])
        volumes = dict((v["name"], v) for v in spec["volumes"])
        assert volumes["cuda-fault-shim-ctl"]["hostPath"] == {"path": "/run/gpu-fault-injection/shim",
                                                              "type": "DirectoryOrCreate"}
        assert volumes["cuda-fault-shim-src"]["configMap"]["name"] == result["config_map"]
        (init,) = spec["initContainers"]
        assert init["securityContext"]["runAsNonRoot"] is True

    cm = core.read_namespaced_config_map(result["config_map"], ns)
    assert sorted(cm.data) == ["cuda_fault_shim.c", "xid_table.h"]
    with open(SHIM_SOURCE) as f:
        assert cm.data["cuda_fault_shim.c"] == f.read()
    assert cm.metadata.owner_references[0].kind == "Deployment" and cm.metadata.owner_references[0].name == "web"
    record = json.loads(raw_deployment(apps, ns)["metadata"]["annotations"][ANNOTATION])
    assert record == result["record"] and record["configMap"] == result["config_map"]
    assert "module_args" not in result.get("invocation", {}) or \
        "#include" not in json.dumps(result["invocation"]["module_args"])   # the C source is not echoed

    again = shim(ns, pin_node=PIN)
    assert again["changed"] is False, again


def test_arming_and_disarming_change_only_the_environment(apps, ns, workloads):
    present = raw_deployment(apps, ns)["spec"]["template"]
    armed = shim(ns, pin_node=PIN, state="armed", xid=79)
    assert armed["changed"] is True and not armed.get("failed"), armed
    after = raw_deployment(apps, ns)["spec"]["template"]
    assert dumps(without_env(after)) == dumps(without_env(present))
    assert env_of(after["spec"]["containers"][0]) == dict(env_of(present["spec"]["containers"][0]),
                                                          CUDA_FAULT_INJECTION_ENABLED="1", CUDA_XID_TYPE="79")
    assert shim(ns, pin_node=PIN, state="armed", xid=79)["changed"] is False

    disarmed = shim(ns, pin_node=PIN, state="disarmed", xid=79)
    assert disarmed["changed"] is True, disarmed
    final = raw_deployment(apps, ns)["spec"]["template"]
    assert dumps(without_env(final)) == dumps(without_env(present))
    assert env_of(final["spec"]["containers"][0]) == dict(env_of(after["spec"]["containers"][0]),
                                                          CUDA_FAULT_INJECTION_ENABLED="0")


def test_dgd_services_get_the_shim(core, custom, ns, workloads):
    result = shim(ns, kind="DynamoGraphDeployment", name="graph", state="armed", xid=48)
    assert not result.get("failed"), result
    assert result["changed"] is True and "rollout" not in result
    assert [t["path"] for t in result["templates"]] == [
        "spec.services.VllmDecodeWorker", "spec.services.VllmPrefillWorker"]
    spec = json.loads(services(custom, ns))
    before = json.loads(workloads["graph"])
    assert spec["services"]["Frontend"] == before["services"]["Frontend"]
    assert spec["envs"] == before["envs"]
    for name in ("VllmDecodeWorker", "VllmPrefillWorker"):
        service = spec["services"][name]
        envs = env_of({"env": service["envs"]})
        assert envs["LD_PRELOAD"].endswith(":/usr/lib/libtcmalloc.so")   # the graph's LD_PRELOAD, kept
        assert envs["CUDA_FAULT_INJECTION_ENABLED"] == "1" and envs["CUDA_XID_TYPE"] == "48"
        assert [c["name"] for c in service["extraPodSpec"]["initContainers"]] == ["cuda-fault-shim-build"]
        assert len(service["extraPodSpec"]["mainContainer"]["volumeMounts"]) == 2
    assert result["config_map"] in shim_config_maps(core, ns)
    assert shim(ns, kind="DynamoGraphDeployment", name="graph", state="armed", xid=48)["changed"] is False


@pytest.mark.parametrize("args, words", [
    (dict(name="nope"), "Deployment {ns}/nope not found"),
    (dict(kind="PyTorchJob", api_version="kubeflow.org/v1", name="train"), "give pod_template_path"),
    (dict(kind="Rollout", api_version="argoproj.io/v1alpha1", pod_template_path=["spec", "template"]),
     "does not serve argoproj.io/v1alpha1/Rollout"),
    (dict(state="armed", xid=12345), "unknown XID code 12345"),
    (dict(state="armed"), "xid"),
    (dict(name="cpu-only"), "Deployment {ns}/cpu-only has no container requesting nvidia.com/gpu"),
    (dict(containers=["nope"]), "has no container named nope"),
    (dict(containers=["app; reboot"]), "not a valid Kubernetes name"),
    (dict(pin_node="no-such-node"), "node no-such-node not found"),
    (dict(library_path="/lib/a.so:/lib/b.so"), "library_path"),
    (dict(kind="Deployment", name="web", pod_template_path=["spec", "nothing"]), "no pod template with containers"),
    (dict(kind="Job", name="batch"), "a Job's pod template cannot change once the Job exists"),
])
def test_bad_input_fails_clearly_and_changes_nothing(core, apps, batch, custom, ns, workloads, args, words):
    def state():
        objs = [raw_deployment(apps, ns), raw_deployment(apps, ns, "cpu-only"),
                custom.get_namespaced_custom_object(DGD_GROUP, DGD_VERSION, ns, DGD_PLURAL, "graph"),
                batch.api_client.sanitize_for_serialization(batch.read_namespaced_job("batch", ns))]
        return dumps([(o["spec"], o["metadata"].get("annotations"), o["metadata"]["generation"]) for o in objs]
                     + [shim_config_maps(core, ns)])

    before = state()
    result = shim(ns, **args)
    assert result.get("failed") and words.format(ns=ns).lower() in result["msg"].lower(), result
    assert "Traceback" not in json.dumps(result)
    assert state() == before


def test_absent_from_a_separate_run_restores_the_templates_exactly(core, apps, custom, ns, workloads):
    maps = shim_config_maps(core, ns)
    assert len(maps) == 2
    dry = shim(ns, check=True, state="absent")
    assert dry["changed"] is True and shim_config_maps(core, ns) == maps
    result = shim(ns, state="absent", diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["record"] is None
    assert template(apps, ns) == workloads["web"]
    assert ANNOTATION not in (raw_deployment(apps, ns)["metadata"].get("annotations") or {})
    assert result["rollout"] == {"desired": 2, "updated": 2, "available": 2}
    # The shimmed revisions are gone from the Deployment's history; the original one remains.
    assert result["pruned"], result
    history = [apps.api_client.sanitize_for_serialization(rs) for rs in apps.list_namespaced_replica_set(ns).items
               if rs.metadata.name.startswith("web-")]
    assert [rs["metadata"]["name"] for rs in history if "CUDA_FAULT_INJECTION_ENABLED" in dumps(rs["spec"])] == []
    assert len(history) == 1, [rs["metadata"]["name"] for rs in history]
    pods = wait_until(lambda: pods_when(core, ns, False), 60, "two pods without the shim")
    assert len(pods) == 2

    graph = shim(ns, kind="DynamoGraphDeployment", name="graph", state="absent")
    assert graph["changed"] is True, graph
    assert services(custom, ns) == workloads["graph"]
    assert ANNOTATION not in (custom.get_namespaced_custom_object(
        DGD_GROUP, DGD_VERSION, ns, DGD_PLURAL, "graph")["metadata"].get("annotations") or {})
    assert shim_config_maps(core, ns) == []

    assert shim(ns, state="absent")["changed"] is False
    assert shim(ns, kind="DynamoGraphDeployment", name="graph", state="absent")["changed"] is False
    assert shim(ns, name="gone", state="absent")["changed"] is False


# --- the shim really runs: the local pod runner compiles it and preloads it into a CUDA client ---

FAKE_LIBCUDA = r"""
/* A stand-in CUDA driver: a healthy GPU node with 8 GPUs. */
int cuInit(unsigned int flags) { (void)flags; return 0; }
int cuDriverGetVersion(int *version) { *version = 12040; return 0; }
int cuDeviceGetCount(int *count) { *count = 8; return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return 0; }
"""

# Calls the driver the way an application does (dlopen + dlsym) and prints each new outcome.
CLIENT = r"""
import ctypes, json, time
cuda = ctypes.CDLL("libcuda.so.1")
last = None
while True:
    count = ctypes.c_int(-1)
    now = {"cuInit": cuda.cuInit(0), "cuDeviceGetCount": cuda.cuDeviceGetCount(ctypes.byref(count)),
           "count": count.value}
    if now != last:
        print(json.dumps(now), flush=True)
        last = now
    time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    if not shutil.which("cc"):
        pytest.skip("no C compiler on this machine: the local pod runner builds the shim with the host's cc")
    root = tmp_path_factory.mktemp("fake-cuda")
    (root / "fake_libcuda.c").write_text(FAKE_LIBCUDA)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(root / "libcuda.so.1"), str(root / "fake_libcuda.c")],
                   check=True)
    os.chmod(str(root), 0o755)
    return str(root)


def runner_log(core, ns, selector, with_shim, also=None):
    """(pod, lines of its app container's log) for the one live pod once it has (or lacks) the shim
    and also(pod, lines) holds, else None."""
    pods = [p for p in core.list_namespaced_pod(ns, label_selector=selector).items
            if p.metadata.deletion_timestamp is None]
    if len(pods) != 1 or shimmed(pods[0]) != with_shim:
        return None
    pod = pods[0]
    path = os.path.join(RUNNER_STATE, "pods", "%s_%s_%s" % (ns, pod.metadata.name, pod.metadata.uid), "app.log")
    try:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.startswith("{")]
    except OSError:
        return None
    return (pod, lines) if lines and (also is None or also(pod, lines)) else None


def test_the_runner_compiles_the_shim_and_arming_fails_the_apps_cuda_calls(core, apps, ns, fake_driver):
    labels = {"app": "cuda-client", RUN_LABEL: "true"}
    selector = "app=cuda-client"
    app = {"name": "app", "image": "registry.invalid/cuda-client:1", "command": [sys.executable, "-c", CLIENT],
           "env": [{"name": "LD_LIBRARY_PATH", "value": fake_driver}],
           "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    body = deployment("cuda-client", [app], labels)
    body["spec"]["replicas"] = 1
    apps.create_namespaced_deployment(ns, body)
    _pod, lines = wait_until(lambda: runner_log(core, ns, selector, False), 60, "the client without the shim")
    assert lines[-1] == {"cuInit": 0, "cuDeviceGetCount": 0, "count": 8}

    node = "gpu-node-0"
    armed = shim(ns, name="cuda-client", state="armed", xid=79, pin_node=node)
    assert armed["changed"] and not armed.get("failed"), armed
    pod, lines = wait_until(lambda: runner_log(core, ns, selector, True), 90, "the client with the armed shim")
    assert pod.spec.node_name == node
    assert lines[0]["cuInit"] == 100   # XID 79 (fallen off the bus): CUDA_ERROR_NO_DEVICE, from the start

    disarmed = shim(ns, name="cuda-client", state="disarmed", xid=79, pin_node=node)
    assert disarmed["changed"], disarmed
    old = pod.metadata.uid
    pod, lines = wait_until(lambda: runner_log(core, ns, selector, True, lambda p, _l: p.metadata.uid != old), 90,
                            "a new client with the disarmed shim")
    assert lines[0] == {"cuInit": 0, "cuDeviceGetCount": 0, "count": 8}

    # Armed at run time, without a restart: the node's control file (what the node agent writes).
    control_dir = os.path.join(RUNNER_STATE, "nodes", node, "host", "run", "gpu-fault-injection", "shim")
    tmp = os.path.join(control_dir, ".control.tmp")
    with open(tmp, "w") as f:
        f.write("v1 armed=1 xid=79 error=100 fault=it-cuda-shim seq=1\n")
    os.rename(tmp, os.path.join(control_dir, "control"))
    try:
        _same, lines = wait_until(lambda: runner_log(core, ns, selector, True,
                                                     lambda p, ls: p.metadata.uid == pod.metadata.uid and len(ls) > 1),
                                  30, "the running client to see the armed control file")
        assert lines[-1]["cuInit"] == 100
    finally:
        os.unlink(os.path.join(control_dir, "control"))

    assert shim(ns, name="cuda-client", state="absent")["changed"]
    apps.delete_namespaced_deployment("cuda-client", ns)
