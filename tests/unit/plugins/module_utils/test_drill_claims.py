"""drill_claims and the drill_claim module: names, who holds what, the refusal's message, and claims
made all or none against the stand-in API server, also when another drill wins a race half-way."""
import re

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import drill_claims as dc
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.drill_claims import ClaimError
from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils.kube import KubeError
from ansible_collections.gpu_resilience.fault_injection.plugins.modules import drill_claim

from test_node_restore import FakeK8s, node  # the stand-in API server and a realistic node

NS = "gpu-fault-injection"
NOW = "2026-11-24T09:12:01.104223Z"
WORKLOAD = {"kind": "Deployment", "namespace": "gpu-demo", "name": "gpu-inference"}


def nodes(*names, labels=None):
    out = []
    for name in names:
        obj = node(labels=(labels or {}).get(name))
        obj["metadata"]["name"] = name
        out.append(obj)
    return out


def cluster(*names, labels=None):
    return FakeK8s(nodes=nodes(*(names or ("gpu-node-0", "gpu-node-1", "gpu-node-2")), labels=labels))


def claims_of(api):
    return dict((key[2], obj) for key, obj in api.objects.items() if key[0] == "Lease")


def claimer(api, check_mode=False):
    return drill_claim.Claims(api, NS, check_mode=check_mode, now=lambda: NOW)


# --- names and targets ----------------------------------------------------------------------------

def test_claim_names_say_what_is_claimed_and_never_collide():
    assert dc.claim_name(dc.node_target("gpu-node-1")) == "gpu-drill-claim.node.gpu-node-1"
    assert dc.claim_name(dc.workload_target(WORKLOAD)) == "gpu-drill-claim.deployment.gpu-demo.gpu-inference"
    # namespace a-b, name c and namespace a, name b-c: the dot keeps them apart
    first = dc.workload_target({"kind": "Deployment", "namespace": "a-b", "name": "c"})
    second = dc.workload_target({"kind": "Deployment", "namespace": "a", "name": "b-c"})
    assert dc.claim_name(first) != dc.claim_name(second)
    long_name = "n" * 250
    name = dc.claim_name(dc.node_target(long_name))
    assert len(name) <= 253 and name != dc.claim_name(dc.node_target("n" * 249))


def test_targets_are_checked_deduplicated_and_in_claim_order():
    wanted = dc.targets(["gpu-node-2", "gpu-node-1", "gpu-node-2"], [WORKLOAD])
    assert [dc.claim_name(t) for t in wanted] == [
        "gpu-drill-claim.deployment.gpu-demo.gpu-inference", "gpu-drill-claim.node.gpu-node-1",
        "gpu-drill-claim.node.gpu-node-2"]
    assert wanted[0]["api_version"] == "apps/v1"


@pytest.mark.parametrize("nodes_, workloads, fragment", [
    (["Bad_Node"], [], "'Bad_Node' is not a valid Kubernetes node name"),
    ([], [{"kind": "deployment", "namespace": "a", "name": "b"}], "kind 'deployment' is not a Kubernetes kind"),
    ([], [{"kind": "Deployment", "namespace": "a.b", "name": "b"}], "workload namespace 'a.b'"),
    ([], [{"kind": "Deployment", "namespace": "a"}], "workload name None"),
    ([], ["web"], "a workload must be a dict"),
])
def test_bad_targets_are_named(nodes_, workloads, fragment):
    with pytest.raises(ClaimError, match=re.escape(fragment)):
        dc.targets(nodes_, workloads)


def test_a_lease_round_trips_through_parse():
    target = dc.node_target("gpu-node-1")
    lease = dc.lease(NS, "drill-a", target, NOW, {"awx_job_id": "17"})
    assert lease["spec"] == {"holderIdentity": "drill-a", "acquireTime": NOW, "renewTime": NOW}
    assert dc.is_claim(lease) and "leaseDurationSeconds" not in lease["spec"]
    parsed = dc.parse(lease)
    assert (parsed["drill"], parsed["target"], parsed["acquired"]) == ("drill-a", target, NOW)
    assert parsed["meta"] == {"awx_job_id": "17"}
    assert dc.age_seconds(parsed, dc.drill_report.seconds(dc.drill_report.parse_time(NOW)) + 75.5) == 75.5
    assert dc.age_seconds({"acquired": "yesterday"}) is None


# --- who holds what -----------------------------------------------------------------------------

def claim(drill, target, acquired=NOW, meta=None):
    return dc.parse(dc.lease(NS, drill, target, acquired, meta))


def test_conflicts_are_other_drills_claims_and_their_leftover_labels():
    wanted = dc.targets(["gpu-node-0", "gpu-node-1", "gpu-node-2"], [WORKLOAD])
    held = {dc.claim_name(wanted[0]): claim("drill-a", wanted[0]), dc.claim_name(wanted[1]): claim("drill-b", wanted[1])}
    labels = {"gpu-node-0": "drill-b", "gpu-node-1": None, "gpu-node-2": "drill-c"}
    found = dc.conflicts("drill-b", wanted, held, labels)
    assert [(dc.describe_target(c["target"]), c["holder"], c["how"]) for c in found] == [
        ("Deployment gpu-demo/gpu-inference", "drill-a", "claim"), ("node gpu-node-2", "drill-c", "label")]
    assert dc.to_create("drill-b", wanted, held) == [wanted[0], wanted[2], wanted[3]]


def test_the_refusal_names_the_holder_its_age_and_how_to_release_it():
    target = dc.node_target("gpu-node-1")
    now = dc.drill_report.seconds(dc.drill_report.parse_time(NOW)) + 192.5
    held = claim("drill-a", target, meta={"awx_job_id": "17"})
    found = [{"target": target, "holder": "drill-a", "how": "claim", "claim": held},
             {"target": dc.node_target("gpu-node-2"), "holder": "drill-c", "how": "label", "claim": None}]
    message = dc.refusal("drill-b", found, NS, now)
    assert message.startswith("Drill drill-b refused: one drill per node and per workload at a time, and node gpu-node-1 is "
                              "held by drill drill-a since %s (3 min 12.5 s ago, AWX job 17; Lease %s/"
                              "gpu-drill-claim.node.gpu-node-1)" % (NOW, NS))
    assert ("node gpu-node-2 carries the label fault-injection.gpu-resilience.io/drill=drill-c of drill drill-c, "
            "which holds no claim on it") in message
    assert "nothing was changed" in message and "Wait for drills drill-a, drill-c to finish" in message
    assert message.endswith("ansible-playbook gpu_resilience.fault_injection.cleanup -e fault_cleanup_drill=drill-a "
                            "and ansible-playbook gpu_resilience.fault_injection.cleanup -e fault_cleanup_drill=drill-c.")


# --- the module's claims against the stand-in API server -------------------------------------------

def test_all_targets_are_claimed_then_a_rerun_changes_nothing():
    api = cluster()
    result = claimer(api).present("drill-a", ["gpu-node-1"], [WORKLOAD], {"awx_job_id": "17"})
    assert result["changed"] and [c["created"] for c in result["claims"]] == [True, True]
    leases = claims_of(api)
    assert sorted(leases) == ["gpu-drill-claim.deployment.gpu-demo.gpu-inference", "gpu-drill-claim.node.gpu-node-1"]
    assert all(lease["spec"]["holderIdentity"] == "drill-a" for lease in leases.values())
    again = claimer(api).present("drill-a", ["gpu-node-1"], [WORKLOAD], None)
    assert not again["changed"] and [c["created"] for c in again["claims"]] == [False, False]
    assert len(api.calls("create")) == 2


def test_a_held_target_refuses_the_whole_claim_without_a_write():
    api = cluster()
    claimer(api).present("drill-a", ["gpu-node-1"], [], None)
    writes = len(api.log)
    with pytest.raises(drill_claim.Refused, match="node gpu-node-1 is held by drill drill-a"):
        claimer(api).present("fleet-b", ["gpu-node-0", "gpu-node-1", "gpu-node-2"], [], None)
    assert len(api.log) == writes
    assert list(claims_of(api)) == ["gpu-drill-claim.node.gpu-node-1"]


def test_a_node_with_a_leftover_drill_label_is_refused():
    api = cluster(labels={"gpu-node-1": {dc.NODE_DRILL_LABEL: "drill-killed"}})
    with pytest.raises(drill_claim.Refused, match="carries the label .*drill=drill-killed"):
        claimer(api).present("drill-b", ["gpu-node-1"], [], None)
    assert not api.log
    # The drill's own label (a rerun of the same drill) is no conflict.
    assert claimer(api).present("drill-killed", ["gpu-node-1"], [], None)["changed"]


def test_losing_a_race_half_way_deletes_what_was_made_and_refuses():
    api = cluster()
    # Another drill claims gpu-node-2 between our list and our creates.
    other = dc.lease(NS, "drill-fast", dc.node_target("gpu-node-2"), NOW)
    api.before_write.append(lambda verb, body: api.put(other))
    with pytest.raises(drill_claim.Refused, match="node gpu-node-2 is held by drill drill-fast"):
        claimer(api).present("fleet-b", ["gpu-node-1", "gpu-node-2"], [], None)
    assert [(verb, (body or {}).get("metadata", {}).get("name")) for verb, body in api.log] == [
        ("create", "gpu-drill-claim.node.gpu-node-1"), ("create", "gpu-drill-claim.node.gpu-node-2"), ("delete", None)]
    assert list(claims_of(api)) == ["gpu-drill-claim.node.gpu-node-2"]
    assert claims_of(api)["gpu-drill-claim.node.gpu-node-2"]["spec"]["holderIdentity"] == "drill-fast"


def test_a_lease_of_the_same_name_that_is_no_claim_is_left_alone():
    api = cluster()
    stranger = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "gpu-drill-claim.node.gpu-node-1", "namespace": NS}, "spec": {}}
    api.put(stranger)
    with pytest.raises(KubeError, match="exists but is not a drill claim"):
        claimer(api).present("drill-a", ["gpu-node-1"], [], None)
    assert list(claims_of(api)) == ["gpu-drill-claim.node.gpu-node-1"]


def test_check_mode_predicts_and_refuses_like_the_real_run():
    api = cluster()
    result = claimer(api, check_mode=True).present("drill-a", ["gpu-node-1"], [WORKLOAD], None)
    assert result["changed"] and [c["created"] for c in result["claims"]] == [True, True] and not api.log
    claimer(api).present("drill-c", ["gpu-node-1"], [], None)
    with pytest.raises(drill_claim.Refused):
        claimer(api, check_mode=True).present("drill-a", ["gpu-node-1"], [], None)


def test_a_missing_node_is_named_and_nothing_is_claimed():
    api = cluster("gpu-node-1")
    with pytest.raises(KubeError, match="node gpu-node-9 not found: nothing was claimed"):
        claimer(api).present("drill-a", ["gpu-node-1", "gpu-node-9"], [], None)
    assert not api.log


def test_release_deletes_only_the_drills_own_claims():
    api = cluster()
    claimer(api).present("drill-a", ["gpu-node-1"], [WORKLOAD], None)
    claimer(api).present("drill-b", ["gpu-node-2"], [], None)
    would = claimer(api, check_mode=True).absent("drill-a")
    assert would["changed"] and len(would["claims"]) == 2 and len(claims_of(api)) == 3
    released = claimer(api).absent("drill-a")
    assert sorted(c["name"] for c in released["claims"]) == ["gpu-drill-claim.deployment.gpu-demo.gpu-inference",
                                                             "gpu-drill-claim.node.gpu-node-1"]
    assert list(claims_of(api)) == ["gpu-drill-claim.node.gpu-node-2"]
    assert not claimer(api).absent("drill-a")["changed"]


def test_release_leaves_a_claim_replaced_since_by_another_drill():
    api = cluster()
    claimer(api).present("drill-a", ["gpu-node-1"], [], None)

    def replace(verb, body):
        # Between our list and our delete: the claim is released and another drill claims the node.
        del api.objects[("Lease", NS, "gpu-drill-claim.node.gpu-node-1")]
        api.put(dc.lease(NS, "drill-b", dc.node_target("gpu-node-1"), NOW))
    api.before_write.append(replace)
    claimer(api).absent("drill-a")
    assert claims_of(api)["gpu-drill-claim.node.gpu-node-1"]["spec"]["holderIdentity"] == "drill-b"


@pytest.mark.parametrize("params, message", [
    (dict(state="absent", nodes=["n"], workloads=[]), "state=absent releases every claim of the drill"),
    (dict(state="present", nodes=[], workloads=[]), "state=present needs nodes or workloads"),
])
def test_bad_combinations_are_refused(params, message):
    assert message in drill_claim.check_params(params)
