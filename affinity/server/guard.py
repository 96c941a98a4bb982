"""What runs around every app-server request: filters, token check, drain, ``Affinity-Server``.

Order: the token is verified first (silently, so a rate limiter can key on the
client id), then the request filters decide (403 / 429), then the token's
verdict applies (421 for another server, 401 for an invalid, expired or
missing-but-required token), then drain (503 + ``Affinity-Reassign``).
affinity's own ``/.well-known/affinity/`` endpoints skip the token check and
drain, not the filters; the bye among them checks its token itself
(:func:`end_session`). Refusals are answered as :data:`affinity.web.http.ANSWERS`
says; the guard changes only the :class:`ServerState`. It runs as a wrapper
around every route handler (:func:`guard_routes`), and in the error handler for
requests no handler took (:func:`error_answer`); both count the answer in the
server's metrics (route, method, status and time taken).

Everything here runs for every request, so what does not change between
requests is looked up once per route (:func:`guarded`), and the steps are
written out rather than split into calls where a call was a measured share
(``bench/bench_instructions.py``).
"""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any

from multidict import istr
from sanic import HTTPResponse, Request, Sanic

from affinity.errors import (
    Draining,
    ExpiredToken,
    InvalidToken,
    Misdirected,
    Refused,
    TokenRequired,
    UnknownKey,
)
from affinity.models import Claims
from affinity.protocol import SERVER_HEADER, WELL_KNOWN
from affinity.server.state import CLOCK, ServerState
from affinity.web.http import (
    exception_response,
    refusal_response,
    rejection_response,
    request_info,
    request_token,
)

_SERVER = istr(SERVER_HEADER)
"""The ``Affinity-Server`` header's name as set on every answer: multidict folds the case of
a plain ``str`` name each time it is set."""

UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404)."""


async def learn_keys(request: Request) -> None:
    """JWKS mode only, before :func:`admit`: an unknown ``kid`` may be a rotated key."""
    state: ServerState = request.app.ctx.affinity
    token = request_token(request)
    if token:
        try:
            state.tokens.verify(token)
        except UnknownKey:
            await state.tokens.learn_key(token)
        except InvalidToken:
            pass


def guard_routes(app: Sanic[Any, Any]) -> None:
    """Put every route of ``app`` behind the guard; routes already behind it stay as they are.

    A wrapper around each handler instead of request and response middleware:
    Sanic runs middleware through an awaited loop of its own on every request,
    which cost more than the checks themselves (bench/RESULTS.md). Requests
    that reach no handler (404, 405, a body too large...) are guarded by
    :func:`error_answer` instead, so nothing bypasses the filters.
    """
    state: ServerState = app.ctx.affinity
    for route in app.router.routes:
        if not getattr(route.handler, "__affinity_guarded__", False):
            route.handler = guarded(state, route.handler, route=_label(route.raw_path))


def _label(raw_path: str) -> str:
    """A route's label in the metrics: its path as written, with the leading slash."""
    return "/" + raw_path.lstrip("/")


def _is_own(path: str) -> bool:
    """affinity's own endpoints take no token and are not drained; the filters still apply."""
    return path.startswith(WELL_KNOWN)


def guarded(state: ServerState, handler: Callable[..., Any], *, route: str) -> Callable[..., Any]:
    """``handler`` of ``route`` behind the guard: filters, token, drain, in-flight count,
    ``Affinity-Server``, and the answer counted in the metrics.

    Everything that does not change between requests (the checks that apply,
    the header's value, the clock) is looked up here, once per route.
    """
    call = _awaiting(handler)
    server_id = state.server.id
    own = _is_own(route)
    check = admit_own if own else admit
    learn = not own and state.tokens.jwks is not None
    answered = state.metrics.answering(route)
    clock = CLOCK

    async def guarded_handler(request: Request, *args: Any, **kwargs: Any) -> Any:
        started = clock()
        if learn:
            await learn_keys(request)
        refused = check(state, request, started)
        if refused is not None:
            refused.headers[_SERVER] = server_id
            answered(request.method, refused.status, clock() - started)
            return refused
        try:
            response = await call(request, *args, **kwargs)
        except BaseException:
            request.ctx.started = started  # error_answer counts the answer it makes
            raise
        finally:
            if not own:  # release(state), written out: a call per request saved
                state.inflight -= 1
                if not state.inflight and state.draining:
                    state.idle.set()
        if response is not None:
            response.headers[_SERVER] = server_id
            status = response.status
            if not own:
                try:
                    body = response.body
                except AttributeError:  # a ResponseStream: its length is not known
                    body = None
                if body:
                    state.sent_bytes += len(body)
        else:  # streamed with request.respond() (the header is the handler's to set), a
            # WebSocket session that ended, or no answer at all
            http = request.stream
            streamed = getattr(http, "response", None)
            if streamed is not None:
                status = streamed.status
            elif getattr(http, "upgrade_websocket", False):
                status = 101
            else:  # Sanic answers 500 "no response", which error_answer counts
                request.ctx.started = started
                return None
        answered(request.method, status, clock() - started)
        return response

    functools.update_wrapper(guarded_handler, handler)  # keeps is_stream / is_websocket marks
    guarded_handler.__affinity_guarded__ = True  # type: ignore[attr-defined]
    return guarded_handler


def _awaiting(handler: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``handler`` as a coroutine function (Sanic also accepts plain functions)."""
    if inspect.iscoroutinefunction(handler):
        return handler

    async def call(request: Request, *args: Any, **kwargs: Any) -> Any:
        response = handler(request, *args, **kwargs)
        return await response if inspect.isawaitable(response) else response

    return call


def admit_own(state: ServerState, request: Request, now: float) -> HTTPResponse | None:
    """affinity's own endpoints: only the filters (an address the firewall refuses may not
    probe health, drain or read metrics)."""
    ctx = request.ctx
    ctx.client_id = None
    ctx.claims = None
    return _filter(state, request, None) if state.filtered else None


def admit(state: ServerState, request: Request, now: float) -> HTTPResponse | None:
    """Let a request in (counted in flight until :func:`release`), or the answer refusing it.

    ``now`` is the request's start on :data:`~affinity.server.state.CLOCK`.

    Synchronous on purpose: nothing here waits. Written out in one function:
    it runs for every request, and each call it saves is a measurable share.
    """
    ctx = request.ctx
    ctx.client_id = None
    ctx.claims = None
    server = state.server
    token = request_token(request)
    claims: Claims | None = None
    problem: Refused | InvalidToken | None = None
    if token:
        try:
            claims = state.tokens.verify(token)
        except InvalidToken as exc:
            problem = exc
        else:
            if claims.sid != server.id or claims.svc != server.service:
                problem = Misdirected("this token names another server; ask the referral again")
    elif state.require_token:
        problem = TokenRequired("this server needs an affinity token from the referral")
    if state.filtered:
        rejection = state.manager.reject_request(
            request_info(
                request, "server", client_id=claims.cid if claims else None, server_id=server.id
            )
        )
        if rejection is not None:
            return rejection_response(rejection)
    if problem is not None:
        state.metrics.token_rejected(_reason(problem))
        return refusal_response(problem)
    if claims is not None:
        ctx.claims = claims
        ctx.client_id = claims.cid
        state.active.touch(claims.cid, now)
    if state.draining and state.reassigning():
        return refusal_response(_reassign(state))
    state.inflight += 1
    state.requests += 1
    return None


def release(state: ServerState) -> None:
    """A request :func:`admit` let in is answered; during a drain the last one out says so."""
    state.inflight -= 1
    if not state.inflight and state.draining:
        state.idle.set()


def _filter(state: ServerState, request: Request, client_id: str | None) -> HTTPResponse | None:
    """Ask the request filters (ipfilter, ratelimit...); their refusal as an answer, or None."""
    rejection = state.manager.reject_request(
        request_info(request, "server", client_id=client_id, server_id=state.server.id)
    )
    return None if rejection is None else rejection_response(rejection)


async def error_answer(request: Request, exc: Exception) -> HTTPResponse:
    """The app server's error handler: the guard first for a request no route took, then the error.

    A request that reached no handler (unknown path, wrong method, a body too
    large...) passes the same filters and token check as any other, so a 404
    costs a flood as much as a 200 does. Every answer made here is counted,
    under its route, or ``unmatched`` when no route matched.
    """
    state: ServerState = request.app.ctx.affinity
    route = UNMATCHED if request.route is None else _label(request.route.raw_path)
    response: HTTPResponse | None = None
    started: float | None = getattr(request.ctx, "started", None)
    if not hasattr(request.ctx, "client_id"):  # set by admit / admit_own: not guarded yet
        started = CLOCK()
        own = _is_own(request.path)
        if not own and state.tokens.jwks is not None:
            await learn_keys(request)
        try:
            response = admit_own(state, request, started) if own else admit(state, request, started)
        except Exception as failed:  # a request filter failed: a 500 like a failing handler's
            exc = failed
        else:
            if response is None and not own:
                release(state)  # answered at once, below
    if response is None:
        response = exception_response(request, exc)
    response.headers[_SERVER] = state.server.id
    state.metrics.answered(
        route,
        request.method,
        response.status,
        None if started is None else CLOCK() - started,
    )
    return response


def end_session(state: ServerState, request: Request) -> HTTPResponse:
    """``POST /.well-known/affinity/bye``: the client whose token this is ended its session.

    The token is checked as on any request: none is ``401 token_required``, an
    invalid or expired one ``401``, another server's ``421``, and nothing
    changes. A good one drops its client from the load count at once (``204``,
    also when it was not counted: a bye is idempotent). Neither the body nor
    the drain matters, and nothing is stored, so a flood of byes costs one
    token check each and leaves no state behind.
    """
    server = state.server
    token = request_token(request)
    problem: Refused | InvalidToken
    if token:
        try:
            claims = state.tokens.verify(token)
        except InvalidToken as exc:
            problem = exc
        else:
            if claims.sid == server.id and claims.svc == server.service:
                state.active.bye(claims.cid)
                return HTTPResponse(status=204)
            problem = Misdirected("this token names another server; say bye to that one")
    else:
        problem = TokenRequired("a bye needs the affinity token of the session it ends")
    state.metrics.token_rejected(_reason(problem))
    return refusal_response(problem)


def _reason(problem: Refused | InvalidToken) -> str:
    """The ``reason`` label of ``affinity_app_token_rejections_total`` for a token's problem."""
    if isinstance(problem, TokenRequired):
        return "required"
    if isinstance(problem, Misdirected):
        return "misdirected"
    return "expired" if isinstance(problem, ExpiredToken) else "invalid"


def _reassign(state: ServerState) -> Draining:
    spread = max(1.0, state.config.server.drain_grace)
    return Draining(
        "this server is draining; ask the referral for another",
        retry_after=random.uniform(1.0, spread),
    )
