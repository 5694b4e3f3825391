"""Unit tests of files/common/kube_api.py, the in-cluster API client that the fault agent, the health
agent and the sweeper share (each ConfigMap ships it beside them).

The HTTPS connection is a fake that records each request and answers from a queue, or fails the
way a connection the server closed fails.
"""
import http.client
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("kube_api", ROOT / "files" / "common" / "kube_api.py")
kube_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kube_api)


class FakeResponse:
    def __init__(self, status, body=b"", lines=(), will_close=False):
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.lines = list(lines)
        self.will_close = will_close

    def read(self):
        return self.body

    def readline(self):
        return self.lines.pop(0) if self.lines else b""


class FakeConnection:
    """One HTTPS connection: answers (FakeResponse, or an exception raised at request time)."""

    def __init__(self, answers, timeout=None):
        self.answers = list(answers)
        self.timeout = timeout
        self.requests = []
        self.closed = False

    def request(self, method, url, body=None, headers=None):
        self.requests.append({"method": method, "url": url, "body": body, "headers": dict(headers or {})})
        if isinstance(self.answers[0], Exception):
            raise self.answers.pop(0)

    def getresponse(self):
        return self.answers.pop(0)

    def close(self):
        self.closed = True


@pytest.fixture
def sa_dir(tmp_path):
    (tmp_path / "token").write_text("token-1\n")
    (tmp_path / "ca.crt").write_text("")
    return tmp_path


@pytest.fixture
def make_client(sa_dir, monkeypatch):
    """A client whose connections are the given FakeConnections, in order."""
    monkeypatch.setattr(kube_api.ssl, "create_default_context", lambda cafile=None: object())

    def make(*connections):
        client = kube_api.KubeClient("127.0.0.1", 6443, str(sa_dir), "test-agent", timeout=7)
        queue = list(connections)

        def connect(timeout):
            connection = queue.pop(0)
            connection.timeout = timeout
            return connection
        client.connect = connect
        return client
    return make


def test_in_cluster_reads_the_pod_environment(sa_dir, monkeypatch):
    monkeypatch.setattr(kube_api.ssl, "create_default_context", lambda cafile=None: cafile)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv("KUBERNETES_SERVICEACCOUNT_DIR", str(sa_dir))
    client = kube_api.KubeClient.in_cluster("gpu-health-agent", 15)
    assert (client.host, client.port, client.timeout, client.user_agent) == ("127.0.0.1", 6443, 15, "gpu-health-agent")
    assert client.context == str(sa_dir / "ca.crt") and client.token_path == str(sa_dir / "token")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(kube_api.ApiError, match="not running in a cluster") as raised:
        kube_api.KubeClient.in_cluster("x")
    assert raised.value.status == 0


def test_requests_share_one_connection_and_reread_the_token(make_client, sa_dir):
    connection = FakeConnection([FakeResponse(200, {"kind": "Node"}), FakeResponse(200, b"")])
    client = make_client(connection)
    assert client.request("GET", "/api/v1/nodes/n1") == {"kind": "Node"}
    (sa_dir / "token").write_text("token-2")
    assert client.request("PATCH", "/api/v1/nodes/n1", {"fieldManager": "me"}, {"metadata": {}}, kube_api.MERGE_PATCH) == {}
    first, second = connection.requests
    assert first["method"] == "GET" and first["url"] == "/api/v1/nodes/n1" and first["body"] is None
    assert "Content-Type" not in first["headers"] and first["headers"]["Accept"] == "application/json"
    assert first["headers"]["Authorization"] == "Bearer token-1" and second["headers"]["Authorization"] == "Bearer token-2"
    assert first["headers"]["User-Agent"] == "test-agent"
    assert second["url"] == "/api/v1/nodes/n1?fieldManager=me" and json.loads(second["body"]) == {"metadata": {}}
    assert second["headers"]["Content-Type"] == "application/merge-patch+json"
    assert connection.timeout == 7 and not connection.closed


def test_a_closed_kept_alive_connection_is_retried_once_on_a_new_one(make_client):
    used = FakeConnection([FakeResponse(200, {"n": 1}), ConnectionResetError("closed by peer")])
    fresh = FakeConnection([FakeResponse(200, {"n": 2})])
    client = make_client(used, fresh)
    assert client.request("GET", "/a") == {"n": 1}
    assert client.request("POST", "/b", body={"x": 1}) == {"n": 2}
    assert used.closed and [r["url"] for r in fresh.requests] == ["/b"]


def test_a_fresh_connection_that_fails_is_an_error_not_a_retry(make_client):
    refused = FakeConnection([ConnectionRefusedError(111, "Connection refused")])
    client = make_client(refused)
    with pytest.raises(kube_api.ApiError, match="refused") as raised:
        client.request("POST", "/apis/batch/v1/namespaces/ns/jobs", body={"kind": "Job"})
    assert raised.value.status == 0 and raised.value.reason == "ConnectionError"
    assert len(refused.requests) == 1 and refused.closed


def test_the_retry_fails_too(make_client):
    used = FakeConnection([FakeResponse(200, {}), http.client.RemoteDisconnected("gone")])
    again = FakeConnection([OSError("no route")])
    client = make_client(used, again)
    client.request("GET", "/a")
    with pytest.raises(kube_api.ApiError, match="no route"):
        client.request("GET", "/a")
    assert client.connection is None


def test_status_errors_carry_reason_and_message(make_client):
    connection = FakeConnection([
        FakeResponse(409, {"kind": "Status", "reason": "Conflict", "message": "the object has been modified"}),
        FakeResponse(502, b"<html>" + b"x" * 400, will_close=True)])
    client = make_client(connection)
    with pytest.raises(kube_api.ApiError) as raised:
        client.request("PUT", "/x", body={})
    assert (raised.value.status, raised.value.reason, raised.value.message) == (409, "Conflict", "the object has been modified")
    with pytest.raises(kube_api.ApiError) as raised:
        client.request("GET", "/x")
    assert raised.value.status == 502 and raised.value.message.startswith("<html>") and len(raised.value.message) == 300
    assert client.connection is None      # the server said it closes the connection


def test_list_all_follows_continue_tokens(make_client):
    connection = FakeConnection([FakeResponse(200, {"items": [1, 2], "metadata": {"continue": "c1"}}),
                                 FakeResponse(200, {"items": [3], "metadata": {}})])
    client = make_client(connection)
    assert client.list_all("/api/v1/pods", {"fieldSelector": "spec.nodeName=n1"}) == [1, 2, 3]
    first, second = (r["url"] for r in connection.requests)
    assert "limit=500" in first and "continue" not in first and "fieldSelector=spec.nodeName%3Dn1" in first
    assert "continue=c1" in second


def test_watch_streams_json_lines_on_its_own_connection(make_client):
    lines = [b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}\n', b"\n",
             b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}\n']
    stream = FakeConnection([FakeResponse(200, b"", lines)])
    client = make_client(stream)
    events = list(client.watch("/api/v1/nodes", {"fieldSelector": "metadata.name=n1", "resourceVersion": "5"}, 60))
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    url = stream.requests[0]["url"]
    for part in ("watch=true", "allowWatchBookmarks=true", "resourceVersion=5", "timeoutSeconds=60",
                 "fieldSelector=metadata.name%3Dn1"):
        assert part in url
    assert stream.timeout == 90 and stream.closed and client.connection is None


def test_a_refused_watch_is_an_api_error(make_client):
    client = make_client(FakeConnection([FakeResponse(403, {"reason": "Forbidden", "message": "cannot watch"})]),
                         FakeConnection([ConnectionResetError("reset")]))
    with pytest.raises(kube_api.ApiError) as raised:
        list(client.stream("/api/v1/nodes", {}, 10))
    assert raised.value.status == 403
    with pytest.raises(kube_api.ApiError) as raised:
        list(client.stream("/api/v1/nodes", {}, 10))
    assert raised.value.status == 0


def test_standard_library_only_and_no_listening_socket():
    source = (ROOT / "files" / "common" / "kube_api.py").read_text()
    imports = {name.split(".", maxsplit=1)[0] for name in re.findall(r"^(?:import|from) ([\w.]+)", source, re.MULTILINE)}
    assert imports <= set(getattr(sys, "stdlib_module_names", imports))
    for forbidden in ("bind(", "listen(", "subprocess", "http.server"):
        assert forbidden not in source


@pytest.mark.parametrize("role,key", [("fault_injector_agent", "fault_injector_agent_code_files"),
                                      ("gpu_healthcheck", "gpu_healthcheck_code_files")])
def test_every_program_config_map_ships_the_client(role, key):
    text = (ROOT / "roles" / role / "vars" / "main.yml").read_text()
    block = text.split(key + ":", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^\s+kube_api\.py: .*/files/common/kube_api\.py\"$", block, re.MULTILINE), block
