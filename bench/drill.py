"""The main drill, timed: playbooks/xid79_e2e.yml on the local control plane, its wall time, its
phases, and the control overhead - the time the drill spends on its own work rather than waiting
for the cluster's controllers, the node agent, the detector or the workload.

    python3 bench/drill.py [--runs 3] [--out bench/results/drill.json]

Set-up (not timed as the drill): a private cluster with 3 GPU nodes, the fault-injector agent, the
health agent as detector and the demo inference workload (tools/localcluster/drill-vars.yml). Then
--runs drills, one after the other, each with the callback bench/callback_plugins/task_clock.py,
which logs every task's start, end and `waited_seconds`: the seconds its module sat blocked on watches for
the cluster (every waiting module returns it), plus the delays between the attempts of an until
loop (async_status collecting the detector watch started before the injection).

    overhead = drill wall time - sum of waited

i.e. Ansible and Python start-up, the modules' own requests and computation, templating. The run
with the median wall time is reported, with its phases (from the drill's own timeline JSON) and
where its overhead went, by action.
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterkit  # noqa: E402  pylint: disable=wrong-import-position

TARGETS = {"wall_s": 60.0, "overhead_s": 5.0}


def one_drill(cluster, work, run):
    """Run the drill once; its wall time, overhead and phases."""
    _wall, records, timeline = cluster.timed_drill("xid79_e2e.yml", work, run,
                                                   "-e", "fault_scenario_drill_id=bench-drill-%d" % run)
    start = next(r["time"] for r in records if r["event"] == "playbook_start")
    end = next(r["time"] for r in records if r["event"] == "playbook_end")
    tasks = [r for r in records if r["event"] == "task" and r.get("start")]
    waited = sum(t["waited"] for t in tasks)
    by_action = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for t in tasks:
        entry = by_action[t["action"]]
        entry[0] += 1
        entry[1] += t["end"] - t["start"] - t["waited"]
        entry[2] += t["waited"]
    in_tasks = sum(t["end"] - t["start"] for t in tasks)
    return {
        "wall_s": round(end - start, 2), "waited_s": round(waited, 2), "overhead_s": round(end - start - waited, 2),
        "tasks": len(tasks), "between_tasks_s": round(end - start - in_tasks, 2),
        "overhead_by_action": dict(sorted(((a, {"tasks": n, "own_s": round(own, 2), "waited_s": round(w, 2)})
                                           for a, (n, own, w) in by_action.items()),
                                          key=lambda kv: -kv[1]["own_s"])),
        "result": timeline["summary"]["result"],
        "phases": [{"name": p["name"], "status": p["status"], "seconds": round(p["duration_seconds"], 2)}
                   for p in timeline["phases"]],
        "reaction_s": {k: timeline["summary"].get(k) for k in
                       ("time_to_detect", "time_to_quarantine", "time_to_drain", "time_to_recover")},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--out", default=None, help="results name (default drill)")
    args = parser.parse_args()
    clusterkit.in_project_venv()

    cluster = clusterkit.Cluster("drill", slot=2)
    work = tempfile.mkdtemp(prefix="bench-drill-")
    runs = []
    try:
        cluster.up(3)
        setup = cluster.deploy_agents()
        setup["demo_workload_s"] = round(cluster.playbook("demo_workload.yml"), 2)
        for run in range(args.runs):
            runs.append(one_drill(cluster, work, run + 1))
            r = runs[-1]
            clusterkit.log("drill %d: %s, wall %.1f s, waited %.1f s, overhead %.1f s"
                           % (run + 1, r["result"], r["wall_s"], r["waited_s"], r["overhead_s"]))
    finally:
        if not args.keep_cluster:
            cluster.down()

    median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    print(clusterkit.table([[p["name"], p["status"], "%.2f" % p["seconds"]] for p in median["phases"]],
                           ["phase (median run)", "status", "seconds"]))
    print()
    print(clusterkit.table([[a, v["tasks"], "%.2f" % v["own_s"], "%.2f" % v["waited_s"]]
                            for a, v in median["overhead_by_action"].items()],
                           ["action", "tasks", "own s", "waited s"]))
    print("\nbetween tasks (Ansible's own scheduling, includes): %.2f s" % median["between_tasks_s"])
    walls = [r["wall_s"] for r in runs]
    overheads = [r["overhead_s"] for r in runs]
    print("drill wall: median %.1f s of %d runs (%s); waited on the cluster %.1f s; overhead %.1f s"
          % (statistics.median(walls), len(runs), ", ".join("%.1f" % w for w in walls), median["waited_s"],
             median["overhead_s"]))
    met = {"wall": statistics.median(walls) <= TARGETS["wall_s"],
           "overhead": statistics.median(overheads) <= TARGETS["overhead_s"]}
    print("target wall <= 60 s: %s; overhead <= 5 s: %s" % tuple("met" if m else "NOT met" for m in met.values()))
    clusterkit.write_result(args.out or "drill", "python3 bench/drill.py --runs %d" % args.runs, {
        "setup_s": setup, "runs": runs, "median_run": runs.index(median) + 1,
        "wall_s_median": statistics.median(walls), "overhead_s_median": statistics.median(overheads),
        "waited_s_median": statistics.median(r["waited_s"] for r in runs),
        "targets": TARGETS, "targets_met": met})


if __name__ == "__main__":
    main()
