# -*- coding: utf-8 -*-
# Copyright: contributors to gpu_resilience.fault_injection
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The in-cluster Kubernetes API client of the collection's node programs.

The fault agent (files/agent), the health agent and the sweeper (files/healthcheck) run on a stock
Python image with their code from a ConfigMap, so they cannot use the kubernetes package: this
file, shipped in each of their ConfigMaps beside them, is their one client. Python 3.8+ standard
library only; it opens no listening socket.

* JSON over HTTPS with the pod's service-account token, read from its file for every request
  (the kubelet rotates bound tokens, a cached one would expire) and the cluster CA;
* short requests share one kept-alive connection (a marking path stays one round trip); a request
  that finds the kept-alive connection closed by the server is sent once more on a new one: the
  server never read it. Any other failure is an ApiError, never a retry;
* a watch streams on a connection of its own, with a socket timeout that outlives the server's;
* every failure is an ApiError whose ``status`` is the HTTP status (0: no answer).
"""

import http.client
import json
import os
import ssl
import threading
import urllib.parse

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT = 30
PAGE_SIZE = 500
MAX_ERROR_TEXT = 300        # of a non-JSON error body kept in the message


class ApiError(Exception):
    """A Kubernetes API request that failed; ``status`` is the HTTP status (0: no response)."""

    def __init__(self, status, reason, message):
        super().__init__("%s %s: %s" % (status, reason, message))
        self.status = status
        self.reason = reason
        self.message = message


def error_from(status, data):
    """ApiError from an HTTP status and its body (a JSON Status, or anything else)."""
    try:
        body = json.loads(data.decode("utf-8"))
        return ApiError(status, body.get("reason") or "", body.get("message") or "")
    except (ValueError, AttributeError):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return ApiError(status, "", text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 3] + "...")


def url(path, query=None):
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


class KubeClient:
    """The API server at host:port, as the service account in sa_dir (token, ca.crt)."""

    def __init__(self, host, port, sa_dir, user_agent, timeout=DEFAULT_TIMEOUT):
        self.host = host
        self.port = int(port)
        self.token_path = os.path.join(sa_dir, "token")
        self.user_agent = user_agent
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=os.path.join(sa_dir, "ca.crt"))
        self.lock = threading.Lock()
        self.connection = None

    @classmethod
    def in_cluster(cls, user_agent, timeout=DEFAULT_TIMEOUT):
        """The client of a pod: KUBERNETES_SERVICE_HOST/PORT, and the service account directory
        (KUBERNETES_SERVICEACCOUNT_DIR overrides it, for programs run outside a container)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise ApiError(0, "NoCluster", "KUBERNETES_SERVICE_HOST is not set: not running in a cluster")
        return cls(host, os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
                   os.environ.get("KUBERNETES_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR, user_agent, timeout)

    def headers(self, content_type=None):
        with open(self.token_path, encoding="ascii") as handle:
            token = handle.read().strip()
        headers = {"Authorization": "Bearer " + token, "Accept": JSON, "User-Agent": self.user_agent}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def connect(self, timeout):
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    # --- requests -----------------------------------------------------------------------------

    def request(self, method, path, query=None, body=None, content_type=JSON):
        """One request; the decoded JSON answer, or ApiError."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = self.headers(content_type if body is not None else None)
        target = url(path, query)
        with self.lock:
            reused = self.connection is not None
            try:
                status, data = self._exchange(method, target, payload, headers)
            except (OSError, http.client.HTTPException) as e:
                if not reused:
                    raise ApiError(0, "ConnectionError", "%s %s: %s" % (method, path, e)) from e
                # The server closed the kept-alive connection while it was idle: it never read
                # this request, so sending it again on a new connection cannot apply it twice.
                try:
                    status, data = self._exchange(method, target, payload, headers)
                except (OSError, http.client.HTTPException) as again:
                    raise ApiError(0, "ConnectionError", "%s %s: %s" % (method, path, again)) from again
        if status >= 400:
            raise error_from(status, data)
        return json.loads(data.decode("utf-8")) if data else {}

    def _exchange(self, method, target, payload, headers):
        """(status, body) over the kept-alive connection, which is dropped on any error."""
        if self.connection is None:
            self.connection = self.connect(self.timeout)
        try:
            self.connection.request(method, target, body=payload, headers=headers)
            response = self.connection.getresponse()
            data = response.read()
        except Exception:
            self.connection.close()
            self.connection = None
            raise
        if response.will_close:
            self.connection.close()
            self.connection = None
        return response.status, data

    def list_all(self, path, query=None):
        """Every item of a list, page by page."""
        items, query = [], dict(query or {}, limit=PAGE_SIZE)
        while True:
            page = self.request("GET", path, query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query["continue"] = token

    def stream(self, path, query, timeout):
        """The JSON lines of a watch, on a connection of its own, until the server ends it."""
        connection = self.connect(timeout)
        try:
            connection.request("GET", url(path, query), headers=self.headers())
            response = connection.getresponse()
            if response.status >= 400:
                raise error_from(response.status, response.read())
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line.decode("utf-8"))
        except (OSError, http.client.HTTPException) as e:
            raise ApiError(0, "ConnectionError", "watch %s: %s" % (path, e)) from e
        finally:
            connection.close()

    def watch(self, path, query, timeout_seconds):
        """A watch of a collection from query's resourceVersion, with bookmarks; the socket timeout
        outlives the server's, so a connection that died silently still ends."""
        query = dict(query, watch="true", allowWatchBookmarks="true", timeoutSeconds=str(timeout_seconds))
        return self.stream(path, query, timeout_seconds + 30)
