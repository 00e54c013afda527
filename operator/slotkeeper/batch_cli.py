"""``slotkeeper batch run`` and ``slotkeeper batch list``: one-off batch runs as the user (their RBAC
creates the Job, the operator only watches it), and the runs the operator recorded in status.

A run is pinned to ``status.stableRevision`` at the moment it is created: its pod is the stable
revision's slot pod rendered by :mod:`.batch` (the same function the operator uses for schedules).
When the spec describes another revision (a rollout under way, or a reverted spec), the stable
revision's pod template is read from its slot Deployment instead, and refused if that Deployment
holds another revision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pydantic import ValidationError

from .api import GROUP, PLURAL, VERSION, BatchJob, ModelEndpointSpec, ModelEndpointStatus
from .batch import render_batch_job, run_job_name, stable_pod_template
from .observe import JOB_NAME_LABEL, batch_result, combine_results, completion_index, summarise_job
from .reconciler import spec_error
from .render import LABEL_REVISION, slot_object_name

POLL_SECONDS = 1.0
OVERRIDES = (("input", "input"), ("output", "output"), ("key_column", "keyColumn"), ("chunk_rows", "chunkRows"),
             ("max_failed_rows", "maxFailedRows"), ("max_failed_fraction", "maxFailedFraction"),
             ("parallelism", "parallelism"))


class BatchError(Exception):
    """A run that cannot start; the message says why."""


def _clients(args: argparse.Namespace):
    from kubernetes import client

    from .client_config import build_api_client
    api = build_api_client(args.kubeconfig, args.context)
    return client.CustomObjectsApi(api), client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)


def _raw(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def run_settings(spec: ModelEndpointSpec, args: argparse.Namespace) -> tuple[BatchJob, str | None]:
    """The run's settings: a spec.batch.jobs entry (--job) with the flags laid over it, or the flags alone."""
    entry = None
    if args.job:
        entry = next((j for j in (spec.batch.jobs if spec.batch else []) if j.name == args.job), None)
        if entry is None:
            raise BatchError(f"spec.batch.jobs has no job named {args.job!r}")
    fields = entry.to_api() if entry else {"name": "adhoc"}
    fields.pop("schedule", None)
    fields.update({key: getattr(args, attr) for attr, key in OVERRIDES if getattr(args, attr) is not None})
    try:
        return BatchJob.model_validate(fields), (entry.name if entry else None)
    except ValidationError as error:
        raise BatchError(spec_error(error).replace("spec.", "")) from None


def stable_template(apps, namespace: str, owner: dict, spec: ModelEndpointSpec, status: ModelEndpointStatus) -> dict:
    template = stable_pod_template(owner, spec, status)
    if template is not None:
        return template
    name = slot_object_name(owner["metadata"]["name"], status.active_slot or "blue")
    deployment = _raw(apps.read_namespaced_deployment(name, namespace, _preload_content=False))
    template = deployment["spec"]["template"]
    if (template.get("metadata") or {}).get("labels", {}).get(LABEL_REVISION) != status.stable_revision:
        raise BatchError(f"Deployment {name} does not hold the stable revision {status.stable_revision}")
    return template


def start_run(args: argparse.Namespace, custom, apps, batch) -> tuple[str, str]:
    endpoint = custom.get_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, args.name)
    try:
        spec = ModelEndpointSpec.model_validate(endpoint.get("spec") or {})
    except ValidationError as error:
        raise BatchError(f"its spec is invalid: {spec_error(error)}") from None
    status = ModelEndpointStatus.model_validate(endpoint.get("status") or {})
    if status.stable_revision is None:
        raise BatchError(f"{args.name} has no stable revision yet: nothing to score with")
    job, entry = run_settings(spec, args)
    owner = {"metadata": {"name": args.name, "namespace": args.namespace, "uid": endpoint["metadata"]["uid"]}}
    template = stable_template(apps, args.namespace, owner, spec, status)
    name = run_job_name(args.name, entry, int(time.time()))
    body = render_batch_job(owner, template, job, name, status.stable_revision, entry)
    batch.create_namespaced_job(args.namespace, body, _preload_content=False)
    return name, status.stable_revision


def follow(core, batch, namespace: str, name: str, wait: float) -> int:
    """Print the Job's state as it changes until it ends (0: Succeeded, 1: Failed) or ``wait`` passes (3)."""
    deadline, shown = time.monotonic() + wait, None
    while True:
        job = summarise_job(_raw(batch.read_namespaced_job(name, namespace, _preload_content=False)))
        pods = _raw(core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}",
                                             _preload_content=False)).get("items") or []
        result = combine_results(
            (completion_index((p.get("metadata") or {}).get("annotations") or {}), r) for p in pods
            if (r := batch_result((p.get("status") or {}).get("containerStatuses") or [])) is not None)
        state = (job.outcome, len(pods))
        if state != shown:
            print(f"{name}: {job.outcome} ({len(pods)} pod(s))", flush=True)
            shown = state
        if job.outcome in ("Succeeded", "Failed"):
            if result is not None:
                print(f"{name}: {result.rows} rows, {result.failed_rows} failed, revision {result.revision}"
                      + (f": {result.reason}" if result.reason else ""))
            elif job.reason:
                print(f"{name}: {job.reason}")
            return 0 if job.outcome == "Succeeded" else 1
        if time.monotonic() >= deadline:
            print(f"{name}: still {job.outcome} after {wait:g}s; `slotkeeper batch list` shows it when it ends",
                  file=sys.stderr)
            return 3
        time.sleep(POLL_SECONDS)


def run_command(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    custom, core, apps, batch = _clients(args)
    try:
        name, revision = start_run(args, custom, apps, batch)
    except BatchError as error:
        print(f"{args.name}: {error}", file=sys.stderr)
        return 2
    except ApiException as error:
        print(f"{args.name}: cannot start a run: {error.status} {error.reason}", file=sys.stderr)
        return 1
    print(f"Job {name} started with revision {revision}", flush=True)
    return 0 if args.no_follow else follow(core, batch, args.namespace, name, args.wait)


def list_command(args: argparse.Namespace) -> int:
    from .views import format_batch

    custom, *_ = _clients(args)
    print(format_batch(custom.get_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, args.name)))
    return 0


def add_commands(commands, parent: argparse.ArgumentParser) -> None:
    batch = commands.add_parser("batch", help="batch scoring with the stable revision: run once, list runs")
    sub = batch.add_subparsers(dest="batch_command", required=True)
    run = sub.add_parser("run", parents=[parent], help="start a one-off run pinned to the stable revision and "
                                                       "follow it until it ends")
    run.add_argument("name")
    run.add_argument("-n", "--namespace", default="default")
    run.add_argument("--job", help="a spec.batch.jobs entry to take the settings from (flags override them)")
    run.add_argument("--input", help="file://, http(s):// or pvc://<claim>/<path>: a file or a directory")
    run.add_argument("--output", help="file:// or pvc://<claim>/<path>")
    run.add_argument("--key-column")
    run.add_argument("--chunk-rows", type=int)
    run.add_argument("--max-failed-rows", type=int)
    run.add_argument("--max-failed-fraction", type=float)
    run.add_argument("--parallelism", type=int, help="pods scoring the run together (an Indexed Job)")
    run.add_argument("--wait", type=float, default=3600.0, help="seconds to follow the run (default 3600)")
    run.add_argument("--no-follow", action="store_true", help="start the run and return")
    run.set_defaults(func=run_command)
    listing = sub.add_parser("list", parents=[parent], help="the recent runs and schedules (status.batch)")
    listing.add_argument("name")
    listing.add_argument("-n", "--namespace", default="default")
    listing.set_defaults(func=list_command)
