"""The ModelEndpoint API: pydantic models for spec and status (the status's in api_status.py, a slot's
capacity in api_capacity.py).

These models are the one source of truth for the CRD (``slotkeeper crd`` renders
``crds/modelendpoints.slotkeeper.io.yaml`` from them). Field names are camelCase on the wire,
snake_case in Python. Rules JSON schema cannot express are CEL rules (``x-kubernetes-validations``),
attached with :func:`cel`, and mirrored by pydantic validators so the operator rejects the same
input when it runs against an apiserver that skipped them (e.g. an old CRD).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .api_base import FREE_FORM, ApiModel, cel
# A slot's capacity: resources, autoscaler, disruption budget (api_capacity.py).
from .api_capacity import Autoscaling, DisruptionBudget, Resources
# The status's models, imported from here by the rest of the operator and the CRD (api_status.py).
from .api_status import (BatchRun, BatchSchedule, BatchStatus, CheckStatus, Condition,  # noqa: F401
                         HistoryEntry, ModelEndpointStatus, MonitorEpisode, MonitorJobStatus, MonitorRevert,
                         MonitorStatus, Rollout, ScaleDown, SlotStatus)

GROUP = "slotkeeper.io"
VERSION = "v1alpha1"
KIND = "ModelEndpoint"
PLURAL = "modelendpoints"
SINGULAR = "modelendpoint"
SHORT_NAMES = ["mep"]
CATEGORIES = ["slotkeeper"]
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_SERVING_IMAGE = "ghcr.io/slotkeeper/serving:0.1.0"
DEFAULT_SERVING_IMAGE_ENV = "SLOTKEEPER_DEFAULT_SERVING_IMAGE"
SLOTS = ("blue", "green")
# The longest endpoint name whose slot objects ("<name>-green") still fit a 63-character DNS label.
MAX_ENDPOINT_NAME_LENGTH = 63 - len("-green")

def default_serving_image() -> str:
    return os.environ.get(DEFAULT_SERVING_IMAGE_ENV) or DEFAULT_SERVING_IMAGE


# ---------------------------------------------------------------------------------------------- spec


PVC_URI = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/\S+$"


class ModelSource(ApiModel):
    """What is served. Together with ``serving`` it defines the revision."""

    # The regex goes into CEL as a raw string (r'...'): in a plain CEL string `\S` is an invalid
    # escape, which the apiserver's compiler refuses. The regex is RE2 there (no look-arounds).
    model_config = ConfigDict(json_schema_extra=cel(
        (f"!self.uri.startsWith('pvc://') || self.uri.matches(r'{PVC_URI}')",
         "a pvc:// uri names a claim and a path in it: pvc://<claim>/<path>"),
    ))

    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$",
        description="The model's name in the inference protocol: /v2/models/{name}/infer.",
    )
    uri: str = Field(
        min_length=1, max_length=2048, pattern=r"^(file|https?|pvc)://\S+$",
        description="Where the model is: file:///path (in the image or a mounted volume), http(s)://..., "
                    "or pvc://<claim>/<path> (the claim is mounted read-only into the slot's pods).",
    )
    format: Literal["sklearn", "score-py", "xgboost", "lightgbm"] = Field(
        "sklearn", description="sklearn: a joblib/pickle file. score-py: an Azure ML style score.py with init()/run(). "
                               "xgboost: a native XGBoost model file (.json/.ubj). "
                               "lightgbm: a native LightGBM model file (.txt/.bin).",
    )

    @model_validator(mode="after")
    def _pvc_has_claim_and_path(self) -> ModelSource:
        if self.uri.startswith("pvc://") and not re.match(PVC_URI, self.uri):
            raise ValueError("a pvc:// uri names a claim and a path in it: pvc://<claim>/<path>")
        return self


class EnvVar(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("!(has(self.value) && has(self.valueFrom))", "set either value or valueFrom, not both"),
    ))
    name: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = Field(None, max_length=32768)
    value_from: dict[str, Any] | None = Field(
        None, json_schema_extra=FREE_FORM,
        description="As in a Pod's env[].valueFrom (secretKeyRef, configMapKeyRef, fieldRef, ...).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set either value or valueFrom, not both")
        return self


class Serving(ApiModel):
    """The slot's pod template, in the user's words."""

    image: str | None = Field(
        None, min_length=1, max_length=512,
        description="The model server image. Default: the slotkeeper serving image the operator was installed "
                    "with (its SLOTKEEPER_DEFAULT_SERVING_IMAGE); the default is not part of the revision, so "
                    "upgrading the operator does not roll out every endpoint.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    replicas: int = Field(
        1, ge=1, le=100,
        description="Replicas of the active slot when `autoscaling` is absent. With `autoscaling` it is not used: "
                    "the active slot's HorizontalPodAutoscaler chooses between minReplicas and maxReplicas, and a "
                    "candidate starts at the active slot's current count. Not part of the revision: a change "
                    "scales, it does not roll out.",
    )
    port: int = Field(8080, ge=1, le=65535, description="The container port the model server listens on.")
    grpc_port: int | None = Field(
        None, ge=1, le=65535,
        description="Also serve the Open Inference Protocol over gRPC (KServe inference.GRPCInferenceService) on "
                    "this container port (SLOTKEEPER_GRPC_PORT of the slotkeeper serving image). Absent: HTTP only.",
    )

    @model_validator(mode="after")
    def _grpc_port_is_its_own(self) -> Serving:
        if self.grpc_port is not None and self.grpc_port == self.port:
            raise ValueError("grpcPort must differ from port: gRPC is served on its own port")
        return self
    readiness_path: str = Field("/v2/health/ready", pattern=r"^/\S*$", max_length=256)
    liveness_path: str = Field("/v2/health/live", pattern=r"^/\S*$", max_length=256)
    resources: Resources = Field(
        default_factory=Resources,
        description="As in a container's resources: requests and limits, validated as Kubernetes quantities.",
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    service_account_name: str | None = Field(None, max_length=253)
    shutdown_delay_seconds: int | None = Field(
        None, ge=0, le=300,
        description="Seconds a terminating pod keeps answering before it drains, so that no request is "
                    "refused while its removal from the Service propagates to every node (kube-proxy). "
                    "Absent: the serving image's default (5). The pod's terminationGracePeriodSeconds is "
                    "this plus 25 s for requests in flight.",
    )
    autoscaling: Autoscaling | None = Field(
        None,
        description="Autoscale each serving slot with a HorizontalPodAutoscaler (autoscaling/v2) instead of "
                    "`replicas`: the operator then never writes a slot's replicas while its autoscaler drives it. "
                    "A candidate starts at the active slot's current size, and gets its own autoscaler once it "
                    "takes traffic. Not part of the revision.",
    )
    disruption_budget: DisruptionBudget | None = Field(
        None,
        description="The PodDisruptionBudget of each slot. Absent: maxUnavailable 1. Not part of the revision.",
    )


# ------------------------------------------------------------------------------- traffic (Gateway API)

# As the Gateway API's own types say them (v1.6.1, standard channel): a parentRef's name and a
# hostname. The route slotkeeper writes is checked against the upstream CRD in tests.
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
PATH_PREFIX = r"^/[-A-Za-z0-9/._~!$&'()*+,;=:@%]*$"


class RouteParent(ApiModel):
    """A parentRef of the HTTPRoute: a Gateway (kind Gateway, the default), or for a GAMMA mesh
    (Istio, Linkerd) the endpoint's own Service (``kind: Service``, ``group: ""``)."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("self.kind != 'Service' || self.group == ''", "a Service parent is in the core group: group \"\""),
        ("self.kind != 'Gateway' || self.group == 'gateway.networking.k8s.io'",
         "a Gateway parent is in the group gateway.networking.k8s.io"),
    ))
    group: str = Field(GATEWAY_API_GROUP, max_length=253,
                       description="gateway.networking.k8s.io for a Gateway, \"\" for a Service (mesh).")
    kind: Literal["Gateway", "Service"] = Field("Gateway", description="Gateway, or Service for a GAMMA mesh.")
    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME)
    namespace: str | None = Field(None, min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                  description="The parent's namespace; absent: the endpoint's.")
    section_name: str | None = Field(None, min_length=1, max_length=253, pattern=OBJECT_NAME,
                                     description="A listener of the Gateway (or a port name of the Service).")
    port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _group_of_kind(self) -> RouteParent:
        if self.kind == "Service" and self.group != "":
            raise ValueError('a Service parent is in the core group: group ""')
        if self.kind == "Gateway" and self.group != GATEWAY_API_GROUP:
            raise ValueError("a Gateway parent is in the group gateway.networking.k8s.io")
        return self


class Mirror(ApiModel):
    """Before the candidate gets any live traffic: copies of ``percent`` of the live requests go to it
    (HTTPRoute RequestMirror filter), for ``seconds``, while metric checks read its metrics. The
    gateway discards the candidate's answers: no user sees them."""

    percent: int = Field(ge=1, le=100, description="Percent of live requests copied to the candidate.")
    seconds: int = Field(ge=1, le=86400, description="How long to mirror before traffic may move.")


class GatewayAPITraffic(ApiModel):
    """Route traffic with a Gateway API HTTPRoute (gateway.networking.k8s.io/v1) the operator owns:
    exact weights for blue/green and canary steps, and mirroring. The endpoint Service keeps working
    for in-cluster callers and selects the slot holding all the route's traffic (the stable slot
    until the switch); only requests that pass the route's parents get the exact weights."""

    parent_refs: list[RouteParent] = Field(
        min_length=1, max_length=32,
        description="The Gateways (or, for a mesh, the endpoint's own Service) the route attaches to.",
    )
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME)]] | None = Field(
        None, max_length=16, description="Host names the route matches (as HTTPRoute spec.hostnames).",
    )
    path_prefix: str | None = Field(
        None, min_length=1, max_length=1024, pattern=PATH_PREFIX,
        description="Only requests under this path prefix (a PathPrefix match); absent: every path.",
    )
    mirror: Mirror | None = Field(
        None, description="A mirroring phase after validation and before any traffic moves.",
    )


class Traffic(ApiModel):
    gateway_api: GatewayAPITraffic | None = Field(
        None, alias="gatewayAPI",
        description="Exact weights (and mirroring) through a Gateway API HTTPRoute. Absent: the endpoint "
                    "Service's selector moves traffic, canary shares follow pod counts.",
    )


class Pause(ApiModel):
    seconds: int | None = Field(
        None, ge=0, le=86400, description="How long to pause; absent: until `promote` (annotation or CLI).",
    )


class CanaryStep(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("has(self.setWeight) != has(self.pause)", "each canary step sets exactly one of setWeight or pause"),
    ))
    set_weight: int | None = Field(None, ge=0, le=100, description="Percent of traffic for the candidate.")
    pause: Pause | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CanaryStep:
        if (self.set_weight is None) == (self.pause is None):
            raise ValueError("each canary step sets exactly one of setWeight or pause")
        return self


class BlueGreen(ApiModel):
    auto_promote: bool = Field(
        True, description="Switch traffic as soon as the candidate is ready and validated; false: wait for `promote`.",
    )
    scale_down_delay_seconds: int = Field(
        60, ge=0, le=86400, description="How long the old slot keeps its replicas after the candidate is promoted.",
    )


class Canary(ApiModel):
    steps: list[CanaryStep] = Field(min_length=1, max_length=32)
    scale_down_delay_seconds: int = Field(60, ge=0, le=86400)


class Strategy(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("has(self.blueGreen) != has(self.canary)", "strategy sets exactly one of blueGreen or canary"),
    ))
    blue_green: BlueGreen | None = None
    canary: Canary | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Strategy:
        if (self.blue_green is None) == (self.canary is None):
            raise ValueError("strategy sets exactly one of blueGreen or canary")
        return self


class ExpectedOutput(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("has(self.data) || has(self.shape)", "an expected output names data, shape or both"),
    ))
    name: str = Field(min_length=1, max_length=253)
    data: list[float] | None = Field(None, max_length=10000, description="Expected numbers, flattened.")
    shape: list[int] | None = Field(None, max_length=8)
    tolerance: float = Field(1e-6, ge=0, description="Absolute tolerance for numeric data.")


class Expectation(ApiModel):
    status: int = Field(200, ge=100, le=599, description="The HTTP status the candidate must answer with.")
    outputs: list[ExpectedOutput] = Field(default_factory=list, max_length=16)


class ValidationRequest(ApiModel):
    name: str = Field(min_length=1, max_length=63)
    request: dict[str, Any] = Field(
        json_schema_extra=FREE_FORM, description="An Open Inference Protocol v2 infer request body.",
    )
    expect: Expectation = Field(default_factory=Expectation)
    timeout_seconds: float = Field(10, gt=0, le=300)


class MetricCheck(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("self.source != 'pods' || has(self.metric)", "a pods check names its metric"),
        ("self.source != 'prometheus' || (has(self.address) && has(self.query))",
         "a prometheus check names its address and query"),
        ("self.source != 'web' || (has(self.url) && has(self.jsonPath))", "a web check names its url and jsonPath"),
        ("has(self.min) || has(self.max)", "a metric check sets min, max or both"),
        ("!has(self.min) || !has(self.max) || self.min <= self.max", "min must not exceed max"),
    ))
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    source: Literal["pods", "prometheus", "web"]
    metric: Literal["error_ratio", "latency_p95_seconds", "request_rate"] | None = None
    address: str | None = Field(None, max_length=2048, pattern=r"^https?://\S+$")
    query: str | None = Field(None, max_length=4096)
    url: str | None = Field(None, max_length=2048, pattern=r"^https?://\S+$")
    json_path: str | None = Field(None, max_length=256, description="Dotted path into the JSON reply, e.g. data.value.")
    min: float | None = None
    max: float | None = None
    interval_seconds: int = Field(10, ge=1, le=3600)
    failure_limit: int = Field(1, ge=1, le=100, description="Consecutive failing evaluations that fail the rollout.")
    inconclusive_limit: int = Field(
        6, ge=1, le=1000, description="Consecutive inconclusive evaluations (no data) that pause the rollout.",
    )

    @model_validator(mode="after")
    def _source_fields(self) -> MetricCheck:
        needs = {"pods": ("metric",), "prometheus": ("address", "query"), "web": ("url", "json_path")}[self.source]
        missing = [to_camel(field) for field in needs if getattr(self, field) is None]
        if missing:
            raise ValueError(f"a {self.source} check needs {', '.join(missing)}")
        if self.min is None and self.max is None:
            raise ValueError("a metric check sets min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class Checks(ApiModel):
    progress_deadline_seconds: int = Field(
        300, ge=1, le=86400, description="The candidate must be fully ready within this, or the rollout reverts.",
    )
    validation: list[ValidationRequest] = Field(default_factory=list, max_length=32)
    metrics: list[MetricCheck] = Field(default_factory=list, max_length=32)
    analysis_seconds: int = Field(
        120, ge=0, le=86400,
        description="How long checks keep running after traffic moved before the revision counts as good.",
    )


class MonitorJob(ApiModel):
    """The Job the operator creates once per degradation episode (e.g. the team's retraining pipeline)."""

    spec: dict[str, Any] = Field(
        json_schema_extra=FREE_FORM,
        description="A batch/v1 JobSpec (template, backoffLimit, ttlSecondsAfterFinished, ...). The operator "
                    "names the Job <name>-retrain-<revision>-<episode start>, labels it with the endpoint and the "
                    "revision, owns it, and fills restricted Pod Security defaults the template leaves out "
                    "(runAsNonRoot, seccompProfile RuntimeDefault, allowPrivilegeEscalation false, drop ALL). "
                    "The pod gets SLOTKEEPER_ENDPOINT, SLOTKEEPER_REVISION, SLOTKEEPER_MODEL_URI and "
                    "SLOTKEEPER_CHECK in each container's env.",
    )
    cooldown_seconds: int = Field(
        3600, ge=0, le=30 * 86400,
        description="After a Job is created, no further Job for this endpoint until this has passed.",
    )


class MonitorOnFailure(ApiModel):
    job: MonitorJob | None = Field(None, description="A Job created once per degradation episode.")
    revert_to: Literal["previous"] | None = Field(
        None, description="previous: traffic back to the previous promoted revision, when its slot still holds it "
                          "(see README: Quality monitor). Recorded as a revert with reason QualityDegraded.",
    )


class Monitor(ApiModel):
    """Checks of the stable revision for as long as it serves, after promotion."""

    checks: list[MetricCheck] = Field(
        min_length=1, max_length=32,
        description="As checks.metrics; {{slot}} and {{revision}} are the stable slot and revision.",
    )
    on_failure: MonitorOnFailure = Field(default_factory=MonitorOnFailure)


# ---------------------------------------------------------------------------------------- batch



def _cron_field(value: str, names: str | None = None, question: bool = False) -> str:
    """One field of a cron schedule: ``*``, values or ranges (each with an optional ``/step``), comma lists."""
    atom = value if names is None else f"({value}|{names})"
    item = rf"(\*|{atom}(-{atom})?)(/[1-9][0-9]*)?"
    if question:
        item = rf"(\?|{item})"
    return rf"{item}(,{item})*"


_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"
# A CronJob schedule as the CronJob controller reads it (robfig/cron's standard parser): five fields
# in their ranges, or a macro. The ranges are checked here because the apiserver refusing the CronJob
# would stop the endpoint's reconcile (InvalidSpec) until the spec changes.
CRON_SCHEDULE = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + " +".join([_cron_field(r"[1-5]?[0-9]"), _cron_field(r"(1?[0-9]|2[0-3])"),
                 _cron_field(r"([1-9]|[12][0-9]|3[01])", question=True),
                 _cron_field(r"([1-9]|1[0-2])", f"{_MONTHS}|{_MONTHS.lower()}"),
                 _cron_field(r"[0-7]", f"{_DAYS}|{_DAYS.lower()}", question=True)])
    + ")$"
)
PVC_PART = r"pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/\S+"
BATCH_INPUT_URI = rf"^((file|https?)://\S+|{PVC_PART})$"
BATCH_OUTPUT_URI = rf"^(file://\S+|{PVC_PART})$"
BATCH_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_BATCH_PARALLELISM = 64
MAX_BATCH_NAME_LENGTH = 20  # "<endpoint>-<name>" is cut to a 52-character CronJob name


class BatchJob(ApiModel):
    """A named batch scoring job: a schedule makes it a CronJob; without one it is a preset for
    `slotkeeper batch run NAME --job <name>`. Runs use the stable revision as status shows it."""

    name: str = Field(min_length=1, max_length=MAX_BATCH_NAME_LENGTH, pattern=BATCH_NAME)
    input: str = Field(
        min_length=1, max_length=2048, pattern=BATCH_INPUT_URI,
        description="A file or a directory (its *.csv and *.jsonl files, sorted): file://, http(s)://, or "
                    "pvc://<claim>/<path> (the claim is mounted read-only at /mnt/batch/<claim>).",
    )
    output: str = Field(
        min_length=1, max_length=2048, pattern=BATCH_OUTPUT_URI,
        description="Where <run>/part-*.jsonl and _SUMMARY.json go: file:// or pvc://<claim>/<path> "
                    "(the claim is mounted read-write).",
    )
    schedule: str | None = Field(
        None, max_length=128, pattern=CRON_SCHEDULE,  # a macro, or minute hour day-of-month month day-of-week
        description="Cron schedule (five fields or @daily, ...; the controller's time zone). Absent: a one-off "
                    "job, started by `slotkeeper batch run`.",
    )
    key_column: str | None = Field(None, min_length=1, max_length=253,
                                   description="The column (CSV) or key (JSON lines) echoed beside each "
                                               "prediction. Absent: id (rows without one get <file>:<line>).")
    chunk_rows: int | None = Field(None, ge=1, le=10_000_000, description="Rows per chunk (one part file each).")
    max_failed_rows: int | None = Field(None, ge=0, description="More failed rows than this fail the run.")
    max_failed_fraction: float | None = Field(
        None, ge=0, le=1, description="A larger fraction of failed rows fails the run. Absent: 0.01 (the batch "
                                      "mode's default).")
    resources: Resources | None = Field(
        None, description="The batch pod's resources. Absent: the stable revision's serving resources.",
    )
    parallelism: int | None = Field(
        None, ge=1, le=MAX_BATCH_PARALLELISM,
        description="Pods scoring one run together (an Indexed Job: pod I scores chunks I, I+N, ... into the "
                    "same output); the run succeeds when every pod did, the failed-row limits hold per pod. "
                    "Absent: 1.",
    )
    backoff_limit: int = Field(
        3, ge=0, le=20, description="Pod retries of a run (a killed pod's successor resumes: finished chunks are "
                                    "skipped).",
    )
    suspend: bool = Field(False, description="Suspend the schedule (the CronJob's suspend).")


class Batch(ApiModel):
    """Batch scoring with the endpoint's stable revision (README: Batch scoring)."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("self.jobs.all(j, self.jobs.exists_one(k, k.name == j.name))", "batch job names are unique"),
    ))
    jobs: list[BatchJob] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _unique_names(self) -> Batch:
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError("batch job names are unique")
        return self


# A Secret name is a DNS-1123 subdomain; "<endpoint>-keys" always is one (endpoint names are DNS labels).
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class Auth(ApiModel):
    """Who may call the endpoint. Not a new behaviour for anyone who does not ask: without `auth`
    (or with `mode: none`) the endpoint stays open, as every endpoint was before keys existed."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("self.mode == 'key' || !has(self.secretName)", "secretName needs mode: key"),
    ))
    mode: Literal["none", "key"] = Field(
        "none",
        description="none: any caller that reaches the Service is served (the default, so that upgrading "
                    "slotkeeper or adding this field elsewhere never locks out existing callers). key: inference "
                    "and model metadata require `Authorization: Bearer <key>` with the primary or the secondary "
                    "key of the keys Secret; health routes and /metrics stay open. Turning keys on or off is a "
                    "new revision (the pods mount the Secret): it rolls out and is validated like any other. "
                    "Rotating a key is not: the pods re-read the mounted Secret.",
    )
    secret_name: str | None = Field(
        None, min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN,
        description="A Secret of your own in the endpoint's namespace with the keys `primary` and `secondary`. "
                    "Absent: the operator creates `<name>-keys` (random 32-byte URL-safe keys) unless it exists, "
                    "and never changes a key in it afterwards (`slotkeeper regenerate-key` does).",
    )

    @model_validator(mode="after")
    def _secret_needs_key_mode(self) -> Auth:
        if self.mode != "key" and self.secret_name is not None:
            raise ValueError("secretName needs mode: key")
        return self


def keys_secret_name(endpoint: str, auth: Auth | None) -> str | None:
    """The Secret holding the endpoint's keys; None for an open endpoint."""
    if auth is None or auth.mode != "key":
        return None
    return auth.secret_name or f"{endpoint}-keys"


def _default_strategy() -> Strategy:
    return Strategy(blue_green=BlueGreen())


class ModelEndpointSpec(ApiModel):
    model: ModelSource
    serving: Serving = Field(default_factory=Serving)
    strategy: Strategy = Field(default_factory=_default_strategy)
    checks: Checks = Field(default_factory=Checks)
    revision_history_limit: int = Field(10, ge=1, le=100)
    failed_slot_replicas: int = Field(
        1, ge=0, le=100, description="Replicas the failed candidate's slot keeps after a revert, for inspection.",
    )
    paused: bool = Field(False, description="Hold any rollout where it is; traffic stays as it is.")
    auth: Auth | None = Field(
        None, description="Endpoint keys. Absent: mode none, an open endpoint (see auth.mode for why).",
    )
    traffic: Traffic | None = Field(
        None, description="How traffic is routed beyond the endpoint Service (Gateway API). Absent: the Service alone.",
    )
    monitor: Monitor | None = Field(
        None, description="Quality monitor: checks of the stable revision after promotion, with a Job and/or a revert "
                          "to the previous revision when one fails. Absent: nothing is checked after promotion.",
    )
    batch: Batch | None = Field(
        None, description="Batch scoring jobs run with the stable revision, once or on a schedule. Absent: none.",
    )
