"""What a pass computes once and reuses: the validated spec (per generation) and its revision (per spec object)."""

from __future__ import annotations

import asyncio
import gc

from slotkeeper import reconciler as reconciler_module
from slotkeeper import revision
from slotkeeper.api import ModelEndpointSpec

from .test_reconciler_pass import NEW_SPEC, NOTHING, SPEC, RecordingCluster, body, reconciler


def validations(monkeypatch) -> list[dict]:
    seen: list[dict] = []
    validate = ModelEndpointSpec.model_validate

    def counted(raw, *args, **kwargs):
        seen.append(raw)
        return validate(raw, *args, **kwargs)

    monkeypatch.setattr(reconciler_module.ModelEndpointSpec, "model_validate", counted)
    return seen


def test_the_spec_is_validated_again_only_when_its_generation_changes(monkeypatch):
    seen = validations(monkeypatch)
    cluster = RecordingCluster()
    endpoint, _ = reconciler(cluster)
    asyncio.run(endpoint.reconcile(body(SPEC, generation=1), NOTHING))
    asyncio.run(endpoint.reconcile(body(SPEC, generation=1), NOTHING))
    assert len(seen) == 1
    asyncio.run(endpoint.reconcile(body(NEW_SPEC, generation=2), NOTHING))
    assert len(seen) == 2 and seen[-1] == NEW_SPEC
    # The new generation's spec is what the pass decided from: its revision is in what it wrote.
    written = repr(cluster.status_patches[-1]) + repr(cluster.actions)
    assert revision.compute_revision(ModelEndpointSpec.model_validate(NEW_SPEC)) in written


def test_without_a_generation_every_pass_validates(monkeypatch):
    seen = validations(monkeypatch)
    endpoint, _ = reconciler()
    for spec in (SPEC, NEW_SPEC):
        asyncio.run(endpoint.reconcile(body(spec, generation=None), NOTHING))
    assert seen == [SPEC, NEW_SPEC]


def test_a_spec_objects_revision_is_computed_once_and_a_changed_copy_gets_its_own(monkeypatch):
    computed = []
    compute = revision.compute_revision
    monkeypatch.setattr(revision, "compute_revision", lambda spec: computed.append(spec) or compute(spec))
    spec = ModelEndpointSpec.model_validate(SPEC)
    first = revision.revision_of(spec)
    assert revision.revision_of(spec) == first and len(computed) == 1
    changed = spec.model_copy(update={"model": spec.model.model_copy(update={"uri": NEW_SPEC["model"]["uri"]})})
    assert revision.revision_of(changed) == compute(changed) != first
    assert revision.revision_of(ModelEndpointSpec.model_validate(SPEC)) == first  # equal specs, one revision


def test_a_revision_is_forgotten_with_its_spec():
    spec = ModelEndpointSpec.model_validate(NEW_SPEC)
    revision.revision_of(spec)
    key = id(spec)
    assert key in revision._KNOWN
    del spec
    gc.collect()
    assert key not in revision._KNOWN
