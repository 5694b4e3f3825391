"""Local pod runner: a small kubelet for programs on KWOK-simulated nodes.

KWOK marks pods on its nodes Running and gives them a 127.x IP, but runs nothing. This runner
starts the containers of two kinds of pods as local processes, with the environment, files and
restart behaviour a kubelet would give them, and stops them when the pod goes away:

    podrunner.py --kubeconfig K --state-dir D --api-host 127.0.0.1 --api-port P --ca-file CA \
                 [--image-maps DIR]

Host-mode pods (our own programs) opt in with the label local-runner.gpu-resilience.io/run=true.
There are no images: each container must name its program in `command` (e.g. python3
/app/server.py), and runs in the host's namespaces. Volumes are materialised as host directories
under D, so every container path that a program sees in its argv, env or workingDir is rewritten to
the matching host path. Programs reach the API server on 127.0.0.1:P.

Image-mode pods (third-party programs such as NVIDIA NVSentinel's, deployed by their own charts)
need no label: a pod on a simulated node runs here when one of its containers' images (init
containers included) is in the image map. Every container of such a pod must then have a mapped
image; one that has not fails the pod with a message naming the image (kubelet's ErrImagePull).
The label wins: a labelled pod runs in host mode whatever its images.

The image map is the merge of every *.json file in DIR (default `<cluster state>/image-maps/`,
exported by `tools/local-cluster env` as LOCALCLUSTER_IMAGE_MAPS), so that several tools each drop
their own file. Files are read again when they change; a pod keeps the entry it started with.

    {
      "images": {
        "ghcr.io/nvidia/nvsentinel/syslog-health-monitor": {
          "entrypoint": ["/root/.cache/.../syslog-health-monitor"],   the image's ENTRYPOINT
          "cmd": [],                                    its CMD (optional, default [])
          "env": {"NAME": "value"},                     its ENV (optional)
          "workingDir": "/"                             its WORKDIR (optional, default /)
        },
        "docker.io/library/busybox": {"entrypoint": [], "cmd": ["sh"]}
      },
      "endpoints": ["127.0.0.1:5432"]
    }

- Keys are image repositories without tag or digest, normalised as container runtimes do
  (`busybox` is `docker.io/library/busybox`); a pod's `image: ghcr.io/x/y:v1.2@sha256:...`
  matches the key `ghcr.io/x/y`. Two files mapping one repository differently are an error,
  logged, and that repository counts as unmapped until it is resolved.
- The argv is kubelet's: `command` replaces the entrypoint (and drops cmd), `args` replaces cmd;
  $(VAR) references in command and args are expanded, the image's entrypoint and cmd are taken
  literally. argv[0] is looked up in the container's PATH (image env, then the container's env).
  Programs must exist on this machine: the map names host binaries (built from source).
- The environment: image env, then the container's env and envFrom (the container wins), plus
  KUBERNETES_SERVICE_HOST=127.0.0.1 and KUBERNETES_SERVICE_PORT=P, HOSTNAME=<pod name>.
- `endpoints` are TCP services on the host's loopback (PostgreSQL, ...) that image-mode pods must
  reach: each is reachable from inside every image-mode pod at the same address and port as on the
  host (the API server on 127.0.0.1:P always is). Endpoints apply to pods started after the change.

An image-mode container runs like a container of a real node (tools/localcluster/podns.py):
- its own mount namespace, propagation private (nothing shows in the host's mount table), where
  every volumeMount is bind-mounted at its own mountPath (configMap, secret, projected with the
  service-account token, downwardAPI, emptyDir, hostPath from the node's host root below), subPath
  and readOnly honoured; the rest of the host's filesystem stays visible as it is (the mapped
  binaries live there), except the runner's state directory, hidden, so a container never sees
  another node's host root or another pod's volumes. The node's boot id replaces
  /proc/sys/kernel/random/boot_id. Paths in argv and env are not rewritten.
- the network and UTS namespaces of its pod (shared by the pod's containers, as in Kubernetes):
  `lo` up, the pod's IP (status.podIP) on it, hostname = pod name. A sandbox process per pod holds
  them and runs the forwarders (tools/localcluster/forwarder.py): inside, 127.0.0.1:P and each
  endpoint relay to the host; outside, each TCP containerPort of the pod is reachable on the host
  at <pod IP>:<port>, so two pods of one DaemonSet both listen on their fixed port. A pod with
  hostNetwork: true gets no sandbox and uses the host's network.
- runAsUser, capabilities and other securityContext settings are not applied (processes run as the
  runner's user); probes are not run (KWOK reports the pods Ready).

Layout of D:
    pods/index.json                            each pod's containers: pid, pgid, restarts, exit code
    pods/<ns>_<name>_<uid>/<container>.log     stdout+stderr of each container (appended)
    pods/<ns>_<name>_<uid>/sandbox.log         the image-mode pod's sandbox (forwarders)
    pods/<ns>_<name>_<uid>/volumes/<volume>/   configMap, secret, projected, downwardAPI, emptyDir
    pods/<ns>_<name>_<uid>/scratch/            default working directory (host mode)
    nodes/<node>/host/<path>                   each simulated node's hostPath root

The file reads top-down: pure functions (quantities, $(VAR) expansion, downward API, environment,
volume contents, mount table and path mapping, image map, restart backoff), then the I/O around
them (files, API watches, processes) and the event loop that ties them together. One thread owns
all state: API watches and process waiters only post events to its queue.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import forwarder  # noqa: E402  (sibling modules, found through the path above)
from podns import proc_start_time  # noqa: E402
import gpu_standins  # noqa: E402  (the simulated nodes' NVIDIA runtime and tools)

PODNS = os.path.join(HERE, "podns.py")
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
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"   # a node's own, from its host root (image mode)
IMAGE_ENTRY_KEYS = {"entrypoint": list, "cmd": list, "env": dict, "workingDir": str}
SANDBOX = "(sandbox)"       # the sandbox's name among a pod's processes: no container's name


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

def volume_mounts(container, volume_paths, env):
    """The container's volumeMounts in spec order, as podns.py takes them: {"path": mountPath,
    "source": host path, "readOnly": bool}. subPath and subPathExpr ($(VAR) from the container's
    env) select inside a volume."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volume_paths:
            raise PodSpecError("volumeMount %r names no volume of the pod" % mount["name"])
        host = volume_paths[mount["name"]]
        sub = mount.get("subPath") or expand(mount.get("subPathExpr", ""), env)
        if sub:
            host = os.path.join(host, safe_relpath(sub))
        mounts.append({"path": mount["mountPath"], "source": host,
                       "readOnly": bool(mount.get("readOnly"))})
    return mounts


def mount_table(container, volume_paths, env):
    """(container mountPath, host path) pairs for host mode's path mapping, longest mountPath
    first so the most specific mount wins."""
    table = [(m["path"].rstrip("/") or "/", m["source"])
             for m in volume_mounts(container, volume_paths, env)]
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


# --- image map (image-mode pods) ---------------------------------------------------------------

def image_repository(image):
    """An image reference's repository, without tag or digest, normalised as container runtimes
    do: `busybox:1.36` is docker.io/library/busybox, `bitnami/x` is docker.io/bitnami/x, and a
    first component with a "." or ":" (or `localhost`) names a registry."""
    name = image.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[:name.rfind(":")]
    first, sep, _rest = name.partition("/")
    if not sep:
        return "docker.io/library/" + name
    if first == "index.docker.io":
        return "docker.io/" + name[len(first) + 1:]
    if "." not in first and ":" not in first and first != "localhost":
        return "docker.io/" + name
    return name


def check_image_entry(entry):
    """The entry as the runner uses it (every key present); ValueError names what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError("the entry is not an object")
    unknown = sorted(set(entry) - set(IMAGE_ENTRY_KEYS))
    if unknown:
        raise ValueError("unknown keys %s (known: %s)" % (unknown, sorted(IMAGE_ENTRY_KEYS)))
    for key, kind in IMAGE_ENTRY_KEYS.items():
        if key in entry and not isinstance(entry[key], kind):
            raise ValueError("%s must be a JSON %s" % (key, "array" if kind is list else kind.__name__))
    if not all(isinstance(a, str) for a in entry.get("entrypoint", []) + entry.get("cmd", [])):
        raise ValueError("entrypoint and cmd must hold strings")
    if not all(isinstance(v, str) for v in entry.get("env", {}).values()):
        raise ValueError("env values must be strings")
    if not entry.get("workingDir", "/").startswith("/"):
        raise ValueError("workingDir must be absolute")
    return {"entrypoint": list(entry.get("entrypoint", [])), "cmd": list(entry.get("cmd", [])),
            "env": dict(entry.get("env", {})), "workingDir": entry.get("workingDir", "/")}


@dataclass
class ImageMap:
    images: dict = field(default_factory=dict)      # repository -> checked entry
    conflicts: dict = field(default_factory=dict)   # repository -> why it counts as unmapped
    endpoints: list = field(default_factory=list)   # "127.0.0.1:5432", in file order
    problems: list = field(default_factory=list)    # what the runner logs


def merge_image_maps(documents):
    """One ImageMap from the parsed files [(file name, JSON value)], taken in name order. A
    repository that two files map differently is a conflict; a bad entry or endpoint is left out;
    either is reported in `problems`."""
    merged, sources = ImageMap(), {}
    for name, doc in sorted(documents, key=lambda item: item[0]):
        if not isinstance(doc, dict) or set(doc) - {"images", "endpoints"}:
            merged.problems.append("%s: expected an object with \"images\" and \"endpoints\"" % name)
            continue
        for image, entry in (doc.get("images") or {}).items():
            repository = image_repository(image)
            try:
                entry = check_image_entry(entry)
            except ValueError as e:
                merged.problems.append("%s: image %s: %s" % (name, image, e))
                continue
            if repository in merged.images and merged.images[repository] != entry:
                merged.conflicts[repository] = "mapped differently by %s and %s" % (sources[repository], name)
                merged.problems.append("%s: image %s %s" % (name, repository, merged.conflicts[repository]))
            merged.images.setdefault(repository, entry)
            sources.setdefault(repository, name)
        for endpoint in doc.get("endpoints") or []:
            try:
                forwarder.parse_endpoint(endpoint)
            except ValueError as e:
                merged.problems.append("%s: %s" % (name, e))
                continue
            if endpoint not in merged.endpoints:
                merged.endpoints.append(endpoint)
    for repository in merged.conflicts:
        merged.images.pop(repository, None)
    return merged


def all_containers(pod):
    spec = pod.get("spec", {})
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def pod_mode(pod, image_map):
    """"host" for a pod labelled to run our own programs, "image" for a pod with a container
    whose image is in the map (or disputed in it), None for a pod this runner leaves alone."""
    if (pod["metadata"].get("labels") or {}).get(RUN_LABEL) == "true":
        return "host"
    for container in all_containers(pod):
        repository = image_repository(container.get("image") or "")
        if repository in image_map.images or repository in image_map.conflicts:
            return "image"
    return None


def image_entries(pod, image_map):
    """Container name -> image entry for an image-mode pod; PodSpecError (the pod fails, like
    kubelet's ErrImagePull) naming the first container whose image the map does not give."""
    entries = {}
    for container in all_containers(pod):
        image = container.get("image") or ""
        repository = image_repository(image)
        if repository not in image_map.images:
            why = image_map.conflicts.get(repository, "not in the image map")
            raise PodSpecError("container %r: image %s (%s): %s; add it to a file in the image map "
                               "directory" % (container["name"], image, repository, why))
        entries[container["name"]] = image_map.images[repository]
    return entries


def image_argv(container, entry, env):
    """The argv kubelet gives a container of an image: `command` replaces the ENTRYPOINT and
    drops the CMD, `args` replaces the CMD; only command and args are $(VAR)-expanded."""
    command = [expand(arg, env) for arg in container.get("command") or []]
    args = [expand(arg, env) for arg in container.get("args") or []]
    if command:
        argv = command + args
    else:
        argv = entry["entrypoint"] + (args if container.get("args") else entry["cmd"])
    if not argv:
        raise PodSpecError("container %r has no command and its image entry neither an entrypoint "
                           "nor a cmd" % container["name"])
    return argv


def image_process_spec(container, entry, base, own_env):
    """argv, environment and working directory of an image-mode container, in container terms
    (its mounts put every path where the program expects it: nothing is rewritten)."""
    env = {**base, **entry["env"], **own_env, STATE_ENV: base[STATE_ENV]}
    argv = image_argv(container, entry, {**base, **own_env})
    return ProcessSpec(argv, env, container.get("workingDir") or entry["workingDir"])


def container_ports(pod):
    """The pod's TCP containerPorts (sidecars and init containers included), sorted."""
    return sorted({port["containerPort"] for c in all_containers(pod) for port in c.get("ports") or []
                   if port.get("protocol", "TCP") == "TCP" and port.get("containerPort")})


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


def wants_to_run(pod, fake_nodes, image_map=None, running_mode=None):
    """A pod runs here once it is on a simulated node, has its IP and is not going away, if it
    opts in (pod_mode). An image-mode pod that already runs (`running_mode`) goes on when the map
    loses its image, as a running container outlives its image on a node."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    return ((running_mode == "image" or pod_mode(pod, image_map or ImageMap()) is not None)
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

def signal_group(pgid, sig):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def spawn(spec, log_path, pass_fds=()):
    """Start a container's process in its own session (so its whole group can be signalled)."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(spec.argv, env=spec.env, cwd=spec.cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                pass_fds=pass_fds)


def wait_for_ready(read_fd, post):
    """Reader thread body for a sandbox's ready pipe: posts once it says ready (EOF: it died)."""
    with os.fdopen(read_fd, "rb") as pipe:
        if pipe.readline() == b"ready\n":
            post()


def read_image_maps(directory):
    """[(file name, parsed JSON)] of the directory's *.json files and the problems reading them;
    a missing directory is an empty map."""
    documents, problems = [], []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        names = []
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                documents.append((name, json.load(f)))
        except (OSError, ValueError) as e:
            problems.append("%s: %s" % (name, e))
    return documents, problems


def image_maps_signature(directory):
    """What changes when any map file is written, added or removed (one stat per file)."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return ()
    signature = []
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(directory, name))
            signature.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(signature)


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
        for c in list((pod.get("containers") or {}).values()) + [pod.get("sandbox") or {}]:
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
    ready: bool = False           # the sandbox only: its namespaces and forwarders are up


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
    mode: str = "host"            # pod_mode: "host" or "image"
    images: dict = None           # image mode: container name -> image entry, fixed at _prepare
    sandbox: Container = None     # image mode without hostNetwork: the namespaces' holder

    @property
    def uid(self):
        return self.obj["metadata"]["uid"]

    @property
    def key(self):
        return os.path.basename(self.dir)

    def running(self):
        return [c for c in self.containers.values() if c.proc is not None]

    def processes(self):
        """Running containers and the sandbox: what must end before the pod is forgotten."""
        sandbox = [self.sandbox] if self.sandbox and self.sandbox.proc else []
        return self.running() + sandbox


def stopped_entry(entry):
    """An index entry whose processes are gone (stopped, or killed as a predecessor's strays)."""
    containers = {name: {**c, "pid": None, "pgid": None, "startTime": None}
                  for name, c in (entry.get("containers") or {}).items()}
    return {**entry, "phase": "stopped", "containers": containers}


def new_pod(obj, pods_dir, previous=None, mode="host"):
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
    sandbox = None
    if mode == "image" and not spec.get("hostNetwork"):
        sandbox = Container(SANDBOX, {}, "sandbox")
    return Pod(obj, os.path.join(pods_dir, pod_key(obj)), containers, refs=referenced_objects(obj),
               mode=mode, sandbox=sandbox)


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
        self.image_maps_dir = args.image_maps
        self.image_map = ImageMap()
        self._maps_signature = None
        # Every pod: image-mode pods carry no label of ours (wants_to_run picks).
        self.informers = {kind: Informer(api, kind, self.events)
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

    def _reload_image_maps(self):
        """Read the image map again when a file in its directory changed. Pods that failed for an
        image the map lacked are forgotten, so that the next reconcile takes them up again."""
        if not self.image_maps_dir:
            return
        signature = image_maps_signature(self.image_maps_dir)
        if signature == self._maps_signature:
            return
        self._maps_signature = signature
        documents, problems = read_image_maps(self.image_maps_dir)
        self.image_map = merge_image_maps(documents)
        self.image_map.problems[:0] = problems
        log("image-map.load", dir=self.image_maps_dir, images=sorted(self.image_map.images),
            endpoints=self.image_map.endpoints, problems=self.image_map.problems)
        for uid, pod in list(self.pods.items()):
            if pod.images is None and pod.mode == "image" and pod.phase == "failed" and not pod.processes():
                del self.pods[uid]

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
                    self._reload_image_maps()
                    self._reconcile()
                now = time.monotonic()
                for pod in list(self.pods.values()):
                    self._advance(pod, now)
                self._write_index()
        except Exception:
            # A bug must not leave orphans that keep serving stale pods.
            log("runner.crash", error=traceback.format_exc())
            for pod in self.pods.values():
                for c in pod.processes():
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
                if pod.sandbox and pod.sandbox.proc is None:
                    due.append(pod.sandbox.due)
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
        elif event[0] == "sandbox-ready":
            pod = self.pods.get(event[1])
            if pod and pod.sandbox and pod.sandbox.proc is event[2]:
                pod.sandbox.ready = True
                log("sandbox.ready", pod=pod.key, pid=event[2].pid)
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
            running = self.pods.get(obj["metadata"]["uid"])
            if wants_to_run(obj, nodes, self.image_map, running.mode if running else None):
                wanted[obj["metadata"]["uid"]] = obj
        for uid, pod in list(self.pods.items()):
            if uid not in wanted:
                self._stop_pod(pod, "pod deleted or terminating")
            elif pod.obj is not wanted[uid]:
                pod.obj = wanted[uid]            # labels/annotations feed downwardAPI files
                pod.volumes_dirty = True
        for uid, obj in wanted.items():
            if uid not in self.pods:
                mode = pod_mode(obj, self.image_map)
                self.pods[uid] = new_pod(obj, self.pods_dir, self.previous.get(uid), mode)
                log("pod.add", pod=pod_key(obj), node=obj["spec"]["nodeName"],
                    podIP=obj["status"]["podIP"], mode=mode)
        for uid, entry in self.previous.items():
            if uid not in wanted:           # deleted while no runner watched
                pod_dir = os.path.join(self.pods_dir, os.path.basename(entry.get("dir", "")))
                shutil.rmtree(os.path.join(pod_dir, "volumes"), ignore_errors=True)
        self.previous.clear()               # the rest has been taken over

    def _advance(self, pod, now):
        """Move one pod forward: prepare volumes, run init containers in order, keep sidecars
        and main containers running; past a grace period, SIGKILL what still runs."""
        if pod.kill_at is not None and now >= pod.kill_at:
            for c in pod.processes():
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
            if self._sandbox_ready(pod, now):
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
        # Fail the pod before any of its containers runs.
        if pod.mode == "image":
            pod.images = image_entries(pod.obj, self.image_map)
        else:
            for c in pod.containers.values():
                command_of(c.spec)
        for sub in ("volumes", "scratch", "rootfs"):
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
        if pod.mode == "image":
            spec, shown = self._image_spec(pod, c, base, own)
        else:
            table = mount_table(c.spec, self._volume_paths(pod), {**base, **own})
            spec = process_spec(c.spec, base, own, table, os.path.join(pod.dir, "scratch"))
            shown = spec.argv
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
            pid=c.proc.pid, restarts=c.restarts, argv=shown)
        uid, name, proc = pod.uid, c.name, c.proc
        threading.Thread(target=wait_for_exit, name="wait-%d" % proc.pid, daemon=True, args=(
            proc, c.pgid, lambda code: self.events.put(("exited", uid, name, proc, code)))).start()

    def _image_spec(self, pod, c, base, own):
        """The podns.py exec command that becomes an image-mode container, and the container's
        own argv (for the log)."""
        container = image_process_spec(c.spec, pod.images[c.name], base, own)
        mounts = volume_mounts(c.spec, self._volume_paths(pod), {**base, **own})
        for mount in mounts:
            # kubelet creates a missing subPath inside its volume (never outside: safe_relpath).
            if not os.path.lexists(mount["source"]):
                try:
                    os.makedirs(mount["source"], mode=0o755)
                except OSError as e:
                    raise ConfigError("subPath of volumeMount %s: %s" % (mount["path"], e)) from None
        boot_id = host_path_target(self.state_dir, pod.obj["spec"]["nodeName"], BOOT_ID_PATH)
        if os.path.exists(boot_id):
            mounts.append({"path": BOOT_ID_PATH, "source": boot_id, "readOnly": True})
        sandbox = pod.sandbox
        exec_spec = {
            "sandbox": {"pid": sandbox.proc.pid, "startTime": sandbox.start_time} if sandbox else None,
            "mounts": mounts, "hide": [self.state_dir], "staging": os.path.join(pod.dir, "rootfs"),
            "workingDir": container.cwd, "argv": container.argv}
        argv = [sys.executable, "-I", "-S", PODNS, "exec", json.dumps(exec_spec)]
        return ProcessSpec(argv, container.env, "/"), container.argv

    def _sandbox_ready(self, pod, now):
        """True once the pod's namespaces are up (always, for a pod without a sandbox); starts
        the sandbox when it is due."""
        sandbox = pod.sandbox
        if sandbox is None or sandbox.ready:
            return True
        if sandbox.proc is None and sandbox.due <= now:
            self._start_sandbox(pod)
        return False

    def _start_sandbox(self, pod):
        sandbox = pod.sandbox
        endpoints = ["%s:%d" % (self.args.api_host, self.args.api_port)] + \
            [e for e in self.image_map.endpoints if e != "%s:%d" % (self.args.api_host, self.args.api_port)]
        read_fd, write_fd = os.pipe()
        spec = {"podIP": pod.obj["status"]["podIP"], "hostname": pod.obj["metadata"]["name"],
                "endpoints": endpoints, "ports": container_ports(pod.obj), "readyFd": write_fd}
        env = {"PATH": self.path, "LANG": "C.UTF-8", STATE_ENV: self.state_dir}
        argv = [sys.executable, "-I", "-S", PODNS, "sandbox", json.dumps(spec)]
        if sandbox.started is not None:
            sandbox.restarts += 1
        sandbox.started, sandbox.started_mono = time.time(), time.monotonic()
        try:
            sandbox.proc = spawn(ProcessSpec(argv, env, "/"), os.path.join(pod.dir, "sandbox.log"),
                                 pass_fds=(write_fd,))
        except OSError as e:
            os.close(read_fd)
            log("sandbox.spawn-failed", pod=pod.key, error=str(e))
            sandbox.due = time.monotonic() + sandbox.backoff.next_delay(0)
            return
        finally:
            os.close(write_fd)
        sandbox.pgid, sandbox.start_time, sandbox.ready = sandbox.proc.pid, proc_start_time(sandbox.proc.pid), False
        log("sandbox.start", pod=pod.key, pid=sandbox.proc.pid, podIP=spec["podIP"],
            endpoints=endpoints, ports=spec["ports"], restarts=sandbox.restarts)
        uid, proc = pod.uid, sandbox.proc
        threading.Thread(target=wait_for_ready, name="ready-%d" % proc.pid, daemon=True, args=(
            read_fd, lambda: self.events.put(("sandbox-ready", uid, proc)))).start()
        threading.Thread(target=wait_for_exit, name="wait-%d" % proc.pid, daemon=True, args=(
            proc, sandbox.pgid, lambda code: self.events.put(("exited", uid, SANDBOX, proc, code)))).start()

    @staticmethod
    def _stop_sandbox(pod):
        if pod.sandbox and pod.sandbox.proc:
            signal_group(pod.sandbox.pgid, signal.SIGTERM)

    def _on_exit(self, uid, name, proc, code):
        pod = self.pods.get(uid)
        c = None if pod is None else pod.sandbox if name == SANDBOX else pod.containers.get(name)
        if c is None or c.proc is not proc:
            return
        c.proc, c.exit_code = None, code
        ran_for = time.monotonic() - c.started_mono
        log("container.exit", pod=pod.key, container=name, exitCode=code,
            ranFor=round(ran_for, 3))
        if name == SANDBOX:
            c.ready = False
            if pod.phase in ("pending", "running"):
                # Its containers lost their network: kill them (they restart as their policy
                # says, once a new sandbox is up), and start a new sandbox after a backoff.
                for running in pod.running():
                    signal_group(running.pgid, signal.SIGKILL)
                c.due = time.monotonic() + c.backoff.next_delay(ran_for)
        elif pod.phase == "stopping":     # stopped by us: not finished, whatever the exit code
            pass
        elif pod.phase in ("pending", "running") and \
                restarts_after_exit(c.role, pod.obj["spec"].get("restartPolicy", "Always"), code):
            c.due = time.monotonic() + c.backoff.next_delay(ran_for)
        else:
            c.done = True
        if pod.phase not in ("pending", "running") and not pod.running():
            self._stop_sandbox(pod)       # as kubelet: the sandbox goes after the containers
        if pod.phase == "stopping" and not pod.processes():
            self._remove_pod(pod)

    def _terminate(self, pod, phase):
        """SIGTERM every container of the pod now (the sandbox once they are gone), SIGKILL what
        is left after the grace period (see _advance)."""
        pod.phase = phase
        running = pod.running()
        for c in running:
            signal_group(c.pgid, signal.SIGTERM)
        if not running:
            self._stop_sandbox(pod)
        pod.kill_at = time.monotonic() + grace_seconds(pod.obj) if pod.processes() else None
        return running

    def _stop_pod(self, pod, reason):
        """The pod is no longer wanted here: stop its processes, then forget it."""
        if pod.phase == "stopping":
            return
        running = self._terminate(pod, "stopping")
        log("pod.stop", pod=pod.key, reason=reason,
            pids=[c.proc.pid for c in running])
        if not pod.processes():
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
            "phase": pod.phase, "message": pod.message, "dir": pod.dir, "mode": pod.mode,
            "sandbox": {"pid": pod.sandbox.proc.pid, "ready": pod.sandbox.ready,
                        "startTime": pod.sandbox.start_time, "restarts": pod.sandbox.restarts}
            if pod.sandbox and pod.sandbox.proc else None,
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
    parser.add_argument("--image-maps", help="directory of image map files (*.json): see above")
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
