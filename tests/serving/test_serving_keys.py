"""Endpoint keys over real HTTP: a keyed server answers only callers with one of its two keys, and
picks up a rotated key from the mounted files without a restart while requests keep flowing."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

import httpx
import pytest

from .conftest import wait_until

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.3, -1.2, 0.8, 2.1]}]}


class MountedSecret:
    """A directory laid out the way the kubelet mounts a Secret: the files are symlinks through
    ``..data``, itself a symlink to a timestamped directory swapped atomically on every update."""

    def __init__(self, root: Path, **keys: str) -> None:
        self.root, self.generation = root, 0
        self.update(**keys)
        for name in keys:
            (root / name).symlink_to(f"..data/{name}")

    def update(self, **keys: str) -> None:
        self.generation += 1
        payload = self.root / f"..2024_01_01_00_00_{self.generation:02d}.0000"
        payload.mkdir()
        for name, value in keys.items():
            (payload / name).write_text(value)
        link = self.root / "..data_tmp"
        link.symlink_to(payload.name)
        os.replace(link, self.root / "..data")  # the atomic swap


def new_key() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def keyed(start_server, model_files, tmp_path):
    primary, secondary = new_key(), new_key()
    mounted = MountedSecret(tmp_path, primary=primary, secondary=secondary)
    server = start_server(model_files["logreg"], model_name="credit", model_version="rev1", keys_dir=tmp_path)
    return server, mounted, primary, secondary


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_request_without_or_with_a_wrong_key_is_refused_with_401_and_a_bearer_challenge(keyed):
    server, _, primary, _ = keyed
    for headers in ({}, bearer("wrong"), bearer(primary + "x"), {"Authorization": f"Basic {primary}"}):
        reply = server.client.post(server.infer_url(), json=ROW, headers=headers)
        assert reply.status_code == 401, headers
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert primary not in reply.text
    assert server.client.get("/v2/models/credit", headers=bearer("wrong")).status_code == 401
    assert server.client.get("/v2/models/credit/ready").status_code == 401


def test_either_key_is_accepted_on_inference_and_metadata(keyed):
    server, _, primary, secondary = keyed
    for key in (primary, secondary):
        assert server.client.post(server.infer_url(), json=ROW, headers=bearer(key)).status_code == 200
        assert server.client.get("/v2/models/credit", headers=bearer(key)).status_code == 200
    # the header the operator uses through the apiserver proxy, which consumes Authorization
    assert server.client.post(server.infer_url(), json=ROW, headers={"X-Endpoint-Key": secondary}).status_code == 200


def test_health_routes_and_metrics_stay_open_for_probes_and_prometheus(keyed):
    server, *_ = keyed
    assert server.client.get("/v2/health/live").status_code == 200
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.client.get("/metrics").status_code == 200


def test_an_open_server_needs_no_key(credit_server):
    assert credit_server.client.post(credit_server.infer_url(), json=ROW).status_code == 200


def test_rotating_the_secondary_key_under_load_fails_no_request_and_needs_no_restart(keyed):
    """Azure's rotation: clients move to the primary, the secondary is regenerated in the mounted
    files, the server picks it up (same process, same app), clients move to it, then the primary is
    regenerated. Callers keep sending throughout; none fails."""
    server, mounted, primary, secondary = keyed
    app_before = server.app
    current = {"key": secondary}
    failures: list[int] = []
    successes = [0]
    stop = threading.Event()

    def caller() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
            while not stop.is_set():
                reply = client.post(server.infer_url(), json=ROW, headers=bearer(current["key"]))
                if reply.status_code == 200:
                    successes[0] += 1
                else:
                    failures.append(reply.status_code)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: successes[0] > 20, what="requests flowing")
        current["key"] = primary  # step 1: callers switch to the key that stays
        new_secondary = new_key()
        mounted.update(primary=primary, secondary=new_secondary)  # step 2: regenerate the secondary

        def accepted(key: str) -> bool:
            return server.client.post(server.infer_url(), json=ROW, headers=bearer(key)).status_code == 200

        wait_until(lambda: accepted(new_secondary), timeout=10, what="the new secondary key to be picked up")
        assert not accepted(secondary), "the old secondary key still works after the rotation"
        current["key"] = new_secondary  # step 3: callers switch to the new key
        new_primary = new_key()
        mounted.update(primary=new_primary, secondary=new_secondary)  # step 4: regenerate the primary
        wait_until(lambda: accepted(new_primary) and not accepted(primary), timeout=10,
                   what="the new primary key to be picked up")
        before = successes[0]
        wait_until(lambda: successes[0] > before + 20, what="more requests with the new key")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert failures == []
    assert server.app is app_before


def test_no_readable_key_refuses_every_protected_request(start_server, model_files, tmp_path):
    server = start_server(model_files["logreg"], model_name="credit", keys_dir=tmp_path / "missing")
    assert server.client.post(server.infer_url(), json=ROW, headers=bearer("anything")).status_code == 401
    assert server.client.get("/v2/health/ready").status_code == 200


def test_the_cli_takes_the_keys_directory_from_the_environment(spawn_server, model_files, tmp_path):
    key = new_key()
    (tmp_path / "keys").mkdir()
    MountedSecret(tmp_path / "keys", primary=key, secondary=new_key())
    server = spawn_server([], env={"SLOTKEEPER_MODEL_URI": str(model_files["logreg"]),
                                   "SLOTKEEPER_MODEL_NAME": "credit", "SLOTKEEPER_KEYS_DIR": str(tmp_path / "keys")})
    assert server.client.post(server.infer_url(), json=ROW).status_code == 401
    assert server.client.post(server.infer_url(), json=ROW, headers=bearer(key)).status_code == 200
    assert key not in server.log_text()
