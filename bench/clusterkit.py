"""What the cluster benchmarks share: a private local control plane, the collection's playbooks
run against it, the API server's audit log, the agents' memory, and the JSON results.

Each benchmark runs its own cluster in build/bench/<name> on its own ports (LOCALCLUSTER_PORT_BASE
31000 + 100 * slot), with the API server's audit log on, and brings it down at the end.
"""

import collections
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
CALLBACKS = os.path.join(ROOT, "bench", "callback_plugins")
DRILL_VARS = os.path.join(ROOT, "tools", "localcluster", "drill-vars.yml")
AGENT_NAMESPACES = {"gpu-fault-injection": "fault agent", "gpu-healthcheck": "health agent"}
BENCH_USER_AGENT = "gpu-resilience-bench"


def log(msg):
    print("[bench] %s" % msg, file=sys.stderr, flush=True)


def in_project_venv():
    """Re-run this script with the project's virtualenv (ansible-core, kubernetes) unless it is active."""
    venv = subprocess.run([os.path.join(ROOT, "tools", "venv.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()
    python = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(python, [python, *sys.argv])


def _tool_env():
    """PATH with the project's virtualenv, the collection tree and the control-plane binaries."""
    env = dict(os.environ)
    venv = subprocess.run([os.path.join(ROOT, "tools", "venv.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    subprocess.run([os.path.join(ROOT, "tools", "collection-tree.sh")], check=True, capture_output=True)
    env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(ROOT, "build", "collections")
    env["LOCALCLUSTER_BIN_DIR"] = subprocess.run(
        [os.path.join(ROOT, "tools", "localcluster", "build-binaries.sh")], check=True, capture_output=True,
        text=True, env=env).stdout.strip()
    return env


class Cluster:
    """A private local control plane for one benchmark, with its playbooks and its audit log."""

    def __init__(self, name, slot):
        self.state = os.path.join(ROOT, "build", "bench", name)
        self.env = _tool_env()
        self.env.update(LOCALCLUSTER_DIR=self.state, LOCALCLUSTER_PORT_BASE=str(31000 + 100 * slot),
                        LOCALCLUSTER_POD_NET=str(200 + slot), LOCALCLUSTER_AUDIT="1")
        self.audit_log = os.path.join(self.state, "audit.log")

    def local_cluster(self, *args):
        subprocess.run([os.path.join(ROOT, "tools", "local-cluster"), *args], check=True, env=self.env,
                       stdout=subprocess.DEVNULL)

    def up(self, nodes, *extra):
        """A fresh cluster with `nodes` GPU nodes (any earlier one in the same place is removed); extra:
        more options of `tools/local-cluster up` (--nvsentinel ...)."""
        self.local_cluster("down")
        started = time.monotonic()
        self.local_cluster("up", "--nodes", str(nodes), *extra)
        out = subprocess.run([os.path.join(ROOT, "tools", "local-cluster"), "env"], check=True, env=self.env,
                             capture_output=True, text=True).stdout
        for word in out.replace("export ", "").split():
            key, _sep, value = word.partition("=")
            self.env[key] = value
        log("cluster with %d GPU nodes up in %.1f s" % (nodes, time.monotonic() - started))

    def down(self):
        self.local_cluster("down")

    def playbook(self, name, *extra, env=None):
        """Run playbooks/<name> with the local-cluster settings; returns its wall time in seconds."""
        argv = ["ansible-playbook", os.path.join(ROOT, "playbooks", name), "-e", "@" + DRILL_VARS, *extra]
        started = time.monotonic()
        done = subprocess.run(argv, env=dict(self.env, **(env or {})), cwd=ROOT, capture_output=True, text=True,
                              check=False)
        if done.returncode:
            sys.stderr.write(done.stdout[-6000:] + done.stderr[-3000:])
            raise SystemExit("ansible-playbook %s failed (exit %d)" % (name, done.returncode))
        return time.monotonic() - started

    def module(self, name, args):
        """Run one of the collection's modules on localhost (`ansible -m`); its result, which must not be failed."""
        done = subprocess.run(["ansible", "localhost", "-m", "gpu_resilience.fault_injection." + name, "-a",
                               json.dumps(args)], env=dict(self.env, ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                                                           ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"),
                              cwd=ROOT, capture_output=True, text=True, check=False)
        try:
            result = json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
        except (ValueError, KeyError, IndexError):
            raise SystemExit("module %s gave no result (exit %d): %s" % (name, done.returncode, done.stderr[-3000:]))
        if result.get("failed"):
            raise SystemExit("module %s failed: %s" % (name, result.get("msg")))
        return result

    def timed_drill(self, name, work, tag, *extra):
        """Run a drill playbook with the task clock (bench/callback_plugins/task_clock.py) and its reports in
        work; returns (wall seconds, the task clock's records, the drill's timeline JSON)."""
        clock = os.path.join(work, "tasks-%s.jsonl" % tag)
        reports = os.path.join(work, "reports-%s" % tag)
        wall = self.playbook(name, *extra, env={
            "ANSIBLE_CALLBACK_PLUGINS": CALLBACKS, "ANSIBLE_CALLBACKS_ENABLED": "task_clock",
            "TASK_CLOCK_LOG": clock, "FAULT_DRILL_REPORT_DIR": reports})
        with open(clock, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        with open(glob.glob(os.path.join(reports, "*-timeline.json"))[0], encoding="utf-8") as f:
            timeline = json.load(f)
        return wall, records, timeline

    def deploy_agents(self):
        """The fault-injector agent and the health agent on every GPU node; their deploy times."""
        return {"fault_agent_s": round(self.playbook("deploy_agent.yml"), 2),
                "health_agent_s": round(self.playbook("healthcheck.yml"), 2)}

    def api(self):
        """Kubernetes API clients for the benchmark's own watches (its requests carry their own user agent)."""
        from kubernetes import client, config  # pylint: disable=import-outside-toplevel
        api = config.new_client_from_config(config_file=self.env["KUBECONFIG"])
        api.user_agent = BENCH_USER_AGENT
        return client.CoreV1Api(api), client.CustomObjectsApi(api)

    def agent_processes(self):
        """(namespace, node, pid) of every agent pod's process, from the pod runner's index."""
        with open(os.path.join(self.env["LOCALCLUSTER_RUNNER_STATE"], "pods", "index.json"), encoding="utf-8") as f:
            pods = json.load(f)["pods"]
        out = []
        for pod in pods.values():
            if pod["namespace"] in AGENT_NAMESPACES:
                for container in pod["containers"].values():
                    if container.get("pid") and not container.get("done"):
                        out.append((pod["namespace"], pod["node"], container["pid"]))
        return out

    def agent_memory(self):
        """Peak resident memory (VmHWM) of each agent process, in MB, summarised per kind of agent."""
        peaks = collections.defaultdict(list)
        for namespace, _node, pid in self.agent_processes():
            try:
                with open("/proc/%d/status" % pid, encoding="ascii") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            peaks[AGENT_NAMESPACES[namespace]].append(int(fields["VmHWM"].split()[0]) / 1024.0)
        return {kind: {"processes": len(values), "peak_rss_mb_max": round(max(values), 1),
                       "peak_rss_mb_median": round(statistics.median(values), 1)}
                for kind, values in sorted(peaks.items())}

    def audit_mark(self):
        """A position in the audit log; requests() counts from there."""
        try:
            return os.path.getsize(self.audit_log)
        except OSError:
            return 0

    def requests(self, since, until=None):
        """API requests logged after audit_mark() `since` (and received before the `until` epoch time),
        counted per client."""
        time.sleep(1.0)   # the API server writes an event when the response completes
        counts = collections.Counter()
        with open(self.audit_log, "rb") as f:
            f.seek(since)
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if until is not None and parse_time(event["requestReceivedTimestamp"]) > until:
                    continue
                counts[client_of(event)] += 1
        return dict(sorted(counts.items()))


def client_of(event):
    """Who made an audited request, in the words of the benchmark tables."""
    user = event.get("user", {}).get("username", "")
    agent = event.get("userAgent", "")
    for namespace, kind in AGENT_NAMESPACES.items():
        if user.startswith("system:serviceaccount:%s:" % namespace):
            return kind + "s"
    if agent.startswith(BENCH_USER_AGENT):
        return "benchmark"
    if agent.startswith("localcluster-podrunner"):
        return "pod runner"
    if user == "localcluster-admin":
        return "drill (Ansible)"
    if "kwok" in user or agent.startswith("kwok"):
        return "kwok (simulated kubelets)"
    return "control plane"


def parse_time(text):
    """Epoch seconds of an RFC 3339 time with or without fractions."""
    text = text.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()


def percentile(values, fraction):
    """The nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[rank - 1]


def host():
    cpus = os.cpu_count()
    with open("/proc/meminfo", encoding="ascii") as f:
        mem_kb = int(f.readline().split()[1])
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    # How busy the (shared) machine was: the 1, 5 and 15 minute load averages when the results are written.
    return {"machine": platform.machine(), "cpus": cpus, "cpu_model": model,
            "memory_gib": round(mem_kb / 1048576.0, 1), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def write_result(name, command, payload):
    """bench/results/<name>.json: what ran, where, when, and the figures."""
    os.makedirs(RESULTS, exist_ok=True)
    doc = {"benchmark": name, "command": command,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "host": host()}
    doc.update(payload)
    path = os.path.join(RESULTS, name + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    log("wrote %s" % os.path.relpath(path, ROOT))
    return path


def table(rows, headers):
    """A plain-text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, headers))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join("%-*s" % (w, str(c)) for w, c in zip(widths, row)) for row in rows]
    return "\n".join(out)
