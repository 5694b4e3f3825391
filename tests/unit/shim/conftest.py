"""Fixtures shared by the shim's tests."""
import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_control


@pytest.fixture
def control(tmp_path):
    """A control-file path in a fresh directory (the file itself does not exist yet)."""
    (tmp_path / "ctl").mkdir()
    return tmp_path / "ctl" / shim_control.CONTROL_FILE
