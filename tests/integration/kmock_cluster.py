"""
Run the real kopf operator in-process against KMock over real HTTP.

The pieces (all used by ``conftest.py``; importable by tests as ``kmock_cluster``):

* :class:`ClusterEmulator` -- ``kmock.KubernetesEmulator`` plus the API-server
  behaviour that kopf, the operator and its CLI depend on, pinned against a
  recording of a real kube-apiserver 1.28.7 by ``tests/contract`` (see the
  class docstring for what is emulated and what is approximated).
* :func:`served_double` -- the emulator on 127.0.0.1 in a background thread with
  its own event loop, plus a kubeconfig file: for synchronous code (the official
  client, subprocesses running console scripts) that must not share the test's loop.
* :func:`running_operator` / :class:`OperatorHandle` -- kopf in a task of the
  test's event loop; stops via ``stop_flag``; reports operator crashes.
* :class:`Kube` -- small async helpers for tests (create/patch/read objects,
  simulate the Deployment controller, crash-looping pods).
* :func:`eventually` -- poll a condition until it holds (no fixed sleeps).
* :func:`make_kube_config` / :func:`make_api_client` -- the official
  ``kubernetes`` client pointed at KMock without touching KUBECONFIG.

Written against kmock 0.8 and kopf 1.45 (pinned in pyproject.toml); it uses
a few of their private names (marked with "private:" below).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import fractions
import functools
import inspect
import ipaddress
import itertools
import json
import logging
import os
import pathlib
import random
import re
import signal
import string
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kopf
import kubernetes.client
import orjson
import yaml
from kmock._internal import apps as _kmock_apps  # private: RawHandler._handle (skip the parent's store logic)
from kmock._internal import parsing as _kmock_parsing  # private: the URL parser (namespaces need their own)
from kmock._internal import references as _kmock_references  # private: resource() for parsed URLs
from kmock._internal import rendering as _kmock_rendering  # private: Request, Response (status codes)
from kopf._cogs.structs import references as _kopf_references  # private: Insights (readiness detection)
from kopf._core.engines import indexing as _kopf_indexing  # private: OperatorIndexers (to expose indices)
from kopf._core.intents import stoppers as _kopf_stoppers  # private: stopping late-spawned daemons
from kopf._core.reactor import inventory as _kopf_inventory  # private: ResourceMemories (running daemons)

try:  # CEL rules of CRDs (x-kubernetes-validations); optional: without it, CEL rules are not evaluated.
    import celpy
except ImportError:  # pragma: no cover
    celpy = None

logger = logging.getLogger(__name__)

# Resource objects, usable everywhere: kmock[..., PODS], kmock.objects[PODS, ns, name], k8s.peek(PODS, ...).
# (A bare string like 'v1/pods' in kmock[...] is NOT a resource filter: kmock matches it as text.)
MODELENDPOINTS = kmock.resource('slotkeeper.io/v1alpha1/modelendpoints')
DEPLOYMENTS = kmock.resource('apps/v1/deployments')
SERVICES = kmock.resource('v1/services')
PODS = kmock.resource('v1/pods')
EVENTS = kmock.resource('v1/events')
EVENTS_K8S = kmock.resource('events.k8s.io/v1/events')
NAMESPACES = kmock.resource('v1/namespaces')
CRDS = kmock.resource('apiextensions.k8s.io/v1/customresourcedefinitions')
HPAS = kmock.resource('autoscaling/v2/horizontalpodautoscalers')
PDBS = kmock.resource('policy/v1/poddisruptionbudgets')

ALL_VERBS = {'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'}

MERGE_PATCH = 'application/merge-patch+json'
JSON_PATCH = 'application/json-patch+json'
STRATEGIC_MERGE_PATCH = 'application/strategic-merge-patch+json'
APPLY_PATCH = 'application/apply-patch+yaml'

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILES = (REPO_ROOT / 'crds' / 'modelendpoints.slotkeeper.io.yaml',)

_REASONS = {400: 'BadRequest', 401: 'Unauthorized', 403: 'Forbidden', 404: 'NotFound',
            405: 'MethodNotAllowed', 409: 'Conflict', 410: 'Gone', 415: 'UnsupportedMediaType',
            422: 'Invalid', 429: 'TooManyRequests', 500: 'InternalError', 503: 'ServiceUnavailable',
            504: 'Timeout'}


class _Absent:
    """A field that is not there at all (unlike a field that is ``null``)."""
    def __repr__(self) -> str:
        return 'ABSENT'

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


def _res(resource: str | kmock.resource) -> kmock.resource:
    return resource if isinstance(resource, kmock.resource) else kmock.resource(resource)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else resource.version


def _qualified(resource: kmock.resource) -> str:
    """``services``, ``deployments.apps``: how the apiserver names a resource in messages."""
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: dicts merge recursively, ``None`` deletes, lists are replaced."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _json_copy(value: Any) -> Any:
    """A deep copy of a JSON document (faster than copy.deepcopy for plain dicts/lists/scalars)."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Label/field selectors (the subset that kubectl & client libraries normally send).
# ----------------------------------------------------------------------------------------------

_SELECTOR_SPLIT = re.compile(r',(?![^()]*\))')
_SET_REQ = re.compile(r'^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$')
_CMP_REQ = re.compile(r'^\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s]*)\s*$')


def parse_selector(selector: str | None) -> list[tuple[str, str, set[str]]]:
    """Parse a label selector into ``(key, op, values)`` requirements; raises ValueError."""
    reqs: list[tuple[str, str, set[str]]] = []
    for part in _SELECTOR_SPLIT.split(selector or ''):
        part = part.strip()
        if not part:
            continue
        if m := _SET_REQ.match(part):
            reqs.append((m.group(1), m.group(2), {v.strip() for v in m.group(3).split(',') if v.strip()}))
        elif m := _CMP_REQ.match(part):
            reqs.append((m.group(1), '!=' if m.group(2) == '!=' else '=', {m.group(3)}))
        elif part.startswith('!') and re.fullmatch(r'![^\s!=(),]+', part):
            reqs.append((part[1:], '!', set()))
        elif re.fullmatch(r'[^\s!=(),]+', part):
            reqs.append((part, 'exists', set()))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return reqs


def parse_field_selector(selector: str | None) -> list[tuple[str, str, set[str]]]:
    """Field selectors know only ``=``, ``==`` and ``!=`` (no sets, no existence tests)."""
    reqs: list[tuple[str, str, set[str]]] = []
    for part in (selector or '').split(','):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r'([^=!]+?)\s*(==|=|!=)\s*(.*)', part)
        if not m:
            raise ValueError(f"invalid selector: '{selector}'; can't understand '{part}'")
        reqs.append((m.group(1), '!=' if m.group(2) == '!=' else '=', {m.group(3)}))
    return reqs


def match_selector(values: Mapping[str, str], reqs: Iterable[tuple[str, str, set[str]]]) -> bool:
    for key, op, options in reqs:
        present = key in values
        value = values.get(key)
        ok = (
            present and value in options if op in ('=', 'in') else
            not present or value not in options if op in ('!=', 'notin') else
            present if op == 'exists' else
            not present  # op == '!'
        )
        if not ok:
            return False
    return True


# The field selectors each resource accepts (besides metadata.name & metadata.namespace), as the
# apiserver's field-label conversion functions list them. Resources listed here answer an unknown
# field with "field label not supported: X"; the others with the generic message of record 42.
_FIELD_LABELS: dict[tuple[str, str], tuple[str, ...]] = {
    ('', 'events'): ('involvedObject.kind', 'involvedObject.namespace', 'involvedObject.name',
                     'involvedObject.uid', 'involvedObject.apiVersion', 'involvedObject.resourceVersion',
                     'involvedObject.fieldPath', 'reason', 'reportingComponent', 'source', 'type'),
    ('events.k8s.io', 'events'): ('reason', 'reportingController', 'type', 'regarding.kind',
                                  'regarding.namespace', 'regarding.name', 'regarding.uid',
                                  'regarding.apiVersion', 'regarding.resourceVersion',
                                  'regarding.fieldPath', 'deprecatedSource'),
    ('', 'pods'): ('spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName',
                   'spec.hostNetwork', 'status.phase', 'status.podIP', 'status.podIPs',
                   'status.nominatedNodeName'),
    ('', 'namespaces'): ('status.phase',),
    ('', 'nodes'): ('spec.unschedulable',),
    ('', 'secrets'): ('type',),
    ('', 'replicationcontrollers'): ('status.replicas',),
    ('apps', 'replicasets'): ('status.replicas',),
    ('batch', 'jobs'): ('status.successful',),
    ('certificates.k8s.io', 'certificatesigningrequests'): ('spec.signerName',),
}


def _field_label_error(resource: kmock.resource, label: str) -> str | None:
    known = _FIELD_LABELS.get((resource.group, resource.plural))
    if label in ('metadata.name', 'metadata.namespace') or (known and label in known):
        return None
    if known is not None:
        return f"field label not supported: {label}"
    return f'"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"'


def _dig(obj: Any, path: str) -> Any:
    for part in path.split('.'):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


def _field_value(obj: Mapping[str, Any], resource: kmock.resource, label: str) -> str:
    """The string a field selector compares (absent fields are "")."""
    if label == 'source' and resource.plural == 'events' and not resource.group:
        value = _dig(obj, 'source.component')
    elif label == 'deprecatedSource':
        value = _dig(obj, 'deprecatedSource.component')
    elif label == 'status.podIPs':
        value = (_dig(obj, 'status.podIPs') or [{}])[0].get('ip')
    else:
        value = _dig(obj, label)
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return '' if value is None else str(value)


def _field_values(obj: Mapping[str, Any], resource: kmock.resource | None = None) -> dict[str, str]:
    """All field-selector values of an object (for the resource's known labels)."""
    meta = obj.get('metadata', {})
    fields = {'metadata.name': meta.get('name', ''), 'metadata.namespace': meta.get('namespace') or ''}
    if resource is None:  # the old behaviour: the pods' common ones when present
        if isinstance(obj.get('status'), Mapping) and 'phase' in obj['status']:
            fields['status.phase'] = obj['status']['phase']
        if isinstance(obj.get('spec'), Mapping) and 'nodeName' in obj['spec']:
            fields['spec.nodeName'] = obj['spec']['nodeName']
        return fields
    for label in _FIELD_LABELS.get((resource.group, resource.plural), ()):
        fields[label] = _field_value(obj, resource, label)
    return fields


def format_label_selector(selector: Mapping[str, Any] | None) -> str:
    """metav1.FormatLabelSelector: ``app=x,tier in (a,b)`` (as the Scale subresource shows it)."""
    if not selector:
        return ''
    parts = [f"{k}={v}" for k, v in sorted((selector.get('matchLabels') or {}).items())]
    for expr in selector.get('matchExpressions') or []:
        op, key, values = expr.get('operator'), expr.get('key'), sorted(expr.get('values') or [])
        parts.append({'In': f"{key} in ({','.join(values)})", 'NotIn': f"{key} notin ({','.join(values)})",
                      'Exists': key, 'DoesNotExist': f"!{key}"}.get(op, ''))
    return ','.join(parts) or ''


# ----------------------------------------------------------------------------------------------
# Faults: error responses that do NOT touch the store (unlike `kmock[...] << 409`).
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Fault:
    """An injected API error; see :meth:`ClusterEmulator.fail`. ``hits`` are the failed requests."""
    view: kmock.View
    status: int
    reason: str
    message: str
    remaining: int | None  # None = forever
    delay: float = 0.0  # seconds to hold the answer: longer than the client's timeout = a timeout
    after_write: bool = False  # carry the write out, then hold the normal answer for ``delay``
    hits: list[kmock.Request] = dataclasses.field(default_factory=list)
    owner: ClusterEmulator | None = None

    @property
    def active(self) -> bool:
        return self.remaining is None or self.remaining > 0

    def cancel(self) -> None:
        if self.owner is not None and self in self.owner.faults:
            self.owner.faults.remove(self)


# ----------------------------------------------------------------------------------------------
# API errors: ``Status`` bodies in the apiserver's shapes (records 7, 9-11, 15-17, 20, 27, 34, 42).
# ----------------------------------------------------------------------------------------------

@attrs.frozen
class ApiError(kmock.KubernetesError):
    """An API error, answered with exactly ``body`` (a ``Status``) and HTTP ``status``."""
    body: Any = None


def _go_quote(text: str) -> str:
    """Go's ``%q`` / strconv.Quote for the strings the apiserver quotes in messages."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == '\\':
            out.append('\\\\')
        elif ch == '\n':
            out.append('\\n')
        elif ch == '\t':
            out.append('\\t')
        elif ch == '\r':
            out.append('\\r')
        elif ord(ch) < 0x20 or ord(ch) == 0x7f:
            out.append(f'\\x{ord(ch):02x}')
        else:
            out.append(ch)
    out.append('"')
    return ''.join(out)


def _go_value(value: Any) -> str:
    """How a field error shows a bad value (k8s field.Error.ErrorBody)."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return _go_number(value)
    if isinstance(value, str):
        return _go_quote(value)
    if isinstance(value, _GoRepr):
        return value.text
    return _go_quote('object' if isinstance(value, dict) else 'array')


def _go_number(value: int | float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e21):
        return str(int(value))
    text = repr(value)
    return text.replace('e-0', 'e-').replace('e+0', 'e+') if 'e' in text else text


@dataclasses.dataclass(frozen=True)
class _GoRepr:
    """A value already rendered the way Go's ``%#v`` would (e.g. ``map[string]string{"a":"b"}``)."""
    text: str


def _go_map_repr(mapping: Mapping[str, Any] | None) -> _GoRepr:
    items = ', '.join(f'{json.dumps(k)}:{json.dumps(v)}' for k, v in sorted((mapping or {}).items()))
    return _GoRepr(f'map[string]string{{{items}}}')


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One cause of a 422 Invalid: ``field: <type>: <detail>`` as k8s.io/apimachinery/pkg/util/validation/field."""
    field: str
    type: str  # Invalid | Required | NotSupported | Forbidden | TooLong | TooMany | TypeInvalid | Duplicate
    value: Any = ABSENT
    detail: str = ''

    _REASONS = {'Invalid': 'FieldValueInvalid', 'Required': 'FieldValueRequired',
                'NotSupported': 'FieldValueNotSupported', 'Forbidden': 'FieldValueForbidden',
                'TooLong': 'FieldValueTooLong', 'TooMany': 'FieldValueTooMany',
                'TypeInvalid': 'FieldValueTypeInvalid', 'Duplicate': 'FieldValueDuplicate'}

    @property
    def reason(self) -> str:
        return self._REASONS[self.type]

    @property
    def message(self) -> str:  # the cause's message: without the field path
        if self.type == 'Required':
            return 'Required value' + (f': {self.detail}' if self.detail else '')
        if self.type == 'Forbidden':
            return 'Forbidden' + (f': {self.detail}' if self.detail else '')
        if self.type == 'TooLong':
            return f'Too long: {self.detail}'
        if self.type == 'TooMany':
            return f'Too many: {self.detail}'
        if self.type == 'NotSupported':
            return f'Unsupported value: {_go_value(self.value)}' + (f': {self.detail}' if self.detail else '')
        if self.type == 'Duplicate':
            return f'Duplicate value: {_go_value(self.value)}'
        return f'Invalid value: {_go_value(self.value)}' + (f': {self.detail}' if self.detail else '')

    @property
    def error(self) -> str:  # as listed in the Status message
        return f'{self.field}: {self.message}' if self.field else self.message


def _status_body(code: int, message: str, reason: str | None = None, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                            'message': message}
    if reason:
        body['reason'] = reason
    if details is not None:
        body['details'] = details
    body['code'] = code
    return body


def api_error(code: int, message: str, reason: str | None | _Absent = ABSENT, details: Any = None) -> ApiError:
    """An error with a Status body; ``reason`` defaults to the code's (``None``: no reason at all)."""
    reason = _REASONS.get(code, 'Failure') if reason is ABSENT else reason
    return ApiError(status=code, reason=reason, message=message, details=details,
                    body=_status_body(code, message, reason, details))


def _details(resource: kmock.resource, name: str | None, kind: str | None = None, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details['name'] = name
    if resource.group:
        details['group'] = resource.group
    details['kind'] = kind or resource.plural
    details.update(extra)
    return details


def not_found(resource: kmock.resource, name: str) -> ApiError:
    return api_error(404, f'{_qualified(resource)} "{name}" not found', 'NotFound', _details(resource, name))


def already_exists(resource: kmock.resource, name: str) -> ApiError:
    return api_error(409, f'{_qualified(resource)} "{name}" already exists', 'AlreadyExists',
                     _details(resource, name))


def conflict(resource: kmock.resource, name: str,
             why: str = 'the object has been modified; please apply your changes to the latest version and try again',
             ) -> ApiError:
    return api_error(409, f'Operation cannot be fulfilled on {_qualified(resource)} "{name}": {why}', 'Conflict',
                     _details(resource, name))


def bad_request(message: str) -> ApiError:
    return api_error(400, message, 'BadRequest')


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid, e.g. ``Deployment.apps "slot" is invalid: spec.replicas: Invalid value: -1: ...``."""
    qualified = f'{kind}.{group}' if group else kind
    listed = errors[0].error if len(errors) == 1 else '[' + ', '.join(e.error for e in errors) + ']'
    details: dict[str, Any] = {}
    if name:
        details['name'] = name
    if group:
        details['group'] = group
    if kind:
        details['kind'] = kind
    details['causes'] = [{'reason': e.reason, 'message': e.message, 'field': e.field} for e in errors]
    return api_error(422, f'{qualified} {_go_quote(name)} is invalid: {listed}', 'Invalid', details)


# ----------------------------------------------------------------------------------------------
# The API's types: what the apiserver knows of an object's shape. Used for the fields Go's JSON
# encoding adds or drops (zero values, ``omitempty``) and their order, type errors, defaulting,
# strategic-merge keys and the field sets of ``managedFields`` (SSA). Builtins: a hand-written
# subset of the Go types (fields not described are kept as sent and treated as untyped);
# custom resources: their CRD's structural schema.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class TypeNode:
    kind: str  # 'struct' | 'map' | 'list' | 'scalar' | 'any'
    name: str = ''  # the Go type name (in messages)
    fields: dict[str, tuple[TypeNode, str]] = dataclasses.field(default_factory=dict)  # json name -> (type, presence)
    elem: TypeNode | None = None  # map values, list items
    keys: tuple[str, ...] | None = None  # list-map keys (SSA: listType=map); None with set_=False: atomic
    set_: bool = False  # listType=set (items are their own keys)
    smp: str | None = None  # strategic merge: the patchMergeKey, '$primitive' for merged scalar lists
    atomic: bool = False  # structType/mapType=atomic: owned and replaced as a whole
    scalar: str = ''  # 'string' | 'int32' | 'int64' | 'bool' | 'number' | 'ios' | 'quantity' | 'time'
    deduced: bool = False  # untyped as SMD deduces it (CR preserve-unknown-fields): map keys are members
    schema: dict[str, Any] | None = None  # CRs: the openAPIV3Schema node


# Presence of a field in Go's JSON of a decoded object:
#   'omit'   -- omitempty on a value type: dropped when zero ("", 0, false, {}, [], null);
#   'ptr'    -- a pointer with omitempty: dropped only when null/absent;
#   'struct' -- a non-pointer struct: always there (as its own zero value when absent);
#   'null'   -- no omitempty on a pointer/slice/map/Time: ``null`` when absent;
#   'zero'   -- no omitempty on a scalar: "", 0 or false when absent.


def _scalar(kind: str) -> TypeNode:
    return TypeNode('scalar', scalar=kind)


STR, INT32, INT64, BOOL, NUM = _scalar('string'), _scalar('int32'), _scalar('int64'), _scalar('bool'), _scalar('number')
IOS, QTY, TIME = _scalar('ios'), _scalar('quantity'), _scalar('time')
ANY = TypeNode('any')  # untyped part of a builtin: treated like a granular struct
DEDUCED = TypeNode('any', deduced=True)  # untyped part of a CR


def _struct(name: str, *fields: tuple[Any, ...], atomic: bool = False) -> TypeNode:
    node = TypeNode('struct', name=name, atomic=atomic)
    for field in fields:
        json_name, ftype, presence = (field + ('omit',))[:3]
        node.fields[json_name] = (ftype, presence)
    return node


def _map(elem: TypeNode, atomic: bool = False) -> TypeNode:
    return TypeNode('map', elem=elem, atomic=atomic)


def _list(elem: TypeNode, keys: tuple[str, ...] | None = None, set_: bool = False, smp: str | None = None) -> TypeNode:
    return TypeNode('list', elem=elem, keys=keys, set_=set_, smp=smp)


OWNER_REFERENCE = _struct('OwnerReference', ('apiVersion', STR, 'zero'), ('kind', STR, 'zero'), ('name', STR, 'zero'),
                          ('uid', STR, 'zero'), ('controller', BOOL, 'ptr'), ('blockOwnerDeletion', BOOL, 'ptr'),
                          atomic=True)
MANAGED_FIELDS_ENTRY = _struct('ManagedFieldsEntry', ('manager', STR), ('operation', STR), ('apiVersion', STR),
                               ('time', TIME, 'ptr'), ('fieldsType', STR), ('fieldsV1', ANY, 'ptr'),
                               ('subresource', STR))
OBJECT_META = _struct(
    'ObjectMeta', ('name', STR), ('generateName', STR), ('namespace', STR), ('selfLink', STR), ('uid', STR),
    ('resourceVersion', STR), ('generation', INT64), ('creationTimestamp', TIME, 'null'),
    ('deletionTimestamp', TIME, 'ptr'), ('deletionGracePeriodSeconds', INT64, 'ptr'),
    ('labels', _map(STR)), ('annotations', _map(STR)),
    ('ownerReferences', _list(OWNER_REFERENCE, keys=('uid',), smp='uid')),
    ('finalizers', _list(STR, set_=True, smp='$primitive')), ('managedFields', _list(MANAGED_FIELDS_ENTRY)))
LABEL_SELECTOR = _struct('LabelSelector', ('matchLabels', _map(STR)), ('matchExpressions', _list(ANY)), atomic=True)
OBJECT_REFERENCE = _struct('ObjectReference', ('kind', STR), ('namespace', STR), ('name', STR), ('uid', STR),
                           ('apiVersion', STR), ('resourceVersion', STR), ('fieldPath', STR), atomic=True)
CONDITION = _struct('Condition', ('type', STR, 'zero'), ('status', STR, 'zero'), ('observedGeneration', INT64),
                    ('lastTransitionTime', TIME, 'null'), ('reason', STR, 'zero'), ('message', STR, 'zero'))


def _object(name: str, *fields: tuple[Any, ...]) -> TypeNode:
    """A top-level kind: TypeMeta, ObjectMeta, then its own fields."""
    return _struct(name, ('kind', STR), ('apiVersion', STR), ('metadata', OBJECT_META, 'struct'), *fields)


# --- core/v1: pods (and pod templates) ---

HTTP_GET = _struct('HTTPGetAction', ('path', STR), ('port', IOS, 'zero'), ('host', STR), ('scheme', STR),
                   ('httpHeaders', _list(ANY)))
PROBE = _struct('Probe', ('exec', ANY, 'ptr'), ('httpGet', HTTP_GET, 'ptr'), ('tcpSocket', ANY, 'ptr'),
                ('grpc', ANY, 'ptr'), ('initialDelaySeconds', INT32), ('timeoutSeconds', INT32),
                ('periodSeconds', INT32), ('successThreshold', INT32), ('failureThreshold', INT32),
                ('terminationGracePeriodSeconds', INT64, 'ptr'))
CONTAINER_PORT = _struct('ContainerPort', ('name', STR), ('hostPort', INT32), ('containerPort', INT32, 'zero'),
                         ('protocol', STR), ('hostIP', STR))
ENV_VAR = _struct('EnvVar', ('name', STR, 'zero'), ('value', STR), ('valueFrom', ANY, 'ptr'))
RESOURCES = _struct('ResourceRequirements', ('limits', _map(QTY)), ('requests', _map(QTY)),
                    ('claims', _list(ANY, keys=('name',), smp='name')))
VOLUME_MOUNT = _struct('VolumeMount', ('name', STR, 'zero'), ('readOnly', BOOL), ('mountPath', STR, 'zero'),
                       ('subPath', STR), ('mountPropagation', STR, 'ptr'), ('subPathExpr', STR))
CONTAINER = _struct(
    'Container', ('name', STR, 'zero'), ('image', STR), ('command', _list(STR)), ('args', _list(STR)),
    ('workingDir', STR), ('ports', _list(CONTAINER_PORT, keys=('containerPort', 'protocol'), smp='containerPort')),
    ('envFrom', _list(ANY)), ('env', _list(ENV_VAR, keys=('name',), smp='name')),
    ('resources', RESOURCES, 'struct'), ('resizePolicy', _list(ANY)), ('restartPolicy', STR, 'ptr'),
    ('volumeMounts', _list(VOLUME_MOUNT, keys=('mountPath',), smp='mountPath')),
    ('volumeDevices', _list(ANY, keys=('devicePath',), smp='devicePath')),
    ('livenessProbe', PROBE, 'ptr'), ('readinessProbe', PROBE, 'ptr'), ('startupProbe', PROBE, 'ptr'),
    ('lifecycle', ANY, 'ptr'), ('terminationMessagePath', STR), ('terminationMessagePolicy', STR),
    ('imagePullPolicy', STR), ('securityContext', ANY, 'ptr'), ('stdin', BOOL), ('stdinOnce', BOOL), ('tty', BOOL))
EMPTY_DIR = _struct('EmptyDirVolumeSource', ('medium', STR), ('sizeLimit', QTY, 'ptr'))
VOLUME = _struct('Volume', ('name', STR, 'zero'), *[(source, EMPTY_DIR if source == 'emptyDir' else ANY, 'ptr') for source in (
    'hostPath', 'emptyDir', 'gcePersistentDisk', 'awsElasticBlockStore', 'gitRepo', 'secret', 'nfs', 'iscsi',
    'glusterfs', 'persistentVolumeClaim', 'rbd', 'flexVolume', 'cinder', 'cephfs', 'flocker', 'downwardAPI', 'fc',
    'azureFile', 'configMap', 'vsphereVolume', 'quobyte', 'azureDisk', 'photonPersistentDisk', 'projected',
    'portworxVolume', 'scaleIO', 'storageos', 'csi', 'ephemeral')])
POD_SPEC = _struct(
    'PodSpec', ('volumes', _list(VOLUME, keys=('name',), smp='name')),
    ('initContainers', _list(CONTAINER, keys=('name',), smp='name')),
    ('containers', _list(CONTAINER, keys=('name',), smp='name'), 'null'),
    ('ephemeralContainers', _list(ANY, keys=('name',), smp='name')), ('restartPolicy', STR),
    ('terminationGracePeriodSeconds', INT64, 'ptr'), ('activeDeadlineSeconds', INT64, 'ptr'), ('dnsPolicy', STR),
    ('nodeSelector', _map(STR, atomic=True)), ('serviceAccountName', STR), ('serviceAccount', STR),
    ('automountServiceAccountToken', BOOL, 'ptr'), ('nodeName', STR), ('hostNetwork', BOOL), ('hostPID', BOOL),
    ('hostIPC', BOOL), ('shareProcessNamespace', BOOL, 'ptr'), ('securityContext', ANY, 'ptr'),
    ('imagePullSecrets', _list(ANY, keys=('name',), smp='name')), ('hostname', STR), ('subdomain', STR),
    ('affinity', ANY, 'ptr'), ('schedulerName', STR), ('tolerations', _list(ANY)),
    ('hostAliases', _list(ANY, keys=('ip',), smp='ip')), ('priorityClassName', STR), ('priority', INT32, 'ptr'),
    ('dnsConfig', ANY, 'ptr'), ('readinessGates', _list(ANY)), ('runtimeClassName', STR, 'ptr'),
    ('enableServiceLinks', BOOL, 'ptr'), ('preemptionPolicy', STR, 'ptr'), ('overhead', _map(QTY)),
    ('topologySpreadConstraints', _list(ANY, keys=('topologyKey', 'whenUnsatisfiable'), smp='topologyKey')),
    ('setHostnameAsFQDN', BOOL, 'ptr'), ('os', ANY, 'ptr'), ('hostUsers', BOOL, 'ptr'),
    ('schedulingGates', _list(ANY, keys=('name',), smp='name')),
    ('resourceClaims', _list(ANY, keys=('name',), smp='name')))
POD_TEMPLATE_SPEC = _struct('PodTemplateSpec', ('metadata', OBJECT_META, 'struct'), ('spec', POD_SPEC, 'struct'))
POD_STATUS = _struct(
    'PodStatus', ('phase', STR), ('conditions', _list(ANY, keys=('type',), smp='type')), ('message', STR),
    ('reason', STR), ('nominatedNodeName', STR), ('hostIP', STR), ('hostIPs', _list(ANY)), ('podIP', STR),
    ('podIPs', _list(ANY, keys=('ip',), smp='ip')), ('startTime', TIME, 'ptr'),
    ('initContainerStatuses', _list(ANY)), ('containerStatuses', _list(ANY)), ('qosClass', STR),
    ('ephemeralContainerStatuses', _list(ANY)), ('resize', STR), ('resourceClaimStatuses', _list(ANY)))
POD = _object('Pod', ('spec', POD_SPEC, 'struct'), ('status', POD_STATUS, 'struct'))

# --- core/v1: services, namespaces, events ---

SERVICE_PORT = _struct('ServicePort', ('name', STR), ('protocol', STR), ('appProtocol', STR, 'ptr'),
                       ('port', INT32, 'zero'), ('targetPort', IOS), ('nodePort', INT32))
SERVICE = _object('Service', ('spec', _struct(
    'ServiceSpec', ('ports', _list(SERVICE_PORT, keys=('port', 'protocol'), smp='port')),
    ('selector', _map(STR, atomic=True)), ('clusterIP', STR), ('clusterIPs', _list(STR)), ('type', STR),
    ('externalIPs', _list(STR)), ('sessionAffinity', STR), ('loadBalancerIP', STR),
    ('loadBalancerSourceRanges', _list(STR)), ('externalName', STR), ('externalTrafficPolicy', STR),
    ('healthCheckNodePort', INT32), ('publishNotReadyAddresses', BOOL), ('sessionAffinityConfig', ANY, 'ptr'),
    ('ipFamilies', _list(STR)), ('ipFamilyPolicy', STR, 'ptr'), ('allocateLoadBalancerNodePorts', BOOL, 'ptr'),
    ('loadBalancerClass', STR, 'ptr'), ('internalTrafficPolicy', STR, 'ptr')), 'struct'),
    ('status', _struct('ServiceStatus', ('loadBalancer', _struct('LoadBalancerStatus', ('ingress', _list(ANY))), 'struct'),
                       ('conditions', _list(CONDITION, keys=('type',), smp='type'))), 'struct'))
NAMESPACE = _object('Namespace', ('spec', _struct('NamespaceSpec', ('finalizers', _list(STR))), 'struct'),
                    ('status', _struct('NamespaceStatus', ('phase', STR),
                                       ('conditions', _list(ANY, keys=('type',), smp='type'))), 'struct'))
EVENT = _object(
    'Event', ('involvedObject', OBJECT_REFERENCE, 'struct'), ('reason', STR), ('message', STR),
    ('source', _struct('EventSource', ('component', STR), ('host', STR)), 'struct'),
    ('firstTimestamp', TIME, 'null'), ('lastTimestamp', TIME, 'null'), ('count', INT32), ('type', STR),
    ('eventTime', TIME, 'null'), ('series', ANY, 'ptr'), ('action', STR), ('related', OBJECT_REFERENCE, 'ptr'),
    ('reportingComponent', STR, 'zero'), ('reportingInstance', STR, 'zero'))

# --- apps/v1: deployments ---

DEPLOYMENT_CONDITION = _struct('DeploymentCondition', ('type', STR, 'zero'), ('status', STR, 'zero'),
                               ('lastUpdateTime', TIME, 'null'), ('lastTransitionTime', TIME, 'null'),
                               ('reason', STR), ('message', STR))
DEPLOYMENT = _object('Deployment', ('spec', _struct(
    'DeploymentSpec', ('replicas', INT32, 'ptr'), ('selector', LABEL_SELECTOR, 'null'),
    ('template', POD_TEMPLATE_SPEC, 'struct'),
    ('strategy', _struct('DeploymentStrategy', ('type', STR), ('rollingUpdate', _struct(
        'RollingUpdateDeployment', ('maxUnavailable', IOS, 'ptr'), ('maxSurge', IOS, 'ptr')), 'ptr')), 'struct'),
    ('minReadySeconds', INT32), ('revisionHistoryLimit', INT32, 'ptr'), ('paused', BOOL),
    ('progressDeadlineSeconds', INT32, 'ptr')), 'struct'),
    ('status', _struct(
        'DeploymentStatus', ('observedGeneration', INT64), ('replicas', INT32), ('updatedReplicas', INT32),
        ('readyReplicas', INT32), ('availableReplicas', INT32), ('unavailableReplicas', INT32),
        ('conditions', _list(DEPLOYMENT_CONDITION, keys=('type',), smp='type')), ('collisionCount', INT32, 'ptr')),
        'struct'))
SCALE = _object('Scale', ('spec', _struct('ScaleSpec', ('replicas', INT32)), 'struct'),
                ('status', _struct('ScaleStatus', ('replicas', INT32, 'zero'), ('selector', STR)), 'struct'))
# --- coordination.k8s.io/v1: leases (leader election). Every LeaseSpec field is an omitempty
# pointer: a null holderIdentity (a released Lease) is dropped, not kept. The MicroTimes are kept as
# sent (the apiserver re-renders them with six fractional digits, which is how slotkeeper sends them).
LEASE = _object('Lease', ('spec', _struct(
    'LeaseSpec', ('holderIdentity', STR, 'ptr'), ('leaseDurationSeconds', INT32, 'ptr'), ('acquireTime', STR, 'ptr'),
    ('renewTime', STR, 'ptr'), ('leaseTransitions', INT32, 'ptr'), ('strategy', STR, 'ptr'),
    ('preferredHolder', STR, 'ptr')), 'struct'))
GENERIC = _object('Object', ('spec', ANY, 'ptr'), ('status', ANY, 'ptr'))  # builtins not described here

BUILTIN_TYPES: dict[tuple[str, str], TypeNode] = {
    ('', 'pods'): POD, ('', 'services'): SERVICE, ('', 'namespaces'): NAMESPACE, ('', 'events'): EVENT,
    ('apps', 'deployments'): DEPLOYMENT, ('coordination.k8s.io', 'leases'): LEASE,
}
CLUSTER_SCOPED = {('', 'namespaces'), ('', 'nodes'), ('', 'persistentvolumes'),
                  ('apiextensions.k8s.io', 'customresourcedefinitions'), ('rbac.authorization.k8s.io', 'clusterroles'),
                  ('rbac.authorization.k8s.io', 'clusterrolebindings'), ('storage.k8s.io', 'storageclasses')}
# Builtins whose objects carry metadata.generation (bumped by spec changes).
GENERATION_BUILTINS = {'apps', 'batch', 'policy', 'apiextensions.k8s.io', 'autoscaling'}
GENERATION_RESOURCES = {('networking.k8s.io', 'ingresses'), ('networking.k8s.io', 'networkpolicies')}
# Builtins whose DELETE answers the deleted object (the others: a Status "Success").
RETURNS_DELETED_OBJECT = {('', 'pods'), ('', 'services'), ('', 'namespaces')}


def _child_type(node: TypeNode, key: str) -> tuple[TypeNode, bool]:
    """The type of a map key/struct field, and whether it is a declared struct field."""
    if node.kind == 'struct':
        if key in node.fields:
            return node.fields[key][0], True
        return (DEDUCED if node.deduced else ANY), False
    if node.kind == 'map':
        return node.elem or ANY, False
    if node.kind == 'any':
        return node, not node.deduced  # builtins' untyped dicts behave as structs, CR unknowns as maps
    return ANY, False


def _is_leaf(node: TypeNode, value: Any = ABSENT) -> bool:
    if node.kind == 'scalar' or node.atomic:
        return True
    if node.kind == 'list':
        return node.keys is None and not node.set_
    if node.kind == 'any':
        return not isinstance(value, dict)
    return False


def _zero_scalar(node: TypeNode) -> Any:
    return {'string': '', 'bool': False, 'time': None, 'quantity': '0'}.get(node.scalar, 0)


def _is_zero(value: Any) -> bool:
    """Go's omitempty: false, 0, "", empty maps/slices and nil pointers."""
    if value is None or value is False:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, (str, dict, list)):
        return len(value) == 0
    return False


def go_normalize(value: Any, node: TypeNode) -> Any:
    """The object as Go would serialise it after decoding: declared fields in Go order with their zero
    values/omitempty applied, maps with sorted keys, quantities canonical. Undescribed fields: as sent."""
    if node.kind == 'struct' and isinstance(value, dict):
        out: dict[str, Any] = {}
        fields, get = node.fields, value.get
        for name, (ftype, presence) in fields.items():
            item = get(name)  # absent and null alike
            if item is None:
                if presence == 'omit' or presence == 'ptr':  # most declared fields: absent and omitted
                    continue
                if presence == 'struct':
                    out[name] = go_normalize({}, ftype)
                elif presence == 'null':
                    out[name] = None
                elif presence == 'zero':
                    out[name] = _zero_scalar(ftype)
                continue
            if ftype.kind != 'any' and (ftype.kind != 'scalar' or ftype.scalar == 'quantity'):  # (others: as they are)
                item = go_normalize(item, ftype)
            if presence == 'omit' and _is_zero(item):
                continue
            out[name] = item
        for name, item in value.items():
            if name not in fields:
                out[name] = item
        return out
    if node.kind == 'map' and isinstance(value, dict):
        return {key: go_normalize(value[key], node.elem or ANY) for key in sorted(value)}
    if node.kind == 'list' and isinstance(value, list):
        return [go_normalize(item, node.elem or ANY) for item in value]
    if node.kind == 'scalar' and node.scalar == 'quantity' and isinstance(value, (str, int, float)) \
            and not isinstance(value, bool):
        try:
            return canonical_quantity(value)
        except ValueError:
            return value
    return value


def _sorted_deep(value: Any) -> Any:
    """JSON as Go marshals maps: keys sorted at every level (unstructured objects, e.g. CRs)."""
    if isinstance(value, dict):
        return {key: _sorted_deep(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_deep(item) for item in value]
    return value


# --- decoding: the type errors Go's JSON decoder reports (400 on create, 422 on a patch) ---

_GO_SCALARS = {'string': 'string', 'int32': 'int32', 'int64': 'int64', 'bool': 'bool', 'number': 'float64',
               'time': 'v1.Time', 'ios': 'intstr.IntOrString', 'quantity': 'resource.Quantity'}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, (int, float)):
        return 'number'
    if isinstance(value, str):
        return 'string'
    return 'object' if isinstance(value, dict) else 'array'


def _go_type_name(node: TypeNode) -> str:
    if node.kind == 'struct':
        return f'v1.{node.name}'
    if node.kind == 'map':
        return f'map[string]{_go_type_name(node.elem or ANY)}'
    if node.kind == 'list':
        return f'[]{_go_type_name(node.elem or ANY)}'
    if node.kind == 'scalar':
        return _GO_SCALARS.get(node.scalar, 'interface {}')
    return 'interface {}'


def decode_error(value: Any, node: TypeNode, path: tuple[str, ...] = (), parent: str = '') -> str | None:
    """The first error decoding ``value`` into the Go type (document order), as Go words it; or None."""
    if value is None or node.kind == 'any':
        return None

    def mismatch() -> str:
        where = '.'.join(path)
        return (f'json: cannot unmarshal {_json_type(value)} into Go struct field {parent}.{where} '
                f'of type {_go_type_name(node)}')

    if node.kind == 'struct':
        if not isinstance(value, dict):
            return mismatch()
        for key, item in value.items():
            if key in node.fields:
                if (error := decode_error(item, node.fields[key][0], path + (key,), node.name)) is not None:
                    return error
        return None
    if node.kind == 'map':
        if not isinstance(value, dict):
            return mismatch()
        for key, item in value.items():
            if (error := decode_error(item, node.elem or ANY, path + (key,), parent)) is not None:
                return error
        return None
    if node.kind == 'list':
        if not isinstance(value, list):
            return mismatch()
        for item in value:
            if (error := decode_error(item, node.elem or ANY, path, parent)) is not None:
                return error
        return None
    kind = node.scalar
    if kind in ('string', 'time'):
        return None if isinstance(value, str) else mismatch()
    if kind == 'bool':
        return None if isinstance(value, bool) else mismatch()
    if kind in ('int32', 'int64'):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return mismatch()
        if isinstance(value, float) and not value.is_integer():
            where = '.'.join(path)
            return f'json: cannot unmarshal number {_go_number(value)} into Go struct field {parent}.{where} of type {kind}'
        return None
    if kind == 'number':
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else mismatch()
    if kind == 'ios':
        return None if isinstance(value, (str, int)) and not isinstance(value, bool) else mismatch()
    if kind == 'quantity':
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return mismatch()
        try:
            canonical_quantity(value)
        except ValueError as e:
            return str(e)
    return None


def typed_errors(value: Any, node: TypeNode, path: str = '') -> list[str]:
    """Server-side apply's typed conversion errors (structured-merge-diff words), all of them."""
    errors: list[str] = []
    if value is None or node.kind == 'any':
        return errors

    def got() -> str:
        if isinstance(value, str):
            return f'&value.valueUnstructured{{Value:{_go_quote(value)}}}'
        if isinstance(value, (dict, list)):
            return f'&value.valueUnstructured{{Value:{_json_type(value)}}}'
        return f'&value.valueUnstructured{{Value:{_go_value(value)}}}'

    if node.kind in ('struct', 'map'):
        if not isinstance(value, dict):
            return [f'{path}: expected map, got {got()}']
        for key, item in value.items():
            child, _ = _child_type(node, key)
            errors += typed_errors(item, child, f'{path}.{key}')
        return errors
    if node.kind == 'list':
        if not isinstance(value, list):
            return [f'{path}: expected list, got {got()}']
        for index, item in enumerate(value):
            label = f'[{index}]'
            if node.keys and isinstance(item, dict):
                label = '[' + ','.join(f'{k}={json.dumps(item.get(k))}' for k in node.keys if k in item) + ']'
            errors += typed_errors(item, node.elem or ANY, f'{path}{label}')
        return errors
    kind = node.scalar
    if kind in ('string', 'time') and not isinstance(value, str):
        errors.append(f'{path}: expected string, got {got()}')
    elif kind == 'bool' and not isinstance(value, bool):
        errors.append(f'{path}: expected boolean, got {got()}')
    elif kind in ('int32', 'int64', 'number') and (isinstance(value, bool) or not isinstance(value, (int, float))):
        errors.append(f'{path}: expected numeric (int or float), got {got()}')
    elif kind in ('ios', 'quantity') and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
        errors.append(f'{path}: expected string or numeric, got {got()}')
    return errors


# ----------------------------------------------------------------------------------------------
# Resource quantities (k8s.io/apimachinery/pkg/api/resource): parsing and the canonical form the
# apiserver stores ("0.5" -> "500m", "2048Mi" -> "2Gi", "1000m" -> "1").
# ----------------------------------------------------------------------------------------------

QUANTITY_FORMAT_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
_QUANTITY_RE = re.compile(r'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$')
_BINARY = {'Ki': 10, 'Mi': 20, 'Gi': 30, 'Ti': 40, 'Pi': 50, 'Ei': 60}
_DECIMAL = {'n': -9, 'u': -6, 'm': -3, '': 0, 'k': 3, 'M': 6, 'G': 9, 'T': 12, 'P': 15, 'E': 18}
_DECIMAL_SUFFIX = {exp: suffix for suffix, exp in _DECIMAL.items()}


def parse_quantity(text: str | int | float) -> tuple[fractions.Fraction, str]:
    """(value, format) with format 'BinarySI' | 'DecimalSI' | 'DecimalExponent'; ValueError as k8s words it."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = _go_number(text) if isinstance(text, float) else str(text)
    text = str(text).strip()
    m = _QUANTITY_RE.match(text)
    if not m:
        raise ValueError(QUANTITY_FORMAT_ERROR)
    number, suffix = m.groups()
    if number.count('.') > 1 or number.strip('+-') in ('', '.'):
        raise ValueError("unable to parse numeric part of quantity")
    value = fractions.Fraction(number)
    if suffix in _BINARY:
        value *= 2 ** _BINARY[suffix]
        fmt = 'BinarySI'
    elif suffix in _DECIMAL:
        value *= fractions.Fraction(10) ** _DECIMAL[suffix]
        fmt = 'DecimalSI'
    elif re.fullmatch(r'[eE][-+]?[0-9]+', suffix):
        value *= fractions.Fraction(10) ** int(suffix[1:])
        fmt = 'DecimalExponent'
    else:
        raise ValueError("unable to parse quantity's suffix")
    # Quantities keep at most nano precision: finer values round up (away from zero).
    nanos = value * 10 ** 9
    if nanos.denominator != 1:
        rounded = -(-nanos.numerator // nanos.denominator) if value > 0 else nanos.numerator // nanos.denominator
        value = fractions.Fraction(rounded, 10 ** 9)
    return value, fmt


def canonical_quantity(text: str | int | float) -> str:
    value, fmt = parse_quantity(text)
    if value == 0:
        return '0'
    sign = '-' if value < 0 else ''
    magnitude = abs(value)
    if fmt == 'BinarySI' and (magnitude < 1024 or magnitude.denominator != 1):
        fmt = 'DecimalSI'
    if fmt == 'BinarySI':
        number, power = magnitude.numerator, 0
        while number % 1024 == 0 and power < 60:
            number //= 1024
            power += 10
        suffix = {v: k for k, v in _BINARY.items()}.get(power, '')
        return f'{sign}{number}{suffix}'
    # Decimal: mantissa * 10^exp, exp a multiple of 3, the mantissa an integer without 3 trailing zeros.
    exp = -9
    mantissa = magnitude * 10 ** 9
    assert mantissa.denominator == 1
    number = mantissa.numerator
    while number % 1000 == 0 and exp < 18:
        number //= 1000
        exp += 3
    if fmt == 'DecimalExponent':
        return f'{sign}{number}' + (f'e{exp}' if exp else '')
    return f'{sign}{number}{_DECIMAL_SUFFIX[exp]}'


# ----------------------------------------------------------------------------------------------
# Builtins: defaulting (as the recordings show it, records 1 and 12), the deprecated
# serviceAccount twin, and the validation the operator can run into.
# ----------------------------------------------------------------------------------------------

def _image_pull_policy(image: str) -> str:
    if '@' in image:
        return 'IfNotPresent'
    last = image.rsplit('/', 1)[-1]
    tag = last.split(':', 1)[1] if ':' in last else 'latest'
    return 'Always' if tag == 'latest' else 'IfNotPresent'


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    for key, default in (('timeoutSeconds', 1), ('periodSeconds', 10), ('successThreshold', 1), ('failureThreshold', 3)):
        if not probe.get(key):
            probe[key] = default
    if isinstance(probe.get('httpGet'), dict):
        if not probe['httpGet'].get('path'):
            probe['httpGet']['path'] = '/'
        if not probe['httpGet'].get('scheme'):
            probe['httpGet']['scheme'] = 'HTTP'


def _default_container(container: Any) -> None:
    if not isinstance(container, dict):
        return
    if not container.get('terminationMessagePath'):
        container['terminationMessagePath'] = '/dev/termination-log'
    if not container.get('terminationMessagePolicy'):
        container['terminationMessagePolicy'] = 'File'
    if not container.get('imagePullPolicy') and isinstance(container.get('image'), str):
        container['imagePullPolicy'] = _image_pull_policy(container['image'])
    for port in container.get('ports') or []:
        if isinstance(port, dict) and not port.get('protocol'):
            port['protocol'] = 'TCP'
    for key in ('livenessProbe', 'readinessProbe', 'startupProbe'):
        _default_probe(container.get(key))
    for var in container.get('env') or []:
        field_ref = (var.get('valueFrom') or {}).get('fieldRef') if isinstance(var, dict) else None
        if isinstance(field_ref, dict) and not field_ref.get('apiVersion'):
            field_ref['apiVersion'] = 'v1'


def _default_pod_spec(spec: Any) -> None:
    if not isinstance(spec, dict):
        return
    if not spec.get('restartPolicy'):
        spec['restartPolicy'] = 'Always'
    if spec.get('terminationGracePeriodSeconds') is None:
        spec['terminationGracePeriodSeconds'] = 30
    if not spec.get('dnsPolicy'):
        spec['dnsPolicy'] = 'ClusterFirst'
    if spec.get('securityContext') is None:
        spec['securityContext'] = {}
    if not spec.get('schedulerName'):
        spec['schedulerName'] = 'default-scheduler'
    for key in ('initContainers', 'containers'):
        for container in spec.get(key) or []:
            _default_container(container)
    for volume in spec.get('volumes') or []:
        if not isinstance(volume, dict):
            continue
        for source in ('secret', 'configMap', 'downwardAPI', 'projected'):
            if isinstance(volume.get(source), dict) and volume[source].get('defaultMode') is None:
                volume[source]['defaultMode'] = 420
        if isinstance(volume.get('hostPath'), dict):
            volume['hostPath'].setdefault('type', '')
        if not any(key in VOLUME.fields for key in volume if key != 'name'):
            volume['emptyDir'] = {}
    _service_account_twin(spec)


def _service_account_twin(spec: dict[str, Any]) -> None:
    """v1 PodSpec.serviceAccount is the deprecated alias of serviceAccountName: the v1 -> internal
    conversion takes serviceAccountName, else serviceAccount; internal -> v1 writes both. So neither
    a merge patch (null) nor an apply that omits one can drop it while the other is there (records 13, 14, 19)."""
    name = spec.get('serviceAccountName') or spec.get('serviceAccount')
    if name:
        spec['serviceAccountName'] = spec['serviceAccount'] = name
    else:
        spec.pop('serviceAccountName', None)
        spec.pop('serviceAccount', None)


def _default_builtin(resource: kmock.resource, obj: dict[str, Any]) -> None:
    """The scheme's defaulters (SetDefaults_*), applied on every decode of a write."""
    group, plural = resource.group, resource.plural
    spec = obj.get('spec') if isinstance(obj.get('spec'), dict) else None
    if (group, plural) == ('', 'services') and spec is not None:
        if not spec.get('sessionAffinity'):
            spec['sessionAffinity'] = 'None'
        if not spec.get('type'):
            spec['type'] = 'ClusterIP'
        for port in spec.get('ports') or []:
            if not isinstance(port, dict):
                continue
            if not port.get('protocol'):
                port['protocol'] = 'TCP'
            if port.get('targetPort') in (None, 0, ''):
                port['targetPort'] = port.get('port')
        if spec['type'] in ('NodePort', 'LoadBalancer') and not spec.get('externalTrafficPolicy'):
            spec['externalTrafficPolicy'] = 'Cluster'
        if spec['type'] != 'ExternalName' and not spec.get('internalTrafficPolicy'):
            spec['internalTrafficPolicy'] = 'Cluster'
        if spec['type'] == 'LoadBalancer' and spec.get('allocateLoadBalancerNodePorts') is None:
            spec['allocateLoadBalancerNodePorts'] = True
        if spec.get('sessionAffinity') == 'ClientIP' and not spec.get('sessionAffinityConfig'):
            spec['sessionAffinityConfig'] = {'clientIP': {'timeoutSeconds': 10800}}
    elif (group, plural) == ('', 'namespaces'):
        obj.setdefault('metadata', {}).setdefault('labels', {})['kubernetes.io/metadata.name'] = obj['metadata'].get('name')
    elif (group, plural) == ('', 'pods') and spec is not None:
        _default_pod_spec(spec)
        if spec.get('enableServiceLinks') is None:
            spec['enableServiceLinks'] = True
        for container in spec.get('containers') or []:  # SetDefaults_Pod: requests default to limits
            resources = container.get('resources') if isinstance(container, dict) else None
            if isinstance(resources, dict) and isinstance(resources.get('limits'), dict):
                requests = resources.setdefault('requests', {}) or {}
                for key, value in resources['limits'].items():
                    requests.setdefault(key, value)
                resources['requests'] = requests
    elif group == 'apps' and plural in ('deployments', 'replicasets', 'statefulsets', 'daemonsets') and spec is not None:
        if plural != 'daemonsets' and spec.get('replicas') is None:
            spec['replicas'] = 1
        if plural == 'deployments':
            strategy = spec.get('strategy') if isinstance(spec.get('strategy'), dict) else {}
            spec['strategy'] = strategy
            if not strategy.get('type'):
                strategy['type'] = 'RollingUpdate'
            if strategy['type'] == 'RollingUpdate':
                rolling = strategy.get('rollingUpdate') if isinstance(strategy.get('rollingUpdate'), dict) else {}
                strategy['rollingUpdate'] = rolling
                if rolling.get('maxUnavailable') is None:
                    rolling['maxUnavailable'] = '25%'
                if rolling.get('maxSurge') is None:
                    rolling['maxSurge'] = '25%'
            if spec.get('progressDeadlineSeconds') is None:
                spec['progressDeadlineSeconds'] = 600
        if plural != 'replicasets' and spec.get('revisionHistoryLimit') is None:
            spec['revisionHistoryLimit'] = 10
        template = spec.get('template')
        if isinstance(template, dict):
            _default_pod_spec(template.setdefault('spec', {}))


_DNS1123_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
_DNS1123_SUBDOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')
_DNS1035_LABEL = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
_LABEL_VALUE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')
_QUALIFIED_NAME = re.compile(r'^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$')
_MSG_SUBDOMAIN = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
                  "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
                  "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_MSG_LABEL_1123 = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
                   "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
                   "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_MSG_LABEL_1035 = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
                   "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
                   "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
_MSG_LABEL_VALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
                    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
                    "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
_MSG_QUALIFIED = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                  "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
                  "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")


def _validate_name(resource: kmock.resource, name: str) -> list[FieldError]:
    if (resource.group, resource.plural) == ('', 'services'):
        pattern, message, limit = _DNS1035_LABEL, _MSG_LABEL_1035, 63
    elif (resource.group, resource.plural) == ('', 'namespaces'):
        pattern, message, limit = _DNS1123_LABEL, _MSG_LABEL_1123, 63
    else:
        pattern, message, limit = _DNS1123_SUBDOMAIN, _MSG_SUBDOMAIN, 253
    errors = []
    if len(name) > limit:
        errors.append(FieldError('metadata.name', 'Invalid', name, f'must be no more than {limit} characters'))
    if not pattern.match(name):
        errors.append(FieldError('metadata.name', 'Invalid', name, message))
    return errors


def _validate_labels(labels: Any, field: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in (labels or {}).items() if isinstance(labels, dict) else ():
        prefix, _, name = key.rpartition('/')
        if not _QUALIFIED_NAME.match(name) or len(name) > 63 or (prefix and not _DNS1123_SUBDOMAIN.match(prefix)):
            errors.append(FieldError(field, 'Invalid', key, _MSG_QUALIFIED))
        if not isinstance(value, str):
            continue
        if len(value) > 63:
            errors.append(FieldError(field, 'Invalid', value, 'must be no more than 63 characters'))
        if not _LABEL_VALUE.match(value):
            errors.append(FieldError(field, 'Invalid', value, _MSG_LABEL_VALUE))
    return errors


def _selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    if not isinstance(selector, dict):
        return False
    if any(labels.get(k) != v for k, v in (selector.get('matchLabels') or {}).items()):
        return False
    for expr in selector.get('matchExpressions') or []:
        key, op, values = expr.get('key'), expr.get('operator'), expr.get('values') or []
        if (op == 'In' and labels.get(key) not in values) or (op == 'NotIn' and labels.get(key) in values) \
                or (op == 'Exists' and key not in labels) or (op == 'DoesNotExist' and key in labels):
            return False
    return True


def _go_label_selector(selector: Any) -> _GoRepr:
    labels = _go_map_repr((selector or {}).get('matchLabels')).text if selector else 'map[string]string(nil)'
    return _GoRepr(f'v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}}')


def _validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(spec, dict):
        return errors
    containers = spec.get('containers')
    if not containers:
        errors.append(FieldError(f'{path}.containers', 'Required'))
    for key in ('initContainers', 'containers'):
        seen: set[str] = set()
        for index, container in enumerate(spec.get(key) or []):
            where = f'{path}.{key}[{index}]'
            if not isinstance(container, dict):
                continue
            if not container.get('name'):
                errors.append(FieldError(f'{where}.name', 'Required'))
            elif container['name'] in seen:
                errors.append(FieldError(f'{where}.name', 'Duplicate', container['name']))
            seen.add(container.get('name') or '')
            if not container.get('image'):
                errors.append(FieldError(f'{where}.image', 'Required'))
            for pindex, port in enumerate(container.get('ports') or []):
                number = port.get('containerPort') if isinstance(port, dict) else None
                if not isinstance(number, int) or not 0 < number < 65536:
                    errors.append(FieldError(f'{where}.ports[{pindex}].containerPort',
                                             'Required' if number in (None, 0) else 'Invalid',
                                             number if number not in (None, 0) else ABSENT,
                                             '' if number in (None, 0) else 'must be between 1 and 65535, inclusive'))
    return errors


def _validate_builtin(resource: kmock.resource, obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    group, plural = resource.group, resource.plural
    errors: list[FieldError] = []
    meta = obj.get('metadata') or {}
    errors += _validate_labels(meta.get('labels'), 'metadata.labels')
    spec = obj.get('spec') if isinstance(obj.get('spec'), dict) else {}
    if group == 'apps' and plural == 'deployments':
        replicas = spec.get('replicas')
        if isinstance(replicas, int) and replicas < 0:
            errors.append(FieldError('spec.replicas', 'Invalid', replicas, 'must be greater than or equal to 0'))
        selector = spec.get('selector')
        template = spec.get('template') or {}
        labels = (template.get('metadata') or {}).get('labels') or {}
        if not selector:
            errors.append(FieldError('spec.selector', 'Required'))
        elif not (selector.get('matchLabels') or selector.get('matchExpressions')):
            errors.append(FieldError('spec.selector', 'Invalid', _go_label_selector(selector),
                                     'empty selector is invalid for deployment'))
        elif not _selector_matches(selector, labels):
            errors.append(FieldError('spec.template.metadata.labels', 'Invalid', _go_map_repr(labels),
                                     '`selector` does not match template `labels`'))
        errors += _validate_labels(labels, 'spec.template.metadata.labels')
        errors += _validate_pod_spec(template.get('spec'), 'spec.template.spec')
        history = spec.get('revisionHistoryLimit')
        if isinstance(history, int) and history < 0:
            errors.append(FieldError('spec.revisionHistoryLimit', 'Invalid', history, 'must be greater than or equal to 0'))
        rolling = (spec.get('strategy') or {}).get('rollingUpdate') or {}
        if rolling.get('maxUnavailable') in (0, '0%') and rolling.get('maxSurge') in (0, '0%'):
            errors.append(FieldError('spec.strategy.rollingUpdate.maxUnavailable', 'Invalid', rolling['maxUnavailable'],
                                     'may not be 0 when `maxSurge` is 0'))
        if old is not None and (old.get('spec') or {}).get('selector') != selector and selector:
            errors.append(FieldError('spec.selector', 'Invalid', _go_label_selector(selector), 'field is immutable'))
    elif (group, plural) == ('', 'services'):
        kind = spec.get('type')
        ports = spec.get('ports') or []
        if kind != 'ExternalName' and spec.get('clusterIP') != 'None' and not ports:
            errors.append(FieldError('spec.ports', 'Required'))
        for index, port in enumerate(ports):
            number = port.get('port') if isinstance(port, dict) else None
            if not isinstance(number, int) or not 0 < number < 65536:
                errors.append(FieldError(f'spec.ports[{index}].port', 'Invalid', number,
                                         'must be between 1 and 65535, inclusive'))
        if len(ports) > 1:
            for index, port in enumerate(ports):
                if isinstance(port, dict) and not port.get('name'):
                    errors.append(FieldError(f'spec.ports[{index}].name', 'Required'))
        errors += _validate_labels(spec.get('selector'), 'spec.selector')
        if old is not None:
            before = (old.get('spec') or {}).get('clusterIP')
            if before and spec.get('clusterIP') and spec['clusterIP'] != before and before != 'None':
                errors.append(FieldError('spec.clusterIPs[0]', 'Invalid', spec['clusterIP'], 'may not change once set'))
    elif (group, plural) == ('', 'pods'):
        errors += _validate_pod_spec(spec, 'spec')
    elif (group, plural) == ('', 'events'):
        involved_ns = (obj.get('involvedObject') or {}).get('namespace')
        if involved_ns and involved_ns != meta.get('namespace'):
            errors.append(FieldError('involvedObject.namespace', 'Invalid', involved_ns, 'does not match event.namespace'))
    return errors


# ----------------------------------------------------------------------------------------------
# Field sets and managedFields, as structured-merge-diff computes them. A path is a tuple of
# path elements: 'f:<field>', 'k:<json of the key fields>', 'v:<json of a set item>'.
# ----------------------------------------------------------------------------------------------

FieldPath = tuple[str, ...]
_STRIPPED: set[FieldPath] = {('f:apiVersion',), ('f:kind',), ('f:metadata',)} | {
    ('f:metadata', f'f:{name}') for name in ('name', 'namespace', 'creationTimestamp', 'selfLink', 'uid',
                                             'clusterName', 'generation', 'managedFields', 'resourceVersion')}


def _smd_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=False)


def _item_pe(item: Any, node: TypeNode) -> str:
    if node.set_ or not isinstance(item, dict):
        return 'v:' + _smd_json(item)
    key = {name: item.get(name) for name in node.keys or () if name in item}
    if 'protocol' in (node.keys or ()) and 'protocol' not in key:
        key['protocol'] = 'TCP'  # the schema default of ports[].protocol counts for the key
    return 'k:' + _smd_json(key)


def _same_json(lhs: dict[str, Any], rhs: dict[str, Any]) -> bool:
    """The same JSON, types included (``==`` alone takes 1, 1.0 and true for one another)."""
    if lhs != rhs:
        return False
    try:
        return orjson.dumps(lhs) == orjson.dumps(rhs)
    except TypeError:  # not JSON (e.g. integers beyond 64 bits): compared field by field
        return False


def compare_fields(old: Any, new: Any, node: TypeNode, path: FieldPath = (),
                   out: tuple[set[FieldPath], set[FieldPath], set[FieldPath]] | None = None,
                   ) -> tuple[set[FieldPath], set[FieldPath], set[FieldPath]]:
    """(added, modified, removed) paths between two objects (typed.Compare)."""
    if out is None:
        out = (set(), set(), set())
    added, modified, removed = out
    if old is ABSENT and new is ABSENT:
        return out

    def leaf() -> None:
        if old is ABSENT:
            added.add(path)
        elif new is ABSENT:
            removed.add(path)
        elif old != new or type(old) is not type(new):
            modified.add(path)

    probe = new if new is not ABSENT and new is not None else old
    if _is_leaf(node, probe) or (old not in (ABSENT, None) and new not in (ABSENT, None)
                                 and type(old) is not type(new)):
        leaf()
        return out
    if node.kind in ('struct', 'map', 'any'):
        lhs = old if isinstance(old, dict) else {}
        rhs = new if isinstance(new, dict) else {}
        if not lhs and not rhs:
            leaf()
            return out
        if _same_json(lhs, rhs):  # nothing below changed (a status patch leaves metadata and spec as they were)
            return out
        for key in dict.fromkeys([*lhs, *rhs]):
            child, _ = _child_type(node, key)
            compare_fields(lhs.get(key, ABSENT), rhs.get(key, ABSENT), child, path + (f'f:{key}',), out)
    elif node.kind == 'list':
        lhs = old if isinstance(old, list) else []
        rhs = new if isinstance(new, list) else []
        if not lhs and not rhs:
            leaf()
            return out
        elem = node.elem or ANY
        left = {_item_pe(item, node): item for item in lhs}
        right = {_item_pe(item, node): item for item in rhs}
        for pe in dict.fromkeys([*left, *right]):
            if node.set_:
                if pe not in left:
                    added.add(path + (pe,))
                elif pe not in right:
                    removed.add(path + (pe,))
            else:
                compare_fields(left.get(pe, ABSENT), right.get(pe, ABSENT), elem, path + (pe,), out)
    if old is ABSENT:
        added.add(path)
    elif new is ABSENT:
        removed.add(path)
    return out


def field_set(value: Any, node: TypeNode, path: FieldPath = (), out: set[FieldPath] | None = None) -> set[FieldPath]:
    """The fields an applied configuration sets (typed.ToFieldSet)."""
    out = set() if out is None else out
    if value is None:
        return out
    if _is_leaf(node, value):
        out.add(path)
        return out
    if isinstance(value, dict):
        for key, item in value.items():
            child, declared = _child_type(node, key)
            child_path = path + (f'f:{key}',)
            field_set(item, child, child_path, out)
            if item is None or item == {} or not declared:
                out.add(child_path)
    elif isinstance(value, list):
        for item in value:
            item_path = path + (_item_pe(item, node),)
            if not node.set_:
                field_set(item, node.elem or ANY, item_path, out)
            out.add(item_path)
    return out


def _pe_order(pe: str) -> tuple[int, str]:
    return ({'f': 0, 'k': 1, 'v': 2, 'i': 3}.get(pe[:1], 4), pe)


def to_fields_v1(paths: Iterable[FieldPath]) -> dict[str, Any]:
    """A set of paths as FieldsV1 JSON: ``{"f:spec": {"f:replicas": {}}, ...}`` with ``"."`` for owned parents."""
    trie: dict[str, Any] = {}
    members: set[FieldPath] = set()
    for path in paths:
        node = trie
        for pe in path:
            node = node.setdefault(pe, {})
        members.add(path)

    def render(node: dict[str, Any], path: FieldPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if node and path in members:
            out['.'] = {}
        for pe in sorted(node, key=_pe_order):
            out[pe] = render(node[pe], path + (pe,))
        return out
    return render(trie, ())


def from_fields_v1(fields: Any, path: FieldPath = ()) -> set[FieldPath]:
    out: set[FieldPath] = set()
    if not isinstance(fields, dict):
        return out
    for key, child in fields.items():
        if key == '.':
            out.add(path)
        elif not child:
            out.add(path + (key,))
        else:
            out |= from_fields_v1(child, path + (key,))
    return out


@dataclasses.dataclass
class ManagedEntry:
    manager: str
    operation: str  # 'Apply' | 'Update'
    api_version: str
    time: str | None
    fields: set[FieldPath]
    subresource: str = ''

    @property
    def key(self) -> tuple[str, str, str]:
        return self.manager, self.operation, self.subresource

    def render(self) -> dict[str, Any]:
        entry: dict[str, Any] = {'manager': self.manager, 'operation': self.operation, 'apiVersion': self.api_version}
        if self.time is not None:
            entry['time'] = self.time
        entry['fieldsType'] = 'FieldsV1'
        entry['fieldsV1'] = to_fields_v1(self.fields)
        if self.subresource:
            entry['subresource'] = self.subresource
        return entry


def read_managed_fields(obj: Mapping[str, Any]) -> list[ManagedEntry]:
    entries = []
    for raw in (obj.get('metadata') or {}).get('managedFields') or []:
        if isinstance(raw, dict) and raw.get('manager') is not None and raw.get('operation') in ('Apply', 'Update'):
            entries.append(ManagedEntry(raw['manager'], raw['operation'], raw.get('apiVersion', ''), raw.get('time'),
                                        from_fields_v1(raw.get('fieldsV1')), raw.get('subresource') or ''))
    return entries


def render_managed_fields(entries: Iterable[ManagedEntry]) -> list[dict[str, Any]]:
    """Sorted as the apiserver encodes them: by operation, time, manager, apiVersion, subresource."""
    ordered = sorted((e for e in entries if e.fields),
                     key=lambda e: (e.operation, e.time or '', e.manager, e.api_version, e.subresource))
    return [e.render() for e in ordered]


def _without(obj: Any, *keys: str) -> Any:
    if not isinstance(obj, dict):
        return obj
    meta = {k: v for k, v in (obj.get('metadata') or {}).items() if k not in keys}
    return dict(obj, metadata=meta)


def _drop_ignored(paths: set[FieldPath], ignored: Callable[[FieldPath], bool]) -> set[FieldPath]:
    return {p for p in paths if p not in _STRIPPED and not ignored(p)}


def update_managed_fields(old: Any, new: dict[str, Any], node: TypeNode, entries: list[ManagedEntry], *,
                          manager: str, api_version: str, subresource: str,
                          ignored: Callable[[FieldPath], bool], now: str) -> list[ManagedEntry]:
    """An Update operation (create, PUT, merge/strategic/JSON patch): the manager gains what it changed,
    everyone loses what changed or disappeared (conflicts are forced)."""
    added, modified, removed = compare_fields(_without(old, 'managedFields'), _without(new, 'managedFields'), node)
    changed = _drop_ignored(added | modified, ignored)
    removed = _drop_ignored(removed, ignored)
    entries = [dataclasses.replace(e, fields=set(e.fields)) for e in entries]
    for entry in entries:
        entry.fields -= changed
        entry.fields -= removed
    if changed:
        key = (manager, 'Update', subresource)
        entry = next((e for e in entries if e.key == key), None)
        if entry is None:
            entry = ManagedEntry(manager, 'Update', api_version, now, set(), subresource)
            entries.append(entry)
        entry.fields |= changed
        entry.time, entry.api_version = now, api_version
    return [e for e in entries if e.fields]


def _ssa_merge(live: Any, config: Any, node: TypeNode) -> Any:
    """Merge an applied configuration into the live object (typed.Merge): maps merge, keyed lists
    merge by key, atomic lists and scalars are replaced; a ``null`` removes."""
    if config is ABSENT:
        return live
    if config is None:
        return ABSENT
    if _is_leaf(node, config) or not isinstance(config, (dict, list)):
        return _json_copy(config)
    if isinstance(config, dict):
        out = dict(live) if isinstance(live, dict) else {}
        for key, item in config.items():
            child, _ = _child_type(node, key)
            merged = _ssa_merge(out.get(key, ABSENT), item, child)
            if merged is ABSENT:
                out.pop(key, None)
            else:
                out[key] = merged
        return out
    left = live if isinstance(live, list) else []
    lpe = [_item_pe(item, node) for item in left]
    rpe = [_item_pe(item, node) for item in config]
    lidx, rset = dict(zip(lpe, left)), set(rpe)
    elem = node.elem or ANY
    out_list: list[Any] = []
    done: set[str] = set()
    i = j = 0
    while i < len(left) or j < len(config):
        if i < len(left) and lpe[i] in done:
            i += 1
        elif j < len(config) and rpe[j] in done:
            j += 1
        elif i < len(left) and (j >= len(config) or (lpe[i] != rpe[j] and lpe[i] not in rset)):
            out_list.append(left[i])
            done.add(lpe[i])
            i += 1
        else:
            merged = config[j] if node.set_ else _ssa_merge(lidx.get(rpe[j], ABSENT), config[j], elem)
            if merged is not ABSENT:
                out_list.append(merged)
            done.add(rpe[j])
            j += 1
    return out_list


def _remove_path(obj: Any, path: FieldPath, node: TypeNode) -> None:
    target, tnode = obj, node
    for pe in path[:-1]:
        if pe.startswith('f:') and isinstance(target, dict):
            tnode = _child_type(tnode, pe[2:])[0]
            target = target.get(pe[2:])
        elif pe[:2] in ('k:', 'v:') and isinstance(target, list):
            target = next((item for item in target if _item_pe(item, tnode) == pe), None)
            tnode = tnode.elem or ANY
        else:
            return
        if target is None:
            return
    last = path[-1]
    if last.startswith('f:') and isinstance(target, dict):
        target.pop(last[2:], None)
    elif last[:2] in ('k:', 'v:') and isinstance(target, list):
        target[:] = [item for item in target if _item_pe(item, tnode) != last]


def apply_configuration(live: Any, config: dict[str, Any], node: TypeNode, entries: list[ManagedEntry], *,
                        manager: str, api_version: str, subresource: str, force: bool,
                        ignored: Callable[[FieldPath], bool], now: str,
                        ) -> tuple[dict[str, Any], list[ManagedEntry], dict[tuple[str, str, str], set[FieldPath]]]:
    """Server-side apply: returns (the merged object, the new entries, conflicts by manager key).
    The caller refuses the apply when there are conflicts and ``force`` is false."""
    applied = _drop_ignored(field_set(config, node), ignored)
    entries = [dataclasses.replace(e, fields=set(e.fields)) for e in entries]
    key = (manager, 'Apply', subresource)
    mine = next((e for e in entries if e.key == key), None)
    others = [e for e in entries if e is not mine]
    merged = _ssa_merge(live, config, node)
    merged = {} if merged is ABSENT else merged
    if mine is not None:  # prune: what this manager applied before, omits now, and nobody else owns
        owned = applied.union(*(e.fields for e in others))
        removed_paths: list[FieldPath] = []
        for path in sorted(mine.fields - owned, key=len):
            if any(path[:len(gone)] == gone for gone in removed_paths):
                continue  # its parent is gone already
            if not any(p[:len(path)] == path and len(p) > len(path) for p in owned):
                _remove_path(merged, path, node)
                removed_paths.append(path)
    added, modified, removed = compare_fields(_without(live, 'managedFields'), _without(merged, 'managedFields'), node)
    changed = _drop_ignored(added | modified, ignored)
    removed = _drop_ignored(removed, ignored)
    conflicts = {e.key: e.fields & changed for e in others if e.fields & changed}
    for entry in others:
        entry.fields -= changed
        entry.fields -= removed
    if mine is None:
        mine = ManagedEntry(manager, 'Apply', api_version, now, set(), subresource)
        entries.append(mine)
    if mine.fields != applied or changed or removed:
        mine.time = now
    mine.fields, mine.api_version = applied, api_version
    return merged, [e for e in entries if e.fields], conflicts


def _format_path(path: FieldPath) -> str:
    """``.spec.replicas``, ``.spec.template.spec.containers[name="model"].image`` (conflict messages)."""
    out = ''
    for pe in path:
        if pe.startswith('f:'):
            out += '.' + pe[2:]
        elif pe.startswith('k:'):
            out += '[' + ','.join(f'{k}={json.dumps(v)}' for k, v in json.loads(pe[2:]).items()) + ']'
        else:
            out += f'[={pe[2:]}]'
    return out


# ----------------------------------------------------------------------------------------------
# Patches: strategic merge (builtins only) and the patched document as the apiserver prints it.
# ----------------------------------------------------------------------------------------------

def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith('$')}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and '$patch' in v and len(v) == 1)]
    return value


def strategic_merge(original: Any, patch: Any, node: TypeNode) -> Any:
    """Strategic merge patch: maps merge (``null`` deletes, ``$patch: replace|delete``, ``$retainKeys``,
    ``$deleteFromPrimitiveList/<field>``); lists with a patchMergeKey (containers, env, ports,
    volumes, volumeMounts, conditions, ownerReferences, ...) merge by that key (``$patch: delete``
    items, ``$patch: replace`` lists); finalizers merge as a set; every other list is replaced.
    ``$setElementOrder`` is accepted and ignored (the order of the merge is kept)."""
    if not isinstance(patch, dict):
        return _strip_directives(patch)
    directive = patch.get('$patch')
    if directive == 'replace':
        return _strip_directives(patch)
    if directive == 'delete':
        return ABSENT
    result = dict(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key.startswith('$deleteFromPrimitiveList/'):
            field = key.split('/', 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
            continue
        if key.startswith('$'):
            continue
        if value is None:
            result.pop(key, None)
            continue
        child, _ = _child_type(node, key)
        current = result.get(key, ABSENT)
        if isinstance(value, dict):
            merged = strategic_merge(current if isinstance(current, dict) else {}, value, child)
            if merged is ABSENT:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and child.kind == 'list' and child.smp:
            result[key] = _strategic_merge_list(current if isinstance(current, list) else [], value, child)
        else:
            result[key] = _strip_directives(value)
    if isinstance(patch.get('$retainKeys'), list):
        keep = set(patch['$retainKeys'])
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _strategic_merge_list(original: list[Any], patch: list[Any], node: TypeNode) -> list[Any]:
    if any(isinstance(item, dict) and item.get('$patch') == 'replace' for item in patch):
        return _strip_directives([item for item in patch if not (isinstance(item, dict) and '$patch' in item)])
    if node.smp == '$primitive':
        return list(original) + [item for item in patch if item not in original]
    key = node.smp
    result = [copy.deepcopy(item) for item in original]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            result.append(_strip_directives(item))
            continue
        index = next((i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get('$patch') == 'delete':
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = strategic_merge(result[index], item, node.elem or ANY)
    return result


class _SortedDict(dict):  # type: ignore[type-arg]
    """A JSON object that Go re-marshalled from a map: its keys come out sorted."""


def _patched_document(doc: Any, patch: Any) -> Any:
    """The document evanphx/json-patch's MergePatch produces, key order included: the nodes it parsed
    (the path of the patch, the values it placed) are re-marshalled with sorted keys; the rest keeps
    the original (Go struct) order. This is what the apiserver embeds in "patch: Invalid value"."""
    def parsed(value: Any) -> Any:
        if isinstance(value, dict):
            return _SortedDict((k, parsed(v)) for k, v in value.items() if v is not None)
        if isinstance(value, list):
            return [parsed(v) for v in value]
        return value

    if not isinstance(doc, dict):
        return parsed(patch)
    if not isinstance(patch, dict):
        return patch
    out = _SortedDict(doc)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key not in out or out[key] is None:
            out[key] = parsed(value)
        else:
            out[key] = _patched_document(out[key], value)
    return out


def go_json(value: Any) -> str:
    """Compact JSON as Go's encoding/json writes it (HTML characters escaped; _SortedDict sorted)."""
    def encode(v: Any) -> str:
        if isinstance(v, _SortedDict):
            return '{' + ','.join(f'{encode(k)}:{encode(v[k])}' for k in sorted(v)) + '}'
        if isinstance(v, dict):
            return '{' + ','.join(f'{encode(k)}:{encode(item)}' for k, item in v.items()) + '}'
        if isinstance(v, list):
            return '[' + ','.join(encode(item) for item in v) + ']'
        if isinstance(v, float):
            return _go_number(v)
        text = json.dumps(v, ensure_ascii=False)
        return text.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026') \
            .replace('\u2028', '\\u2028').replace('\u2029', '\\u2029')
    return encode(value)


# ----------------------------------------------------------------------------------------------
# Custom resources: the CRD's structural schema (pruning, defaulting, validation, CEL rules).
# ----------------------------------------------------------------------------------------------

def crd_type(schema: Mapping[str, Any] | None) -> TypeNode:
    """A CRD's openAPIV3Schema node as a TypeNode (for field sets, merges and typed checks)."""
    schema = schema or {}
    if schema.get('x-kubernetes-int-or-string'):
        return TypeNode('scalar', scalar='ios', schema=dict(schema))
    kind = schema.get('type')
    if kind == 'object' or 'properties' in schema or 'additionalProperties' in schema:
        atomic = schema.get('x-kubernetes-map-type') == 'atomic'
        if schema.get('properties'):
            node = TypeNode('struct', name='object', atomic=atomic, schema=dict(schema),
                            deduced=bool(schema.get('x-kubernetes-preserve-unknown-fields')))
            for name, child in schema['properties'].items():
                node.fields[name] = (crd_type(child), 'ptr')
            return node
        if isinstance(schema.get('additionalProperties'), dict):
            return TypeNode('map', elem=crd_type(schema['additionalProperties']), atomic=atomic, schema=dict(schema))
        return TypeNode('any', deduced=True, schema=dict(schema))
    if kind == 'array':
        list_type = schema.get('x-kubernetes-list-type', 'atomic')
        keys = tuple(schema.get('x-kubernetes-list-map-keys') or ()) if list_type == 'map' else None
        return TypeNode('list', elem=crd_type(schema.get('items')), keys=keys, set_=list_type == 'set',
                        schema=dict(schema))
    if kind in ('string', 'integer', 'number', 'boolean'):
        return TypeNode('scalar', scalar={'string': 'string', 'integer': 'int64', 'number': 'number',
                                          'boolean': 'bool'}[kind], schema=dict(schema))
    return TypeNode('any', deduced=True, schema=dict(schema))


@dataclasses.dataclass
class CustomResource:
    """One served version of a CRD."""
    resource: kmock.resource
    kind: str
    crd_name: str
    namespaced: bool
    schema: dict[str, Any]  # openAPIV3Schema
    node: TypeNode  # the whole object: TypeMeta + ObjectMeta + the schema's properties
    status: bool  # the status subresource
    scale: dict[str, Any] | None  # the scale subresource


def custom_resources(crd: Mapping[str, Any]) -> list[CustomResource]:
    spec = crd.get('spec') or {}
    names = spec.get('names') or {}
    out = []
    for version in spec.get('versions') or []:
        if not version.get('served', True):
            continue
        schema = ((version.get('schema') or {}).get('openAPIV3Schema')) or {'type': 'object',
                                                                            'x-kubernetes-preserve-unknown-fields': True}
        node = crd_type(schema)
        if node.kind != 'struct':
            node = TypeNode('struct', name='object', deduced=True, schema=dict(schema))
        top = _object(names.get('kind', 'Object'))
        for name, field in node.fields.items():
            if name not in ('apiVersion', 'kind', 'metadata'):
                top.fields[name] = field
        top.deduced, top.schema = node.deduced, dict(schema)
        subresources = version.get('subresources') or {}
        out.append(CustomResource(
            resource=kmock.resource(spec.get('group', ''), version.get('name', ''), names.get('plural', '')),
            kind=names.get('kind', ''), crd_name=(crd.get('metadata') or {}).get('name', ''),
            namespaced=spec.get('scope', 'Namespaced') == 'Namespaced', schema=dict(schema), node=top,
            status='status' in subresources, scale=subresources.get('scale')))
    return out


def crd_prune(value: Any, schema: Mapping[str, Any] | None, path: str, unknown: list[str]) -> Any:
    """Drop fields the schema does not declare (unless x-kubernetes-preserve-unknown-fields) and
    ``null`` values of non-nullable fields; ``unknown`` collects the dropped paths (for warnings)."""
    if schema is None:
        return value
    if isinstance(value, dict):
        props = schema.get('properties')
        additional = schema.get('additionalProperties')
        preserve = schema.get('x-kubernetes-preserve-unknown-fields')
        out = {}
        for key, item in value.items():
            child = (props or {}).get(key) if props is not None else None
            if child is None and isinstance(additional, dict):
                child = additional
            if child is None and props is not None and not preserve and additional is not True:
                unknown.append(f'{path}.{key}'.lstrip('.'))
                continue
            if item is None and child is not None and not child.get('nullable'):
                continue
            out[key] = crd_prune(item, child, f'{path}.{key}', unknown) if child is not None else item
        return out
    if isinstance(value, list) and isinstance(schema.get('items'), dict):
        return [crd_prune(item, schema['items'], f'{path}[{index}]', unknown) for index, item in enumerate(value)]
    return value


def crd_default(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """Structural defaulting: absent properties with a default get it (recursively)."""
    if schema is None:
        return value
    if isinstance(value, dict):
        for key, child in (schema.get('properties') or {}).items():
            if key not in value and 'default' in child:
                value[key] = _json_copy(child['default'])
        for key, item in list(value.items()):
            child = (schema.get('properties') or {}).get(key)
            if child is None and isinstance(schema.get('additionalProperties'), dict):
                child = schema['additionalProperties']
            if child is not None:
                value[key] = crd_default(item, child)
    elif isinstance(value, list) and isinstance(schema.get('items'), dict):
        return [crd_default(item, schema['items']) for item in value]
    return value


_JSON_TYPES = {'string': (str,), 'integer': (int,), 'number': (int, float), 'boolean': (bool,), 'object': (dict,),
               'array': (list,)}


def _schema_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return 'boolean'
    if isinstance(value, int):
        return 'integer'
    if isinstance(value, float):
        return 'number'
    if isinstance(value, str):
        return 'string'
    return 'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else 'null'


def crd_validate(value: Any, schema: Mapping[str, Any] | None, path: str, old: Any = ABSENT) -> list[FieldError]:
    """OpenAPI v3 validation as the apiserver words it (kube-openapi), plus the CEL rules."""
    errors: list[FieldError] = []
    if schema is None or value is None:
        return errors
    where = path.lstrip('.')
    kind = schema.get('type')
    if schema.get('x-kubernetes-int-or-string'):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(FieldError(where, 'TypeInvalid', _schema_type_name(value),
                                     f'{where} in body must be of type integer,string: {_go_quote(_schema_type_name(value))}'))
            return errors
    elif kind in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[kind]) and not (kind in ('integer', 'number') and isinstance(value, bool))
        if kind == 'integer' and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            errors.append(FieldError(where, 'TypeInvalid', _schema_type_name(value),
                                     f'{where} in body must be of type {kind}: {_go_quote(_schema_type_name(value))}'))
            return errors
    if 'enum' in schema and value not in schema['enum']:
        supported = ', '.join(_go_value(v) for v in schema['enum'])
        errors.append(FieldError(where, 'NotSupported', value, f'supported values: {supported}'))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if 'minimum' in schema:
            if schema.get('exclusiveMinimum') and value <= schema['minimum']:
                errors.append(FieldError(where, 'Invalid', value,
                                         f'{where} in body should be greater than {_go_number(schema["minimum"])}'))
            elif value < schema['minimum']:
                errors.append(FieldError(where, 'Invalid', value, f'{where} in body should be greater than or equal '
                                                                  f'to {_go_number(schema["minimum"])}'))
        if 'maximum' in schema:
            if schema.get('exclusiveMaximum') and value >= schema['maximum']:
                errors.append(FieldError(where, 'Invalid', value,
                                         f'{where} in body should be less than {_go_number(schema["maximum"])}'))
            elif value > schema['maximum']:
                errors.append(FieldError(where, 'Invalid', value, f'{where} in body should be less than or equal '
                                                                  f'to {_go_number(schema["maximum"])}'))
    if isinstance(value, str):
        if 'maxLength' in schema and len(value) > schema['maxLength']:
            errors.append(FieldError(where, 'TooLong', value, f'may not be longer than {schema["maxLength"]}'))
        if 'minLength' in schema and len(value) < schema['minLength']:
            errors.append(FieldError(where, 'Invalid', value,
                                     f'{where} in body should be at least {schema["minLength"]} chars long'))
        if 'pattern' in schema and not re.search(schema['pattern'], value):
            errors.append(FieldError(where, 'Invalid', value, f"{where} in body should match '{schema['pattern']}'"))
    if isinstance(value, list):
        if 'maxItems' in schema and len(value) > schema['maxItems']:
            errors.append(FieldError(where, 'TooMany', value, f'{len(value)}: must have at most {schema["maxItems"]} items'))
        if 'minItems' in schema and len(value) < schema['minItems']:
            errors.append(FieldError(where, 'Invalid', len(value),
                                     f'{where} in body should have at least {schema["minItems"]} items'))
        if isinstance(schema.get('items'), dict):
            for index, item in enumerate(value):
                errors += crd_validate(item, schema['items'], f'{path}[{index}]')
    if isinstance(value, dict):
        for name in schema.get('required') or []:
            if name not in value:
                errors.append(FieldError(f'{path}.{name}'.lstrip('.'), 'Required'))
        props = schema.get('properties') or {}
        additional = schema.get('additionalProperties')
        for key, item in value.items():
            child = props.get(key) or (additional if isinstance(additional, dict) else None)
            if child is not None:
                before = old.get(key, ABSENT) if isinstance(old, dict) else ABSENT
                errors += crd_validate(item, child, f'{path}.{key}', before)
        if 'maxProperties' in schema and len(value) > schema['maxProperties']:
            errors.append(FieldError(where, 'TooMany', value, f'{len(value)}: must have at most '
                                                              f'{schema["maxProperties"]} items'))
    if not errors:
        errors += _cel_errors(value, schema, where, old)
    return errors


_CEL_ESCAPES = set('abfnrtv\\\'"`?')


def cel_syntax_error(rule: str) -> str | None:
    """The escape sequences cel-go refuses in string literals (e.g. ``'\\S'`` in a regex: write ``'\\\\S'``)."""
    i = 0
    while i < len(rule):
        ch = rule[i]
        if ch in '\'"':
            raw = i > 0 and rule[i - 1] in 'rR' and (i < 2 or not (rule[i - 2].isalnum() or rule[i - 2] == '_'))
            quote = rule[i:i + 3] if rule[i:i + 3] in ("'''", '"""') else ch
            j = i + len(quote)
            while j < len(rule) and rule[j:j + len(quote)] != quote:
                if rule[j] == '\\' and not raw:
                    nxt = rule[j + 1:j + 2]
                    if nxt in _CEL_ESCAPES:
                        j += 2
                        continue
                    if nxt in ('x', 'u', 'U') or nxt.isdigit():
                        j += 2
                        continue
                    return f"ERROR: <input>:1:{j + 1}: Syntax error: token recognition error at: '\\{nxt}'"
                j += 1
            i = j + len(quote)
        else:
            i += 1
    return None


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str) -> Any:
    if celpy is None or cel_syntax_error(rule):
        return None
    try:
        environment = celpy.Environment()
        return environment.program(environment.compile(rule))
    except Exception:  # noqa: BLE001 -- a rule cel-python cannot handle is not evaluated
        return None


def _conformant_cel_errors(schema: Mapping[str, Any], body: dict[str, Any]) -> list[FieldError]:
    """Every CEL rule ``body`` breaks, by cel-rust (as ``tests/unit/cel_helpers`` evaluates them)."""
    from tests.unit.cel_helpers import cel_errors  # noqa: PLC0415 -- the tests' conformant CEL

    errors = []
    for text in cel_errors(_json_copy(dict(schema)), _json_copy(body)):
        where, _, detail = text.partition(': ')
        errors.append(FieldError('' if where == '<root>' else where, 'Invalid', ABSENT, detail))
    return errors


def _cel_errors(value: Any, schema: Mapping[str, Any], where: str, old: Any) -> list[FieldError]:
    errors = []
    for rule in schema.get('x-kubernetes-validations') or []:
        text = rule.get('rule', '')
        if 'oldSelf' in text and old is ABSENT:
            continue  # a transition rule: only on updates
        program = _cel_program(text)
        if program is None:
            continue
        try:
            activation = {'self': celpy.json_to_cel(value)}
            if 'oldSelf' in text:
                activation['oldSelf'] = celpy.json_to_cel(old)
            result = program.evaluate(activation)
        except Exception:  # noqa: BLE001 -- evaluation errors: not judged here
            continue
        if not (result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result))):
            message = rule.get('message') or f'failed rule: {text}'
            errors.append(FieldError(where, 'Invalid', schema.get('type', 'object'), message))
    return errors


def crd_schema_errors(crd: Mapping[str, Any]) -> list[FieldError]:
    """What the apiserver refuses in a CRD that matters here: CEL rules that do not compile."""
    errors: list[FieldError] = []

    def walk(schema: Any, path: str) -> None:
        if not isinstance(schema, dict):
            return
        for index, rule in enumerate(schema.get('x-kubernetes-validations') or []):
            if (problem := cel_syntax_error(rule.get('rule', ''))) is not None:
                errors.append(FieldError(f'{path}.x-kubernetes-validations[{index}].rule', 'Invalid',
                                         _GoRepr(f'apiextensions.ValidationRule{{Rule:{_go_quote(rule.get("rule", ""))}, '
                                                 f'Message:{_go_quote(rule.get("message", ""))}}}'),
                                         f'compilation failed: {problem}'))
        for name, child in (schema.get('properties') or {}).items():
            walk(child, f'{path}.properties[{name}]')
        walk(schema.get('items'), f'{path}.items')
        if isinstance(schema.get('additionalProperties'), dict):
            walk(schema['additionalProperties'], f'{path}.additionalProperties')

    for index, version in enumerate((crd.get('spec') or {}).get('versions') or []):
        walk((version.get('schema') or {}).get('openAPIV3Schema'), f'spec.versions[{index}].schema.openAPIV3Schema')
    return errors


def load_yaml_1_1(text: str) -> Any:
    """YAML as the apiserver's (go-yaml v2) parser reads it: YAML 1.1 booleans include y/Y/n/N/yes/on/..."""
    class Loader(yaml.SafeLoader):
        pass
    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(
        'tag:yaml.org,2002:bool',
        re.compile(r'^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$'),
        list('yYnNtTfFoO'))

    def construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
        return loader.construct_scalar(node).lower() in ('y', 'yes', 'true', 'on')
    Loader.add_constructor('tag:yaml.org,2002:bool', construct_bool)
    return yaml.load(text, Loader=Loader)  # noqa: S506 -- a SafeLoader subclass


# ----------------------------------------------------------------------------------------------
# The emulator.
# ----------------------------------------------------------------------------------------------

_WARNED: set[str] = set()
_CURRENT_REQUEST: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar('kmock_request', default=None)
_NAMESPACE_PATH = re.compile(r'^/api/v1/namespaces(?:/([^/]+)(?:/(status|finalize))?)?/?$')
_BUILTIN_GROUPS = {'', 'apps', 'batch', 'policy', 'autoscaling'}
_UNKNOWN_FORMAT = ('the body of the request was in an unknown format - accepted media types include: '
                   'application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml')
_NOT_FOUND_URL = 'the server could not find the requested resource'
_JSON_PATCH_FAILED = 'the server rejected our request due to an error in our request'


async def _parse_request(raw_request: aiohttp.web.BaseRequest, *, id: int = 0) -> kmock.Request:
    """kmock's Request._parse, but ``/api/v1/namespaces[/name[/status|finalize]]`` are the namespaces
    resource (kmock's parser takes "namespaces" for a namespace path and fails with a 500)."""
    body = await raw_request.read()
    text = await raw_request.text()
    try:
        data = await raw_request.json()
    except ValueError:
        try:
            data = await raw_request.post() or None
        except ValueError:
            data = None
    if m := _NAMESPACE_PATH.match(raw_request.path):
        k8s = _kmock_parsing.ParsedPath('', 'v1', 'namespaces', None, m.group(1), m.group(2))
    else:
        try:
            k8s = _kmock_parsing.parse_path(raw_request.path)
        except ValueError:  # e.g. a truncated namespaced path
            k8s = _kmock_parsing.ParsedPath()
    resource = None if k8s.group is None else _kmock_references.resource(
        group=k8s.group, version=k8s.version, plural=k8s.plural)
    method = kmock.method(raw_request.method)
    action = _kmock_parsing.guess_k8s(k8s, method, dict(raw_request.query))
    return _kmock_rendering.Request(
        id=id, raw_request=raw_request, url=raw_request.url, method=raw_request.method,
        params=dict(raw_request.query), headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
        data=data, body=body, text=text, action=action, resource=resource, namespace=k8s.namespace,
        name=k8s.name, subresource=k8s.subresource,
    )


@dataclasses.dataclass
class _Target:
    """What the emulator knows about the resource of a request."""
    resource: kmock.resource
    kind: str
    namespaced: bool
    builtin: bool
    node: TypeNode
    custom: CustomResource | None
    has_status: bool
    generation: bool

    @property
    def group(self) -> str:
        return self.resource.group

    @property
    def api_version(self) -> str:
        return _api_version(self.resource)

    def key(self, namespace: str | None, name: str) -> tuple[kmock.resource, str | None, str]:
        return self.resource, namespace if self.namespaced else None, name


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """
    ``kmock.KubernetesEmulator`` with the API-server semantics slotkeeper relies on, checked against
    a recording of a real kube-apiserver 1.28.7 by ``tests/contract`` (which also runs on a real
    cluster). All other KMock features -- ``kmock[...] << ...`` reactions, ``kmock.objects``,
    request history -- work as documented.

    Objects:

    * Stored as the apiserver answers them: builtins in Go's JSON (zero values, ``omitempty``, key
      order; quantities canonical: ``0.5`` -> ``500m``), custom resources with sorted keys.
      ``uid``, ``creationTimestamp``, ``resourceVersion`` (a global counter), ``generation``
      (workloads and custom resources only: +1 on spec changes; for custom resources on any change
      outside metadata/status), ``generateName``; ``namespace``/``apiVersion``/``kind`` from the URL.
    * Defaulting: Services (record 1: type, sessionAffinity, internalTrafficPolicy, ports' protocol
      and targetPort; a ClusterIP is allocated), Deployments and pod templates (record 12), Pods,
      Namespaces (the ``kubernetes.io/metadata.name`` label); the deprecated ``serviceAccount``
      twin of ``serviceAccountName`` refills it (records 13, 14, 19). Custom resources: pruning of
      unknown fields and defaults from the CRD's structural schema (records 22, 23, 25).
    * Validation: Go decoding errors (an invalid quantity: 400 on create, 422 with the whole patched
      object in the message on a patch -- records 15, 16), Deployments (replicas >= 0, selector
      present, matching and immutable, containers with names and images), Services (ports), object
      names and labels, the CRD's OpenAPI schema and its CEL rules (cel-python; records 27).
      A CRD created through the API with a CEL rule that cel-go would not compile is refused (422).
    * Status bodies as the apiserver's: 404/409/422/400/403/415/500 (records 7-11, 15-17, 20, 27, 34, 42).

    Writes:

    * PATCH by Content-Type: merge (RFC 7386); strategic merge (builtins only, 415 for custom
      resources, as on a real server): maps merge, ``$patch: replace|delete``, ``$retainKeys``,
      ``$deleteFromPrimitiveList``, and lists keyed by their patchMergeKey (containers, env, ports,
      volumes, volumeMounts, conditions, ownerReferences, ...; finalizers as a set), other lists
      replaced; JSON patch (RFC 6902; any failure -> 422 with the recorded Status, record 7);
      server-side apply (below). PUT replaces. A ``metadata.resourceVersion`` that differs from the
      stored one -> 409. ``?dryRun=All`` answers without storing.
    * A write that changes nothing (after defaulting) keeps the resourceVersion and sends no watch
      event (records 2, 8, 14). ``/status`` writes change only the status (builtins: also
      annotations), main-resource writes never the status (records 23, 24).
    * ``metadata.managedFields``: every write records its manager (``?fieldManager=``, else the
      User-Agent up to the first "/": ``Python-urllib``, ``kopf``, ``OpenAPI-Generator``, ``kmock``)
      with the field set structured-merge-diff would compute (``Update`` entries on create/patch/
      PUT, ``Apply`` entries for server-side apply), times updated only when something changed.
    * Server-side apply (``application/apply-patch+yaml``, ``?fieldManager=...&force=true``):
      JSON bodies, else YAML read as the apiserver does (YAML 1.1: ``y`` is a boolean, so a label
      value ``y`` fails with the recorded 500, record 20); creates when missing (201); merges maps,
      lists keyed as listed above for SSA (containers/env/volumes/initContainers by name, ports by
      containerPort+protocol / port+protocol, volumeMounts by mountPath, conditions by type,
      ownerReferences by uid; finalizers as a set); every other list is atomic; removes what the
      same manager applied before and omits now unless another manager owns it; conflicts with
      other managers -> 409 unless ``force=true`` (then taken over). Approximation: builtin fields
      not described in this module's types are merged like untyped maps.
    * DELETE: with finalizers, 200 with ``deletionTimestamp`` set (generation +1 where there is
      one) and the object kept; spec writes still accepted; removing the last finalizer deletes it
      (records 30-34). Without finalizers: gone at once; the answer is the object for pods,
      services and namespaces, a ``Status`` Success for the others (record 37). Propagation:
      Background (default), Foreground, Orphan; preconditions. Garbage collection of objects all
      of whose owners are gone happens right after the answer (the real GC is asynchronous:
      tests must poll; records 38, 39).
    * Namespaces: ``default``, ``kube-system``, ``kube-public``, ``kube-node-lease`` exist; they can
      be listed, watched, created and deleted (records 0, 46): creating an object in a missing
      namespace -> 404, in a terminating one -> 403; deleting a namespace deletes its content, then
      the namespace.
    * CRDs created through the API become served resources with their schema (discovery included).

    Reads:

    * Lists report the current resourceVersion (items without kind/apiVersion for builtins, as
      the apiserver lists them); a watch with ``?resourceVersion=N`` replays only the events after N
      (from an event log); without it, the current objects as ADDED first. The watch subscribes
      before it snapshots (no lost events). ``timeoutSeconds`` ends a watch.
    * ``labelSelector`` (=, ==, !=, in, notin, exists, !key) and ``fieldSelector`` (=, ==, !=;
      metadata.name/namespace everywhere, plus what each resource accepts -- events:
      involvedObject.*, reason, source, type, reportingComponent; pods: spec.nodeName, status.phase,
      ...; anything else -> 400 with the apiserver's message, record 42) on list & watch. A watched
      object that starts/stops matching the selector arrives as ADDED/DELETED (as from the
      apiserver's watch cache).
    * ``/scale`` of Deployments (GET, PATCH, PUT; record 21). A write there records its manager with
      ``subresource: scale`` owning ``spec.replicas``, as an autoscaler's write does (``Kube.scale``
      plays the HPA controller's; ``tests/contract`` pins what that does to a later apply).
    * :meth:`changes`: every stored change of a resource, in resourceVersion order across resources,
      for tests that must know what an object looked like at the moment another one changed.

    HorizontalPodAutoscalers (autoscaling/v2) and PodDisruptionBudgets (policy/v1) come from the
    bundled builtins: stored as written, typed as untyped maps (so server-side apply merges their
    lists atomically, as the real types' ``listType=atomic`` lists are), without the apiserver's
    defaulting (an HPA's minReplicas, a behavior's policies) or validation of their own.

    Not emulated: controllers (Deployments and Pods get no status by themselves:
    ``Kube.set_deployment_status``, ``Kube.create_pod``), admission webhooks, RBAC, pagination,
    bookmarks, the watch cache's 410 Gone.

    :meth:`fail` injects API errors that are answered *before* the store is touched; native
    ``kmock[...] << 409`` reactions still answer *after* the store has been changed (that is how
    KMock works).
    """
    status_subresource: bool = True
    garbage_collection: bool = True
    initial_namespaces: tuple[str, ...] = ('default', 'kube-system', 'kube-public', 'kube-node-lease')
    require_namespaces: bool = True  # 404 for objects in a namespace that does not exist
    # False: custom resources are not validated against their CRD's schema and CEL rules (pruning and
    # defaulting still happen) -- like an apiserver with an old CRD that lacks the rules. For tests of
    # the operator's own validation, e.g. ``@pytest.mark.kmock(validate_custom_resources=False)``.
    validate_custom_resources: bool = True
    # API groups whose custom resources also get every CEL rule of their CRD evaluated by the
    # conformant implementation (cel-rust, ``tests/unit/cel_helpers``) on writes of the object (not of
    # its status). cel-python, which evaluates CEL rules otherwise, is optional and often absent.
    # ``controllers.install_gateway_api`` adds the Gateway API group.
    conformant_cel_groups: set[str] = attrs.field(factory=set)
    # The proxy subresource (``services/<name>:<port>/proxy/...``, ``pods/<name>:<port>/proxy/...``):
    # (namespace, plural, "<name>:<port>") -> a base URL the request is forwarded to. A target not
    # listed answers as the apiserver does for a Service without ready endpoints (503).
    proxy_backends: dict[tuple[str | None, str, str], str] = attrs.field(factory=dict)

    _rv_counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _event_log: dict[kmock.resource, list[tuple[int, dict[str, Any], dict[str, Any] | None]]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False)
    _watchers: collections.Counter[tuple[kmock.resource, str | None]] = attrs.field(
        factory=collections.Counter, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    crd_problems: list[str] = attrs.field(factory=list, init=False)  # what a real apiserver refuses in installed CRDs
    _answers: dict[int, tuple[int, Any, dict[str, str]]] = attrs.field(factory=dict, init=False)
    _custom: dict[kmock.resource, CustomResource] = attrs.field(factory=dict, init=False)
    _doomed: list[tuple[kmock.resource, str | None, str]] = attrs.field(factory=list, init=False)
    _terminating: set[str] = attrs.field(factory=set, init=False)
    _gc_due: bool = attrs.field(default=False, init=False)
    _next_ip: Iterator[int] = attrs.field(factory=lambda: itertools.count(int(ipaddress.IPv4Address('10.96.0.10'))),
                                          init=False)
    _next_node_port: Iterator[int] = attrs.field(factory=lambda: itertools.count(30000), init=False)
    _previous: Mapping[str, Any] | None = attrs.field(default=None, init=False)
    # What is stored and what events carry is a copy of the object written: nothing a caller (a test)
    # does to what it passed or got changes what is stored. The benchmark's double, whose writers never
    # change an object once stored, shares them instead (benchmarks/operator/apidouble.py).
    _snapshot: ClassVar[Callable[[Any], Any]] = staticmethod(_json_copy)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback[kmock.method.DELETE] << self._serve_answer  # DELETE of a collection
        self.fallback[kmock.method.POST] << self._serve_answer
        for name in self.initial_namespaces:
            self._store_direct(NAMESPACES, None, {
                'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': name},
            }, manager='kube-apiserver')

    # ---- public API ------------------------------------------------------------------------

    def fail(self, *criteria: Any, status: int = 409, times: int | None = 1,
             reason: str | None = None, message: str | None = None,
             delay: float = 0.0, after_write: bool = False) -> Fault:
        """
        Answer the matching requests with a K8s ``Status`` error, store untouched.

        The criteria are anything ``kmock[...]`` accepts, e.g.
        ``kmock.fail('patch', DEPLOYMENTS, kmock.name('x'), status=409, times=2)``,
        ``kmock.fail('create v1/services')`` or ``kmock.fail('patch', kmock.resource('v1/pods'))``
        (a bare ``'v1/pods'`` string is a text filter in kmock, not a resource).
        ``times=None`` fails forever. ``delay`` holds the answer that long (a client timeout when it
        is longer than the client waits); with ``after_write=True`` the write is carried out and
        only its answer is held: the client cannot know whether its write happened.
        """
        view: kmock.View = self
        for criterion in criteria:
            view = view[criterion]
        fault = Fault(view=view, status=status, reason=reason or _REASONS.get(status, 'Failure'),
                      message=message or f"Injected fault: HTTP {status}",
                      remaining=times, delay=delay, after_write=after_write, owner=self)
        self.faults.append(fault)
        return fault

    def watch_count(self, resource: str | kmock.resource, namespace: str | None = None) -> int:
        """How many watch-streams are currently subscribed (``None`` = cluster-wide)."""
        return self._watchers[_res(resource), namespace]

    @property
    def resource_version(self) -> int:
        return self._last_rv

    def changes(self, resource: str | kmock.resource, name: str | None = None,
                namespace: str | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        """Every stored change of ``resource`` so far, oldest first, as the watch events that
        announced it: (resourceVersion, ADDED|MODIFIED|DELETED, object), optionally of one object.
        resourceVersions count all writes of the emulator, so changes of different resources order."""
        found = []
        for rv, event, _ in self._event_log[_res(resource)]:
            meta = event['object'].get('metadata') or {}
            if (name is None or meta.get('name') == name) and (namespace is None or meta.get('namespace') == namespace):
                found.append((rv, event['type'], _json_copy(event['object'])))
        return found

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        """Install a CRD as if it had been created through the API (no watch client sees it yet).
        CEL rules a real apiserver would refuse are logged and listed in ``crd_problems``."""
        body = _json_copy(dict(crd))
        name = body.get('metadata', {}).get('name', '')
        problems = crd_schema_errors(body)
        for problem in problems:
            text = f'CRD {name}: {problem.error} -- a real apiserver refuses this CRD; the rule is not evaluated here'
            if text not in _WARNED:  # once per process, not in every test's log
                _WARNED.add(text)
                logger.warning(text)
            self.crd_problems.append(text)
        key = (CRDS, None, name)
        if key in self._objects and not self._objects[key].deleted:
            return
        self._store_direct(CRDS, None, body, manager='kubectl')
        self._register_crd(self._objects[key].raw)

    # ---- plumbing ----------------------------------------------------------------------------

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        return self.resources._resources.get(resource)  # private: avoid auto-creating entries

    def _known(self, resource: kmock.resource | None) -> bool:
        if resource is None:
            return False
        if resource in self._custom or self._info(resource) is not None:  # O(1): the usual case
            return True
        return any(r == resource for r in self._get_resources())  # declared by reactions or stored objects

    def _target(self, resource: kmock.resource) -> _Target:
        custom = self._custom.get(resource)
        info = self._info(resource)
        builtin = custom is None and (resource.group in _BUILTIN_GROUPS or resource.group.endswith('.k8s.io'))
        if custom is not None:
            kind, namespaced, node, status = custom.kind, custom.namespaced, custom.node, custom.status
        else:
            kind = info.kind if info is not None and info.kind else (resource.plural or '').capitalize()
            namespaced = (info.namespaced if info is not None and info.namespaced is not None
                          else (resource.group, resource.plural) not in CLUSTER_SCOPED)
            node = BUILTIN_TYPES.get((resource.group, resource.plural), GENERIC) if builtin else \
                TypeNode('struct', name=kind, fields=dict(_object(kind).fields), deduced=True)
            status = info is not None and 'status' in info.subresources
        generation = not builtin or resource.group in GENERATION_BUILTINS \
            or (resource.group, resource.plural) in GENERATION_RESOURCES
        return _Target(resource, kind, namespaced, builtin, node, custom, bool(self.status_subresource and status),
                       generation)

    def _has_status(self, resource: kmock.resource) -> bool:
        return self._target(resource).has_status

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv_counter)
        return str(self._last_rv)

    def _live(self, key: tuple[kmock.resource, str | None, str]) -> dict[str, Any] | None:
        obj = self._objects._objects.get(key)  # private (kmock): ObjectsArray's dict, O(1)
        return None if obj is None or obj.deleted else obj.raw

    def _put(self, key: tuple[kmock.resource, str | None, str], raw: dict[str, Any]) -> None:
        obj = self._objects._objects.get(key)
        if obj is None:
            self._objects[key] = self._snapshot(raw)
        elif obj.deleted:
            obj.create(self._snapshot(raw))
        else:
            obj.history.append(self._snapshot(raw))

    async def _notify(self, resource: kmock.resource, type_: str, raw: Mapping[str, Any],
                      old: Mapping[str, Any] | None) -> None:
        """Emit a watch event; ``old`` (the previous state) lets selector watches see objects leave."""
        self._previous = old
        await self._emit(resource, type_, raw)

    async def _emit(self, resource: kmock.resource, type_: str, raw: Mapping[str, Any]) -> None:
        # Must be called under self._lock -- for the watch-streams' snapshot consistency.
        # (Subclasses may extend it with this signature; the previous state comes via _notify.)
        old, self._previous = self._previous, None
        event = {'type': type_, 'object': self._snapshot(dict(raw))}
        rv = int(event['object'].get('metadata', {}).get('resourceVersion') or 0)
        previous = self._snapshot(dict(old)) if old is not None else None
        self._event_log[resource].append((rv, event, previous))
        await self._buses[resource].put((event, previous))  # private (kmock): the per-resource watch bus

    def _store_direct(self, resource: kmock.resource, namespace: str | None, body: dict[str, Any], *,
                      manager: str) -> None:
        """Create without a request (bootstrap objects): the same preparation as a POST."""
        target = self._target(resource)
        obj = self._prepare(target, body, unknown=[])
        if namespace:
            obj['metadata']['namespace'] = namespace
        entries = update_managed_fields(self._zero(target), obj, target.node, [], manager=manager,
                                        api_version=target.api_version, subresource='',
                                        ignored=self._ignored(target, None), now=_now())
        obj = self._created(target, obj, entries)
        key = target.key(namespace, obj['metadata']['name'])
        self._put(key, obj)
        self._event_log[resource].append((int(obj['metadata']['resourceVersion']),
                                          {'type': 'ADDED', 'object': _json_copy(obj)}, None))

    def _manager(self, request: kmock.Request) -> str:
        if request.params.get('fieldManager'):
            return request.params['fieldManager'][:128]
        agent = {k.lower(): v for k, v in request.headers.items()}.get('user-agent', '')
        return (agent.split('/')[0] or 'unknown')[:128]

    @staticmethod
    def _content_type(request: kmock.Request) -> str:
        headers = {name.lower(): value for name, value in request.headers.items()}
        return headers.get('content-type', '').split(';')[0].strip().lower()

    def _answer(self, request: kmock.Request, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._answers[id(request)] = (status, body, dict(headers or {}))

    async def _serve_answer(self, request: kmock.Request) -> Any:
        answer = self._answers.get(id(request))
        if answer is None:
            raise NotImplementedError  # not ours: let other reactions/fallbacks answer
        status, body, headers = answer
        return _kmock_rendering.Response(status=status, payload=body, headers=headers or None)

    _serve_create = _serve_answer
    _serve_update = _serve_answer
    _serve_delete = _serve_answer
    _serve_replace = _serve_answer

    async def _serve_server_version(self, request: kmock.Request) -> dict[str, Any]:
        return {'major': '1', 'minor': '28', 'gitVersion': 'v1.28.7', 'gitCommit': 'kmock-double',
                'gitTreeState': 'clean', 'buildDate': '2024-02-14T00:00:00Z', 'goVersion': 'go1.21.7',
                'compiler': 'gc', 'platform': 'linux/amd64'}

    # ---- request handling ------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # RawHandler.__call__ with our own URL parsing (namespaces) and the current request at hand.
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        token = _CURRENT_REQUEST.set(None)
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise _kmock_apps.KMockError('Too many requests have been served so far.')
            request = await _parse_request(raw_request, id=len(self._requests))
            _CURRENT_REQUEST.set(request)
            self._requests.append(request)
            try:
                return await self._handle(request)
            except _kmock_rendering.StreamingError as e:
                raw_response = e.args[0]
                if e.__cause__ is not None:
                    raise e.__cause__
                raise  # pragma: no cover
        except Exception as e:
            if not self._errors:
                raise
            self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response
        finally:
            _CURRENT_REQUEST.reset(token)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, ApiError) and exc.body is not None:
            return aiohttp.web.json_response(exc.body, status=exc.status)
        if isinstance(exc, kmock.KubernetesError):
            request = _CURRENT_REQUEST.get()
            if isinstance(exc, kmock.KubernetesObjectNotFoundError) and request is not None \
                    and request.resource is not None and request.name:
                body = not_found(request.resource, request.name).body
            elif isinstance(exc, kmock.KubernetesNotFoundError):
                body = _status_body(404, _NOT_FOUND_URL, 'NotFound', {})
            else:
                body = _status_body(exc.status, exc.message or '', exc.reason, exc.details)
            return aiohttp.web.json_response(body, status=exc.status)
        return await super()._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.resource.plural is None:  # discovery & other non-resource URLs
            return await super()._handle(request)

        held = 0.0
        for fault in list(self.faults):
            if fault.active and request in fault.view:
                fault.hits.append(request)
                if fault.remaining is not None:
                    fault.remaining -= 1
                if fault.after_write:
                    held = fault.delay
                    break
                await asyncio.sleep(fault.delay)
                return aiohttp.web.json_response({
                    'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'status': 'Failure',
                    'code': fault.status, 'reason': fault.reason, 'message': fault.message,
                    'details': {'name': request.name or '', 'kind': (request.resource.plural or '')},
                }, status=fault.status)

        if request.subresource == 'proxy' or (request.subresource or '').startswith('proxy/'):
            return await self._proxy(request)

        writes = request.method in (kmock.method.POST, kmock.method.PUT, kmock.method.PATCH, kmock.method.DELETE)
        if writes:
            async with self._lock:
                await self._dispatch(request)
        try:
            if held:
                await asyncio.sleep(held)
            # Skip KubernetesEmulator._handle (its store logic is replaced above); go to the reactions.
            return await _kmock_apps.RawHandler._handle(self, request)
        finally:
            self._answers.pop(id(request), None)
            if writes:
                async with self._lock:  # garbage collection & co: after the answer, as the real ones
                    await self._settle()

    async def _proxy(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Forward a proxy-subresource request to its backend, as the apiserver's proxy does."""
        assert request.resource is not None
        target = self.proxy_backends.get((request.namespace, request.resource.plural, request.name or ''))
        if target is None:
            message = f'no endpoints available for service "{request.name}"'
            return aiohttp.web.json_response({
                'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                'message': message, 'reason': 'ServiceUnavailable', 'code': 503}, status=503)
        path = (request.subresource or 'proxy')[len('proxy'):] or '/'
        headers = {k: v for k, v in request.headers.items() if k.lower() in ('content-type', 'accept')}
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method.value, target.rstrip('/') + path, params=request.params,
                                       data=request.body, headers=headers, allow_redirects=False) as answer:
                body = await answer.read()
                return aiohttp.web.Response(status=answer.status, body=body,
                                            content_type=answer.content_type or 'application/octet-stream')

    async def _dispatch(self, request: kmock.Request) -> None:
        resource = request.resource
        assert resource is not None
        if not self._known(resource):
            raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
        target = self._target(resource)
        if target.namespaced and request.name is not None and request.namespace is None and request.method != kmock.method.POST:
            raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
        if request.method == kmock.method.POST:
            if request.name is not None:
                raise api_error(405, f'the server does not allow this method on the requested resource', 'MethodNotAllowed', {})
            await self._do_create(request, target)
        elif request.method == kmock.method.DELETE:
            if request.name is None:
                await self._do_delete_collection(request, target)
            else:
                await self._do_delete(request, target)
        elif request.name is None:
            raise api_error(405, 'the server does not allow this method on the requested resource', 'MethodNotAllowed', {})
        elif request.subresource not in (None, 'status', 'scale') or \
                (request.subresource == 'status' and not target.has_status) or \
                (request.subresource == 'scale' and (target.resource.group, target.resource.plural) != ('apps', 'deployments')):
            raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
        elif request.method == kmock.method.PUT:
            await self._do_replace(request, target)
        else:
            await self._do_patch(request, target)

    # ---- the write pipeline ------------------------------------------------------------------

    def _zero(self, target: _Target) -> dict[str, Any]:
        """The empty object the field manager compares a create with (Go's zero value)."""
        return go_normalize({}, target.node) if target.builtin else {}

    def _ignored(self, target: _Target, subresource: str | None) -> Callable[[FieldPath], bool]:
        """Fields a write's manager does not get (the strategies' reset fields)."""
        if subresource == 'status':
            if target.builtin:
                return lambda path: path[:1] == ('f:spec',) or path[:2] == ('f:metadata', 'f:labels')
            return lambda path: path[:1] != ('f:status',)
        if subresource == 'scale':
            return lambda path: path != ('f:spec', 'f:replicas') and path != ('f:spec',)
        if target.has_status:
            return lambda path: path[:1] == ('f:status',)
        return lambda path: False

    def _prepare(self, target: _Target, obj: dict[str, Any], *, unknown: list[str]) -> dict[str, Any]:
        """Decoding: pruning/defaulting (CRs), Go's zero values, defaulting and conversion (builtins)."""
        meta = obj.get('metadata') if isinstance(obj.get('metadata'), dict) else {}
        meta = go_normalize(meta, OBJECT_META)
        meta = {k: v for k, v in meta.items() if k in OBJECT_META.fields and v is not None or k == 'creationTimestamp'}
        if target.builtin:
            obj = go_normalize(dict(obj, metadata=meta), target.node)
            _default_builtin(target.resource, obj)
            return go_normalize(obj, target.node)
        meta.pop('creationTimestamp', None) if meta.get('creationTimestamp') is None else None
        rest = {k: v for k, v in obj.items() if k != 'metadata'}
        if target.custom is not None:
            schema = {k: v for k, v in target.custom.schema.items() if k != 'required'}
            schema['properties'] = {k: v for k, v in (schema.get('properties') or {}).items() if k != 'metadata'}
            schema['properties'].setdefault('apiVersion', {'type': 'string'})
            schema['properties'].setdefault('kind', {'type': 'string'})
            rest = crd_prune(rest, schema, '', unknown)
            rest = crd_default(rest, schema)
        return _sorted_deep(dict(rest, metadata=meta))

    def _created(self, target: _Target, obj: dict[str, Any], entries: list[ManagedEntry]) -> dict[str, Any]:
        """PrepareForCreate and the registry: identity, status reset, allocations."""
        meta = obj['metadata']
        for field in ('deletionTimestamp', 'deletionGracePeriodSeconds', 'selfLink', 'managedFields', 'generation'):
            meta.pop(field, None)
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = _now()
        if target.generation:
            meta['generation'] = 1
        meta['resourceVersion'] = self._next_rv()
        group, plural = target.group, target.resource.plural
        if target.builtin:
            status_type = target.node.fields.get('status')
            if target.has_status and status_type is not None:
                obj['status'] = go_normalize({}, status_type[0])
            if (group, plural) == ('', 'namespaces'):
                obj.setdefault('spec', {})['finalizers'] = ['kubernetes']
                obj['status'] = {'phase': 'Active'}
            elif (group, plural) == ('', 'pods'):
                obj['status'] = {'phase': 'Pending', 'qosClass': _qos_class(obj.get('spec') or {})}
            elif (group, plural) == ('', 'services'):
                self._allocate_service(obj.get('spec') or {})
            elif target.resource == CRDS:
                names = (obj.get('spec') or {}).get('names') or {}
                versions = [v.get('name') for v in (obj.get('spec') or {}).get('versions') or [] if v.get('storage')]
                now = _now()
                obj['status'] = {
                    'conditions': [
                        {'type': 'NamesAccepted', 'status': 'True', 'lastTransitionTime': now,
                         'reason': 'NoConflicts', 'message': 'no conflicts found'},
                        {'type': 'Established', 'status': 'True', 'lastTransitionTime': now,
                         'reason': 'InitialNamesAccepted', 'message': 'the initial names have been accepted'}],
                    'acceptedNames': names, 'storedVersions': versions}
        elif target.has_status:
            obj.pop('status', None)
        if entries:
            meta['managedFields'] = render_managed_fields(entries)
        return self._ordered(target, obj)

    def _ordered(self, target: _Target, obj: dict[str, Any]) -> dict[str, Any]:
        if target.builtin:
            return go_normalize(obj, target.node)
        return _sorted_deep(obj)

    def _allocate_service(self, spec: dict[str, Any]) -> None:
        if spec.get('type') == 'ExternalName':
            return
        if not spec.get('clusterIP'):
            spec['clusterIP'] = str(ipaddress.IPv4Address(next(self._next_ip)))
        spec['clusterIPs'] = [spec['clusterIP']]
        if spec['clusterIP'] != 'None':
            spec.setdefault('ipFamilies', ['IPv4'])
            spec.setdefault('ipFamilyPolicy', 'SingleStack')
        else:
            spec.setdefault('ipFamilies', ['IPv4'])
            spec.setdefault('ipFamilyPolicy', 'SingleStack')
        if spec.get('type') in ('NodePort', 'LoadBalancer'):
            for port in spec.get('ports') or []:
                if isinstance(port, dict) and not port.get('nodePort'):
                    port['nodePort'] = next(self._next_node_port)

    def _validate(self, target: _Target, obj: dict[str, Any], old: dict[str, Any] | None,
                  subresource: str | None = None) -> None:
        meta = obj.get('metadata') or {}
        name = meta.get('name') or ''
        errors: list[FieldError] = []
        if subresource is None:
            errors += _validate_name(target.resource, name) if name else []
        if target.builtin:
            if subresource is None:
                errors += _validate_builtin(target.resource, obj, old)
        else:
            errors += _validate_labels(meta.get('labels'), 'metadata.labels')
            if target.custom is not None and self.validate_custom_resources:
                schema = target.custom.schema
                name_schema = ((schema.get('properties') or {}).get('metadata') or {}).get('properties', {}).get('name')
                if name_schema and subresource is None:
                    errors += crd_validate(name, name_schema, '.metadata.name')
                body_schema = dict(schema, properties={k: v for k, v in (schema.get('properties') or {}).items()
                                                       if k not in ('metadata', 'apiVersion', 'kind')})
                body = {k: v for k, v in obj.items() if k not in ('metadata', 'apiVersion', 'kind')}
                previous = {k: v for k, v in old.items() if k not in ('metadata',)} if old is not None else ABSENT
                if subresource == 'status':
                    status_schema = (body_schema['properties'] or {}).get('status')
                    errors += crd_validate(body.get('status'), status_schema, '.status',
                                           previous.get('status', ABSENT) if previous is not ABSENT else ABSENT)
                else:
                    errors += crd_validate(body, body_schema, '', previous)
                    if not errors and target.group in self.conformant_cel_groups:
                        errors += _conformant_cel_errors(body_schema, body)
        if target.resource == CRDS and subresource is None:
            errors += crd_schema_errors(obj)
        if errors:
            raise invalid(target.kind, target.group, name, errors)

    async def _do_create(self, request: kmock.Request, target: _Target) -> None:
        data = request.data
        if not isinstance(data, dict):
            raise bad_request(f'{target.kind} in version "{target.resource.version}" cannot be handled as a '
                              f'{target.kind}: the body must be a JSON object')
        obj = _json_copy(data)
        if not isinstance(obj.get('metadata', {}), dict):
            raise bad_request(f'{target.kind} in version "{target.resource.version}" cannot be handled as a '
                              f'{target.kind}: metadata must be an object')
        if obj.get('apiVersion') not in (None, target.api_version):
            raise bad_request(f'the API version in the data ({obj["apiVersion"]}) does not match the expected API '
                              f'version ({target.api_version})')
        if obj.get('kind') not in (None, target.kind):
            raise bad_request(f'the kind in the data ({obj["kind"]}) does not match the expected kind ({target.kind})')
        obj['apiVersion'], obj['kind'] = target.api_version, target.kind
        meta = obj.setdefault('metadata', {})
        if target.namespaced:
            if request.namespace is None:
                raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
            if meta.get('namespace') and meta['namespace'] != request.namespace:
                raise bad_request('the namespace of the provided object does not match the namespace sent on the request')
            meta['namespace'] = request.namespace
        else:
            meta.pop('namespace', None)
        if not meta.get('name'):
            if not meta.get('generateName'):
                raise invalid(target.kind, target.group, '', [
                    FieldError('metadata.name', 'Required', detail='name or generateName is required')])
            suffix = ''.join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta['name'] = f"{meta['generateName']}{suffix}"
        name = meta['name']
        sent = data.setdefault('metadata', {}) if isinstance(data.get('metadata', {}), dict) else {}
        sent.update(name=name, **({'namespace': request.namespace} if target.namespaced else {}))  # for subclasses' readers
        if target.builtin and (error := decode_error(obj, target.node)) is not None:
            raise bad_request(f'{target.kind} in version "{target.resource.version}" cannot be handled as a '
                              f'{target.kind}: {error}')
        if target.namespaced:
            self._check_namespace(target, request.namespace, name)
        unknown: list[str] = []
        obj = self._prepare(target, obj, unknown=unknown)
        entries = update_managed_fields(self._zero(target), obj, target.node, [], manager=self._manager(request),
                                        api_version=target.api_version, subresource='',
                                        ignored=self._ignored(target, None), now=_now())
        self._strict_fields(request, target, unknown)
        self._validate(target, obj, None)
        key = target.key(request.namespace, name)
        if self._live(key) is not None:
            raise already_exists(target.resource, name)
        if request.params.get('dryRun') == 'All':
            obj = self._created(target, obj, entries)
            self._answer(request, 201, obj, self._warnings(unknown))
            return
        obj = self._created(target, obj, entries)
        self._put(key, obj)
        if target.resource == CRDS:
            self._register_crd(obj)
        await self._notify(target.resource, 'ADDED', obj, None)
        self._answer(request, 201, obj, self._warnings(unknown))

    def _check_namespace(self, target: _Target, namespace: str | None, name: str) -> None:
        if not self.require_namespaces or namespace is None:
            return
        ns = self._live((NAMESPACES, None, namespace))
        if ns is None:
            raise not_found(NAMESPACES, namespace)
        if ns['metadata'].get('deletionTimestamp'):
            raise api_error(403, f'{_qualified(target.resource)} {_go_quote(name)} is forbidden: unable to create new '
                                 f'content in namespace {namespace} because it is being terminated', 'Forbidden',
                            _details(target.resource, name))

    @staticmethod
    def _warnings(unknown: list[str]) -> dict[str, str]:
        if not unknown:
            return {}
        return {'Warning': ', '.join(f'299 - "unknown field \\"{path}\\""' for path in unknown)}

    def _strict_fields(self, request: kmock.Request, target: _Target, unknown: list[str]) -> None:
        if unknown and request.params.get('fieldValidation') == 'Strict':
            listed = ', '.join(f'unknown field "{path}"' for path in unknown)
            raise bad_request(f'{target.kind} in version "{target.resource.version}" cannot be handled as a '
                              f'{target.kind}: strict decoding error: {listed}')

    async def _do_patch(self, request: kmock.Request, target: _Target) -> None:
        key = target.key(request.namespace, request.name or '')
        stored = self._live(key)
        content_type = self._content_type(request)
        if content_type == APPLY_PATCH:
            await self._do_apply(request, target, key, stored)
            return
        if content_type not in (JSON_PATCH, MERGE_PATCH) and not (content_type == STRATEGIC_MERGE_PATCH and target.builtin):
            accepted = _UNKNOWN_FORMAT + (', application/strategic-merge-patch+json' if target.builtin else '')
            raise api_error(415, accepted, 'UnsupportedMediaType', {})
        if stored is None:
            raise not_found(target.resource, request.name or '')
        old = _json_copy(stored)
        if request.subresource == 'scale':
            old_view = self._scale_view(target, old)
        data = request.data
        base = old_view if request.subresource == 'scale' else old
        embed: Callable[[], Any]
        if content_type == JSON_PATCH:
            if not isinstance(data, list):
                raise bad_request('json: cannot unmarshal object into Go value of type jsonpatch.Patch')
            try:
                new = jsonpatch.apply_patch(base, data, in_place=False)
            except Exception:  # noqa: BLE001 -- every failure of a JSON patch is the same 422
                raise api_error(422, _JSON_PATCH_FAILED, 'Invalid', {})
            embed = lambda: _patched_document({}, new)  # noqa: E731 (approximation: all keys sorted)
        elif content_type == MERGE_PATCH:
            if not isinstance(data, dict):
                raise bad_request('json: cannot unmarshal array into Go value of type map[string]interface {}')
            new = merge_patch(base, data)
            embed = lambda: _patched_document(base, data)  # noqa: E731
        elif content_type == STRATEGIC_MERGE_PATCH and target.builtin:
            if not isinstance(data, dict):
                raise bad_request('json: cannot unmarshal array into Go value of type map[string]interface {}')
            new = strategic_merge(base, data, SCALE if request.subresource == 'scale' else target.node)
            embed = lambda: _patched_document({}, new)  # noqa: E731 (strategic merge marshals maps: sorted)
        else:
            accepted = _UNKNOWN_FORMAT + (', application/strategic-merge-patch+json' if target.builtin else '')
            raise api_error(415, accepted, 'UnsupportedMediaType', {})
        if request.subresource == 'scale':
            new = self._unscale(target, old, new)
        await self._update(request, target, key, old, new, embed=embed)

    async def _do_replace(self, request: kmock.Request, target: _Target) -> None:
        key = target.key(request.namespace, request.name or '')
        stored = self._live(key)
        if stored is None:
            raise not_found(target.resource, request.name or '')
        data = request.data
        if not isinstance(data, dict):
            raise bad_request(f'{target.kind} in version "{target.resource.version}" cannot be handled as a '
                              f'{target.kind}: the body must be a JSON object')
        old = _json_copy(stored)
        new = _json_copy(data)
        if request.subresource == 'scale':
            new = self._unscale(target, old, new)
        new.setdefault('apiVersion', target.api_version)
        new.setdefault('kind', target.kind)
        meta = new.setdefault('metadata', {})
        if meta.get('name') and meta['name'] != request.name:
            raise bad_request(f'the name of the object ({meta["name"]}) does not match the name on the URL ({request.name})')
        await self._update(request, target, key, old, new, embed=None)

    async def _update(self, request: kmock.Request, target: _Target, key: tuple[kmock.resource, str | None, str],
                      old: dict[str, Any], new: Any, *, embed: Callable[[], Any] | None,
                      entries: list[ManagedEntry] | None = None) -> None:
        """The common end of PATCH, PUT and apply: decode, strategy, validation, bookkeeping, no-op check."""
        if not isinstance(new, dict):
            raise api_error(422, _JSON_PATCH_FAILED, 'Invalid', {})
        if target.builtin and (error := decode_error(new, target.node)) is not None:
            if embed is None:
                raise bad_request(f'{target.kind} in version "{target.resource.version}" cannot be handled as a '
                                  f'{target.kind}: {error}')
            document = go_json(embed())
            cause = FieldError('patch', 'Invalid', document, error)
            raise api_error(422, f' "" is invalid: {cause.error}', 'Invalid', {'causes': [
                {'reason': cause.reason, 'message': cause.message, 'field': cause.field}]})
        sent_rv = (new.get('metadata') or {}).get('resourceVersion') if isinstance(new.get('metadata'), dict) else None
        if sent_rv and str(sent_rv) != str(old['metadata'].get('resourceVersion')):
            raise conflict(target.resource, old['metadata']['name'])
        unknown: list[str] = []
        new = self._prepare(target, new, unknown=unknown)
        new = self._strategy_update(target, request.subresource, old, new)
        self._strict_fields(request, target, unknown)
        old_finalizers = old['metadata'].get('finalizers') or []
        added = [f for f in new['metadata'].get('finalizers') or [] if f not in old_finalizers]
        if old['metadata'].get('deletionTimestamp') and added:
            raise invalid(target.kind, target.group, old['metadata']['name'], [FieldError(
                'metadata.finalizers', 'Forbidden',
                detail=f'no new finalizers can be added if the object is being deleted, found new finalizers '
                       f'[]string{{{", ".join(json.dumps(f) for f in added)}}}')])
        self._validate(target, new, old, request.subresource if request.subresource != 'scale' else None)
        meta = new['metadata']
        if target.generation and old['metadata'].get('generation'):
            if target.builtin:
                changed = new.get('spec') != old.get('spec')
            else:
                skip = ('metadata', 'status') if target.has_status else ('metadata',)
                changed = {k: v for k, v in new.items() if k not in skip} != {k: v for k, v in old.items() if k not in skip}
            meta['generation'] = int(old['metadata']['generation']) + (1 if changed else 0)
        if entries is None:
            entries = update_managed_fields(old, new, target.node, read_managed_fields(old),
                                            manager=self._manager(request), api_version=target.api_version,
                                            subresource=request.subresource or '',
                                            ignored=self._ignored(target, request.subresource), now=_now())
        meta.pop('managedFields', None)
        if entries:
            meta['managedFields'] = render_managed_fields(entries)
        new = self._ordered(target, new)
        headers = self._warnings(unknown)
        if new == old:  # a no-op: same resourceVersion, no event (records 2, 8, 14)
            self._answer(request, 200, self._view(request, target, old), headers)
            return
        if request.params.get('dryRun') == 'All':
            self._answer(request, 200, self._view(request, target, new), headers)
            return
        new['metadata']['resourceVersion'] = self._next_rv()
        meta = new['metadata']
        self._put(key, new)
        if target.resource == CRDS:
            self._register_crd(new)
        await self._notify(target.resource, 'MODIFIED', new, old)
        if meta.get('deletionTimestamp') and not meta.get('finalizers') and target.resource != NAMESPACES:
            self._doomed.append(key)
        self._answer(request, 200, self._view(request, target, new), headers)

    def _view(self, request: kmock.Request, target: _Target, obj: dict[str, Any]) -> dict[str, Any]:
        return self._scale_view(target, obj) if request.subresource == 'scale' else obj

    def _strategy_update(self, target: _Target, subresource: str | None, old: dict[str, Any],
                         new: dict[str, Any]) -> dict[str, Any]:
        """PrepareForUpdate: what a write may change (status vs the rest), immutable metadata."""
        meta, old_meta = new.setdefault('metadata', {}), old.get('metadata', {})
        for field in ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp',
                      'deletionGracePeriodSeconds', 'generation', 'selfLink', 'resourceVersion'):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if subresource == 'status':
            result = _json_copy(old)
            if 'status' in new:
                result['status'] = new['status']
            else:
                result.pop('status', None)
            if target.builtin:  # builtin status strategies keep spec & labels, not annotations
                if new['metadata'].get('annotations'):
                    result['metadata']['annotations'] = new['metadata']['annotations']
                else:
                    result['metadata'].pop('annotations', None)
            result['metadata']['managedFields'] = old_meta.get('managedFields')
            return self._ordered(target, result)
        if subresource == 'scale':
            return self._ordered(target, dict(old, spec=dict(old.get('spec') or {}, replicas=(new.get('spec') or {}).get('replicas')),
                                              metadata=dict(old_meta)))
        if target.has_status:
            if 'status' in old:
                new['status'] = old['status']
            else:
                new.pop('status', None)
        group, plural = target.group, target.resource.plural
        if (group, plural) == ('', 'namespaces'):
            new['spec'] = old.get('spec')
            new['status'] = old.get('status')
        elif (group, plural) == ('', 'services'):
            spec, old_spec = new.get('spec') or {}, old.get('spec') or {}
            for field in ('clusterIP', 'clusterIPs', 'ipFamilies', 'ipFamilyPolicy', 'healthCheckNodePort'):
                if field in old_spec and not spec.get(field):
                    spec[field] = old_spec[field]
            old_ports = {(p.get('port'), p.get('protocol')): p for p in old_spec.get('ports') or [] if isinstance(p, dict)}
            for port in spec.get('ports') or []:
                before = old_ports.get((port.get('port'), port.get('protocol'))) if isinstance(port, dict) else None
                if before and before.get('nodePort') and not port.get('nodePort'):
                    port['nodePort'] = before['nodePort']
            if spec.get('type') in ('NodePort', 'LoadBalancer'):
                self._allocate_service(spec)
        return self._ordered(target, new)

    # ---- server-side apply ---------------------------------------------------------------------

    async def _do_apply(self, request: kmock.Request, target: _Target,
                        key: tuple[kmock.resource, str | None, str], stored: dict[str, Any] | None) -> None:
        if request.subresource == 'scale':
            raise api_error(415, 'server-side apply of the scale subresource is not emulated', 'UnsupportedMediaType', {})
        manager = request.params.get('fieldManager')
        if not manager:
            raise bad_request('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                              'is required for apply patch')
        force = request.params.get('force') in ('1', 't', 'T', 'true', 'TRUE', 'True')  # Go's strconv.ParseBool
        data = request.data
        if data is None:
            try:
                data = load_yaml_1_1(request.text)
            except yaml.YAMLError as e:
                raise bad_request(f'error decoding YAML: {e}')
        if not isinstance(data, dict):
            raise bad_request(f"error decoding YAML: the apply configuration must be an object, not {_json_type(data)}")
        config = _json_copy(data)
        meta = config.get('metadata') if isinstance(config.get('metadata'), dict) else {}
        if not config.get('apiVersion') or not config.get('kind'):
            raise bad_request(f"Object 'Kind' is missing in '{request.text}'")
        if config['apiVersion'] != target.api_version or config['kind'] != target.kind:
            raise bad_request(f'the API version/kind in the data ({config["apiVersion"]}, Kind={config["kind"]}) does '
                              f'not match the expected ({target.api_version}, Kind={target.kind})')
        if meta.get('name') and meta['name'] != request.name:
            raise bad_request(f'the name of the object ({meta["name"]}) does not match the name on the URL ({request.name})')
        if errors := typed_errors(config, target.node):
            ident = f'{meta.get("namespace") or ""}/{meta.get("name") or ""}; {target.api_version}, Kind={target.kind}'
            raise api_error(500, f'failed to create typed patch object ({ident}): errors:\n  ' + '\n  '.join(errors), None)
        config.setdefault('metadata', {})['name'] = request.name
        if target.namespaced:
            config['metadata']['namespace'] = request.namespace
        subresource = request.subresource or ''
        ignored = self._ignored(target, request.subresource)
        now = _now()
        if stored is None:
            if request.subresource:
                raise not_found(target.resource, request.name or '')
            if target.namespaced:
                self._check_namespace(target, request.namespace, request.name or '')
            merged, entries, _ = apply_configuration(self._zero(target), config, target.node, [], manager=manager,
                                                     api_version=target.api_version, subresource='', force=True,
                                                     ignored=ignored, now=now)
            merged['apiVersion'], merged['kind'] = target.api_version, target.kind
            if target.builtin and (error := decode_error(merged, target.node)) is not None:
                raise bad_request(f'{target.kind} in version "{target.resource.version}" cannot be handled as a '
                                  f'{target.kind}: {error}')
            unknown: list[str] = []
            obj = self._prepare(target, merged, unknown=unknown)
            self._validate(target, obj, None)
            obj = self._created(target, obj, entries)
            if request.params.get('dryRun') != 'All':
                self._put(key, obj)
                if target.resource == CRDS:
                    self._register_crd(obj)
                await self._notify(target.resource, 'ADDED', obj, None)
            self._answer(request, 201, obj, self._warnings(unknown))
            return
        old = _json_copy(stored)
        sent_rv = meta.get('resourceVersion')
        if sent_rv and str(sent_rv) != str(old['metadata'].get('resourceVersion')):
            raise conflict(target.resource, old['metadata']['name'])
        live = old if request.subresource != 'scale' else self._scale_view(target, old)
        merged, entries, conflicts = apply_configuration(live, config, target.node, read_managed_fields(old),
                                                         manager=manager, api_version=target.api_version,
                                                         subresource=subresource, force=force, ignored=ignored, now=now)
        if conflicts and not force:
            raise self._apply_conflict(conflicts, target)
        merged['metadata'] = dict(merged.get('metadata') or {}, resourceVersion=old['metadata'].get('resourceVersion'))
        await self._update(request, target, key, old, merged, embed=lambda: _patched_document({}, merged),
                           entries=entries)

    @staticmethod
    def _apply_conflict(conflicts: Mapping[tuple[str, str, str], set[FieldPath]], target: _Target) -> ApiError:
        causes, lines = [], []
        for (manager, operation, subresource), paths in conflicts.items():
            who = f'conflict with {_go_quote(manager)}' + (f' with subresource {_go_quote(subresource)}' if subresource
                                                            else '') + f' using {target.api_version}'
            for path in sorted(paths):
                causes.append({'reason': 'FieldManagerConflict', 'message': who, 'field': _format_path(path)})
                lines.append((who, _format_path(path)))
        count = len(causes)
        if count == 1:
            message = f'Apply failed with 1 conflict: {lines[0][0]}: {lines[0][1]}'
        else:
            by_who: dict[str, list[str]] = collections.defaultdict(list)
            for who, field in lines:
                by_who[who].append(field)
            parts = [f'{who.replace("conflict with", "conflicts with", 1)}:\n' + '\n'.join(f'- {f}' for f in fields)
                     for who, fields in by_who.items()]
            message = f'Apply failed with {count} conflicts: ' + '\n'.join(parts)
        return api_error(409, message, 'Conflict', {'causes': causes})

    # ---- the scale subresource ---------------------------------------------------------------

    def _scale_view(self, target: _Target, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get('metadata') or {}
        spec, status = obj.get('spec') or {}, obj.get('status') or {}
        scale = {'kind': 'Scale', 'apiVersion': 'autoscaling/v1',
                 'metadata': {k: meta[k] for k in ('name', 'namespace', 'uid', 'resourceVersion', 'creationTimestamp')
                              if k in meta},
                 'spec': {'replicas': spec.get('replicas')},
                 'status': {'replicas': status.get('replicas', 0), 'selector': format_label_selector(spec.get('selector'))}}
        return go_normalize(scale, SCALE)

    @staticmethod
    def _unscale(target: _Target, old: dict[str, Any], scale: Any) -> dict[str, Any]:
        replicas = ((scale or {}).get('spec') or {}).get('replicas') if isinstance(scale, dict) else None
        sent_rv = ((scale or {}).get('metadata') or {}).get('resourceVersion') if isinstance(scale, dict) else None
        new = _json_copy(old)
        new['spec'] = dict(new.get('spec') or {}, replicas=replicas)
        if sent_rv:
            new['metadata']['resourceVersion'] = sent_rv
        return new

    # ---- deletion ------------------------------------------------------------------------------

    def _delete_options(self, request: kmock.Request) -> dict[str, Any]:
        options = dict(request.data) if isinstance(request.data, dict) else {}
        for name in ('propagationPolicy', 'gracePeriodSeconds', 'orphanDependents', 'dryRun'):
            if name in request.params and name not in options:
                options[name] = request.params[name]
        return options

    async def _do_delete(self, request: kmock.Request, target: _Target) -> None:
        key = target.key(request.namespace, request.name or '')
        stored = self._live(key)
        if stored is None:
            raise not_found(target.resource, request.name or '')
        options = self._delete_options(request)
        pre = options.get('preconditions') or {}
        meta = stored['metadata']
        if pre.get('uid') and pre['uid'] != meta.get('uid'):
            raise conflict(target.resource, meta['name'], f'Precondition failed: UID in precondition: {pre["uid"]}, '
                                                          f'UID in object meta: {meta.get("uid")}')
        if pre.get('resourceVersion') and pre['resourceVersion'] != meta.get('resourceVersion'):
            raise conflict(target.resource, meta['name'],
                           f'Precondition failed: ResourceVersion in precondition: {pre["resourceVersion"]}, '
                           f'ResourceVersion in object meta: {meta.get("resourceVersion")}')
        if options.get('dryRun') in ('All', ['All']):
            self._answer(request, 200, stored)
            return
        if target.resource == NAMESPACES:
            await self._delete_namespace(request, key, stored)
            return
        policy = options.get('propagationPolicy')
        if policy is None and options.get('orphanDependents') in (True, 'true'):
            policy = 'Orphan'
        answer = await self._soft_delete(key, policy or 'Background')
        if answer is None:  # deleted at once (after the answer)
            if (target.group, target.resource.plural) in RETURNS_DELETED_OBJECT:
                self._answer(request, 200, stored)
            else:
                self._answer(request, 200, {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success',
                                            'details': _details(target.resource, meta['name'], uid=meta.get('uid'))})
        else:
            self._answer(request, 200, answer)

    async def _soft_delete(self, key: tuple[kmock.resource, str | None, str], policy: str = 'Background',
                           ) -> dict[str, Any] | None:
        """Mark for deletion (finalizers: deletionTimestamp, the object stays: returned) or doom it (None)."""
        stored = self._live(key)
        assert stored is not None
        if stored['metadata'].get('deletionTimestamp'):
            return stored
        if policy == 'Orphan':
            await self._orphan_dependents(stored['metadata'].get('uid'))
        finalizers = list(stored['metadata'].get('finalizers') or [])
        if policy == 'Foreground' and 'foregroundDeletion' not in finalizers and self._dependents(stored['metadata'].get('uid')):
            finalizers.append('foregroundDeletion')
            self._gc_due = True
        if not finalizers:
            self._doomed.append(key)
            return None
        target = self._target(key[0])
        new = _json_copy(stored)
        meta = new['metadata']
        meta['finalizers'] = finalizers
        meta['deletionTimestamp'] = _now()
        meta['deletionGracePeriodSeconds'] = 0
        if meta.get('generation'):
            meta['generation'] = int(meta['generation']) + 1
        meta['resourceVersion'] = self._next_rv()
        new = self._ordered(target, new)
        self._put(key, new)
        await self._notify(key[0], 'MODIFIED', new, stored)
        return new

    async def _hard_delete(self, key: tuple[kmock.resource, str | None, str]) -> None:
        obj = self._objects._objects.get(key)
        if obj is None or obj.deleted:
            return
        last = _json_copy(obj.raw)
        last.setdefault('metadata', {})['resourceVersion'] = self._next_rv()
        obj.delete()
        await self._notify(key[0], 'DELETED', last, last)
        if key[0] == CRDS:
            await self._unregister_crd(last)
        self._gc_due = True

    async def _do_delete_collection(self, request: kmock.Request, target: _Target) -> None:
        check = self._selectors(request, target)
        deleted = []
        for key, obj in list(self._objects._objects.items()):
            if key[0] == target.resource and not obj.deleted and check(obj.raw):
                deleted.append(obj.raw)
                await self._soft_delete(key)
        items = [self._list_item(target, obj) for obj in deleted]
        self._answer(request, 200, {'kind': f'{target.kind}List', 'apiVersion': target.api_version,
                                    'metadata': {'resourceVersion': str(self._last_rv)}, 'items': items})

    async def _delete_namespace(self, request: kmock.Request, key: tuple[kmock.resource, str | None, str],
                                stored: dict[str, Any]) -> None:
        name = stored['metadata']['name']
        if name in ('default', 'kube-system', 'kube-public'):
            raise api_error(403, f'namespaces "{name}" is forbidden: this namespace may not be deleted', 'Forbidden',
                            _details(NAMESPACES, name))
        if stored['metadata'].get('deletionTimestamp'):
            self._answer(request, 200, stored)
            return
        new = _json_copy(stored)
        new['metadata']['deletionTimestamp'] = _now()
        new['metadata']['deletionGracePeriodSeconds'] = 0
        new['status'] = {'phase': 'Terminating'}
        new['metadata']['resourceVersion'] = self._next_rv()
        new = self._ordered(self._target(NAMESPACES), new)
        self._put(key, new)
        await self._notify(NAMESPACES, 'MODIFIED', new, stored)
        self._terminating.add(name)
        self._answer(request, 200, new)

    def _dependents(self, uid: str | None) -> list[tuple[kmock.resource, str | None, str]]:
        if not uid:
            return []
        return [key for key, obj in self._objects._objects.items() if not obj.deleted and any(
            ref.get('uid') == uid for ref in obj.raw.get('metadata', {}).get('ownerReferences') or [])]

    async def _orphan_dependents(self, uid: str | None) -> None:
        for key in self._dependents(uid):
            stored = self._live(key)
            assert stored is not None
            new = _json_copy(stored)
            refs = [r for r in new['metadata'].get('ownerReferences') or [] if r.get('uid') != uid]
            if refs:
                new['metadata']['ownerReferences'] = refs
            else:
                new['metadata'].pop('ownerReferences', None)
            new['metadata']['resourceVersion'] = self._next_rv()
            new = self._ordered(self._target(key[0]), new)
            self._put(key, new)
            await self._notify(key[0], 'MODIFIED', new, stored)

    async def _settle(self) -> None:
        """What happens after an answer: deletions, garbage collection, namespace finalization."""
        for _ in range(10_000):  # a bound, against cycles
            if self._doomed:
                await self._hard_delete(self._doomed.pop(0))
                continue
            if self._gc_due and self.garbage_collection:
                self._gc_due = False
                if await self._collect_garbage():
                    continue
            if self._terminating and await self._finalize_namespaces():
                continue
            break

    async def _collect_garbage(self) -> bool:
        live = {key: obj.raw for key, obj in self._objects._objects.items() if not obj.deleted}
        uids = {raw.get('metadata', {}).get('uid') for raw in live.values()}
        foreground = {raw['metadata']['uid']: key for key, raw in live.items()
                      if 'foregroundDeletion' in (raw['metadata'].get('finalizers') or [])}
        acted = False
        for key, raw in live.items():
            meta = raw.get('metadata', {})
            refs = meta.get('ownerReferences') or []
            if not refs or meta.get('deletionTimestamp'):
                continue
            if all(ref.get('uid') not in uids for ref in refs) or any(ref.get('uid') in foreground for ref in refs):
                policy = 'Foreground' if any(ref.get('uid') in foreground for ref in refs) else 'Background'
                await self._soft_delete(key, policy)
                acted = True
        for uid, key in foreground.items():
            blocking = [k for k in self._dependents(uid) if any(
                ref.get('uid') == uid and ref.get('blockOwnerDeletion')
                for ref in (self._live(k) or {}).get('metadata', {}).get('ownerReferences') or [])]
            if not blocking:
                stored = self._live(key)
                assert stored is not None
                new = _json_copy(stored)
                new['metadata']['finalizers'] = [f for f in new['metadata']['finalizers'] if f != 'foregroundDeletion']
                if not new['metadata']['finalizers']:
                    new['metadata'].pop('finalizers')
                new['metadata']['resourceVersion'] = self._next_rv()
                new = self._ordered(self._target(key[0]), new)
                self._put(key, new)
                await self._notify(key[0], 'MODIFIED', new, stored)
                if not new['metadata'].get('finalizers'):
                    self._doomed.append(key)
                acted = True
        if acted:
            self._gc_due = True
        return acted or bool(self._doomed)

    async def _finalize_namespaces(self) -> bool:
        acted = False
        for name in sorted(self._terminating):
            content = [key for key, obj in self._objects._objects.items()
                       if key[1] == name and key[0] != NAMESPACES and not obj.deleted]
            for key in content:
                if not (self._live(key) or {}).get('metadata', {}).get('deletionTimestamp'):
                    await self._soft_delete(key)
                    acted = True
            if not content:
                self._terminating.discard(name)
                self._doomed.append((NAMESPACES, None, name))
                acted = True
        return acted

    # ---- CRDs ----------------------------------------------------------------------------------

    def _register_crd(self, crd: Mapping[str, Any]) -> None:
        names = (crd.get('spec') or {}).get('names') or {}
        for custom in custom_resources(crd):
            self._custom[custom.resource] = custom
            subresources = ({'status'} if custom.status else set()) | ({'scale'} if custom.scale else set())
            self.resources[custom.resource] = kmock.ResourceInfo(
                namespaced=custom.namespaced, kind=custom.kind, singular=names.get('singular') or custom.kind.lower(),
                verbs=ALL_VERBS, shortnames=set(names.get('shortNames') or ()),
                categories=set(names.get('categories') or ()), subresources=subresources)

    async def _unregister_crd(self, crd: Mapping[str, Any]) -> None:
        for custom in custom_resources(crd):
            self._custom.pop(custom.resource, None)
            for key, obj in list(self._objects._objects.items()):
                if key[0] == custom.resource and not obj.deleted:
                    self._doomed.append(key)

    # ---- reading ---------------------------------------------------------------------------

    def _selectors(self, request: kmock.Request, target: _Target) -> Callable[[Mapping[str, Any]], bool]:
        try:
            labels = parse_selector(request.params.get('labelSelector'))
            fields = parse_field_selector(request.params.get('fieldSelector'))
        except ValueError as e:
            raise bad_request(str(e))
        for label, _, _ in fields:
            if (error := _field_label_error(target.resource, label)) is not None:
                raise bad_request(error)
        resource = target.resource

        def check(obj: Mapping[str, Any]) -> bool:
            meta = obj.get('metadata', {})
            if request.namespace is not None and meta.get('namespace') != request.namespace:
                return False
            if request.name is not None and meta.get('name') != request.name:
                return False
            return (match_selector(meta.get('labels') or {}, labels) and
                    (not fields or match_selector(_field_values(obj, resource), fields)))
        return check

    def _current(self, resource: kmock.resource) -> list[dict[str, Any]]:
        return [_json_copy(obj.raw) for (res, _, _), obj in self._objects.items()
                if res == resource and not obj.deleted]

    def _list_item(self, target: _Target, obj: dict[str, Any]) -> dict[str, Any]:
        if target.builtin:  # typed lists carry no TypeMeta in their items
            return {k: v for k, v in obj.items() if k not in ('kind', 'apiVersion')}
        return obj

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        if not self._known(request.resource):
            raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
        assert request.resource is not None
        target = self._target(request.resource)
        stored = self._live(target.key(request.namespace, request.name or ''))
        if request.subresource not in (None, 'status', 'scale') or \
                (request.subresource == 'scale' and (target.group, target.resource.plural) != ('apps', 'deployments')):
            raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
        if stored is None:
            raise not_found(request.resource, request.name or '')
        return self._view(request, target, stored)

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        if not self._known(request.resource):
            raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
        assert request.resource is not None
        target = self._target(request.resource)
        check = self._selectors(request, target)
        async with self._lock:
            items = [self._list_item(target, obj) for obj in self._current(request.resource) if check(obj)]
            rv = self._last_rv
        return {
            'kind': f"{target.kind}List", 'apiVersion': target.api_version,
            'metadata': {'resourceVersion': str(rv)},
            'items': items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        resource = request.resource
        if not self._known(resource):
            raise api_error(404, _NOT_FOUND_URL, 'NotFound', {})
        assert resource is not None
        target = self._target(resource)
        check = self._selectors(request, target)
        since_raw = request.params.get('resourceVersion')
        since = int(since_raw) if since_raw and since_raw.isdigit() else None
        timeout = request.params.get('timeoutSeconds')

        yield b''  # send the headers now: the stream is open even if nothing happens.

        bus = self._buses[resource]
        async with self._lock:
            mark = await bus.mark()  # subscribe before the snapshot: no events are lost in between
            if since is None or since == 0:  # "most recent": synthetic ADDED for all current objects
                initial = [({'type': 'ADDED', 'object': obj}, None) for obj in self._current(resource)]
            else:
                initial = [(_json_copy(event), old) for rv, event, old in self._event_log[resource] if rv > since]
            self._watchers[resource, request.namespace] += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout) if timeout else None
        stream = aiter(bus.stream(since=mark))

        def seen(event: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any] | None:
            """As the watch cache filters: an object entering/leaving the selection is ADDED/DELETED."""
            now_matches = check(event['object'])
            before = old is not None and event['type'] == 'MODIFIED' and check(old)
            if event['type'] == 'MODIFIED':
                if now_matches and not before:
                    return {'type': 'ADDED', 'object': event['object']}
                if before and not now_matches:
                    return {'type': 'DELETED', 'object': event['object']}
            return event if now_matches else None

        try:
            for event, old in initial:
                if (shown := seen(event, old)) is not None:
                    yield shown
            while True:
                if deadline is None:
                    event, old = await anext(stream)
                else:  # timeoutSeconds: end the stream normally (clients reconnect)
                    try:
                        event, old = await asyncio.wait_for(anext(stream), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        break
                if (shown := seen(event, old)) is not None:
                    yield self._snapshot(shown)
        finally:
            self._watchers[resource, request.namespace] -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()
            await bus.unmark(mark)


def _qos_class(spec: Mapping[str, Any]) -> str:
    containers = list(spec.get('containers') or [])
    resources = [c.get('resources') or {} for c in containers if isinstance(c, dict)]
    if not any(r.get('requests') or r.get('limits') for r in resources):
        return 'BestEffort'
    guaranteed = all(
        all(k in (r.get('limits') or {}) for k in ('cpu', 'memory'))
        and all((r.get('requests') or {}).get(k, (r.get('limits') or {})[k]) == (r.get('limits') or {})[k]
                for k in ('cpu', 'memory'))
        for r in resources)
    return 'Guaranteed' if guaranteed else 'Burstable'


@functools.lru_cache(maxsize=16)
def _crd_documents(path: str, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    """The CRDs of a YAML file, parsed once per version of the file (install_crd copies them)."""
    docs = yaml.load_all(pathlib.Path(path).read_text(), Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))
    return tuple(d for d in docs if isinstance(d, dict) and d.get('kind') == 'CustomResourceDefinition')


def declare_resources(emulator: kmock.KubernetesScaffold, extra: Mapping[str, kmock.ResourceInfo] = (),
                      crds: Iterable[pathlib.Path] = CRD_FILES) -> None:
    """
    Make the builtins (a K3s snapshot bundled with kmock) and the ModelEndpoint CRD discoverable.
    A :class:`ClusterEmulator` also gets the CRDs of ``crds`` (default: the project's ``crds/``)
    installed: their schemas prune, default and validate the custom resources (CEL rules included).
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # kmock uses importlib.resources.read_binary
        emulator.resources.load_bundled()
    emulator.resources[MODELENDPOINTS] = kmock.ResourceInfo(
        namespaced=True, kind='ModelEndpoint', singular='modelendpoint',
        verbs=ALL_VERBS, shortnames={'me'}, categories={'slotkeeper'}, subresources={'status'})
    if isinstance(emulator, ClusterEmulator):
        for path in crds:
            path = pathlib.Path(path)
            for doc in _crd_documents(str(path), path.stat().st_mtime_ns):
                emulator.install_crd(doc)
    for key, info in dict(extra).items():
        emulator.resources[key] = info


# ----------------------------------------------------------------------------------------------
# The official `kubernetes` client, pointed at KMock explicitly.
# ----------------------------------------------------------------------------------------------

def make_kube_config(url: str) -> kubernetes.client.Configuration:
    """A client configuration for the given server; KUBECONFIG & ~/.kube are never read."""
    config = kubernetes.client.Configuration(host=str(url).rstrip('/'))
    config.verify_ssl = False  # plain http anyway
    return config


def make_api_client(url_or_config: str | kubernetes.client.Configuration) -> kubernetes.client.ApiClient:
    """
    An ``ApiClient`` for KMock. It is SYNCHRONOUS (urllib3): call it from sync kopf handlers
    (kopf runs them in a thread) or via ``asyncio.to_thread``. Calling it directly on the event
    loop that also serves KMock deadlocks until urllib3's timeout. Close it when done.
    """
    config = url_or_config if isinstance(url_or_config, kubernetes.client.Configuration) else make_kube_config(url_or_config)
    return kubernetes.client.ApiClient(configuration=config)


# ----------------------------------------------------------------------------------------------
# Polling.
# ----------------------------------------------------------------------------------------------

async def eventually(
        predicate: Callable[[], Any | Awaitable[Any]],
        *,
        timeout: float = 5.0,
        interval: float = 0.02,
        message: str | None = None,
) -> Any:
    """
    Poll ``predicate`` (sync or async) until it returns a truthy value; return that value.

    AssertionError/LookupError (KeyError, IndexError) raised by the predicate mean "not yet";
    other exceptions propagate at once. Times out with an AssertionError (loop time, so it also
    works under looptime).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_value: Any = None
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except (AssertionError, LookupError) as e:
            last_error, last_value = e, None
        else:
            if value:
                return value
            last_error, last_value = None, value
        if loop.time() >= deadline:
            what = message or getattr(predicate, '__name__', repr(predicate))
            raise AssertionError(f"Not satisfied within {timeout}s: {what}; last value: {last_value!r}"
                                 + (f"; last error: {last_error!r}" if last_error else "")) from last_error
        await asyncio.sleep(interval)


# ----------------------------------------------------------------------------------------------
# Test-side API helpers (HTTP through KMock's own client session, plus direct store reads).
# ----------------------------------------------------------------------------------------------

class KubeAPIError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def url_for(resource: str | kmock.resource, namespace: str | None = None, name: str | None = None,
            subresource: str | None = None) -> str:
    res = _res(resource)
    url = f"/api/{res.version}" if not res.group else f"/apis/{res.group}/{res.version}"
    if namespace is not None:
        url += f"/namespaces/{namespace}"
    url += f"/{res.plural}"
    if name is not None:
        url += f"/{name}"
    if subresource is not None:
        url += f"/{subresource}"
    return url


@dataclasses.dataclass
class Kube:
    """Async helpers over the emulator; every write goes through the HTTP API (watch events!)."""
    kmock: ClusterEmulator
    namespace: str = 'default'

    # -- generic --

    async def request(self, method: str, url: str, body: Any = None, *, content_type: str | None = None) -> Any:
        headers = {'Content-Type': content_type} if content_type else {}
        kwargs: dict[str, Any] = {'json': body} if body is not None else {}
        async with self.kmock.request(method, url, headers=headers, **kwargs) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = await resp.text()
            if resp.status >= 400:
                raise KubeAPIError(resp.status, data)
            return data

    def _ns(self, resource: str | kmock.resource, namespace: str | None) -> str | None:
        """The namespace for a URL: none for cluster-scoped resources (namespaces, CRDs, ...)."""
        return (namespace or self.namespace) if self.kmock._target(_res(resource)).namespaced else None

    async def create(self, resource: str | kmock.resource, body: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        ns = self._ns(resource, namespace or body.get('metadata', {}).get('namespace'))
        return await self.request('POST', url_for(resource, ns), dict(body))

    async def get(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.request('GET', url_for(resource, self._ns(resource, namespace), name))
        except KubeAPIError as e:
            if e.status == 404:
                return None
            raise

    async def patch(self, resource: str | kmock.resource, name: str, patch: Any, *, namespace: str | None = None,
                    subresource: str | None = None) -> dict[str, Any]:
        content_type = JSON_PATCH if isinstance(patch, list) else MERGE_PATCH
        return await self.request('PATCH', url_for(resource, self._ns(resource, namespace), name, subresource),
                                  patch, content_type=content_type)

    async def apply(self, resource: str | kmock.resource, body: Mapping[str, Any], *, manager: str = 'kmock',
                    force: bool = True, namespace: str | None = None, subresource: str | None = None,
                    ) -> dict[str, Any]:
        """Server-side apply of ``body`` (its metadata.name) as ``manager``."""
        ns = self._ns(resource, namespace or body.get('metadata', {}).get('namespace'))
        url = url_for(resource, ns, body['metadata']['name'], subresource)
        url += f"?fieldManager={manager}" + ('&force=true' if force else '')
        return await self.request('PATCH', url, dict(body), content_type=APPLY_PATCH)

    async def scale(self, name: str, replicas: int, *, manager: str = 'kube-controller-manager',
                    namespace: str | None = None) -> dict[str, Any]:
        """Set a Deployment's replicas through its ``scale`` subresource as an autoscaler does: read the
        Scale, PUT it back changed (a stale resourceVersion is a 409), as ``manager`` (the HPA
        controller's), which then owns spec.replicas in the Deployment's managedFields."""
        url = url_for(DEPLOYMENTS, self._ns(DEPLOYMENTS, namespace), name, 'scale')
        scale = await self.request('GET', url)
        scale['spec']['replicas'] = replicas
        return await self.request('PUT', f'{url}?fieldManager={manager}', scale, content_type='application/json')

    async def create_namespace(self, name: str) -> dict[str, Any]:
        return await self.request('POST', url_for(NAMESPACES), {'metadata': {'name': name}})

    async def delete(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        return await self.request('DELETE', url_for(resource, self._ns(resource, namespace), name))

    def peek(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        """The current stored state (a deep copy), straight from memory; None if absent/deleted."""
        key = (_res(resource), self._ns(resource, namespace), name)
        if key not in self.kmock.objects or self.kmock.objects[key].deleted:
            return None
        return copy.deepcopy(self.kmock.objects[key].raw)

    def objects(self, resource: str | kmock.resource, *, namespace: str | None = None,
                labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        res = _res(resource)
        ns = self._ns(res, namespace)
        result = []
        for (r, n, _), obj in self.kmock.objects.items():
            if r == res and n == ns and not obj.deleted:
                raw = obj.raw
                have = raw.get('metadata', {}).get('labels') or {}
                if all(have.get(k) == v for k, v in (labels or {}).items()):
                    result.append(copy.deepcopy(raw))
        return result

    def events_for(self, name: str, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """Core v1 Events (as posted by kopf) about an object with this name."""
        return [e for e in self.objects(EVENTS, namespace=namespace)
                if e.get('involvedObject', {}).get('name') == name]

    # -- ModelEndpoints --

    async def create_endpoint(self, name: str, spec: Mapping[str, Any], *, namespace: str | None = None,
                              labels: Mapping[str, str] | None = None,
                              annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {'name': name}
        if labels:
            meta['labels'] = dict(labels)
        if annotations:
            meta['annotations'] = dict(annotations)
        body = {'apiVersion': 'slotkeeper.io/v1alpha1', 'kind': 'ModelEndpoint',
                'metadata': meta, 'spec': dict(spec)}
        return await self.create(MODELENDPOINTS, body, namespace=namespace)

    async def patch_endpoint(self, name: str, spec: Mapping[str, Any], *,
                             namespace: str | None = None) -> dict[str, Any]:
        """Merge-patch the spec (``None`` values delete keys; lists are replaced)."""
        return await self.patch(MODELENDPOINTS, name, {'spec': dict(spec)}, namespace=namespace)

    def endpoint(self, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        return self.peek(MODELENDPOINTS, name, namespace=namespace)

    # -- the Deployment controller & kubelet, simulated --

    async def create_deployment(self, name: str, *, labels: Mapping[str, str] | None = None,
                                replicas: int = 1, namespace: str | None = None,
                                image: str = 'example/serving:test') -> dict[str, Any]:
        labels = dict(labels or {'app': name})
        body = {
            'apiVersion': 'apps/v1', 'kind': 'Deployment',
            'metadata': {'name': name, 'labels': labels},
            'spec': {
                'replicas': replicas,
                'selector': {'matchLabels': labels},
                'template': {'metadata': {'labels': labels},
                             'spec': {'containers': [{'name': 'server', 'image': image}]}},
            },
        }
        return await self.create(DEPLOYMENTS, body, namespace=namespace)

    async def set_deployment_status(
            self, name: str, *, namespace: str | None = None,
            replicas: int | None = None, ready: int | None = None, updated: int | None = None,
            available: int | None = None, observed_generation: int | None = None,
            conditions: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """
        Patch ``/status`` as the Deployment controller would. Defaults: everything equals
        ``spec.replicas`` (a finished rollout) and ``observedGeneration = metadata.generation``.
        Zero counters are written as 0 (the real controller omits them: treat absent as 0).
        """
        dep = self.peek(DEPLOYMENTS, name, namespace=namespace)
        if dep is None:
            raise LookupError(f"Deployment {name!r} does not exist")
        spec_replicas = dep.get('spec', {}).get('replicas', 1)
        replicas = spec_replicas if replicas is None else replicas
        ready = replicas if ready is None else ready
        updated = replicas if updated is None else updated
        available = ready if available is None else available
        status: dict[str, Any] = {
            'replicas': replicas, 'readyReplicas': ready, 'updatedReplicas': updated,
            'availableReplicas': available, 'unavailableReplicas': max(0, replicas - available) or None,
            'observedGeneration': (dep['metadata'].get('generation', 1)
                                   if observed_generation is None else observed_generation),
        }
        if conditions is not None:
            status['conditions'] = conditions
        return await self.patch(DEPLOYMENTS, name, {'status': status}, namespace=namespace, subresource='status')

    async def create_pod(
            self, name: str, *, labels: Mapping[str, str], namespace: str | None = None,
            waiting_reason: str | None = 'CrashLoopBackOff', container: str = 'server',
            restart_count: int = 3, phase: str = 'Running',
    ) -> dict[str, Any]:
        """Create a Pod, then set its status as a kubelet would (create drops the status)."""
        body = {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': name, 'labels': dict(labels)},
                'spec': {'containers': [{'name': container, 'image': 'example/serving:test'}]}}
        await self.create(PODS, body, namespace=namespace)
        ready = waiting_reason is None
        state = ({'waiting': {'reason': waiting_reason, 'message': f'simulated {waiting_reason}'}}
                 if waiting_reason else {'running': {'startedAt': _now()}})
        status = {
            'phase': phase,
            'conditions': [{'type': 'Ready', 'status': 'True' if ready else 'False'}],
            'containerStatuses': [{'name': container, 'ready': ready, 'started': ready,
                                   'restartCount': restart_count, 'image': 'example/serving:test',
                                   'imageID': '', 'state': state}],
        }
        return await self.patch(PODS, name, {'status': status}, namespace=namespace, subresource='status')


# ----------------------------------------------------------------------------------------------
# Running the operator.
# ----------------------------------------------------------------------------------------------

_SERVER_URL: contextvars.ContextVar[str | None] = contextvars.ContextVar('kmock_server_url', default=None)
_OPERATOR_OWNER: contextvars.ContextVar[object | None] = contextvars.ContextVar('kmock_operator_owner', default=None)
_LOGIN_REGISTRIES: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


async def _kmock_login(**_: Any) -> kopf.ConnectionInfo | None:
    """The login handler: connect to the KMock of the operator that runs this handler."""
    url = _SERVER_URL.get()
    if url is None:
        return None
    return kopf.ConnectionInfo(server=url, default_namespace='default', priority=100)


def ensure_login_handler(registry: kopf.OperatorRegistry) -> None:
    """Add the KMock login handler once per registry (it reads the URL from a contextvar)."""
    if registry not in _LOGIN_REGISTRIES:
        kopf.on.login(registry=registry, id='kmock_login')(_kmock_login)
        _LOGIN_REGISTRIES.add(registry)


def make_test_settings() -> kopf.OperatorSettings:
    """kopf settings for tests; everything else stays at kopf's defaults."""
    settings = kopf.OperatorSettings()
    # Scanning stays on, as in production: kopf lists & watches namespaces (namespaced mode) and
    # CRDs (cluster-wide), which the emulator serves.
    settings.peering.standalone = True  # no peering objects, no pausing
    settings.process.ultimate_exiting_timeout = None  # never SIGKILL the pytest process
    settings.networking.error_backoffs = (0.05, 0.1, 0.2, 0.5, 1)  # fast API retries (prod: 1..21s)
    settings.execution.default_backoff = 0.5  # retry of failed handlers (prod default: 60s)
    settings.queueing.error_delays = (0.1, 0.2, 0.5, 1, 2)  # throttling after framework errors (prod: 1..610s)
    return settings


class _NotOwned(Collection[asyncio.Task[Any]]):
    """For kopf.run_tasks(ignored=...): every task that the operator did not create is "ignored"."""

    def __init__(self, owned: weakref.WeakSet[asyncio.Task[Any]]) -> None:
        self._owned = owned

    def __contains__(self, task: object) -> bool:
        return task not in self._owned

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(())

    def __len__(self) -> int:
        return 0


@contextlib.contextmanager
def _tracking_tasks(owner: object, owned: weakref.WeakSet[asyncio.Task[Any]]) -> Iterator[None]:
    """Mark every task created from the operator's context (transitively) as operator-owned."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        if _OPERATOR_OWNER.get() is owner:
            owned.add(task)
        return task

    loop.set_task_factory(factory)
    try:
        yield
    finally:
        if loop.get_task_factory() is factory:
            loop.set_task_factory(previous)


@dataclasses.dataclass(eq=False)
class OperatorHandle:
    kmock: ClusterEmulator
    registry: kopf.OperatorRegistry
    settings: kopf.OperatorSettings
    memo: kopf.Memo
    namespaces: tuple[str, ...]
    clusterwide: bool
    task: asyncio.Task[None]
    stop_flag: asyncio.Event
    ready_flag: asyncio.Event
    insights: Any  # kopf's Insights: watched resources & namespaces
    indexers: Any  # kopf's OperatorIndexers
    owned_tasks: weakref.WeakSet[asyncio.Task[Any]]
    root_tasks: list[asyncio.Task[Any]]  # filled once kopf has spawned them
    memories: Any  # kopf's ResourceMemories: per-object state incl. the running daemons

    @property
    def indices(self) -> Mapping[str, kopf.Index[Any, Any]]:
        """The operator's in-memory indices, by index name (= handler id), e.g. ``indices['by_slot']``."""
        return self.indexers.indices

    def check(self) -> None:
        """Raise if the operator has exited (crashed or stopped) -- call it inside polls if useful."""
        if self.task.done():
            exc = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"The operator has exited: {exc!r}") from exc

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until startup handlers ran AND every watch-stream kopf wants is subscribed in KMock."""
        def ready() -> bool:
            self.check()
            if not (self.ready_flag.is_set() and self.insights.ready_resources.is_set()
                    and self.insights.ready_namespaces.is_set()):
                return False
            for res in self.insights.watched_resources:
                namespaces = [None] if not res.namespaced else list(self.insights.namespaces)
                for ns in namespaces:
                    if not self.kmock.watch_count(kmock.resource(res.group, res.version, res.plural), ns):
                        return False
            return True
        await eventually(ready, timeout=timeout, interval=0.01, message="operator readiness")

    async def stop(self, timeout: float = 10.0) -> None:
        """
        Graceful stop via the stop-flag (cleanup handlers run, daemons are stopped); cancel on timeout.

        A kopf race: an event processed during the shutdown can spawn a daemon/timer AFTER kopf's
        daemon killer has finished; kopf then waits 5 s (hard-coded) for it and cancels it. Here,
        such late daemons get their ``stopped`` flag set, exactly as the daemon killer does.
        """
        self.stop_flag.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.task.done() and loop.time() < deadline:
            roots_done = self.root_tasks and all(task.done() for task in self.root_tasks)
            if roots_done:
                for memory in list(self.memories.iter_all_daemon_memories()):
                    for daemon in list(memory.running_daemons.values()):
                        if not daemon.stopper.is_set():
                            logger.debug("Stopping a daemon spawned during the shutdown: %r", daemon.handler)
                            daemon.stopper.set(reason=_kopf_stoppers.DaemonStoppingReason.OPERATOR_EXITING)
            await asyncio.wait({self.task}, timeout=0.01)
        done, _ = await asyncio.wait({self.task}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            logger.warning("The operator did not stop in %ss; cancelling it.", timeout)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if not self.task.cancelled() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def running_operator(
        emulator: ClusterEmulator,
        registry: kopf.OperatorRegistry,
        *,
        namespaces: Iterable[str] = ('default',),
        clusterwide: bool = False,
        settings: kopf.OperatorSettings | None = None,
        memo: kopf.Memo | None = None,
        wait_ready: bool = True,
        stop_timeout: float = 10.0,
) -> AsyncIterator[OperatorHandle]:
    """
    Run ``kopf.spawn_tasks`` + ``kopf.run_tasks`` (what ``kopf.operator()`` does) in a task of the
    current loop, connected to ``emulator`` by a login handler; stop it gracefully on exit.
    """
    url = str(emulator.url).rstrip('/')
    settings = settings if settings is not None else make_test_settings()
    memo = memo if memo is not None else kopf.Memo()
    memo.setdefault('kube_url', url)
    memo.setdefault('kube_config', make_kube_config(url))
    namespaces = tuple(namespaces) if not clusterwide else ()
    memo.setdefault('namespaces', namespaces)  # slotkeeper's own watches (owned.py) serve the same
    ensure_login_handler(registry)

    stop_flag = asyncio.Event()
    ready_flag = asyncio.Event()
    insights = _kopf_references.Insights()
    indexers = _kopf_indexing.OperatorIndexers()
    memories = _kopf_inventory.ResourceMemories()
    owner = object()
    owned: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
    root_tasks: list[asyncio.Task[Any]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        in_main_thread = threading.current_thread() is threading.main_thread()
        signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
        tasks = await kopf.spawn_tasks(
            registry=registry, settings=settings, memo=memo, insights=insights, indexers=indexers,
            memories=memories, standalone=True, clusterwide=clusterwide, namespaces=namespaces,
            stop_flag=stop_flag, ready_flag=ready_flag,
        )
        root_tasks.extend(tasks)
        # kopf grabs SIGINT/SIGTERM when in the main thread; give Ctrl+C back to pytest/asyncio.
        for sig, previous in signals.items():
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        # kopf.operator() would treat every task created after its start as its own "hung" task
        # at exit (wait 5s, then cancel): KMock's server connections, the test's own task. Not here.
        await kopf.run_tasks(tasks, ignored=_NotOwned(owned))

    with _tracking_tasks(owner, owned):
        url_token = _SERVER_URL.set(url)
        owner_token = _OPERATOR_OWNER.set(owner)
        try:
            task = asyncio.create_task(run(), name='kopf-operator')
        finally:
            _OPERATOR_OWNER.reset(owner_token)
            _SERVER_URL.reset(url_token)

        handle = OperatorHandle(
            kmock=emulator, registry=registry, settings=settings, memo=memo,
            namespaces=namespaces, clusterwide=clusterwide, task=task,
            stop_flag=stop_flag, ready_flag=ready_flag, insights=insights, indexers=indexers,
            owned_tasks=owned, root_tasks=root_tasks, memories=memories,
        )
        try:
            if wait_ready:
                await handle.wait_ready()
            yield handle
        finally:
            await handle.stop(timeout=stop_timeout)


# ----------------------------------------------------------------------------------------------
# The emulator in a thread of its own: for synchronous clients, console scripts, subprocesses.
# ----------------------------------------------------------------------------------------------

DOUBLE_CONTEXT = 'kmock-double'


def write_kubeconfig(path: str | os.PathLike[str], server: str, *, context: str = DOUBLE_CONTEXT,
                     namespace: str = 'default') -> pathlib.Path:
    """A kubeconfig with one context (``context``, the current one) for ``server`` (plain HTTP, a dummy token)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        'apiVersion': 'v1', 'kind': 'Config', 'current-context': context,
        'clusters': [{'name': context, 'cluster': {'server': server}}],
        'users': [{'name': context, 'user': {'token': context}}],
        'contexts': [{'name': context, 'context': {'cluster': context, 'user': context, 'namespace': namespace}}],
    }, sort_keys=False))
    return path


@dataclasses.dataclass(eq=False)
class ServedDouble:
    """A running :func:`served_double`: where it listens and how to reach its state safely."""
    url: str  # http://127.0.0.1:<port>, no trailing slash
    emulator: ClusterEmulator  # lives in the double's thread: read/change it through call()
    kubeconfig: pathlib.Path  # KUBECONFIG for the official client, kubectl-like tools, subprocesses
    context: str
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """Run ``fn(*args)`` in the double's event loop (its state is not thread-safe) and return the
        result; coroutine functions are awaited there, e.g. ``served.call(Kube(served.emulator).create, ...)``."""
        async def run() -> Any:
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def crashes(self) -> list[Exception]:
        """The emulator's own failures so far (API errors such as 404/409/422 are not crashes)."""
        return self.call(lambda: [e for e in self.emulator.errors if not isinstance(e, kmock.KubernetesError)])

    def api_client(self) -> kubernetes.client.ApiClient:
        """The official client configured from the kubeconfig (as production code would load it)."""
        import kubernetes.config
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig), context=self.context)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment variables for a subprocess that should talk to the double: ``KUBECONFIG``."""
        env = dict(os.environ if base is None else base)
        env['KUBECONFIG'] = str(self.kubeconfig)
        return env


@contextlib.contextmanager
def served_double(directory: str | os.PathLike[str] | None = None, *, namespace: str = 'default',
                  factory: Callable[..., ClusterEmulator] = ClusterEmulator, declare: bool = True,
                  **emulator_kwargs: Any) -> Iterator[ServedDouble]:
    """
    Serve a :class:`ClusterEmulator` over HTTP on 127.0.0.1 from a background thread with its own
    event loop, and write a kubeconfig for it (``<directory>/kubeconfig``; default: a temporary
    directory removed afterwards). For code that must not run on the test's loop: the synchronous
    official client, console scripts in subprocesses (``subprocess.run(..., env=served.env())``),
    the contract tests. ``declare`` installs the builtins and the project's CRDs
    (:func:`declare_resources`); ``emulator_kwargs`` go to ``factory`` (the emulator class)::

        with served_double(tmp_path) as served:
            api = served.api_client()                      # or KUBECONFIG=served.kubeconfig
            kubernetes.client.CoreV1Api(api).list_namespace()
            served.call(lambda: served.emulator.objects)   # touch the state in its own thread

    On exit the server stops; the emulator's crashes (not API errors) are in ``served.crashes()``
    while it runs -- check them before leaving the block if a test wants them to fail it.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name='kmock-double', daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()
    cleanup = tempfile.TemporaryDirectory(prefix='kmock-double-') if directory is None else None

    async def start() -> tuple[ClusterEmulator, kmock.Server]:
        emulator = await stack.enter_async_context(factory(**emulator_kwargs))
        server = await stack.enter_async_context(kmock.Server(emulator))
        if declare:
            declare_resources(emulator)
        return emulator, server

    try:
        emulator, server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        url = str(server.url).rstrip('/')
        kubeconfig = write_kubeconfig(pathlib.Path(cleanup.name if cleanup else directory) / 'kubeconfig', url,
                                      namespace=namespace)
        yield ServedDouble(url=url, emulator=emulator, kubeconfig=kubeconfig, context=DOUBLE_CONTEXT, loop=loop)
    finally:
        try:
            asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()
            if cleanup is not None:
                cleanup.cleanup()
