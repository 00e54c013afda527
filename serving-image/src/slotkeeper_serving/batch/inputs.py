"""Where batch input comes from and where output goes: file:// (or plain) paths and http(s):// URLs.

`pvc://` URIs are the operator's business: it mounts the claim and hands us a
file:// path, so here they are a usage error with that hint.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import unquote, urlsplit

from ..fetch import redact_uri

INPUT_FORMATS = ("csv", "jsonl")
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
HTTP_TIMEOUT_SECONDS = 60.0


class UsageError(ValueError):
    """The command line asks for something the batch mode cannot do (exit 2)."""


class InputError(Exception):
    """The input cannot be read (exit 1)."""


@dataclass(frozen=True)
class InputFile:
    index: int  # position in the run: part-<index>-<chunk>.jsonl
    name: str  # in keys, bad-row reports and progress: the file name, never a credential
    location: str  # a local path or an http(s) URL
    format: str


def local_path(uri: str) -> Path | None:
    """The path of a file:// URI or plain path; None for http(s); UsageError for other schemes."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"file:// URI with a host is not supported: {uri!r}")
        return Path(unquote(parts.path))
    if parts.scheme == "pvc":
        raise UsageError(
            f"{uri!r}: pvc:// is resolved by the operator, which mounts the claim and passes a file:// path"
        )
    if parts.scheme and len(parts.scheme) > 1:  # "C:" style drive letters are paths, not schemes
        raise UsageError(f"unsupported URI scheme {parts.scheme!r} (file://, a path, http:// or https://)")
    return Path(uri)


def output_root(uri: str) -> Path:
    path = local_path(uri)
    if path is None:
        raise UsageError(f"output must be a file:// URI or a path, got {redact_uri(uri)!r}")
    return path


def format_of(name: str, requested: str) -> str | None:
    """The format of a file: the requested one, or its suffix's under "auto" (None if unknown)."""
    if requested != "auto":
        return requested
    return SUFFIX_FORMATS.get(PurePosixPath(name).suffix.lower())


def list_inputs(uri: str, requested_format: str = "auto") -> list[InputFile]:
    """The input files of a run, in order: one file, or a directory's *.csv / *.jsonl files sorted by name."""
    if requested_format not in ("auto", *INPUT_FORMATS):
        raise UsageError(f"input format must be auto, csv or jsonl, got {requested_format!r}")
    path = local_path(uri)
    if path is None:
        name = PurePosixPath(unquote(urlsplit(uri).path)).name or "input"
        return [InputFile(0, name, uri, _known_format(name, requested_format, redact_uri(uri)))]
    if path.is_file():
        return [InputFile(0, path.name, str(path), _known_format(path.name, requested_format, str(path)))]
    if not path.is_dir():
        raise InputError(f"input {str(path)!r} does not exist")
    wanted = (requested_format,) if requested_format != "auto" else INPUT_FORMATS
    files = sorted(p for p in path.iterdir() if p.is_file() and SUFFIX_FORMATS.get(p.suffix.lower()) in wanted)
    if not files:
        raise InputError(f"input directory {str(path)!r} holds no {' or '.join('*.' + f for f in wanted)} files")
    return [InputFile(i, p.name, str(p), SUFFIX_FORMATS[p.suffix.lower()]) for i, p in enumerate(files)]


def _known_format(name: str, requested: str, shown: str) -> str:
    found = format_of(name, requested)
    if found is None:
        raise UsageError(f"cannot tell the format of {shown!r} from its name: pass --input-format csv|jsonl")
    return found


@contextlib.contextmanager
def open_text(source: InputFile) -> Iterator[TextIO]:
    """The file as text (UTF-8, a BOM dropped, newlines untranslated for the csv module), streamed."""
    if source.location.startswith(("http://", "https://")):
        import httpx

        with httpx.stream("GET", source.location, follow_redirects=True, timeout=HTTP_TIMEOUT_SECONDS) as response:
            if response.status_code != 200:
                raise InputError(f"GET {redact_uri(source.location)} answered {response.status_code}")
            raw = io.BufferedReader(_ByteStream(response.iter_bytes()), buffer_size=1 << 16)
            yield io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        return
    with open(source.location, encoding="utf-8-sig", newline="") as stream:
        yield stream


class _ByteStream(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks (an HTTP body)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size
