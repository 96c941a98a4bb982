"""A stateful stand-in for the Consul agent HTTP API, for affinity's tests.

Why it exists: no Consul binary can be installed on the build machines, yet the Consul
registry backend must be tested against something that behaves like an agent — statuses
that start ``critical``, indexes that move (and sometimes go backwards), blocking queries
that wake up without a change, health checks that really probe a URL. This module follows
the documented Consul agent HTTP API (conventions, blocking queries,
service/check registration, TTL and HTTP checks, maintenance, health/catalog reads, KV)
point by point; the conformance tests in ``tests/consul/`` hold it to that, and can be
pointed at a real agent (``AFFINITY_TEST_CONSUL``) to check the reference itself.

Three ways to run it:

* in-process: ``AgentStandIn(StandInConfig(...)).start(port=0)`` runs the server on its own
  event loop in a background thread and returns the bound port; ``stop()``, ``reset()``,
  ``down()``/``up()`` (close/reopen the listening socket on the same port, dropping open
  connections), ``pause()``/``resume()``, ``force_index()``, ``set_serf_health()``.
* as a process: ``python tests/consul_agent.py --port N [--acl-token-file F]``, printing
  ``CONSUL_STANDIN_READY http://127.0.0.1:<port>`` once listening; ``StandInProcess``
  starts, kills, restarts (same port), freezes (SIGSTOP) and thaws it.
* over HTTP, the control interface under ``/_standin/`` (never under ``/v1/``, no ACLs):
  ``POST reset``, ``POST index?set=N``, ``POST pause[?seconds=S]``, ``POST resume``,
  ``POST down?seconds=S``, ``POST serf?status=passing|critical``, ``POST sync-checks``,
  ``POST reap-tombstones``, ``GET state``.

Known simplifications against a real agent are listed in ``DEVIATIONS``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import random
import re
import selectors
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

__all__ = [
    "DEVIATIONS",
    "AgentStandIn",
    "StandInConfig",
    "StandInProcess",
    "StandInServer",
    "format_go_duration",
    "parse_go_duration",
]

log = logging.getLogger("consul_standin")

T = TypeVar("T")

DEVIATIONS = """\
* One node, one datacenter: the stand-in is agent, catalog and leader at once; anti-entropy,
  gossip and Raft are not modelled (serfHealth only flips through the control interface).
* `?filter` (bexpr) is rejected with 400 instead of being evaluated; `near` is ignored;
  `?cached` is accepted but no X-Cache/Age headers are sent.
* Only HTTP, TCP and TTL checks run; script/gRPC/H2PING/UDP/Docker/OSService/alias checks
  are rejected with 400 (a real agent would accept and run them).
* Connect/Proxy/Kind/TaggedAddresses/SocketPath/Locality are accepted only when empty.
* Sessions (KV `acquire`/`release`) are not implemented (400).
* ACL mode knows two identities: the configured management token(s) and anonymous (deny-all
  default policy); there are no policies, roles or partial grants.
* Agent-local `/v1/agent/service/:id` hash blocking is emulated; other agent endpoints
  do not block. No state is persisted: `reset` (or a process restart) models a `-dev` agent
  restart, where a real agent with a data dir would restore its services.
* Intervals below `min_check_interval` are raised to it (1 s by default, like Consul);
  DeregisterCriticalServiceAfter minimum and reaper period are configurable (60 s / 30 s).
* An unknown check ID on check/pass|warn|fail|update answers 500 "does not have associated
  TTL" as the reference says; current agents answer 404 "Unknown check ID" — set
  `unknown_check_404=True` to emulate them.
* Where the reference and Consul's source differ, the source wins: a single-key KV read
  reports the entry's ModifyIndex (the KV table index only when the key is missing), and
  an anonymous single-key KV read is 403 (listings are filtered).
* Check output texts copy Go's wording for the common cases (refused, timeout, x509);
  rarer network errors carry Python's wording.
"""

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)
ANONYMOUS_HINT = "The anonymous token is used implicitly when a request does not specify a token."
SERVICE_MAINT_PREFIX = "_service_maintenance:"
NODE_MAINT_ID = "_node_maintenance"
SERF_ID = "serfHealth"
KV_MAX_VALUE = 512 * 1024
READY_PREFIX = "CONSUL_STANDIN_READY "


class ApiError(Exception):
    """An error answered as Consul does: a status code and a plain-text sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DecodeError(ApiError):
    """A request body Go's encoding/json would refuse (``400 Request decode failed: …``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, f"Request decode failed: {detail}")


@dataclass(frozen=True, slots=True)
class StandInConfig:
    """Knobs of the stand-in; timing ones exist so tests need not wait real minutes."""

    host: str = "127.0.0.1"
    node_name: str = "standin-node"
    datacenter: str = "dc1"
    acl_tokens: frozenset[str] = frozenset()
    deregister_min: float = 60.0
    reap_interval: float = 30.0
    min_check_interval: float = 1.0
    check_update_interval: float = 300.0
    default_query_time: float = 300.0
    max_query_time: float = 600.0
    check_ca_file: str | None = None
    unknown_check_404: bool = False

    @property
    def acl_enabled(self) -> bool:
        return bool(self.acl_tokens)


# --------------------------------------------------------------------------------------
# Go-compatible parsing


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("1m30s", "500ms"), as time.ParseDuration reads it.

    Consul reads every duration this way, so a bare number such as "10" is an error.
    """
    body = text[1:] if text[:1] in ("+", "-") else text
    sign = -1.0 if text.startswith("-") else 1.0
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"time: invalid duration {_q(text)}")
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {_q(text)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Go's Duration.String(), so durations echoed in check JSON look like Consul's."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 1_000_000_000:
        for unit, size, digits in (("ms", 1_000_000, 6), ("µs", 1_000, 3), ("ns", 1, 0)):
            if ns >= size:
                return sign + _decimal(ns, size, digits) + unit
    whole, _ = divmod(ns, 1_000_000_000)
    hours, rest = divmod(whole, 3600)
    minutes, _secs = divmod(rest, 60)
    sec = _decimal(ns - (hours * 3600 + minutes * 60) * 1_000_000_000, 1_000_000_000, 9)
    if hours:
        return f"{sign}{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{sign}{minutes}m{sec}s"
    return f"{sign}{sec}s"


def _decimal(value: int, size: int, digits: int) -> str:
    whole, frac = divmod(value, size)
    if not frac:
        return str(whole)
    return f"{whole}." + f"{frac:0{digits}d}".rstrip("0")


def parse_go_bool(text: str) -> bool:
    """strconv.ParseBool: the only spellings Consul accepts for `passing` and `enable`."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(text)


def _q(text: str) -> str:
    """Go's %q, near enough for error messages."""
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------
# Request bodies: Go encoding/json semantics (case-insensitive keys, unknown keys refused)


_JSON_KIND = {dict: "object", list: "array", str: "string", bool: "bool", int: "number"}
_JSON_KIND[float] = "number"

_GO_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "[]string": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "map[string]string": lambda v: (
        isinstance(v, dict) and all(isinstance(i, str) for i in v.values())
    ),
    "map[string][]string": lambda v: (
        isinstance(v, dict)
        and all(isinstance(i, list) and all(isinstance(s, str) for s in i) for i in v.values())
    ),
    "duration": lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "[]object": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
    "any": lambda v: True,
}

# normalised key (lower case, no "_") -> (canonical name, Go type)
FieldSpec = Mapping[str, tuple[str, str]]

SERVICE_FIELDS: FieldSpec = {
    "id": ("ID", "string"),
    "name": ("Name", "string"),
    "tags": ("Tags", "[]string"),
    "address": ("Address", "string"),
    "port": ("Port", "int"),
    "meta": ("Meta", "map[string]string"),
    "weights": ("Weights", "object"),
    "enabletagoverride": ("EnableTagOverride", "bool"),
    "check": ("Check", "object"),
    "checks": ("Checks", "[]object"),
    "token": ("Token", "string"),
    "kind": ("Kind", "any"),
    "taggedaddresses": ("TaggedAddresses", "any"),
    "proxy": ("Proxy", "any"),
    "connect": ("Connect", "any"),
    "socketpath": ("SocketPath", "any"),
    "locality": ("Locality", "any"),
    "namespace": ("Namespace", "any"),
    "partition": ("Partition", "any"),
}
UNSUPPORTED_SERVICE_FIELDS = (
    "Kind",
    "TaggedAddresses",
    "Proxy",
    "Connect",
    "SocketPath",
    "Locality",
    "Namespace",
    "Partition",
)

WEIGHT_FIELDS: FieldSpec = {"passing": ("Passing", "int"), "warning": ("Warning", "int")}

CHECK_FIELDS: FieldSpec = {
    "checkid": ("CheckID", "string"),
    "name": ("Name", "string"),
    "status": ("Status", "string"),
    "notes": ("Notes", "string"),
    "http": ("HTTP", "string"),
    "header": ("Header", "map[string][]string"),
    "method": ("Method", "string"),
    "body": ("Body", "string"),
    "disableredirects": ("DisableRedirects", "bool"),
    "tcp": ("TCP", "string"),
    "tcpusetls": ("TCPUseTLS", "bool"),
    "interval": ("Interval", "duration"),
    "timeout": ("Timeout", "duration"),
    "ttl": ("TTL", "duration"),
    "tlsservername": ("TLSServerName", "string"),
    "tlsskipverify": ("TLSSkipVerify", "bool"),
    "deregistercriticalserviceafter": ("DeregisterCriticalServiceAfter", "duration"),
    "outputmaxsize": ("OutputMaxSize", "int"),
    "successbeforepassing": ("SuccessBeforePassing", "int"),
    "failuresbeforewarning": ("FailuresBeforeWarning", "int"),
    "failuresbeforecritical": ("FailuresBeforeCritical", "int"),
    "serviceid": ("ServiceID", "string"),
    # Check kinds the stand-in cannot run: decoded so the refusal names the kind.
    "args": ("ScriptArgs", "any"),
    "scriptargs": ("ScriptArgs", "any"),
    "grpc": ("GRPC", "any"),
    "grpcusetls": ("GRPCUseTLS", "any"),
    "h2ping": ("H2PING", "any"),
    "h2pingusetls": ("H2PingUseTLS", "any"),
    "udp": ("UDP", "any"),
    "osservice": ("OSService", "any"),
    "dockercontainerid": ("DockerContainerID", "any"),
    "shell": ("Shell", "any"),
    "aliasnode": ("AliasNode", "any"),
    "aliasservice": ("AliasService", "any"),
}
UNRUNNABLE_CHECK_FIELDS = (
    "ScriptArgs",
    "GRPC",
    "H2PING",
    "UDP",
    "OSService",
    "DockerContainerID",
    "AliasNode",
    "AliasService",
)

# Stand-alone check registration (CheckDefinition) adds ID and ServiceID.
CHECK_DEFINITION_FIELDS: FieldSpec = {
    **CHECK_FIELDS,
    "id": ("ID", "string"),
    "token": ("Token", "string"),
}

CHECK_UPDATE_FIELDS: FieldSpec = {"status": ("Status", "string"), "output": ("Output", "string")}


def decode_struct(raw: object, spec: FieldSpec, struct: str) -> dict[str, Any]:
    """Map a JSON object onto canonical field names the way Consul's decoder does.

    Keys match case-insensitively and with or without underscores (Consul's snake_case
    aliases); unknown keys and wrongly typed values are refused, as `DisallowUnknownFields`
    makes a real agent do. JSON null leaves a field unset.
    """
    if not isinstance(raw, dict):
        kind = _JSON_KIND.get(type(raw), "null")
        raise DecodeError(f"json: cannot unmarshal {kind} into Go value of type {struct}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        entry = spec.get(key.lower().replace("_", ""))
        if entry is None:
            raise DecodeError(f"json: unknown field {_q(key)}")
        canonical, go_type = entry
        if value is None:
            continue
        if not _GO_TYPE_CHECKS[go_type](value):
            kind = _JSON_KIND.get(type(value), "value")
            shown = "time.Duration" if go_type == "duration" else go_type
            raise DecodeError(
                f"json: cannot unmarshal {kind} into Go struct field "
                f"{struct}.{canonical} of type {shown}"
            )
        out[canonical] = value
    return out


def decode_duration(fields: Mapping[str, Any], name: str) -> float:
    """A duration field: Go duration string, or a JSON number counted in nanoseconds."""
    value = fields.get(name)
    if value is None:
        return 0.0
    if isinstance(value, str):
        try:
            return parse_go_duration(value)
        except ValueError as exc:
            raise DecodeError(str(exc)) from None
    return float(value) / 1e9


# --------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class ServiceRecord:
    """One service instance as the agent holds it."""

    id: str
    name: str
    tags: list[str] = field(default_factory=list)
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    create_index: int = 0
    modify_index: int = 0

    def definition(self) -> tuple[Any, ...]:
        """What decides whether a re-registration changed the catalog entry."""
        return (
            self.name,
            tuple(self.tags),
            self.address,
            self.port,
            tuple(sorted(self.meta.items())),
            tuple(sorted(self.weights.items())),
            self.enable_tag_override,
        )


@dataclass(slots=True)
class CheckSpec:
    """A check definition (Consul's CheckType) after decoding and defaulting."""

    check_id: str
    name: str
    kind: str  # "ttl", "http", "tcp" or "" (maintenance and node checks)
    status: str = ""
    notes: str = ""
    ttl: float = 0.0
    interval: float = 0.0
    timeout: float = 0.0
    http: str = ""
    method: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    disable_redirects: bool = False
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    tcp: str = ""
    deregister_after: float = 0.0
    output_max_size: int = 4096
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0


@dataclass(eq=False, slots=True)
class CheckRecord:
    """A registered check: the agent's live view and what was last synced to the catalog.

    The two differ because Consul defers output-only changes by `check_update_interval`
    while status changes reach the catalog at once.
    """

    spec: CheckSpec
    service_id: str
    service_name: str
    status: str
    output: str
    synced_status: str
    synced_output: str
    create_index: int
    modify_index: int
    critical_since: float | None = None
    successes: int = 0
    failures: int = 0
    task: asyncio.Task[None] | None = None
    ttl_timer: asyncio.TimerHandle | None = None
    deferred_sync: asyncio.TimerHandle | None = None

    @property
    def check_id(self) -> str:
        return self.spec.check_id


@dataclass(slots=True)
class KVEntry:
    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0


# --------------------------------------------------------------------------------------
# Decoding and validating registrations


def decode_check(raw: object, struct: str, spec: FieldSpec = CHECK_FIELDS) -> dict[str, Any]:
    """Decode one check object; durations become seconds under the same keys."""
    fields = decode_struct(raw, spec, struct)
    for name in ("Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter"):
        if name in fields:
            fields[name] = decode_duration(fields, name)
    return fields


def check_problem(fields: Mapping[str, Any]) -> str | None:
    """Consul's CheckType.Validate, with its messages, plus the kinds the stand-in lacks."""
    ttl, interval = fields.get("TTL", 0.0), fields.get("Interval", 0.0)
    interval_kind = bool(fields.get("HTTP") or fields.get("TCP"))
    unrunnable = [name for name in UNRUNNABLE_CHECK_FIELDS if fields.get(name)]
    if interval > 0 and ttl > 0:
        return "Interval and TTL cannot both be specified"
    if unrunnable:
        return f"the Consul stand-in does not run {unrunnable[0]} checks"
    if interval_kind and interval <= 0:
        return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
    if not interval_kind and ttl <= 0:
        return "TTL must be > 0 for TTL checks"
    if fields.get("OutputMaxSize", 0) < 0:
        return "MaxOutputMaxSize must be positive"
    return None


def make_check_spec(fields: Mapping[str, Any], check_id: str, name: str) -> CheckSpec:
    """Build the runnable definition from decoded, validated check fields."""
    kind = "http" if fields.get("HTTP") else "tcp" if fields.get("TCP") else "ttl"
    return CheckSpec(
        check_id=check_id,
        name=name,
        kind=kind,
        status=fields.get("Status", ""),
        notes=fields.get("Notes", ""),
        ttl=fields.get("TTL", 0.0),
        interval=fields.get("Interval", 0.0),
        timeout=fields.get("Timeout", 0.0),
        http=fields.get("HTTP", ""),
        method=fields.get("Method", "") or "GET",
        header=dict(fields.get("Header", {})),
        body=fields.get("Body", ""),
        disable_redirects=fields.get("DisableRedirects", False),
        tls_skip_verify=fields.get("TLSSkipVerify", False),
        tls_server_name=fields.get("TLSServerName", ""),
        tcp=fields.get("TCP", ""),
        deregister_after=fields.get("DeregisterCriticalServiceAfter", 0.0),
        output_max_size=fields.get("OutputMaxSize", 0) or 4096,
        success_before_passing=fields.get("SuccessBeforePassing", 0),
        failures_before_warning=fields.get("FailuresBeforeWarning", 0),
        failures_before_critical=fields.get("FailuresBeforeCritical", 0),
    )


_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def meta_problem(meta: Mapping[str, str]) -> str | None:
    """structs.ValidateServiceMetadata, with its messages."""
    if len(meta) > 64:
        return "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        reason = _meta_pair_problem(key, value)
        if reason:
            return f"Couldn't load metadata pair ('{key}', '{value}'): {reason}"
    return None


def _meta_pair_problem(key: str, value: str) -> str | None:
    if not key:
        return "Key cannot be blank"
    if not _META_KEY.match(key):
        return "Key contains invalid characters"
    if len(key) > 128:
        return "Key is too long (limit: 128 characters)"
    if key.startswith("consul-"):
        return "Key prefix 'consul-' is reserved for internal use"
    if len(value) > 512:
        return "Value is too long (limit: 512 characters)"
    return None


def weights_problem(weights: Mapping[str, int]) -> str | None:
    """structs.ValidateWeights."""
    if weights.get("Passing", 0) < 1:
        return "Passing must be greater than 0"
    if weights.get("Warning", 0) < 0:
        return "Warning must be greater or equal than 0"
    if weights.get("Passing", 0) > 65535 or weights.get("Warning", 0) > 65535:
        return "Weight must be smaller than 65536"
    return None


@dataclass(slots=True)
class Registration:
    """A decoded `PUT /v1/agent/service/register` body."""

    fields: dict[str, Any]
    checks: list[dict[str, Any]]


def decode_registration(raw: object) -> Registration:
    """Decode the whole body first: Consul reports decode errors before anything else."""
    fields = decode_struct(raw, SERVICE_FIELDS, "ServiceDefinition")
    for name in UNSUPPORTED_SERVICE_FIELDS:
        if fields.get(name):
            raise DecodeError(f"the Consul stand-in does not implement field {_q(name)}")
    if "Weights" in fields:
        fields["Weights"] = decode_struct(fields["Weights"], WEIGHT_FIELDS, "Weights")
    checks = []
    if fields.get("Check"):
        checks.append(decode_check(fields["Check"], "CheckType"))
    checks.extend(decode_check(item, "CheckType") for item in fields.get("Checks", []))
    return Registration(fields, checks)


def validate_registration(reg: Registration) -> tuple[ServiceRecord, list[CheckSpec]]:
    """AgentRegisterService's validation, in its order and with its messages."""
    fields = reg.fields
    weights = {"Passing": 1, "Warning": 1}
    if "Weights" in fields:
        weights = {"Passing": 0, "Warning": 0, **fields["Weights"]}
        problem = weights_problem(weights)
        if problem:
            raise ApiError(400, f"Invalid Weights: {problem}")
    problem = meta_problem(fields.get("Meta", {}))
    if problem:
        raise ApiError(400, f"Invalid Service Meta: {problem}")
    service = ServiceRecord(
        id=fields.get("ID") or fields["Name"],
        name=fields["Name"],
        tags=list(fields.get("Tags", [])),
        address=fields.get("Address", ""),
        port=fields.get("Port", 0),
        meta=dict(fields.get("Meta", {})),
        weights=weights,
        enable_tag_override=fields.get("EnableTagOverride", False),
    )
    return service, _service_check_specs(service, reg.checks)


def _service_check_specs(service: ServiceRecord, checks: list[dict[str, Any]]) -> list[CheckSpec]:
    for fields in checks:
        problem = check_problem(fields)
        if problem:
            raise ApiError(400, f"Invalid check: {problem}")
    for fields in checks:
        if fields.get("Status", "") not in ("", *STATUSES):
            raise ApiError(400, "Status for checks must 'passing', 'warning', 'critical'")
    specs = []
    for number, fields in enumerate(checks, start=1):
        check_id = fields.get("CheckID") or f"service:{service.id}"
        if not fields.get("CheckID") and len(checks) > 1:
            check_id += f":{number}"
        name = fields.get("Name") or f"Service '{service.name}' check"
        specs.append(make_check_spec(fields, check_id, name))
    return specs


# --------------------------------------------------------------------------------------
# Probes: what an agent's HTTP and TCP checks observe


def _go_op(method: str) -> str:
    return method[:1].upper() + method[1:].lower()


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _x509_reason(exc: BaseException, host: str) -> str:
    """Go's wording for the certificate failures Python reports differently."""
    text = str(getattr(exc, "verify_message", "") or exc)
    if "IP address mismatch" in text:
        return (
            f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        )
    if "mismatch" in text or "not valid for" in text:
        return f"x509: certificate is not valid for {host}"
    if "expired" in text:
        return "x509: certificate has expired or is not yet valid"
    return "x509: certificate signed by unknown authority"


def _http_error_output(spec: CheckSpec, exc: BaseException) -> str:
    prefix = f"{_go_op(spec.method)} {_q(spec.http)}"
    if isinstance(exc, TimeoutError):
        return (
            f"{prefix}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = _x509_reason(exc.certificate_error, spec.tls_server_name or exc.host)
        return f"{prefix}: tls: failed to verify certificate: {reason}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"{prefix}: dial tcp {_host_port(spec.http)}: connect: connection refused"
        return f"{prefix}: dial tcp {_host_port(spec.http)}: {exc.os_error.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"{prefix}: remote error: tls: {exc.reason or exc}"
    return f"{prefix}: {exc}"


def _status_for_http(code: int) -> str:
    """Consul's mapping: 2xx passing, 429 warning, everything else critical."""
    if 200 <= code < 300:
        return PASSING
    return WARNING if code == 429 else CRITICAL


def _check_ssl(spec: CheckSpec, config: StandInConfig) -> ssl.SSLContext | bool:
    if spec.tls_skip_verify:
        return False
    return ssl.create_default_context(cafile=config.check_ca_file)


async def http_probe(
    session: aiohttp.ClientSession, spec: CheckSpec, timeout: float, tls: ssl.SSLContext | bool
) -> tuple[str, str]:
    """One run of an HTTP check, with the request and the Output a Consul agent produces."""
    headers: list[tuple[str, str]] = [
        ("User-Agent", "Consul Health Check"),
        ("Accept", "text/plain, text/*, */*"),
    ]
    for name, values in spec.header.items():
        headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
        headers.extend((name, value) for value in values)
    https = spec.http.startswith("https:")
    try:
        async with asyncio.timeout(timeout):
            async with session.request(
                spec.method,
                spec.http,
                headers=headers,
                data=spec.body.encode() if spec.body else None,
                ssl=tls if https else True,
                server_hostname=(spec.tls_server_name or None) if https else None,
                allow_redirects=not spec.disable_redirects,
            ) as resp:
                body = await resp.content.read(spec.output_max_size)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        return CRITICAL, _http_error_output(spec, exc)
    line = f"{resp.status} {resp.reason or ''}".rstrip()
    text = body.decode("utf-8", "replace")
    return _status_for_http(resp.status), f"HTTP {spec.method} {spec.http}: {line} Output: {text}"


async def tcp_probe(spec: CheckSpec, timeout: float) -> tuple[str, str]:
    """One run of a TCP check: a connect is passing."""
    host, _, port = spec.tcp.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.close()
        await writer.wait_closed()
    except TimeoutError:
        return CRITICAL, f"dial tcp {spec.tcp}: i/o timeout"
    except ConnectionRefusedError:
        return CRITICAL, f"dial tcp {spec.tcp}: connect: connection refused"
    except (OSError, ValueError) as exc:
        return CRITICAL, f"dial tcp {spec.tcp}: {exc}"
    return PASSING, f"TCP connect {spec.tcp}: Success"


def truncate_output(output: str, limit: int) -> str:
    """CheckTTL.SetStatus keeps at most OutputMaxSize bytes and says so."""
    raw = output.encode()
    if len(raw) <= limit:
        return output
    kept = raw[:limit].decode("utf-8", "ignore")
    return f"{kept} ... (captured {limit} of {len(raw)} bytes)"


# --------------------------------------------------------------------------------------
# The state: agent, catalog and KV in one, with Consul's index bookkeeping


class AgentState:
    """Everything a single-node Consul would hold, and the indexes it would report.

    Every write takes the next "Raft" index; each table or service remembers the index of
    its own last change, so reads report what Consul reports (per-service index for
    health, table index for missing KV keys, …). Any write wakes every blocking query,
    which re-runs and keeps waiting unless its own index moved: a wake-up is never a
    promise of change, exactly as the blocking-query contract says.
    """

    def __init__(self, config: StandInConfig) -> None:
        self.config = config
        self.node_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, config.node_name))
        self.blocking_queries = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._wipe()

    # ---- lifecycle

    def _wipe(self) -> None:
        self.index = 0
        self.services: dict[str, ServiceRecord] = {}
        self.checks: dict[str, CheckRecord] = {}
        self.kv: dict[str, KVEntry] = {}
        self.tombstones: dict[str, int] = {}
        self.service_index: dict[str, int] = {}
        self.extinction_index = 0
        self.services_table_index = 0
        self.checks_table_index = 0
        self.kv_table_index = 0
        self.node_index = 0
        self.consul_service = ServiceRecord(id="consul", name="consul", port=8300)
        self._bootstrap()

    def _bootstrap(self) -> None:
        """The node, its serfHealth check and the `consul` service, all at index 1."""
        idx = self._commit()
        self.node_index = self.services_table_index = self.checks_table_index = idx
        self.consul_service.create_index = self.consul_service.modify_index = idx
        self.service_index["consul"] = idx
        spec = CheckSpec(check_id=SERF_ID, name="Serf Health Status", kind="")
        self.checks[SERF_ID] = self._new_record(spec, None, PASSING, idx)
        self.checks[SERF_ID].output = self.checks[SERF_ID].synced_output = (
            "Agent alive and reachable"
        )

    def start(self) -> None:
        """Start the reaper; must run on the loop that will serve requests."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        """Stop every background task and wait for them, so nothing leaks past a test."""
        if self._reaper is not None:
            self._reaper.cancel()
        for record in list(self.checks.values()):
            self._stop_runner(record)
        pending = [t for t in (self._reaper, *self._tasks) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        self._reaper = None

    def reset(self) -> None:
        """Forget everything and restart the index at 1, as a restarted `-dev` agent does."""
        for record in list(self.checks.values()):
            self._stop_runner(record)
        self._wipe()
        self._publish()

    def force_index(self, index: int) -> None:
        """Make every index go back to at most `index` (a snapshot restore, say)."""
        index = max(index, 1)
        self.index = index
        records: list[ServiceRecord | CheckRecord | KVEntry] = [
            *self.services.values(),
            self.consul_service,
            *self.checks.values(),
            *self.kv.values(),
        ]
        for record in records:
            record.create_index = min(record.create_index, index)
            record.modify_index = min(record.modify_index, index)
        for mapping in (self.tombstones, self.service_index):
            for key, value in mapping.items():
                mapping[key] = min(value, index)
        for name in ("extinction_index", "services_table_index", "checks_table_index"):
            setattr(self, name, min(getattr(self, name), index))
        self.kv_table_index = min(self.kv_table_index, index)
        self.node_index = min(self.node_index, index)
        self._publish()

    # ---- index bookkeeping and wake-ups

    def _commit(self) -> int:
        self.index += 1
        return self.index

    def _publish(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, probe: Callable[[], tuple[bool, T]], timeout: float) -> T:
        """Re-run `probe` after every write until it says done or `timeout` elapses."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.blocking_queries += 1
        try:
            while True:
                changed = self._changed
                done, value = probe()
                remaining = deadline - loop.time()
                if done or remaining <= 0:
                    return value
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await changed.wait()
        finally:
            self.blocking_queries -= 1

    def _touch_service(self, name: str, idx: int) -> None:
        if name == "consul" or any(s.name == name for s in self.services.values()):
            self.service_index[name] = idx
        elif self.service_index.pop(name, None) is not None:
            self.extinction_index = idx

    def _touch_for_check(self, record: CheckRecord, idx: int) -> None:
        self.checks_table_index = idx
        if record.service_id:
            self._touch_service(record.service_name, idx)
            return
        for name in list(self.service_index):
            self.service_index[name] = idx

    # ---- services

    def register_service(
        self, service: ServiceRecord, specs: Sequence[CheckSpec], replace_checks: bool
    ) -> None:
        """AddService: upsert the service and its checks in one catalog write."""
        idx = self._commit()
        previous = self.services.get(service.id)
        if previous is not None and previous.definition() == service.definition():
            service = previous
        else:
            service.create_index = previous.create_index if previous else idx
            service.modify_index = idx
            self.services[service.id] = service
            self.services_table_index = idx
            self._touch_service(service.name, idx)
            if previous is not None and previous.name != service.name:
                self._touch_service(previous.name, idx)
                for record in self.checks_of(service.id):
                    record.service_name = service.name
        for spec in specs:
            self._install_check(spec, service, idx)
        if replace_checks:
            keep = {spec.check_id for spec in specs} | {SERVICE_MAINT_PREFIX + service.id}
            for record in self.checks_of(service.id):
                if record.check_id not in keep:
                    self._drop_check(record, idx)
        self._publish()

    def deregister_service(self, service_id: str) -> None:
        service = self.services.pop(service_id)
        idx = self._commit()
        for record in self.checks_of(service_id):
            self._drop_check(record, idx)
        self.services_table_index = idx
        self._touch_service(service.name, idx)
        self._publish()

    def instances(self, name: str) -> list[ServiceRecord]:
        found = [s for s in self.services.values() if s.name == name]
        if name == "consul":
            found.append(self.consul_service)
        return sorted(found, key=lambda s: s.id)

    def index_for_service(self, name: str) -> int:
        """maxIndexForService: the service's own index, else the last extinction."""
        if name in self.service_index:
            return self.service_index[name]
        if self.extinction_index:
            return self.extinction_index
        return max(self.node_index, self.services_table_index, self.checks_table_index)

    # ---- checks

    def _new_record(
        self, spec: CheckSpec, service: ServiceRecord | None, status: str, idx: int
    ) -> CheckRecord:
        now = time.monotonic() if status == CRITICAL else None
        return CheckRecord(
            spec=spec,
            service_id=service.id if service else "",
            service_name=service.name if service else "",
            status=status,
            output="",
            synced_status=status,
            synced_output="",
            create_index=idx,
            modify_index=idx,
            critical_since=now,
        )

    def _install_check(self, spec: CheckSpec, service: ServiceRecord | None, idx: int) -> None:
        """Add or replace a check; a replaced check keeps its status and output."""
        previous = self.checks.get(spec.check_id)
        record = self._new_record(spec, service, spec.status or CRITICAL, idx)
        if previous is not None:
            self._stop_runner(previous)
            record.status, record.output = previous.status, previous.output
            record.synced_status = previous.synced_status
            record.synced_output = previous.synced_output
            record.create_index = previous.create_index
            record.critical_since = previous.critical_since
            if previous.spec == spec and previous.service_name == record.service_name:
                record.modify_index = previous.modify_index
        self.checks[spec.check_id] = record
        if record.modify_index == idx:
            self._touch_for_check(record, idx)
        self._start_runner(record)

    def _drop_check(self, record: CheckRecord, idx: int) -> None:
        self._stop_runner(record)
        del self.checks[record.check_id]
        self._touch_for_check(record, idx)

    def checks_of(self, service_id: str) -> list[CheckRecord]:
        return [c for c in self.checks.values() if c.service_id == service_id]

    def node_checks(self) -> list[CheckRecord]:
        return sorted(
            (c for c in self.checks.values() if not c.service_id), key=lambda c: c.check_id
        )

    def checks_for(self, service: ServiceRecord) -> list[CheckRecord]:
        """Node checks first, then the instance's own: what a health entry lists."""
        if service is self.consul_service:
            return self.node_checks()
        own = sorted(self.checks_of(service.id), key=lambda c: c.check_id)
        return [*self.node_checks(), *own]

    def register_check(self, spec: CheckSpec, service: ServiceRecord | None) -> None:
        idx = self._commit()
        self._install_check(spec, service, idx)
        self._publish()

    def deregister_check(self, check_id: str) -> None:
        idx = self._commit()
        self._drop_check(self.checks[check_id], idx)
        self._publish()

    def update_check(self, record: CheckRecord, status: str, output: str) -> None:
        """Local-state UpdateCheck: status changes sync now, output-only ones later."""
        if record.status == status and record.output == output:
            return
        if status == CRITICAL and record.status != CRITICAL:
            record.critical_since = time.monotonic()
        elif status != CRITICAL:
            record.critical_since = None
        interval = self.config.check_update_interval
        if interval > 0 and record.status == status:
            record.output = output
            if record.deferred_sync is None:
                delay = interval / 2 + random.uniform(0, interval)
                loop = asyncio.get_running_loop()
                record.deferred_sync = loop.call_later(delay, self._deferred_sync, record)
            return
        record.status, record.output = status, output
        self.sync_check(record)

    def _deferred_sync(self, record: CheckRecord) -> None:
        record.deferred_sync = None
        self.sync_check(record)

    def sync_check(self, record: CheckRecord) -> None:
        """Push the agent's view of a check to the catalog, if it differs."""
        if self.checks.get(record.check_id) is not record:
            return
        if (record.synced_status, record.synced_output) == (record.status, record.output):
            return
        idx = self._commit()
        record.synced_status, record.synced_output = record.status, record.output
        record.modify_index = idx
        self._touch_for_check(record, idx)
        self._publish()

    def sync_all_checks(self) -> None:
        """Flush deferred output-only changes now (as if check_update_interval elapsed)."""
        for record in list(self.checks.values()):
            if record.deferred_sync is not None:
                record.deferred_sync.cancel()
                record.deferred_sync = None
            self.sync_check(record)

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """check/pass|warn|fail|update: set the status and restart the TTL clock."""
        record = self.checks.get(check_id)
        if record is None or record.spec.kind != "ttl":
            raise ApiError(500, f"CheckID {_q(check_id)} does not have associated TTL")
        self.update_check(record, status, truncate_output(output, record.spec.output_max_size))
        self._arm_ttl(record)

    def set_serf_health(self, status: str) -> None:
        """What gossip would do when the node dies or comes back: every service on it
        fails (or passes again) `?passing`."""
        reachable = status == PASSING
        output = "Agent alive and reachable" if reachable else "Agent not live or unreachable"
        self.update_check(self.checks[SERF_ID], status, output)

    def set_node_maintenance(self, enable: bool, reason: str) -> None:
        """Add or remove the `_node_maintenance` critical check (idempotent)."""
        exists = NODE_MAINT_ID in self.checks
        if enable and not exists:
            notes = reason or (
                "Maintenance mode is enabled for this node, "
                "but no reason was provided. This is a default message."
            )
            spec = CheckSpec(
                check_id=NODE_MAINT_ID, name="Node Maintenance Mode", kind="", notes=notes
            )
            self.register_check(spec, None)
        elif not enable and exists:
            self.deregister_check(NODE_MAINT_ID)

    def set_service_maintenance(self, service: ServiceRecord, enable: bool, reason: str) -> None:
        """Add or remove the `_service_maintenance:<id>` critical check (idempotent)."""
        check_id = SERVICE_MAINT_PREFIX + service.id
        exists = check_id in self.checks
        if enable and not exists:
            notes = reason or (
                "Maintenance mode is enabled for this service, "
                "but no reason was provided. This is a default message."
            )
            spec = CheckSpec(
                check_id=check_id, name="Service Maintenance Mode", kind="", notes=notes
            )
            self.register_check(spec, service)
        elif not enable and exists:
            self.deregister_check(check_id)

    # ---- check runners

    def _start_runner(self, record: CheckRecord) -> None:
        if record.spec.kind == "ttl":
            self._arm_ttl(record)
        elif record.spec.kind in ("http", "tcp"):
            task = asyncio.get_running_loop().create_task(self._run_interval_check(record))
            self._tasks.add(task)
            task.add_done_callback(self._runner_done)
            record.task = task

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        """A runner that crashed would leave its check frozen; say so loudly."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("check runner crashed", exc_info=task.exception())

    def _stop_runner(self, record: CheckRecord) -> None:
        for handle in (record.ttl_timer, record.deferred_sync):
            if handle is not None:
                handle.cancel()
        if record.task is not None:
            record.task.cancel()
        record.ttl_timer = record.deferred_sync = record.task = None

    def _arm_ttl(self, record: CheckRecord) -> None:
        if record.ttl_timer is not None:
            record.ttl_timer.cancel()
        loop = asyncio.get_running_loop()
        record.ttl_timer = loop.call_later(record.spec.ttl, self._ttl_expired, record)

    def _ttl_expired(self, record: CheckRecord) -> None:
        record.ttl_timer = None
        if self.checks.get(record.check_id) is record:
            output = f"TTL expired (last output before timeout follows): {record.output}"
            self.update_check(record, CRITICAL, output)

    async def _run_interval_check(self, record: CheckRecord) -> None:
        """Probe every interval after a random initial stagger, as Consul's runners do."""
        spec = record.spec
        interval = max(spec.interval, self.config.min_check_interval)
        timeout = spec.timeout if spec.timeout > 0 else 10.0
        await asyncio.sleep(random.uniform(0, interval))
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            tls = _check_ssl(spec, self.config) if spec.kind == "http" else False
            while True:
                if spec.kind == "http":
                    status, output = await http_probe(session, spec, timeout, tls)
                else:
                    status, output = await tcp_probe(spec, timeout)
                self._record_probe(record, status, output)
                await asyncio.sleep(interval)

    def _record_probe(self, record: CheckRecord, status: str, output: str) -> None:
        """Apply SuccessBeforePassing / FailuresBeforeWarning / FailuresBeforeCritical."""
        spec = record.spec
        if status in (PASSING, WARNING):
            record.successes, record.failures = record.successes + 1, 0
            if record.successes >= spec.success_before_passing:
                self.update_check(record, status, output)
            return
        record.failures, record.successes = record.failures + 1, 0
        before_warning = spec.failures_before_warning or spec.failures_before_critical
        if record.failures >= spec.failures_before_critical:
            self.update_check(record, CRITICAL, output)
        elif record.failures >= before_warning:
            self.update_check(record, WARNING, output)

    async def _reap_forever(self) -> None:
        """The agent's reaper: deregister services critical for too long."""
        while True:
            await asyncio.sleep(self.config.reap_interval)
            self.reap_critical()

    def reap_critical(self) -> None:
        now = time.monotonic()
        for record in list(self.checks.values()):
            after = record.spec.deregister_after
            if not after or record.critical_since is None or record.status != CRITICAL:
                continue
            if record.service_id not in self.services:
                continue
            if now - record.critical_since > max(after, self.config.deregister_min):
                log.info(
                    "reaping service %s: check %s critical", record.service_id, record.check_id
                )
                self.deregister_service(record.service_id)

    # ---- KV

    def kv_put(self, key: str, value: bytes, flags: int, cas: int | None) -> bool:
        idx = self._commit()
        entry = self.kv.get(key)
        if cas is not None and (entry.modify_index if entry else 0) != cas:
            return False
        if entry is None:
            self.kv[key] = KVEntry(key, value, flags, idx, idx)
        else:
            entry.value, entry.flags, entry.modify_index = value, flags, idx
        self.tombstones.pop(key, None)
        self.kv_table_index = idx
        self._publish()
        return True

    def kv_delete(self, key: str, recurse: bool, cas: int | None) -> bool:
        idx = self._commit()
        if cas is not None:
            entry = self.kv.get(key)
            if entry is None or entry.modify_index != cas:
                return entry is None
        doomed = [k for k in self.kv if k.startswith(key)] if recurse else [key]
        doomed = [k for k in doomed if k in self.kv]
        for k in doomed:
            del self.kv[k]
            self.tombstones[k] = idx
        if doomed:
            self.kv_table_index = idx
            self._publish()
        return True

    def kv_get(self, key: str) -> tuple[int, KVEntry | None]:
        """KVS.Get: the entry's ModifyIndex, or the whole table's index when absent."""
        entry = self.kv.get(key)
        return (entry.modify_index, entry) if entry else (self.kv_table_index, None)

    def kv_list(self, prefix: str) -> tuple[int, list[KVEntry]]:
        """kvsListTxn: newest entry or tombstone under the prefix, else the table index."""
        entries = [e for k, e in sorted(self.kv.items()) if k.startswith(prefix)]
        if not prefix:
            return self.kv_table_index, entries
        graves = [i for k, i in self.tombstones.items() if k.startswith(prefix)]
        idx = max([e.modify_index for e in entries] + graves + [0])
        return (idx or self.kv_table_index), entries

    def reap_tombstones(self) -> None:
        """What the leader's tombstone GC does: list indexes may now go backwards."""
        self.tombstones.clear()
        self._publish()


# --------------------------------------------------------------------------------------
# JSON renderings


def _service_tagged_addresses(service: ServiceRecord) -> dict[str, Any]:
    if not re.fullmatch(r"[0-9.]+", service.address or ""):
        return {}
    entry = {"Address": service.address, "Port": service.port}
    return {"lan_ipv4": entry, "wan_ipv4": dict(entry)}


class Renderer:
    """Turn records into the CamelCase JSON shapes Consul emits."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    @property
    def config(self) -> StandInConfig:
        return self.state.config

    def node(self) -> dict[str, Any]:
        address = self.config.host
        return {
            "ID": self.state.node_id,
            "Node": self.config.node_name,
            "Address": address,
            "Datacenter": self.config.datacenter,
            "TaggedAddresses": {
                "lan": address,
                "lan_ipv4": address,
                "wan": address,
                "wan_ipv4": address,
            },
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 1,
            "ModifyIndex": self.state.node_index or 1,
        }

    def health_service(self, service: ServiceRecord) -> dict[str, Any]:
        return {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Address": service.address,
            "TaggedAddresses": _service_tagged_addresses(service),
            "Meta": dict(service.meta) or None,
            "Port": service.port,
            "Weights": dict(service.weights),
            "EnableTagOverride": service.enable_tag_override,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {},
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        }

    def agent_service(self, service: ServiceRecord) -> dict[str, Any]:
        return {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Meta": dict(service.meta),
            "Port": service.port,
            "Address": service.address,
            "Weights": dict(service.weights),
            "EnableTagOverride": service.enable_tag_override,
            "Datacenter": self.config.datacenter,
        }

    def check(self, record: CheckRecord, *, live: bool) -> dict[str, Any]:
        """A HealthCheck; `live` is the agent's view, otherwise the catalog's."""
        spec = record.spec
        service = self.state.services.get(record.service_id)
        periodic = spec.kind in ("http", "tcp")
        return {
            "Node": self.config.node_name,
            "CheckID": record.check_id,
            "Name": spec.name,
            "Status": record.status if live else record.synced_status,
            "Notes": spec.notes,
            "Output": record.output if live else record.synced_output,
            "ServiceID": record.service_id,
            "ServiceName": record.service_name,
            "ServiceTags": list(service.tags) if service else [],
            "Type": spec.kind,
            "Interval": format_go_duration(spec.interval) if periodic else "",
            "Timeout": format_go_duration(spec.timeout) if periodic and spec.timeout else "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": record.create_index,
            "ModifyIndex": record.modify_index,
        }

    def health_entry(self, service: ServiceRecord) -> dict[str, Any]:
        return {
            "Node": self.node(),
            "Service": self.health_service(service),
            "Checks": [self.check(c, live=False) for c in self.state.checks_for(service)],
        }

    def catalog_entry(self, service: ServiceRecord) -> dict[str, Any]:
        node = self.node()
        return {
            "ID": node["ID"],
            "Node": node["Node"],
            "Address": node["Address"],
            "Datacenter": node["Datacenter"],
            "TaggedAddresses": node["TaggedAddresses"],
            "NodeMeta": node["Meta"],
            "ServiceKind": "",
            "ServiceID": service.id,
            "ServiceName": service.name,
            "ServiceTags": list(service.tags),
            "ServiceAddress": service.address,
            "ServiceTaggedAddresses": _service_tagged_addresses(service),
            "ServiceWeights": dict(service.weights),
            "ServiceMeta": dict(service.meta) or None,
            "ServicePort": service.port,
            "ServiceEnableTagOverride": service.enable_tag_override,
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        }

    @staticmethod
    def kv_entry(entry: KVEntry) -> dict[str, Any]:
        value = base64.b64encode(entry.value).decode() if entry.value else None
        return {
            "LockIndex": entry.lock_index,
            "Key": entry.key,
            "Flags": entry.flags,
            "Value": value,
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.modify_index,
        }


# --------------------------------------------------------------------------------------
# HTTP layer


def _json_body(data: Any, request: web.Request, status: int = 200) -> web.Response:
    pretty = "pretty" in request.query
    text = json.dumps(data, indent=4 if pretty else None, separators=None if pretty else (",", ":"))
    # Consul sets exactly "application/json" (no charset parameter).
    return web.Response(
        status=status, body=text.encode(), headers={"Content-Type": "application/json"}
    )


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")


def _empty() -> web.Response:
    return web.Response(status=200)


@dataclass(slots=True)
class QueryOptions:
    """The parsed common read parameters (index, wait, consistency, dc)."""

    index: int = 0
    wait: float = 0.0
    consistency: str = "leader"


@dataclass(slots=True)
class Route:
    methods: frozenset[str]
    path: str
    prefix: bool
    handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]]


class AgentApi:
    """The `/v1/` endpoints, dispatched the way Consul's mux does (exact, then prefix)."""

    def __init__(self, state: AgentState, unpaused: asyncio.Event) -> None:
        self.state = state
        self.render = Renderer(state)
        self.unpaused = unpaused
        self.routes = self._routes()

    @property
    def config(self) -> StandInConfig:
        return self.state.config

    def _routes(self) -> list[Route]:
        put, get = frozenset({"PUT"}), frozenset({"GET"})
        table: list[tuple[frozenset[str], str, Any]] = [
            (put, "/v1/agent/service/register", self.service_register),
            (put, "/v1/agent/service/deregister/", self.service_deregister),
            (put, "/v1/agent/service/maintenance/", self.service_maintenance),
            (put, "/v1/agent/maintenance", self.node_maintenance),
            (get, "/v1/agent/services", self.agent_services),
            (get, "/v1/agent/service/", self.agent_service),
            (get, "/v1/agent/checks", self.agent_checks),
            (get, "/v1/agent/self", self.agent_self),
            (get, "/v1/agent/health/service/id/", self.agent_health_by_id),
            (put, "/v1/agent/check/register", self.check_register),
            (put, "/v1/agent/check/deregister/", self.check_deregister),
            (put, "/v1/agent/check/pass/", self.check_pass),
            (put, "/v1/agent/check/warn/", self.check_warn),
            (put, "/v1/agent/check/fail/", self.check_fail),
            (put, "/v1/agent/check/update/", self.check_update),
            (get, "/v1/health/service/", self.health_service),
            (get, "/v1/health/checks/", self.health_checks),
            (get, "/v1/health/state/", self.health_state),
            (get, "/v1/catalog/services", self.catalog_services),
            (get, "/v1/catalog/service/", self.catalog_service),
            (get, "/v1/status/leader", self.status_leader),
            (get, "/v1/status/peers", self.status_peers),
            (frozenset({"GET", "PUT", "DELETE"}), "/v1/kv/", self.kv),
        ]
        return [Route(m, p, p.endswith("/"), h) for m, p, h in table]

    def match(self, path: str) -> tuple[Route, str] | None:
        for route in self.routes:
            if not route.prefix and path == route.path:
                return route, ""
        candidates = [r for r in self.routes if r.prefix and path.startswith(r.path)]
        if not candidates:
            return None
        route = max(candidates, key=lambda r: len(r.path))
        return route, path[len(route.path) :]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        await self.unpaused.wait()
        found = self.match(request.path)
        if found is None:
            return _text(404, "404 page not found")
        route, arg = found
        if request.method not in route.methods:
            response = _text(405, f"method {request.method} not allowed")
            response.headers["Allow"] = ",".join(sorted(route.methods))
            return response
        try:
            return await route.handler(request, arg)
        except ApiError as exc:
            return _text(exc.status, exc.message)
        except Exception as exc:  # Consul answers unexpected errors as 500 plain text
            log.exception("stand-in handler failed for %s %s", request.method, request.path)
            return _text(500, str(exc))

    # ---- ACLs

    def resolve(self, request: web.Request) -> bool:
        """True for a management token (or ACLs off), False for anonymous.

        Precedence as in Consul: `?token`, then `X-Consul-Token`, then a Bearer token.
        """
        if not self.config.acl_enabled:
            return True
        token = request.query.get("token") or request.headers.get("X-Consul-Token", "")
        if not token:
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            return False
        if token in self.config.acl_tokens:
            return True
        raise ApiError(403, "ACL not found")

    @staticmethod
    def deny(permission: str, resource: str) -> ApiError:
        return ApiError(
            403,
            f"Permission denied: anonymous token lacks permission '{permission}' "
            f"on {_q(resource)}. {ANONYMOUS_HINT}",
        )

    def require(self, allowed: bool, permission: str, resource: str) -> None:
        if not allowed:
            raise self.deny(permission, resource)

    # ---- common read plumbing

    def query_options(self, request: web.Request) -> QueryOptions:
        query = request.query
        opts = QueryOptions()
        if "stale" in query and "consistent" in query:
            raise ApiError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        if "stale" in query:
            opts.consistency = "stale"
        elif "consistent" in query:
            opts.consistency = "consistent"
        if query.get("wait"):
            try:
                opts.wait = parse_go_duration(query["wait"])
            except ValueError:
                raise ApiError(400, "Invalid wait time") from None
        if query.get("index"):
            try:
                opts.index = int(query["index"])
            except ValueError:
                raise ApiError(400, "Invalid index") from None
            if opts.index < 0:
                raise ApiError(400, "Invalid index")
        if query.get("dc") and query["dc"] != self.config.datacenter:
            raise ApiError(500, "No path to datacenter")
        if query.get("filter"):
            raise ApiError(400, "the Consul stand-in does not implement ?filter (bexpr)")
        return opts

    async def blocking(
        self, opts: QueryOptions, query: Callable[[], tuple[int, T]]
    ) -> tuple[int, T]:
        """Consul's blockingQuery: answer at once if the index moved past `index`, else
        wait (default 5 min, capped at max_query_time, plus up to wait/16 jitter)."""

        def probe() -> tuple[bool, tuple[int, T]]:
            index, result = query()
            index = max(index, 1)
            return index > opts.index, (index, result)

        if not opts.index:
            return probe()[1]
        wait = opts.wait
        if wait > self.config.max_query_time:
            wait = self.config.max_query_time
        elif wait <= 0:
            wait = self.config.default_query_time
        wait += random.uniform(0, wait / 16)
        return await self.state.wait_until(probe, wait)

    def meta_headers(self, response: web.StreamResponse, index: int, opts: QueryOptions) -> None:
        response.headers["X-Consul-Index"] = str(max(index, 1))
        response.headers["X-Consul-Knownleader"] = "true"
        response.headers["X-Consul-Lastcontact"] = "0"
        response.headers["X-Consul-Effective-Consistency"] = opts.consistency

    def read_response(
        self, request: web.Request, index: int, opts: QueryOptions, data: Any
    ) -> web.Response:
        response = _json_body(data, request)
        self.meta_headers(response, index, opts)
        return response

    async def body_json(self, request: web.Request) -> object:
        raw = await request.read()
        if not raw.strip():
            raise DecodeError("EOF")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DecodeError(str(exc)) from None

    # ---- agent: services

    async def service_register(self, request: web.Request, _: str) -> web.StreamResponse:
        registration = decode_registration(await self.body_json(request))
        fields = registration.fields
        if not fields.get("Name"):
            raise ApiError(400, "Missing service name")
        if fields.get("Address", "") in ("0.0.0.0", "::", "[::]"):
            raise ApiError(400, "Invalid service address")
        allowed = self.resolve(request)
        service, specs = validate_registration(registration)
        self.require(allowed, "service:write", service.name)
        flag = request.query.getall("replace-existing-checks", [])
        replace = bool(flag) and flag[0] in ("", "true")
        self.state.register_service(service, specs, replace)
        return _empty()

    def known_service(self, service_id: str, allowed: bool) -> ServiceRecord:
        """vetServiceUpdate: unknown IDs are 404, other services need service:write."""
        service = self.state.services.get(service_id)
        if service is None:
            raise ApiError(
                404,
                f"Unknown service ID {_q(service_id)}. "
                "Ensure that the service ID is passed, not the service name.",
            )
        self.require(allowed, "service:write", service.name)
        return service

    async def service_deregister(self, request: web.Request, service_id: str) -> web.StreamResponse:
        allowed = self.resolve(request)
        self.known_service(service_id, allowed)
        self.state.deregister_service(service_id)
        return _empty()

    def enable_param(self, request: web.Request) -> bool:
        if "enable" not in request.query:
            raise ApiError(400, "Missing value for enable")
        raw = request.query["enable"]
        try:
            return parse_go_bool(raw)
        except ValueError:
            raise ApiError(400, f"Invalid value for enable: {_q(raw)}") from None

    async def service_maintenance(
        self, request: web.Request, service_id: str
    ) -> web.StreamResponse:
        if not service_id:
            raise ApiError(400, "Missing service ID")
        enable = self.enable_param(request)
        service = self.known_service(service_id, self.resolve(request))
        self.state.set_service_maintenance(service, enable, request.query.get("reason", ""))
        return _empty()

    async def node_maintenance(self, request: web.Request, _: str) -> web.StreamResponse:
        enable = self.enable_param(request)
        self.require(self.resolve(request), "node:write", self.config.node_name)
        self.state.set_node_maintenance(enable, request.query.get("reason", ""))
        return _empty()

    async def agent_services(self, request: web.Request, _: str) -> web.StreamResponse:
        allowed = self.resolve(request)
        services = self.state.services.values() if allowed else []
        data = {s.id: self.render.agent_service(s) for s in sorted(services, key=lambda s: s.id)}
        return _json_body(data, request)

    def _service_hash(self, service_id: str, allowed: bool) -> tuple[str, dict[str, Any]]:
        service = self.state.services.get(service_id)
        if service is None:
            raise ApiError(404, f"unknown service ID: {service_id}")
        self.require(allowed, "service:read", service.name)
        data = self.render.agent_service(service)
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        return digest, {**data, "ContentHash": digest}

    async def agent_service(self, request: web.Request, service_id: str) -> web.StreamResponse:
        allowed = self.resolve(request)
        opts = self.query_options(request)
        digest, data = self._service_hash(service_id, allowed)
        wanted = request.query.get("hash", "")
        if wanted and wanted == digest:
            wait = min(opts.wait or self.config.default_query_time, self.config.max_query_time)

            def probe() -> tuple[bool, tuple[str, dict[str, Any]]]:
                current = self._service_hash(service_id, allowed)
                return current[0] != wanted, current

            digest, data = await self.state.wait_until(probe, wait)
        response = _json_body(data, request)
        response.headers["X-Consul-Contenthash"] = digest
        return response

    async def agent_checks(self, request: web.Request, _: str) -> web.StreamResponse:
        allowed = self.resolve(request)
        records = [c for c in self.state.checks.values() if c.check_id != SERF_ID]
        data = {
            c.check_id: self.render.check(c, live=True)
            for c in sorted(records, key=lambda c: c.check_id)
            if allowed
        }
        return _json_body(data, request)

    async def agent_self(self, request: web.Request, _: str) -> web.StreamResponse:
        self.require(self.resolve(request), "agent:read", self.config.node_name)
        cfg = self.config
        data = {
            "Config": {
                "Datacenter": cfg.datacenter,
                "NodeName": cfg.node_name,
                "NodeID": self.state.node_id,
                "Server": True,
                "Revision": "standin",
                "Version": "1.99.0-standin",
            },
            "Member": {"Name": cfg.node_name, "Addr": cfg.host, "Port": 8301, "Status": 1},
            "Meta": {"consul-network-segment": ""},
        }
        return _json_body(data, request)

    async def agent_health_by_id(self, request: web.Request, service_id: str) -> web.StreamResponse:
        allowed = self.resolve(request)
        service = self.state.services.get(service_id)
        if service is None:
            missing = {"AggregatedStatus": CRITICAL, "Service": None, "Checks": None}
            return _json_body(missing, request, status=404)
        self.require(allowed, "service:read", service.name)
        checks = [self.render.check(c, live=True) for c in self.state.checks_of(service_id)]
        statuses = {c["Status"] for c in checks}
        status = CRITICAL if CRITICAL in statuses else WARNING if WARNING in statuses else PASSING
        code = {PASSING: 200, WARNING: 429, CRITICAL: 503}[status]
        body = {
            "AggregatedStatus": status,
            "Service": self.render.agent_service(service),
            "Checks": checks,
        }
        return _json_body(body, request, status=code)

    # ---- agent: checks

    async def check_register(self, request: web.Request, _: str) -> web.StreamResponse:
        fields = decode_check(
            await self.body_json(request), "CheckDefinition", CHECK_DEFINITION_FIELDS
        )
        if not fields.get("Name"):
            raise ApiError(400, "Missing check name")
        if fields.get("Status", "") not in ("", *STATUSES):
            raise ApiError(400, "Bad check status")
        allowed = self.resolve(request)
        problem = check_problem(fields)
        if problem:
            raise ApiError(400, f"Invalid check: {problem}")
        service = None
        if fields.get("ServiceID"):
            service = self.state.services.get(fields["ServiceID"])
            if service is None:
                raise ApiError(404, f"ServiceID {_q(fields['ServiceID'])} does not exist")
        self.require(
            allowed,
            "service:write" if service else "node:write",
            service.name if service else self.config.node_name,
        )
        check_id = fields.get("ID") or fields.get("CheckID") or fields["Name"]
        self.state.register_check(make_check_spec(fields, check_id, fields["Name"]), service)
        return _empty()

    def vet_check(self, request: web.Request, check_id: str) -> None:
        """vetCheckUpdate: ACL first, then (in current agents) 404 for unknown IDs."""
        allowed = self.resolve(request)
        record = self.state.checks.get(check_id)
        if record is None:
            if self.config.unknown_check_404:
                raise ApiError(
                    404,
                    f"Unknown check ID {_q(check_id)}. "
                    "Ensure that the check ID is passed, not the check name.",
                )
            self.require(allowed, "node:write", self.config.node_name)
            return
        if record.service_name:
            self.require(allowed, "service:write", record.service_name)
        else:
            self.require(allowed, "node:write", self.config.node_name)

    async def check_deregister(self, request: web.Request, check_id: str) -> web.StreamResponse:
        if check_id not in self.state.checks or check_id == SERF_ID:
            self.resolve(request)
            raise ApiError(
                404,
                f"Unknown check ID {_q(check_id)}. "
                "Ensure that the check ID is passed, not the check name.",
            )
        self.vet_check(request, check_id)
        self.state.deregister_check(check_id)
        return _empty()

    async def _ttl_update(
        self, request: web.Request, check_id: str, status: str, output: str
    ) -> web.StreamResponse:
        self.vet_check(request, check_id)
        self.state.update_ttl(check_id, status, output)
        return _empty()

    async def check_pass(self, request: web.Request, check_id: str) -> web.StreamResponse:
        return await self._ttl_update(request, check_id, PASSING, request.query.get("note", ""))

    async def check_warn(self, request: web.Request, check_id: str) -> web.StreamResponse:
        return await self._ttl_update(request, check_id, WARNING, request.query.get("note", ""))

    async def check_fail(self, request: web.Request, check_id: str) -> web.StreamResponse:
        return await self._ttl_update(request, check_id, CRITICAL, request.query.get("note", ""))

    async def check_update(self, request: web.Request, check_id: str) -> web.StreamResponse:
        update = decode_struct(await self.body_json(request), CHECK_UPDATE_FIELDS, "checkUpdate")
        status = update.get("Status", "")
        if status not in STATUSES:
            raise ApiError(400, f"Invalid check status: '{status}'")
        return await self._ttl_update(request, check_id, status, update.get("Output", ""))

    # ---- health and catalog

    async def health_service(self, request: web.Request, name: str) -> web.StreamResponse:
        if not name:
            raise ApiError(400, "Missing service name")
        allowed = self.resolve(request)
        opts = self.query_options(request)
        passing = self.passing_param(request)
        tags = request.query.getall("tag", [])
        visible = allowed and not self._node_meta_mismatch(request.query.getall("node-meta", []))

        def query() -> tuple[int, list[dict[str, Any]]]:
            entries = []
            for service in self.state.instances(name) if visible else []:
                if not all(tag in service.tags for tag in tags):
                    continue
                entry = self.render.health_entry(service)
                if passing and any(c["Status"] != PASSING for c in entry["Checks"]):
                    continue
                entries.append(entry)
            return self.state.index_for_service(name), entries

        index, data = await self.blocking(opts, query)
        return self.read_response(request, index, opts, data)

    @staticmethod
    def passing_param(request: web.Request) -> bool:
        """`?passing` is a Go ParseBool flag; present-but-empty means true."""
        if "passing" not in request.query:
            return False
        raw = request.query["passing"]
        try:
            return raw == "" or parse_go_bool(raw)
        except ValueError:
            raise ApiError(400, "Invalid value for ?passing") from None

    @staticmethod
    def _node_meta_mismatch(filters: list[str]) -> bool:
        meta = {"consul-network-segment": ""}
        for item in filters:
            key, _, value = item.partition(":")
            if meta.get(key) != value:
                return True
        return False

    async def health_checks(self, request: web.Request, name: str) -> web.StreamResponse:
        if not name:
            raise ApiError(400, "Missing service name")
        allowed = self.resolve(request)
        opts = self.query_options(request)

        def query() -> tuple[int, list[dict[str, Any]]]:
            records = [
                c
                for s in (self.state.instances(name) if allowed else [])
                for c in sorted(self.state.checks_of(s.id), key=lambda c: c.check_id)
            ]
            data = [self.render.check(c, live=False) for c in records]
            return self.state.index_for_service(name), data

        index, data = await self.blocking(opts, query)
        return self.read_response(request, index, opts, data)

    async def health_state(self, request: web.Request, state: str) -> web.StreamResponse:
        if not state:
            raise ApiError(400, "Missing check state")
        allowed = self.resolve(request)
        opts = self.query_options(request)

        def query() -> tuple[int, list[dict[str, Any]]]:
            records = sorted(self.state.checks.values(), key=lambda c: c.check_id)
            data = [
                self.render.check(c, live=False)
                for c in (records if allowed else [])
                if state == "any" or c.synced_status == state
            ]
            return self.state.checks_table_index, data

        index, data = await self.blocking(opts, query)
        return self.read_response(request, index, opts, data)

    async def catalog_services(self, request: web.Request, _: str) -> web.StreamResponse:
        allowed = self.resolve(request)
        opts = self.query_options(request)

        def query() -> tuple[int, dict[str, list[str]]]:
            union: dict[str, list[str]] = {"consul": []} if allowed else {}
            services = sorted(self.state.services.values(), key=lambda s: s.id)
            for service in services if allowed else []:
                tags = union.setdefault(service.name, [])
                tags.extend(t for t in service.tags if t not in tags)
            return self.state.services_table_index, dict(sorted(union.items()))

        index, data = await self.blocking(opts, query)
        return self.read_response(request, index, opts, data)

    async def catalog_service(self, request: web.Request, name: str) -> web.StreamResponse:
        if not name:
            raise ApiError(400, "Missing service name")
        allowed = self.resolve(request)
        opts = self.query_options(request)
        tags = request.query.getall("tag", [])

        def query() -> tuple[int, list[dict[str, Any]]]:
            data = [
                self.render.catalog_entry(s)
                for s in (self.state.instances(name) if allowed else [])
                if all(tag in s.tags for tag in tags)
            ]
            return self.state.index_for_service(name), data

        index, data = await self.blocking(opts, query)
        return self.read_response(request, index, opts, data)

    async def status_leader(self, request: web.Request, _: str) -> web.StreamResponse:
        return _json_body(f"{self.config.host}:8300", request)

    async def status_peers(self, request: web.Request, _: str) -> web.StreamResponse:
        return _json_body([f"{self.config.host}:8300"], request)

    # ---- KV

    async def kv(self, request: web.Request, key: str) -> web.StreamResponse:
        if request.method == "GET":
            return await self.kv_get(request, key)
        if request.method == "PUT":
            return await self.kv_put(request, key)
        return await self.kv_delete(request, key)

    @staticmethod
    def uint_param(request: web.Request, name: str) -> int | None:
        if name not in request.query:
            return None
        try:
            value = int(request.query[name] or "0")
        except ValueError:
            raise ApiError(400, f"Invalid {name} value: {_q(request.query[name])}") from None
        if value < 0:
            raise ApiError(400, f"Invalid {name} value: {_q(request.query[name])}")
        return value

    @staticmethod
    def check_key(key: str, *, allow_empty: bool) -> None:
        if not key and not allow_empty:
            raise ApiError(400, "Missing key name")
        if key.startswith("/") or key != key.strip() or "../" in key or key.endswith(".."):
            raise ApiError(400, f"Invalid key name {_q(key)}")

    async def kv_get(self, request: web.Request, key: str) -> web.StreamResponse:
        listing = "recurse" in request.query or "keys" in request.query
        self.check_key(key, allow_empty=listing)
        allowed = self.resolve(request)
        opts = self.query_options(request)
        if "keys" in request.query:
            return await self.kv_keys(request, key, allowed, opts)
        if "recurse" in request.query:
            return await self.kv_recurse(request, key, allowed, opts)
        self.require(allowed, "key:read", key)
        index, entry = await self.blocking(opts, lambda: self.state.kv_get(key))
        if entry is None:
            response = web.Response(status=404)
        elif "raw" in request.query:
            response = web.Response(body=entry.value, content_type="text/plain")
            response.headers["X-Content-Type-Options"] = "nosniff"
        else:
            response = _json_body([self.render.kv_entry(entry)], request)
        self.meta_headers(response, index, opts)
        return response

    async def kv_recurse(
        self, request: web.Request, prefix: str, allowed: bool, opts: QueryOptions
    ) -> web.StreamResponse:
        index, entries = await self.blocking(opts, lambda: self.state.kv_list(prefix))
        entries = entries if allowed else []
        if not entries:
            response = web.Response(status=404)
        else:
            response = _json_body([self.render.kv_entry(e) for e in entries], request)
        self.meta_headers(response, index, opts)
        return response

    async def kv_keys(
        self, request: web.Request, prefix: str, allowed: bool, opts: QueryOptions
    ) -> web.StreamResponse:
        separator = request.query.get("separator", "")
        index, entries = await self.blocking(opts, lambda: self.state.kv_list(prefix))
        keys: list[str] = []
        for entry in entries if allowed else []:
            cut = entry.key.find(separator, len(prefix)) if separator else -1
            name = entry.key[: cut + len(separator)] if cut >= 0 else entry.key
            if name not in keys:
                keys.append(name)
        missing = not keys and bool(prefix)
        response = web.Response(status=404) if missing else _json_body(keys, request)
        self.meta_headers(response, index, opts)
        return response

    async def kv_put(self, request: web.Request, key: str) -> web.StreamResponse:
        self.check_key(key, allow_empty=False)
        allowed = self.resolve(request)
        present = [p for p in ("cas", "acquire", "release") if p in request.query]
        if len(present) > 1:
            raise ApiError(400, f"Conflicting flags: {request.query_string}")
        if "acquire" in request.query or "release" in request.query:
            raise ApiError(400, "the Consul stand-in does not implement sessions")
        flags = self.uint_param(request, "flags") or 0
        cas = self.uint_param(request, "cas")
        value = await request.read()
        if len(value) > KV_MAX_VALUE:
            raise ApiError(
                413,
                f"Request body({len(value)} bytes) too large, max size: {KV_MAX_VALUE} bytes.",
            )
        self.require(allowed, "key:write", key)
        return _json_body(self.state.kv_put(key, value, flags, cas), request)

    async def kv_delete(self, request: web.Request, key: str) -> web.StreamResponse:
        recurse = "recurse" in request.query
        self.check_key(key, allow_empty=recurse)
        allowed = self.resolve(request)
        if recurse and "cas" in request.query:
            raise ApiError(400, f"Conflicting flags: {request.query_string}")
        cas = self.uint_param(request, "cas")
        self.require(allowed, "key:write", key)
        return _json_body(self.state.kv_delete(key, recurse, cas), request)


# --------------------------------------------------------------------------------------
# Control interface (not under /v1/, no ACLs): what tests use to make trouble


class ControlApi:
    """`/_standin/…`: reset, force the index back, pause, go down for a while, …"""

    def __init__(self, server: StandInServer) -> None:
        self.server = server

    @property
    def state(self) -> AgentState:
        return self.server.state

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        action = request.path.removeprefix("/_standin/")
        handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "reset": self.reset,
            "index": self.index,
            "pause": self.pause,
            "resume": self.resume,
            "down": self.down,
            "serf": self.serf,
            "sync-checks": self.sync_checks,
            "reap-tombstones": self.reap_tombstones,
            "state": self.describe,
        }
        handler = handlers.get(action)
        if handler is None:
            return _text(404, f"unknown stand-in control {action!r}; known: {sorted(handlers)}")
        wanted = "GET" if action == "state" else "POST"
        if request.method != wanted:
            return _text(405, f"method {request.method} not allowed; use {wanted}")
        try:
            return await handler(request)
        except ApiError as exc:
            return _text(exc.status, exc.message)

    @staticmethod
    def seconds(request: web.Request, *, required: bool) -> float | None:
        raw = request.query.get("seconds")
        if raw is None:
            if required:
                raise ApiError(400, "seconds=<float> is required")
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, f"seconds must be a number, got {raw!r}") from None
        if value <= 0:
            raise ApiError(400, f"seconds must be > 0, got {raw!r}")
        return value

    def describe_state(self) -> dict[str, Any]:
        return {
            "index": self.state.index,
            "blocking_queries": self.state.blocking_queries,
            "services": sorted(self.state.services),
            "checks": {c.check_id: c.status for c in self.state.checks.values()},
            "kv_keys": sorted(self.state.kv),
            "paused": not self.server.unpaused.is_set(),
            "acl": self.state.config.acl_enabled,
        }

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self.state.reset()
        return _json_body(self.describe_state(), request)

    async def index(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("set", "")
        if not raw.isdigit():
            raise ApiError(400, f"set=<positive integer> is required, got {raw!r}")
        self.state.force_index(int(raw))
        return _json_body(self.describe_state(), request)

    async def pause(self, request: web.Request) -> web.StreamResponse:
        self.server.pause(self.seconds(request, required=False))
        return _json_body(self.describe_state(), request)

    async def resume(self, request: web.Request) -> web.StreamResponse:
        self.server.resume()
        return _json_body(self.describe_state(), request)

    async def down(self, request: web.Request) -> web.StreamResponse:
        seconds = self.seconds(request, required=True)
        assert seconds is not None
        response = _json_body({"down_for": seconds}, request)
        await response.prepare(request)
        await response.write_eof()
        self.server.schedule_outage(seconds)
        return response

    async def serf(self, request: web.Request) -> web.StreamResponse:
        status = request.query.get("status", "")
        if status not in (PASSING, CRITICAL):
            raise ApiError(400, f"status must be passing or critical, got {status!r}")
        self.server.set_serf_health(status)
        return _json_body(self.describe_state(), request)

    async def sync_checks(self, request: web.Request) -> web.StreamResponse:
        self.state.sync_all_checks()
        return _json_body(self.describe_state(), request)

    async def reap_tombstones(self, request: web.Request) -> web.StreamResponse:
        self.state.reap_tombstones()
        return _json_body(self.describe_state(), request)

    async def describe(self, request: web.Request) -> web.StreamResponse:
        return _json_body(self.describe_state(), request)


# --------------------------------------------------------------------------------------
# Servers: async core, in-process thread wrapper, subprocess runner


class StandInServer:
    """The stand-in on the current event loop; `AgentStandIn` wraps it in a thread."""

    def __init__(self, config: StandInConfig | None = None) -> None:
        self.config = config or StandInConfig()
        self.state = AgentState(self.config)
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.api = AgentApi(self.state, self.unpaused)
        self.control = ControlApi(self)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def start(self, port: int = 0) -> int:
        self.state.start()
        await self._listen(port)
        return self.port

    async def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.unpaused.set()
        await self.go_down()
        await self.state.close()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(self._common_headers)
        return app

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_standin/"):
            return await self.control.dispatch(request)
        if not request.path.startswith("/v1/"):
            return _text(404, "404 page not found")
        return await self.api.dispatch(request)

    async def _common_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        policy = "deny" if self.config.acl_enabled else "allow"
        response.headers["X-Consul-Default-Acl-Policy"] = policy

    async def _listen(self, port: int) -> None:
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("consul stand-in listening on %s", self.url)

    async def go_down(self) -> None:
        """Close the listening socket and every open connection; state is kept."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def go_up(self) -> None:
        """Listen again on the same port."""
        if self._runner is None:
            await self._listen(self.port)

    def pause(self, seconds: float | None) -> None:
        """Hold every /v1/ request (they hang, they are not refused) until resumed."""
        self.unpaused.clear()
        if seconds is not None:
            self._later(seconds, self.resume)

    def resume(self) -> None:
        self.unpaused.set()

    def schedule_outage(self, seconds: float) -> None:
        self._spawn(self._outage(seconds))

    async def _outage(self, seconds: float) -> None:
        await self.go_down()
        await asyncio.sleep(seconds)
        await self.go_up()

    def set_serf_health(self, status: str) -> None:
        self.state.set_serf_health(status)

    def _later(self, seconds: float, callback: Callable[[], None]) -> None:
        handle = asyncio.get_running_loop().call_later(seconds, callback)
        self._timers.add(handle)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class AgentStandIn:
    """The stand-in in this process, on its own event loop thread, for synchronous tests.

    `start(port=0)` returns the bound port; everything else is thread-safe and blocks
    until the loop has done it.
    """

    def __init__(self, config: StandInConfig | None = None) -> None:
        self.config = config or StandInConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: StandInServer | None = None

    def __enter__(self) -> AgentStandIn:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._require_server().port

    @property
    def url(self) -> str:
        return self._require_server().url

    @property
    def state(self) -> AgentState:
        """The live state, for assertions; mutate it only through `call`."""
        return self._require_server().state

    def start(self, port: int = 0) -> int:
        if self._loop is not None:
            raise RuntimeError("the Consul stand-in is already running")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="consul-standin", daemon=True
        )
        self._thread.start()
        try:
            self._server = self.call(self._make_server)
            return self._run(self._server.start(port))
        except BaseException:
            self._shutdown_loop()
            raise

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._server is not None:
            self._run(self._server.stop())
            self._run(_cancel_leftovers())
        self._shutdown_loop()

    def reset(self) -> None:
        """Wipe all state; the index restarts at 1 (an agent restart without data dir)."""
        self.call(lambda: self.state.reset())

    def force_index(self, index: int) -> None:
        self.call(lambda: self.state.force_index(index))

    def down(self) -> None:
        """Stop listening and drop open connections (blocking queries die); keep state."""
        self._run(self._require_server().go_down())

    def up(self) -> None:
        self._run(self._require_server().go_up())

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """`with standin.unreachable(): ...` — the agent is down inside the block."""
        self.down()
        try:
            yield
        finally:
            self.up()

    def pause(self) -> None:
        self.call(lambda: self._require_server().pause(None))

    def resume(self) -> None:
        self.call(lambda: self._require_server().resume())

    def set_serf_health(self, status: str) -> None:
        self.call(lambda: self._require_server().set_serf_health(status))

    def sync_checks(self) -> None:
        self.call(lambda: self.state.sync_all_checks())

    def reap_tombstones(self) -> None:
        self.call(lambda: self.state.reap_tombstones())

    @property
    def blocking_queries(self) -> int:
        return self.call(lambda: self.state.blocking_queries)

    @property
    def index(self) -> int:
        return self.call(lambda: self.state.index)

    def call(self, func: Callable[[], T]) -> T:
        """Run `func` on the stand-in's loop and return its result."""

        async def run() -> T:
            return func()

        return self._run(run())

    def _make_server(self) -> StandInServer:
        return StandInServer(self.config)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the Consul stand-in is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def _require_server(self) -> StandInServer:
        if self._server is None:
            raise RuntimeError("the Consul stand-in is not running")
        return self._server

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(10)
            asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = self._server = None


async def _cancel_leftovers() -> None:
    """Cancel request handlers still blocked after the server closed, and wait for them.

    aiohttp does not cancel a handler when its client hangs up, so a blocking query whose
    client went away keeps waiting; without this the loop would close under it and asyncio
    would report "Task was destroyed but it is pending".
    """
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


class StandInProcess:
    """The stand-in as a child process, so a test can kill, restart or freeze the agent.

    `restart()` reuses the port: clients see connection refused, then a fresh agent whose
    index went back to 1 — what an agent restart without data dir looks like.
    """

    def __init__(self, args: Sequence[str] = (), python: str = sys.executable) -> None:
        self.args = list(args)
        self.python = python
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the stand-in process is not running")
        return self._proc.pid

    def start(self, port: int | None = None, timeout: float = 15.0) -> int:
        if self._proc is not None:
            raise RuntimeError("the stand-in process is already running")
        wanted = self.port if port is None else port
        cmd = [self.python, str(Path(__file__).resolve()), "--port", str(wanted), *self.args]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            line = self._ready_line(timeout)
        except BaseException:
            self.kill()
            raise
        self.port = int(line.rsplit(":", 1)[1])
        return self.port

    def _ready_line(self, timeout: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError(f"stand-in did not report readiness within {timeout}s")
        line = self._proc.stdout.readline().strip()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"stand-in failed to start: {line!r} (exit {self._proc.poll()})")
        return line

    def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Crash the agent (SIGKILL): connections reset, state gone."""
        self._end(signal.SIGKILL)

    def restart(self) -> int:
        self.kill()
        return self.start(self.port)

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            raise RuntimeError("the stand-in process is not running")
        self._proc.send_signal(sig)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def duration(text: str) -> float:
        try:
            return parse_go_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    defaults = StandInConfig()
    parser = argparse.ArgumentParser(description="Stateful stand-in for the Consul agent HTTP API")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=8500, help="0 picks a free port")
    parser.add_argument("--acl-token-file", type=Path, help="enables ACLs; one token per line")
    parser.add_argument("--node-name", default=defaults.node_name)
    parser.add_argument("--datacenter", default=defaults.datacenter)
    parser.add_argument("--deregister-min", type=duration, default=defaults.deregister_min)
    parser.add_argument("--reap-interval", type=duration, default=defaults.reap_interval)
    parser.add_argument("--min-check-interval", type=duration, default=defaults.min_check_interval)
    parser.add_argument(
        "--check-update-interval", type=duration, default=defaults.check_update_interval
    )
    parser.add_argument("--max-query-time", type=duration, default=defaults.max_query_time)
    parser.add_argument("--check-ca-file", default=None)
    parser.add_argument("--unknown-check-404", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> StandInConfig:
    tokens: frozenset[str] = frozenset()
    if args.acl_token_file is not None:
        lines = args.acl_token_file.read_text().splitlines()
        tokens = frozenset(line.strip() for line in lines if line.strip())
        if not tokens:
            raise SystemExit(f"{args.acl_token_file}: no token found")
    return StandInConfig(
        host=args.host,
        node_name=args.node_name,
        datacenter=args.datacenter,
        acl_tokens=tokens,
        deregister_min=args.deregister_min,
        reap_interval=args.reap_interval,
        min_check_interval=args.min_check_interval,
        check_update_interval=args.check_update_interval,
        max_query_time=args.max_query_time,
        check_ca_file=args.check_ca_file,
        unknown_check_404=args.unknown_check_404,
    )


async def serve(config: StandInConfig, port: int) -> None:
    """Run until SIGTERM or SIGINT, announcing readiness on stdout."""
    server = StandInServer(config)
    await server.start(port)
    print(f"{READY_PREFIX}{server.url}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(config_from_args(args), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
