"""The CUDA fault shim against NVIDIA's own code: the pinned runtime wheels (nvidia-cuda-runtime-cu12,
nvidia-cuda-runtime, requirements.txt) and CuPy (cupy-cuda12x, cudart 12 linked in statically).

* NVIDIA's declarations: every versioned variant that cudaTypedefs.h declares for a function the
  shim covers is in the shim's table with exactly NVIDIA's parameters (the compiler compares them),
  or the function is on the shim's short passthrough list; the catalog's error numbers are NVIDIA's.
* NVIDIA's runtimes on the stand-in driver (files/shim/tests/fake_cuda.c): cudart starts with
  cuDriverGetVersion, cuInit and two private export tables, which no stand-in can provide, so on
  the stand-in cudart stops there (cudaErrorNotSupported, the stand-in's answer) and never creates
  a context. Everything before that point is real: armed, the shim fails cuInit and cudart (12 and
  13, dynamic, and CuPy's static one) reports the catalog's error for every XID on every call.
"""
import importlib.metadata
import json
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_control, shim_source, xid_catalog
from shim_build import (FIXTURES, PCI, ROOT, SHIM_SRC, clean_env, compile_all, compiler, fake_driver_job, shim_job,
                        write_control)

# NVIDIA's runtimes: (distribution, its directory inside site-packages, the soname of libcudart).
RUNTIMES = {
    "12": ("nvidia-cuda-runtime-cu12", "nvidia/cuda_runtime", "libcudart.so.12"),
    "13": ("nvidia-cuda-runtime", "nvidia/cu13", "libcudart.so.13"),
}
CUPY = "cupy-cuda12x"
NOT_SUPPORTED = 801          # the stand-in's answer to NVIDIA's private export tables
FAKE_DRIVER_VERSION = 13050  # what the stand-in reports (files/shim/tests/cuda_api.h)
XIDS = sorted(x for x, entry in xid_catalog.XID_CATALOG.items() if entry["cuda_error"][0] != 0)
# client_cudart's calls that never reach a GPU: they succeed whatever the shim does.
HOST_ONLY = {"cudaRuntimeGetVersion", "cudaDriverGetVersion"}


def pins():
    """requirements.txt's exact pins, {distribution: version}."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def wheel_path(dist, *parts):
    """A file of an installed distribution; the test fails (never skips) without it."""
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise AssertionError("%s is not installed: run the tests in the virtualenv of tools/venv.sh" % dist) from None
    path = Path(str(found.locate_file("/".join(parts))))
    assert path.exists(), "%s %s has no %s" % (dist, found.version, "/".join(parts))
    return path


def runtime_lib(major):
    dist, sub, soname = RUNTIMES[major]
    return wheel_path(dist, sub, "lib", soname)


def runtime_include(major):
    dist, sub = RUNTIMES[major][:2]
    return wheel_path(dist, sub, "include")


# ---------------------------------------------------------------------------------------------
# NVIDIA's declarations
# ---------------------------------------------------------------------------------------------

def _strip_comments(text):
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S).replace("\\\n", " ")


def _macro_rows(macro):
    """The X(...) rows of one of the shim's list macros, each as its top-level arguments."""
    text = (SHIM_SRC / shim_source.SOURCE_FILE).read_text()
    body = _strip_comments(text.split("#define %s(X)" % macro, 1)[1].split("\n\n", 1)[0])
    rows, depth, start, args, quoted = [], 0, None, [], False
    for i, char in enumerate(body):
        if char == '"' and body[i - 1] != "\\":
            quoted = not quoted
        if quoted:
            continue
        if char == "(":
            if depth == 0 and body[max(0, i - 1)] == "X":
                start, args = i + 1, []
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0 and start is not None:
                args.append(body[start:i].strip())
                rows.append(args)
                start = None
        elif char == "," and depth == 1 and start is not None:
            args.append(body[start:i].strip())
            start = i + 1
    return rows


def shim_table():
    """{exported name: (version, params)} of CF_DRIVER_API and the two hand-written lookups."""
    table = {row[0]: (int(row[1]), row[4]) for row in _macro_rows("CF_DRIVER_API")}
    text = (SHIM_SRC / shim_source.SOURCE_FILE).read_text()
    for name, version in re.findall(r'\{ "(cuGetProcAddress(?:_v2)?)", (\d+), ', text):
        params = re.search(r"typedef CUresult \(\*cf_pfn_%s\)(\(.*?\));" % name, text, re.S).group(1)
        table[name] = (int(version), " ".join(params.split()))
    return table


def shim_passthrough():
    """{name: reason} of CF_DRIVER_PASSTHROUGH."""
    return {row[0]: "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', row[1])) for row in _macro_rows("CF_DRIVER_PASSTHROUGH")}


def shim_api_version():
    return int(re.search(r"#define CF_API_VERSION (\d+)", (SHIM_SRC / shim_source.SOURCE_FILE).read_text()).group(1))


def split_variant(name):
    """cuMemcpyHtoD_v2_ptds -> ("cuMemcpyHtoD", "_ptds"), the driver's base name and stream suffix."""
    match = re.match(r"^(\w+?)(?:_v\d+)?(_ptds|_ptsz)?$", name)
    return match.group(1), match.group(2) or ""


def nvidia_variants(header):
    """{PFN name: params} of every driver typedef in a cudaTypedefs.h."""
    return dict(re.findall(r"typedef CUresult \(CUDAAPI \*(PFN_\w+)\)(\(.*?\));", header.read_text()))


def pfn_name(name, version):
    base, suffix = split_variant(name)
    return "PFN_%s_v%d%s" % (base, version, suffix)


@pytest.fixture(scope="module")
def headers():
    return {major: runtime_include(major) / "cudaTypedefs.h" for major in RUNTIMES}


def test_the_runtimes_are_the_pinned_ones():
    pinned = pins()
    for dist in [r[0] for r in RUNTIMES.values()] + [CUPY]:
        assert importlib.metadata.version(dist) == pinned[dist], "%s: installed %s, requirements.txt pins %s" % (
            dist, importlib.metadata.version(dist), pinned[dist])
    # the table's CUDA version is the pinned 13.x runtime's
    cuda_h = (runtime_include("13") / "cuda.h").read_text()
    assert shim_api_version() == int(re.search(r"#define CUDA_VERSION (\d+)", cuda_h).group(1))


def test_every_variant_nvidia_declares_for_a_covered_function_is_handled(headers):
    """For every function the shim covers, every variant cudaTypedefs.h declares (up to the table's
    CUDA version) is in the table or the function is passed through on purpose; no table row is a
    variant NVIDIA does not declare."""
    table, passthrough, limit = shim_table(), shim_passthrough(), shim_api_version()
    covered = {split_variant(name)[0] for name in table} | set(passthrough)
    handled = {pfn_name(name, row[0]) for name, row in table.items()}
    declared = {}
    for major, header in headers.items():
        for pfn in nvidia_variants(header):
            declared.setdefault(pfn, []).append(major)
    unhandled = []
    for pfn, majors in sorted(declared.items()):
        versioned = re.match(r"^PFN_(\w+?)_v(\d+)(?:_ptds|_ptsz)?$", pfn)
        base, version = versioned.groups() if versioned else (pfn[len("PFN_"):], 0)   # a few have no version
        if base in covered and base not in passthrough and int(version) <= limit and pfn not in handled:
            unhandled.append("%s (CUDA %s)" % (pfn, "/".join(majors)))
    assert unhandled == [], "declared by NVIDIA for functions the shim covers, neither wrapped nor passed through: %s" % unhandled
    assert sorted(handled - set(declared)) == [], "table rows that no cudaTypedefs.h declares"
    assert all(row[0] <= limit for row in table.values())
    # the passthrough list: whole functions NVIDIA declares, never also in the table, each with its reason
    for name, reason in passthrough.items():
        assert name not in {split_variant(n)[0] for n in table}, name
        assert any(p.startswith("PFN_%s_v" % name) for p in declared), name
        assert len(reason) > 40, (name, reason)
    assert "cuDriverGetVersion" in passthrough


def test_the_table_has_nvidias_parameter_lists(headers, tmp_path):
    """The compiler compares each table row's parameters, and the shim's own declarations of the
    CUDA types, with NVIDIA's headers (both runtimes)."""
    table = shim_table()
    source = (SHIM_SRC / shim_source.SOURCE_FILE).read_text()
    types = source.split("typedef int CUresult;", 1)[1].split("typedef int cudaError_t;", 1)[0]
    types = ["typedef int CUresult;"] + [line.split("/*")[0].strip() for line in types.splitlines()
                                         if line.startswith("typedef ")]
    jobs = {}
    for major, header in headers.items():
        declared = nvidia_variants(header)
        cuda_h = (header.parent / "cuda.h").read_text()
        lines = ["#define __CUDA_API_VERSION_INTERNAL 1   /* the legacy (v2000, 32-bit) typedefs too */",
                 "#include <cudaTypedefs.h>", ""]
        for name, (version, params) in sorted(table.items()):
            pfn = pfn_name(name, version)
            if pfn in declared:
                lines.append("typedef CUresult (CUDAAPI *shim_%s)%s;" % (name, params))
                lines.append('_Static_assert(__builtin_types_compatible_p(shim_%s, %s), "%s: the shim\'s parameters %s, '
                             'NVIDIA\'s %s");' % (name, pfn, name, params, " ".join(declared[pfn].split())))
        for typedef in types:
            match = re.match(r"^typedef (.+?)\s*(\**)(\w+);$", typedef)
            if match is None or not re.search(r"\b%s;" % match.group(3), cuda_h):
                continue   # a function-pointer typedef or a name of the shim's own
            shim_type, name = match.group(1) + match.group(2), match.group(3)
            same = "__builtin_types_compatible_p(%s, %s)" % (shim_type, name)
            if shim_type == "int":   # the shim declares NVIDIA's enums as int: same size, same passing
                same = "(%s || (sizeof(int) == sizeof(%s) && _Alignof(int) == _Alignof(%s)))" % (same, name, name)
            lines.append('_Static_assert(%s, "the shim\'s %s is not NVIDIA\'s");' % (same, name))
        path = tmp_path / ("check%s.c" % major)
        path.write_text("\n".join(lines) + "\n")
        jobs[major] = [compiler(), "-std=gnu11", "-fsyntax-only", "-Wall", "-Wextra", "-I", str(header.parent), str(path)]
    compile_all(jobs)
    checked = sum(1 for line in (tmp_path / "check13.c").read_text().splitlines() if line.startswith("_Static_assert"))
    assert checked > len(table), "the 13.x check compared too little: %d assertions" % checked


def test_the_catalogs_errors_are_nvidias_numbers(headers):
    for header in headers.values():
        cuda_h = (header.parent / "cuda.h").read_text()
        for name, number in xid_catalog.CUDA_ERRORS.items():
            assert re.search(r"\b%s\s*=\s*%d\b" % (name, number), cuda_h), "%s is not %d in %s" % (name, number, header.parent)


def runtime_error_names(major):
    """NVIDIA's cudaError_t names {number: name} (driver_types.h of that runtime)."""
    text = (runtime_include(major) / "driver_types.h").read_text()
    return {int(number): name for name, number in re.findall(r"\b(cudaError\w+)\s*=\s*(\d+)", text)}


def expected_name(major, code):
    # cudart has no name for a driver code it does not know (CUDA_ERROR_KEY_ROTATION, 916)
    return runtime_error_names(major).get(code, "unrecognized error code")


# ---------------------------------------------------------------------------------------------
# NVIDIA's cudart 12 and 13, linked like PyTorch links it, on the stand-in driver
# ---------------------------------------------------------------------------------------------

class Runtime:
    """The shim, the stand-in driver and client_cudart linked to both NVIDIA runtimes."""

    def __init__(self, directory):
        self.dir = Path(directory)
        jobs = {"shim": shim_job(self.dir), "libcuda": fake_driver_job(self.dir)}
        for major in RUNTIMES:
            lib = runtime_lib(major)
            jobs["client%s" % major] = [compiler(), "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                                        str(self.dir / ("client_cudart%s" % major)), str(FIXTURES / "client_cudart.c"),
                                        "-L", str(lib.parent), "-l:" + lib.name, "-Wl,-rpath," + str(lib.parent)]
        compile_all(jobs)

    def env(self, control, preload=True, **extra):
        env = clean_env(LD_LIBRARY_PATH=self.dir, CUDA_FAULT_CONTROL_FILE=control, **extra)
        if preload:
            env["LD_PRELOAD"] = str(self.dir / shim_source.LIBRARY)
        return env

    def argv(self, major, *args):
        return [str(self.dir / ("client_cudart%s" % major))] + [str(a) for a in args]

    def calls(self, major, control, dev=0, preload=True, **extra):
        """client_cudart calls: ({name: rc}, {"LAST": rc, "DRIVER": version}, {code: NVIDIA's name})."""
        proc = subprocess.run(self.argv(major, "calls", dev), env=self.env(control, preload, **extra),
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and proc.stderr == "", (proc.returncode, proc.stdout, proc.stderr)
        rcs = dict((m[0], int(m[1])) for m in re.findall(r"^RT (\w+) rc=(-?\d+)$", proc.stdout, re.M))
        other = {"LAST": int(re.search(r"^LAST rc=(-?\d+)$", proc.stdout, re.M).group(1)),
                 "DRIVER": int(re.search(r"^DRIVER version=(-?\d+)$", proc.stdout, re.M).group(1))}
        names = {int(m[0]): m[1] for m in re.findall(r"^ERRNAME (-?\d+) (.+)$", proc.stdout, re.M)}
        return rcs, other, names


class Lines:
    """A running probe that answers one line (JSON or STATE) per line it is sent."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        assert "READY" in self.proc.stdout.readline().upper()

    def ask(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the probe exited: %s" % "".join(self.stderr)
        return line

    def until(self, parse, want, tries=500):
        """Ask until parse(answer) satisfies want (the shim applies a control file within milliseconds
        of its rename; each answer is a full round of calls, so this is bounded, not timed)."""
        for _attempt in range(tries):
            got = parse(self.ask())
            if want(got):
                return got
        raise AssertionError("never reached the wanted state; last %r" % (got,))

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0, "".join(self.stderr)
        self.proc.stdout.close()
        self.proc.stderr.close()


def state(line):
    assert line.startswith("STATE "), line
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)}


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    return Runtime(tmp_path_factory.mktemp("nvidia-runtime"))


@pytest.mark.parametrize("major", sorted(RUNTIMES))
@pytest.mark.parametrize("preload", [False, True], ids=["no-shim", "shim-disarmed"])
def test_cudart_on_the_stand_in_stops_at_nvidias_export_tables(rt, control, major, preload):
    """What cudart does on the stand-in, with and without the disarmed shim: the same. It gets the
    driver's version (the stand-in's 13.5), cuInit succeeds, then the stand-in refuses NVIDIA's
    private export tables and cudart reports that on every call that needs the device."""
    rcs, other, names = rt.calls(major, control, preload=preload)
    assert {n: rc for n, rc in rcs.items() if n not in HOST_ONLY} == dict.fromkeys(set(rcs) - HOST_ONLY, NOT_SUPPORTED)
    assert rcs["cudaRuntimeGetVersion"] == 0 and rcs["cudaDriverGetVersion"] == 0
    assert other == {"LAST": NOT_SUPPORTED, "DRIVER": FAKE_DRIVER_VERSION}
    assert names == {NOT_SUPPORTED: "cudaErrorNotSupported"}


@pytest.mark.parametrize("major", sorted(RUNTIMES))
@pytest.mark.parametrize("arming", ["env", "control"])
def test_cudart_reports_the_catalogs_error_for_every_xid(rt, tmp_path, major, arming):
    """Armed before the process starts, by the older environment contract or by the node's control
    file: cudart passes cuDriverGetVersion, fails at cuInit with the XID's error and reports exactly
    that error on every call, through its own functions (cudaInitDevice, cudaStreamCreateWithPriority)
    and through the shim's runtime wrappers alike; cudaGetErrorName gives NVIDIA's name for it."""
    def one(xid):
        control = tmp_path / str(xid) / shim_control.CONTROL_FILE
        control.parent.mkdir()
        env = {}
        if arming == "control":
            write_control(control, shim_control.render(True, 1, "drill", xid=xid))
        else:
            env = dict(CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=xid)
        return xid, rt.calls(major, control, **env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(one, XIDS))
    for xid, (rcs, other, names) in results.items():
        code = shim_control.cuda_error(xid)
        assert {n: rc for n, rc in rcs.items() if n not in HOST_ONLY} == dict.fromkeys(set(rcs) - HOST_ONLY, code), xid
        assert rcs["cudaDriverGetVersion"] == 0 and other == {"LAST": code, "DRIVER": FAKE_DRIVER_VERSION}, (xid, other)
        assert names == {code: expected_name(major, code)}, (xid, names)


@pytest.mark.parametrize("major", sorted(RUNTIMES))
def test_cudart_with_one_gpu_targeted(rt, control, major):
    """gpu= targets one GPU: calls that name no GPU pass, so cudart gets past cuInit to the stand-in's
    limit; the shim's runtime wrappers that name the targeted device fail with the XID's error."""
    write_control(control, shim_control.render(True, 1, "drill", xid=79, gpu=PCI[2]))
    rcs = rt.calls(major, control, dev=2)[0]
    assert rcs["cudaGetDeviceCount"] == NOT_SUPPORTED and rcs["cudaInitDevice"] == NOT_SUPPORTED
    assert rcs["cudaSetDevice"] == 100 and rcs["cudaDeviceGetAttribute"] == 100
    rcs = rt.calls(major, control, dev=0)[0]
    assert set(rcs[n] for n in rcs if n not in HOST_ONLY) == {NOT_SUPPORTED}


@pytest.mark.parametrize("major", sorted(RUNTIMES))
def test_cudart_armed_and_disarmed_while_it_runs(rt, control, major):
    """At run time, through the control file. Once cudart has started (here: stopped at the
    stand-in's limit), it keeps that outcome, as it keeps a failed start on a real GPU: arming then
    shows on the runtime functions the shim wraps, which answer before cudart does."""
    covered = {"cudaGetDeviceCount", "cudaSetDevice", "cudaFree", "cudaMalloc", "cudaMemGetInfo",
               "cudaDeviceGetAttribute", "cudaDeviceSynchronize"}
    probe = Lines(rt.argv(major, "loop"), rt.env(control))
    try:
        first = state(probe.ask())
        assert {first[n] for n in first if n not in HOST_ONLY} == {NOT_SUPPORTED}
        write_control(control, shim_control.render(True, 1, "drill", xid=48))
        armed = probe.until(state, lambda s: s["cudaMalloc"] == 214)
        assert {armed[n] for n in covered} == {214}
        assert {armed[n] for n in set(armed) - covered - HOST_ONLY} == {NOT_SUPPORTED}
        write_control(control, shim_control.render(False, 2, "drill"))
        disarmed = probe.until(state, lambda s: s["cudaMalloc"] == NOT_SUPPORTED)
        assert disarmed == first
    finally:
        probe.close()
    # armed at start and disarmed later: cudart keeps its failed start, the XID's error
    write_control(control, shim_control.render(True, 3, "drill", xid=43))
    probe = Lines(rt.argv(major, "loop"), rt.env(control))
    try:
        assert {v for n, v in state(probe.ask()).items() if n not in HOST_ONLY} == {702}
        write_control(control, shim_control.render(False, 4, "drill"))
        for _attempt in range(3):
            assert {v for n, v in state(probe.ask()).items() if n not in HOST_ONLY} == {702}
    finally:
        probe.close()


# ---------------------------------------------------------------------------------------------
# CuPy (NVIDIA's cudart 12, linked statically: only the driver routes reach it)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arming", ["env", "control"])
def test_cupy_reports_the_catalogs_error_for_every_xid(rt, tmp_path, arming):
    """CuPy's exceptions carry the catalog's error and NVIDIA's name for it, for every XID."""
    for xid in XIDS:
        (tmp_path / str(xid)).mkdir()
        if arming == "control":
            write_control(tmp_path / str(xid) / shim_control.CONTROL_FILE, shim_control.render(True, 1, "drill", xid=xid))
    proc = subprocess.run([sys.executable, str(FIXTURES / "cupy_probe.py"), "fork", str(tmp_path),
                           ",".join(str(x) for x in XIDS)], env=rt.env(tmp_path / "unused"), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    results = {doc["xid"]: doc for doc in map(json.loads, proc.stdout.splitlines())}
    assert sorted(results) == XIDS
    for xid, doc in results.items():
        code = shim_control.cuda_error(xid)
        calls = doc["calls"]
        assert calls["driverGetVersion"] == {"ok": FAKE_DRIVER_VERSION}, (xid, calls)
        for name in ("getDeviceCount", "zeros"):
            assert calls[name]["error"] == "CUDARuntimeError" and calls[name]["status"] == code, (xid, calls)
            assert calls[name]["text"].startswith(expected_name("12", code) + ":"), (xid, calls)
        assert calls["ctxGetCurrent"]["error"] == "CUDADriverError" and calls["ctxGetCurrent"]["status"] == code


def cupy_state(line):
    return json.loads(line)["calls"]


def test_cupy_armed_and_disarmed_while_it_runs(rt, control):
    """The driver API calls CuPy makes itself (through dlsym) follow the control file at run time;
    its cudart keeps the outcome of its start (the stand-in's limit here)."""
    probe = Lines([sys.executable, str(FIXTURES / "cupy_probe.py"), "loop"], rt.env(control))
    try:
        first = cupy_state(probe.ask())
        assert first["ctxGetCurrent"] == {"ok": 0} and first["getDeviceCount"]["status"] == NOT_SUPPORTED
        write_control(control, shim_control.render(True, 1, "drill", xid=74))
        armed = probe.until(cupy_state, lambda c: "error" in c["ctxGetCurrent"])
        assert armed["ctxGetCurrent"]["status"] == 220 and armed["getDeviceCount"]["status"] == NOT_SUPPORTED
        write_control(control, shim_control.render(False, 2, "drill"))
        assert probe.until(cupy_state, lambda c: "ok" in c["ctxGetCurrent"]) == first
    finally:
        probe.close()
