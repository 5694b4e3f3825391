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

import time

from ansible_collections.kubernetes.core.plugins.module_utils.args_common import AUTH_ARG_SPEC
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import get_api_client
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.core import AnsibleK8SModule
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.exceptions import CoreException

try:
    from kubernetes.client.rest import ApiException
    from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError
except ImportError:  # reported by AnsibleK8SModule's requires("kubernetes"); these keep imports working
    class ApiException(Exception):
        pass

    class DynamicApiError(ApiException):
        pass

    class NotFoundError(DynamicApiError):
        pass

    class ResourceNotFoundError(Exception):
        pass

AUTH_ARGS = AUTH_ARG_SPEC


class KubeError(Exception):
    """A Kubernetes call failed; the message names the object and what to do."""


def module(argument_spec, **kwargs):
    """An AnsibleK8SModule with kubernetes.core's auth options added to argument_spec."""
    spec = dict(AUTH_ARGS)
    spec.update(argument_spec)
    return AnsibleK8SModule(argument_spec=spec, **kwargs)


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
        except (ApiException, _Relist):
            items, version = list_objects(k8s, res, namespace, label_selector)
            latest = dict((o["metadata"]["name"], o) for o in items)
    return dict((n, latest[n]) for n in names)


def _all_done(latest, names, done):
    return all(n in latest and done(latest[n]) for n in names)


class _Relist(Exception):
    """The watch can no longer continue from its resourceVersion: list again."""
