"""Run one of the collection's modules for real, through `ansible localhost -m`, as the module tests do."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def run_module(fqcn, args, *extra):
    """The task result of module fqcn with args (extra: more ansible options, e.g. --check), run with the
    virtualenv's ansible and a kubeconfig that does not exist, so nothing reaches a cluster."""
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    assert os.path.exists(ansible), "ansible not found next to %s (run with the project's virtualenv)" % sys.executable
    subprocess.run([os.path.join(ROOT, "tools", "collection-tree.sh")], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_NOCOLOR="1", K8S_AUTH_KUBECONFIG="/nonexistent/kubeconfig")
    env.pop("KUBECONFIG", None)
    argv = [ansible, "localhost", "-i", "localhost,", "-c", "local", "-m", fqcn, "-a", json.dumps(args),
            "-e", "ansible_python_interpreter=" + sys.executable] + list(extra)
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120, check=False)
    try:
        return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        pytest.fail("no result from %s (rc %d)\nstdout:\n%s\nstderr:\n%s" % (fqcn, proc.returncode, proc.stdout,
                                                                             proc.stderr))
