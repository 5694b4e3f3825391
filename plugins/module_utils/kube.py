# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes access for this collection's modules, through kubernetes.core's client.

kubernetes.core builds the client from the module's auth options (and the K8S_AUTH_* environment
variables AWX sets) and turns check mode into server-side dry runs; this file adds the few things
our modules do on top: typed lookups that return None on 404, event-driven waits on watches, and
error messages that name the object.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import threading
import time

from ansible_collections.kubernetes.core.plugins.module_utils.args_common import AUTH_ARG_SPEC
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import get_api_client
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.core import AnsibleK8SModule
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.exceptions import CoreException

try:
    from kubernetes import watch as kube_watch
    from kubernetes.client.rest import ApiException
    from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError
    from urllib3.exceptions import HTTPError as TransportError
except ImportError:  # reported by AnsibleK8SModule's requires("kubernetes"); these keep imports working
    kube_watch = None

    class TransportError(Exception):
        pass

    class ApiException(Exception):
        pass

    class DynamicApiError(ApiException):
        pass

    class NotFoundError(DynamicApiError):
        pass

    class ResourceNotFoundError(Exception):
        pass

AUTH_ARGS = AUTH_ARG_SPEC
# Watch failures after which listing again is the cure (expired version, API server restarting).
RELIST_STATUSES = (None, 0, 410, 429, 500, 502, 503, 504)


class KubeError(Exception):
    """A Kubernetes call failed; the message names the object and what to do."""


def module(argument_spec, **kwargs):
    """An AnsibleK8SModule with kubernetes.core's auth options added to argument_spec."""
    spec = dict(AUTH_ARGS)
    spec.update(argument_spec)
    return AnsibleK8SModule(argument_spec=spec, **kwargs)


# Seconds the module spent blocked on watches, waiting for the cluster (its controllers, agents,
# detectors) to reach a state, returned so that a drill's own cost can be told apart
# from the time the cluster took (bench/drill.py). Returned as `waited_seconds`.
_WAITED = [0.0]


class Waiting(object):
    """Counts the time inside the with-block as waiting on the cluster."""

    def __enter__(self):
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info):
        _WAITED[0] += time.monotonic() - self.started
        return False


def waited():
    """Seconds counted by Waiting so far, rounded to the millisecond."""
    return round(_WAITED[0], 3)


def finish(mod, result, warnings=()):
    """Exit with result: the warnings shown, its diff only in diff mode, `waited_seconds` if it waited."""
    for warning in warnings:
        mod.warn(warning)
    if not mod._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    if _WAITED[0]:
        result.setdefault("waited_seconds", waited())
    mod.exit_json(**result)


def client(mod):
    try:
        return get_api_client(module=mod)
    except CoreException as e:
        raise KubeError("cannot reach the Kubernetes API: %s" % e)


def resource(k8s, api_version, kind, hint=None):
    """The API resource for kind, with a clear error when the cluster does not serve it."""
    try:
        return k8s.resource(kind, api_version)
    except ResourceNotFoundError:
        raise KubeError("the cluster does not serve %s/%s%s" % (api_version, kind, "; " + hint if hint else ""))


def describe(error):
    """The API server's own message for a failed call, without the HTTP dump."""
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    status = getattr(error, "status", None)
    message = getattr(error, "summary", None) and error.summary()
    if not message and body:
        message = body
    return "%s%s" % ("HTTP %s: " % status if status else "", message or error)


def get(k8s, res, name, namespace=None):
    """The object as a dict, or None if it does not exist."""
    try:
        return k8s.get(res, name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None
    except DynamicApiError as e:
        raise KubeError("reading %s %s%s failed: %s" % (res.kind, _ns(namespace), name, describe(e)))


def list_objects(k8s, res, namespace=None, label_selector=None):
    """(items as dicts, resourceVersion of the list)."""
    try:
        result = k8s.get(res, namespace=namespace, label_selector=label_selector).to_dict()
    except DynamicApiError as e:
        raise KubeError("listing %s in %s failed: %s" % (res.kind, namespace or "the cluster", describe(e)))
    return result.get("items") or [], result["metadata"].get("resourceVersion")


# Up to this many objects are read one by one (a GET each); more with one list of them all (a fleet
# drill's hundreds of nodes: one request instead of hundreds).
FEW = 5


def get_named(k8s, res, names, namespace=None):
    """{name: the object as a dict, or None where it does not exist} for each of names."""
    if len(names) > FEW:
        items, _version = list_objects(k8s, res, namespace)
        listed = dict((o["metadata"]["name"], o) for o in items)
        return dict((name, listed.get(name)) for name in names)
    return dict((name, get(k8s, res, name, namespace)) for name in names)


def _ns(namespace):
    return namespace + "/" if namespace else ""


def wait_for(k8s, res, namespace, label_selector, names, done, timeout):
    """Watch objects until done(obj) holds for every name in names; return {name: obj}.

    Event-driven: one list, then a watch from its resourceVersion (re-listing if the watch
    expires). Raises KubeError on timeout, naming the objects not yet done and their last state.
    """
    deadline = time.monotonic() + timeout
    latest = {}
    items, version = list_objects(k8s, res, namespace, label_selector)
    for obj in items:
        latest[obj["metadata"]["name"]] = obj
    while not _all_done(latest, names, done):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pending = sorted(n for n in names if n not in latest or not done(latest[n]))
            raise KubeError("timed out after %ss waiting for %s %s" % (
                timeout, res.kind, ", ".join("%s (status: %s)" % (n, (latest.get(n) or {}).get("status") or "none")
                                             for n in pending)))
        try:
            with Waiting():
                version = _follow(k8s, res, namespace, label_selector, names, done, version, remaining, latest)
        except (ApiException, _Relist):
            items, version = list_objects(k8s, res, namespace, label_selector)
            latest = dict((o["metadata"]["name"], o) for o in items)
    return dict((n, latest[n]) for n in names)


def _follow(k8s, res, namespace, label_selector, names, done, version, remaining, latest):
    """wait_for's watch: update latest from events until every name is done or the watch ends."""
    for event in k8s.client.watch(res, namespace=namespace, label_selector=label_selector,
                                  resource_version=version, timeout=max(1, int(remaining))):
        obj = event["raw_object"]
        if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
            raise _Relist()
        version = obj["metadata"].get("resourceVersion", version)
        if event["type"] == "DELETED":
            latest.pop(obj["metadata"]["name"], None)
            if obj["metadata"]["name"] in names:
                raise KubeError("%s %s%s was deleted while waiting for it"
                                % (res.kind, _ns(namespace), obj["metadata"]["name"]))
        else:
            latest[obj["metadata"]["name"]] = obj
        if _all_done(latest, names, done):
            break
    return version


def _all_done(latest, names, done):
    return all(n in latest and done(latest[n]) for n in names)


class _Relist(Exception):
    """The watch can no longer continue from its resourceVersion: list again."""


class WatchThread(threading.Thread):
    """Follows one kind of object in a thread and hands what it sees to a queue, until stop() or deadline.

    Puts (source, kind, payload, monotonic time, wall time) tuples: kind SYNC with the full list
    (after a first or repeated list), ADDED/MODIFIED/DELETED with the object, FAILED with a
    KubeError. A thread per watch lets a module wait on one queue for objects changing, retry
    times and probe rounds alike. With version, the watch starts there instead of with a list.
    """

    def __init__(self, k8s, res, events, source, deadline, namespace=None, field_selector=None,
                 label_selector=None, version=None):
        super(WatchThread, self).__init__(name="watch-" + source)
        self.daemon = True   # a watch blocked on the socket must not keep the module alive
        self.k8s = k8s
        self.res = res
        self.events = events
        self.source = source
        self.deadline = deadline
        self.namespace = namespace
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.version = version
        self.stopped = threading.Event()
        self.stream = None

    def stop(self):
        self.stopped.set()
        if self.stream is not None:
            self.stream.stop()

    def put(self, kind, payload):
        self.events.put((self.source, kind, payload, time.monotonic(), time.time()))

    def relist(self):
        try:
            result = self.k8s.get(self.res, namespace=self.namespace, field_selector=self.field_selector,
                                  label_selector=self.label_selector).to_dict()
        except DynamicApiError as e:
            raise KubeError("listing %s%s failed: %s" % (
                self.res.kind, " in namespace " + self.namespace if self.namespace else "", describe(e)))
        self.put("SYNC", result.get("items") or [])
        return result["metadata"].get("resourceVersion")

    def run(self):
        try:
            version = self.version if self.version is not None else self.relist()
            while not self.stopped.is_set() and time.monotonic() < self.deadline:
                try:
                    version = self.follow(version)
                except _Relist:
                    version = self.relist()
                except ApiException as e:
                    if getattr(e, "status", None) not in RELIST_STATUSES:
                        raise KubeError("watching %s failed: %s" % (self.res.kind, describe(e)))
                    version = self.relist()
                except TransportError:
                    version = self.relist()
        except Exception as e:  # pylint: disable=broad-except
            # Whatever stops a watch must reach the caller: a silently dead thread would turn into a
            # misleading timeout.
            self.put("FAILED", KubeError(str(e) if isinstance(e, KubeError) else "watching %s failed: %s" % (self.res.kind, e)))

    def follow(self, version):
        remaining = self.deadline - time.monotonic()
        self.stream = kube_watch.Watch()
        for event in self.k8s.client.watch(self.res, namespace=self.namespace, field_selector=self.field_selector,
                                           label_selector=self.label_selector, resource_version=version,
                                           timeout=max(1, int(math.ceil(remaining))), watcher=self.stream):
            if self.stopped.is_set():
                break
            obj = event["raw_object"]
            if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
                raise _Relist()
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if event["type"] != "BOOKMARK":
                self.put(event["type"], obj)
        return version
