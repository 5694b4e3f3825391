#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gpu_node_drain
short_description: Drain the GPU workloads off a Kubernetes node, retrying evictions a PodDisruptionBudget refuses
version_added: 0.1.0
description:
  - Cordons a node (unless it already is) and evicts its GPU workloads through the eviction API, so
    PodDisruptionBudgets are honoured, then waits until every evicted pod is gone from the node. It
    is the drain step of a GPU fault drill, after the node was found faulty.
  - An eviction a PodDisruptionBudget refuses (HTTP 429) is tried again, as C(kubectl drain) does,
    until the budget allows it - after 0.5 s, then doubling up to I(retry_max_interval), and at once
    whenever a budget that covers the pod changes and allows disruptions again (the module watches
    the budgets of the pods' namespaces). C(kubernetes.core.k8s_drain) fails at the first refusal.
  - Waiting is event-driven - the module watches the node's pods (field selector
    C(spec.nodeName)); a pod counts as gone when it is deleted, or when a pod of the same name with
    another uid took its place (a StatefulSet pod recreated on the node).
  - Returns, per pod, how many evictions were tried and refused, when the eviction was accepted and
    when the pod was gone.
  - DaemonSet pods and mirror (static) pods are never evicted; a pod already terminating is waited
    for, not evicted again; finished pods (phase C(Succeeded) or C(Failed)) are evicted like the
    others, which a budget always allows.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Changes nothing; returns the pods that would be evicted and whether the node would be cordoned.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The node's C(spec.unschedulable) before and after, and the pods the drain removes.
options:
  name:
    description:
      - The node to drain.
    type: str
    required: true
  cordon:
    description:
      - Set C(spec.unschedulable) on the node before evicting, so the evicted pods' replacements
        are not scheduled back onto it. A node already cordoned is left as it is.
      - With C(false), replacements may land on the node again; they are not evicted (only the pods
        on the node when the module started are).
      - The node stays cordoned when the drain fails; uncordon it when the drill is over.
    type: bool
    default: true
  pods:
    description:
      - C(gpu) - the pods with a container or init container that asks for I(gpu_resource), in
        limits or requests.
      - C(all) - every pod on the node, as C(kubectl drain); the DaemonSet and mirror pods it leaves
        alone are listed in RV(skipped_pods).
    type: str
    choices: [gpu, all]
    default: gpu
  gpu_resource:
    description:
      - The extended resource that makes a pod a GPU workload for I(pods=gpu).
    type: str
    default: nvidia.com/gpu
  label_selector:
    description:
      - Only drain the pods this label selector chooses, e.g. C(app=trainer) (in addition to I(pods)).
    type: str
  namespaces:
    description:
      - Only drain pods in these namespaces. Empty means all namespaces.
    type: list
    elements: str
    default: []
  ignore_daemonsets:
    description:
      - DaemonSet pods are never evicted (their DaemonSet would put them back at once).
      - With C(true), they are left running and listed in RV(skipped_pods); with C(false), the module
        fails if the selection holds any, as C(kubectl drain) without C(--ignore-daemonsets).
    type: bool
    default: true
  grace_period:
    description:
      - Seconds each pod gets to terminate (C(DeleteOptions.gracePeriodSeconds)); default is the
        pod's own C(terminationGracePeriodSeconds). C(0) kills at once.
    type: int
  disable_eviction:
    description:
      - Delete the pods instead of evicting them.
      - B(This bypasses PodDisruptionBudgets) - every chosen pod is deleted at once, however many
        replicas of the workload that leaves healthy; a training job or an inference service can
        lose all its replicas together. Use it only when the budgets cannot be met and losing the
        workload's availability is accepted.
    type: bool
    default: false
  retry_max_interval:
    description:
      - The longest wait, in seconds, between two attempts to evict a pod that a budget refused.
        The waits start at 0.5 s and double up to this.
      - A budget that frees up triggers a retry at once, whatever the interval.
    type: float
    default: 5
  wait:
    description:
      - Wait until every evicted pod is gone from the node.
      - With C(false), the module returns once every eviction is accepted (it still retries refused ones).
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds for the whole drain - the evictions, their retries, and the wait.
      - On timeout the module fails naming each pod still on the node and, for refused evictions,
        the budget that refuses them with its status; the node stays cordoned.
    type: int
    default: 300
notes:
  - Needs C(get) and C(patch) on C(nodes); C(list) and C(watch) on C(pods) (all namespaces, field
    selector C(spec.nodeName)); C(create) on C(pods/eviction) (C(delete) on C(pods) with
    I(disable_eviction)); C(list) and C(watch) on C(poddisruptionbudgets) in the pods' namespaces
    (in all namespaces when the pods come from more than eight).
    Without access to the budgets the module still retries on its schedule, and warns.
  - Every eviction carries the pod's uid as a precondition, so a retry never evicts a pod that was
    recreated under the same name.
  - Pods that no controller owns are evicted too (with a warning) and are not recreated.
    The data in a pod's C(emptyDir) volumes is lost with it.
  - A pod covered by more than one PodDisruptionBudget cannot be evicted (the API refuses it); the
    module fails naming the budgets.
seealso:
  - module: gpu_resilience.fault_injection.wait_node_cordon
  - module: kubernetes.core.k8s_drain
  - name: Safely drain a node
    description: How kubectl drain and the eviction API respect PodDisruptionBudgets.
    link: https://kubernetes.io/docs/tasks/administer-cluster/safely-drain-node/
"""

EXAMPLES = r"""
- name: Drain the GPU workloads off the faulty node
  gpu_resilience.fault_injection.gpu_node_drain:
    name: gpu-node-1
    wait_timeout: 600
  register: drain

- name: How long each pod took to leave
  ansible.builtin.debug:
    msg: "{{ item.namespace }}/{{ item.name }}: {{ item.refusals }} refusal(s), gone after {{ item.gone_after }} s"
  loop: "{{ drain.pods }}"

- name: Drain everything but DaemonSets (as kubectl drain --ignore-daemonsets), 30 s grace
  gpu_resilience.fault_injection.gpu_node_drain:
    name: gpu-node-1
    pods: all
    grace_period: 30

- name: Only the training job's pods in one namespace
  gpu_resilience.fault_injection.gpu_node_drain:
    name: gpu-node-1
    namespaces: [training]
    label_selector: app.kubernetes.io/name=trainer

- name: What would be evicted (changes nothing)
  gpu_resilience.fault_injection.gpu_node_drain:
    name: gpu-node-1
  check_mode: true
  diff: true
  register: plan

- name: Uncordon after the drill
  kubernetes.core.k8s_drain:
    name: gpu-node-1
    state: uncordon
"""

RETURN = r"""
waited_seconds:
  description:
    - Seconds the module spent blocked on watches, waiting for the cluster to reach the state it
      waits for (the rest of its run time is its own work); C(bench/drill.py) uses it to tell a
      drill's own overhead from the time the cluster took.
  returned: when the module waited
  type: float
  sample: 0.82
node:
  description: The node.
  returned: always
  type: str
  sample: gpu-node-1
cordoned:
  description: Whether this run cordoned the node (in check mode, whether it would); false when it
    already was cordoned or I(cordon=false).
  returned: always
  type: bool
  sample: true
pods:
  description: The pods drained (or, in check mode, that would be), by namespace and name.
  returned: always
  type: list
  elements: dict
  contains:
    namespace:
      description: The pod's namespace.
      type: str
      sample: training
    name:
      description: The pod's name.
      type: str
      sample: trainer-7d9c8b5f4-x2kqp
    uid:
      description: The pod's uid when the module started.
      type: str
      sample: 0c6a7e0c-6f3e-4a55-9d35-1a43e0f2b8a1
    owner:
      description: The pod's controller as kind/name; null for a pod no controller owns.
      type: str
      sample: ReplicaSet/trainer-7d9c8b5f4
    phase:
      description: The pod's phase when the module started.
      type: str
      sample: Running
    action:
      description: C(evict), C(delete) (I(disable_eviction)), or C(wait) (the pod was already terminating).
      type: str
      sample: evict
    attempts:
      description: Eviction (or delete) requests sent for the pod.
      type: int
      sample: 4
    refusals:
      description: How many of them were refused with HTTP 429 (a PodDisruptionBudget said no).
      type: int
      sample: 3
    budget:
      description: The PodDisruptionBudget named by the last refusal; null if none refused.
      type: str
      sample: trainer-pdb
    retried_on:
      description: What started the accepted attempt when it was a retry - C(budget) (a budget
        covering the pod allowed disruptions again) or C(backoff) (the retry schedule); null for a
        first attempt.
      type: str
      sample: budget
    evicted:
      description: When the API accepted the eviction (RFC 3339, UTC); null if it never did (the pod
        was gone first, or it was already terminating).
      type: str
      sample: "2026-11-22T18:21:02.118934Z"
    evicted_after:
      description: Seconds from the module's start to the accepted eviction.
      type: float
      sample: 3.52
    gone:
      description: When the module saw the pod gone from the node (RFC 3339, UTC); null if it did not
        (I(wait=false), or timeout).
      type: str
      sample: "2026-11-22T18:21:32.402117Z"
    gone_after:
      description: Seconds from the module's start until the pod was gone.
      type: float
      sample: 33.8
skipped_pods:
  description:
    - Chosen pods the drain leaves on the node (DaemonSet pods, mirror pods), with the reason.
    - Not called C(skipped) because Ansible reads a true C(skipped) in a result as a skipped task.
  returned: always
  type: list
  elements: dict
  sample:
    - namespace: gpu-operator
      name: nvidia-device-plugin-daemonset-4xk2j
      uid: 5e0f1c7e-2b0f-4a7e-9d3b-7a2f6a1d9c11
      owner: DaemonSet/nvidia-device-plugin-daemonset
      reason: "DaemonSet pod: its DaemonSet would recreate it on the node at once"
budgets:
  description: The PodDisruptionBudgets that refused an eviction, as last seen.
  returned: always
  type: list
  elements: dict
  sample:
    - namespace: training
      name: trainer-pdb
      min_available: 2
      max_unavailable: null
      current_healthy: 0
      desired_healthy: 0
      disruptions_allowed: 0
      expected_pods: 2
elapsed:
  description: Seconds the module ran.
  returned: always
  type: float
  sample: 33.9
started:
  description: When the module started (RFC 3339, UTC).
  returned: always
  type: str
  sample: "2026-11-22T18:20:58.602311Z"
finished:
  description: When the module finished (RFC 3339, UTC).
  returned: always
  type: str
  sample: "2026-11-22T18:21:32.502911Z"
"""

import time

import queue

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drain, fault_api, kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

FIELD_MANAGER = "gpu-node-drain"
# Budget watches per namespace up to this many namespaces; above it, one watch of all namespaces.
MAX_BUDGET_WATCHES = 8


def argument_spec():
    return dict(
        name=dict(type="str", required=True),
        cordon=dict(type="bool", default=True),
        pods=dict(type="str", choices=list(drain.POD_MODES), default="gpu"),
        gpu_resource=dict(type="str", default=drain.GPU_RESOURCE),
        label_selector=dict(type="str"),
        namespaces=dict(type="list", elements="str", default=[]),
        ignore_daemonsets=dict(type="bool", default=True),
        grace_period=dict(type="int"),
        disable_eviction=dict(type="bool", default=False),
        retry_max_interval=dict(type="float", default=drain.DEFAULT_MAX_INTERVAL),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=300),
    )


def check_params(params):
    """Parameter values that the argument spec cannot express."""
    if params["wait_timeout"] < 1:
        return "wait_timeout must be at least 1 second"
    if params["grace_period"] is not None and params["grace_period"] < 0:
        return "grace_period must be 0 or more seconds"
    if not params["retry_max_interval"] > 0:
        return "retry_max_interval must be more than 0 seconds"
    if not (params["gpu_resource"] or "").strip():
        return "gpu_resource must not be empty"
    if params["label_selector"] is not None and not params["label_selector"].strip():
        return "label_selector must not be empty"
    if any(not (n or "").strip() for n in params["namespaces"] or []):
        return "namespaces must not contain empty names"
    return None


class DrainFailed(Exception):
    """The drain stopped; the result so far goes with the message."""

    def __init__(self, message, result):
        super(DrainFailed, self).__init__(message)
        self.result = result


class Drainer:
    """One drain of one node: list, cordon, evict with retries, wait; the results as it goes."""

    def __init__(self, module, params, started, started_wall):
        self.module = module
        self.params = params
        self.node = params["name"]
        self.started = started            # time.monotonic() at the start
        self.started_wall = started_wall  # time.time() at the start
        self.deadline = started + params["wait_timeout"]
        self.disable_eviction = params["disable_eviction"]
        self.k8s = None
        self.nodes_res = self.pods_res = self.eviction_res = self.budgets_res = None
        self.events = queue.Queue()
        self.watchers = []
        self.records = []        # result entries, by namespace/name
        self.by_key = {}         # namespace/name -> result entry
        self.targets = {}        # namespace/name -> the pod as first listed
        self.pods = {}           # namespace/name -> the pod as last seen
        self.budgets = {}        # namespace/name -> the budget as last seen
        self.refusers = []       # namespace/name of the budgets that refused an eviction
        self.next_try = {}       # namespace/name -> time.monotonic() of its next attempt
        self.trigger = {}        # namespace/name -> what scheduled its next attempt
        self.skipped = []
        self.unschedulable_before = False
        self.cordoned = False
        self.budget_watch_warned = False

    # --- API ----------------------------------------------------------------------------------

    def connect(self):
        self.k8s = kube.client(self.module)
        self.nodes_res = kube.resource(self.k8s, "v1", "Node")
        self.pods_res = kube.resource(self.k8s, "v1", "Pod")
        if not self.disable_eviction:
            self.eviction_res = (getattr(self.pods_res, "subresources", None) or {}).get("eviction")
            if self.eviction_res is None:
                raise KubeError("the cluster does not serve the pods/eviction subresource; "
                                "set disable_eviction: true to delete the pods instead")
            try:
                self.budgets_res = kube.resource(self.k8s, "policy/v1", "PodDisruptionBudget")
            except KubeError as e:
                self.module.warn("%s: refused evictions are retried on the backoff schedule only" % e)

    def read_node(self):
        node = kube.get(self.k8s, self.nodes_res, self.node)
        if node is None:
            raise KubeError("node %s not found; check the name with `kubectl get nodes`" % self.node)
        return node

    def list_pods(self):
        try:
            result = self.k8s.get(self.pods_res, field_selector="spec.nodeName=" + self.node,
                                  label_selector=self.params["label_selector"]).to_dict()
        except kube.DynamicApiError as e:
            raise KubeError("listing the pods on node %s failed: %s (the module needs list and watch on pods in "
                            "all namespaces)" % (self.node, kube.describe(e)))
        return result.get("items") or [], result["metadata"].get("resourceVersion")

    def cordon(self):
        try:
            self.k8s.client.patch(self.nodes_res, body={"spec": {"unschedulable": True}}, name=self.node,
                                  content_type="application/merge-patch+json", field_manager=FIELD_MANAGER)
        except kube.DynamicApiError as e:
            raise KubeError("cordoning node %s failed: %s (the module needs patch on nodes; or set cordon: false)"
                            % (self.node, kube.describe(e)))
        self.cordoned = True

    def watch(self, res, source, **kwargs):
        watcher = kube.WatchThread(self.k8s, res, self.events, source, self.deadline, **kwargs)
        self.watchers.append(watcher)
        watcher.start()

    def stop_watching(self):
        for watcher in self.watchers:
            watcher.stop()

    def budgets_covering(self, pod):
        """The names of the budgets that select pod, read afresh (only on the multiple-budgets failure)."""
        if self.budgets_res is None:
            return []
        try:
            items, dummy = kube.list_objects(self.k8s, self.budgets_res, pod["metadata"]["namespace"])
        except KubeError:
            return []
        return drain.budgets_for(pod, items)

    # --- the drain ----------------------------------------------------------------------------

    def run(self):
        self.connect()
        node = self.read_node()
        self.unschedulable_before = bool((node.get("spec") or {}).get("unschedulable"))
        will_cordon = self.params["cordon"] and not self.unschedulable_before
        items, version = self.list_pods()
        try:
            targets, self.skipped = drain.select(items, self.params["pods"], self.params["gpu_resource"],
                                                 self.params["namespaces"], self.params["ignore_daemonsets"])
        except drain.DrainError as e:
            raise KubeError("cannot drain node %s: %s" % (self.node, e))
        for pod in targets:
            key = drain.pod_key(pod)
            record = drain.pod_record(pod, self.disable_eviction)
            self.records.append(record)
            self.by_key[key] = record
            self.targets[key] = self.pods[key] = pod
        bare = drain.unmanaged(p for p in targets if not drain.is_terminating(p))
        if bare:
            self.module.warn("no controller owns pod(s) %s on node %s: once evicted they are not recreated"
                             % (", ".join(bare), self.node))
        if self.module.check_mode:
            self.cordoned = will_cordon
            return self.result(changed=will_cordon or any(r["action"] != drain.WAIT for r in self.records))
        if will_cordon:
            self.cordon()
        try:
            self.drain(version)
        except KubeError as e:
            raise DrainFailed(str(e), self.result())
        finally:
            self.stop_watching()
        return self.result()

    def drain(self, version):
        if not self.records:
            return
        work = [r for r in self.records if r["action"] != drain.WAIT]
        if self.params["wait"]:
            # From the list's version: no pod can leave unseen between the list and the watch.
            # No label selector here: a pod whose labels change must not look gone while still on the node.
            self.watch(self.pods_res, "pods", field_selector="spec.nodeName=" + self.node, version=version)
        if work and self.budgets_res is not None:
            namespaces = sorted(set(r["namespace"] for r in work))
            if len(namespaces) > MAX_BUDGET_WATCHES:
                # A node with pods from many namespaces: one cluster-wide watch instead of a thread each.
                self.watch(self.budgets_res, "budgets/")
            else:
                for namespace in namespaces:
                    self.watch(self.budgets_res, "budgets/" + namespace, namespace=namespace)
        for record in work:
            self.next_try[self.key(record)] = self.started
        while True:
            self.take_events(None)
            for record in work:
                if self.due(record):
                    self.attempt(record)
            if not drain.pending(self.records, self.params["wait"]):
                return
            now = time.monotonic()
            if now >= self.deadline:
                raise KubeError(self.timeout_message())
            wake = min([self.next_try[self.key(r)] for r in work if self.waiting_to_evict(r)] + [self.deadline])
            self.take_events(max(0.0, wake - now))

    @staticmethod
    def key(record):
        return "%s/%s" % (record["namespace"], record["name"])

    @staticmethod
    def waiting_to_evict(record):
        return record["evicted"] is None and record["gone"] is None

    def due(self, record):
        return self.waiting_to_evict(record) and self.next_try[self.key(record)] <= time.monotonic()

    def attempt(self, record):
        key = self.key(record)
        pod = self.targets[key]
        trigger = self.trigger.pop(key, None)
        record["attempts"] += 1
        grace = self.params["grace_period"]
        verb = "deleting" if self.disable_eviction else "evicting"
        try:
            if self.disable_eviction:
                self.k8s.client.delete(self.pods_res, name=record["name"], namespace=record["namespace"],
                                       body=drain.delete_options(pod, grace))
            else:
                self.eviction_res.create(body=drain.eviction_body(pod, grace), name=record["name"],
                                         namespace=record["namespace"])
        except kube.DynamicApiError as e:
            self.refused(record, pod, e)
            return
        except kube.TransportError as e:
            raise KubeError("%s pod %s failed: cannot reach the API server: %s" % (verb, key, e))
        record["evicted"] = drain.utc(time.time())
        record["evicted_after"] = round(time.monotonic() - self.started, 3)
        record["retried_on"] = trigger

    def refused(self, record, pod, error):
        key = self.key(record)
        now = time.monotonic()
        status = getattr(error, "status", None)
        if status == 404:   # gone already (its controller or someone else deleted it)
            self.mark_gone(record, now, time.time())
            return
        if status == 409:
            # The uid precondition failed: a pod of the same name replaced ours, which is gone. Read it
            # to be sure this is not some other conflict; if it is, try again on the schedule.
            current = kube.get(self.k8s, self.pods_res, record["name"], record["namespace"])
            if current is None or current["metadata"].get("uid") != record["uid"]:
                self.mark_gone(record, now, time.time())
                return
            self.next_try[key] = now + drain.retry_delay(max(1, record["refusals"]), self.params["retry_max_interval"])
            self.trigger[key] = "backoff"
            return
        if status == 429:
            record["refusals"] += 1
            budget = drain.refusing_budget(getattr(error, "body", None))
            if budget:
                record["budget"] = budget
                name = "%s/%s" % (record["namespace"], budget)
                if name not in self.refusers:
                    self.refusers.append(name)
            self.next_try[key] = now + drain.retry_delay(record["refusals"], self.params["retry_max_interval"])
            self.trigger[key] = "backoff"
            return
        if status == 500 and drain.is_multiple_budgets(getattr(error, "body", None)):
            raise KubeError(drain.multiple_budgets_message(pod, self.budgets_covering(pod)))
        hint = ""
        if status in (401, 403):
            hint = " (the module needs %s)" % ("delete on pods" if self.disable_eviction else "create on pods/eviction")
        verb = "deleting" if self.disable_eviction else "evicting"
        raise KubeError("%s pod %s failed: %s%s" % (verb, key, kube.describe(error), hint))

    def mark_gone(self, record, mono, wall):
        if record["gone"] is None:
            record["gone"] = drain.utc(wall)
            record["gone_after"] = round(mono - self.started, 3)

    # --- events -------------------------------------------------------------------------------

    def take_events(self, timeout):
        """Handle what the watches reported: block up to timeout for the first (None: do not block),
        then everything else already queued."""
        try:
            if timeout:
                with kube.Waiting():
                    item = self.events.get(timeout=timeout)
            else:
                item = self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self.handle(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def handle(self, source, kind, payload, mono, wall):
        if kind == "FAILED":
            if source == "pods":
                raise KubeError("%s; the wait for the pods to leave node %s needs list and watch on pods "
                                "(or set wait: false)" % (payload, self.node))
            if not self.budget_watch_warned:
                self.budget_watch_warned = True
                self.module.warn("%s: refused evictions are retried on the backoff schedule only" % payload)
            return
        if source == "pods":
            self.pod_event(kind, payload, mono, wall)
        else:
            self.budget_event(source.split("/", 1)[1], kind, payload, mono)

    def pod_event(self, kind, payload, mono, wall):
        if kind == "SYNC":
            listed = dict((drain.pod_key(p), p) for p in payload)
            for record in self.records:
                current = listed.get(self.key(record))
                if current is None or current["metadata"].get("uid") != record["uid"]:
                    self.mark_gone(record, mono, wall)
                else:
                    self.pods[self.key(record)] = current
            return
        record = self.by_key.get(drain.pod_key(payload))
        if record is None:
            return
        same = payload["metadata"].get("uid") == record["uid"]
        if kind == "DELETED" or not same:
            self.mark_gone(record, mono, wall)
        else:
            self.pods[self.key(record)] = payload

    def budget_event(self, namespace, kind, payload, mono):
        if kind == "SYNC":
            for name in [n for n in self.budgets if not namespace or n.split("/", 1)[0] == namespace]:
                del self.budgets[name]
            for budget in payload:
                self.budgets[drain.pod_key(budget)] = budget
                self.budget_changed(budget, mono, deleted=False)
            return
        name = drain.pod_key(payload)
        if kind == "DELETED":
            self.budgets.pop(name, None)
        else:
            self.budgets[name] = payload
        self.budget_changed(payload, mono, deleted=kind == "DELETED")

    def budget_changed(self, budget, mono, deleted):
        """A budget that allows disruptions again (or is gone) retries the evictions it held back at once."""
        if not deleted and not drain.budget_allows(budget):
            return
        namespace, name = budget["metadata"].get("namespace"), budget["metadata"].get("name")
        for record in self.records:
            if record["namespace"] != namespace or not record["refusals"] or not self.waiting_to_evict(record):
                continue
            key = self.key(record)
            if record["budget"] == name or name in drain.budgets_for(self.targets[key], [budget]):
                if self.next_try.get(key, 0) > mono:
                    self.next_try[key] = mono
                    self.trigger[key] = "budget"

    # --- results ------------------------------------------------------------------------------

    def budget_seen(self, name):
        budget = self.budgets.get(name)
        if budget is None and self.budgets_res is not None:
            namespace, short = name.split("/", 1)
            try:
                budget = kube.get(self.k8s, self.budgets_res, short, namespace)
            except (KubeError, kube.TransportError):   # the result must not fail for want of a status
                budget = None
            if budget is not None:
                self.budgets[name] = budget
        return budget

    def timeout_message(self):
        known = {}
        for name in self.refusers:
            budget = self.budget_seen(name)
            if budget is not None:
                known[name] = budget
        return drain.timeout_message(self.node, self.params["wait_timeout"], self.records, self.params["wait"],
                                     known, self.pods)

    def result(self, changed=None):
        if changed is None:
            changed = self.cordoned or any(r["evicted"] is not None for r in self.records)
        budgets = []
        for name in self.refusers:
            budget = self.budget_seen(name)
            if budget is not None:
                budgets.append(drain.budget_summary(budget))
        finished = time.time()
        after = self.unschedulable_before or self.params["cordon"]
        return dict(
            changed=changed,
            node=self.node,
            cordoned=self.cordoned,
            pods=self.records,
            skipped_pods=self.skipped,
            budgets=budgets,
            elapsed=round(time.monotonic() - self.started, 3),
            started=drain.utc(self.started_wall),
            finished=drain.utc(finished),
            diff=drain.diff(self.node, self.unschedulable_before, after, self.records),
        )


def main():
    started = time.monotonic()
    started_wall = time.time()
    module = kube.module(argument_spec(), supports_check_mode=True)
    problem = check_params(module.params)
    if problem:
        module.fail_json(msg=problem)
    try:
        fault_api.validate_node_name(module.params["name"])
        result = Drainer(module, module.params, started, started_wall).run()
    except DrainFailed as e:
        result = e.result
        if not module._diff:
            result.pop("diff", None)
        module.fail_json(msg=str(e), **result)
    except (KubeError, fault_api.FaultSpecError) as e:
        module.fail_json(msg=str(e), changed=False)
    kube.finish(module, result)


if __name__ == "__main__":
    main()
