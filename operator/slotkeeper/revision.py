"""Revision identity: a stable hash of what is served and how.

Two specs with the same model and the same serving template are the same revision, whatever order
their keys were written in. ``serving.replicas``, ``serving.autoscaling`` and
``serving.disruptionBudget`` are left out on purpose: scaling an endpoint (by hand or by autoscaler) is
not a new revision and must not start a rollout (like a Deployment's ReplicaSet hash).

``auth`` takes part only when keys are on (mode and Secret name: the pods mount that Secret), so
every open endpoint keeps the revision it had before ``auth`` existed. The keys themselves never
do: a rotation is picked up by the running pods, without a rollout.
"""

from __future__ import annotations

import hashlib
import json
import weakref

from .api import ModelEndpointSpec

REVISION_LENGTH = 10
# The revision of each live spec object, computed once: the reconciler keeps one validated spec per
# generation and every pass asks. By object, weakly (an entry goes with its spec), not a
# cached_property on the model: model_copy() would carry that over to a changed copy.
_KNOWN: dict[int, tuple[weakref.ref, str]] = {}


def revision_of(spec: ModelEndpointSpec) -> str:
    key = id(spec)
    known = _KNOWN.get(key)
    if known is not None and known[0]() is spec:
        return known[1]
    revision = compute_revision(spec)
    _KNOWN[key] = (weakref.ref(spec, lambda _, key=key: _KNOWN.pop(key, None)), revision)
    return revision


def compute_revision(spec: ModelEndpointSpec) -> str:
    identity = {
        "model": spec.model.to_api(),
        "serving": spec.serving.model_copy(update={"replicas": 0, "autoscaling": None,
                                                   "disruption_budget": None}).to_api(),
    }
    if spec.auth is not None and spec.auth.mode == "key":
        identity["auth"] = spec.auth.to_api()
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]
