"""
The backend the contract tests talk to: the API double or a real cluster, through one code path.

* Default: the double (``kmock_cluster.ClusterEmulator``) served by :func:`served_double` in a
  background thread with its own event loop; the official client loads the kubeconfig it writes.
* ``SLOTKEEPER_CONTRACT_CONTEXT=<kube context>``: that cluster, through the official client's
  kubeconfig loading (``KUBECONFIG`` or ``~/.kube/config``). The ModelEndpoint CRD of ``crds/`` must
  be installed there, and no slotkeeper operator may watch the test namespaces (it would act on the
  tests' ModelEndpoints). The tests create their own namespaces (``recording-<random>``,
  ``contract-<random>``) and delete them.

Requests are raw HTTP through the official client's connection pool (``ApiClient.rest_client``,
which carries the kubeconfig's TLS settings) plus its auth headers: the exact bytes and
Content-Types of the recording (YAML apply bodies included), the same User-Agent as the recording's
client (``Python-urllib/3.11``: its field-manager name is ``Python-urllib``), answers unparsed.

``served_double`` lives in ``tests/integration/kmock_cluster.py`` (re-exported here) so that other
tests (e.g. console scripts run in subprocesses) can use it: see its docstring.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import kubernetes.client
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'integration'))
from kmock_cluster import ServedDouble, served_double  # noqa: E402  (re-exported)

__all__ = ['Answer', 'Backend', 'CONTEXT_ENV', 'ServedDouble', 'backend_from_environment', 'served_double']

CONTEXT_ENV = 'SLOTKEEPER_CONTRACT_CONTEXT'
USER_AGENT = 'Python-urllib/3.11'
CRD_NAME = 'modelendpoints.slotkeeper.io'
CRD_FILE = Path(__file__).resolve().parents[2] / 'crds' / f'{CRD_NAME}.yaml'
REAL_CLUSTER_WAIT = 120.0  # seconds: controllers (the Deployment controller, the GC) work asynchronously


class NoBackend(Exception):
    """Why there is no backend to run the contract tests against (phrased for a failure message)."""


@dataclasses.dataclass
class Answer:
    status: int
    body: Any  # parsed JSON, else the text
    headers: Mapping[str, str]

    def ok(self) -> Answer:
        assert 200 <= self.status < 300, f"HTTP {self.status}: {self.body!r}"
        return self


@dataclasses.dataclass(eq=False)
class Backend:
    name: str  # "the API double" or "kube context X"
    api: kubernetes.client.ApiClient
    served: ServedDouble | None = None

    @property
    def real(self) -> bool:
        return self.served is None

    # ---- raw requests ----------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Any, content_type: str | None,
              params: Mapping[str, str] | None, *, stream: bool, timeout: float,
              user_agent: str = USER_AGENT) -> urllib3.BaseHTTPResponse:
        url = self.api.configuration.host.rstrip('/') + path
        if params:
            url += ('&' if '?' in url else '?') + urlencode(params)
        headers = {'User-Agent': user_agent, 'Accept': 'application/json'}
        self.api.update_params_for_auth(headers, [], ['BearerToken'], path, method, None)
        data: bytes | None = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else \
                json.dumps(body).encode()
            headers['Content-Type'] = content_type or 'application/json'
        return self.api.rest_client.pool_manager.request(
            method, url, body=data, headers=headers, preload_content=not stream,
            timeout=urllib3.Timeout(connect=10, read=timeout), retries=False)

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None, *,
                params: Mapping[str, str] | None = None, user_agent: str = USER_AGENT,
                timeout: float = 30.0) -> Answer:
        """One request; the answer as it came (any status)."""
        response = self._send(method, path, body, content_type, params, stream=False, timeout=timeout,
                              user_agent=user_agent)
        text = response.data.decode('utf-8', 'replace')
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return Answer(response.status, parsed, dict(response.headers))

    @contextlib.contextmanager
    def watch(self, path: str, params: Mapping[str, str], *, timeout: float = 60.0) -> Iterator[Iterator[dict[str, Any]]]:
        """A watch stream: yields its events one by one; closing the block closes the connection."""
        params = dict(params, watch='true')
        response = self._send('GET', path, None, None, params, stream=True, timeout=timeout)
        assert response.status == 200, f"watch {path}: HTTP {response.status}: {response.read()!r}"

        def events() -> Iterator[dict[str, Any]]:
            buffer = b''
            for chunk in response.stream(1024, decode_content=True):
                buffer += chunk
                while b'\n' in buffer:
                    line, buffer = buffer.split(b'\n', 1)
                    if line.strip():
                        yield json.loads(line)
        try:
            yield events()
        finally:  # close the connection (the server may still be streaming), then return it to the pool
            with contextlib.suppress(Exception):
                response.close()
            response.release_conn()

    # ---- conveniences --------------------------------------------------------------------------

    def poll(self, probe: Callable[[], Any], what: str, *, timeout: float | None = None) -> Any:
        """Until ``probe()`` is truthy (the double: at once; a real cluster: its controllers take time)."""
        deadline = time.monotonic() + (REAL_CLUSTER_WAIT if timeout is None else timeout)
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: not within the wait: {what}; last: {value!r}")
            time.sleep(0.05 if not self.real else 0.5)

    def create_namespace(self, prefix: str) -> str:
        name = f'{prefix}-{secrets.token_hex(3)}'
        self.request('POST', '/api/v1/namespaces', {'apiVersion': 'v1', 'kind': 'Namespace',
                                                     'metadata': {'name': name}}).ok()
        return name

    def delete_namespace(self, name: str) -> None:
        answer = self.request('DELETE', f'/api/v1/namespaces/{name}')
        assert answer.status in (200, 202, 404), answer

    def check(self) -> None:
        """Refuse to run against a cluster the tests cannot use, saying why and what to do."""
        try:
            answer = self.request('GET', f'/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}',
                                  timeout=10)
        except urllib3.exceptions.HTTPError as e:
            raise NoBackend(f"{self.name} does not answer: {e}") from e
        if answer.status != 200:
            raise NoBackend(f"{self.name}: the CRD {CRD_NAME} is not installed (HTTP {answer.status}); install it "
                            f"with `kubectl --context <context> apply -f {CRD_FILE}` (and run no slotkeeper operator "
                            f"that watches all namespaces there)")

    def crashes(self) -> list[Exception]:
        return self.served.crashes() if self.served is not None else []


@contextlib.contextmanager
def backend_from_environment(directory: str | os.PathLike[str] | None = None) -> Iterator[Backend]:
    """The double (default) or the cluster of ``$SLOTKEEPER_CONTRACT_CONTEXT``; raises NoBackend."""
    context = os.environ.get(CONTEXT_ENV)
    if context:
        import kubernetes.config
        try:
            api = kubernetes.config.new_client_from_config(context=context)
        except Exception as e:  # noqa: BLE001 -- any kubeconfig problem: say which
            raise NoBackend(f"{CONTEXT_ENV}={context}: no such usable kube context ({e})") from e
        backend = Backend(name=f"kube context {context}", api=api)
        try:
            backend.check()
            yield backend
        finally:
            api.close()
        return
    with served_double(directory) as served:
        api = served.api_client()
        try:
            yield Backend(name="the API double", api=api, served=served)
        finally:
            api.close()
