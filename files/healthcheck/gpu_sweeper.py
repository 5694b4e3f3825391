# -*- coding: utf-8 -*-
# Copyright: contributors to gpu_resilience.fault_injection
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU sweeper: runs a diagnostic on idle GPU nodes, one run at a time, from a CronJob.

Run as ``python3 gpu_sweeper.py --config /etc/gpu-healthcheck/sweeper.json`` in a pod whose service
account may read and patch nodes, list pods and manage Jobs in its namespace (role gpu_healthcheck).
Python 3.8+ standard library only, with kube_api.py (the node programs' shared API client) beside
it. Each run does two things and exits:

1. **Finish** the sweeps of earlier runs. A node the sweeper marked carries the annotation
   ``<prefix>sweep-state`` (JSON: job, started, whether the sweeper added the maintenance taint).
   When that node's diagnostic Job has finished (or is gone), the run writes the outcome to the
   annotation ``<prefix>sweep-result`` (JSON), removes ``sweep-state`` and removes the taint
   ``<prefix>maintenance=sweep:NoSchedule`` only if the sweeper added it. No other taint, label or
   annotation of the node is touched: the health agent's ``unhealthy`` taint and anyone else's
   marks stay. The finished Job is then deleted.
2. **Start** new sweeps. A node is picked when it matches the node selector, is Ready, is not
   cordoned, carries no taint of the suite (``<prefix>unhealthy``, someone else's
   ``<prefix>maintenance``), has allocatable GPUs, runs no pod that requests GPUs, is not already
   being swept and was not swept within ``min_interval_seconds``. The least recently swept nodes
   go first. At most ``max_nodes`` nodes are under sweep at once (sweeps still running count), so
   a run never takes more than that many nodes out of service. The run taints each picked node
   (optimistic concurrency on the node's resourceVersion, recording that it set the taint), looks
   again for GPU pods that started in the meantime (and backs off if there are any), then creates
   ONE diagnostic Job for the node: pinned to it by node affinity, tolerating the maintenance
   taint, requesting all of the node's GPUs (so that the scheduler keeps it apart from GPU
   workloads), with its own ``activeDeadlineSeconds`` and no retries.

Nothing here opens a listening socket or runs a process: the diagnostic runs in its own Job, with
the image and command of the configuration.

Layout, top-down: configuration, pure functions (idle detection, picking, taint ownership, Job and
patch bodies, outcomes), then the Kubernetes API client and the run.
"""

import argparse
import copy
import datetime
import hashlib
import json
import os
import re
import sys
import time
import urllib.parse

# kube_api.py is shipped next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kube_api import ApiError, KubeClient, MERGE_PATCH  # noqa: E402  pylint: disable=wrong-import-position

SWEEPER_NAME = "gpu-healthcheck-sweeper"
DEFAULT_PREFIX = "gpu-healthcheck.aws-samples.io/"
MAINTENANCE_VALUE = "sweep"
TAINT_EFFECT = "NoSchedule"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
MAX_MESSAGE_LEN = 1000
MAX_JOB_NAME_LEN = 63          # Job names end up in the job-name label of their pods
CONFLICT_RETRIES = 5
STATE_VERSION = 1

DEFAULTS = {
    "prefix": DEFAULT_PREFIX,
    "namespace": "",                       # empty: the pod's namespace (POD_NAMESPACE)
    "node_selector": "nvidia.com/gpu.present=true",
    "gpu_resource": "nvidia.com/gpu",
    "max_nodes": 1,
    "min_interval_seconds": 86400,
    "job": {
        "name_prefix": "gpu-sweep-",
        "image": "nvcr.io/nvidia/cloud-native/dcgm:4.2.3-1-ubuntu22.04",
        "image_pull_policy": "IfNotPresent",
        "image_pull_secrets": [],
        "command": ["dcgmi", "diag", "-r", "2"],
        "active_deadline_seconds": 1200,
        "ttl_seconds_after_finished": 604800,
        "request_all_gpus": True,
        "resources": {},
        "security_context": {},
        "tolerations": [],
        "labels": {},
        "priority_class_name": "",
    },
}

JOB_LABELS = {
    "app.kubernetes.io/name": "gpu-sweep-diagnostic",
    "app.kubernetes.io/component": "sweep-diagnostic",
    "app.kubernetes.io/part-of": "gpu-healthcheck",
    "app.kubernetes.io/managed-by": SWEEPER_NAME,
}


class ConfigError(ValueError):
    """The sweeper's configuration cannot be used as given."""


# ============================================================================================
# Logging: one JSON object per line on stdout (stderr for problems).
# ============================================================================================

def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def rfc3339(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """An RFC 3339 time from the API (``2026-11-22T18:20:18Z``, fractions allowed), or None."""
    if not isinstance(text, str) or not text:
        return None
    value = re.sub(r"\.\d+", "", text.strip()).replace("Z", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def log(event, stream=None, **fields):
    entry = {"time": rfc3339(now_utc()), "event": event}
    entry.update(fields)
    out = stream or sys.stdout
    out.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
    out.flush()


def truncate(text, limit=MAX_MESSAGE_LEN):
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ============================================================================================
# Configuration
# ============================================================================================

def load_config(raw):
    """The configuration with defaults filled in and checked; raises ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    config = copy.deepcopy(DEFAULTS)
    for key, value in raw.items():
        if key == "job":
            if not isinstance(value, dict):
                raise ConfigError("job must be an object")
            unknown = sorted(set(value) - set(DEFAULTS["job"]))
            if unknown:
                raise ConfigError("unknown job setting(s): %s" % ", ".join(unknown))
            config["job"].update(value)
        elif key in DEFAULTS:
            config[key] = value
        else:
            raise ConfigError("unknown setting %r" % key)
    prefix = config["prefix"]
    if not isinstance(prefix, str) or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/$", prefix):
        raise ConfigError("prefix must be a DNS subdomain followed by '/', got %r" % (prefix,))
    for key in ("max_nodes", "min_interval_seconds"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0:
            raise ConfigError("%s must be a non-negative integer, got %r" % (key, config[key]))
    job = config["job"]
    if not isinstance(job["command"], list) or not job["command"] \
            or not all(isinstance(arg, str) for arg in job["command"]):
        raise ConfigError("job.command must be a non-empty list of strings")
    for key in ("active_deadline_seconds", "ttl_seconds_after_finished"):
        if not isinstance(job[key], int) or isinstance(job[key], bool) or job[key] < 1:
            raise ConfigError("job.%s must be a positive integer, got %r" % (key, job[key]))
    if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-?$", job["name_prefix"] or "") or len(job["name_prefix"]) > 30:
        raise ConfigError("job.name_prefix must be a short DNS label prefix, got %r" % (job["name_prefix"],))
    if not isinstance(job["tolerations"], list) or not all(isinstance(t, dict) for t in job["tolerations"]):
        raise ConfigError("job.tolerations must be a list of tolerations")
    if not isinstance(job["image"], str) or not job["image"]:
        raise ConfigError("job.image must be set")
    return config


def marks(prefix):
    """The names of the marks the sweeper reads and writes, for one prefix."""
    return {
        "maintenance": prefix + "maintenance",
        "unhealthy": prefix + "unhealthy",
        "state": prefix + "sweep-state",
        "result": prefix + "sweep-result",
    }


# ============================================================================================
# Pure logic: taints, idle detection, picking
# ============================================================================================

def own_taint(prefix):
    """The taint the sweeper sets: ``<prefix>maintenance=sweep:NoSchedule``."""
    return {"key": marks(prefix)["maintenance"], "value": MAINTENANCE_VALUE, "effect": TAINT_EFFECT}


def _metadata(obj):
    return obj.get("metadata") or {}


def _annotations(obj):
    return _metadata(obj).get("annotations") or {}


def taints_of(node):
    return [t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, dict) and t.get("key")]


def is_maintenance_taint(taint, prefix):
    """Key, value and effect of the sweeper's taint (by whomever it was set)."""
    wanted = own_taint(prefix)
    return (taint.get("key") == wanted["key"] and (taint.get("value") or "") == wanted["value"]
            and taint.get("effect") == wanted["effect"])


def sweep_state(node, prefix):
    """The sweeper's own record on the node (annotation ``<prefix>sweep-state``), or None.

    A record that does not parse as the sweeper's JSON is not the sweeper's: it is treated as
    foreign and never acted on.
    """
    text = _annotations(node).get(marks(prefix)["state"])
    if not text:
        return None
    try:
        state = json.loads(text)
    except ValueError:
        return None
    if not isinstance(state, dict) or state.get("by") != SWEEPER_NAME or not state.get("job"):
        return None
    return state


def sweeper_owns_taint(node, prefix):
    """Whether the node's maintenance taint is the sweeper's to remove: the node carries the taint
    and the sweeper's own record says that the sweeper added it. A maintenance taint that was
    there before (an operator's, another tool's) is never the sweeper's."""
    state = sweep_state(node, prefix)
    if not state or state.get("taint_added") is not True:
        return False
    return any(is_maintenance_taint(t, prefix) for t in taints_of(node))


def taints_without_own(node, prefix):
    """The node's taints with the sweeper's maintenance taint removed, if (and only if) it owns it."""
    taints = taints_of(node)
    if not sweeper_owns_taint(node, prefix):
        return taints
    return [t for t in taints if not is_maintenance_taint(t, prefix)]


def _quantity(value):
    """An extended-resource quantity (whole numbers only for devices) as an int; 0 if unreadable."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        try:
            return int(float(str(value).strip()))
        except (TypeError, ValueError):
            return 0


def _container_gpus(container, resource):
    resources = container.get("resources") or {}
    request = (resources.get("requests") or {}).get(resource)
    limit = (resources.get("limits") or {}).get(resource)
    # For extended resources a limit alone implies an equal request.
    return _quantity(request if request is not None else limit) if (request is not None or limit is not None) else 0


def pod_gpus(pod, resource):
    """How many GPUs the pod holds while it runs: its containers (and sidecars) together, or its
    largest init container, whichever is more, as the scheduler counts it."""
    spec = pod.get("spec") or {}
    main = sum(_container_gpus(c, resource) for c in spec.get("containers") or [])
    init_max, sidecars = 0, 0
    for container in spec.get("initContainers") or []:
        gpus = _container_gpus(container, resource)
        if container.get("restartPolicy") == "Always":
            sidecars += gpus
        else:
            init_max = max(init_max, sidecars + gpus)
    return max(main + sidecars, init_max)


def pod_is_active(pod):
    """Bound to a node and not finished: Pending (starting) or Running pods hold their GPUs."""
    return bool((pod.get("spec") or {}).get("nodeName")) and \
        (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def busy_nodes(pods, resource):
    """node -> names of the active pods on it that request GPUs."""
    busy = {}
    for pod in pods:
        if pod_is_active(pod) and pod_gpus(pod, resource) > 0:
            meta = _metadata(pod)
            busy.setdefault(pod["spec"]["nodeName"], []).append(
                "%s/%s" % (meta.get("namespace", ""), meta.get("name", "")))
    return busy


def node_ready(node):
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def allocatable_gpus(node, resource):
    return _quantity(((node.get("status") or {}).get("allocatable") or {}).get(resource, 0))


def last_swept(node, prefix):
    """When the node's last sweep finished (from ``<prefix>sweep-result``), or None."""
    text = _annotations(node).get(marks(prefix)["result"])
    try:
        result = json.loads(text) if text else None
    except ValueError:
        return None
    return parse_time(result.get("finished")) if isinstance(result, dict) else None


def skip_reason(node, busy, config, now):
    """Why the node must not be swept now, or None when it may be."""
    prefix, resource = config["prefix"], config["gpu_resource"]
    name = _metadata(node).get("name", "")
    if _metadata(node).get("deletionTimestamp"):
        return "being deleted"
    if (node.get("spec") or {}).get("unschedulable") is True:
        return "cordoned"
    if not node_ready(node):
        return "not Ready"
    if marks(prefix)["state"] in _annotations(node):
        return "already being swept"
    for taint in taints_of(node):
        if taint["key"].startswith(prefix) or taint["key"] == UNSCHEDULABLE_TAINT:
            return "has taint %s" % taint["key"]
    if allocatable_gpus(node, resource) < 1:
        return "no allocatable %s" % resource
    if busy.get(name):
        return "GPU pods running: %s" % ", ".join(sorted(busy[name])[:5])
    swept = last_swept(node, prefix)
    if swept is not None and config["min_interval_seconds"] > 0:
        age = (now - swept).total_seconds()
        if age < config["min_interval_seconds"]:
            return "swept %d s ago (min_interval_seconds %d)" % (age, config["min_interval_seconds"])
    return None


def pick_nodes(nodes, pods, config, now):
    """(nodes to sweep now, {node: why skipped}, nodes still under sweep).

    Nodes under sweep count against ``max_nodes``; the least recently swept go first (never swept
    before all), then by name.
    """
    prefix = config["prefix"]
    busy = busy_nodes(pods, config["gpu_resource"])
    in_flight = sorted(_metadata(n).get("name") for n in nodes if sweep_state(n, prefix))
    skipped, candidates = {}, []
    for node in nodes:
        reason = skip_reason(node, busy, config, now)
        if reason:
            skipped[_metadata(node).get("name")] = reason
        else:
            candidates.append(node)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    candidates.sort(key=lambda n: (last_swept(n, prefix) or epoch, _metadata(n).get("name", "")))
    room = max(config["max_nodes"] - len(in_flight), 0)
    picked = candidates[:room]
    for node in candidates[room:]:
        skipped[_metadata(node).get("name")] = "over the cap of %d node(s) under sweep" % config["max_nodes"]
    return picked, skipped, in_flight


# ============================================================================================
# Pure logic: Job and patch bodies, outcomes
# ============================================================================================

def job_name(name_prefix, node, now):
    """A Job name of at most 63 characters for one sweep of one node: the prefix, a readable part
    of the node name and a hash of the node name and start time (unique per sweep)."""
    digest = hashlib.sha256(("%s@%s" % (node, rfc3339(now))).encode("utf-8")).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9-]+", "-", node.lower())
    room = MAX_JOB_NAME_LEN - len(name_prefix) - len(digest) - 1
    readable = readable[:max(room, 0)].strip("-")
    return "%s%s-%s" % (name_prefix, readable, digest) if readable else name_prefix + digest


def diag_job(config, namespace, node, gpus, name, now):
    """The diagnostic Job for one node."""
    job = config["job"]
    taint = own_taint(config["prefix"])
    resources = copy.deepcopy(job["resources"]) or {}
    if job["request_all_gpus"] and gpus > 0:
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})[config["gpu_resource"]] = str(gpus)
    labels = dict(job["labels"])
    labels.update(JOB_LABELS)
    container = {
        "name": "diagnostic",
        "image": job["image"],
        "imagePullPolicy": job["image_pull_policy"],
        "command": list(job["command"]),
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
        # The end of the diagnostic's output becomes the result's message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": resources,
    }
    if job["security_context"]:
        container["securityContext"] = copy.deepcopy(job["security_context"])
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}},
        # Its own maintenance taint, and the node's standing taints the configuration lists
        # (e.g. nvidia.com/gpu:NoSchedule on dedicated GPU node groups); never the unhealthy one.
        "tolerations": [{"key": taint["key"], "operator": "Equal", "value": taint["value"],
                         "effect": taint["effect"]}] + copy.deepcopy(job["tolerations"]),
        "containers": [container],
    }
    if job["image_pull_secrets"]:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in job["image_pull_secrets"]]
    if job["priority_class_name"]:
        pod_spec["priorityClassName"] = job["priority_class_name"]
    annotations = {config["prefix"] + "sweep-node": node, config["prefix"] + "sweep-started": rfc3339(now)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "backoffLimit": 0,                      # a failed diagnostic is a result, not a retry
            "activeDeadlineSeconds": job["active_deadline_seconds"],
            "ttlSecondsAfterFinished": job["ttl_seconds_after_finished"],
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def start_patch(node, prefix, job, now):
    """Merge patch that marks the node for a sweep: the maintenance taint (added unless present:
    then it is not the sweeper's) and the sweeper's record. The node's resourceVersion makes it
    conditional, so a node changed meanwhile is re-read, never overwritten."""
    taints = taints_of(node)
    present = any(is_maintenance_taint(t, prefix) for t in taints)
    state = {"by": SWEEPER_NAME, "version": STATE_VERSION, "job": job, "started": rfc3339(now),
             "taint_added": not present}
    new_taints = taints if present else taints + [own_taint(prefix)]
    return {"metadata": {"resourceVersion": _metadata(node).get("resourceVersion"),
                         "annotations": {marks(prefix)["state"]: json.dumps(state, sort_keys=True)}},
            "spec": {"taints": new_taints}}


def finish_patch(node, prefix, result):
    """Merge patch that ends the node's sweep: the result annotation, the sweeper's record removed,
    and the maintenance taint removed only if the sweeper's record says it added it."""
    patch = {"metadata": {"resourceVersion": _metadata(node).get("resourceVersion"),
                          "annotations": {marks(prefix)["state"]: None}}}
    if result is not None:
        patch["metadata"]["annotations"][marks(prefix)["result"]] = json.dumps(result, sort_keys=True)
    if sweeper_owns_taint(node, prefix):
        patch["spec"] = {"taints": taints_without_own(node, prefix)}
    return patch


def job_outcome(job, pods, now):
    """The result of a finished diagnostic Job, or None while it runs.

    ``{result: pass|fail, reason, message, finished}``; a Job that is gone gives ``lost``.
    """
    if job is None:
        return {"result": "lost", "reason": "JobNotFound",
                "message": "the diagnostic Job is gone (deleted, or removed by its TTL) before its result was read",
                "finished": rfc3339(now)}
    status = job.get("status") or {}
    finished = None
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            finished = ("pass", condition)
        elif condition.get("type") == "Failed":
            finished = ("fail", condition)
    if finished is None:
        return None
    result, condition = finished
    message = termination_message(pods) or condition.get("message") or ""
    return {"result": result, "reason": condition.get("reason") or ("Completed" if result == "pass" else "Failed"),
            "message": truncate(message),
            "finished": status.get("completionTime") or condition.get("lastTransitionTime") or rfc3339(now)}


def termination_message(pods):
    """The diagnostic container's termination message (the end of its output on failure)."""
    for pod in sorted(pods, key=lambda p: _metadata(p).get("creationTimestamp") or "", reverse=True):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return terminated["message"].strip()
    return ""


def sweep_result(state, outcome, command):
    """The ``<prefix>sweep-result`` annotation's content."""
    result = {"result": outcome["result"], "reason": outcome["reason"], "job": state.get("job"),
              "started": state.get("started"), "finished": outcome["finished"], "command": command,
              "by": SWEEPER_NAME}
    if outcome.get("message"):
        result["message"] = outcome["message"]
    return result


# ============================================================================================
# Kubernetes API
# ============================================================================================

class Api:
    """The calls the sweeper makes, over the node programs' shared client (kube_api.py). Tests
    replace it with a fake."""

    def __init__(self, client):
        self.client = client

    @classmethod
    def in_cluster(cls):
        return cls(KubeClient.in_cluster(SWEEPER_NAME))

    def list_nodes(self, selector):
        return self.client.list_all("/api/v1/nodes", {"labelSelector": selector} if selector else {})

    def get_node(self, name):
        return self.client.request("GET", "/api/v1/nodes/" + urllib.parse.quote(name, safe=""))

    def patch_node(self, name, patch):
        return self.client.request("PATCH", "/api/v1/nodes/" + urllib.parse.quote(name, safe=""),
                                   {"fieldManager": SWEEPER_NAME}, patch, MERGE_PATCH)

    def list_active_pods(self, node=None):
        selector = "status.phase!=Succeeded,status.phase!=Failed"
        if node:
            selector += ",spec.nodeName=" + node
        return self.client.list_all("/api/v1/pods", {"fieldSelector": selector})

    def list_job_pods(self, namespace, job):
        return self.client.list_all("/api/v1/namespaces/%s/pods" % namespace, {"labelSelector": "job-name=" + job})

    def get_job(self, namespace, name):
        try:
            return self.client.request("GET", "/apis/batch/v1/namespaces/%s/jobs/%s" % (namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create_job(self, namespace, job):
        return self.client.request("POST", "/apis/batch/v1/namespaces/%s/jobs" % namespace,
                                   {"fieldManager": SWEEPER_NAME}, job)

    def delete_job(self, namespace, name):
        try:
            self.client.request("DELETE", "/apis/batch/v1/namespaces/%s/jobs/%s" % (namespace, name), None,
                                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise


# ============================================================================================
# One run
# ============================================================================================

class Sweeper:
    """One run against the API: finish the earlier sweeps, then start new ones."""

    def __init__(self, api, config, namespace, clock=now_utc, dry_run=False):
        self.api, self.config, self.namespace = api, config, namespace
        self.prefix = config["prefix"]
        self.clock = clock
        self.dry_run = dry_run
        self.summary = {"finished": [], "started": [], "running": [], "skipped": {}, "backed_off": []}

    def run(self):
        nodes = self.api.list_nodes(self.config["node_selector"])
        for node in nodes:
            if sweep_state(node, self.prefix):
                self.finish(node)
        # Re-read the nodes: the finished ones are free again, but were swept just now.
        nodes = self.api.list_nodes(self.config["node_selector"]) if self.summary["finished"] else nodes
        picked, skipped, running = pick_nodes(nodes, self.api.list_active_pods(), self.config, self.clock())
        self.summary["running"] = running
        self.summary["skipped"] = skipped
        for node in picked:
            self.start(node)
        return self.summary

    # --- finish -------------------------------------------------------------------------------
    def finish(self, node):
        """Record the result of the node's sweep if its Job has finished; True when done."""
        name = _metadata(node)["name"]
        state = sweep_state(node, self.prefix)
        job = self.api.get_job(self.namespace, state["job"])
        pods = self.api.list_job_pods(self.namespace, state["job"]) if job else []
        outcome = job_outcome(job, pods, self.clock())
        if outcome is None:
            log("sweep-running", node=name, job=state["job"])
            return False
        result = sweep_result(state, outcome, self.config["job"]["command"])
        if self.dry_run:
            log("would-finish", node=name, result=result, removes_taint=sweeper_owns_taint(node, self.prefix))
        else:
            self._patch_with_retry(name, lambda current: finish_patch(current, self.prefix, result)
                                   if sweep_state(current, self.prefix) == state else None)
            if job is not None:
                self.api.delete_job(self.namespace, state["job"])
            log("sweep-finished", node=name, result=result)
        self.summary["finished"].append({"node": name, "result": result["result"], "job": state["job"]})
        return True

    # --- start --------------------------------------------------------------------------------
    def start(self, node):
        name = _metadata(node)["name"]
        now = self.clock()
        job_id = job_name(self.config["job"]["name_prefix"], name, now)
        gpus = allocatable_gpus(node, self.config["gpu_resource"])
        if self.dry_run:
            log("would-start", node=name, job=job_id, gpus=gpus)
            self.summary["started"].append({"node": name, "job": job_id})
            return

        def mark(current):
            busy = busy_nodes(self.api.list_active_pods(name), self.config["gpu_resource"])
            if skip_reason(current, busy, self.config, self.clock()):
                return None
            return start_patch(current, self.prefix, job_id, now)

        marked = self._patch_with_retry(name, mark)
        if marked is None:
            self.summary["backed_off"].append(name)
            log("sweep-skipped", node=name, reason="changed before it could be marked")
            return
        # A GPU pod bound between the list and the taint would share the GPUs with the diagnostic.
        late = busy_nodes(self.api.list_active_pods(name), self.config["gpu_resource"]).get(name)
        if late:
            self._undo(name, "GPU pods started meanwhile: %s" % ", ".join(late))
            return
        try:
            self.api.create_job(self.namespace, diag_job(self.config, self.namespace, name, gpus, job_id, now))
        except ApiError as e:
            self._undo(name, "creating Job %s failed: %s" % (job_id, e))
            raise
        self.summary["started"].append({"node": name, "job": job_id})
        log("sweep-started", node=name, job=job_id, gpus=gpus)

    def _undo(self, name, why):
        """Take the sweeper's marks off a node it just marked (no result recorded)."""
        self._patch_with_retry(name, lambda current: finish_patch(current, self.prefix, None)
                               if sweep_state(current, self.prefix) else None)
        self.summary["backed_off"].append(name)
        log("sweep-backed-off", node=name, reason=why)

    def _patch_with_retry(self, name, make_patch):
        """Patch the node with make_patch(current node), re-reading it on a conflict; the patched
        node, or None when make_patch decides there is nothing to do."""
        for _attempt in range(CONFLICT_RETRIES):
            current = self.api.get_node(name)
            patch = make_patch(current)
            if patch is None:
                return None
            try:
                return self.api.patch_node(name, patch)
            except ApiError as e:
                if e.status != 409:
                    raise
        raise ApiError(409, "Conflict", "node %s kept changing; gave up after %d tries" % (name, CONFLICT_RETRIES))


# ============================================================================================
# Command line
# ============================================================================================

def parse_args(argv):
    parser = argparse.ArgumentParser(description="Run a diagnostic Job on idle GPU nodes (one run).")
    parser.add_argument("--config", required=True, help="JSON configuration file (sweeper.json)")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""),
                        help="namespace of the diagnostic Jobs (default: the configuration's, else POD_NAMESPACE)")
    parser.add_argument("--dry-run", action="store_true", help="report what a run would do; change nothing")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = load_config(json.load(handle))
    except (OSError, ValueError) as e:
        log("config-error", stream=sys.stderr, error=str(e))
        return 2
    namespace = config["namespace"] or args.namespace
    if not namespace:
        log("config-error", stream=sys.stderr, error="no namespace: set it in the configuration or POD_NAMESPACE")
        return 2
    started = time.monotonic()
    try:
        summary = Sweeper(Api.in_cluster(), config, namespace, dry_run=args.dry_run).run()
    except ApiError as e:
        log("run-failed", stream=sys.stderr, error=str(e))
        return 1
    log("run-done", seconds=round(time.monotonic() - started, 2), dry_run=args.dry_run, **summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
