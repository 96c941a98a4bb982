"""Consul's answers in affinity's words: health entries to servers, KV to drain flags and settings.

Everything arriving from Consul is checked as strictly as the admin API
checks its input (server ids, service names and URLs end up in tokens and
redirects): an entry that does not pass is skipped with a warning, never
half-used.

Layout under the KV prefix (``affinity/`` by default):

* ``<prefix>drain/<server_id>`` — present: the server takes no new clients
  (written by ``POST /v1/servers/<id>/drain`` on any referral).
* ``<prefix>settings/<name>`` — a shared settings document,
  ``{"epoch": e, "version": n, "value": {...}}``, written with check-and-set.
  ``epoch`` is chosen when the key is created (:func:`new_epoch`), kept while
  it lives; documents are ordered by ``(epoch, version)``, so one written
  after the agent lost its KV (version 1 again) still supersedes the one every
  process holds. A document without ``epoch`` has epoch 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from affinity.errors import RegistryUnavailable
from affinity.models import HealthStatus, Server, SharedSettings, worst
from affinity.web.names import STRICT, OriginRules, check_server, is_valid_id

log = logging.getLogger("affinity.plugin.registry")

URL_META = "affinity_url"
WEIGHT_META = "affinity_weight"
RESERVED_META_PREFIXES = ("affinity_", "consul-")
SERVICE_MAINTENANCE = "_service_maintenance:"
NODE_MAINTENANCE = "_node_maintenance"
DRAIN = "drain/"
SETTINGS = "settings/"
_STATUS = {s.value: s for s in (HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL)}


def health_of(checks: Iterable[Mapping[str, Any]]) -> tuple[HealthStatus, bool]:
    """An instance's status from all its checks (node ones too), and whether it is draining.

    Service maintenance is how an app server drains itself (SIGTERM, or its
    drain endpoint): it means draining, like a KV drain flag, and the health is
    that of the other checks, a ``warning`` counting as passing (a draining
    server answers its check ``429``). So clients already on the server stay
    until it sends them away (``503`` + ``Affinity-Reassign``), whichever way
    it was drained. Node maintenance (an operator taking the host out) means
    maintenance: its clients move at once. Otherwise the worst check wins, and a
    status word Consul does not define counts as critical.
    """
    statuses = []
    draining = False
    for check in checks:
        check_id = str(check.get("CheckID", ""))
        if check_id == NODE_MAINTENANCE:
            return HealthStatus.MAINTENANCE, True
        if check_id.startswith(SERVICE_MAINTENANCE):
            draining = True
            continue
        statuses.append(_STATUS.get(str(check.get("Status")), HealthStatus.CRITICAL))
    status = worst(*statuses)
    if draining and status is HealthStatus.WARNING:
        status = HealthStatus.PASSING
    return status, draining


def server_from_entry(
    entry: Mapping[str, Any], prefix: str, rules: OriginRules = STRICT
) -> Server | None:
    """One ``/v1/health/service`` entry as a server, or None (logged) when it is not usable."""
    try:
        service = entry["Service"]
        node = entry.get("Node") or {}
        meta = service.get("Meta") or {}
        health, maintenance = health_of(entry.get("Checks") or ())
        server = check_server(
            server_id=service["ID"],
            service=str(service["Service"]).removeprefix(prefix),
            url=meta.get(URL_META) or _url_from_address(service, node),
            weight=int(meta.get(WEIGHT_META, "1")),
            meta={k: str(v) for k, v in meta.items() if not k.startswith("affinity_")},
            rules=rules,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("skipping a Consul service entry affinity cannot use: %s", exc)
        return None
    return replace(server, health=health, draining=maintenance)


def _url_from_address(service: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    """``https://<address>:<port>`` for instances registered without affinity's URL meta."""
    host = service.get("Address") or node.get("Address") or ""
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{int(service['Port'])}"


def servers_from_entries(
    entries: Iterable[Mapping[str, Any]], prefix: str, rules: OriginRules = STRICT
) -> tuple[Server, ...]:
    """All usable servers of one health answer, by id."""
    found = (server_from_entry(entry, prefix, rules) for entry in entries)
    return tuple(sorted((s for s in found if s is not None), key=lambda s: s.id))


def discovered(services: Mapping[str, Iterable[str]], prefix: str, tag: str) -> frozenset[str]:
    """Affinity service names in a ``/v1/catalog/services`` answer: tagged and prefixed."""
    names = set()
    for name, tags in services.items():
        short = name.removeprefix(prefix)
        if name.startswith(prefix) and tag in (tags or ()) and is_valid_id(short):
            names.add(short)
    return frozenset(names)


def settings_document(name: str, raw: bytes | None) -> SharedSettings | None:
    """A stored settings document, or None (logged) when it is not one."""
    try:
        doc = json.loads(raw or b"")
        version, value, epoch = doc["version"], doc["value"], doc.get("epoch", 0)
        for field, number, least in (("version", version, 1), ("epoch", epoch, 0)):
            if isinstance(number, bool) or not isinstance(number, int) or number < least:
                raise ValueError(f"{field} {number!r} is not an integer >= {least}")
        if not isinstance(value, dict):
            raise ValueError("value is not an object")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring shared settings %r stored in Consul: %s", name, exc)
        return None
    return SharedSettings(name=name, version=version, value=value, epoch=epoch)


def encode_settings(settings: SharedSettings) -> bytes:
    return json.dumps(
        {"epoch": settings.epoch, "version": settings.version, "value": dict(settings.value)},
        separators=(",", ":"),
    ).encode()


def new_epoch(highest_seen: int, now: float) -> int:
    """The epoch of a settings document created now: wall-clock milliseconds, and in any case
    above every epoch this process has seen (so a lost KV never orders a new document first)."""
    return max(int(now * 1000), highest_seen + 1)


def read_kv(
    entries: Iterable[Mapping[str, Any]], prefix: str
) -> tuple[frozenset[str], dict[str, SharedSettings]]:
    """Drain flags and settings documents from a recursive read of the prefix."""
    draining: set[str] = set()
    settings: dict[str, SharedSettings] = {}
    for entry in entries:
        key = str(entry.get("Key", "")).removeprefix(prefix)
        if key.startswith(DRAIN) and is_valid_id(key[len(DRAIN) :]):
            draining.add(key[len(DRAIN) :])
        elif key.startswith(SETTINGS) and is_valid_id(key[len(SETTINGS) :]):
            document = settings_document(key[len(SETTINGS) :], entry.get("Value"))
            if document is not None:
                settings[document.name] = document
    return frozenset(draining), settings


def modify_index(entry: Mapping[str, Any]) -> int:
    """A KV entry's ModifyIndex, for check-and-set."""
    try:
        return int(entry["ModifyIndex"])
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"Consul answered a KV entry without ModifyIndex: {exc!r}"
        raise RegistryUnavailable(msg) from exc


def drain_key(prefix: str, server_id: str) -> str:
    return prefix + DRAIN + _safe(server_id)


def settings_key(prefix: str, name: str) -> str:
    return prefix + SETTINGS + _safe(name)


def _safe(name: str) -> str:
    """Names become key segments only when they are valid ids: no '/', no '..', no spaces."""
    if not is_valid_id(name) or ".." in name:
        raise ValueError(f"{name!r} cannot be part of a Consul key")
    return name
