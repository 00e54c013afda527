"""spec.batch as the apiserver and the operator read it: the schema's patterns (cron shape, URI
schemes per direction) and the operator's own model agree, and an operator-side error names the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slotkeeper.api import ModelEndpointSpec

from .cel_helpers import openapi_errors

MODEL = {"name": "credit", "uri": "file:///models/credit/model.joblib"}


def endpoint(job: dict) -> dict:
    return {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": "credit", "namespace": "ml"},
            "spec": {"model": MODEL, "batch": {"jobs": [{"name": "nightly", "input": "file:///in",
                                                         "output": "file:///out", **job}]}}}


ACCEPTED = [
    {"schedule": "0 2 * * *"}, {"schedule": "*/15 * * * MON-FRI"}, {"schedule": "@daily"}, {"schedule": "0 0 1 JAN ?"},
    {"schedule": "5,35 0-6/2 1-31 1-12 0-7"}, {"schedule": "59 23 31 dec sun"},
    {"input": "pvc://data/scoring/2026-11"}, {"input": "https://files.example.com/rows.csv"},
    {"input": "http://files/rows.jsonl"}, {"output": "pvc://results.claim/nightly"},
    {"maxFailedRows": 0, "maxFailedFraction": 0.5, "chunkRows": 1000, "keyColumn": "customer_id"},
    {"resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}, {"suspend": True, "backoffLimit": 0},
]
REFUSED = [
    ({"schedule": "0 2 * *"}, "schedule"), ({"schedule": "@often"}, "schedule"), ({"schedule": "0 2 * * * *"}, "schedule"),
    ({"schedule": "60 * * * *"}, "schedule"), ({"schedule": "0 24 * * *"}, "schedule"), ({"schedule": "0 0 0 * *"}, "schedule"),
    ({"schedule": "0 0 * 13 *"}, "schedule"), ({"schedule": "0 0 * * 8"}, "schedule"), ({"schedule": "*/0 * * * *"}, "schedule"),
    ({"schedule": "TZ=UTC 0 2 * * *"}, "schedule"),
    ({"input": "s3://bucket/rows.csv"}, "input"), ({"input": "pvc://data"}, "input"), ({"input": "/data/rows.csv"}, "input"),
    ({"output": "https://files.example.com/out"}, "output"), ({"output": "pvc:///out"}, "output"),
    ({"name": "Nightly"}, "name"), ({"name": "a-very-long-batch-job-name"}, "name"),
    ({"chunkRows": 0}, "chunkRows"), ({"maxFailedFraction": 1.5}, "maxFailedFraction"),
    ({"maxFailedRows": -1}, "maxFailedRows"), ({"backoffLimit": 21}, "backoffLimit"),
]


@pytest.mark.parametrize("job", ACCEPTED, ids=str)
def test_the_schema_and_the_operator_accept(job):
    assert openapi_errors(endpoint(job)) == []
    ModelEndpointSpec.model_validate(endpoint(job)["spec"])


@pytest.mark.parametrize(("job", "field"), REFUSED, ids=str)
def test_the_schema_and_the_operator_refuse_and_name_the_field(job, field):
    errors = openapi_errors(endpoint(job))
    assert errors and all(f"batch.jobs.0.{field}" in error for error in errors), errors
    with pytest.raises(ValidationError) as refused:
        ModelEndpointSpec.model_validate(endpoint(job)["spec"])
    assert refused.value.errors()[0]["loc"][:4] == ("batch", "jobs", 0, field)


def test_duplicate_names_are_refused_by_the_operator_too():
    spec = endpoint({})["spec"]
    spec["batch"]["jobs"].append(dict(spec["batch"]["jobs"][0]))
    with pytest.raises(ValidationError, match="batch job names are unique"):
        ModelEndpointSpec.model_validate(spec)
