"""kopf_tuning.py: safe only while slotkeeper asks kopf for no diff; the watch decoding really switches."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json

import kopf
import orjson
import pytest

from slotkeeper import handlers  # noqa: F401  (registers the operator's handlers in kopf's default registry)
from slotkeeper.kopf_tuning import NoDiffBase, decode_watch_lines_with_orjson


def test_slotkeeper_registers_no_handler_that_needs_kopfs_diff_base():
    registry = kopf.get_default_registry()
    changing = registry._changing.get_all_handlers()
    spawning = registry._spawning.get_all_handlers()
    assert changing == [] and spawning == [], (
        "a change-detecting handler or daemon needs kopf's diff base: drop NoDiffBase from handlers.configure "
        f"(changing: {[h.id for h in changing]}, daemons: {[h.id for h in spawning]})"
    )
    # kopf watches the endpoints only; what they own is watched by owned.py, outside kopf.
    assert [handler.id for handler in registry._watching.get_all_handlers()] == ["endpoint_changed"]
    assert registry._indexing.get_all_handlers() == []


def test_the_storage_builds_and_keeps_nothing():
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "y"}}, "spec": {"model": {}}})
    assert storage.build(body=body) is None and storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence={"spec": {}})
    assert not patch


def test_configure_installs_it(monkeypatch):
    settings = kopf.OperatorSettings()
    owned = type("Watches", (), {"start": lambda self: None})()
    memo = kopf.Memo(cluster=object(), slot_access=object(), loops=object(), http=object(), metrics=object(),
                     owned=owned)
    monkeypatch.setattr(handlers, "_start_metrics", lambda memo: asyncio.sleep(0))
    asyncio.run(handlers.configure(settings=settings, memo=memo))
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)


def test_kopf_decodes_its_watch_lines_with_orjson_after_the_switch():
    from kopf._cogs.clients import api

    assert decode_watch_lines_with_orjson(), f"kopf {importlib.metadata.version('kopf')} moved its watch decoding"
    assert api.json.loads is orjson.loads
    assert api.json.JSONDecodeError is json.JSONDecodeError  # the rest of the json module is as it was
    assert decode_watch_lines_with_orjson()  # twice is once
    line = '{"type":"MODIFIED","object":{"metadata":{"name":"a","resourceVersion":"12"},"spec":{"x":1.5}}}'
    assert api.json.loads(line) == json.loads(line)
    with pytest.raises(ValueError):
        api.json.loads("{not json")


def test_a_kopf_without_that_module_is_left_alone(monkeypatch):
    from kopf._cogs.clients import api

    monkeypatch.delattr(api, "json")
    assert decode_watch_lines_with_orjson() is False
