"""workload_check run through `ansible localhost -m`: bad options fail with a clear message before
any cluster is contacted (the kubeconfig named here does not exist), and the documentation loads."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
FQCN = "gpu_resilience.fault_injection.workload_check"


def run(args, *extra):
    """Run the module on localhost with the virtualenv's ansible; return the task result."""
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    assert os.path.exists(ansible), "ansible not found next to %s (run with the project's virtualenv)" % sys.executable
    subprocess.run([os.path.join(ROOT, "tools", "collection-tree.sh")], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_NOCOLOR="1", K8S_AUTH_KUBECONFIG="/nonexistent/kubeconfig")
    env.pop("KUBECONFIG", None)
    argv = [ansible, "localhost", "-i", "localhost,", "-c", "local", "-m", FQCN, "-a", json.dumps(args),
            "-e", "ansible_python_interpreter=" + sys.executable] + list(extra)
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120, check=False)
    try:
        return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        pytest.fail("no result from %s (rc %d)\nstdout:\n%s\nstderr:\n%s" % (FQCN, proc.returncode, proc.stdout,
                                                                             proc.stderr))


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
