# -*- coding: utf-8 -*-
# Copyright: contributors to gpu_resilience.fault_injection
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""EFA loopback test of the quarantine Job (the AWS suite's check 6), beside DCGM level 4.

Run as ``python3 efa_loopback.py [--timeout 120] [--termination-log /dev/termination-log]`` in a
container that holds the node's EFA devices (the quarantine Job requests them all from the EFA
device plugin) and has libfabric's ``fi_info`` and ``fi_pingpong`` (the AWS EFA installer's
fabtests, e.g. /opt/amazon/efa/bin). Python 3.8+ standard library only; no shell, no listening
socket of its own (fi_pingpong's server takes the out-of-band exchange for the length of one test).

For every EFA domain ``fi_info -p efa -t FI_EP_RDM`` lists, it runs an fi_pingpong server and a
client against it on the loopback address, each with a deadline. The result, as the suite rates
it, goes to the termination log as JSON ({check, status, severity, detail, devices}), which the
quarantine run reads:

* PASS: every device passed; exit 0;
* FAIL at RESET: a device failed or timed out; exit 1;
* FAIL at ISOLATE: no EFA device at all; exit 2;
* SKIP: fi_info or fi_pingpong missing from the image (the suite's "no loopback test tools");
  exit 0, so a missing tool never fails the Job.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

CHECK = "6-efa-loopback"
EFA_BIN_DIRS = ("/opt/amazon/efa/bin",)
SERVER_START = 1.0          # seconds the server gets to listen before the client connects
KILL_WAIT = 5


def find(tool, path=None):
    return shutil.which(tool, path=path) or next(
        (os.path.join(d, tool) for d in EFA_BIN_DIRS if os.access(os.path.join(d, tool), os.X_OK)), None)


def domains(fi_info_output):
    """The EFA domains (devices) of ``fi_info -p efa -t FI_EP_RDM``, in order, once each."""
    seen = []
    for line in fi_info_output.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key == "domain" and value.strip() not in seen:
            seen.append(value.strip())
    return seen


def verdict(devices, tools_missing=None, no_devices_reason=None):
    """(result document, exit status) from the per-device outcomes {device: (passed, detail)}."""
    if tools_missing:
        return {"check": CHECK, "status": "SKIP", "severity": "", "detail": tools_missing, "devices": {}}, 0
    if not devices:
        return {"check": CHECK, "status": "FAIL", "severity": "ISOLATE",
                "detail": no_devices_reason or "no EFA device found", "devices": {}}, 2
    failed = sorted(device for device, (passed, _detail) in devices.items() if not passed)
    document = {"check": CHECK, "devices": dict((device, detail) for device, (_passed, detail) in devices.items())}
    if failed:
        document.update(status="FAIL", severity="RESET",
                        detail="%d of %d EFA device(s) failed the loopback test: %s" % (len(failed), len(devices), ", ".join(failed)))
        return document, 1
    document.update(status="PASS", severity="", detail="EFA loopback passed on %d device(s)" % len(devices))
    return document, 0


def pingpong(fi_pingpong, domain, timeout):
    """(passed, detail) of one server/client pair on the loopback address."""
    base = [fi_pingpong, "-p", "efa", "-e", "rdm", "-d", domain, "-I", "100"]
    server = subprocess.Popen(base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                              stderr=subprocess.DEVNULL, close_fds=True)
    try:
        time.sleep(SERVER_START)
        client = subprocess.run(base + ["127.0.0.1"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=timeout, check=False)
        output = client.stdout.decode("utf-8", "replace").strip().splitlines()
        last = output[-1] if output else "no output"
        return client.returncode == 0, ("exit %d: %s" % (client.returncode, last))[:200]
    except subprocess.TimeoutExpired:
        return False, "timed out after %d s" % timeout
    finally:
        server.kill()
        try:
            server.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass


def run(timeout, path=None):
    fi_info, fi_pingpong = find("fi_info", path), find("fi_pingpong", path)
    if not fi_info or not fi_pingpong:
        missing = ", ".join(name for name, found in (("fi_info", fi_info), ("fi_pingpong", fi_pingpong)) if not found)
        return verdict({}, tools_missing="no EFA loopback test tools in the image (%s not found)" % missing)
    listing = subprocess.run([fi_info, "-p", "efa", "-t", "FI_EP_RDM"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout, check=False)
    found = domains(listing.stdout.decode("utf-8", "replace"))
    if not found:
        return verdict({}, no_devices_reason="fi_info -p efa lists no EFA device (exit %d)" % listing.returncode)
    return verdict(dict((domain, pingpong(fi_pingpong, domain, timeout)) for domain in found))


def main(argv=None):
    parser = argparse.ArgumentParser(description="EFA loopback test: fi_pingpong on every EFA device.")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per device (the suite's EFA_TEST_TIMEOUT)")
    parser.add_argument("--termination-log", default="/dev/termination-log")
    args = parser.parse_args(argv)
    document, status = run(args.timeout)
    text = json.dumps(document, sort_keys=True)
    print(text, flush=True)
    try:
        with open(args.termination_log, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as e:
        print("cannot write %s: %s" % (args.termination_log, e), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
