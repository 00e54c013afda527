"""Endpoint keys: callers must present one of the keys in a directory (a mounted Secret).

The directory holds the files ``primary`` and ``secondary`` (the keys of a slotkeeper ``<name>-keys``
Secret); either key is accepted, so a client rotates with no downtime: it moves to the secondary key,
the primary is regenerated, and so on. The kubelet updates a mounted Secret in place (a new
timestamped directory, then an atomic swap of the ``..data`` symlink), so the keys are re-read when
the directory changes, at most every :data:`RELOAD_SECONDS`: a rotation needs no restart and no
rollout. Between a swap and the next look, the old keys still work and the new one may not yet.

A key travels as ``Authorization: Bearer <key>`` (as Azure ML online endpoints take it) or as
``X-Endpoint-Key: <key>``: the Kubernetes apiserver consumes the ``Authorization`` header of a request
it proxies (the operator's own credentials), so the operator's checks that go through the apiserver
proxy send the key in the second header. Comparison is constant-time (:func:`hmac.compare_digest`),
against every key, whichever matches. Keys are never logged; nothing here puts one in a message.

No readable key (the directory is missing, or both files are empty) refuses every protected request:
a keyed endpoint never fails open.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

KEY_FILES = ("primary", "secondary")
RELOAD_SECONDS = 1.0
HEADER_AUTHORIZATION = b"authorization"
HEADER_ENDPOINT_KEY = b"x-endpoint-key"
BEARER = b"bearer "
# Routes that stay open on a keyed server: the kubelet's probes carry no key, and /metrics is read by
# the operator's pods checks and by Prometheus (it holds counts and latencies, no model data).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
CHALLENGE = [(b"www-authenticate", b'Bearer realm="slotkeeper"')]


def presented_key(headers) -> bytes | None:
    """The key of a request, from its ASGI header list: a Bearer token, else X-Endpoint-Key."""
    fallback = None
    for name, value in headers:
        if name == HEADER_AUTHORIZATION:
            if value[:7].lower() == BEARER:
                return value[7:].strip()
        elif name == HEADER_ENDPOINT_KEY:
            fallback = value.strip()
    return fallback


class KeyRing:
    """The keys in ``directory``, re-read when its contents change."""

    def __init__(self, directory: Path, *, reload_seconds: float = RELOAD_SECONDS, clock=time.monotonic) -> None:
        self.directory = Path(directory)
        self.reload_seconds = reload_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._keys: tuple[bytes, ...] = ()
        self._checked = float("-inf")
        self.reload()

    def _current_signature(self) -> tuple:
        parts = []
        for name in ("..data", *KEY_FILES):
            try:
                stat = os.stat(self.directory / name)
            except OSError:
                parts.append(None)
            else:
                parts.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return tuple(parts)

    def reload(self) -> None:
        """Read the key files now (when they changed since the last read)."""
        signature = self._current_signature()
        self._checked = self._clock()
        if signature == self._signature:
            return
        keys = []
        for name in KEY_FILES:
            try:
                value = (self.directory / name).read_bytes().strip()
            except OSError:
                continue
            if value:
                keys.append(value)
        self._signature, self._keys = signature, tuple(keys)
        if keys:
            log.info("endpoint keys loaded from %s (%d key%s)", self.directory, len(keys), "" if len(keys) == 1 else "s")
        else:
            log.warning("no endpoint key readable in %s: every protected request is refused", self.directory)

    def keys(self) -> tuple[bytes, ...]:
        if self._clock() - self._checked >= self.reload_seconds:
            with self._lock:
                if self._clock() - self._checked >= self.reload_seconds:
                    self.reload()
        return self._keys

    def accepts(self, key: bytes | None) -> bool:
        if not key:
            return False
        matched = False
        for candidate in self.keys():  # every key is compared: the time does not tell which matched
            matched |= hmac.compare_digest(candidate, key)
        return matched


def is_open(path: str) -> bool:
    return path in OPEN_PATHS
