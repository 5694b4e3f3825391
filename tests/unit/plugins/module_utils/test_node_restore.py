"""node_restore: snapshots, scope, and the minimal JSON patch that restores a node's in-scope marks;
node_marks_restore's Restorer and BatchRestorer against a stand-in API server (conflicts, check mode, missing nodes)."""
import copy
import itertools
import json

import pytest
from kubernetes.client.rest import ApiException
from kubernetes.dynamic.exceptions import api_exception

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import fault_api, node_marks, node_restore
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.node_restore import RestoreError
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import node_marks_restore

AWS = "gpu-healthcheck.aws-samples.io/"
DRILL = "fault-injection.gpu-resilience.io/"
UNSCHEDULABLE = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": "2026-11-22T18:20:19Z"}
UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-11-22T18:21:00Z"}
AWS_TAINT = {"key": AWS + "unhealthy", "value": "true", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


# --- a stand-in for kubernetes.core's client: objects with resourceVersions, JSON patch, hooks ------
# test_drill_ledger.py uses it too.

class PatchFailed(Exception):
    pass


def _segments(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(doc, ops):
    """Apply an RFC 6902 patch (add, remove, replace, test on object members) to doc, in place; all or nothing."""
    work = copy.deepcopy(doc)
    for op in ops:
        parts = _segments(op["path"])
        parent = work
        for part in parts[:-1]:
            if not isinstance(parent, dict) or part not in parent:
                raise PatchFailed("missing parent of %s" % op["path"])
            parent = parent[part]
        last = parts[-1]
        if op["op"] == "test":
            if parent.get(last) != op["value"]:
                raise PatchFailed("testing value %s failed" % op["path"])
        elif op["op"] == "add":
            parent[last] = copy.deepcopy(op["value"])
        elif op["op"] in ("remove", "replace"):
            if last not in parent:
                raise PatchFailed("%s: %s does not exist" % (op["op"], op["path"]))
            if op["op"] == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise PatchFailed("unsupported op %s" % op["op"])
    doc.clear()
    doc.update(work)


def api_error(status, message):
    """The exception kubernetes.core's client raises for an API error of this status."""
    error = ApiException(status=status, reason={404: "Not Found", 409: "Conflict", 422: "Unprocessable Entity"}[status])
    error.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    error.headers = {"Content-Type": "application/json"}
    return api_exception(error)


class Resource:
    def __init__(self, api_version, kind):
        self.api_version, self.kind = api_version, kind


class Result:
    def __init__(self, obj):
        self.obj = copy.deepcopy(obj)

    def to_dict(self):
        return copy.deepcopy(self.obj)


class FakeK8s:
    """ConfigMaps, Nodes and Namespaces with resourceVersions and the API server's concurrency rules.

    before_write: functions called (and used up) one per write before it is carried out, to make a
    concurrent change between a module's read and its write.
    """

    def __init__(self, nodes=(), namespaces=("gpu-fault-injection",)):
        self.objects = {}
        self.versions = itertools.count(1000)
        self.log = []
        self.before_write = []
        self.in_hook = False
        self.failed_patches = 0
        self.reject_patches = None
        for name in namespaces:
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for obj in nodes:
            self.put(copy.deepcopy(obj))

    # helpers for tests
    def put(self, obj):
        metadata = obj["metadata"]
        metadata["resourceVersion"] = str(next(self.versions))
        metadata.setdefault("uid", "uid-%s" % metadata["resourceVersion"])
        metadata.setdefault("creationTimestamp", "2026-11-22T18:00:%02dZ" % (int(metadata["resourceVersion"]) % 60))
        self.objects[(obj["kind"], metadata.get("namespace") or "", metadata["name"])] = obj
        return obj

    def node(self, name):
        return copy.deepcopy(self.objects[("Node", "", name)])

    def update_node(self, name, change):
        obj = self.objects[("Node", "", name)]
        change(obj)
        self.put(obj)

    def calls(self, verb):
        return [entry for entry in self.log if entry[0] == verb]

    def _write(self, verb, body):
        self.log.append((verb, body))
        if self.before_write and not self.in_hook:
            self.in_hook = True   # the hook's own writes are not interrupted
            try:
                self.before_write.pop(0)(verb, body)
            finally:
                self.in_hook = False

    def _key(self, res, name, namespace):
        return (res.kind, namespace or "", name)

    def _missing(self, res, name):
        return api_error(404, '%ss "%s" not found' % (res.kind.lower(), name))

    # the client's interface
    def resource(self, kind, api_version):
        return Resource(api_version, kind)

    def get(self, res, name=None, namespace=None, label_selector=None, **_kwargs):
        if name:
            obj = self.objects.get(self._key(res, name, namespace))
            if obj is None:
                raise self._missing(res, name)
            return Result(obj)
        items = [o for (kind, ns, _n), o in sorted(self.objects.items())
                 if kind == res.kind and (namespace is None or ns == namespace) and _selected(o, label_selector)]
        return Result({"items": items, "metadata": {"resourceVersion": str(next(self.versions))}})

    def create(self, res, body, namespace=None, **_kwargs):
        self._write("create", body)
        key = self._key(res, body["metadata"]["name"], namespace)
        if key in self.objects:
            raise api_error(409, '%ss "%s" already exists' % (res.kind.lower(), key[2]))
        if ("Namespace", "", namespace) not in self.objects:
            raise api_error(404, 'namespaces "%s" not found' % namespace)
        obj = copy.deepcopy(body)
        obj["metadata"].pop("resourceVersion", None)
        return Result(self.put(obj))

    def replace(self, res, body, namespace=None, **_kwargs):
        self._write("replace", body)
        key = self._key(res, body["metadata"]["name"], namespace)
        current = self.objects.get(key)
        if current is None:
            raise self._missing(res, key[2])
        wanted = body["metadata"].get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise api_error(409, 'Operation cannot be fulfilled on %ss "%s": the object has been modified'
                            % (res.kind.lower(), key[2]))
        obj = copy.deepcopy(body)
        obj["metadata"]["uid"] = current["metadata"]["uid"]
        obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"]
        return Result(self.put(obj))

    def delete(self, res, name=None, namespace=None, body=None, **_kwargs):
        self._write("delete", body)
        key = self._key(res, name, namespace)
        current = self.objects.get(key)
        if current is None:
            raise self._missing(res, name)
        preconditions = (body or {}).get("preconditions") or {}
        wanted = preconditions.get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise api_error(409, "Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in object "
                                 "meta: %s" % (wanted, current["metadata"]["resourceVersion"]))
        if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
            raise api_error(409, "Precondition failed: UID in precondition: %s, UID in object meta: %s"
                            % (preconditions["uid"], current["metadata"]["uid"]))
        del self.objects[key]
        return Result({"kind": "Status", "status": "Success"})

    def patch(self, res, body, name=None, namespace=None, content_type=None, **_kwargs):
        assert content_type == "application/json-patch+json"
        self._write("patch", body)
        current = self.objects.get(self._key(res, name, namespace))
        if current is None:
            raise self._missing(res, name)
        if self.reject_patches:
            raise api_error(422, self.reject_patches)
        obj = copy.deepcopy(current)
        try:
            json_patch(obj, body)
        except PatchFailed:
            # What kube-apiserver answers for a failed test op (checked against a real one).
            self.failed_patches += 1
            raise api_error(422, "the server rejected our request due to an error in our request")
        return Result(self.put(obj))


def _selected(obj, selector):
    labels = obj["metadata"].get("labels") or {}
    for term in (selector or "").split(","):
        if not term:
            continue
        key, eq, value = term.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def scope(**kwargs):
    params = dict(keys=node_marks_restore.DEFAULT_KEYS)
    params.update(kwargs)
    return node_restore.make_scope(**params)


def node(labels=None, annotations=None, taints=None, unschedulable=None, rv="100", uid="uid-1"):
    base_labels = {"kubernetes.io/hostname": "gpu-node-1", "nvidia.com/gpu.present": "true"}
    base_annotations = {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
    obj = {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "gpu-node-1", "uid": uid, "resourceVersion": rv,
                        "labels": dict(base_labels, **(labels or {})),
                        "annotations": dict(base_annotations, **(annotations or {}))},
           "spec": {"podCIDR": "127.128.1.0/24"},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    if taints is not None:
        obj["spec"]["taints"] = taints
    if unschedulable is not None:
        obj["spec"]["unschedulable"] = unschedulable
    return obj


def apply(obj, patch):
    result = copy.deepcopy(obj)
    json_patch(result, patch)
    return result


def drilled(before_node):
    """What a drill and the health agent leave on a node: a drill label, the agent's status label and
    taint, a heartbeat, NVSentinel's annotation, a cordon, plus out-of-scope changes of others."""
    obj = copy.deepcopy(before_node)
    labels = obj["metadata"]["labels"]
    labels.update({DRILL + "target": "xid79", AWS + "status": "fail", AWS + "last-check": "2026-11-22T18-20-30Z",
                   "topology.kubernetes.io/zone": "us-east-1a"})
    obj["metadata"]["annotations"].update({"quarantineHealthEvent": "[]", "example.com/owner": "team-a",
                                           AWS + "results": "{}"})
    obj["spec"]["taints"] = (obj["spec"].get("taints") or []) + [AWS_TAINT, UNSCHEDULABLE, UNREACHABLE]
    obj["spec"]["unschedulable"] = True
    obj["metadata"]["resourceVersion"] = "200"
    return obj


# --- defaults agree with node_marks --------------------------------------------------------------

def test_defaults_name_the_marks_node_marks_knows():
    assert tuple(node_marks_restore.DEFAULT_KEYS) == node_marks.NVSENTINEL_ANNOTATIONS
    for prefix in (node_marks.AWS_PREFIX, node_marks.NVSENTINEL_LABEL_PREFIX, node_marks.NVSENTINEL_STATE_PREFIX):
        assert prefix in node_restore.DEFAULT_PREFIXES
    assert node_marks.AWS_LAST_CHECK_LABEL in node_restore.DEFAULT_IGNORE
    assert node_marks.AWS_RESULTS_ANNOTATION in node_restore.DEFAULT_IGNORE
    assert node_restore.UNSCHEDULABLE_TAINT == node_marks.UNSCHEDULABLE_TAINT


def test_module_argument_spec_defaults_match_the_pure_defaults():
    options = node_marks_restore.argument_spec()["scope"]["options"]
    assert options["prefixes"]["default"] == list(node_restore.DEFAULT_PREFIXES)
    assert options["ignore"]["default"] == list(node_restore.DEFAULT_IGNORE)
    assert options["keys"]["default"] == list(node_marks.NVSENTINEL_ANNOTATIONS)


# --- snapshot -----------------------------------------------------------------------------------

def test_snapshot_keeps_everything_restoration_may_need():
    obj = node(labels={AWS + "status": "pass"}, taints=[dict(GPU_TAINT, value="")], unschedulable=True)
    snap = node_restore.snapshot(obj)
    assert snap == {"unschedulable": True, "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
                    "labels": obj["metadata"]["labels"], "annotations": obj["metadata"]["annotations"],
                    "conditions": [{"type": "Ready", "status": "True"}], "resourceVersion": "100", "uid": "uid-1"}
    snap["labels"]["x"] = "y"
    assert "x" not in obj["metadata"]["labels"], "the snapshot must be a copy"


def test_snapshot_of_a_bare_node():
    snap = node_restore.snapshot({"metadata": {"name": "n", "resourceVersion": "7"}})
    assert snap == {"unschedulable": False, "taints": [], "labels": {}, "annotations": {}, "conditions": [],
                    "resourceVersion": "7", "uid": None}
    assert node_restore.validate_snapshot(snap) is snap


@pytest.mark.parametrize("before, fragment", [
    ("text", "must be a node snapshot"),
    ({"labels": {}}, "lacks unschedulable, taints, annotations"),
    ({"unschedulable": "no", "taints": [], "labels": {}, "annotations": {}}, "unschedulable must be true or false"),
    ({"unschedulable": False, "taints": [], "labels": {"a": 1}, "annotations": {}}, "labels must map strings"),
    ({"unschedulable": False, "taints": {}, "labels": {}, "annotations": {}}, "taints must be a list"),
    ({"unschedulable": False, "taints": [{"effect": "NoSchedule"}], "labels": {}, "annotations": {}}, "with a key"),
    ({"unschedulable": False, "taints": [{"key": "a"}], "labels": {}, "annotations": {}}, "(a) has no effect"),
    ({"unschedulable": False, "taints": [{"key": "a", "effect": "NoSchedule", "x": 1}], "labels": {},
      "annotations": {}}, "unknown fields x"),
])
def test_bad_snapshots_are_named(before, fragment):
    with pytest.raises(RestoreError, match=None) as error:
        node_restore.validate_snapshot(before)
    assert fragment in str(error.value)


# --- scope --------------------------------------------------------------------------------------

def test_scope_prefixes_keys_and_ignore():
    s = scope()
    assert node_restore.in_scope(AWS + "status", s)
    assert node_restore.in_scope("k8saas.nvidia.com/cordon-by", s)
    assert node_restore.in_scope("dgxc.nvidia.com/nvsentinel-state", s)
    assert node_restore.in_scope(DRILL + "target", s)
    assert node_restore.in_scope("quarantineHealthEvent", s)
    assert not node_restore.in_scope(AWS + "last-check", s)
    assert not node_restore.in_scope(AWS + "results", s)
    assert not node_restore.in_scope("kubernetes.io/hostname", s)
    assert not node_restore.in_scope("quarantineHealthEventX", s)
    assert node_restore.taint_in_scope(UNSCHEDULABLE, s)
    assert not node_restore.taint_in_scope(UNREACHABLE, s)
    assert not node_restore.taint_in_scope(UNSCHEDULABLE, scope(unschedulable=False))
    assert not node_restore.taint_in_scope(AWS_TAINT, scope(taints=False))


def test_an_empty_prefix_is_refused():
    with pytest.raises(RestoreError, match="empty prefix would match every key"):
        node_restore.make_scope(prefixes=["a/", ""])


# --- plan ---------------------------------------------------------------------------------------

def test_restores_a_drilled_node_exactly_and_touches_nothing_else():
    original = node(labels={AWS + "status": "pass", AWS + "last-check": "old"},
                    annotations={"k8saas.nvidia.com/note": "kept"}, taints=[GPU_TAINT])
    before = node_restore.snapshot(original)
    now = drilled(original)
    planned = node_restore.plan(now, before, scope())
    assert planned["changed"]
    assert planned["patch"][0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "200"}
    restored_node = apply(now, planned["patch"])
    # In scope: exactly as before.
    assert node_restore.scoped_marks(node_restore.snapshot(restored_node), scope()) == \
        node_restore.scoped_marks(before, scope())
    assert planned["after"] == node_restore.scoped_marks(before, scope())
    # Out of scope: as the others left it (the heartbeat, a zone label, an annotation, the unreachable taint).
    labels, annotations = restored_node["metadata"]["labels"], restored_node["metadata"]["annotations"]
    assert labels[AWS + "last-check"] == "2026-11-22T18-20-30Z"
    assert labels["topology.kubernetes.io/zone"] == "us-east-1a"
    assert annotations["example.com/owner"] == "team-a" and annotations[AWS + "results"] == "{}"
    assert restored_node["spec"]["taints"] == [GPU_TAINT, UNREACHABLE]
    assert "unschedulable" not in restored_node["spec"]
    assert restored_node["spec"]["podCIDR"] == "127.128.1.0/24"
    assert planned["restored"] == {
        "labels": {AWS + "status": {"from": "fail", "to": "pass"}, DRILL + "target": {"from": "xid79", "to": None}},
        "annotations": {"quarantineHealthEvent": {"from": "[]", "to": None}},
        "taints": {"from": [AWS_TAINT, UNSCHEDULABLE], "to": []},
        "unschedulable": {"from": True, "to": False},
    }
    # Once restored, nothing more to do.
    again = node_restore.plan(restored_node, before, scope())
    assert again == {"changed": False, "patch": [], "restored": {}, "current": again["after"], "after": again["after"],
                     "held_by": None}


def test_readds_removed_marks_and_restores_the_cordon():
    original = node(labels={AWS + "status": "pass", "k8saas.nvidia.com/cordon-by": "NVSentinel"},
                    annotations={"quarantineHealthEventIsCordoned": "True"},
                    taints=[UNSCHEDULABLE, AWS_TAINT], unschedulable=True)
    before = node_restore.snapshot(original)
    now = node()   # someone cleaned up too much: no marks at all, uncordoned
    planned = node_restore.plan(now, before, scope())
    restored_node = apply(now, planned["patch"])
    assert restored_node["spec"]["unschedulable"] is True
    assert restored_node["spec"]["taints"] == [UNSCHEDULABLE, AWS_TAINT]
    assert restored_node["metadata"]["labels"]["k8saas.nvidia.com/cordon-by"] == "NVSentinel"
    assert restored_node["metadata"]["annotations"]["quarantineHealthEventIsCordoned"] == "True"
    assert {"op": "add", "path": "/metadata/labels/k8saas.nvidia.com~1cordon-by", "value": "NVSentinel"} \
        in planned["patch"]


def test_adds_a_label_map_the_node_lacks():
    before = node_restore.snapshot(node(labels={AWS + "status": "pass"}))
    now = node()
    del now["metadata"]["labels"]
    planned = node_restore.plan(now, before, scope())
    assert planned["patch"][1:] == [{"op": "add", "path": "/metadata/labels", "value": {AWS + "status": "pass"}}]
    assert apply(now, planned["patch"])["metadata"]["labels"] == {AWS + "status": "pass"}


def test_keeps_the_place_of_other_taints_and_of_unchanged_in_scope_taints():
    maintenance = {"key": AWS + "maintenance", "value": "sweep", "effect": "NoSchedule"}
    before = node_restore.snapshot(node(taints=[maintenance, GPU_TAINT]))
    now = node(taints=[UNREACHABLE, AWS_TAINT, GPU_TAINT, maintenance])
    planned = node_restore.plan(now, before, scope())
    assert apply(now, planned["patch"])["spec"]["taints"] == [UNREACHABLE, GPU_TAINT, maintenance]
    # Same in-scope taints in another order: nothing to do.
    assert not node_restore.plan(node(taints=[GPU_TAINT, maintenance]), before, scope())["changed"]


def test_a_changed_taint_value_or_time_counts_as_a_change():
    before = node_restore.snapshot(node(taints=[AWS_TAINT]))
    planned = node_restore.plan(node(taints=[dict(AWS_TAINT, value="false")]), before, scope())
    assert planned["restored"]["taints"] == {"from": [dict(AWS_TAINT, value="false")], "to": [AWS_TAINT]}
    cordoned = node_restore.snapshot(node(taints=[UNSCHEDULABLE], unschedulable=True))
    recordoned = node(taints=[dict(UNSCHEDULABLE, timeAdded="2026-11-22T19:00:00Z")], unschedulable=True)
    assert node_restore.plan(recordoned, cordoned, scope())["restored"] == {
        "taints": {"from": [dict(UNSCHEDULABLE, timeAdded="2026-11-22T19:00:00Z")], "to": [UNSCHEDULABLE]}}


def test_scope_without_unschedulable_leaves_cordon_and_its_taint():
    before = node_restore.snapshot(node())
    now = node(taints=[UNSCHEDULABLE, AWS_TAINT], unschedulable=True)
    planned = node_restore.plan(now, before, scope(unschedulable=False))
    restored_node = apply(now, planned["patch"])
    assert restored_node["spec"]["unschedulable"] is True
    assert restored_node["spec"]["taints"] == [UNSCHEDULABLE]
    assert "unschedulable" not in planned["restored"]


def test_scope_without_taints_and_with_own_keys():
    before = node_restore.snapshot(node())
    now = node(labels={"example.com/drill": "1", "example.com/keep": "1"}, taints=[AWS_TAINT])
    planned = node_restore.plan(now, before, scope(prefixes=[], keys=["example.com/drill"], taints=False))
    restored_node = apply(now, planned["patch"])
    assert "example.com/drill" not in restored_node["metadata"]["labels"]
    assert restored_node["metadata"]["labels"]["example.com/keep"] == "1"
    assert restored_node["spec"]["taints"] == [AWS_TAINT]


def test_keys_with_tilde_and_slash_are_escaped():
    before = node_restore.snapshot(node())
    now = node(labels={DRILL + "a~b": "1"})
    planned = node_restore.plan(now, before, scope())
    assert planned["patch"][1] == {"op": "remove", "path": "/metadata/labels/fault-injection.gpu-resilience.io~1a~0b"}
    assert DRILL + "a~b" not in apply(now, planned["patch"])["metadata"]["labels"]


def test_plan_does_not_change_its_inputs():
    before = node_restore.snapshot(node())
    now = drilled(node())
    now_copy, before_copy = copy.deepcopy(now), copy.deepcopy(before)
    node_restore.plan(now, before, scope())
    assert now == now_copy and before == before_copy


# --- the module's Restorer against a stand-in API server ----------------------------------------

SCOPE_PARAMS = dict(prefixes=list(node_restore.DEFAULT_PREFIXES), keys=node_marks_restore.DEFAULT_KEYS,
                    ignore=list(node_restore.DEFAULT_IGNORE), unschedulable=True, taints=True)


def test_restorer_patches_once_and_then_reports_no_change():
    original = node()
    api = FakeK8s(nodes=[drilled(original)])
    result = node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(original), SCOPE_PARAMS).run()
    assert result["changed"] and len(api.calls("patch")) == 1
    stored = api.node("gpu-node-1")
    assert stored["spec"]["taints"] == [UNREACHABLE]
    assert result["node"]["resource_version"] == stored["metadata"]["resourceVersion"]
    assert result["node"]["labels"] == {} and result["node"]["unschedulable"] is False
    assert result["diff"]["after"] == node_restore.scoped_marks(node_restore.snapshot(original), scope())
    again = node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(original), SCOPE_PARAMS).run()
    assert not again["changed"] and again["patch"] == [] and len(api.calls("patch")) == 1


def test_restorer_check_mode_predicts_and_writes_nothing():
    original = node()
    api = FakeK8s(nodes=[drilled(original)])
    stored = copy.deepcopy(api.node("gpu-node-1"))
    result = node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(original), SCOPE_PARAMS,
                                         check_mode=True).run()
    assert result["changed"] and result["patch"]
    assert api.calls("patch") == [] and api.node("gpu-node-1") == stored
    assert result["node"]["taints"] == [UNREACHABLE] and result["node"]["unschedulable"] is False
    assert result["node"]["labels"] == {}


def test_restorer_recomputes_after_a_concurrent_change():
    """Between our read and our patch the detector labels the node again: the test op fails (422),
    the node is read again, and the new label is removed too."""
    original = node()
    api = FakeK8s(nodes=[drilled(original)])

    def detector(_verb, _body):
        api.update_node("gpu-node-1", lambda n: n["metadata"]["labels"].update({AWS + "severity": "ISOLATE"}))
    api.before_write = [detector]
    result = node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(original), SCOPE_PARAMS).run()
    assert len(api.calls("patch")) == 2 and api.failed_patches == 1
    assert AWS + "severity" in result["restored"]["labels"]
    labels = api.node("gpu-node-1")["metadata"]["labels"]
    assert not any(k.startswith(AWS) and k != AWS + "last-check" for k in labels)


def test_restorer_gives_up_when_the_node_never_settles():
    original = node()
    api = FakeK8s(nodes=[drilled(original)])
    api.before_write = [lambda _verb, _body: api.update_node("gpu-node-1", lambda n: None)] * 10
    with pytest.raises(KubeError, match="kept changing while its marks were being restored"):
        node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(original), SCOPE_PARAMS).run()
    assert len(api.calls("patch")) == node_marks_restore.MAX_ATTEMPTS


def test_restorer_reports_a_rejected_patch_that_is_not_a_conflict():
    original = node()
    api = FakeK8s(nodes=[drilled(original)])
    api.reject_patches = "spec.taints[0].effect: Unsupported value"
    with pytest.raises(KubeError, match="patching node gpu-node-1 failed: .*Unsupported value"):
        node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(original), SCOPE_PARAMS).run()
    assert len(api.calls("patch")) == 1


def test_restorer_names_a_missing_node():
    api = FakeK8s(nodes=[])
    with pytest.raises(KubeError, match="node gpu-node-9 not found: a node deleted since the drill cannot be restored"):
        node_marks_restore.Restorer(api, "gpu-node-9", node_restore.snapshot(node()), SCOPE_PARAMS).run()


def test_restorer_warns_about_a_recreated_node():
    api = FakeK8s(nodes=[drilled(node(uid="uid-2"))])
    restorer = node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(node()), SCOPE_PARAMS)
    assert restorer.run()["changed"]
    assert restorer.warnings == ["node gpu-node-1 was re-created since the snapshot (uid uid-1, now uid-2); "
                                 "its marks are restored all the same"]


# --- several nodes in one run (nodes=) -----------------------------------------------------------

NAMES = ("gpu-node-1", "gpu-node-2", "gpu-node-3")


def named(obj, name):
    obj = copy.deepcopy(obj)
    obj["metadata"]["name"] = name
    obj["metadata"]["labels"]["kubernetes.io/hostname"] = name
    return obj


def fleet(drilled_names=NAMES, names=NAMES):
    """A stand-in API server with the named nodes, those in drilled_names marked by a drill; and the
    nodes= entries that restore them, in names' order."""
    api = FakeK8s(nodes=[named(drilled(node()) if n in drilled_names else node(), n) for n in names])
    entries = [{"name": n, "before": node_restore.snapshot(named(node(), n))} for n in names]
    return api, entries


def count_reads(api):
    """Wrap api.get to record each read: a node's name, or None for a list."""
    reads = []
    original = api.get

    def get(res, name=None, **kwargs):
        reads.append(name)
        return original(res, name=name, **kwargs)
    api.get = get
    return reads


def batch(api, entries, check_mode=False):
    return node_marks_restore.BatchRestorer(api, entries, SCOPE_PARAMS, check_mode=check_mode)


def test_batch_reads_all_nodes_with_one_list_and_patches_each_changed_node():
    api, entries = fleet(drilled_names=("gpu-node-1", "gpu-node-3"))
    reads = count_reads(api)
    result = batch(api, entries).run()
    assert reads == [None], "one list call, no read per node"
    assert result["changed"] and len(api.calls("patch")) == 2
    assert [(n["name"], n["changed"]) for n in result["nodes"]] == [
        ("gpu-node-1", True), ("gpu-node-2", False), ("gpu-node-3", True)]
    for entry in result["nodes"]:
        assert set(entry) == {"name", "changed", "held_by", "patch", "restored", "node"}
        stored = api.node(entry["name"])
        assert entry["node"]["resource_version"] == stored["metadata"]["resourceVersion"]
        assert stored["spec"].get("taints", []) == ([UNREACHABLE] if entry["changed"] else [])
        assert "unschedulable" not in stored["spec"]
    assert result["nodes"][1]["patch"] == [] and result["nodes"][1]["restored"] == {}
    assert result["nodes"][0]["restored"]["unschedulable"] == {"from": True, "to": False}
    again = batch(api, entries).run()
    assert not again["changed"] and len(api.calls("patch")) == 2


def test_batch_entries_match_the_single_form():
    api, entries = fleet(names=("gpu-node-1",))
    single_api, _entries = fleet(names=("gpu-node-1",))
    single = node_marks_restore.Restorer(single_api, "gpu-node-1", entries[0]["before"], SCOPE_PARAMS).run()
    listed = batch(api, entries).run()["nodes"][0]
    single.pop("diff")
    # The stand-in's list takes a resourceVersion of its own, so the patched nodes' versions differ.
    assert listed["node"].pop("resource_version") == api.node("gpu-node-1")["metadata"]["resourceVersion"]
    single["node"].pop("resource_version")
    assert listed == dict(single, name="gpu-node-1")


def test_batch_rereads_only_the_node_whose_patch_meets_a_conflict():
    api, entries = fleet()

    def detector(_verb, _body):
        api.update_node("gpu-node-2", lambda n: n["metadata"]["labels"].update({AWS + "severity": "ISOLATE"}))
    # The hooks run one per write: nothing before node 1's patch, the detector before node 2's.
    api.before_write = [lambda _verb, _body: None, detector]
    reads = count_reads(api)
    result = batch(api, entries).run()
    assert api.failed_patches == 1 and len(api.calls("patch")) == 4
    assert reads == [None, "gpu-node-2"], "the conflict's own check is the only extra read"
    assert AWS + "severity" in result["nodes"][1]["restored"]["labels"]
    assert all(n["changed"] for n in result["nodes"])
    assert AWS + "severity" not in api.node("gpu-node-2")["metadata"]["labels"]


def test_batch_with_a_missing_node_names_it_and_changes_nothing():
    api, entries = fleet()
    entries.insert(1, {"name": "gpu-node-9", "before": entries[0]["before"]})
    entries.append({"name": "gpu-node-8", "before": entries[0]["before"]})
    reads = count_reads(api)
    with pytest.raises(KubeError) as error:
        batch(api, entries).run()
    assert str(error.value).startswith("nodes gpu-node-9, gpu-node-8 not found: a node deleted since the drill "
                                       "cannot be restored")
    assert "no node was changed" in str(error.value)
    assert reads == [None] and api.calls("patch") == []


def test_batch_checks_every_entry_before_contacting_the_cluster():
    api, entries = fleet()
    entries[2] = {"name": "gpu-node-3", "before": {"labels": {}}}
    reads = count_reads(api)
    with pytest.raises(RestoreError, match="^node gpu-node-3: before is not a node snapshot"):
        batch(api, entries)
    entries[2] = {"name": "Bad_Name", "before": entries[0]["before"]}
    with pytest.raises(fault_api.FaultSpecError, match="'Bad_Name' is not a valid Kubernetes node name"):
        batch(api, entries)
    entries[2] = dict(entries[0])
    with pytest.raises(RestoreError, match="nodes lists gpu-node-1 more than once"):
        batch(api, entries)
    assert reads == [] and api.log == []


def test_batch_failure_names_the_node_and_those_already_restored():
    api, entries = fleet()

    def reject_from_now_on(_verb, _body):
        api.reject_patches = "spec.taints[0].effect: Unsupported value"
    api.before_write = [lambda _verb, _body: None, reject_from_now_on]
    with pytest.raises(node_marks_restore.BatchFailed) as error:
        batch(api, entries).run()
    message = str(error.value)
    assert message.startswith("patching node gpu-node-2 failed: ") and "Unsupported value" in message
    assert message.endswith("; restored before the failure (and left restored): gpu-node-1")
    assert error.value.restored == ["gpu-node-1"]
    assert len(api.calls("patch")) == 2 and "unschedulable" in api.node("gpu-node-3")["spec"]


def test_batch_failure_on_the_first_node_says_none_was_restored():
    api, entries = fleet()
    api.reject_patches = "forbidden"
    with pytest.raises(node_marks_restore.BatchFailed, match="; no node had been restored yet$"):
        batch(api, entries).run()


def test_batch_check_mode_predicts_every_node_and_writes_nothing():
    api, entries = fleet(drilled_names=("gpu-node-2",))
    stored = dict((n, api.node(n)) for n in NAMES)
    result = batch(api, entries, check_mode=True).run()
    assert api.calls("patch") == [] and dict((n, api.node(n)) for n in NAMES) == stored
    assert result["changed"] and [n["changed"] for n in result["nodes"]] == [False, True, False]
    predicted = result["nodes"][1]
    assert predicted["patch"][0]["value"] == stored["gpu-node-2"]["metadata"]["resourceVersion"]
    assert predicted["node"]["taints"] == [UNREACHABLE] and predicted["node"]["unschedulable"] is False
    assert predicted["node"]["resource_version"] == stored["gpu-node-2"]["metadata"]["resourceVersion"]


def test_batch_diff_is_keyed_by_node():
    api, entries = fleet(drilled_names=("gpu-node-2",))
    drilled_marks = node_restore.scoped_marks(node_restore.snapshot(api.node("gpu-node-2")), scope())
    for check_mode in (True, False):
        diff = batch(api, entries, check_mode=check_mode).run()["diff"]
        assert sorted(diff["before"]) == sorted(diff["after"]) == list(NAMES)
        assert diff["before"]["gpu-node-2"] == drilled_marks
        for name, entry in zip(NAMES, entries):
            assert diff["after"][name] == node_restore.scoped_marks(entry["before"], scope())
        assert diff["before"]["gpu-node-1"] == diff["after"]["gpu-node-1"]


def test_batch_of_no_nodes_changes_nothing():
    api = FakeK8s()
    assert batch(api, []).run() == {"changed": False, "nodes": [], "diff": {"before": {}, "after": {}}}
    assert api.log == []


def test_batch_warns_about_a_recreated_node():
    api, entries = fleet()
    api.update_node("gpu-node-3", lambda n: n["metadata"].update(uid="uid-9"))
    restorer = batch(api, entries)
    restorer.run()
    assert restorer.warnings == ["node gpu-node-3 was re-created since the snapshot (uid uid-1, now uid-9); "
                                 "its marks are restored all the same"]


def test_check_batch_and_progress():
    assert node_restore.check_batch(["a", "b"]) == ["a", "b"]
    with pytest.raises(RestoreError, match="nodes lists a, b more than once"):
        node_restore.check_batch(["a", "b", "a", "b", "a"])
    assert node_restore.progress([]) == "no node had been restored yet"
    assert node_restore.progress(["a", "b"]) == "restored before the failure (and left restored): a, b"


# --- restoring for a drill: another drill's marks are never written back ----------------------------

def test_a_drill_never_writes_back_another_drills_label_from_its_snapshot():
    # The bug of issue 15: drill b recorded the node while drill a held it, a's label included; a
    # cleaned up first. b's cleanup must take its own label off and not put a's back.
    before = node_restore.snapshot(node(labels={DRILL + "drill": "drill-a"}))
    now = node(labels={DRILL + "drill": "drill-b", AWS + "status": "fail"})
    planned = node_restore.plan(now, before, scope(), (DRILL + "drill", "drill-b"))
    assert planned["held_by"] is None
    assert planned["restored"]["labels"] == {DRILL + "drill": {"from": "drill-b", "to": None},
                                             AWS + "status": {"from": "fail", "to": None}}
    # Without the owner, the snapshot is restored whole: a's label comes back.
    blind = node_restore.plan(now, before, scope())
    assert blind["restored"]["labels"][DRILL + "drill"] == {"from": "drill-b", "to": "drill-a"}


def test_a_node_now_in_another_drills_hands_is_left_alone():
    before = node_restore.snapshot(node())
    now = node(labels={DRILL + "drill": "drill-c", AWS + "status": "fail"}, taints=[AWS_TAINT], unschedulable=True)
    planned = node_restore.plan(now, before, scope(), (DRILL + "drill", "drill-b"))
    assert planned["held_by"] == "drill-c"
    assert (planned["changed"], planned["patch"], planned["restored"]) == (False, [], {})
    assert planned["after"] == planned["current"]


def test_the_owners_own_label_and_a_clean_node_restore_as_before():
    before = node_restore.snapshot(node())
    now = node(labels={DRILL + "drill": "drill-b"})
    planned = node_restore.plan(now, before, scope(), (DRILL + "drill", "drill-b"))
    assert planned["restored"] == {"labels": {DRILL + "drill": {"from": "drill-b", "to": None}}}
    assert node_restore.plan(apply(now, planned["patch"]), before, scope(), (DRILL + "drill", "drill-b"))["changed"] is False


def test_restorer_for_a_drill_skips_a_node_held_by_another_and_warns():
    api = FakeK8s(nodes=[node(labels={DRILL + "drill": "drill-c"})])
    restorer = node_marks_restore.Restorer(api, "gpu-node-1", node_restore.snapshot(node()),
                                           dict(keys=node_marks_restore.DEFAULT_KEYS), drill="drill-b")
    result = restorer.run()
    assert (result["changed"], result["held_by"]) == (False, "drill-c")
    assert not api.calls("patch")
    assert restorer.warnings == ["node gpu-node-1 carries the label %sdrill=drill-c: it is in drill drill-c's hands now, "
                                 "so its marks are left to that drill's cleanup" % DRILL]
