"""Fleet policy: typed resources, a YAML loader with line numbers,
cross-resource validation, and bundles with canonical JSON and diffs.

Public API::

    from hub.policy import load_bundle, PolicyError, Bundle, diff
    bundle = load_bundle(["fleet_configs", "policies"])   # or raises PolicyError
"""

from hub.policy.bundle import Bundle, BundleDiff, diff
from hub.policy.errors import PolicyError, Problem
from hub.policy.loader import load_bundle, load_bundle_text

__all__ = ["Bundle", "BundleDiff", "PolicyError", "Problem", "diff", "load_bundle", "load_bundle_text"]
