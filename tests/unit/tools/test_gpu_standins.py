"""Unit tests of the simulated nodes' stand-ins, tools/localcluster/gpu_standins.py: the NVIDIA tools
(run through their wrappers, as a container on the node runs them), the EFA devices, the boot id,
the NVIDIA container runtime's PATH rule, and the health agent's own checks against them.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TOOL_DIR = ROOT / "tools" / "localcluster"
for _path in (str(TOOL_DIR), str(ROOT / "plugins" / "module_utils"), str(ROOT / "files" / "common")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
import gpu_standins  # noqa: E402
import localcluster  # noqa: E402

_spec = importlib.util.spec_from_file_location("gpu_health_agent", ROOT / "files" / "healthcheck" / "gpu_health_agent.py")
agent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agent)

NODE = "gpu-node-1"


@pytest.fixture
def host(tmp_path):
    root = tmp_path / "nodes" / NODE / "host"
    profile = gpu_standins.instance_profile("p5.48xlarge")
    gpu_standins.write_node(str(root), localcluster.node_gpus(NODE, 8), "NVIDIA-H100-80GB-HBM3", profile["efa"], profile["nvlink"])
    return root


def tool(host, name, *args):
    return subprocess.run([str(host / "usr" / "bin" / name)] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=30, check=False)


def test_a_node_gets_tools_state_efa_devices_and_a_boot_id(host):
    assert os.access(host / "usr" / "bin" / "nvidia-smi", os.X_OK) and os.access(host / "usr" / "bin" / "dcgmi", os.X_OK)
    assert gpu_standins.instance_profile("p5.48xlarge") == {"gpus": 8, "efa": 32, "nvlink": True}
    assert gpu_standins.instance_profile("m7i.4xlarge") == {"efa": 0, "nvlink": False}
    devices = sorted(os.listdir(host / "sys" / "class" / "infiniband"))
    assert len(devices) == 32 and devices[0] == "rdmap16s0"
    driver = host / "sys" / "class" / "infiniband" / devices[0] / "device" / "driver"
    assert os.path.islink(driver) and os.path.basename(os.path.realpath(driver)) == "efa"
    boot_id = (host / "proc" / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    assert len(boot_id) == 36
    # Writing the node again (cluster up) keeps its boot: nothing rebooted.
    gpu_standins.write_node(str(host), localcluster.node_gpus(NODE, 8), "NVIDIA-H100-80GB-HBM3", 32, True)
    assert (host / "proc" / "sys" / "kernel" / "random" / "boot_id").read_text().strip() == boot_id


def test_nvidia_smi_answers_like_the_real_tool(host):
    listed = tool(host, "nvidia-smi", "-L")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 8
    assert listed.stdout.splitlines()[0].startswith("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-")
    query = tool(host, "nvidia-smi", "--query-gpu=index,pci.bus_id,power.draw", "--format=csv,noheader")
    assert query.stdout.splitlines()[0] == "0, 00000000:53:00.0, 71.24 W"
    nounits = tool(host, "nvidia-smi", "--query-gpu=index,power.draw", "--format=csv,noheader,nounits")
    assert nounits.stdout.splitlines()[0] == "0, 71.24"
    bad = tool(host, "nvidia-smi", "--query-gpu=index,no.such.field", "--format=csv,noheader")
    assert bad.returncode == 2 and bad.stderr.strip() == 'Field "no.such.field" is not a valid field to query.'
    assert tool(host, "nvidia-smi", "--query-compute-apps=pid,gpu_bus_id", "--format=csv,noheader").stdout == ""
    links = tool(host, "nvidia-smi", "nvlink", "-s").stdout.splitlines()
    assert len(links) == 8 * 19 and links[1] == "\t Link 0: 26.562 GB/s"
    topo = tool(host, "nvidia-smi", "topo", "-m").stdout.splitlines()
    assert topo[1].startswith("GPU0\t X \tNV18\tNV18")
    assert tool(host, "dcgmi", "diag", "-r", "2").returncode == 0
    assert tool(host, "nvidia-smi", "--bogus").returncode == 2


def test_update_flips_answers_and_write_state_puts_them_back(host):
    before = gpu_standins.update(str(host), gpus={7: {"present": False}, 3: {"inactive_links": [5]}},
                                 efa=31, compute_apps=[{"pid": 4242, "gpu_bus_id": "00000000:75:00.0"}], dcgm_diag="fail")
    assert len(tool(host, "nvidia-smi", "-L").stdout.splitlines()) == 7
    assert len([row for row in tool(host, "nvidia-smi", "topo", "-m").stdout.splitlines() if row.startswith("GPU")]) == 7
    assert "\t Link 5: <inactive>" in tool(host, "nvidia-smi", "nvlink", "-s").stdout
    assert tool(host, "nvidia-smi", "--query-compute-apps=pid,gpu_bus_id", "--format=csv,noheader").stdout == \
        "4242, 00000000:75:00.0\n"
    assert len(os.listdir(host / "sys" / "class" / "infiniband")) == 31
    failed = tool(host, "dcgmi", "diag", "-r", "2")
    assert failed.returncode == 226 and "Fail" in failed.stdout
    gpu_standins.update(str(host), error={"message": "NVIDIA-SMI has failed because it couldn't communicate with "
                                          "the NVIDIA driver.", "returncode": 9})
    broken = tool(host, "nvidia-smi", "-L")
    assert broken.returncode == 9 and "couldn't communicate" in broken.stderr
    gpu_standins.write_state(str(host), before)
    assert len(tool(host, "nvidia-smi", "-L").stdout.splitlines()) == 8
    assert len(os.listdir(host / "sys" / "class" / "infiniband")) == 32


def test_reboot_gives_a_new_boot_id_and_an_empty_kernel_log(host):
    kmsg = host / "dev" / "kmsg"
    kmsg.parent.mkdir(parents=True)
    kmsg.write_bytes(b"<3>NVRM: NVRM: Xid (PCI:0000:53:00): 79, ...\n")
    boot_id = (host / "proc" / "sys" / "kernel" / "random" / "boot_id").read_text()
    gpu_standins.reboot(str(host))
    assert kmsg.read_bytes() == b"" and (host / "proc" / "sys" / "kernel" / "random" / "boot_id").read_text() != boot_id


@pytest.mark.parametrize("env,found", [
    ({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}, True),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, True),                              # default capabilities: utility,compute
    ({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all"}, True),
    ({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute"}, False),
    ({"NVIDIA_VISIBLE_DEVICES": "void"}, False),
    ({}, False),
])
def test_the_container_runtime_rule(host, env, found):
    path = gpu_standins.runtime_path(str(host), env, "/usr/bin:/bin")
    assert path == (str(host / "usr" / "bin") + ":/usr/bin:/bin" if found else "/usr/bin:/bin")


def test_no_tools_on_a_node_without_stand_ins(tmp_path):
    assert gpu_standins.runtime_path(str(tmp_path), {"NVIDIA_VISIBLE_DEVICES": "all"}, "/bin") == "/bin"


# --- the health agent's checks against the stand-ins ----------------------------------------------

def agent_checks(host, monkeypatch, **config):
    monkeypatch.setenv("PATH", gpu_standins.runtime_path(str(host), {"NVIDIA_VISIBLE_DEVICES": "all"}, os.environ["PATH"]))
    probe = agent.Probe(str(host / "sys"), str(host / "proc" / "driver" / "nvidia"))
    return agent.run_checks(agent.validate_config(config)[0], "p5.48xlarge", probe)


def test_every_check_passes_on_a_healthy_node(host, monkeypatch):
    (host / "proc" / "driver" / "nvidia" / "gpus").mkdir(parents=True)
    results = agent_checks(host, monkeypatch)
    assert dict((name, entry["status"]) for name, entry in results.items()) == dict((name, "pass") for name in agent.CHECKS)


def test_each_check_fails_on_its_own_flipped_answer(host, monkeypatch):
    gpu_standins.update(str(host), efa=31, gpus={
        7: {"present": False}, 3: {"pstate": "[GPU requires reset]"}, 2: {"ecc.errors.uncorrected.volatile.total": "3"},
        1: {"retired_pages.dbe": "1"}, 0: {"persistence_mode": "Disabled"}, 4: {"inactive_links": [5]},
        5: {"fabric.state": "In Progress", "fabric.status": "N/A"}})
    results = agent_checks(host, monkeypatch)
    assert dict((name, entry["severity"]) for name, entry in results.items()) == {
        "gpu_count": "REBOOT", "gpu_state": "RESET", "ecc": "RESET", "retired_pages": "ISOLATE",
        "persistence_mode": "MONITOR", "efa": "REBOOT", "nvlink": "RESET", "topology": "REBOOT", "fabric_manager": "RESET"}
    gpu_standins.update(str(host), nvlink=False)
    assert agent_checks(host, monkeypatch)["topology"]["severity"] == "ISOLATE"     # NVLink expected, none


def test_node_facts_from_the_stand_in(host, monkeypatch):
    monkeypatch.setenv("PATH", gpu_standins.runtime_path(str(host), {"NVIDIA_VISIBLE_DEVICES": "all"}, os.environ["PATH"]))
    probe = agent.Probe(str(host / "sys"), str(host / "proc"))
    assert probe.node_facts(("a100", "mig", "uvm_in_use")) == {"a100": False, "mig": False, "uvm_in_use": False}
    gpu_standins.update(str(host), compute_apps=[{"pid": 4242, "gpu_bus_id": "00000000:75:00.0"}],
                        gpus={0: {"name": "NVIDIA A100-SXM4-80GB", "mig.mode.current": "Enabled"}})
    assert probe.node_facts(("a100", "mig", "uvm_in_use")) == {"a100": True, "mig": True, "uvm_in_use": True}
