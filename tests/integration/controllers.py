"""Stand-ins for the controllers a real cluster runs, acting only through the API (so the operator
sees their work as watch events, as it would on a cluster).

:class:`DeploymentController` plays the Deployment + ReplicaSet controllers and the kubelet for the
Deployments slotkeeper owns: each gets exactly ``spec.replicas`` ready Pods with its template's labels
(pods of an older template are replaced), and a status that says so.
:class:`AutoscalerController` plays kube-controller-manager's HorizontalPodAutoscaler controller: it
changes a Deployment's replicas behind the operator's back, through the ``scale`` subresource, as the
real one does. :func:`selected_shares` is what kube-proxy would route by: the ready Pods the endpoint
Service's selector picks, per slot.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import kmock
import yaml
from kmock_cluster import DEPLOYMENTS, HPAS, PODS, SERVICES, Kube, KubeAPIError, match_selector

SLOT = "slotkeeper.io/slot"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the Job controller's, on an Indexed Job's pods
MANAGED = {"app.kubernetes.io/managed-by": "slotkeeper"}


class Periodic:
    """A fake controller's loop: ``sync_once()`` every ``period`` seconds while it runs."""

    period: float

    async def sync_once(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            await self.sync_once()
            await asyncio.sleep(self.period)


Controller = TypeVar("Controller", bound=Periodic)


@contextlib.asynccontextmanager
async def running(controller: Controller, name: str) -> AsyncIterator[Controller]:
    """Run ``controller`` in a task of its own for the ``async with`` block."""
    task = asyncio.create_task(controller.run(), name=name)
    try:
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class DeploymentController(Periodic):
    def __init__(self, k8s: Kube, namespace: str = "default", period: float = 0.02) -> None:
        self.k8s, self.namespace, self.period = k8s, namespace, period
        self._names = itertools.count(1)

    async def sync_once(self) -> None:
        for deployment in self.k8s.objects(DEPLOYMENTS, namespace=self.namespace, labels=MANAGED):
            await self._sync(deployment)

    async def _sync(self, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        wanted = int(deployment["spec"].get("replicas", 1))
        template = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        pods = [p for p in self.k8s.objects(PODS, namespace=self.namespace)
                if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        current = [p for p in pods if p["metadata"]["labels"] == template]
        for pod in [p for p in pods if p not in current] + current[wanted:]:  # old template first
            await self.k8s.delete(PODS, pod["metadata"]["name"], namespace=self.namespace)
        for _ in range(wanted - len(current)):
            await self.k8s.create_pod(f"{name}-{next(self._names)}", labels=template, namespace=self.namespace,
                                      waiting_reason=None, restart_count=0)
        status = deployment.get("status") or {}
        observed = deployment["metadata"].get("generation")
        if (status.get("readyReplicas"), status.get("replicas"), status.get("observedGeneration")) != (
                wanted, wanted, observed):
            await self.k8s.set_deployment_status(name, namespace=self.namespace)


def deployment_controller(k8s: Kube, namespace: str = "default") -> contextlib.AbstractAsyncContextManager[DeploymentController]:
    return running(DeploymentController(k8s, namespace), "fake-deployment-controller")


class AutoscalerController(Periodic):
    """The HorizontalPodAutoscaler controller for the autoscaling/v2 HPAs of a namespace.

    What the metrics call for is what a test says: ``load("credit-blue", 5)``. Each sync, per HPA, it
    reads the target's replicas and, as the real controller (``reconcileAutoscaler``) decides: leaves
    a target at 0 alone ("scaling is disabled since the replica count of the target is zero"), brings
    one above maxReplicas or below minReplicas into the bounds at once, else moves it to the load's
    count within the bounds (no load: it stays). It writes through the ``scale`` subresource (a PUT
    as ``kube-controller-manager``, who then owns spec.replicas) and keeps the HPA's status
    (currentReplicas, desiredReplicas) up to date. ``writes`` counts its scale writes.
    """

    def __init__(self, k8s: Kube, namespace: str = "default", period: float = 0.02) -> None:
        self.k8s, self.namespace, self.period = k8s, namespace, period
        self.loads: dict[str, int] = {}
        self.writes = 0

    def load(self, deployment: str, replicas: int) -> None:
        self.loads[deployment] = replicas

    async def sync_once(self) -> None:
        for hpa in self.k8s.objects(HPAS, namespace=self.namespace):
            spec = hpa["spec"]
            target = spec["scaleTargetRef"]["name"]
            deployment = self.k8s.peek(DEPLOYMENTS, target, namespace=self.namespace)
            if deployment is None or hpa["metadata"].get("deletionTimestamp"):
                continue
            current = int(deployment["spec"].get("replicas", 1))
            low, high = int(spec.get("minReplicas") or 1), int(spec["maxReplicas"])
            if current == 0:
                desired = 0
            elif current > high:
                desired = high
            elif current < low:
                desired = low
            else:
                desired = min(max(self.loads.get(target, current), low), high)
            status = {"currentReplicas": current, "desiredReplicas": desired}
            try:
                if desired != current:
                    await self.k8s.scale(target, desired, namespace=self.namespace)
                    self.writes += 1
                if {k: (hpa.get("status") or {}).get(k) for k in status} != status:
                    await self.k8s.patch(HPAS, hpa["metadata"]["name"], {"status": status},
                                         namespace=self.namespace, subresource="status")
            except KubeAPIError as error:
                if error.status not in (404, 409):  # gone, or changed meanwhile: the next sync looks again
                    raise


def autoscaler_controller(k8s: Kube, namespace: str = "default") -> contextlib.AbstractAsyncContextManager[AutoscalerController]:
    return running(AutoscalerController(k8s, namespace), "fake-autoscaler-controller")


def selected_shares(k8s: Kube, service: str, namespace: str = "default") -> dict[str, int]:
    """Each slot's share (percent, rounded half up) of the ready Pods the Service selects."""
    found = k8s.peek(SERVICES, service, namespace=namespace)
    selector = (found or {}).get("spec", {}).get("selector") or {}
    requirements = [(key, "=", {value}) for key, value in selector.items()]
    ready: dict[str, int] = {"blue": 0, "green": 0}
    if selector:
        for pod in k8s.objects(PODS, namespace=namespace):
            labels = pod["metadata"].get("labels") or {}
            conditions = (pod.get("status") or {}).get("conditions") or []
            if match_selector(labels, requirements) and any(
                    c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                ready[labels[SLOT]] = ready.get(labels[SLOT], 0) + 1
    total = sum(ready.values())
    if not total:
        return {slot: 0 for slot in ready}
    return {slot: (200 * n + total) // (2 * total) for slot, n in ready.items()}


HTTPROUTES = kmock.resource('gateway.networking.k8s.io/v1/httproutes')
GATEWAY_API_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "gateway-api"


def install_gateway_api(emulator: Any) -> None:
    """The upstream Gateway API CRDs (v1.6.1, standard channel) installed in the API double, as
    ``kubectl apply -f`` would: HTTPRoutes become a served resource with the upstream schema, the
    installed CRD taking precedence over kmock's bundled untyped Gateway kinds, and every CEL rule."""
    for path in sorted(GATEWAY_API_DIR.glob("gateway.networking.k8s.io_*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                emulator.install_crd(doc)
    emulator.conformant_cel_groups.add("gateway.networking.k8s.io")  # CEL rules too, not only the schema


class GatewayController(Periodic):
    """Plays a Gateway API implementation (a Gateway's or a mesh's controller): for every HTTPRoute of
    the namespace it writes ``status.parents`` with Accepted and ResolvedRefs for the route's current
    generation, through the API (so the operator sees it as a watch event). ``accepting = False``
    leaves new generations unanswered; ``refusing`` names parents that answer Accepted=False."""

    def __init__(self, k8s: Kube, namespace: str = "default", period: float = 0.02) -> None:
        self.k8s, self.namespace, self.period = k8s, namespace, period
        self.accepting = True
        self.refusing: set[str] = set()

    async def sync_once(self) -> None:
        if not self.accepting:
            return
        for route in self.k8s.objects(HTTPROUTES, namespace=self.namespace):
            generation = route["metadata"].get("generation")
            parents = []
            for ref in route["spec"].get("parentRefs") or []:
                ok = "True" if ref["name"] not in self.refusing else "False"
                conditions = [{"type": kind, "status": ok, "reason": kind if ok == "True" else "NotAllowedByListeners",
                               "message": "", "observedGeneration": generation,
                               "lastTransitionTime": "2026-11-21T12:00:00Z"} for kind in ("Accepted", "ResolvedRefs")]
                parents.append({"parentRef": ref, "controllerName": "example.com/gateway-controller",
                                "conditions": conditions})
            if (route.get("status") or {}).get("parents") != parents:
                try:
                    await self.k8s.patch(HTTPROUTES, route["metadata"]["name"], {"status": {"parents": parents}},
                                         namespace=self.namespace, subresource="status")
                except KubeAPIError as error:
                    if error.status not in (404, 409):
                        raise


def gateway_controller(k8s: Kube, namespace: str = "default") -> contextlib.AbstractAsyncContextManager[GatewayController]:
    return running(GatewayController(k8s, namespace), "fake-gateway-controller")


def route_weights(k8s: Kube, name: str, namespace: str = "default") -> dict[str, int]:
    """The weights of the route the API holds, by slot."""
    route = k8s.peek(HTTPROUTES, name, namespace=namespace) or {"spec": {"rules": [{}]}}
    return {ref["name"].rsplit("-", 1)[-1]: ref.get("weight", 1)
            for ref in route["spec"]["rules"][0].get("backendRefs") or []}


class PlayedGateway:
    """Plays the data plane of a Gateway API implementation for one HTTPRoute: each live request
    (:meth:`send`) goes, as the route the API holds says, to one of its ``backendRefs`` by weight
    (smooth weighted round robin: exact shares, no randomness), and, while the rule has a
    ``RequestMirror`` filter, ``percent`` of the requests are also sent as copies to the mirror's
    Service, whose answers are discarded (as a gateway does). ``backends`` maps a Service name to
    the base URL standing for its pods. ``answered`` lists, per live request, the ``X-Answered-By``
    of the answer the user got (None: no route yet); ``mirrored`` the Services sent copies."""

    def __init__(self, k8s: Kube, route: str, backends: dict[str, str], namespace: str = "default") -> None:
        self.k8s, self.route, self.backends, self.namespace = k8s, route, backends, namespace
        self.answered: list[str | None] = []
        self.statuses: list[int] = []
        self.mirrored: list[str] = []
        self._credit: dict[str, int] = {}
        self._count = 0

    def _pick(self, refs: list[dict[str, Any]]) -> str | None:
        weighted = [(ref["name"], int(ref.get("weight", 1))) for ref in refs if int(ref.get("weight", 1)) > 0]
        if not weighted:
            return None
        total = sum(weight for _, weight in weighted)
        for name, weight in weighted:
            self._credit[name] = self._credit.get(name, 0) + weight
        chosen = max(weighted, key=lambda item: self._credit[item[0]])[0]
        self._credit[chosen] -= total
        return chosen

    async def send(self, session: Any, path: str, body: dict[str, Any]) -> None:
        route = self.k8s.peek(HTTPROUTES, self.route, namespace=self.namespace)
        if route is None:
            self.answered.append(None)
            return
        rule = route["spec"]["rules"][0]
        mirror = next((f["requestMirror"] for f in rule.get("filters") or [] if f.get("type") == "RequestMirror"), None)
        if mirror is not None:
            percent = int(mirror.get("percent", 100))
            self._count += 1
            if self._count * percent // 100 > (self._count - 1) * percent // 100:
                target = mirror["backendRef"]["name"]
                async with session.post(self.backends[target] + path, json=body) as copy:
                    await copy.read()  # the copy's answer is discarded
                self.mirrored.append(target)
        chosen = self._pick(rule.get("backendRefs") or [])
        if chosen is None:
            self.answered.append(None)
            return
        async with session.post(self.backends[chosen] + path, json=body) as answer:
            await answer.read()
            self.answered.append(answer.headers.get("X-Answered-By"))
            self.statuses.append(answer.status)


JOBS = kmock.resource("batch/v1/jobs")
CRONJOBS = kmock.resource("batch/v1/cronjobs")
BATCH = "slotkeeper.io/batch"


def _env(pod_spec: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for c in pod_spec.get("containers") or [] for e in c.get("env") or []
                 if e.get("name") == name), None)


class BatchController(Periodic):
    """Plays the CronJob controller, the Job controller and the kubelet for batch runs (labelled
    ``slotkeeper.io/batch``), through the API.

    :meth:`fire` is a schedule coming due: a Job from the CronJob's ``jobTemplate`` as it is at that
    moment, owned by the CronJob, named ``<cronjob>-<n>``. Each batch Job gets one Pod from its own
    template (its labels plus ``job-name``) and ``status.startTime``; the Job then stays running
    until the test calls :meth:`finish`, after which the Pod terminates with the batch mode's summary
    as its termination message (the revision it reports is its env's SLOTKEEPER_MODEL_VERSION, as
    the real batch mode's) and the Job gets Complete (or Failed, with ``ok=False``).

    An Indexed Job (``completionMode: Indexed``, a sharded run) gets ``completions`` pods at once,
    each with the Job controller's completion-index annotation and ``JOB_COMPLETION_INDEX`` env;
    :meth:`finish` ends one index, the Job counts ``succeeded`` / ``completedIndexes`` and is
    Complete only when every index succeeded, Failed as soon as one fails (podFailurePolicy FailJob).
    """

    def __init__(self, k8s: Kube, namespace: str = "default", period: float = 0.02) -> None:
        self.k8s, self.namespace, self.period = k8s, namespace, period
        self.results: dict[str, tuple[int, int, bool]] = {}
        self._fired = itertools.count(29_000_000)

    async def fire(self, cron_job: str) -> str:
        cron = self.k8s.peek(CRONJOBS, cron_job, namespace=self.namespace)
        template = cron["spec"]["jobTemplate"]
        name = f"{cron_job}-{next(self._fired)}"
        owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": cron_job, "uid": cron["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        await self.k8s.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
            "name": name, "labels": dict(template["metadata"]["labels"]), "ownerReferences": [owner]},
            "spec": template["spec"]}, namespace=self.namespace)
        return name

    def finish(self, job: str, rows: int, failed: int = 0, ok: bool = True, index: int = 0) -> None:
        """Let the Job's pod (an Indexed Job's pod `index`) terminate with this summary."""
        self.results.setdefault(job, {})[index] = (rows, failed, ok)

    def pods_of(self, job: str) -> list[dict[str, Any]]:
        return [p for p in self.k8s.objects(PODS, namespace=self.namespace)
                if (p["metadata"].get("labels") or {}).get("job-name") == job]

    def pod_of(self, job: str) -> dict[str, Any] | None:
        return next(iter(self.pods_of(job)), None)

    async def sync_once(self) -> None:
        for job in self.k8s.objects(JOBS, namespace=self.namespace):
            if BATCH in (job["metadata"].get("labels") or {}):
                await self._sync(job)

    async def _sync(self, job: dict[str, Any]) -> None:
        name, status = job["metadata"]["name"], job.get("status") or {}
        indexed = job["spec"].get("completionMode") == "Indexed"
        indexes = range(job["spec"].get("completions") or 1) if indexed else [None]
        if not self.pods_of(name):
            for index in indexes:
                await self._start_pod(job, index)
            await self.k8s.patch(JOBS, name, {"status": {"startTime": "2026-12-01T02:00:00Z",
                                                         "active": len(indexes)}},
                                 namespace=self.namespace, subresource="status")
            return
        if status.get("completionTime") or any(c.get("type") == "Failed" for c in status.get("conditions") or []):
            return
        results = self.results.get(name, {})
        pods = {int((p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, 0)): p for p in self.pods_of(name)}
        ended = {}
        for index, (rows, failed, ok) in results.items():
            pod = pods[index]
            if pod["status"]["phase"] == "Running":
                await self._end_pod(pod, name, rows, failed, ok)
            ended[index] = ok
        succeeded, failed_pods = sum(ended.values()), len(ended) - sum(ended.values())
        if not ended:
            return
        # The Job controller: Complete once every index succeeded; one pod exiting 1 fails the Job (FailJob).
        done = failed_pods > 0 or succeeded == len(indexes)
        condition = {"type": "Failed" if failed_pods else "Complete", "status": "True",
                     "reason": "PodFailurePolicy" if failed_pods else "Completed",
                     "lastTransitionTime": "2026-12-01T02:10:00Z", "lastProbeTime": "2026-12-01T02:10:00Z"}
        counts = {"succeeded": succeeded, "failed": failed_pods, "active": 0 if done else len(indexes) - len(ended)}
        if indexed:
            counts["completedIndexes"] = ",".join(str(i) for i, ok in sorted(ended.items()) if ok)
        extra = {"conditions": [condition]} if done else {}
        if done and not failed_pods:
            extra["completionTime"] = "2026-12-01T02:10:00Z"
        if not done and all(status.get(key) == value for key, value in counts.items()):
            return  # nothing new: no write per sync
        await self.k8s.patch(JOBS, name, {"status": {**counts, **extra}}, namespace=self.namespace,
                             subresource="status")

    async def _start_pod(self, job: dict[str, Any], index: int | None) -> None:
        name, template = job["metadata"]["name"], job["spec"]["template"]
        labels = {**template["metadata"]["labels"], "job-name": name}
        metadata: dict[str, Any] = {"name": f"{name}-pod", "labels": labels}
        spec = template["spec"]
        if index is not None:  # what the Job controller adds to an Indexed Job's pods
            metadata = {"name": f"{name}-{index}-pod", "labels": labels,
                        "annotations": {COMPLETION_INDEX: str(index)}}
            spec = copy.deepcopy(spec)
            for container in spec["containers"]:
                container["env"] = [*(container.get("env") or []), {"name": "JOB_COMPLETION_INDEX",
                                                                    "value": str(index)}]
        await self.k8s.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec},
                              namespace=self.namespace)
        await self.k8s.patch(PODS, metadata["name"], {"status": {"phase": "Running", "containerStatuses": [
            {"name": "model", "ready": True, "restartCount": 0, "image": "", "imageID": "",
             "state": {"running": {"startedAt": "2026-12-01T02:00:01Z"}}}]}},
            namespace=self.namespace, subresource="status")

    async def _end_pod(self, pod: dict[str, Any], job: str, rows: int, failed: int, ok: bool) -> None:
        revision = _env(pod["spec"], "SLOTKEEPER_MODEL_VERSION")
        summary = {"runId": job, "revision": revision, "model": _env(pod["spec"], "SLOTKEEPER_MODEL_NAME"),
                   "rows": rows, "failedRows": failed, "seconds": 1.5, "outcome": "Succeeded" if ok else "Failed",
                   "reason": None if ok else f"{failed} failed rows exceed the threshold"}
        await self.k8s.patch(PODS, pod["metadata"]["name"], {"status": {
            "phase": "Succeeded" if ok else "Failed", "containerStatuses": [
                {"name": "model", "ready": False, "restartCount": 0, "image": "", "imageID": "", "state": {
                    "terminated": {"exitCode": 0 if ok else 1, "reason": "Completed" if ok else "Error",
                                   "message": json.dumps(summary, separators=(",", ":"))}}}]}},
            namespace=self.namespace, subresource="status")


def batch_controller(k8s: Kube, namespace: str = "default") -> contextlib.AbstractAsyncContextManager[BatchController]:
    return running(BatchController(k8s, namespace), "fake-batch-controller")
