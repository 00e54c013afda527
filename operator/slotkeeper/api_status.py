"""The ModelEndpoint's status: what the operator reports, and its durable state (a restart resumes from it).

Part of the API's models (api.py offers these too); the CRD's status schema is rendered from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .api_base import ApiModel, Phase, Slot


class SlotStatus(ApiModel):
    revision: str | None = None
    replicas: int = Field(0, description="Desired: the slot Deployment's spec.replicas.")
    current_replicas: int = Field(0, description="Pods the slot's Deployment has now (status.replicas).")
    ready_replicas: int = 0
    autoscaled: bool = Field(False, description="A HorizontalPodAutoscaler drives this slot's replicas.")


class Condition(ApiModel):
    """A condition in the shape of metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str


class HistoryEntry(ApiModel):
    revision: str
    model_uri: str | None = None
    outcome: Literal["Promoted", "RolledBack", "Superseded"]
    reason: str
    message: str = ""
    time: str


class CheckStatus(ApiModel):
    name: str
    revision: str
    verdict: Literal["Pass", "Fail", "Inconclusive"]
    last_value: float | None = None
    consecutive_failures: int = 0
    consecutive_inconclusive: int = 0
    last_run_time: str
    message: str = ""


class MonitorEpisode(ApiModel):
    """A degradation episode: from the first failing verdict past failureLimit to the next Pass."""
    revision: str
    check: str
    started_at: str
    message: str = ""


class MonitorJobStatus(ApiModel):
    name: str
    revision: str
    created: bool = Field(False, description="The create was sent (a 409 then: made already); never sent again.")
    outcome: Literal["Pending", "Running", "Succeeded", "Failed", "Missing"] = "Pending"


class MonitorRevert(ApiModel):
    """A revert to the previous revision under way: its slot is scaled up, then takes traffic."""
    from_revision: str
    to_revision: str
    slot: Slot
    started_at: str


class MonitorStatus(ApiModel):
    revision: str | None = None
    checks: list[CheckStatus] = Field(default_factory=list)
    episode: MonitorEpisode | None = None
    job: MonitorJobStatus | None = None
    cooldown_until: str | None = None
    revert: MonitorRevert | None = None


class BatchRun(ApiModel):
    """One batch run (a Job), as observed: the revision it was pinned to and how it went."""
    job_name: str
    job: str | None = Field(None, description="The spec.batch.jobs entry; absent for an ad hoc run.")
    revision: str
    created: str
    start_time: str | None = None
    completion_time: str | None = None
    rows: int | None = None
    failed_rows: int | None = None
    outcome: Literal["Running", "Succeeded", "Failed", "Missing"] = "Running"
    reason: str | None = None


class BatchSchedule(ApiModel):
    """A CronJob the operator applied: which revision its job template pins, and the config hash."""
    name: str
    cron_job: str
    revision: str
    config: str


class BatchStatus(ApiModel):
    runs: list[BatchRun] = Field(default_factory=list, description="The most recent runs, oldest first.")
    schedules: list[BatchSchedule] = Field(default_factory=list)
    waiting: str | None = Field(None, description="Why a schedule has no CronJob yet.")


class Rollout(ApiModel):
    """The rollout under way: enough to resume it after a restart."""

    revision: str
    slot: Slot
    model_uri: str
    step: Literal["Deploying", "Validating", "Mirroring", "AwaitingPromotion", "Canary", "Analysing"]
    started_at: str
    step_started_at: str
    canary_step: int = 0
    validated: bool = False
    switched_at: str | None = None
    mirror_started_at: str | None = Field(
        None, description="When the route's parents accepted the mirror to the candidate (Gateway API).",
    )
    stable_replicas: int | None = Field(
        None, description="With autoscaling: the stable slot's size this rollout sizes by, kept from the moment "
                          "the stable slot may shrink (canary weights above 50) or traffic moves.",
    )


class ScaleDown(ApiModel):
    slot: Slot
    revision: str | None = None
    at: str


class ModelEndpointStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")  # tolerate kopf's own bookkeeping keys in status

    observed_generation: int | None = None
    phase: Phase = "Pending"
    active_slot: Slot | None = None
    stable_revision: str | None = None
    stable_model_uri: str | None = None
    candidate_revision: str | None = None
    candidate_slot: Slot | None = None
    rollout: Rollout | None = None
    failed_revision: str | None = None
    failed_generation: int | None = None
    scale_down: ScaleDown | None = None
    slots: dict[str, SlotStatus] = Field(default_factory=dict)
    traffic: dict[str, int] = Field(default_factory=dict)
    traffic_summary: str | None = None
    checks: list[CheckStatus] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    manual_pause: bool = Field(False, description="Paused by the `pause` action until `resume`.")
    handled_actions: dict[str, str] = Field(
        default_factory=dict, description="The last token of each manual-action annotation the operator handled.",
    )
    url: str | None = None
    monitor: MonitorStatus | None = Field(None, description="The quality monitor of the stable revision.")
    batch: BatchStatus | None = Field(None, description="Batch runs and schedules (spec.batch).")
