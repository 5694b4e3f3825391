#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: workload_check
short_description: Check that a GPU workload serves (or fails) with real requests, waiting by watching its pods
version_added: 0.1.0
description:
  - Checks a GPU workload the way its users see it, for the three points of a fault drill - a
    baseline before the fault (I(expect=serving)), the failure once the fault is injected
    (I(expect=failing)), and the recovery on healthy nodes afterwards (I(expect=serving) with
    I(exclude_nodes)).
  - The workload's pods are those its C(spec.selector) chooses (or a I(label_selector)). Each one
    that counts is sent a real request on its pod IP - by default a small OpenAI completion - and
    must answer as expected; or one fixed I(probe.url), e.g. an ingress, is asked instead.
  - Waiting is event-driven - the pods are listed and then watched from that list's
    resourceVersion (listed again when the watch expires); every pod change starts a probe round at
    once, and rounds repeat every I(interval) seconds in between. The module returns as soon as the
    expectation holds, with the time it took.
  - Never changes anything in the cluster. The probe requests are reads of the workload (a
    completion of a few tokens for an inference endpoint).
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Runs exactly as without check mode - it only reads the cluster and sends the probe
      requests, which read from the workload.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
    details: Nothing is changed, so there is no diff.
options:
  kind:
    description:
      - The kind of the workload named by I(name).
      - Its pods are those matching its C(spec.selector) (C(matchLabels) and C(matchExpressions)).
    type: str
    choices: [Deployment, StatefulSet, DaemonSet, ReplicaSet, Job]
    default: Deployment
  api_version:
    description:
      - The workload's API version; default C(apps/v1), or C(batch/v1) for a Job.
    type: str
  name:
    description:
      - The workload's name. Give exactly one of I(name) and I(label_selector).
    type: str
  label_selector:
    description:
      - Instead of a workload, check the pods in I(namespace) that this label selector chooses,
        e.g. C(app.kubernetes.io/name=vllm).
    type: str
  namespace:
    description:
      - The namespace of the workload or pods.
    type: str
    required: true
  expect:
    description:
      - C(serving) - at least I(min_pods) pods are Running and Ready, and every such pod answers the
        probe as expected (with I(probe.url), the URL answers as expected). With I(nodes) only pods
        on those nodes count; with I(exclude_nodes), pods on those nodes do not count and none may
        remain there.
      - C(failing) - among the pods in scope when the module starts (those on I(nodes), or all), I(failing_pods)
        have failed since - the probe failed (connection error, timeout, unexpected status,
        invalid body), a container restarted (its C(restartCount) grew), the pod stopped being
        Running and Ready, or it is being deleted or gone. A failure is remembered, so a pod that
        failed and came back still counts. With I(probe.url), the URL stops answering as expected.
    type: str
    choices: [serving, failing]
    default: serving
  min_pods:
    description:
      - I(expect=serving) - how many pods must be Running, Ready and answering.
      - Default is the workload's desired replicas (C(spec.replicas), a DaemonSet's
        C(status.desiredNumberScheduled), a Job's C(spec.parallelism) capped by the completions
        left); C(1) with I(label_selector) or I(nodes).
    type: int
  failing_pods:
    description:
      - I(expect=failing) - whether C(any) pod in scope must fail, or C(all) of them.
    type: str
    choices: [any, all]
    default: any
  nodes:
    description:
      - Only pods on these nodes count, e.g. the node the fault was injected into.
      - Not with I(probe.url), which cannot tell pods apart.
    type: list
    elements: str
  exclude_nodes:
    description:
      - I(expect=serving) - pods on these nodes do not count, and no live pod (one that is not being
        deleted and has not ended) may remain on them - the drill's "the workload has moved to
        healthy nodes".
    type: list
    elements: str
  template_current:
    description:
      - Only count pods of the workload's newest pod template - for a Deployment, those whose
        C(pod-template-hash) is the one of its newest ReplicaSet; for a StatefulSet, those whose
        C(controller-revision-hash) is its C(status.updateRevision). During a rollout both old and
        new pods exist; by default all that are not being deleted count.
      - When a pod of an unknown template appears (a new rollout), the workload is read again.
    type: bool
    default: false
  probe:
    description:
      - What each counted pod (or I(probe.url)) must answer.
    type: dict
    default: {}
    suboptions:
      type:
        description:
          - C(openai) - POST a JSON body with C(model), C(prompt) and C(max_tokens) 4 to I(path) and expect HTTP 200
            with a JSON body holding a non-empty C(choices) list. For a I(path) ending in
            C(/chat/completions) the prompt is sent as C(messages). The model is I(model), or the
            first C(id) that C(GET) I(models_path) lists (looked up once per pod).
          - C(http) - send I(method) to I(path) (with I(body)) and expect a status in
            I(expected_status) and, when given, a body matching I(expected_body_regex).
          - C(none) - no request; Running and Ready is enough (and a failure is a restart, a pod
            that is no longer Ready, or one that is gone).
        type: str
        choices: [openai, http, none]
        default: openai
      port:
        description:
          - The pod port - a number, or the name of a container port.
          - Default is the first C(containerPort) of the pod's first container.
        type: raw
      scheme:
        description: C(http) or C(https).
        type: str
        choices: [http, https]
        default: http
      path:
        description:
          - The request path; default C(/v1/completions) for C(openai), C(/) for C(http).
        type: str
      method:
        description: The HTTP method for I(type=http); default C(GET).
        type: str
      body:
        description:
          - The request body for I(type=http); a dict or list is sent as JSON.
        type: raw
      headers:
        description:
          - Request headers, e.g. C(Host) for an ingress.
          - They are shown in logs like any option; give a secret as I(api_key).
        type: dict
      api_key:
        description:
          - Sent as a bearer token in the C(Authorization) header, as OpenAI-compatible servers expect
            it (e.g. vLLM started with C(--api-key)). Kept out of logs.
        type: str
      expected_status:
        description: The statuses that pass for I(type=http); default C([200]).
        type: list
        elements: int
      expected_body_regex:
        description: I(type=http) - a regular expression the body (its first 64 KiB) must match.
        type: str
      model:
        description: I(type=openai) - the model name to send.
        type: str
      prompt:
        description: I(type=openai) - the prompt; default C(ping).
        type: str
      models_path:
        description: I(type=openai) - where the model list is read when I(model) is not given; default C(/v1/models).
        type: str
      timeout:
        description: Seconds each request may take before it counts as failed.
        type: float
        default: 5
      validate_certs:
        description: Whether to verify the server's TLS certificate (I(scheme=https) or an https I(url)).
        type: bool
        default: true
      url:
        description:
          - A fixed base URL, e.g. an ingress or a Service's address, asked instead of each pod's
            C(podIP:port); I(path) is added to it.
          - Per-pod verdicts are then impossible - C(serving) means the URL answers as expected and
            enough pods are Running and Ready; C(failing) means the URL stopped answering as
            expected.
        type: str
      use_proxy:
        description:
          - Whether requests to I(url) go through the proxy named by the C(https_proxy),
            C(http_proxy) and C(no_proxy) environment variables.
          - Requests to pod IPs never do - a proxy outside the cluster network cannot reach them.
        type: bool
        default: true
  wait_timeout:
    description:
      - Seconds to wait for the expectation before failing.
      - C(0) looks once - one list, one probe round - and fails if the expectation does not hold.
      - A round that started before the deadline is finished, so the module may take up to
        I(probe.timeout) longer.
    type: int
    default: 120
  interval:
    description:
      - Seconds between the end of one probe round and the start of the next while waiting; a pod
        change starts a round at once.
    type: float
    default: 0.25
notes:
  - Needs C(get) on the workload (and C(list) on ReplicaSets for I(template_current) with a
    Deployment), C(list) and C(watch) on C(pods) in I(namespace), and network access from the
    controller to the pod IPs (or to I(probe.url)).
  - Redirects are followed only to the same scheme, host and port; at most 64 KiB of any response is read.
  - On timeout the module fails with what it expected and each pod's last verdict, and returns the
    same values as on success.
seealso:
  - module: gpu_resilience.fault_injection.gpu_xid_inject
  - module: gpu_resilience.fault_injection.wait_node_cordon
  - module: gpu_resilience.fault_injection.cuda_shim_patch
"""

EXAMPLES = r"""
- name: Baseline - every replica of the inference server answers a completion
  gpu_resilience.fault_injection.workload_check:
    name: vllm
    namespace: inference
    expect: serving
    probe:
      port: http

- name: Inject XID 79 into GPU 2 of gpu-node-1
  gpu_resilience.fault_injection.gpu_xid_inject:
    node: gpu-node-1
    gpu: "2"
    xid: 79
    shim: arm

- name: The replica on gpu-node-1 fails
  gpu_resilience.fault_injection.workload_check:
    name: vllm
    namespace: inference
    expect: failing
    nodes: [gpu-node-1]
    wait_timeout: 60
  register: broken

- name: Recovered - enough replicas serve again, none left on the faulty node
  gpu_resilience.fault_injection.workload_check:
    name: vllm
    namespace: inference
    expect: serving
    exclude_nodes: [gpu-node-1]
    template_current: true
    wait_timeout: 600
  register: recovered

- name: How long recovery took
  ansible.builtin.debug:
    msg: "serving again {{ recovered.elapsed }} s after the check started ({{ recovered.counted | join(', ') }})"

- name: A training job's health endpoint on every worker, through plain HTTP
  gpu_resilience.fault_injection.workload_check:
    kind: Job
    name: llama-finetune
    namespace: training
    probe:
      type: http
      port: 8080
      path: /healthz
      expected_status: [200, 204]

- name: Through the ingress, with an API key, without waiting
  gpu_resilience.fault_injection.workload_check:
    label_selector: app.kubernetes.io/name=triton
    namespace: inference
    min_pods: 2
    wait_timeout: 0
    probe:
      url: https://llm.example.com
      path: /v1/chat/completions
      model: llama-3-8b
      api_key: "{{ llm_api_key }}"
"""

RETURN = r"""
waited_seconds:
  description:
    - Seconds the module spent blocked on watches, waiting for the cluster to reach the state it
      waits for (the rest of its run time is its own work); C(bench/drill.py) uses it to tell a
      drill's own overhead from the time the cluster took.
  returned: always
  type: float
  sample: 0.82
satisfied:
  description: Whether the expectation held (always true when the module succeeds).
  returned: always
  type: bool
  sample: true
expect:
  description: The expectation checked.
  returned: always
  type: str
  sample: serving
summary:
  description: The last verdict in words.
  returned: always
  type: str
  sample: 2 of the 2 pod(s) needed are Running and Ready; 2 of them answer
workload:
  description: The workload checked, its pod selector, desired replicas and newest pod template.
  returned: always
  type: dict
  sample:
    kind: Deployment
    api_version: apps/v1
    name: vllm
    namespace: inference
    selector: app=vllm
    desired: 2
    template_hash: 7c9d8b6f5d
min_pods:
  description: I(expect=serving) - the pods needed (I(min_pods) or its default); I(expect=failing) - how many tracked pods had to fail.
  returned: always
  type: int
  sample: 2
pods:
  description:
    - Every pod of the workload the module saw, by name (pods deleted while waiting are kept only for
      I(expect=failing)).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The pod.
      type: str
    node:
      description: Its node.
      type: str
    ip:
      description: Its pod IP.
      type: str
    phase:
      description: C(status.phase).
      type: str
    ready:
      description: Running with the C(Ready) condition true.
      type: bool
    restarts:
      description: The sum of its containers' C(restartCount).
      type: int
    template_hash:
      description: Its C(pod-template-hash) (or C(controller-revision-hash)) label.
      type: str
    terminating:
      description: Whether it is being deleted.
      type: bool
    gone:
      description: Whether it was deleted while the module watched.
      type: bool
    verdict:
      description: Its state for the expectation, in words.
      type: str
    failed:
      description: I(expect=failing) - the first failure seen (C(reason), and C(at) seconds since the module started), or null.
      type: dict
    model:
      description: The OpenAI model the probe used (looked up or given).
      type: str
    probe:
      description:
        - Its last probe - C(ok), C(status) (the HTTP status, null without a response), C(elapsed)
          (seconds, both requests when the model was looked up), C(error), C(excerpt) (the first 200
          characters of the body), C(url), and C(at) (seconds since the module started).
        - Null when it was never probed (not Ready, or I(probe.type=none)).
      type: dict
  sample:
    - name: vllm-7c9d8b6f5d-x2k4p
      node: gpu-node-0
      ip: 127.128.1.17
      phase: Running
      ready: true
      restarts: 0
      template_hash: 7c9d8b6f5d
      terminating: false
      gone: false
      verdict: "serving: answers (HTTP 200 in 0.031 s)"
      failed: null
      model: llama-3-8b
      probe: {ok: true, status: 200, elapsed: 0.031, error: null, excerpt: '{"id":"cmpl-1","choices":[{"text":" pong"}]}',
              url: "http://127.128.1.17:8000/v1/completions", at: 0.052}
counted:
  description: I(expect=serving) - the pods that counted (Running, Ready and answering); I(expect=failing) - the pods in scope at the start.
  returned: always
  type: list
  elements: str
  sample: [vllm-7c9d8b6f5d-x2k4p, vllm-7c9d8b6f5d-q8r2m]
failing:
  description: I(expect=serving) - Ready pods whose probe failed; I(expect=failing) - the pods that failed.
  returned: always
  type: list
  elements: str
  sample: []
url_probe:
  description: The last probe of I(probe.url) (as a pod's C(probe)); null without I(probe.url).
  returned: always
  type: dict
  sample: null
started:
  description: When the module started (UTC).
  returned: always
  type: str
  sample: "2026-11-22T18:20:01.000123Z"
finished:
  description: When the expectation held, or the module gave up (UTC).
  returned: always
  type: str
  sample: "2026-11-22T18:20:03.412301Z"
finished_at:
  description: The same as I(finished), under a name that M(ansible.builtin.async_status) leaves alone (it sets its
    own C(finished)) when the module runs in the background.
  returned: always
  type: str
  sample: "2026-11-22T18:20:03.412301Z"
elapsed:
  description: Seconds from the start to I(finished).
  returned: always
  type: float
  sample: 2.412
rounds:
  description: How many probe rounds ran.
  returned: always
  type: int
  sample: 9
"""

import concurrent.futures
import queue
import time

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import kube
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import workload_probe as wp
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError

MAX_PROBES = 16         # requests in flight at once


def argument_spec():
    return dict(
        kind=dict(type="str", choices=list(wp.KIND_API_VERSIONS), default="Deployment"),
        api_version=dict(type="str"),
        name=dict(type="str"),
        label_selector=dict(type="str"),
        namespace=dict(type="str", required=True),
        expect=dict(type="str", choices=list(wp.EXPECTS), default="serving"),
        min_pods=dict(type="int"),
        failing_pods=dict(type="str", choices=list(wp.FAILING_PODS), default="any"),
        nodes=dict(type="list", elements="str"),
        exclude_nodes=dict(type="list", elements="str"),
        template_current=dict(type="bool", default=False),
        probe=dict(type="dict", default={}, apply_defaults=True, options=dict(
            type=dict(type="str", choices=list(wp.PROBE_TYPES), default="openai"),
            port=dict(type="raw"),
            scheme=dict(type="str", choices=list(wp.SCHEMES), default="http"),
            path=dict(type="str"),
            method=dict(type="str"),
            body=dict(type="raw"),
            headers=dict(type="dict"),
            api_key=dict(type="str", no_log=True),
            expected_status=dict(type="list", elements="int"),
            expected_body_regex=dict(type="str"),
            model=dict(type="str"),
            prompt=dict(type="str"),
            models_path=dict(type="str"),
            timeout=dict(type="float", default=5),
            validate_certs=dict(type="bool", default=True),
            url=dict(type="str"),
            use_proxy=dict(type="bool", default=True),
        )),
        wait_timeout=dict(type="int", default=120),
        interval=dict(type="float", default=0.25),
    )


class CheckFailed(Exception):
    """The expectation did not hold in time; the message says what was expected and each pod's verdict."""

    def __init__(self, message, result):
        super(CheckFailed, self).__init__(message)
        self.result = result


class WorkloadCheck:
    def __init__(self, module, started, started_wall):
        self.module = module
        self.params = module.params
        self.started = started
        self.started_wall = started_wall
        self.namespace = self.params["namespace"]
        self.probe = wp.normalize_probe(self.params["probe"])
        self.use_proxy = self.params["probe"].get("use_proxy") is not False
        self.kind = self.params["kind"]
        self.name = self.params["name"]
        self.api_version = self.params["api_version"] or wp.default_api_version(self.kind)
        self.workload_obj = None
        self.selector = self.params["label_selector"]
        self.desired = None
        self.tracker = None
        self.rounds = 0
        self.events = queue.Queue()
        self.k8s = None
        self.pods_res = None
        self.workload_res = None
        self.pool = None
        self.finished_wall = None
        self.finished = None

    # --- workload -----------------------------------------------------------------------------

    def describe(self):
        if self.name:
            return "%s %s/%s" % (self.kind, self.namespace, self.name)
        return "the pods matching %r in namespace %s" % (self.selector, self.namespace)

    def namespace_missing(self):
        """True when the namespace does not exist; False when it does or cannot be read."""
        try:
            namespaces = kube.resource(self.k8s, "v1", "Namespace")
            return kube.get(self.k8s, namespaces, self.namespace) is None
        except KubeError:
            return False

    def read_workload(self):
        obj = kube.get(self.k8s, self.workload_res, self.name, self.namespace)
        if obj is None:
            if self.namespace_missing():
                raise KubeError("namespace %s does not exist (looking for %s %s)" % (
                    self.namespace, self.kind, self.name))
            raise KubeError("%s not found: check kind, name and namespace (api_version %s)" % (
                self.describe(), self.api_version))
        return obj

    def resolve(self):
        self.k8s = kube.client(self.module)
        self.pods_res = kube.resource(self.k8s, "v1", "Pod")
        if self.name:
            self.workload_res = kube.resource(self.k8s, self.api_version, self.kind)
            self.workload_obj = self.read_workload()
            self.selector = wp.selector_string((self.workload_obj.get("spec") or {}).get("selector"), self.describe())
            self.desired = wp.desired_replicas(self.kind, self.workload_obj)
        elif self.namespace_missing():
            raise KubeError("namespace %s does not exist" % self.namespace)
        params = self.params
        if params["expect"] == "serving" and params["min_pods"] is None and self.name and not params["nodes"]:
            if self.desired < 1:
                raise KubeError("%s wants %d pods, so nothing can serve; scale it up, or set min_pods" % (
                    self.describe(), self.desired))
            min_pods = self.desired
        else:
            min_pods = params["min_pods"] or 1
        self.tracker = wp.PodTracker(dict(
            expect=params["expect"], nodes=params["nodes"], exclude_nodes=params["exclude_nodes"],
            min_pods=min_pods, failing_pods=params["failing_pods"], template_current=params["template_current"],
            probe=self.probe))
        if params["template_current"]:
            self.refresh_template(first=True)

    def refresh_template(self, first=False):
        """Which pod template is the newest; read again when a pod of an unknown template shows up."""
        if not first:
            self.workload_obj = self.read_workload()
        if self.kind == "Deployment":
            replicasets = kube.resource(self.k8s, "apps/v1", "ReplicaSet")
            items, _version = kube.list_objects(self.k8s, replicasets, self.namespace, self.selector)
            current, known = wp.deployment_template(self.workload_obj, items)
        else:
            current, known = wp.statefulset_template(self.workload_obj)
        # Hashes just looked up stay known even if the workload does not own them, so a stray pod
        # matching the selector does not make every round read the workload again.
        self.tracker.set_template(current, set(known) | self.tracker.unknown_hashes())

    # --- pods ---------------------------------------------------------------------------------

    def at(self):
        return time.monotonic() - self.started

    def apply(self, item):
        """One event of the pod watch (kube.WatchThread)."""
        kind, payload = item[1], item[2]
        if kind == "FAILED":
            raise payload
        if kind == "SYNC":
            self.tracker.relisted(payload, self.at())
        elif kind == "DELETED":
            self.tracker.remove(payload, self.at())
        else:
            self.tracker.observe(payload, self.at())

    def drain(self):
        """Apply every change that arrived; True if there was any."""
        any_change = False
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return any_change
            self.apply(item)
            any_change = True

    def probe_round(self):
        """Probe every pod that counts (and probe.url) at once; record the verdicts."""
        self.rounds += 1
        jobs = {}
        if self.tracker.wants_url_probe():
            jobs[self.pool.submit(wp.probe_target, self.probe, self.probe["url"], self.tracker.url_model,
                                  self.use_proxy)] = None
        for entry in self.tracker.targets():
            port = wp.resolve_port(entry, self.probe["port"])
            base = wp.base_url(self.probe["scheme"], entry["ip"], port)
            jobs[self.pool.submit(wp.probe_target, self.probe, base, entry["model"], False)] = entry["uid"]
        for future in concurrent.futures.as_completed(jobs):
            result, model = future.result()
            uid = jobs[future]
            if uid is None:
                self.tracker.record_url_probe(result, self.at(), model)
            else:
                self.tracker.record_probe(uid, result, self.at(), model)

    def has_probes(self):
        return bool(self.tracker.wants_url_probe() or self.tracker.targets())

    # --- the check ----------------------------------------------------------------------------

    def run(self):
        self.resolve()
        items, version = kube.list_objects(self.k8s, self.pods_res, self.namespace, self.selector)
        for pod in items:
            self.tracker.observe(pod, self.at())
        tracked = self.tracker.start()
        if self.params["expect"] == "failing" and not self.probe["url"] and not tracked:
            where = " on " + ", ".join(self.params["nodes"]) if self.params["nodes"] else ""
            seen = ", ".join("%s on %s" % (p["name"], p["node"]) for p in self.tracker.pod_results())
            raise KubeError("%s: no pod%s when the check started, so none can fail; run expect=failing while the "
                            "pods are there (pods seen: %s)" % (self.describe(), where, seen or "none"))
        wait_timeout = self.params["wait_timeout"]
        deadline = self.started + wait_timeout
        watch = None
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=MAX_PROBES)
        try:
            if wait_timeout > 0:
                watch = kube.WatchThread(self.k8s, self.pods_res, self.events, "pods", deadline,
                                         namespace=self.namespace, label_selector=self.selector, version=version)
                watch.start()
            while True:
                self.drain()
                if self.tracker.unknown_hashes():
                    self.refresh_template()
                self.probe_round()
                state = self.tracker.evaluate()
                if state["satisfied"]:
                    self.finish()
                    return self.result(state)
                now = time.monotonic()
                if wait_timeout == 0 or now >= deadline:
                    self.finish()
                    raise CheckFailed(self.tracker.timeout_message(self.describe(), wait_timeout), self.result(state))
                # Wait for a pod change, the next round, or the deadline - whichever comes first.
                # Without anything to probe, only a pod change can alter the verdict.
                wake = min(now + self.params["interval"], deadline) if self.has_probes() else deadline
                try:
                    with kube.Waiting():
                        item = self.events.get(timeout=max(0.0, wake - now))
                    self.apply(item)
                except queue.Empty:
                    pass
        finally:
            if watch is not None:
                watch.stop()
            self.pool.shutdown(wait=False)

    def finish(self):
        self.finished = time.monotonic()
        self.finished_wall = wp.utc()

    def result(self, state):
        workload = dict(kind=self.kind if self.name else None, api_version=self.api_version if self.name else None,
                        name=self.name, namespace=self.namespace, selector=self.selector, desired=self.desired,
                        template_hash=self.tracker.current_hash)
        url_probe = self.tracker.url_probe
        if url_probe is not None:
            url_probe = dict((k, url_probe.get(k)) for k in ("ok", "status", "elapsed", "error", "excerpt", "url", "at"))
        return dict(
            changed=False,
            satisfied=state["satisfied"],
            expect=self.params["expect"],
            summary=state["summary"],
            workload=workload,
            min_pods=state["needed"],
            pods=self.tracker.pod_results(),
            counted=state["counted"],
            failing=state["failing"],
            url_probe=url_probe,
            started=self.started_wall,
            finished=self.finished_wall,
            finished_at=self.finished_wall,
            elapsed=round(self.finished - self.started, 3),
            rounds=self.rounds,
        )


def main():
    started = time.monotonic()
    started_wall = wp.utc()
    module = kube.module(argument_spec(), supports_check_mode=True,
                         mutually_exclusive=[("name", "label_selector"), ("label_selector", "kind"),
                                             ("label_selector", "api_version")],
                         required_one_of=[("name", "label_selector")])
    problem = wp.check_params(module.params)
    if problem:
        module.fail_json(msg=problem, changed=False)
    try:
        result = WorkloadCheck(module, started, started_wall).run()
    except CheckFailed as e:
        module.fail_json(msg=str(e), **e.result)
    except (KubeError, wp.ProbeSpecError) as e:
        module.fail_json(msg=str(e), changed=False)
    module.exit_json(waited_seconds=kube.waited(), **result)


if __name__ == "__main__":
    main()
