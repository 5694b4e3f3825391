#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cuda_shim_patch
short_description: Load the CUDA fault shim into a GPU workload's pods, arm it, or remove it exactly
version_added: 0.1.0
description:
  - Patches the pod template(s) of a workload so that its GPU containers preload the collection's CUDA
    fault shim (C(LD_PRELOAD)). A loaded shim passes every CUDA call through until it is armed; armed,
    it makes the application's CUDA calls fail with the error the XID catalog gives for an XID (for
    example XID 79 gives C(CUDA_ERROR_NO_DEVICE)), as a real GPU fault would.
  - By default the shim is built in the pod. The module creates a ConfigMap holding the shim's C source
    and its generated XID table (taken from the collection by the module's action plugin), and adds an
    init container that compiles it into an C(emptyDir) that the GPU containers mount read-only. With
    I(library_path) a library already present in the image or on the nodes is preloaded instead, and
    neither ConfigMap nor init container is added.
  - The GPU containers also mount the node's shim control directory read-only (a C(hostPath),
    C(/run/gpu-fault-injection/shim), named to the shim by C(CUDA_FAULT_CONTROL_FILE)), through which
    the node agent arms and disarms the shim at run time without a restart.
  - Containers are chosen by their C(nvidia.com/gpu) limit or request (MIG C(nvidia.com/mig-*) and
    shared C(nvidia.com/gpu.*) resources count too), unless I(containers) or I(all_containers) is given.
    An existing C(LD_PRELOAD) is kept after the shim; one taken from C(valueFrom) is kept too, through a
    helper variable the new value refers to as C($(...)).
  - Pod templates are found at C(spec.template) (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job),
    C(spec.jobTemplate.spec.template) (CronJob), C(spec.services.<service>) of a DynamoGraphDeployment
    (C(nvidia.com/v1alpha1); pod fields in C(extraPodSpec), the main container in
    C(extraPodSpec.mainContainer), its environment in the service's C(envs)), or at I(pod_template_path).
  - Every change is recorded as JSON in the workload's annotation
    C(fault-injection.gpu-resilience.io/cuda-shim), so I(state=absent) restores the pod templates
    exactly as they were, also from a later, separate run, and deletes the ConfigMap. A rerun with the
    same options changes nothing; a change of state changes only the shim's environment variables.
  - Changing a pod template makes the workload's controller replace its pods. With I(wait) the module
    waits, watching the object, until a Deployment, StatefulSet or DaemonSet has rolled out.
author:
  - GPU Resilience maintainers (@gpu-resilience)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: A server-side dry run of every change.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The pod templates before and after.
options:
  kind:
    description:
      - Kind of the workload, e.g. C(Deployment), C(StatefulSet), C(DaemonSet), C(ReplicaSet), C(Job),
        C(CronJob), C(DynamoGraphDeployment), or any kind that embeds a pod template (with I(pod_template_path)).
    type: str
    required: true
  api_version:
    description:
      - API version of the workload. Defaults to C(apps/v1), C(batch/v1) or C(nvidia.com/v1alpha1) for the
        kinds above; required for other kinds.
    type: str
  name:
    description: Name of the workload.
    type: str
    required: true
  namespace:
    description: Namespace of the workload; the ConfigMap is created there too.
    type: str
    required: true
  state:
    description:
      - C(present) and C(disarmed) load the shim disarmed (C(CUDA_FAULT_INJECTION_ENABLED=0)); every CUDA
        call passes through until the node agent arms it.
      - C(armed) loads it armed from the start (C(CUDA_FAULT_INJECTION_ENABLED=1), C(CUDA_XID_TYPE=<xid>)).
      - C(absent) undoes exactly what the recorded run added and deletes the ConfigMap. A workload that
        does not exist has nothing to restore; a leftover ConfigMap is deleted all the same.
    type: str
    choices: [present, armed, disarmed, absent]
    default: present
  xid:
    description:
      - The XID whose CUDA error the shim returns, from the collection's XID catalog. Required with
        I(state=armed); with C(present) or C(disarmed) it only presets C(CUDA_XID_TYPE), so that arming
        and disarming change only C(CUDA_FAULT_INJECTION_ENABLED).
    type: int
  containers:
    description:
      - Names of the containers to shim, instead of those that request C(nvidia.com/gpu). A
        DynamoGraphDeployment service's main container is called C(main); the names apply to every service.
    type: list
    elements: str
  all_containers:
    description: Shim every container of the pod template(s) (init containers excepted).
    type: bool
    default: false
  library_path:
    description:
      - Absolute path of a prebuilt shim library that already exists in the containers (in the image, or on
        a volume the pod mounts). No ConfigMap and no init container are added.
    type: str
  compiler_image:
    description:
      - Image of the init container that compiles the shim. It needs a C compiler (C(cc)). The init
        container runs as user 65534 without privileges or capabilities, with a read-only root file system.
      - Pin it by digest in production (C(...@sha256:...)).
    type: str
    default: docker.io/library/gcc:14.2.0
  pin_node:
    description:
      - Keep the workload's pods on this node, through node affinity on C(kubernetes.io/hostname), e.g.
        the node a fault will be injected into. Existing node affinity is kept (the node term is added to
        every required term).
    type: str
  pin_mode:
    description:
      - C(required) schedules the pods only on I(pin_node); C(preferred) prefers it (weight 100).
    type: str
    choices: [required, preferred]
    default: required
  runtime_control:
    description:
      - Mount the node's shim control directory (a C(hostPath)) so that the node agent can arm and disarm
        the shim at run time. Without it, only I(state) arms the shim (through a rollout). Namespaces
        that enforce the C(baseline) or C(restricted) pod security standard refuse C(hostPath) volumes.
    type: bool
    default: true
  pod_template_path:
    description:
      - For kinds without a known pod template, the keys leading to a pod template (an object with
        C(metadata) and C(spec.containers)), e.g. C([spec, template]) or C([spec, replicaSpecs, Worker, template]).
        Digits index lists.
    type: list
    elements: str
  wait:
    description:
      - Wait until a Deployment, StatefulSet or DaemonSet has rolled the new pod template out (for a
        Deployment, C(observedGeneration) current and C(updatedReplicas), C(replicas) and
        C(availableReplicas) equal to the desired replicas). Waiting watches the object; it does not poll.
        Other kinds are not waited for.
    type: bool
    default: true
  wait_timeout:
    description: How many seconds to wait for the rollout before failing.
    type: int
    default: 300
  prune_history:
    description:
      - With I(state=absent) on a Deployment, once the rollout has finished (I(wait)), delete the
        Deployment's old ReplicaSets that carry the shim and are scaled to 0, so its revision history is
        as before the shim and C(kubectl rollout undo) can never bring the shim back.
      - Without I(wait), or while a shimmed ReplicaSet still has pods, nothing is deleted.
    type: bool
    default: true
  shim_files:
    description:
      - Internal; set by the module's action plugin, never by a task. The shim's files for the ConfigMap
        (C(cuda_fault_shim.c) from the collection's C(files/shim) and the C(xid_table.h) generated from the
        XID catalog), keyed by file name.
    type: dict
notes:
  - The shim is armed at run time, without restarting the pods, by
    M(gpu_resilience.fault_injection.gpu_xid_inject) with C(shim=arm), through the node agent and the
    control directory this module mounts. I(state=armed) instead arms it from the start of every new pod.
  - A Job's pod template cannot change once the Job exists; apply the shim to a CronJob's job template,
    or to the Job before it is created. A ReplicaSet's change reaches only pods created after it.
  - An C(LD_PRELOAD) set through C(envFrom) is replaced while the shim is present (a warning says so).
  - Changes are written with the object's C(resourceVersion); on a conflict the object is read again and
    the change computed again (up to 5 times).
seealso:
  - module: gpu_resilience.fault_injection.gpu_xid_inject
    description: Injects the XID on the node and arms the loaded shim at run time (C(shim=arm)).
"""

EXAMPLES = r"""
- name: Load the shim, disarmed, into the GPU containers of the inference Deployment
  gpu_resilience.fault_injection.cuda_shim_patch:
    kind: Deployment
    name: llm-server
    namespace: inference

- name: Arm it from the start, with XID 79 (GPU fallen off the bus), on pods pinned to gpu-node-1
  gpu_resilience.fault_injection.cuda_shim_patch:
    kind: Deployment
    name: llm-server
    namespace: inference
    state: armed
    xid: 79
    pin_node: gpu-node-1

- name: Every worker service of a Dynamo graph, with a library baked into the image
  gpu_resilience.fault_injection.cuda_shim_patch:
    kind: DynamoGraphDeployment
    name: vllm-disagg
    namespace: dynamo
    library_path: /usr/local/lib/libcudafault.so

- name: A custom resource with its own pod template
  gpu_resilience.fault_injection.cuda_shim_patch:
    api_version: kubeflow.org/v1
    kind: PyTorchJob
    name: train-llama
    namespace: training
    pod_template_path: [spec, pytorchReplicaSpecs, Worker, template]
    containers: [pytorch]

- name: What would change, as a diff, changing nothing
  gpu_resilience.fault_injection.cuda_shim_patch:
    kind: StatefulSet
    name: trainer
    namespace: training
    state: armed
    xid: 48
  check_mode: true
  diff: true

- name: Put the workload back exactly as it was
  gpu_resilience.fault_injection.cuda_shim_patch:
    kind: Deployment
    name: llm-server
    namespace: inference
    state: absent
"""

RETURN = r"""
waited_seconds:
  description:
    - Seconds the module spent blocked on watches, waiting for the cluster to reach the state it
      waits for (the rest of its run time is its own work); C(bench/drill.py) uses it to tell a
      drill's own overhead from the time the cluster took.
  returned: when the module waited for a rollout
  type: float
  sample: 0.82
workload:
  description: The patched object.
  returned: always
  type: dict
  sample: {api_version: apps/v1, kind: Deployment, namespace: inference, name: llm-server}
config_map:
  description: The ConfigMap with the shim's source (created, kept, or with I(state=absent) deleted); null with I(library_path).
  returned: always
  type: str
  sample: cuda-fault-shim-deployment-llm-server-3f9c2a1b
templates:
  description: The pod templates that carry the shim (with I(state=absent), those it was removed from).
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Where the pod template is in the object.
      type: str
      sample: spec.template
    containers:
      description: The containers that preload the shim.
      type: list
      elements: str
      sample: [server]
    library:
      description: The library the containers preload.
      type: str
      sample: /opt/gpu-fault-injection/cuda-fault-shim-lib/libcudafault.so
record:
  description:
    - The record stored in the annotation C(fault-injection.gpu-resilience.io/cuda-shim), exactly what was
      added or replaced (null with I(state=absent)). C(templates[].changes) lists C(create), C(add),
      C(replace) and C(set) operations, each with the prior value it replaced.
  returned: always
  type: dict
  sample: {v: 1, state: armed, xid: 79, configMap: cuda-fault-shim-deployment-llm-server-3f9c2a1b, annotations: existing,
           templates: [{path: [spec, template], containers: [server], changes: []}]}
pruned:
  description: The shimmed ReplicaSets deleted from the Deployment's history (see I(prune_history)).
  returned: with I(state=absent) on a Deployment
  type: list
  elements: str
  sample: [llm-server-7d4b9c8f6d]
rollout:
  description: The rollout the module waited for.
  returned: when waited for
  type: dict
  sample: {desired: 2, updated: 2, available: 2}
"""

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import kube, shim_patch, shim_source
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.shim_patch import ShimPatchError

MAX_ATTEMPTS = 5
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
WORKLOAD_ANNOTATION = "fault-injection.gpu-resilience.io/workload"


def argument_spec():
    return dict(
        kind=dict(type="str", required=True),
        api_version=dict(type="str"),
        name=dict(type="str", required=True),
        namespace=dict(type="str", required=True),
        state=dict(type="str", choices=list(shim_patch.STATES), default="present"),
        xid=dict(type="int"),
        containers=dict(type="list", elements="str"),
        all_containers=dict(type="bool", default=False),
        library_path=dict(type="str"),
        compiler_image=dict(type="str", default=shim_patch.DEFAULT_COMPILER_IMAGE),
        pin_node=dict(type="str"),
        pin_mode=dict(type="str", choices=list(shim_patch.PIN_MODES), default="required"),
        runtime_control=dict(type="bool", default=True),
        pod_template_path=dict(type="list", elements="str"),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=300),
        prune_history=dict(type="bool", default=True),
        shim_files=dict(type="dict"),
    )


class Conflict(Exception):
    """The object changed between our read and our write (HTTP 409)."""


class ShimPatcher:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.spec = shim_patch.validate_options(dict(
            (k, params[k]) for k in ("kind", "api_version", "state", "xid", "containers", "all_containers",
                                     "library_path", "compiler_image", "pin_node", "pin_mode", "runtime_control",
                                     "pod_template_path")))
        self.kind = params["kind"]
        self.name = shim_patch.validate_dns_subdomain(params["name"], "name")
        self.namespace = shim_patch.validate_dns_label(params["namespace"], "namespace")
        self.api_version = params["api_version"] or shim_patch.default_api_version(self.kind)
        if not self.api_version:
            raise ShimPatchError("give api_version for kind %s" % self.kind)
        self.spec["api_version"] = self.api_version
        self.build = self.spec["state"] != "absent" and not params["library_path"]
        self.files = self.shim_files(params["shim_files"]) if self.build else None
        self.config_map = shim_patch.config_map_name(self.api_version, self.kind, self.namespace, self.name)
        if self.build:
            self.spec.update(config_map=self.config_map, source_digest=shim_patch.source_digest(self.files))
        self.warnings = []
        self.k8s = kube.client(module)
        self.resource = kube.resource(self.k8s, self.api_version, self.kind,
                                      "install its CRD, or check kind and api_version")
        self.config_maps = kube.resource(self.k8s, "v1", "ConfigMap")

    @staticmethod
    def shim_files(files):
        wanted = {shim_source.SOURCE_FILE, shim_source.HEADER_FILE}
        if not files:
            raise ShimPatchError("the shim's C source comes from the module's action plugin: run "
                                 "gpu_resilience.fault_injection.cuda_shim_patch as a task, or give library_path")
        if set(files) != wanted or not all(isinstance(v, str) and v for v in files.values()):
            raise ShimPatchError("shim_files is internal (set by the action plugin) and must hold %s"
                                 % " and ".join(sorted(wanted)))
        return dict(files)

    def where(self):
        return "%s %s/%s" % (self.kind, self.namespace, self.name)

    # --- the run -----------------------------------------------------------------------------

    def run(self):
        if self.spec["state"] != "absent" and self.spec.get("pin_node"):
            self.check_node(self.spec["pin_node"])
        for _attempt in range(MAX_ATTEMPTS):
            try:
                return self.attempt()
            except Conflict:
                continue
        raise KubeError("%s kept changing while it was being patched (%d conflicts); try again"
                        % (self.where(), MAX_ATTEMPTS))

    def attempt(self):
        obj = kube.get(self.k8s, self.resource, self.name, self.namespace)
        state = self.spec["state"]
        if obj is None:
            if state == "absent":
                deleted = self.delete_config_map(self.config_map)
                return self.result(changed=deleted, record=None, previous=None,
                                   config_map=self.config_map if deleted else None, before=None, after=None)
            raise KubeError("%s not found; create it first, or check kind, api_version, name and namespace"
                            % self.where())
        plan = shim_patch.plan(obj, self.spec)
        self.warnings += plan["warnings"]
        previous, record = plan["previous"], plan["record"]
        changed = created = False
        if record is not None and record["configMap"]:
            changed, created = self.ensure_config_map(obj, record["configMap"])
        after = obj
        if plan["changed"]:
            try:
                after = self.replace(plan["desired"])
            except KubeError:
                if created and not self.module.check_mode:   # leave nothing behind for a refused change
                    self.delete_config_map(record["configMap"])
                raise
            changed = True
        old_map = (previous or {}).get("configMap")
        if state == "absent":
            deleted = self.delete_config_map(old_map or self.config_map)
            changed = deleted or changed
            old_map = old_map or (self.config_map if deleted else None)
        elif old_map and old_map != (record or {}).get("configMap"):
            changed = self.delete_config_map(old_map) or changed
        rollout = None
        if self.module.params["wait"] and not self.module.check_mode and self.kind in shim_patch.ROLLOUT_KINDS:
            rollout = self.wait_rollout()
        result = self.result(changed=changed, record=record, previous=previous,
                             config_map=(record or {}).get("configMap") if record else old_map,
                             before=obj, after=after, rollout=rollout)
        if state == "absent" and self.kind == "Deployment":
            result["pruned"] = self.prune_history(after) if (rollout is not None or self.module.check_mode) else []
            result["changed"] = result["changed"] or bool(result["pruned"])
        return result

    def result(self, changed, record, previous, config_map, before, after, rollout=None):
        shown = record or previous
        result = dict(
            changed=changed,
            workload=dict(api_version=self.api_version, kind=self.kind, namespace=self.namespace, name=self.name),
            config_map=config_map,
            templates=[dict(path=shim_patch.format_path(t["path"]), containers=t["containers"], library=t["library"])
                       for t in (shown or {}).get("templates") or []],
            record=record,
            diff=dict(before=shim_patch.templates_of(before, shown) if before else {},
                      after=shim_patch.templates_of(after, shown) if after else {}),
        )
        if rollout is not None:
            result["rollout"] = rollout
        return result

    # --- Kubernetes calls --------------------------------------------------------------------

    def check_node(self, node):
        nodes = kube.resource(self.k8s, "v1", "Node")
        try:
            found = kube.get(self.k8s, nodes, node)
        except KubeError as e:
            self.warnings.append("could not check that node %s exists: %s" % (node, e))
            return
        if found is None:
            raise KubeError("pin_node: node %s not found" % node)

    def replace(self, desired):
        body = dict(desired)
        body["metadata"] = dict(desired["metadata"])
        body["metadata"].pop("managedFields", None)
        try:
            return self.k8s.replace(self.resource, body, namespace=self.namespace,
                                    field_manager=shim_patch.MANAGED_BY).to_dict()
        except kube.DynamicApiError as e:
            if getattr(e, "status", None) == 409:
                raise Conflict()
            hint = ""
            if self.kind == "Job" and getattr(e, "status", None) == 422:
                hint = (" (a Job's pod template cannot change once the Job exists: apply the shim to the Job "
                        "before creating it, or to a CronJob's job template)")
            raise KubeError("updating %s failed: %s%s" % (self.where(), kube.describe(e), hint))

    def config_map_object(self, obj, name):
        meta = obj["metadata"]
        return {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": name, "namespace": self.namespace,
                "labels": {MANAGED_BY_LABEL: shim_patch.MANAGED_BY},
                "annotations": {WORKLOAD_ANNOTATION: "%s %s/%s" % (self.kind, self.namespace, self.name)},
                "ownerReferences": [{"apiVersion": obj.get("apiVersion") or self.api_version, "kind": self.kind,
                                     "name": meta["name"], "uid": meta["uid"]}],
            },
            "data": self.files,
        }

    def ensure_config_map(self, obj, name):
        """(changed, created) after making the ConfigMap hold the shim's files."""
        wanted = self.config_map_object(obj, name)
        current = kube.get(self.k8s, self.config_maps, name, self.namespace)
        what = "ConfigMap %s/%s" % (self.namespace, name)
        try:
            if current is None:
                self.k8s.create(self.config_maps, wanted, namespace=self.namespace,
                                field_manager=shim_patch.MANAGED_BY)
                return True, True
            labels = current["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) != shim_patch.MANAGED_BY:
                raise KubeError("%s exists and was not made by cuda_shim_patch; rename or delete it" % what)
            if current.get("data") == wanted["data"] and shim_patch.covers(current["metadata"], wanted["metadata"]):
                return False, False
            wanted["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.k8s.replace(self.config_maps, wanted, namespace=self.namespace, field_manager=shim_patch.MANAGED_BY)
            return True, False
        except kube.DynamicApiError as e:
            if getattr(e, "status", None) == 409:
                raise Conflict()
            raise KubeError("writing %s failed: %s" % (what, kube.describe(e)))

    def delete_config_map(self, name):
        current = kube.get(self.k8s, self.config_maps, name, self.namespace)
        if current is None:
            return False
        if ((current["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) != shim_patch.MANAGED_BY):
            self.warnings.append("ConfigMap %s/%s was not made by cuda_shim_patch; left in place" % (self.namespace, name))
            return False
        try:
            self.k8s.delete(self.config_maps, name=name, namespace=self.namespace)
        except kube.NotFoundError:
            return False
        except kube.DynamicApiError as e:
            raise KubeError("deleting ConfigMap %s/%s failed: %s" % (self.namespace, name, kube.describe(e)))
        return True

    def prune_history(self, deployment):
        """Delete (in check mode: name) the Deployment's idle ReplicaSets that carry the shim."""
        if not self.module.params["prune_history"]:
            return []
        replica_sets = kube.resource(self.k8s, "apps/v1", "ReplicaSet")
        items, _version = kube.list_objects(self.k8s, replica_sets, self.namespace)
        names = shim_patch.shim_history(deployment, items)
        if self.module.check_mode:
            return names
        pruned = []
        for name in names:
            try:
                self.k8s.delete(replica_sets, name=name, namespace=self.namespace)
                pruned.append(name)
            except kube.NotFoundError:
                continue
            except kube.DynamicApiError as e:
                raise KubeError("deleting the shimmed ReplicaSet %s/%s from %s's history failed: %s"
                                % (self.namespace, name, self.where(), kube.describe(e)))
        return pruned

    def wait_rollout(self):
        obj = kube.get(self.k8s, self.resource, self.name, self.namespace)
        if obj is None:
            raise KubeError("%s was deleted while waiting for its rollout" % self.where())
        blocker = shim_patch.rollout_blocker(self.kind, obj)
        if blocker:
            self.warnings.append("not waiting for the rollout: " + blocker)
            return None
        try:
            done = kube.wait_for(self.k8s, self.resource, self.namespace, None, [self.name],
                                 lambda o: shim_patch.rollout_complete(self.kind, o), self.module.params["wait_timeout"])
        except KubeError as e:
            raise KubeError("the rollout of %s did not finish: %s. Look at its pods (e.g. `kubectl -n %s get pods`): "
                            "an init container that cannot pull compiler_image, or a pin_node without room, keeps "
                            "new pods from starting" % (self.where(), e, self.namespace))
        return shim_patch.rollout_summary(self.kind, done[self.name])


def check_params(params):
    if params["wait_timeout"] < 1:
        return "wait_timeout must be at least 1 second"
    return None


def main():
    module = kube.module(argument_spec(), supports_check_mode=True,
                         mutually_exclusive=[("containers", "all_containers")],
                         required_if=[("state", "armed", ("xid",))])
    problem = check_params(module.params)
    if problem:
        module.fail_json(msg=problem)
    try:
        patcher = ShimPatcher(module)
        result = patcher.run()
    except (KubeError, ShimPatchError) as e:
        module.fail_json(msg=str(e))
    kube.finish(module, result, patcher.warnings)


if __name__ == "__main__":
    main()
