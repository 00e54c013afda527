"""Endpoint keys in the pure core: the field's default, the revision, the rendered pod, the decision."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from slotkeeper.actions import ApplyDeployment, CreateKeysSecret
from slotkeeper.api import ModelEndpointSpec, keys_secret_name
from slotkeeper.render import KEYS_DIR, render_keys_secret, render_slot_deployment
from slotkeeper.revision import revision_of

from .world import World, make_spec

OWNER = {"metadata": {"name": "credit", "namespace": "ml", "uid": "uid-1"}}


def test_without_auth_an_endpoint_is_open_and_keeps_its_revision():
    open_spec = make_spec()
    assert open_spec.auth is None and keys_secret_name("credit", open_spec.auth) is None
    assert revision_of(make_spec(auth={"mode": "none"})) == revision_of(open_spec)


def test_turning_keys_on_is_a_new_revision_and_the_secret_name_is_part_of_it():
    keyed = make_spec(auth={"mode": "key"})
    assert revision_of(keyed) != revision_of(make_spec())
    assert revision_of(make_spec(auth={"mode": "key", "secretName": "mine"})) != revision_of(keyed)
    assert keys_secret_name("credit", keyed.auth) == "credit-keys"
    assert keys_secret_name("credit", make_spec(auth={"mode": "key", "secretName": "mine"}).auth) == "mine"


def test_a_secret_name_without_key_mode_is_refused():
    with pytest.raises(ValidationError, match="secretName needs mode: key"):
        ModelEndpointSpec.model_validate({"model": {"name": "m", "uri": "file:///m"},
                                          "auth": {"mode": "none", "secretName": "mine"}})


def test_a_keyed_pod_mounts_the_secret_read_only_and_no_key_is_in_the_deployment():
    body = render_slot_deployment(OWNER, make_spec(auth={"mode": "key"}), "blue", "r1", replicas=2)
    pod = body["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert volume["secret"] == {"secretName": "credit-keys", "defaultMode": 0o440, "optional": False}
    container = pod["containers"][0]
    assert {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True} in container["volumeMounts"]
    assert {"name": "SLOTKEEPER_KEYS_DIR", "value": KEYS_DIR} in container["env"]
    assert not any("valueFrom" in var for var in container["env"])  # never a key in the environment
    assert pod["securityContext"]["fsGroup"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]


def test_an_open_pod_is_rendered_as_before():
    pod = render_slot_deployment(OWNER, make_spec(), "blue", "r1")["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["cache", "tmp"] and "fsGroup" not in pod["securityContext"]
    assert "SLOTKEEPER_KEYS_DIR" not in json.dumps(pod)


def test_the_keys_secret_is_base64_data_owned_by_the_endpoint():
    body = render_keys_secret(OWNER, "credit-keys", {"primary": "p-key", "secondary": "s-key"})
    assert body["data"] == {"primary": "cC1rZXk=", "secondary": "cy1rZXk="} and "stringData" not in body
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "slotkeeper"


def test_the_decision_asks_for_the_keys_secret_before_the_first_keyed_pods_and_never_when_idle():
    world = World(spec=make_spec(auth={"mode": "key"}))
    actions = world.single_step().actions
    create = actions.index(CreateKeysSecret(name="credit-keys", owner_uid="uid-1"))
    assert create < next(i for i, a in enumerate(actions) if isinstance(a, ApplyDeployment))
    assert all(action != actions[create] for action in world.single_step().actions)
    world.make_ready("blue")
    world.step()
    assert world.status.phase == "Healthy"
    assert not any(isinstance(a, CreateKeysSecret) for a in world.step().actions)


def test_a_user_brought_secret_is_never_created_by_the_operator():
    world = World(spec=make_spec(auth={"mode": "key", "secretName": "mine"}))
    assert not any(isinstance(a, CreateKeysSecret) for a in world.single_step().actions)



def test_validation_requests_carry_the_key_in_the_header_that_reaches_the_pod():
    from slotkeeper.checks.access import Target
    from slotkeeper.checks.runner import with_key

    direct = with_key(Target("http://credit-green.ml.svc:80/v2/models/credit/infer"), "k-123")
    assert direct.headers == {"Authorization": "Bearer k-123"}
    # Through the apiserver proxy, Authorization is the operator's own (the apiserver consumes it).
    proxied = with_key(Target("https://api/proxy", headers={"Authorization": "Bearer sa-token"},
                              through_apiserver=True), "k-123")
    assert proxied.headers == {"Authorization": "Bearer sa-token", "X-Endpoint-Key": "k-123"}
    assert "k-123" not in repr(direct) + repr(proxied)
