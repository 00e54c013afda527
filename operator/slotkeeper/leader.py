"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Two or more replicas run; the one holding the Lease runs the operator (kopf's watches and the
endpoint loops), the others only watch the Lease. The decisions are pure functions of the Lease
record and times read from *this process's* monotonic clock; the I/O is :class:`LeaseStore`.

Why it is safe (no two replicas act at once), with no clock synchronisation, only a bounded rate
drift between the replicas' clocks:

* A follower counts ``leaseDurationSeconds`` from when IT first observed the current record (a
  record changes with every write: a new resourceVersion), never from the renewTime another clock
  wrote. It observes a renewal no earlier than the renewal was sent.
* The leader counts its renew deadline from when it *sent* its last successful renewal, and stops
  acting when that deadline passes without a newer success (a watchdog: a hung request does not
  delay it). Stopping is leaving the process (``os._exit``): nothing of the operator runs after it.
* ``renew_deadline < lease_duration``: the leader has stopped by ``sent + renew_deadline`` while a
  follower waits until at least ``observed + lease_duration`` with ``observed >= sent``. The gap
  (5 s by default) absorbs rate drift and the exit itself; a write request already on the wire when
  the leader exits may still land (as with client-go: there is no fencing token in the apiserver).
* Taking or renewing is an update conditional on the resourceVersion read just before: of two
  replicas deciding at once, one gets 409 Conflict (or AlreadyExists on create) and keeps following.

A graceful stop (SIGTERM) releases the Lease (holder cleared, duration 1 s, like client-go's
ReleaseOnCancel) so that a follower takes over at its next retry instead of after a lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from .client_config import as_connection
from .kube_api import ApiError, KubeApi, api_path

log = logging.getLogger("slotkeeper.leader")

DEFAULT_LEASE_NAME = "slotkeeper-operator"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LEASES = ("coordination.k8s.io", "v1", "leases")


# ------------------------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class ElectionTiming:
    """Argo Rollouts' (and client-go's usual) defaults, in seconds."""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        """What is wrong with these timings (empty: they are usable)."""
        found = [f"{name} must be > 0" for name, value in
                 (("--lease-duration", self.lease_duration), ("--renew-deadline", self.renew_deadline),
                  ("--retry-period", self.retry_period)) if value <= 0]
        if self.renew_deadline >= self.lease_duration:
            found.append(f"--renew-deadline ({self.renew_deadline:g}s) must be shorter than --lease-duration "
                         f"({self.lease_duration:g}s): the leader must stop before a follower may take over")
        if self.retry_period >= self.renew_deadline:
            found.append(f"--retry-period ({self.retry_period:g}s) must be shorter than --renew-deadline "
                         f"({self.renew_deadline:g}s): the leader must get more than one try to renew")
        return found


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease the election reads. ``fingerprint`` tells a changed record: the
    resourceVersion changes with every write, so even a renewal that wrote the same renewTime
    (a wall clock set back) counts as one."""
    holder: str  # "" when released or never held
    duration: float
    transitions: int
    acquire_time: str | None
    resource_version: str
    fingerprint: tuple[Any, ...]

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or 0)
        transitions = int(spec.get("leaseTransitions") or 0)
        version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        return cls(holder=holder, duration=duration, transitions=transitions, acquire_time=spec.get("acquireTime"),
                   resource_version=version, fingerprint=(version, holder, duration, transitions))


@dataclass(frozen=True)
class Observed:
    """The record last seen, and when (this process's monotonic clock) it was first seen so."""
    fingerprint: tuple[Any, ...]
    since: float


class Move(Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # released, or expired by our own observation
    RENEW = "renew"  # ours
    FOLLOW = "follow"  # someone else's, still valid


def observe(previous: Observed | None, record: LeaseRecord | None, now: float) -> Observed | None:
    """The observation after reading ``record`` at ``now``: unchanged records keep their first sighting."""
    if record is None:
        return None
    if previous is not None and previous.fingerprint == record.fingerprint:
        return previous
    return Observed(record.fingerprint, now)


def next_move(identity: str, record: LeaseRecord | None, observed: Observed | None, now: float) -> Move:
    if record is None:
        return Move.CREATE
    if record.holder == identity:
        return Move.RENEW
    if not record.holder:
        return Move.TAKE
    assert observed is not None and observed.fingerprint == record.fingerprint, "observe() the record first"
    if now >= observed.since + record.duration:
        return Move.TAKE
    return Move.FOLLOW


def lease_spec(identity: str, record: LeaseRecord | None, timing: ElectionTiming, wall_now: str) -> dict[str, Any]:
    """The spec to write to hold the Lease (create, take or renew). The times are for people
    (kubectl); no replica decides by them."""
    same_holder = record is not None and record.holder == identity
    transitions = (record.transitions if record is not None else 0) + (0 if same_holder or record is None else 1)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": math.ceil(timing.lease_duration),  # whole seconds; never shorter
        "acquireTime": record.acquire_time if same_holder and record.acquire_time else wall_now,
        "renewTime": wall_now,
        "leaseTransitions": transitions,
    }


def released_spec(record: LeaseRecord, wall_now: str) -> dict[str, Any]:
    """Given up on purpose: no holder, and a 1 s duration for clients that look only at the time."""
    return {"holderIdentity": None, "leaseDurationSeconds": 1, "acquireTime": wall_now, "renewTime": wall_now,
            "leaseTransitions": record.transitions}


def renew_overdue(last_renewed: float, now: float, timing: ElectionTiming) -> bool:
    """The leader's own rule: no successful renewal sent within the renew deadline means stop."""
    return now - last_renewed >= timing.renew_deadline


def micro_time(moment: datetime | None = None) -> str:
    """A Lease's MicroTime: RFC 3339 with exactly six fractional digits (the apiserver requires them)."""
    return (moment or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_identity(pod_name: str | None = None) -> str:
    """The pod's name (downward API) plus a random suffix: a restarted container is a new candidate."""
    return f"{pod_name or os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def default_lease_namespace(environ: Mapping[str, str] | None = None, account_file: Path | None = None) -> str | None:
    """The operator pod's namespace: POD_NAMESPACE, else the service account's namespace file;
    None outside a cluster (where leader election is off unless asked for)."""
    environ = os.environ if environ is None else environ
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return (account_file or SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or None
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ I/O


class LeaseConflict(Exception):
    """409: another replica wrote the Lease first (AlreadyExists on create, Conflict on update)."""


class LeaseStore:
    """get/create/update of one Lease through the operator's own HTTP client (kube_api.py, no
    official client in the operator process), on a session of its own: a renewal never waits behind
    the reconcile loops' requests. The only place that talks to the API for the election. Bodies go as
    plain JSON, the MicroTimes as written (with their fraction of a second, which the apiserver needs).
    ``connection``: a ``kopf.ConnectionInfo`` (or an official client configuration, as tests hand in)."""

    def __init__(self, connection: Any, namespace: str, name: str, timeout: float) -> None:
        self.namespace, self.name = namespace, name
        self._api = KubeApi(as_connection(connection), request_timeout=(min(timeout, 5.0), timeout),
                            max_connections=2)

    async def _call(self, method: str, name: str | None = None, body: Any = None) -> dict[str, Any]:
        try:
            return await self._api.request(method, api_path(*LEASES, namespace=self.namespace, name=name), body)
        except ApiError as error:
            if error.status == 409:
                raise LeaseConflict(error.reason) from None
            raise ApiError(status=error.status, reason=error.reason) from None  # no body in logs

    async def get(self) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_lease(await self._call("GET", self.name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, spec: Mapping[str, Any]) -> LeaseRecord:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name},
                "spec": dict(spec)}
        return LeaseRecord.from_lease(await self._call("POST", body=body))

    async def update(self, record: LeaseRecord, spec: Mapping[str, Any]) -> LeaseRecord:
        """A PUT conditional on the resourceVersion ``record`` was read at."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "resourceVersion": record.resource_version}, "spec": dict(spec)}
        return LeaseRecord.from_lease(await self._call("PUT", self.name, body))

    async def close(self) -> None:
        await self._api.close()


# ------------------------------------------------------------------------------------ the elector


class LeaderElector:
    """Acquire, hold (renew) and release the Lease. ``on_leadership(True/False)`` is called on every
    transition (for a leader-status gauge); transitions are logged at INFO."""

    def __init__(self, store: LeaseStore, identity: str, timing: ElectionTiming,
                 on_leadership: Callable[[bool], None] = lambda is_leader: None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], str] = micro_time) -> None:
        self.store, self.identity, self.timing = store, identity, timing
        self.on_leadership, self.clock, self.wall_clock = on_leadership, clock, wall_clock
        self.observed: Observed | None = None
        self.record: LeaseRecord | None = None
        self.last_renewed: float | None = None  # when the last successful write was sent
        self.is_leader = False
        self._holding = False
        self._followed: str | None = None

    async def try_acquire_or_renew(self, renew_only: bool = False) -> bool:
        """One round: read the Lease and, where the rules allow, write it. True when we hold it now.
        ``renew_only``: the leader's round, which renews its own Lease and takes nothing (a Lease gone
        or released while it leads is a lost leadership, not one to take again)."""
        record = await self.store.get()
        now = self.clock()
        self.observed, self.record = observe(self.observed, record, now), record
        move = next_move(self.identity, record, self.observed, now)
        if renew_only and move is not Move.RENEW:
            return False
        if move is Move.FOLLOW:
            if record is not None and record.holder != self._followed:
                self._followed = record.holder
                log.info("following the leader %s (Lease %s/%s)", record.holder, self.store.namespace, self.store.name)
            return False
        spec = lease_spec(self.identity, record, self.timing, self.wall_clock())
        sent = self.clock()
        try:
            written = await (self.store.create(spec) if record is None else self.store.update(record, spec))
        except LeaseConflict:
            return False  # someone else wrote first; the next round reads who
        self.record, self.last_renewed = written, sent
        self.observed = Observed(written.fingerprint, sent)
        return True

    async def acquire(self) -> None:
        """Return once this replica is the leader; until then it only reads the Lease (a follower
        makes no write unless the Lease is free or expired by its own observation)."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    break
            except Exception as error:  # noqa: BLE001 -- the API unreachable: keep trying
                log.warning("cannot read or take the Lease %s/%s: %s", self.store.namespace, self.store.name,
                            _describe(error))
            await asyncio.sleep(self.timing.retry_period)
        self.is_leader = True
        log.info("became the leader as %s (Lease %s/%s)", self.identity, self.store.namespace, self.store.name)
        self.on_leadership(True)

    async def hold(self, on_lost: Callable[[], None] = lambda: None) -> None:
        """Renew every retry period; return when leadership is lost: the renew deadline passed
        without a successful renewal (a hung request included), or the Lease names someone else.
        ``on_lost`` is called at that moment, before any other task of the event loop runs again
        (in production it ends the process)."""
        assert self.last_renewed is not None, "acquire() first"
        self._holding = True
        while self._holding:
            # Never sleep or wait past the deadline: stopping late is what would let two replicas act.
            deadline = self.last_renewed + self.timing.renew_deadline
            await asyncio.sleep(max(0.0, min(self.timing.retry_period, deadline - self.clock())))
            remaining = deadline - self.clock()
            try:
                renewed = remaining > 0 and await asyncio.wait_for(self.try_acquire_or_renew(renew_only=True),
                                                                   timeout=remaining)
            except asyncio.TimeoutError:
                renewed = False
            except Exception as error:  # noqa: BLE001 -- retried until the deadline
                log.warning("cannot renew the Lease: %s", _describe(error))
                renewed = False
            if not self._holding:
                return  # stop_holding(): a graceful stop, not a loss
            if not renewed and (self.record is None or self.record.holder != self.identity):  # as last read
                return self._lost(on_lost, "the Lease is gone" if self.record is None else
                                  f"the Lease names {self.record.holder or 'no holder'} now")
            if renew_overdue(self.last_renewed, self.clock(), self.timing):
                return self._lost(on_lost, f"no renewal within the renew deadline ({self.timing.renew_deadline:g}s)")

    async def stop_holding(self, holding: asyncio.Future[None]) -> None:
        """End ``hold()`` without losing anything (before ``release()``). A flag as well as the
        cancellation: Python 3.11's ``wait_for`` can swallow a cancellation that meets its result."""
        self._holding = False
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding

    def _lost(self, on_lost: Callable[[], None], why: str) -> None:
        self.is_leader = False
        log.error("lost the leadership: %s", why)
        self.on_leadership(False)
        on_lost()

    async def release(self) -> None:
        """Give the Lease up (graceful stop), if we still hold it; errors are logged, not raised."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            record = await self.store.get()
            if record is not None and record.holder == self.identity:
                await self.store.update(record, released_spec(record, self.wall_clock()))
                log.info("released the Lease %s/%s", self.store.namespace, self.store.name)
        except Exception as error:  # noqa: BLE001 -- the next leader waits a lease duration instead
            log.warning("could not release the Lease: %s", _describe(error))
        self.on_leadership(False)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return f"API error {error.status} {error.reason}"
    return type(error).__name__


# --------------------------------------------------------------------------------- the process


async def serve_liveness(url: str) -> Callable[[], Awaitable[None]]:
    """A follower's liveness endpoint at kopf's ``--liveness`` URL (kopf serves it once leading):
    a follower is alive while its election loop runs, and the kubelet must not restart it."""
    from urllib.parse import urlparse

    import aiohttp.web

    parts = urlparse(url)
    app = aiohttp.web.Application()
    app.router.add_get(parts.path or "/", lambda request: aiohttp.web.json_response({"leader": False}))
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80).start()
    return runner.cleanup


def exit_at_once(code: int = 1) -> None:
    """Leave now: no task, thread or handler of the operator runs after this (a graceful kopf stop
    would run handlers and wait for loops, up to seconds, while another replica may take over)."""
    logging.shutdown()
    os._exit(code)


async def run_elected(elector: LeaderElector, operate: Callable[[], Awaitable[None]],
                      follow: Callable[[], Awaitable[Callable[[], Awaitable[None]]]] | None = None,
                      on_lost: Callable[[], None] = exit_at_once) -> int:
    """Follow until elected, then run ``operate()`` (kopf) while renewing. ``follow()`` starts what a
    follower serves (its liveness endpoint) and returns how to stop it. The return value is the
    exit code: 0 after a graceful stop (the Lease released). Losing the Lease calls ``on_lost``
    (default: leave the process at once, exit code 1).

    SIGTERM/SIGINT while following end the process; while leading, kopf handles them and returns."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    stop_serving = await follow() if follow is not None else None
    acquiring = asyncio.ensure_future(elector.acquire())
    signalled = loop.create_future()
    for signum in signals:
        loop.add_signal_handler(signum, lambda: signalled.done() or signalled.set_result(None))
    try:
        await asyncio.wait({acquiring, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        if stop_serving is not None:
            await stop_serving()
    if not acquiring.done():
        acquiring.cancel()
        log.info("stopped while following")
        return 0
    acquiring.result()
    operating = asyncio.ensure_future(operate())
    holding = asyncio.ensure_future(elector.hold(on_lost))  # on_lost: at once, from inside hold()
    await asyncio.wait({operating, holding}, return_when=asyncio.FIRST_COMPLETED)
    if holding.done():  # only where on_lost returns (tests)
        operating.cancel()
        return 1
    await elector.stop_holding(holding)
    await elector.release()
    failure = operating.exception()
    if failure is not None:
        log.error("the operator failed; the Lease is released", exc_info=failure)
    return 0 if failure is None else 1
