"""Settings: environment variables (set by the operator) and CLI flags.

Precedence is CLI flag > environment variable > default. Parsing is pure
(`settings_from_env` takes the mapping) so it is testable without touching
os.environ.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB

FORMATS = ("sklearn", "score-py", "xgboost", "lightgbm")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

# The environment contract with the operator. Keep the names stable.
ENV = {
    "model_uri": "SLOTKEEPER_MODEL_URI",
    "model_name": "SLOTKEEPER_MODEL_NAME",
    "model_format": "SLOTKEEPER_MODEL_FORMAT",
    "model_version": "SLOTKEEPER_MODEL_VERSION",
    "port": "SLOTKEEPER_PORT",
    "grpc_port": "SLOTKEEPER_GRPC_PORT",
    "workers": "SLOTKEEPER_WORKERS",
    "max_request_bytes": "SLOTKEEPER_MAX_REQUEST_BYTES",
    "cache_dir": "SLOTKEEPER_CACHE_DIR",
    # Optional knobs, not set by the operator.
    "host": "SLOTKEEPER_HOST",
    "log_level": "SLOTKEEPER_LOG_LEVEL",
    "download_timeout_seconds": "SLOTKEEPER_DOWNLOAD_TIMEOUT_SECONDS",
    "max_model_bytes": "SLOTKEEPER_MAX_MODEL_BYTES",
    "fastpath": "SLOTKEEPER_FASTPATH",
    "batching": "SLOTKEEPER_BATCHING",
    "batch_max_rows": "SLOTKEEPER_BATCH_MAX_ROWS",
    "batch_max_delay_ms": "SLOTKEEPER_BATCH_MAX_DELAY_MS",
    # Set by the operator from the ModelEndpoint spec; the default suits most clusters.
    "shutdown_delay_seconds": "SLOTKEEPER_SHUTDOWN_DELAY_SECONDS",
    # Set by the operator for a keyed endpoint: the mounted keys Secret (see keys.py).
    "keys_dir": "SLOTKEEPER_KEYS_DIR",
}

# How long a terminating server keeps accepting and answering (while reporting
# not ready) before it drains: kube-proxy on every node, and any other load
# balancer, needs that long to stop sending new connections (README: Shutdown).
DEFAULT_SHUTDOWN_DELAY_SECONDS = 5.0


class ConfigError(ValueError):
    """A setting is missing or invalid; the server refuses to start."""


@dataclass(frozen=True)
class Settings:
    model_uri: str
    model_name: str = "model"
    model_format: str | None = None  # None: detect from the artifact
    model_version: str = ""
    host: str = "0.0.0.0"
    port: int = 8080
    grpc_port: int | None = None  # None: no gRPC server
    workers: int = 1
    max_request_bytes: int = 16 * MiB
    cache_dir: Path = Path("/tmp/slotkeeper")
    download_timeout_seconds: float = 300.0
    max_model_bytes: int = 4 * GiB
    log_level: str = "info"
    fastpath: bool = True
    batching: bool = True
    batch_max_rows: int = 512
    # 0 from the sweep in benchmarks/serving/results.md ("delay-sweep", 100-tree forest): real delays of
    # 1, 2 and 5 ms lower throughput at c=8, 32 and 128 alike (c=8: 4,574 -> 3,316 -> 2,261 -> 1,209 req/s)
    # and add their delay to p50. Adaptive batching needs none: requests queue while the model is busy.
    # Below 1 ms there is no real delay under uvloop (libuv timers count whole milliseconds; a 0.5 ms
    # sleep returns in microseconds, one more event-loop turn), so 0.5 ms's +8 to +22 % is not a delay.
    batch_max_delay_ms: float = 0.0
    shutdown_delay_seconds: float = DEFAULT_SHUTDOWN_DELAY_SECONDS
    keys_dir: Path | None = None  # None: no key required (an open endpoint)

    def __post_init__(self) -> None:
        _check_path_segment("model name", self.model_name, allow_empty=False)
        _check_path_segment("model version", self.model_version, allow_empty=True)
        if not self.model_uri:
            raise ConfigError(f"a model URI is required ({ENV['model_uri']} or --model-uri)")
        if self.model_format is not None and self.model_format not in FORMATS:
            raise ConfigError(f"model format must be one of {', '.join(FORMATS)}, got {self.model_format!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise ConfigError(f"gRPC port must be 0..65535, got {self.grpc_port}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.max_request_bytes < 1:
            raise ConfigError(f"max request bytes must be >= 1, got {self.max_request_bytes}")
        if self.max_model_bytes < 1:
            raise ConfigError(f"max model bytes must be >= 1, got {self.max_model_bytes}")
        if self.download_timeout_seconds <= 0:
            raise ConfigError("download timeout must be > 0")
        if not (math.isfinite(self.shutdown_delay_seconds) and self.shutdown_delay_seconds >= 0):
            raise ConfigError(f"shutdown delay must be a finite number >= 0, got {self.shutdown_delay_seconds}")
        if self.batch_max_rows < 1:
            raise ConfigError(f"batch max rows must be >= 1, got {self.batch_max_rows}")
        if not (math.isfinite(self.batch_max_delay_ms) and 0 <= self.batch_max_delay_ms <= 1000):
            raise ConfigError(f"batch max delay must be 0..1000 ms, got {self.batch_max_delay_ms}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    @property
    def multiprocess_dir(self) -> Path:
        """Where prometheus_client keeps per-worker metric files when workers > 1."""
        return self.cache_dir / "prometheus-multiproc"

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings (handed to worker processes)."""
        env = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[ENV[field.name]] = str(value)
        return env


def _check_path_segment(what: str, value: str, *, allow_empty: bool) -> None:
    # Name and version appear as URL path segments and metric label values.
    if not value and not allow_empty:
        raise ConfigError(f"{what} must not be empty")
    if "/" in value or any(ord(c) < 32 for c in value):
        raise ConfigError(f"{what} must not contain '/' or control characters: {value!r}")


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip().replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _parse_float(name: str, raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


_PARSERS = {
    "port": _parse_int,
    "grpc_port": _parse_int,
    "workers": _parse_int,
    "max_request_bytes": _parse_int,
    "max_model_bytes": _parse_int,
    "download_timeout_seconds": _parse_float,
    "shutdown_delay_seconds": _parse_float,
    "fastpath": _parse_bool,
    "batching": _parse_bool,
    "batch_max_rows": _parse_int,
    "batch_max_delay_ms": _parse_float,
}


def settings_from_env(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from an environment mapping; `overrides` (CLI flags) win.

    Empty environment values count as unset, so an operator can always set
    every variable.
    """
    values: dict[str, Any] = {}
    for field_name, env_name in ENV.items():
        raw = environ.get(env_name, "")
        if raw.strip() == "":
            continue
        parse = _PARSERS.get(field_name)
        values[field_name] = parse(env_name, raw) if parse else raw.strip()
    for field_name, value in (overrides or {}).items():
        if value is not None:
            values[field_name] = value
    if "model_format" in values:
        values["model_format"] = values["model_format"].strip().lower() or None
    if "log_level" in values:
        values["log_level"] = values["log_level"].lower()
    if "cache_dir" in values:
        values["cache_dir"] = Path(values["cache_dir"])
    if "keys_dir" in values:
        values["keys_dir"] = Path(values["keys_dir"])
    values.setdefault("model_uri", "")
    return Settings(**values)


def current_settings() -> Settings:
    return settings_from_env(os.environ)
