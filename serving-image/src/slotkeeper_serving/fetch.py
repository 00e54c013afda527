"""Turn a model URI into a local path: file://, plain paths, http(s):// downloads, archives.

Downloads and extractions go to the cache directory only (the root filesystem
may be read-only) and are bounded in size and time. URIs may carry secrets
(user:password@, SAS tokens in the query), so only `redact_uri()` output is
ever logged or reported.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

log = logging.getLogger(__name__)
# httpx logs every request line with the full URL (credentials, SAS tokens)
# at INFO and httpcore traces it at DEBUG: keep both quiet whatever the level.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class ModelLoadError(Exception):
    """The model could not be fetched or loaded; the message is safe to show."""


def redact_uri(uri: str) -> str:
    """The URI without credentials, query string or fragment."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def materialize(uri: str, cache_dir: Path, *, timeout_seconds: float, max_bytes: int) -> Path:
    """Return a local file or directory holding the model named by `uri`.

    Archives (.tar.gz, .tgz, .tar, .zip) are extracted and the directory is
    returned, so a model directory (score.py plus artifacts) can be shipped
    as one file.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        work_dir = Path(tempfile.mkdtemp(prefix="model-", dir=_ensure_dir(cache_dir / "models")))
        path = download(uri, work_dir, timeout_seconds=timeout_seconds, max_bytes=max_bytes)
    elif scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ModelLoadError(f"file URI with a remote host is not supported: {uri}")
        path = Path(unquote(parts.path))
    elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        path = Path(uri)
    else:
        raise ModelLoadError(f"unsupported model URI scheme {scheme!r}: use file://, a path, http:// or https://")

    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_file() and is_archive(path):
        target = Path(tempfile.mkdtemp(prefix="extracted-", dir=_ensure_dir(cache_dir / "models")))
        extract_archive(path, target, max_bytes=max_bytes)
        path = _single_top_dir(target)
    return path


def download(url: str, dest_dir: Path, *, timeout_seconds: float, max_bytes: int) -> Path:
    """Stream `url` into dest_dir, refusing more than max_bytes or longer than timeout_seconds."""
    shown = redact_uri(url)
    name = _safe_filename(Path(unquote(urlsplit(url).path)).name) or "model"
    final = dest_dir / name
    partial = dest_dir / (name + ".part")
    deadline = time.monotonic() + timeout_seconds
    size = 0
    started = time.monotonic()
    try:
        # The per-operation timeout guards a stalled peer; the deadline below
        # bounds the whole transfer.
        with httpx.Client(follow_redirects=True, timeout=min(30.0, timeout_seconds)) as client:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ModelLoadError(f"download of {shown} failed: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ModelLoadError(
                        f"download of {shown} refused: {declared} bytes exceeds the limit of {max_bytes}"
                    )
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes():  # as it arrives: the deadline is checked per read
                        size += len(chunk)
                        if size > max_bytes:
                            raise ModelLoadError(f"download of {shown} aborted: more than {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise ModelLoadError(f"download of {shown} aborted: took longer than {timeout_seconds:g} s")
                        out.write(chunk)
    except httpx.HTTPError as exc:
        # httpx messages contain the full URL (with its secrets): keep the type only.
        partial.unlink(missing_ok=True)
        raise ModelLoadError(f"download of {shown} failed: {type(exc).__name__}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, final)
    log.info("downloaded %s (%d bytes in %.2f s)", shown, size, time.monotonic() - started)
    return final


def extract_archive(archive: Path, target: Path, *, max_bytes: int) -> None:
    """Extract into target, refusing paths that escape it, links out of it and oversized content."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                if sum(m.file_size for m in members) > max_bytes:
                    raise ModelLoadError(f"archive {archive.name} unpacks to more than {max_bytes} bytes")
                root = target.resolve()
                for member in members:
                    dest = (target / member.filename).resolve()
                    if root != dest and root not in dest.parents:
                        raise ModelLoadError(
                            f"archive {archive.name} has a member outside its root: {member.filename!r}"
                        )
                zf.extractall(target)
        else:
            if not hasattr(tarfile, "data_filter"):
                raise ModelLoadError("tar archives need Python >= 3.11.4 (tarfile extraction filters)")
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                if sum(m.size for m in members if m.isfile()) > max_bytes:
                    raise ModelLoadError(f"archive {archive.name} unpacks to more than {max_bytes} bytes")
                # The "data" filter rejects absolute paths, '..', links leaving
                # the target, device files, and drops set-uid bits.
                tf.extractall(target, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"cannot extract {archive.name}: {type(exc).__name__}: {exc}") from None


def clear_downloads(cache_dir: Path) -> None:
    """Remove earlier downloads (an emptyDir survives container restarts)."""
    shutil.rmtree(cache_dir / "models", ignore_errors=True)


def _single_top_dir(target: Path) -> Path:
    # `tar czf model.tgz model/` wraps everything in one folder: look inside it.
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
