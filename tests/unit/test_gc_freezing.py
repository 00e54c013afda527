"""gc_freezing.py: freeze again once a burst of endpoints has settled, never in the middle of one."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from slotkeeper import gc_freezing
from slotkeeper.gc_freezing import BURST_FREEZE_EVERY, MIN_CHANGE, SETTLE_SECONDS, Refreezer, keep_frozen


def test_a_burst_is_frozen_once_it_has_held_still():
    refreezer = Refreezer(frozen_at_count=0, last_count=0, last_change=0.0)
    assert not refreezer.due(500, 10.0)  # still growing
    assert not refreezer.due(1000, 20.0)
    assert not refreezer.due(1000, 20.0 + SETTLE_SECONDS - 1)  # not settled long enough
    assert refreezer.due(1000, 20.0 + SETTLE_SECONDS)
    refreezer.frozen(1000)
    assert not refreezer.due(1000, 20.0 + 10 * SETTLE_SECONDS)  # frozen at this count: nothing new


def test_small_changes_wait_for_a_tenth_or_a_hundred():
    refreezer = Refreezer(frozen_at_count=5000, last_count=5000, last_change=0.0)
    for count in (5100, 5400):  # +100 and +400 are under a tenth of 5,000
        refreezer.due(count, 0.0)
        assert not refreezer.due(count, SETTLE_SECONDS * 2)
    refreezer.due(5500, 100.0)
    assert refreezer.due(5500, 100.0 + SETTLE_SECONDS)
    small = Refreezer(frozen_at_count=10, last_count=10, last_change=0.0)
    small.due(10 + MIN_CHANGE - 1, 0.0)
    assert not small.due(10 + MIN_CHANGE - 1, SETTLE_SECONDS * 2)


def test_mass_deletion_counts_too():
    refreezer = Refreezer(frozen_at_count=2000, last_count=2000, last_change=0.0)
    refreezer.due(1000, 5.0)
    assert refreezer.due(1000, 5.0 + SETTLE_SECONDS)


def test_a_growing_burst_is_frozen_every_so_many_endpoints_and_the_refreeze_still_comes_after_it():
    refreezer = Refreezer(frozen_at_count=0, last_count=0, last_change=0.0)
    assert not refreezer.burst_due(BURST_FREEZE_EVERY - 1)
    assert refreezer.burst_due(BURST_FREEZE_EVERY)
    assert not refreezer.burst_due(2 * BURST_FREEZE_EVERY - 1)  # counted from that freeze
    assert refreezer.burst_due(2 * BURST_FREEZE_EVERY)
    assert not refreezer.burst_due(BURST_FREEZE_EVERY)  # endpoints deleted: nothing to freeze
    # the burst's freezes do not count as the refreeze: once it settles, the collection comes
    refreezer.due(2 * BURST_FREEZE_EVERY, 10.0)
    assert refreezer.due(2 * BURST_FREEZE_EVERY, 10.0 + SETTLE_SECONDS)
    refreezer.frozen(2 * BURST_FREEZE_EVERY)
    assert not refreezer.burst_due(3 * BURST_FREEZE_EVERY - 1)  # counted from the refreeze again
    assert refreezer.burst_due(3 * BURST_FREEZE_EVERY)


def test_the_loop_freezes_during_a_burst_without_collecting(monkeypatch):
    calls = []
    monkeypatch.setattr(gc_freezing, "refreeze", lambda: calls.append("refreeze") or 0.0)
    monkeypatch.setattr(gc_freezing.gc, "freeze", lambda: calls.append("freeze"))
    counts = iter([50, BURST_FREEZE_EVERY + 50, BURST_FREEZE_EVERY + 60, 2 * BURST_FREEZE_EVERY + 60])
    refreezer = Refreezer(frozen_at_count=50, last_count=50, last_change=0.0)
    clock = iter([1.0, 2.0, 3.0, 4.0]).__next__

    async def scenario():
        task = asyncio.create_task(keep_frozen(lambda: next(counts), refreezer, every=0, clock=clock))
        while len(calls) < 2:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert calls == ["freeze", "freeze"]  # at +200 and at +400, never a collection while it grows


def test_a_refreeze_frees_cycles_frozen_before_and_freezes_again():
    class Node:
        pass

    gc.collect()
    cycle = Node()
    cycle.me = cycle
    ref = weakref.ref(cycle)
    gc.freeze()
    try:
        del cycle
        gc.collect()
        assert ref() is not None  # frozen: no collection frees it
        gc_freezing.refreeze()
        assert ref() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_loop_refreezes_when_due(monkeypatch):
    calls = []
    monkeypatch.setattr(gc_freezing, "refreeze", lambda: calls.append("refreeze") or 0.0)
    counts = iter([100, 1000, 1000, 1000])
    refreezer = Refreezer(frozen_at_count=100, last_count=100, last_change=0.0)
    clock = iter([1.0, 2.0, 2.0 + SETTLE_SECONDS, 99.0]).__next__

    async def scenario():
        task = asyncio.create_task(keep_frozen(lambda: next(counts), refreezer, every=0, clock=clock))
        while not calls:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert calls == ["refreeze"] and refreezer.frozen_at_count == 1000


def test_the_operator_keeps_refreezing_from_start_up_to_clean_up(monkeypatch):
    from slotkeeper import handlers

    import kopf

    monkeypatch.setattr(handlers, "_start_metrics", lambda memo: asyncio.sleep(0))
    monkeypatch.setattr(gc, "freeze", lambda: None)  # the test process keeps its collector as it is

    class Loops:
        def __len__(self) -> int:
            return 0

        async def stop_all(self) -> None:
            return None

    class Closable:
        async def aclose(self) -> None:
            return None

        async def close(self) -> None:
            return None

    class Watches:
        def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

    async def scenario():
        memo = kopf.Memo(cluster=Closable(), slot_access=object(), loops=Loops(), http=Closable(), metrics=object(),
                         owned=Watches(), gc_freeze=True)
        await handlers.configure(settings=kopf.OperatorSettings(), memo=memo)
        task = memo.refreezing
        await asyncio.sleep(0)
        assert not task.done()
        await handlers.close(memo=memo)
        await asyncio.sleep(0)
        assert task.cancelled()  # by close(), not by asyncio.run's own clean-up after the scenario

    asyncio.run(scenario())
