"""Unit tests of the local pod runner's pure parts (tools/localcluster/podrunner.py)."""
import base64
import importlib.util
import os
import stat
from pathlib import Path

import pytest

RUNNER_PATH = Path(__file__).resolve().parents[3] / "tools" / "localcluster" / "podrunner.py"
_spec = importlib.util.spec_from_file_location("podrunner", RUNNER_PATH)
pr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pr)

NS = "drills"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def make_pod(containers=None, volumes=None, init_containers=None, **spec):
    return {
        "metadata": {"name": "agent-x1", "namespace": NS, "uid": "uid-1",
                     "labels": {"app": "agent", pr.RUN_LABEL: "true"},
                     "annotations": {"note": 'say "hi"'}},
        "spec": {"nodeName": "gpu-node-1", "serviceAccountName": "agent-sa",
                 "containers": containers or [{"name": "main", "command": ["python3"]}],
                 "initContainers": init_containers or [], "volumes": volumes or [], **spec},
        "status": {"phase": "Running", "podIP": "127.128.0.7", "podIPs": [{"ip": "127.128.0.7"}],
                   "hostIP": "127.1.0.1", "hostIPs": [{"ip": "127.1.0.1"}]},
    }


OBJECTS = {
    ("ConfigMap", NS, "settings"): {"data": {"LEVEL": "debug", "MODE": "drill",
                                             "agent.py": "print('hi')\n"},
                                    "binaryData": {"blob": b64("\x00\x01")}},
    ("ConfigMap", NS, "kube-root-ca.crt"): {"data": {"ca.crt": "CA PEM"}},
    ("Secret", NS, "creds"): {"data": {"TOKEN": b64("s3cret"), "user": b64("admin")}},
}


def lookup(kind, namespace, name):
    return OBJECTS.get((kind, namespace, name))


BASE = pr.base_env("agent-x1", "/usr/bin:/bin", 26443, "/state")


# --- $(VAR) expansion --------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("$(A)", "alpha"),
    ("x-$(A)-$(B)-y", "x-alpha-beta-y"),
    ("$(MISSING)", "$(MISSING)"),          # undefined: kept as written
    ("$$(A)", "$(A)"),                     # escaped reference
    ("$$$(A)", "$alpha"),
    ("$$", "$"),
    ("cost: 5$", "cost: 5$"),              # trailing $ stays
    ("$A and $", "$A and $"),              # only $( and $$ are special
    ("$(A", "$(A"),                        # unterminated
    ("$()", "$()"),
    ("$(EMPTY)", ""),
    ("", ""),
])
def test_expand_follows_kubernetes_semantics(text, expected):
    assert pr.expand(text, {"A": "alpha", "B": "beta", "EMPTY": ""}) == expected


def test_expand_does_not_expand_the_substituted_value():
    assert pr.expand("$(A)", {"A": "$(B)", "B": "no"}) == "$(B)"


# --- quantities and resourceFieldRef -----------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("250m", pr.Fraction(1, 4)), ("2", 2), (2, 2), ("1Gi", 2**30), ("64Mi", 64 * 2**20),
    ("1e3", 1000), ("1.5k", 1500), ("100n", pr.Fraction(1, 10**7)),
])
def test_parse_quantity(text, value):
    assert pr.parse_quantity(text) == value


def test_parse_quantity_rejects_garbage():
    with pytest.raises(pr.PodSpecError):
        pr.parse_quantity("12 apples")


def test_resource_field_ref_divides_rounding_up_and_defaults_limits_to_allocatable():
    pod = make_pod(containers=[{"name": "main", "command": ["x"], "resources": {
        "limits": {"memory": "1Gi", "nvidia.com/gpu": "2"}, "requests": {"cpu": "250m"}}}])
    alloc = {"cpu": "16", "memory": "64Gi"}

    def value(resource, divisor=None):
        ref = {"resource": resource, **({"divisor": divisor} if divisor else {})}
        return pr.resource_value(pod, ref, "main", alloc)

    assert value("requests.cpu") == "1"                 # 250m rounds up to one core
    assert value("requests.cpu", "1m") == "250"
    assert value("limits.memory", "1Mi") == "1024"
    assert value("limits.memory") == str(2**30)
    assert value("limits.nvidia.com/gpu") == "2"
    assert value("limits.cpu") == "16"                  # unset limit: node allocatable
    assert value("requests.memory") == "0"              # unset request: nothing


# --- downward API ------------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("metadata.name", "agent-x1"), ("metadata.namespace", NS), ("metadata.uid", "uid-1"),
    ("metadata.labels['app']", "agent"), ("metadata.labels['absent']", ""),
    ("metadata.annotations['note']", 'say "hi"'),
    ("spec.nodeName", "gpu-node-1"), ("spec.serviceAccountName", "agent-sa"),
    ("status.podIP", "127.128.0.7"), ("status.podIPs", "127.128.0.7"),
    ("status.hostIP", "127.1.0.1"), ("status.hostIPs", "127.1.0.1"),
])
def test_field_ref_values(path, expected):
    assert pr.field_value(make_pod(), path) == expected


def test_field_ref_ip_lists_fall_back_to_the_single_ip_and_join_with_commas():
    pod = make_pod()
    del pod["status"]["podIPs"]
    pod["status"]["hostIPs"] = [{"ip": "127.1.0.1"}, {"ip": "::1"}]
    assert pr.field_value(pod, "status.podIPs") == "127.128.0.7"
    assert pr.field_value(pod, "status.hostIPs") == "127.1.0.1,::1"


def test_field_ref_whole_maps_are_sorted_quoted_lines():
    pod = make_pod()
    assert pr.field_value(pod, "metadata.labels") == 'app="agent"\n%s="true"' % pr.RUN_LABEL
    assert pr.field_value(pod, "metadata.annotations") == 'note="say \\"hi\\""'


def test_unknown_field_path_fails_the_pod():
    with pytest.raises(pr.PodSpecError):
        pr.field_value(make_pod(), "spec.hostname")


# --- environment -------------------------------------------------------------------------------

def env_of(container, pod=None):
    container = {"name": "main", "command": ["x"], **container}
    pod = pod or make_pod(containers=[container])
    return pr.container_env(pod, container, BASE, lookup)


def test_base_env_points_programs_at_the_api_on_loopback():
    assert BASE == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOSTNAME": "agent-x1",
                    "PYTHONUNBUFFERED": "1", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": "26443", "KUBERNETES_SERVICE_PORT_HTTPS": "26443",
                    "LOCALCLUSTER_STATE": "/state"}


def test_env_from_with_prefix_and_optional_missing_sources():
    env = env_of({"envFrom": [
        {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
        {"secretRef": {"name": "creds"}},
        {"configMapRef": {"name": "absent", "optional": True}},
    ]})
    assert env == {"CFG_LEVEL": "debug", "CFG_MODE": "drill", "CFG_agent.py": "print('hi')\n",
                   "TOKEN": "s3cret", "user": "admin"}     # binaryData is not offered as env


def test_env_from_missing_required_source_waits():
    with pytest.raises(pr.ConfigError, match="ConfigMap drills/absent not found"):
        env_of({"envFrom": [{"configMapRef": {"name": "absent"}}]})


def test_env_order_expansion_and_overrides():
    env = env_of({
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "env": [
            {"name": "MODE", "value": "live"},                         # env overrides envFrom
            {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
            {"name": "DESC", "value": "$(LEVEL)/$(MODE)/$(LATER)/$$(MODE)"},
            {"name": "LATER", "value": "x"},                           # defined after DESC
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.2"},  # may override the base
        ]})
    assert env["MODE"] == "live"
    assert env["URL"] == "https://127.0.0.1:26443"
    assert env["DESC"] == "debug/live/$(LATER)/$(MODE)"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.2"
    assert "PATH" not in env                     # the base is not part of the container's own env


def test_value_from_refs():
    env = env_of({"env": [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
        {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
        {"name": "OPT1",
         "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": True}}},
        {"name": "OPT2",
         "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
        {"name": "LITERAL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
    ]})
    assert env == {"POD_IP": "127.128.0.7", "NODE": "gpu-node-1", "LEVEL": "debug",
                   "PASS": "s3cret", "LITERAL": 'say "hi"', "MEM": "0"}


@pytest.mark.parametrize("ref", [
    {"configMapKeyRef": {"name": "settings", "key": "nope"}},
    {"secretKeyRef": {"name": "absent", "key": "k"}},
])
def test_missing_required_key_waits(ref):
    with pytest.raises(pr.ConfigError):
        env_of({"env": [{"name": "X", "valueFrom": ref}]})


def test_value_from_values_are_not_expanded():
    pod = make_pod()
    pod["metadata"]["annotations"]["tpl"] = "$(A)"
    container = {"name": "main", "command": ["x"], "env": [
        {"name": "A", "value": "a"},
        {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['tpl']"}}}]}
    assert pr.container_env(pod, container, BASE, lookup)["B"] == "$(A)"


# --- mounts and path mapping -------------------------------------------------------------------

VOLUME_PATHS = {"app": "/s/pods/p/volumes/app", "host": "/s/nodes/n1/host",
                "kmsg": "/s/nodes/n1/host/dev/kmsg", "data": "/s/pods/p/volumes/data",
                "sa": "/s/pods/p/volumes/sa"}


def table_for(mounts, env=None):
    return pr.mount_table({"volumeMounts": mounts}, VOLUME_PATHS, env or {})


def test_mount_table_longest_mount_path_first_with_sub_paths():
    table = table_for([
        {"name": "host", "mountPath": "/host"},
        {"name": "kmsg", "mountPath": "/host/dev/kmsg"},
        {"name": "data", "mountPath": "/var/lib/x/", "subPath": "nested/dir"},
        {"name": "data", "mountPath": "/per-pod", "subPathExpr": "$(POD_NAME)"},
    ], env={"POD_NAME": "agent-x1"})
    assert table == [
        ("/host/dev/kmsg", "/s/nodes/n1/host/dev/kmsg"),
        ("/var/lib/x", "/s/pods/p/volumes/data/nested/dir"),
        ("/per-pod", "/s/pods/p/volumes/data/agent-x1"),
        ("/host", "/s/nodes/n1/host"),
    ]


def test_mount_table_rejects_unknown_volume_and_escaping_sub_path():
    with pytest.raises(pr.PodSpecError):
        table_for([{"name": "nope", "mountPath": "/x"}])
    with pytest.raises(pr.PodSpecError):
        table_for([{"name": "data", "mountPath": "/x", "subPath": "../../etc"}])


@pytest.mark.parametrize("value, expected", [
    ("/app", "/s/pods/p/volumes/app"),
    ("/app/server.py", "/s/pods/p/volumes/app/server.py"),
    ("/application/x", "/application/x"),                 # a prefix, but not a path prefix
    ("/host/dev/kmsg", "/s/nodes/n1/host/dev/kmsg"),      # the more specific mount wins
    ("/host/var/log", "/s/nodes/n1/host/var/log"),
    ("--config=/app/c.yaml", "--config=/s/pods/p/volumes/app/c.yaml"),
    ("KEY=/app", "KEY=/s/pods/p/volumes/app"),
    ("--other=/usr/bin", "--other=/usr/bin"),
    ("python3", "python3"),
    ("relative/app/x", "relative/app/x"),
    ("", ""),
])
def test_map_value(value, expected):
    table = table_for([{"name": "app", "mountPath": "/app"}, {"name": "host", "mountPath": "/host"},
                       {"name": "kmsg", "mountPath": "/host/dev/kmsg"}])
    assert pr.map_value(value, table) == expected


def test_process_spec_maps_argv_env_and_working_dir():
    container = {
        "name": "agent", "command": ["python3", "/app/agent.py"],
        "args": ["--kmsg", "/host/dev/kmsg", "--node=$(NODE)", "--cfg=/app/c.yaml", "$$(NODE)"],
        "workingDir": "/app"}
    table = table_for([{"name": "app", "mountPath": "/app"},
                       {"name": "kmsg", "mountPath": "/host/dev/kmsg"},
                       {"name": "sa", "mountPath": pr.SA_MOUNT_PATH, "readOnly": True}])
    own = {"NODE": "gpu-node-1", "CONFIG": "/app/c.yaml", "OPTS": "PATH=/app/bin",
           "LOCALCLUSTER_STATE": "/elsewhere"}
    spec = pr.process_spec(container, BASE, own, table, "/s/pods/p/scratch")
    assert spec.argv == ["python3", "/s/pods/p/volumes/app/agent.py", "--kmsg",
                         "/s/nodes/n1/host/dev/kmsg", "--node=gpu-node-1",
                         "--cfg=/s/pods/p/volumes/app/c.yaml", "$(NODE)"]
    assert spec.env["CONFIG"] == "/s/pods/p/volumes/app/c.yaml"
    assert spec.env["OPTS"] == "PATH=/s/pods/p/volumes/app/bin"
    assert spec.env["PATH"] == BASE["PATH"]
    assert spec.env["LOCALCLUSTER_STATE"] == "/state"      # a pod cannot hide its processes
    assert spec.env["KUBERNETES_SERVICEACCOUNT_DIR"] == "/s/pods/p/volumes/sa"
    assert spec.cwd == "/s/pods/p/volumes/app"


def test_process_spec_defaults():
    spec = pr.process_spec({"name": "c", "command": ["sleep", "1"]}, BASE, {}, [], "/scratch")
    assert spec.cwd == "/scratch"
    assert spec.env == BASE                      # nothing of the runner's own environment
    assert "KUBERNETES_SERVICEACCOUNT_DIR" not in spec.env


def test_container_without_command_fails_clearly():
    with pytest.raises(pr.PodSpecError, match="has no command"):
        pr.process_spec({"name": "c", "args": ["x"]}, BASE, {}, [], "/scratch")


# --- hostPath ----------------------------------------------------------------------------------

def test_host_path_stays_under_the_nodes_fake_root():
    assert pr.host_path_target("/s", "n1", "/dev/kmsg") == "/s/nodes/n1/host/dev/kmsg"
    assert pr.host_path_target("/s", "n1", "/") == "/s/nodes/n1/host"
    assert pr.host_path_target("/s", "n1", "/../../etc/passwd") == "/s/nodes/n1/host/etc/passwd"


@pytest.mark.parametrize("kind, is_file", [
    ("File", True), ("FileOrCreate", True), ("CharDevice", True), ("BlockDevice", True),
    ("Socket", True), ("Directory", False), ("DirectoryOrCreate", False), ("", False), (None, False),
])
def test_host_path_types(kind, is_file):
    source = {"path": "/x"} if kind is None else {"path": "/x", "type": kind}
    assert pr.host_path_is_file(source) is is_file


def test_ensure_host_path_creates_and_keeps_content(tmp_path):
    kmsg = tmp_path / "host" / "dev" / "kmsg"
    pr.ensure_host_path(str(kmsg), is_file=True)
    assert kmsg.is_file() and kmsg.read_bytes() == b""
    kmsg.write_text("NVRM: Xid 79\n")
    pr.ensure_host_path(str(kmsg), is_file=True)
    assert kmsg.read_text() == "NVRM: Xid 79\n"
    logs = tmp_path / "host" / "var" / "log"
    pr.ensure_host_path(str(logs), is_file=False)
    assert logs.is_dir()


# --- volume contents ---------------------------------------------------------------------------

def no_token(audience, seconds):
    raise AssertionError("no token expected")


def files_of(volume, token_for=no_token, pod=None):
    return pr.volume_files(pod or make_pod(), volume, lookup, token_for, {"cpu": "8"})


def test_config_map_volume_all_keys_and_binary_data():
    files = files_of({"name": "v", "configMap": {"name": "settings"}})
    assert files == {"LEVEL": (b"debug", 0o644), "MODE": (b"drill", 0o644),
                     "agent.py": (b"print('hi')\n", 0o644), "blob": (b"\x00\x01", 0o644)}


def test_config_map_volume_items_and_modes():
    files = files_of({"name": "v", "configMap": {"name": "settings", "defaultMode": 0o600, "items": [
        {"key": "agent.py", "path": "bin/agent.py", "mode": 0o755}, {"key": "LEVEL", "path": "level"}]}})
    assert files == {"bin/agent.py": (b"print('hi')\n", 0o755), "level": (b"debug", 0o600)}


def test_secret_volume_is_decoded():
    files = files_of({"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400}})
    assert files == {"TOKEN": (b"s3cret", 0o400), "user": (b"admin", 0o400)}


def test_missing_objects_and_keys():
    assert files_of({"name": "v", "secret": {"secretName": "absent", "optional": True}}) == {}
    with pytest.raises(pr.ConfigError):
        files_of({"name": "v", "configMap": {"name": "absent"}})
    with pytest.raises(pr.ConfigError):
        files_of({"name": "v", "configMap": {"name": "settings", "items": [{"key": "no", "path": "n"}]}})
    assert files_of({"name": "v", "configMap": {"name": "settings", "optional": True,
                                                "items": [{"key": "no", "path": "n"}]}}) == {}


def test_downward_api_volume():
    files = files_of({"name": "v", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
        {"path": "cpu", "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu"}},
    ]}})
    assert files == {"labels": (b'app="agent"\n%s="true"' % pr.RUN_LABEL.encode(), 0o644),
                     "name": (b"agent-x1", 0o400), "cpu": (b"8", 0o644)}


def test_projected_service_account_volume_as_admission_writes_it():
    asked = []

    def token_for(audience, seconds):
        asked.append((audience, seconds))
        return "tok-%s-%d" % (audience, seconds)

    volume = {"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"serviceAccountToken": {"audience": "vault", "path": "vault-token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        {"secret": {"name": "creds", "items": [{"key": "user", "path": "user", "mode": 0o400}]}},
    ]}}
    files = files_of(volume, token_for)
    assert files == {"token": (b"tok-None-3607", 0o644), "vault-token": (b"tok-vault-3600", 0o644),
                     "ca.crt": (b"CA PEM", 0o644), "namespace": (NS.encode(), 0o644),
                     "user": (b"admin", 0o400)}
    assert asked == [(None, 3607), ("vault", 3600)]


def test_directory_volumes_have_no_generated_files():
    assert files_of({"name": "v", "emptyDir": {}}) is None
    assert files_of({"name": "v", "hostPath": {"path": "/dev/kmsg"}}) is None


def test_referenced_objects():
    pod = make_pod(
        containers=[{"name": "main", "command": ["x"],
                     "envFrom": [{"secretRef": {"name": "s-env"}}],
                     "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "a"}}},
                             {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}],
        init_containers=[{"name": "init", "command": ["x"],
                          "envFrom": [{"configMapRef": {"name": "cm-init"}}]}],
        volumes=[{"name": "a", "configMap": {"name": "cm-vol"}},
                 {"name": "b", "secret": {"secretName": "s-vol"}},
                 {"name": "c", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}},
                                                         {"secret": {"name": "s-proj"}},
                                                         {"serviceAccountToken": {"path": "t"}}]}},
                 {"name": "d", "emptyDir": {}}])
    assert pr.referenced_objects(pod) == {
        ("Secret", "s-env"), ("ConfigMap", "cm-env"), ("ConfigMap", "cm-init"),
        ("ConfigMap", "cm-vol"), ("Secret", "s-vol"), ("ConfigMap", "kube-root-ca.crt"),
        ("Secret", "s-proj")}


@pytest.mark.parametrize("path", ["/etc/passwd", "..", "../x", "a/../../x", "."])
def test_item_paths_cannot_escape_the_volume(path):
    with pytest.raises(pr.PodSpecError):
        pr.safe_relpath(path)


def test_sync_files_writes_atomically_and_removes_what_is_gone(tmp_path):
    root = tmp_path / "vol"
    changed = pr.sync_files(str(root), {"a": (b"1", 0o644), "sub/b": (b"2", 0o400)})
    assert sorted(changed) == ["a", "sub/b"]
    assert (root / "a").read_bytes() == b"1"
    assert stat.S_IMODE((root / "sub" / "b").stat().st_mode) == 0o400
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    inode = (root / "a").stat().st_ino
    assert pr.sync_files(str(root), {"a": (b"1", 0o644), "sub/b": (b"2", 0o400)}) == []
    assert (root / "a").stat().st_ino == inode                # unchanged files are left alone
    assert pr.sync_files(str(root), {"a": (b"new", 0o644)}) == ["a", "sub/b"]
    assert (root / "a").read_bytes() == b"new"
    assert (root / "a").stat().st_ino != inode                # replaced by rename, not rewritten
    assert sorted(os.listdir(root)) == ["a", "sub"]           # no temp files left behind


# --- restart bookkeeping -----------------------------------------------------------------------

@pytest.mark.parametrize("role, policy, code, restarts", [
    ("main", "Always", 0, True), ("main", "Always", 1, True),
    ("main", "OnFailure", 0, False), ("main", "OnFailure", 2, True),
    ("main", "Never", 1, False),
    ("init", "Never", 1, True), ("init", "Always", 0, False),
    ("sidecar", "Never", 0, True),
])
def test_restarts_after_exit(role, policy, code, restarts):
    assert pr.restarts_after_exit(role, policy, code) is restarts


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_long_run():
    backoff = pr.Backoff()
    delays = [backoff.next_delay(ran_for=0.1) for _attempt in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.next_delay(ran_for=pr.BACKOFF_RESET_AFTER) == 0.5
    assert backoff.next_delay(ran_for=1) == 1.0


def test_exit_status_of_signalled_process():
    assert pr.exit_status(0) == 0 and pr.exit_status(3) == 3
    assert pr.exit_status(-15) == 143 and pr.exit_status(-9) == 137


def test_grace_is_capped():
    pod = make_pod()
    assert pr.grace_seconds(pod) == pr.MAX_GRACE                  # default 30 s
    pod["spec"]["terminationGracePeriodSeconds"] = 2
    assert pr.grace_seconds(pod) == 2
    pod["metadata"]["deletionGracePeriodSeconds"] = 0
    assert pr.grace_seconds(pod) == 0


def test_wants_to_run():
    nodes = {"gpu-node-1": {}}
    assert pr.wants_to_run(make_pod(), nodes)
    assert not pr.wants_to_run(make_pod(), {"other": {}})
    pod = make_pod()
    pod["status"]["podIP"] = None
    assert not pr.wants_to_run(pod, nodes)
    pod = make_pod()
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not pr.wants_to_run(pod, nodes)
    pod = make_pod()
    pod["metadata"]["labels"][pr.RUN_LABEL] = "false"
    assert not pr.wants_to_run(pod, nodes)


def test_pod_key_and_containers_in_start_order():
    pod = pr.new_pod(make_pod(
        containers=[{"name": "main", "command": ["x"]}],
        init_containers=[{"name": "setup", "command": ["x"]},
                         {"name": "proxy", "command": ["x"], "restartPolicy": "Always"}]), "/s/pods")
    assert pod.dir == "/s/pods/drills_agent-x1_uid-1"
    assert [(c.name, c.role) for c in pod.containers.values()] == [
        ("setup", "init"), ("proxy", "sidecar"), ("main", "main")]


def test_pod_taken_over_from_a_previous_runner_keeps_finished_containers_finished():
    previous = {"containers": {
        "setup": {"restarts": 2, "started": 100.0, "exitCode": 0, "done": True},
        "main": {"restarts": 0, "started": 101.0, "exitCode": None, "done": False, "pid": 4242},
        "gone": {"restarts": 9}}}
    pod = pr.new_pod(make_pod(containers=[{"name": "main", "command": ["x"]}],
                              init_containers=[{"name": "setup", "command": ["x"]}]), "/s", previous)
    setup, main = pod.containers["setup"], pod.containers["main"]
    assert (setup.done, setup.restarts, setup.exit_code) == (True, 2, 0)
    assert (main.done, main.restarts, main.started, main.proc) == (False, 0, 101.0, None)


class FakeApi:
    def __init__(self):
        self.requests = []

    def request_token(self, namespace, service_account, pod_name, pod_uid, audience, seconds):
        self.requests.append((namespace, service_account, pod_name, pod_uid, audience, seconds))
        return "token-%d" % len(self.requests), pr.time.time() + seconds


def test_tokens_are_bound_to_the_pod_cached_and_renewed_at_80_percent_of_their_life():
    api = FakeApi()
    args = type("Args", (), {"state_dir": "/s", "api_port": 26443, "image_maps": None})()
    runner = pr.Runner(args, api)                  # informers are made, not started
    pod = pr.new_pod(make_pod(), "/s/pods")
    assert runner._token(pod, None, 3600) == "token-1"
    assert runner._token(pod, None, 3600) == "token-1"
    assert runner._token(pod, "vault", 600) == "token-2"
    assert api.requests[0] == (NS, "agent-sa", "agent-x1", "uid-1", None, 3600)

    pod.volumes_dirty = False
    now = pr.time.monotonic()
    runner._refresh_tokens(pod, now + 0.79 * 600)
    assert not pod.volumes_dirty
    runner._refresh_tokens(pod, now + 0.81 * 600)  # the 600 s token is due, the hour-long one not
    assert pod.volumes_dirty
    assert runner._token(pod, "vault", 600) == "token-3"
    assert runner._token(pod, None, 3600) == "token-1"


class ScriptedApi:
    """Answers list and watch calls from a script, recording where each watch started."""

    def __init__(self, lists, watches):
        self.lists, self.watches, self.watched_from = lists, watches, []

    def list(self, kind, **params):
        return self.lists.pop(0)

    def watch(self, kind, resource_version, timeout, **params):
        self.watched_from.append(resource_version)
        yield from self.watches.pop(0)


def obj(name, version):
    return {"metadata": {"namespace": NS, "name": name, "resourceVersion": version}}


def test_informer_lists_watches_from_the_list_version_and_relists_on_410():
    events = pr.queue.SimpleQueue()
    api = ScriptedApi(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": [obj("a", "3"), obj("b", "4")]},
               {"metadata": {"resourceVersion": "30"}, "items": [obj("a", "11"), obj("c", "25")]}],
        watches=[[{"type": "MODIFIED", "object": obj("a", "11")},
                  {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
                  {"type": "DELETED", "object": obj("b", "16")}],
                 [{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]])
    informer = pr.Informer(api, "ConfigMap", events)

    def drain():
        out = []
        while not events.empty():
            out.append(events.get_nowait())
        return sorted(out)

    assert informer._relist() == "10" and informer.synced.is_set()
    assert drain() == [("changed", "ConfigMap", (NS, "a")), ("changed", "ConfigMap", (NS, "b"))]
    assert informer._watch_once("10") == "16"
    assert api.watched_from == ["10"]
    assert informer.get(NS, "a")["metadata"]["resourceVersion"] == "11"
    assert informer.get(NS, "b") is None
    assert drain() == [("changed", "ConfigMap", (NS, "a")), ("changed", "ConfigMap", (NS, "b"))]
    with pytest.raises(pr.WatchExpired):
        informer._watch_once("16")
    # The relist reports only what changed while no watch was open: c is new, a is as it was.
    assert informer._relist() == "30"
    assert drain() == [("changed", "ConfigMap", (NS, "c"))]
    assert sorted(o["metadata"]["name"] for o in informer.items()) == ["a", "c"]


def test_a_token_request_the_api_server_does_not_answer_in_time_is_retried_not_fatal():
    """Hundreds of pods starting at once can keep the API server from answering a TokenRequest
    within its timeout: the pod waits and is retried (ConfigError), the runner lives on."""
    from kubernetes import client
    from urllib3.exceptions import ReadTimeoutError

    class SlowCore:
        def create_namespaced_service_account_token(self, *args, **kwargs):
            raise ReadTimeoutError(None, "/api/v1/namespaces/ns/serviceaccounts/sa/token", "Read timed out.")

    api = pr.Api.__new__(pr.Api)
    api.client, api.core = client, SlowCore()
    with pytest.raises(pr.ConfigError, match="got no answer"):
        api.request_token("ns", "sa", "pod-1", "uid-1", None, 3600)


# --- image mode --------------------------------------------------------------------------------

@pytest.mark.parametrize("image, repository", [
    ("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1.19.0", "ghcr.io/nvidia/nvsentinel/syslog-health-monitor"),
    ("ghcr.io/x/y:v1@sha256:" + "a" * 64, "ghcr.io/x/y"),
    ("ghcr.io/x/y@sha256:" + "a" * 64, "ghcr.io/x/y"),
    ("busybox", "docker.io/library/busybox"),
    ("busybox:1.36", "docker.io/library/busybox"),
    ("bitnami/postgresql:16", "docker.io/bitnami/postgresql"),
    ("docker.io/library/busybox", "docker.io/library/busybox"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox"),
    ("localhost/app:1", "localhost/app"),
    ("localhost:5000/team/app:1", "localhost:5000/team/app"),     # a port is not a tag
    ("registry:5000/app", "registry:5000/app"),
    ("", "docker.io/library/"),
])
def test_image_repository(image, repository):
    assert pr.image_repository(image) == repository


def test_check_image_entry_fills_defaults_and_refuses_bad_entries():
    assert pr.check_image_entry({"entrypoint": ["/bin/x"]}) == {
        "entrypoint": ["/bin/x"], "cmd": [], "env": {}, "workingDir": "/"}
    for entry, problem in [([], "not an object"), ({"entrypont": []}, "unknown keys"),
                           ({"entrypoint": "/bin/x"}, "entrypoint must be a JSON array"),
                           ({"cmd": [1]}, "must hold strings"), ({"env": {"A": 1}}, "env values"),
                           ({"env": []}, "env must be a JSON dict"), ({"workingDir": "rel"}, "absolute")]:
        with pytest.raises(ValueError, match=problem):
            pr.check_image_entry(entry)


def test_merge_image_maps():
    docs = [
        ("b.json", {"images": {"ghcr.io/x/b": {"entrypoint": ["/b"]}, "busybox": {"cmd": ["sh"]}},
                    "endpoints": ["127.0.0.1:5432", "10.0.0.1:1"]}),
        ("a.json", {"images": {"ghcr.io/x/a": {"entrypoint": ["/a"]}, "docker.io/library/busybox": {"cmd": ["sh"]},
                               "ghcr.io/x/bad": {"entrypoint": "/bad"}},
                    "endpoints": ["127.0.0.1:5432"]}),
        ("c.json", {"images": {"ghcr.io/x/b": {"entrypoint": ["/other-b"]}}}),
        ("d.json", ["not", "an", "object"]),
    ]
    merged = pr.merge_image_maps(docs)
    assert sorted(merged.images) == ["docker.io/library/busybox", "ghcr.io/x/a"]   # the same entry twice is fine
    assert merged.conflicts == {"ghcr.io/x/b": "mapped differently by b.json and c.json"}
    assert merged.endpoints == ["127.0.0.1:5432"]
    assert len(merged.problems) == 4
    assert [p.split(":")[0] for p in merged.problems] == ["a.json", "b.json", "c.json", "d.json"]


IMAGE_MAP = pr.merge_image_maps([("m.json", {"images": {
    "ghcr.io/nvidia/nvsentinel/syslog-health-monitor": {
        "entrypoint": ["/cache/syslog-health-monitor"], "cmd": ["--verbose"],
        "env": {"PATH": "/image/bin", "FROM_IMAGE": "1"}, "workingDir": "/app"},
    "busybox": {"cmd": ["sh"]}}})])


def image_pod(images=("ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1",), labels=None, init_images=()):
    pod = make_pod(containers=[{"name": "c%d" % i, "image": image} for i, image in enumerate(images)],
                   init_containers=[{"name": "i%d" % i, "image": image} for i, image in enumerate(init_images)])
    pod["metadata"]["labels"] = labels or {"app": "x"}
    return pod


def test_pod_mode_and_wants_to_run():
    nodes = {"gpu-node-1": {}}
    assert pr.pod_mode(image_pod(), IMAGE_MAP) == "image"
    assert pr.pod_mode(image_pod(["busybox:1"]), IMAGE_MAP) == "image"
    assert pr.pod_mode(image_pod(["other/x"], init_images=["busybox"]), IMAGE_MAP) == "image"
    assert pr.pod_mode(image_pod(["other/x"]), IMAGE_MAP) is None
    assert pr.pod_mode(image_pod(labels={pr.RUN_LABEL: "true"}), IMAGE_MAP) == "host"   # the label wins
    assert pr.wants_to_run(image_pod(), nodes, IMAGE_MAP)
    assert not pr.wants_to_run(image_pod(), nodes)                      # no map: not ours
    assert pr.wants_to_run(image_pod(), nodes, running_mode="image")    # started: outlives its map entry
    gone = image_pod()
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not pr.wants_to_run(gone, nodes, IMAGE_MAP, running_mode="image")


def test_image_entries_fail_the_pod_on_an_unmapped_image():
    entries = pr.image_entries(image_pod(["ghcr.io/nvidia/nvsentinel/syslog-health-monitor:v1"],
                                         init_images=["busybox"]), IMAGE_MAP)
    assert entries["c0"]["entrypoint"] == ["/cache/syslog-health-monitor"] and entries["i0"]["cmd"] == ["sh"]
    with pytest.raises(pr.PodSpecError, match=r"container 'c1': image other/x:2 \(docker.io/other/x\): "
                                              r"not in the image map"):
        pr.image_entries(image_pod(["busybox", "other/x:2"]), IMAGE_MAP)
    disputed = pr.merge_image_maps([("a.json", {"images": {"x.io/y": {"cmd": ["a"]}}}),
                                    ("b.json", {"images": {"x.io/y": {"cmd": ["b"]}}})])
    with pytest.raises(pr.PodSpecError, match="mapped differently by a.json and b.json"):
        pr.image_entries(image_pod(["x.io/y:1"]), disputed)


ENTRY = IMAGE_MAP.images["ghcr.io/nvidia/nvsentinel/syslog-health-monitor"]


@pytest.mark.parametrize("container, argv", [
    ({}, ["/cache/syslog-health-monitor", "--verbose"]),                        # ENTRYPOINT + CMD
    ({"args": ["--polling-interval", "$(I)"]}, ["/cache/syslog-health-monitor", "--polling-interval", "15s"]),
    ({"command": ["/bin/sh", "-c"]}, ["/bin/sh", "-c"]),                        # command drops CMD
    ({"command": ["sh"], "args": ["-c", "echo $(I)"]}, ["sh", "-c", "echo 15s"]),
    ({"command": [], "args": []}, ["/cache/syslog-health-monitor", "--verbose"]),  # empty lists: unset
])
def test_image_argv_follows_kubelet(container, argv):
    assert pr.image_argv({"name": "c", **container}, ENTRY, {"I": "15s"}) == argv


def test_image_argv_needs_something_to_run():
    with pytest.raises(pr.PodSpecError, match="neither an entrypoint nor a cmd"):
        pr.image_argv({"name": "c"}, pr.check_image_entry({}), {})


def test_image_process_spec_keeps_container_paths_and_layers_the_environment():
    own = {"FROM_IMAGE": "overridden", "CONFIG": "/etc/config/c.json", "LOCALCLUSTER_STATE": "/elsewhere"}
    spec = pr.image_process_spec({"name": "c", "args": ["--config=/etc/config/c.json"]}, ENTRY, BASE, own)
    assert spec.argv == ["/cache/syslog-health-monitor", "--config=/etc/config/c.json"]   # not rewritten
    assert spec.env == {**BASE, "PATH": "/image/bin", "FROM_IMAGE": "overridden", "CONFIG": "/etc/config/c.json"}
    assert spec.cwd == "/app"
    assert pr.image_process_spec({"name": "c", "workingDir": "/w"}, ENTRY, BASE, {}).cwd == "/w"


def test_volume_mounts_keep_spec_order_read_only_and_sub_paths():
    container = {"volumeMounts": [
        {"name": "host", "mountPath": "/var/run/"},
        {"name": "app", "mountPath": "/etc/app.toml", "subPath": "app.toml", "readOnly": True},
        {"name": "data", "mountPath": "/per-pod", "subPathExpr": "$(POD_NAME)"}]}
    assert pr.volume_mounts(container, VOLUME_PATHS, {"POD_NAME": "p1"}) == [
        {"path": "/var/run/", "source": "/s/nodes/n1/host", "readOnly": False},
        {"path": "/etc/app.toml", "source": "/s/pods/p/volumes/app/app.toml", "readOnly": True},
        {"path": "/per-pod", "source": "/s/pods/p/volumes/data/p1", "readOnly": False}]


def test_container_ports_are_the_pods_tcp_ports():
    pod = make_pod(containers=[
        {"name": "a", "ports": [{"containerPort": 2112}, {"containerPort": 53, "protocol": "UDP"}]},
        {"name": "b", "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 2112}]}],
        init_containers=[{"name": "side", "restartPolicy": "Always", "ports": [{"containerPort": 9440}]}])
    assert pr.container_ports(pod) == [2112, 8080, 9440]


def test_image_mode_pods_get_a_sandbox_unless_on_the_host_network():
    assert pr.new_pod(image_pod(), "/s/pods", mode="image").sandbox.role == "sandbox"
    assert pr.new_pod(image_pod(), "/s/pods").sandbox is None
    host_net = image_pod()
    host_net["spec"]["hostNetwork"] = True
    assert pr.new_pod(host_net, "/s/pods", mode="image").sandbox is None


def test_image_map_files_are_read_in_name_order_and_their_changes_seen(tmp_path):
    maps = tmp_path / "image-maps"
    assert pr.read_image_maps(str(maps)) == ([], []) and pr.image_maps_signature(str(maps)) == ()
    maps.mkdir()
    (maps / "b.json").write_text('{"images": {}}')
    (maps / "a.json").write_text('{"endpoints": ["127.0.0.1:5432"]}')
    (maps / "broken.json").write_text("{")
    (maps / "notes.txt").write_text("ignored")
    documents, problems = pr.read_image_maps(str(maps))
    assert [name for name, _doc in documents] == ["a.json", "b.json"]
    assert len(problems) == 1 and problems[0].startswith("broken.json: ")
    before = pr.image_maps_signature(str(maps))
    assert [entry[0] for entry in before] == ["a.json", "b.json", "broken.json"]
    (maps / "b.json").write_text('{"images": {"x.io/y": {"cmd": ["run"]}}}')
    assert pr.image_maps_signature(str(maps)) != before
