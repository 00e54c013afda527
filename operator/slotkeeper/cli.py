"""The ``slotkeeper`` command (also installed as the kubectl plugin ``kubectl-slotkeeper``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def _run_operator(args: argparse.Namespace) -> int:
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or None,
        liveness_endpoint=args.liveness,
    ))
    return 0


def _write_crd(args: argparse.Namespace) -> int:
    from .crd import render_crd_yaml, write_crd

    if args.output == "-":
        sys.stdout.write(render_crd_yaml())
    else:
        print(write_crd(Path(args.output)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotkeeper", description="Model endpoints with deployment slots.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator")
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only this namespace (repeatable); default: all namespaces")
    run.add_argument("--liveness", default=None, help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run_operator)

    crd = commands.add_parser("crd", help="render the CustomResourceDefinition from the API models")
    crd.add_argument("--output", "-o", default="crds", help="a directory, or - for standard output")
    crd.set_defaults(func=_write_crd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
