"""Validation requests: Open Inference Protocol v2 calls to the candidate's slot before it takes traffic."""

from __future__ import annotations

import json
import math
from typing import Any, Iterator
from urllib.parse import quote

import aiohttp

from ..api import Expectation, ExpectedOutput, ValidationRequest
from .access import Target, apiserver_refusal, join_path


def compare_response(expect: Expectation, status: int, body: dict | None) -> tuple[bool, str]:
    """(passed, message): the status code, then each expected output by name (shape, then data within
    ``tolerance`` element by element, nested data flattened). The message names the first mismatch."""
    if status != expect.status:
        error = body.get("error") if isinstance(body, dict) else None  # the v2 protocol's error reply
        return False, f"expected status {expect.status}, got {status}" + (f": {error}" if error else "")
    if not expect.outputs:
        return True, f"status {status} as expected"
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(outputs, list):
        return False, "the reply has no outputs list"
    by_name = {output.get("name"): output for output in outputs if isinstance(output, dict)}
    for expected in expect.outputs:
        got = by_name.get(expected.name)
        if got is None:
            names = ", ".join(f'"{name}"' for name in by_name) or "none"
            return False, f'output "{expected.name}" missing (outputs: {names})'
        mismatch = _output_mismatch(expected, got)
        if mismatch:
            return False, f'output "{expected.name}" {mismatch}'
    names = ", ".join(f'"{output.name}"' for output in expect.outputs)
    return True, f"status {status}; outputs {names} as expected"


def infer_path(model_name: str) -> str:
    """The v2 infer path of a model, relative to the server's root (percent-encoded)."""
    return f"v2/models/{quote(model_name, safe='')}/infer"


async def run_validation(
    session: aiohttp.ClientSession, base_url: str, model_name: str, request: ValidationRequest,
) -> tuple[bool, str]:
    """POST the request to {base_url}/v2/models/{model_name}/infer and compare the reply (see send_validation)."""
    return await send_validation(session, Target(join_path(base_url, infer_path(model_name))), request)


async def send_validation(
    session: aiohttp.ClientSession, target: Target, request: ValidationRequest,
) -> tuple[bool, str]:
    """POST the request to ``target`` (a slot's infer URL, direct or through the apiserver proxy) and
    compare the reply.

    Never raises: an unreachable server, a timeout, a refusal of the apiserver proxy (no ready
    endpoint, no permission) or a reply that is not JSON is a failure with a message (the candidate
    must answer its validation requests).
    """
    url = target.url
    prefix = f'validation "{request.name}": '
    try:
        async with session.post(url, json=request.request, **target.request_options(),
                                timeout=aiohttp.ClientTimeout(total=request.timeout_seconds)) as reply:
            status, text = reply.status, await reply.text()
    except TimeoutError:
        return False, f"{prefix}no answer from {url} within {request.timeout_seconds:g}s"
    except aiohttp.ClientError as error:
        return False, f"{prefix}{url} unreachable: {error}"
    refusal = apiserver_refusal(status, text) if target.through_apiserver else None
    if refusal:  # the apiserver's own Status object, not the model's answer
        return False, f"{prefix}{url} unreachable: {refusal}"
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if status == request.expect.status and request.expect.outputs:
            return False, f"{prefix}status {status}, but the reply is not a JSON object: {text[:200]!r}"
        body = None
    passed, message = compare_response(request.expect, status, body)
    return passed, prefix + message


def _output_mismatch(expected: ExpectedOutput, got: dict) -> str | None:
    if expected.shape is not None and got.get("shape") != expected.shape:
        return f"shape: expected {expected.shape}, got {got.get('shape')}"
    if expected.data is None:
        return None
    data = list(_flatten(got.get("data")))
    if len(data) != len(expected.data):
        return f"data: expected {len(expected.data)} values, got {len(data)}"
    for index, (want, value) in enumerate(zip(expected.data, data)):
        if not _close(want, value, expected.tolerance):
            return f"[{index}]: expected {want!r} ± {expected.tolerance!r}, got {value!r}"
    return None


def _close(want: float, value: Any, tolerance: float) -> bool:
    if isinstance(value, bool):  # BOOL outputs: JSON true/false compare as 1/0
        value = int(value)
    if not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return abs(value - want) <= tolerance


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    elif data is not None:
        yield data
