#!/usr/bin/env python3
"""Does a restarted operator work when it already owns more objects than it has workers?

    .venv/bin/python benchmarks/operator/restart.py [--endpoints 6 7 30] [--env SLOTKEEPER_WORKER_LIMIT=1000]

For each N: an operator (launcher.py, as in run.py) creates N endpoints (one slot Deployment and
three Services each) until all are Healthy and stops; a second operator starts against the same
API double, and one endpoint gets a new model. Reported: whether the second operator sent any
request within --timeout seconds.

kopf blocks every event handler until every object of the initial listings of the indexed
kinds (Deployments, Pods, Services here) has been indexed; each object is indexed by its own
worker, and the operator allows settings.queueing.worker_limit (SLOTKEEPER_WORKER_LIMIT, 20)
workers per kind: the first 20 wait for the 21st, which waits for a worker. So with more than 20
owned Services (7 endpoints) the second operator never handles anything. run.py does not see this:
it always starts the operator against an empty cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import run
from run import NAMESPACE, NEW_MODEL, SPEC, Config, Kube, Operator, apidouble, settle, wait_for


async def restarted(n: int, env: tuple[tuple[str, str], ...], timeout: float) -> dict:
    double, server, stack = await apidouble.start((NAMESPACE,))
    controller = asyncio.create_task(double.deployment_controller())
    kube = Kube(double, namespace=NAMESPACE)
    url = str(server.url).rstrip("/")
    logs = run.HERE / ".logs"
    logs.mkdir(exist_ok=True)
    watched = (run.MODELENDPOINTS, run.DEPLOYMENTS, run.SERVICES, run.PODS)
    try:
        first = Operator(url, Config("first", env), None, logs / f"restart-{n}-first.log")
        try:
            await wait_for(lambda: all(double.watch_count(r) for r in watched), 30, "first operator ready", first)
            for i in range(n):
                await kube.create_endpoint(run.name(i), SPEC, namespace=NAMESPACE)
            await wait_for(lambda: len(double.healthy) >= n, 120, "every endpoint Healthy", first)
            await settle(double, first)
        finally:
            first.stop()
        owned = {resource.plural: sum(1 for key, obj in double._objects._objects.items()
                                      if key[0] == resource and not obj.deleted)
                 for resource in (run.DEPLOYMENTS, run.SERVICES, run.PODS)}
        second = Operator(url, Config("second", env), None, logs / f"restart-{n}-second.log")
        try:
            await wait_for(lambda: all(double.watch_count(r) for r in watched), 30, "second operator ready", second)
            await asyncio.sleep(2)
            double.reset_counts()
            await kube.patch_endpoint(run.name(0), {"model": NEW_MODEL}, namespace=NAMESPACE)
            started = time.monotonic()
            try:
                await wait_for(lambda: sum(double.counts.values()) > 0, timeout, "second operator reacts", second)
                reacted = round(time.monotonic() - started, 2)
            except TimeoutError:
                reacted = None
        finally:
            second.stop()
        return {"endpoints": n, "owned": owned, "reacted_after_s": reacted, "requests": dict(double.counts)}
    finally:
        controller.cancel()
        await stack.aclose()


async def main(args: argparse.Namespace) -> None:
    env = tuple(tuple(item.split("=", 1)) for item in args.env)
    for n in args.endpoints:
        outcome = await restarted(n, env, args.timeout)
        verdict = (f"reacted after {outcome['reacted_after_s']} s" if outcome["reacted_after_s"] is not None
                   else f"NO REQUEST within {args.timeout:g} s")
        print(f"N={n} (owned {outcome['owned']}), {dict(env) or 'as is'}: second operator {verdict}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, nargs="+", default=[6, 7, 30])
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for both operators")
    parser.add_argument("--timeout", type=float, default=30)
    asyncio.run(main(parser.parse_args()))
