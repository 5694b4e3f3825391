"""cuda_shim_patch's pure logic: patching pod templates, the record, and its exact reverse."""
import copy
import json

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_control, shim_patch
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_source
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.shim_patch import ShimPatchError
from ansible_collections.gpu_resilience.fault_injection.plugins.action import cuda_shim_patch as cuda_shim_patch_action

GPU = {"limits": {"nvidia.com/gpu": 1}}
LIB = "/opt/gpu-fault-injection/cuda-fault-shim-lib/" + shim_source.LIBRARY


def dumps(obj):
    return json.dumps(obj, sort_keys=True)


def workload(pod_spec, kind="Deployment", api_version="apps/v1", annotations=None):
    meta = {"name": "web", "namespace": "team-a", "uid": "u-1", "resourceVersion": "7", "generation": 3}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": api_version, "kind": kind, "metadata": meta,
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec}},
            "status": {"replicas": 2}}


def dgd(services, envs=None):
    spec = {"backendFramework": "vllm", "services": services}
    if envs is not None:
        spec["envs"] = envs
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "DynamoGraphDeployment",
            "metadata": {"name": "graph", "namespace": "team-a", "uid": "u-2"}, "spec": spec}


def options(**overrides):
    base = dict(kind="Deployment", state="present", xid=None, containers=None, all_containers=False,
                library_path=None, compiler_image=None, pin_node=None, pin_mode="required", runtime_control=True,
                pod_template_path=None)
    base.update(overrides)
    spec = shim_patch.validate_options(base)
    if spec.get("library_path") is None:
        spec.update(config_map=shim_patch.config_map_name("apps/v1", spec["kind"], "team-a", "web"),
                    source_digest="0" * 64)
    return spec


def gpu_container(**extra):
    c = {"name": "gpu", "image": "registry.example/app:1", "command": ["/app"], "resources": copy.deepcopy(GPU)}
    c.update(extra)
    return c


SIDECAR = {"name": "sidecar", "image": "registry.example/proxy:2", "env": [{"name": "PORT", "value": "80"}]}

SHAPES = {
    "bare": workload({"containers": [gpu_container()]}),
    "existing-ld-preload": workload({"containers": [gpu_container(env=[
        {"name": "A", "value": "1"}, {"name": "LD_PRELOAD", "value": "/usr/lib/libjemalloc.so /opt/x.so"},
        {"name": "Z", "value": "2"}]), SIDECAR]}),
    "existing-everything": workload({
        "containers": [gpu_container(env=[{"name": "CUDA_FAULT_INJECTION_ENABLED", "value": "1"}],
                                     volumeMounts=[{"name": "data", "mountPath": "/data"}]), SIDECAR],
        "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
                     "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                         {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In",
                                                "values": ["true"]}]},
                         {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}},
        "nodeSelector": {"nvidia.com/gpu.present": "true"}}, annotations={"deployment.kubernetes.io/revision": "4"}),
    "empty-lists": workload({"containers": [gpu_container(env=[], volumeMounts=[])], "volumes": [],
                             "initContainers": []}),
    "null-fields": workload({"containers": [gpu_container(env=None)], "volumes": None, "affinity": None}),
    "ld-preload-valuefrom": workload({"containers": [gpu_container(env=[
        {"name": "LD_PRELOAD", "valueFrom": {"configMapKeyRef": {"name": "preload", "key": "libs"}}},
        {"name": "B", "value": "x"}])]}),
    "two-gpu-containers": workload({"containers": [gpu_container(), gpu_container(
        name="gpu2", resources={"requests": {"nvidia.com/gpu": "2"}}), SIDECAR]}),
    "name-collisions": workload({
        "containers": [gpu_container(name="cuda-fault-shim-build")],
        "initContainers": [{"name": "cuda-fault-shim-build-2", "image": "x"}],
        "volumes": [{"name": "cuda-fault-shim-lib", "emptyDir": {}}, {"name": "cuda-fault-shim-src", "secret": {
            "secretName": "s"}}, {"name": "cuda-fault-shim-ctl", "emptyDir": {}}]}),
}

DGD_SHAPES = {
    "dgd-two-services": dgd({
        "Frontend": {"componentType": "frontend", "replicas": 1,
                     "extraPodSpec": {"mainContainer": {"image": "dynamo:1", "command": ["python3"]}}},
        "VllmDecodeWorker": {"componentType": "worker", "replicas": 2, "resources": {"limits": {"gpu": "1"}},
                             "envs": [{"name": "DYN_LOG", "value": "debug"}],
                             "extraPodSpec": {"mainContainer": {"image": "dynamo:1", "args": ["vllm"]}}},
        "VllmPrefillWorker": {"componentType": "worker", "replicas": 1,
                              "resources": {"requests": {"gpu": "2"}, "limits": {"gpu": "2"}}},
    }, envs=[{"name": "LD_PRELOAD", "value": "/usr/lib/libtcmalloc.so"}]),
    "dgd-main-env-and-sidecar": dgd({
        "Worker": {"componentType": "worker",
                   "extraPodSpec": {
                       "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
                       "mainContainer": {"name": "main", "image": "dynamo:1", "env": [
                           {"name": "LD_PRELOAD", "value": "/opt/a.so"}],
                           "resources": {"limits": {"nvidia.com/gpu": "4"}}},
                       "containers": [{"name": "exporter", "image": "exp:1", "resources": {
                           "limits": {"nvidia.com/gpu": "1"}}}]}}}),
    "dgd-inherited-valuefrom": dgd({
        "Worker": {"resources": {"limits": {"gpu": "1"}}, "extraPodSpec": {"mainContainer": {"image": "d:1"}}}},
        envs=[{"name": "LD_PRELOAD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
}

STATE_OPTIONS = [dict(state="present"), dict(state="disarmed", xid=48), dict(state="armed", xid=79),
                 dict(state="armed", xid=13, pin_node="gpu-node-1"),
                 dict(state="present", pin_node="gpu-node-2", pin_mode="preferred"),
                 dict(state="armed", xid=79, library_path="/usr/local/lib/libcudafault.so"),
                 dict(state="disarmed", runtime_control=False, compiler_image="gcc@sha256:" + "a" * 64)]


def ids(opts):
    return ",".join("%s=%s" % kv for kv in sorted(opts.items()))


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("opts", STATE_OPTIONS, ids=ids)
def test_patch_then_reverse_is_byte_identical(shape, opts):
    original = SHAPES[shape]
    snapshot = dumps(original)
    patched, record, _warnings = shim_patch.patch(original, options(**opts))
    assert dumps(original) == snapshot            # the input is not modified
    assert dumps(patched) != snapshot
    assert json.loads(patched["metadata"]["annotations"][shim_patch.ANNOTATION]) == record
    restored, warnings = shim_patch.reverse(patched)
    assert dumps(restored) == snapshot and warnings == []
    # From the annotation alone, after a JSON round trip (a later, separate run).
    again, _w = shim_patch.reverse(json.loads(json.dumps(patched)))
    assert dumps(again) == snapshot


@pytest.mark.parametrize("shape", sorted(DGD_SHAPES))
@pytest.mark.parametrize("opts", STATE_OPTIONS, ids=ids)
def test_dgd_patch_then_reverse_is_byte_identical(shape, opts):
    original = DGD_SHAPES[shape]
    snapshot = dumps(original)
    patched, record, _warnings = shim_patch.patch(original, options(kind="DynamoGraphDeployment", **opts))
    assert record["templates"]
    restored, warnings = shim_patch.reverse(patched)
    assert dumps(restored) == snapshot and warnings == []


@pytest.mark.parametrize("shape", sorted(SHAPES) + sorted(DGD_SHAPES))
@pytest.mark.parametrize("opts", STATE_OPTIONS, ids=ids)
def test_a_second_run_is_a_no_op(shape, opts):
    original = SHAPES.get(shape) or DGD_SHAPES[shape]
    spec = options(kind=original["kind"], **opts)
    patched, record, _w = shim_patch.patch(original, spec)
    plan = shim_patch.plan(patched, spec)
    assert plan["changed"] is False and plan["record"] == record and dumps(plan["desired"]) == dumps(patched)
    assert dumps(plan["original"]) == dumps(original)
    with pytest.raises(ShimPatchError, match="already carries a shim record"):
        shim_patch.patch(patched, spec)
    first = shim_patch.plan(original, spec)
    assert first["changed"] is True and first["previous"] is None


def server_defaults(obj):
    """What the API server adds to the items the module adds (it must not make reruns report changes)."""
    obj = copy.deepcopy(obj)
    spec = obj["spec"]["template"]["spec"]
    for init in [c for c in spec.get("initContainers") or [] if c["name"].startswith("cuda-fault-shim")]:
        init.setdefault("terminationMessagePath", "/dev/termination-log")
        init.setdefault("terminationMessagePolicy", "File")
        init.setdefault("imagePullPolicy", "IfNotPresent")
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            volume["configMap"].setdefault("defaultMode", 420)
    obj["metadata"]["resourceVersion"] = "8"
    return obj


def test_server_defaults_do_not_count_as_changes():
    spec = options(state="armed", xid=79)
    patched, _record, _w = shim_patch.patch(SHAPES["existing-everything"], spec)
    stored = server_defaults(patched)
    assert shim_patch.plan(stored, spec)["changed"] is False
    restored, warnings = shim_patch.reverse(stored)
    assert warnings == []
    assert restored["spec"] == SHAPES["existing-everything"]["spec"]


def template_without_env(obj):
    obj = copy.deepcopy(obj)
    for c in obj["spec"]["template"]["spec"]["containers"]:
        c.pop("env", None)
    return obj["spec"]["template"]


def env_of(obj, container="gpu"):
    return next(c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == container).get("env")


def test_arming_and_disarming_change_only_the_enabled_value():
    present, _r, _w = shim_patch.patch(SHAPES["existing-ld-preload"], options(state="present", xid=79))
    armed = shim_patch.plan(present, options(state="armed", xid=79))
    assert armed["changed"]
    assert dumps(template_without_env(armed["desired"])) == dumps(template_without_env(present))
    before, after = env_of(present), env_of(armed["desired"])
    assert [e["name"] for e in before] == [e["name"] for e in after]
    assert [(b, a) for b, a in zip(before, after) if a != b] == [
        ({"name": "CUDA_FAULT_INJECTION_ENABLED", "value": "0"}, {"name": "CUDA_FAULT_INJECTION_ENABLED", "value": "1"})]
    assert env_of(armed["desired"], "sidecar") == SIDECAR["env"]
    disarmed = shim_patch.plan(armed["desired"], options(state="disarmed", xid=79))
    assert dumps(template_without_env(disarmed["desired"])) == dumps(template_without_env(present))
    assert env_of(disarmed["desired"]) == env_of(present)


def test_arming_without_a_preset_xid_adds_only_the_xid_variable():
    present, _r, _w = shim_patch.patch(SHAPES["bare"], options(state="present"))
    armed = shim_patch.plan(present, options(state="armed", xid=48))["desired"]
    assert dumps(template_without_env(armed)) == dumps(template_without_env(present))
    assert env_of(armed) == env_of(present)[:2] + [{"name": "CUDA_FAULT_INJECTION_ENABLED", "value": "1"},
                                                   {"name": "CUDA_XID_TYPE", "value": "48"}]


def test_what_the_gpu_container_gets():
    patched, record, _w = shim_patch.patch(SHAPES["existing-ld-preload"], options(state="armed", xid=79))
    spec = patched["spec"]["template"]["spec"]
    gpu, sidecar = spec["containers"]
    assert sidecar == SIDECAR
    assert gpu["env"] == [{"name": "A", "value": "1"},
                          {"name": "LD_PRELOAD", "value": LIB + ":/usr/lib/libjemalloc.so /opt/x.so"},
                          {"name": "Z", "value": "2"},
                          {"name": "CUDA_FAULT_CONTROL_FILE", "value": "/run/gpu-fault-injection/shim/control"},
                          {"name": "CUDA_FAULT_INJECTION_ENABLED", "value": "1"}, {"name": "CUDA_XID_TYPE", "value": "79"}]
    assert gpu["volumeMounts"] == [
        {"name": "cuda-fault-shim-lib", "mountPath": "/opt/gpu-fault-injection/cuda-fault-shim-lib", "readOnly": True},
        {"name": "cuda-fault-shim-ctl", "mountPath": shim_control.CONTAINER_DIR, "readOnly": True}]
    assert spec["volumes"] == [
        {"name": "cuda-fault-shim-src", "configMap": {"name": record["configMap"]}},
        {"name": "cuda-fault-shim-lib", "emptyDir": {}},
        {"name": "cuda-fault-shim-ctl", "hostPath": {"path": shim_control.HOST_DIR, "type": "DirectoryOrCreate"}}]
    (init,) = spec["initContainers"]
    assert init["image"] == shim_patch.DEFAULT_COMPILER_IMAGE
    assert init["command"] == shim_source.compile_argv("/opt/gpu-fault-injection/cuda-fault-shim-src", LIB)
    assert init["securityContext"]["runAsNonRoot"] is True and init["securityContext"]["runAsUser"] != 0
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": shim_patch.SOURCE_DIGEST_ENV, "value": "0" * 64} in init["env"]
    assert record["templates"] == [dict(record["templates"][0], path=["spec", "template"], containers=["gpu"],
                                        library=LIB)]
    assert record["state"] == "armed" and record["xid"] == 79 and record["annotations"] == "created"


def test_library_path_adds_no_build():
    patched, record, _w = shim_patch.patch(SHAPES["bare"], options(library_path="/usr/lib/libcudafault.so"))
    spec = patched["spec"]["template"]["spec"]
    assert "initContainers" not in spec and [v["name"] for v in spec["volumes"]] == ["cuda-fault-shim-ctl"]
    assert {"name": "LD_PRELOAD", "value": "/usr/lib/libcudafault.so"} in spec["containers"][0]["env"]
    assert record["configMap"] is None


def test_env_from_gets_a_warning():
    obj = workload({"containers": [gpu_container(envFrom=[{"configMapRef": {"name": "settings"}}])]})
    _p, _r, warnings = shim_patch.patch(obj, options())
    assert warnings == ["Deployment team-a/web, spec.template, container gpu takes variables from envFrom: an "
                        "LD_PRELOAD set there is replaced while the shim is present"]


def test_action_plugin_reads_the_source_and_generates_the_header(tmp_path):
    (tmp_path / shim_source.SOURCE_FILE).write_text("/* shim */\n")
    files = cuda_shim_patch_action.shim_files(str(tmp_path))
    assert files == {shim_source.SOURCE_FILE: "/* shim */\n", shim_source.HEADER_FILE: shim_source.xid_header()}
    assert set(cuda_shim_patch_action.summary(files)) == set(files)
    assert all(v.startswith("sha256:") for v in cuda_shim_patch_action.summary(files).values())
    with pytest.raises(ValueError, match="cannot read the shim source .*give library_path"):
        cuda_shim_patch_action.shim_files(str(tmp_path / "missing"))
    with open(cuda_shim_patch_action.os.path.join(cuda_shim_patch_action.SHIM_DIR, shim_source.SOURCE_FILE)) as f:
        assert f.read() == shim_source.source_text()   # the collection's own files/shim


def test_runtime_control_off_mounts_no_host_path():
    patched, _r, _w = shim_patch.patch(SHAPES["bare"], options(runtime_control=False))
    assert "hostPath" not in dumps(patched) and "CUDA_FAULT_CONTROL_FILE" not in dumps(patched)


def test_pinning_required_is_added_to_every_term_and_preferred_weighs_100():
    patched, _r, _w = shim_patch.patch(SHAPES["existing-everything"], options(pin_node="gpu-node-1"))
    affinity = patched["spec"]["template"]["spec"]["affinity"]
    term = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-node-1"]}
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 2 and all(t["matchExpressions"][-1] == term for t in terms)
    assert terms[1]["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]
    assert affinity["podAntiAffinity"] == {"preferredDuringSchedulingIgnoredDuringExecution": []}
    patched, _r, _w = shim_patch.patch(SHAPES["bare"], options(pin_node="gpu-node-1", pin_mode="preferred"))
    assert patched["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": {"matchExpressions": [term]}}]}}


def test_ld_preload_from_value_from_is_kept_through_a_helper():
    patched, _r, _w = shim_patch.patch(SHAPES["ld-preload-valuefrom"], options())
    assert env_of(patched)[:3] == [
        {"name": shim_patch.PRIOR_PRELOAD_ENV, "valueFrom": {"configMapKeyRef": {"name": "preload", "key": "libs"}}},
        {"name": "LD_PRELOAD", "value": "%s:$(%s)" % (LIB, shim_patch.PRIOR_PRELOAD_ENV)},
        {"name": "B", "value": "x"}]


@pytest.mark.parametrize("resources, gpu", [
    ({"limits": {"nvidia.com/gpu": "1"}}, True),
    ({"requests": {"nvidia.com/gpu": 2}}, True),
    ({"limits": {"nvidia.com/mig-1g.10gb": "1"}}, True),
    ({"limits": {"nvidia.com/gpu.shared": "1"}}, True),
    ({"limits": {"nvidia.com/gpu": "0"}}, False),
    ({"limits": {"amd.com/gpu": "1"}}, False),
    ({"limits": {"cpu": "1"}}, False),
    ({}, False),
])
def test_gpu_containers(resources, gpu):
    assert shim_patch.container_has_gpu({"resources": resources}) is gpu


def test_no_gpu_container_is_refused_unless_named():
    obj = workload({"containers": [dict(SIDECAR), {"name": "zero", "image": "x", "resources": {
        "limits": {"nvidia.com/gpu": "0"}}}]})
    with pytest.raises(ShimPatchError, match=r"Deployment team-a/web has no container requesting nvidia.com/gpu "
                                             r"\(containers: spec.template: sidecar, zero\); name the containers"):
        shim_patch.patch(obj, options())
    patched, record, _w = shim_patch.patch(obj, options(containers=["zero"]))
    assert record["templates"][0]["containers"] == ["zero"]
    assert env_of(patched, "sidecar") == SIDECAR["env"]
    _p, record, _w = shim_patch.patch(obj, options(all_containers=True))
    assert record["templates"][0]["containers"] == ["sidecar", "zero"]
    with pytest.raises(ShimPatchError, match="has no container named nope"):
        shim_patch.patch(obj, options(containers=["nope"]))


def test_name_collisions_get_unique_names():
    patched, _r, _w = shim_patch.patch(SHAPES["name-collisions"], options())
    spec = patched["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["cuda-fault-shim-build-2", "cuda-fault-shim-build-3"]
    assert [v["name"] for v in spec["volumes"]][3:] == [
        "cuda-fault-shim-src-2", "cuda-fault-shim-lib-2", "cuda-fault-shim-ctl-2"]
    assert {"name": "LD_PRELOAD", "value": "/opt/gpu-fault-injection/cuda-fault-shim-lib-2/libcudafault.so"} \
        in spec["containers"][0]["env"]


def test_dgd_services_get_their_own_template():
    obj = DGD_SHAPES["dgd-two-services"]
    patched, record, _w = shim_patch.patch(obj, options(kind="DynamoGraphDeployment", state="armed", xid=79))
    assert [t["path"] for t in record["templates"]] == [
        ["spec", "services", "VllmDecodeWorker"], ["spec", "services", "VllmPrefillWorker"]]
    services = patched["spec"]["services"]
    assert services["Frontend"] == obj["spec"]["services"]["Frontend"]
    decode = services["VllmDecodeWorker"]
    # The service's envs win over mainContainer.env in the operator; the graph's LD_PRELOAD is kept.
    assert decode["envs"] == [{"name": "DYN_LOG", "value": "debug"},
                              {"name": "LD_PRELOAD", "value": LIB + ":/usr/lib/libtcmalloc.so"},
                              {"name": "CUDA_FAULT_CONTROL_FILE", "value": "/run/gpu-fault-injection/shim/control"},
                              {"name": "CUDA_FAULT_INJECTION_ENABLED", "value": "1"},
                              {"name": "CUDA_XID_TYPE", "value": "79"}]
    assert "env" not in decode["extraPodSpec"]["mainContainer"]
    assert [m["name"] for m in decode["extraPodSpec"]["mainContainer"]["volumeMounts"]] == [
        "cuda-fault-shim-lib", "cuda-fault-shim-ctl"]
    assert [c["name"] for c in decode["extraPodSpec"]["initContainers"]] == ["cuda-fault-shim-build"]
    prefill = services["VllmPrefillWorker"]["extraPodSpec"]
    assert prefill["mainContainer"]["name"] == "main"  # created: the CRD requires a container's name
    assert patched["spec"]["envs"] == obj["spec"]["envs"]
    assert record["templates"][0]["containers"] == ["main"]


def test_dgd_main_container_env_and_gpu_sidecar():
    obj = DGD_SHAPES["dgd-main-env-and-sidecar"]
    patched, record, _w = shim_patch.patch(obj, options(kind="DynamoGraphDeployment"))
    worker = patched["spec"]["services"]["Worker"]
    assert record["templates"][0]["containers"] == ["main", "exporter"]
    assert worker["envs"][0] == {"name": "LD_PRELOAD", "value": LIB + ":/opt/a.so"}
    assert worker["extraPodSpec"]["mainContainer"]["env"] == [{"name": "LD_PRELOAD", "value": "/opt/a.so"}]
    assert worker["extraPodSpec"]["containers"][0]["env"][0] == {"name": "LD_PRELOAD", "value": LIB}
    with pytest.raises(ShimPatchError, match="has no container named gpu"):
        shim_patch.patch(obj, options(kind="DynamoGraphDeployment", containers=["gpu"]))


def test_dgd_without_gpu_services_is_refused():
    obj = dgd({"Frontend": {"componentType": "frontend"}})
    with pytest.raises(ShimPatchError, match="service Frontend: main"):
        shim_patch.patch(obj, options(kind="DynamoGraphDeployment"))


def test_other_kinds_need_a_pod_template_path():
    with pytest.raises(ShimPatchError, match="give pod_template_path"):
        options(kind="PyTorchJob")
    obj = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "t", "namespace": "n"},
           "spec": {"pytorchReplicaSpecs": {"Worker": {"replicas": 2, "template": {"spec": {
               "containers": [gpu_container(name="pytorch")]}}}}}}
    spec = options(kind="PyTorchJob", pod_template_path=["spec", "pytorchReplicaSpecs", "Worker", "template"])
    patched, record, _w = shim_patch.patch(obj, spec)
    assert record["templates"][0]["path"] == ["spec", "pytorchReplicaSpecs", "Worker", "template"]
    assert dumps(shim_patch.reverse(patched)[0]) == dumps(obj)
    with pytest.raises(ShimPatchError, match="no pod template with containers at spec.template"):
        shim_patch.patch(obj, options(kind="PyTorchJob", pod_template_path=["spec", "template"]))


def test_list_indexes_in_a_pod_template_path():
    obj = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "js", "namespace": "n"},
           "spec": {"replicatedJobs": [{"name": "w", "template": {"spec": {"template": {"spec": {
               "containers": [gpu_container()]}}}}}]}}
    spec = options(kind="JobSet", pod_template_path=["spec", "replicatedJobs", "0", "template", "spec", "template"])
    patched, record, _w = shim_patch.patch(obj, spec)
    assert record["templates"][0]["path"][2] == 0
    assert dumps(shim_patch.reverse(patched)[0]) == dumps(obj)


def test_cronjob_template_path():
    obj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "n"},
           "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
               "restartPolicy": "Never", "containers": [gpu_container()]}}}}}}
    patched, record, _w = shim_patch.patch(obj, options(kind="CronJob"))
    assert record["templates"][0]["path"] == ["spec", "jobTemplate", "spec", "template"]
    assert dumps(shim_patch.reverse(patched)[0]) == dumps(obj)


@pytest.mark.parametrize("env, words", [
    ([{"name": "LD_PRELOAD", "value": "/a.so"}, {"name": "LD_PRELOAD", "value": "/b.so"}], "sets LD_PRELOAD 2 times"),
    ([{"name": "LD_PRELOAD", "value": "/other/libcudafault.so"}], "already preloads libcudafault.so"),
    ([{"name": "LD_PRELOAD", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
      {"name": shim_patch.PRIOR_PRELOAD_ENV, "value": "y"}], "already sets " + shim_patch.PRIOR_PRELOAD_ENV),
])
def test_ld_preload_it_cannot_merge_is_refused(env, words):
    with pytest.raises(ShimPatchError, match=words):
        shim_patch.patch(workload({"containers": [gpu_container(env=env)]}), options())


def test_a_mount_in_the_way_is_refused():
    obj = workload({"containers": [gpu_container(volumeMounts=[{"name": "x", "mountPath": shim_control.CONTAINER_DIR}])],
                    "volumes": [{"name": "x", "emptyDir": {}}]})
    with pytest.raises(ShimPatchError, match="already mounts volume x at /run/gpu-fault-injection/shim"):
        shim_patch.patch(obj, options())


@pytest.mark.parametrize("overrides, words", [
    (dict(containers=["gpu; rm -rf /"]), "container"),
    (dict(containers=["GPU"]), "container"),
    (dict(containers=[]), "at least one"),
    (dict(containers=["gpu"], all_containers=True), "not both"),
    (dict(pin_node="gpu-node-1\nspec: x"), "pin_node"),
    (dict(pin_node="$(reboot)"), "pin_node"),
    (dict(pin_mode="sometimes"), "pin_mode"),
    (dict(library_path="/lib/a.so:/lib/b.so"), "library_path"),
    (dict(library_path="/lib/../../etc/ld.so.preload"), "library_path"),
    (dict(library_path="relative.so"), "library_path"),
    (dict(library_path="/lib/a b.so"), "library_path"),
    (dict(compiler_image="gcc:14; curl evil"), "compiler_image"),
    (dict(compiler_image="gcc\n:14"), "compiler_image"),
    (dict(kind="deployment"), "kind"),
    (dict(kind="Deployment", api_version="apps/v1; x"), "api_version"),
    (dict(kind="X", pod_template_path=["spec", "../template"]), "pod_template_path"),
    (dict(kind="X", pod_template_path=[]), "pod_template_path"),
    (dict(state="armed"), "needs xid"),
    (dict(state="armed", xid=12345), "unknown XID code 12345"),
    (dict(state="on"), "state"),
])
def test_hostile_or_bad_options_are_rejected(overrides, words):
    with pytest.raises(ShimPatchError, match=words):
        options(**overrides)


@pytest.mark.parametrize("name", ["web;rm", "Web", "a" * 254, "-web", "web\n"])
def test_hostile_workload_names_are_rejected(name):
    with pytest.raises(ShimPatchError):
        shim_patch.validate_dns_subdomain(name, "name")


def test_config_map_names_are_unique_per_workload_and_valid():
    names = set(shim_patch.config_map_name("apps/v1", kind, ns, name) for kind in ("Deployment", "StatefulSet")
                for ns in ("a", "b") for name in ("web", "api"))
    assert len(names) == 8
    long = shim_patch.config_map_name("nvidia.com/v1alpha1", "DynamoGraphDeployment", "ns", "x" * 253)
    assert len(long) <= 253 and shim_patch.validate_dns_subdomain(long, "ConfigMap")
    assert shim_patch.config_map_name("apps/v1", "Deployment", "n", "web").startswith("cuda-fault-shim-deployment-web-")


@pytest.mark.parametrize("existing, merged, rest", [
    (None, LIB, ""),
    ("", LIB, ""),
    ("/a.so", LIB + ":/a.so", "/a.so"),
    ("/a.so /b.so", LIB + ":/a.so /b.so", "/a.so /b.so"),
    ("/a.so:" + LIB, None, "/a.so"),
    ("/a.so:" + LIB + ":/b.so", None, "/a.so:/b.so"),
    (LIB + "x.so", None, LIB + "x.so"),
])
def test_ld_preload_merge_and_strip(existing, merged, rest):
    if merged is not None:
        assert shim_patch.merge_ld_preload(existing, LIB) == merged
        assert shim_patch.strip_ld_preload(merged, LIB) == (existing or "")
    else:
        assert shim_patch.strip_ld_preload(existing, LIB) == rest


def test_reverse_keeps_what_others_changed_since():
    spec = options(state="armed", xid=79, pin_node="gpu-node-1")
    patched, _r, _w = shim_patch.patch(SHAPES["existing-ld-preload"], spec)
    edited = copy.deepcopy(patched)
    pod = edited["spec"]["template"]["spec"]
    ld = next(e for e in pod["containers"][0]["env"] if e["name"] == "LD_PRELOAD")
    ld["value"] += ":/opt/new.so"
    pod["containers"][0]["env"].append({"name": "NEW", "value": "1"})
    pod["volumes"].insert(0, {"name": "extra", "emptyDir": {}})
    pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"].insert(0, {"key": "zone", "operator": "In", "values": ["a"]})
    restored, warnings = shim_patch.reverse(edited)
    pod = restored["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"] == [{"name": "A", "value": "1"},
                                           {"name": "LD_PRELOAD", "value": "/usr/lib/libjemalloc.so /opt/x.so:/opt/new.so"},
                                           {"name": "Z", "value": "2"}, {"name": "NEW", "value": "1"}]
    assert pod["volumes"] == [{"name": "extra", "emptyDir": {}}]
    assert pod["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    assert "initContainers" not in pod and "volumeMounts" not in pod["containers"][0]
    assert len(warnings) == 2 and any("LD_PRELOAD was changed" in w for w in warnings)


def test_reverse_survives_items_removed_by_others():
    patched, _r, _w = shim_patch.patch(SHAPES["bare"], options())
    edited = copy.deepcopy(patched)
    del edited["spec"]["template"]["spec"]["initContainers"]
    restored, warnings = shim_patch.reverse(edited)
    assert dumps(restored) == dumps(SHAPES["bare"])
    assert warnings == ["Deployment team-a/web, spec.template: spec.template.spec.initContainers is gone; nothing "
                        "to remove there"]
    plan = shim_patch.plan(edited, options())
    assert plan["changed"] is True and dumps(plan["desired"]) == dumps(patched)


def test_state_changes_go_through_the_original():
    spec = options(state="armed", xid=79, pin_node="gpu-node-1")
    patched, _r, _w = shim_patch.patch(SHAPES["existing-everything"], spec)
    plan = shim_patch.plan(patched, options(state="present", library_path="/usr/lib/libcudafault.so"))
    assert dumps(plan["original"]) == dumps(SHAPES["existing-everything"])
    assert "initContainers" in plan["desired"]["spec"]["template"]["spec"]  # the user's own init container
    assert len(plan["desired"]["spec"]["template"]["spec"]["initContainers"]) == 1
    absent = shim_patch.plan(patched, dict(spec, state="absent"))
    assert absent["changed"] and absent["record"] is None and dumps(absent["desired"]) == dumps(
        SHAPES["existing-everything"])
    assert shim_patch.plan(SHAPES["bare"], dict(spec, state="absent"))["changed"] is False


def test_a_foreign_annotation_is_refused():
    obj = workload({"containers": [gpu_container()]}, annotations={shim_patch.ANNOTATION: "{\"v\": 9}"})
    with pytest.raises(ShimPatchError, match="not a version-1 shim record"):
        shim_patch.plan(obj, options())


@pytest.mark.parametrize("kind, status, spec, done", [
    ("Deployment", {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, {}, True),
    ("Deployment", {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, {}, False),
    ("Deployment", {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 3}, {}, False),
    ("Deployment", {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}, {}, False),
    ("StatefulSet", {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                     "currentRevision": "a", "updateRevision": "a"}, {}, True),
    ("StatefulSet", {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                     "currentRevision": "a", "updateRevision": "b"}, {}, False),
    ("StatefulSet", {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2,
                     "currentRevision": "a", "updateRevision": "b"},
     {"updateStrategy": {"rollingUpdate": {"partition": 1}}}, True),
    ("DaemonSet", {"observedGeneration": 3, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                   "numberAvailable": 3}, {}, True),
    ("DaemonSet", {"observedGeneration": 3, "desiredNumberScheduled": 3, "updatedNumberScheduled": 2,
                   "numberAvailable": 3}, {}, False),
])
def test_rollout_complete(kind, status, spec, done):
    obj = {"kind": kind, "metadata": {"generation": 3}, "spec": dict({"replicas": 2}, **spec), "status": status}
    assert shim_patch.rollout_complete(kind, obj) is done


def test_rollout_blockers():
    assert "paused" in shim_patch.rollout_blocker("Deployment", {"spec": {"paused": True}, "metadata": {}})
    assert "OnDelete" in shim_patch.rollout_blocker("StatefulSet", {"spec": {"updateStrategy": {"type": "OnDelete"}}})
    assert shim_patch.rollout_blocker("Deployment", {"spec": {}}) is None


class FakeModule:
    check_mode = False

    def __init__(self, **params):
        self.params = dict(dict(kind="Deployment", api_version=None, name="web", namespace="team-a", state="armed",
                                xid=79, containers=None, all_containers=False, library_path=None,
                                compiler_image=shim_patch.DEFAULT_COMPILER_IMAGE, pin_node=None, pin_mode="required",
                                runtime_control=True, pod_template_path=None, wait=False, wait_timeout=10,
                                shim_files={shim_source.SOURCE_FILE: "/* c */", shim_source.HEADER_FILE: "/* h */"}),
                           **params)


class FakeResult:
    def __init__(self, obj):
        self.obj = obj

    def to_dict(self):
        return copy.deepcopy(self.obj)


class FakeCluster:
    """A workload that someone else updates between our read and our first write."""

    def __init__(self, obj, conflicts):
        self.obj, self.conflicts, self.config_maps, self.writes = copy.deepcopy(obj), conflicts, {}, 0

    def get(self, res, name, namespace=None):
        if res == "ConfigMap":
            return copy.deepcopy(self.config_maps.get(name))
        return copy.deepcopy(self.obj)

    def create(self, res, body, namespace=None, field_manager=None):
        assert res == "ConfigMap" and field_manager == shim_patch.MANAGED_BY
        self.config_maps[body["metadata"]["name"]] = copy.deepcopy(body)
        return FakeResult(body)

    def replace(self, res, body, namespace=None, field_manager=None):
        from kubernetes.client.rest import ApiException
        from kubernetes.dynamic.exceptions import ConflictError
        assert "managedFields" not in body["metadata"]
        if body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"] or self.conflicts:
            if self.conflicts:
                self.conflicts -= 1
                self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
                self.obj["spec"]["template"]["metadata"]["labels"]["edited"] = "by-someone"
            raise ConflictError(ApiException(status=409, reason="Conflict"))
        self.writes += 1
        self.obj = copy.deepcopy(body)
        return FakeResult(body)


def patcher(cluster, monkeypatch, **params):
    from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import kube
    from ansible_collections.gpu_resilience.fault_injection.plugins.modules import cuda_shim_patch
    monkeypatch.setattr(kube, "client", lambda module: cluster)
    monkeypatch.setattr(kube, "resource", lambda k8s, api_version, kind, hint=None: kind)
    monkeypatch.setattr(kube, "get", lambda k8s, res, name, namespace=None: k8s.get(res, name, namespace))
    return cuda_shim_patch.ShimPatcher(FakeModule(**params)), cuda_shim_patch


def test_the_module_retries_conflicts_on_a_fresh_read(monkeypatch):
    cluster = FakeCluster(SHAPES["existing-ld-preload"], conflicts=2)
    shim, _mod = patcher(cluster, monkeypatch)
    result = shim.run()
    assert result["changed"] is True and cluster.writes == 1
    assert cluster.obj["spec"]["template"]["metadata"]["labels"]["edited"] == "by-someone"   # kept: recomputed
    assert result["record"] == json.loads(cluster.obj["metadata"]["annotations"][shim_patch.ANNOTATION])
    assert len(cluster.config_maps) == 1
    cm = list(cluster.config_maps.values())[0]
    assert cm["data"] == {shim_source.SOURCE_FILE: "/* c */", shim_source.HEADER_FILE: "/* h */"}
    assert cm["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                                  "uid": "u-1"}]
    again, _mod = patcher(cluster, monkeypatch)
    assert again.run()["changed"] is False and cluster.writes == 1


def test_the_module_gives_up_after_repeated_conflicts(monkeypatch):
    shim, mod = patcher(FakeCluster(SHAPES["bare"], conflicts=99), monkeypatch)
    with pytest.raises(mod.KubeError, match="kept changing while it was being patched"):
        shim.run()


def test_the_module_needs_the_action_plugins_files(monkeypatch):
    with pytest.raises(ShimPatchError, match="comes from the module's action plugin"):
        patcher(FakeCluster(SHAPES["bare"], 0), monkeypatch, shim_files=None)
    with pytest.raises(ShimPatchError, match="shim_files is internal"):
        patcher(FakeCluster(SHAPES["bare"], 0), monkeypatch, shim_files={"x.c": "y"})
    shim, _mod = patcher(FakeCluster(SHAPES["bare"], 0), monkeypatch, shim_files=None, library_path="/lib/s.so")
    assert shim.run()["config_map"] is None


def replica_set(name, uid, shimmed, replicas=0, running=0, controller=True):
    env = [{"name": shim_control.ENV_ENABLED, "value": "0"}] if shimmed else [{"name": "MODEL", "value": "x"}]
    return {"metadata": {"name": name, "ownerReferences": [{"uid": uid, "controller": controller, "kind": "Deployment"}]},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "env": env}]}}},
            "status": {"replicas": running}}


def test_shim_history_names_only_idle_shimmed_replica_sets_of_this_deployment():
    deployment = {"metadata": {"uid": "d-1"}}
    sets = [replica_set("web-shim", "d-1", True),
            replica_set("web-plain", "d-1", False),
            replica_set("web-shim-busy", "d-1", True, replicas=1, running=1),
            replica_set("web-shim-draining", "d-1", True, replicas=0, running=1),
            replica_set("other-shim", "d-2", True),
            replica_set("adopted-not-controller", "d-1", True, controller=False)]
    assert shim_patch.shim_history(deployment, sets) == ["web-shim"]
    assert shim_patch.shim_history(deployment, []) == []
