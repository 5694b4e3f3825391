"""What the shim's tests share: the sources, the compiler, builds of the shim and of the stand-in
driver, and the control-file helper. The shim is built exactly as the cluster builds it
(shim_source.compile_argv, with the header from shim_source.xid_header())."""
import os
import shutil
import subprocess
from pathlib import Path

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_source

ROOT = Path(__file__).resolve().parents[3]
SHIM_SRC = ROOT / "files" / "shim"
FIXTURES = SHIM_SRC / "tests"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
PCI = ["0000:53:00.0", "0000:64:00.0", "0000:75:00.0", "0000:86:00.0"]   # the fake driver's devices 0-3
# Diagnostics and fixture switches that must not leak from the caller's environment into a test run.
FOREIGN_ENV = ("CUDA_", "FAKE_CUDA", "LD_PRELOAD", "ASAN", "UBSAN")


def compiler():
    """The C compiler; the shim's tests build everything they run, so without one they fail."""
    assert CC is not None, "no C compiler (cc, gcc or clang) on PATH: the shim's tests build the shim and its fixtures"
    return CC


def is_gcc():
    return b"Free Software Foundation" in subprocess.run([compiler(), "--version"], capture_output=True,
                                                         check=False).stdout


def compile_all(jobs):
    """Run compiler command lines in parallel ({name: argv}); return {name: (argv, output)}."""
    procs = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, argv in jobs.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, "%s failed to build:\n%s\n%s" % (name, " ".join(jobs[name]), stderr)
        results[name] = (jobs[name], stdout + stderr)
    return results


def shim_job(directory, extra=()):
    """The shim's compile command, after writing its build directory (source + generated header)."""
    src = Path(directory) / "src"
    src.mkdir(exist_ok=True)
    shutil.copy(SHIM_SRC / shim_source.SOURCE_FILE, src / shim_source.SOURCE_FILE)
    (src / shim_source.HEADER_FILE).write_text(shim_source.xid_header())
    return shim_source.compile_argv(str(src), str(Path(directory) / shim_source.LIBRARY), compiler=compiler()) + list(extra)


def fixture_flags(extra=()):
    return [compiler(), "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(FIXTURES)] + list(extra)


def fake_driver_job(directory, extra=()):
    """The stand-in libcuda.so.1 (files/shim/tests/fake_cuda.c) into directory."""
    return (fixture_flags(extra) + ["-shared", "-fPIC", "-Wno-unused-parameter", "-Wl,-soname,libcuda.so.1"]
            + (["-fno-ipa-icf"] if is_gcc() else [])
            + ["-o", str(Path(directory) / "libcuda.so.1"), str(FIXTURES / "fake_cuda.c"), "-lpthread"])


def clean_env(**extra):
    """os.environ without the shim's and the fixtures' switches, plus extra (values made strings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_control(path, text):
    """Replace the control file the way the node agent does: a temporary name, then rename."""
    path = Path(path)
    tmp = path.parent / (".%s.tmp" % path.name)
    tmp.write_text(text)
    os.replace(tmp, path)
