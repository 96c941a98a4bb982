"""What runs around every app-server request: filters, token check, drain, ``Affinity-Server``.

Order: the token is verified first (silently, so a rate limiter can key on the
client id), then the request filters decide (403 / 429), then the token's
verdict applies (421 for another server, 401 for an invalid, expired or
missing-but-required token), then drain (503 + ``Affinity-Reassign``).
affinity's own ``/.well-known/affinity/`` endpoints skip the token check and
drain, not the filters. Refusals are answered as :data:`affinity.web.http.ANSWERS`
says; the guard changes only the :class:`ServerState`.
"""

from __future__ import annotations

import random
import time

from sanic import HTTPResponse, Request
from sanic.response import BaseHTTPResponse

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
from affinity.server.state import ServerState
from affinity.web.http import refusal_response, rejection_response, request_info, request_token

UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404)."""


async def learn_keys(request: Request) -> None:
    """JWKS mode only, before :func:`on_request`: an unknown ``kid`` may be a rotated key."""
    state: ServerState = request.app.ctx.affinity
    token = request_token(request)
    if token:
        try:
            state.tokens.verify(token)
        except UnknownKey:
            await state.tokens.learn_key(token)
        except InvalidToken:
            pass


def on_request(request: Request) -> HTTPResponse | None:
    """Synchronous on purpose: Sanic awaits nothing for a plain function, a cost per request."""
    state: ServerState = request.app.ctx.affinity
    request.ctx.started = time.perf_counter()
    request.ctx.client_id = None
    request.ctx.claims = None
    request.ctx.counted = False
    if request.path.startswith(WELL_KNOWN):
        # affinity's own endpoints take no token, but the filters still apply: an
        # address the firewall refuses may not probe health, drain or read metrics.
        return _filter(state, request, None) if state.filtered else None
    token = request_token(request)
    claims, problem = _check_token(state, token)
    if state.filtered:
        refused = _filter(state, request, claims.cid if claims else None)
        if refused is not None:
            return refused
    if problem is not None:
        state.metrics.token_rejected(_reason(problem))
        return refusal_response(problem)
    if claims is not None:
        request.ctx.claims = claims
        request.ctx.client_id = claims.cid
        state.active.touch(claims.cid)
    if state.draining and state.reassigning():
        return refusal_response(_reassign(state))
    state.inflight += 1
    state.idle.clear()
    request.ctx.counted = True
    return None


def _filter(state: ServerState, request: Request, client_id: str | None) -> HTTPResponse | None:
    """Ask the request filters (ipfilter, ratelimit...); their refusal as an answer, or None."""
    rejection = state.manager.reject_request(
        request_info(request, "server", client_id=client_id, server_id=state.server.id)
    )
    return None if rejection is None else rejection_response(rejection)


def on_response(request: Request, response: BaseHTTPResponse) -> HTTPResponse | None:
    state: ServerState = request.app.ctx.affinity
    if getattr(request.ctx, "counted", False):
        request.ctx.counted = False
        state.inflight -= 1
        if state.inflight == 0:
            state.idle.set()
    response.headers[SERVER_HEADER] = state.server.id
    started = getattr(request.ctx, "started", None)
    route = request.route
    state.metrics.answered(
        "/" + route.raw_path.lstrip("/") if route is not None else UNMATCHED,
        request.method,
        response.status,
        None if started is None else time.perf_counter() - started,
    )
    return None


def _check_token(
    state: ServerState, token: str | None
) -> tuple[Claims | None, Refused | InvalidToken | None]:
    """The token's claims and what is wrong with it (None: nothing), not yet answered."""
    if not token:
        if state.config.server.require_token:
            return None, TokenRequired("this server needs an affinity token from the referral")
        return None, None
    try:
        claims = state.tokens.verify(token)
    except InvalidToken as exc:
        return None, exc
    server = state.server
    if claims.sid != server.id or claims.svc != server.service:
        return claims, Misdirected("this token names another server; ask the referral again")
    return claims, None


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
