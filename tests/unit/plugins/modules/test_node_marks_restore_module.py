"""node_marks_restore run through `ansible localhost -m`: the single form (name, before) and the list
form (nodes) exclude each other, and a bad combination fails with a clear message before any cluster
is contacted (the kubeconfig named here does not exist)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
FQCN = "gpu_resilience.fault_injection.node_marks_restore"
BEFORE = {"unschedulable": False, "taints": [], "labels": {}, "annotations": {}}


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
