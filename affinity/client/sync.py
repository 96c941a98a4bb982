"""The sync client, and :class:`BaseClient`, what it shares with the async one.

:class:`Client` is a thin driver: it steps the generators of
:mod:`affinity.client.rules` and performs their actions with one
``httpx.Client`` (connection pooling for the referral and the servers alike).
It holds a lock while stepping the rules, never while doing I/O, so a client
can be shared by threads the way an ``httpx.Client`` can.

:class:`BaseClient` holds everything both clients need and that does no I/O
(options, the session, TLS settings, events), in the manner of httpx's own
``BaseClient``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, TypeVar, Unpack

import httpx

from affinity.backoff import Backoff
from affinity.client import store
from affinity.client.backoff import RetryBudget
from affinity.client.referrers import Failure, Fetch, Referrers, Resolve
from affinity.client.rules import (
    IDEMPOTENCY_HEADER,
    Action,
    Close,
    Emit,
    Event,
    Persist,
    Read,
    Sleep,
    Spec,
    Steps,
    assign_steps,
    bye_fetch,
    log_event,
    request_steps,
)
from affinity.client.store import Session, Settings
from affinity.errors import ConfigError
from affinity.web.names import is_valid_id
from affinity.web.tls import client_context

log = logging.getLogger("affinity.client")

T = TypeVar("T")
Resolver = Callable[[str, int], Sequence[str]]


# -- what Client and AsyncClient share ---------------------------------------------------------


class RequestOptions(TypedDict, total=False):
    """What every request method takes besides the method and the path.

    ``content`` is bytes or str, not a stream: a retry must be able to send it
    again. ``idempotency_key`` is sent as ``Idempotency-Key`` and makes any
    method safe to resend (the server deduplicates on it).
    """

    params: Any
    headers: Mapping[str, str] | None
    content: bytes | str | None
    json: Any
    idempotency_key: str | None


class ClientOptions(TypedDict, total=False):
    """The options of :class:`Client` and :class:`AsyncClient`; defaults in brackets.

    service [the referral's default]; verify [True: the system CAs; or a CA
    file; or an ``ssl.SSLContext``; False only when passed, and logged];
    timeout [5.0, read/write per attempt]; connect_timeout [2.0]; deadline
    [10.0, the whole call]; backoff_base [0.05]; backoff_cap [2.0];
    max_attempts [4]; retry_budget_ratio [0.2]; retry_budget_min [3];
    cooldown [10.0, a failed referral instance is tried last for this long];
    state_file [None]; on_event [None]; clock [time.monotonic] and rng
    [random.Random()] for tests.
    """

    service: str | None
    verify: bool | str | os.PathLike[str] | ssl.SSLContext
    timeout: float
    connect_timeout: float
    deadline: float
    backoff_base: float
    backoff_cap: float
    max_attempts: int
    retry_budget_ratio: float
    retry_budget_min: int
    cooldown: float
    state_file: str | os.PathLike[str] | None
    on_event: Callable[[Event], None] | None
    clock: Callable[[], float]
    rng: random.Random


def make_session(referrals: str | Sequence[str], options: ClientOptions) -> Session:
    """A session from the options; unknown or bad values are ConfigErrors naming the option."""
    given: dict[str, Any] = dict(options)
    unknown = set(given) - set(ClientOptions.__annotations__)
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)!r}", key="options")
    service = given.get("service")
    if service is not None and not is_valid_id(service):
        raise ConfigError(
            f"service {service!r} is not valid; expected 1-64 letters, digits, '.', '_' or '-'",
            key="service",
        )
    clock = given.get("clock", time.monotonic)
    backoff = _backoff(given)
    settings = Settings(
        service=service,
        backoff=backoff,
        **_renamed(
            given,
            timeout="timeout",
            connect_timeout="connect_timeout",
            deadline="deadline",
            max_attempts="max_attempts",
            cooldown="cooldown",
        ),
    )
    budget = RetryBudget(
        clock=clock, **_renamed(given, ratio="retry_budget_ratio", minimum="retry_budget_min")
    )
    referrers = Referrers(
        [referrals] if isinstance(referrals, str) else referrals, cooldown=settings.cooldown
    )
    state_file = given.get("state_file")
    return Session(
        settings,
        referrers,
        budget,
        clock=clock,
        rng=given.get("rng"),
        state_file=Path(state_file).expanduser() if state_file is not None else None,
    )


def _backoff(given: dict[str, Any]) -> Backoff:
    options = _renamed(given, base="backoff_base", cap="backoff_cap")
    try:
        return Backoff(**options)
    except ValueError as exc:
        # Backoff's message starts with the field it refuses: "base: ..." or "cap: ...".
        field, _, message = str(exc).partition(": ")
        raise ConfigError(message, key=f"backoff_{field}") from exc


def _renamed(given: dict[str, Any], **names: str) -> dict[str, Any]:
    return {ours: given[theirs] for ours, theirs in names.items() if theirs in given}


def tls_verify(verify: object) -> ssl.SSLContext | bool:
    """httpx's ``verify``: always verifying unless ``False`` is passed, which is logged."""
    if verify is False:
        log.warning(
            "TLS verification is OFF (verify=False): anyone on the path can pose as "
            "the referral or a server"
        )
        return False
    if verify is True:
        return client_context(None)
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str | os.PathLike):
        return client_context(Path(verify), key="verify")
    raise ConfigError(
        f"expected True, False, a CA file or an ssl.SSLContext, got {verify!r}", key="verify"
    )


def make_spec(method: str, path: str, options: RequestOptions) -> Spec:
    """Check and freeze what the caller asked to send."""
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} is not valid; expected an absolute path such as '/items'")
    content = options.get("content")
    if content is not None and not isinstance(content, bytes | str):
        raise TypeError(
            f"content must be bytes or str (to be sent again on a retry), "
            f"got {type(content).__name__}"
        )
    headers = tuple((str(k), str(v)) for k, v in (options.get("headers") or {}).items())
    key = options.get("idempotency_key")
    if key is None:  # a key passed as a header counts too
        key = next((v for k, v in headers if k.lower() == IDEMPOTENCY_HEADER.lower()), None)
    return Spec(
        method=method.upper(),
        path=path,
        params=options.get("params"),
        headers=headers,
        content=content,
        json=options.get("json"),
        idempotency_key=key,
    )


class BaseClient:
    """What the sync and the async client share: options, session, TLS, events. No I/O."""

    def __init__(
        self, referrals: str | Sequence[str], options: ClientOptions, *, transport: object
    ) -> None:
        self._session = make_session(referrals, options)
        self._on_event = options.get("on_event")
        # A transport given for tests does its own TLS, if any: skip loading the system CAs.
        verify = options.get("verify", True)
        self._verify = True if transport is not None and verify is True else tls_verify(verify)

    @property
    def server(self) -> str | None:
        """The id of the assigned server, if any."""
        return self._session.grant.server_id if self._session.grant else None

    @property
    def server_url(self) -> str | None:
        return self._session.grant.server_url if self._session.grant else None

    @property
    def token(self) -> str | None:
        """The affinity token sent to the server (a bearer secret: do not log it)."""
        return self._session.grant.token if self._session.grant else None

    @property
    def referrals(self) -> tuple[str, ...]:
        return self._session.referrers.urls

    def _http_options(self) -> dict[str, Any]:
        settings = self._session.settings
        timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
        return {"verify": self._verify, "timeout": timeout, "follow_redirects": False}

    @staticmethod
    def _build(http: httpx.Client | httpx.AsyncClient, fetch: Fetch) -> httpx.Request:
        return http.build_request(
            fetch.method,
            fetch.url,
            params=fetch.params,
            headers=dict(fetch.headers),
            content=fetch.content,
            json=fetch.json,
            extensions=dict(fetch.extensions),
            timeout=httpx.Timeout(fetch.read, connect=fetch.connect),
        )

    @staticmethod
    def _bye_failed(fetch: Fetch, exc: Exception) -> None:
        log.debug("the bye to %s was not delivered: %s", fetch.url, exc)

    def _emit(self, event: Event) -> None:
        log_event(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("the on_event callback raised; ignored")


def resolve(host: str, port: int) -> list[str]:
    """Every address of ``host`` (the default resolver; blocking, as ``getaddrinfo`` is)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Client(BaseClient):
    """An HTTP client that asks the referral where to go, stays there, and fails over.

    ``Client("https://referral.example.com", service="api")``; then
    ``client.get("/items")`` like httpx. Options are listed in
    :class:`~affinity.client.sync.ClientOptions`. ``transport``, ``sleep`` and
    ``resolver`` replace the network, ``time.sleep`` and DNS in tests.
    """

    def __init__(
        self,
        referrals: str | Sequence[str],
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        resolver: Resolver = resolve,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(referrals, options, transport=transport)
        self._http = httpx.Client(transport=transport, **self._http_options())
        self._sleep = sleep
        self._resolver = resolver
        self._lock = threading.Lock()

    def request(self, method: str, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        """Send ``method path`` to the assigned server; the response is read."""
        spec = make_spec(method, path, options)
        return self._drive(request_steps(self._session, spec))

    def get(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("GET", path, **options)

    def head(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("HEAD", path, **options)

    def options(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("OPTIONS", path, **options)

    def post(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("POST", path, **options)

    def put(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("PUT", path, **options)

    def patch(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("PATCH", path, **options)

    def delete(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("DELETE", path, **options)

    @contextlib.contextmanager
    def stream(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> Iterator[httpx.Response]:
        """The response with its body unread; failover happens only before it starts."""
        response = self._drive(
            request_steps(self._session, make_spec(method, path, options), stream=True)
        )
        try:
            yield response
        finally:
            response.close()

    def assign(self) -> str:
        """Ask the referral now (sticky: the old token is sent); the id of the server."""
        return self._drive(assign_steps(self._session))

    def close(self) -> None:
        """Tell the server the session ended (best effort, a short timeout), then close."""
        try:
            with self._lock:
                fetch = bye_fetch(self._session)
            if fetch is not None:
                try:
                    self._http.send(self._build(self._http, fetch)).close()
                except Exception as exc:  # best effort: the server's count decays anyway
                    self._bye_failed(fetch, exc)
        finally:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _drive(self, steps: Steps[T]) -> T:
        outcome: Any = None
        try:
            while True:
                with self._lock:
                    action = steps.send(outcome)
                outcome = self._perform(action)
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            steps.close()

    def _perform(self, action: Action) -> Any:
        match action:
            case Fetch():
                try:
                    return self._http.send(self._build(self._http, action), stream=action.stream)
                except httpx.RequestError as exc:
                    return Failure(exc)
            case Read():
                try:
                    action.response.read()
                except httpx.RequestError as exc:
                    return Failure(exc)
            case Close():
                action.response.close()
            case Sleep():
                self._sleep(action.seconds)
            case Resolve():
                try:
                    return list(self._resolver(action.host, action.port))
                except OSError as exc:
                    return Failure(exc)
            case Emit():
                self._emit(action.event)
            case Persist():
                store.persist(action.path, action.saved)
        return None
