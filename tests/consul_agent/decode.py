"""Request bodies and durations read as Consul reads them, with its error sentences.

Body keys match in any case, with or without underscores (Consul's snake_case
aliases); a key Consul does not know is refused (``400 Request decode failed``),
and so is one it knows but affinity does not send: the stand-in fails instead of
ignoring what it does not model. Durations are Go duration strings; a JSON
number counts nanoseconds.
See https://developer.hashicorp.com/consul/api-docs/agent/service#register-service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tests.consul_agent.state import Check, Service

Kind = type | tuple[type, ...]

# Normalised key -> (canonical name, JSON type); lists and maps hold strings.
SERVICE_FIELDS: Mapping[str, tuple[str, Kind]] = {
    "id": ("ID", str),
    "name": ("Name", str),
    "tags": ("Tags", list),
    "address": ("Address", str),
    "port": ("Port", int),
    "meta": ("Meta", dict),
    "check": ("Check", dict),
}
CHECK_FIELDS: Mapping[str, tuple[str, Kind]] = {
    "http": ("HTTP", str),
    "interval": ("Interval", (str, int)),
    "timeout": ("Timeout", (str, int)),
    "tlsskipverify": ("TLSSkipVerify", bool),
    "tlsservername": ("TLSServerName", str),
    "deregistercriticalserviceafter": ("DeregisterCriticalServiceAfter", (str, int)),
}

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_META_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


class ApiError(Exception):
    """An answer as Consul gives it: a status code and a plain-text sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def undecodable(detail: str) -> ApiError:
    return ApiError(400, f"Request decode failed: {detail}")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("1500ms", "1m30s"); a bare number is an error."""
    if text == "0":
        return 0.0
    if not text or _DURATION.sub("", text):
        raise ValueError(f'time: invalid duration "{text}"')
    return sum(float(n) * _UNIT[unit] for n, unit in _DURATION.findall(text))


def decode(raw: object, fields: Mapping[str, tuple[str, Kind]]) -> dict[str, Any]:
    """A JSON object by canonical field name; nulls left out."""
    if not isinstance(raw, dict):
        raise undecodable("expected a JSON object")
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        name, kind = fields.get(key.lower().replace("_", ""), ("", object))
        if not name:
            raise undecodable(f'json: unknown field "{key}"')
        inner = (
            value.values() if kind is dict and name != "Check" else value if kind is list else ()
        )
        fits = isinstance(value, kind) and isinstance(value, bool) == (kind is bool)
        if value is not None and not (fits and all(isinstance(i, str) for i in inner)):
            raise undecodable(f"json: {name} is not a {getattr(kind, '__name__', kind)}")
        if value is not None:
            decoded[name] = value
    return decoded


def seconds(value: object) -> float:
    if isinstance(value, int):
        return value / 1e9
    try:
        return parse_go_duration(str(value))
    except ValueError as exc:
        raise undecodable(str(exc)) from None


def service(fields: Mapping[str, Any]) -> Service:
    """The service of a decoded registration, checked as Consul checks it."""
    if not fields.get("Name"):
        raise ApiError(400, "Missing service name")
    meta: dict[str, str] = fields.get("Meta", {})
    if len(meta) > 64:
        raise ApiError(
            400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
        )
    for key, value in meta.items():
        reason = (
            "Key prefix 'consul-' is reserved for internal use"
            if key.startswith("consul-")
            else "Key contains invalid characters or is too long"
            if not _META_KEY.fullmatch(key)
            else "Value is too long (limit: 512 characters)"
            if len(value) > 512
            else ""
        )
        if reason:
            pair = f"Couldn't load metadata pair ('{key}', '{value}')"
            raise ApiError(400, f"Invalid Service Meta: {pair}: {reason}")
    return Service(
        id=fields.get("ID") or fields["Name"],
        name=fields["Name"],
        tags=fields.get("Tags", []),
        address=fields.get("Address", ""),
        port=fields.get("Port", 0),
        meta=meta,
    )


def http_check(service: Service, raw: object) -> Check:
    """The registration's check: HTTP, the only kind affinity registers."""
    fields = decode(raw, CHECK_FIELDS)
    interval = seconds(fields.get("Interval", 0))
    if not fields.get("HTTP"):
        raise ApiError(400, "Invalid check: TTL must be > 0 for TTL checks")
    if interval <= 0:
        raise ApiError(400, "Invalid check: Interval must be > 0 for Script, HTTP, ... checks")
    return Check(
        check_id=f"service:{service.id}",
        name=f"Service '{service.name}' check",
        service_id=service.id,
        http=fields["HTTP"],
        interval=interval,
        timeout=seconds(fields.get("Timeout", 0)),
        tls_skip_verify=fields.get("TLSSkipVerify", False),
        tls_server_name=fields.get("TLSServerName", ""),
        deregister_after=seconds(fields.get("DeregisterCriticalServiceAfter", 0)),
    )
