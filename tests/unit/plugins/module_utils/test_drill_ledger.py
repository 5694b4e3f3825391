"""drill_ledger: drill ids, entries, the ledger's updates and stored form; the module's Ledgers against a
stand-in API server (conflicts between read and write, check mode, missing node or namespace)."""
import copy
import json

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_ledger, node_restore
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_ledger import LedgerError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import drill_ledger as module
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import drill_ledger_info as info_module

from test_node_restore import FakeK8s, node  # the stand-in API server and a realistic node

NS = "gpu-fault-injection"
T0 = "2026-11-22T18:19:58.104223Z"
T1 = "2026-11-22T18:20:01.000123Z"
SHIM = {"type": "shim_patch", "api_version": "apps/v1", "kind": "Deployment", "namespace": "training",
        "name": "llm-trainer"}
FAULTS = {"type": "faults", "drill": "xid79-0412"}


def entries(*raw):
    return [drill_ledger.validate_entry(e, n) for n, e in enumerate(raw, 1)]


# --- drill ids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("drill", ["a", "0", "xid79-0412", "xid79.run-2", "a" * 63, "a.b.c"])
def test_valid_drill_ids(drill):
    assert drill_ledger.validate_drill(drill) == drill
    assert drill_ledger.ledger_name(drill) == "gpu-drill-" + drill


@pytest.mark.parametrize("drill", ["", "a" * 64, "Xid79", "-a", "a-", "a.", ".a", "a..b", "a.-b", "a-.b", "a_b", "a b",
                                   None, 79])
def test_invalid_drill_ids(drill):
    with pytest.raises(LedgerError, match="must be 1 to 63 lowercase letters"):
        drill_ledger.validate_drill(drill)


def test_selector():
    assert drill_ledger.selector() == \
        "app.kubernetes.io/managed-by=gpu_resilience.fault_injection,fault-injection.gpu-resilience.io/drill-ledger"
    assert drill_ledger.selector("d1").endswith("fault-injection.gpu-resilience.io/drill-ledger=d1")


# --- entries ------------------------------------------------------------------------------------

def test_entries_keep_extra_keys_and_get_identities():
    entry = drill_ledger.validate_entry(dict(SHIM, xid=79), 1)
    assert entry == dict(SHIM, xid=79)
    assert drill_ledger.identity(entry) == ("shim_patch", "apps/v1", "Deployment", "training", "llm-trainer")
    cluster_scoped = drill_ledger.validate_entry({"type": "object", "api_version": "v1", "kind": "Namespace",
                                                  "name": "drill-ns"}, 1)
    assert cluster_scoped["namespace"] == ""
    assert drill_ledger.describe_entry(cluster_scoped) == "object Namespace drill-ns"
    assert drill_ledger.describe_entry(entry) == "shim_patch Deployment training/llm-trainer"
    defaulted = drill_ledger.validate_entry({"type": "shim_patch", "kind": "Deployment", "namespace": "training",
                                             "name": "llm-trainer"}, 1)
    assert drill_ledger.identity(defaulted) == ("shim_patch", "", "Deployment", "training", "llm-trainer")


@pytest.mark.parametrize("raw, fragment", [
    ("node", "must be a dict with a type"),
    ({"type": "pod"}, "type must be one of node, shim_patch, faults, object, nvsentinel, note"),
    ({"type": "node"}, "entries[1] (type node) has no node (it needs node)"),
    ({"type": "node", "node": "Bad_Node"}, "is not a valid Kubernetes node name"),
    ({"type": "node", "node": "n1", "before": {}}, "before is the node's state, which the module reads itself"),
    ({"type": "note", "text": "x", "seq": 4}, "seq is set by the ledger"),
    ({"type": "shim_patch", "api_version": "apps/v1", "kind": "Deployment", "name": "w"},
     "has no namespace (it needs kind, namespace, name)"),
    ({"type": "object", "api_version": "v1", "kind": "ConfigMap"}, "has no name (it needs api_version, kind, name)"),
    ({"type": "object", "api_version": "v1", "kind": "ConfigMap", "namespace": "a", "name": 5}, "name must be a string"),
    ({"type": "faults", "drill": "Bad"}, "entries[1] (type faults): drill 'Bad' must be"),
    ({"type": "note", "text": "x", "extra": {1, 2}}, "cannot be stored as JSON"),
])
def test_bad_entries_are_named(raw, fragment):
    with pytest.raises(LedgerError) as error:
        drill_ledger.validate_entry(raw, 1)
    assert fragment in str(error.value)


# --- updates ------------------------------------------------------------------------------------

def test_a_new_ledger_records_meta_and_entries_in_order():
    snap = node_restore.snapshot(node())
    ledger, added, created = drill_ledger.update(
        None, "xid79-0412", {"owner": "sre"}, entries({"type": "node", "node": "gpu-node-1"}, SHIM, FAULTS),
        {"gpu-node-1": snap}, T0)
    assert created
    assert ledger == {"version": 1, "drill": "xid79-0412", "created": T0, "meta": {"owner": "sre"}, "entries": added}
    assert [e["seq"] for e in added] == [1, 2, 3] and all(e["recorded"] == T0 for e in added)
    assert added[0]["before"] == snap and added[0]["before"] is not snap


def test_recorded_entries_are_not_added_again_and_the_first_node_snapshot_wins():
    first = node_restore.snapshot(node())
    ledger, _added, _created = drill_ledger.update(None, "d", {}, entries({"type": "node", "node": "gpu-node-1"}),
                                                   {"gpu-node-1": first}, T0)
    later = node_restore.snapshot(node(unschedulable=True, rv="300"))
    again, added, created = drill_ledger.update(
        ledger, "d", None, entries({"type": "node", "node": "gpu-node-1", "reason": "other"}, SHIM, dict(SHIM, xid=43)),
        {"gpu-node-1": later}, T1)
    assert not created
    assert [e["type"] for e in added] == ["shim_patch"] and added[0]["seq"] == 2 and added[0]["recorded"] == T1
    assert again["entries"][0]["before"] == first and "reason" not in again["entries"][0]
    assert again["created"] == T0
    unchanged, added, _created = drill_ledger.update(again, "d", None, entries(SHIM), {}, "2026-11-22T19:00:00Z")
    assert unchanged == again and added == []


def test_update_does_not_change_the_stored_ledger():
    ledger, _a, _c = drill_ledger.update(None, "d", {"a": 1}, entries(SHIM), {}, T0)
    stored = copy.deepcopy(ledger)
    drill_ledger.update(ledger, "d", {"a": 2}, entries(FAULTS), {}, T1)
    assert ledger == stored


def test_meta_is_merged_not_replaced():
    old = {"playbook": "xid79.yml", "targets": ["gpu-node-1"], "workload": {"kind": "Deployment", "name": "w"}}
    merged = drill_ledger.merge_meta(old, {"awx_job_id": 42, "targets": ["gpu-node-2"], "workload": {"namespace": "t"}})
    assert merged == {"playbook": "xid79.yml", "targets": ["gpu-node-2"], "awx_job_id": 42,
                      "workload": {"kind": "Deployment", "name": "w", "namespace": "t"}}
    assert old["workload"] == {"kind": "Deployment", "name": "w"}


def test_nodes_to_snapshot_are_the_new_ones_once_each():
    ledger, _a, _c = drill_ledger.update(None, "d", {}, entries({"type": "node", "node": "n1"}),
                                         {"n1": node_restore.snapshot(node())}, T0)
    wanted = entries({"type": "node", "node": "n1"}, {"type": "node", "node": "n2"}, {"type": "node", "node": "n2"}, SHIM)
    assert drill_ledger.nodes_to_snapshot(ledger, wanted) == ["n2"]
    assert drill_ledger.nodes_to_snapshot(None, wanted) == ["n1", "n2"]


def test_a_node_entry_without_a_snapshot_is_refused():
    with pytest.raises(LedgerError, match="no snapshot of node n1"):
        drill_ledger.update(None, "d", {}, entries({"type": "node", "node": "n1"}), {}, T0)


# --- stored form --------------------------------------------------------------------------------

def test_config_map_and_parse_round_trip():
    ledger, _a, _c = drill_ledger.update(None, "d1", {"owner": "sre"}, entries(SHIM), {}, T0)
    cm = drill_ledger.config_map(NS, ledger, "77")
    assert cm["metadata"] == {"name": "gpu-drill-d1", "namespace": NS, "resourceVersion": "77",
                              "labels": {"app.kubernetes.io/managed-by": "gpu_resilience.fault_injection",
                                         "fault-injection.gpu-resilience.io/drill-ledger": "d1"}}
    assert drill_ledger.is_ledger(cm)
    assert drill_ledger.parse(cm) == ledger
    assert drill_ledger.dump(copy.deepcopy(ledger)) == cm["data"]["ledger.json"]
    assert json.loads(cm["data"]["ledger.json"])["version"] == 1
    assert "resourceVersion" not in drill_ledger.config_map(NS, ledger)["metadata"]


@pytest.mark.parametrize("data, fragment", [
    ({}, "has no ledger.json"),
    ({"ledger.json": "{"}, "is not JSON"),
    ({"ledger.json": "[]"}, "is not a JSON object"),
    ({"ledger.json": '{"version": 2, "entries": []}'}, "has version 2; this collection reads version 1"),
    ({"ledger.json": '{"version": 1, "entries": [{"type": "pod"}]}'}, "has no valid entries list"),
    ({"ledger.json": '{"version": 1, "entries": [], "meta": []}'}, "meta that is not an object"),
])
def test_damaged_ledgers_are_described(data, fragment):
    cm = {"metadata": {"name": "gpu-drill-d"}, "data": data}
    with pytest.raises(LedgerError, match="ConfigMap gpu-drill-d"):
        drill_ledger.parse(cm)
    with pytest.raises(LedgerError) as error:
        drill_ledger.parse(cm)
    assert fragment in str(error.value)


def test_listed_ledgers_sort_by_created_and_keep_damaged_ones():
    def stored(drill, created, text=None):
        ledger = drill_ledger.new_ledger(drill, {}, created)
        cm = drill_ledger.config_map(NS, ledger)
        cm["metadata"].update(resourceVersion="5", creationTimestamp="2026-11-22T17:00:00Z")
        if text is not None:
            cm["data"]["ledger.json"] = text
        return cm
    found = drill_ledger.sort_listed([drill_ledger.listed(stored("b", T1)), drill_ledger.listed(stored("c", T0, "x")),
                                      drill_ledger.listed(stored("a", T0))])
    assert [(item["drill"], item["name"]) for item in found] == [("c", "gpu-drill-c"), ("a", "gpu-drill-a"),
                                                                 ("b", "gpu-drill-b")]
    assert "is not JSON" in found[0]["error"] and found[0]["created"] == "2026-11-22T17:00:00Z"
    assert found[1] == {"version": 1, "drill": "a", "created": T0, "meta": {}, "entries": [], "name": "gpu-drill-a",
                        "namespace": NS, "resource_version": "5"}


# --- the module's Ledgers against a stand-in API server -----------------------------------------

def ledgers(api, check_mode=False):
    """The module's Ledgers on the stand-in, with a clock that ticks a second per reading."""
    if not hasattr(api, "clock"):
        api.clock = iter("2026-11-22T18:%02d:%02d.000000Z" % divmod(s, 60) for s in range(3600))
    return module.Ledgers(api, NS, check_mode=check_mode, now=lambda: next(api.clock))


def stored_ledger(api, drill="d1"):
    return json.loads(api.objects[("ConfigMap", NS, "gpu-drill-" + drill)]["data"]["ledger.json"])


def test_present_creates_then_a_rerun_writes_nothing():
    api = FakeK8s(nodes=[node()])
    result = ledgers(api).present("d1", {"owner": "sre"}, [{"type": "node", "node": "gpu-node-1"}, SHIM])
    assert result["changed"] and result["created"] and len(result["added"]) == 2
    assert stored_ledger(api) == result["ledger"]
    assert result["ledger"]["entries"][0]["before"] == node_restore.snapshot(api.node("gpu-node-1"))
    assert result["resource_version"] == api.objects[("ConfigMap", NS, "gpu-drill-d1")]["metadata"]["resourceVersion"]
    assert result["diff"]["before"] == "" and json.loads(result["diff"]["after"]) == result["ledger"]
    writes = len(api.log)
    again = ledgers(api).present("d1", {"owner": "sre"}, [{"type": "node", "node": "gpu-node-1"}, SHIM])
    assert not again["changed"] and again["added"] == [] and not again["created"]
    assert len(api.log) == writes
    assert again["diff"]["before"] == again["diff"]["after"]


def test_a_later_node_entry_keeps_the_state_before_the_drill():
    api = FakeK8s(nodes=[node()])
    ledgers(api).present("d1", None, [{"type": "node", "node": "gpu-node-1"}])
    first = stored_ledger(api)["entries"][0]["before"]
    api.update_node("gpu-node-1", lambda n: n["spec"].update(unschedulable=True))
    result = ledgers(api).present("d1", None, [{"type": "node", "node": "gpu-node-1"}])
    assert not result["changed"]
    assert stored_ledger(api)["entries"][0]["before"] == first and first["unschedulable"] is False


def test_a_missing_node_fails_and_records_nothing():
    api = FakeK8s(nodes=[node()])
    with pytest.raises(KubeError, match="node gpu-node-7 not found, so its state before the drill cannot be recorded; "
                                        "nothing was recorded"):
        ledgers(api).present("d1", None, [SHIM, {"type": "node", "node": "gpu-node-1"},
                                          {"type": "node", "node": "gpu-node-7"}])
    assert api.log == [] and ("ConfigMap", NS, "gpu-drill-d1") not in api.objects


def test_a_missing_namespace_names_the_role_that_creates_it():
    api = FakeK8s(namespaces=())
    with pytest.raises(KubeError, match="namespace gpu-fault-injection does not exist.*"
                                        "gpu_resilience.fault_injection.fault_injector_agent"):
        ledgers(api).present("d1", None, [SHIM])
    assert api.log == []


def test_concurrent_append_between_read_and_write_is_retried_and_both_kept():
    """Another run appends to the ledger after our read: our conditional replace gets 409, we read
    again and add our entry to theirs."""
    api = FakeK8s()
    ledgers(api).present("d1", None, [SHIM])

    def other_run(_verb, _body):
        ledgers(api).present("d1", {"other": True}, [FAULTS])
    api.before_write = [other_run]
    result = ledgers(api).present("d1", {"mine": True}, [{"type": "note", "text": "armed"}])
    assert result["changed"]
    replaces = api.calls("replace")
    assert len(replaces) == 3, "first write, the other run's, our retry"
    stored = stored_ledger(api)
    assert [(e["type"], e["seq"]) for e in stored["entries"]] == [("shim_patch", 1), ("faults", 2), ("note", 3)]
    assert stored["meta"] == {"other": True, "mine": True}
    assert result["ledger"] == stored


def test_concurrent_creation_is_retried_as_an_update():
    api = FakeK8s()
    api.before_write = [lambda _verb, _body: ledgers(api).present("d1", {"by": "other"}, [FAULTS])]
    result = ledgers(api).present("d1", {"by": "me"}, [SHIM])
    assert not result["created"] and result["changed"]
    assert [v for v, _b in api.log] == ["create", "create", "replace"]
    assert [e["type"] for e in stored_ledger(api)["entries"]] == ["faults", "shim_patch"]
    assert stored_ledger(api)["meta"] == {"by": "me"}


def test_gives_up_after_repeated_conflicts():
    api = FakeK8s()
    ledgers(api).present("d1", None, [SHIM])
    counter = iter(range(100))
    api.before_write = [lambda _v, _b: ledgers(api).present("d1", None, [{"type": "note", "text": str(next(counter))}])
                        for _i in range(module.MAX_ATTEMPTS)]
    with pytest.raises(KubeError, match="ConfigMap gpu-fault-injection/gpu-drill-d1 kept changing"):
        ledgers(api).present("d1", None, [FAULTS])
    assert not any(e["type"] == "faults" for e in stored_ledger(api)["entries"])


def test_check_mode_predicts_and_writes_nothing():
    api = FakeK8s(nodes=[node()])
    result = ledgers(api, check_mode=True).present("d1", {"a": 1}, [{"type": "node", "node": "gpu-node-1"}])
    assert result["changed"] and result["created"] and result["resource_version"] is None
    assert result["ledger"]["entries"][0]["before"]["labels"]["kubernetes.io/hostname"] == "gpu-node-1"
    assert api.log == []
    ledgers(api).present("d1", {"a": 1}, [SHIM])
    stored = copy.deepcopy(api.objects)
    result = ledgers(api, check_mode=True).present("d1", None, [FAULTS])
    assert result["changed"] and [e["seq"] for e in result["added"]] == [2]
    assert api.objects == stored
    result = ledgers(api, check_mode=True).absent("d1")
    assert result["changed"] and api.objects == stored


def test_someone_elses_config_map_is_left_alone():
    api = FakeK8s()
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gpu-drill-d1", "namespace": NS},
             "data": {"x": "y"}})
    for call in (lambda: ledgers(api).present("d1", None, [SHIM]), lambda: ledgers(api).absent("d1")):
        with pytest.raises(KubeError, match="gpu-drill-d1 .*is not a drill ledger"):
            call()
    assert api.log == []


def test_a_damaged_ledger_is_listed_never_overwritten_and_can_be_deleted():
    api = FakeK8s()
    ledgers(api).present("d1", None, [SHIM])
    api.objects[("ConfigMap", NS, "gpu-drill-d1")]["data"]["ledger.json"] = '{"version": 1, "entr'
    with pytest.raises(KubeError, match="is not JSON.*the ledger is left as it is"):
        ledgers(api).present("d1", None, [FAULTS])
    listed = info_module.read_ledgers(api, NS)[0]
    assert len(listed) == 1 and "is not JSON" in listed[0]["error"] and listed[0]["drill"] == "d1"
    handle = ledgers(api)
    result = handle.absent("d1")
    assert result["changed"] and result["ledger"] is None and "could not be read" in handle.warnings[0]
    assert ("ConfigMap", NS, "gpu-drill-d1") not in api.objects


def test_absent_deletes_at_the_version_read_and_is_idempotent():
    api = FakeK8s()
    ledgers(api).present("d1", None, [SHIM])
    api.before_write = [lambda _v, _b: ledgers(api).present("d1", None, [FAULTS])]
    result = ledgers(api).absent("d1")
    assert result["changed"] and [e["type"] for e in result["ledger"]["entries"]] == ["shim_patch", "faults"], \
        "a delete that raced an append is redone, returning the ledger actually deleted"
    deletes = api.calls("delete")
    assert len(deletes) == 2 and all(body["preconditions"]["resourceVersion"] for _v, body in deletes)
    assert not ledgers(api).absent("d1")["changed"]


def test_info_lists_oldest_first_and_filters_by_drill():
    api = FakeK8s()
    ledgers(api).present("d2", None, [SHIM])
    ledgers(api).present("d1", None, [FAULTS])
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated", "namespace": NS}, "data": {}})
    found, warnings = info_module.read_ledgers(api, NS)
    assert [item["drill"] for item in found] == ["d2", "d1"] and warnings == []
    assert [item["drill"] for item in info_module.read_ledgers(api, NS, "d1")[0]] == ["d1"]
    assert info_module.read_ledgers(api, NS, "d3")[0] == []


def test_info_in_a_missing_namespace_warns():
    assert info_module.read_ledgers(FakeK8s(namespaces=()), NS) == (
        [], ["namespace gpu-fault-injection does not exist, so it holds no drill ledgers"])


def test_check_params():
    assert module.check_params(dict(state="absent", entries=[SHIM], meta=None)) == \
        "entries are recorded only with state=present"
    assert module.check_params(dict(state="absent", entries=[], meta={"a": 1})) == "meta is recorded only with state=present"
    assert module.check_params(dict(state="present", entries=[SHIM], meta={"a": 1})) is None


# --- stored form of a fleet's ledger ------------------------------------------------------------

def fleet_ledger(nodes):
    """A ledger with a node entry and a realistic snapshot for each of `nodes` nodes."""
    ledger = drill_ledger.new_ledger("fleet-500", {"targets": nodes}, T0)
    for seq, name in enumerate(nodes, 1):
        snapshot = node_restore.snapshot(node(labels={"kubernetes.io/hostname": name}))
        snapshot["annotations"]["gpu-healthcheck.aws-samples.io/results"] = json.dumps({"checks": {
            c: {"detail": "disabled in the configuration", "severity": "PASS", "status": "skipped", "time": T0}
            for c in ("ecc", "efa", "gpu_count", "gpu_state", "nvlink", "retired_pages")}})
        ledger["entries"].append({"type": "node", "node": name, "before": snapshot, "seq": seq, "recorded": T0})
    return ledger


def test_a_small_ledger_is_stored_as_readable_json():
    ledger = fleet_ledger(["gpu-node-1"])
    stored = drill_ledger.config_map(NS, ledger)
    assert set(stored) >= {"data"} and "binaryData" not in stored
    assert drill_ledger.parse(stored) == ledger


def test_a_fleets_ledger_is_gzipped_under_binary_data_and_reads_back_the_same():
    ledger = fleet_ledger(["gpu-node-%d" % i for i in range(500)])
    assert len(drill_ledger.dump(ledger)) > drill_ledger.INLINE_LIMIT
    stored = drill_ledger.config_map(NS, ledger, "41")
    assert "data" not in stored
    packed = stored["binaryData"][drill_ledger.GZIP_KEY]
    assert len(packed) < 256 * 1024
    assert drill_ledger.parse(stored) == ledger
    # The same ledger gives the same bytes (no gzip timestamp), so a rerun writes nothing new.
    assert drill_ledger.config_map(NS, copy.deepcopy(ledger), "41") == stored


def test_a_damaged_gzipped_ledger_is_a_ledger_error():
    stored = {"metadata": {"name": "gpu-drill-x"}, "binaryData": {drill_ledger.GZIP_KEY: "bm90IGd6aXA="}}
    with pytest.raises(LedgerError, match="not gzipped base64"):
        drill_ledger.parse(stored)


def test_a_fleets_nodes_are_read_with_one_list_and_missing_ones_named():
    names = ["gpu-node-%d" % i for i in range(12)]
    fleet = []
    for name in names:
        obj = node(labels={"kubernetes.io/hostname": name})
        obj["metadata"]["name"] = name
        fleet.append(obj)
    api = FakeK8s(nodes=fleet)
    reads = []
    real_get = api.get

    def counting_get(res, name=None, **kwargs):
        reads.append((res.kind, name))
        return real_get(res, name=name, **kwargs)
    api.get = counting_get
    result = ledgers(api).present("fleet", None, [{"type": "node", "node": n} for n in names])
    assert [e["node"] for e in result["ledger"]["entries"]] == names
    assert [r for r in reads if r[0] == "Node"] == [("Node", None)]   # one list, no GET per node
    with pytest.raises(KubeError, match="nodes gpu-node-40, gpu-node-41 not found"):
        ledgers(api).present("fleet2", None, [{"type": "node", "node": n} for n in names + ["gpu-node-40", "gpu-node-41"]])
