"""
Replay the recorded kube-apiserver 1.28.7 answers (``recordings/``) against the backend, in order.

For each record: the status code; every pinned dotted field exactly (``null``: absent); for whole
bodies (records 0, 1, 12, 21, the list items of 40/41/44/45) every field present in the recording;
``Status`` bodies exactly. Values that change per run are compared by their relations:

* uids, resourceVersions and ClusterIPs: a bijection recorded value <-> answered value (the same
  recorded value must come back as the same value, a new one as a new one): a no-op write keeps
  its resourceVersion (records 2, 8, 14), an object keeps its uid. Recorded uids in request bodies
  (records 29, 36) are replaced by the answered ones.
* ``creationTimestamp``/``deletionTimestamp``: RFC 3339, and the same per object once set;
  ``managedFields[].time`` and condition times: RFC 3339 only.
* The namespace: ``recording`` on the double, ``recording-<random>`` on a real cluster.
* A message that embeds an object (record 16: ``patch: Invalid value: "{...}"``) is compared as
  its text around the object, the object field by field, and its key order.

The world around the apiserver: the recording was made with the controller-manager running; the
double runs no controllers. Where the recording shows a controller's work (records 16 and 21: the
Deployment controller's revision annotation, condition and replica count), the replay writes what
the controller wrote, through the API as the controller does (``/status``, its User-Agent), on the
double; on a real cluster it waits until the real controller has done it, and leaves out of the
comparison what that controller keeps changing at its own pace (the Deployment's status,
resourceVersion and managedFields entry). For the same reason, resourceVersions of Deployments are
only required to be numbers on a real cluster. The garbage collector is asynchronous: records 38
and 39 (reads) are repeated until they answer as recorded (at once on the double).
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .backends import Answer, Backend

RECORDING = Path(__file__).parent / 'recordings' / 'kube-apiserver-1.28.7.json'
RECORDS: list[dict[str, Any]] = json.loads(RECORDING.read_text())['records']
RECORDED_NAMESPACE = 'recording'

# Records the double does not reproduce, with the reason (they become strict xfails). None.
NOT_REPRODUCED: dict[int, str] = {}

KCM_AGENT = ('kube-controller-manager/v1.28.7 (linux/amd64) kubernetes/c8dcb00/'
             'system:serviceaccount:kube-system:deployment-controller')
RFC3339 = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$')
EMBEDDED = re.compile(r'^(?P<pre>.*?Invalid value: )(?P<quoted>"(?:[^"\\]|\\.)*")(?P<post>: .*)$', re.S)
ABSENT = object()


@dataclasses.dataclass(frozen=True)
class ControllerStep:
    """What the Deployment controller did before a record (the double runs no controllers)."""
    why: str
    status_patch: dict[str, Any]  # written to deployments/slot/status as the controller, on the double
    visible: Callable[[dict[str, Any]], bool]  # on a real cluster: wait until the Deployment shows it


def _now() -> str:
    import datetime
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


CONTROLLER_STEPS: dict[int, Callable[[], ControllerStep]] = {
    16: lambda: ControllerStep(
        why='the Deployment controller saw generation 2: a new ReplicaSet, the revision annotation, a Progressing condition',
        status_patch={'metadata': {'annotations': {'deployment.kubernetes.io/revision': '2'}},
                      'status': {'conditions': [{'type': 'Progressing', 'status': 'True', 'lastUpdateTime': _now(),
                                                 'lastTransitionTime': _now(), 'reason': 'NewReplicaSetCreated',
                                                 'message': 'Created new replica set "slot-6fcb8b5cb6"'}]}},
        visible=lambda dep: (dep.get('metadata', {}).get('annotations') or {}).get('deployment.kubernetes.io/revision') == '2'
        and any(c.get('type') == 'Progressing' for c in (dep.get('status') or {}).get('conditions') or [])),
    21: lambda: ControllerStep(
        why='the Deployment controller counts the pods of the old and the new ReplicaSet',
        status_patch={'status': {'replicas': 2}},
        visible=lambda dep: (dep.get('status') or {}).get('replicas') == 2),
}
CONTROLLER_OWNED_IN_EMBEDDED = ('status', 'metadata.resourceVersion')  # record 16, real cluster only
POLLED = {38, 39}  # reads that wait for the (asynchronous) garbage collector


class Relation:
    """A bijection between recorded values and the backend's values."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.forward: dict[Any, Any] = {}
        self.backward: dict[Any, Any] = {}

    def check(self, recorded: Any, actual: Any, where: str) -> str | None:
        if recorded in self.forward:
            if self.forward[recorded] != actual:
                return (f"{where}: the {self.what} recorded as {recorded!r} was answered as {self.forward[recorded]!r} "
                        f"before, now {actual!r}")
            return None
        if actual in self.backward:
            return (f"{where}: a new {self.what} (recorded {recorded!r}) was answered as {actual!r}, which already "
                    f"stood for the recorded {self.backward[actual]!r}")
        self.forward[recorded], self.backward[actual] = actual, recorded
        return None


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + '...'


def _dig(body: Any, dotted: str) -> Any:
    for part in dotted.split('.'):
        if not isinstance(body, dict) or part not in body:
            return ABSENT
        body = body[part]
    return body


class Replay:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.namespace = RECORDED_NAMESPACE if not backend.real else f'recording-{secrets.token_hex(3)}'
        self.uids = Relation('uid')
        self.rvs = Relation('resourceVersion')
        self.ips = Relation('ClusterIP')
        self.times: dict[tuple[Any, ...], str] = {}
        self.results: dict[int, list[str]] = {}

    # ---- running ---------------------------------------------------------------------------

    def upto(self, index: int) -> list[str]:
        for i in range(len(self.results), index + 1):
            try:
                self.results[i] = self.run(i)
            except Exception as e:  # noqa: BLE001 -- report it on this record, go on with the next
                self.results[i] = [f"the replay failed: {e!r}"]
        return self.results[index]

    def run(self, index: int) -> list[str]:
        record = RECORDS[index]
        problems: list[str] = []
        if index in CONTROLLER_STEPS:
            self.controller(CONTROLLER_STEPS[index]())
        request = record['request']
        path = request['path'].replace(f'/namespaces/{RECORDED_NAMESPACE}', f'/namespaces/{self.namespace}')
        body = self.substitute(request['body'])
        expected = record['response']

        def send() -> Answer:
            return self.backend.request(request['method'], path, body, request['contentType'])
        answer = send()
        if index in POLLED:
            answer = self.backend.poll(lambda: (a := send()).status == expected['status'] and a or None,
                                       f"record {index}: HTTP {expected['status']}") or answer
        if answer.status != expected['status']:
            problems.append(f"HTTP {answer.status}, recorded {expected['status']}: {_short(answer.body)}")
            return problems
        self.compare_body(index, record, self.expected(expected['body']), answer.body, problems)
        return problems

    def controller(self, step: ControllerStep) -> None:
        path = f'/apis/apps/v1/namespaces/{self.namespace}/deployments/slot'
        if self.backend.real:
            self.backend.poll(lambda: step.visible(self.backend.request('GET', path).body), step.why)
        else:
            answer = self.backend.request('PATCH', path + '/status', step.status_patch, 'application/merge-patch+json',
                                          user_agent=KCM_AGENT)
            assert answer.status == 200, f"the simulated controller's write failed: {answer}"

    def substitute(self, value: Any) -> Any:
        """A recorded request body for this run: the namespace, uids answered earlier."""
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if value == RECORDED_NAMESPACE:
            return self.namespace
        if isinstance(value, str) and value in self.uids.forward:
            return self.uids.forward[value]
        return value

    def expected(self, value: Any) -> Any:
        """A recorded answer for this run: only the namespace differs (uids etc. go by relation)."""
        if isinstance(value, dict):
            return {k: self.expected(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expected(v) for v in value]
        return self.namespace if value == RECORDED_NAMESPACE else value

    # ---- comparing -------------------------------------------------------------------------

    def compare_body(self, index: int, record: dict[str, Any], recorded: Any, actual: Any,
                     problems: list[str]) -> None:
        if recorded is None:
            return
        if not isinstance(actual, dict):
            problems.append(f"the answer is not a JSON object: {_short(actual)}")
            return
        loose = self.backend.real and '/deployments' in record['request']['path']
        ident = record['request']['path'].rstrip('/').rsplit('/', 1)[-1]
        comparer = _Comparer(self, problems, loose_rv=loose)
        if 'kind' in recorded:  # a whole body
            comparer.compare(recorded, actual, '', 'exact' if recorded['kind'] == 'Status' else 'subset', ident)
            return
        for dotted, value in recorded.items():
            mode = 'items' if dotted == 'items' else 'exact'
            comparer.compare(value, _dig(actual, dotted), dotted, mode, ident, key=dotted.rsplit('.', 1)[-1])


@dataclasses.dataclass
class _Comparer:
    replay: Replay
    problems: list[str]
    loose_rv: bool = False

    def problem(self, path: str, text: str) -> None:
        self.problems.append(f"{path or '<body>'}: {text}")

    def compare(self, recorded: Any, actual: Any, path: str, mode: str, ident: Any, key: str = '') -> None:
        if recorded is None:
            if actual is not ABSENT and actual is not None:
                self.problem(path, f"recorded absent, answered {_short(actual)}")
            return
        if actual is ABSENT:
            self.problem(path, f"missing (recorded {_short(recorded)})")
            return
        if self.volatile(key, path, recorded, actual, ident):
            return
        if key == 'message' and isinstance(recorded, str) and EMBEDDED.match(recorded):
            self.embedded(recorded, actual, path, ident)
            return
        if isinstance(recorded, dict):
            if not isinstance(actual, dict):
                self.problem(path, f"recorded an object, answered {_short(actual)}")
                return
            meta = recorded.get('metadata') if isinstance(recorded.get('metadata'), dict) else {}
            ident = meta.get('uid', ident) if key != 'metadata' else recorded.get('uid', ident)
            child_mode = 'exact' if key == 'fieldsV1' else 'subset' if mode == 'items' else mode
            for k, v in recorded.items():
                self.compare(v, actual.get(k, ABSENT), f'{path}.{k}'.lstrip('.'), child_mode, ident, key=k)
            if child_mode == 'exact':
                extra = [k for k, v in actual.items() if k not in recorded and v is not None]
                if extra:
                    self.problem(path, f"answered fields the recording does not have: {extra} "
                                       f"({_short({k: actual[k] for k in extra})})")
            return
        if isinstance(recorded, list):
            if not isinstance(actual, list) or len(actual) != len(recorded):
                self.problem(path, f"recorded {_short(recorded)}, answered {_short(actual)}")
                return
            item_mode = 'subset' if mode == 'items' else mode
            for position, (r, a) in enumerate(zip(recorded, actual)):
                self.compare(r, a, f'{path}[{position}]', item_mode, ident, key=key if key == 'clusterIPs' else '')
            return
        if recorded != actual or isinstance(recorded, bool) != isinstance(actual, bool):
            self.problem(path, f"recorded {_short(recorded)}, answered {_short(actual)}")

    def volatile(self, key: str, path: str, recorded: Any, actual: Any, ident: Any) -> bool:
        """Values that change per run: compared by relation. True if handled."""
        replay = self.replay
        if key == 'uid' and isinstance(recorded, str):
            self._add(path, replay.uids.check(recorded, actual, path))
        elif key == 'resourceVersion' and isinstance(recorded, str):
            if not (isinstance(actual, str) and actual.isdigit()):
                self.problem(path, f"not a resourceVersion: {actual!r}")
            elif not self.loose_rv:
                self._add(path, replay.rvs.check(recorded, actual, path))
        elif key in ('clusterIP', 'clusterIPs') and isinstance(recorded, str):
            self._add(path, replay.ips.check(recorded, actual, path))
        elif key in ('creationTimestamp', 'deletionTimestamp') and isinstance(recorded, str):
            if not (isinstance(actual, str) and RFC3339.match(actual)):
                self.problem(path, f"not an RFC 3339 time: {actual!r}")
            else:
                seen = replay.times.setdefault((ident, key, recorded), actual)
                if seen != actual:
                    self.problem(path, f"the {key} of the same object changed: {seen} -> {actual}")
        elif (key == 'time' and 'managedFields' in path or key in ('lastUpdateTime', 'lastTransitionTime')) \
                and isinstance(recorded, str):
            if not (isinstance(actual, str) and RFC3339.match(actual)):
                self.problem(path, f"not an RFC 3339 time: {actual!r}")
        else:
            return False
        return True

    def _add(self, path: str, problem: str | None) -> None:
        if problem:
            self.problems.append(problem)

    def embedded(self, recorded: str, actual: Any, path: str, ident: Any) -> None:
        """``... Invalid value: "<the object as JSON>": <cause>``: text, object and key order."""
        want, got = EMBEDDED.match(recorded), EMBEDDED.match(actual) if isinstance(actual, str) else None
        if got is None:
            self.problem(path, f"recorded a message embedding the object, answered {_short(actual)}")
            return
        assert want is not None
        for part in ('pre', 'post'):
            if want.group(part) != got.group(part):
                self.problem(path, f"the message's {part}fix differs: recorded {want.group(part)!r}, "
                                   f"answered {got.group(part)!r}")
        recorded_object = self.replay.expected(json.loads(json.loads(want.group('quoted'))))
        actual_object = json.loads(json.loads(got.group('quoted')))
        if self.replay.backend.real:  # the real controller keeps changing these at its own pace
            for doc in (recorded_object, actual_object):
                for dotted in CONTROLLER_OWNED_IN_EMBEDDED:
                    head, _, leaf = dotted.rpartition('.')
                    parent = _dig(doc, head) if head else doc
                    if isinstance(parent, dict):
                        parent.pop(leaf, None)
                meta = doc.get('metadata') or {}
                meta['managedFields'] = [e for e in meta.get('managedFields') or []
                                         if e.get('manager') != 'kube-controller-manager']
        where = f'{path}<embedded object>'
        self.compare(recorded_object, actual_object, where, 'exact', ident)
        self.key_order(recorded_object, actual_object, where)

    def key_order(self, recorded: Any, actual: Any, path: str) -> None:
        if isinstance(recorded, dict) and isinstance(actual, dict):
            if [k for k in recorded if k in actual] != [k for k in actual if k in recorded]:
                self.problem(path, f"key order: recorded {list(recorded)}, answered {list(actual)}")
            for k in recorded:
                if k in actual:
                    self.key_order(recorded[k], actual[k], f'{path}.{k}')
        elif isinstance(recorded, list) and isinstance(actual, list):
            for position, (r, a) in enumerate(zip(recorded, actual)):
                self.key_order(r, a, f'{path}[{position}]')


# ---- the tests ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def replay(backend: Backend) -> Iterator[Replay]:
    replay = Replay(backend)
    try:
        yield replay
    finally:
        if backend.real and backend.request('GET', f'/api/v1/namespaces/{replay.namespace}').status == 200:
            backend.delete_namespace(replay.namespace)


def _slug(label: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')[:60]


@pytest.mark.parametrize('index', [
    pytest.param(i, id=f'{i:02d}-{_slug(r["label"])}',
                 marks=[pytest.mark.xfail(strict=True, reason=NOT_REPRODUCED[i])] if i in NOT_REPRODUCED else [])
    for i, r in enumerate(RECORDS)])
def test_recorded_answer(replay: Replay, index: int) -> None:
    problems = replay.upto(index)
    record = RECORDS[index]
    assert not problems, (f"record {index} ({record['label']}) on {replay.backend.name}:\n  "
                          + '\n  '.join(problems))


def test_the_recording_is_complete() -> None:
    assert len(RECORDS) == 47
    assert all({'label', 'request', 'response'} <= set(r) for r in RECORDS)
