"""Objects slotkeeper does not own, for run.py --unrelated: what else lives in a real cluster.

Pods and Services as a Helm-installed application has them (labels, annotations; pods with two
containers, probes, resources, env, volumes, and the status a kubelet reports), spread over a few
namespaces, created through the API double's HTTP API like any client's (so defaulted, validated
and with managedFields, as stored by an apiserver) before the operator starts. None carries
slotkeeper's labels (`app.kubernetes.io/managed-by: slotkeeper` plus `slotkeeper.io/endpoint`);
most carry `app.kubernetes.io/managed-by: Helm`, so the operator's selector has to tell them apart
by value, not by key. No ownerReferences: the pods' ReplicaSets are not there, and the double's
garbage collector would delete them.

`Trickle` updates them during a measurement, as kubelets and controllers do: pod status writes
(a container restarts, Ready flips and back) and Service annotation writes, each a watch event.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from kmock_cluster import PODS, SERVICES, Kube

NAMESPACES = ("team-a", "team-b", "team-c", "team-d")
PODS_PER_APP = 10
SERVICE_FIELD_MANAGER = "helm"


@dataclass(frozen=True)
class Unrelated:
    pods: list[tuple[str, str]]  # (namespace, name)
    services: list[tuple[str, str]]
    seconds: float  # to create them all
    stored_pod_bytes: int  # one pod's stored JSON size (after defaulting, managedFields, status)
    stored_service_bytes: int


def app(i: int) -> str:
    return f"shop-{i // PODS_PER_APP:03d}"


def namespace(i: int) -> str:
    return NAMESPACES[i % len(NAMESPACES)]


def app_labels(i: int) -> dict[str, str]:
    return {"app.kubernetes.io/name": app(i), "app.kubernetes.io/instance": f"{app(i)}-prod",
            "app.kubernetes.io/component": ("web", "worker", "api")[i // PODS_PER_APP % 3],
            "app.kubernetes.io/part-of": "shop", "app.kubernetes.io/version": f"2.{i // PODS_PER_APP % 7}.1",
            "app.kubernetes.io/managed-by": "Helm" if i % 5 else "argocd"}


def pod_name(i: int) -> str:
    return f"{app(i)}-6d9f8c7b5-{i:05d}"


def pod(i: int) -> dict[str, Any]:
    name, image = pod_name(i), f"registry.example.com/shop/{app(i)}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace(i),
            "labels": {**app_labels(i), "pod-template-hash": "6d9f8c7b5", "helm.sh/chart": "shop-2.4.0"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                            "prometheus.io/path": "/metrics",
                            "kubectl.kubernetes.io/restartedAt": "2026-11-02T09:14:51Z",
                            "checksum/config": f"{i * 2654435761 % 2 ** 64:016x}" * 4},
        },
        "spec": {
            "serviceAccountName": app(i), "nodeName": f"node-{i % 24:02d}", "priority": 0,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {"name": "app", "image": f"{image}:2.{i // PODS_PER_APP % 7}.1",
                 "args": ["--listen=:8080", "--metrics=:9090", "--log-format=json"],
                 "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
                 "env": [{"name": "APP_ENV", "value": "production"},
                         {"name": "APP_NAME", "value": app(i)},
                         {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": f"{app(i)}-db", "key": "url"}}},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                         {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}],
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                               "limits": {"cpu": "1", "memory": "512Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                 "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 10},
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": True},
                                  {"name": "tmp", "mountPath": "/tmp"}]},
                {"name": "proxy", "image": "registry.example.com/mesh/proxy:1.19.3",
                 "args": ["proxy", "sidecar", "--concurrency=2"],
                 "ports": [{"name": "proxy-admin", "containerPort": 15000}],
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 15}},
            ],
            "volumes": [{"name": "config", "configMap": {"name": f"{app(i)}-config"}},
                        {"name": "tmp", "emptyDir": {}}],
        },
    }


def started(i: int) -> str:
    return f"2026-11-{1 + i % 20:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}Z"


def pod_status(i: int, restarts: int = 0, ready: bool = True) -> dict[str, Any]:
    ip, host = f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}", f"192.168.0.{10 + i % 24}"
    when, flag = started(i), "True" if ready else "False"

    def container(name: str, image: str, count: int) -> dict[str, Any]:
        return {"name": name, "image": image, "imageID": f"{image.split(':')[0]}@sha256:{i * 40503 % 2 ** 32:08x}{'0' * 56}",
                "containerID": f"containerd://{i * 2654435761 % 2 ** 64:016x}{'0' * 48}",
                "ready": ready, "started": True, "restartCount": count,
                "state": {"running": {"startedAt": when}},
                **({"lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": when,
                                                 "finishedAt": when}}} if count else {})}

    return {
        "phase": "Running", "hostIP": host, "hostIPs": [{"ip": host}], "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": when,
        "conditions": [{"type": kind, "status": flag if kind in ("Ready", "ContainersReady") else "True",
                        "lastProbeTime": None, "lastTransitionTime": when}
                       for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
        "containerStatuses": [container("app", f"registry.example.com/shop/{app(i)}:2.{i // PODS_PER_APP % 7}.1", restarts),
                              container("proxy", "registry.example.com/mesh/proxy:1.19.3", 0)],
    }


def service(i: int) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": app(i), "app.kubernetes.io/instance": f"{app(i)}-prod"}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"svc-{i:04d}", "namespace": namespace(i),
                     "labels": {**app_labels(i), "helm.sh/chart": "shop-2.4.0"},
                     "annotations": {"meta.helm.sh/release-name": f"{app(i)}-prod",
                                     "meta.helm.sh/release-namespace": namespace(i)}},
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                           {"name": "metrics", "port": 9090, "targetPort": 9090}]},
    }


async def create(kube: Kube, count: int, concurrency: int = 8) -> Unrelated:
    """`count` objects, half Pods (created, then given a status as a kubelet would), half Services."""
    started_at = time.monotonic()
    gate = asyncio.Semaphore(concurrency)
    pods = [(namespace(i), pod_name(i)) for i in range(count - count // 2)]
    services = [(namespace(i), f"svc-{i:04d}") for i in range(count // 2)]

    async def make_pod(i: int) -> None:
        async with gate:
            await kube.create(PODS, pod(i), namespace=namespace(i))
            await kube.patch(PODS, pod_name(i), {"status": pod_status(i)}, namespace=namespace(i), subresource="status")

    async def make_service(i: int) -> None:
        async with gate:
            await kube.create(SERVICES, service(i), namespace=namespace(i))

    await asyncio.gather(*(make_pod(i) for i in range(len(pods))), *(make_service(i) for i in range(len(services))))
    pod_bytes = len(json.dumps(kube.peek(PODS, pods[0][1], namespace=pods[0][0]))) if pods else 0
    service_bytes = len(json.dumps(kube.peek(SERVICES, services[0][1], namespace=services[0][0]))) if services else 0
    return Unrelated(pods, services, round(time.monotonic() - started_at, 1), pod_bytes, service_bytes)


@dataclass
class Trickle:
    """`rate` writes per second to random unrelated objects, alternately a pod's status (its app
    container restarts or becomes ready again) and a Service's annotation."""
    kube: Kube
    objects: Unrelated
    rate: float
    counts: dict[str, int] = field(default_factory=lambda: {"pods/status": 0, "services": 0})
    _task: asyncio.Task | None = None
    _restarts: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        if self.rate > 0 and (self.objects.pods or self.objects.services):
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, int]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return dict(self.counts)

    async def _run(self) -> None:
        rng = random.Random(4)
        period, due, n = 1 / self.rate, time.monotonic(), 0
        while True:
            due += period
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n += 1
            if n % 2 and self.objects.pods:
                i = rng.randrange(len(self.objects.pods))
                ns, name = self.objects.pods[i]
                k = self._restarts[i] = self._restarts.get(i, -1) + 1  # this pod's k-th write:
                status = pod_status(i, restarts=k // 2 + 1, ready=k % 2 == 1)  # a restart, then ready again
                await self.kube.patch(PODS, name, {"status": status}, namespace=ns, subresource="status")
                self.counts["pods/status"] += 1
            elif self.objects.services:
                ns, name = self.objects.services[rng.randrange(len(self.objects.services))]
                await self.kube.patch(SERVICES, name, {"metadata": {"annotations": {
                    "shop.example.com/last-sync": f"{time.time():.3f}"}}}, namespace=ns)
                self.counts["services"] += 1
