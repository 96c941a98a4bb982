"""What a client keeps: its settings, its assignment in memory, and optionally on disk.

:class:`Session` is the state shared by every call of one client: the server
and token (a :class:`Grant`), a server under suspicion, the retry budget and
the referral instances. The rules in :mod:`affinity.client.rules` read and
update it; the sync driver steps them under a lock, the async one on one loop.

Persistence is optional (``state_file``). A command-line tool lives for one
request. Without memory it would ask the referral on every run, and without
its old token it could not be kept on its server. The file holds the
referral set, the service, the server and the token, so the next run goes
straight to the same server and renews stickily.

The file holds a bearer token, so it is created with mode 0600 before a byte
is written, and replaced atomically (a temporary file in the same directory,
fsync, rename) so a concurrent reader sees the old file or the new one, never
half of one. Anything wrong with it (missing, corrupt, another referral set or
service, expired) means "no saved assignment", never an error: the referral
is always there to ask.
"""

from __future__ import annotations

import logging
import math
import random
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from affinity.backoff import Backoff
from affinity.client.backoff import Clock, RetryBudget
from affinity.client.referrers import Offer, Referrers
from affinity.errors import ConfigError
from affinity.files import make_private_dir, write_private
from affinity.web.names import check_origin, is_valid_id

log = logging.getLogger("affinity.client")

VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Saved:
    """An assignment as written to disk; times are wall-clock (``time.time()``)."""

    referrals: tuple[str, ...]
    service: str | None
    server_id: str
    server_url: str
    token: str
    expires_at: float
    renew_at: float


def save(path: Path, saved: Saved) -> None:
    """Write ``saved`` to ``path`` atomically, mode 0600."""
    make_private_dir(path.parent)
    write_private(
        path, orjson.dumps({"version": VERSION, **asdict(saved)}, option=orjson.OPT_INDENT_2)
    )


def load(
    path: Path, *, referrals: tuple[str, ...], service: str | None, now: float
) -> Saved | None:
    """The assignment saved in ``path`` if it is for these referrals and service and still valid."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read state file %s: %s; asking the referral", path, exc)
        return None
    if stat.S_IMODE(mode) & 0o077:
        log.warning(
            "state file %s holds a token but is readable by others (mode %o)",
            path,
            stat.S_IMODE(mode),
        )
    saved = _parse(raw)
    if saved is None:
        log.warning("state file %s is not a saved assignment; asking the referral", path)
        return None
    if saved.referrals != referrals or saved.service != service:
        log.debug("state file %s is for other referrals or another service", path)
        return None
    if now >= saved.expires_at:
        return None
    return saved


def _parse(raw: bytes) -> Saved | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    try:
        return _checked(doc)
    except (KeyError, TypeError, ValueError):
        return None


def _checked(doc: dict[str, Any]) -> Saved:
    referrals = doc["referrals"]
    service = doc["service"]
    token = doc["token"]
    if not (isinstance(referrals, list) and all(isinstance(r, str) for r in referrals)):
        raise TypeError("referrals")
    if service is not None and not is_valid_id(service):
        raise ValueError("service")
    if not is_valid_id(doc["server_id"]) or not isinstance(token, str) or not token:
        raise ValueError("server_id or token")
    times = float(doc["expires_at"]), float(doc["renew_at"])
    if not all(math.isfinite(t) for t in times):
        raise ValueError("times")
    return Saved(
        referrals=tuple(referrals),
        service=service,
        server_id=doc["server_id"],
        server_url=check_origin(doc["server_url"]),
        token=token,
        expires_at=times[0],
        renew_at=times[1],
    )


def persist(path: Path, saved: Saved) -> None:
    """:func:`save`, logging instead of raising: a read-only disk must not fail requests."""
    try:
        save(path, saved)
    except OSError as exc:
        log.warning("cannot write state file %s: %s", path, exc)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The knobs of the rules; seconds as floats. Defaults: see docs/client.md."""

    service: str | None = None
    timeout: float = 5.0
    connect_timeout: float = 2.0
    deadline: float = 10.0
    max_attempts: int = 4
    backoff: Backoff = field(default_factory=Backoff)
    cooldown: float = 10.0
    renew_fraction: float = 0.8

    def __post_init__(self) -> None:
        for key in ("timeout", "connect_timeout", "deadline", "cooldown"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"expected a positive number of seconds, got {value!r}", key=key)
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            raise ConfigError(
                f"expected an integer >= 1, got {self.max_attempts!r}", key="max_attempts"
            )
        if not 0 < self.renew_fraction <= 1:
            raise ConfigError(
                f"expected a fraction in (0, 1], got {self.renew_fraction!r}", key="renew_fraction"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """The server a client uses and its token; times on the session's (monotonic) clock."""

    server_id: str
    server_url: str
    token: str
    expires_at: float
    renew_at: float
    sticky: bool


class Session:
    """What a client keeps between calls: the grant, a suspect server, the budget, the referrers.

    ``suspect`` names the server of the current grant after a call failed on
    it, so the next call (this one's retry or any other) asks the referral to
    avoid it. Calls compare grants by identity: a call that failed on a grant
    another call has already replaced does not throw the new one away.
    """

    def __init__(
        self,
        settings: Settings,
        referrers: Referrers,
        budget: RetryBudget,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        state_file: Path | None = None,
        wall: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.referrers = referrers
        self.budget = budget
        self.clock = clock
        self.rng = rng or random.Random()
        self.state_file = state_file
        self.wall = wall
        self.grant: Grant | None = None
        self.suspect: str | None = None
        self.renew_not_before = 0.0
        if state_file is not None:
            self._restore(state_file)

    def install(self, offer: Offer) -> Grant:
        now = self.clock()
        self.grant = Grant(
            server_id=offer.server_id,
            server_url=offer.server_url,
            token=offer.token,
            expires_at=now + offer.expires_in,
            renew_at=now + self.settings.renew_fraction * offer.expires_in,
            sticky=offer.sticky,
        )
        self.suspect = None
        self.renew_not_before = 0.0
        return self.grant

    def fail(self, grant: Grant) -> None:
        if self.grant is grant:
            self.suspect = grant.server_id

    def saved(self) -> Saved:
        assert self.grant is not None
        shift = self.wall() - self.clock()
        return Saved(
            referrals=self.referrers.urls,
            service=self.settings.service,
            server_id=self.grant.server_id,
            server_url=self.grant.server_url,
            token=self.grant.token,
            expires_at=self.grant.expires_at + shift,
            renew_at=self.grant.renew_at + shift,
        )

    def _restore(self, path: Path) -> None:
        saved = load(
            path, referrals=self.referrers.urls, service=self.settings.service, now=self.wall()
        )
        if saved is None:
            return
        shift = self.clock() - self.wall()
        self.grant = Grant(
            server_id=saved.server_id,
            server_url=saved.server_url,
            token=saved.token,
            expires_at=saved.expires_at + shift,
            renew_at=saved.renew_at + shift,
            sticky=True,
        )
        log.info("using server %s saved in %s", saved.server_id, path)
