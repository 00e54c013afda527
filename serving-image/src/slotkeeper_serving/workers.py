"""Coordination between worker processes when SLOTKEEPER_WORKERS > 1.

All of it lives in the prometheus multiprocess directory, which the parent
process empties before starting workers. A pod is ready only when every
worker is: a probe may reach any of them, and one still loading would
otherwise answer 503 to traffic sent to a "ready" pod.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from prometheus_client import multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def prepare(directory: Path) -> None:
    """Empty the directory: stale metric files would be summed in, stale markers counted."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.suffix == ".db" or entry.name.startswith("ready-"):
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers() -> None:
    """Drop live gauges and ready markers of worker processes that no longer exist (a restarted worker)."""
    directory = shared_dir()
    if directory is None:
        return
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        try:
            pid = int(Path(path).stem.rsplit("_", 1)[1])
        except (ValueError, IndexError):
            continue
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, str(directory))
    for path in directory.glob("ready-*"):
        if path.name[6:].isdigit() and not _alive(int(path.name[6:])):
            path.unlink(missing_ok=True)


def mark_ready() -> None:
    directory = shared_dir()
    if directory is not None:
        (directory / f"ready-{os.getpid()}").touch()


def ready_workers() -> int:
    directory = shared_dir()
    if directory is None:
        return 1
    return sum(1 for path in directory.glob("ready-*") if path.name[6:].isdigit() and _alive(int(path.name[6:])))
