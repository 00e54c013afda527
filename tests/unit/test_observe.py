"""When a slot counts as ready: the Deployment controller must have seen the latest spec, and every
counter must describe the new pods only. Traffic is switched on this answer, so a "ready" that reads
stale or mixed counters sends users to pods of the wrong revision."""

from __future__ import annotations

from typing import Any

import pytest

from slotkeeper.actions import SwitchTraffic
from slotkeeper.observe import (AutoscalerSummary, DeploymentSummary, PodSummary, SlotObservation, observe_endpoint,
                                summarise_autoscaler, summarise_deployment, summarise_pod)
from slotkeeper.render import LABEL_REVISION, LABEL_SLOT

from .world import World

NEW_URI = "file:///models/credit/2/model.joblib"


def deployment(revision: str = "r2", replicas: int = 2, *, generation: int | None = None,
               observed_generation: int | None = None, status: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "credit-green", "labels": {LABEL_SLOT: "green", LABEL_REVISION: revision}},
        "spec": {"replicas": replicas,
                 "template": {"metadata": {"labels": {LABEL_SLOT: "green", LABEL_REVISION: revision}}}},
        "status": dict(status or {}),
    }
    if generation is not None:
        body["metadata"]["generation"] = generation
    if observed_generation is not None:
        body["status"]["observedGeneration"] = observed_generation
    return body


ALL_READY = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}


def ready(body: dict[str, Any], revision: str = "r2") -> bool:
    return SlotObservation(deployment=summarise_deployment(body)).fully_ready(revision)


# --------------------------------------------------------------------------- summarise_deployment


def test_summary_reads_spec_and_status_counters():
    summary = summarise_deployment(deployment(replicas=3, generation=4, observed_generation=4, status={
        "replicas": 4, "readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 3}))
    assert summary == DeploymentSummary(slot="green", revision="r2", replicas=3, ready_replicas=1,
                                        updated_replicas=2, available_replicas=3, status_replicas=4,
                                        generation_observed=True)


def test_summary_of_a_deployment_without_status_or_replicas():
    body = deployment()
    del body["status"]
    del body["spec"]["replicas"]
    summary = summarise_deployment(body)
    assert (summary.replicas, summary.ready_replicas, summary.updated_replicas, summary.available_replicas,
            summary.status_replicas) == (1, 0, 0, 0, 0)  # Kubernetes' default of one replica


def test_summary_takes_the_revision_of_the_pod_template_over_the_deployments_own_label():
    body = deployment(revision="new")
    body["metadata"]["labels"][LABEL_REVISION] = "old"
    assert summarise_deployment(body).revision == "new"
    del body["spec"]["template"]["metadata"]["labels"][LABEL_REVISION]
    assert summarise_deployment(body).revision == "old"


@pytest.mark.parametrize("generation, observed, seen", [
    (3, 2, False),     # the controller has not looked at the latest spec yet
    (3, None, False),  # ...nor at any spec
    (3, 3, True),
    (3, 4, True),
    (None, None, True),  # API doubles set no generation; a real apiserver always does
])
def test_generation_observed_compares_observed_generation_with_generation(generation, observed, seen):
    assert summarise_deployment(deployment(generation=generation, observed_generation=observed)) \
        .generation_observed is seen


# ------------------------------------------------------------------------------------ fully_ready


def test_counters_of_the_previous_spec_do_not_make_a_new_spec_ready():
    """A Deployment just given a new template: status still carries the old pods' counters, all
    "ready", because the controller has not observed generation 3 yet. Not ready: those are old pods."""
    stale = deployment(generation=3, observed_generation=2, status=ALL_READY)
    assert not ready(stale)
    assert ready(deployment(generation=3, observed_generation=3, status=ALL_READY))


def test_surplus_old_pods_still_running_keep_the_rollout_from_being_fully_ready():
    """Mid rolling update (maxSurge): both new pods are updated, available and ready, but an old pod
    is still there (status.replicas 3 > spec 2). The slot's Service would still send it traffic."""
    assert not ready(deployment(status={**ALL_READY, "replicas": 3}))
    assert ready(deployment(status={**ALL_READY, "replicas": 2}))


@pytest.mark.parametrize("short", ["readyReplicas", "updatedReplicas", "availableReplicas"])
def test_every_counter_must_reach_the_desired_replicas(short):
    assert not ready(deployment(status={**ALL_READY, short: 1}))
    assert ready(deployment(status={**ALL_READY, short: 3}))  # more than asked for is fine


def test_a_slot_of_another_revision_or_of_zero_replicas_or_without_deployment_is_not_ready():
    assert not ready(deployment(revision="r1", status=ALL_READY), revision="r2")
    assert not ready(deployment(replicas=0))
    assert not SlotObservation(deployment=None).fully_ready("r2")


def test_slot_observation_without_deployment_reports_nothing():
    slot = SlotObservation(deployment=None)
    assert (slot.revision, slot.replicas, slot.ready_replicas) == (None, 0, 0)
    summary = DeploymentSummary(slot="blue", revision="r1", replicas=3, ready_replicas=2)
    slot = SlotObservation(deployment=summary)
    assert (slot.revision, slot.replicas, slot.ready_replicas) == ("r1", 3, 2)


# ---------------------------------------------------------------------------------- the decision


def test_first_revision_is_not_selected_while_its_deployment_has_unobserved_spec():
    world = World()
    world.step()
    blue = world.deployments["blue"]
    blue["metadata"]["generation"] = 2
    blue["status"] = {**ALL_READY, "observedGeneration": 1}

    decision = world.step()

    assert world.selected_slot() == "none"
    assert world.status.stable_revision is None
    assert not [a for a in decision.actions if isinstance(a, SwitchTraffic)]

    blue["status"]["observedGeneration"] = 2
    world.step()
    assert world.selected_slot() == "blue"


def test_candidate_with_an_old_pod_left_over_gets_no_traffic():
    world = World()
    world.settle()
    world.change_spec(model={"name": "credit", "uri": NEW_URI})
    world.step()
    world.make_ready("green")
    world.deployments["green"]["status"]["replicas"] = 3  # a surplus old pod not gone yet

    world.step()
    world.step()

    assert world.selected_slot() == "blue"
    assert world.status.rollout.step == "Deploying"

    world.make_ready("green")
    world.step()
    assert world.status.rollout.step != "Deploying"


# --------------------------------------------------------------------------------- pods, endpoint


def pod(name: str = "credit-green-1", *, ready: bool = True, waiting: str | None = None,
        init_waiting: str | None = None, message: str | None = "back-off") -> dict[str, Any]:
    def statuses(reason):
        if reason is None:
            return [{"name": "c", "state": {"running": {}}}]
        waiting_state = {"reason": reason}
        if message is not None:
            waiting_state["message"] = message
        return [{"name": "c", "state": {"waiting": waiting_state}}]

    return {
        "metadata": {"name": name, "labels": {LABEL_SLOT: "green", LABEL_REVISION: "r2"}},
        "status": {"podIP": "10.0.0.7",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                                  {"type": "ContainersReady", "status": "True"}],
                   "containerStatuses": statuses(waiting), "initContainerStatuses": statuses(init_waiting)},
    }


def test_pod_summary_reads_ready_ip_and_labels():
    assert summarise_pod(pod()) == PodSummary(name="credit-green-1", slot="green", revision="r2", ready=True,
                                              ip="10.0.0.7", failure=None)
    assert summarise_pod(pod(ready=False)).ready is False


def test_a_pod_with_only_other_conditions_true_is_not_ready():
    body = pod()
    body["status"]["conditions"] = [{"type": "ContainersReady", "status": "True"},
                                    {"type": "Ready", "status": "Unknown"}]
    assert summarise_pod(body).ready is False


@pytest.mark.parametrize("where", ["containers", "init containers"])
def test_fail_fast_container_states_are_reported_with_reason_and_message(where):
    body = pod(waiting="CrashLoopBackOff") if where == "containers" else pod(init_waiting="ImagePullBackOff")
    expected = "CrashLoopBackOff: back-off" if where == "containers" else "ImagePullBackOff: back-off"
    assert summarise_pod(body).failure == expected


def test_a_fail_fast_state_without_message_is_just_its_reason():
    assert summarise_pod(pod(waiting="ErrImagePull", message=None)).failure == "ErrImagePull"


def test_waiting_states_that_heal_by_themselves_are_no_failure():
    assert summarise_pod(pod(waiting="ContainerCreating", ready=False)).failure is None
    assert summarise_pod(pod(waiting="PodInitializing", ready=False)).failure is None


def test_the_pod_failure_of_a_slot_names_the_pod_of_that_revision():
    failing = PodSummary(name="p-new", slot="green", revision="r2", ready=False, failure="CrashLoopBackOff: x")
    old = PodSummary(name="p-old", slot="green", revision="r1", ready=False, failure="ErrImagePull: y")
    slot = SlotObservation(deployment=None, pods=(old, failing))
    assert slot.pod_failure("r2") == "pod p-new: CrashLoopBackOff: x"
    assert slot.pod_failure("r3") is None


def test_observe_endpoint_groups_pods_by_slot():
    blue = DeploymentSummary(slot="blue", revision="r1", replicas=1)
    green = DeploymentSummary(slot="green", revision="r2", replicas=1)
    pods = [PodSummary(name="b", slot="blue", revision="r1", ready=True),
            PodSummary(name="g", slot="green", revision="r2", ready=True)]
    observed = observe_endpoint([blue, green], pods, {"a": "b"}, ["blue"])
    assert [p.name for p in observed.slot("blue").pods] == ["b"]
    assert [p.name for p in observed.slot("green").pods] == ["g"]
    assert observed.slot("blue").deployment == blue
    assert observed.slot("nope").deployment is None
    assert observed.endpoint_selector == {"a": "b"}
    assert observed.slot_services == frozenset({"blue"})


# ---------------------------------------------------------------- replicas ownership, autoscalers


def managed(*entries: tuple[str, str, dict[str, Any], str]) -> list[dict[str, Any]]:
    return [{"manager": manager, "operation": operation, "fieldsV1": fields, **({"subresource": sub} if sub else {})}
            for manager, operation, fields, sub in entries]


REPLICAS = {"f:spec": {"f:replicas": {}, "f:template": {}}}
TEMPLATE = {"f:spec": {"f:template": {}}}


@pytest.mark.parametrize(("entries", "applied"), [
    (managed(("slotkeeper", "Apply", REPLICAS, "")), True),  # an apply that named replicas: hand them over first
    (managed(("slotkeeper", "Apply", TEMPLATE, ""), ("slotkeeper", "Update", REPLICAS, "")), False),  # a merge patch's
    (managed(("slotkeeper", "Apply", TEMPLATE, ""), ("kube-controller-manager", "Update", REPLICAS, "scale")), False),
    (managed(("slotkeeper-handover", "Apply", REPLICAS, ""), ("slotkeeper", "Apply", TEMPLATE, "")), False),
    ([], False),
])
def test_whether_slotkeepers_apply_owns_the_replicas_comes_from_managed_fields(entries, applied):
    body = deployment()
    body["metadata"]["managedFields"] = entries
    assert summarise_deployment(body).replicas_applied is applied


def test_an_autoscaler_summary_says_what_was_applied_and_what_it_does():
    body = {"metadata": {"labels": {LABEL_SLOT: "blue"}, "annotations": {"slotkeeper.io/config": "abc"}},
            "spec": {"minReplicas": 2, "maxReplicas": 9}, "status": {"currentReplicas": 4, "desiredReplicas": 5}}
    assert summarise_autoscaler(body) == AutoscalerSummary(slot="blue", config="abc", min_replicas=2, max_replicas=9,
                                                           current_replicas=4, desired_replicas=5)
    observed = observe_endpoint([], [], None, [], autoscalers=[summarise_autoscaler(body)])
    assert observed.slot("blue").autoscaler.config == "abc" and observed.slot("blue").deployment is None


def test_a_failure_message_ending_in_a_capital_x_keeps_it():
    failure = summarise_pod(pod(waiting="ErrImagePull", message="pull access denied for registry/model-X")).failure
    assert failure == "ErrImagePull: pull access denied for registry/model-X"


def test_a_new_deployment_the_controller_has_not_looked_at_yet_is_not_observed():
    # A fresh Deployment: generation 1, no status.observedGeneration yet.
    assert summarise_deployment(deployment(generation=1)).generation_observed is False
    assert not ready(deployment(generation=1, status=ALL_READY))
