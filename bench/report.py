"""The README's performance table, written from the benchmarks' JSON results, never by hand.

    python3 bench/report.py            # rewrite the table between the markers in README.md
    python3 bench/report.py --check    # exit 1 if README.md's table differs from the results

Every row names its figure, the target, the command that produced it (from the result file), the
machine and the date. A result file that is missing leaves its rows out and says so.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
README = os.path.join(ROOT, "README.md")
BEGIN = "<!-- bench:begin (python3 bench/report.py writes this table) -->"
END = "<!-- bench:end -->"


def load(name):
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def where(doc):
    host = doc["host"]
    memory = ", %.0f GiB" % host["memory_gib"] if host.get("memory_gib") else ""
    load = " (load %.1f over 15 min)" % host["load_average"][2] if host.get("load_average") else ""
    return "%s, %d CPUs%s, %s%s" % (host["machine"], host["cpus"], memory, doc["date"][:10], load)


def verdict(ok):
    return "met" if ok else "**not met**"


def detection_rows(doc):
    d = doc["results"]["detected"]
    t = doc["results"]["tainted"]
    cmd, at = "`%s`" % doc["command"], where(doc)
    return [
        ("XID %d record written -> node marked by the health agent (API watch), median / p95 / worst of %d"
         % (doc["xid"], len(doc["runs"])), "%.3f / %.3f / %.3f s" % (d["median_s"], d["p95_s"], d["worst_s"]),
         "median <= 0.5 s, worst <= 1 s: %s" % verdict(d["median_s"] <= 0.5 and d["worst_s"] <= 1.0), cmd, at),
        ("the same, to the quarantine taint", "%.3f / %.3f / %.3f s" % (t["median_s"], t["p95_s"], t["worst_s"]),
         "", cmd, at),
    ]


def nvsentinel_detection_rows(doc):
    d = doc["results"]["detected"]
    t = doc["results"]["tainted"]
    cmd, at = "`%s`" % doc["command"], where(doc)
    target = doc["targets"]
    return [
        ("XID %d record written -> NVSentinel's node condition (platform-connectors, API watch), median / p95 / "
         "worst of %d" % (doc["xid"], len(doc["runs"])), "%.3f / %.3f / %.3f s" % (d["median_s"], d["p95_s"], d["worst_s"]),
         "worst <= %s s (one 15 s journal poll): %s" % (target["worst_s"], verdict(doc["targets_met"])), cmd, at),
        ("the same, to fault-quarantine's cordon", "%.3f / %.3f / %.3f s" % (t["median_s"], t["p95_s"], t["worst_s"]),
         "", cmd, at),
    ]


def drill_rows(doc):
    cmd, at = "`%s`" % doc["command"], where(doc)
    run = doc["runs"][doc["median_run"] - 1]
    reaction = run["reaction_s"]
    return [
        ("xid79_e2e.yml drill, wall time (median of %d)" % len(doc["runs"]), "%.1f s" % doc["wall_s_median"],
         "<= 60 s: %s" % verdict(doc["wall_s_median"] <= 60), cmd, at),
        ("its control overhead (wall - time blocked on the cluster)", "%.1f s (waited %.1f s)"
         % (doc["overhead_s_median"], doc["waited_s_median"]),
         "<= 5 s: %s" % verdict(doc["overhead_s_median"] <= 5), cmd, at),
        ("its phases (median run)", ", ".join("%s %.1f" % (p["name"], p["seconds"]) for p in run["phases"]
                                              if p["status"] != "skipped") + " s", "", cmd, at),
        ("injection -> detect / quarantine / drain / recover (median run)",
         " / ".join("%.2f" % reaction[k] if reaction.get(k) is not None else "-" for k in
                    ("time_to_detect", "time_to_quarantine", "time_to_drain", "time_to_recover")) + " s", "", cmd, at),
    ]


def fleet_rows(doc):
    cmd, at = "`%s`" % doc["command"], where(doc)
    rows = []
    for r in doc["results"]:
        t = r["from_injection_request_s"]
        target = ""
        if r["nodes"] == 100:
            target = "all quarantined <= 10 s: %s" % verdict(t["all_quarantined"] <= 10)
        times = "%.1f / %.1f / %.1f / %.1f s" % (t["all_injected"], t["all_detected"], t["all_quarantined"],
                                                 t["all_cleaned"])
        rows.append(("fleet drill, %d nodes: all injected / detected / quarantined / cleaned, from the injection request"
                     % r["nodes"], times, target, cmd, at))
        rows.append(("fleet drill, %d nodes: drill wall, drill's API requests (all clients)" % r["nodes"],
                     "%.1f s, %d (%d)" % (r["drill_wall_s"], r["drill_requests"], sum(r["requests"].values())),
                     "", cmd, at))
    for f in doc.get("failed", []):
        rows.append(("fleet drill, %d nodes" % f["nodes"], "**failed**: %s" % f["error"].replace("|", "/"),
                     "", cmd, at))
    for g in doc["growth"]:
        linear = all((g[k] or 0) <= g["nodes_x"] for k in ("all_quarantined_x", "drill_wall_x", "drill_requests_x"))
        rows.append(("growth %d -> %d nodes (x%.0f): all quarantined, drill wall, drill requests"
                     % (g["from"], g["to"], g["nodes_x"]),
                     "x%s, x%s, x%s" % (g["all_quarantined_x"], g["drill_wall_x"], g["drill_requests_x"]),
                     "at most linear: %s" % verdict(linear), cmd, at))
    peak = {}
    for r in doc["results"]:
        for kind, a in r["agents"].items():
            peak[kind] = max(peak.get(kind, 0), a["peak_rss_mb_max"])
    rows.append(("peak RSS per process, fault agent / health agent (max over all nodes and sizes)",
                 "%.1f / %.1f MB" % (peak.get("fault agent", 0), peak.get("health agent", 0)),
                 "<= 40 MB: %s" % verdict(max(peak.values() or [0]) <= 40), cmd, at))
    return rows


def shim_rows(doc):
    cmd, at = "`%s`" % doc["command"], where(doc)
    c = doc["comparisons"]
    null, gpa, seed = c["shim_vs_none_direct_null_driver"], c["shim_vs_none_gpa_null_driver"], c["seed_vs_none_direct"]
    best = doc["results"]
    return [
        ("CUDA shim disarmed, added per intercepted call (null driver: %.2f -> %.2f ns; via cuGetProcAddress)"
         % (best["none-direct-null"]["best_ns_per_call"], best["shim-direct-null"]["best_ns_per_call"]),
         "+%.2f ns (+%.2f ns)" % (null["added_ns_per_call"], gpa["added_ns_per_call"]),
         "<= 2 ns: %s" % verdict(max(null["added_ns_per_call"], gpa["added_ns_per_call"]) <= 2), cmd, at),
        ("a per-call file-open toggle like the seed's, same call", "+%.0f ns (x%.0f slower)"
         % (seed["added_ns_per_call"], 1 / seed["ratio_calls_per_second"]), "baseline", cmd, at),
    ]


def table():
    lines = ["| measured | result | target | command | machine, date |", "|---|---|---|---|---|"]
    missing = []
    for name, rows in (("detection", detection_rows), ("detection-nvsentinel", nvsentinel_detection_rows),
                       ("drill", drill_rows), ("fleet", fleet_rows), ("shim", shim_rows)):
        doc = load(name)
        if doc is None:
            missing.append("bench/results/%s.json" % name)
            continue
        lines += ["| %s |" % " | ".join(row) for row in rows(doc)]
    if missing:
        lines.append("")
        lines.append("Not measured yet: %s." % ", ".join(missing))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with open(README, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit("README.md has no %s ... %s markers" % (BEGIN, END))
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    new = head + BEGIN + "\n" + table() + "\n" + END + tail
    if args.check:
        sys.exit(0 if new == text else "README.md's performance table is not the one the results give: "
                 "run python3 bench/report.py")
    with open(README, "w", encoding="utf-8") as f:
        f.write(new)
    print(table())


if __name__ == "__main__":
    main()
