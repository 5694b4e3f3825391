"""Make the collection importable as ansible_collections.gpu_resilience.fault_injection.

tools/collection-tree.sh links build/collections/ansible_collections/gpu_resilience/fault_injection
to the repository; the same link is made here when pytest runs without it.
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TREE = os.path.join(ROOT, "build", "collections")
LINK = os.path.join(TREE, "ansible_collections", "gpu_resilience", "fault_injection")

if not os.path.exists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(ROOT, LINK)
if TREE not in sys.path:
    sys.path.insert(0, TREE)
