"""What runs around every app-server request: filters, token check, drain, ``Affinity-Server``.

Order: the token is verified first (silently, so a rate limiter can key on the
client id), then the request filters decide (403 / 429), then the token's
verdict applies (421 for another server, 401 for an invalid, expired or
missing-but-required token), then drain (503 + ``Affinity-Reassign``).
affinity's own ``/.well-known/affinity/`` endpoints skip the token check and
drain, not the filters.
"""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Any

from sanic import HTTPResponse, Request
from sanic.response import BaseHTTPResponse

from affinity.config import Config
from affinity.errors import ExpiredToken, InvalidToken, UnknownKey
from affinity.models import Claims, HealthStatus
from affinity.tokens.jws import TokenVerifier
from affinity.tokens.keyring import load_keyring
from affinity.web.http import (
    error_response,
    json_response,
    rejection_response,
    request_info,
    request_token,
)
from affinity.web.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from affinity.server.base import AppServer
    from affinity.tokens.jwks import JwksVerifier

HEALTH_CODES = {HealthStatus.PASSING: 200, HealthStatus.WARNING: 429}
_AFFINITY_PATHS = "/.well-known/affinity/"


class TokenCheck:
    """Verifies tokens with the shared key ring, or with the referral's JWKS when configured."""

    def __init__(self, config: Config) -> None:
        tokens = config.tokens
        self.jwks: JwksVerifier | None = None
        if tokens.jwks_url:
            from affinity.tokens.jwks import JwksKeySource, JwksVerifier

            source = JwksKeySource(tokens.jwks_url, verify=_ca(config))
            self.jwks = JwksVerifier(
                source, issuer=tokens.issuer, leeway=tokens.leeway, cache_size=tokens.cache_size
            )
            self.verifier: TokenVerifier | None = None
        else:
            self.verifier = TokenVerifier(
                load_keyring(config),
                issuer=tokens.issuer,
                leeway=tokens.leeway,
                cache_size=tokens.cache_size,
            )

    def verify(self, token: str) -> Claims:
        """Verify a token with the keys at hand (synchronous: the request path)."""
        if self.verifier is not None:
            return self.verifier.verify(token)
        assert self.jwks is not None
        return self.jwks.verify_nowait(token)

    async def learn_key(self, token: str) -> None:
        """With JWKS, fetch the referral's keys once (rate-limited) if the token's key is new."""
        if self.jwks is None:
            return
        with contextlib.suppress(InvalidToken):
            await self.jwks.verify(token)

    async def start(self) -> None:
        if self.jwks is not None:
            await self.jwks.start()

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()


def _ca(config: Config) -> Any:
    from affinity.web.tls import client_context

    return client_context(config.server.referral_ca)


async def learn_keys(request: Request) -> None:
    """JWKS mode only, before :func:`on_request`: an unknown ``kid`` may be a rotated key."""
    server: AppServer = request.app.ctx.affinity
    token = request_token(request)
    if token:
        try:
            server.tokens.verify(token)
        except UnknownKey:
            await server.tokens.learn_key(token)
        except InvalidToken:
            pass


def on_request(request: Request) -> HTTPResponse | None:
    """Synchronous on purpose: Sanic awaits nothing for a plain function, a cost per request."""
    server: AppServer = request.app.ctx.affinity
    request.ctx.client_id = None
    request.ctx.claims = None
    request.ctx.counted = False
    if request.path.startswith(_AFFINITY_PATHS):
        # affinity's own endpoints take no token, but the filters still apply: an
        # address the firewall refuses may not probe health, drain or read metrics.
        return _filter(server, request, None) if server.filtered else None
    token = request_token(request)
    claims, problem = _check_token(server, token)
    if server.filtered:
        refused = _filter(server, request, claims.cid if claims else None)
        if refused is not None:
            return refused
    if problem is not None:
        return problem
    if claims is not None:
        request.ctx.claims = claims
        request.ctx.client_id = claims.cid
        server.active.touch(claims.cid)
    if server.draining and server.reassigning():
        return _reassign(server)
    server.inflight += 1
    server.idle.clear()
    request.ctx.counted = True
    return None


def _filter(server: AppServer, request: Request, client_id: str | None) -> HTTPResponse | None:
    """Ask the request filters (ipfilter, ratelimit...); their refusal as an answer, or None."""
    rejection = server.manager.reject_request(
        request_info(request, "server", client_id=client_id, server_id=server.server_id)
    )
    return None if rejection is None else rejection_response(rejection)


def on_response(request: Request, response: BaseHTTPResponse) -> HTTPResponse | None:
    server: AppServer = request.app.ctx.affinity
    if getattr(request.ctx, "counted", False):
        request.ctx.counted = False
        server.inflight -= 1
        if server.inflight == 0:
            server.idle.set()
    response.headers["Affinity-Server"] = server.server_id
    return None


def _check_token(server: AppServer, token: str | None) -> tuple[Claims | None, HTTPResponse | None]:
    if not token:
        if server.config.server.require_token:
            return None, error_response(
                401, "token_required", "this server needs an affinity token from the referral"
            )
        return None, None
    try:
        claims = server.tokens.verify(token)
    except ExpiredToken:
        return None, error_response(
            401, "token_expired", "the affinity token has expired; ask the referral again"
        )
    except UnknownKey:
        return None, error_response(401, "invalid_token", "the token's key is not known here")
    except InvalidToken:
        return None, error_response(401, "invalid_token", "the affinity token is not valid")
    if claims.sid != server.server_id or claims.svc != server.service:
        return claims, error_response(
            421, "misdirected", "this token names another server; ask the referral again"
        )
    return claims, None


def _reassign(server: AppServer) -> HTTPResponse:
    spread = max(1.0, server.config.server.drain_grace)
    return error_response(
        503,
        "draining",
        "this server is draining; ask the referral for another",
        retry_after=random.uniform(1.0, spread),
        headers={"Affinity-Reassign": "1"},
    )


async def metrics(request: Request) -> HTTPResponse:
    """``GET /.well-known/affinity/metrics``: Prometheus text of this server process.

    Filter refusals by rule (from the plugins), the shared settings versions in
    force, settings refused, and the load figures. Like health it needs no token;
    the request filters still apply to it.
    """
    server: AppServer = request.app.ctx.affinity
    return HTTPResponse(server.server_metrics.exposition(), content_type=CONTENT_TYPE)


async def health(request: Request) -> HTTPResponse:
    """``GET /.well-known/affinity/health``: status, draining and load, with Consul's codes."""
    server: AppServer = request.app.ctx.affinity
    status = server.current_status()
    load = server.load()
    code = (
        429 if server.draining and status is HealthStatus.PASSING else HEALTH_CODES.get(status, 503)
    )
    body = {
        "status": status.value,
        "draining": server.draining,
        "server": server.server_id,
        "load": {
            "active_clients": load.active_clients,
            "inflight": load.inflight,
            "capacity": load.capacity,
            **load.extra,
        },
    }
    if server.status_reason:
        body["reason"] = server.status_reason
    return json_response(body, code, headers={"Cache-Control": "no-store"})
