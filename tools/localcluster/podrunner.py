"""Local pod runner: a small kubelet for our own programs on KWOK-simulated nodes.

KWOK marks pods on its nodes Running and gives them a 127.x IP, but runs nothing. For pods that opt
in with the label local-runner.gpu-resilience.io/run=true, this runner starts each container's
`command` + `args` as a local process, with the environment, files and restart behaviour a kubelet
would give it, and stops it when the pod goes away:

    podrunner.py --kubeconfig K --state-dir D --api-host 127.0.0.1 --api-port P --ca-file CA

There are no images: a container must name its program in `command` (e.g. python3 /app/server.py),
and volumes are materialised as host directories under D, so every container path that a program
sees in its argv, env or workingDir is rewritten to the matching host path. Programs reach the API
server on 127.0.0.1:P (KUBERNETES_SERVICE_HOST/PORT), never a ClusterIP (only a number here).

Layout of D:
    pods/index.json                            each pod's containers: pid, pgid, restarts, exit code
    pods/<ns>_<name>_<uid>/<container>.log     stdout+stderr of each container (appended)
    pods/<ns>_<name>_<uid>/volumes/<volume>/   configMap, secret, projected, downwardAPI, emptyDir
    pods/<ns>_<name>_<uid>/scratch/            default working directory
    nodes/<node>/host/<path>                   each simulated node's hostPath root

The file reads top-down: pure functions (quantities, $(VAR) expansion, downward API, environment,
volume contents, mount table and path mapping, restart backoff), then the I/O around them (files,
API watches, processes) and the event loop that ties them together. One thread owns all state: API
watches and process waiters only post events to its queue.
"""
import argparse
import base64
import contextlib
import datetime
import fcntl
import ipaddress
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_standins  # noqa: E402  (sibling module: the simulated nodes' NVIDIA runtime and tools)

RUN_LABEL = "local-runner.gpu-resilience.io/run"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
STATE_ENV = "LOCALCLUSTER_STATE"
DEFAULT_FILE_MODE = 0o644
MAX_BACKOFF = 10.0          # seconds; kubelet caps at 300 s, far too slow for drills
BACKOFF_BASE = 0.5
BACKOFF_RESET_AFTER = 20.0  # a container that ran this long starts its backoff afresh
MAX_GRACE = 10.0
CONFIG_RETRY = 2.0          # retry of pods waiting for a missing ConfigMap, Secret or token
HOSTPATH_FILE_TYPES = {"File", "FileOrCreate", "CharDevice", "BlockDevice", "Socket"}


class ConfigError(Exception):
    """The pod references something missing or unusable; retried later, like kubelet's
    CreateContainerConfigError (a ConfigMap created after its pod is the common case)."""


class PodSpecError(Exception):
    """The pod can never run here (e.g. a container without `command`); reported once."""


# --- quantities --------------------------------------------------------------------------------

_SUFFIXES = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+)|([a-zA-Z]*))$")


def parse_quantity(text):
    """A Kubernetes quantity ("250m", "1Gi", "1e3", 2) as an exact Fraction."""
    match = _QUANTITY.match(str(text).strip())
    if not match or (match[3] or "") not in _SUFFIXES:
        raise PodSpecError("invalid quantity %r" % (text,))
    number = Fraction(match[1])
    if match[2] is not None:
        return number * Fraction(10) ** int(match[2])
    return number * _SUFFIXES[match[3] or ""]


# --- $(VAR) expansion --------------------------------------------------------------------------

def expand(text, env):
    """Kubernetes $(VAR) expansion: `$(NAME)` becomes env[NAME] when defined and stays as written
    otherwise, `$$` is an escaped `$`, and any other `$` is kept as is."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i] != "$" or i + 1 == n:
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(":
            close = text.find(")", i + 2)
            if close == -1:           # unterminated: keep "$(" and go on after it
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:close]
                out.append(env[name] if name in env else text[i:close + 1])
                i = close + 1
        else:
            out.append(text[i:i + 2])
            i += 2
    return "".join(out)


# --- downward API ------------------------------------------------------------------------------

_SUBSCRIPT_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def format_map(values):
    """labels/annotations as a downward API file shows them: sorted key="value" lines."""
    return "\n".join("%s=%s" % (key, json.dumps(values[key], ensure_ascii=False))
                     for key in sorted(values))


def _ips(status, plural, singular):
    ips = [entry["ip"] for entry in status.get(plural) or [] if entry.get("ip")]
    return ",".join(ips or ([status[singular]] if status.get(singular) else []))


def field_value(pod, path):
    """The value of a fieldRef fieldPath for `pod` (a dict as the API returns it)."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    subscript = _SUBSCRIPT_FIELD.match(path)
    if subscript:
        return (meta.get(subscript[1]) or {}).get(subscript[2], "")
    if path in ("metadata.labels", "metadata.annotations"):
        return format_map(meta.get(path.split(".")[1]) or {})
    getters = {
        "metadata.name": lambda: meta.get("name"),
        "metadata.namespace": lambda: meta.get("namespace"),
        "metadata.uid": lambda: meta.get("uid"),
        "spec.nodeName": lambda: spec.get("nodeName"),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName"),
        "status.podIP": lambda: status.get("podIP"),
        "status.podIPs": lambda: _ips(status, "podIPs", "podIP"),
        "status.hostIP": lambda: status.get("hostIP"),
        "status.hostIPs": lambda: _ips(status, "hostIPs", "hostIP"),
    }
    if path not in getters:
        raise PodSpecError("unsupported fieldRef fieldPath %r" % path)
    return getters[path]() or ""


def find_container(pod, name):
    spec = pod.get("spec", {})
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if container["name"] == name:
            return container
    raise PodSpecError("resourceFieldRef names unknown container %r" % name)


def resource_value(pod, ref, default_container, allocatable):
    """resourceFieldRef: e.g. limits.cpu of a container, divided by `divisor` and rounded up.
    An unset limit means the node's allocatable amount, as kubelet reports it."""
    container = find_container(pod, ref.get("containerName") or default_container)
    kind, _sep, resource = ref["resource"].partition(".")
    amount = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if amount is None and kind == "limits":
        amount = (allocatable or {}).get(resource)
    divisor = parse_quantity(ref.get("divisor") or "1") or Fraction(1)
    return str(math.ceil(parse_quantity(amount or "0") / divisor))


# --- ConfigMap and Secret data -----------------------------------------------------------------

def object_files(kind, obj):
    """Key -> bytes of a ConfigMap (data and binaryData) or a Secret (base64 data)."""
    if kind == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    files = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return files


def object_strings(kind, obj):
    """Key -> str as environment variables see them (a ConfigMap's binaryData is not offered)."""
    if kind == "Secret":
        return {k: v.decode("utf-8", "replace") for k, v in object_files(kind, obj).items()}
    return dict(obj.get("data") or {})


def _lookup_required(lookup, kind, namespace, name, optional):
    """The object, or None when it is optional and absent; ConfigError when required and absent."""
    obj = lookup(kind, namespace, name)
    if obj is None and not optional:
        raise ConfigError("%s %s/%s not found" % (kind, namespace, name))
    return obj


# --- environment -------------------------------------------------------------------------------

def base_env(pod_name, path, api_port, state_dir):
    """What every process gets before the pod's own variables: not the runner's environment."""
    return {"PATH": path, "LANG": "C.UTF-8", "HOSTNAME": pod_name, "PYTHONUNBUFFERED": "1",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port), STATE_ENV: state_dir}


def env_from(namespace, source, lookup):
    """Variables of one envFrom entry (configMapRef or secretRef, with prefix)."""
    for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
        ref = source.get(key)
        if ref is not None:
            obj = _lookup_required(lookup, kind, namespace, ref["name"], ref.get("optional"))
            values = object_strings(kind, obj) if obj else {}
            # A name with "=" cannot be an environment variable; kubelet skips such keys too.
            return {source.get("prefix", "") + k: v for k, v in values.items() if "=" not in k}
    raise PodSpecError("envFrom entry without configMapRef or secretRef")


def env_value_from(pod, container_name, source, lookup, allocatable):
    """Value of env[].valueFrom, or None for an absent optional key (the variable is skipped)."""
    namespace = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource_value(pod, source["resourceFieldRef"], container_name, allocatable)
    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
        ref = source.get(key)
        if ref is not None:
            obj = _lookup_required(lookup, kind, namespace, ref["name"], ref.get("optional"))
            values = object_strings(kind, obj) if obj else {}
            if ref["key"] in values:
                return values[ref["key"]]
            if ref.get("optional"):
                return None
            raise ConfigError("key %r not in %s %s/%s" % (ref["key"], kind, namespace, ref["name"]))
    raise PodSpecError("unsupported valueFrom %s" % sorted(source))


def container_env(pod, container, base, lookup, allocatable=None):
    """The container's own variables (envFrom, then env), in Kubernetes order and semantics:
    later entries win, `value` is expanded against everything defined before it (the base
    included), valueFrom and envFrom values are taken literally. The base itself is not returned."""
    namespace = pod["metadata"]["namespace"]
    own = {}
    for source in container.get("envFrom") or []:
        own.update(env_from(namespace, source, lookup))
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = env_value_from(pod, container["name"], var["valueFrom"], lookup, allocatable)
            if value is None:
                continue
        else:
            value = expand(var.get("value", ""), {**base, **own})
        own[var["name"]] = value
    return own


# --- volume contents ---------------------------------------------------------------------------

def _key_files(kind, namespace, name, source, lookup, default_mode):
    """Files of a configMap/secret volume or projection: every key, or `items` (key -> path)."""
    obj = _lookup_required(lookup, kind, namespace, name, source.get("optional"))
    data = object_files(kind, obj) if obj else {}
    if not source.get("items"):
        return {key: (value, default_mode) for key, value in data.items()}
    files = {}
    for item in source["items"]:
        if item["key"] in data:
            files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
        elif obj is not None and not source.get("optional"):
            raise ConfigError("key %r not in %s %s/%s" % (item["key"], kind, namespace, name))
    return files


def _downward_files(pod, source, default_mode, allocatable):
    files = {}
    for item in source.get("items") or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            value = resource_value(pod, ref, ref.get("containerName"), allocatable)
        files[item["path"]] = (value.encode(), item.get("mode", default_mode))
    return files


def _projected_files(pod, projected, lookup, token_for, allocatable):
    namespace = pod["metadata"]["namespace"]
    mode = projected.get("defaultMode", DEFAULT_FILE_MODE)
    files = {}
    for source in projected.get("sources") or []:
        if "configMap" in source:
            cm = source["configMap"]
            files.update(_key_files("ConfigMap", namespace, cm["name"], cm, lookup, mode))
        elif "secret" in source:
            secret = source["secret"]
            files.update(_key_files("Secret", namespace, secret["name"], secret, lookup, mode))
        elif "downwardAPI" in source:
            files.update(_downward_files(pod, source["downwardAPI"], mode, allocatable))
        elif "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            token = token_for(sat.get("audience") or None, sat.get("expirationSeconds") or 3600)
            files[sat["path"]] = (token.encode(), mode)
        else:
            raise PodSpecError("unsupported projected source %s" % sorted(source))
    return files


def volume_files(pod, volume, lookup, token_for, allocatable=None):
    """Relative path -> (content, mode) of a configMap, secret, downwardAPI or projected volume;
    None for volumes that are directories rather than generated files (emptyDir, hostPath...).
    `token_for(audience, expiration_seconds)` returns a service-account token for this pod."""
    namespace = pod["metadata"]["namespace"]
    if "configMap" in volume:
        src = volume["configMap"]
        mode = src.get("defaultMode", DEFAULT_FILE_MODE)
        return _key_files("ConfigMap", namespace, src["name"], src, lookup, mode)
    if "secret" in volume:
        src = volume["secret"]
        mode = src.get("defaultMode", DEFAULT_FILE_MODE)
        return _key_files("Secret", namespace, src["secretName"], src, lookup, mode)
    if "downwardAPI" in volume:
        src = volume["downwardAPI"]
        return _downward_files(pod, src, src.get("defaultMode", DEFAULT_FILE_MODE), allocatable)
    if "projected" in volume:
        return _projected_files(pod, volume["projected"], lookup, token_for, allocatable)
    return None


def referenced_objects(pod):
    """(kind, name) of every ConfigMap and Secret the pod reads, so a change to one of them
    refreshes (or unblocks) exactly the pods that use it."""
    spec, refs = pod.get("spec", {}), set()
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                refs.add(("ConfigMap", source["configMap"]["name"]))
            if "secret" in source:
                refs.add(("Secret", source["secret"]["name"]))
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for source in container.get("envFrom") or []:
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    refs.add((kind, source[key]["name"]))
        for var in container.get("env") or []:
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in (var.get("valueFrom") or {}):
                    refs.add((kind, var["valueFrom"][key]["name"]))
    return refs


def safe_relpath(path):
    """A volume item path, refused if it could escape its volume directory."""
    norm = os.path.normpath(path)
    if os.path.isabs(path) or norm == ".." or norm.startswith("../") or norm == ".":
        raise PodSpecError("volume item path %r escapes its volume" % path)
    return norm


# --- hostPath ----------------------------------------------------------------------------------

def host_path_target(state_dir, node, path):
    """Where a hostPath lives: under the node's fake host root, never on the real host."""
    rel = os.path.normpath("/" + path).lstrip("/")   # "/" + ... makes any ".." stop at the root
    return os.path.normpath(os.path.join(state_dir, "nodes", node, "host", rel))


def host_path_is_file(host_path):
    """Whether a hostPath volume is created as a regular file (device and socket types included:
    /dev/kmsg becomes a per-node file) rather than a directory (any other type, unset included)."""
    return host_path.get("type") in HOSTPATH_FILE_TYPES


# --- mount table and path mapping --------------------------------------------------------------

def mount_table(container, volume_paths, env):
    """(container mountPath, host path) pairs, longest mountPath first so the most specific
    mount wins. subPath and subPathExpr ($(VAR) from the container's env) select inside a volume."""
    table = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volume_paths:
            raise PodSpecError("volumeMount %r names no volume of the pod" % mount["name"])
        host = volume_paths[mount["name"]]
        sub = mount.get("subPath") or expand(mount.get("subPathExpr", ""), env)
        if sub:
            host = os.path.join(host, safe_relpath(sub))
        table.append((mount["mountPath"].rstrip("/") or "/", host))
    return sorted(table, key=lambda entry: len(entry[0]), reverse=True)


def map_container_path(value, table):
    """The host path for a container path under some mount, else None."""
    for mount_path, host in table:
        prefix = mount_path if mount_path.endswith("/") else mount_path + "/"
        if value == mount_path:
            return host
        if value.startswith(prefix):
            return os.path.join(host, value[len(prefix):])
    return None


def map_value(value, table):
    """Rewrite an argv element or env value that names a container path: the whole value, or
    the part after the first "=" (`--config=/etc/x`, `KEY=/etc/x`). Anything else is unchanged."""
    mapped = map_container_path(value, table)
    if mapped is not None:
        return mapped
    key, sep, rest = value.partition("=")
    if sep:
        mapped = map_container_path(rest, table)
        if mapped is not None:
            return key + sep + mapped
    return value


@dataclass
class ProcessSpec:
    argv: list
    env: dict
    cwd: str


def command_of(container):
    if not container.get("command"):
        raise PodSpecError("container %r has no command: there is no image to take an entrypoint "
                           "from, so the pod must name its program" % container["name"])
    return container["command"]


def process_spec(container, base, own_env, table, scratch):
    """argv, environment and working directory of a container's process, in host terms."""
    full_env = {**base, **own_env}
    argv = [map_value(expand(arg, full_env), table)
            for arg in command_of(container) + (container.get("args") or [])]
    env = {**base, **{k: map_value(v, table) for k, v in own_env.items()},
           STATE_ENV: base[STATE_ENV]}      # always ours: it is how strays are found
    sa_dir = map_container_path(SA_MOUNT_PATH, table)
    if sa_dir:
        # Our stdlib programs read their in-cluster token and CA from here when it is set.
        env["KUBERNETES_SERVICEACCOUNT_DIR"] = sa_dir
    # There is no container filesystem: a workingDir outside every mount means the scratch dir.
    cwd = map_container_path(container.get("workingDir") or "", table) or scratch
    return ProcessSpec(argv, env, cwd)


# --- restart bookkeeping -----------------------------------------------------------------------

def restarts_after_exit(role, restart_policy, exit_code):
    """Whether a container that exited runs again: init containers until they succeed, sidecars
    always, main containers as the pod's restartPolicy says."""
    if role == "init":
        return exit_code != 0
    if role == "sidecar":
        return True
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


@dataclass
class Backoff:
    """Exponential restart delay, capped at MAX_BACKOFF; a long run starts the series afresh."""
    streak: int = 0

    def next_delay(self, ran_for):
        if ran_for >= BACKOFF_RESET_AFTER:
            self.streak = 0
        delay = min(MAX_BACKOFF, BACKOFF_BASE * 2 ** self.streak)
        self.streak += 1
        return delay


def exit_status(returncode):
    """Popen's returncode as a container exit code: death by signal N is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def grace_seconds(pod):
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", 30)
    return min(float(grace), MAX_GRACE)


def pod_key(pod):
    meta = pod["metadata"]
    return "%s_%s_%s" % (meta["namespace"], meta["name"], meta["uid"])


def wants_to_run(pod, fake_nodes):
    """A pod runs here once it is on a simulated node, has its IP and is not going away."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    return ((meta.get("labels") or {}).get(RUN_LABEL) == "true"
            and spec.get("nodeName") in fake_nodes
            and bool(status.get("podIP"))
            and not meta.get("deletionTimestamp")
            and status.get("phase") not in ("Succeeded", "Failed"))


# ================================================================================================
# I/O from here on.
# ================================================================================================

def log(event, **fields):
    record = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
              "event": event, **fields}
    print(json.dumps(record, default=str), file=sys.stderr, flush=True)


# --- files -------------------------------------------------------------------------------------

def write_atomic(path, content, mode=0o600):
    """Readers see the old or the new file, never a half-written one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _file_is(path, content, mode):
    try:
        st = os.stat(path)
        if (st.st_mode & 0o7777) != mode or st.st_size != len(content):
            return False
        with open(path, "rb") as f:
            return f.read() == content
    except OSError:
        return False


def sync_files(root, files):
    """Make `root` hold exactly `files` (relative path -> (content, mode)); returns the paths
    it changed. Unchanged files are not rewritten, so readers that watch mtimes stay quiet."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    wanted, changed = {}, []
    for rel, (content, mode) in files.items():
        wanted[safe_relpath(rel)] = (content, mode)
    for rel, (content, mode) in wanted.items():
        path = os.path.join(root, rel)
        if not _file_is(path, content, mode):
            write_atomic(path, content, mode)
            changed.append(rel)
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel not in wanted:
                os.unlink(os.path.join(dirpath, name))
                changed.append(rel)
    return changed


def ensure_host_path(target, is_file):
    """Create a hostPath on the node's fake host root; existing content is kept."""
    if os.path.lexists(target):
        return
    if is_file:
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        with open(target, "ab"):
            pass
    else:
        os.makedirs(target, mode=0o700, exist_ok=True)


# --- API ---------------------------------------------------------------------------------------

class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def _json_body(resp):
    """The decoded body of a raw (not preloaded) response; its connection goes back to the pool."""
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


class Api:
    """The runner's only connection: the API server on 127.0.0.1, with the kubeconfig's user."""

    def __init__(self, kubeconfig, host, port, ca_file):
        from kubernetes import client, config  # the runner runs from the project's venv
        if not ipaddress.ip_address(host).is_loopback:
            raise SystemExit("--api-host must be a loopback address, got %s" % host)
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg,
                                persist_config=False)
        cfg.host = "https://%s:%d" % (host, port)
        cfg.ssl_ca_cert = ca_file
        self.client = client
        api = client.ApiClient(cfg)
        api.user_agent = "localcluster-podrunner"   # its requests are told apart in audit logs
        self.core = client.CoreV1Api(api)

    def list_function(self, kind):
        return {"Pod": self.core.list_pod_for_all_namespaces, "Node": self.core.list_node,
                "ConfigMap": self.core.list_config_map_for_all_namespaces,
                "Secret": self.core.list_secret_for_all_namespaces}[kind]

    def list(self, kind, **params):
        resp = self.list_function(kind)(_preload_content=False, _request_timeout=(5, 30), **params)
        return _json_body(resp)

    def watch(self, kind, resource_version, timeout, **params):
        """Yield watch events (dicts) until the server ends the stream."""
        from kubernetes.watch.watch import iter_resp_lines
        resp = self.list_function(kind)(
            watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
            timeout_seconds=timeout, _preload_content=False, _request_timeout=(5, timeout + 15),
            **params)
        try:
            for line in iter_resp_lines(resp):
                if line:
                    yield json.loads(line)
        finally:
            resp.release_conn()

    def request_token(self, namespace, service_account, pod_name, pod_uid, audience, seconds):
        """A TokenRequest bound to the pod, as kubelet makes for projected token volumes.
        Returns (token, expiry as epoch seconds)."""
        spec = {"expirationSeconds": int(seconds),
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod_name,
                                   "uid": pod_uid}}
        if audience:
            spec["audiences"] = [audience]
        body = self.client.AuthenticationV1TokenRequest.from_dict({"spec": spec})
        try:
            resp = self.core.create_namespaced_service_account_token(
                service_account, namespace, body, _preload_content=False, _request_timeout=(5, 15))
        except self.client.ApiException as e:
            raise ConfigError("TokenRequest for %s/%s failed: %s %s"
                              % (namespace, service_account, e.status, e.reason)) from None
        except (OSError, urllib3_error()) as e:
            # A busy API server (hundreds of pods starting at once) may not answer in time: kubelet
            # retries too, the runner must not die of it.
            raise ConfigError("TokenRequest for %s/%s got no answer: %s" % (namespace, service_account, e)) from None
        status = _json_body(resp)["status"]
        expiry = status["expirationTimestamp"].replace("Z", "+00:00")
        return status["token"], datetime.datetime.fromisoformat(expiry).timestamp()


def urllib3_error():
    """urllib3's base exception (timeouts, refused connections), imported where the client is."""
    from urllib3.exceptions import HTTPError  # the runner runs from the project's venv
    return HTTPError


class Informer(threading.Thread):
    """List+watch of one kind into a local cache. On every change it posts ("changed", kind,
    key) to the runner's queue. Re-lists on 410 Gone, reconnects with backoff on errors; the
    watch itself blocks on the server, so an idle cluster costs nothing."""

    WATCH_SECONDS = 240

    def __init__(self, api, kind, events, **params):
        super().__init__(name="informer-" + kind, daemon=True)
        self.api, self.kind, self.events, self.params = api, kind, events, params
        self.lock = threading.Lock()
        self.store = {}     # (namespace, name) -> object; entries are replaced, never mutated
        self.synced = threading.Event()

    def get(self, namespace, name):
        with self.lock:
            return self.store.get((namespace, name))

    def items(self):
        with self.lock:
            return list(self.store.values())

    def run(self):
        delay = 0.5
        while True:
            try:
                resource_version = self._relist()
                delay = 0.5
                while True:
                    resource_version = self._watch_once(resource_version)
            except WatchExpired:
                log("watch.expired", kind=self.kind)
            except Exception as e:  # network, TLS, API restarts: keep trying, never die
                log("watch.error", kind=self.kind, error="%s: %s" % (type(e).__name__, e))
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    @staticmethod
    def _key(obj):
        meta = obj["metadata"]
        return meta.get("namespace", ""), meta["name"]

    def _relist(self):
        listing = self.api.list(self.kind, **self.params)
        fresh = {}
        for obj in listing.get("items") or []:
            fresh[self._key(obj)] = obj
        with self.lock:
            old, self.store = self.store, fresh
        # Changes missed while disconnected: anything new, changed or gone.
        for key in old.keys() | fresh.keys():
            versions = {(obj or {}).get("metadata", {}).get("resourceVersion")
                        for obj in (old.get(key), fresh.get(key))}
            if len(versions) > 1:
                self.events.put(("changed", self.kind, key))
        self.synced.set()
        return listing["metadata"]["resourceVersion"]

    def _watch_once(self, resource_version):
        for event in self.api.watch(self.kind, resource_version, self.WATCH_SECONDS, **self.params):
            obj = event.get("object") or {}
            if event["type"] == "ERROR":
                if obj.get("code") == 410:
                    raise WatchExpired()
                raise RuntimeError("watch error: %s" % obj.get("message"))
            resource_version = obj["metadata"]["resourceVersion"]
            if event["type"] == "BOOKMARK":
                continue
            key = self._key(obj)
            with self.lock:
                if event["type"] == "DELETED":
                    self.store.pop(key, None)
                else:
                    self.store[key] = obj
            self.events.put(("changed", self.kind, key))
        return resource_version


# --- processes ---------------------------------------------------------------------------------

def proc_start_time(pid):
    """Kernel start time of a live pid (None if gone or a zombie): tells a recorded process from
    a later one that reused its pid."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def signal_group(pgid, sig):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def spawn(spec, log_path):
    """Start a container's process in its own session (so its whole group can be signalled)."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(spec.argv, env=spec.env, cwd=spec.cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_exit(proc, pgid, post):
    """Waiter thread body. Like a container's PID namespace, the whole group dies with the main
    process; it is killed before the leader is reaped, while the pgid cannot be reused yet."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    signal_group(pgid, signal.SIGKILL)
    post(exit_status(proc.wait()))


def stale_processes(state_dir, index):
    """Processes a crashed predecessor left behind: those recorded in the index (verified by
    start time) and any other that carries this runner's state dir in its environment."""
    own = {os.getpid(), os.getpgrp()}
    found = set()
    for pod in (index.get("pods") or {}).values():
        for c in (pod.get("containers") or {}).values():
            if c.get("pid") and c.get("startTime") and proc_start_time(c["pid"]) == c["startTime"]:
                found.add((c["pid"], c.get("pgid") or c["pid"]))
    marker = ("%s=%s" % (STATE_ENV, state_dir)).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in own:
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.add((int(entry), os.getpgid(int(entry))))
        except OSError:
            continue
    return {(pid, pgid) for pid, pgid in found if pgid not in own}


def kill_stale(state_dir, index):
    stale = stale_processes(state_dir, index)
    if not stale:
        return
    log("stale.kill", processes=sorted(stale))
    for pid, pgid in stale:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(proc_start_time(pid) for pid, _start in stale):
        time.sleep(0.1)
    for pid, pgid in stale:
        signal_group(pgid, signal.SIGKILL)


# --- pods --------------------------------------------------------------------------------------

@dataclass
class Container:
    name: str
    spec: dict
    role: str                     # "init", "sidecar" or "main"
    proc: subprocess.Popen = None
    pgid: int = None
    start_time: int = None        # kernel start time of proc, for stale-process checks
    started: float = None         # wall clock of the latest start
    started_mono: float = None
    restarts: int = 0
    exit_code: int = None
    done: bool = False            # finished for good (init succeeded, main not restarting)
    due: float = 0.0              # monotonic time of the next (re)start
    backoff: Backoff = field(default_factory=Backoff)


@dataclass
class Pod:
    obj: dict
    dir: str
    containers: dict              # name -> Container, init containers first, in spec order
    phase: str = "pending"        # pending -> running -> completed | failed; stopping at the end
    message: str = ""
    prepared: bool = False
    volumes_dirty: bool = True
    retry_at: float = 0.0
    kill_at: float = None
    tokens: dict = field(default_factory=dict)   # (audience, seconds) -> (token, refresh_at)
    refs: set = field(default_factory=set)

    @property
    def uid(self):
        return self.obj["metadata"]["uid"]

    @property
    def key(self):
        return os.path.basename(self.dir)

    def running(self):
        return [c for c in self.containers.values() if c.proc is not None]


def stopped_entry(entry):
    """An index entry whose processes are gone (stopped, or killed as a predecessor's strays)."""
    containers = {name: {**c, "pid": None, "pgid": None, "startTime": None}
                  for name, c in (entry.get("containers") or {}).items()}
    return {**entry, "phase": "stopped", "containers": containers}


def new_pod(obj, pods_dir, previous=None):
    """Bookkeeping for a pod to run. `previous` is its entry in a predecessor's index: containers
    that had finished for good stay finished (a runner restart must not repeat a one-shot job),
    the others count a restart."""
    spec = obj.get("spec", {})
    containers = {}
    for c in spec.get("initContainers") or []:
        role = "sidecar" if c.get("restartPolicy") == "Always" else "init"
        containers[c["name"]] = Container(c["name"], c, role)
    for c in spec.get("containers") or []:
        containers[c["name"]] = Container(c["name"], c, "main")
    for name, old in ((previous or {}).get("containers") or {}).items():
        if name in containers:
            c = containers[name]
            c.restarts, c.started = old.get("restarts", 0), old.get("started")
            c.done, c.exit_code = old.get("done", False), old.get("exitCode")
    return Pod(obj, os.path.join(pods_dir, pod_key(obj)), containers, refs=referenced_objects(obj))


class Runner:
    """Desired pods (from the informers) versus running ones (self.pods), reconciled by one
    thread: every informer change, process exit or due timer wakes the loop in run()."""

    def __init__(self, args, api):
        self.args = args
        self.api = api
        self.state_dir = os.path.abspath(args.state_dir)
        self.pods_dir = os.path.join(self.state_dir, "pods")
        self.index_path = os.path.join(self.pods_dir, "index.json")
        self.events = queue.SimpleQueue()   # put() is safe from signal handlers
        self.pods = {}                      # uid -> Pod
        self.stopping = False
        self._last_index = None
        self.previous = {}                  # uid -> index entry of a predecessor runner
        self.path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        params = {"Pod": {"label_selector": RUN_LABEL + "=true"}}
        self.informers = {kind: Informer(api, kind, self.events, **params.get(kind, {}))
                          for kind in ("Node", "ConfigMap", "Secret", "Pod")}

    # -- lookups used by the pure functions
    def lookup(self, kind, namespace, name):
        return self.informers[kind].get(namespace, name)

    def fake_nodes(self):
        key, value = FAKE_NODE_ANNOTATION
        return {n["metadata"]["name"]: n for n in self.informers["Node"].items()
                if (n["metadata"].get("annotations") or {}).get(key) == value}

    def allocatable(self, pod):
        node = self.fake_nodes().get(pod.obj["spec"]["nodeName"]) or {}
        return (node.get("status") or {}).get("allocatable")

    # -- main loop
    def run(self):
        os.makedirs(self.pods_dir, mode=0o700, exist_ok=True)
        previous = self._read_index()
        kill_stale(self.state_dir, previous)
        self.previous = {uid: stopped_entry(entry)
                         for uid, entry in (previous.get("pods") or {}).items()}
        self._write_index()
        for informer in self.informers.values():
            informer.start()
        for informer in self.informers.values():
            # Nothing is judged missing before the first lists are in; a stop request still counts.
            while not informer.synced.wait(1):
                self._exit_if_stop_requested()
        log("runner.synced", pods=len(self.informers["Pod"].items()))
        try:
            while not (self.stopping and not self.pods):
                self._handle_events(self._next_timeout())
                if not self.stopping:
                    self._reconcile()
                now = time.monotonic()
                for pod in list(self.pods.values()):
                    self._advance(pod, now)
                self._write_index()
        except Exception:
            # A bug must not leave orphans that keep serving stale pods.
            log("runner.crash", error=traceback.format_exc())
            for pod in self.pods.values():
                for c in pod.running():
                    signal_group(c.pgid, signal.SIGKILL)
            raise
        log("runner.stopped")

    def _exit_if_stop_requested(self):
        with contextlib.suppress(queue.Empty):
            while True:
                if self.events.get_nowait()[0] == "stop":   # other events: the lists cover them
                    raise SystemExit(0)

    def _next_timeout(self):
        """Seconds until the earliest future restart, config retry, token refresh or SIGKILL.
        Only future times count: whatever is due now was handled by _advance or is waiting for an
        event (an init container's exit, a ConfigMap appearing), which wakes the loop anyway."""
        now = time.monotonic()
        due = [now + 60.0]
        for pod in self.pods.values():
            due.append(pod.kill_at or 0.0)
            if pod.phase in ("pending", "running"):
                due.append(pod.retry_at)
                due += [refresh_at for _token, refresh_at in pod.tokens.values()]
                due += [c.due for c in pod.containers.values() if c.proc is None and not c.done]
        return min(t for t in due if t > now) - now

    def _handle_events(self, timeout):
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, event):
        if event[0] == "stop":
            self._stop_all(hard=self.stopping)
        elif event[0] == "exited":
            _kind, uid, name, proc, code = event
            self._on_exit(uid, name, proc, code)
        elif event[0] == "changed" and event[1] in ("ConfigMap", "Secret"):
            kind, (namespace, name) = event[1], event[2]
            for pod in self.pods.values():
                if pod.obj["metadata"]["namespace"] == namespace and (kind, name) in pod.refs:
                    pod.volumes_dirty = True
                    pod.retry_at = 0.0
        # Pod and Node changes are handled by _reconcile, which looks at the whole cache.

    def request_stop(self, *_):
        self.events.put(("stop",))

    # -- desired versus actual
    def _reconcile(self):
        nodes = self.fake_nodes()
        wanted = {}
        for obj in self.informers["Pod"].items():
            if wants_to_run(obj, nodes):
                wanted[obj["metadata"]["uid"]] = obj
        for uid, pod in list(self.pods.items()):
            if uid not in wanted:
                self._stop_pod(pod, "pod deleted or terminating")
            elif pod.obj is not wanted[uid]:
                pod.obj = wanted[uid]            # labels/annotations feed downwardAPI files
                pod.volumes_dirty = True
        for uid, obj in wanted.items():
            if uid not in self.pods:
                self.pods[uid] = new_pod(obj, self.pods_dir, self.previous.get(uid))
                log("pod.add", pod=pod_key(obj), node=obj["spec"]["nodeName"],
                    podIP=obj["status"]["podIP"])
        for uid, entry in self.previous.items():
            if uid not in wanted:           # deleted while no runner watched
                pod_dir = os.path.join(self.pods_dir, os.path.basename(entry.get("dir", "")))
                shutil.rmtree(os.path.join(pod_dir, "volumes"), ignore_errors=True)
        self.previous.clear()               # the rest has been taken over

    def _advance(self, pod, now):
        """Move one pod forward: prepare volumes, run init containers in order, keep sidecars
        and main containers running; past a grace period, SIGKILL what still runs."""
        if pod.kill_at is not None and now >= pod.kill_at:
            for c in pod.running():
                signal_group(c.pgid, signal.SIGKILL)
            pod.kill_at = None
        if pod.phase not in ("pending", "running") or pod.retry_at > now:
            return
        try:
            self._refresh_tokens(pod, now)
            if not pod.prepared:
                self._prepare(pod)
            if pod.volumes_dirty:
                self._sync_volumes(pod)
            self._start_due_containers(pod, now)
            pod.message = ""
        except ConfigError as e:
            if pod.message != str(e):
                log("pod.waiting", pod=pod.key, reason=str(e))
            pod.message, pod.retry_at = str(e), now + CONFIG_RETRY
        except PodSpecError as e:
            log("pod.failed", pod=pod.key, reason=str(e))
            pod.message = str(e)
            self._terminate(pod, "failed")

    def _start_due_containers(self, pod, now):
        for c in pod.containers.values():
            if c.role == "main":
                break
            if c.proc is None and not c.done and c.due <= now:
                self._start(pod, c)
            if c.role == "init" and not c.done:
                return                  # init containers run one at a time, each to success
        pod.phase = "running"
        mains = [c for c in pod.containers.values() if c.role == "main"]
        for c in mains:
            if c.proc is None and not c.done and c.due <= now:
                self._start(pod, c)
        if all(c.done for c in mains):
            log("pod.completed", pod=pod.key)
            self._terminate(pod, "completed")   # sidecars have nothing left to serve

    # -- volumes
    def _host_root(self, pod):
        return host_path_target(self.state_dir, pod.obj["spec"]["nodeName"], "/")

    def _volume_path(self, pod, volume):
        if "hostPath" in volume:
            return host_path_target(self.state_dir, pod.obj["spec"]["nodeName"],
                                    volume["hostPath"]["path"])
        return os.path.join(pod.dir, "volumes", volume["name"])

    def _volume_paths(self, pod):
        return {v["name"]: self._volume_path(pod, v) for v in pod.obj["spec"].get("volumes") or []}

    def _prepare(self, pod):
        """Check the pod and create its directories once; _sync_volumes writes the files."""
        for c in pod.containers.values():
            command_of(c.spec)          # fail the pod before any of its containers runs
        for sub in ("volumes", "scratch"):
            os.makedirs(os.path.join(pod.dir, sub), mode=0o700, exist_ok=True)
        for volume in pod.obj["spec"].get("volumes") or []:
            path = self._volume_path(pod, volume)
            if "hostPath" in volume:
                ensure_host_path(path, host_path_is_file(volume["hostPath"]))
            else:
                os.makedirs(path, mode=0o700, exist_ok=True)
                if not any(k in volume for k in ("emptyDir", "configMap", "secret", "downwardAPI",
                                                 "projected")):
                    log("volume.unsupported", pod=pod.key, volume=volume["name"],
                        note="mounted as an empty directory")
        pod.prepared = True

    def _sync_volumes(self, pod):
        allocatable = self.allocatable(pod)

        def token_for(audience, seconds):
            return self._token(pod, audience, seconds)

        for volume in pod.obj["spec"].get("volumes") or []:
            files = volume_files(pod.obj, volume, self.lookup, token_for, allocatable)
            if files is not None:
                changed = sync_files(self._volume_path(pod, volume), files)
                if changed and pod.phase != "pending":
                    log("volume.refresh", pod=pod.key, volume=volume["name"],
                        files=sorted(changed))
        pod.volumes_dirty = False

    def _token(self, pod, audience, seconds):
        key = (audience, seconds)
        if key not in pod.tokens:
            meta = pod.obj["metadata"]
            token, expiry = self.api.request_token(
                meta["namespace"], pod.obj["spec"].get("serviceAccountName") or "default",
                meta["name"], meta["uid"], audience, seconds)
            # Renew at 80% of the lifetime (kubelet does the same), at least once a day.
            lifetime = max(expiry - time.time(), 60)
            pod.tokens[key] = (token, time.monotonic() + min(0.8 * lifetime, 86400))
        return pod.tokens[key][0]

    def _refresh_tokens(self, pod, now):
        expiring = [key for key, (_token, refresh_at) in pod.tokens.items() if refresh_at <= now]
        for key in expiring:
            del pod.tokens[key]
            pod.volumes_dirty = True

    # -- processes
    def _start(self, pod, c):
        base = base_env(pod.obj["metadata"]["name"], self.path, self.args.api_port, self.state_dir)
        own = container_env(pod.obj, c.spec, base, self.lookup, self.allocatable(pod))
        # The node's NVIDIA container runtime: its driver tools for the containers that ask for them.
        base["PATH"] = gpu_standins.runtime_path(self._host_root(pod), own, base["PATH"])
        table = mount_table(c.spec, self._volume_paths(pod), {**base, **own})
        spec = process_spec(c.spec, base, own, table, os.path.join(pod.dir, "scratch"))
        if c.started is not None:
            c.restarts += 1
        c.started, c.started_mono = time.time(), time.monotonic()
        try:
            c.proc = spawn(spec, os.path.join(pod.dir, c.name + ".log"))
        except OSError as e:
            # Like a runtime's "executable not found": an exit, subject to the restart policy.
            log("container.spawn-failed", pod=pod.key, container=c.name,
                argv=spec.argv, error=str(e))
            self._on_exit(pod.uid, c.name, None, 127 if isinstance(e, FileNotFoundError) else 126)
            return
        c.pgid, c.start_time, c.exit_code = c.proc.pid, proc_start_time(c.proc.pid), None
        log("container.start", pod=pod.key, container=c.name, role=c.role,
            pid=c.proc.pid, restarts=c.restarts, argv=spec.argv)
        uid, name, proc = pod.uid, c.name, c.proc
        threading.Thread(target=wait_for_exit, name="wait-%d" % proc.pid, daemon=True, args=(
            proc, c.pgid, lambda code: self.events.put(("exited", uid, name, proc, code)))).start()

    def _on_exit(self, uid, name, proc, code):
        pod = self.pods.get(uid)
        if pod is None or pod.containers[name].proc is not proc:
            return
        c = pod.containers[name]
        c.proc, c.exit_code = None, code
        ran_for = time.monotonic() - c.started_mono
        log("container.exit", pod=pod.key, container=name, exitCode=code,
            ranFor=round(ran_for, 3))
        if pod.phase == "stopping":       # stopped by us: not finished, whatever the exit code
            if not pod.running():
                self._remove_pod(pod)
        elif pod.phase in ("pending", "running") and \
                restarts_after_exit(c.role, pod.obj["spec"].get("restartPolicy", "Always"), code):
            c.due = time.monotonic() + c.backoff.next_delay(ran_for)
        else:
            c.done = True

    def _terminate(self, pod, phase):
        """SIGTERM every process of the pod now, SIGKILL after its grace period (see _advance)."""
        pod.phase = phase
        running = pod.running()
        for c in running:
            signal_group(c.pgid, signal.SIGTERM)
        pod.kill_at = time.monotonic() + grace_seconds(pod.obj) if running else None
        return running

    def _stop_pod(self, pod, reason):
        """The pod is no longer wanted here: stop its processes, then forget it."""
        if pod.phase == "stopping":
            return
        running = self._terminate(pod, "stopping")
        log("pod.stop", pod=pod.key, reason=reason,
            pids=[c.proc.pid for c in running])
        if not running:
            self._remove_pod(pod)

    def _remove_pod(self, pod):
        del self.pods[pod.uid]
        if self.stopping:
            # The pod lives on in the API: keep its volumes (emptyDir content included) and its
            # record for the next runner, as a kubelet restart keeps a pod's state.
            self.previous[pod.uid] = stopped_entry(self._entry(pod))
            return
        # Volumes may hold secrets and tokens; logs stay for post-mortems.
        shutil.rmtree(os.path.join(pod.dir, "volumes"), ignore_errors=True)
        log("pod.removed", pod=pod.key)

    def _stop_all(self, hard):
        if not self.stopping:
            log("runner.stopping", pods=len(self.pods))
        self.stopping = True
        for pod in list(self.pods.values()):
            self._stop_pod(pod, "runner stopping")
            if hard and pod.uid in self.pods:   # a second signal: no more grace
                pod.kill_at = 0.0

    # -- the index the tests read
    def _read_index(self):
        try:
            with open(self.index_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _entry(pod):
        meta = pod.obj["metadata"]
        return {
            "uid": pod.uid, "namespace": meta["namespace"], "name": meta["name"],
            "node": pod.obj["spec"]["nodeName"], "podIP": pod.obj["status"]["podIP"],
            "phase": pod.phase, "message": pod.message, "dir": pod.dir,
            "containers": {c.name: {
                "role": c.role, "pid": c.proc.pid if c.proc else None,
                "pgid": c.pgid if c.proc else None,
                "startTime": c.start_time if c.proc else None,
                "started": c.started, "restarts": c.restarts, "exitCode": c.exit_code,
                "done": c.done,
            } for c in pod.containers.values()},
        }

    def _index(self):
        # Entries a stopping runner leaves behind tell its successor what had finished.
        pods = dict(self.previous)
        pods.update((pod.uid, self._entry(pod)) for pod in self.pods.values())
        return {"runner": {"pid": os.getpid(), "stateDir": self.state_dir}, "pods": pods}

    def _write_index(self):
        content = json.dumps(self._index(), indent=1, sort_keys=True).encode()
        if content != self._last_index:
            write_atomic(self.index_path, content, 0o644)
            self._last_index = content


# --- CLI ---------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--api-host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--ca-file", required=True)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
    # One runner per state dir: a second one would fight the first over the same processes.
    lock = open(os.path.join(args.state_dir, "runner.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("runner.refused", reason="another runner holds " + lock.name)
        return 1
    runner = Runner(args, Api(args.kubeconfig, args.api_host, args.api_port, args.ca_file))
    signal.signal(signal.SIGTERM, runner.request_stop)
    signal.signal(signal.SIGINT, runner.request_stop)
    log("runner.start", pid=os.getpid(), stateDir=runner.state_dir,
        api="%s:%d" % (args.api_host, args.api_port))
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
