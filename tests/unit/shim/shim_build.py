"""What the shim's tests share: the sources, the compiler, builds of the shim and of the stand-in
driver, and the control-file helper. The shim is built exactly as the cluster builds it
(shim_source.compile_argv, with the header from shim_source.xid_header())."""
import os
import queue
import re
import shutil
import subprocess
import threading
import time
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


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]


class Build:
    """The shim, the fakes and the clients, built into one directory."""

    def __init__(self, root, sanitize=False):
        self.dir = Path(root)
        self.sanitize = sanitize
        self.shim = self.dir / shim_source.LIBRARY
        self.clients = {name: self.dir / name for name in ("client_symbols", "client_cudart_like")}
        extra = SANITIZE if sanitize else []
        fixture = fixture_flags(extra)
        out = str(self.dir)
        jobs = {
            "shim": shim_job(self.dir, extra),
            "libcuda": fake_driver_job(self.dir, extra),
            "libcudart": fixture + ["-shared", "-fPIC", "-Wl,-soname,libcudart.so.12", "-o", out + "/libcudart.so.12",
                                    str(FIXTURES / "fake_cudart.c"), "-ldl", "-lpthread"],
            "client_cudart_like": fixture + ["-o", out + "/client_cudart_like", str(FIXTURES / "client_cudart_like.c"), "-ldl"],
        }
        self.results = compile_all(jobs)
        # client_symbols links the fakes: built after them.
        self.results.update(compile_all({"client_symbols": fixture + [
            "-rdynamic", "-o", out + "/client_symbols", str(FIXTURES / "client_symbols.c"), "-L", out,
            "-l:libcuda.so.1", "-l:libcudart.so.12", "-ldl"]}))

    def env(self, control, preload=True, **extra):
        env = clean_env(LD_LIBRARY_PATH=self.dir, CUDA_FAULT_CONTROL_FILE=control)
        if preload:
            libs = [str(self.shim)]
            if self.sanitize:
                # the sanitizer runtime must come first in the initial library list
                libs.insert(0, subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True,
                                              check=True).stdout.strip())
                env["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=23"
                env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
            env["LD_PRELOAD"] = ":".join(libs)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def run(self, client, *args, control, preload=True, timeout=30, **extra):
        proc = subprocess.run([str(self.clients[client])] + [str(a) for a in args], env=self.env(control, preload, **extra),
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, "%s %s exited %d\nstdout:\n%s\nstderr:\n%s" % (
            client, args, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    def popen(self, client, *args, control, **extra):
        """A loop client that stops cleanly when its stdin is closed."""
        return Loop(subprocess.Popen([str(self.clients[client])] + [str(a) for a in args] + ["stdin"],
                                     env=self.env(control, **extra), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))


class Loop:
    """A running loop client: its STATE lines, read in the background."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = queue.Queue()
        self.state = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, timeout=5.0, **want):
        """Wait until the client reports a state with the wanted results; return the seconds it took."""
        start = time.monotonic()
        while self.state is None or any(self.state.get(k) != v for k, v in want.items()):
            left = start + timeout - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError("no state %r within %.1fs; last %r" % (want, timeout, self.state)) from None
            if line is None:
                raise AssertionError("client exited: %s" % self.proc.stderr.read())
            if line.startswith("STATE "):
                self.state = {k: int(v) for k, v in re.findall(r"([ABNF])=(-?\d+)", line)}
        return time.monotonic() - start

    def quiet(self, seconds):
        """Assert that the state does not change for some time."""
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError("unexpected change: %r" % line)

    def stop(self):
        """Close stdin (a normal exit, so that sanitizers report), kill if that takes too long."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return stderr
