"""Referral instances: the configured list, DNS expansion, cool-down, and one referral round.

The referral tier is several stateless instances, named either as a list of
URLs or as one name with several addresses (DNS round robin). A name with
several addresses is expanded so that each address is an instance of its
own: the client connects to the address but keeps the name in the ``Host``
header and in TLS SNI, so the certificate is still checked against the name.
Instances are tried in random order so clients spread over them; one that
fails is put last for a cool-down so the next rounds do not wait on it again,
but it is still tried when everything else has failed.

Nothing here does I/O: a round is a generator that yields :class:`Resolve`
and :class:`Fetch` actions and receives their outcomes, so the sync and the
async client drive the same code. Those two network actions are defined here
because the referral round is their first user; :mod:`affinity.client.rules`
uses them for the app servers too.
"""

from __future__ import annotations

import ipaddress
import random
import ssl
import urllib.parse
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from affinity.client.backoff import Clock, parse_retry_after
from affinity.errors import ConfigError
from affinity.protocol import ASSIGN_PATH, MAX_AVOID, TOKEN_HEADER, ErrorCode
from affinity.web.names import check_origin, is_valid_id

MAX_ADDRESSES = 16
"""A name with more addresses is cut, so a broken DNS answer cannot make rounds endless."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetch:
    """Action: send one HTTP request; the outcome is an ``httpx.Response`` or a :class:`Failure`.

    ``stream=True`` leaves the body unread (the outcome must then be read or
    closed through the ``Read`` / ``Close`` actions of the rules).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    connect: float
    read: float
    params: Any = None
    content: bytes | str | None = None
    json: Any = None
    extensions: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Resolve:
    """Action: resolve ``host`` for ``port``; the outcome: a list of addresses, or a Failure."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Failure:
    """Outcome of an action whose I/O failed (an ``httpx.RequestError`` or an ``OSError``)."""

    error: Exception

    def __str__(self) -> str:
        text = str(self.error)
        name = type(self.error).__name__
        return f"{name}: {text}" if text else name


TLS_HINT = (
    "the certificate did not verify; trust the CA that signed it with --cacert FILE "
    "(affinity request) or verify=... (Client, AsyncClient)"
)
"""Said once, with no retry, when a certificate does not verify: trying again cannot help."""


def tls_verification_failed(error: BaseException | None) -> bool:
    """True when ``error`` is, or was caused by, a certificate verification failure."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, ssl.SSLCertVerificationError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


@dataclass(frozen=True, slots=True)
class Note:
    """One thing tried and how it failed, for events and for the final error message.

    ``kind`` is ``"referral"`` or ``"server"``; ``error`` keeps the exception,
    if any, so the final error can chain it.
    """

    kind: str
    who: str
    what: str
    error: Exception | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.kind} {self.who}: {self.what}"


@dataclass(frozen=True, slots=True)
class Instance:
    """One referral instance: a configured URL, and the address to use when its name has several."""

    base: str
    address: str | None = None

    def url(self, path: str) -> str:
        parts = urllib.parse.urlsplit(self.base)
        netloc = parts.netloc
        if self.address is not None:
            host = f"[{self.address}]" if ":" in self.address else self.address
            netloc = host if parts.port is None else f"{host}:{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path + path, "", ""))

    def headers(self) -> dict[str, str]:
        """``Host`` stays the configured name when connecting to an address."""
        if self.address is None:
            return {}
        return {"Host": urllib.parse.urlsplit(self.base).netloc}

    def extensions(self) -> dict[str, Any]:
        """TLS SNI (and so certificate checking) stays the configured name too."""
        parts = urllib.parse.urlsplit(self.base)
        if self.address is None or parts.scheme != "https":
            return {}
        return {"sni_hostname": parts.hostname}

    def __str__(self) -> str:
        return self.base if self.address is None else f"{self.base} ({self.address})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """A referral's ``200`` answer, checked."""

    server_id: str
    server_url: str
    token: str
    expires_in: float
    sticky: bool


@dataclass(frozen=True, slots=True)
class Offered:
    """A round that ended with an offer (``notes``: the instances that failed before)."""

    offer: Offer
    instance: Instance
    notes: tuple[Note, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NotOffered:
    """A round without an offer: every instance failed, or one said wait, or one refused."""

    notes: tuple[Note, ...]
    wait: float | None = None
    refused: Note | None = None


def normalise(url: str) -> str:
    """``scheme://host[:port][/prefix]`` without a trailing slash, or ConfigError."""
    parts = urllib.parse.urlsplit(url.strip())
    if (
        parts.scheme not in ("http", "https")
        or not _has_valid_port(parts)
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f"referral URL {url!r} is not valid; expected 'https://host[:port][/prefix]'",
            key="referrals",
        )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _has_valid_port(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - the property raises ValueError for a bad port
    except ValueError:
        return False
    return True


class Referrers:
    """The referral instances of a client, with their DNS expansion and cool-downs."""

    def __init__(
        self, urls: Sequence[str], *, cooldown: float = 10.0, dns_ttl: float = 30.0
    ) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ConfigError("expected at least one referral URL", key="referrals")
        self.urls = tuple(dict.fromkeys(normalise(u) for u in urls))
        self.cooldown = cooldown
        self.dns_ttl = dns_ttl
        self._dns: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}
        self._cool: dict[Instance, float] = {}

    def to_resolve(self, now: float) -> list[tuple[str, int]]:
        """Names (with their port) whose addresses are unknown or older than ``dns_ttl``."""
        wanted = []
        for base in self.urls:
            key = _name_and_port(base)
            if key is not None and (
                key not in self._dns or now - self._dns[key][0] >= self.dns_ttl
            ):
                wanted.append(key)
        return list(dict.fromkeys(wanted))

    def resolved(self, host: str, port: int, addresses: Sequence[str], now: float) -> None:
        """Remember a name's addresses (empty when resolution failed: connect by name then)."""
        self._dns[(host, port)] = (now, tuple(dict.fromkeys(addresses))[:MAX_ADDRESSES])

    def instances(self) -> list[Instance]:
        """Every instance: one per address of a name with several, else the URL itself."""
        found: list[Instance] = []
        for base in self.urls:
            key = _name_and_port(base)
            addresses = self._dns.get(key, (0.0, ()))[1] if key else ()
            if len(addresses) > 1:
                found.extend(Instance(base, a) for a in addresses)
            else:
                found.append(Instance(base))
        return found

    def order(self, now: float, rng: random.Random) -> list[Instance]:
        """Available instances in random order, then those cooling down, soonest back first."""
        available: list[Instance] = []
        cooling: list[Instance] = []
        for instance in self.instances():
            (cooling if self._cool.get(instance, 0.0) > now else available).append(instance)
        rng.shuffle(available)
        cooling.sort(key=lambda i: self._cool[i])
        return available + cooling

    def failed(self, instance: Instance, now: float) -> None:
        self._cool[instance] = now + self.cooldown

    def succeeded(self, instance: Instance) -> None:
        self._cool.pop(instance, None)

    def cooling(self, now: float) -> list[Instance]:
        """The instances skipped for now (for observability and tests)."""
        return [i for i, until in self._cool.items() if until > now]


def _name_and_port(base: str) -> tuple[str, int] | None:
    """The (name, port) to resolve, or None when the host is already an address."""
    parts = urllib.parse.urlsplit(base)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host, parts.port or (443 if parts.scheme == "https" else 80)
    return None


def assign_fetch(
    instance: Instance,
    *,
    service: str | None,
    token: str | None,
    avoid: Sequence[str],
    connect: float,
    read: float,
) -> Fetch:
    """The ``GET /v1/assign`` request for ``instance``."""
    params = [("service", service)] if service else []
    params += [("avoid", a) for a in list(dict.fromkeys(avoid))[-MAX_AVOID:]]
    headers = {"Accept": "application/json", **instance.headers()}
    if token:
        headers[TOKEN_HEADER] = token
    return Fetch(
        method="GET",
        url=instance.url(ASSIGN_PATH),
        headers=headers,
        params=params,
        connect=connect,
        read=read,
        extensions=instance.extensions(),
    )


def parse_offer(body: bytes) -> Offer:
    """Check a ``200`` body; ValueError says what is wrong with it."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError("answer is not JSON") from exc
    server = doc.get("server") if isinstance(doc, dict) else None
    if not isinstance(server, dict):
        raise ValueError("answer has no 'server' object")
    server_id, token, expires_in = server.get("id"), doc.get("token"), doc.get("expires_in")
    if not is_valid_id(server_id) or not isinstance(server_id, str):
        raise ValueError(f"server id {server_id!r} is not valid")
    if not isinstance(token, str) or not token:
        raise ValueError("answer has no token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise ValueError(f"expires_in {expires_in!r} is not a positive number")
    return Offer(
        server_id=server_id,
        server_url=check_origin(server.get("url")),
        token=token,
        expires_in=float(expires_in),
        sticky=doc.get("sticky") is True,
    )


def error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(error, detail)`` of an error answer, as far as it follows the protocol."""
    try:
        doc = orjson.loads(response.content)
    except (orjson.JSONDecodeError, httpx.ResponseNotRead):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    error, detail = doc.get("error"), doc.get("detail")
    return (error if isinstance(error, str) else None), (
        detail[:200] if isinstance(detail, str) else None
    )


def error_text(response: httpx.Response) -> str:
    """``"<status> <error>: <detail>"``, for messages."""
    error, detail = error_body(response)
    text = str(response.status_code)
    if error:
        text += f" {error}" + (f": {detail}" if detail else "")
    return text


Outcome = Offer | NotOffered | None
"""How one instance's answer ends a round: an offer, a reason to stop, or None to go on."""


def judge_answer(outcome: httpx.Response | Failure, who: str, notes: list[Note]) -> Outcome:
    """Classify one instance's answer; a failure is appended to ``notes`` (None: try the next)."""
    if isinstance(outcome, Failure):
        if tls_verification_failed(outcome.error):
            note = Note("referral", who, f"{outcome}; {TLS_HINT}", outcome.error)
            notes.append(note)
            return NotOffered(notes=tuple(notes), refused=note)
        notes.append(Note("referral", who, str(outcome), outcome.error))
        return None
    status = outcome.status_code
    if status == 200:
        try:
            return parse_offer(outcome.content)
        except ValueError as exc:
            notes.append(Note("referral", who, f"200 with a bad answer: {exc}"))
            return None
    note = Note("referral", who, error_text(outcome))
    notes.append(note)
    if status == 429 or (status == 503 and error_body(outcome)[0] == ErrorCode.NO_HEALTHY_SERVER):
        wait = parse_retry_after(outcome.headers.get("Retry-After"))
        return NotOffered(notes=tuple(notes), wait=wait)
    if 400 <= status < 500 and status not in (408, 421):
        return NotOffered(notes=tuple(notes), refused=note)
    return None


Step = Generator[Fetch | Resolve, Any, Offered | NotOffered]


def ask(
    referrers: Referrers,
    *,
    service: str | None,
    token: str | None,
    avoid: Sequence[str],
    until: float,
    clock: Clock,
    rng: random.Random,
    connect_timeout: float,
    timeout: float,
) -> Step:
    """One referral round: instances in order until one offers a server, says wait, or refuses.

    Instances that fail (transport error, a 5xx other than ``no_healthy_server``,
    a broken answer) are cooled down and the next is tried. ``503
    no_healthy_server`` and ``429`` end the round with the ``Retry-After`` to
    honour: the other instances share the same view or the same limits, so
    asking them at once would only add load. Other 4xx answers (unknown
    service, bad avoid) cannot be fixed by retrying and end it as refused.
    """
    for host, port in referrers.to_resolve(clock()):
        addresses = yield Resolve(host, port)
        referrers.resolved(host, port, [] if isinstance(addresses, Failure) else addresses, clock())
    notes: list[Note] = []
    for instance in referrers.order(clock(), rng):
        remaining = until - clock()
        if remaining <= 0:
            notes.append(Note("referral", str(instance), "not tried: the deadline passed"))
            break
        outcome = yield assign_fetch(
            instance,
            service=service,
            token=token,
            avoid=avoid,
            connect=min(connect_timeout, remaining),
            read=min(timeout, remaining),
        )
        result = judge_answer(outcome, str(instance), notes)
        if isinstance(result, Offer):
            referrers.succeeded(instance)
            return Offered(result, instance, tuple(notes))
        if isinstance(result, NotOffered):
            return result
        referrers.failed(instance, clock())
    return NotOffered(notes=tuple(notes))
