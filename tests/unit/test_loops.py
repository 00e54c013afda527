"""The per-endpoint loops: one per endpoint however many events arrive, each seeing the latest
body, woken by events, stopped by deletion or the operator's exit, and started again if one ended."""

from __future__ import annotations

import asyncio

from slotkeeper.loops import EARLIER_STATUSES_KEPT, EndpointLoop, EndpointLoops
from slotkeeper.owned import OwnedIndex

KEY = ("ml", "credit")


class Recorder:
    """A loop body that records each pass's body, and waits for a wake-up or the stop in between."""

    def __init__(self) -> None:
        self.started = 0
        self.passes: list[dict] = []
        self.passed = asyncio.Event()

    async def __call__(self, key, loop) -> None:
        self.started += 1
        while not loop.stopped.is_set():
            loop.wakeup.clear()
            self.passes.append(dict(loop.body))
            self.passed.set()
            waiters = [asyncio.ensure_future(loop.wakeup.wait()), asyncio.ensure_future(loop.stopped.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    async def next_pass(self) -> dict:
        await asyncio.wait_for(self.passed.wait(), timeout=5)
        self.passed.clear()
        return self.passes[-1]


async def test_one_loop_per_endpoint_sees_the_latest_body_and_is_woken():
    loops, run = EndpointLoops(), Recorder()
    loops.seen(KEY, {"v": 1}, run)
    assert await run.next_pass() == {"v": 1}
    loops.seen(KEY, {"v": 2}, run)  # a later event: the same loop, woken with the new body
    assert await run.next_pass() == {"v": 2}
    loops.wake("ml", "credit")  # an owned object changed
    assert await run.next_pass() == {"v": 2}
    loops.wake("ml", "other")  # not ours: nothing happens (no loop for it)
    assert run.started == 1 and KEY in loops
    await loops.stop_all()


async def test_stop_ends_the_loop_and_forgets_it():
    loops, run = EndpointLoops(), Recorder()
    loops.seen(KEY, {"v": 1}, run)
    await run.next_pass()
    await loops.stop(KEY)
    assert KEY not in loops
    await loops.stop(KEY)  # stopping twice is harmless


async def test_a_loop_that_ended_by_itself_is_started_again_by_the_next_event():
    loops, starts = EndpointLoops(), []

    async def ends_at_once(key, loop):
        starts.append(dict(loop.body))

    loops.seen(KEY, {"v": 1}, ends_at_once)
    await asyncio.sleep(0)  # let the task run to its end
    await asyncio.sleep(0)
    assert KEY not in loops
    loops.seen(KEY, {"v": 2}, ends_at_once)
    await asyncio.sleep(0)
    assert starts == [{"v": 1}, {"v": 2}]


async def test_a_loop_that_ignores_the_stop_is_cancelled(monkeypatch):
    import slotkeeper.loops as module
    monkeypatch.setattr(module, "STOP_TIMEOUT_SECONDS", 0.01)
    loops, cancelled = EndpointLoops(), asyncio.Event()

    async def stubborn(key, loop):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loops.seen(KEY, {}, stubborn)
    await asyncio.sleep(0)
    await loops.stop_all()
    assert cancelled.is_set() and KEY not in loops


async def test_a_stopping_loop_counts_as_running_until_its_pass_ends_and_a_new_one_may_start():
    loops, release, passes = EndpointLoops(), asyncio.Event(), []

    async def slow_last_pass(key, loop):
        passes.append(dict(loop.body))
        await loop.stopped.wait()
        await release.wait()  # the pass under way when the stop came (e.g. an API call)

    loops.seen(KEY, {"v": 1}, slow_last_pass)
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(loops.stop(KEY))
    await asyncio.sleep(0)
    assert KEY in loops  # still finishing: a test or a caller waiting for "stopped" must wait on
    loops.seen(KEY, {"v": 2}, slow_last_pass)  # the endpoint was created again under the same name
    await asyncio.sleep(0)
    assert passes == [{"v": 1}, {"v": 2}]
    release.set()
    await stopping
    await loops.stop_all()
    assert KEY not in loops


async def test_a_loop_keeps_the_endpoint_without_its_managed_fields():
    """Kept for every endpoint between events: managedFields are often most of the object."""
    passes: list = []

    async def run(key, loop):
        passes.append(loop.body)

    loops = EndpointLoops()
    body = {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint", "spec": {"model": {"name": "m"}},
            "metadata": {"name": "credit", "uid": "u1", "annotations": {"a": "b"},
                         "managedFields": [{"manager": "slotkeeper", "fieldsV1": {"f:status": {}}}]},
            "status": {"phase": "Healthy"}}
    loops.seen(KEY, body, run)
    await asyncio.sleep(0)
    await loops.stop_all()
    assert passes == [{"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint", "spec": {"model": {"name": "m"}},
                       "metadata": {"name": "credit", "uid": "u1", "annotations": {"a": "b"}},
                       "status": {"phase": "Healthy"}}]
    assert "managedFields" in body["metadata"]  # the watch's own body is not changed


# ------------------------------------------------- handlers: the sleep between passes, what is kept


async def test_a_sleeping_loop_wakes_on_an_event_on_its_stop_or_when_its_delay_is_over():
    from slotkeeper.handlers import _sleep
    from slotkeeper.loops import EndpointLoop, _stop

    loop = EndpointLoop(key=KEY, body={})
    sleeping = asyncio.create_task(_sleep(loop, 60))
    await asyncio.sleep(0)
    loop.wakeup.set()  # an event about the endpoint
    await asyncio.wait_for(sleeping, 1)

    loop.wakeup.clear()
    sleeping = asyncio.create_task(_sleep(loop, 60))
    await asyncio.sleep(0)
    await asyncio.wait_for(_stop(loop), 1)  # no task of its own to wait for: the sleep must end by itself
    await asyncio.wait_for(sleeping, 1)
    assert loop.stopped.is_set()

    loop.wakeup.clear()
    await asyncio.wait_for(_sleep(loop, 0.01), 1)  # nothing happens: the delay ends it


async def test_once_its_status_is_written_a_loop_keeps_the_endpoint_without_the_watchs_status(monkeypatch):
    """The passes read their own last status write (the watch may lag behind it): the watch's copy
    of status is not kept for an idle endpoint."""
    from slotkeeper import handlers

    bodies = []

    class Reconciler:
        def __init__(self, **_):
            self.written_status, self.writes_done, self.namespace, self.name = None, 0, *KEY
            self.metrics = None  # as without an OperatorMetrics

        async def reconcile(self, body, sources):
            bodies.append(dict(body))
            self.written_status = {"phase": "Healthy"}
            return 60.0

    monkeypatch.setattr(handlers, "EndpointReconciler", Reconciler)
    monkeypatch.setattr(handlers, "CheckRunner", lambda *_, **__: None)
    listed = asyncio.Event()

    class Owned:  # the owned objects' watches: empty, listed once the test says so
        @property
        def listed(self):
            return listed.is_set()

        async def wait_listed(self):
            await listed.wait()

        def __getitem__(self, index):
            return OwnedIndex()

    memo = type("Memo", (), {"cluster": type("Cluster", (), {"read_keys": None})(), "http": None,
                             "slot_access": None, "retry_backoff": 0.5, "owned": Owned()})()
    loops = EndpointLoops()
    body = {"metadata": {"name": "credit"}, "spec": {}, "status": {"phase": "Progressing"}}

    async def run(key, loop):
        await handlers.reconcile_endpoint(key, loop, memo)

    loops.seen(KEY, body, run)
    for _ in range(20):
        await asyncio.sleep(0)
    assert bodies == []  # no pass before every owned kind has been listed
    other = EndpointLoop(("ml", "other"), body)
    waiting = asyncio.ensure_future(handlers.reconcile_endpoint(other.key, other, memo))
    await asyncio.sleep(0)
    other.stopped.set()  # told to stop while it waits for the listing: it ends at once, without a pass
    await asyncio.wait_for(waiting, 1)
    assert bodies == []
    listed.set()
    for _ in range(20):
        await asyncio.sleep(0)
    (loop,) = loops._loops.values()
    assert bodies == [body]  # the first pass had the watch's status
    assert loop.body == {"metadata": {"name": "credit"}, "spec": {}}
    await loops.stop_all()


def endpoint(status=None, spec=None, **meta) -> dict:
    return {"metadata": {"name": "credit", "namespace": "ml", "uid": "u1", "generation": 1, "resourceVersion": "5",
                         **meta},
            "spec": spec or {"model": {"name": "m"}}, **({"status": status} if status is not None else {})}


async def test_the_echo_of_the_loops_own_status_write_does_not_wake_it_but_anything_else_does():
    loops, run = EndpointLoops(), Recorder()
    assert loops.seen(KEY, endpoint(), run)
    await run.next_pass()
    loop = loops._loops[KEY]
    loop.written_status = {"phase": "Healthy", "stableRevision": "abc"}
    echo = endpoint(status={"phase": "Healthy", "stableRevision": "abc"}, resourceVersion="6",
                    managedFields=[{"manager": "slotkeeper"}])
    assert loops.seen(KEY, echo, run) is False
    await asyncio.sleep(0.05)
    assert len(run.passes) == 1 and loop.body["metadata"]["resourceVersion"] == "6"  # kept, not woken
    news = [
        endpoint(status={"phase": "Degraded", "stableRevision": "abc"}),  # someone else's status write
        endpoint(status={"phase": "Healthy", "stableRevision": "abc"}, spec={"model": {"name": "n"}}),
        endpoint(status={"phase": "Healthy", "stableRevision": "abc"}, generation=2),
        endpoint(status={"phase": "Healthy", "stableRevision": "abc"}, annotations={"slotkeeper.io/rollback": "1"}),
        endpoint(status={"phase": "Healthy", "stableRevision": "abc"}, deletionTimestamp="2026-12-01T00:00:00Z"),
    ]
    for body in news:
        assert loops.seen(KEY, body, run) is True
        await run.next_pass()
    assert len(run.passes) == 1 + len(news)
    await loops.stop_all()


async def test_the_echo_of_an_earlier_status_write_does_not_wake_the_loop_until_the_last_ones_came():
    """Two passes wrote A, then B, before the watch showed A: A's echo is no news either. Once B's
    echo came, A's cannot come any more (a watch is ordered): A again is someone else's write."""
    loops, run = EndpointLoops(), Recorder()
    loops.seen(KEY, endpoint(), run)
    await run.next_pass()
    loop = loops._loops[KEY]
    first, second = {"phase": "Progressing"}, {"phase": "Healthy"}
    loop.remember_written(first)
    loop.remember_written(dict(second))
    loop.remember_written(second)  # the same status again (a pass that wrote nothing new) is not an earlier one
    assert loop.earlier_statuses == [first] and loop.written_status is second
    assert loops.seen(KEY, endpoint(status=first, resourceVersion="6"), run) is False
    assert loops.seen(KEY, endpoint(status=second, resourceVersion="7"), run) is False
    assert loop.earlier_statuses == []
    await asyncio.sleep(0.05)
    assert len(run.passes) == 1
    assert loops.seen(KEY, endpoint(status=first, resourceVersion="8"), run) is True
    await run.next_pass()
    # an earlier status with a changed spec is news all the same
    loop.remember_written(first)
    loop.remember_written(second)
    assert loops.seen(KEY, endpoint(status=first, spec={"model": {"name": "n"}}), run) is True
    await run.next_pass()
    await loops.stop_all()


def test_a_loop_keeps_a_few_earlier_statuses_only():
    loop = EndpointLoop(key=KEY, body={})
    for phase in range(10):
        loop.remember_written({"phase": str(phase)})
    assert loop.written_status == {"phase": "9"}
    assert loop.earlier_statuses == [{"phase": str(p)} for p in range(9 - EARLIER_STATUSES_KEPT, 9)]


async def test_before_its_first_write_every_event_wakes_the_loop():
    loops, run = EndpointLoops(), Recorder()
    loops.seen(KEY, endpoint(), run)
    await run.next_pass()
    assert loops.seen(KEY, endpoint(status={}), run) is True  # nothing written yet: {} is not an echo
    await run.next_pass()
    await loops.stop_all()
