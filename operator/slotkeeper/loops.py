"""One reconcile loop per endpoint, as asyncio tasks owned by the operator process.

Not kopf daemons: a daemon makes kopf put a finalizer on its object, and then deleting an endpoint,
its namespace or the whole install hangs while the operator is down. The endpoint watch hands each
endpoint's latest body to :meth:`EndpointLoops.seen` (which starts its loop the first time), the
watches of owned objects :meth:`~EndpointLoops.wake` it, and deletion or the operator's exit stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

STOP_TIMEOUT_SECONDS = 5.0
EARLIER_STATUSES_KEPT = 4  # a loop writes its status once per pass; echoes lag by a few passes at most

Key = tuple[str, str]  # (namespace, name)


@dataclass(eq=False)
class EndpointLoop:
    """What one endpoint's loop shares with the watch handlers: the latest body and two signals."""
    key: Key
    body: Mapping[str, Any]
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    written_status: Mapping[str, Any] | None = None  # the status its last finished pass left (handlers.py)
    # Statuses it wrote before that one whose echoes may still be on their way (see only_own_status).
    earlier_statuses: list[Mapping[str, Any]] = field(default_factory=list)

    def remember_written(self, status: Mapping[str, Any]) -> None:
        """The status a pass left; the one before it is kept while its echo may still come."""
        if self.written_status is not None and status != self.written_status:
            self.earlier_statuses = [*self.earlier_statuses[-(EARLIER_STATUSES_KEPT - 1):], self.written_status]
        self.written_status = status


# What a status write of the loop's own leaves as it was: an event differing from the body the loop
# has in nothing else is the echo of that write (resourceVersion and managedFields aside).
UNCHANGED_BY_A_STATUS_WRITE = ("uid", "generation", "labels", "annotations", "finalizers", "deletionTimestamp")


def only_own_status(loop: EndpointLoop, body: Mapping[str, Any]) -> bool:
    """The endpoint as the watch shows it is one of the loop's own status writes and nothing new:
    waking the loop would make a pass with nothing to do (the passes read the loop's last written
    status, never the watch's, once they have written one). The echo of an earlier write counts too:
    at 1,000 endpoints created at once, 2.1 passes per endpoint were woken by echoes of a status the
    loop had written over since (benchmarks/operator tweaks.py count_passes). The echo of the last
    write comes after those of the earlier ones (a watch is ordered), so they are forgotten then."""
    written, status = loop.written_status, body.get("status")
    if written is None or body.get("spec") != loop.body.get("spec"):
        return False
    if status == written:
        loop.earlier_statuses = []
    elif status not in loop.earlier_statuses:
        return False
    meta, before = body.get("metadata") or {}, loop.body.get("metadata") or {}
    return all(meta.get(key) == before.get(key) for key in UNCHANGED_BY_A_STATUS_WRITE)


def kept_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a loop keeps of the endpoint between events: a copy without ``metadata.managedFields``.

    The reconcile pass reads metadata, spec and status, and kopf.event the identity; managedFields
    (one entry per field manager, the status fields slotkeeper writes among them) are often the
    largest part of the object, and the watch body is kept for every endpoint, idle ones too."""
    kept = dict(body)
    meta = kept.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        kept["metadata"] = {key: value for key, value in meta.items() if key != "managedFields"}
    return kept


class EndpointLoops:
    """The running loops, one per endpoint, owned by the operator process (no finalizer needed)."""

    def __init__(self) -> None:
        self._loops: dict[Key, EndpointLoop] = {}
        # Loops told to stop whose pass has not ended yet. Not in _loops, so an endpoint created
        # again under the same name gets a loop of its own at once.
        self._stopping: list[EndpointLoop] = []

    def __len__(self) -> int:
        """Endpoints with a running loop."""
        return len(self._loops)

    def __contains__(self, key: Key) -> bool:
        """A loop runs for ``key``, or one is still finishing its last pass."""
        return key in self._loops or any(loop.key == key for loop in self._stopping)

    def seen(self, key: Key, body: Mapping[str, Any],
             run: Callable[[Key, EndpointLoop], Awaitable[None]]) -> bool:
        """The endpoint exists as ``body``: hand it to its loop (starting one if none runs) and wake it;
        not woken (False) when the body only shows the loop's own last status write."""
        body = kept_body(body)
        loop = self._loops.get(key)
        if loop is None or (loop.task is not None and loop.task.done()):
            loop = self._loops[key] = EndpointLoop(key=key, body=body)
            loop.task = asyncio.create_task(self._run(key, loop, run), name=f"slotkeeper:{key[0]}/{key[1]}")
        elif only_own_status(loop, body):
            loop.body = body
            return False
        loop.body = body
        loop.wakeup.set()
        return True

    async def _run(self, key: Key, loop: EndpointLoop, run: Callable[[Key, EndpointLoop], Awaitable[None]]) -> None:
        try:
            await run(key, loop)
        finally:
            if self._loops.get(key) is loop:
                del self._loops[key]

    def wake(self, namespace: str | None, name: str | None) -> None:
        loop = self._loops.get((namespace or "", name or ""))
        if loop is not None:
            loop.wakeup.set()

    async def stop(self, key: Key) -> None:
        loop = self._loops.pop(key, None)
        if loop is not None:
            await self._finish(loop)

    async def stop_all(self) -> None:
        loops, self._loops = list(self._loops.values()), {}
        await asyncio.gather(*(self._finish(loop) for loop in loops))

    async def _finish(self, loop: EndpointLoop) -> None:
        self._stopping.append(loop)
        try:
            await _stop(loop)
        finally:
            self._stopping.remove(loop)


async def _stop(loop: EndpointLoop) -> None:
    """Ask the loop to finish its pass; cancel it if it does not within STOP_TIMEOUT_SECONDS."""
    loop.stopped.set()
    loop.wakeup.set()  # a sleeping loop waits for wakeup only
    if loop.task is None or loop.task.done() or loop.task is asyncio.current_task():
        return
    done, _ = await asyncio.wait({loop.task}, timeout=STOP_TIMEOUT_SECONDS)
    if not done:
        loop.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loop.task


