"""Small helpers shared by the integration tests."""
import importlib.util
import os
import time

import pytest
from kubernetes import client


def exists(read):
    """True if `read()` finds the object, False on 404."""
    try:
        read()
        return True
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise


def wait_until(check, timeout, what, interval=0.2):
    """Poll `check` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail("timed out after %ss waiting for %s (last value: %r)" % (timeout, what, last))


def _load_localcluster():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "tools", "localcluster", "localcluster.py")
    spec = importlib.util.spec_from_file_location("localcluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


localcluster = _load_localcluster()
