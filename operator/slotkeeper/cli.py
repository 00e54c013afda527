"""The ``slotkeeper`` command (also installed as the kubectl plugin ``kubectl-slotkeeper``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator


@contextlib.contextmanager
def official_client_hidden() -> Iterator[None]:
    """``import kopf`` imports the official ``kubernetes`` client whenever it is installed (kopf's
    thirdparty.py try-imports its models, to accept them as bodies; slotkeeper never passes one):
    9 MiB of RSS in the operator process with kubernetes 37 (benchmarks/operator); its default registry asks again to add a login handler
    for it. A ``None`` in ``sys.modules`` makes those imports fail, as if the package were absent
    (so kopf adds only its own kubeconfig and service-account fallbacks, behind slotkeeper's login
    handler); afterwards the entries go, so the CLI's other code paths, and the
    operator's for an exec-plugin kubeconfig (client_config.py), can still import it."""
    names = ("kubernetes", "kubernetes.client")
    hidden = [name for name in names if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def _run_operator(args: argparse.Namespace) -> int:
    with official_client_hidden():  # kopf looks for it at import and in its registry's first use
        import kopf

        from . import handlers  # noqa: F401  (registers the handlers)
    from .metrics import parse_bind_address

    try:
        parse_bind_address(args.metrics_bind_address)  # a typo fails here, not after kopf started
    except ValueError as error:
        print(f"slotkeeper run: {error}", file=sys.stderr)
        return 2

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)

    async def operate(**memo: Any) -> None:
        await kopf.operator(
            standalone=True,  # kopf's peering never runs: the Lease (or a single replica) decides who acts
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),  # kopf iterates it even cluster-wide: never None
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(namespaced=bool(args.namespace), namespaces=list(args.namespace),
                           kubeconfig=args.kubeconfig, context=args.context, slot_access_mode=args.slot_access,
                           metrics_bind_address=args.metrics_bind_address,
                           gc_freeze=True, **memo),
        )

    if not args.leader_elect:
        asyncio.run(operate())
        return 0
    return asyncio.run(_run_elected(args, operate))


async def _run_elected(args: argparse.Namespace, operate: Callable[..., Awaitable[None]]) -> int:
    from .client_config import load_connection
    from .leader import ElectionTiming, LeaderElector, LeaseStore, make_identity, run_elected, serve_liveness
    from .metrics import OperatorMetrics, parse_bind_address, serve_metrics

    # A follower serves its metrics too (slotkeeper_leader 0): "no leader" is an alert only if every
    # replica can be scraped. The leader's kopf run takes over this registry and this server.
    metrics = OperatorMetrics()
    metrics.set_leader(False)
    address = parse_bind_address(args.metrics_bind_address)
    server = await serve_metrics(metrics, *address) if address is not None else None
    timing = ElectionTiming(args.lease_duration, args.renew_deadline, args.retry_period)
    store = LeaseStore(await asyncio.to_thread(load_connection, args.kubeconfig, args.context),
                       args.lease_namespace, args.lease_name, timeout=timing.renew_deadline)
    elector = LeaderElector(store, make_identity(), timing, on_leadership=metrics.set_leader)
    follow = (lambda: serve_liveness(args.liveness)) if args.liveness else None
    try:
        return await run_elected(elector, lambda: operate(metrics=metrics, metrics_server=server), follow=follow)
    finally:
        await store.close()
        if server is not None:
            await server.cleanup()


def _check_election(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Leader election is on by default in a pod (its namespace is known), off elsewhere."""
    from .leader import ElectionTiming, default_lease_namespace

    args.lease_namespace = args.lease_namespace or default_lease_namespace()
    if args.leader_elect is None:
        args.leader_elect = args.lease_namespace is not None
    if not args.leader_elect:
        return
    if not args.lease_namespace:
        parser.error("--leader-elect needs --lease-namespace outside a pod (or POD_NAMESPACE)")
    problems = ElectionTiming(args.lease_duration, args.renew_deadline, args.retry_period).problems()
    if problems:
        parser.error("; ".join(problems))


def _write_crd(args: argparse.Namespace) -> int:
    from .crd import render_crd_yaml, write_crd

    if args.output == "-":
        sys.stdout.write(render_crd_yaml())
    else:
        print(write_crd(Path(args.output)))
    return 0


ACTION_HELP = {
    "promote": "skip the current wait: a pause, a manual promotion, a stalled check, or the rest of the analysis",
    "abort": "revert to the stable revision now",
    "retry": "try a reverted revision again without changing the spec",
    "pause": "hold the rollout where it is (failures still revert)",
    "resume": "continue after pause",
}


def _kube(args: argparse.Namespace):
    """The official client, configured as kubectl would be (see client_config.build_api_client)."""
    from kubernetes import client

    from .client_config import build_api_client
    api = build_api_client(args.kubeconfig, args.context)
    return client.CustomObjectsApi(api), client.CoreV1Api(api)


def _get_endpoint(custom, namespace: str, name: str) -> dict:
    from .api import GROUP, PLURAL, VERSION
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def _request_action(args: argparse.Namespace) -> int:
    """Set the action's annotation to a fresh token, then wait until the operator says it handled it."""
    import time
    from datetime import datetime, timezone

    from .api import GROUP, PLURAL, VERSION
    from .step import ACTION_PREFIX
    from .views import format_status

    custom, _ = _kube(args)
    token = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    patch = {"metadata": {"annotations": {ACTION_PREFIX + args.action: token}}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, args.name, patch,
                                          _content_type="application/merge-patch+json")
    deadline = time.monotonic() + args.wait
    while True:
        endpoint = _get_endpoint(custom, args.namespace, args.name)
        handled = ((endpoint.get("status") or {}).get("handledActions") or {}).get(args.action)
        if handled == token:
            print(f"{args.action}: handled by the operator\n")
            print(format_status(endpoint))
            return 0
        if time.monotonic() >= deadline:
            print(f"{args.action}: requested (token {token}); the operator has not handled it within {args.wait:g}s",
                  file=sys.stderr)
            return 1
        time.sleep(0.5)


def _show(args: argparse.Namespace) -> int:
    from .api import KIND
    from .views import format_history, format_status

    custom, core = _kube(args)
    endpoint = _get_endpoint(custom, args.namespace, args.name)
    if args.command == "history":
        print(format_history(endpoint))
        return 0
    selector = f"involvedObject.name={args.name},involvedObject.kind={KIND}"
    events = core.list_namespaced_event(args.namespace, field_selector=selector).to_dict().get("items") or []
    events = [{"lastTimestamp": str(e.get("last_timestamp") or e.get("event_time") or ""), "type": e.get("type"),
               "reason": e.get("reason"), "message": e.get("message")} for e in events]
    print(format_status(endpoint, events))
    return 0


def _keys_secret(custom, args: argparse.Namespace) -> str | None:
    from .api import ModelEndpointSpec, keys_secret_name

    endpoint = _get_endpoint(custom, args.namespace, args.name)
    return keys_secret_name(args.name, ModelEndpointSpec.model_validate(endpoint.get("spec") or {}).auth)


def _show_keys(args: argparse.Namespace) -> int:
    """The endpoint's keys, read from its keys Secret (status never holds one)."""
    import base64

    from kubernetes.client.exceptions import ApiException

    custom, core = _kube(args)
    secret = _keys_secret(custom, args)
    if secret is None:
        print(f"{args.name}: auth mode is none; the endpoint takes no key", file=sys.stderr)
        return 1
    try:
        data = core.read_namespaced_secret(secret, args.namespace).data or {}
    except ApiException as error:
        print(f"{args.name}: cannot read Secret {secret}: {error.status} {error.reason}", file=sys.stderr)
        return 1
    for name in ("primary", "secondary"):
        value = base64.b64decode(data[name]).decode() if data.get(name) else "(missing)"
        print(f"{name}: {value}")
    return 0


def _regenerate_key(args: argparse.Namespace) -> int:
    """A new random key in the Secret (a merge patch of one data key): never the spec, so Git stays
    the truth; the pods pick it up from the mounted Secret, and nothing rolls out."""
    import base64
    import secrets as random_keys

    from kubernetes.client.exceptions import ApiException

    from .cluster import KEY_BYTES

    custom, core = _kube(args)
    secret = _keys_secret(custom, args)
    if secret is None:
        print(f"{args.name}: auth mode is none; the endpoint takes no key", file=sys.stderr)
        return 1
    which = "primary" if args.primary else "secondary"
    value = base64.b64encode(random_keys.token_urlsafe(KEY_BYTES).encode()).decode()
    try:
        core.patch_namespaced_secret(secret, args.namespace, {"data": {which: value}},
                                     _content_type="application/merge-patch+json")
    except ApiException as error:
        print(f"{args.name}: cannot patch Secret {secret}: {error.status} {error.reason}", file=sys.stderr)
        return 1
    print(f"{which} key of {args.name} regenerated in Secret {secret}; pods pick it up when the kubelet updates "
          f"the mounted Secret (about a minute). `slotkeeper keys {args.name} -n {args.namespace}` prints it.")
    return 0


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--kubeconfig/--context, before or after the subcommand (as with kubectl). The subcommand's
    copy defaults to SUPPRESS so it never overwrites a value given before it."""
    parser.add_argument("--kubeconfig", default=default,
                        help="a kubeconfig file (default: $KUBECONFIG, the pod's service account, ~/.kube/config)")
    parser.add_argument("--context", default=default, help="the kubeconfig context to use (default: its current one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotkeeper", description="Model endpoints with deployment slots.")
    _connection_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = argparse.ArgumentParser(add_help=False)
    _connection_options(sub, default=argparse.SUPPRESS)

    run = commands.add_parser("run", help="run the operator", parents=[sub])
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only this namespace (repeatable); default: all namespaces")
    run.add_argument("--liveness", default=None, help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--slot-access", choices=("auto", "direct", "apiserver-proxy"), default="auto",
                     help="how validation requests and pods checks reach the candidate: direct (Service DNS "
                          "names, pod IPs), apiserver-proxy (through the API server); auto: direct in a pod")
    run.add_argument("--metrics-bind-address", default="0",
                     help="serve Prometheus metrics at http://<address>/metrics, e.g. :8081; 0 (the default) "
                          "turns them off (the manifests turn them on)")
    run.add_argument("-v", "--verbose", action="store_true")
    election = run.add_argument_group("leader election", "several replicas, one acting: the holder of a "
                                      "coordination.k8s.io Lease (see README, Leader election)")
    election.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=None,
                          help="elect a leader on a Lease (default: on in a pod, off elsewhere)")
    election.add_argument("--standalone", dest="leader_elect", action="store_false",
                          help="the same as --no-leader-elect: act at once, alone (local runs)")
    election.add_argument("--lease-name", default="slotkeeper-operator", help="default: %(default)s")
    election.add_argument("--lease-namespace", default=None,
                          help="default: the pod's namespace ($POD_NAMESPACE or the service account's)")
    election.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS",
                          help="how long followers wait after the last renewal they saw (default: %(default)g)")
    election.add_argument("--renew-deadline", type=float, default=10.0, metavar="SECONDS",
                          help="the leader stops if it has not renewed for this long (default: %(default)g)")
    election.add_argument("--retry-period", type=float, default=2.0, metavar="SECONDS",
                          help="between renewals and between a follower's tries (default: %(default)g)")
    run.set_defaults(func=_run_operator)

    crd = commands.add_parser("crd", help="render the CustomResourceDefinition from the API models")
    crd.add_argument("--output", "-o", default="crds", help="a directory, or - for standard output")
    crd.set_defaults(func=_write_crd)

    for action, help_text in ACTION_HELP.items():
        command = commands.add_parser(action, help=help_text, parents=[sub])
        command.add_argument("name")
        command.add_argument("-n", "--namespace", default="default")
        command.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the operator")
        command.set_defaults(func=_request_action, action=action)
    for show, help_text in (("status", "slots, revisions, traffic, checks and recent events"),
                            ("history", "the revisions rolled out, promoted and reverted")):
        command = commands.add_parser(show, help=help_text, parents=[sub])
        command.add_argument("name")
        command.add_argument("-n", "--namespace", default="default")
        command.set_defaults(func=_show)
    keys = commands.add_parser("keys", help="print the endpoint's primary and secondary keys (from its Secret)",
                               parents=[sub])
    keys.add_argument("name")
    keys.add_argument("-n", "--namespace", default="default")
    keys.set_defaults(func=_show_keys)
    regenerate = commands.add_parser("regenerate-key", help="replace the primary or the secondary key with a new "
                                     "random one (the other keeps working: rotate without downtime)", parents=[sub])
    regenerate.add_argument("name")
    regenerate.add_argument("-n", "--namespace", default="default")
    which = regenerate.add_mutually_exclusive_group(required=True)
    which.add_argument("--primary", action="store_true")
    which.add_argument("--secondary", action="store_true")
    regenerate.set_defaults(func=_regenerate_key)
    from .batch_cli import add_commands  # noqa: PLC0415

    add_commands(commands, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The parser's modules import kopf (batch_cli -> reconciler -> kube_api): kopf must not find the
    # official client then, or `slotkeeper run` carries it (official_client_hidden says why).
    with official_client_hidden():
        parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _check_election(parser, args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
