"""kube.Waiting and kube.finish: a module reports the seconds it spent blocked on the cluster."""
import time

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import kube


class FakeModule:
    _diff = False

    def __init__(self):
        self.exited = None
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)

    def exit_json(self, **result):
        self.exited = result


@pytest.fixture(autouse=True)
def fresh_counter(monkeypatch):
    monkeypatch.setattr(kube, "_WAITED", [0.0])


def test_finish_leaves_waited_out_when_the_module_never_waited():
    module = FakeModule()
    kube.finish(module, {"changed": False, "diff": {"before": {}}})
    assert module.exited == {"changed": False}


def test_waiting_blocks_add_up_and_finish_returns_them():
    for _round in range(2):
        with kube.Waiting():
            time.sleep(0.02)
    assert 0.04 <= kube.waited() < 1.0
    module = FakeModule()
    kube.finish(module, {"changed": True}, warnings=["w"])
    assert module.exited["waited_seconds"] == kube.waited()
    assert module.warnings == ["w"]


def test_an_exception_inside_still_counts_and_propagates():
    with pytest.raises(RuntimeError):
        with kube.Waiting():
            time.sleep(0.01)
            raise RuntimeError("watch broke")
    assert kube.waited() >= 0.01
