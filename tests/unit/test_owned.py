"""The owned objects' list+watch streams (owned.py) against a scripted API: what the index holds,
whom it wakes, and how a stream resumes, lists again and waits out a kind the cluster lacks."""

from __future__ import annotations

import asyncio

import pytest

from slotkeeper import owned
from slotkeeper.kube_api import ApiError
from slotkeeper.owned import OWNED_KINDS, OWNED_SELECTOR, OwnedIndex, OwnedWatches, owner_key
from slotkeeper.render import LABEL_ENDPOINT, LABEL_MANAGED_BY, MANAGED_BY

SERVICES = next(kind for kind in OWNED_KINDS if kind.plural == "services")
ROUTES = next(kind for kind in OWNED_KINDS if kind.plural == "httproutes")


def service(name, endpoint="credit", namespace="ml", uid=None, selector=None, version="1", managed=True):
    labels = {LABEL_ENDPOINT: endpoint, **({LABEL_MANAGED_BY: MANAGED_BY} if managed else {})}
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid or name, "labels": labels,
                         "resourceVersion": version},
            "spec": {"selector": selector or {"slot": "blue"}, "ports": [{"name": "http", "port": 80}]}}


def listing(*items, version="10"):
    return {"kind": "List", "metadata": {"resourceVersion": version}, "items": list(items)}


class ScriptedApi:
    """Answers each list from ``lists`` and each watch from ``watches`` in turn: a list of events,
    an exception to raise, or (events, exception) for a watch broken after some events. A watch
    with no script left stays open and quiet."""

    def __init__(self, lists, watches=()):
        self.lists, self.watches = list(lists), list(watches)
        self.sent: list[tuple[str, str, dict]] = []
        self.closed = False

    async def request(self, method, path, body=None, *, params=None, **_):
        self.sent.append(("list", path, dict(params or {})))
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def stream(self, path, *, params, timeout, idle_timeout=None):
        self.sent.append(("watch", path, dict(params)))
        if not self.watches:
            await asyncio.Event().wait()
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        events, broken = script if isinstance(script, tuple) else (script, None)
        for event in events:
            yield event
        if broken is not None:
            raise broken

    async def close(self):
        self.closed = True

    def versions(self):
        """The resourceVersion each watch started from."""
        return [params.get("resourceVersion") for kind, _, params in self.sent if kind == "watch"]


class GatedApi(ScriptedApi):
    """Every list answered empty; those whose path contains ``held`` only once ``gate`` is set."""

    def __init__(self, held, gate):
        super().__init__([])
        self.held, self.gate = held, gate

    async def request(self, method, path, body=None, *, params=None, **_):
        if self.held in path:
            await self.gate.wait()
        return listing()


async def settle():
    for _ in range(30):
        await asyncio.sleep(0)


@pytest.fixture()
def woken():
    return []


async def started(api, woken, namespaces=(), kinds=(SERVICES,)):
    watches = OwnedWatches(api, lambda namespace, name: woken.append((namespace, name)), namespaces, kinds=kinds)
    watches.start()
    await asyncio.wait_for(watches.wait_listed(), 1)
    await settle()
    return watches


async def test_the_listing_fills_the_index_and_the_watch_goes_on_from_its_version(woken):
    api = ScriptedApi([listing(service("credit"), service("credit-blue", selector={"slot": "blue", "x": "1"}))])
    watches = await started(api, woken)
    summaries = sorted(watches["endpoint_services"].get(("ml", "credit")))
    assert summaries == [("credit", {"slot": "blue"}, None), ("credit-blue", {"slot": "blue", "x": "1"}, None)]
    assert woken == [("ml", "credit")]
    (list_request, watch_request) = api.sent
    assert list_request == ("list", "/api/v1/services", {"labelSelector": OWNED_SELECTOR})
    assert watch_request[2]["resourceVersion"] == "10" and watch_request[2]["labelSelector"] == OWNED_SELECTOR
    assert watch_request[2]["allowWatchBookmarks"] == "true" and watch_request[2]["watch"] == "true"
    await watches.stop()
    assert api.closed


async def test_only_a_changed_summary_wakes_the_endpoint(woken):
    unchanged = {**service("credit", version="11")}
    unchanged["metadata"]["annotations"] = {"touched": "yes"}  # not in the summary
    api = ScriptedApi([listing(service("credit"))], [[
        {"type": "MODIFIED", "object": unchanged},
        {"type": "MODIFIED", "object": service("credit", version="12", selector={"slot": "green"})},
        {"type": "ADDED", "object": service("other", endpoint="fraud", version="13")},
        {"type": "DELETED", "object": service("credit", version="14")},
    ]])
    watches = await started(api, woken)
    assert woken == [("ml", "credit"), ("ml", "credit"), ("ml", "fraud"), ("ml", "credit")]
    index = watches["endpoint_services"]
    assert list(index.get(("ml", "credit"))) == [] and len(index) == 1
    assert api.sent[-1][2]["resourceVersion"] == "14"  # the next watch goes on from the last event
    await watches.stop()


async def test_a_bookmark_moves_the_version_on_and_changes_nothing(woken):
    api = ScriptedApi([listing()], [[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}}]])
    watches = await started(api, woken)
    assert woken == [] and api.sent[-1][2]["resourceVersion"] == "99"
    await watches.stop()


async def test_an_object_whose_endpoint_label_moves_wakes_both_endpoints(woken):
    api = ScriptedApi([listing(service("svc", uid="u1"))],
                      [[{"type": "MODIFIED", "object": service("svc", uid="u1", endpoint="fraud", version="11")}]])
    watches = await started(api, woken)
    assert woken == [("ml", "credit"), ("ml", "credit"), ("ml", "fraud")]
    assert list(watches["endpoint_services"].get(("ml", "credit"))) == []
    assert [name for name, _, _ in watches["endpoint_services"].get(("ml", "fraud"))] == ["svc"]
    await watches.stop()


async def test_an_object_that_loses_slotkeepers_label_leaves_the_index(woken):
    api = ScriptedApi([listing(service("svc"))], [[{"type": "MODIFIED", "object": service("svc", managed=False)}]])
    watches = await started(api, woken)
    assert len(watches["endpoint_services"]) == 0 and woken == [("ml", "credit"), ("ml", "credit")]
    await watches.stop()


@pytest.mark.parametrize("expiry", [
    [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}],  # in the stream
    ApiError(status=410, reason="Gone"),  # as the watch request's answer
], ids=["error-event", "status-code"])
async def test_an_expired_version_lists_again_and_drops_what_went_meanwhile(woken, expiry):
    api = ScriptedApi([listing(service("a", endpoint="credit"), service("b", endpoint="fraud")),
                       listing(service("b", endpoint="fraud", version="20", selector={"slot": "green"}), version="21")],
                      [expiry])
    watches = await started(api, woken)
    await settle()
    index = watches["endpoint_services"]
    assert list(index.get(("ml", "credit"))) == []  # deleted while no watch saw it
    assert [selector for _, selector, _ in index.get(("ml", "fraud"))] == [{"slot": "green"}]
    assert sorted(woken[2:]) == [("ml", "credit"), ("ml", "fraud")]  # after the first listing's two
    assert [kind for kind, _, _ in api.sent] == ["list", "watch", "list", "watch"]
    assert api.sent[-1][2]["resourceVersion"] == "21"
    await watches.stop()


def route(uid="r1", endpoint="credit"):
    return {"metadata": {"name": endpoint, "namespace": "ml", "uid": uid, "resourceVersion": "5",
                         "labels": {LABEL_ENDPOINT: endpoint, LABEL_MANAGED_BY: MANAGED_BY}}, "spec": {}}


async def test_a_kind_the_cluster_does_not_serve_counts_as_listed(woken):
    api = ScriptedApi([ApiError(status=404, reason="Not Found")])  # and then nothing: the retry is 60 s off
    watches = await started(api, woken, kinds=(ROUTES,))  # wait_listed returned on the 404 alone
    assert len(watches["endpoint_routes"]) == 0 and woken == []
    await watches.stop()


async def test_an_optional_kind_is_tried_again_and_its_objects_leave_when_it_goes(woken, monkeypatch):
    monkeypatch.setattr(owned, "MISSING_KIND_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(owned, "NOT_SERVED_CONFIRM_SECONDS", 0.01)
    api = ScriptedApi([ApiError(status=404, reason="Not Found"), listing(route()),
                       ApiError(status=404, reason="Not Found"), listing()],  # the second 404 confirms it
                      [ApiError(status=404, reason="Not Found")])  # the CRDs removed while watching
    watches = await started(api, woken, kinds=(ROUTES,))
    for _ in range(100):
        if len(woken) == 2:
            break
        await asyncio.sleep(0.01)
    assert woken == [("ml", "credit"), ("ml", "credit")]  # the CRDs came: the route seen; then gone
    assert len(watches["endpoint_routes"]) == 0
    await watches.stop()


async def test_one_404_for_an_optional_kind_with_objects_keeps_them(woken, monkeypatch):
    """An apiserver that has just restarted answers 404 for custom resources until it has read their
    CRDs: the routes stay indexed (no endpoint sees its route gone) if the next listing finds them."""
    waits = []

    async def pause(seconds):
        waits.append(seconds)

    monkeypatch.setattr(owned, "_pause", pause)
    api = ScriptedApi([listing(route()), listing(route(), version="30")],
                      [ApiError(status=404, reason="Not Found")])
    watches = await started(api, woken, kinds=(ROUTES,))
    await settle()
    assert len(watches["endpoint_routes"]) == 1
    assert woken == [("ml", "credit")]  # the first listing only: nothing left and came back
    assert waits == [owned.NOT_SERVED_CONFIRM_SECONDS]
    assert [kind for kind, _, _ in api.sent] == ["list", "watch", "list", "watch"]
    assert api.sent[-1][2]["resourceVersion"] == "30"
    await watches.stop()


async def test_errors_back_off_and_the_index_keeps_what_it_had(woken, monkeypatch):
    backoffs = []

    async def recorded_pause(seconds):
        backoffs.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(owned, "_pause", recorded_pause)
    api = ScriptedApi([listing(service("credit"))],
                      [ApiError(status=500, reason="Internal"), ApiError(status=503, reason="Unavailable"),
                       OSError("reset"), [{"type": "MODIFIED", "object": service("credit", selector={"slot": "x"})}]])
    watches = await started(api, woken)
    assert backoffs == [0.5, 1.0, 2.0]
    assert [selector for _, selector, _ in watches["endpoint_services"].get(("ml", "credit"))] == [{"slot": "x"}]
    assert woken == [("ml", "credit")] * 2  # the listing, then the change; the failures woke nobody
    assert [kind for kind, _, _ in api.sent].count("list") == 1  # errors other than 410 do not re-list
    await watches.stop()


async def test_named_namespaces_get_a_stream_each_and_a_relist_keeps_the_other_namespace(woken):
    class ByPath(ScriptedApi):  # each namespace's stream has its own script
        def __init__(self, lists, watches):
            super().__init__([])
            self.by_path_lists, self.by_path_watches = lists, watches

        async def request(self, method, path, body=None, *, params=None, **_):
            self.sent.append(("list", path, dict(params or {})))
            return self.by_path_lists[path].pop(0)

        async def stream(self, path, *, params, timeout, idle_timeout=None):
            self.sent.append(("watch", path, dict(params)))
            script = self.by_path_watches[path]
            if not script:
                await asyncio.Event().wait()
            failure = script.pop(0)
            raise failure
            yield  # an async generator

    ml, ops = "/api/v1/namespaces/ml/services", "/api/v1/namespaces/ops/services"
    api = ByPath({ml: [listing(service("a", namespace="ml")), listing(version="30")],
                  ops: [listing(service("b", namespace="ops"))]},
                 {ml: [ApiError(status=410, reason="Expired")], ops: []})
    watches = await started(api, woken, namespaces=("ml", "ops"))
    await settle()
    assert sorted(path for kind, path, _ in api.sent if kind == "list") == [ml, ml, ops]  # ml listed again
    index = watches["endpoint_services"]
    assert list(index.get(("ml", "credit"))) == []  # gone from ml's relisting
    assert [name for name, _, _ in index.get(("ops", "credit"))] == ["b"]  # ops' stream untouched
    await watches.stop()


async def test_an_interrupted_watch_goes_on_from_the_last_event_it_saw(woken, monkeypatch):
    monkeypatch.setattr(owned, "MAX_BACKOFF_SECONDS", 0.0)
    api = ScriptedApi([listing(service("credit"))], [
        ([{"type": "MODIFIED", "object": service("credit", version="14", selector={"slot": "green"})}],
         OSError("connection reset")),
    ])
    watches = await started(api, woken)
    await settle()
    assert api.versions() == ["10", "14"]  # not "10" again: nothing replayed, no relist
    assert [kind for kind, _, _ in api.sent].count("list") == 1
    await watches.stop()


async def test_a_quiet_watch_is_opened_again_without_back_off(woken, monkeypatch):
    backoffs = []

    async def no_backoff(stream, problem):
        backoffs.append(problem)

    api = ScriptedApi([listing()], [([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}],
                                     TimeoutError())])
    watches = await started(api, woken)
    monkeypatch.setattr(watches, "_back_off", no_backoff)
    await settle()
    assert api.versions() == ["10", "12"] and backoffs == []
    await watches.stop()


async def test_a_watch_that_ends_at_once_with_nothing_backs_off(woken, monkeypatch):
    monkeypatch.setattr(owned, "MAX_BACKOFF_SECONDS", 0.0)  # no waiting; the back-offs are counted
    api = ScriptedApi([listing()], [[], [], []])
    watches = await started(api, woken)
    await settle()
    (stream,) = watches._streams
    assert stream.failures == 3 and len(api.versions()) == 4
    await watches.stop()


async def test_an_object_its_summary_cannot_be_made_of_is_left_out_and_the_watch_goes_on(woken, caplog):
    broken = service("odd", uid="u-odd")
    broken["spec"] = "not a mapping"  # summarise_service fails on it
    api = ScriptedApi([listing(service("credit"))], [[
        {"type": "ADDED", "object": broken},
        {"type": "MODIFIED", "object": service("credit", version="12", selector={"slot": "green"})},
    ]])
    watches = await started(api, woken)
    assert [selector for _, selector, _ in watches["endpoint_services"].get(("ml", "credit"))] == [{"slot": "green"}]
    assert "could not be read" in caplog.text and api.versions() == ["10", "12"]
    await watches.stop()


async def test_a_404_for_a_kind_that_must_be_served_is_an_error_not_an_empty_listing(woken, monkeypatch):
    monkeypatch.setattr(owned, "MAX_BACKOFF_SECONDS", 0.0)
    api = ScriptedApi([ApiError(status=404, reason="Not Found"), listing(service("credit"))])
    watches = OwnedWatches(api, lambda *key: woken.append(key), kinds=(SERVICES,))
    watches.start()
    await asyncio.wait_for(watches.wait_listed(), 1)  # listed by the second answer, not the 404
    assert [kind for kind, _, _ in api.sent][:2] == ["list", "list"] and woken == [("ml", "credit")]
    await watches.stop()


async def test_start_twice_starts_the_streams_once(woken):
    watches = OwnedWatches(ScriptedApi([listing()]), lambda *_: None, kinds=(SERVICES,))
    watches.start()
    tasks = list(watches._tasks)
    watches.start()
    assert watches._tasks == tasks and len(tasks) == 1
    await watches.stop()


async def test_no_loop_decides_before_every_kind_is_listed(woken):
    gate = asyncio.Event()
    watches = OwnedWatches(GatedApi("pods", gate), lambda *_: None, kinds=OWNED_KINDS)
    watches.start()
    waiting = asyncio.ensure_future(watches.wait_listed())
    await settle()
    assert not waiting.done()
    gate.set()
    await asyncio.wait_for(waiting, 1)
    await watches.stop()


def test_the_index_hands_out_the_summaries_of_one_endpoint():
    index = OwnedIndex()
    assert index.put("u1", ("ml", "a"), "s1") == [("ml", "a")]
    assert index.put("u1", ("ml", "a"), "s1") == []
    assert index.put("u2", ("ml", "a"), "s2") == [("ml", "a")]
    assert sorted(index.get(("ml", "a"))) == ["s1", "s2"] and list(index.get(("ml", "b"))) == []
    assert index.discard("u1") == [("ml", "a")] and index.discard("u1") == []
    assert list(index.get(("ml", "a"))) == ["s2"]


def test_the_owner_is_read_from_slotkeepers_labels_only():
    assert owner_key(service("x", endpoint="credit")) == ("ml", "credit")
    assert owner_key(service("x", managed=False)) is None
    assert owner_key({"metadata": {"labels": {LABEL_MANAGED_BY: MANAGED_BY}}}) is None


async def test_a_watch_that_worked_backs_off_from_the_start_when_it_breaks(woken, monkeypatch):
    backoffs = []

    async def recorded(stream, problem):
        backoffs.append((problem, stream.failures))
        stream.failures += 1

    event = {"type": "MODIFIED", "object": service("credit", version="12", selector={"slot": "green"})}
    api = ScriptedApi([listing(service("credit"))],
                      [OSError("reset"), OSError("reset"), ([event], OSError("reset")), OSError("reset")])
    watches = OwnedWatches(api, lambda *key: woken.append(key), kinds=(SERVICES,))
    monkeypatch.setattr(watches, "_back_off", recorded)
    watches.start()
    await settle()
    assert [failures for _, failures in backoffs] == [0, 1, 0, 1]  # the event in between reset the count
    await watches.stop()


async def test_each_kind_is_reported_listed_once_all_its_streams_have_listed(woken):
    reported = []
    gate = asyncio.Event()
    watches = OwnedWatches(GatedApi("/ops/", gate), lambda *_: None, ("ml", "ops"), kinds=(SERVICES,),
                           report_listed=lambda resource, listed: reported.append((resource, listed)))
    watches.start()
    await settle()
    assert reported == [("services", False), ("services", False)]  # at the start; ml listed, ops not yet
    gate.set()
    await asyncio.wait_for(watches.wait_listed(), 1)
    assert reported[-1] == ("services", True)
    await watches.stop()
