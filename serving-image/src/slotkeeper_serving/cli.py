"""`slotkeeper-serve`: command-line flags over the SLOTKEEPER_* environment variables."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .config import ENV, FORMATS, LOG_LEVELS, ConfigError, settings_from_env


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags naming the model; shared by the server and the batch mode (batch/command.py)."""
    add = parser.add_argument
    add("--model-uri", help=f"file:///path, a plain path, or http(s):// URL [{ENV['model_uri']}]")
    add("--model-name", help=f"name in the /v2/models/{{name}} routes (default: model) [{ENV['model_name']}]")
    add("--model-format", choices=FORMATS, help=f"default: detected from the artifact [{ENV['model_format']}]")
    add("--model-version", help=f"revision, reported in responses and metrics [{ENV['model_version']}]")


def add_loading_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for loading the model and logging; shared by the server and the batch mode."""
    add = parser.add_argument
    add(
        "--cache-dir",
        help=f"writable directory for downloads and metric files (default: /tmp/slotkeeper) [{ENV['cache_dir']}]",
    )
    add(
        "--log-level",
        choices=LOG_LEVELS,
        help=f"default: info [{ENV['log_level']}]",
    )
    add(
        "--fastpath",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"verified fast predict for linear models (default: on) [{ENV['fastpath']}]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slotkeeper-serve",
        description="Serve one model over the Open Inference Protocol v2 (REST). "
        "Every flag falls back to its environment variable, then to its default. "
        "`slotkeeper-serve batch --help`: score files instead (batch mode).",
    )
    add_model_flags(parser)
    add = parser.add_argument
    add("--host", help=f"bind address (default: 0.0.0.0) [{ENV['host']}]")
    add("--port", type=int, help=f"default: 8080 [{ENV['port']}]")
    add("--grpc-port", type=int, help=f"also serve OIP v2 over gRPC on this port (default: off) [{ENV['grpc_port']}]")
    add("--workers", type=int, help=f"worker processes (default: 1) [{ENV['workers']}]")
    add("--max-request-bytes", type=int, help=f"request body limit (default: 16 MiB) [{ENV['max_request_bytes']}]")
    add_loading_flags(parser)
    add(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"combine concurrent requests into one model call for verified row-independent models "
        f"(default: on) [{ENV['batching']}]",
    )
    add("--batch-max-rows", type=int, help=f"largest combined call, in rows (default: 512) [{ENV['batch_max_rows']}]")
    add(
        "--batch-max-delay-ms",
        type=float,
        metavar="MS",
        help=f"how long a request that finds the model idle waits for others (default: 0) [{ENV['batch_max_delay_ms']}]",
    )
    add(
        "--shutdown-delay-seconds",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, keep serving this long while reporting not ready, then drain; "
        f"a second SIGTERM/SIGINT ends the wait (default: 5) [{ENV['shutdown_delay_seconds']}]",
    )
    add(
        "--keys-dir",
        metavar="DIR",
        help="require a key from the files primary/secondary in DIR (a mounted Secret), re-read when they "
        f"change; health routes and /metrics stay open (default: no key) [{ENV['keys_dir']}]",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["batch"]:
        from .batch.command import main as batch_main

        return batch_main(argv[1:])
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = settings_from_env(os.environ, overrides)
    except ConfigError as exc:
        print(f"slotkeeper-serve: {exc}", file=sys.stderr)
        return 2

    from .server import configure_logging, serve
    from .shutdown import exit_now

    configure_logging(settings.log_level)
    exit_now(serve(settings))  # the server has shut down: leftover threads must not hold up the exit
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
