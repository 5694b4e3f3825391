"""CuPy under the CUDA fault shim: what an application of CuPy (cupy-cuda12x, which links NVIDIA's
cudart 12 statically) sees. Run with the shim in LD_PRELOAD; one JSON line per probe on stdout.

    python cupy_probe.py fork DIR XID[,XID...]
        imports CuPy once, then forks one child per XID; each child arms the shim before its first
        CUDA call, from the environment (CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE) when
        DIR/<xid>/ holds no control file, else from DIR/<xid>/control, and makes the calls below
    python cupy_probe.py loop
        the calls once for every line read on stdin, until end of input

Each call reports {"ok": value} or {"error": exception type, "status": the CUDA error number,
"text": the exception's message}.
"""
import json
import os
import sys

import cupy
from cupy_backends.cuda.api import driver, runtime

CALLS = (
    ("driverGetVersion", runtime.driverGetVersion),                # cudart -> cuDriverGetVersion
    ("getDeviceCount", runtime.getDeviceCount),                    # cudart's start: cuInit, ...
    ("zeros", lambda: int(cupy.zeros(4).sum())),                   # a device allocation and a kernel
    ("ctxGetCurrent", lambda: int(driver.ctxGetCurrent() or 0)),   # the driver API, through dlsym
)


def probe():
    """Every call, its value or its CUDA error."""
    out = {}
    for name, call in CALLS:
        try:
            out[name] = {"ok": call()}
        # CuPy's CUDA errors, and anything else the probe should report rather than die of
        except Exception as exc:  # pylint: disable=broad-except
            out[name] = {"error": type(exc).__name__, "status": getattr(exc, "status", None), "text": str(exc)}
    return out


def arm(directory, xid):
    """Point this process's shim at its own control file; without one, arm it from the environment."""
    control = os.path.join(directory, str(xid), "control")
    os.environ["CUDA_FAULT_CONTROL_FILE"] = control
    if not os.path.exists(control):
        os.environ["CUDA_FAULT_INJECTION_ENABLED"] = "1"
        os.environ["CUDA_XID_TYPE"] = str(xid)


def cmd_fork(directory, xids):
    """One child per XID, one after the other: CUDA is never touched in this process."""
    for xid in xids:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                arm(directory, xid)
                print(json.dumps({"xid": xid, "calls": probe()}), flush=True)
            # a child must never return into the loop
            except BaseException:  # pylint: disable=broad-except
                code = 3
            os._exit(code)  # pylint: disable=protected-access
        status = os.waitpid(pid, 0)[1]
        if status != 0:
            print(json.dumps({"xid": xid, "child_status": status}), flush=True)


def cmd_loop():
    print(json.dumps({"ready": True}), flush=True)
    for _line in sys.stdin:
        print(json.dumps({"calls": probe()}), flush=True)


def main(argv):
    if len(argv) == 3 and argv[0] == "fork":
        cmd_fork(argv[1], [int(x) for x in argv[2].split(",")])
    elif argv == ["loop"]:
        cmd_loop()
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
