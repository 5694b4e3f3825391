"""Fleet drills at scale: playbooks/fleet_drill.yml on every GPU node of clusters of 10, 100 and
500 simulated nodes, each node with its own fault-injector agent and health agent processes.

    python3 bench/fleet.py [--sizes 10,100,500] [--out bench/results/fleet.json]

For each size, on a fresh private control plane with the API server's audit log on:

  1. the two agent DaemonSets are deployed (timed: one agent process per node for each);
  2. fleet_drill.yml injects XID 79 on GPU 0 of all N nodes (fault_scenario_node_count=N), waits
     until the health agent has detected and quarantined every one, and cleans up exactly;
  3. from the drill's own timeline JSON (event times are the API's: injectedAt, and node watch
     events), measured from the start of its injection task (one gpu_xid_inject call for all the
     nodes): when the last node was injected, detected and quarantined, and when the cleanup finished;
  4. the API requests made while the drill ran, per client (audit log): the drill itself, the
     agents, the pod runner, the simulated kubelets, the control plane;
  5. the agents' peak resident memory (VmHWM of each process, read from /proc).

Prints a table and the growth from one size to the next (time and drill requests per node), and
writes JSON. Needs about 35 MB of memory per node for the two agents.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterkit  # noqa: E402  pylint: disable=wrong-import-position

TARGETS = {"quarantined_100_s": 10.0, "agent_peak_rss_mb": 40.0}


def drill(cluster, nodes, work):
    """Run the fleet drill on all nodes; the figures of its timeline and its requests."""
    mark = cluster.audit_mark()
    wall, records, timeline = cluster.timed_drill(
        "fleet_drill.yml", work, nodes, "-e", "fault_scenario_node_count=%d" % nodes, "-e", "fault_scenario_max_nodes=%d" % nodes,
        "-e", "fault_scenario_max_percent=100", "-e", "fault_scenario_confirm=true",
        "-e", "fault_scenario_drill_id=bench-fleet-%d" % nodes, "-e", '{"fault_scenario_workload_name": ""}')
    requests = cluster.requests(mark)
    phases = dict((p["name"], p) for p in timeline["phases"])
    t0 = inject_requested(records)
    last = {}
    for kind in ("inject", "detect", "quarantine"):
        times = [clusterkit.parse_time(e["time"]) for e in timeline["events"] if e["kind"] == kind and e["node"]]
        if len(set(e["node"] for e in timeline["events"] if e["kind"] == kind and e["node"])) != nodes:
            raise SystemExit("the %d-node drill saw %s on %d nodes only" % (nodes, kind, len(times)))
        last[kind] = max(times) - t0
    cleaned = clusterkit.parse_time(phases["cleanup"]["finished"]) - t0
    return {
        "result": timeline["result"], "drill_wall_s": round(wall, 2),
        "from_injection_request_s": {
            "all_injected": round(last["inject"], 2), "all_detected": round(last["detect"], 2),
            "all_quarantined": round(last["quarantine"], 2), "all_cleaned": round(cleaned, 2)},
        "phases_s": dict((p["name"], round(p["duration_seconds"], 2)) for p in timeline["phases"]
                         if p["status"] != "skipped"),
        "requests": requests, "drill_requests": requests.get("drill (Ansible)", 0),
    }


def inject_requested(records):
    """When the drill's injection task started (the origin of the fleet's times)."""
    for record in records:
        if record["event"] == "task" and record["action"].endswith("gpu_xid_inject") and "Inject XID" in record["name"]:
            return record["start"]
    raise SystemExit("no injection task in the drill's task clock")


def one_size(nodes, work, keep):
    cluster = clusterkit.Cluster("fleet-%d" % nodes, slot=3)
    try:
        cluster.up(nodes)
        mark = cluster.audit_mark()
        deploy = cluster.deploy_agents()
        deploy["requests"] = sum(cluster.requests(mark).values())
        figures = drill(cluster, nodes, work)
        figures["deploy_s"] = deploy
        figures["agents"] = cluster.agent_memory()
    finally:
        if not keep:
            cluster.down()
    return figures


def growth(results):
    """Ratios from one size to the next: nodes, time to all quarantined, cleanup, drill requests."""
    out = []
    for small, big in zip(results, results[1:]):
        ratio = float(big["nodes"]) / small["nodes"]

        def grew(get):
            before = get(small)
            return round(get(big) / before, 2) if before else None
        out.append({"from": small["nodes"], "to": big["nodes"], "nodes_x": ratio,
                    "all_quarantined_x": grew(lambda r: r["from_injection_request_s"]["all_quarantined"]),
                    "all_cleaned_x": grew(lambda r: r["from_injection_request_s"]["all_cleaned"]),
                    "drill_wall_x": grew(lambda r: r["drill_wall_s"]),
                    "drill_requests_x": grew(lambda r: r["drill_requests"])})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the last cluster up")
    parser.add_argument("--out", default=None, help="results name (default fleet)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    clusterkit.in_project_venv()
    work = tempfile.mkdtemp(prefix="bench-fleet-")
    results = []
    failed = []
    for i, nodes in enumerate(sizes):
        try:
            figures = one_size(nodes, work, args.keep_cluster and i == len(sizes) - 1)
        except SystemExit as e:   # a size that fails is recorded, and the others still count
            failed.append({"nodes": nodes, "error": str(e)})
            clusterkit.log("%d nodes: FAILED: %s" % (nodes, e))
            continue
        figures["nodes"] = nodes
        results.append(figures)
        t = figures["from_injection_request_s"]
        clusterkit.log("%d nodes: injected %.1f s, detected %.1f s, quarantined %.1f s, cleaned %.1f s; drill %.1f s, "
                       "%d drill requests" % (nodes, t["all_injected"], t["all_detected"], t["all_quarantined"],
                                              t["all_cleaned"], figures["drill_wall_s"], figures["drill_requests"]))

    rows = []
    for r in results:
        t, a = r["from_injection_request_s"], r["agents"]
        rows.append([r["nodes"], "%.2f" % t["all_injected"], "%.2f" % t["all_detected"], "%.2f" % t["all_quarantined"],
                     "%.2f" % t["all_cleaned"], "%.1f" % r["drill_wall_s"], r["drill_requests"],
                     sum(r["requests"].values()),
                     "%.1f / %.1f" % (a["fault agent"]["peak_rss_mb_max"], a["health agent"]["peak_rss_mb_max"])])
    print(clusterkit.table(rows, ["nodes", "injected s", "detected s", "quarantined s", "cleaned s", "drill wall s",
                                  "drill requests", "all requests", "agent / health-agent peak RSS MB (max)"]))
    ratios = growth(results)
    for g in ratios:
        print("%d -> %d nodes (x%.0f): all quarantined x%s, cleaned x%s, drill wall x%s, drill requests x%s"
              % (g["from"], g["to"], g["nodes_x"], g["all_quarantined_x"], g["all_cleaned_x"], g["drill_wall_x"],
                 g["drill_requests_x"]))
    hundred = [r for r in results if r["nodes"] == 100]
    rss = max(max(a["peak_rss_mb_max"] for a in r["agents"].values()) for r in results)
    met = {"quarantined_100": bool(hundred) and hundred[0]["from_injection_request_s"]["all_quarantined"] <= 10.0,
           "linear": all((g["all_quarantined_x"] or 0) <= g["nodes_x"] and (g["drill_requests_x"] or 0) <= g["nodes_x"]
                         and (g["drill_wall_x"] or 0) <= g["nodes_x"] for g in ratios),
           "agent_rss": rss <= TARGETS["agent_peak_rss_mb"]}
    print("targets: 100 nodes quarantined <= 10 s: %s; growth at most linear: %s; agent RSS <= 40 MB: %s"
          % tuple("met" if m else "NOT met" for m in met.values()))
    for f in failed:
        print("%d nodes: FAILED (%s)" % (f["nodes"], f["error"]))
    clusterkit.write_result(args.out or "fleet", "python3 bench/fleet.py --sizes " + args.sizes, {
        "xid": 79, "results": results, "failed": failed, "growth": ratios, "targets": TARGETS, "targets_met": met})


if __name__ == "__main__":
    main()
