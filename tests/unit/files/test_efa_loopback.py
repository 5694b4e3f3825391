"""Unit tests of files/healthcheck/efa_loopback.py, the quarantine Job's EFA loopback test, with
stand-in fi_info and fi_pingpong programs (the real ones need EFA hardware)."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("efa_loopback", ROOT / "files" / "healthcheck" / "efa_loopback.py")
efa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(efa)

FI_INFO = "provider: efa\n    fabric: efa\n    domain: rdmap16s27-rdm\nprovider: efa\n    domain: rdmap32s27-rdm\n" \
          "provider: efa\n    domain: rdmap16s27-rdm\n"


def stand_ins(tmp_path, fi_info=FI_INFO, failing=(), hang=()):
    """fi_info printing `fi_info`; fi_pingpong whose client fails for the domains in `failing`,
    never ends for those in `hang`, and whose server waits to be killed."""
    (tmp_path / "fi_info").write_text("#!%s\nimport sys\nsys.stdout.write(%r)\n" % (sys.executable, fi_info))
    (tmp_path / "fi_pingpong").write_text(
        "#!%s\nimport sys, time\nargs = sys.argv[1:]\ndomain = args[args.index('-d') + 1]\n"
        "if args[-1] != '127.0.0.1' or domain in %r:\n    time.sleep(60)\n"
        "print('bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec')\n"
        "print('64 100 =100 12k 0.00s 12.34 5.18 0.19')\nsys.exit(1 if domain in %r else 0)\n"
        % (sys.executable, list(hang), list(failing)))
    for name in ("fi_info", "fi_pingpong"):
        os.chmod(tmp_path / name, 0o755)
    return str(tmp_path)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(efa, "SERVER_START", 0.05)
    monkeypatch.setattr(efa, "EFA_BIN_DIRS", ())


def test_every_device_passes(tmp_path):
    document, status = efa.run(10, stand_ins(tmp_path))
    assert status == 0 and document["status"] == "PASS" and document["severity"] == ""
    assert sorted(document["devices"]) == ["rdmap16s27-rdm", "rdmap32s27-rdm"]
    assert document["devices"]["rdmap16s27-rdm"].startswith("exit 0: 64 100")


def test_a_failing_or_hanging_device_fails_at_reset(tmp_path):
    document, status = efa.run(1, stand_ins(tmp_path, failing=("rdmap32s27-rdm",)))
    assert status == 1 and (document["status"], document["severity"]) == ("FAIL", "RESET")
    assert "1 of 2 EFA device(s) failed the loopback test: rdmap32s27-rdm" == document["detail"]
    hung, status = efa.run(1, stand_ins(tmp_path, hang=("rdmap16s27-rdm",)))
    assert status == 1 and hung["devices"]["rdmap16s27-rdm"] == "timed out after 1 s"


def test_no_device_isolates_and_no_tools_skips(tmp_path):
    document, status = efa.run(5, stand_ins(tmp_path, fi_info="No data available\n"))
    assert status == 2 and (document["status"], document["severity"]) == ("FAIL", "ISOLATE")
    empty = tmp_path / "empty"
    empty.mkdir()
    document, status = efa.run(5, str(empty))
    assert status == 0 and document["status"] == "SKIP" and "fi_info, fi_pingpong not found" in document["detail"]


def test_main_writes_the_termination_log(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", stand_ins(tmp_path) + os.pathsep + os.environ["PATH"])
    log = tmp_path / "termination-log"
    assert efa.main(["--timeout", "10", "--termination-log", str(log)]) == 0
    assert json.loads(log.read_text())["check"] == "6-efa-loopback"
