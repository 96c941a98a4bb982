"""The client's failover rules, written once for the sync and the async client.

A call is a generator: it yields *actions* and receives their outcomes, and
never does I/O itself. :mod:`affinity.client.sync` and
:mod:`affinity.client.aio` are thin drivers that perform the actions with
``httpx.Client`` or ``httpx.AsyncClient``; every decision (when to ask the
referral, what to avoid, whether a request may be sent again, how long to
wait, when to give up) is made here, so the two clients cannot drift apart,
and tests can script outcomes without a network or a clock.

======== =========================================== ==========================
action   what the driver does                        what it sends back
======== =========================================== ==========================
Fetch    send one HTTP request                       ``httpx.Response`` or Failure
Resolve  ``getaddrinfo`` a referral name             list of addresses or Failure
Read     read a streamed body (a 401's error code)   None or Failure
Close    close a response that will not be returned  None
Sleep    wait (injectable, so tests are instant)     None
Emit     log an event and give it to ``on_event``    None
Persist  save the assignment to the state file       None
======== =========================================== ==========================

The rules, from DESIGN.md: ask a referral; send to the server with the token;
on a connect error or timeout, ``421``, ``503`` + ``Affinity-Reassign`` or a
``401`` for an expired or invalid token, ask again with ``avoid=<server>`` and
the old token, then retry. A request is sent again only when that is safe: the
answers above mean the server did not act on it, a connect failure means it
never left, and otherwise only idempotent methods or requests carrying an
``Idempotency-Key`` are repeated. Retries wait a full-jitter back-off and need
the retry budget; the whole call has a deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from affinity.client import store
from affinity.client.referrers import (
    TLS_HINT,
    Failure,
    Fetch,
    Note,
    Offered,
    Resolve,
    ask,
    error_body,
    error_text,
    tls_verification_failed,
)
from affinity.client.store import Grant, Session
from affinity.errors import AllAttemptsFailed, NotRetried, ReferralRefused
from affinity.protocol import BYE_PATH, REASSIGN_HEADER, TOKEN_ERRORS, TOKEN_HEADER

log = logging.getLogger("affinity.client")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods that mean the same when sent twice (RFC 9110), so they are retried after any failure."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
BYE_TIMEOUT = 1.0
"""Seconds the bye sent on close may take to connect, and again to be answered."""

T = TypeVar("T")


# -- events (for on_event and the log) ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Assigned:
    """The referral gave a server; ``reason``: first, renew, failover, expired or forced."""

    server_id: str
    sticky: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedOver:
    """The client stopped using ``from_server`` and will ask the referral to avoid it."""

    from_server: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Retried:
    """Attempt number ``attempt`` (2 or more) starts after ``delay`` seconds."""

    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp:
    """The call failed after ``attempts`` attempts; the exception follows."""

    attempts: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferralFailed:
    """A referral instance gave no server: it failed (cooled down), said wait, or refused."""

    referral: str
    reason: str


Event = Assigned | FailedOver | Retried | GaveUp | ReferralFailed


# -- the actions not defined in referrers ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Close:
    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    event: Event


@dataclass(frozen=True, slots=True)
class Persist:
    path: Path
    saved: store.Saved


Action = Fetch | Resolve | Read | Close | Sleep | Emit | Persist
Steps = Generator[Action, Any, T]


# -- one call ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """What the caller asked to send, the same on every attempt (bodies are bytes, not streams)."""

    method: str
    path: str
    params: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes | str | None = None
    json: Any = None
    idempotency_key: str | None = None

    @property
    def resendable(self) -> bool:
        """True when sending it twice is harmless: an idempotent method, or a deduplication key."""
        return self.method in IDEMPOTENT or self.idempotency_key is not None

    def fetch(self, grant: Grant, *, connect: float, read: float, stream: bool) -> Fetch:
        ours = {TOKEN_HEADER.lower(), IDEMPOTENCY_HEADER.lower()}
        headers = {k: v for k, v in self.headers if k.lower() not in ours}
        headers[TOKEN_HEADER] = grant.token
        if self.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = self.idempotency_key
        return Fetch(
            method=self.method,
            url=grant.server_url.rstrip("/") + self.path,
            headers=headers,
            params=self.params,
            content=self.content,
            json=self.json,
            connect=connect,
            read=read,
            stream=stream,
        )


@dataclass(slots=True)
class Tries:
    """The record of one call: attempts made, what failed, what to avoid, the deadline."""

    what: str
    started: float
    deadline: float
    count: int = 0
    notes: list[Note] = field(default_factory=list)
    avoid: list[str] = field(default_factory=list)
    wait: float = 0.0

    def lines(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.notes)

    def cause(self) -> Exception | None:
        """The last exception met, to chain to the final error."""
        return next((n.error for n in reversed(self.notes) if n.error is not None), None)

    def message(self, reason: str, now: float) -> str:
        tried = "\n  ".join(self.lines()) or "nothing could be tried"
        return (
            f"{self.what}: gave up after {self.count} attempt(s) in {now - self.started:.2f}s: "
            f"{reason}; tried:\n  {tried}"
        )


@dataclass(frozen=True, slots=True)
class Retry:
    """An attempt's result meaning "this failed, try again if the rules allow"."""

    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why an answer is not the caller's: move off the server? may the request go again?"""

    reason: str
    failover: bool
    safe: bool
    final: bool = False
    """No other attempt can help (a certificate that does not verify): stop now."""


def request_steps(session: Session, spec: Spec, *, stream: bool = False) -> Steps[httpx.Response]:
    """Send ``spec`` to the assigned server, failing over and retrying by the rules."""
    tries = _start(session, f"{spec.method} {spec.path}")
    return _loop(session, tries, lambda: _try_request(session, tries, spec, stream))


def assign_steps(session: Session) -> Steps[str]:
    """Ask the referral now (with the old token, so it stays sticky); the server id."""
    tries = _start(session, "assign")
    return _loop(session, tries, lambda: _try_assign(session, tries))


def bye_fetch(session: Session) -> Fetch | None:
    """The bye that tells the server the session ended, or None when there is no one to tell.

    Sent once when the client closes, best effort: a short timeout, no retry,
    and nothing raised when it fails (the server's count of this client decays
    anyway). None without a grant, with an expired one, or when the server
    just failed (a dead server would only make closing slow).
    """
    grant = session.grant
    if grant is None or session.clock() >= grant.expires_at or session.suspect == grant.server_id:
        return None
    return Fetch(
        method="POST",
        url=grant.server_url.rstrip("/") + BYE_PATH,
        headers={TOKEN_HEADER: grant.token},
        connect=BYE_TIMEOUT,
        read=BYE_TIMEOUT,
    )


def _start(session: Session, what: str) -> Tries:
    now = session.clock()
    return Tries(what=what, started=now, deadline=now + session.settings.deadline)


def _loop(session: Session, tries: Tries, attempt: Callable[[], Steps[T | Retry]]) -> Steps[T]:
    session.budget.record_request()
    while True:
        tries.count += 1
        result = yield from attempt()
        if not isinstance(result, Retry):
            return result
        plan = _plan(session, tries)
        if isinstance(plan, str):
            yield Emit(GaveUp(attempts=tries.count, reason=plan))
            message = tries.message(plan, session.clock())
            raise AllAttemptsFailed(message, attempts=tries.lines()) from tries.cause()
        yield Emit(Retried(attempt=tries.count + 1, delay=plan, reason=result.reason))
        if plan > 0:
            yield Sleep(plan)


def _plan(session: Session, tries: Tries) -> float | str:
    """The wait before the next attempt, or why there is none."""
    settings = session.settings
    if tries.count >= settings.max_attempts:
        return f"all {settings.max_attempts} attempts made"
    asked, tries.wait = tries.wait, 0.0
    delay = max(settings.backoff.delay(tries.count - 1, session.rng), asked)
    remaining = tries.deadline - session.clock()
    if asked and asked >= remaining:
        return f"the referral asked to wait {asked:g}s, past the deadline of {settings.deadline:g}s"
    if delay >= remaining:
        return f"the deadline of {settings.deadline:g}s would pass"
    if not session.budget.try_spend():
        budget = session.budget
        return (
            f"the retry budget is spent ({budget.retries} retries for {budget.requests} "
            f"requests in {budget.window:g}s)"
        )
    return delay


def _try_assign(session: Session, tries: Tries) -> Steps[str | Retry]:
    grant = yield from _ensure(session, tries, force=True)
    return grant.server_id if grant is not None else Retry(_last(tries))


def _try_request(
    session: Session, tries: Tries, spec: Spec, stream: bool
) -> Steps[httpx.Response | Retry]:
    grant = yield from _ensure(session, tries, force=False)
    remaining = tries.deadline - session.clock()
    if grant is None or remaining <= 0:
        return Retry(_last(tries) if grant is None else "deadline")
    settings = session.settings
    outcome = yield spec.fetch(
        grant,
        connect=min(settings.connect_timeout, remaining),
        read=min(settings.timeout, remaining),
        stream=stream,
    )
    verdict = yield from judge(outcome, spec)
    if verdict is None:
        assert isinstance(outcome, httpx.Response)
        return outcome
    error = outcome.error if isinstance(outcome, Failure) else None
    tries.notes.append(
        Note("server", f"{grant.server_id} ({grant.server_url})", verdict.reason, error)
    )
    if isinstance(outcome, httpx.Response):
        yield Close(outcome)
    if verdict.final:
        yield Emit(GaveUp(attempts=tries.count, reason=verdict.reason))
        message = tries.message(verdict.reason, session.clock())
        raise AllAttemptsFailed(message, attempts=tries.lines()) from tries.cause()
    if verdict.failover:
        session.fail(grant)
        tries.avoid = [*(a for a in tries.avoid if a != grant.server_id), grant.server_id]
        yield Emit(FailedOver(from_server=grant.server_id, reason=verdict.reason))
    if not verdict.safe:
        reason = (
            f"{spec.method} is not idempotent and has no idempotency key, and the request "
            f"may have reached server {grant.server_id}; not sent again"
        )
        yield Emit(GaveUp(attempts=tries.count, reason=reason))
        message = tries.message(reason, session.clock())
        raise NotRetried(message, attempts=tries.lines()) from tries.cause()
    return Retry(verdict.reason)


def _last(tries: Tries) -> str:
    return str(tries.notes[-1]) if tries.notes else "no server assigned"


def judge(outcome: httpx.Response | Failure, spec: Spec) -> Steps[Verdict | None]:
    """None when ``outcome`` is the caller's answer, else the verdict on it."""
    if isinstance(outcome, Failure):
        return judge_failure(outcome, spec)
    status = outcome.status_code
    if status == 421:
        return Verdict(error_text(outcome), failover=True, safe=True)
    if status == 503 and outcome.headers.get(REASSIGN_HEADER, "").strip() == "1":
        return Verdict(f"{error_text(outcome)} ({REASSIGN_HEADER})", failover=True, safe=True)
    if status == 401:
        read = yield Read(outcome)
        if isinstance(read, Failure):
            return Verdict(f"401, then {read}", failover=True, safe=spec.resendable)
        if error_body(outcome)[0] in TOKEN_ERRORS:
            return Verdict(error_text(outcome), failover=True, safe=True)
    return None


def judge_failure(failure: Failure, spec: Spec) -> Verdict:
    """A connect failure never sent the request; anything later may have reached the server."""
    error = failure.error
    if tls_verification_failed(error):
        return Verdict(f"{failure}; {TLS_HINT}", failover=False, safe=True, final=True)
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return Verdict(str(failure), failover=True, safe=True)
    if isinstance(error, httpx.PoolTimeout):  # no connection was free: our side, not the server
        return Verdict(str(failure), failover=False, safe=True)
    return Verdict(str(failure), failover=True, safe=spec.resendable)


def _ensure(session: Session, tries: Tries, *, force: bool) -> Steps[Grant | None]:
    """The grant to use now: asks the referral when there is none, it failed, or it is due."""
    grant, now = session.grant, session.clock()
    reason = _why_refer(session, force=force, now=now)
    if reason is not None:
        return (yield from _refer(session, tries, reason, hard=True))
    assert grant is not None
    if now >= grant.renew_at and now >= session.renew_not_before:
        renewed = yield from _refer(session, tries, "renew", hard=False)
        return renewed or grant
    return grant


def _why_refer(session: Session, *, force: bool, now: float) -> str | None:
    """Why the referral must be asked before sending (the reason in ``Assigned``), or None."""
    if force:
        return "forced"
    if session.grant is None:
        return "first"
    if session.suspect is not None:
        return "failover"
    return "expired" if now >= session.grant.expires_at else None


def _refer(session: Session, tries: Tries, reason: str, *, hard: bool) -> Steps[Grant | None]:
    """One referral round. A failed renewal is soft: the old token is still good for a while."""
    now, old = session.clock(), session.grant
    avoid = [*tries.avoid, *([session.suspect] if session.suspect else [])] if hard else []
    # A renewal may use half the time left, so the request itself still has the other half.
    until = tries.deadline if hard else now + (tries.deadline - now) / 2
    settings = session.settings
    result = yield from ask(
        session.referrers,
        service=settings.service,
        token=old.token if old else None,
        avoid=avoid,
        until=until,
        clock=session.clock,
        rng=session.rng,
        connect_timeout=settings.connect_timeout,
        timeout=settings.timeout,
    )
    tries.notes.extend(result.notes)
    for note in result.notes:
        yield Emit(ReferralFailed(referral=note.who, reason=note.what))
    if isinstance(result, Offered):
        grant = session.install(result.offer)
        yield Emit(Assigned(server_id=grant.server_id, sticky=grant.sticky, reason=reason))
        if session.state_file is not None:
            yield Persist(session.state_file, session.saved())
        return grant
    if not hard:
        session.renew_not_before = now + settings.cooldown
    elif result.refused is not None:
        yield Emit(GaveUp(attempts=tries.count, reason=str(result.refused)))
        raise ReferralRefused(f"{tries.what}: {result.refused}")
    elif result.wait is not None:
        tries.wait = max(tries.wait, result.wait)
    return None


def log_event(event: Event) -> None:
    """The log line for an event: one logger, ``affinity.client``, for both clients."""
    match event:
        case Assigned():
            log.info(
                "assigned server %s (sticky=%s, %s)", event.server_id, event.sticky, event.reason
            )
        case FailedOver():
            log.info("failing over from server %s: %s", event.from_server, event.reason)
        case Retried():
            log.info("attempt %d in %.3fs: %s", event.attempt, event.delay, event.reason)
        case GaveUp():
            # The error raised to the caller says the same: logging it too would say it twice.
            log.debug("gave up after %d attempt(s): %s", event.attempts, event.reason)
        case ReferralFailed():
            log.info("referral %s: %s", event.referral, event.reason)
