"""Two costs kopf pays on every watch event that slotkeeper has no use for.

Measured with py-spy on the operator creating 1,000 endpoints (benchmarks/operator, RESULTS.md):
kopf's diff base took 5 % of the operator's CPU and its JSON decoding of watch lines 6 %.

* **The diff base.** For every event of every watched kind kopf builds the object's "essence" (a
  deep copy of the whole body, managedFields included) and diffs it against the last handled one.
  Only change-detecting handlers (on.create/update/resume/field) and daemons use that diff;
  slotkeeper registers none (its handlers are on.event and start-up/clean-up), so
  :class:`NoDiffBase` says there is none. ``tests/unit/test_kopf_tuning.py`` fails if such a handler
  is ever registered, because it would then need the real storage back.
* **Watch decoding.** kopf decodes each watch line with the standard library's ``json``; orjson
  builds the same objects several times faster. kopf's module is private, so
  :func:`decode_watch_lines_with_orjson` changes nothing (and says so) when it is not where it was;
  the unit test names the kopf version it checked.
"""

from __future__ import annotations

import json
import logging
import types
from typing import Any

import kopf
import orjson

log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """No essence and no diff: nothing of slotkeeper's asks kopf what changed."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def decode_watch_lines_with_orjson() -> bool:
    """kopf's watch stream decodes with orjson from now on; False if kopf no longer decodes there."""
    try:
        from kopf._cogs.clients import api
    except ImportError:
        api = None
    current = getattr(api, "json", None)
    if not isinstance(current, types.ModuleType):
        log.info("kopf's watch decoding is not where it was: left as it is")
        return False
    if getattr(current, "loads", None) is orjson.loads:
        return True
    shim = types.ModuleType(json.__name__)
    shim.__dict__.update(json.__dict__)
    shim.loads = orjson.loads  # kopf calls json.loads(line.decode("utf-8")): orjson takes str too
    api.json = shim
    return True
