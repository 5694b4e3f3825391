"""A real Kubernetes control plane on loopback, with simulated GPU nodes, for tests and demos.

    localcluster.py --bin-dir DIR up [--nodes N] [--cpu-nodes M] [--journal] [--nvsentinel]
                                     [--nvsentinel-stage monitor|dry-run|full]
                                                   start (or converge) the cluster
    localcluster.py down                           stop everything, delete its state
    localcluster.py status | env | restart-runner

Processes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built from their Go
modules by build-binaries.sh), KWOK (simulates the kubelets of the GPU nodes), the local pod
runner (runs the containers of pods that opt in: podrunner.py) and, with --journal, the node
journal bridge (kmsg_journal.py). Every address any of them listens on or connects to is in
127.0.0.0/8, including KWOK's node and pod IPs.

Each simulated node has a host root, <state>/runner/nodes/<node>/host/, that hostPath volumes map
to: /proc/driver/nvidia/gpus/<pci>/information for its GPUs, /etc/machine-id (stable per node name),
/proc/sys/kernel/random/boot_id (new at each `up` that creates the cluster) and /dev/kmsg, a
regular file that the fault agent appends kernel records to.

--journal (or LOCALCLUSTER_JOURNAL=1) gives every node a real systemd journal, as journald would
keep it from the node's /dev/kmsg: <host root>/var/log/journal/<machine-id>/system.journal, which
`journalctl --directory=<host root>/var/log/journal _TRANSPORT=kernel` and NVSentinel's
syslog-health-monitor (hostPath /var/log mounted at /nvsentinel/var/log) read. The switch is kept
in cluster.json: a later `up` without it keeps the bridge running; `down` stops it.

--nvsentinel runs NVIDIA NVSentinel on the cluster, built from source and deployed by its own
chart (nvsentinel.py), with its PostgreSQL as one more process of the cluster (postgresql.py) and
the node journals it reads (so it implies --journal). It is kept in cluster.json like --journal.
--nvsentinel-stage says what NVSentinel may do (nvsentinel.STAGES: monitor, dry-run, full, the
default); `up --nvsentinel --nvsentinel-stage S` on a running cluster redeploys it in stage S.

Image-mode pods (podrunner.py) are configured by the *.json files in <state>/image-maps/
(LOCALCLUSTER_IMAGE_MAPS in `env`); they need Debian's iproute2, journals need
systemd-journal-remote: tools/local-cluster installs both through tools/debian-packages.sh.

Both `up` and `down` are idempotent: `up` on a healthy cluster only converges the node set, `up`
on a half-started one restarts it cleanly, `down` with nothing running succeeds. Every process
carries LOCALCLUSTER_STATE=<state dir> in its environment, so `down` also finds stragglers that
lost their pid file (pod programs started by the runner included).
"""
import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
if __name__ == "__main__":
    # Sibling modules (nvsentinel.py) import this one by name: let them share this instance.
    sys.modules.setdefault("localcluster", sys.modules[__name__])
import pki  # noqa: E402  (sibling modules, found through the path above)
import postgresql  # noqa: E402
from podns import proc_start_time  # noqa: E402
import gpu_standins  # noqa: E402

HOST = "127.0.0.1"
SERVICE_CIDR = "127.96.0.0/16"      # only numbers: nothing ever connects to a ClusterIP here
KWOK_FALLBACK_POD_CIDR = "127.127.0.0/16"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
MANAGED_LABEL = "localcluster.gpu-resilience.io/managed"
PROCESS_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                 "postgresql", "podrunner", "kmsg-journal")
# A process that runs only when cluster.json says so (the option that asked for it).
OPTIONAL = {"kmsg-journal": "journal", "postgresql": "nvsentinel"}
# Started by its lane's set-up (nvsentinel.up: PostgreSQL needs its data directory first), then
# restarted like the others when it dies.
STARTED_BY_LANE = ("postgresql",)
STATE_ENV = "LOCALCLUSTER_STATE"


def log(msg):
    print("[local-cluster] " + msg, file=sys.stderr, flush=True)


class ClusterError(Exception):
    pass


# --- layout ------------------------------------------------------------------------------------

class Layout:
    """Paths and ports of one cluster instance, all derived from its state directory."""

    def __init__(self, state_dir, port_base):
        self.state = os.path.abspath(state_dir)
        self.pki = os.path.join(self.state, "pki")
        self.run = os.path.join(self.state, "run")
        self.logs = os.path.join(self.state, "logs")
        self.etcd_data = os.path.join(self.state, "etcd")
        self.runner_state = os.path.join(self.state, "runner")
        self.image_maps = os.path.join(self.state, "image-maps")
        self.journal_state = os.path.join(self.state, "journal-bridge")
        self.kubeconfig = os.path.join(self.state, "kubeconfig")
        self.info = os.path.join(self.state, "cluster.json")
        self.ports = {"apiserver": port_base + 443, "etcd": port_base + 379,
                      "etcd-peer": port_base + 380, "controller-manager": port_base + 257,
                      "scheduler": port_base + 259, "postgresql": port_base + 432}

    @property
    def server(self):
        return "https://%s:%d" % (HOST, self.ports["apiserver"])

    def component_kubeconfig(self, stem):
        return os.path.join(self.state, "kubeconfig-" + stem)


def write_kubeconfig(path, layout, stem):
    # JSON is valid YAML, so no YAML library is needed to write kubeconfigs.
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "localcluster",
        "clusters": [{"name": "localcluster", "cluster": {
            "server": layout.server, "certificate-authority": os.path.join(layout.pki, "ca.crt")}}],
        "users": [{"name": stem, "user": {
            "client-certificate": os.path.join(layout.pki, stem + ".crt"),
            "client-key": os.path.join(layout.pki, stem + ".key")}}],
        "contexts": [{"name": "localcluster", "context": {"cluster": "localcluster", "user": stem}}],
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --- processes ---------------------------------------------------------------------------------

def _pidfile(layout, name):
    return os.path.join(layout.run, name + ".json")


def running_pid(layout, name):
    try:
        with open(_pidfile(layout, name)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if proc_start_time(rec["pid"]) == rec["start"]:
        return rec["pid"]
    return None


def spawn(layout, name, argv, **popen):
    os.makedirs(layout.run, exist_ok=True)
    os.makedirs(layout.logs, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8", STATE_ENV: layout.state}
    with open(os.path.join(layout.logs, name + ".log"), "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=layout.state, start_new_session=True, **popen)
    with open(_pidfile(layout, name), "w") as f:
        json.dump({"pid": proc.pid, "start": proc_start_time(proc.pid), "argv": argv}, f)
    return proc.pid


def process_alive(pid):
    """pid is a live process, ours or not (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError, TypeError):
        return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): reap it if it is ours; one that init has yet to reap (it
    # may take seconds to) has ended all the same.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return proc_start_time(pid) is not None


def terminate(pids, grace):
    """SIGTERM each process group, then SIGKILL what is left after the grace period."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def marked_by(state_dir, environ):
    """True if a NUL-separated environment block names state_dir (or a directory under it)."""
    prefix = ("%s=" % STATE_ENV).encode()
    state = state_dir.encode()
    for var in environ.split(b"\0"):
        if var.startswith(prefix):
            value = var[len(prefix):]
            return value == state or value.startswith(state + b"/")
    return False


def stragglers(layout):
    """Pids of any process marked with this cluster's state directory: components and pod programs."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                if marked_by(layout.state, f.read()):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def stop_all(layout):
    # Runner first, so it stops its pod programs while the API server still answers.
    for name in reversed(PROCESS_ORDER):
        pid = running_pid(layout, name)
        if pid:
            terminate([pid], grace=15 if name == "podrunner" else 10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_pidfile(layout, name))
    left = stragglers(layout)
    if left:
        log("stopping %d leftover process(es): %s" % (len(left), left))
        terminate(left, grace=5)
    left = stragglers(layout)
    if left:
        raise ClusterError("processes still running after SIGKILL: %s" % left)


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


# --- health ------------------------------------------------------------------------------------

def _ssl_context(layout):
    ctx = ssl.create_default_context(cafile=os.path.join(layout.pki, "ca.crt"))
    ctx.load_cert_chain(os.path.join(layout.pki, "admin.crt"), os.path.join(layout.pki, "admin.key"))
    return ctx


def http_ok(url, ctx=None, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def wait_for(what, check, timeout, layout, log_name=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if log_name and not running_pid(layout, log_name):
            break
        time.sleep(0.2)
    tail = ""
    if log_name:
        with contextlib.suppress(OSError), open(os.path.join(layout.logs, log_name + ".log"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 3000))
            tail = "\n--- last lines of %s.log ---\n%s" % (log_name, f.read().decode(errors="replace"))
    raise ClusterError("%s did not become ready within %ds%s" % (what, timeout, tail))


# --- component command lines -------------------------------------------------------------------

# LOCALCLUSTER_AUDIT=1 at start-up makes the API server log one JSON line per request (who, verb,
# resource, when) to <state>/audit.log: the benchmarks under bench/ count a drill's requests with it.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
"""


def audit_flags(layout):
    if os.environ.get("LOCALCLUSTER_AUDIT", "") not in ("1", "true"):
        return []
    policy = os.path.join(layout.state, "audit-policy.yaml")
    with open(policy, "w", encoding="utf-8") as f:
        f.write(AUDIT_POLICY)
    return ["--audit-policy-file=" + policy, "--audit-log-path=" + os.path.join(layout.state, "audit.log"),
            "--audit-log-format=json", "--audit-log-maxsize=0"]


def commands(layout, bin_dir, stages_file):
    p, pk = layout.ports, layout.pki
    etcd_url = "http://%s:%d" % (HOST, p["etcd"])
    peer_url = "http://%s:%d" % (HOST, p["etcd-peer"])

    def common_auth(stem):
        path = layout.component_kubeconfig(stem)
        return ["--kubeconfig=" + path, "--authentication-kubeconfig=" + path,
                "--authorization-kubeconfig=" + path]

    return {
        "etcd": [os.path.join(bin_dir, "etcd"), "--name=localcluster", "--data-dir=" + layout.etcd_data,
                 "--listen-client-urls=" + etcd_url, "--advertise-client-urls=" + etcd_url,
                 "--listen-peer-urls=" + peer_url, "--initial-advertise-peer-urls=" + peer_url,
                 "--initial-cluster=localcluster=" + peer_url,
                 # A throwaway test store: durability is not worth an fsync per write.
                 "--unsafe-no-fsync=true", "--log-level=warn"],
        "kube-apiserver": [
            os.path.join(bin_dir, "kube-apiserver"), "--etcd-servers=" + etcd_url,
            "--bind-address=" + HOST, "--advertise-address=" + HOST, "--secure-port=%d" % p["apiserver"],
            "--tls-cert-file=%s/apiserver.crt" % pk, "--tls-private-key-file=%s/apiserver.key" % pk,
            "--client-ca-file=%s/ca.crt" % pk,
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file=%s/sa.pub" % pk,
            "--service-account-signing-key-file=%s/sa.key" % pk,
            "--service-cluster-ip-range=" + SERVICE_CIDR,
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--requestheader-client-ca-file=%s/ca.crt" % pk, "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--proxy-client-cert-file=%s/front-proxy-client.crt" % pk,
            "--proxy-client-key-file=%s/front-proxy-client.key" % pk,
            # Endpoints may not hold loopback addresses; the `kubernetes` Service keeps none.
            "--endpoint-reconciler-type=none", "--profiling=false", "--v=1", *audit_flags(layout)],
        "kube-controller-manager": [
            os.path.join(bin_dir, "kube-controller-manager"), *common_auth("kube-controller-manager"),
            "--bind-address=" + HOST, "--secure-port=%d" % p["controller-manager"],
            "--leader-elect=false", "--use-service-account-credentials=true",
            "--root-ca-file=%s/ca.crt" % pk, "--service-account-private-key-file=%s/sa.key" % pk,
            "--cluster-signing-cert-file=%s/ca.crt" % pk, "--cluster-signing-key-file=%s/ca.key" % pk,
            "--profiling=false", "--v=1"],
        "kube-scheduler": [
            os.path.join(bin_dir, "kube-scheduler"), *common_auth("kube-scheduler"),
            "--bind-address=" + HOST, "--secure-port=%d" % p["scheduler"], "--leader-elect=false",
            "--profiling=false", "--v=1"],
        "kwok": [
            os.path.join(bin_dir, "kwok"), "--kubeconfig=" + layout.component_kubeconfig("kwok"),
            "--config=" + stages_file, "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=%s=%s" % KWOK_NODE_ANNOTATION,
            "--cidr=" + KWOK_FALLBACK_POD_CIDR, "--node-ip=" + HOST, "--node-port=0",
            "--node-lease-duration-seconds=40"],
        "podrunner": [
            sys.executable, os.path.join(HERE, "podrunner.py"), "--kubeconfig=" + layout.kubeconfig,
            "--state-dir=" + layout.runner_state, "--api-host=" + HOST,
            "--api-port=%d" % p["apiserver"], "--ca-file=%s/ca.crt" % pk,
            "--image-maps=" + layout.image_maps],
        "postgresql": postgresql.command(postgresql.Paths(layout.state), p["postgresql"]),
        "kmsg-journal": [
            sys.executable, os.path.join(HERE, "kmsg_journal.py"),
            "--nodes-dir=" + os.path.join(layout.runner_state, "nodes"),
            "--state-dir=" + layout.journal_state],
    }


def wanted(options):
    """The processes a cluster with these options (cluster.json's) runs, in start order."""
    return [name for name in PROCESS_ORDER if name not in OPTIONAL or options.get(OPTIONAL[name])]


# --- nodes -------------------------------------------------------------------------------------

# Second octet of the first node's pod CIDR. Two clusters on one machine (parallel test runs) must
# not hand out the same pod IPs, since the runner binds pods' servers to them: give each its own
# LOCALCLUSTER_POD_NET (128 to 240; a cluster of N nodes uses ceil(N/256) octets from there).
POD_NET = int(os.environ.get("LOCALCLUSTER_POD_NET", "128"))


def node_addresses(index, pod_net=None):
    """Node i's InternalIP and pod CIDR, both on loopback and distinct per node."""
    ip = "127.1.%d.%d" % (index // 250, index % 250 + 1)
    pod_cidr = "127.%d.%d.0/24" % ((POD_NET if pod_net is None else pod_net) + index // 256, index % 256)
    return ip, pod_cidr


def node_manifest(name, index, gpus, instance_type, gpu_product):
    ip, pod_cidr = node_addresses(index)
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "node.kubernetes.io/instance-type": instance_type, "type": "kwok", MANAGED_LABEL: "true"}
    resources = {"cpu": "96", "memory": "1Ti", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        labels.update({"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(gpus),
                       "nvidia.com/gpu.product": gpu_product})
        resources["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"capacity": resources, "allocatable": resources,
                   "addresses": [{"type": "InternalIP", "address": ip},
                                 {"type": "Hostname", "address": name}]},
    }


# PCI bus addresses of the eight GPUs of a p5.48xlarge; larger counts continue the pattern.
GPU_BUSES = (0x53, 0x64, 0x75, 0x86, 0x97, 0xa8, 0xb9, 0xca)
DRIVER_VERSION = "570.148.08"   # the simulated nodes' NVIDIA driver (its GSP firmware has the same)


def gpu_model(product):
    """The driver's model name from the node label nvidia.com/gpu.product (dashes for spaces)."""
    return product.replace("-", " ")


def gpu_information(model, uuid, pci, minor):
    """The driver's /proc/driver/nvidia/gpus/<pci>/information text for one GPU."""
    return ("Model: \t\t %s\nIRQ:   \t\t 0\nGPU UUID: \t %s\nVideo BIOS: \t 96.00.99.00.01\n"
            "Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\n"
            "Bus Location: \t %s\nDevice Minor: \t %d\nGPU Firmware: \t %s\n"
            "GPU Excluded:\t No\n" % (model, uuid, pci, minor, DRIVER_VERSION))


def node_gpus(node_name, count):
    """(pci, minor, uuid) of a simulated node's GPUs, in PCI order.

    Minors are swapped in pairs so that, as on real machines, the device minor is not the
    nvidia-smi index; UUIDs are stable per node and GPU.
    """
    gpus = []
    for i in range(count):
        bus = GPU_BUSES[i % len(GPU_BUSES)] + 0x100 * (i // len(GPU_BUSES))
        pci = "0000:%02x:00.0" % bus if bus < 0x100 else "%04x:%02x:00.0" % (bus >> 8, bus & 0xff)
        minor = i ^ 1 if (i ^ 1) < count else i
        gpus.append((pci, minor, str(uuid.uuid5(uuid.NAMESPACE_DNS, "%s.gpu%d" % (node_name, i)))))
    return [(pci, minor, "GPU-" + u) for pci, minor, u in gpus]


# An HGX board's NVSwitches (PCI bus of each) and how many NVLinks each GPU has to each: HGX H100's
# four third-generation switches, 18 links per GPU split 5-4-4-5.
NVSWITCH_BUSES = (0x05, 0x06, 0x07, 0x08)
NVLINKS_PER_SWITCH = (5, 4, 4, 5)


def node_nvswitches():
    """The PCI addresses of a simulated GPU node's NVSwitches."""
    return ["0000:%02x:00.0" % bus for bus in NVSWITCH_BUSES]


def node_nvlinks(gpu_count):
    """Per GPU (in PCI order), its NVLinks to the NVSwitches: [(link id, switch PCI, switch port)].

    The GPU's links are numbered 0-17 switch by switch; on each switch, GPU i's k-th link lands on
    port i * (its links to that switch) + k, so every port of a switch belongs to one GPU.
    """
    switches = node_nvswitches()
    table = []
    for i in range(gpu_count):
        links, link_id = [], 0
        for switch, per_gpu in zip(switches, NVLINKS_PER_SWITCH):
            for k in range(per_gpu):
                links.append((link_id, switch, (i % 8) * per_gpu + k))
                link_id += 1
        table.append(links)
    return table


def gpu_node_names(count):
    return ["gpu-node-%d" % i for i in range(count)]


def machine_id(node_name):
    """A simulated node's /etc/machine-id: 32 hex digits, stable for the node's name."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, node_name + ".machine-id").hex


def write_node_hosts(layout, args):
    """Give each simulated node its identity in its host root (the runner's hostPath root):
    /etc/machine-id, and /proc/sys/kernel/random/boot_id, written once per cluster (the node's
    boot); GPU nodes also get the driver's proc files of their GPUs and healthy stand-ins for their
    NVIDIA tools and EFA devices (gpu_standins.py)."""
    model = gpu_model(args.gpu_product)
    profile = gpu_standins.instance_profile(args.instance_type)
    for node in desired_nodes(args):
        name = node["metadata"]["name"]
        host = os.path.join(layout.runner_state, "nodes", name, "host")
        os.makedirs(os.path.join(host, "etc"), exist_ok=True)
        with open(os.path.join(host, "etc", "machine-id"), "w") as f:
            f.write(machine_id(name) + "\n")
        boot_id = os.path.join(host, "proc", "sys", "kernel", "random", "boot_id")
        if not os.path.exists(boot_id):
            os.makedirs(os.path.dirname(boot_id), exist_ok=True)
            with open(boot_id, "w") as f:
                f.write(str(uuid.uuid4()) + "\n")
    for name in gpu_node_names(args.nodes):
        gpus_dir = os.path.join(layout.runner_state, "nodes", name, "host", "proc", "driver", "nvidia", "gpus")
        os.makedirs(gpus_dir, exist_ok=True)
        for pci, minor, gpu_uuid in node_gpus(name, args.gpus_per_node):
            os.makedirs(os.path.join(gpus_dir, pci), exist_ok=True)
            with open(os.path.join(gpus_dir, pci, "information"), "w") as f:
                f.write(gpu_information(model, gpu_uuid, pci, minor))
        gpu_standins.write_node(os.path.join(layout.runner_state, "nodes", name, "host"),
                                node_gpus(name, args.gpus_per_node), args.gpu_product, profile["efa"], profile["nvlink"])


def desired_nodes(args):
    nodes = []
    for i, name in enumerate(gpu_node_names(args.nodes)):
        nodes.append(node_manifest(name, i, args.gpus_per_node, args.instance_type, args.gpu_product))
    for j in range(args.cpu_nodes):
        nodes.append(node_manifest("cpu-node-%d" % j, args.nodes + j, 0, args.cpu_instance_type, ""))
    return nodes


def converge_nodes(layout, args):
    from kubernetes import client, config  # the venv's client; imported late so `down` needs none
    api = client.CoreV1Api(config.new_client_from_config(config_file=layout.kubeconfig))
    want = {n["metadata"]["name"]: n for n in desired_nodes(args)}
    have = {n.metadata.name for n in api.list_node(label_selector=MANAGED_LABEL + "=true").items}
    for name in sorted(have - set(want)):
        log("deleting node %s" % name)
        api.delete_node(name)
    for name in sorted(set(want) - have):
        api.create_node(want[name])
        # Status sent on create is dropped by the API server; set capacity and addresses explicitly.
        api.patch_node_status(name, {"status": want[name]["status"]})
    deadline = time.monotonic() + 60
    while True:
        ready = {n.metadata.name for n in api.list_node(label_selector=MANAGED_LABEL + "=true").items
                 if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))}
        if set(want) <= ready:
            break
        if time.monotonic() > deadline:
            raise ClusterError("nodes not Ready after 60s: %s" % sorted(set(want) - ready))
        time.sleep(0.2)
    # Pods need the default ServiceAccount and the root CA ConfigMap that controllers publish.
    deadline = time.monotonic() + 60
    while True:
        try:
            api.read_namespaced_service_account("default", "default")
            api.read_namespaced_config_map("kube-root-ca.crt", "default")
            break
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    log("%d GPU node(s) and %d CPU node(s) Ready" % (args.nodes, args.cpu_nodes))


# --- commands ----------------------------------------------------------------------------------

CORE = ("etcd", "kube-apiserver")


def healthy(layout):
    """The store and API server are up: the cluster's state is intact and can be converged."""
    return (os.path.exists(layout.info) and all(running_pid(layout, name) for name in CORE)
            and http_ok(layout.server + "/readyz", _ssl_context(layout)))


def read_info(layout):
    try:
        with open(layout.info) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_info(layout, info):
    tmp = layout.info + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, layout.info)


def respawn_missing(layout, bin_dir, stages_file, options):
    """Restart controllers, KWOK, the runner or the journal bridge that died (or that an option
    now asks for), keeping the cluster's state."""
    cmds = commands(layout, bin_dir, stages_file)
    for name in wanted(options):
        if name not in CORE and not running_pid(layout, name) and not (
                name in STARTED_BY_LANE and not lane_ready(layout, name)):
            log("starting %s (not running)" % name)
            spawn(layout, name, cmds[name], **spawn_options(name))


def lane_ready(layout, name):
    """A process its lane starts has what it needs to be restarted on its own."""
    return name != "postgresql" or postgresql.initialised(postgresql.Paths(layout.state))


def spawn_options(name):
    return postgresql.spawn_options() if name == "postgresql" else {}


def install_packages(journal):
    """Debian packages of the simulated node runtime: iproute2 for image-mode pods' network
    namespaces, systemd-journal-remote for the node journals."""
    packages = ["iproute2"] + (["systemd-journal-remote"] if journal else [])
    result = subprocess.run([os.path.join(ROOT, "tools", "debian-packages.sh"), *packages], check=False)
    if result.returncode != 0:
        raise ClusterError("could not install the Debian packages %s" % " ".join(packages))


def cmd_up(layout, args):
    bin_dir = os.path.abspath(args.bin_dir)
    stages_file = os.path.join(bin_dir, "kwok-stages.yaml")
    for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            raise ClusterError("missing %s in %s: run tools/localcluster/build-binaries.sh" % (b, bin_dir))
    # An option once given stays: `up` without --journal does not stop a running bridge. NVSentinel
    # reads the node journals, so --nvsentinel brings them.
    info = read_info(layout)
    options = {"journal": bool(args.journal or args.nvsentinel or info.get("journal")),
               "nvsentinel": bool(args.nvsentinel or info.get("nvsentinel"))}
    install_packages(options["journal"])
    if healthy(layout):
        log("already running at %s" % layout.server)
        write_info(layout, {**read_info(layout), **options})
        respawn_missing(layout, bin_dir, stages_file, options)
    else:
        if os.path.exists(layout.state):
            log("cleaning up a partial or stopped cluster in %s" % layout.state)
            stop_all(layout)
            shutil.rmtree(layout.state)
        busy = [port for port in layout.ports.values() if not port_free(port)]
        if busy:
            raise ClusterError("ports %s on %s are in use; stop whatever holds them or set "
                               "LOCALCLUSTER_PORT_BASE" % (busy, HOST))
        start(layout, bin_dir, stages_file, options)
    write_node_hosts(layout, args)
    converge_nodes(layout, args)
    if args.nvsentinel:
        import nvsentinel  # noqa: PLC0415  (only this lane needs it, and it imports this module)
        nvsentinel.up(layout, args)
    print(layout.kubeconfig)


def start(layout, bin_dir, stages_file, options):
    os.makedirs(layout.state, mode=0o700, exist_ok=True)
    service_ip = SERVICE_CIDR.split("/", maxsplit=1)[0].rsplit(".", 1)[0] + ".1"
    pki.ensure_pki(layout.pki, [HOST, service_ip],
                   ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local"])
    write_kubeconfig(layout.kubeconfig, layout, "admin")
    for stem in ("kube-controller-manager", "kube-scheduler", "kwok"):
        write_kubeconfig(layout.component_kubeconfig(stem), layout, stem)
    cmds = commands(layout, bin_dir, stages_file)
    t0 = time.monotonic()
    try:
        spawn(layout, "etcd", cmds["etcd"])
        wait_for("etcd", lambda: http_ok("http://%s:%d/health" % (HOST, layout.ports["etcd"])),
                 30, layout, "etcd")
        spawn(layout, "kube-apiserver", cmds["kube-apiserver"])
        ctx = _ssl_context(layout)
        wait_for("kube-apiserver", lambda: http_ok(layout.server + "/readyz", ctx), 90, layout,
                 "kube-apiserver")
        for name in (n for n in wanted(options) if n not in CORE and n not in STARTED_BY_LANE):
            spawn(layout, name, cmds[name])
        wait_for("kube-controller-manager", lambda: http_ok(
            "https://%s:%d/healthz" % (HOST, layout.ports["controller-manager"]), _insecure()),
            60, layout, "kube-controller-manager")
        wait_for("kube-scheduler", lambda: http_ok(
            "https://%s:%d/healthz" % (HOST, layout.ports["scheduler"]), _insecure()),
            60, layout, "kube-scheduler")
    except BaseException:
        stop_all(layout)
        raise
    os.makedirs(layout.image_maps, exist_ok=True)
    write_info(layout, {"server": layout.server, "kubeconfig": layout.kubeconfig, "bin_dir": bin_dir,
                        "ports": layout.ports, "runner_state": layout.runner_state,
                        "image_maps": layout.image_maps, **options})
    log("control plane up in %.1fs at %s" % (time.monotonic() - t0, layout.server))


def _insecure():
    # Component /healthz endpoints serve self-signed certificates; the check only needs a 200.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def cmd_down(layout, args):
    if not os.path.exists(layout.state):
        left = stragglers(layout)
        if left:
            terminate(left, grace=5)
        log("not running")
        return
    stop_all(layout)
    shutil.rmtree(layout.state)
    log("stopped and removed %s" % layout.state)


def cmd_status(layout, args):
    procs = {name: running_pid(layout, name) for name in wanted(read_info(layout))}
    up = healthy(layout) and all(procs.values())
    print(json.dumps({"running": up, "server": layout.server, "kubeconfig": layout.kubeconfig,
                      "processes": procs}, indent=2))
    if not up:
        sys.exit(1)


def cmd_env(layout, args):
    print("export KUBECONFIG=%s K8S_AUTH_KUBECONFIG=%s LOCALCLUSTER_DIR=%s LOCALCLUSTER_RUNNER_STATE=%s "
          "LOCALCLUSTER_IMAGE_MAPS=%s"
          % (layout.kubeconfig, layout.kubeconfig, layout.state, layout.runner_state, layout.image_maps))


def cmd_restart_runner(layout, args):
    if not os.path.exists(layout.info):
        raise ClusterError("no cluster in %s: run `up` first" % layout.state)
    with open(layout.info) as f:
        bin_dir = json.load(f)["bin_dir"]
    pid = running_pid(layout, "podrunner")
    if pid:
        terminate([pid], grace=15)
    spawn(layout, "podrunner", commands(layout, bin_dir, "")["podrunner"])
    log("pod runner restarted")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--state-dir", default=os.environ.get(
        "LOCALCLUSTER_DIR", os.path.join(ROOT, "build", "localcluster")))
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("LOCALCLUSTER_PORT_BASE", "26000")))
    parser.add_argument("--bin-dir", default=os.environ.get("LOCALCLUSTER_BIN_DIR"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the cluster or converge its nodes")
    up.add_argument("--nodes", type=int, default=int(os.environ.get("LOCALCLUSTER_NODES", "3")),
                    help="simulated GPU nodes (default 3)")
    up.add_argument("--cpu-nodes", type=int, default=1, help="simulated nodes without GPUs (default 1)")
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--instance-type", default="p5.48xlarge")
    up.add_argument("--gpu-product", default="NVIDIA-H100-80GB-HBM3")
    up.add_argument("--cpu-instance-type", default="m7i.4xlarge")
    up.add_argument("--journal", action="store_true",
                    default=os.environ.get("LOCALCLUSTER_JOURNAL", "") in ("1", "true"),
                    help="a systemd journal per node, fed from its /dev/kmsg (kmsg_journal.py)")
    up.add_argument("--nvsentinel", action="store_true",
                    help="also run NVIDIA NVSentinel, built from source and deployed by its chart "
                         "(nvsentinel.py); implies --journal")
    up.add_argument("--nvsentinel-stage", choices=("monitor", "dry-run", "full"),
                    default=os.environ.get("LOCALCLUSTER_NVSENTINEL_STAGE") or None,
                    help="what NVSentinel may do (nvsentinel.STAGES): monitor (conditions only), dry-run (decides, "
                         "does not act), full (cordon, drain, remediation; the default); on a running cluster, "
                         "NVSentinel is redeployed in that stage. Kept until given again or `down`")
    up.add_argument("--nvsentinel-bin-dir", default=os.environ.get("LOCALCLUSTER_NVSENTINEL_BIN_DIR"),
                    help="NVSentinel's binaries (the output of build-nvsentinel.sh)")
    up.add_argument("--helm", default=os.environ.get("LOCALCLUSTER_HELM"),
                    help="the helm binary (the output of build-helm.sh)")
    for name in ("down", "status", "env", "restart-runner"):
        sub.add_parser(name)
    args = parser.parse_args(argv)
    if args.cmd == "up" and not args.bin_dir:
        parser.error("up needs --bin-dir (or LOCALCLUSTER_BIN_DIR): the output of build-binaries.sh")
    if args.cmd == "up" and args.nvsentinel_stage and not args.nvsentinel:
        parser.error("--nvsentinel-stage is a setting of --nvsentinel: give both")
    if args.cmd == "up" and args.nvsentinel and not (args.nvsentinel_bin_dir and args.helm):
        parser.error("up --nvsentinel needs --nvsentinel-bin-dir and --helm (or LOCALCLUSTER_NVSENTINEL_BIN_DIR "
                     "and LOCALCLUSTER_HELM): the outputs of build-nvsentinel.sh and build-helm.sh")
    if args.cmd == "up" and not (0 <= args.nodes <= 5000 and 0 <= args.cpu_nodes <= 5000):
        parser.error("--nodes and --cpu-nodes must be between 0 and 5000")
    layout = Layout(args.state_dir, args.port_base)
    handler = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "env": cmd_env,
               "restart-runner": cmd_restart_runner}[args.cmd]
    os.makedirs(os.path.dirname(layout.state), exist_ok=True)
    # One `up`/`down` at a time per state directory: parallel callers (tests, helpers) queue here.
    with open(layout.state + ".lock", "w") as lock:
        if args.cmd in ("up", "down", "restart-runner"):
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            handler(layout, args)
        except ClusterError as e:
            log("error: %s" % e)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
