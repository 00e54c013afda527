"""Endpoint keys end to end: the real operator against the API double, and the real serving image on
loopback as the slots' pods (the test plays the kubelet, mounting the keys Secret as files).

A keyed endpoint gets its Secret from the operator, its rollout is validated with the key, it reverts
exactly as an open one does, `slotkeeper regenerate-key` rotates a key in the Secret (never the spec,
no rollout), and no key appears in the operator's logs, Events, status or Deployments."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import joblib
import kmock as kmock_lib
import numpy as np
import uvicorn

from kmock_cluster import DEPLOYMENTS, eventually
from test_console_script import write_kubeconfig
from test_operator import FAST_CHECKS, SLOT, ready, selector, status
from test_rbac_requests import MANIFESTS, grants, operator_requests

from slotkeeper.cli import main as cli_main
from slotkeeper_serving.app import ServingApp
from slotkeeper_serving.config import Settings

SECRETS = kmock_lib.resource("v1/secrets")
ROW = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.3, -1.2, 0.8, 2.1]}
SMOKE = {"name": "smoke", "request": {"inputs": [ROW]}, "expect": {"status": 200}}
KEYED = {
    "model": {"name": "credit", "uri": "file:///models/credit/1/model.joblib"},
    "serving": {"replicas": 1},
    "strategy": {"blueGreen": {"scaleDownDelaySeconds": 0}},
    "checks": {**FAST_CHECKS, "validation": [SMOKE]},
    "auth": {"mode": "key"},
}


def mount(directory: Path, secret: dict, generation: int) -> dict[str, str]:
    """What the kubelet does with a Secret volume: a timestamped directory, then an atomic swap of
    ``..data``; the key files are symlinks through it. Returns the decoded keys."""
    keys = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    payload = directory / f"..{generation}"
    payload.mkdir()
    for name, value in keys.items():
        (payload / name).write_text(value)
        with contextlib.suppress(FileExistsError):
            (directory / name).symlink_to(f"..data/{name}")
    (directory / "..tmp").symlink_to(payload.name)
    os.replace(directory / "..tmp", directory / "..data")
    return keys


@contextlib.contextmanager
def serving(tmp_path: Path, keys_dir: Path):
    """The real serving image, keyed, in a thread on 127.0.0.1 (the slots' pods)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.RandomState(7)
    features = rng.randn(20, 4)
    model = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit(features, (features[:, 0] > 0).astype(np.int64)), model)
    settings = Settings(model_uri=str(model), model_name="credit", host="127.0.0.1", port=0,
                        cache_dir=tmp_path / "cache", keys_dir=keys_dir)
    app = ServingApp(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and app.slot.ready):
        assert time.monotonic() < deadline, "the serving image did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


async def test_keyed_endpoint_rolls_out_validated_with_the_key_reverts_and_rotates(
        run_operator, operator_registry, operator_settings, k8s, kmock, tmp_path, caplog):
    import kopf

    caplog.set_level(logging.DEBUG)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    with serving(tmp_path, keys_dir) as base:
        await run_operator(operator_registry, settings=operator_settings,
                           memo=kopf.Memo(slot_url=lambda namespace, endpoint, slot: base))
        await k8s.create_endpoint("credit", KEYED, namespace="default")

        # The operator creates the keys Secret (owned by the endpoint); the kubelet mounts it.
        await eventually(lambda: k8s.peek(SECRETS, "credit-keys", namespace="default"), message="keys Secret")
        secret = k8s.peek(SECRETS, "credit-keys", namespace="default")
        assert secret["metadata"]["ownerReferences"][0]["name"] == "credit"
        keys = mount(keys_dir, secret, 1)
        assert set(keys) == {"primary", "secondary"} and all(len(key) >= 43 for key in keys.values())
        assert keys["primary"] != keys["secondary"]
        all_keys = set(keys.values())

        async with httpx.AsyncClient(base_url=base) as client:
            infer = "/v2/models/credit/infer"
            refused = await client.post(infer, json={"inputs": [ROW]})
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            for key in keys.values():  # picked up from the files within about a second
                assert await accepted(client, key)

            await ready(k8s, "blue")
            await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=15, message="first revision")
            # A new model: validated through the keyed slot (it answers 401 without the key), then switched.
            await k8s.patch_endpoint("credit", {"model": {"name": "credit", "uri": "file:///models/credit/2/m"}},
                                     namespace="default")
            await ready(k8s, "green")
            await eventually(lambda: (selector(k8s) or {}).get(SLOT) == "green" and status(k8s).get("phase")
                             == "Healthy", timeout=15, message="the keyed candidate validated and promoted")
            assert status(k8s)["history"][-1]["outcome"] == "Promoted"

            made = operator_requests(kmock)  # before the CLI, which uses the same client (as the user)
            # Rotation through the CLI: a new secondary in the Secret, spec untouched, nothing rolls out.
            generation = k8s.endpoint("credit", namespace="default")["metadata"].get("generation")
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
            code = await asyncio.to_thread(cli_main, ["regenerate-key", "credit", "-n", "default", "--secondary",
                                                      "--kubeconfig", str(kubeconfig)])
            assert code == 0
            rotated = k8s.peek(SECRETS, "credit-keys", namespace="default")
            assert rotated["data"]["primary"] == secret["data"]["primary"]
            assert rotated["data"]["secondary"] != secret["data"]["secondary"]
            assert k8s.endpoint("credit", namespace="default")["metadata"].get("generation") == generation
            new_keys = mount(keys_dir, rotated, 2)
            all_keys |= set(new_keys.values())
            assert await accepted(client, new_keys["secondary"])  # the server re-reads the files: no restart
            assert await accepted(client, new_keys["primary"])
            assert status(k8s).get("candidateRevision") is None

            # `slotkeeper keys` prints them from the Secret.
            printed = await asyncio.to_thread(_capture_cli, ["keys", "credit", "-n", "default",
                                                            "--kubeconfig", str(kubeconfig)])
            assert new_keys["secondary"] in printed and new_keys["primary"] in printed

            # A revision that fails validation reverts exactly as an open endpoint does.
            bad = {**SMOKE, "expect": {"status": 200, "outputs": [{"name": "predict", "data": [7.0]}]}}
            await k8s.patch_endpoint("credit", {"model": {"name": "credit", "uri": "file:///models/credit/3/m"},
                                                "checks": {**FAST_CHECKS, "validation": [bad]}}, namespace="default")
            candidate = await eventually(lambda: status(k8s).get("candidateRevision"), message="a candidate")
            await eventually(lambda: k8s.peek(DEPLOYMENTS, "credit-blue", namespace="default")["metadata"]["labels"]
                             ["slotkeeper.io/revision"] == candidate, message="blue runs the candidate")
            await ready(k8s, "blue")
            try:
                await eventually(lambda: status(k8s).get("phase") == "RolledBack", timeout=15, message="reverted")
            except AssertionError:
                raise AssertionError(json.dumps(status(k8s))[:3000])
            assert (selector(k8s) or {}).get(SLOT) == "green"
            # The operator never overwrote the rotated key when it rolled out again.
            assert k8s.peek(SECRETS, "credit-keys", namespace="default")["data"] == rotated["data"]

    # No key in the operator's logs, Events, status or Deployments.
    logs = "\n".join(record.getMessage() for record in caplog.records)
    events = json.dumps(k8s.events_for("credit", namespace="default"))
    stored = json.dumps([status(k8s), k8s.peek(DEPLOYMENTS, "credit-blue", namespace="default"),
                         k8s.peek(DEPLOYMENTS, "credit-green", namespace="default")])
    assert events != "[]" and logs
    for key in all_keys:
        for encoded in (key, base64.b64encode(key.encode()).decode()):
            assert encoded not in logs and encoded not in events and encoded not in stored

    # Every request the operator made for keys is one its RBAC allows (ClusterRole and Role): create, get.
    secret_requests = {request for request in made if request[1] == "secrets"}
    assert secret_requests == {("", "secrets", "create"), ("", "secrets", "get")}
    for role in (MANIFESTS / "rbac" / "cluster_role.yaml", MANIFESTS / "overlays" / "namespaced" / "role.yaml"):
        assert secret_requests <= grants(role), role


async def accepted(client: httpx.AsyncClient, key: str, timeout: float = 10.0) -> bool:
    """The key is accepted now, or within ``timeout`` (the server looks at the files about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await client.post("/v2/models/credit/infer", json={"inputs": [ROW]},
                                  headers={"Authorization": f"Bearer {key}"})
        if reply.status_code == 200:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


def _capture_cli(argv: list[str]) -> str:
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(argv) == 0
    return out.getvalue()


async def test_a_user_brought_secret_is_read_never_created(run_operator, operator_registry, operator_settings,
                                                           k8s, kmock):
    await run_operator(operator_registry, settings=operator_settings)
    await k8s.create_endpoint("credit", {**KEYED, "checks": FAST_CHECKS,
                                         "auth": {"mode": "key", "secretName": "team-keys"}}, namespace="default")
    await eventually(lambda: k8s.peek(DEPLOYMENTS, "credit-blue", namespace="default"), message="blue")
    volumes = k8s.peek(DEPLOYMENTS, "credit-blue", namespace="default")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "keys", "secret": {"secretName": "team-keys", "defaultMode": 0o440, "optional": False}} in volumes
    assert k8s.peek(SECRETS, "team-keys", namespace="default") is None
    assert not list(kmock[kmock_lib.method.POST, SECRETS])
