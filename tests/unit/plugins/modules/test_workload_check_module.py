"""workload_check run through `ansible localhost -m`: bad options fail with a clear message before
any cluster is contacted (the kubeconfig named here does not exist), and the documentation loads."""
import json

import pytest

from ansible_cli import run_module

FQCN = "gpu_resilience.fault_injection.workload_check"


def run(args, *extra):
    return run_module(FQCN, args, *extra)


@pytest.mark.parametrize("args, message", [
    ({"name": "vllm", "namespace": "inference", "min_pods": 0}, "min_pods must be at least 1"),
    ({"name": "vllm", "namespace": "inference", "nodes": ["gpu-node-1"], "probe": {"url": "http://llm"}},
     "probe.url answers for the whole workload"),
    ({"name": "vllm", "namespace": "inference", "probe": {"port": "Bad_Name"}}, "probe.port 'Bad_Name' is neither"),
    ({"name": "vllm", "namespace": "inference", "probe": {"type": "none", "path": "/x"}},
     "probe.path has no use with probe.type none"),
    ({"name": "vllm", "namespace": "inference", "expect": "failing", "exclude_nodes": ["n"]},
     "exclude_nodes applies to expect=serving"),
    ({"name": "vllm", "namespace": "inference", "interval": 0}, "interval must be more than 0 seconds"),
    ({"name": "vllm", "label_selector": "app=vllm", "namespace": "inference"},
     "parameters are mutually exclusive: name|label_selector"),
    ({"label_selector": "app=vllm", "kind": "StatefulSet", "namespace": "inference"},
     "parameters are mutually exclusive: label_selector|kind"),
    ({"namespace": "inference"}, "one of the following is required: name, label_selector"),
    ({"name": "vllm", "namespace": "inference", "kind": "CronJob"}, "value of kind must be one of"),
])
def test_bad_options_fail_cleanly_without_a_cluster(args, message):
    result = run(args)
    assert result.get("failed") is True, result
    assert message in result["msg"], result["msg"]
    assert "Traceback" not in json.dumps(result)


def test_an_unreachable_cluster_is_a_clear_error():
    result = run({"name": "vllm", "namespace": "inference"}, "--check")
    assert result.get("failed") is True and "Traceback" not in json.dumps(result), result
    assert result["msg"].startswith("cannot reach the Kubernetes API: "), result
