"""What the reconciler does with the apiserver's refusals, with the answers a real apiserver gave
(tests/contract/recordings/): a spec no object can be built from is InvalidSpec with the cause kept
whole; a vanished endpoint ends its loop; anything else is retried."""

from __future__ import annotations

import json

import pytest
from slotkeeper.kube_api import ApiError

from slotkeeper.actions import ApplyDeployment
from slotkeeper.reconciler import EndpointGone, EndpointReconciler, ObservedSources, api_message

QUANTITY = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
# Record 15: create with an invalid quantity.
CREATE_400 = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400,
              "message": f'Deployment in version "v1" cannot be handled as a Deployment: {QUANTITY}'}
# Record 16: the same on a patch; the message quotes the whole object (here shortened, still > 120 chars).
EMBEDDED = json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "credit-blue"},
                       "spec": {"template": {"spec": {"containers": [{"name": "model", "env": [
                           {"name": "TOKEN", "value": "s3cr3t-value"}], "resources": {"requests": {"cpu": "lots"}}}]}}}})
PATCH_422 = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
             "message": f' "" is invalid: patch: Invalid value: {json.dumps(EMBEDDED)}: {QUANTITY}'}
# Record 20: a server-side apply whose body does not fit the schema (YAML read `y` as a boolean).
APPLY_500 = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500,
             "message": "failed to create typed patch object (/yaml; apps/v1, Kind=Deployment): errors:\n"
                        "  .metadata.labels.app: expected string, got &value.valueUnstructured{Value:true}"}
SPEC = {"model": {"name": "credit", "uri": "file:///m/model.joblib"}, "serving": {"replicas": 1}}
BODY = {"metadata": {"name": "credit", "namespace": "ml", "uid": "u1", "generation": 1}, "spec": SPEC}
NOTHING = ObservedSources(deployments=[], pods=[], services={})


def api_error(status: int, body: dict) -> ApiError:
    error = ApiError(status=status, reason=body.get("reason"))
    error.body = json.dumps(body)
    return error


class RefusingCluster:
    """The cluster layer, refusing every Deployment write with ``error``."""

    def __init__(self, error: ApiError | None = None, status_error: ApiError | None = None) -> None:
        self.error, self.status_error = error, status_error
        self.status_patches: list[dict] = []

    async def apply(self, namespace, endpoint, action, post_event) -> None:
        if isinstance(action, ApplyDeployment) and self.error is not None:
            raise self.error

    async def patch_status(self, namespace, name, patch) -> None:
        if self.status_error is not None:
            raise self.status_error
        self.status_patches.append(patch)


def degraded(patch: dict) -> dict:
    return next(c for c in patch["conditions"] if c["type"] == "Degraded")


def test_the_cause_is_kept_whole_and_the_echoed_object_is_elided():
    message = api_message(api_error(422, PATCH_422))
    assert message.endswith(QUANTITY)  # not cut at 400 characters
    assert "s3cr3t-value" not in message and "<object>" in message
    assert api_message(api_error(400, CREATE_400)) == CREATE_400["message"]


@pytest.mark.parametrize("status, body", [(400, CREATE_400), (422, PATCH_422), (500, APPLY_500)],
                         ids=["create-400", "patch-422", "apply-500"])
async def test_a_refused_object_marks_the_endpoint_degraded_with_the_cause(status, body):
    cluster, events = RefusingCluster(api_error(status, body)), []
    reconciler = EndpointReconciler(namespace="ml", name="credit", cluster=cluster,
                                    post_event=lambda **event: events.append(event))
    await reconciler.reconcile(BODY, NOTHING)

    (patch,) = cluster.status_patches
    assert patch["phase"] == "Degraded"
    condition = degraded(patch)
    assert condition["reason"] == "InvalidSpec" and api_message(api_error(status, body)) in condition["message"]
    assert [e["reason"] for e in events] == ["InvalidSpec"]


@pytest.mark.parametrize("status", [409, 429, 500, 503])
async def test_other_refusals_are_raised_for_a_retry(status):
    cluster = RefusingCluster(api_error(status, {"reason": "Whatever", "code": status}))
    reconciler = EndpointReconciler(namespace="ml", name="credit", cluster=cluster, post_event=lambda **_: None)
    with pytest.raises(ApiError):
        await reconciler.reconcile(BODY, NOTHING)
    assert cluster.status_patches == []


async def test_a_status_write_answered_404_means_the_endpoint_is_gone():
    gone = api_error(404, {"reason": "NotFound", "code": 404})
    reconciler = EndpointReconciler(namespace="ml", name="credit", cluster=RefusingCluster(status_error=gone),
                                    post_event=lambda **_: None)
    with pytest.raises(EndpointGone):
        await reconciler.reconcile(BODY, NOTHING)
