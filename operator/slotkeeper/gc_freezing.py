"""Keep the endpoints' long-lived state out of the garbage collector's full collections.

A full collection walks every tracked object and stops the event loop meanwhile: at 10,000
endpoints that was 1.6-4.3 s per collection (benchmarks/operator/RESULTS.md), and a revert whose
failing verdict fell into one waited for it. Most of those objects live as long as their endpoint
(its loop, reconciler, kopf's memories and index entries). ``gc.freeze()`` moves every tracked
object to a generation the collector never walks; `slotkeeper run` freezes once after start-up.

:class:`Refreezer` does it again once the number of endpoints has changed by a tenth (at least
100) and then held still for a while (a burst of creations has settled): ``gc.unfreeze()``, one
full collection (so cyclic garbage frozen earlier, e.g. a deleted endpoint's loop, is freed then and
not kept for good), ``gc.freeze()``. That one collection pauses once per burst; the ones after it
walk only what is new. Reference counting frees frozen objects as usual: only cycles among them
wait for the next refreeze.

**During a burst** (BURST_FREEZE_EVERY more endpoints than at the last freeze, looked at every
second) it freezes without collecting: the full collections a growing heap triggers then walk only
what came since, not every endpoint created so far. Creating 1,000 endpoints at once, the
collector's pauses took the operator 0.9-1.8 s of a 12 s burst, and the API waited meanwhile
(benchmarks/operator/RESULTS.md, session 6). Cyclic garbage frozen that way (only what the collector
had not reached yet) waits for the refreeze after the burst; settled RSS measured the same.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

CHANGE_FRACTION = 0.1
MIN_CHANGE = 100
SETTLE_SECONDS = 30.0
LOOK_EVERY_SECONDS = 1.0
BURST_FREEZE_EVERY = 200  # endpoints more than at the last freeze of any kind


@dataclass
class Refreezer:
    """Decides when to freeze again: pure, fed the endpoint count and the monotonic time."""
    frozen_at_count: int = 0  # at the last refreeze (with its collection)
    last_count: int = 0
    last_change: float = 0.0
    burst_frozen_at_count: int | None = None  # at the last freeze of either kind (None: the refreeze's)

    def due(self, count: int, now: float) -> bool:
        if count != self.last_count:
            self.last_count, self.last_change = count, now
            return False
        moved = abs(count - self.frozen_at_count)
        settled = now - self.last_change >= SETTLE_SECONDS
        return settled and moved >= max(MIN_CHANGE, CHANGE_FRACTION * self.frozen_at_count)

    def frozen(self, count: int) -> None:
        self.frozen_at_count = count
        self.burst_frozen_at_count = None

    def burst_due(self, count: int) -> bool:
        """Grown by BURST_FREEZE_EVERY since the last freeze: freeze (no collection) while it goes on."""
        since = self.frozen_at_count if self.burst_frozen_at_count is None else self.burst_frozen_at_count
        if count - since < BURST_FREEZE_EVERY:
            return False
        self.burst_frozen_at_count = count
        return True


def refreeze() -> float:
    """unfreeze, collect, freeze; the seconds it took (the one pause it costs)."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


async def keep_frozen(count: Callable[[], int], refreezer: Refreezer | None = None,
                      every: float = LOOK_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
    """Runs for the operator's life (cancelled at exit)."""
    refreezer = refreezer or Refreezer(frozen_at_count=count(), last_count=count(), last_change=clock())
    while True:
        await asyncio.sleep(every)
        endpoints = count()
        if refreezer.due(endpoints, clock()):
            paused = refreeze()
            refreezer.frozen(endpoints)
            log.info("%d endpoints: long-lived objects frozen out of the collector's sight again (%d, %.2f s)",
                     endpoints, gc.get_freeze_count(), paused)
        elif refreezer.burst_due(endpoints):
            gc.freeze()
