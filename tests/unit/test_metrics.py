"""The operator's metrics: each value after given observed statuses and accepted writes, read back
from the text exposition as Prometheus parses it."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from slotkeeper.actions import ApplyRoute, ScaleDeployment, SwitchTraffic
from slotkeeper.api import ModelEndpointStatus
from slotkeeper.kube_api import ApiError
from slotkeeper.metrics import OperatorMetrics, api_error_kind, parse_bind_address
from slotkeeper.reconciler import EndpointReconciler
from slotkeeper.render import LABEL_ENDPOINT, LABEL_SLOT

from .test_reconciler_api_errors import BODY, PATCH_422, RefusingCluster, api_error
from .test_reconciler_pass import NOTHING, RecordingCluster, body, reconciler
from .world import T0 as WORLD_T0

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
KEY = ("default", "credit")


def samples(metrics: OperatorMetrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: OperatorMetrics, sample: str, **labels: str) -> float | None:
    return samples(metrics).get((sample, frozenset(labels.items())))


def series(metrics: OperatorMetrics, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in samples(metrics) if sample == name]


def entry(revision: str, outcome: str, reason: str, time: datetime = T0) -> dict:
    return {"revision": revision, "outcome": outcome, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ")}


def reverted(history: list[dict], active: str = "blue", **extra) -> ModelEndpointStatus:
    return ModelEndpointStatus.model_validate({"phase": "RolledBack", "activeSlot": active, "stableRevision": "r1",
                                              "history": history, **extra})


def back_to(slot: str) -> SwitchTraffic:
    return SwitchTraffic(selector={LABEL_ENDPOINT: "credit", LABEL_SLOT: slot})


# ------------------------------------------------------------------------------------ endpoints


def test_endpoints_are_counted_by_the_phase_their_observed_status_shows():
    metrics = OperatorMetrics()
    metrics.observe_endpoint(("a", "one"), {"phase": "Healthy"}, monitored=False)
    metrics.observe_endpoint(("a", "two"), {"phase": "Healthy"}, monitored=False)
    metrics.observe_endpoint(("b", "one"), None, monitored=False)  # no status yet
    assert value(metrics, "slotkeeper_endpoints", phase="Healthy") == 2
    assert value(metrics, "slotkeeper_endpoints", phase="Pending") == 1
    assert value(metrics, "slotkeeper_endpoints", phase="RolledBack") == 0  # every phase, zero included

    metrics.observe_endpoint(("a", "two"), {"phase": "Progressing"}, monitored=False)
    assert value(metrics, "slotkeeper_endpoints", phase="Healthy") == 1
    assert value(metrics, "slotkeeper_endpoints", phase="Progressing") == 1


def test_traffic_weight_per_endpoint_and_slot_is_what_status_traffic_reports():
    metrics = OperatorMetrics()
    metrics.observe_endpoint(KEY, {"phase": "Progressing", "traffic": {"blue": 67, "green": 33}}, monitored=False)
    assert value(metrics, "slotkeeper_traffic_weight_ratio", namespace="default", name="credit", slot="blue") == 0.67
    assert value(metrics, "slotkeeper_traffic_weight_ratio", namespace="default", name="credit", slot="green") == 0.33
    metrics.observe_endpoint(KEY, {"phase": "Healthy", "traffic": {"blue": 0, "green": 100}}, monitored=False)
    assert value(metrics, "slotkeeper_traffic_weight_ratio", namespace="default", name="credit", slot="green") == 1


def test_rollout_start_is_exported_only_while_a_rollout_is_under_way():
    metrics = OperatorMetrics()
    rollout = {"revision": "r2", "slot": "green", "modelUri": "file:///m", "step": "Deploying",
               "startedAt": "2026-12-01T12:00:00Z", "stepStartedAt": "2026-12-01T12:00:00Z"}
    metrics.observe_endpoint(KEY, {"phase": "Progressing", "rollout": rollout}, monitored=False)
    assert value(metrics, "slotkeeper_rollout_started_timestamp_seconds", namespace="default",
                 name="credit") == T0.timestamp()
    metrics.observe_endpoint(KEY, {"phase": "Healthy"}, monitored=False)
    assert series(metrics, "slotkeeper_rollout_started_timestamp_seconds") == []


def test_an_invalid_observed_status_counts_as_pending_and_does_not_raise():
    metrics = OperatorMetrics()
    metrics.observe_endpoint(KEY, {"phase": "Sideways"}, monitored=False)
    assert value(metrics, "slotkeeper_endpoints", phase="Pending") == 1


# ------------------------------------------------------------------------------------- counters


def test_history_entries_are_counted_once_and_not_at_the_first_look():
    metrics = OperatorMetrics()
    old = [entry("r0", "Promoted", "FirstRevision")]
    metrics.observe_endpoint(KEY, {"phase": "Healthy", "history": old}, monitored=False)
    assert series(metrics, "slotkeeper_rollouts_total") == []  # the baseline: history from before this instance

    later = T0 + timedelta(minutes=1)
    history = [*old, entry("r1", "Promoted", "Validated", later), entry("r2", "RolledBack", "CheckFailed", later)]
    metrics.observe_endpoint(KEY, {"phase": "RolledBack", "history": history}, monitored=False)
    metrics.observe_endpoint(KEY, {"phase": "RolledBack", "history": history}, monitored=False)  # seen again
    assert value(metrics, "slotkeeper_rollouts_total", outcome="Promoted", reason="Validated") == 1
    assert value(metrics, "slotkeeper_rollouts_total", outcome="RolledBack", reason="CheckFailed") == 1
    assert value(metrics, "slotkeeper_rollouts_total", outcome="Promoted", reason="FirstRevision") is None

    # revisionHistoryLimit drops the oldest entry: nothing new to count.
    metrics.observe_endpoint(KEY, {"phase": "RolledBack", "history": history[1:]}, monitored=False)
    assert value(metrics, "slotkeeper_rollouts_total", outcome="Promoted", reason="Validated") == 1


def test_quality_gauge_episodes_and_finished_jobs():
    metrics = OperatorMetrics()
    metrics.observe_endpoint(("default", "plain"), {"phase": "Healthy"}, monitored=False)
    metrics.observe_endpoint(KEY, {"phase": "Healthy"}, monitored=True)
    assert series(metrics, "slotkeeper_quality_degraded") == [{"namespace": "default", "name": "credit"}]
    assert value(metrics, "slotkeeper_quality_degraded", namespace="default", name="credit") == 0

    degraded = {"type": "QualityDegraded", "status": "True", "reason": "CheckFailed",
                "lastTransitionTime": "2026-12-01T12:00:00Z"}
    episode = {"revision": "r1", "check": "accuracy", "startedAt": "2026-12-01T12:00:00Z"}
    job = {"name": "credit-retrain-r1-1", "revision": "r1", "created": True, "outcome": "Running"}
    status = {"phase": "Healthy", "conditions": [degraded], "monitor": {"episode": episode, "job": job}}
    metrics.observe_endpoint(KEY, status, monitored=True)
    metrics.observe_endpoint(KEY, status, monitored=True)
    assert value(metrics, "slotkeeper_quality_degraded", namespace="default", name="credit") == 1
    assert value(metrics, "slotkeeper_quality_episodes_total") == 1
    assert series(metrics, "slotkeeper_retraining_jobs_total") == []  # still running

    done = {**status, "monitor": {"episode": episode, "job": {**job, "outcome": "Succeeded"}}}
    metrics.observe_endpoint(KEY, done, monitored=True)
    metrics.observe_endpoint(KEY, done, monitored=True)
    assert value(metrics, "slotkeeper_retraining_jobs_total", outcome="Succeeded") == 1

    recovered = {"phase": "Healthy", "conditions": [{**degraded, "status": "False", "reason": "QualityRecovered"}],
                 "monitor": {"job": {**job, "outcome": "Succeeded"}}}
    metrics.observe_endpoint(KEY, recovered, monitored=True)
    assert value(metrics, "slotkeeper_quality_degraded", namespace="default", name="credit") == 0
    assert value(metrics, "slotkeeper_quality_episodes_total") == 1


# ------------------------------------------------------------------------------- revert latency


def test_revert_duration_runs_from_the_failing_verdict_to_the_switch_back_to_stable_once():
    metrics = OperatorMetrics()
    before = reverted([entry("r1", "Promoted", "FirstRevision"), entry("r2", "RolledBack", "CheckFailed")])
    metrics.observe_endpoint(KEY, before.to_api(), monitored=False)
    metrics.action_applied(KEY, before, back_to("blue"), T0 + timedelta(seconds=3))
    metrics.action_applied(KEY, before, back_to("blue"), T0 + timedelta(seconds=9))  # a repeat: not again
    assert value(metrics, "slotkeeper_revert_duration_seconds_count", reason="CheckFailed") == 1
    assert value(metrics, "slotkeeper_revert_duration_seconds_sum", reason="CheckFailed") == 3
    assert value(metrics, "slotkeeper_revert_duration_seconds_bucket", reason="CheckFailed", le="2.0") == 0
    assert value(metrics, "slotkeeper_revert_duration_seconds_bucket", reason="CheckFailed", le="5.0") == 1


def test_writes_that_do_not_put_traffic_back_on_stable_measure_nothing():
    metrics = OperatorMetrics()
    promoted = ModelEndpointStatus.model_validate({"phase": "Healthy", "activeSlot": "green",
                                                  "history": [entry("r2", "Promoted", "Validated")]})
    rolled_back = reverted([entry("r2", "RolledBack", "CheckFailed")])
    metrics.action_applied(KEY, promoted, back_to("green"), T0)  # a promotion's switch
    metrics.action_applied(KEY, rolled_back, back_to("green"), T0)  # not the stable slot
    metrics.action_applied(KEY, rolled_back, ScaleDeployment(slot="blue", replicas=2), T0)
    assert series(metrics, "slotkeeper_revert_duration_seconds_count") == []


def test_a_quality_revert_is_timed_from_the_start_of_its_episode():
    metrics = OperatorMetrics()
    history = [entry("r1", "Promoted", "FirstRevision"), entry("r2", "Promoted", "Validated"),
               entry("r2", "RolledBack", "QualityDegraded", T0 + timedelta(seconds=40))]
    before = reverted(history, monitor={"episode": {"revision": "r2", "check": "accuracy",
                                                    "startedAt": "2026-12-01T12:00:00Z"}})
    metrics.action_applied(KEY, before, back_to("blue"), T0 + timedelta(seconds=41))
    assert value(metrics, "slotkeeper_revert_duration_seconds_sum", reason="QualityDegraded") == 41


def test_a_route_revert_ends_when_the_route_gives_stable_all_traffic():
    metrics = OperatorMetrics()
    before = reverted([entry("r2", "RolledBack", "CheckFailed")])

    def route(blue: int, green: int) -> ApplyRoute:
        return ApplyRoute(body={"metadata": {"name": "credit"}, "spec": {"rules": [{"backendRefs": [
            {"name": "credit-blue", "weight": blue}, {"name": "credit-green", "weight": green}]}]}})
    metrics.action_applied(KEY, before, route(50, 50), T0 + timedelta(seconds=1))
    assert series(metrics, "slotkeeper_revert_duration_seconds_count") == []
    metrics.action_applied(KEY, before, route(100, 0), T0 + timedelta(seconds=2))
    assert value(metrics, "slotkeeper_revert_duration_seconds_count", reason="CheckFailed") == 1


# ------------------------------------------------------------------------ passes and API errors


@pytest.mark.parametrize(("error", "kind"), [
    (ApiError(status=409, reason="Conflict"), "Conflict"),
    (ApiError(status=422, reason="Unprocessable Entity"), "Invalid"),
    (ApiError(status=502, reason="Bad Gateway"), "ServerError"),
    (asyncio.TimeoutError(), "Unreachable"),
    (aiohttp.ClientConnectionError("refused"), "Unreachable"),
    (ConnectionRefusedError(), "Unreachable"),
    (ValueError("a bug"), "Other"),
])
def test_api_errors_have_a_bounded_kind(error, kind):
    assert api_error_kind(error) == kind


def test_passes_by_result_and_api_errors_by_kind():
    metrics = OperatorMetrics()
    assert value(metrics, "slotkeeper_reconcile_passes_total", result="error") == 0  # there before any error
    metrics.pass_finished()
    metrics.pass_finished()
    metrics.pass_finished(ApiError(status=409, reason="Conflict"))
    metrics.pass_finished(ValueError("a bug"))
    assert value(metrics, "slotkeeper_reconcile_passes_total", result="success") == 2
    assert value(metrics, "slotkeeper_reconcile_passes_total", result="error") == 2
    assert series(metrics, "slotkeeper_api_errors_total") == [{"kind": "Conflict"}]  # a bug is no API error


# ------------------------------------------------------------------------ leader, cardinality


def test_leader_gauge_follows_the_setter_and_instances_do_not_share_a_registry():
    first, second = OperatorMetrics(), OperatorMetrics()  # no duplicate-registration error
    first.set_leader(True)
    assert value(first, "slotkeeper_leader") == 1
    assert value(second, "slotkeeper_leader") == 0
    first.set_leader(False)
    assert value(first, "slotkeeper_leader") == 0


def test_watch_listed_gauge_per_resource():
    metrics = OperatorMetrics()
    metrics.set_watch_listed("pods", False)
    metrics.set_watch_listed("services", True)
    assert value(metrics, "slotkeeper_watch_listed", resource="pods") == 0
    assert value(metrics, "slotkeeper_watch_listed", resource="services") == 1
    metrics.set_watch_listed("pods", True)
    assert value(metrics, "slotkeeper_watch_listed", resource="pods") == 1


def test_series_of_fifty_endpoints_that_came_and_went_are_gone():
    metrics = OperatorMetrics()
    keys = [("default", f"model-{index}") for index in range(50)]
    for key in keys:
        metrics.observe_endpoint(key, {"phase": "Progressing", "traffic": {"blue": 50, "green": 50}}, monitored=True)
    assert len(series(metrics, "slotkeeper_traffic_weight_ratio")) == 100
    assert len(series(metrics, "slotkeeper_quality_degraded")) == 50
    for key in keys[1:]:
        metrics.forget(key)
    per_endpoint = [labels for name in ("slotkeeper_traffic_weight_ratio", "slotkeeper_quality_degraded",
                                        "slotkeeper_rollout_started_timestamp_seconds")
                    for labels in series(metrics, name)]
    assert {labels["name"] for labels in per_endpoint} == {"model-0"}
    assert value(metrics, "slotkeeper_endpoints", phase="Progressing") == 1
    # Label sets of the operator-wide metrics do not grow with endpoints either.
    assert all({label for label, _ in labels} <= {"phase", "outcome", "reason", "result", "kind", "le"}
               for (name, labels) in samples(metrics) if not name.startswith(("slotkeeper_traffic",
                                                                              "slotkeeper_quality_degraded",
                                                                              "slotkeeper_rollout_started")))


# ----------------------------------------------------------------------------------- the flag


@pytest.mark.parametrize(("text", "address"), [
    ("0", None), ("", None), (None, None),
    (":8081", ("0.0.0.0", 8081)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9000", ("::1", 9000)),
])
def test_bind_address_as_controller_runtime_spells_it(text, address):
    assert parse_bind_address(text) == address


@pytest.mark.parametrize("text", ["8081", "localhost:http", ":99999"])
def test_a_bind_address_without_a_port_is_refused(text):
    with pytest.raises(ValueError, match="metrics-bind-address"):
        parse_bind_address(text)


def test_every_metric_is_documented_in_the_readme_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Metrics"):readme.index("## Benchmarks")]
    documented = set(re.findall(r"^\| `(slotkeeper_[a-z_]+)` \|", table, flags=re.MULTILINE))
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in OperatorMetrics().registry.collect()}
    assert documented == exported


# ------------------------------------------------------------------------ wired into a pass


async def test_a_pass_reports_the_status_the_watch_shows_not_the_one_it_wrote():
    metrics = OperatorMetrics()
    loop, _ = reconciler(RecordingCluster(), metrics=metrics)
    await loop.reconcile(body(), NOTHING)
    await loop.reconcile(body(), NOTHING)  # the watch has not shown the status written yet
    assert loop.written_status["phase"] == "Progressing"
    assert value(metrics, "slotkeeper_endpoints", phase="Pending") == 1
    await loop.reconcile(body(status=loop.written_status), NOTHING)
    assert value(metrics, "slotkeeper_endpoints", phase="Progressing") == 1
    assert value(metrics, "slotkeeper_rollout_started_timestamp_seconds", namespace="ml", name="credit") == \
        WORLD_T0.timestamp()


async def test_an_object_the_api_refuses_counts_as_an_invalid_api_error():
    metrics = OperatorMetrics()
    loop = EndpointReconciler(namespace="ml", name="credit", cluster=RefusingCluster(api_error(422, PATCH_422)),
                              post_event=lambda **_: None, metrics=metrics)
    await loop.reconcile(BODY, NOTHING)
    assert value(metrics, "slotkeeper_api_errors_total", kind="Invalid") == 1


async def test_a_pass_on_a_body_whose_watched_status_was_dropped_counts_nothing_again():
    """The loop drops the watch's status after its own write (memory); that body is no news."""
    metrics = OperatorMetrics()
    loop, _ = reconciler(RecordingCluster(), metrics=metrics)
    await loop.reconcile(body(), NOTHING)
    await loop.reconcile(body(status=loop.written_status), NOTHING)
    dropped = {k: v for k, v in body(status=loop.written_status).items() if k != "status"}
    await loop.reconcile(dropped, NOTHING)
    assert value(metrics, "slotkeeper_endpoints", phase="Progressing") == 1
    assert value(metrics, "slotkeeper_endpoints", phase="Pending") == 0
