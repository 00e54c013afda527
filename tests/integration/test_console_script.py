"""The operator as users start it: the installed ``slotkeeper run`` console script, in its own
process, configured by a kubeconfig file only, cluster-wide (the default, what the Deployment in
manifests/ runs) and with ``--namespace``. It must bring an endpoint to Healthy and exit cleanly on
SIGTERM (what the kubelet sends). The in-process harness could not see a crash at start-up here."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml

from controllers import deployment_controller
from kmock_cluster import eventually
from test_operator import SPEC, status

SCRIPT = shutil.which("slotkeeper") or str(Path(sys.executable).with_name("slotkeeper"))


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": url}}],
        "users": [{"name": "operator", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "operator", "namespace": "default"}}],
    }))
    return path


@pytest.mark.parametrize("scope", [[], ["--namespace", "default"]], ids=["cluster-wide", "namespaced"])
async def test_the_console_script_brings_an_endpoint_to_healthy_and_stops_on_sigterm(kmock, k8s, tmp_path, scope):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    log = (tmp_path / "operator.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        SCRIPT, "run", *scope, "--kubeconfig", str(kubeconfig), "--slot-access", "direct",
        stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        async with deployment_controller(k8s):
            await k8s.create_endpoint("credit", SPEC, namespace="default")
            await eventually(lambda: process.returncode is None and status(k8s).get("phase") == "Healthy",
                             timeout=60, message="the endpoint Healthy, the operator still running")
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    output = (tmp_path / "operator.log").read_text()
    assert code == 0, output
    assert "Traceback" not in output and "has failed" not in output, output
