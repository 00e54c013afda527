"""The in-cluster pieces of the e2e tests, as plain manifests: the model file server (the demo's own,
serving the demo's score.py models from a ConfigMap) and a client pod that calls an endpoint in a
loop and logs one line per request.

The client runs inside the cluster on purpose: ``kubectl port-forward`` pins one pod and would never
see the endpoint Service switch slots. It opens a new connection per request (urllib), so every
request goes through the Service's current endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .kube import MODEL_FILES_MANIFEST, MODELS_DIR

MODEL_CONFIGMAP = "demo-models"  # the name manifests/examples/demo/model-files.yaml mounts
CLIENT_POD = "client"

RESTRICTED_POD = {
    "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
}

# One infer request per line of output: "ok <model_version>" or "err <what>"; "done <n>" at the end.
CLIENT_SCRIPT = r"""
import json, sys, time, urllib.error, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
body = json.dumps({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64",
                               "data": [1, 2, 3]}]}).encode()
end, sent = time.monotonic() + seconds, 0
while time.monotonic() < end:
    sent += 1
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            print("ok", json.load(reply).get("model_version", "-"), flush=True)
    except urllib.error.HTTPError as error:
        print("err", "http-%d" % error.code, flush=True)
    except Exception as error:
        print("err", type(error).__name__, str(error)[:80].replace(" ", "_"), flush=True)
    time.sleep(0.05)
print("done", sent, flush=True)
"""


def model_configmap() -> dict[str, Any]:
    files = {path.name: path.read_text() for path in sorted(MODELS_DIR.glob("*.py"))}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": MODEL_CONFIGMAP}, "data": files}


def model_file_server(image: str) -> list[dict[str, Any]]:
    """The demo's model-files Deployment and Service, with the image under test."""
    docs = [doc for doc in yaml.safe_load_all(MODEL_FILES_MANIFEST.read_text()) if doc]
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = image
    return docs


def model_uri(models_namespace: str, file: str) -> str:
    return f"http://model-files.{models_namespace}.svc.cluster.local/{file}"


def client_pod(image: str, url: str, seconds: float, name: str = CLIENT_POD) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "e2e-client"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": RESTRICTED_POD,
            "containers": [{
                "name": "client", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-c", CLIENT_SCRIPT, url, str(seconds)],
                "securityContext": RESTRICTED_CONTAINER,
                "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
            }],
        },
    }


def infer_url(endpoint: str, model: str) -> str:
    """The endpoint Service, as a client in the endpoint's own namespace calls it."""
    return f"http://{endpoint}/v2/models/{model}/infer"


@dataclass
class ClientLog:
    """The client pod's log, one (outcome, detail) per request in order: ("ok", model_version) or
    ("err", what went wrong)."""
    results: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False

    @classmethod
    def parse(cls, text: str) -> ClientLog:
        log = cls()
        for line in text.splitlines():
            word, _, rest = line.partition(" ")
            if word in ("ok", "err"):
                log.results.append((word, rest))
            elif word == "done":
                log.done = True
        return log

    @property
    def versions(self) -> list[str]:
        return [detail for outcome, detail in self.results if outcome == "ok"]

    @property
    def errors(self) -> list[str]:
        return [detail for outcome, detail in self.results if outcome == "err"]

    def count(self, version: str) -> int:
        return self.versions.count(version)

    def tail_is(self, version: str, n: int) -> bool:
        """The last ``n`` requests all succeeded and were answered by ``version``."""
        return len(self.results) >= n and all(result == ("ok", version) for result in self.results[-n:])
