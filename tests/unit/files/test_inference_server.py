"""Unit tests of the demo inference server, files/demo/inference_server.py.

The pure parts (configuration, request parsing, completions, error names) are tested in process.
The server itself runs as a subprocess on 127.0.0.1 (port 0: the kernel picks a free port, which
the start line reports) against the stand-in driver files/shim/tests/fake_cuda.c, with the CUDA
fault shim preloaded, both built by the shim tests' own Build helper (tests/unit/shim/shim_build.py).
The shim is armed the way the node agent arms it: shim_control.render() written to the control
file through a temporary name and a rename.
"""
import http.client
import importlib.util
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_control, xid_catalog

ROOT = Path(__file__).resolve().parents[3]
SERVER = ROOT / "files" / "demo" / "inference_server.py"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server_mod = _load("demo_inference_server", SERVER)
shim_build = _load("demo_shim_build", ROOT / "tests" / "unit" / "shim" / "shim_build.py")
CATALOG_NAMES = {number: name for name, number in xid_catalog.CUDA_ERRORS.items()}
MODEL = "demo-llm"


# ---------------------------------------------------------------------------------------------
# Pure logic
# ---------------------------------------------------------------------------------------------

def test_error_names_cover_the_fault_codes_and_agree_with_the_catalog():
    for code in (100, 101, 2, 46, 214, 700, 709, 719, 999):
        assert server_mod.error_name(code) == CATALOG_NAMES.get(code, server_mod.error_name(code))
        assert server_mod.error_name(code) != "CUDA_ERROR_%d" % code
    for code, name in server_mod.CUDA_ERROR_NAMES.items():
        if code in CATALOG_NAMES:
            assert CATALOG_NAMES[code] == name
    assert server_mod.error_name(12345) == "CUDA_ERROR_12345"
    error = server_mod.CudaError(999, "cuMemAlloc_v2")
    assert str(error) == "CUDA error 999 (CUDA_ERROR_UNKNOWN) in cuMemAlloc_v2"
    assert server_mod.cuda_error_body(error) == {"error": {
        "message": "CUDA error 999 (CUDA_ERROR_UNKNOWN) in cuMemAlloc_v2", "type": "server_error", "code": "cuda_error"}}


def test_config_defaults_and_overrides():
    assert server_mod.load_config({}) == {"host": "0.0.0.0", "port": 8000, "model": "demo-llm",
                                          "libcuda": "libcuda.so.1", "device": 0, "exit_on_fatal": True,
                                          "verify_copy": True}
    assert server_mod.load_config({"POD_IP": "127.128.2.3"})["host"] == "127.128.2.3"
    config = server_mod.load_config({"POD_IP": "127.128.2.3", "DEMO_LISTEN_HOST": "127.0.0.1", "DEMO_PORT": "9000",
                                     "DEMO_MODEL": "llama", "DEMO_LIBCUDA": "/x/libcuda.so.1", "DEMO_CUDA_DEVICE": "3",
                                     "DEMO_EXIT_ON_FATAL": "0", "DEMO_VERIFY_COPY": "0"})
    assert config == {"host": "127.0.0.1", "port": 9000, "model": "llama", "libcuda": "/x/libcuda.so.1",
                      "device": 3, "exit_on_fatal": False, "verify_copy": False}


@pytest.mark.parametrize("env, words", [
    ({"DEMO_PORT": "http"}, "DEMO_PORT='http' is not a whole number"),
    ({"DEMO_PORT": "70000"}, "DEMO_PORT=70000 is outside 0..65535"),
    ({"DEMO_PORT": "-1"}, "DEMO_PORT=-1 is outside 0..65535"),
    ({"DEMO_CUDA_DEVICE": "-1"}, "DEMO_CUDA_DEVICE=-1 is outside"),
    ({"DEMO_EXIT_ON_FATAL": "yes"}, "DEMO_EXIT_ON_FATAL='yes' must be 0 or 1"),
    ({"DEMO_MODEL": "two words"}, "without white space"),
])
def test_bad_config_is_refused_with_the_variable_named(env, words):
    with pytest.raises(server_mod.ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        server_mod.load_config(env)


def body(**fields):
    return json.dumps(fields).encode()


def test_completion_requests_are_parsed():
    assert server_mod.parse_completion_request(body(model=MODEL, prompt="hi"), MODEL) == (["hi"], 16)
    assert server_mod.parse_completion_request(body(model=MODEL, prompt=["a", "b"], max_tokens=3, temperature=0.7),
                                               MODEL) == (["a", "b"], 3)
    assert server_mod.parse_completion_request(body(model=MODEL, prompt="", max_tokens=None), MODEL) == ([""], 16)


@pytest.mark.parametrize("raw, param, code, words", [
    (b"{not json", None, None, "not valid JSON"),
    (b"\xff\xfe", None, None, "not valid JSON"),
    (b"[1, 2]", None, None, "must be a JSON object"),
    (body(prompt="hi"), "model", None, "You must provide a model parameter"),
    (body(model="gpt-9", prompt="hi"), "model", "model_not_found", 'The model "gpt-9" does not exist'),
    (body(model=MODEL), "prompt", None, "prompt must be"),
    (body(model=MODEL, prompt=[]), "prompt", None, "prompt must be"),
    (body(model=MODEL, prompt=[1, 2]), "prompt", None, "prompt must be"),
    (body(model=MODEL, prompt=["x"] * 65), "prompt", None, "At most 64 prompts"),
    (body(model=MODEL, prompt="hi", max_tokens=0), "max_tokens", None, "max_tokens must be"),
    (body(model=MODEL, prompt="hi", max_tokens=4097), "max_tokens", None, "max_tokens must be"),
    (body(model=MODEL, prompt="hi", max_tokens="8"), "max_tokens", None, "max_tokens must be"),
    (body(model=MODEL, prompt="hi", max_tokens=True), "max_tokens", None, "max_tokens must be"),
    (body(model=MODEL, prompt="hi", max_tokens=2.5), "max_tokens", None, "max_tokens must be"),
    (body(model=MODEL, prompt="hi", stream=True), "stream", None, "Streaming is not supported"),
])
def test_bad_completion_requests_get_openai_errors(raw, param, code, words):
    with pytest.raises(server_mod.BadRequest) as info:
        server_mod.parse_completion_request(raw, MODEL)
    assert info.value.status == 400
    error = info.value.body["error"]
    assert words in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code


def test_completions_are_deterministic_and_respect_max_tokens():
    for prompt in ("Hello", "The GPU fell off the bus", "", "x" * 1000):
        for max_tokens in (1, 2, 5, 16, 300):
            text, tokens, reason = server_mod.complete(prompt, max_tokens)
            assert (text, tokens, reason) == server_mod.complete(prompt, max_tokens)
            assert 1 <= tokens <= max_tokens
            assert reason in ("stop", "length")
            assert (reason == "length") == (tokens == max_tokens and not text.endswith(server_mod.STOP_WORD))
            assert text.startswith(" ") and all(w in server_mod.VOCABULARY for w in text.rstrip(".").split())
    assert server_mod.complete("a", 16) != server_mod.complete("b", 16)
    response = server_mod.completion_response(["one two three", "four"], 4, MODEL, "abc-1")
    assert response["id"] == "cmpl-abc-1" and response["object"] == "text_completion" and response["model"] == MODEL
    assert isinstance(response["created"], int)
    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert all(set(c) == {"text", "index", "logprobs", "finish_reason"} and c["logprobs"] is None
               for c in response["choices"])
    usage = response["usage"]
    assert usage["prompt_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# ---------------------------------------------------------------------------------------------
# The server, for real, on the stand-in driver, with and without the shim
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return shim_build.Build(tmp_path_factory.mktemp("demo-build"))


@pytest.fixture
def control(tmp_path):
    (tmp_path / "ctl").mkdir()
    return tmp_path / "ctl" / shim_control.CONTROL_FILE


def arm(control, xid=79, gpu=None, seq=1):
    shim_build.write_control(control, shim_control.render(True, seq, "unit-test", xid=xid, gpu=gpu))


def disarm(control, seq=2):
    shim_build.write_control(control, shim_control.render(False, seq, "unit-test"))


class Server:
    """The server as a subprocess; its JSON log lines read in the background."""

    def __init__(self, build, control, preload=True, **env):
        full = {k: v for k, v in build.env(control, preload).items() if not k.startswith(("DEMO_", "POD_IP"))}
        full.update({"DEMO_LISTEN_HOST": "127.0.0.1", "DEMO_PORT": "0", "DEMO_LIBCUDA": str(build.dir / "libcuda.so.1"),
                     "DEMO_VERIFY_COPY": "0"})
        full.update({k: str(v) for k, v in env.items()})
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], env=full, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.log = []
        self.port = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_event(self, timeout=20):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no log line within %ss; so far: %r" % (timeout, self.log)) from None
        if line is None:
            return None
        record = json.loads(line)
        self.log.append(record)
        return record

    def started(self):
        """Wait for the start line (or the process's end); return the start record or None."""
        while True:
            record = self.next_event()
            if record is None or record["event"] in ("start", "fatal"):
                if record and record["event"] == "start":
                    self.port = record["port"]
                return record

    def events(self):
        """Every log line until the process ends."""
        while self.next_event() is not None:
            pass
        return self.log

    def request(self, method, path, payload=None, raw=None, headers=None):
        """(status, decoded JSON body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
            conn.request(method, path, body=data, headers=dict({"Content-Type": "application/json"}, **(headers or {})))
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def complete(self, prompt="Why did the GPU fall off the bus?", **extra):
        return self.request("POST", "/v1/completions", dict({"model": MODEL, "prompt": prompt}, **extra))

    def until_failing(self, timeout=10.0):
        """Ask for completions until one fails: the shim sees a new control file through inotify
        within milliseconds, and each request asks the driver again. (status, answer) of the first
        failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, answer = self.complete()
            if status != 200:
                return status, answer
        raise AssertionError("every request still succeeded %ss after arming" % timeout)

    def wait(self, timeout=20):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.stdout.closed:
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return stderr


@pytest.fixture
def servers():
    started = []

    def start(build, control, preload=True, **env):
        server = Server(build, control, preload, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def running(servers, build, control, **env):
    server = servers(build, control, **env)
    record = server.started()
    assert record and record["event"] == "start", server.log
    return server


def test_serves_health_models_and_completions_through_the_disarmed_shim(build, control, servers):
    server = running(servers, build, control)
    start = server.log[-1]
    assert start["gpu_name"] == "Fake GPU 0" and start["pci"] == "0000:53:00.0" and start["host"] == "127.0.0.1"
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    status, models = server.request("GET", "/v1/models")
    assert status == 200 and models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]

    status, first = server.complete(max_tokens=12)
    assert status == 200, first
    assert first["object"] == "text_completion" and first["model"] == MODEL and first["id"].startswith("cmpl-")
    (choice,) = first["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] in ("stop", "length")
    assert choice["text"] == server_mod.complete("Why did the GPU fall off the bus?", 12)[0]
    status, again = server.complete(max_tokens=12)
    assert status == 200 and again["choices"] == first["choices"] and again["id"] != first["id"]
    status, batch = server.complete(prompt=["a", "b", "c"], max_tokens=3)
    assert status == 200 and [c["index"] for c in batch["choices"]] == [0, 1, 2]

    # Concurrent requests, each in its own server thread with the context made current there.
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: server.complete(prompt="prompt %d" % i)[0], range(64)))
    assert results == [200] * 64
    assert server.request("GET", "/health") == (200, {"status": "ok"})


def test_bad_requests_get_400_and_leave_the_server_healthy(build, control, servers):
    server = running(servers, build, control)
    cases = [
        (server.request("POST", "/v1/completions", raw=b"{oops"), 400, "not valid JSON"),
        (server.complete(model="gpt-9"), 400, "does not exist"),
        (server.request("POST", "/v1/completions", {"model": "gpt-9", "prompt": "x"}), 400, "does not exist"),
        (server.complete(max_tokens=0), 400, "max_tokens"),
        (server.complete(max_tokens="many"), 400, "max_tokens"),
        (server.request("POST", "/v1/completions", {"model": MODEL}), 400, "prompt"),
        (server.request("GET", "/v1/nothing"), 404, "No route"),
        (server.request("POST", "/health", {}), 404, "No route"),
    ]
    for (status, answer), want, words in cases:
        assert status == want and words in answer["error"]["message"], answer
        assert answer["error"]["type"] == "invalid_request_error"
    # Without a Content-Length the body cannot be read: 411, and the connection is closed.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 411 and resp.getheader("Connection") == "close"
    conn.close()
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    assert server.complete()[0] == 200
    assert server.proc.poll() is None


@pytest.mark.parametrize("xid", [79, 48, 31])
def test_arming_fails_the_next_request_with_500_and_exits_3(build, control, servers, xid):
    server = running(servers, build, control)
    assert server.complete()[0] == 200
    arm(control, xid=xid)
    code = shim_control.cuda_error(xid)
    status, answer = server.until_failing()
    assert status == 500, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "code"} and error["type"] == "server_error" and error["code"] == "cuda_error"
    # The first driver call of a request is cuCtxSetCurrent, unless the shim was armed during a request.
    assert re.match(r"^CUDA error %d \(%s\) in cu(CtxSetCurrent|MemAlloc_v2|MemcpyHtoD_v2|MemcpyDtoH_v2|"
                    r"CtxSynchronize|MemFree_v2)$" % (code, CATALOG_NAMES[code]), error["message"]), error
    assert server.wait() == 3
    events = server.events()
    fatal = [e for e in events if e["event"] == "fatal"]
    assert len(fatal) == 1 and fatal[0]["code"] == code and fatal[0]["name"] == CATALOG_NAMES[code]
    assert events[-1]["event"] == "exit" and events[-1]["status"] == 3
    failed = [e for e in events if e["event"] == "request" and e["status"] == 500]
    assert len(failed) == 1 and failed[0]["code"] == code


def test_without_exit_on_fatal_the_server_stays_unhealthy(build, control, servers):
    server = running(servers, build, control, DEMO_EXIT_ON_FATAL=0)
    arm(control, xid=79)
    status, answer = server.until_failing()
    assert status == 500 and "CUDA_ERROR_NO_DEVICE" in answer["error"]["message"]
    status, health = server.request("GET", "/health")
    assert status == 503 and health["status"] == "unhealthy" and "CUDA error 100" in health["error"]
    # The context is lost: disarming does not bring the process back, a restart does.
    disarm(control)
    for _attempt in range(3):
        status, again = server.complete()
        assert status == 500 and again["error"] == answer["error"]
    assert server.request("GET", "/health")[0] == 503
    assert server.proc.poll() is None
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    events = server.events()
    assert [e["code"] for e in events if e["event"] == "fatal"] == [100]
    assert events[-1]["event"] == "stop" and events[-1]["healthy"] is False


def test_only_the_targeted_gpu_fails(build, control, servers):
    on_2 = running(servers, build, control, DEMO_CUDA_DEVICE=2)
    on_0 = running(servers, build, control, DEMO_CUDA_DEVICE=0)
    assert on_2.log[-1]["pci"] == "0000:75:00.0"
    arm(control, xid=79, gpu="0000:75:00.0")
    status, answer = on_2.until_failing()
    assert status == 500 and "CUDA error 100" in answer["error"]["message"]
    assert on_2.wait() == 3
    assert on_0.complete()[0] == 200 and on_0.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("how", ["control file", "environment"])
def test_a_server_armed_from_the_start_does_not_start(build, control, servers, how):
    if how == "control file":
        arm(control, xid=79)
        server = servers(build, control)
    else:
        server = servers(build, control, CUDA_FAULT_INJECTION_ENABLED=1, CUDA_XID_TYPE=48)
    record = server.started()
    code = 100 if how == "control file" else shim_control.cuda_error(48)
    assert record["event"] == "fatal" and record["phase"] == "start", server.log
    assert record["code"] == code and record["function"] == "cuInit"
    assert record["error"] == "CUDA error %d (%s) in cuInit" % (code, CATALOG_NAMES[code])
    assert server.wait() == 3
    assert not [e for e in server.events() if e["event"] == "start"]

    # Disarmed, the same server starts.
    disarm(control)
    assert running(servers, build, control).complete()[0] == 200


def test_the_copy_check_catches_bytes_that_do_not_come_back(build, control, servers):
    # The stand-in driver counts copies but moves no bytes: exactly what the check is for.
    server = running(servers, build, control, preload=False, DEMO_VERIFY_COPY=1)
    status, answer = server.complete()
    assert status == 500
    assert answer["error"]["message"] == ("CUDA error 214 (CUDA_ERROR_ECC_UNCORRECTABLE) in cuMemcpyDtoH_v2 "
                                          "(the bytes came back changed)")
    assert server.wait() == 3


def test_start_failures_and_a_clean_stop(build, control, servers, tmp_path):
    missing = servers(build, control, DEMO_LIBCUDA=str(tmp_path / "nowhere" / "libcuda.so.1"))
    record = missing.started()
    assert record["event"] == "fatal" and record["phase"] == "start" and record["code"] == 100
    assert record["function"] == "dlopen" and missing.wait() == 3
    assert record["error"].startswith("CUDA error 100 (CUDA_ERROR_NO_DEVICE) in dlopen(%s): " % (tmp_path / "nowhere" / "libcuda.so.1"))

    bad = servers(build, control, DEMO_PORT="eighty")
    record = bad.started()
    assert record["event"] == "fatal" and record["phase"] == "config" and "DEMO_PORT" in record["error"]
    assert bad.wait() == 2

    server = running(servers, build, control)
    taken = servers(build, control, DEMO_PORT=server.port)
    record = taken.started()
    assert record["event"] == "fatal" and record["phase"] == "listen" and taken.wait() == 2

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    events = server.events()
    assert [e["event"] for e in events[-2:]] == ["stopping", "stop"]
    assert events[-2]["signal"] == signal.SIGTERM and events[-1]["healthy"] is True
