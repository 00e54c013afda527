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
LOOK_EVERY_SECONDS = 10.0


@dataclass
class Refreezer:
    """Decides when to freeze again: pure, fed the endpoint count and the monotonic time."""
    frozen_at_count: int = 0
    last_count: int = 0
    last_change: float = 0.0

    def due(self, count: int, now: float) -> bool:
        if count != self.last_count:
            self.last_count, self.last_change = count, now
            return False
        moved = abs(count - self.frozen_at_count)
        settled = now - self.last_change >= SETTLE_SECONDS
        return settled and moved >= max(MIN_CHANGE, CHANGE_FRACTION * self.frozen_at_count)

    def frozen(self, count: int) -> None:
        self.frozen_at_count = count


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
