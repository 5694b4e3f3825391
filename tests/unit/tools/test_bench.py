"""bench/: the README table comes from the results, audit events are told apart by client, and the
task clock counts what a task waited on the cluster."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import clusterkit  # noqa: E402  pylint: disable=wrong-import-position
import report  # noqa: E402  pylint: disable=wrong-import-position

_spec = importlib.util.spec_from_file_location("task_clock", os.path.join(BENCH, "callback_plugins", "task_clock.py"))
task_clock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(task_clock)


def test_readme_table_is_the_one_the_results_give():
    done = subprocess.run([sys.executable, os.path.join(BENCH, "report.py"), "--check"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_every_row_names_its_command_machine_and_date():
    rows = [line for line in report.table().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3].startswith("`python3 bench/"), row
        assert "CPUs" in cells[4] and "2026-" in cells[4], row


def test_a_missing_result_is_said_not_invented(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "RESULTS", str(tmp_path))
    assert report.table().endswith("Not measured yet: bench/results/detection.json, "
                                   "bench/results/detection-nvsentinel.json, bench/results/drill.json, "
                                   "bench/results/fleet.json, bench/results/shim.json.")


@pytest.mark.parametrize("user, agent, expected", [
    ("system:serviceaccount:gpu-fault-injection:gpu-fault-agent", "gpu-fault-agent", "fault agents"),
    ("system:serviceaccount:gpu-healthcheck:gpu-healthcheck-agent", "gpu-health-agent", "health agents"),
    ("localcluster-admin", "OpenAPI-Generator/33.1.0/python", "drill (Ansible)"),
    ("localcluster-admin", "localcluster-podrunner", "pod runner"),
    ("localcluster-admin", clusterkit.BENCH_USER_AGENT, "benchmark"),
    ("kwok", "kwok/v0.8.0", "kwok (simulated kubelets)"),
    ("system:kube-scheduler", "kube-scheduler/v1.37.2", "control plane"),
])
def test_audit_events_are_counted_per_client(user, agent, expected):
    assert clusterkit.client_of({"user": {"username": user}, "userAgent": agent}) == expected


def test_percentile_is_nearest_rank():
    values = list(range(1, 51))
    assert clusterkit.percentile(values, 0.95) == 48
    assert clusterkit.percentile(values, 1.0) == 50
    assert clusterkit.percentile([3.0], 0.95) == 3.0


def test_parse_time_reads_micro_and_whole_seconds():
    assert clusterkit.parse_time("2026-11-23T00:00:01.500000Z") - clusterkit.parse_time("2026-11-23T00:00:01Z") == 0.5


def test_task_clock_adds_modules_waits_and_until_delays():
    assert task_clock._waited({"waited_seconds": 1.25}, 0) == 1.25
    assert task_clock._waited({"results": [{"waited_seconds": 0.5}, {"waited_seconds": 0.25}, {"skipped": True}]}, 0) == 0.75
    # async_status polled 4 times, 1 s apart: 3 s spent waiting for the background watcher.
    assert task_clock._waited({"attempts": 4, "finished": 1}, 1) == 3.0
    assert task_clock._waited({"changed": False}, 5) == 0.0


def test_results_files_carry_command_host_and_date():
    for name in ("shim",):
        with open(os.path.join(BENCH, "results", name + ".json"), encoding="utf-8") as f:
            doc = json.load(f)
        assert doc["command"].startswith("python3 bench/") and doc["host"]["cpus"] and doc["date"]
