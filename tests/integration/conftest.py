"""Fixtures for tests that run against the local control plane (tools/local-cluster up).

The test runner (tools/test.sh) exports KUBECONFIG; these tests fail, not skip, without it, so a
run that silently tested nothing cannot pass.
"""
import os
import uuid

import pytest
from kubernetes import client, config

from support import exists, wait_until


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs the local control plane")


@pytest.fixture(scope="session")
def api_client():
    path = os.environ.get("KUBECONFIG")
    if not path or not os.path.exists(path):
        pytest.fail("KUBECONFIG must name the local cluster's kubeconfig: run `tools/local-cluster up` "
                    "and `eval $(tools/local-cluster env)`, or use `make test`")
    return config.new_client_from_config(config_file=path)


@pytest.fixture(scope="session")
def core(api_client):
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def apps(api_client):
    return client.AppsV1Api(api_client)


@pytest.fixture(scope="session")
def policy(api_client):
    return client.PolicyV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client):
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def batch(api_client):
    return client.BatchV1Api(api_client)


@pytest.fixture()
def namespace(core):
    """A fresh namespace per test, deleted afterwards (its pods go with it)."""
    name = "it-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name, "labels": {"gpu-resilience.io/test": "true"}}})
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    wait_until(lambda: exists(lambda: core.read_namespaced_service_account("default", name)), 30,
               "default ServiceAccount in " + name)
    yield name
    core.delete_namespace(name)
