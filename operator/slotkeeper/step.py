"""One pass's decision as it is being made: :class:`Step` accumulates the status changes, the actions
and the next wake-up that decide.py's rules and their helpers (monitor, batch, status_report) add,
over the :class:`Endpoint` as the decision sees it, what is observed and the :class:`Gates` measured.

Its helpers carry what many rules share: conditions and history entries written into the pass's
status, the endpoint Service's wanted selector, a slot's Deployment (applied when it is missing or
runs another revision) and its size, by hand or by its autoscaler (:meth:`Step.want_replicas`,
:meth:`Step.autoscale`; decide.py's docstring says how a slot is sized).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Mapping

from .actions import (Action, ApplyDeployment, ApplyRoute, CreateKeysSecret, CreateService, DeleteAutoscaler,
                      EmitEvent, HandOverReplicas, ScaleDeployment, SwitchTraffic)
from .api import (SLOTS, Autoscaling, GatewayAPITraffic, HistoryEntry, ModelEndpointSpec, ModelEndpointStatus,
                  Rollout, keys_secret_name)
from .checks.verdicts import Verdict
from .clock import format_time, parse_time
from .conditions import set_condition
from .observe import DEFAULT_REPLICAS, Observed
from .render import (ANNOTATION_CONFIG, NO_SLOT, render_endpoint_service, render_http_route, render_slot_deployment,
                     slot_selector)


FIRST_SLOT = "blue"
# While a rollout waits on the cluster, look again at least this often even without a watch event.
ROLLOUT_POLL_SECONDS = 10.0
# Manual actions are annotations "slotkeeper.io/<action>: <token>"; a token is acted on once.
ACTION_PREFIX = "slotkeeper.io/"
MANUAL_ACTIONS = ("promote", "abort", "retry", "pause", "resume")
# Steps in which the candidate is checked (validation requests, metric checks).
CHECKED_STEPS = ("Validating", "Mirroring", "Canary", "Analysing")
# Steps before the candidate gets any traffic: the endpoint selects the stable slot alone.
PRE_TRAFFIC_STEPS = ("Deploying", "Validating", "Mirroring", "AwaitingPromotion")
# During canary steps the endpoint Service selects every slot; the share follows the ready pods.
BOTH_SLOTS = "*"


@dataclass(frozen=True)
class Endpoint:
    """The ModelEndpoint as the decision sees it."""
    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: ModelEndpointSpec
    status: ModelEndpointStatus
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> dict:
        return {"metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


@dataclass(frozen=True)
class Gates:
    """What the cluster layer measured for the candidate in this pass (it runs what is due)."""
    validation: tuple[bool, str] | None = None  # the validation requests' result, when they ran
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)  # metric verdicts, by check name
    monitor: Mapping[str, Verdict] = field(default_factory=dict)  # spec.monitor verdicts (stable revision)


@dataclass(frozen=True)
class Decision:
    status: ModelEndpointStatus
    actions: list[Action]
    # Seconds until something time-based is due (a deadline, the end of analysis); None: nothing.
    requeue_after: float | None = None


def other_slot(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


class Step:
    """Accumulates one decision: status changes, actions and the next wake-up."""

    def __init__(self, endpoint: Endpoint, observed: Observed, now: datetime, gates: Gates) -> None:
        self.endpoint, self.observed, self.now, self.gates = endpoint, observed, now, gates
        self.requested: frozenset[str] = frozenset()
        self.spec: ModelEndpointSpec = endpoint.spec
        self.status: ModelEndpointStatus = endpoint.status
        self.now_text = format_time(now)
        self.actions: list[Action] = []
        self.wake_ups: list[float] = []
        self.autoscaled: dict[str, tuple[int, int]] = {}  # slot -> its autoscaler's bounds, this pass
        self.sized: set[str] = set()  # slots sized this pass, by hand or by autoscaler

    # ------------------------------------------------------------------ status and action helpers
    def update(self, **changes) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, type: str, reason: str, message: str) -> None:
        self.actions.append(EmitEvent(type=type, reason=reason, message=message))

    def wake_at(self, moment: datetime) -> None:
        self.wake_ups.append(max(0.0, (moment - self.now).total_seconds()))

    def past_progress_deadline(self, since: str) -> bool:
        """True once ``checks.progressDeadlineSeconds`` have passed since ``since``; until then the
        next pass is due at the next poll (or at the deadline, if sooner)."""
        deadline = parse_time(since) + timedelta(seconds=self.spec.checks.progress_deadline_seconds)
        if self.now >= deadline:
            return True
        self.wake_at(min(deadline, self.now + timedelta(seconds=ROLLOUT_POLL_SECONDS)))
        return False

    def condition(self, type: str, status: bool, reason: str, message: str = "") -> None:
        self.update(conditions=set_condition(
            list(self.status.conditions), type, status, reason, message, self.now_text, self.endpoint.generation,
        ))

    def record(self, revision: str, model_uri: str | None, outcome: str, reason: str, message: str = "") -> None:
        entry = HistoryEntry(revision=revision, model_uri=model_uri, outcome=outcome, reason=reason,
                             message=message, time=self.now_text)
        history = [*self.status.history, entry][-self.spec.revision_history_limit:]
        self.update(history=history)

    # ------------------------------------------------------------------------------ slot sizes
    @property
    def autoscaling(self) -> Autoscaling | None:
        return self.spec.serving.autoscaling

    def serving_replicas(self) -> int | None:
        """What a serving slot is sized by: spec.serving.replicas, or (None) its autoscaler."""
        return None if self.autoscaling is not None else self.spec.serving.replicas

    def live_size(self) -> int:
        """With autoscaling: the stable slot's size now (its autoscaler's choice), within the bounds;
        minReplicas when nothing serves yet."""
        autoscaling = self.autoscaling
        assert autoscaling is not None
        active = self.status.active_slot
        live = self.observed.slot(active).replicas if active else 0
        return min(max(live, autoscaling.min_replicas), autoscaling.max_replicas)

    def full_size(self, rollout: Rollout | None = None) -> int:
        """A serving slot's full size: spec.serving.replicas; with autoscaling the stable slot's live
        size, or the size the rollout kept once the stable slot may shrink."""
        if self.autoscaling is None:
            return self.spec.serving.replicas
        if rollout is not None and rollout.stable_replicas is not None:
            return rollout.stable_replicas
        return self.live_size()

    def replicas_after(self, slot: str) -> int | None:
        """The slot's replicas once the queued actions ran (None: it has no Deployment)."""
        for action in reversed(self.actions):
            if isinstance(action, ScaleDeployment) and action.slot == slot:
                return action.replicas
            if isinstance(action, ApplyDeployment) and action.slot == slot and "replicas" in action.body["spec"]:
                return action.body["spec"]["replicas"]
        seen = self.observed.slot(slot).deployment
        if seen is not None:
            return seen.replicas
        if any(isinstance(action, ApplyDeployment) and action.slot == slot for action in self.actions):
            return DEFAULT_REPLICAS  # created by an apply naming no replicas: the apiserver's default
        return None

    def want_deployment(self, slot: str, revision: str, replicas: int | None) -> None:
        """The slot runs ``revision``, at ``replicas`` or (None) at what its autoscaler chooses.

        The apply that creates the Deployment names its replicas (created at the right size in one
        write); later applies never do, and the first of them hands the replicas over before (the
        apiserver would reset replicas that the apply owned alone and stops naming)."""
        seen = self.observed.slot(slot).deployment
        if seen is None or seen.revision != revision:
            self.want_keys()
        if seen is None:
            created = replicas if replicas is not None else self.full_size()
            body = render_slot_deployment(self.endpoint.owner, self.spec, slot, revision, replicas=created)
            self.actions.append(ApplyDeployment(slot=slot, body=body))
        elif seen.revision != revision:
            if seen.replicas_applied:
                self.actions.append(HandOverReplicas(slot=slot, replicas=seen.replicas))
            body = render_slot_deployment(self.endpoint.owner, self.spec, slot, revision)
            self.actions.append(ApplyDeployment(slot=slot, body=body))
        if replicas is None:
            self.autoscale(slot)
        else:
            self.want_replicas(slot, replicas)

    def want_keys(self) -> None:
        """Before a keyed revision's pods are created: the keys Secret they mount, when the operator
        owns it (no `auth.secretName`). Created only if missing, so asking again is harmless; asked
        only with a Deployment write, so an idle endpoint sends nothing."""
        auth = self.spec.auth
        if auth is None or auth.mode != "key" or auth.secret_name is not None:
            return
        action = CreateKeysSecret(name=keys_secret_name(self.endpoint.name, auth) or "", owner_uid=self.endpoint.uid)
        if action not in self.actions:
            self.actions.append(action)

    def want_replicas(self, slot: str, replicas: int) -> None:
        """Size the slot by hand. No autoscaler may drive it then: one that exists is deleted first."""
        self.sized.add(slot)
        self.autoscaled.pop(slot, None)
        if self.observed.slot(slot).autoscaler is not None and not any(
                isinstance(action, DeleteAutoscaler) and action.slot == slot for action in self.actions):
            self.actions.append(DeleteAutoscaler(slot=slot))
        current = self.replicas_after(slot)
        if current is not None and current != replicas:
            self.actions.append(ScaleDeployment(slot=slot, replicas=replicas))

    def autoscale(self, slot: str, floor: int | None = None, pin: int | None = None) -> None:
        """The slot's autoscaler sizes it, within the user's bounds raised to ``floor`` (the stable
        slot's size while a rollout may fall back on it) or pinned at ``pin`` (a canary step shrinking
        the stable slot). Its replicas are not written in this pass."""
        autoscaling = self.autoscaling
        assert autoscaling is not None
        low, high = autoscaling.min_replicas, autoscaling.max_replicas
        if pin is not None:
            low = high = pin
        elif floor is not None:
            low = max(low, min(floor, high))
        self.sized.add(slot)
        self.autoscaled[slot] = (low, high)
        self.actions = [action for action in self.actions
                        if not (isinstance(action, (ScaleDeployment, DeleteAutoscaler)) and action.slot == slot)]

    def serve(self, slot: str, replicas: int, floor: int | None = None) -> None:
        """A slot that serves (or may take traffic back): ``replicas``, or its autoscaler's choice."""
        if self.autoscaling is None:
            self.want_replicas(slot, replicas)
        else:
            self.autoscale(slot, floor=floor)

    def wanted_selector(self) -> Mapping[str, str] | None:
        """The endpoint Service's selector once the queued actions ran (None: no such Service)."""
        for action in reversed(self.actions):
            if isinstance(action, SwitchTraffic):
                return action.selector
            if isinstance(action, CreateService) and action.body["metadata"]["name"] == self.endpoint.name:
                return action.body["spec"]["selector"]
        return self.observed.endpoint_selector

    @property
    def gateway(self) -> GatewayAPITraffic | None:
        traffic = self.spec.traffic
        return traffic.gateway_api if traffic is not None else None

    def want_selector(self, slot: str, weight: int | None = None, mirror: int | None = None) -> bool:
        """Point the endpoint Service at ``slot`` (or NO_SLOT, or BOTH_SLOTS); True when that moves traffic.

        With Gateway API traffic the HTTPRoute carries the traffic: ``slot`` gets weight 100 (NO_SLOT:
        nothing gets any), BOTH_SLOTS gives the candidate ``weight`` and the stable slot the rest, and
        ``mirror`` copies that percent of the requests to the candidate. The endpoint Service then
        selects the slot holding all the route's traffic: the stable slot during a canary."""
        gateway = self.gateway
        if gateway is not None:
            active = self.status.active_slot or FIRST_SLOT
            candidate = other_slot(active)
            if slot == BOTH_SLOTS:
                share = min(max(weight or 0, 0), 100)
                weights = {active: 100 - share, candidate: share}
                slot = active if share < 100 else candidate
            else:
                weights = {s: (100 if s == slot else 0) for s in SLOTS}
            moved = self.want_route(gateway, weights, (candidate, mirror) if mirror else None)
            return self._want_service_selector(slot) or moved
        return self._want_service_selector(slot)

    _route_body: dict | None = None  # the HTTPRoute this pass wants (set by want_selector)

    def want_route(self, gateway: GatewayAPITraffic, weights: dict[str, int], mirror: tuple[str, int] | None) -> bool:
        """Apply the route with these weights and mirror unless the cluster holds it; True when written."""
        body = render_http_route(self.endpoint.owner, gateway, weights, mirror)
        self._route_body = body
        self.actions = [a for a in self.actions if not isinstance(a, ApplyRoute)]
        seen = self.observed.route
        if seen is not None and seen.config == body["metadata"]["annotations"][ANNOTATION_CONFIG]:
            return False
        self.actions.append(ApplyRoute(body=body))
        return True

    def route_settled(self) -> str | None:
        """None when the route as watched is the one this pass wants and every parent accepted this
        generation of it; otherwise what it waits for, naming the parents."""
        wanted = self._route_body
        route = self.observed.cluster_route
        if wanted is None:
            return None
        name = wanted["metadata"]["name"]
        if route is None or route.config != wanted["metadata"]["annotations"][ANNOTATION_CONFIG]:
            return f"waiting for HTTPRoute {name} to show the new weights"
        if not route.accepted:
            parents = ", ".join(route.not_accepted or ()) or "its parents"
            return f"waiting for parent {parents} to accept HTTPRoute {name} (generation {route.generation})"
        return None

    def _want_service_selector(self, slot: str) -> bool:
        selector = slot_selector(self.endpoint.name, None if slot == BOTH_SLOTS else slot)
        current = self.wanted_selector()
        if current is None:
            self.actions.append(CreateService(render_endpoint_service(self.endpoint.owner, selector,
                                                                      self.spec.serving.grpc_port)))
            return slot != NO_SLOT
        if dict(current) != selector:
            self.actions.append(SwitchTraffic(selector=selector))
            return True
        return False

    def decision(self) -> Decision:
        requeue = min(self.wake_ups) if self.wake_ups else None
        return Decision(status=self.status, actions=self.actions, requeue_after=requeue)

