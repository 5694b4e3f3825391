"""workload_probe: options, pod selection, per-pod verdicts, expectations, requests and OpenAI answers.

The HTTP part (send, probe_target) runs against small servers on 127.0.0.1 started by the tests.
"""
import http.server
import json
import threading

import pytest

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import workload_probe as wp

# --- realistic objects ---------------------------------------------------------------------------


def pod(name, node="gpu-node-0", ip="127.128.1.7", phase="Running", ready=True, restarts=0, hash_="7c9d8b6f5d",
        deleting=False, ports=None, uid=None):
    meta = {"name": name, "namespace": "inference", "uid": uid or "uid-" + name,
            "labels": {"app": "vllm", "pod-template-hash": hash_}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-22T18:20:30Z"
    containers = [{"name": "vllm", "image": "vllm/vllm-openai:v0.9.2",
                   "ports": ports if ports is not None else [{"name": "http", "containerPort": 8000}]},
                  {"name": "metrics", "image": "exporter", "ports": [{"name": "metrics", "containerPort": 9400}]}]
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "containers": containers},
        "status": {"phase": phase, "podIP": ip,
                   "conditions": [{"type": "Initialized", "status": "True"},
                                  {"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": [{"name": "vllm", "restartCount": restarts},
                                         {"name": "metrics", "restartCount": 0}]},
    }


def ok(status=200, elapsed=0.01):
    return dict(ok=True, status=status, elapsed=elapsed, error=None, excerpt='{"choices":[]}', url="http://x")


def bad(status=503, error="HTTP 503, expected 200"):
    return dict(ok=False, status=status, elapsed=0.01, error=error, excerpt="", url="http://x")


def tracker(expect="serving", **settings):
    settings.setdefault("probe", wp.normalize_probe({}))
    return wp.PodTracker(dict(settings, expect=expect))


# --- options -------------------------------------------------------------------------------------

def test_ports_are_numbers_or_container_port_names():
    assert wp.normalize_port(None) is None
    assert wp.normalize_port(8000) == 8000
    assert wp.normalize_port("8000") == 8000
    assert wp.normalize_port("http") == "http"
    assert wp.normalize_port("grpc-web") == "grpc-web"
    for wrong in (0, 70000, "Http", "-http", "a" * 16, "80a!", True, 1.5):
        with pytest.raises(wp.ProbeSpecError, match="probe.port"):
            wp.normalize_port(wrong)
    with pytest.raises(wp.ProbeSpecError, match="not a port number"):
        wp.normalize_port("1234567")


def test_probe_defaults_per_type():
    openai = wp.normalize_probe({})
    assert openai["type"] == "openai" and openai["method"] == "POST" and openai["path"] == "/v1/completions"
    assert openai["models_path"] == "/v1/models" and openai["prompt"] == "ping" and openai["expected_status"] == [200]
    assert openai["timeout"] == 5.0 and openai["validate_certs"] is True and openai["scheme"] == "http"
    plain = wp.normalize_probe({"type": "http", "method": "post", "expected_status": [200, 204], "timeout": 1})
    assert plain["method"] == "POST" and plain["path"] == "/" and plain["expected_status"] == [200, 204]
    assert plain["timeout"] == 1.0 and plain["prompt"] is None
    assert wp.normalize_probe({"type": "http"})["method"] == "GET"
    none = wp.normalize_probe({"type": "none", "scheme": "http", "timeout": 5, "validate_certs": True})
    assert none["type"] == "none"
    # What ansible hands over: every suboption present, most of them None.
    spec = dict((k, None) for k in ("port", "path", "method", "body", "headers", "expected_status",
                                    "expected_body_regex", "model", "prompt", "models_path", "url"))
    spec.update(type="openai", scheme="http", timeout=5.0, validate_certs=True, use_proxy=True)
    assert wp.normalize_probe(spec)["path"] == "/v1/completions"


@pytest.mark.parametrize("probe, message", [
    ({"type": "openai", "expected_status": [204]}, "probe.expected_status has no use with probe.type openai"),
    ({"type": "http", "model": "m", "prompt": "p"}, "probe.model, probe.prompt have no use with probe.type http"),
    ({"type": "none", "path": "/x"}, "probe.path has no use with probe.type none"),
    ({"type": "none", "url": "http://x"}, "probe.url has no use with probe.type none"),
    ({"type": "grpc"}, "probe.type must be one of"),
    ({"type": "http", "method": "BREW"}, "probe.method must be one of"),
    ({"type": "http", "expected_status": [200, 999]}, "HTTP status codes"),
    ({"type": "http", "expected_body_regex": "("}, "not a valid regular expression"),
    ({"path": "v1/completions"}, "probe.path must start with /"),
    ({"models_path": "models"}, "probe.models_path must start with /"),
    ({"timeout": 0}, "probe.timeout must be more than 0"),
    ({"scheme": "grpc"}, "probe.scheme must be http or https"),
    ({"headers": {"X-Key": {"nested": 1}}}, r"probe.headers\['X-Key'\] must be a string"),
    ({"headers": {"X-Key": "a\r\nInjected: 1"}}, "must not contain line breaks"),
    ({"api_key": "k", "headers": {"authorization": "Bearer j"}}, "either probe.api_key or an Authorization header"),
    ({"type": "none", "api_key": "k"}, "probe.api_key has no use with probe.type none"),
    ({"api_key": "k\nX-Injected: 1"}, "probe.api_key must not contain line breaks"),
    ({"url": "ftp://x"}, "probe.url must be an http:// or https:// URL"),
    ({"url": "http://"}, "with a host"),
    ({"url": "http://x/?a=1"}, "leave out \\?query"),
    ({"url": "http://x", "port": 8000}, "probe.port has no use with probe.url"),
    ({"url": "http://x", "scheme": "https"}, "probe.scheme has no use with probe.url"),
])
def test_bad_probe_settings_are_named(probe, message):
    with pytest.raises(wp.ProbeSpecError, match=message):
        wp.normalize_probe(probe)


def params(**kw):
    out = dict(kind="Deployment", api_version=None, name="vllm", label_selector=None, namespace="inference",
               expect="serving", min_pods=None, failing_pods="any", nodes=None, exclude_nodes=None,
               template_current=False, wait_timeout=120, interval=0.25, probe={})
    out.update(kw)
    return out


@pytest.mark.parametrize("options, message", [
    (dict(min_pods=0), "min_pods must be at least 1"),
    (dict(min_pods=2, expect="failing"), "min_pods applies to expect=serving"),
    (dict(wait_timeout=-1), "wait_timeout must be 0"),
    (dict(interval=0), "interval must be more than 0"),
    (dict(nodes=[]), "nodes must not be empty"),
    (dict(exclude_nodes=[""]), "exclude_nodes must list node names"),
    (dict(exclude_nodes=["gpu-node-1"], expect="failing"), "exclude_nodes applies to expect=serving"),
    (dict(nodes=["gpu-node-1", "gpu-node-2"], exclude_nodes=["gpu-node-2", "gpu-node-1"]),
     "nodes gpu-node-1, gpu-node-2 cannot be both in nodes and in exclude_nodes"),
    (dict(nodes=["gpu-node-1"], probe={"url": "http://llm.example.com"}), "probe.url answers for the whole workload"),
    (dict(template_current=True, kind="DaemonSet"), "template_current works for Deployment and StatefulSet only"),
    (dict(template_current=True, name=None, label_selector="app=vllm"), "template_current needs a workload"),
    (dict(name=" "), "name must not be empty"),
    (dict(name=None, label_selector=" "), "label_selector must not be empty"),
    (dict(probe={"port": "Not A Name"}), "probe.port"),
])
def test_option_combinations(options, message):
    problem = wp.check_params(params(**options))
    assert problem is not None and message in problem, problem


def test_good_options_pass():
    assert wp.check_params(params()) is None
    assert wp.check_params(params(expect="failing", nodes=["gpu-node-1"], failing_pods="all")) is None
    assert wp.check_params(params(exclude_nodes=["gpu-node-1"], template_current=True, min_pods=3)) is None
    assert wp.check_params(params(name=None, label_selector="app=vllm", probe={"url": "https://llm"})) is None
    assert wp.check_params(params(wait_timeout=0, kind="StatefulSet", template_current=True)) is None


# --- workloads -----------------------------------------------------------------------------------

def test_selector_string_covers_labels_and_expressions():
    selector = {"matchLabels": {"app": "vllm", "tier": "gpu"},
                "matchExpressions": [{"key": "track", "operator": "In", "values": ["stable", "canary"]},
                                     {"key": "zone", "operator": "NotIn", "values": ["us-east-1e"]},
                                     {"key": "model", "operator": "Exists"},
                                     {"key": "debug", "operator": "DoesNotExist"}]}
    assert wp.selector_string(selector, "Deployment inference/vllm") == \
        "app=vllm,tier=gpu,track in (stable,canary),zone notin (us-east-1e),model,!debug"
    with pytest.raises(wp.ProbeSpecError, match="Deployment inference/vllm has no spec.selector"):
        wp.selector_string({}, "Deployment inference/vllm")
    with pytest.raises(wp.ProbeSpecError, match="unknown selector operator 'Gt'"):
        wp.selector_string({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, "x")
    with pytest.raises(wp.ProbeSpecError, match="needs values"):
        wp.selector_string({"matchExpressions": [{"key": "a", "operator": "In"}]}, "x")


def test_desired_replicas_per_kind():
    assert wp.desired_replicas("Deployment", {"spec": {"replicas": 3}}) == 3
    assert wp.desired_replicas("Deployment", {"spec": {}}) == 1
    assert wp.desired_replicas("StatefulSet", {"spec": {"replicas": 0}}) == 0
    assert wp.desired_replicas("ReplicaSet", {"spec": {"replicas": 2}}) == 2
    assert wp.desired_replicas("DaemonSet", {"spec": {}, "status": {"desiredNumberScheduled": 4}}) == 4
    assert wp.desired_replicas("DaemonSet", {"spec": {}}) == 0
    assert wp.desired_replicas("Job", {"spec": {"parallelism": 4, "completions": 10}, "status": {"succeeded": 8}}) == 2
    assert wp.desired_replicas("Job", {"spec": {"parallelism": 4}}) == 4
    assert wp.desired_replicas("Job", {"spec": {}}) == 1
    assert wp.desired_replicas("Job", {"spec": {"completions": 1}, "status": {"succeeded": 1}}) == 0


def replicaset(hash_, revision, owner="uid-dep", controller=True):
    return {"metadata": {"name": "vllm-" + hash_, "labels": {"app": "vllm", "pod-template-hash": hash_},
                         "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                         "ownerReferences": [{"kind": "Deployment", "name": "vllm", "uid": owner,
                                              "controller": controller}]}}


def test_newest_replicaset_by_revision_among_those_the_deployment_controls():
    deployment = {"metadata": {"name": "vllm", "uid": "uid-dep"}}
    sets = [replicaset("old111", 1), replicaset("new333", 10), replicaset("mid222", 9),
            replicaset("other99", 50, owner="uid-other"), replicaset("adopt00", 60, controller=False)]
    current, known = wp.deployment_template(deployment, sets)
    assert current == "new333" and known == {"old111", "new333", "mid222"}
    assert wp.deployment_template(deployment, []) == (None, set())
    assert wp.statefulset_template({"status": {"currentRevision": "db-5d8", "updateRevision": "db-7f9"}}) == \
        ("db-7f9", {"db-5d8", "db-7f9"})


# --- pods ----------------------------------------------------------------------------------------

def test_pod_summary():
    summary = wp.pod_summary(pod("vllm-a", restarts=2))
    assert summary["ready"] is True and summary["restarts"] == 2 and summary["template_hash"] == "7c9d8b6f5d"
    assert summary["terminating"] is False and summary["node"] == "gpu-node-0" and summary["ip"] == "127.128.1.7"
    # Ready only counts while Running (a Succeeded pod may keep a stale condition).
    assert wp.pod_summary(pod("vllm-b", phase="Succeeded"))["ready"] is False
    assert wp.pod_summary(pod("vllm-c", deleting=True))["terminating"] is True
    sts = pod("db-0")
    sts["metadata"]["labels"] = {"controller-revision-hash": "db-7f9"}
    assert wp.pod_summary(sts)["template_hash"] == "db-7f9"
    pending = {"metadata": {"name": "p", "uid": "u"}, "spec": {}, "status": {}}
    assert wp.pod_summary(pending)["phase"] == "Pending" and wp.pod_summary(pending)["ip"] is None


def test_resolve_port():
    summary = wp.pod_summary(pod("vllm-a"))
    assert wp.resolve_port(summary, None) == 8000
    assert wp.resolve_port(summary, "metrics") == 9400
    assert wp.resolve_port(summary, 8080) == 8080
    with pytest.raises(wp.ProbeSpecError, match=r"no container of pod vllm-a has a port named 'grpc' "
                                                r"\(named ports: http=8000, metrics=9400\): fix probe.port"):
        wp.resolve_port(summary, "grpc")
    with pytest.raises(wp.ProbeSpecError, match=r"pod vllm-b declares no containerPort on its first container "
                                                r"\(vllm\): set probe.port"):
        wp.resolve_port(wp.pod_summary(pod("vllm-b", ports=[])), None)
    assert wp.base_url("http", "127.128.0.1", 80) == "http://127.128.0.1:80"
    assert wp.base_url("https", "fd00::17", 8443) == "https://[fd00::17]:8443"


# --- requests and responses ----------------------------------------------------------------------

def test_openai_requests():
    probe = wp.normalize_probe({"headers": {"Authorization": "Bearer k"}})
    request = wp.probe_request(probe, "http://127.128.0.1:8000/", "llama-3-8b")
    assert request["method"] == "POST" and request["url"] == "http://127.128.0.1:8000/v1/completions"
    assert json.loads(request["body"]) == {"model": "llama-3-8b", "prompt": "ping", "max_tokens": 4}
    assert request["headers"] == {"Authorization": "Bearer k", "Content-Type": "application/json",
                                  "Accept": "application/json"}
    keyed = wp.probe_request(wp.normalize_probe({"api_key": "sk-1", "headers": {"Host": "llm"}}), "http://h:1", "m")
    assert keyed["headers"]["Authorization"] == "Bearer sk-1" and keyed["headers"]["Host"] == "llm"
    chat = wp.probe_request(wp.normalize_probe({"path": "/v1/chat/completions", "prompt": "hi"}), "http://h:1", "m")
    assert json.loads(chat["body"]) == {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    models = wp.models_request(probe, "https://llm.example.com/")
    assert models == {"method": "GET", "url": "https://llm.example.com/v1/models", "body": None,
                      "headers": {"Authorization": "Bearer k", "Accept": "application/json"}}


def test_http_requests():
    probe = wp.normalize_probe({"type": "http", "method": "POST", "path": "/generate", "body": {"inputs": "x"}})
    request = wp.probe_request(probe, "http://h:8080", None)
    assert request["url"] == "http://h:8080/generate" and json.loads(request["body"]) == {"inputs": "x"}
    assert request["headers"] == {"Content-Type": "application/json"}
    raw = wp.probe_request(wp.normalize_probe({"type": "http", "method": "PUT", "body": "text"}), "http://h:1", None)
    assert raw["body"] == b"text" and raw["headers"] == {}
    assert wp.probe_request(wp.normalize_probe({"type": "http"}), "http://h:1", None)["body"] is None


def test_model_list():
    body = json.dumps({"object": "list", "data": [{"id": "llama-3-8b"}, {"id": "other"}]}).encode()
    assert wp.model_from_list(200, body, False) == ("llama-3-8b", None)
    assert wp.model_from_list(401, b"", False) == (None, "HTTP 401")
    assert wp.model_from_list(200, b'{"data": []}', False)[1].startswith("no model in the list")
    assert wp.model_from_list(200, b"<html>", False)[1].startswith("the body is not JSON")
    assert wp.model_from_list(200, body, True) == (None, "the body is larger than 64 KiB")


def test_openai_answers_are_judged():
    probe = wp.normalize_probe({})
    good = json.dumps({"id": "c", "choices": [{"text": " pong", "index": 0}]}).encode()
    assert wp.judge(probe, 200, good, False) is None
    assert wp.judge(probe, 503, good, False) == "HTTP 503, expected 200"
    assert wp.judge(probe, 200, b"<html>busy</html>", False).startswith("the body is not JSON")
    assert wp.judge(probe, 200, b'{"choices": []}', False) == \
        'no choices in the completion (expected a non-empty "choices" list)'
    assert wp.judge(probe, 200, b'{"choices": ["x"]}', False) == "the choices are not objects"
    assert wp.judge(probe, 200, b"[1]", False) == "the body is not a JSON object"
    assert wp.judge(probe, 200, b'{"error": {"message": "CUDA error: an illegal memory access"}}', False) == \
        "the server answered with an error: CUDA error: an illegal memory access"
    assert wp.judge(probe, 200, good, True) == "the body is larger than 64 KiB"


def test_http_answers_are_judged():
    probe = wp.normalize_probe({"type": "http", "expected_status": [200, 204], "expected_body_regex": "^ok\\b"})
    assert wp.judge(probe, 204, b"ok ready", False) is None
    assert wp.judge(probe, 500, b"ok", False) == "HTTP 500, expected 200 or 204"
    assert wp.judge(probe, 200, b"degraded", False) == "the body does not match '^ok\\\\b'"
    assert wp.judge(wp.normalize_probe({"type": "http"}), 200, b"", False) is None


def test_excerpt_is_at_most_200_characters():
    assert wp.excerpt(b"") == ""
    assert wp.excerpt(("\u00e9" * 500).encode()) == "\u00e9" * 200
    assert wp.excerpt(b"\xff\xfe abc") == "\ufffd\ufffd abc"


# --- sending, against real local servers ---------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    release = threading.Event()
    seen = []

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.seen.append(("GET", self.path, dict(self.headers)))
        port = self.server.server_address[1]
        if self.path == "/v1/models":
            self.answer(200, json.dumps({"data": [{"id": "tiny"}]}).encode())
        elif self.path == "/ok":
            self.answer(200, b"ok here")
        elif self.path == "/big":
            self.answer(200, b"x" * (wp.MAX_BODY + 10))
        elif self.path == "/same-host":
            self.answer(302, b"", [("Location", "/ok")])
        elif self.path == "/other-host":
            self.answer(302, b"", [("Location", "http://127.0.0.2:%d/ok" % port)])
        elif self.path == "/hang":
            self.release.wait(10)
            self.answer(200, b"late")
        else:
            self.answer(404, b"nothing here")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, body))
        if self.path == "/v1/completions" and body.get("model") == "tiny":
            self.answer(200, json.dumps({"choices": [{"text": " pong"}]}).encode())
        else:
            self.answer(503, json.dumps({"error": {"message": "overloaded"}}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    Handler.release.clear()
    del Handler.seen[:]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1]
    Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


def get(url, timeout=5.0):
    return wp.send(dict(method="GET", url=url, headers={}, body=None), timeout, use_proxy=False)


def test_send_reads_statuses_and_bodies(server):
    answer = get(server + "/ok")
    assert answer["status"] == 200 and answer["body"] == b"ok here" and answer["error"] is None
    assert answer["truncated"] is False and 0 <= answer["elapsed"] < 5
    missing = get(server + "/nope")
    assert missing["status"] == 404 and missing["body"] == b"nothing here" and missing["error"] is None
    big = get(server + "/big")
    assert big["truncated"] is True and len(big["body"]) == wp.MAX_BODY


def test_send_follows_redirects_on_the_same_host_only(server):
    same = get(server + "/same-host")
    assert same["status"] == 200 and same["body"] == b"ok here"
    other = get(server + "/other-host")
    assert other["status"] is None and other["error"].startswith("redirect (HTTP 302) to another host refused: "
                                                                 "http://127.0.0.2:")
    assert [s[1] for s in Handler.seen].count("/ok") == 1   # nothing was sent to the other host


def test_send_reports_timeouts_and_refused_connections(server):
    hung = get(server + "/hang", timeout=0.3)
    assert hung["status"] is None and hung["error"] == "timed out after 0.3 s"
    Handler.release.set()
    closed = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = closed.server_address[1]
    closed.server_close()
    refused = get("http://127.0.0.1:%d/" % port)
    assert refused["status"] is None and refused["error"] == "connection refused"


def test_probe_target_looks_the_model_up_once(server):
    probe = wp.normalize_probe({})
    result, model = wp.probe_target(probe, server, use_proxy=False)
    assert result["ok"] is True and result["status"] == 200 and model == "tiny"
    assert result["url"] == server + "/v1/completions" and result["excerpt"] == '{"choices": [{"text": " pong"}]}'
    assert [s[:2] for s in Handler.seen] == [("GET", "/v1/models"), ("POST", "/v1/completions")]
    again, model = wp.probe_target(probe, server, model, use_proxy=False)
    assert again["ok"] is True and len(Handler.seen) == 3
    assert Handler.seen[-1][2] == {"model": "tiny", "prompt": "ping", "max_tokens": 4}
    wrong, _model = wp.probe_target(wp.normalize_probe({"model": "other"}), server, use_proxy=False)
    assert wrong["ok"] is False and wrong["status"] == 503
    assert wrong["error"] == "HTTP 503, expected 200" and "overloaded" in wrong["excerpt"]
    no_models, model = wp.probe_target(wp.normalize_probe({"models_path": "/missing"}), server, use_proxy=False)
    assert no_models["ok"] is False and model is None and no_models["error"] == "GET /missing: HTTP 404"
    plain, _model = wp.probe_target(wp.normalize_probe({"type": "http", "path": "/ok",
                                                        "expected_body_regex": "here$"}), server, use_proxy=False)
    assert plain["ok"] is True and plain["excerpt"] == "ok here"


# --- the expectation -----------------------------------------------------------------------------

def test_serving_needs_min_pods_ready_and_every_one_answering():
    t = tracker(min_pods=2)
    t.observe(pod("vllm-a", ip="127.128.0.1"), 0.01)
    t.observe(pod("vllm-b", node="gpu-node-1", ip="127.128.0.2", ready=False), 0.01)
    t.start()
    assert [e["name"] for e in t.targets()] == ["vllm-a"]
    t.record_probe("uid-vllm-a", ok(), 0.1)
    state = t.evaluate()
    assert state["satisfied"] is False and state["counted"] == ["vllm-a"]
    assert state["summary"] == "1 of the 2 pod(s) needed are Running and Ready; 1 of them answer"
    t.observe(pod("vllm-b", node="gpu-node-1", ip="127.128.0.2"), 0.2)
    assert [e["name"] for e in t.targets()] == ["vllm-a", "vllm-b"]
    t.record_probe("uid-vllm-b", bad(), 0.3)
    state = t.evaluate()
    # Ready but not answering: the workload is not serving, even with min_pods met.
    assert state["satisfied"] is False and state["failing"] == ["vllm-b"]
    t.record_probe("uid-vllm-b", ok(), 0.5)
    assert t.evaluate()["satisfied"] is True and t.evaluate()["counted"] == ["vllm-a", "vllm-b"]


def test_serving_does_not_count_terminating_or_finished_pods():
    t = tracker(min_pods=1)
    t.observe(pod("vllm-old", deleting=True), 0.0)
    t.observe(pod("vllm-done", phase="Succeeded"), 0.0)
    t.start()
    assert t.targets() == [] and t.evaluate()["satisfied"] is False
    verdicts = dict((p["name"], p["verdict"]) for p in t.pod_results())
    assert verdicts == {"vllm-old": "being deleted (not counted)", "vllm-done": "phase Succeeded (not counted)"}


def test_serving_with_exclude_nodes_waits_until_no_pod_is_left_there():
    t = tracker(min_pods=1, exclude_nodes=["gpu-node-1"])
    t.observe(pod("vllm-a", ip="127.128.0.1"), 0.0)
    t.observe(pod("vllm-b", node="gpu-node-1", ip="127.128.0.2"), 0.0)
    t.start()
    assert [e["name"] for e in t.targets()] == ["vllm-a"]
    t.record_probe("uid-vllm-a", ok(), 0.1)
    state = t.evaluate()
    assert state["satisfied"] is False and state["counted"] == ["vllm-a"]
    assert state["summary"].endswith("1 pod(s) still on excluded nodes (vllm-b on gpu-node-1)")
    assert dict((p["name"], p["verdict"]) for p in t.pod_results())["vllm-b"] == "on excluded node gpu-node-1"
    # Being deleted is enough: a pod the endpoints controller no longer routes to does not block.
    t.observe(pod("vllm-b", node="gpu-node-1", ip="127.128.0.2", deleting=True), 1.0)
    assert t.evaluate()["satisfied"] is True
    t.remove(pod("vllm-b"), 1.5)
    assert [p["name"] for p in t.pod_results()] == ["vllm-a"]


def test_serving_on_given_nodes_only():
    t = tracker(min_pods=1, nodes=["gpu-node-1"])
    t.observe(pod("vllm-a", ip="127.128.0.1"), 0.0)
    t.start()
    assert t.targets() == [] and t.evaluate()["satisfied"] is False
    assert t.pod_results()[0]["verdict"] == "not on nodes (not counted)"


def test_template_current_counts_the_newest_template_and_asks_again_for_unknown_ones():
    t = tracker(min_pods=1, template_current=True)
    t.set_template("new333", {"old111", "new333"})
    t.observe(pod("vllm-old", hash_="old111", ip="127.128.0.1"), 0.0)
    t.start()
    assert t.targets() == [] and t.unknown_hashes() == set()
    assert t.pod_results()[0]["verdict"] == "old pod template old111 (not counted; newest is new333)"
    t.observe(pod("vllm-new", hash_="new333", ip="127.128.0.2"), 0.5)
    assert [e["name"] for e in t.targets()] == ["vllm-new"]
    t.observe(pod("vllm-newer", hash_="abc999", ip="127.128.0.3"), 0.6)
    assert t.unknown_hashes() == {"abc999"}
    t.set_template("abc999", {"old111", "new333", "abc999"})
    assert t.unknown_hashes() == set() and [e["name"] for e in t.targets()] == ["vllm-newer"]
    # Without the option, every template counts.
    plain = tracker(min_pods=2)
    plain.observe(pod("vllm-old", hash_="old111"), 0.0)
    plain.observe(pod("vllm-new", hash_="new333", uid="u2"), 0.0)
    assert len(plain.targets()) == 2 and plain.unknown_hashes() == set()


def test_serving_with_probe_none_is_readiness():
    t = tracker(min_pods=2, probe=wp.normalize_probe({"type": "none"}))
    t.observe(pod("vllm-a"), 0.0)
    t.observe(pod("vllm-b", ready=False), 0.0)
    t.start()
    assert t.targets() == []
    assert t.evaluate()["satisfied"] is False
    t.observe(pod("vllm-b"), 0.4)
    state = t.evaluate()
    assert state["satisfied"] is True and state["summary"] == "2 of the 2 pod(s) needed are Running and Ready"


def test_serving_through_a_url():
    t = tracker(min_pods=2, probe=wp.normalize_probe({"url": "https://llm.example.com"}))
    t.observe(pod("vllm-a"), 0.0)
    t.observe(pod("vllm-b"), 0.0)
    t.start()
    assert t.targets() == [] and t.wants_url_probe() is True
    assert t.evaluate()["satisfied"] is False
    t.record_url_probe(ok(), 0.2, "llama")
    assert t.url_model == "llama"
    state = t.evaluate()
    assert state["satisfied"] is True and state["counted"] == ["vllm-a", "vllm-b"]
    assert state["summary"] == "2 of the 2 pod(s) needed are Running and Ready; the URL answers"
    t.observe(pod("vllm-b", ready=False), 0.3)
    assert t.evaluate()["satisfied"] is False


def failing_tracker(failing_pods="any", **kw):
    t = tracker("failing", failing_pods=failing_pods, nodes=["gpu-node-1"], **kw)
    t.observe(pod("vllm-a", node="gpu-node-0", ip="127.128.0.1"), 0.01)
    t.observe(pod("vllm-b", node="gpu-node-1", ip="127.128.0.2"), 0.01)
    t.observe(pod("vllm-c", node="gpu-node-1", ip="127.128.0.3", restarts=1), 0.01)
    return t


def test_failing_tracks_the_pods_on_the_nodes_at_the_start_and_remembers_failures():
    t = failing_tracker()
    assert t.start() == ["vllm-b", "vllm-c"]
    assert [e["name"] for e in t.targets()] == ["vllm-b", "vllm-c"]
    t.record_probe("uid-vllm-b", ok(), 0.1)
    t.record_probe("uid-vllm-c", ok(), 0.1)
    assert t.evaluate()["satisfied"] is False
    t.record_probe("uid-vllm-b", bad(error="timed out after 5 s", status=None), 0.7)
    state = t.evaluate()
    assert state["satisfied"] is True and state["failing"] == ["vllm-b"] and state["counted"] == ["vllm-b", "vllm-c"]
    entry = dict((p["name"], p) for p in t.pod_results())["vllm-b"]
    assert entry["failed"] == {"reason": "probe failed: timed out after 5 s", "at": 0.7}
    assert entry["verdict"] == "failed: probe failed: timed out after 5 s (at 0.700 s)"
    # Failed pods are not probed again; a later good answer does not undo the failure.
    assert [e["name"] for e in t.targets()] == ["vllm-c"]
    t.record_probe("uid-vllm-b", ok(), 0.9)
    assert t.evaluate()["failing"] == ["vllm-b"]
    verdicts = dict((p["name"], p["verdict"]) for p in t.pod_results())
    assert verdicts["vllm-a"] == "not tracked (not in scope)"
    assert verdicts["vllm-c"] == "still serving: answers (HTTP 200 in 0.010 s)"


def test_failing_all_needs_every_tracked_pod_restarted_unready_or_gone():
    t = failing_tracker("all")
    t.start()
    t.observe(pod("vllm-c", node="gpu-node-1", ip="127.128.0.3", restarts=2), 0.5)   # restart count grew: 1 -> 2
    state = t.evaluate()
    assert state["satisfied"] is False and state["failing"] == ["vllm-c"] and state["needed"] == 2
    t.observe(pod("vllm-new", node="gpu-node-1", ip="127.128.0.9"), 0.6)  # a replacement is not tracked
    assert [p["verdict"] for p in t.pod_results() if p["name"] == "vllm-new"] == \
        ["not tracked (appeared after the check started)"]
    t.remove(pod("vllm-b", node="gpu-node-1"), 0.8)
    state = t.evaluate()
    assert state["satisfied"] is True and state["failing"] == ["vllm-b", "vllm-c"]
    reasons = dict((p["name"], (p["failed"] or {}).get("reason")) for p in t.pod_results())
    assert reasons["vllm-b"] == "gone (deleted)" and reasons["vllm-c"] == "restarted (restarts 1 -> 2)"
    assert [p["gone"] for p in t.pod_results() if p["name"] == "vllm-b"] == [True]
    # An untracked pod that goes away leaves the results.
    t.remove(pod("vllm-new"), 0.9)
    assert "vllm-new" not in [p["name"] for p in t.pod_results()]


def test_failing_counts_pods_already_broken_at_the_start():
    t = tracker("failing")
    t.observe(pod("vllm-a", deleting=True), 0.02)
    t.observe(pod("vllm-b", ready=False, uid="u-b"), 0.02)
    t.observe(pod("vllm-done", phase="Succeeded", uid="u-done"), 0.02)
    assert t.start() == ["vllm-a", "vllm-b"]
    state = t.evaluate()
    assert state["satisfied"] is True and state["failing"] == ["vllm-a", "vllm-b"]
    reasons = dict((p["name"], (p["failed"] or {}).get("reason")) for p in t.pod_results())
    assert reasons == {"vllm-a": "being deleted", "vllm-b": "not Ready", "vllm-done": None}


def test_a_relist_marks_missing_pods_gone():
    t = failing_tracker()
    t.start()
    t.relisted([pod("vllm-a", node="gpu-node-0", ip="127.128.0.1"),
                pod("vllm-c", node="gpu-node-1", ip="127.128.0.3", restarts=1)], 2.0)
    state = t.evaluate()
    assert state["satisfied"] is True and state["failing"] == ["vllm-b"]


def test_failing_through_a_url():
    t = tracker("failing", probe=wp.normalize_probe({"url": "http://llm"}))
    t.start()
    t.record_url_probe(ok(), 0.1)
    assert t.evaluate()["satisfied"] is False and t.wants_url_probe() is True
    t.record_url_probe(bad(), 0.4)
    state = t.evaluate()
    assert state["satisfied"] is True and state["summary"] == "the URL failed" and t.wants_url_probe() is False


def test_failing_with_nothing_tracked_is_never_satisfied():
    t = tracker("failing", nodes=["gpu-node-3"])
    t.observe(pod("vllm-a"), 0.0)
    assert t.start() == []
    assert t.evaluate()["satisfied"] is False


def test_timeout_messages_say_what_was_expected_and_each_pods_verdict():
    t = tracker(min_pods=2, exclude_nodes=["gpu-node-1"])
    t.observe(pod("vllm-a", ip="127.128.0.1"), 0.0)
    t.observe(pod("vllm-b", node="gpu-node-1", ip="127.128.0.2"), 0.0)
    t.start()
    t.record_probe("uid-vllm-a", bad(status=None, error="connection refused"), 0.1)
    msg = t.timeout_message("Deployment inference/vllm", 30)
    assert msg == (
        "timed out after 30s waiting for Deployment inference/vllm to be serving: at least 2 pod(s) Running and "
        "Ready, each answering an OpenAI completion (POST /v1/completions: HTTP 200 with choices), and no pod left "
        "on gpu-node-1; 1 of the 2 pod(s) needed are Running and Ready; 0 of them answer; 1 pod(s) still on "
        "excluded nodes (vllm-b on gpu-node-1). Pods: vllm-a (gpu-node-0, 127.128.0.1): probe failed: connection "
        "refused | vllm-b (gpu-node-1, 127.128.0.2): on excluded node gpu-node-1")
    once = t.timeout_message("Deployment inference/vllm", 0)
    assert once.startswith("not satisfied (wait_timeout 0: looked once): expected Deployment inference/vllm to be "
                           "serving")
    f = failing_tracker("all")
    f.start()
    assert f.timeout_message("StatefulSet inference/db", 60).startswith(
        "timed out after 60s waiting for StatefulSet inference/db to be failing: all of its pods on gpu-node-1 fail "
        "(probe fails, a container restarts, the pod is no longer Ready or gone); 0 of the 2 tracked pod(s) failed, "
        "2 needed. Pods: vllm-a (gpu-node-0, 127.128.0.1): not tracked (not in scope) | vllm-b (gpu-node-1, 127.128.0.2): "
        "still serving: not probed")
    u = tracker(probe=wp.normalize_probe({"type": "http", "url": "http://llm", "path": "/healthz",
                                          "expected_body_regex": "ok"}))
    u.start()
    assert u.timeout_message("the pods in namespace x matching 'app=y'", 5) == (
        "timed out after 5s waiting for the pods in namespace x matching 'app=y' to be serving: at least 1 pod(s) "
        "Running and Ready and GET http://llm/healthz: HTTP 200 with a body matching 'ok'; 0 of the 1 pod(s) needed "
        "are Running and Ready; the URL does not answer. URL http://llm: not probed. Pods: none")


def test_utc_format():
    import datetime
    moment = datetime.datetime(2026, 11, 22, 18, 20, 1, 123, tzinfo=datetime.timezone.utc)
    assert wp.utc(moment) == "2026-11-22T18:20:01.000123Z"
