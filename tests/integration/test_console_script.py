"""The operator as users start it: the installed ``slotkeeper run`` console script, in its own
process, configured by a kubeconfig file only, cluster-wide (the default, what the Deployment in
manifests/ runs) and with ``--namespace``. It must bring an endpoint to Healthy and exit cleanly on
SIGTERM (what the kubelet sends). The in-process harness could not see a crash at start-up here."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml

import aiohttp.web

from controllers import deployment_controller
from kmock_cluster import eventually
from test_operator import NEW_MODEL, SPEC, status

SCRIPT = shutil.which("slotkeeper") or str(Path(sys.executable).with_name("slotkeeper"))


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": url}}],
        "users": [{"name": "operator", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "operator", "namespace": "default"}}],
    }))
    return path


async def start_operator(tmp_path, kmock, *args: str, env: dict[str, str] | None = None,
                         python: tuple[str, ...] = ()):
    """``python``: interpreter options; given, the script runs as ``python <options> slotkeeper``."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    log = (tmp_path / "operator.log").open("wb")
    command = (sys.executable, *python, SCRIPT) if python else (SCRIPT,)
    process = await asyncio.create_subprocess_exec(
        *command, "run", *args, "--kubeconfig", str(kubeconfig), stdout=log, stderr=asyncio.subprocess.STDOUT,
        env=env)
    return process, log


async def stop_operator(process, log, tmp_path) -> str:
    try:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    output = (tmp_path / "operator.log").read_text()
    assert process.returncode == 0, output
    assert "Traceback" not in output and "has failed" not in output, output
    return output


async def healthy_then_stopped(tmp_path, kmock, k8s, *args: str, python: tuple[str, ...] = ()) -> str:
    """Start the console script, bring an endpoint to Healthy with it, stop it (SIGTERM); its log."""
    process, log = await start_operator(tmp_path, kmock, *args, python=python)
    try:
        async with deployment_controller(k8s):
            await k8s.create_endpoint("credit", SPEC, namespace="default")
            await eventually(lambda: process.returncode is None and status(k8s).get("phase") == "Healthy",
                             timeout=60, message="the endpoint Healthy, the operator still running")
    finally:
        output = await stop_operator(process, log, tmp_path)
    return output


@pytest.mark.parametrize("scope", [[], ["--namespace", "default"]], ids=["cluster-wide", "namespaced"])
async def test_the_console_script_brings_an_endpoint_to_healthy_and_stops_on_sigterm(kmock, k8s, tmp_path, scope):
    await healthy_then_stopped(tmp_path, kmock, k8s, *scope, "--slot-access", "direct")


async def test_the_operator_process_never_loads_the_official_client_and_freezes_its_start_up(kmock, k8s, tmp_path):
    """kopf imports the official client whenever it is installed (9 MiB); ``slotkeeper run`` hides
    it (cli.official_client_hidden) and sends its own requests with aiohttp (kube_api.py). After
    start-up it freezes what it imported out of the garbage collector's sight (handlers.configure),
    and reconciling still works: the endpoint gets to Healthy."""
    output = await healthy_then_stopped(tmp_path, kmock, k8s, "--slot-access", "direct",
                                        python=("-X", "importtime"))
    imported = [line.rsplit("|", 1)[-1].strip() for line in output.splitlines() if line.startswith("import time:")]
    assert "slotkeeper.handlers" in imported and "kopf" in imported  # -X importtime did list the imports
    # (the hidden "kubernetes" and "kubernetes.client" are listed too, as failed lookups of a few µs)
    loaded = [name for name in imported if name.startswith(("kubernetes.client.", "kubernetes.config", "urllib3"))]
    assert loaded == [], f"the operator process loaded {loaded[:5]}"
    frozen = re.search(r"start-up objects frozen out of the garbage collector's sight: (\d+)", output)
    assert frozen and int(frozen.group(1)) > 10_000, output[-2000:]


async def model_server(answers: list[dict]) -> aiohttp.web.AppRunner:
    """The candidate's model server, as the apiserver's proxy reaches it."""
    async def infer(request: aiohttp.web.Request) -> aiohttp.web.Response:
        answers.append(await request.json())
        return aiohttp.web.json_response({"model_name": "credit", "outputs": [
            {"name": "predict", "shape": [1], "datatype": "INT64", "data": [0]}]})
    app = aiohttp.web.Application()
    app.router.add_post("/v2/models/credit/infer", infer)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_outside_the_cluster_validation_goes_through_the_apiserver_proxy(kmock, k8s, tmp_path):
    """Run from a laptop (no KUBERNETES_SERVICE_HOST): slot Service names do not resolve there, so
    the validation request must travel through the apiserver, or every validated rollout reverts."""
    answers: list[dict] = []
    runner = await model_server(answers)
    port = runner.addresses[0][1]
    kmock.proxy_backends[("default", "services", "credit-green:http")] = f"http://127.0.0.1:{port}"
    request = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    validated = {**SPEC, "checks": {**SPEC["checks"], "validation": [
        {"name": "smoke", "request": request, "expect": {"status": 200, "outputs": [{"name": "predict", "data": [0]}]}}]}}
    laptop = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    process, log = await start_operator(tmp_path, kmock, "--namespace", "default", env=laptop)
    try:
        async with deployment_controller(k8s):
            await k8s.create_endpoint("credit", validated, namespace="default")
            await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=60, message="v1 Healthy")
            await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
            await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                             timeout=60, message="v2 validated through the proxy and promoted")
    finally:
        output = await stop_operator(process, log, tmp_path)
        await runner.cleanup()
    assert answers == [request]
    assert "checks reach slots and pods: apiserver-proxy" in output
