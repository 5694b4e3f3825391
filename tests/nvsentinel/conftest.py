"""The NVSentinel lane's tests run against a local control plane of their own, brought up with
`tools/local-cluster up --nvsentinel` (NVIDIA NVSentinel built from source, deployed by its chart)
and the API server's audit log on, in build/localcluster-nvsentinel, on ports 500 above the main
test cluster's. NVSentinel reacts to every XID on its cluster, so it gets no cluster that other
tests inject into. `tools/test.sh nvsentinel` (part of `make test`) runs them; they fail, never
skip, when the cluster cannot be brought up.

This process's environment points at that cluster (KUBECONFIG, LOCALCLUSTER_*), so the shared
helpers (tests/integration/support.py) and Ansible use it: run this directory in its own pytest.
"""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATE = os.path.join(ROOT, "build", "localcluster-nvsentinel")
PORT_BASE = int(os.environ.get("LOCALCLUSTER_PORT_BASE", "26000")) + 500
POD_NET = int(os.environ.get("LOCALCLUSTER_POD_NET", "128")) + 8
NODES = 3
CLUSTER_ENV = {"LOCALCLUSTER_DIR": STATE, "LOCALCLUSTER_PORT_BASE": str(PORT_BASE),
               "LOCALCLUSTER_POD_NET": str(POD_NET), "LOCALCLUSTER_AUDIT": "1",
               "LOCALCLUSTER_RUNNER_STATE": os.path.join(STATE, "runner"),
               "KUBECONFIG": os.path.join(STATE, "kubeconfig"), "K8S_AUTH_KUBECONFIG": os.path.join(STATE, "kubeconfig")}
# Before support.py is imported: its paths come from the environment.
os.environ.update(CLUSTER_ENV)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))


def local_cluster(*args, check=True):
    return subprocess.run([os.path.join(ROOT, "tools", "local-cluster"), *args], check=check,
                          capture_output=True, text=True)


@pytest.fixture(scope="session")
def nvsentinel_cluster():
    """The cluster, up with NVSentinel for the whole session and down afterwards; yields its up time."""
    local_cluster("down")
    started = time.monotonic()
    up = local_cluster("up", "--nodes", str(NODES), "--nvsentinel", check=False)
    seconds = time.monotonic() - started
    if up.returncode:
        local_cluster("down", check=False)
        pytest.fail("tools/local-cluster up --nvsentinel failed (exit %d):\n%s"
                    % (up.returncode, (up.stdout + up.stderr)[-6000:]))
    print("\n[nvsentinel] cluster with NVSentinel up in %.1f s" % seconds)
    yield seconds
    local_cluster("down", check=False)


@pytest.fixture(scope="session")
def api_client(nvsentinel_cluster):
    from kubernetes import config
    return config.new_client_from_config(config_file=os.environ["KUBECONFIG"])


@pytest.fixture(scope="session")
def core(api_client):
    from kubernetes import client
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client):
    from kubernetes import client
    return client.CustomObjectsApi(api_client)
