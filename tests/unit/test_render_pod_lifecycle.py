"""Pod template fields that only a real cluster shows the need for: an explicit service account
(the apiserver refills an omitted one from its deprecated twin), and a grace period that covers the
serving image's shutdown delay plus the drain."""

from __future__ import annotations

from slotkeeper.render import render_slot_deployment
from slotkeeper.revision import revision_of

from .world import make_spec

OWNER = {"metadata": {"name": "credit", "namespace": "ml", "uid": "uid-1"}}


def pod_spec(**serving):
    spec = make_spec(serving={"replicas": 2, **serving})
    return render_slot_deployment(OWNER, spec, "blue", revision_of(spec))["spec"]["template"]["spec"]


def env(pod: dict) -> dict[str, str]:
    return {var["name"]: var.get("value") for var in pod["containers"][0]["env"]}


def test_service_account_is_always_explicit_so_dropping_it_from_the_spec_takes_effect():
    assert pod_spec(serviceAccountName="model-reader")["serviceAccountName"] == "model-reader"
    assert pod_spec()["serviceAccountName"] == "default"


def test_default_grace_period_is_kubernetes_default_and_no_delay_env_is_set():
    pod = pod_spec()
    assert pod["terminationGracePeriodSeconds"] == 30  # the server's 5 s delay + 25 s drain
    assert "SLOTKEEPER_SHUTDOWN_DELAY_SECONDS" not in env(pod)


def test_a_longer_shutdown_delay_reaches_the_server_and_the_grace_period():
    pod = pod_spec(shutdownDelaySeconds=12)
    assert env(pod)["SLOTKEEPER_SHUTDOWN_DELAY_SECONDS"] == "12"
    assert pod["terminationGracePeriodSeconds"] == 37


def test_an_unset_shutdown_delay_keeps_the_revision_of_existing_endpoints():
    # The revision slotkeeper 0.1.0 gave this spec: an upgrade must not roll out every endpoint.
    assert revision_of(make_spec()) == "9c802ca3f2"
    assert revision_of(make_spec(serving={"replicas": 2, "shutdownDelaySeconds": 12})) != revision_of(make_spec())
