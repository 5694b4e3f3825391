# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checking a GPU workload from the outside: which pods count, what each one answers, and whether
the workload is serving (or failing) as a drill expects.

Everything here works on plain dicts (pods and workloads as the API returns them, probe settings as
the module receives them) so it is unit-tested without a cluster. The only I/O is send(), one HTTP
request with the standard library, kept here so the redirect and body-size rules are tested too.

The module workload_check feeds a PodTracker with the pods it lists and watches and with the
probe results it collects, and asks it after every round whether the expectation holds.

Expectations:

- ``serving``: at least ``min_pods`` pods in scope are Running and Ready, every one of them answers
  the probe as expected, and (with ``exclude_nodes``) no live pod is left on those nodes.
- ``failing``: among the pods in scope when the check started, ``any`` (or ``all``) have failed
  since: the probe failed, a container restarted, the pod stopped being Ready, or it went away.
  A failure is remembered: a drill wants to know that the fault broke the workload, even if a
  restart brings it back before the next round.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import http.client
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

KIND_API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
}
TEMPLATE_KINDS = ("Deployment", "StatefulSet")   # kinds whose newest pod template can be told apart
EXPECTS = ("serving", "failing")
FAILING_PODS = ("any", "all")
PROBE_TYPES = ("openai", "http", "none")
SCHEMES = ("http", "https")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

TEMPLATE_HASH_LABEL = "pod-template-hash"           # set by the Deployment controller
REVISION_HASH_LABEL = "controller-revision-hash"    # set by the StatefulSet and DaemonSet controllers
DEPLOYMENT_REVISION_ANNOTATION = "deployment.kubernetes.io/revision"

MAX_BODY = 64 * 1024      # bytes read of any response: enough for a completion, never a stream
EXCERPT_CHARS = 200
DEFAULT_PROMPT = "ping"
MAX_TOKENS = 4            # a probe, not a benchmark: the cheapest answer that proves inference runs
OPENAI_PATH = "/v1/completions"
OPENAI_MODELS_PATH = "/v1/models"
TERMINAL_PHASES = ("Succeeded", "Failed")
# A port name is an IANA_SVC_NAME: at most 15 lower-case letters, digits and dashes, with a letter.
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


class ProbeSpecError(Exception):
    """The options (or the workload's spec) make the check impossible; the message says what to fix."""


def utc(now=None):
    """RFC 3339 UTC with microseconds and a Z, like the other modules of the collection."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- options -------------------------------------------------------------------------------------

def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_port(port):
    """A probe port as the module got it: None, a number, or a container port name."""
    if port is None:
        return None
    if _is_int(port) or (isinstance(port, str) and port.strip().isdigit()):
        number = int(port)
        if not 1 <= number <= 65535:
            raise ProbeSpecError("probe.port %s is not a port number (1-65535)" % number)
        return number
    if isinstance(port, str) and PORT_NAME.match(port.strip()):
        return port.strip()
    raise ProbeSpecError("probe.port %r is neither a port number nor a container port name "
                         "(up to 15 lower-case letters, digits and dashes)" % (port,))


def normalize_probe(probe):
    """The probe settings with every default filled in, or ProbeSpecError for a bad combination."""
    probe = dict(probe or {})
    kind = probe.get("type") or "openai"
    if kind not in PROBE_TYPES:
        raise ProbeSpecError("probe.type must be one of %s, not %r" % (", ".join(PROBE_TYPES), kind))
    wrong = {
        "openai": ("method", "body", "expected_status", "expected_body_regex"),
        "http": ("model", "prompt", "models_path"),
        "none": ("method", "body", "expected_status", "expected_body_regex", "model", "prompt", "models_path",
                 "path", "url", "port", "headers"),
    }[kind]
    given = [k for k in wrong if probe.get(k) not in (None, [], {})]
    if given:
        raise ProbeSpecError("probe.%s %s no use with probe.type %s" % (
            ", probe.".join(given), "has" if len(given) == 1 else "have", kind))
    out = dict(
        type=kind,
        port=normalize_port(probe.get("port")),
        scheme=probe.get("scheme") or "http",
        headers=dict(probe.get("headers") or {}),
        timeout=float(probe["timeout"]) if probe.get("timeout") is not None else 5.0,
        validate_certs=probe.get("validate_certs") is not False,
        url=probe.get("url"),
        path=probe.get("path"),
        method=None, body=None, expected_status=None, expected_body_regex=None,
        model=probe.get("model"), prompt=None, models_path=None,
    )
    if probe.get("api_key"):
        if kind == "none":
            raise ProbeSpecError("probe.api_key has no use with probe.type none")
        if "\n" in probe["api_key"] or "\r" in probe["api_key"]:
            raise ProbeSpecError("probe.api_key must not contain line breaks")
        if any(k.lower() == "authorization" for k in out["headers"]):
            raise ProbeSpecError("give either probe.api_key or an Authorization header in probe.headers, not both")
        out["headers"]["Authorization"] = "Bearer " + probe["api_key"]
    if out["scheme"] not in SCHEMES:
        raise ProbeSpecError("probe.scheme must be http or https, not %r" % out["scheme"])
    if out["timeout"] <= 0:
        raise ProbeSpecError("probe.timeout must be more than 0 seconds")
    for key, value in out["headers"].items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ProbeSpecError("probe.headers[%r] must be a string" % key)
        if "\n" in str(key) + str(value) or "\r" in str(key) + str(value):
            raise ProbeSpecError("probe.headers[%r] must not contain line breaks" % key)
        out["headers"][key] = str(value)
    if kind == "openai":
        out["method"] = "POST"
        out["path"] = out["path"] or OPENAI_PATH
        out["models_path"] = probe.get("models_path") or OPENAI_MODELS_PATH
        out["prompt"] = probe.get("prompt") if probe.get("prompt") is not None else DEFAULT_PROMPT
        out["expected_status"] = [200]
    elif kind == "http":
        out["method"] = (probe.get("method") or "GET").upper()
        if out["method"] not in HTTP_METHODS:
            raise ProbeSpecError("probe.method must be one of %s, not %r" % (
                ", ".join(HTTP_METHODS), probe.get("method")))
        out["path"] = out["path"] or "/"
        out["body"] = probe.get("body")
        out["expected_status"] = list(probe.get("expected_status") or [200])
        for status in out["expected_status"]:
            if not _is_int(status) or not 100 <= status <= 599:
                raise ProbeSpecError("probe.expected_status must list HTTP status codes (100-599), got %r" % (status,))
        regex = probe.get("expected_body_regex")
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as e:
                raise ProbeSpecError("probe.expected_body_regex %r is not a valid regular expression: %s" % (regex, e))
            out["expected_body_regex"] = regex
    for key in ("path", "models_path"):
        if out[key] is not None and not out[key].startswith("/"):
            raise ProbeSpecError("probe.%s must start with / (got %r)" % (key, out[key]))
    if out["url"] is not None:
        parsed = urllib.parse.urlsplit(out["url"])
        if parsed.scheme not in SCHEMES or not parsed.hostname:
            raise ProbeSpecError("probe.url must be an http:// or https:// URL with a host (got %r)" % out["url"])
        if parsed.query or parsed.fragment:
            raise ProbeSpecError("probe.url is the base URL that probe.path is added to: leave out ?query and "
                                 "#fragment (got %r)" % out["url"])
        if probe.get("port") is not None:
            raise ProbeSpecError("probe.port has no use with probe.url (put the port in the URL)")
        if probe.get("scheme") not in (None, "http", parsed.scheme):
            raise ProbeSpecError("probe.scheme has no use with probe.url (the URL has its own)")
    return out


def check_params(params):
    """Combinations the argument spec cannot express; None when the options make sense.

    params: the module's options (expect, nodes, exclude_nodes, min_pods, failing_pods, kind,
    api_version, name, label_selector, template_current, wait_timeout, interval, probe).
    """
    expect = params.get("expect") or "serving"
    probe = params.get("probe") or {}
    url = probe.get("url")
    if params.get("name") is not None and not params["name"].strip():
        return "name must not be empty"
    if params.get("label_selector") is not None:
        if not params["label_selector"].strip():
            return "label_selector must not be empty"
        if params.get("template_current"):
            return "template_current needs a workload (kind and name), not label_selector"
    kind = params.get("kind") or "Deployment"
    if params.get("template_current") and kind not in TEMPLATE_KINDS:
        return "template_current works for %s only; a %s has no newest pod template to compare with" % (
            " and ".join(TEMPLATE_KINDS), kind)
    if params.get("wait_timeout") is not None and params["wait_timeout"] < 0:
        return "wait_timeout must be 0 (look once) or more seconds"
    if params.get("interval") is not None and not params["interval"] > 0:
        return "interval must be more than 0 seconds"
    if params.get("min_pods") is not None:
        if params["min_pods"] < 1:
            return "min_pods must be at least 1"
        if expect == "failing":
            return "min_pods applies to expect=serving; with expect=failing use failing_pods (any or all)"
    for key in ("nodes", "exclude_nodes"):
        value = params.get(key)
        if value is not None:
            if not value:
                return "%s must not be empty" % key
            if any(not isinstance(n, str) or not n.strip() for n in value):
                return "%s must list node names" % key
    if params.get("exclude_nodes") is not None and expect != "serving":
        return "exclude_nodes applies to expect=serving (the pods have left those nodes); with expect=failing " \
               "use nodes to say where the pods should fail"
    both = sorted(set(params.get("nodes") or []) & set(params.get("exclude_nodes") or []))
    if both:
        return "node%s %s cannot be both in nodes and in exclude_nodes" % ("s" if len(both) > 1 else "", ", ".join(both))
    if url and params.get("nodes"):
        return "probe.url answers for the whole workload, so pods on particular nodes cannot be told apart: " \
               "leave out nodes, or leave out probe.url to probe every pod on its own IP"
    try:
        normalize_probe(probe)
    except ProbeSpecError as e:
        return str(e)
    return None


# --- workloads -----------------------------------------------------------------------------------

def default_api_version(kind):
    return KIND_API_VERSIONS[kind]


def selector_string(selector, what):
    """A LabelSelector (matchLabels and matchExpressions) as a label selector string for list and watch."""
    selector = selector or {}
    parts = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        parts.append("%s=%s" % (key, value))
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key")
        operator = expression.get("operator")
        values = expression.get("values") or []
        if operator in ("In", "NotIn"):
            if not values:
                raise ProbeSpecError("%s: selector expression on %r with %s needs values" % (what, key, operator))
            parts.append("%s %s (%s)" % (key, "in" if operator == "In" else "notin", ",".join(values)))
        elif operator == "Exists":
            parts.append(key)
        elif operator == "DoesNotExist":
            parts.append("!" + key)
        else:
            raise ProbeSpecError("%s: unknown selector operator %r" % (what, operator))
    if not parts:
        raise ProbeSpecError("%s has no spec.selector, which would choose every pod in the namespace; "
                             "use label_selector instead" % what)
    return ",".join(parts)


def desired_replicas(kind, obj):
    """How many pods the workload wants running: the default of min_pods."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if kind == "DaemonSet":
        return int(status.get("desiredNumberScheduled") or 0)
    if kind == "Job":
        parallelism = spec.get("parallelism")
        parallelism = 1 if parallelism is None else int(parallelism)
        if spec.get("completions") is not None:
            left = int(spec["completions"]) - int(status.get("succeeded") or 0)
            return max(0, min(parallelism, left))
        return parallelism
    replicas = spec.get("replicas")
    return 1 if replicas is None else int(replicas)


def _revision(rs):
    try:
        return int(((rs.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_REVISION_ANNOTATION) or 0)
    except ValueError:
        return 0


def deployment_template(deployment, replicasets):
    """(pod-template-hash of the Deployment's newest ReplicaSet or None, every hash of its ReplicaSets).

    The newest ReplicaSet is the one the Deployment controller gave the highest revision; only
    ReplicaSets the Deployment controls count (another owner's may match the selector too).
    """
    uid = (deployment.get("metadata") or {}).get("uid")
    owned = []
    for rs in replicasets:
        refs = (rs.get("metadata") or {}).get("ownerReferences") or []
        if any(r.get("uid") == uid and r.get("controller") for r in refs):
            owned.append(rs)
    hashes = set()
    for rs in owned:
        value = ((rs.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_HASH_LABEL)
        if value:
            hashes.add(value)
    if not owned:
        return None, hashes
    newest = max(owned, key=lambda rs: (_revision(rs), (rs.get("metadata") or {}).get("creationTimestamp") or ""))
    return ((newest.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_HASH_LABEL), hashes


def statefulset_template(statefulset):
    """(controller-revision-hash of the StatefulSet's update revision, the revisions it names)."""
    status = statefulset.get("status") or {}
    current = status.get("updateRevision") or status.get("currentRevision")
    return current, set(v for v in (status.get("updateRevision"), status.get("currentRevision")) if v)


# --- pods ----------------------------------------------------------------------------------------

def pod_summary(pod):
    """What the check needs to know about a pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    labels = meta.get("labels") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [])
    return dict(
        name=meta.get("name"),
        uid=meta.get("uid") or meta.get("name"),
        node=spec.get("nodeName"),
        ip=status.get("podIP"),
        phase=status.get("phase") or "Pending",
        ready=ready and status.get("phase") == "Running",
        restarts=restarts,
        template_hash=labels.get(TEMPLATE_HASH_LABEL) or labels.get(REVISION_HASH_LABEL),
        terminating=bool(meta.get("deletionTimestamp")),
        containers=[dict(name=c.get("name"), ports=[dict(name=p.get("name"), port=p.get("containerPort"))
                                                    for p in c.get("ports") or []])
                    for c in spec.get("containers") or []],
    )


def resolve_port(summary, port):
    """The port number to probe on a pod: a number as given, a container port by name, or the first
    containerPort of the first container."""
    if _is_int(port):
        return port
    containers = summary.get("containers") or []
    if port is None:
        if containers and containers[0]["ports"] and containers[0]["ports"][0].get("port"):
            return int(containers[0]["ports"][0]["port"])
        raise ProbeSpecError("pod %s declares no containerPort on its first container (%s): set probe.port" % (
            summary["name"], containers[0]["name"] if containers else "none"))
    declared = []
    for container in containers:
        for p in container["ports"]:
            if p.get("name") == port and p.get("port"):
                return int(p["port"])
            if p.get("name"):
                declared.append("%s=%s" % (p["name"], p.get("port")))
    raise ProbeSpecError("no container of pod %s has a port named %r (named ports: %s): fix probe.port" % (
        summary["name"], port, ", ".join(declared) or "none"))


def base_url(scheme, ip, port):
    host = "[%s]" % ip if ":" in ip else ip
    return "%s://%s:%d" % (scheme, host, port)


# --- requests and responses ----------------------------------------------------------------------

def _join(base, path):
    return base.rstrip("/") + path


def models_request(probe, base):
    """GET of the OpenAI model list, to find a model name when probe.model is not given."""
    headers = dict(probe["headers"])
    headers.setdefault("Accept", "application/json")
    return dict(method="GET", url=_join(base, probe["models_path"]), headers=headers, body=None)


def probe_request(probe, base, model=None):
    """The probe request: the OpenAI completion (a chat completion when the path says so) or the
    configured HTTP request."""
    headers = dict(probe["headers"])
    url = _join(base, probe["path"])
    if probe["type"] == "openai":
        payload = {"model": model, "max_tokens": MAX_TOKENS}
        if probe["path"].rstrip("/").endswith("/chat/completions"):
            payload["messages"] = [{"role": "user", "content": probe["prompt"]}]
        else:
            payload["prompt"] = probe["prompt"]
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Accept", "application/json")
        return dict(method="POST", url=url, headers=headers, body=json.dumps(payload).encode("utf-8"))
    body = probe["body"]
    if body is not None and not isinstance(body, (str, bytes)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode("utf-8")
    return dict(method=probe["method"], url=url, headers=headers, body=body)


def _json(body, truncated):
    if truncated:
        return None, "the body is larger than %d KiB" % (MAX_BODY // 1024)
    try:
        return json.loads(body.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as e:
        return None, "the body is not JSON (%s)" % e


def model_from_list(status, body, truncated):
    """(first model id, error) from the answer to models_request."""
    if status != 200:
        return None, "HTTP %s" % status
    data, error = _json(body, truncated)
    if error:
        return None, error
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict) or not models[0].get("id"):
        return None, "no model in the list (expected a non-empty \"data\" list of objects with an \"id\"); set probe.model"
    return str(models[0]["id"]), None


def judge(probe, status, body, truncated):
    """None when the response is what the probe expects, else why not."""
    if probe["type"] == "openai":
        if status != 200:
            return "HTTP %s, expected 200" % status
        data, error = _json(body, truncated)
        if error:
            return error
        if not isinstance(data, dict):
            return "the body is not a JSON object"
        if "error" in data and "choices" not in data:
            detail = data["error"].get("message") if isinstance(data["error"], dict) else data["error"]
            return "the server answered with an error: %s" % str(detail)[:EXCERPT_CHARS]
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return "no choices in the completion (expected a non-empty \"choices\" list)"
        if not all(isinstance(c, dict) for c in choices):
            return "the choices are not objects"
        return None
    if status not in probe["expected_status"]:
        return "HTTP %s, expected %s" % (status, " or ".join(str(s) for s in probe["expected_status"]))
    regex = probe.get("expected_body_regex")
    if regex is not None:
        text = body.decode("utf-8", "replace")
        if not re.search(regex, text):
            return "the body does not match %r%s" % (regex, " (only the first 64 KiB were read)" if truncated else "")
    return None


def excerpt(body):
    if not body:
        return ""
    return body[:EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]


# --- sending -------------------------------------------------------------------------------------

class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects on the same scheme, host and port only: a probe must not be sent elsewhere
    (an inference endpoint redirecting to a login page is a failure, not a pass)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old = urllib.parse.urlsplit(req.full_url)
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if _origin(old) != _origin(new):
            fp.close()
            raise _RefusedRedirect("redirect (HTTP %s) to another host refused: %s" % (code, new.geturl()))
        return urllib.request.HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)


class _RefusedRedirect(Exception):
    pass


def _origin(parts):
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _read_capped(response):
    data = response.read(MAX_BODY + 1)
    return data[:MAX_BODY], len(data) > MAX_BODY


def _reason(error):
    """A short reason for a failed request (connection refused, timed out, TLS...)."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)) or isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ssl.SSLError):
        return "TLS: %s" % (getattr(reason, "reason", None) or reason)
    text = str(reason) or type(reason).__name__
    return text


def send(request, timeout, validate_certs=True, use_proxy=True):
    """Send one request; returns dict(status, body, truncated, elapsed, error).

    status is the HTTP status (an error status included) or None when no response came; error is
    set when no response came. Only the first MAX_BODY bytes of a body are read.
    """
    handlers = [_SameHostRedirects()]
    if not use_proxy:
        handlers.append(urllib.request.ProxyHandler({}))
    if request["url"].startswith("https:"):
        context = ssl.create_default_context()
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(request["url"], data=request["body"], headers=request["headers"],
                                 method=request["method"])
    started = time.monotonic()
    status = None
    body, truncated, error = b"", False, None
    try:
        with opener.open(req, timeout=timeout) as response:
            status = response.status
            body, truncated = _read_capped(response)
    except urllib.error.HTTPError as e:
        status = e.code
        try:
            body, truncated = _read_capped(e)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            e.close()
    except _RefusedRedirect as e:
        error = str(e)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        error = _reason(e)
        if error == "timed out":
            error = "timed out after %g s" % timeout
    return dict(status=status, body=body, truncated=truncated, error=error,
                elapsed=round(time.monotonic() - started, 4))


def probe_target(probe, base, model=None, use_proxy=True):
    """Probe one target (a pod's base URL or probe.url).

    Returns (result, model): result is the probe verdict dict(ok, status, elapsed, error, excerpt,
    url), model the OpenAI model used (looked up when not given) for the caller to keep.
    """
    elapsed = 0.0
    if probe["type"] == "openai" and not (probe["model"] or model):
        request = models_request(probe, base)
        answer = send(request, probe["timeout"], probe["validate_certs"], use_proxy)
        elapsed += answer["elapsed"]
        if answer["error"]:
            return _verdict(False, None, elapsed, "GET %s: %s" % (probe["models_path"], answer["error"]), b"",
                            request["url"]), None
        model, problem = model_from_list(answer["status"], answer["body"], answer["truncated"])
        if problem:
            return _verdict(False, answer["status"], elapsed, "GET %s: %s" % (probe["models_path"], problem),
                            answer["body"], request["url"]), None
    model = probe["model"] or model
    request = probe_request(probe, base, model)
    answer = send(request, probe["timeout"], probe["validate_certs"], use_proxy)
    elapsed += answer["elapsed"]
    if answer["error"]:
        return _verdict(False, None, elapsed, answer["error"], b"", request["url"]), model
    problem = judge(probe, answer["status"], answer["body"], answer["truncated"])
    return _verdict(problem is None, answer["status"], elapsed, problem, answer["body"], request["url"]), model


def _verdict(ok, status, elapsed, error, body, url):
    return dict(ok=ok, status=status, elapsed=round(elapsed, 4), error=error, excerpt=excerpt(body), url=url)


def describe_probe(probe):
    """One line for messages: what a pod must answer."""
    if probe["type"] == "none":
        return "Ready (no probe)"
    where = probe["url"] + probe["path"] if probe["url"] else probe["path"]
    if probe["type"] == "openai":
        return "an OpenAI completion (POST %s: HTTP 200 with choices)" % where
    text = "%s %s: HTTP %s" % (probe["method"], where, " or ".join(str(s) for s in probe["expected_status"]))
    if probe["expected_body_regex"] is not None:
        text += " with a body matching %r" % probe["expected_body_regex"]
    return text


def _brief_probe(result):
    if result is None:
        return "not probed"
    if result["ok"]:
        return "answers (HTTP %s in %.3f s)" % (result["status"], result["elapsed"])
    return "probe failed: %s" % (result["error"] or "HTTP %s" % result["status"])


# --- the pods of a workload over time ------------------------------------------------------------

class PodTracker:
    """The pods of one workload as the module saw them, their probe results, and the verdict.

    settings: expect, nodes, exclude_nodes, min_pods, failing_pods, template_current, probe
    (normalized). Times are seconds since the module started, passed in by the caller.
    """

    def __init__(self, settings):
        self.expect = settings["expect"]
        self.nodes = set(settings.get("nodes") or []) or None
        self.exclude = set(settings.get("exclude_nodes") or [])
        self.min_pods = settings.get("min_pods") or 1
        self.failing_pods = settings.get("failing_pods") or "any"
        self.template_current = bool(settings.get("template_current"))
        self.probe = settings["probe"]
        self.url = self.probe.get("url")
        self.pods = {}            # uid -> entry
        self.tracked = None       # expect=failing: uids of the pods in scope at the start
        self.current_hash = None
        self.known_hashes = set()
        self.url_probe = None
        self.url_failed = None    # expect=failing with probe.url: when and why it first failed
        self.url_model = None
        self.started = False      # start() was called: pods seen from now on appeared during the check

    # -- template

    def set_template(self, current, known):
        self.current_hash = current
        self.known_hashes = set(known or ())
        if current:
            self.known_hashes.add(current)

    def unknown_hashes(self):
        """Template hashes of live pods that the last look at the workload did not know (a rollout
        began): the caller looks at the workload again, then calls set_template."""
        if not self.template_current:
            return set()
        return set(e["template_hash"] for e in self.pods.values()
                   if self._live(e) and e["template_hash"] and e["template_hash"] not in self.known_hashes)

    # -- pods

    def observe(self, pod, at):
        summary = pod_summary(pod)
        entry = self.pods.get(summary["uid"])
        if entry is None:
            entry = dict(summary, baseline_restarts=summary["restarts"], gone=False, probe=None, failed=None,
                         model=None, first_seen=at, initial=not self.started)
            self.pods[summary["uid"]] = entry
        else:
            entry.update(summary)
            entry["gone"] = False
        self._note_failure(entry, at)

    def remove(self, pod, at):
        uid = (pod.get("metadata") or {}).get("uid") or (pod.get("metadata") or {}).get("name")
        entry = self.pods.get(uid)
        if entry is None:
            return
        entry["gone"] = True
        self._note_failure(entry, at)
        if not self._is_tracked(entry):
            del self.pods[uid]

    def relisted(self, pods, at):
        """A fresh list replaces what the watch said: pods not in it are gone."""
        seen = set()
        for pod in pods:
            self.observe(pod, at)
            seen.add(pod_summary(pod)["uid"])
        for uid, entry in list(self.pods.items()):
            if uid not in seen and not entry["gone"]:
                self.remove({"metadata": {"uid": uid}}, at)

    def start(self):
        """The first list is in: fix which pods a failing check is about. Returns the tracked names."""
        self.started = True
        if self.expect == "failing" and self.tracked is None:
            self.tracked = set(uid for uid, e in self.pods.items() if self._in_scope(e, for_failing=True))
            for uid in self.tracked:
                self._note_failure(self.pods[uid], self.pods[uid]["first_seen"])
        return sorted(self.pods[u]["name"] for u in self.tracked or ())

    def _live(self, entry):
        return not entry["gone"] and not entry["terminating"] and entry["phase"] not in TERMINAL_PHASES

    def _template_ok(self, entry):
        return not self.template_current or (self.current_hash is not None
                                             and entry["template_hash"] == self.current_hash)

    def _in_scope(self, entry, for_failing=False):
        if for_failing:
            # Pods being deleted when the check starts count: the fault may already have acted.
            alive = not entry["gone"] and entry["phase"] not in TERMINAL_PHASES
        else:
            alive = self._live(entry)
        return alive and self._template_ok(entry) and (self.nodes is None or entry["node"] in self.nodes) \
            and entry["node"] not in self.exclude

    def _is_tracked(self, entry):
        return self.tracked is not None and entry["uid"] in self.tracked

    def _serving_candidate(self, entry):
        return self._in_scope(entry) and entry["ready"] and bool(entry["ip"])

    def _note_failure(self, entry, at):
        """expect=failing: remember the first sign that a tracked pod failed."""
        if self.expect != "failing" or not self._is_tracked(entry) or entry["failed"]:
            return
        reason = None
        if entry["gone"]:
            reason = "gone (deleted)"
        elif entry["terminating"]:
            reason = "being deleted"
        elif entry["restarts"] > entry["baseline_restarts"]:
            reason = "restarted (restarts %d -> %d)" % (entry["baseline_restarts"], entry["restarts"])
        elif entry["phase"] != "Running":
            reason = "phase %s" % entry["phase"]
        elif not entry["ready"]:
            reason = "not Ready"
        elif entry["probe"] is not None and not entry["probe"]["ok"]:
            reason = _brief_probe(entry["probe"])
        if reason:
            entry["failed"] = dict(reason=reason, at=round(at, 3))

    # -- probing

    def targets(self):
        """The pods to probe this round (entries), by name."""
        if self.url or self.probe["type"] == "none":
            return []
        if self.expect == "serving":
            chosen = [e for e in self.pods.values() if self._serving_candidate(e)]
        else:
            chosen = [e for e in self.pods.values() if self._is_tracked(e) and not e["failed"] and self._live(e)
                      and e["ready"] and e["ip"]]
        return sorted(chosen, key=lambda e: e["name"])

    def wants_url_probe(self):
        return bool(self.url) and not (self.expect == "failing" and self.url_failed)

    def record_probe(self, uid, result, at, model=None):
        entry = self.pods.get(uid)
        if entry is None:
            return
        entry["probe"] = dict(result, at=round(at, 3))
        if model:
            entry["model"] = model
        self._note_failure(entry, at)

    def record_url_probe(self, result, at, model=None):
        self.url_probe = dict(result, at=round(at, 3))
        if model:
            self.url_model = model
        if self.expect == "failing" and not result["ok"] and not self.url_failed:
            self.url_failed = dict(reason=_brief_probe(result), at=round(at, 3))

    # -- verdict

    def blockers(self):
        """expect=serving with exclude_nodes: live pods still on those nodes."""
        return sorted((e for e in self.pods.values() if self._live(e) and e["node"] in self.exclude),
                      key=lambda e: e["name"])

    def _probe_ok(self, entry):
        return self.probe["type"] == "none" or bool(entry["probe"] and entry["probe"]["ok"])

    def evaluate(self):
        """dict(satisfied, counted, failing, needed, summary)."""
        if self.expect == "serving":
            ready = sorted((e for e in self.pods.values() if self._serving_candidate(e)), key=lambda e: e["name"])
            blockers = self.blockers()
            answered = bool(self.url_probe and self.url_probe["ok"])
            if self.url:
                counted = [e["name"] for e in ready]
                failing = []
                satisfied = answered and len(ready) >= self.min_pods and not blockers
            else:
                counted = [e["name"] for e in ready if self._probe_ok(e)]
                failing = [e["name"] for e in ready if not self._probe_ok(e)]
                satisfied = len(ready) >= self.min_pods and not failing and not blockers
            parts = ["%d of the %d pod(s) needed are Running and Ready" % (len(ready), self.min_pods)]
            if self.url:
                parts.append("the URL %s" % ("answers" if answered else "does not answer"))
            elif self.probe["type"] != "none":
                parts.append("%d of them answer" % len(counted))
            if blockers:
                parts.append("%d pod(s) still on excluded nodes (%s)" % (
                    len(blockers), ", ".join("%s on %s" % (e["name"], e["node"]) for e in blockers)))
            return dict(satisfied=satisfied, counted=counted, failing=failing, needed=self.min_pods,
                        summary="; ".join(parts))
        tracked = sorted((self.pods[u] for u in self.tracked or () if u in self.pods), key=lambda e: e["name"])
        failed = [e["name"] for e in tracked if e["failed"]]
        if self.url:
            satisfied = bool(self.url_failed)
            summary = "the URL %s" % ("failed" if self.url_failed else "still answers")
            return dict(satisfied=satisfied, counted=[e["name"] for e in tracked], failing=failed, needed=1,
                        summary=summary)
        needed = len(tracked) if self.failing_pods == "all" else 1
        satisfied = bool(tracked) and len(failed) >= needed
        return dict(satisfied=satisfied, counted=[e["name"] for e in tracked], failing=failed, needed=needed,
                    summary="%d of the %d tracked pod(s) failed, %d needed" % (len(failed), len(tracked), needed))

    def verdict(self, entry):
        """One pod's state in words, for results and messages."""
        if self.expect == "failing":
            if not self._is_tracked(entry):
                return "not tracked (%s)" % ("appeared after the check started" if not entry["initial"]
                                             else "not in scope")
            if entry["failed"]:
                return "failed: %s (at %.3f s)" % (entry["failed"]["reason"], entry["failed"]["at"])
            if self.probe["type"] == "none":
                return "still Ready"
            return "still serving: %s" % _brief_probe(entry["probe"])
        if entry["gone"]:
            return "gone"
        if entry["terminating"]:
            return "being deleted (not counted)"
        if entry["phase"] in TERMINAL_PHASES:
            return "phase %s (not counted)" % entry["phase"]
        if entry["node"] in self.exclude:
            return "on excluded node %s" % entry["node"]
        if self.nodes is not None and entry["node"] not in self.nodes:
            return "not on nodes (not counted)"
        if not self._template_ok(entry):
            return "old pod template %s (not counted; newest is %s)" % (entry["template_hash"], self.current_hash)
        if entry["phase"] != "Running":
            return "phase %s" % entry["phase"]
        if not entry["ready"]:
            return "not Ready"
        if not entry["ip"]:
            return "no pod IP yet"
        if self.url or self.probe["type"] == "none":
            return "Running and Ready"
        if entry["probe"] and entry["probe"]["ok"]:
            return "serving: %s" % _brief_probe(entry["probe"])
        return _brief_probe(entry["probe"])

    def pod_results(self):
        out = []
        for entry in sorted(self.pods.values(), key=lambda e: e["name"]):
            probe = entry["probe"]
            out.append(dict(
                name=entry["name"], node=entry["node"], ip=entry["ip"], phase=entry["phase"], ready=entry["ready"],
                restarts=entry["restarts"], template_hash=entry["template_hash"], terminating=entry["terminating"],
                gone=entry["gone"], verdict=self.verdict(entry), failed=entry["failed"],
                probe=None if probe is None else dict((k, probe.get(k)) for k in (
                    "ok", "status", "elapsed", "error", "excerpt", "url", "at")),
                model=entry["model"]))
        return out

    def describe_expectation(self, workload):
        """What was waited for, in words."""
        where = ""
        if self.nodes:
            where = " on %s" % ", ".join(sorted(self.nodes))
        if self.expect == "serving":
            text = "%s to be serving: at least %d pod(s)%s%s Running and Ready" % (
                workload, self.min_pods, where, " of the newest pod template" if self.template_current else "")
            if self.url:
                text += " and %s" % describe_probe(self.probe)
            elif self.probe["type"] != "none":
                text += ", each answering %s" % describe_probe(self.probe)
            if self.exclude:
                text += ", and no pod left on %s" % ", ".join(sorted(self.exclude))
            return text
        if self.url:
            return "%s to be failing: %s stops answering" % (workload, describe_probe(self.probe))
        return "%s to be failing: %s of its pods%s %s (probe fails, a container restarts, the pod is no longer " \
               "Ready or gone)" % (workload, "any" if self.failing_pods == "any" else "all",
                                   where, "fails" if self.failing_pods == "any" else "fail")

    def timeout_message(self, workload, wait_timeout):
        state = self.evaluate()
        pods = " | ".join("%s (%s, %s): %s" % (e["name"], e["node"] or "unscheduled", e["ip"] or "no IP", self.verdict(e))
                          for e in sorted(self.pods.values(), key=lambda e: e["name"]))
        url = ""
        if self.url:
            url = " URL %s: %s." % (self.url, _brief_probe(self.url_probe))
        if wait_timeout:
            head = "timed out after %gs waiting for %s" % (wait_timeout, self.describe_expectation(workload))
        else:
            head = "not satisfied (wait_timeout 0: looked once): expected %s" % self.describe_expectation(workload)
        return "%s; %s.%s Pods: %s" % (head, state["summary"], url, pods or "none")
