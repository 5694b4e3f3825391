"""node_marks_restore run through `ansible localhost -m`: the single form (name, before) and the list
form (nodes) exclude each other, and a bad combination fails with a clear message before any cluster
is contacted (the kubeconfig named here does not exist)."""
import json

import pytest

from ansible_cli import run_module

FQCN = "gpu_resilience.fault_injection.node_marks_restore"
BEFORE = {"unschedulable": False, "taints": [], "labels": {}, "annotations": {}}


def run(args, *extra):
    return run_module(FQCN, args, *extra)


@pytest.mark.parametrize("args, message", [
    ({"scope": {"taints": False}}, "one of the following is required: name, nodes"),
    ({"name": "gpu-node-1"}, "parameters are required together: name, before"),
    ({"before": BEFORE}, "parameters are required together: name, before"),
    ({"name": "gpu-node-1", "before": BEFORE, "nodes": [{"name": "gpu-node-2", "before": BEFORE}]},
     "parameters are mutually exclusive: name|nodes"),
    ({"before": BEFORE, "nodes": [{"name": "gpu-node-2", "before": BEFORE}]},
     "parameters are mutually exclusive: before|nodes"),
    ({"nodes": [{"name": "gpu-node-2"}]}, "missing required arguments: before found in nodes"),
    ({"nodes": [{"name": "gpu-node-2", "before": BEFORE, "extra": 1}]}, "Unsupported parameters"),
])
def test_bad_options_fail_cleanly_without_a_cluster(args, message):
    result = run(args)
    assert result.get("failed") is True, result
    assert message in result["msg"], result["msg"]
    assert "Traceback" not in json.dumps(result)


@pytest.mark.parametrize("args", [
    {"name": "gpu-node-1", "before": BEFORE},
    {"nodes": [{"name": "gpu-node-1", "before": BEFORE}, {"name": "gpu-node-2", "before": BEFORE}]},
])
def test_either_form_is_accepted_and_then_needs_the_cluster(args):
    result = run(args, "--check")
    assert result.get("failed") is True and "Traceback" not in json.dumps(result), result
    assert result["msg"].startswith("cannot reach the Kubernetes API: "), result
    assert result.get("changed") is False and "restored_nodes" not in result
