"""What the e2e tests need from a real cluster: finding it safely, reading what a user would read
(the ModelEndpoint's status, the endpoint Service's selector, Events, a client pod's log) and
waiting on observable facts with a deadline.

Only one kube context is ever used: ``SLOTKEEPER_E2E_CONTEXT``, by default ``kind-slotkeeper`` (the
cluster ``make kind`` creates), never the current context, so the tests cannot touch a cluster
nobody meant them to.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from slotkeeper.api import DEFAULT_SERVING_IMAGE, GROUP, PLURAL, VERSION

CONTEXT_ENV = "SLOTKEEPER_E2E_CONTEXT"
DEFAULT_CONTEXT = "kind-slotkeeper"
SERVING_IMAGE_ENV = "SLOTKEEPER_E2E_SERVING_IMAGE"
OPERATOR_NAMESPACE = "slotkeeper-system"
OPERATOR_DEPLOYMENT = "slotkeeper-operator"
OPERATOR_SELECTOR = "app.kubernetes.io/name=slotkeeper-operator"
CRD_NAME = f"{PLURAL}.{GROUP}"
HOW_TO_GET_ONE = "create one with `make kind`, then run `make e2e`"
PREFLIGHT_TIMEOUT = (1.0, 1.5)  # connect, read (seconds): the whole check must stay well under 3 s

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "manifests" / "examples" / "demo" / "models"
MODEL_FILES_MANIFEST = ROOT / "manifests" / "examples" / "demo" / "model-files.yaml"

T = TypeVar("T")


def e2e_context() -> str:
    return os.environ.get(CONTEXT_ENV) or DEFAULT_CONTEXT


def serving_image() -> str:
    return os.environ.get(SERVING_IMAGE_ENV) or DEFAULT_SERVING_IMAGE


# ------------------------------------------------------------------------------ finding the cluster


class NoCluster(Exception):
    """The reason there is nothing to run the e2e tests against, phrased for a skip message."""


def kubeconfig_paths() -> list[Path]:
    raw = os.environ.get("KUBECONFIG")
    candidates = raw.split(os.pathsep) if raw else ["~/.kube/config"]
    return [Path(p).expanduser() for p in candidates if p and Path(p).expanduser().is_file()]


def minified_kubeconfig(context: str) -> dict[str, Any]:
    """The kubeconfig of ``context`` alone (like ``kubectl config view --minify --raw``), current."""
    paths = kubeconfig_paths()
    if not paths:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise NoCluster(f"no kubeconfig found ({where} does not exist): no cluster to test against; {HOW_TO_GET_ONE}")
    merged: dict[str, dict[str, dict]] = {"clusters": {}, "contexts": {}, "users": {}}
    for path in paths:
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise NoCluster(f"cannot read kubeconfig {path}: {error}") from None
        for kind in merged:
            for entry in config.get(kind) or []:
                # The first file that names an entry wins, as in kubectl.
                merged[kind].setdefault(entry.get("name"), _absolute_paths(entry, path.parent))
    ctx = merged["contexts"].get(context)
    if ctx is None:
        known = ", ".join(sorted(n for n in merged["contexts"] if n)) or "none"
        raise NoCluster(f"kubeconfig has no context {context!r} (contexts: {known}); {HOW_TO_GET_ONE}, "
                        f"or point {CONTEXT_ENV} at another test cluster")
    cluster = merged["clusters"].get(ctx["context"].get("cluster"))
    user = merged["users"].get(ctx["context"].get("user"))
    if cluster is None:
        raise NoCluster(f"kube context {context!r} names cluster {ctx['context'].get('cluster')!r}, "
                        "which the kubeconfig does not define")
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "contexts": [ctx], "clusters": [cluster], "users": [user] if user else [],
    }


def _absolute_paths(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    body_key = next((k for k in ("cluster", "user", "context") if k in entry), None)
    if body_key is None:
        return entry
    body = dict(entry[body_key] or {})
    for key in ("certificate-authority", "client-certificate", "client-key", "tokenFile"):
        if isinstance(body.get(key), str) and not os.path.isabs(body[key]):
            body[key] = str(base / body[key])
    return {**entry, body_key: body}


@dataclass
class Preflight:
    """A cluster that answered, with the ModelEndpoint CRD and a running operator."""
    context: str
    kubeconfig: Path
    api_client: Any
    server: str


def preflight(context: str, kubeconfig_dir: Path) -> Preflight:
    """Check once, quickly, that there is something to test; raise NoCluster saying what is missing."""
    config = minified_kubeconfig(context)
    kubeconfig_dir.mkdir(parents=True, exist_ok=True)
    path = kubeconfig_dir / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)

    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        kube_config.load_kube_config(config_file=str(path), context=context, client_configuration=configuration,
                                     persist_config=False)
    except (ConfigException, OSError, ValueError) as error:
        raise NoCluster(f"kube context {context!r} is unusable: {error}") from None
    configuration.retries = 0  # a refused connection is an answer: do not retry it three times
    api_client = client.ApiClient(configuration)
    server = configuration.host
    try:
        client.VersionApi(api_client).get_code(_request_timeout=PREFLIGHT_TIMEOUT, _preload_content=False)
    except ApiException as error:
        raise NoCluster(f"the API server of {context!r} ({server}) answered {error.status} {error.reason}") from None
    except Exception as error:  # urllib3 connection errors: refused, timed out, DNS, TLS
        raise NoCluster(f"no cluster reachable at {server} (context {context!r}): {_short(error)}; "
                        f"is the kind cluster running? {HOW_TO_GET_ONE}") from None
    try:
        client.ApiextensionsV1Api(api_client).read_custom_resource_definition(
            CRD_NAME, _request_timeout=PREFLIGHT_TIMEOUT, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            raise NoCluster(f"the ModelEndpoint CRD ({CRD_NAME}) is not installed in {context!r}: "
                            "run `make kind` (or `kubectl apply -k manifests/`)") from None
        raise NoCluster(f"cannot read CRD {CRD_NAME} in {context!r}: {error.status} {error.reason}") from None
    try:
        reply = client.AppsV1Api(api_client).read_namespaced_deployment(
            OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE, _request_timeout=PREFLIGHT_TIMEOUT, _preload_content=False)
        deployment = json.loads(reply.data)
    except ApiException as error:
        if error.status == 404:
            raise NoCluster(f"the operator is not installed in {context!r} (no deployment "
                            f"{OPERATOR_NAMESPACE}/{OPERATOR_DEPLOYMENT}): run `make kind`") from None
        raise NoCluster(f"cannot read the operator deployment: {error.status} {error.reason}") from None
    if not (deployment.get("status") or {}).get("availableReplicas"):
        raise NoCluster(f"the operator in {context!r} has no available pod: see "
                        f"`kubectl --context {context} -n {OPERATOR_NAMESPACE} describe deploy/{OPERATOR_DEPLOYMENT}`")
    configuration.retries = None
    return Preflight(context=context, kubeconfig=path, api_client=api_client, server=server)


def _short(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    text = str(reason or error)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "connection timed out"
    return text[:200]


# ------------------------------------------------------------------------------- using the cluster


def wait_until(what: str, fact: Callable[[], T], timeout: float, interval: float = 1.0,
               describe: Callable[[], str] | None = None) -> T:
    """Poll ``fact`` until it returns something truthy; fail naming ``what`` and the last state seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fact()
        if last:
            return last
        if time.monotonic() >= deadline:
            detail = describe() if describe else repr(last)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(interval)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


class Cluster:
    """Thin reads and writes with the official client, in the words of the tests."""

    def __init__(self, found: Preflight) -> None:
        from kubernetes import client

        self.context, self.kubeconfig = found.context, found.kubeconfig
        self.api_client = found.api_client
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)

    # ------------------------------------------------------------------------------ namespaces
    def create_namespace(self, prefix: str) -> str:
        name = unique_name(prefix)[:63]
        self.core.create_namespace({"metadata": {"name": name, "labels": {"slotkeeper.io/e2e": "true"}}})
        return name

    def delete_namespace(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespace(name, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    # ----------------------------------------------------------------------------- endpoints
    def create_endpoint(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelEndpoint",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def patch_spec(self, namespace: str, name: str, spec_patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                          {"spec": spec_patch})

    def endpoint(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.endpoint(namespace, name).get("status") or {}

    def current_status(self, namespace: str, name: str) -> dict[str, Any]:
        """The status, but only once the operator has seen the latest spec (else {})."""
        obj = self.endpoint(namespace, name)
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"].get("generation"):
            return {}
        return status

    def wait_for_phase(self, namespace: str, name: str, phase: str, timeout: float,
                       also: Callable[[dict[str, Any]], bool] = lambda status: True) -> dict[str, Any]:
        return wait_until(
            f"ModelEndpoint {namespace}/{name} to reach phase {phase}",
            lambda: (lambda s: s if s.get("phase") == phase and also(s) else None)(self.current_status(namespace, name)),
            timeout, describe=lambda: self.describe(namespace, name))

    def selector(self, namespace: str, name: str) -> dict[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.core.read_namespaced_service(name, namespace).spec.selector or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def service_ports(self, namespace: str, name: str) -> dict[str, int]:
        """A Service's ports, by name."""
        return {p.name: p.port for p in self.core.read_namespaced_service(name, namespace).spec.ports or []}

    def ready_port_names(self, namespace: str, name: str) -> set[str]:
        """The names of a Service's ports that have at least one ready address behind them (its
        named targetPort resolved on a ready pod)."""
        endpoints = self.core.read_namespaced_endpoints(name, namespace)
        return {port.name for subset in endpoints.subsets or [] if subset.addresses for port in subset.ports or []}

    def served_shares(self, namespace: str, name: str) -> dict[str, int]:
        """Each slot's share (percent, rounded half up) of the ready addresses behind the Service,
        as the Endpoints controller published them for kube-proxy: what traffic really goes to."""
        from slotkeeper.render import LABEL_SLOT

        endpoints = self.core.read_namespaced_endpoints(name, namespace)
        slots = {p.metadata.name: (p.metadata.labels or {}).get(LABEL_SLOT)
                 for p in self.core.list_namespaced_pod(namespace).items}
        ready = {"blue": 0, "green": 0}
        for subset in endpoints.subsets or []:
            for address in subset.addresses or []:  # ready ones only (not_ready_addresses are not served)
                slot = slots.get(address.target_ref.name if address.target_ref else "")
                if slot in ready:
                    ready[slot] += 1
        total = sum(ready.values())
        return {slot: (200 * n + total) // (2 * total) if total else 0 for slot, n in ready.items()}

    def events(self, namespace: str, name: str) -> list[Any]:
        return list(self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}").items)

    def deployment(self, namespace: str, name: str) -> Any:
        return self.apps.read_namespaced_deployment(name, namespace)

    # -------------------------------------------------------------------------------- the CLI
    def slotkeeper(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the slotkeeper CLI, as a user would, against the test cluster only."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run([sys.executable, "-m", "slotkeeper.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"slotkeeper {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    # -------------------------------------------------------------------------------- pods
    def create(self, namespace: str, body: dict[str, Any]) -> None:
        kind = body["kind"]
        if kind == "Pod":
            self.core.create_namespaced_pod(namespace, body)
        elif kind == "Service":
            self.core.create_namespaced_service(namespace, body)
        elif kind == "ConfigMap":
            self.core.create_namespaced_config_map(namespace, body)
        elif kind == "Deployment":
            self.apps.create_namespaced_deployment(namespace, body)
        elif kind == "PersistentVolumeClaim":
            self.core.create_namespaced_persistent_volume_claim(namespace, body)
        elif kind == "Job":
            self.batch.create_namespaced_job(namespace, body)
        else:  # pragma: no cover - a test asked for something this helper does not know
            raise ValueError(f"cannot create a {kind}")

    def pod_log(self, namespace: str, pod: str) -> str:
        """The pod's log; empty while its container has not started yet."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.core.read_namespaced_pod_log(pod, namespace)
        except ApiException as error:
            if error.status == 400:  # "container ... is waiting to start"
                return ""
            raise

    def ready_pods(self, namespace: str, selector: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [p for p in pods if p.metadata.deletion_timestamp is None and any(
            c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))]

    def describe(self, namespace: str, name: str) -> str:
        """What a person would look at when a wait times out: status, Events, pods."""
        lines = []
        try:
            obj = self.endpoint(namespace, name)
            lines.append(f"generation {obj['metadata'].get('generation')}, status:\n"
                         + yaml.safe_dump(obj.get("status") or {}, sort_keys=False))
            lines.append(f"endpoint selector: {self.selector(namespace, name)}")
            for event in self.events(namespace, name)[-15:]:
                lines.append(f"event {event.type} {event.reason}: {event.message}")
            for pod in self.core.list_namespaced_pod(namespace).items:
                states = [f"{s.name}: ready={s.ready} restarts={s.restart_count} "
                          f"{(s.state.waiting.reason if s.state and s.state.waiting else '')}"
                          for s in (pod.status.container_statuses or [])]
                lines.append(f"pod {pod.metadata.name} {pod.status.phase} {states}")
        except Exception as error:  # diagnostics must never hide the real failure
            lines.append(f"(could not describe {namespace}/{name}: {error})")
        return "\n".join(lines)
