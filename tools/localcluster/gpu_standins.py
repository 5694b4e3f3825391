"""Stand-ins for a simulated GPU node's NVIDIA tools and host files: what the health agent's checks
read on a real node, which this machine (no GPU, no driver, no EFA) cannot give.

Each simulated node's host root (the pod runner's nodes/<node>/host, see podrunner.py) gets:

    usr/bin/nvidia-smi, usr/bin/dcgmi   two-line wrappers that run this file for the node
    etc/gpu-standins/state.json         the node's GPUs and what the tools answer (one JSON file)
    sys/class/infiniband/rdmapNs0       EFA devices (their device/driver link names the efa driver)
    proc/sys/kernel/random/boot_id      the node's boot id

The stand-in nvidia-smi answers the forms the health agent uses: -L, --query-gpu=...
--format=csv,noheader[,nounits], --query-compute-apps=..., nvlink -s and topo -m, from the state;
an unknown query field fails as the real tool fails. dcgmi answers --version and diag -r N.
Tests change a node's answers with update() (a GPU that fell off the bus, ECC errors, an inactive
NVLink, a fabric not registered, fewer EFA devices...) and put it back with write_node().

The pod runner plays the NVIDIA container runtime: a container whose environment asks for the
driver's utilities (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES with utility) finds the
node's usr/bin first on its PATH (runtime_path()), as the runtime mounts nvidia-smi into it.

    gpu_standins.py nvidia-smi --host HOST [arguments of nvidia-smi]
    gpu_standins.py dcgmi --host HOST [arguments of dcgmi]
"""
import copy
import json
import os
import shlex
import sys
import uuid

STATE = os.path.join("etc", "gpu-standins", "state.json")
TOOLS = ("nvidia-smi", "dcgmi")
INFINIBAND = os.path.join("sys", "class", "infiniband")
EFA_DRIVER = os.path.join("sys", "bus", "pci", "drivers", "efa")
BOOT_ID = os.path.join("proc", "sys", "kernel", "random", "boot_id")
NVLINKS_PER_GPU = 18                       # H100 SXM
LINK_SPEED = "26.562 GB/s"
UNITS = (" W", " MiB", " MHz", " %")       # what --format=csv,nounits leaves out


# The instance profiles the health agent checks nodes against: a node gets what its type has.
PROFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "files", "healthcheck",
                        "instance_profiles.json")


def instance_profile(instance_type):
    """{gpus, efa, nvlink} of an instance type (an unknown one: no EFA, no NVLink)."""
    with open(PROFILES) as handle:
        return dict({"efa": 0, "nvlink": False}, **json.load(handle).get(instance_type, {}))


# --- the state of a node --------------------------------------------------------------------------

def healthy_gpu(index, name, pci, gpu_uuid):
    """One GPU as nvidia-smi reports a healthy H100 SXM: every --query-gpu field the checks use."""
    return {"present": True, "inactive_links": [], "index": str(index), "name": name,
            "pci.bus_id": "0000" + pci.upper(), "uuid": gpu_uuid, "serial": "16500%05d" % index,
            "pstate": "P0", "temperature.gpu": "34", "power.draw": "71.24 W", "memory.total": "81559 MiB",
            "persistence_mode": "Enabled", "ecc.errors.uncorrected.volatile.total": "0",
            "ecc.errors.uncorrected.aggregate.total": "0", "retired_pages.pending": "No",
            "retired_pages.sbe": "0", "retired_pages.dbe": "0", "remapped_rows.pending": "No",
            "remapped_rows.failure": "No", "mig.mode.current": "Disabled",
            "fabric.state": "Completed", "fabric.status": "Success"}


def healthy_state(gpus, product, efa, nvlink):
    """A node's state: gpus [(pci, minor, uuid)] as localcluster.node_gpus() gives them."""
    name = product.replace("-", " ")
    return {"gpus": [healthy_gpu(i, name, pci, gpu_uuid) for i, (pci, _minor, gpu_uuid) in enumerate(gpus)],
            "nvlink": nvlink, "efa": efa, "compute_apps": [], "error": None, "dcgm_diag": "pass"}


def write_atomic(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_state(host):
    with open(os.path.join(host, STATE)) as handle:
        return json.load(handle)


def write_state(host, state):
    """The state file, and the EFA devices it counts, in the node's host root."""
    write_atomic(os.path.join(host, STATE), json.dumps(state, indent=1, sort_keys=True) + "\n")
    infiniband = os.path.join(host, INFINIBAND)
    os.makedirs(infiniband, exist_ok=True)
    os.makedirs(os.path.join(host, EFA_DRIVER), exist_ok=True)
    wanted = set("rdmap%ds0" % (16 + i) for i in range(state["efa"]))
    for name in set(os.listdir(infiniband)) - wanted:
        link = os.path.join(infiniband, name, "device", "driver")
        if os.path.islink(link):
            os.unlink(link)
        for sub in (os.path.join(infiniband, name, "device"), os.path.join(infiniband, name)):
            os.rmdir(sub)
    for name in wanted - set(os.listdir(infiniband)):
        device = os.path.join(infiniband, name, "device")
        os.makedirs(device)
        os.symlink(os.path.relpath(os.path.join(host, EFA_DRIVER), device), os.path.join(device, "driver"))


def write_node(host, gpus, product, efa, nvlink):
    """Give a simulated node healthy stand-ins (again): tools, state, EFA devices, a boot id."""
    for tool in TOOLS:
        wrapper = "#!/bin/sh\nexec %s %s %s --host %s \"$@\"\n" % (
            shlex.quote(sys.executable), shlex.quote(os.path.abspath(__file__)), tool, shlex.quote(host))
        write_atomic(os.path.join(host, "usr", "bin", tool), wrapper, 0o755)
    write_state(host, healthy_state(gpus, product, efa, nvlink))
    if not os.path.exists(os.path.join(host, BOOT_ID)):
        reboot(host)


def update(host, gpus=None, **changes):
    """Change a node's answers: gpus maps a GPU index to the fields to set on it (present False:
    it fell off the bus); other keys replace top-level state (efa, nvlink, compute_apps, error,
    dcgm_diag). Returns the state before, for write_state()."""
    state = read_state(host)
    before = copy.deepcopy(state)
    for index, fields in (gpus or {}).items():
        state["gpus"][int(index)].update(fields)
    state.update(changes)
    write_state(host, state)
    return before


def reboot(host, kmsg=os.path.join("dev", "kmsg")):
    """A new boot of the node: a new boot id and an empty kernel log."""
    write_atomic(os.path.join(host, BOOT_ID), str(uuid.uuid4()) + "\n")
    path = os.path.join(host, kmsg)
    if os.path.exists(path):
        with open(path, "wb"):
            pass


def runtime_path(host, env, path):
    """The PATH a container gets on a node whose NVIDIA container runtime mounts the driver's
    utilities into containers that ask for them (the runtime's rule: NVIDIA_VISIBLE_DEVICES set
    and not void/none, NVIDIA_DRIVER_CAPABILITIES including utility, or unset: utility,compute)."""
    devices = env.get("NVIDIA_VISIBLE_DEVICES", "")
    capabilities = env.get("NVIDIA_DRIVER_CAPABILITIES", "utility,compute").split(",")
    tools = os.path.join(host, "usr", "bin")
    if devices in ("", "void", "none") or not {"utility", "all"} & set(capabilities) \
            or not os.path.exists(os.path.join(tools, "nvidia-smi")):
        return path
    return tools + os.pathsep + path


# --- nvidia-smi -----------------------------------------------------------------------------------

class Usage(Exception):
    """Arguments the stand-in (like the real tool) refuses: message and exit status."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def present(state):
    return [gpu for gpu in state["gpus"] if gpu["present"]]


def query_gpu(state, fields, nounits):
    rows = []
    for gpu in present(state):
        values = []
        for field in fields:
            if field not in gpu or field in ("present", "inactive_links"):
                raise Usage('Field "%s" is not a valid field to query.' % field)
            value = str(gpu[field])
            for unit in UNITS if nounits else ():
                value = value[:-len(unit)] if value.endswith(unit) else value
            values.append(value)
        rows.append(", ".join(values))
    return rows


def nvlink_status(state):
    lines = []
    for gpu in present(state):
        lines.append("GPU %s: %s (UUID: %s)" % (gpu["index"], gpu["name"], gpu["uuid"]))
        for link in range(NVLINKS_PER_GPU if state["nvlink"] else 0):
            lines.append("\t Link %d: %s" % (link, "<inactive>" if link in gpu["inactive_links"] else LINK_SPEED))
    return lines


def topology(state):
    gpus = present(state)
    header = "\t" + "\t".join("GPU%s" % gpu["index"] for gpu in gpus) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID"
    rows = [header]
    for gpu in gpus:
        paths = [" X " if other is gpu else ("NV%d" % NVLINKS_PER_GPU if state["nvlink"] else "SYS") for other in gpus]
        rows.append("GPU%s\t%s\t0-47\t0\t\tN/A" % (gpu["index"], "\t".join(paths)))
    return rows + ["", "Legend:", "", "  X    = Self", "  SYS  = Connection traversing PCIe as well as the SMP interconnect",
                   "  NV#  = Connection traversing a bonded set of # NVLinks"]


def nvidia_smi(state, args):
    """(output lines, exit status) of nvidia-smi with these arguments."""
    if state.get("error"):
        raise Usage(state["error"]["message"], state["error"]["returncode"])
    options = dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)
    formats = options.get("--format", "csv").split(",")
    if args in (["-L"], ["--list-gpus"]):
        return ["GPU %s: %s (UUID: %s)" % (gpu["index"], gpu["name"], gpu["uuid"]) for gpu in present(state)]
    if "--query-gpu" in options:
        return query_gpu(state, options["--query-gpu"].split(","), "nounits" in formats)
    if "--query-compute-apps" in options:
        fields = options["--query-compute-apps"].split(",")
        return [", ".join(str(app.get(field, "[N/A]")) for field in fields) for app in state["compute_apps"]]
    if args[:1] == ["nvlink"] and args[1:2] in (["-s"], ["--status"]):
        return nvlink_status(state)
    if args == ["topo", "-m"]:
        return topology(state)
    raise Usage("stand-in nvidia-smi: arguments not supported: %s" % " ".join(args))


# --- dcgmi ----------------------------------------------------------------------------------------

def dcgmi(state, args):
    if args == ["--version"]:
        return ["dcgmi  version: 4.2.3 (stand-in)"]
    if args[:2] == ["diag", "-r"] and len(args) == 3:
        verdict = "Pass" if state["dcgm_diag"] == "pass" else "Fail"
        lines = ["Successfully ran diagnostic for group.", "| Diagnostic            | Result        |",
                 "| Deployment            | Pass          |", "| Memory                | %-13s |" % verdict]
        if verdict == "Fail":
            raise Usage("\n".join(lines + ["Error: GPU 0 memory test failed (stand-in)"]), 226)
        return lines
    raise Usage("stand-in dcgmi: arguments not supported: %s" % " ".join(args))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[0] not in TOOLS or argv[1] != "--host":
        print(__doc__.rsplit("\n\n", 1)[-1], file=sys.stderr)
        return 2
    tool, host, args = argv[0], argv[2], argv[3:]
    try:
        lines = (nvidia_smi if tool == "nvidia-smi" else dcgmi)(read_state(host), args)
    except Usage as e:
        print(str(e), file=sys.stderr if tool == "nvidia-smi" else sys.stdout)
        return e.status
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
