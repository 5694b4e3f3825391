"""Unit tests of the NVSentinel lane's pure parts: the source check, the GPU metadata stand-in, the
image map, the PostgreSQL settings and the wait for the pods (tools/localcluster/nvsentinel*.py)."""
import json
import os
import re
import subprocess
import sys

import pytest

TOOL_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "tools", "localcluster"))
sys.path.insert(0, TOOL_DIR)
import localcluster as lc  # noqa: E402  (the same instance its sibling modules import)
import nvsentinel  # noqa: E402
import nvsentinel_source  # noqa: E402
import postgresql  # noqa: E402

NVSENTINEL_SRC = nvsentinel_source.source_dir()


def _git(cwd, *argv):
    return subprocess.run(["git", *argv], cwd=cwd, check=True, capture_output=True, text=True,
                          env=dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null")).stdout.strip()


# --- source check --------------------------------------------------------------------------------

def test_tree_id_is_gits(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.go").write_text("package b\n")
    (tmp_path / "b.txt").write_text("sorted after the directory b/ in git's order\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "link").symlink_to("b.txt")
    (tmp_path / "empty").mkdir()  # git keeps no empty directory
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    assert nvsentinel_source.tree_id(str(tmp_path)).hex() == _git(tmp_path, "write-tree")


def test_pinned_digest_matches_the_source_and_a_change_is_found(tmp_path):
    pins = nvsentinel_source.versions()
    assert nvsentinel_source.verify(NVSENTINEL_SRC, pins["NVSENTINEL_COMMIT"], pins["NVSENTINEL_SOURCE_DIGEST"]) == []
    # A copy with one byte changed in one module no longer matches, and the message names the directory.
    copy = tmp_path / "src"
    for d in nvsentinel_source.SOURCE_DIRS:
        (copy / d).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", os.path.join(NVSENTINEL_SRC, d), str(copy / d)], check=True)
    assert nvsentinel_source.verify(str(copy), pins["NVSENTINEL_COMMIT"], pins["NVSENTINEL_SOURCE_DIGEST"]) == []
    with open(copy / "fault-quarantine" / "main.go", "a", encoding="utf-8") as f:
        f.write("\n")
    problems = nvsentinel_source.verify(str(copy), pins["NVSENTINEL_COMMIT"], pins["NVSENTINEL_SOURCE_DIGEST"])
    assert len(problems) == 1 and "do not match NVSENTINEL_SOURCE_DIGEST" in problems[0]
    ids = nvsentinel_source.tree_ids(NVSENTINEL_SRC)  # the message lists the ids found: one changed
    assert "%s fault-quarantine" % ids["fault-quarantine"] not in problems[0]
    assert "%s commons" % ids["commons"] in problems[0]


def test_a_git_checkout_at_another_commit_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    problems = nvsentinel_source.verify(str(tmp_path), "0" * 40, "irrelevant")
    assert any("not the pinned commit" in p for p in problems)


# --- GPU metadata: the stand-in for metadata-collector -------------------------------------------

def _go_json_fields(struct):
    """The JSON field names of a struct in NVSentinel's data-models (the format's own definition)."""
    with open(os.path.join(NVSENTINEL_SRC, "data-models", "pkg", "model", "gpu_metadata.go"), encoding="utf-8") as f:
        src = f.read()
    body = re.search(r"type %s struct \{(.*?)\n\}" % struct, src, re.S).group(1)
    return {m.group(1): "omitempty" in (m.group(2) or "") for m in re.finditer(r'json:"([a-z_]+)(,[a-z]+)?"', body)}


def test_gpu_metadata_has_metadata_collectors_format_and_the_nodes_gpus(tmp_path):
    meta = nvsentinel.gpu_metadata("gpu-node-1", 8, "NVIDIA-H100-80GB-HBM3", "2026-01-01T00:00:00Z")
    top, gpu = _go_json_fields("GPUMetadata"), _go_json_fields("GPUInfo")
    assert set(meta) == {k for k, omit in top.items() if not omit}
    for g in meta["gpus"]:
        assert set(g) == {k for k, omit in gpu.items() if not omit}
    # The same GPUs, in the same order, as the node's /proc/driver/nvidia/gpus/<pci>/information.
    inventory = lc.node_gpus("gpu-node-1", 8)
    assert [(g["gpu_id"], g["pci_address"], g["uuid"]) for g in meta["gpus"]] == \
        [(i, pci, u) for i, (pci, _m, u) in enumerate(inventory)]
    assert meta["gpus"][0]["device_name"] == "NVIDIA H100 80GB HBM3" and meta["node_name"] == "gpu-node-1"
    # HGX H100: 18 NVLinks per GPU to four NVSwitches (5-4-4-5), every switch port one GPU's.
    links = [(link["remote_pci_address"], link["remote_link_id"]) for g in meta["gpus"] for link in g["nvlinks"]]
    assert len(links) == 8 * 18 and len(set(links)) == len(links)
    assert meta["nvswitches"] == sorted({pci for pci, _port in links}) and len(meta["nvswitches"]) == 4
    assert all(0 <= port < 64 for _pci, port in links)   # an NVSwitch has 64 ports
    assert [link["link_id"] for link in meta["gpus"][3]["nvlinks"]] == list(range(18))
    assert set(_go_json_fields("NVLink")) == set(meta["gpus"][0]["nvlinks"][0])
    assert meta["driver_version"] == lc.DRIVER_VERSION
    nvsentinel.write_gpu_metadata(str(tmp_path), ["gpu-node-1"], 8, "NVIDIA-H100-80GB-HBM3")
    with open(tmp_path / "nodes" / "gpu-node-1" / "host" / "var" / "lib" / "nvsentinel" / "gpu_metadata.json") as f:
        written = json.load(f)
    assert written["gpus"] == meta["gpus"] and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", written["timestamp"])


# --- rendering and the image map -----------------------------------------------------------------

def _workload(kind, name, containers, init=(), node_selector=None, replicas=None):
    spec = {"containers": list(containers), "initContainers": list(init)}
    if node_selector:
        spec["nodeSelector"] = node_selector
    obj = {"kind": kind, "metadata": {"name": name}, "spec": {"template": {"spec": spec}}}
    if replicas is not None:
        obj["spec"]["replicas"] = replicas
    return obj


def test_helm_renders_the_chart_with_both_values_files_and_the_pins():
    pins = {"K8S_VERSION": "v1.37.2", "NVSENTINEL_COMMIT": "abc"}
    argv = nvsentinel.helm_template_argv("/h", "/src", pins, 26432)
    assert argv[:4] == ["/h", "template", "nvsentinel", "/src/distros/kubernetes/nvsentinel"]
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "-f"]
    assert files == ["/src/distros/kubernetes/nvsentinel/values-postgresql.yaml", nvsentinel.VALUES]
    assert "--include-crds" in argv and argv[argv.index("--kube-version") + 1] == "v1.37.2"
    assert "global.image.tag=abc" in argv and "global.datastore.connection.port=26432" in argv


def test_image_map_maps_nvsentinel_images_to_the_built_binaries():
    docs = [
        _workload("Deployment", "fault-quarantine",
                  [{"name": "fq", "image": "ghcr.io/nvidia/nvsentinel/fault-quarantine:abc"}],
                  init=[{"name": "fix", "image": "docker.io/bitnamilegacy/os-shell:12-debian-12-r30",
                         "command": ["sh", "-c", "cp a b"]}]),
        _workload("DaemonSet", "platform-connectors",
                  [{"name": "pc", "image": "ghcr.io/nvidia/nvsentinel/platform-connectors:abc@sha256:00"}]),
        {"kind": "ConfigMap", "metadata": {"name": "x"}},
    ]
    images = nvsentinel.image_map(docs, "/bin")
    assert images == {
        "ghcr.io/nvidia/nvsentinel/fault-quarantine": {"entrypoint": ["/bin/fault-quarantine"], "cmd": []},
        "ghcr.io/nvidia/nvsentinel/platform-connectors": {"entrypoint": ["/bin/platform-connectors"], "cmd": []},
        "docker.io/bitnamilegacy/os-shell": {"entrypoint": [], "cmd": ["sh"]},
    }


@pytest.mark.parametrize("container", [
    {"name": "gpu", "image": "ghcr.io/nvidia/nvsentinel/gpu-health-monitor:abc"},   # not built: needs DCGM
    {"name": "shell", "image": "docker.io/bitnamilegacy/os-shell:12"},              # no command to run
    {"name": "other", "image": "docker.io/library/busybox:1", "command": ["sh"]},
])
def test_an_image_without_a_program_here_is_refused_by_name(container):
    with pytest.raises(lc.ClusterError, match=re.escape(container["image"]) + ".*nvsentinel-values.yaml"):
        nvsentinel.image_map([_workload("DaemonSet", "ds", [container])], "/bin")


def test_values_turn_off_what_cannot_run_and_on_the_quarantine_path():
    import yaml
    with open(nvsentinel.VALUES, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    g = values["global"]
    assert not g["gpuHealthMonitor"]["enabled"] and not g["metadataCollector"]["enabled"]
    assert g["faultQuarantine"]["enabled"] and g["nodeDrainer"]["enabled"] and g["faultRemediation"]["enabled"]
    assert g["datastore"]["provider"] == "postgresql" and g["datastore"]["connection"]["host"] == postgresql.HOST
    assert values["postgresql"]["enabled"] is False


# --- PostgreSQL ------------------------------------------------------------------------------------

def test_postgresql_listens_on_loopback_only_and_takes_certificates_only(tmp_path):
    argv = postgresql.command(postgresql.Paths(str(tmp_path)), 26432)
    assert "listen_addresses=127.0.0.1" in argv and "port=26432" in argv and "unix_socket_directories=" in argv
    assert postgresql.HBA.split() == ["hostssl", "nvsentinel", "postgres", "127.0.0.1/32", "cert"]
    assert postgresql.settings()["ssl"] == "on"


def test_postgresql_runs_only_in_an_nvsentinel_cluster():
    assert "postgresql" not in lc.wanted({"journal": True})
    wanted = lc.wanted({"nvsentinel": True})
    # Stopped (in reverse order) right after the runner that runs NVSentinel's pods.
    assert wanted[wanted.index("postgresql") + 1] == "podrunner"


# --- waiting until the pods run ----------------------------------------------------------------------

def _pod(uid, node, owner_kind, owner):
    return {"metadata": {"uid": uid, "ownerReferences": [{"kind": owner_kind, "name": owner}]},
            "spec": {"nodeName": node}}


def _running(*roles):
    return {"containers": {"c%d" % i: {"role": r, "pid": 100 + i, "started": r != "init", "done": r == "init",
                                       "exitCode": 0 if r == "init" else None} for i, r in enumerate(roles)}}


def test_missing_names_every_pod_that_does_not_run_yet():
    docs = [
        _workload("DaemonSet", "syslog-health-monitor-regular", [{"args": ["--checks", "A,B"]}],
                  node_selector={"nvsentinel.dgxc.nvidia.com/driver.installed": "true"}),
        _workload("DaemonSet", "platform-connectors", [{}]),
        _workload("Deployment", "fault-quarantine", [{}], replicas=1),
    ]
    nodes = {"gpu-node-0": {"nvsentinel.dgxc.nvidia.com/driver.installed": "true"}, "cpu-node-0": {}}
    pods = [_pod("a", "gpu-node-0", "DaemonSet", "syslog-health-monitor-regular"),
            _pod("b", "gpu-node-0", "DaemonSet", "platform-connectors"),
            _pod("c", "cpu-node-0", "DaemonSet", "platform-connectors"),
            _pod("d", "gpu-node-0", "ReplicaSet", "fault-quarantine-5d8f7c")]
    index = {"a": _running("main"), "b": _running("init", "main"), "c": _running("main"), "d": _running("init", "main")}

    def gaps(index, alive=lambda pid: True, socket=lambda node: True, cursors=lambda node: {"A", "B"}):
        return nvsentinel.missing(docs, pods, index, nodes, alive, socket, cursors)

    assert gaps(index) == []
    assert gaps(dict(index, d={"containers": {}})) == ["fault-quarantine: 0 of 1 pod(s) running"]
    assert gaps(index, alive=lambda pid: pid != 100) == [
        "syslog-health-monitor-regular not running on gpu-node-0", "platform-connectors not running on cpu-node-0"]
    failed_init = dict(index, b={"containers": {"i": {"role": "init", "done": True, "exitCode": 1}}})
    assert gaps(failed_init) == ["platform-connectors not running on gpu-node-0"]
    assert gaps(index, socket=lambda node: node != "cpu-node-0") == ["no platform-connectors socket on cpu-node-0"]
    assert gaps(index, cursors=lambda node: {"A"}) == [
        "syslog-health-monitor-regular has not read the journal of gpu-node-0 yet"]


# --- stages -------------------------------------------------------------------------------------------

def test_each_stage_is_chart_values_set_at_render_time():
    pins = {"K8S_VERSION": "v1.37.2", "NVSENTINEL_COMMIT": "abc"}
    full = nvsentinel.helm_template_argv("/h", "/src", pins, 26432, "full")
    assert full == nvsentinel.helm_template_argv("/h", "/src", pins, 26432)
    assert nvsentinel.helm_template_argv("/h", "/src", pins, 26432, "dry-run") == full + ["--set", "global.dryRun=true"]
    monitor = nvsentinel.helm_template_argv("/h", "/src", pins, 26432, "monitor")
    assert monitor[len(full):] == ["--set", "global.faultQuarantine.enabled=false", "--set",
                                   "global.faultRemediation.enabled=false", "--set", "global.nodeDrainer.enabled=false"]


def test_switching_stages_deletes_what_the_new_rendering_has_not():
    previous = [["v1", "Namespace", None, "nvsentinel"], ["v1", "ConfigMap", "nvsentinel", "node-drainer"],
                ["apps/v1", "Deployment", "nvsentinel", "node-drainer"], ["apps/v1", "DaemonSet", "nvsentinel", "pc"]]
    current = [previous[0], previous[3]]
    # Workloads first (reverse apply order), so their pods go before their ConfigMaps.
    assert nvsentinel.stale(previous, current) == [previous[2], previous[1]]
    assert nvsentinel.stale(current, previous) == []
    assert nvsentinel.identity({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}) == \
        ["v1", "ConfigMap", None, "x"]


def test_missing_waits_for_a_rollout_and_for_an_earlier_stages_pods_to_go():
    docs = [_workload("Deployment", "fault-quarantine", [{}], replicas=1)]
    nodes = {"gpu-node-0": {}}
    old, new = _pod("o", "gpu-node-0", "ReplicaSet", "fault-quarantine-5d8f7c"), \
        _pod("n", "gpu-node-0", "ReplicaSet", "fault-quarantine-7a9b1e")
    index = {"o": _running("main"), "n": _running("main")}
    done = {"metadata": {"generation": 2}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 1}}

    def gaps(pods, deployment=None):
        return nvsentinel.missing(docs, pods, index, nodes, lambda pid: True, lambda n: True, lambda n: set(),
                                  {"fault-quarantine": deployment or done})

    assert gaps([new]) == []
    assert gaps([old, new]) == ["fault-quarantine: rollout not finished"]
    assert gaps([old], dict(done, status={"observedGeneration": 1, "updatedReplicas": 1, "replicas": 1})) == \
        ["fault-quarantine: rollout not finished"]
    drainer = _pod("d", "gpu-node-0", "ReplicaSet", "node-drainer-6c5d4b")
    assert gaps([new, drainer]) == ["node-drainer still runs (not in this rendering)"]
