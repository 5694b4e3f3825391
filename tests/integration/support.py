"""Small helpers shared by the integration tests."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from kubernetes import client


def exists(read):
    """True if `read()` finds the object, False on 404."""
    try:
        read()
        return True
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise


def wait_until(check, timeout, what, interval=0.2):
    """Poll `check` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail("timed out after %ss waiting for %s (last value: %r)" % (timeout, what, last))


def _load_localcluster():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "tools", "localcluster", "localcluster.py")
    spec = importlib.util.spec_from_file_location("localcluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


localcluster = _load_localcluster()
import kmsg_journal  # noqa: E402  (beside localcluster.py, whose loading put its directory on the path)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER_STATE = os.environ.get("LOCALCLUSTER_RUNNER_STATE", os.path.join(ROOT, "build", "localcluster", "runner"))
RUN_LABEL = "local-runner.gpu-resilience.io/run"


def ansible_env():
    """The environment for the virtualenv's ansible commands: this collection and the local cluster."""
    subprocess.run([os.path.join(ROOT, "tools", "collection-tree.sh")], check=True, stdout=subprocess.DEVNULL)
    collections = os.environ.get("ANSIBLE_COLLECTIONS_PATH") or os.path.join(ROOT, "build", "collections")
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
                K8S_AUTH_KUBECONFIG=os.environ["KUBECONFIG"])


def venv_tool(name):
    """An executable installed beside the running Python (the project's virtualenv)."""
    exe = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.exists(exe), "%s not found next to %s" % (name, sys.executable)
    return exe


def ansible_module(fqcn, args, check=False, diff=False, timeout=300):
    """Run one module on localhost through `ansible`; return its result dict (rc in result["failed"])."""
    env = ansible_env()
    env.update(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    argv = [venv_tool("ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", fqcn,
            "-a", json.dumps(args), "-e", "ansible_python_interpreter=" + sys.executable]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)
    try:
        return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        pytest.fail("no result from %s (rc %d)\nstdout:\n%s\nstderr:\n%s" % (fqcn, proc.returncode, proc.stdout,
                                                                             proc.stderr))


RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
PLAYBOOK_TIMINGS = {}


def ansible_playbook(name, extra_vars=None, check=False, timeout=600):
    """Run playbooks/<name> with the virtualenv's ansible-playbook; return (rc, output, recap)."""
    argv = [venv_tool("ansible-playbook"), os.path.join(ROOT, "playbooks", name)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if check:
        argv.append("--check")
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, check=False)
    PLAYBOOK_TIMINGS.setdefault(name + (" --check" if check else ""), []).append(
        round(time.monotonic() - started, 1))
    match = RECAP.search(proc.stdout)
    recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()))) if match else None
    return proc.returncode, proc.stdout, recap


def run_playbook(name, extra_vars=None, check=False):
    """ansible_playbook that must succeed; returns (output, recap)."""
    rc, out, recap = ansible_playbook(name, extra_vars, check)
    assert rc == 0 and recap and recap["failed"] == 0, "%s failed (rc %s):\n%s" % (name, rc, out[-6000:])
    return out, recap


def kmsg_path(node):
    """A simulated node's /dev/kmsg: a regular file in its host root (see tools/localcluster)."""
    return os.path.join(RUNNER_STATE, "nodes", node, "host", "dev", "kmsg")


def read_runner_index():
    """The local pod runner's index of the pods it runs (pids, restarts), or {} while it has none."""
    try:
        with open(os.path.join(RUNNER_STATE, "pods", "index.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def alive(pid):
    """Whether pid is a live process (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError, TypeError):
        return False


def live_pods(namespace, name_prefix, container="agent"):
    """node -> [(pod name, pid, runner index entry)] of the live `container` processes that the pod
    runner runs for pods in namespace whose names start with name_prefix."""
    out = {}
    for entry in (read_runner_index().get("pods") or {}).values():
        if entry.get("namespace") != namespace or not entry.get("name", "").startswith(name_prefix):
            continue
        pid = ((entry.get("containers") or {}).get(container) or {}).get("pid")
        if pid and alive(pid):
            out.setdefault(entry["node"], []).append((entry["name"], pid, entry))
    return out


def descendants(pid):
    """Every live process below pid, by their parent ids in /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_run(proc):
    """SIGKILL a run and everything it started, as a crash would. Ansible's workers call setsid(),
    so killing the run's process group alone leaves the task that was running going on."""
    for pid in [proc.pid] + descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()


# --- the local pod runner's side -------------------------------------------------------------

RUNNER_TIMEOUT = 60


def delete(call):
    """Clean-up that tolerates what is already gone."""
    try:
        call()
    except client.ApiException as e:
        if e.status != 404:
            raise


def runner_entry(uid):
    return (read_runner_index().get("pods") or {}).get(uid)


def tail(path, lines=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return "(%s)" % e


def diagnostics(core, ns):
    """What to look at when a wait times out: pods, the runner's index and logs (sandboxes'
    included)."""
    out = ["--- pods in %s" % ns]
    for pod in core.list_namespaced_pod(ns).items:
        out.append("%s uid=%s node=%s phase=%s ip=%s deleting=%s" % (
            pod.metadata.name, pod.metadata.uid, pod.spec.node_name, pod.status.phase,
            pod.status.pod_ip, pod.metadata.deletion_timestamp))
    index = read_runner_index()
    out.append("--- runner index (%s)\n%s" % (RUNNER_STATE, json.dumps(index, indent=1)[-3000:]))
    for entry in (index.get("pods") or {}).values():
        if entry.get("namespace") == ns:
            for name in list(entry.get("containers") or {}) + ["sandbox"]:
                path = os.path.join(entry["dir"], name + ".log")
                out.append("--- %s\n%s" % (path, tail(path, 15)))
    for path in (os.path.join(os.path.dirname(RUNNER_STATE), "logs", "podrunner.log"),):
        out.append("--- %s\n%s" % (path, tail(path)))
    return "\n".join(out)


def wait_for(core, ns, check, what, timeout=RUNNER_TIMEOUT, interval=0.2):
    """wait_until, with the runner's side of the story when it times out."""
    try:
        return wait_until(check, timeout, what, interval)
    except pytest.fail.Exception as e:
        pytest.fail("%s\n%s" % (e, diagnostics(core, ns)), pytrace=False)


# --- simulated nodes' journals (tools/localcluster/kmsg_journal.py) ---------------------------

def node_host(node):
    """A simulated node's host root (the pod runner's hostPath root)."""
    return os.path.join(RUNNER_STATE, "nodes", node, "host")


def node_journal(host, *matches):
    """The entries of a node's journal (journalctl -o json: the libsystemd reader NVSentinel uses), oldest first."""
    directory = os.path.join(host, "var", "log", "journal")
    if not os.path.isdir(directory):
        return []
    out = subprocess.run(["journalctl", "--directory=" + directory, "-o", "json", "--no-pager", *matches],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [json.loads(line) for line in out.splitlines()]


def journal_identity(host):
    """A node's (machine id, boot id) as journald records them."""
    with open(os.path.join(host, "etc", "machine-id")) as f:
        machine_id = f.read().strip()
    with open(os.path.join(host, "proc", "sys", "kernel", "random", "boot_id")) as f:
        boot_id = f.read().strip().replace("-", "")
    return machine_id, boot_id


def journal_settled(layout, node, timeout=30):
    """Wait until the journal bridge has stored everything written to the node's /dev/kmsg: its saved
    offset is at the file's end and the journal's kernel entries no longer change (the bridge saves
    the offset just before it writes the entries). Records of earlier tests then cannot land late
    among the ones a test counts."""
    host = node_host(node)

    def settled():
        if kmsg_journal.Node(node, host, os.path.join(layout.journal_state, node + ".json")).has_new():
            return False
        count = len(node_journal(host, "_TRANSPORT=kernel"))
        time.sleep(0.5)
        return count == len(node_journal(host, "_TRANSPORT=kernel"))
    wait_until(settled, timeout, "the journal bridge to catch up with %s's /dev/kmsg" % node)


def journal_has(count, host, *matches):
    """A check for wait_until: the node's journal entries once there are `count` of them."""
    def check():
        entries = node_journal(host, *matches)
        return entries if len(entries) >= count else None
    return check
