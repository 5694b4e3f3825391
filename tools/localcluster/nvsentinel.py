"""NVIDIA NVSentinel on the local control plane, deployed by its own Helm chart.

    nvsentinel.py render      print the objects `up --nvsentinel` applies (YAML), change nothing

`tools/local-cluster up --nvsentinel` uses the functions below: it renders the chart
(distros/kubernetes/nvsentinel of the pinned source) with Helm, the chart's values-postgresql.yaml
and ours (nvsentinel-values.yaml), applies the objects to the cluster as they are, so NVSentinel's
processes run with the chart's own ServiceAccounts, RBAC and ConfigMaps, and writes the pod runner's
image map: each NVSentinel image -> the binary built from source (build-nvsentinel.sh), run with the
container's args, env and volumes, as the image's entrypoint would be. NVSentinel is not patched.

Two stand-ins are named as such:
- gpu_metadata.json: metadata-collector reads the GPUs through NVML, which needs a GPU. Each node's
  file is written here in metadata-collector's format (data-models/pkg/model/gpu_metadata.go) from
  the node's GPU inventory, the same data as its /proc/driver/nvidia/gpus files (localcluster.py).
- the PostgreSQL client certificate Secret, which cert-manager issues in a production install
  (postgresql.py).
"""
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import localcluster  # noqa: E402  (sibling modules, found through the path above)
import postgresql  # noqa: E402

NAMESPACE = RELEASE = "nvsentinel"   # the namespace the chart's docs install into
CHART = "distros/kubernetes/nvsentinel"
VALUES = os.path.join(HERE, "nvsentinel-values.yaml")
IMAGE_PREFIX = "ghcr.io/nvidia/nvsentinel/"
# Images whose binary build-nvsentinel.sh builds; each is the image's entrypoint (.ko.yaml, Dockerfiles).
BINARIES = ("syslog-health-monitor", "platform-connectors", "fault-quarantine", "node-drainer",
            "fault-remediation", "janitor", "labeler")
# The remediation objects fault-remediation creates (RebootNode, ...) are janitor's CRDs. Janitor
# itself stays off (it reboots through a cloud provider's API, with cert-manager certificates).
CRD_CHARTS = ("charts/janitor",)
METADATA_FILE = "var/lib/nvsentinel/gpu_metadata.json"   # global.metadataPath, under a node's host root
FIELD_MANAGER = "local-cluster-nvsentinel"


def versions():
    """tools/versions.env as a dict (an environment variable of the same name wins)."""
    pins = {}
    with open(os.path.join(ROOT, "tools", "versions.env"), encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and key.isupper() and not key.startswith("#"):
                pins[key] = os.environ.get(key) or value
    return pins


def source_dir():
    return os.environ.get("NVSENTINEL_SRC") or os.path.join(ROOT, "..", "shared", "third_party", "nvsentinel")


# --- GPU metadata (stand-in for metadata-collector) ---------------------------------------------

def gpu_metadata(node_name, gpus_per_node, gpu_product, timestamp):
    """A node's gpu_metadata.json content, as metadata-collector writes it from NVML.

    GPU ids are NVML indexes (PCI order, as the node's inventory is ordered); PCI addresses are in
    metadata-collector's normalised form (4-digit domain, lower case). What NVML would add and the
    inventory does not hold is left as metadata-collector leaves it when NVML cannot tell: serial
    numbers empty, no chassis serial, NUMA node -1, no NVLinks or NVSwitches.
    """
    gpus = [{"gpu_id": i, "uuid": gpu_uuid, "pci_address": pci.lower(), "serial_number": "",
             "device_name": localcluster.gpu_model(gpu_product), "nvlinks": [], "numa_node": -1}
            for i, (pci, _minor, gpu_uuid) in enumerate(localcluster.node_gpus(node_name, gpus_per_node))]
    return {"version": "1.0", "timestamp": timestamp, "node_name": node_name,
            "driver_version": localcluster.DRIVER_VERSION, "chassis_serial": None, "gpus": gpus,
            "nvswitches": []}


def write_gpu_metadata(runner_state, node_names, gpus_per_node, gpu_product):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in node_names:
        path = os.path.join(runner_state, "nodes", name, "host", METADATA_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(gpu_metadata(name, gpus_per_node, gpu_product, stamp), f, indent=2)
        os.replace(path + ".tmp", path)


# --- rendering ----------------------------------------------------------------------------------

def helm_template_argv(helm, src, pins, datastore_port):
    chart = os.path.join(src, CHART)
    return [helm, "template", RELEASE, chart, "--namespace", NAMESPACE, "--include-crds",
            "--kube-version", pins["K8S_VERSION"],
            "-f", os.path.join(chart, "values-postgresql.yaml"), "-f", VALUES,
            "--set", "global.image.tag=" + pins["NVSENTINEL_COMMIT"],
            "--set", "global.datastore.connection.port=%d" % datastore_port]


def render(helm, src, pins, datastore_port):
    """The chart's objects, as `helm template` renders them, plus the remediation CRDs."""
    import yaml  # the venv's PyYAML (with Ansible)

    def run(argv):
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise localcluster.ClusterError("%s failed: %s" % (" ".join(argv[:3]), out.stderr.strip()))
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    docs = run(helm_template_argv(helm, src, pins, datastore_port))
    for sub in CRD_CHARTS:
        docs += run([helm, "show", "crds", os.path.join(src, CHART, sub)])
    return docs


def pod_templates(docs):
    for d in docs:
        if d.get("kind") in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
            yield d, d["spec"]["template"]["spec"]


def image_map(docs, bin_dir):
    """image repository -> the binary built from source, for every NVSentinel image the objects use."""
    images = {}
    for obj, spec in pod_templates(docs):
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            repo = c["image"].rsplit(":", 1)[0]
            if not repo.startswith(IMAGE_PREFIX) or c.get("command"):
                continue
            name = repo[len(IMAGE_PREFIX):]
            if name not in BINARIES:
                raise localcluster.ClusterError(
                    "%s %s runs image %s, which build-nvsentinel.sh does not build: turn that component off "
                    "in %s or add it to the build" % (obj["kind"], obj["metadata"]["name"], c["image"], VALUES))
            images[repo] = {"command": [os.path.join(bin_dir, name)]}
    return images
