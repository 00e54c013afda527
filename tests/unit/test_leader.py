"""Leader election: the pure decisions (client-go semantics, local observation times) and the
elector's loop against an in-memory Lease store with a fake clock."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from slotkeeper.leader import (ElectionTiming, LeaderElector, LeaseConflict, LeaseRecord, Move,
                               default_lease_namespace, lease_spec, micro_time, next_move, observe, released_spec,
                               renew_overdue, run_elected)

TIMING = ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=2)


def record(holder: str, version: str = "1", duration: int = 15, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord.from_lease({"metadata": {"resourceVersion": version}, "spec": {
        "holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": transitions,
        "acquireTime": "2026-12-01T10:00:00.000000Z", "renewTime": "2026-12-01T10:00:00.000000Z"}})


# ------------------------------------------------------------------------------------------ decisions


def test_defaults_are_argo_rollouts_and_bad_timings_are_refused_with_the_reason():
    assert ElectionTiming() == ElectionTiming(15.0, 10.0, 2.0)
    assert ElectionTiming().problems() == []
    assert "must be shorter than --lease-duration" in " ".join(ElectionTiming(10, 10, 2).problems())
    assert "must be shorter than --renew-deadline" in " ".join(ElectionTiming(15, 10, 10).problems())
    assert ElectionTiming(15, 10, 0).problems() == ["--retry-period must be > 0"]


def test_a_follower_counts_the_lease_duration_from_its_own_first_sighting_not_from_renew_time():
    other = record("b_1")
    seen = observe(None, other, now=1000.0)
    assert next_move("a_1", other, seen, now=1014.9) is Move.FOLLOW
    assert next_move("a_1", other, seen, now=1015.0) is Move.TAKE
    # The same record read again later keeps the first sighting ...
    assert observe(seen, other, now=1010.0) is seen
    # ... a renewal (a new resourceVersion) restarts the count, whatever renewTime it wrote.
    renewed = record("b_1", version="2")
    later = observe(seen, renewed, now=1014.0)
    assert later.since == 1014.0
    assert next_move("a_1", renewed, later, now=1020.0) is Move.FOLLOW


def test_the_lease_duration_is_the_one_the_record_names():
    short = record("b_1", duration=3)
    seen = observe(None, short, now=0.0)
    assert next_move("a_1", short, seen, now=3.0) is Move.TAKE


def test_no_lease_is_created_a_released_one_taken_at_once_and_ours_renewed():
    assert next_move("a_1", None, None, now=0.0) is Move.CREATE
    free = record("")
    assert next_move("a_1", free, observe(None, free, 0.0), now=0.0) is Move.TAKE
    mine = record("a_1")
    assert next_move("a_1", mine, observe(None, mine, 0.0), now=0.0) is Move.RENEW


def test_taking_over_counts_a_transition_renewing_keeps_the_acquire_time():
    taken = lease_spec("a_1", record("b_1", transitions=4), TIMING, "2026-12-01T11:00:00.000000Z")
    assert taken == {"holderIdentity": "a_1", "leaseDurationSeconds": 15, "leaseTransitions": 5,
                     "acquireTime": "2026-12-01T11:00:00.000000Z", "renewTime": "2026-12-01T11:00:00.000000Z"}
    renewed = lease_spec("a_1", record("a_1", transitions=5), TIMING, "2026-12-01T11:00:02.000000Z")
    assert (renewed["leaseTransitions"], renewed["acquireTime"]) == (5, "2026-12-01T10:00:00.000000Z")
    assert lease_spec("a_1", None, TIMING, "t")["leaseTransitions"] == 0
    # A fractional duration is written rounded up: never shorter than the leader assumes.
    assert lease_spec("a_1", None, ElectionTiming(2.5, 2, 1), "t")["leaseDurationSeconds"] == 3


def test_a_release_clears_the_holder_and_keeps_the_transitions():
    spec = released_spec(record("a_1", transitions=3), "t")
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (None, 1, 3)


def test_the_leader_is_overdue_at_the_renew_deadline_from_its_last_renewal_sent():
    assert not renew_overdue(last_renewed=100.0, now=109.9, timing=TIMING)
    assert renew_overdue(last_renewed=100.0, now=110.0, timing=TIMING)


def test_micro_time_has_six_fractional_digits_even_on_a_whole_second():
    from datetime import datetime, timezone
    assert micro_time(datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone.utc)) == "2026-12-01T10:00:00.000000Z"


def test_the_lease_namespace_comes_from_the_pod(tmp_path):
    account = tmp_path / "namespace"
    assert default_lease_namespace({"POD_NAMESPACE": "ops"}, account) == "ops"
    assert default_lease_namespace({}, account) is None  # outside a pod: no election by default
    account.write_text("slotkeeper-system\n")
    assert default_lease_namespace({}, account) == "slotkeeper-system"


# ------------------------------------------------------------------------------------- the elector


class MemoryLeases:
    """One Lease with resourceVersion optimistic concurrency, as the apiserver keeps it."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.versions = itertools.count(1)
        self.namespace, self.name = "ops", "slotkeeper-operator"
        self.hang = False  # every request blocks (an API that stopped answering)
        self.writes: list[str] = []
        self.conflicts = 0

    async def _maybe_hang(self) -> None:
        await asyncio.sleep(0)  # a request takes a turn of the loop: concurrent candidates interleave
        if self.hang:
            await asyncio.Event().wait()

    def _store(self, spec) -> LeaseRecord:
        self.lease = {"metadata": {"resourceVersion": str(next(self.versions))}, "spec": dict(spec)}
        self.writes.append(spec["holderIdentity"] or "")
        return LeaseRecord.from_lease(self.lease)

    async def get(self) -> LeaseRecord | None:
        await self._maybe_hang()
        return LeaseRecord.from_lease(self.lease) if self.lease is not None else None

    async def create(self, spec) -> LeaseRecord:
        await self._maybe_hang()
        if self.lease is not None:
            self.conflicts += 1
            raise LeaseConflict("AlreadyExists")
        return self._store(spec)

    async def update(self, record: LeaseRecord, spec) -> LeaseRecord:
        await self._maybe_hang()
        if self.lease is None or self.lease["metadata"]["resourceVersion"] != record.resource_version:
            self.conflicts += 1
            raise LeaseConflict("Conflict")
        return self._store(spec)


def elector(store: MemoryLeases, identity: str, transitions: list | None = None) -> LeaderElector:
    loop = asyncio.get_running_loop()
    return LeaderElector(store, identity, TIMING, clock=loop.time, wall_clock=lambda: micro_time(),
                         on_leadership=(transitions.append if transitions is not None else lambda leader: None))


@pytest.mark.looptime
async def test_two_candidates_one_leader_and_the_other_takes_over_only_after_a_lease_duration():
    store = MemoryLeases()
    seen: list[bool] = []
    a, b = elector(store, "a_1", seen), elector(store, "b_1")
    await a.acquire()
    assert seen == [True] and store.writes == ["a_1"]
    loop = asyncio.get_running_loop()
    holding = asyncio.create_task(a.hold())
    following = asyncio.create_task(b.acquire())
    await asyncio.sleep(60)
    assert not following.done() and set(store.writes) == {"a_1"}  # b only read while a renewed
    holding.cancel()  # a dies (no release); its last renewal was at most a retry period ago
    died = loop.time()
    await following
    assert store.writes[-1] == "b_1"
    assert loop.time() - died >= TIMING.lease_duration - TIMING.retry_period  # not before its lease ran out
    assert store.lease["spec"]["leaseTransitions"] == 1


@pytest.mark.looptime
async def test_two_candidates_starting_together_elect_one_the_create_decides():
    store = MemoryLeases()
    a, b = elector(store, "a_1"), elector(store, "b_1")
    racing = [asyncio.create_task(a.acquire()), asyncio.create_task(b.acquire())]
    done, pending = await asyncio.wait(racing, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(pending) == 1  # one leads, the other still follows after 30 s
    assert store.writes == [store.lease["spec"]["holderIdentity"]]  # one create stored ...
    assert store.conflicts == 1  # ... the other refused (both had read "no Lease")
    for task in pending:
        task.cancel()


@pytest.mark.looptime
async def test_a_leader_whose_requests_hang_gives_up_at_the_renew_deadline_before_anyone_may_take_over():
    store = MemoryLeases()
    seen: list[bool] = []
    a = elector(store, "a_1", seen)
    await a.acquire()
    loop = asyncio.get_running_loop()
    last = a.last_renewed
    store.hang = True
    lost_at: list[float] = []
    await a.hold(on_lost=lambda: lost_at.append(loop.time()))  # returns: leadership lost
    assert seen == [True, False]
    assert lost_at == [loop.time()]  # on_lost ran inside hold(), at the deadline
    assert loop.time() - last == pytest.approx(TIMING.renew_deadline, abs=0.01)  # the watchdog, not a timeout
    assert loop.time() - last < TIMING.lease_duration


@pytest.mark.looptime
async def test_a_leader_that_finds_another_holder_gives_up_at_once():
    store = MemoryLeases()
    a = elector(store, "a_1")
    await a.acquire()
    store._store({"holderIdentity": "b_1", "leaseDurationSeconds": 15, "leaseTransitions": 1})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await a.hold()
    assert not a.is_leader and loop.time() - started <= TIMING.retry_period + 0.01


@pytest.mark.looptime
async def test_a_leader_whose_lease_was_released_or_deleted_does_not_take_it_again():
    for change in ("released", "deleted"):
        store = MemoryLeases()
        a = elector(store, "a_1")
        await a.acquire()
        if change == "released":
            store._store({"holderIdentity": None, "leaseDurationSeconds": 1, "leaseTransitions": 0})
        else:  # deleted
            store.lease = None
        writes = len(store.writes)
        await a.hold()
        assert not a.is_leader and len(store.writes) == writes, change  # lost, and wrote nothing


@pytest.mark.looptime
async def test_stop_holding_ends_the_renewals_without_a_loss():
    store = MemoryLeases()
    seen: list[bool] = []
    a = elector(store, "a_1", seen)
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    await asyncio.sleep(5)
    await a.stop_holding(holding)
    writes = len(store.writes)
    await asyncio.sleep(30)
    assert len(store.writes) == writes and seen == [True] and a.is_leader  # nothing renewed, nothing lost


@pytest.mark.looptime
async def test_a_graceful_stop_releases_the_lease_and_a_follower_takes_it_at_its_next_try():
    store = MemoryLeases()
    a, b = elector(store, "a_1"), elector(store, "b_1")
    stop = asyncio.Event()
    running = asyncio.create_task(run_elected(a, stop.wait, on_lost=lambda: None))
    await asyncio.sleep(5)
    following = asyncio.create_task(b.acquire())
    await asyncio.sleep(1)
    stop.set()  # the operator stopped (kopf after SIGTERM)
    assert await running == 0
    assert store.writes[-1] == ""  # released
    loop = asyncio.get_running_loop()
    released = loop.time()
    await following
    assert loop.time() - released <= TIMING.retry_period + 0.01


@pytest.mark.looptime
async def test_an_operator_that_fails_releases_the_lease_and_exits_non_zero():
    store = MemoryLeases()

    async def operate() -> None:
        await asyncio.sleep(3)
        raise RuntimeError("kopf gave up")

    assert await run_elected(elector(store, "a_1"), operate, on_lost=lambda: None) == 1
    assert store.writes == ["a_1", "a_1", ""]  # created, renewed once (retry 2 s), released


@pytest.mark.looptime
async def test_run_elected_stops_the_operator_when_the_lease_is_lost():
    store = MemoryLeases()
    a = elector(store, "a_1")
    lost: list[bool] = []
    operating = asyncio.Event()

    async def operate() -> None:
        operating.set()
        await asyncio.Event().wait()

    running = asyncio.create_task(run_elected(a, operate, on_lost=lambda: lost.append(True)))
    await operating.wait()
    store.hang = True
    assert await running == 1
    assert lost == [True]


# ------------------------------------------------------------------------------------------ the flags


def run_args(*argv: str):
    from slotkeeper.cli import _check_election, build_parser
    parser = build_parser()
    args = parser.parse_args(["run", *argv])
    _check_election(parser, args)
    return args


def test_election_is_on_in_a_pod_off_outside_one_and_standalone_turns_it_off(monkeypatch):
    monkeypatch.setattr("slotkeeper.leader.SERVICE_ACCOUNT_NAMESPACE", Path("/nonexistent/namespace"))
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert run_args().leader_elect is False
    monkeypatch.setenv("POD_NAMESPACE", "slotkeeper-system")
    args = run_args()
    assert (args.leader_elect, args.lease_namespace, args.lease_name) == (True, "slotkeeper-system",
                                                                          "slotkeeper-operator")
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (15.0, 10.0, 2.0)
    assert run_args("--standalone").leader_elect is False
    assert run_args("--no-leader-elect").leader_elect is False
    assert run_args("--lease-namespace", "ops").lease_namespace == "ops"


def test_election_flags_that_cannot_be_safe_are_refused_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr("slotkeeper.leader.SERVICE_ACCOUNT_NAMESPACE", Path("/nonexistent/namespace"))
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(SystemExit):
        run_args("--leader-elect")
    assert "--leader-elect needs --lease-namespace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_args("--leader-elect", "--lease-namespace", "ops", "--renew-deadline", "20")
    assert "--renew-deadline (20s) must be shorter than --lease-duration (15s)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_args("--leader-elect", "--lease-namespace", "ops", "--retry-period", "10")
    assert "--retry-period (10s) must be shorter than --renew-deadline (10s)" in capsys.readouterr().err
