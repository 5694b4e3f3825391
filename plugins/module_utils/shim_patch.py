# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure pod-template patching for the CUDA fault shim (the cuda_shim_patch module): no I/O.

Given a workload object (a dict as the API server returns it) and the options, ``patch`` computes
the patched object and the *record* of exactly what it added or replaced; ``reverse`` undoes a
record, so that the pod templates come back byte-identical. The record is stored as JSON in the
object's annotation ``ANNOTATION``, so a later, separate run can undo it.

Where the pod templates are:

* Deployment, StatefulSet, DaemonSet, ReplicaSet, Job: ``spec.template``; CronJob:
  ``spec.jobTemplate.spec.template``; any other kind: a ``pod_template_path`` (a list of keys).
* DynamoGraphDeployment (``nvidia.com/v1alpha1``): one per service at ``spec.services.<name>``.
  The Dynamo operator builds each service's pod from ``extraPodSpec`` (pod-spec fields) and its
  main container (named ``main``) from ``extraPodSpec.mainContainer``, then sets the service's
  ``envs`` on the main container; those win over ``mainContainer.env`` (and the graph's
  ``spec.envs`` are merged into them). So the shim's environment goes into the service's
  ``envs``, and an LD_PRELOAD inherited from the graph or from ``mainContainer.env`` is merged.
  A service runs GPUs when ``resources.limits/requests.gpu`` (with no other ``gpuType``) or a
  container's ``nvidia.com/gpu`` is set.

The record's format (version 1)::

    {"v": 1, "state": "armed", "xid": 79,
     "configMap": "cuda-fault-shim-deployment-web-1a2b3c4d" or null, "annotations": "created"|"existing",
     "templates": [{"path": [...], "containers": ["trainer"], "library": "/opt/.../libcudafault.so",
                    "changes": [<change>, ...]}]}

A path is a list of dict keys (str), list indexes (int) and ``{"name": n}`` (the item of a list
named n). A change is one of, applied in order and undone in reverse order:

* ``{"op": "create", "path": P, "value": V, "was": "missing"|"null"}``: the key P did not exist
  (or was null) and was created as V; undone by deleting it if it is V again (nothing else was added).
* ``{"op": "add", "path": L, "item": I, "after": name or null}``: item I appended to the list L
  (or inserted after the item named ``after``); undone by removing the item named ``I.name``.
* ``{"op": "replace", "path": L, "prior": P, "item": I}``: the list item P replaced in place by I;
  undone by putting P back where the item named ``I.name`` is.
* ``{"op": "set", "path": P, "was": "missing"|"null"|"value", "prior": X, "value": V, "pin": {"mode":
  M, "node": N}}``: the key P (the pod's affinity) set to V; undone by restoring X, or, when someone
  changed it since, by removing only the node term that was added.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import hashlib
import json
import re

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_control, shim_source
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog

ANNOTATION = "fault-injection.gpu-resilience.io/cuda-shim"
RECORD_VERSION = 1
MANAGED_BY = "cuda_shim_patch"

DEFAULT_COMPILER_IMAGE = "docker.io/library/gcc:14.2.0"
GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME_LABEL = "kubernetes.io/hostname"
PIN_WEIGHT = 100
NON_ROOT_UID = 65534

BASE_NAME = "cuda-fault-shim"
MOUNT_ROOT = "/opt/gpu-fault-injection"
LD_PRELOAD = "LD_PRELOAD"
# Holds an LD_PRELOAD that came from valueFrom; the new LD_PRELOAD refers to it as $(...). Its name
# sorts before LD_PRELOAD, so it is defined first also where the env is sorted (the Dynamo operator).
PRIOR_PRELOAD_ENV = "CUDA_FAULT_SHIM_PRIOR_LD_PRELOAD"
SOURCE_DIGEST_ENV = "CUDA_FAULT_SHIM_SOURCE_SHA256"

INSTALLED_STATES = ("present", "armed", "disarmed")
STATES = INSTALLED_STATES + ("absent",)
PIN_MODES = ("required", "preferred")

DGD_KIND = "DynamoGraphDeployment"
DGD_API_VERSION = "nvidia.com/v1alpha1"
DGD_MAIN_CONTAINER = "main"

DEFAULT_API_VERSIONS = {
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "ReplicaSet": "apps/v1",
    "Job": "batch/v1", "CronJob": "batch/v1", DGD_KIND: DGD_API_VERSION,
}
TEMPLATE_PATHS = {
    "Deployment": ["spec", "template"], "StatefulSet": ["spec", "template"], "DaemonSet": ["spec", "template"],
    "ReplicaSet": ["spec", "template"], "Job": ["spec", "template"],
    "CronJob": ["spec", "jobTemplate", "spec", "template"],
}

INIT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}

_MISSING = object()

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KIND = re.compile(r"^[A-Z][A-Za-z0-9]{0,62}$")
_API_VERSION = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?v[0-9]+[a-z0-9]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$")
_LIBRARY_PATH = re.compile(r"^(/[A-Za-z0-9._+\-]+)+$")
_PATH_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,253}$")
_PRELOAD_SEPARATORS = re.compile(r"[: ]+")


class ShimPatchError(ValueError):
    """A request or an object the shim cannot be applied to; the message says what to do."""


# --- validation ------------------------------------------------------------------------------

def validate_dns_label(value, what):
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise ShimPatchError("%s %r is not a valid Kubernetes name (lower-case letters, digits and '-', at most 63)"
                             % (what, value))
    return value


def validate_dns_subdomain(value, what):
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ShimPatchError("%s %r is not a valid Kubernetes name (lower-case letters, digits, '-' and '.', "
                             "at most 253)" % (what, value))
    return value


def validate_kind(kind, api_version=None):
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ShimPatchError("kind %r is not a Kubernetes kind (CamelCase letters and digits)" % (kind,))
    if api_version is not None and (not isinstance(api_version, str) or not _API_VERSION.fullmatch(api_version)):
        raise ShimPatchError("api_version %r is not a Kubernetes API version such as apps/v1" % (api_version,))


def validate_image(image):
    if not isinstance(image, str) or len(image) > 512 or not _IMAGE.fullmatch(image):
        raise ShimPatchError("compiler_image %r is not a container image reference" % (image,))
    return image


def validate_library_path(path):
    """An absolute path LD_PRELOAD can carry: no ':' or spaces (its separators), no '..'."""
    if (not isinstance(path, str) or len(path) > 1024 or not _LIBRARY_PATH.fullmatch(path)
            or any(part in (".", "..") for part in path.split("/"))):
        raise ShimPatchError("library_path %r must be an absolute path of letters, digits and ._+- "
                             "(LD_PRELOAD separates libraries with ':' and spaces)" % (path,))
    return path


def validate_template_path(path):
    if not isinstance(path, (list, tuple)) or not path:
        raise ShimPatchError("pod_template_path must be a non-empty list of keys, e.g. [spec, template]")
    for key in path:
        if not isinstance(key, str) or not _PATH_KEY.fullmatch(key):
            raise ShimPatchError("pod_template_path key %r is not a field name (letters, digits, _.-)" % (key,))
    return [int(k) if k.isdigit() else k for k in path]


def validate_options(spec):
    """Check the options that do not need the object; return them normalised."""
    spec = dict(spec)
    state = spec.get("state") or "present"
    if state not in STATES:
        raise ShimPatchError("state must be one of %s" % ", ".join(STATES))
    spec["state"] = state
    validate_kind(spec.get("kind"), spec.get("api_version"))
    if spec.get("pod_template_path") is not None:
        spec["pod_template_path"] = validate_template_path(spec["pod_template_path"])
    elif spec["kind"] not in TEMPLATE_PATHS and spec["kind"] != DGD_KIND:
        raise ShimPatchError("kind %s has no known pod template: give pod_template_path, the keys to its pod "
                             "template (e.g. [spec, template])" % spec["kind"])
    if spec.get("xid") is not None:
        try:
            xid_catalog.get(spec["xid"])
        except ValueError as e:
            raise ShimPatchError("xid: %s" % e)
    elif state == "armed":
        raise ShimPatchError("state=armed needs xid: the XID whose CUDA error the shim returns")
    if spec.get("containers") is not None:
        if not spec["containers"]:
            raise ShimPatchError("containers must name at least one container")
        for name in spec["containers"]:
            validate_dns_label(name, "container")
        if spec.get("all_containers"):
            raise ShimPatchError("give containers or all_containers, not both")
    if spec.get("library_path") is not None:
        validate_library_path(spec["library_path"])
    spec["compiler_image"] = validate_image(spec.get("compiler_image") or DEFAULT_COMPILER_IMAGE)
    if spec.get("pin_node") is not None:
        validate_dns_subdomain(spec["pin_node"], "pin_node")
    spec["pin_mode"] = spec.get("pin_mode") or "required"
    if spec["pin_mode"] not in PIN_MODES:
        raise ShimPatchError("pin_mode must be one of %s" % ", ".join(PIN_MODES))
    if spec.get("runtime_control") is None:
        spec["runtime_control"] = True
    return spec


# --- names -----------------------------------------------------------------------------------

def default_api_version(kind):
    return DEFAULT_API_VERSIONS.get(kind)


def config_map_name(api_version, kind, namespace, name):
    """The workload's ConfigMap: cuda-fault-shim-<kind>-<name>-<hash>, unique per workload."""
    digest = hashlib.sha256(("%s/%s/%s/%s" % (api_version, kind, namespace, name)).encode("utf-8")).hexdigest()[:8]
    head = "%s-%s-" % (BASE_NAME, kind.lower())
    middle = name[:253 - len(head) - 9].rstrip("-.")
    return "%s%s-%s" % (head, middle, digest)


def source_digest(files):
    """sha256 over the ConfigMap's files (name and content), for the init container's env."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0" + files[name].encode("utf-8") + b"\0")
    return h.hexdigest()


# --- paths -----------------------------------------------------------------------------------

def _step(node, key):
    if isinstance(key, dict):
        if not isinstance(node, list):
            return _MISSING
        for item in node:
            if isinstance(item, dict) and item.get("name") == key["name"]:
                return item
        return _MISSING
    if isinstance(key, int):
        if not isinstance(node, list) or not 0 <= key < len(node):
            return _MISSING
        return node[key]
    if not isinstance(node, dict) or key not in node:
        return _MISSING
    return node[key]


def get_path(obj, path, default=None):
    node = obj
    for key in path:
        node = _step(node, key)
        if node is _MISSING:
            return default
    return node


def _has(obj, path):
    return get_path(obj, path, _MISSING) is not _MISSING


def format_path(path):
    out = ""
    for key in path:
        if isinstance(key, dict):
            out += "[name=%s]" % key["name"]
        elif isinstance(key, int):
            out += "[%d]" % key
        else:
            out += ("." if out else "") + key
    return out


def template_locations(obj, kind, pod_template_path=None):
    """[{"type": "pod"|"dgd", "path": [...]}]: where the object's pod templates are."""
    if pod_template_path:
        paths = [list(pod_template_path)]
    elif kind == DGD_KIND:
        services = get_path(obj, ["spec", "services"])
        if not isinstance(services, dict) or not services:
            raise ShimPatchError("%s has no spec.services" % describe(obj))
        return [{"type": "dgd", "path": ["spec", "services", s]} for s in sorted(services)]
    elif kind in TEMPLATE_PATHS:
        paths = [list(TEMPLATE_PATHS[kind])]
    else:
        raise ShimPatchError("kind %s has no known pod template: give pod_template_path" % kind)
    for path in paths:
        template = get_path(obj, path)
        if not isinstance(template, dict) or not isinstance(template.get("spec"), dict) \
                or not isinstance(template["spec"].get("containers"), list) or not template["spec"]["containers"]:
            raise ShimPatchError("%s has no pod template with containers at %s%s" % (
                describe(obj), format_path(path), "" if pod_template_path else "; give pod_template_path"))
    return [{"type": "pod", "path": p} for p in paths]


def describe(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return "%s %s%s" % (obj.get("kind") or "object", ns + "/" if ns else "", meta.get("name"))


# --- LD_PRELOAD ------------------------------------------------------------------------------

def preload_entries(value):
    return [part for part in _PRELOAD_SEPARATORS.split(value or "") if part]


def merge_ld_preload(existing, library):
    """The shim first, then whatever was preloaded before (kept exactly)."""
    if not existing or not existing.strip(" :"):
        return library
    return library + ":" + existing


def strip_ld_preload(value, library):
    """value without the first entry equal to library (and its separator); the rest unchanged."""
    match = re.search(r"(^|[: ]+)%s(?=$|[: ])" % re.escape(library), value or "")
    if not match:
        return value
    start, end = match.span()
    if match.group(1):          # "a:LIB..." -> keep "a", drop ":LIB"
        return value[:start] + value[end:]
    return re.sub(r"^[: ]+", "", value[end:], count=1)   # "LIB:b" -> "b"


# --- containers ------------------------------------------------------------------------------

def _quantity_nonzero(value):
    if value is None:
        return False
    text = str(value).strip()
    return text not in ("", "0", "0.0") and not re.match(r"^0+(\.0*)?[a-zA-Z]*$", text)


def is_gpu_resource(name):
    """nvidia.com/gpu, and the device plugin's MIG (nvidia.com/mig-1g.10gb) and renamed shared
    (nvidia.com/gpu.shared) resources: all of them give the container CUDA devices."""
    return name == GPU_RESOURCE or name.startswith(GPU_RESOURCE + ".") or name.startswith("nvidia.com/mig-")


def container_has_gpu(container):
    resources = (container or {}).get("resources") or {}
    return any(is_gpu_resource(name) and _quantity_nonzero(value)
               for part in ("limits", "requests") for name, value in ((resources.get(part) or {}).items()))


def dgd_service_has_gpu(service):
    resources = service.get("resources") or {}
    for part in ("limits", "requests"):
        item = resources.get(part) or {}
        if item.get("gpuType") in (None, "", GPU_RESOURCE) and _quantity_nonzero(item.get("gpu")):
            return True
        if any(is_gpu_resource(name) and _quantity_nonzero(value) for name, value in (item.get("custom") or {}).items()):
            return True
    return False


def _containers_of(obj, loc):
    """The containers of one pod template: dicts with name, path (to the container), env_path,
    gpu, and inherited (where else an LD_PRELOAD may come from, DynamoGraphDeployment only)."""
    if loc["type"] == "pod":
        spec_path = loc["path"] + ["spec"]
        out = []
        for c in get_path(obj, spec_path + ["containers"]) or []:
            path = spec_path + ["containers", {"name": c.get("name")}]
            out.append(dict(name=c.get("name"), path=path, env_path=path + ["env"], gpu=container_has_gpu(c),
                            inherited=[], create=None))
        return out
    service = get_path(obj, loc["path"])
    if not isinstance(service, dict):
        raise ShimPatchError("%s: %s is not a service" % (describe(obj), format_path(loc["path"])))
    eps_path = loc["path"] + ["extraPodSpec"]
    main = get_path(obj, eps_path + ["mainContainer"]) or {}
    main_path = eps_path + ["mainContainer"]
    inherited = [["spec", "envs"], main_path + ["env"]]
    out = [dict(name=main.get("name") or DGD_MAIN_CONTAINER, path=main_path, env_path=loc["path"] + ["envs"],
                gpu=dgd_service_has_gpu(service) or container_has_gpu(main), inherited=inherited,
                create={"name": DGD_MAIN_CONTAINER})]
    for c in get_path(obj, eps_path + ["containers"]) or []:
        path = eps_path + ["containers", {"name": c.get("name")}]
        out.append(dict(name=c.get("name"), path=path, env_path=path + ["env"], gpu=container_has_gpu(c),
                        inherited=[], create=None))
    return out


def _pod_spec_path(loc):
    return loc["path"] + (["spec"] if loc["type"] == "pod" else ["extraPodSpec"])


def _label(obj, loc):
    if loc["type"] == "dgd":
        return "service " + loc["path"][-1]
    return format_path(loc["path"])


def select_containers(obj, locations, spec):
    """[(location, [container, ...])] for the templates that get the shim; ShimPatchError if none."""
    wanted = spec.get("containers")
    chosen, seen = [], {}
    for loc in locations:
        containers = _containers_of(obj, loc)
        seen[_label(obj, loc)] = containers
        if wanted:
            picked = [c for c in containers if c["name"] in wanted]
        elif spec.get("all_containers"):
            picked = containers
        else:
            picked = [c for c in containers if c["gpu"]]
        if picked:
            chosen.append((loc, picked))
    inventory = "; ".join("%s: %s" % (label, ", ".join(c["name"] + (" (GPU)" if c["gpu"] else "") for c in cs)
                                      or "none")
                          for label, cs in seen.items())
    if wanted:
        found = set(c["name"] for _loc, cs in chosen for c in cs)
        missing = [n for n in wanted if n not in found]
        if missing:
            raise ShimPatchError("%s has no container named %s (containers: %s)"
                                 % (describe(obj), ", ".join(missing), inventory))
    if not chosen:
        raise ShimPatchError("%s has no container requesting %s (containers: %s); name the containers to shim "
                             "with containers: [...], or set all_containers: true"
                             % (describe(obj), GPU_RESOURCE, inventory))
    return chosen


# --- desired content -------------------------------------------------------------------------

def shim_env(state, xid, runtime_control=True):
    """(name, value) pairs the shimmed containers get besides LD_PRELOAD. The control file's path is
    the shim's default, set explicitly so that it names the mounted directory in every runtime."""
    env = []
    if runtime_control:
        env.append((shim_control.ENV_CONTROL, shim_control.CONTAINER_DIR + "/" + shim_control.CONTROL_FILE))
    env.append((shim_control.ENV_ENABLED, "1" if state == "armed" else "0"))
    if xid is not None:
        env.append((shim_control.ENV_XID, str(int(xid))))
    return env


def _unique(base, taken):
    name, n = base, 2
    while name in taken:
        name = "%s-%d" % (base, n)
        n += 1
    taken.add(name)
    return name


def _names_for(obj, loc):
    pod_spec = get_path(obj, _pod_spec_path(loc)) or {}
    containers = set(c.get("name") for part in ("containers", "initContainers", "ephemeralContainers")
                     for c in pod_spec.get(part) or [])
    if loc["type"] == "dgd":
        containers.add((pod_spec.get("mainContainer") or {}).get("name") or DGD_MAIN_CONTAINER)
    volumes = set(v.get("name") for v in pod_spec.get("volumes") or [])
    return dict(init=_unique(BASE_NAME + "-build", containers), source=_unique(BASE_NAME + "-src", volumes),
                lib=_unique(BASE_NAME + "-lib", volumes), control=_unique(BASE_NAME + "-ctl", volumes))


def init_container(name, image, source_volume, lib_volume, digest):
    src_dir = MOUNT_ROOT + "/" + source_volume
    lib_dir = MOUNT_ROOT + "/" + lib_volume
    return {
        "name": name,
        "image": image,
        "command": list(shim_source.compile_argv(src_dir, lib_dir + "/" + shim_source.LIBRARY)),
        "env": [{"name": "TMPDIR", "value": lib_dir}, {"name": SOURCE_DIGEST_ENV, "value": digest}],
        "volumeMounts": [{"name": source_volume, "mountPath": src_dir, "readOnly": True},
                         {"name": lib_volume, "mountPath": lib_dir}],
        "resources": copy.deepcopy(INIT_RESOURCES),
        "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }


# --- applying changes ------------------------------------------------------------------------

class _Patch:
    def __init__(self, obj):
        self.obj = obj
        self.changes = []

    def ensure(self, path, initial):
        parent = get_path(self.obj, path[:-1])
        key = path[-1]
        if not isinstance(parent, dict):
            raise ShimPatchError("%s: %s is not an object" % (describe(self.obj), format_path(path[:-1])))
        current = parent.get(key)
        if current is not None:
            if not isinstance(current, type(initial)):
                raise ShimPatchError("%s: %s is not a%s" % (describe(self.obj), format_path(path),
                                                            " list" if isinstance(initial, list) else "n object"))
            return current
        was = "null" if key in parent else "missing"
        parent[key] = copy.deepcopy(initial)
        self.changes.append({"op": "create", "path": list(path), "value": copy.deepcopy(initial), "was": was})
        return parent[key]

    def add(self, path, item, after=None):
        items = self.ensure(path, [])
        position = len(items)
        if after is not None:
            position = next(i for i, x in enumerate(items) if x.get("name") == after) + 1
        items.insert(position, copy.deepcopy(item))
        self.changes.append({"op": "add", "path": list(path), "item": copy.deepcopy(item), "after": after})

    def replace(self, path, prior, item):
        items = get_path(self.obj, path)
        index = next(i for i, x in enumerate(items) if x.get("name") == prior["name"])
        items[index] = copy.deepcopy(item)
        self.changes.append({"op": "replace", "path": list(path), "prior": copy.deepcopy(prior),
                             "item": copy.deepcopy(item)})

    def set(self, path, value, **extra):
        parent = get_path(self.obj, path[:-1])
        key = path[-1]
        if key not in parent:
            was, prior = "missing", None
        elif parent[key] is None:
            was, prior = "null", None
        else:
            was, prior = "value", copy.deepcopy(parent[key])
        parent[key] = copy.deepcopy(value)
        change = {"op": "set", "path": list(path), "was": was, "prior": prior, "value": copy.deepcopy(value)}
        change.update(extra)
        self.changes.append(change)


def _env_entries(obj, path, name):
    return [e for e in get_path(obj, path) or [] if isinstance(e, dict) and e.get("name") == name]


def _set_env(patch, container, name, value, library, where):
    path = container["env_path"]
    env = get_path(patch.obj, path)
    if env is not None and not isinstance(env, list):
        raise ShimPatchError("%s: %s is not a list" % (where, format_path(path)))
    found = _env_entries(patch.obj, path, name)
    if len(found) > 1:
        raise ShimPatchError("%s sets %s %d times; keep one definition" % (where, name, len(found)))
    prior = found[0] if found else None
    if name != LD_PRELOAD:
        item = {"name": name, "value": value}
        if prior is None:
            patch.add(path, item)
        elif prior != item:
            patch.replace(path, prior, item)
        return
    base = prior
    if base is None:
        for source in container["inherited"]:
            inherited = _env_entries(patch.obj, source, LD_PRELOAD)
            if inherited:
                base = inherited[-1]
                break
    if base is not None and base.get("valueFrom") is not None:
        # A value the module cannot read (ConfigMap, Secret, field): keep it under another name and
        # let Kubernetes expand it after the shim: LD_PRELOAD=<shim>:$(CUDA_FAULT_SHIM_PRIOR_LD_PRELOAD).
        if _env_entries(patch.obj, path, PRIOR_PRELOAD_ENV):
            raise ShimPatchError("%s already sets %s; remove it first" % (where, PRIOR_PRELOAD_ENV))
        helper = {"name": PRIOR_PRELOAD_ENV, "valueFrom": copy.deepcopy(base["valueFrom"])}
        if prior is not None:
            patch.replace(path, prior, helper)
        else:
            patch.add(path, helper)
        patch.add(path, {"name": LD_PRELOAD, "value": "%s:$(%s)" % (library, PRIOR_PRELOAD_ENV)},
                  after=PRIOR_PRELOAD_ENV)
        return
    existing = (base or {}).get("value") or ""
    if library in preload_entries(existing) or any(
            e.rsplit("/", 1)[-1] == shim_source.LIBRARY for e in preload_entries(existing)):
        raise ShimPatchError("%s already preloads %s (LD_PRELOAD=%s) without a %s record; remove it from the "
                             "pod template first" % (where, shim_source.LIBRARY, existing, ANNOTATION))
    item = {"name": LD_PRELOAD, "value": merge_ld_preload(existing, library)}
    if prior is None:
        patch.add(path, item)
    else:
        patch.replace(path, prior, item)


def _mount(patch, container, volume, mount_path, where):
    path = container["path"] + ["volumeMounts"]
    for m in get_path(patch.obj, path) or []:
        if m.get("mountPath", "").rstrip("/") == mount_path:
            raise ShimPatchError("%s already mounts volume %s at %s, where the shim needs its own; remove that "
                                 "mount first" % (where, m.get("name"), mount_path))
    patch.add(path, {"name": volume, "mountPath": mount_path, "readOnly": True})


def _pin_expression(node):
    return {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}


def _pin_preference(node):
    return {"weight": PIN_WEIGHT, "preference": {"matchExpressions": [_pin_expression(node)]}}


def _pin(patch, pod_spec_path, node, mode):
    """Required: the node term is added to every existing required term (they are ORed, its
    expressions ANDed); preferred: one preference of weight 100."""
    affinity = get_path(patch.obj, pod_spec_path + ["affinity"])
    new = copy.deepcopy(affinity) if isinstance(affinity, dict) else {}
    node_affinity = new.setdefault("nodeAffinity", {})
    if mode == "required":
        required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        terms = required.setdefault("nodeSelectorTerms", [])
        if not terms:
            terms.append({})
        for term in terms:
            term.setdefault("matchExpressions", []).append(_pin_expression(node))
    else:
        node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", []).append(_pin_preference(node))
    patch.set(pod_spec_path + ["affinity"], new, pin={"mode": mode, "node": node})


def patch(obj, spec):
    """(patched object, record, warnings) for an object that carries no record.

    spec: the options (validate_options), plus ``config_map`` and ``source_digest`` unless
    ``library_path`` is given, and ``node`` placement from ``pin_node``/``pin_mode``.
    """
    if read_record(obj) is not None:
        raise ShimPatchError("%s already carries a shim record; reverse it first" % describe(obj))
    if spec["state"] not in INSTALLED_STATES:
        raise ShimPatchError("patch needs state present, armed or disarmed")
    obj = copy.deepcopy(obj)
    locations = template_locations(obj, spec["kind"], spec.get("pod_template_path"))
    chosen = select_containers(obj, locations, spec)
    build = spec.get("library_path") is None
    warnings, templates, library = [], [], spec.get("library_path")
    for loc, containers in chosen:
        p = _Patch(obj)
        names = _names_for(obj, loc)
        pod_spec_path = _pod_spec_path(loc)
        label = _label(obj, loc)
        p.ensure(pod_spec_path, {})
        if build:
            library = MOUNT_ROOT + "/" + names["lib"] + "/" + shim_source.LIBRARY
            p.add(pod_spec_path + ["initContainers"], init_container(
                names["init"], spec["compiler_image"], names["source"], names["lib"], spec["source_digest"]))
            p.add(pod_spec_path + ["volumes"], {"name": names["source"], "configMap": {"name": spec["config_map"]}})
            p.add(pod_spec_path + ["volumes"], {"name": names["lib"], "emptyDir": {}})
        if spec["runtime_control"]:
            p.add(pod_spec_path + ["volumes"], {"name": names["control"], "hostPath": {
                "path": shim_control.HOST_DIR, "type": "DirectoryOrCreate"}})
        for c in containers:
            where = "%s, %s, container %s" % (describe(obj), label, c["name"])
            if c["create"] is not None:
                p.ensure(c["path"], c["create"])
            if build:
                _mount(p, c, names["lib"], MOUNT_ROOT + "/" + names["lib"], where)
            if spec["runtime_control"]:
                _mount(p, c, names["control"], shim_control.CONTAINER_DIR, where)
            _set_env(p, c, LD_PRELOAD, None, library, where)
            for name, value in shim_env(spec["state"], spec.get("xid"), spec["runtime_control"]):
                _set_env(p, c, name, value, library, where)
            if get_path(obj, c["path"] + ["envFrom"]):
                warnings.append("%s takes variables from envFrom: an LD_PRELOAD set there is replaced while the "
                                "shim is present" % where)
        if spec.get("pin_node"):
            _pin(p, pod_spec_path, spec["pin_node"], spec["pin_mode"])
        templates.append({"path": list(loc["path"]), "containers": [c["name"] for c in containers],
                          "library": library, "changes": p.changes})
    meta = obj.setdefault("metadata", {})
    record = {"v": RECORD_VERSION, "state": spec["state"], "xid": spec.get("xid"),
              "configMap": spec.get("config_map") if build else None,
              "annotations": "existing" if isinstance(meta.get("annotations"), dict) else "created",
              "templates": templates}
    if not isinstance(meta.get("annotations"), dict):
        meta["annotations"] = {}
    meta["annotations"][ANNOTATION] = dump_record(record)
    return obj, record, warnings


def dump_record(record):
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def read_record(obj):
    """The object's record, None without one; ShimPatchError when it is not a record this module wrote."""
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("v") != RECORD_VERSION or not isinstance(
            record.get("templates"), list):
        raise ShimPatchError("%s carries an annotation %s that is not a version-%d shim record; remove the "
                             "annotation and the shim's changes by hand" % (describe(obj), ANNOTATION, RECORD_VERSION))
    return record


# --- reversing -------------------------------------------------------------------------------

def _index_of(items, name):
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == name:
            return i
    return None


def _unpin(affinity, pin):
    """Remove from affinity only the node term that pin (mode, node) added; prune what is left empty."""
    expression = _pin_expression(pin["node"])
    node_affinity = affinity.get("nodeAffinity")
    if not isinstance(node_affinity, dict):
        return affinity
    if pin["mode"] == "required":
        required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
        terms = required.get("nodeSelectorTerms") or []
        for term in terms:
            expressions = term.get("matchExpressions") or []
            if expression in expressions:
                del expressions[len(expressions) - 1 - expressions[::-1].index(expression)]
                if not expressions:
                    del term["matchExpressions"]
        if "nodeSelectorTerms" in required:
            required["nodeSelectorTerms"] = [t for t in terms if t]
            if not required["nodeSelectorTerms"]:
                del required["nodeSelectorTerms"]
        if "requiredDuringSchedulingIgnoredDuringExecution" in node_affinity and not required:
            del node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    else:
        preferred = node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        entry = _pin_preference(pin["node"])
        if entry in preferred:
            del preferred[len(preferred) - 1 - preferred[::-1].index(entry)]
        if "preferredDuringSchedulingIgnoredDuringExecution" in node_affinity and not preferred:
            del node_affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    if not node_affinity:
        del affinity["nodeAffinity"]
    return affinity


def _undo(obj, change, library, warnings, where):
    op, path = change["op"], change["path"]
    if op == "create":
        parent = get_path(obj, path[:-1])
        if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] == change["value"]:
            if change["was"] == "null":
                parent[path[-1]] = None
            else:
                del parent[path[-1]]
        return
    items = get_path(obj, path)
    if op == "set":
        parent = get_path(obj, path[:-1])
        if not isinstance(parent, dict):
            return
        current = parent.get(path[-1])
        if current != change["value"]:
            warnings.append("%s: %s was changed after the shim pinned the pods; removed only the node term it "
                            "added" % (where, format_path(path)))
            if isinstance(current, dict) and change.get("pin"):
                restored = _unpin(copy.deepcopy(current), change["pin"])
                if restored or change["was"] == "value":
                    parent[path[-1]] = restored
                else:
                    del parent[path[-1]]
            return
        if change["was"] == "missing":
            del parent[path[-1]]
        elif change["was"] == "null":
            parent[path[-1]] = None
        else:
            parent[path[-1]] = copy.deepcopy(change["prior"])
        return
    if not isinstance(items, list):
        warnings.append("%s: %s is gone; nothing to remove there" % (where, format_path(path)))
        return
    name = change["item"]["name"]
    index = _index_of(items, name)
    if index is None:
        warnings.append("%s: %s has no %s any more; nothing to remove" % (where, format_path(path), name))
        return
    current = items[index]
    if op == "add":
        if name == LD_PRELOAD and current != change["item"] and library:
            rest = strip_ld_preload(current.get("value") or "", library)
            if rest and "$(%s)" % PRIOR_PRELOAD_ENV not in rest and not current.get("valueFrom"):
                warnings.append("%s: LD_PRELOAD was changed after the shim was added; removed only %s and kept %s"
                                % (where, library, rest))
                items[index] = dict(current, value=rest)
                return
        del items[index]
    elif op == "replace":
        prior = copy.deepcopy(change["prior"])
        if name == LD_PRELOAD and current != change["item"] and library and "value" in prior:
            rest = strip_ld_preload(current.get("value") or "", library)
            if rest != prior.get("value"):
                warnings.append("%s: LD_PRELOAD was changed after the shim was added; removed only %s and kept %s"
                                % (where, library, rest))
                prior = dict(current, value=rest)
        items[index] = prior


def reverse(obj, record=None):
    """(object without the shim, warnings): undo the record (read from obj when not given)."""
    obj = copy.deepcopy(obj)
    if record is None:
        record = read_record(obj)
    if record is None:
        return obj, []
    warnings = []
    for template in reversed(record["templates"]):
        where = "%s, %s" % (describe(obj), format_path(template["path"]))
        for change in reversed(template["changes"]):
            _undo(obj, change, template.get("library"), warnings, where)
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(ANNOTATION, None)
        if not annotations and record.get("annotations") == "created":
            del meta["annotations"]
    return obj, warnings


# --- planning --------------------------------------------------------------------------------

def covers(current, wanted):
    """Whether current holds everything in wanted (the API server may add defaults to what we add)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(k in current and covers(current[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(current, list) and len(current) == len(wanted) and all(
            covers(c, w) for c, w in zip(current, wanted))
    return current == wanted


def plan(obj, spec):
    """What to do with obj for spec (validated): a dict with original (obj without any shim),
    desired (what obj should become), record (new; None for absent), previous (the record obj
    carries, or None), changed, and warnings."""
    previous = read_record(obj)
    original, warnings = reverse(obj, previous)
    if spec["state"] == "absent":
        return dict(original=original, desired=original, record=None, previous=previous,
                    changed=previous is not None, warnings=warnings)
    desired, record, more = patch(original, spec)
    changed = previous != record or not covers(obj, desired)
    return dict(original=original, desired=desired, record=record, previous=previous, changed=changed,
                warnings=warnings + more)


def templates_of(obj, record):
    """{label: pod template} of the templates a record touches (for diffs)."""
    out = {}
    for template in (record or {}).get("templates") or []:
        out[format_path(template["path"])] = copy.deepcopy(get_path(obj, template["path"]))
    return out


# --- rollouts --------------------------------------------------------------------------------

ROLLOUT_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def rollout_blocker(kind, obj):
    """Why waiting for this object's rollout would never end (paused, OnDelete), or None."""
    spec = obj.get("spec") or {}
    if kind == "Deployment" and spec.get("paused"):
        return "%s is paused: its pods are not replaced until it is resumed" % describe(obj)
    if kind in ("StatefulSet", "DaemonSet") and (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
        return "%s updates its pods only when they are deleted (updateStrategy OnDelete)" % describe(obj)
    return None


def rollout_complete(kind, obj):
    """Whether the controller has rolled the current pod template out to every replica."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if (status.get("observedGeneration") or 0) < (meta.get("generation") or 0):
        return False
    if kind == "DaemonSet":
        desired = status.get("desiredNumberScheduled") or 0
        return (status.get("updatedNumberScheduled") or 0) == desired and (status.get("numberAvailable") or 0) == desired
    replicas = spec.get("replicas", 1)
    if kind == "StatefulSet":
        partition = ((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition") or 0
        if (status.get("updatedReplicas") or 0) < max(0, replicas - partition):
            return False
        if not partition and status.get("currentRevision") != status.get("updateRevision"):
            return False
        return (status.get("replicas") or 0) == replicas and (status.get("availableReplicas") or 0) == replicas
    return ((status.get("updatedReplicas") or 0) == replicas and (status.get("replicas") or 0) == replicas
            and (status.get("availableReplicas") or 0) == replicas)


def template_has_shim(template):
    """Whether a pod template (as a controller copied it into a ReplicaSet) carries the shim."""
    spec = (template or {}).get("spec") or {}
    return any(e.get("name") == shim_control.ENV_ENABLED
               for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
               for e in (c.get("env") or []))


def shim_history(deployment, replica_sets):
    """Names of the Deployment's old ReplicaSets, scaled to 0, whose template carries the shim.

    Once the shim is removed the Deployment rolls back to a template without it, but the shimmed
    ReplicaSet stays in its history: `kubectl rollout undo` would bring the shim back, with a
    ConfigMap that no longer exists. Only ReplicaSets owned (as controller) by this Deployment,
    with no replicas wanted or running, are named.
    """
    uid = (deployment.get("metadata") or {}).get("uid")
    names = []
    for rs in replica_sets:
        meta, spec, status = rs.get("metadata") or {}, rs.get("spec") or {}, rs.get("status") or {}
        owned = any(ref.get("uid") == uid and ref.get("controller") for ref in meta.get("ownerReferences") or [])
        idle = not spec.get("replicas") and not status.get("replicas")
        if owned and idle and template_has_shim(spec.get("template")):
            names.append(meta.get("name"))
    return sorted(names)


def rollout_summary(kind, obj):
    status = obj.get("status") or {}
    if kind == "DaemonSet":
        return dict(desired=status.get("desiredNumberScheduled") or 0, updated=status.get("updatedNumberScheduled") or 0,
                    available=status.get("numberAvailable") or 0)
    return dict(desired=(obj.get("spec") or {}).get("replicas", 1), updated=status.get("updatedReplicas") or 0,
                available=status.get("availableReplicas") or 0)
