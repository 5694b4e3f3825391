"""Detection latency: an XID record written to a node's kernel log -> the node marked by the
detector, as seen through the API: the collection's health agent, or NVIDIA NVSentinel.

    python3 bench/detection.py [--runs 50] [--nodes 10] [--xid 79] [--out bench/results/detection.json]
    python3 bench/detection.py --detector nvsentinel [--runs 20] [--nodes 3]

On a private local control plane with --nodes GPU nodes, the fault-injector agent and the detector
(the health agent with tools/localcluster/drill-vars.yml settings; or NVSentinel built from source
and deployed by its chart in its full stage, `tools/local-cluster up --nvsentinel`), each run:

  1. opens nothing new: one node watch, started before the first run, timestamps every node event
     as it arrives (time.time());
  2. creates a GPUFault for XID --xid on GPU 0 of the next node; the node's agent writes the
     driver's records to the node's kernel log and sets status.injectedAt, its own clock right
     after the write;
  3. takes, from the watch, the first event where the node carries the detector's finding
     ("detected": the health agent's severity label above PASS; NVSentinel's node condition
     SysLogsXIDError True, set by platform-connectors), and the first with its quarantine
     ("quarantined": the health agent's taint; fault-quarantine's cordon).

Latency = event time - injectedAt (one machine, one clock). Health agent: round robin over the
nodes; after each round the faults are deleted and the nodes go back to service through
playbooks/return_to_service.yml (the health agent keeps findings until told). NVSentinel: every run
on one node (fault-quarantine's circuit breaker trips once half of the GPU nodes were cordoned
within 5 minutes); after each run the node is handed back with the collection's own modules
(nvsentinel_restore, node_marks_restore), and the next fault waits a random 0-15 s, so that it
falls anywhere in NVSentinel's 15 s journal poll (runs back to back would always meet it at the
same point of its cycle). Prints median, p95 and worst; writes JSON (detection.json, or
detection-nvsentinel.json).
"""

import argparse
import datetime
import os
import queue
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterkit  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, os.path.join(clusterkit.ROOT, "plugins", "module_utils"))
import fault_api  # noqa: E402  pylint: disable=wrong-import-position

PREFIX = "gpu-healthcheck.aws-samples.io/"
SEVERITY = PREFIX + "severity"
TAINT = PREFIX + "unhealthy"
AGENT_NAMESPACE = "gpu-fault-injection"
DRILL = "bench-detection"
NVSENTINEL_CONDITION = "SysLogsXIDError"
NVSENTINEL_CORDON_BY = ("k8saas.nvidia.com/cordon-by", "NVSentinel")
NVSENTINEL_POLL_S = 15          # syslog-health-monitor's --polling-interval in NVSentinel's chart
REBOOT_NODE = {"api_version": "janitor.dgxc.nvidia.com/v1alpha1", "kind": "RebootNode"}


def health_agent_marks(node):
    """(detected, quarantined) by the health agent: its severity label above PASS, its taint."""
    labels = node.metadata.labels or {}
    return labels.get(SEVERITY, "") not in ("", "PASS"), any(t.key == TAINT for t in node.spec.taints or [])


def nvsentinel_marks(node):
    """(detected, quarantined) by NVSentinel: platform-connectors' condition, fault-quarantine's cordon."""
    detected = any(c.type == NVSENTINEL_CONDITION and c.status == "True" for c in node.status.conditions or [])
    labels = node.metadata.labels or {}
    return detected, bool(node.spec.unschedulable) and labels.get(NVSENTINEL_CORDON_BY[0]) == NVSENTINEL_CORDON_BY[1]


class NodeWatch(threading.Thread):
    """One watch on all nodes; puts (arrival time, node, detected, quarantined) for every event."""

    def __init__(self, core, marks):
        super().__init__(daemon=True)
        self.core = core
        self.marks = marks
        self.events = queue.Queue()
        self.version = core.list_node().metadata.resource_version

    def run(self):
        from kubernetes import watch  # pylint: disable=import-outside-toplevel
        while True:
            try:
                self.follow(watch.Watch())
            except Exception:  # pylint: disable=broad-except
                return   # the cluster is going down at the end of the benchmark

    def follow(self, watcher):
        for event in watcher.stream(self.core.list_node, resource_version=self.version, timeout_seconds=300):
            node = event["object"]
            self.version = node.metadata.resource_version
            self.events.put((time.time(), node.metadata.name) + self.marks(node))


def fault_body(node, xid):
    spec = fault_api.validate_spec({"node": node, "xid": xid, "gpu": {"index": 0}, "method": "kmsg"})
    return fault_api.fault_object(AGENT_NAMESPACE, spec, generate_name="bench-xid%d-" % xid, drill=DRILL,
                                  managed_by="bench")


def one_run(custom, watcher, node, xid, timeout=30.0):
    """Seconds from the record written to the node detected and to it quarantined."""
    made = custom.create_namespaced_custom_object(fault_api.GROUP, fault_api.VERSION, AGENT_NAMESPACE,
                                                  fault_api.PLURAL, fault_body(node, xid))
    name = made["metadata"]["name"]
    seen = {}
    deadline = time.monotonic() + timeout
    while len(seen) < 2 and time.monotonic() < deadline:
        try:
            at, name_seen, detected, quarantined = watcher.events.get(timeout=0.5)
        except queue.Empty:
            continue
        if name_seen != node:
            continue
        if detected:
            seen.setdefault("detected", at)
        if quarantined:
            seen.setdefault("tainted", at)
    injected_at = None
    while injected_at is None and time.monotonic() < deadline:
        status = custom.get_namespaced_custom_object(fault_api.GROUP, fault_api.VERSION, AGENT_NAMESPACE,
                                                     fault_api.PLURAL, name).get("status") or {}
        if status.get("phase") == fault_api.PHASE_FAILED:
            raise SystemExit("fault %s failed: %s" % (name, status.get("error")))
        injected_at = status.get("injectedAt")
        if injected_at is None:
            time.sleep(0.05)
    if injected_at is None or len(seen) < 2:
        missing = "injection" if injected_at is None else "detection and quarantine"
        raise SystemExit("run on %s: no %s within %.0f s" % (node, missing, timeout))
    at = clusterkit.parse_time(injected_at)
    return seen["detected"] - at, seen["tainted"] - at


def delete_faults(custom):
    custom.delete_collection_namespaced_custom_object(fault_api.GROUP, fault_api.VERSION, AGENT_NAMESPACE,
                                                      fault_api.PLURAL, label_selector=fault_api.DRILL_LABEL + "=" + DRILL)


def reset(cluster, custom, nodes):
    """Delete the faults and return the nodes to service, as an operator would."""
    delete_faults(custom)
    cluster.playbook("return_to_service.yml", "-e", "gpu_healthcheck_rts_nodes=" + ",".join(nodes))


class NVSentinelNode:
    """The node NVSentinel's runs use, and its hand-back after each (the collection's modules, as a
    drill's cleanup does it: docs/nvsentinel.md, "Handing a node back after a drill")."""

    def __init__(self, cluster, core, name):
        import node_restore  # pylint: disable=import-outside-toplevel
        self.cluster, self.name = cluster, name
        raw = core.api_client.sanitize_for_serialization(core.read_node(name))
        self.before = node_restore.snapshot(raw)
        self.conditions = raw["status"]["conditions"]

    def reset(self, custom, since):
        delete_faults(custom)
        self.cluster.module("nvsentinel_restore", {"node": self.name, "baseline": self.conditions, "events_since": since,
                                                   "release": True, "remediation": [REBOOT_NODE]})
        self.cluster.module("node_marks_restore", {"name": self.name, "before": self.before})


def summary(values):
    return {"median_s": round(statistics.median(values), 4), "p95_s": round(clusterkit.percentile(values, 0.95), 4),
            "worst_s": round(max(values), 4), "best_s": round(min(values), 4)}


def verdict(detector, result):
    """(targets, met): the health agent's own targets (median and worst); NVSentinel's detection is
    bound by its journal poll, so a fault is seen within one poll (and a second for the rest)."""
    targets = {"worst_s": NVSENTINEL_POLL_S + 1.0} if detector == "nvsentinel" else {"median_s": 0.5, "worst_s": 1.0}
    return targets, all(result["detected"][key] <= value for key, value in targets.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--detector", choices=["gpu_healthcheck", "nvsentinel"], default="gpu_healthcheck")
    parser.add_argument("--runs", type=int, default=None, help="default 50; 20 with NVSentinel")
    parser.add_argument("--nodes", type=int, default=None, help="default 10; 3 with NVSentinel")
    parser.add_argument("--xid", type=int, default=79)
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster up afterwards")
    parser.add_argument("--out", default=None, help="results name (default detection, detection-nvsentinel)")
    args = parser.parse_args()
    nvs = args.detector == "nvsentinel"
    args.runs = args.runs or (20 if nvs else 50)
    args.nodes = args.nodes or (3 if nvs else 10)
    clusterkit.in_project_venv()

    cluster = clusterkit.Cluster("detection", slot=1)
    try:
        cluster.up(args.nodes, *(["--nvsentinel", "--nvsentinel-stage", "full"] if nvs else []))
        if nvs:
            cluster.playbook("deploy_agent.yml")
        else:
            cluster.deploy_agents()
        core, custom = cluster.api()
        watcher = NodeWatch(core, nvsentinel_marks if nvs else health_agent_marks)
        watcher.start()
        time.sleep(0.5)
        nodes = ["gpu-node-%d" % i for i in range(args.nodes)]
        target = NVSentinelNode(cluster, core, nodes[0]) if nvs else None
        detected, tainted, rows = [], [], []
        for run in range(args.runs):
            node = nodes[0] if nvs else nodes[run % len(nodes)]
            since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            d, t = one_run(custom, watcher, node, args.xid, timeout=3.0 * NVSENTINEL_POLL_S if nvs else 30.0)
            detected.append(d)
            tainted.append(t)
            rows.append({"run": run + 1, "node": node, "detected_s": round(d, 4), "tainted_s": round(t, 4)})
            clusterkit.log("run %2d on %s: detected %.3f s, quarantined %.3f s" % (run + 1, node, d, t))
            if nvs:
                target.reset(custom, since)
                time.sleep(random.uniform(0, NVSENTINEL_POLL_S))
            elif (run + 1) % len(nodes) == 0 or run + 1 == args.runs:
                reset(cluster, custom, nodes[:min(len(nodes), run + 1)])
            while not watcher.events.empty():
                watcher.events.get_nowait()
    finally:
        if not args.keep_cluster:
            cluster.down()

    command = "python3 bench/detection.py%s --runs %d --nodes %d --xid %d" % (
        " --detector nvsentinel" if nvs else "", args.runs, args.nodes, args.xid)
    result = {"detected": summary(detected), "tainted": summary(tainted)}
    who, found, quarantine = (("NVSentinel", "condition SysLogsXIDError", "cordon by fault-quarantine") if nvs else
                              ("health agent", "severity label", "taint"))
    print(clusterkit.table(
        [[what, args.runs, "%.3f" % r["median_s"], "%.3f" % r["p95_s"], "%.3f" % r["worst_s"]]
         for what, r in (("record -> detected (%s)" % found, result["detected"]),
                         ("record -> quarantined (%s)" % quarantine, result["tainted"]))],
        ["XID %d, %s" % (args.xid, who), "runs", "median s", "p95 s", "worst s"]))
    targets, met = verdict(args.detector, result)
    print("target: %s: %s" % (", ".join("%s <= %s s" % (k[:-2], v) for k, v in sorted(targets.items())),
                              "met" if met else "NOT met"))
    clusterkit.write_result(args.out or ("detection-nvsentinel" if nvs else "detection"), command, {
        "detector": args.detector, "xid": args.xid, "nodes": args.nodes, "runs": rows, "results": result,
        "targets": targets, "targets_met": met,
        "from": "GPUFault status.injectedAt (the agent's clock right after writing the records)",
        "to": "arrival of the node watch event carrying the mark (%s; %s)" % (found, quarantine)})


if __name__ == "__main__":
    main()
