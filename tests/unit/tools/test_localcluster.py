"""Unit tests of the local control plane tool: addresses, node objects, PKI, kubeconfigs."""
import argparse
import ipaddress
import json
import os
import re
import sys

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TOOL_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tools", "localcluster")
sys.path.insert(0, os.path.abspath(TOOL_DIR))
import localcluster as lc  # noqa: E402  (the same instance its sibling modules import)
import pki  # noqa: E402

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(/\d+)?(?![\d.])")


@pytest.fixture()
def layout(tmp_path):
    return lc.Layout(str(tmp_path / "state"), 26000)


def test_every_address_in_every_command_line_is_loopback(layout):
    cmds = lc.commands(layout, "/bin-dir", "/stages.yaml")
    assert set(cmds) == set(lc.PROCESS_ORDER)
    named = set()
    for name, argv in cmds.items():
        for arg in argv:
            for ip, prefix in IPV4.findall(arg):
                named.add(name)
                net = ipaddress.ip_network(ip + (prefix or ""), strict=False)
                assert net.subnet_of(LOOPBACK), "%s: %s is not on loopback" % (name, arg)
            assert "0.0.0.0" not in arg and "localhost" not in arg.split("://")[-1], arg
    # Every process names its addresses rather than using a default; the journal bridge has none
    # (it reads and writes files only).
    assert named == set(cmds) - {"kmsg-journal"}


def test_components_bind_explicitly(layout):
    cmds = lc.commands(layout, "/b", "/s")
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert "--bind-address=127.0.0.1" in cmds[name]
    assert "--node-port=0" in cmds["kwok"]  # no KWOK server port


def test_node_addresses_are_distinct_loopback_for_a_large_fleet():
    ips, cidrs = set(), []
    for i in range(5000):
        ip, cidr = lc.node_addresses(i)
        assert ipaddress.ip_address(ip) in LOOPBACK
        ips.add(ip)
        cidrs.append(ipaddress.ip_network(cidr))
    assert len(ips) == 5000
    assert len(set(cidrs)) == 5000
    service = ipaddress.ip_network(lc.SERVICE_CIDR)
    fallback = ipaddress.ip_network(lc.KWOK_FALLBACK_POD_CIDR)
    for cidr in cidrs:
        assert cidr.subnet_of(LOOPBACK)
        assert not cidr.overlaps(service) and not cidr.overlaps(fallback)
        assert ipaddress.ip_address(lc.node_addresses(0)[0]) not in cidr


def test_gpu_node_manifest_has_gpu_labels_and_capacity():
    node = lc.node_manifest("gpu-node-3", 3, 8, "p5.48xlarge", "NVIDIA-H100-80GB-HBM3")
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert node["spec"]["podCIDR"] == lc.node_addresses(3)[1]


def test_cpu_node_manifest_has_no_gpu():
    node = lc.node_manifest("cpu-node-0", 7, 0, "m7i.4xlarge", "")
    assert "nvidia.com/gpu.present" not in node["metadata"]["labels"]
    assert "nvidia.com/gpu" not in node["status"]["capacity"]


def test_desired_nodes_counts():
    args = type("Args", (), dict(nodes=4, cpu_nodes=2, gpus_per_node=4, instance_type="p4d.24xlarge",
                                 gpu_product="A100", cpu_instance_type="m7i.large"))
    names = [n["metadata"]["name"] for n in lc.desired_nodes(args)]
    assert names == ["gpu-node-0", "gpu-node-1", "gpu-node-2", "gpu-node-3", "cpu-node-0", "cpu-node-1"]
    ips = [n["status"]["addresses"][0]["address"] for n in lc.desired_nodes(args)]
    assert len(set(ips)) == 6


def test_pki_identities_and_idempotence(tmp_path):
    d = str(tmp_path / "pki")
    pki.ensure_pki(d, ["127.0.0.1"], ["localhost"])
    server = x509.load_pem_x509_certificate(open(os.path.join(d, "apiserver.crt"), "rb").read())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    admin = x509.load_pem_x509_certificate(open(os.path.join(d, "admin.crt"), "rb").read())
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    kcm = x509.load_pem_x509_certificate(open(os.path.join(d, "kube-controller-manager.crt"), "rb").read())
    assert kcm.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    assert oct(os.stat(os.path.join(d, "ca.key")).st_mode & 0o777) == "0o600"
    before = open(os.path.join(d, "ca.crt"), "rb").read()
    pki.ensure_pki(d, ["127.0.0.1"], ["localhost"])
    assert open(os.path.join(d, "ca.crt"), "rb").read() == before


def test_kubeconfig_is_valid_yaml_pointing_at_loopback(layout, tmp_path):
    path = str(tmp_path / "kc")
    lc.write_kubeconfig(path, layout, "admin")
    cfg = yaml.safe_load(open(path))
    assert cfg == json.load(open(path))
    assert cfg["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:26443"
    assert cfg["users"][0]["user"]["client-certificate"].endswith("/pki/admin.crt")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_process_start_time_tells_reused_pids(layout):
    os.makedirs(layout.run)
    with open(os.path.join(layout.run, "etcd.json"), "w") as f:
        json.dump({"pid": os.getpid(), "start": lc.proc_start_time(os.getpid())}, f)
    assert lc.running_pid(layout, "etcd") == os.getpid()
    with open(os.path.join(layout.run, "etcd.json"), "w") as f:
        json.dump({"pid": os.getpid(), "start": 1}, f)  # same pid, another process's start time
    assert lc.running_pid(layout, "etcd") is None


def test_up_requires_binaries(tmp_path, capsys):
    rc = lc.main(["--state-dir", str(tmp_path / "s"), "--bin-dir", str(tmp_path), "up", "--nodes", "1"])
    assert rc == 1
    assert "build-binaries.sh" in capsys.readouterr().err


def test_down_without_cluster_is_a_no_op(tmp_path):
    assert lc.main(["--state-dir", str(tmp_path / "never-started"), "down"]) == 0


def test_marker_matches_the_state_dir_and_below_only():
    def env(value):
        return b"PATH=/bin\0LOCALCLUSTER_STATE=" + value + b"\0HOME=/root"

    assert lc.marked_by("/s/lc", env(b"/s/lc"))
    assert lc.marked_by("/s/lc", env(b"/s/lc/runner"))
    assert not lc.marked_by("/s/lc", env(b"/s/lc2"))
    assert not lc.marked_by("/s/lc", b"PATH=/bin\0HOME=/root")


def test_simulated_gpus_look_like_the_drivers_proc_files(tmp_path):
    gpus = lc.node_gpus("gpu-node-0", 8)
    pcis, minors, uuids = (list(column) for column in zip(*gpus))
    assert pcis == sorted(pcis) and pcis[0] == "0000:53:00.0"  # PCI order = nvidia-smi order
    assert minors != list(range(8)) and sorted(minors) == list(range(8))  # the minor is not the index
    assert len(set(uuids)) == 8 and all(u.startswith("GPU-") for u in uuids)
    assert lc.node_gpus("gpu-node-0", 8) == gpus and lc.node_gpus("gpu-node-1", 8) != gpus
    assert sorted(gpu[1] for gpu in lc.node_gpus("n", 3)) == [0, 1, 2]
    text = lc.gpu_information("NVIDIA H100 80GB HBM3", gpus[2][2], gpus[2][0], gpus[2][1])
    fields = dict(line.split(":", 1) for line in text.splitlines())
    assert fields["Bus Location"].strip() == "0000:75:00.0"
    assert fields["Device Minor"].strip() == str(gpus[2][1])
    assert fields["GPU UUID"].strip() == gpus[2][2]
    assert len(lc.node_gpus("big", 12)) == 12 and lc.node_gpus("big", 12)[8][0] == "0001:53:00.0"


def test_optional_processes_run_only_when_their_option_is_set():
    assert lc.wanted({}) == [n for n in lc.PROCESS_ORDER if n not in lc.OPTIONAL]
    assert lc.wanted({"journal": True}) == [n for n in lc.PROCESS_ORDER if n != "postgresql"]
    assert lc.wanted({"journal": True, "nvsentinel": True}) == list(lc.PROCESS_ORDER)


def test_nodes_get_their_identity_and_gpus_in_their_host_root(layout):
    args = argparse.Namespace(nodes=2, cpu_nodes=1, gpus_per_node=2, instance_type="p5",
                              gpu_product="NVIDIA-H100", cpu_instance_type="m7i")
    lc.write_node_hosts(layout, args)
    hosts = os.path.join(layout.runner_state, "nodes")
    assert sorted(os.listdir(hosts)) == ["cpu-node-0", "gpu-node-0", "gpu-node-1"]
    ids, boots = set(), {}
    for node in os.listdir(hosts):
        with open(os.path.join(hosts, node, "host", "etc", "machine-id")) as f:
            machine_id = f.read()
        assert re.fullmatch(r"[0-9a-f]{32}\n", machine_id) and machine_id.strip() == lc.machine_id(node)
        ids.add(machine_id)
        with open(os.path.join(hosts, node, "host", "proc", "sys", "kernel", "random", "boot_id")) as f:
            boots[node] = f.read()
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\n", boots[node])
    assert len(ids) == 3 and len(set(boots.values())) == 3
    assert sorted(os.listdir(os.path.join(hosts, "gpu-node-1", "host", "proc", "driver", "nvidia", "gpus"))) == [
        "0000:53:00.0", "0000:64:00.0"]
    assert not os.path.exists(os.path.join(hosts, "cpu-node-0", "host", "proc", "driver"))
    lc.write_node_hosts(layout, args)          # a later `up`: the same boot, not a reboot
    for node, boot in boots.items():
        with open(os.path.join(hosts, node, "host", "proc", "sys", "kernel", "random", "boot_id")) as f:
            assert f.read() == boot
