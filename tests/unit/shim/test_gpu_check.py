"""files/shim/tests/gpu_check.py, the one-command GPU check, where there is no GPU: it must refuse
to run and say what is missing, and its verdicts and summary must follow its report."""
import copy
import importlib.util
import subprocess
import sys

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import xid_catalog
from shim_build import FIXTURES, clean_env, compile_all, fake_driver_job

SCRIPT = FIXTURES / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def run_script(tmp_path, **env):
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], env=clean_env(**env),
                          capture_output=True, text=True, timeout=300, check=False)


def test_without_a_gpu_it_runs_nothing_and_says_why(tmp_path):
    proc = run_script(tmp_path, LD_LIBRARY_PATH=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.startswith("GPU check not run; missing:")
    assert "no NVIDIA driver: libcuda.so.1 cannot be loaded" in proc.stderr
    assert "PyTorch cannot be imported" in proc.stderr   # this virtualenv has no PyTorch
    assert not (tmp_path / "out").exists()


def test_a_stand_in_driver_is_not_enough(tmp_path):
    """The stand-in driver answers cuInit and counts 4 GPUs, but PyTorch is still required."""
    compile_all({"libcuda": fake_driver_job(tmp_path)})
    proc = run_script(tmp_path, LD_LIBRARY_PATH=tmp_path)
    assert proc.returncode == 2
    missing = proc.stderr.splitlines()[1:]
    assert len(missing) == 1 and "PyTorch cannot be imported" in missing[0], proc.stderr


def test_one_xid_per_catalog_error():
    chosen = gpu_check.error_xids()
    codes = {entry["cuda_error"][0] for entry in xid_catalog.XID_CATALOG.values()} - {0}
    assert set(chosen) == codes
    for code, xid in chosen.items():
        assert xid == min(x for x, e in xid_catalog.XID_CATALOG.items() if e["cuda_error"][0] == code)


def error(message):
    return {"error": "AcceleratorError", "message": message + "\nCUDA kernel errors might be asynchronously reported"}


GOOD = {
    "date": "2026-11-24T00:00:00Z", "torch": "2.x", "torch_cuda": "12.9", "gpus": 2,
    "baseline": {"0": {"ok": 1.0}, "1": {"ok": 2.0}},
    "errors": {
        "214": {"xid": 48, "name": "CUDA_ERROR_ECC_UNCORRECTABLE", "sticky": True, "before": {"ok": 1.0},
                "armed": error("CUDA error: uncorrectable ECC error encountered"),
                "after_disarm": error("CUDA error: uncorrectable ECC error encountered"),
                "host_queries": {"device_count": {"ok": 2}}, "new_process": {"ok": 1.0}},
        "700": {"xid": 13, "name": "CUDA_ERROR_ILLEGAL_ADDRESS", "sticky": True, "before": {"ok": 1.0},
                "armed": error("CUDA error: an illegal memory access was encountered"),
                "after_disarm": error("CUDA error: an illegal memory access was encountered"),
                "host_queries": {"device_count": {"ok": 2}, "synchronize": error("CUDA error: an illegal memory access")},
                "new_process": {"ok": 1.0}},
    },
    "targeting": {"target": "0000:75:00.0", "gpu1": error("CUDA error: no CUDA-capable device is detected"),
                  "gpu0": {"ok": 1.0}},
    "real_sticky": {"before": {"ok": 1.0}, "assert": error("CUDA error: device-side assert triggered"),
                    "after": error("CUDA error: device-side assert triggered"),
                    "host_queries": {"device_count": {"ok": 2}, "synchronize": error("CUDA error: device-side assert")}},
}


def test_a_report_where_everything_held_has_no_failures():
    assert gpu_check.failures(GOOD) == []


@pytest.mark.parametrize("path, value, expected", [
    (("baseline", "1"), error("CUDA error: out of memory"), "baseline: GPU 1 failed with the shim disarmed: CUDA error: out of memory"),
    (("errors", "214", "armed"), {"ok": 1.0}, "CUDA_ERROR_ECC_UNCORRECTABLE (XID 48): armed mid-run, PyTorch did not fail"),
    (("errors", "700", "after_disarm"), {"ok": 1.0}, "CUDA_ERROR_ILLEGAL_ADDRESS (XID 13): the failed context worked again"),
    (("errors", "214", "new_process"), error("CUDA error: x"), "CUDA_ERROR_ECC_UNCORRECTABLE (XID 48): a new process failed"),
    (("errors", "214", "before"), error("CUDA error: y"), "CUDA_ERROR_ECC_UNCORRECTABLE (XID 48): failed before arming: CUDA error: y"),
    (("targeting", "gpu1"), {"ok": 1.0}, "targeting: the targeted GPU did not fail"),
    (("targeting", "gpu0"), error("CUDA error: z"), "targeting: GPU 0 failed although GPU 1 was targeted"),
    (("real_sticky", "after"), {"ok": 1.0}, None),   # the assert itself raised: still a real error
])
def test_each_broken_expectation_is_reported(path, value, expected):
    report = copy.deepcopy(GOOD)
    node = report
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    got = gpu_check.failures(report)
    if expected is None:
        assert got == []
    else:
        assert len(got) == 1 and got[0].startswith(expected), got


def test_the_summary_quotes_pytorchs_first_lines():
    text = gpu_check.summary(GOOD)
    assert "PyTorch 2.x (CUDA 12.9), 2 GPU(s)" in text
    assert ("| 214 CUDA_ERROR_ECC_UNCORRECTABLE (48) | CUDA error: uncorrectable ECC error encountered | "
            "CUDA error: uncorrectable ECC error encountered | works |") in text
    assert "| synchronize | CUDA error: device-side assert | CUDA error: an illegal memory access |" in text
    assert "| device_count | works | works |" in text
    assert "targeting gpu=0000:75:00.0: gpu0: works; gpu1: CUDA error: no CUDA-capable device is detected" in text
    assert "asynchronously" not in text
