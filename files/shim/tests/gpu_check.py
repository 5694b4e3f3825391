"""The CUDA fault shim on a real GPU: PyTorch on NVIDIA's driver, in one command.

    python3 files/shim/tests/gpu_check.py [--out DIR] [--python PYTHON]

Needs Linux, an NVIDIA GPU with its driver (libcuda.so.1), PyTorch built with CUDA (in PYTHON,
default this interpreter) and a C compiler; it checks that first and exits 2, running nothing, when
something is missing. It builds the shim exactly as the cluster does and runs PyTorch workers with
it preloaded (CUDA_FAULT_CONTROL_FILE in a temporary directory), then:

  baseline      every GPU computes with the shim loaded and disarmed
  errors        for each CUDA error of the catalog (one XID per error): a worker that has already
                computed on GPU 0 is armed through the control file, mid-run; its next operations
                fail; after disarming, its context keeps failing (a sticky error), and a new worker
                computes again. It records the message PyTorch printed for each error.
  targeting     armed for one GPU only (gpu=<PCI address>): that GPU fails, the others compute; with
                a single GPU, an address of no GPU leaves it computing
  real-sticky   a real sticky error, no shim involved (a device-side assert from an out-of-bounds
                index), and which of PyTorch's host-side queries still answer afterwards, beside the
                same queries after the shim's XID 13

It writes DIR/gpu-check.json (default build/gpu-check) and prints a Markdown summary.
Exit status: 0 every check passed, 1 a check failed, 2 a prerequisite is missing.
"""
import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
import shim_control  # noqa: E402  pylint: disable=wrong-import-position
import shim_source  # noqa: E402  pylint: disable=wrong-import-position
import xid_catalog  # noqa: E402  pylint: disable=wrong-import-position

TRIES = 200          # operations a worker makes before an armed control file must have reached it
HOST_QUERIES = ("device_count", "current_device", "get_device_name", "mem_get_info", "synchronize", "empty")


# ---- prerequisites -------------------------------------------------------------------------

def driver_pci_addresses():
    """{CUDA ordinal: PCI address} from the driver itself (cuDeviceGetPCIBusId), in this process's
    ordering, which the workers share (same environment)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    count, out = ctypes.c_int(0), {}
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return out
    for ordinal in range(count.value):
        device, buf = ctypes.c_int(-1), ctypes.create_string_buffer(64)
        if cuda.cuDeviceGet(ctypes.byref(device), ordinal) == 0 and cuda.cuDeviceGetPCIBusId(buf, 63, device) == 0:
            out[ordinal] = xid_catalog.format_pci_bdf(buf.value.decode("ascii"))
    return out


def prerequisites(python):
    """What is missing for the check to run, as sentences (empty: nothing)."""
    missing = []
    if not sys.platform.startswith("linux"):
        missing.append("Linux is required (the shim is an LD_PRELOAD library for glibc)")
    if shutil.which("cc") is None:
        missing.append("no C compiler (cc) on PATH: the shim is built from source")
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            missing.append("the NVIDIA driver is loaded but reports no usable GPU (cuInit/cuDeviceGetCount)")
    except OSError:
        missing.append("no NVIDIA driver: libcuda.so.1 cannot be loaded")
    probe = "import torch; print(torch.version.cuda or '', torch.cuda.device_count() if torch.version.cuda else 0)"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    except OSError as exc:
        missing.append("cannot run %s: %s" % (python, exc))
    else:
        words = out.stdout.split()
        if out.returncode != 0:
            missing.append("PyTorch cannot be imported by %s: %s" % (python, (out.stderr.strip().splitlines() or ["?"])[-1]))
        elif len(words) != 2 or int(words[1]) < 1:
            missing.append("PyTorch in %s has no CUDA or sees no GPU (torch.version.cuda, device_count: %s)"
                           % (python, out.stdout.strip() or "none"))
    return missing


# ---- the worker (a separate process, shim preloaded) -----------------------------------------

def worker():
    """Reads commands on stdin, answers one JSON line each: "run GPU", "assert GPU", "probe GPU"."""
    import torch  # pylint: disable=import-outside-toplevel

    def attempt(action):
        try:
            return {"ok": action()}
        # PyTorch raises RuntimeError or torch.AcceleratorError for CUDA errors
        except Exception as exc:  # pylint: disable=broad-except
            return {"error": type(exc).__name__, "message": str(exc)}

    def compute(gpu):
        x = torch.randn(256, 256, device="cuda:%d" % gpu)
        y = x @ x
        torch.cuda.synchronize(gpu)
        return float(y.sum().item())

    def device_assert(gpu):
        x = torch.zeros(4, device="cuda:%d" % gpu)
        x[torch.tensor([4096], device="cuda:%d" % gpu)] = 1.0   # out of bounds: a device-side assert
        torch.cuda.synchronize(gpu)
        return "no error"

    def queries(gpu):
        return {
            "device_count": attempt(torch.cuda.device_count),
            "current_device": attempt(torch.cuda.current_device),
            "get_device_name": attempt(lambda: torch.cuda.get_device_name(gpu)),
            "mem_get_info": attempt(lambda: list(torch.cuda.mem_get_info(gpu))),
            "synchronize": attempt(lambda: torch.cuda.synchronize(gpu)),
            "empty": attempt(lambda: bool(torch.empty(16, device="cuda:%d" % gpu).numel())),
        }

    commands = {
        "run": lambda gpu: attempt(lambda: compute(gpu)),
        "assert": lambda gpu: attempt(lambda: device_assert(gpu)),
        "probe": queries,
    }
    print(json.dumps({"ready": True, "torch": torch.__version__, "cuda": torch.version.cuda}), flush=True)
    for line in sys.stdin:
        verb, gpu = line.split()
        print(json.dumps(commands[verb](int(gpu))), flush=True)


class Worker:
    """A PyTorch worker process with the shim preloaded."""

    def __init__(self, python, shim, control):
        env = dict(os.environ, LD_PRELOAD=shim, CUDA_FAULT_CONTROL_FILE=control)
        for key in (shim_control.ENV_ENABLED, shim_control.ENV_XID, shim_control.ENV_GPU):
            env.pop(key, None)
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker"], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.hello = json.loads(self.proc.stdout.readline() or "{}")
        if not self.hello.get("ready"):
            raise RuntimeError("the PyTorch worker did not start")

    def ask(self, verb, gpu=0):
        self.proc.stdin.write("%s %d\n" % (verb, gpu))
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker exited (%s %d)" % (verb, gpu))
        return json.loads(line)

    def until_error(self, gpu=0):
        """Operations until one fails (the control file reaches the worker within milliseconds)."""
        for _attempt in range(TRIES):
            got = self.ask("run", gpu)
            if "error" in got:
                return got
        return got

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        self.proc.stdout.close()


# ---- the checks --------------------------------------------------------------------------------

def error_xids():
    """One XID per CUDA error of the catalog (the lowest), {cuda error number: xid}."""
    out = {}
    for xid in sorted(xid_catalog.XID_CATALOG):
        code = xid_catalog.XID_CATALOG[xid]["cuda_error"][0]
        if code != 0 and code not in out:
            out[code] = xid
    return out


def first_line(result):
    """The first line of PyTorch's message (its advice on CUDA_LAUNCH_BLOCKING follows it)."""
    return (result.get("message") or "").strip().splitlines()[0] if "error" in result else ""


def run_checks(python, shim, workdir):
    """Every check; the report (a JSON-ready dict)."""
    control = os.path.join(workdir, "control-dir", shim_control.CONTROL_FILE)
    os.makedirs(os.path.dirname(control))
    seq = [0]

    def write(armed, xid=None, gpu=None):
        seq[0] += 1
        tmp = control + ".tmp"
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(shim_control.render(armed, seq[0], "gpu-check", xid=xid, gpu=gpu))
        os.replace(tmp, control)

    def fresh():
        if os.path.exists(control):
            os.unlink(control)
        return Worker(python, shim, control)

    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "errors": {}, "targeting": {}}
    first = fresh()
    report["torch"], report["torch_cuda"] = first.hello["torch"], first.hello["cuda"]
    count = first.ask("probe")["device_count"].get("ok", 0)
    report["gpus"] = count
    report["baseline"] = {gpu: first.ask("run", gpu) for gpu in range(count)}
    first.close()
    pcis = report["pci"] = driver_pci_addresses()

    for code, xid in sorted(error_xids().items()):
        entry = report["errors"][str(code)] = {"xid": xid, "name": xid_catalog.XID_CATALOG[xid]["cuda_error"][1],
                                               "sticky": xid_catalog.XID_CATALOG[xid]["sticky"]}
        work = fresh()
        entry["before"] = work.ask("run")
        write(True, xid=xid)
        entry["armed"] = work.until_error()
        write(False)
        entry["after_disarm"] = work.ask("run")
        entry["host_queries"] = work.ask("probe")
        work.close()
        work = fresh()
        entry["new_process"] = work.ask("run")
        work.close()

    work = fresh()
    work.ask("run", 0)
    if count >= 2:
        write(True, xid=79, gpu=pcis[1])
        report["targeting"] = {"target": pcis[1], "gpu1": work.until_error(1), "gpu0": work.ask("run", 0)}
    else:
        absent = "0000:ff:1f.7"
        write(True, xid=79, gpu=absent)
        other = [work.ask("run", 0) for _attempt in range(5)]
        write(True, xid=79, gpu=pcis[0])
        report["targeting"] = {"target": pcis[0], "absent": absent, "gpu0_other_address": other[-1],
                               "gpu0": work.until_error(0)}
    work.close()

    work = fresh()
    report["real_sticky"] = {"before": work.ask("run"), "assert": work.ask("assert"), "after": work.ask("run"),
                             "host_queries": work.ask("probe")}
    work.close()
    return report


def failures(report):
    """The checks that did not hold, as sentences (empty: all passed)."""
    out = []
    if not report.get("baseline"):
        out.append("baseline: no GPU computed")
    for gpu, result in (report.get("baseline") or {}).items():
        if "error" in result:
            out.append("baseline: GPU %s failed with the shim disarmed: %s" % (gpu, first_line(result)))
    for entry in report.get("errors", {}).values():
        label = "%s (XID %s)" % (entry["name"], entry["xid"])
        if "error" in entry["before"]:
            out.append("%s: failed before arming: %s" % (label, first_line(entry["before"])))
        if "error" not in entry["armed"]:
            out.append("%s: armed mid-run, PyTorch did not fail within %d operations" % (label, TRIES))
        if entry["sticky"] and "error" not in entry["after_disarm"]:
            out.append("%s: the failed context worked again after disarming (not sticky)" % label)
        if "error" in entry["new_process"]:
            out.append("%s: a new process failed after disarming: %s" % (label, first_line(entry["new_process"])))
    target = report.get("targeting", {})
    if target and "error" not in target.get("gpu0" if "absent" in target else "gpu1", {}):
        out.append("targeting: the targeted GPU did not fail")
    if target and "gpu1" in target and "error" in target["gpu0"]:
        out.append("targeting: GPU 0 failed although GPU 1 was targeted")
    if target and "absent" in target and "error" in target["gpu0_other_address"]:
        out.append("targeting: GPU 0 failed although an absent address was targeted")
    sticky = report.get("real_sticky", {})
    if sticky and "error" not in sticky.get("assert", {}) and "error" not in sticky.get("after", {}):
        out.append("real-sticky: the out-of-bounds index raised no error")
    return out


def summary(report):
    """The Markdown the shim's README quotes."""
    lines = ["GPU check of %s: PyTorch %s (CUDA %s), %s GPU(s)" % (report["date"], report.get("torch"),
                                                                   report.get("torch_cuda"), report.get("gpus")),
             "", "| catalog error (XID) | PyTorch, armed mid-run | after disarming (same context) | new process |",
             "|---|---|---|---|"]
    for code, entry in sorted(report.get("errors", {}).items(), key=lambda item: int(item[0])):
        lines.append("| %s %s (%s) | %s | %s | %s |" % (
            code, entry["name"], entry["xid"], first_line(entry["armed"]) or "no error",
            first_line(entry["after_disarm"]) or "works", first_line(entry["new_process"]) or "works"))
    lines += ["", "| host-side query | after a real device-side assert | after the shim's XID 13 |", "|---|---|---|"]
    real = report.get("real_sticky", {}).get("host_queries", {})
    shim13 = report.get("errors", {}).get("700", {}).get("host_queries", {})
    for query in HOST_QUERIES:
        lines.append("| %s | %s | %s |" % (query, _cell(real.get(query)), _cell(shim13.get(query))))
    target = report.get("targeting") or {}
    lines += ["", "targeting gpu=%s: %s" % (target.get("target"), "; ".join(
        "%s: %s" % (key, _cell(value)) for key, value in sorted(target.items()) if isinstance(value, dict)))]
    return "\n".join(lines)


def _cell(result):
    if result is None:
        return "-"
    return "works" if "ok" in result else first_line(result)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "gpu-check"), help="report directory")
    parser.add_argument("--python", default=sys.executable, help="the Python that has PyTorch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    missing = prerequisites(args.python)
    if missing:
        print("GPU check not run; missing:\n  - " + "\n  - ".join(missing), file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="gpu-check-")
    try:
        shim = os.path.join(workdir, shim_source.LIBRARY)
        with open(os.path.join(workdir, shim_source.HEADER_FILE), "w", encoding="utf-8") as handle:
            handle.write(shim_source.xid_header())
        shutil.copy(shim_source.source_path(), os.path.join(workdir, shim_source.SOURCE_FILE))
        subprocess.run(shim_source.compile_argv(workdir, shim), check=True)
        report = run_checks(args.python, shim, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["failures"] = failures(report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu-check.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
    print(summary(report))
    print("\n%s" % ("all checks passed" if not report["failures"] else "FAILED:\n  - " + "\n  - ".join(report["failures"])))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
