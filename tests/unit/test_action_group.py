"""meta/runtime.yml: every module of this collection that talks to Kubernetes is in the action group
gpu_resilience.fault_injection.k8s, so that module_defaults set its connection options once (a module
left out would silently ignore the play's kubeconfig and context)."""
import glob
import os

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_every_kubernetes_module_is_in_the_k8s_action_group():
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as f:
        group = [entry for entry in yaml.safe_load(f)["action_groups"]["k8s"] if isinstance(entry, str)]
    kubernetes = []
    for path in sorted(glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))):
        with open(path) as f:
            if "kube.module(" in f.read():
                kubernetes.append(os.path.basename(path)[:-3])
    assert "drill_claim" in kubernetes and "drill_report" not in kubernetes
    assert sorted(group) == kubernetes
