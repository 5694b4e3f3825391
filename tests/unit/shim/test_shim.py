"""The CUDA fault shim (files/shim/cuda_fault_shim.c), built and run for real on a fake driver.

Everything is compiled into a temporary directory: the shim exactly as the cluster builds it
(shim_source.compile_argv, with the header from shim_source.xid_header()), the fake libcuda.so.1 and
libcudart.so.12 (files/shim/tests) and two client programs. The clients run as subprocesses with
LD_PRELOAD=<shim> and LD_LIBRARY_PATH=<fixtures>; the fakes count every call by exact name, so a
test can tell whether the real function ran (delta=1) or the shim answered (delta=0).
"""
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_control, shim_source, xid_catalog

# shim_build sits beside this file (tests/unit/files/test_inference_server.py uses it too).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from shim_build import FIXTURES, PCI, SHIM_SRC, Build, compiler, write_control  # noqa: E402  pylint: disable=wrong-import-position

# Driver functions the shim itself calls on its armed path (to find a call's context and device):
# when a call to one of them fails, the fake may still have counted the shim's own query.
SHIM_QUERIES = {"cuCtxGetCurrent", "cuCtxGetDevice", "cuStreamGetCtx", "cuCtxPushCurrent_v2", "cuCtxPopCurrent_v2",
                "cuDeviceGetPCIBusId"}


def api_names(macro):
    """The row names of one list in files/shim/tests/cuda_api.h."""
    text = (FIXTURES / "cuda_api.h").read_text()
    block = text.split("#define %s(X)" % macro, 1)[1].split("\n\n", 1)[0]
    return re.findall(r"X\((\w+),", block)


COVERED = api_names("CUDA_DRIVER_COVERED")
LOOKUPS = api_names("CUDA_DRIVER_LOOKUP")
EXTRAS = api_names("CUDA_DRIVER_EXTRA")
RUNTIME = api_names("CUDA_RUNTIME_COVERED")


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    return Build(tmp_path_factory.mktemp("shim-build"))


@pytest.fixture(scope="session")
def asan_build(tmp_path_factory):
    return Build(tmp_path_factory.mktemp("shim-asan"), sanitize=True)


def calls(stdout):
    """CALL lines -> {(route, name): {"rc": .., "delta": .., "wrapped": ..}}."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("CALL "):
            parts = line.split()
            out[(parts[1], parts[2])] = {k: int(v) for k, v in (p.split("=") for p in parts[3:])}
    return out


def prefixed(stdout, tag):
    return [line for line in stdout.splitlines() if line.startswith(tag + " ")]


def fields(line):
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)}


def catalog_error(xid):
    return xid_catalog.XID_CATALOG[xid]["cuda_error"][0]


# ---------------------------------------------------------------------------------------------
# Build artefacts
# ---------------------------------------------------------------------------------------------

def test_header_is_the_catalog():
    header = shim_source.xid_header()
    rows = {int(x): (int(e), int(s)) for x, e, s in re.findall(r"\{(\d+), (\d+), ([01])\},", header)}
    assert rows == {code: (entry["cuda_error"][0], int(entry["sticky"])) for code, entry in xid_catalog.XID_CATALOG.items()}
    for name, number in xid_catalog.CUDA_ERRORS.items():
        assert re.search(r"\b%s\s+%d\b" % (name, number), header)
    for code, entry in xid_catalog.XID_CATALOG.items():
        assert "XID %d %s: %s */" % (code, entry["mnemonic"], entry["cuda_error"][1]) in header
    assert not (SHIM_SRC / shim_source.HEADER_FILE).exists(), "the generated header must not be committed"


def test_compile_argv_is_what_the_cluster_runs(build):
    argv = shim_source.compile_argv("/src", "/out/" + shim_source.LIBRARY)
    assert argv[0] == "cc" and "-shared" in argv and "-fPIC" in argv
    assert argv[argv.index("-o") + 1] == "/out/libcudafault.so"
    assert "/src/cuda_fault_shim.c" in argv and argv[argv.index("-I") + 1] == "/src"
    assert not [a for a in argv if a.startswith(("-lcuda", "-L")) or "/usr/local/cuda" in a], "no CUDA include or library"
    # built with exactly that command, and warnings-clean with -Wall -Wextra
    cmd, output = build.results["shim"]
    assert cmd == shim_source.compile_argv(str(build.dir / "src"), str(build.shim), compiler=compiler())
    assert output.strip() == ""
    assert shim_source.source_text() == (SHIM_SRC / shim_source.SOURCE_FILE).read_text()


def defined_functions(library):
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.split()[-2] in ("T", "W", "i")}


def test_exported_symbols_are_exactly_the_table(build):
    exported = defined_functions(build.shim)
    expected = set(COVERED) | set(LOOKUPS) | set(RUNTIME) | {"cudaGetDriverEntryPoint", "cudaGetDriverEntryPointByVersion", "dlsym"}
    assert exported == expected
    assert "cuGetExportTable" not in exported and not [n for n in exported if n.startswith("cudnn")]
    assert set(COVERED) | set(LOOKUPS) | set(EXTRAS) <= defined_functions(build.dir / "libcuda.so.1")
    # every wrapper has the same shape; the real driver variants and flags are all there
    per_thread = {n for n in COVERED if n.endswith(("_ptds", "_ptsz"))}
    assert per_thread >= {"cuMemcpy_ptds", "cuMemcpyAsync_ptsz", "cuLaunchKernel_ptsz", "cuStreamSynchronize_ptsz",
                          "cuMemcpyHtoD_v2_ptds"}
    assert {"cuCtxCreate", "cuCtxCreate_v2", "cuCtxCreate_v3", "cuCtxCreate_v4"} <= set(COVERED)


# ---------------------------------------------------------------------------------------------
# Disarmed: every route passes through
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["direct", "default", "handle"])
def test_disarmed_driver_symbols_pass_through(build, control, route):
    got = calls(build.run("client_symbols", "driver", route, control=control).stdout)
    assert set(key[1] for key in got) == set(COVERED) | set(LOOKUPS) | set(EXTRAS)
    assert all(r["rc"] == 0 and r["delta"] == 1 for r in got.values()), got


@pytest.mark.parametrize("route", ["direct", "handle"])
def test_disarmed_runtime_symbols_pass_through(build, control, route):
    got = calls(build.run("client_symbols", "runtime", route, control=control).stdout)
    assert set(key[1] for key in got) == set(RUNTIME)
    assert all(r["rc"] == 0 and r["delta"] == 1 for r in got.values()), got


@pytest.mark.parametrize("args, exports", [(("gpa", "v2"), "0"), (("gpa", "v1"), "0"), (("gpa", "v2"), "1"),
                                           (("gdep",), "0"), (("gdep", "deepbind"), "0")])
def test_disarmed_lookups_hand_out_wrappers_that_pass_through(build, control, args, exports):
    out = build.run("client_cudart_like", *args, control=control, FAKE_CUDA_GPA_EXPORTS=exports).stdout
    got = calls(out)
    driver = {name: r for (route, name), r in got.items() if route != "rtdlsym"}
    assert set(driver) == set(COVERED) | set(LOOKUPS) | set(EXTRAS)
    for name, r in driver.items():
        assert r["rc"] == 0 and r["delta"] == 1, (name, r)
        assert r["wrapped"] == (name not in EXTRAS), (name, r)   # uncovered names: the driver's own pointer
    assert all(fields(line)["wrapped"] == 1 for line in prefixed(out, "INNER"))
    newest = prefixed(out, "NEWEST")
    assert newest and all("rc=0 delta=1" in line for line in newest), [n for n in newest if "rc=0 delta=1" not in n]
    if args[0] == "gdep":
        runtime = {name: r for (route, name), r in got.items() if route == "rtdlsym"}
        assert set(runtime) == set(RUNTIME) and all(r["rc"] == 0 and r["delta"] == 1 for r in runtime.values())


@pytest.mark.parametrize("armed", [False, True])
def test_a_variant_newer_than_the_table_is_handed_out_unwrapped(build, control, armed):
    """Above CF_API_VERSION the driver may answer with a variant whose parameters the shim cannot
    know (here the fake's cuEventQuery_v99): the shim hands out the driver's own pointer. The same
    base name at CUDA 13.5 is wrapped."""
    env = dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=79) if armed else {}
    out = build.run("client_cudart_like", "future", control=control, **env).stdout
    got = {fields(line)["ver"]: line for line in prefixed(out, "FUTURE")}
    assert "variant=cuEventQuery_v99 wrapped=0 rc=0 delta=1" in got[99000], out
    assert "variant=cuEventQuery wrapped=1 " + ("rc=100 delta=0" if armed else "rc=0 delta=1") in got[13050], out


# ---------------------------------------------------------------------------------------------
# Armed from the environment
# ---------------------------------------------------------------------------------------------

def assert_armed(got, error, runtime=False):
    for (route, name), r in got.items():
        if name in EXTRAS or name in LOOKUPS:
            assert r["rc"] == 0 and r["delta"] == 1, (route, name, r)
        elif name in SHIM_QUERIES:
            assert r["rc"] == error, (route, name, r)
        else:
            assert r["rc"] == error and r["delta"] == 0, (route, name, r)
    assert len(got) >= (len(RUNTIME) if runtime else len(COVERED))


@pytest.mark.parametrize("xid, error", [(79, 100), (48, 214), (94, 214), (95, 999), (43, 702), (13, catalog_error(13))])
def test_armed_by_env_returns_the_catalog_error_on_every_route(build, control, xid, error):
    env = dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=xid)
    assert error == catalog_error(xid)
    for route in ("direct", "default", "handle"):
        assert_armed(calls(build.run("client_symbols", "driver", route, control=control, **env).stdout), error)
    for route in ("direct", "handle"):
        assert_armed(calls(build.run("client_symbols", "runtime", route, control=control, **env).stdout), error, runtime=True)
    for args in (("gpa", "v2"), ("gpa", "v1"), ("gdep",), ("gdep", "deepbind")):
        out = build.run("client_cudart_like", *args, control=control, **env).stdout
        assert_armed(calls(out), error)
        assert all(fields(line)["rc"] == error for line in prefixed(out, "NEWEST"))


def test_every_catalog_xid_gives_its_cuda_error(build, control):
    def one(xid):
        out = build.run("client_symbols", "call", "cuMemAlloc_v2", 1, control=control,
                        CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=xid).stdout
        return xid, int(out.split()[-1])

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = dict(pool.map(one, sorted(xid_catalog.XID_CATALOG)))
    assert got == {xid: catalog_error(xid) for xid in xid_catalog.XID_CATALOG}


@pytest.mark.parametrize("env, rc", [
    (dict(CUDA_FAULT_INJECTION_ENABLED=1), 100),                            # no XID: 79, as documented
    (dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=12345), 999),      # not in the catalog
    (dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE="79x"), 0),        # not a number: not armed
    (dict(CUDA_FAULT_INJECTION_ENABLED=0, CUDA_XID_TYPE=79), 0),
    (dict(CUDA_FAULT_INJECTION_ENABLED="true", CUDA_XID_TYPE=79), 0),      # the contract says "1"
    (dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=79, CUDA_FAULT_GPU="bogus"), 0),
])
def test_env_edge_cases(build, control, env, rc):
    out = build.run("client_symbols", "call", "cuMemAlloc_v2", 1, control=control, **env).stdout
    assert out.split()[-1] == str(rc)


def test_prefixes_and_uncovered_names_pass_through_when_armed(build, control):
    out = build.run("client_symbols", "prefix", control=control, CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=79).stdout
    got = {line.split()[1]: fields(line) for line in prefixed(out, "PREFIX")}
    assert got["cudnn"] == {"rc": 0, "same": 1, "calls": 1}
    assert got["cudnn_dlsym"] == {"rc": 0, "calls": 2}
    assert got["export_table"] == {"rc": 0, "sentinel": 1, "delta": 1}
    assert got["export_table_dlsym"] == {"in_driver": 1}
    assert got["export_table_gpa"] == {"rc": 0, "same": 1}
    assert got["export_table_gpa_call"] == {"rc": 0, "sentinel": 1}
    assert got["error_string"] == {"rc": 0, "delta": 1}
    assert got["runtime_error_string"] == {"ok": 1}
    assert got["runtime_version"] == {"rc": 0, "version": 12080}
    assert got["rtld_next"] == {"same": 1}   # RTLD_NEXT keeps the caller's meaning through the dlsym hook


REAL_DRIVER = b"libcuda.so.1" in subprocess.run(["sh", "-c", "ldconfig -p 2>/dev/null"], capture_output=True, check=False).stdout


@pytest.mark.skipif(REAL_DRIVER, reason="this machine has a real libcuda.so.1")
def test_no_driver_at_all(build, control, tmp_path):
    """A process without libcuda.so.1 (a shell, a CPU-only tool) runs normally; a covered call gets
    CUDA_ERROR_STUB_LIBRARY."""
    probe = "import ctypes; print(ctypes.CDLL(None).cuInit(0))"
    env = build.env(control, LD_LIBRARY_PATH=str(tmp_path))
    out = subprocess.run(["python3", "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "34" and out.stderr == ""


# ---------------------------------------------------------------------------------------------
# GPU targeting
# ---------------------------------------------------------------------------------------------

def devices(stdout):
    return {int(line.split()[1]): fields(line) for line in prefixed(stdout, "DEV")}


def assert_only_device(result, failing, error):
    for dev, columns in result.items():
        want = error if dev == failing else 0
        assert set(columns.values()) == {want}, (dev, columns)


@pytest.mark.parametrize("gpu", [PCI[2], "2", PCI[2].upper().replace("0000:", "00000000:")])
def test_env_targets_one_gpu(build, control, gpu):
    out = build.run("client_symbols", "devices", control=control, CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=79,
                    CUDA_FAULT_GPU=gpu).stdout
    assert_only_device(devices(out), 2, 100)


def test_control_file_targets_one_gpu(build, control):
    write_control(control, shim_control.render(True, 1, "f1", xid=48, gpu=PCI[1]))
    out = build.run("client_symbols", "devices", control=control).stdout
    assert_only_device(devices(out), 1, 214)


# ---------------------------------------------------------------------------------------------
# Run-time control
# ---------------------------------------------------------------------------------------------

def test_run_time_arming_targeting_and_sticky_contexts(build, control):
    """Arming through the control file reaches a running process within a second, without restart;
    a context that failed stays failed after disarming (like a real sticky error) while device-less
    calls and fresh contexts pass again."""
    loop = build.popen("client_symbols", "loop", 30, control=control)
    try:
        loop.wait_for(A=0, B=0, N=0, F=0)
        # gpu=device 2: only context B (device 2) fails; cuDeviceGetCount names no GPU and passes
        write_control(control, shim_control.render(True, 1, "f1", xid=79, gpu=PCI[2]))
        assert loop.wait_for(A=0, B=100, N=0, F=0) < 1.0
        # malformed: ignored, nothing changes
        write_control(control, "v1 armed=1 xid=48 error=214 gpu=bogus fault=f1 seq=9\n")
        loop.quiet(0.3)
        # disarmed: B keeps failing (sticky), everything else passes
        write_control(control, shim_control.render(False, 2, "f1"))
        loop.quiet(0.3)
        # armed for every GPU: all fail; B keeps its first error
        write_control(control, shim_control.render(True, 3, "f2", xid=48))
        assert loop.wait_for(A=214, B=100, N=214, F=214) < 1.0
        # disarmed: the failed contexts A and B stay failed; device count and new contexts pass
        write_control(control, shim_control.render(False, 4, "f2"))
        assert loop.wait_for(A=214, B=100, N=0, F=0) < 1.0
    finally:
        stderr = loop.stop()
    assert stderr == ""


def test_control_file_decides_over_env_and_its_removal_returns_to_env(build, control):
    write_control(control, shim_control.render(False, 7, "f1"))
    loop = build.popen("client_symbols", "loop", 30, control=control, CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=95)
    try:
        loop.wait_for(A=0, B=0, N=0, F=0)
        os.unlink(control)
        assert loop.wait_for(A=999, B=999, N=999, F=999) < 1.0
    finally:
        loop.stop()


def test_control_directory_created_after_start(build, tmp_path):
    control = tmp_path / "later" / "sub" / "control"
    loop = build.popen("client_symbols", "loop", 30, control=control)
    try:
        loop.wait_for(A=0, B=0, N=0, F=0)
        time.sleep(0.3)
        control.parent.mkdir(parents=True)
        write_control(control, shim_control.render(True, 1, "f1", xid=43))
        assert loop.wait_for(A=702, B=702, N=702, F=702, timeout=3.0) < 2.5   # polled once a second until it exists
        # the directory goes away and comes back: still watched. A and B stay failed (sticky);
        # with only device 0 targeted, the device count passes and a new device-0 context fails.
        shutil.rmtree(control.parent)
        control.parent.mkdir()
        write_control(control, shim_control.render(True, 2, "f2", xid=13, gpu=PCI[0]))
        assert loop.wait_for(A=702, B=702, N=0, F=700, timeout=3.0) < 2.5
    finally:
        loop.stop()


def test_fork_child_gets_its_own_watcher(build, control):
    loop = build.popen("client_symbols", "forkloop", 30, control=control)
    try:
        loop.wait_for(A=0, B=0, N=0, F=0)
        write_control(control, shim_control.render(True, 1, "f1", xid=79))
        assert loop.wait_for(A=100, B=100, N=100, F=100) < 1.0
    finally:
        loop.stop()


# Refused by both parsers (the shim's and shim_control.parse).
MALFORMED = [
    "",
    "\n",
    "v2 armed=1 xid=79 error=100 fault=f seq=1",
    "v1",
    "v1 ",
    "v1  armed=1 xid=79 error=100 fault=f seq=1",
    "v1 armed=1 xid=79 error=1x0 fault=f seq=1",
    "v1 armed=1 xid=79 error=100 fault=f seq=one",
    "v1 armed=1 xid=79 error=100 fault=f_g seq=1",
    "v1 ARMED=1 xid=79 error=100 fault=f seq=1",
    "v1 armed=1 xid=79 error=100 fault=f seq=1\nv1 armed=1 xid=48 error=214 fault=f seq=2",
    "v1 armed=1 xid=79 error=100 fault= seq=1",
    "v1 armed=1 xid=79 error=100 fault=f seq=1 " + "x" * 2000,
    "v1 armed=1 xid=79\x00 error=100 fault=f seq=1",
    "\xff\xfe garbage",
    "v1 armed=1 xid=79 error=100 gpu=0000:75:00 fault=f seq=1",     # not a full PCI address
    "v1 armed=1 xid=79 error=100 gpu=0000:75:20.0 fault=f seq=1",   # device above 0x1f
    "v1 armed=yes xid=79 error=100 fault=f seq=1",
    "v1 armed=1 fault=f seq=1",                                      # armed with no xid and no error
]


def test_malformed_control_files_are_ignored(build, control):
    for text in MALFORMED:
        with pytest.raises(ValueError):
            shim_control.parse(text)
    # at start: a malformed file leaves the environment in charge
    write_control(control, MALFORMED[2])
    out = build.run("client_symbols", "call", "cuMemAlloc_v2", 1, control=control, CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=48)
    assert out.stdout.split()[-1] == "214"
    # at run time: each malformed file keeps the previous state; a valid one still works afterwards
    write_control(control, shim_control.render(False, 1, "f1"))
    loop = build.popen("client_symbols", "loop", 30, control=control)
    try:
        loop.wait_for(A=0, B=0, N=0, F=0)
        for text in MALFORMED:
            write_control(control, text)
        control.unlink()
        control.mkdir()   # not a regular file: ignored as well
        loop.quiet(0.4)
        control.rmdir()
        write_control(control, shim_control.render(True, 2, "f2", xid=79))
        assert loop.wait_for(A=100, B=100, N=100, F=100) < 1.0
    finally:
        assert loop.stop() == ""


def test_after_calls_delay(build, control):
    out = build.run("client_symbols", "call", "cuMemAlloc_v2", 6, control=control, CUDA_FAULT_INJECTION_ENABLED=1,
                    CUDA_XID_TYPE=79, CUDA_FAULT_AFTER_CALLS=3).stdout
    assert [int(line.split()[2]) for line in prefixed(out, "RC")] == [0, 0, 0, 100, 100, 100]


def test_after_seconds_delay(build, control):
    out = build.run("client_symbols", "first-failure", 3, control=control, CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=79,
                    CUDA_FAULT_AFTER_SECONDS="0.6").stdout
    first = re.search(r"FIRST ms=([\d.]+) rc=(\d+)", out)
    assert first and first.group(2) == "100", out
    assert 450 <= float(first.group(1)) <= 1500, out   # from library load; the first calls passed


def test_diagnostics_only_on_stderr_and_only_when_asked(build, control):
    env = dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=79)
    quiet = build.run("client_symbols", "call", "cuMemAlloc_v2", 1, control=control, **env)
    assert quiet.stdout == "RC 0 100\n" and quiet.stderr == ""
    loud = build.run("client_symbols", "call", "cuMemAlloc_v2", 1, control=control, CUDA_FAULT_DEBUG=1, **env)
    assert loud.stdout == "RC 0 100\n" and "cuda_fault_shim[" in loud.stderr and "armed from the environment" in loud.stderr


# ---------------------------------------------------------------------------------------------
# Sanitizers
# ---------------------------------------------------------------------------------------------

def test_clean_under_address_and_undefined_behaviour_sanitizers(asan_build, control):
    armed = dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=79)
    runs = [
        (("client_symbols", "driver", "direct"), {}),
        (("client_symbols", "driver", "handle"), armed),
        (("client_symbols", "runtime", "direct"), armed),
        (("client_symbols", "prefix"), armed),
        (("client_symbols", "devices"), dict(armed, CUDA_FAULT_GPU=PCI[2])),
        (("client_cudart_like", "gpa", "v2"), armed),
        (("client_cudart_like", "gdep"), {}),   # RTLD_DEEPBIND cannot run under ASan
    ]
    for (client, *args), env in runs:
        proc = asan_build.run(client, *args, control=control, timeout=60, **env)
        assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr
    got = calls(asan_build.run("client_symbols", "driver", "direct", control=control, **armed).stdout)
    assert_armed(got, 100)
    # run-time arming, disarming and a malformed file, with the watcher thread running
    loop = asan_build.popen("client_symbols", "loop", 30, control=control)
    try:
        loop.wait_for(A=0, B=0, N=0, F=0, timeout=10)
        write_control(control, shim_control.render(True, 1, "f1", xid=79, gpu=PCI[2]))
        loop.wait_for(A=0, B=100, N=0, F=0)
        write_control(control, "v1 garbage")
        write_control(control, shim_control.render(False, 2, "f1"))
        write_control(control, shim_control.render(True, 3, "f2", xid=48))
        loop.wait_for(A=214, B=100, N=214, F=214)
        write_control(control, shim_control.render(False, 4, "f2"))
        loop.wait_for(A=214, B=100, N=0, F=0)
    finally:
        stderr = loop.stop()
    assert "Sanitizer" not in stderr and "runtime error" not in stderr, stderr
