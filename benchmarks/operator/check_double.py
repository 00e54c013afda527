#!/usr/bin/env python3
"""The benchmark's API double answers as the harness's: the same requests to the integration
harness's ClusterEmulator and to apidouble.BenchEmulator, the answers compared (status, body, the
watch events; uids and times masked).

    .venv/bin/python benchmarks/operator/check_double.py

The harness's side runs in a process of its own (without apidouble's patch of the harness module's
copy.deepcopy).
Covers what the benchmark and the operator send: namespaces, creates (201), 409 on a second create,
GET and 404, merge, JSON, strategic-merge patches and server-side apply, /status and /scale,
lists and watches with and without labelSelector (a watch replayed from a resourceVersion),
DELETE (pods answer the object, deployments a Status), discovery (compared as sets: see
unordered_discovery).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import kmock

HARNESS = "--harness" in sys.argv  # the harness's side: without apidouble
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "integration"))
if not HARNESS:
    import apidouble
import kmock_cluster  # noqa: E402
import unrelated  # noqa: E402
from kmock_cluster import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH  # noqa: E402

UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SELECTOR = "app.kubernetes.io/managed-by=slotkeeper,slotkeeper.io/endpoint"
OWNED = {"app.kubernetes.io/managed-by": "slotkeeper", "slotkeeper.io/endpoint": "e1"}


def masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str):
        return TIME.sub("<time>", UID.sub("<uid>", value))
    return value


def unordered_discovery(answer: list[Any]) -> list[Any]:
    """Discovery lists compared as sets: KMock builds them from a Python set, so their order (and
    which version of a group with two comes first, the "preferred" one) differs from process to
    process in the harness itself."""
    method, path, status, body, *rest = answer
    if method == "GET" and path in ("/api/v1", "/apis") and isinstance(body, dict):
        body = dict(body)
        if "resources" in body:
            body["resources"] = sorted(({**r, "verbs": sorted(r.get("verbs", []))} for r in body["resources"]),
                                       key=lambda r: r["name"])
        if "groups" in body:
            body["groups"] = sorted(({k: (sorted(v, key=str) if k == "versions" else v) for k, v in g.items()
                                      if k != "preferredVersion"} for g in body["groups"]), key=lambda g: g["name"])
    return [method, path, status, body, *rest]


def deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "server", "image": "example/serving:1"}]}}}}


async def script(emulator: kmock_cluster.ClusterEmulator, url: str) -> list[Any]:
    """The requests; every answer (and the events of two watches) in order."""
    out: list[Any] = []
    async with aiohttp.ClientSession(headers={"User-Agent": "kopf/1.45"}) as session:

        async def call(method: str, path: str, body: Any = None, content_type: str | None = None) -> None:
            headers = {"Content-Type": content_type} if content_type else {}
            data = None if body is None else json.dumps(body)
            async with session.request(method, url + path, data=data, headers=headers) as response:
                text = await response.text()
                out.append((method, path, response.status, masked(json.loads(text) if text else None),
                            response.headers.get("Warning")))

        async def watch(path: str) -> None:  # what a watch sends in its first second
            async with session.get(url + path + "&timeoutSeconds=1") as response:
                text = await response.text()
            out.append(("WATCH", path, [masked(json.loads(line)) for line in text.splitlines() if line.strip()]))

        await call("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
        await call("POST", "/api/v1/namespaces/missing/pods", unrelated.pod(0))  # 400: not its namespace
        stray = unrelated.pod(1)
        del stray["metadata"]["namespace"]
        await call("POST", "/api/v1/namespaces/missing/pods", stray)  # 404: no such namespace
        for i in range(0, 16, 4):
            await call("POST", "/api/v1/namespaces/team-a/pods", unrelated.pod(i))
            await call("PATCH", f"/api/v1/namespaces/team-a/pods/{unrelated.pod_name(i)}/status",
                       {"status": unrelated.pod_status(i)}, MERGE_PATCH)
            await call("POST", "/api/v1/namespaces/team-a/services", unrelated.service(i))
        await call("POST", "/api/v1/namespaces/team-a/services", unrelated.service(0))  # 409
        await call("POST", "/api/v1/namespaces/team-a/pods",
                   {"metadata": {"name": "owned-pod", "labels": OWNED},
                    "spec": {"containers": [{"name": "server", "image": "example/serving:1"}]}})
        await call("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/e1-blue?fieldManager=slotkeeper&force=true",
                   deployment("e1-blue", {**OWNED, "slotkeeper.io/slot": "blue"}), APPLY_PATCH)
        await call("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/e1-blue?fieldManager=slotkeeper&force=true",
                   deployment("e1-blue", {**OWNED, "slotkeeper.io/slot": "blue"}), APPLY_PATCH)  # no-op
        await call("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/e1-blue/status",
                   {"status": {"replicas": 1, "readyReplicas": 1, "observedGeneration": 1}}, MERGE_PATCH)
        await call("GET", "/apis/apps/v1/namespaces/team-a/deployments/e1-blue/scale")
        await call("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/e1-blue/scale",
                   {"spec": {"replicas": 2}}, MERGE_PATCH)
        await call("PATCH", "/api/v1/namespaces/team-a/services/svc-0004",
                   {"metadata": {"labels": OWNED}}, STRATEGIC_MERGE_PATCH)  # now owned: ADDED to a selector watch
        await call("PATCH", "/api/v1/namespaces/team-a/services/svc-0008",
                   [{"op": "add", "path": "/metadata/annotations/x", "value": "1"}], JSON_PATCH)
        await call("PATCH", "/api/v1/namespaces/team-a/services/svc-0008", {"spec": {"ports": "bad"}}, MERGE_PATCH)
        await call("GET", f"/api/v1/namespaces/team-a/pods/{unrelated.pod_name(4)}")
        await call("GET", "/api/v1/namespaces/team-a/pods/nope")
        for resource in ("pods", "services"):
            await call("GET", f"/api/v1/{resource}")
            await call("GET", f"/api/v1/{resource}?labelSelector={SELECTOR}")
            await call("GET", f"/api/v1/namespaces/team-a/{resource}?labelSelector=app.kubernetes.io/managed-by%3DHelm")
        await call("GET", f"/apis/apps/v1/deployments?labelSelector={SELECTOR}")
        await call("DELETE", f"/api/v1/namespaces/team-a/pods/{unrelated.pod_name(8)}")
        await call("DELETE", "/apis/apps/v1/namespaces/team-a/deployments/e1-blue")
        await call("GET", "/api/v1")
        await call("GET", "/apis")
        await watch(f"/api/v1/services?watch=true&labelSelector={SELECTOR}")
        await watch("/api/v1/pods?watch=true&resourceVersion=1")
        await watch(f"/api/v1/pods?watch=true&resourceVersion=1&labelSelector={SELECTOR}")
    return out


async def answers(cls: type) -> list[Any]:
    async with contextlib.AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(cls())
        server = await stack.enter_async_context(kmock.Server(emulator))
        kmock_cluster.declare_resources(emulator)
        return json.loads(json.dumps(await script(emulator, str(server.url).rstrip("/"))))


# managedFields' keys of list items as the harness writes them (json.dumps) and the double (orjson, or
# json's encoder for what orjson would write differently): escapes, key order, floats, nesting, big ints
SMD_KEYS = [{"containerPort": 8080, "protocol": "TCP"}, {"name": "http"}, "x", 7, True, None,
            {"\u00e9": "\u00fc\u2028", "a": None, "b": False, "\x01": "\t\n"},
            {"a": 1.5}, {"a": 1e-05}, 2.0, {"a": {"b": 1}}, [1, "x"], {"big": 2 ** 70}]


def helpers_differ() -> list[str]:
    """The double's replacements of harness helpers, called directly: what each gives differently."""
    differ = [f"_smd_json({key!r})" for key in SMD_KEYS
              if apidouble._smd_json(key) != json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)]
    stamp, now = apidouble._Clock()(), time.time()
    if not (TIME.fullmatch(stamp) and abs(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - now) <= 1):
        differ.append(f"_now() {stamp!r} at {now}")
    return differ


async def main() -> int:
    if HARNESS:
        print(json.dumps(await answers(kmock_cluster.ClusterEmulator)))
        return 0
    if differ := helpers_differ():
        print("DIFFERENT helpers: " + ", ".join(differ))
        return 1
    harness = json.loads(subprocess.run([sys.executable, __file__, "--harness"], check=True,
                                        capture_output=True, text=True).stdout)
    bench = await answers(apidouble.BenchEmulator)
    harness = [a if a[0] == "WATCH" else unordered_discovery(a) for a in harness]
    bench = [b if b[0] == "WATCH" else unordered_discovery(b) for b in bench]
    differences = [(a, b) for a, b in zip(harness, bench) if a != b]
    if len(harness) != len(bench) or differences:
        for a, b in differences[:5]:
            print(f"harness: {a!r}\n  bench: {b!r}\n")
        print(f"DIFFERENT: {len(differences)} of {len(harness)} answers ({len(bench)} from the bench's double)")
        return 1
    codes = sorted({answer[2] for answer in harness if answer[0] != "WATCH"})
    events = sum(len(answer[2]) for answer in harness if answer[0] == "WATCH")
    print(f"same answers: {len(harness)} requests and watches (status codes {codes}, {events} watch events)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
