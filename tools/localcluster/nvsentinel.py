"""NVIDIA NVSentinel on the local control plane, deployed by its own Helm chart.

    nvsentinel.py render --helm HELM [--stage STAGE]
                                       print the objects `up --nvsentinel` applies (YAML), change nothing
                                       (with the project's virtualenv: tools/venv.sh)

`tools/local-cluster up --nvsentinel` uses the functions below: it renders the chart
(distros/kubernetes/nvsentinel of the pinned source) with Helm, the chart's values-postgresql.yaml
and ours (nvsentinel-values.yaml), applies the objects to the cluster as they are, so NVSentinel's
processes run with the chart's own ServiceAccounts, RBAC and ConfigMaps, and writes the pod runner's
image map: each NVSentinel image -> the binary built from source (build-nvsentinel.sh), run with the
container's args, env and volumes, as the image's entrypoint would be. NVSentinel is not patched.

The stage NVSentinel runs in (STAGES: monitor, dry-run, full; `up --nvsentinel --nvsentinel-stage
STAGE`) is a set of chart values given at render time. `up` on a running cluster renders again,
applies, and deletes what the new rendering no longer has (as `helm upgrade` does), so switching
stages changes the cluster, not only the objects that stay.

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
import nvsentinel_source  # noqa: E402
import postgresql  # noqa: E402

NAMESPACE = RELEASE = "nvsentinel"   # the namespace the chart's docs install into
CHART = "distros/kubernetes/nvsentinel"
VALUES = os.path.join(HERE, "nvsentinel-values.yaml")
IMAGE_PREFIX = "ghcr.io/nvidia/nvsentinel/"
SHELL_IMAGE = "docker.io/bitnamilegacy/os-shell"   # the chart's global.initContainerImage
# Images whose binary build-nvsentinel.sh builds; each is the image's entrypoint (.ko.yaml, Dockerfiles).
BINARIES = ("syslog-health-monitor", "platform-connectors", "fault-quarantine", "node-drainer",
            "fault-remediation", "labeler")
# The remediation objects fault-remediation creates (RebootNode, ...) are janitor's CRDs. Janitor
# itself stays off: it reboots through a cloud provider's API (janitor-provider), with cert-manager
# certificates and a webhook; the RebootNode object is this lane's observable remediation.
CRD_CHARTS = ("charts/janitor",)
METADATA_FILE = "var/lib/nvsentinel/gpu_metadata.json"   # global.metadataPath, under a node's host root
FIELD_MANAGER = "local-cluster-nvsentinel"
# The stages teams roll NVSentinel out in, each the chart values that differ from the lane's full
# install (nvsentinel-values.yaml). monitor: detection only (platform-connectors' conditions and
# Events), the quarantine, drain and remediation components not installed; dry-run: the chart's
# global.dryRun, which fault-quarantine, node-drainer and fault-remediation each take as
# --dry-run (they decide and record, but do not cordon, evict or create); full: every component acting.
STAGES = {
    "monitor": {"global.faultQuarantine.enabled": "false", "global.nodeDrainer.enabled": "false",
                "global.faultRemediation.enabled": "false"},
    "dry-run": {"global.dryRun": "true"},
    "full": {},
}
DEFAULT_STAGE = "full"
APPLIED = "applied.json"   # under <state>/nvsentinel: the objects the last `up` applied, for pruning


# --- GPU metadata (stand-in for metadata-collector) ---------------------------------------------

def gpu_metadata(node_name, gpus_per_node, gpu_product, timestamp):
    """A node's gpu_metadata.json content, as metadata-collector writes it from NVML.

    GPU ids are NVML indexes (PCI order, as the node's inventory is ordered); PCI addresses are in
    metadata-collector's normalised form (4-digit domain, lower case). Each GPU's NVLinks to the
    node's NVSwitches (the inventory's NVLink table, localcluster.node_nvlinks) are listed as
    metadata-collector lists the links NVML reports active to a switch, with the switches'
    addresses in nvswitches: NVSentinel finds the GPU behind an SXid's switch port there. What NVML
    would add and the inventory does not hold is left as metadata-collector leaves it when NVML
    cannot tell: serial numbers empty, no chassis serial, NUMA node -1.
    """
    inventory = localcluster.node_gpus(node_name, gpus_per_node)
    nvlinks = localcluster.node_nvlinks(len(inventory))
    gpus = [{"gpu_id": i, "uuid": gpu_uuid, "pci_address": pci.lower(), "serial_number": "",
             "device_name": localcluster.gpu_model(gpu_product), "numa_node": -1,
             "nvlinks": [{"link_id": link, "remote_pci_address": switch, "remote_link_id": port}
                         for link, switch, port in nvlinks[i]]}
            for i, (pci, _minor, gpu_uuid) in enumerate(inventory)]
    return {"version": "1.0", "timestamp": timestamp, "node_name": node_name,
            "driver_version": localcluster.DRIVER_VERSION, "chassis_serial": None, "gpus": gpus,
            "nvswitches": localcluster.node_nvswitches() if inventory else []}


def write_gpu_metadata(runner_state, node_names, gpus_per_node, gpu_product):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in node_names:
        path = os.path.join(runner_state, "nodes", name, "host", METADATA_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(gpu_metadata(name, gpus_per_node, gpu_product, stamp), f, indent=2)
        os.replace(path + ".tmp", path)


# --- rendering ----------------------------------------------------------------------------------

def helm_template_argv(helm, src, pins, datastore_port, stage=DEFAULT_STAGE):
    chart = os.path.join(src, CHART)
    argv = [helm, "template", RELEASE, chart, "--namespace", NAMESPACE, "--include-crds",
            "--kube-version", pins["K8S_VERSION"],
            "-f", os.path.join(chart, "values-postgresql.yaml"), "-f", VALUES,
            "--set", "global.image.tag=" + pins["NVSENTINEL_COMMIT"],
            "--set", "global.datastore.connection.port=%d" % datastore_port]
    for key, value in sorted(STAGES[stage].items()):
        argv += ["--set", "%s=%s" % (key, value)]
    return argv


def render(helm, src, pins, datastore_port, stage=DEFAULT_STAGE):
    """The chart's objects, as `helm template` renders them for the stage, plus the remediation CRDs."""
    import yaml  # the venv's PyYAML (with Ansible)

    def run(argv):
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise localcluster.ClusterError("%s failed: %s" % (" ".join(argv[:3]), out.stderr.strip()))
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    docs = run(helm_template_argv(helm, src, pins, datastore_port, stage))
    for sub in CRD_CHARTS:
        docs += run([helm, "show", "crds", os.path.join(src, CHART, sub)])
    return docs


def pod_templates(docs):
    for d in docs:
        if d.get("kind") in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
            yield d, d["spec"]["template"]["spec"]


def image_map(docs, bin_dir):
    """The pod runner's image map (podrunner.py) for every image the objects use.

    NVSentinel's images run the binary built from source as their entrypoint. The chart's one
    other image, global.initContainerImage (Bitnami's os-shell: a Debian 12 shell), only runs
    shell commands that the container names itself (`sh -c "cp ..."`): this Debian host's own.
    """
    images = {}
    for obj, spec in pod_templates(docs):
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            repo = c["image"].split("@")[0].rsplit(":", 1)[0]
            name = repo[len(IMAGE_PREFIX):] if repo.startswith(IMAGE_PREFIX) else None
            if name in BINARIES:
                images[repo] = {"entrypoint": [os.path.join(bin_dir, name)], "cmd": []}
            elif repo == SHELL_IMAGE and c.get("command"):
                images[repo] = {"entrypoint": [], "cmd": ["sh"]}
            else:
                raise localcluster.ClusterError(
                    "%s %s container %s runs image %s, which this lane has no program for: turn that "
                    "component off in %s, or build it in build-nvsentinel.sh and add it to BINARIES"
                    % (obj["kind"], obj["metadata"]["name"], c["name"], c["image"], VALUES))
    return images


def write_image_map(layout, images, datastore_port):
    """The runner's image map file for this lane; PostgreSQL is an endpoint the pods reach."""
    path = os.path.join(layout.image_maps, "nvsentinel.json")
    os.makedirs(layout.image_maps, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"images": images, "endpoints": ["%s:%d" % (postgresql.HOST, datastore_port)]}, f, indent=2)
    os.replace(path + ".tmp", path)


# --- applying -----------------------------------------------------------------------------------

def _apply_order(doc):
    # Namespaced objects need their namespace; pods need their ServiceAccount, RBAC and ConfigMaps.
    kind = doc["kind"]
    if kind in ("Namespace", "CustomResourceDefinition"):
        return 0
    if kind in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        return 2
    return 1


def client_secret(paths):
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": postgresql.CLIENT_SECRET, "namespace": NAMESPACE},
            "stringData": postgresql.client_secret_data(paths)}


def apply(api_client, docs):
    """Server-side apply of every object, in the release namespace where the chart leaves it open.
    Returns the identities applied (identity()), in order."""
    from kubernetes import dynamic
    dyn = dynamic.DynamicClient(api_client)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    applied = []
    for doc in sorted([namespace] + list(docs), key=_apply_order):
        resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        ns = None
        if resource.namespaced:
            ns = doc["metadata"].setdefault("namespace", NAMESPACE)
        resource.server_side_apply(body=doc, name=doc["metadata"]["name"], namespace=ns,
                                   field_manager=FIELD_MANAGER, force_conflicts=True)
        applied.append(identity(doc))
        if doc["kind"] == "CustomResourceDefinition":
            _wait_established(dyn, resource, doc["metadata"]["name"])
            dyn.resources.invalidate_cache()
    return applied


def identity(doc):
    """[apiVersion, kind, namespace or None, name] of an object."""
    meta = doc["metadata"]
    return [doc["apiVersion"], doc["kind"], meta.get("namespace"), meta["name"]]


def stale(previous, current):
    """The objects an earlier `up` applied that this one did not, workloads first (reverse apply order)."""
    return [obj for obj in reversed(previous) if obj not in current]


def prune(api_client, objects):
    """Delete objects (identities) that the rendering no longer has; their pods go with them."""
    from kubernetes import dynamic
    from kubernetes.client.exceptions import ApiException
    dyn = dynamic.DynamicClient(api_client)
    for api_version, kind, namespace, name in objects:
        try:
            dyn.resources.get(api_version=api_version, kind=kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": "Background"})
        except ApiException as e:
            if e.status != 404:
                raise
        log("deleted %s %s%s (not in this stage)" % (kind, namespace + "/" if namespace else "", name))


def read_applied(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


def write_applied(path, applied):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(applied, f, indent=1)
    os.replace(path + ".tmp", path)


def _wait_established(dyn, resource, name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conds = (resource.get(name=name).to_dict().get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return
        time.sleep(0.1)
    raise localcluster.ClusterError("CRD %s not Established after %ds" % (name, timeout))


# --- waiting until it runs ----------------------------------------------------------------------

DRIVER_LABEL = "nvsentinel.dgxc.nvidia.com/driver.installed"   # labeler's; syslog-health-monitor selects on it
# Under a node's host root; the chart mounts the host's /var/run/nvsentinel at the pods' /var/run.
SOCKET = "var/run/nvsentinel/nvsentinel.sock"                   # platform-connectors' socket
MONITOR_STATE = "var/run/nvsentinel/syslog_monitor/state.json"  # syslog-health-monitor's default --state-file


def workload_of(pod):
    """The DaemonSet or Deployment a pod belongs to (a ReplicaSet's name less its hash)."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref["kind"] == "DaemonSet":
            return ref["name"]
        if ref["kind"] == "ReplicaSet":
            return ref["name"].rsplit("-", 1)[0]
    return None


def runs(entry, alive):
    """A runner index entry's pod runs: init containers done with 0, the others started and alive."""
    conts = (entry or {}).get("containers") or {}
    return bool(conts) and all(
        (c["done"] and c["exitCode"] == 0) if c["role"] == "init" else (c["started"] and alive(c["pid"]))
        for c in conts.values())


def monitor_checks(spec):
    """The checks a syslog-health-monitor container runs (its --checks argument)."""
    args = spec["containers"][0].get("args") or []
    return set(args[args.index("--checks") + 1].split(",")) if "--checks" in args else set()


def missing(docs, pods, index, nodes, alive, socket_exists, cursors, deployments=None):
    """What is not running yet, in words (empty when NVSentinel runs everywhere it should).

    pods: the namespace's pods (dicts); index: the runner's pods by uid; nodes: {name: labels};
    a DaemonSet should run on every node its nodeSelector matches, a Deployment its replicas, and
    nothing else: no pod of a workload this rendering has not (an earlier stage's), no pod of a
    Deployment's earlier template (deployments: {name: the Deployment as the API returns it},
    whose status says whether its rollout is done).
    cursors(node): the checks whose journal position syslog-health-monitor has saved on the node:
    it has read the node's journal once, so it sees every record written from now on (its first
    read starts at the journal's end).
    """
    gaps = []
    by_workload = {}
    for pod in pods:
        by_workload.setdefault(workload_of(pod), []).append(pod)
    rendered = set(obj["metadata"]["name"] for obj, _spec in pod_templates(docs))
    gaps += ["%s still runs (not in this rendering)" % name for name in sorted(set(by_workload) - rendered - {None})]
    for obj, spec in pod_templates(docs):
        name = obj["metadata"]["name"]
        mine = by_workload.get(name, [])
        running = [p for p in mine if runs(index.get(p["metadata"]["uid"]), alive)]
        if obj["kind"] == "DaemonSet":
            selector = spec.get("nodeSelector") or {}
            want = {n for n, labels in nodes.items() if all(labels.get(k) == v for k, v in selector.items())}
            have = {p["spec"].get("nodeName") for p in running}
            if want - have:
                gaps.append("%s not running on %s" % (name, ", ".join(sorted(want - have))))
            if name == "platform-connectors":
                gaps += ["no platform-connectors socket on %s" % n for n in sorted(want) if not socket_exists(n)]
            if name.startswith("syslog-health-monitor"):
                gaps += ["%s has not read the journal of %s yet" % (name, n) for n in sorted(want & have)
                         if not monitor_checks(spec) <= cursors(n)]
        elif len(running) < obj["spec"].get("replicas", 1):
            gaps.append("%s: %d of %d pod(s) running" % (name, len(running), obj["spec"].get("replicas", 1)))
        elif len(mine) > obj["spec"].get("replicas", 1) or not rolled_out((deployments or {}).get(name)):
            gaps.append("%s: rollout not finished" % name)
    return gaps


def rolled_out(deployment):
    """A Deployment's controller has seen its latest spec and every replica runs its template
    (None, when the caller has no Deployments to check: True)."""
    if deployment is None:
        return True
    status, replicas = deployment.get("status") or {}, (deployment.get("spec") or {}).get("replicas", 1)
    return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("updatedReplicas", 0) == replicas and status.get("replicas", 0) == replicas)


def wait_running(api_client, layout, docs, gpu_nodes, timeout=180):
    """Until labeler has labelled the GPU nodes, every NVSentinel pod runs in the pod runner and
    every syslog-health-monitor has read its node's journal (it polls every 15 s)."""
    from kubernetes import client
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    index_path = os.path.join(layout.runner_state, "pods", "index.json")

    def socket_exists(node):
        return os.path.exists(os.path.join(layout.runner_state, "nodes", node, "host", SOCKET))

    def cursors(node):
        try:
            with open(os.path.join(layout.runner_state, "nodes", node, "host", MONITOR_STATE), encoding="utf-8") as f:
                return set(json.load(f).get("check_last_cursors") or {})
        except (OSError, ValueError):
            return set()

    deadline, gaps = time.monotonic() + timeout, ["nothing checked yet"]
    while time.monotonic() < deadline:
        nodes = {n.metadata.name: n.metadata.labels or {} for n in core.list_node().items}
        unlabelled = [n for n in gpu_nodes if nodes.get(n, {}).get(DRIVER_LABEL) != "true"]
        pods = [api_client.sanitize_for_serialization(p) for p in core.list_namespaced_pod(NAMESPACE).items]
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f).get("pods", {})
        except (OSError, ValueError):
            index = {}
        deployments = dict((d["metadata"]["name"], d) for d in (
            api_client.sanitize_for_serialization(d) for d in apps.list_namespaced_deployment(NAMESPACE).items))
        gaps = (["labeler has not labelled %s" % ", ".join(unlabelled)] if unlabelled else []) + \
            missing(docs, pods, index, nodes, localcluster.process_alive, socket_exists, cursors, deployments)
        if not gaps:
            return
        time.sleep(0.5)
    raise localcluster.ClusterError("NVSentinel not running after %ds: %s (container logs: %s/pods/)"
                                    % (timeout, "; ".join(gaps), layout.runner_state))


# --- the lane -----------------------------------------------------------------------------------

def log(msg):
    localcluster.log("nvsentinel: " + msg)


def up(layout, args):
    """PostgreSQL, the GPU metadata, the chart's objects for the stage and the image map, what an
    earlier stage had and this one has not deleted; then wait until it runs."""
    from kubernetes import config
    t0 = time.monotonic()
    pins = nvsentinel_source.versions()
    try:
        src = nvsentinel_source.checked_source(pins)
    except nvsentinel_source.SourceError as e:
        raise localcluster.ClusterError(str(e)) from None
    paths, port = postgresql.Paths(layout.state), layout.ports["postgresql"]
    postgresql.install()
    postgresql.ensure_initialised(paths, layout.state)
    if not localcluster.running_pid(layout, "postgresql"):
        localcluster.spawn(layout, "postgresql", postgresql.command(paths, port), **postgresql.spawn_options())
    localcluster.wait_for("PostgreSQL", lambda: postgresql.accepting(paths, port), 30, layout, "postgresql")
    gpu_nodes = localcluster.gpu_node_names(args.nodes)
    write_gpu_metadata(layout.runner_state, gpu_nodes, args.gpus_per_node, args.gpu_product)
    stage = args.nvsentinel_stage or localcluster.read_info(layout).get("nvsentinel_stage") or DEFAULT_STAGE
    docs = render(args.helm, src, pins, port, stage)
    write_image_map(layout, image_map(docs, os.path.abspath(args.nvsentinel_bin_dir)), port)
    api_client = config.new_client_from_config(config_file=layout.kubeconfig)
    record = os.path.join(layout.state, "nvsentinel", APPLIED)
    applied = apply(api_client, [client_secret(paths)] + docs)
    prune(api_client, stale(read_applied(record), applied))
    write_applied(record, applied)
    localcluster.write_info(layout, dict(localcluster.read_info(layout), nvsentinel_stage=stage))
    wait_running(api_client, layout, docs, gpu_nodes)
    log("stage %s up in %.1fs (PostgreSQL on %s:%d)" % (stage, time.monotonic() - t0, postgresql.HOST, port))


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="print the objects up --nvsentinel applies")
    r.add_argument("--helm", required=True, help="the helm binary (tools/localcluster/build-helm.sh)")
    r.add_argument("--port-base", type=int, default=int(os.environ.get("LOCALCLUSTER_PORT_BASE", "26000")))
    r.add_argument("--stage", choices=sorted(STAGES), default=DEFAULT_STAGE)
    args = parser.parse_args(argv)
    import yaml
    port = localcluster.Layout(".", args.port_base).ports["postgresql"]
    docs = render(args.helm, nvsentinel_source.checked_source(), nvsentinel_source.versions(), port, args.stage)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
