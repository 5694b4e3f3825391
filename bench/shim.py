"""What the CUDA fault shim costs when it is disarmed, measured on the fake driver.

    python3 bench/shim.py [--calls 5000000] [--seed-calls 200000] [--repeat 5] [--out bench/results/shim.json]

Builds, into a temporary directory, the shim exactly as the cluster does (shim_source.compile_argv),
the fake libcuda.so.1 from files/shim/tests, bench/shim_bench.c and bench/seed_toggle.c (a baseline
that opens and reads a toggle file on every call, like the seed library). Then, in one run and
interleaved, it times a cheap driver call (cuStreamQuery on the fake) in each configuration:

    none-direct   no preload, exported symbol          shim-direct   shim preloaded, disarmed
    none-gpa      no preload, cuGetProcAddress_v2      shim-gpa      shim preloaded, disarmed
    seed-direct   the seed-style toggle preloaded (toggle file present, "0")

The fake driver counts every call with an atomic increment, which costs more than the shim's fast
path and overlaps with it; so the same direct and gpa pairs also run on bench/null_cuda.c, a driver
whose cuStreamQuery does nothing (configs *-null): that pair bounds what the shim adds per call.

It keeps the best (lowest ns/call) of --repeat runs of --calls calls each (the seed baseline makes
syscalls on every call, so it runs --seed-calls). Prints a table and writes JSON. Every process is
pinned to one CPU when the platform allows it.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
import shim_source  # noqa: E402  pylint: disable=wrong-import-position

FIXTURES = os.path.join(ROOT, "files", "shim", "tests")
BENCH = os.path.join(ROOT, "bench")
# name, call route, preload, driver
CONFIGS = (
    ("none-direct", "direct", None, "fake"),
    ("shim-direct", "direct", "shim", "fake"),
    ("none-gpa", "gpa", None, "fake"),
    ("shim-gpa", "gpa", "shim", "fake"),
    ("seed-direct", "direct", "seed", "fake"),
    ("none-direct-null", "direct", None, "null"),
    ("shim-direct-null", "direct", "shim", "null"),
    ("none-gpa-null", "gpa", None, "null"),
    ("shim-gpa-null", "gpa", "shim", "null"),
)


def build(work, compiler):
    """Compile the shim, the fake and null drivers, the benchmark and the seed-style baseline into work."""
    src = os.path.join(work, "src")
    os.makedirs(src)
    shutil.copy(shim_source.source_path(), os.path.join(src, shim_source.SOURCE_FILE))
    with open(os.path.join(src, shim_source.HEADER_FILE), "w", encoding="utf-8") as handle:
        handle.write(shim_source.xid_header())
    paths = {"shim": os.path.join(work, shim_source.LIBRARY), "seed": os.path.join(work, "seed_toggle.so"),
             "bench": os.path.join(work, "shim_bench")}
    os.makedirs(os.path.join(work, "null"))
    jobs = [
        shim_source.compile_argv(src, paths["shim"], compiler=compiler),
        [compiler, "-std=gnu11", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o",
         os.path.join(work, "null", "libcuda.so.1"), os.path.join(BENCH, "null_cuda.c")],
        [compiler, "-std=gnu11", "-shared", "-fPIC", "-O2", "-Wno-unused-parameter", "-Wl,-soname,libcuda.so.1",
         "-I", FIXTURES, "-o", os.path.join(work, "libcuda.so.1"), os.path.join(FIXTURES, "fake_cuda.c"), "-lpthread"],
        [compiler, "-std=gnu11", "-shared", "-fPIC", "-O2", "-o", paths["seed"], os.path.join(BENCH, "seed_toggle.c"), "-ldl"],
    ]
    for argv in jobs:
        subprocess.run(argv, check=True)
    subprocess.run([compiler, "-std=gnu11", "-O2", "-o", paths["bench"], os.path.join(BENCH, "shim_bench.c"),
                    "-L", work, "-l:libcuda.so.1", "-ldl"], check=True)
    return paths


def pin_last_cpu():
    """Run on one CPU (the last one allowed), and so do the children, to steady the numbers."""
    if hasattr(os, "sched_getaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def run_once(paths, work, config, calls):
    """ns per call of one configuration."""
    mode, preload, driver = config[1:]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CUDA_", "LD_PRELOAD"))}
    env["LD_LIBRARY_PATH"] = work if driver == "fake" else os.path.join(work, "null")
    env["CUDA_FAULT_CONTROL_FILE"] = os.path.join(work, "control-dir", "control")   # absent: disarmed
    env["SEED_TOGGLE_FILE"] = os.path.join(work, "toggle")
    if preload:
        env["LD_PRELOAD"] = paths[preload]
    out = subprocess.run([paths["bench"], mode, str(calls)], env=env, capture_output=True, text=True, check=True).stdout
    fields = dict(part.split("=", 1) for part in out.split())
    if fields.get("rc") != "0":
        raise RuntimeError("the benchmarked call failed: %s" % out.strip())
    return float(fields["ns_per_call"])


def measure(paths, work, args):
    """Best ns/call of every configuration, runs interleaved."""
    with open(os.path.join(work, "toggle"), "w", encoding="utf-8") as handle:
        handle.write("0\n")
    runs = {config[0]: [] for config in CONFIGS}
    for run in range(args.repeat):
        for config in CONFIGS:
            calls = args.seed_calls if config[2] == "seed" else args.calls
            runs[config[0]].append(run_once(paths, work, config, calls))
        print("run %d/%d done" % (run + 1, args.repeat), file=sys.stderr)
    return runs


def summarise(runs, args, compiler):
    """The JSON document."""
    best = {name: min(values) for name, values in runs.items()}
    results = {name: {"best_ns_per_call": round(best[name], 3), "calls_per_second": round(1e9 / best[name]),
                      "runs_ns_per_call": [round(v, 3) for v in runs[name]],
                      "calls_per_run": args.seed_calls if name.startswith("seed") else args.calls}
               for name in runs}

    def versus(name, base):
        return {"ratio_calls_per_second": round(best[base] / best[name], 4),
                "added_ns_per_call": round(best[name] - best[base], 3)}

    return {
        "benchmark": "CUDA fault shim, disarmed: cuStreamQuery on the fake driver and on a null driver",
        "command": "python3 bench/shim.py --calls %d --seed-calls %d --repeat %d" % (args.calls, args.seed_calls, args.repeat),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "compiler": subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                            check=False).stdout.splitlines()[0]},
        "repeat": args.repeat,
        "results": results,
        "comparisons": {
            "shim_vs_none_direct": versus("shim-direct", "none-direct"),
            "shim_vs_none_gpa": versus("shim-gpa", "none-gpa"),
            "shim_vs_none_direct_null_driver": versus("shim-direct-null", "none-direct-null"),
            "shim_vs_none_gpa_null_driver": versus("shim-gpa-null", "none-gpa-null"),
            "seed_vs_none_direct": versus("seed-direct", "none-direct"),
            "seed_vs_shim_direct": versus("seed-direct", "shim-direct"),
        },
    }


def table(doc):
    """Text table of a JSON document."""
    lines = ["%-18s %10s %14s %6s" % ("config", "ns/call", "calls/s", "runs")]
    for name, res in doc["results"].items():
        lines.append("%-18s %10.2f %14s %6d" % (name, res["best_ns_per_call"], "{:,}".format(res["calls_per_second"]),
                                                len(res["runs_ns_per_call"])))
    lines.append("")
    for name, comp in doc["comparisons"].items():
        lines.append("%-32s calls/s ratio %.3f, %+.2f ns per call"
                     % (name, comp["ratio_calls_per_second"], comp["added_ns_per_call"]))
    return "\n".join(lines)


def main(argv=None):
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=5000000, help="calls per run (default 5000000)")
    parser.add_argument("--seed-calls", type=int, default=200000, help="calls per run of the seed baseline")
    parser.add_argument("--repeat", type=int, default=5, help="runs per configuration; the best one counts")
    parser.add_argument("--out", default=os.path.join(BENCH, "results", "shim.json"), help="JSON output file")
    parser.add_argument("--cc", default=shutil.which("cc") or "cc", help="C compiler")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="shim-bench-")
    try:
        paths = build(work, args.cc)
        pin_last_cpu()
        doc = summarise(measure(paths, work, args), args, args.cc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(doc))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=2)
        handle.write("\n")
    print("\nwritten: %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
