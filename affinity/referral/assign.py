"""``GET /v1/assign`` and the redirect mount: choose a server, keep a client on it, sign a token.

A request that cannot be served raises (:class:`affinity.errors.Refused`);
:mod:`affinity.web.http` answers it.
"""

from __future__ import annotations

import urllib.parse
from time import perf_counter

from sanic import HTTPResponse, Request

from affinity.errors import ExpiredToken, InvalidRequest, InvalidToken, NoHealthyServer, NotFound
from affinity.models import Assignment, AssignRequest, Claims, Server, fast_constructor
from affinity.plugin.policy import Policy
from affinity.protocol import COOKIE, MAX_AVOID, ErrorCode
from affinity.referral.context import ReferralContext
from affinity.web.http import NO_STORE, client_ip, json_response, request_token
from affinity.web.names import is_valid_id
from affinity.web.response import Response

# One of each per assignment: the frozen dataclasses' own __init__ costs three times as much.
_assign_request = fast_constructor(AssignRequest)
_assignment = fast_constructor(Assignment)

_NO_AVOID: frozenset[str] = frozenset()

TEXT = "text/plain; charset=utf-8"
# Characters kept as they are when a path or query is copied into a Location header.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


def read_claims(ctx: ReferralContext, request: Request) -> tuple[Claims | None, str]:
    """The claims of the client's token (header, else cookie), or None and why not.

    The reason is what a re-referral of this client is counted as:
    ``new_client`` without a token, ``expired`` or ``invalid`` for a token
    that does not verify.
    """
    token = request_token(request)
    if token is None:
        return None, "new_client"
    try:
        return ctx.verifier.verify(token), ""
    except ExpiredToken:
        return None, "expired"
    except InvalidToken:
        return None, "invalid"


def refer(ctx: ReferralContext, request: Request, service: str) -> Assignment:
    """Pick the server for this client, or raise why not.

    Policies and the ``affinity_server_avoided`` hook see the client's address
    as the request filters do: from the proxy headers when a trusted proxy is
    configured, else the socket peer.
    """
    started = perf_counter()
    # No query string, nothing to parse: Sanic would still build its parameters.
    avoid = _avoid(request.args.getlist("avoid", [])) if request.query_string else _NO_AVOID
    if service not in ctx.services and service not in ctx.table.services():
        raise NotFound(f"no service named {service!r}", code=ErrorCode.UNKNOWN_SERVICE)
    claims, why = read_claims(ctx, request)
    address = client_ip(request)
    for server_id in avoid:
        if ctx.table.get(server_id) is not None:
            for source in ctx.health_sources:
                source.recheck(server_id)
            ctx.manager.server_avoided(service, server_id, address)
            ctx.metrics.avoided(service, server_id)
    if claims is None:
        client_id, previous = ctx.issuer.new_client_id(), None
    else:
        client_id, previous = claims.cid, claims.sid if claims.svc == service else None
    areq = _assign_request(
        service=service, client_id=client_id, avoid=avoid, previous=previous, client_ip=address
    )
    policy = ctx.policy_for(service)
    server, sticky = _pick(ctx, areq, policy)
    reason = None if sticky else why or _moved(ctx, areq)
    if server is None:
        ctx.metrics.referred(
            service, "", policy.name, "no_server", reason, perf_counter() - started
        )
        raise NoHealthyServer(service, retry_after=ctx.config.referral.retry_after)
    token, expires_in = ctx.issuer.issue(server.id, client_id, service)
    ctx.table.note_assigned(server.id)
    assignment = _assignment(
        request=areq, server=server, token=token, expires_in=expires_in, sticky=sticky
    )
    ctx.metrics.referred(
        service,
        server.id,
        policy.name,
        "sticky" if sticky else "referred",
        reason,
        perf_counter() - started,
    )
    if ctx.observed:
        ctx.manager.assigned(assignment)
    return assignment


def _avoid(ids: list[str]) -> frozenset[str]:
    """The ``avoid`` server ids of a query, checked."""
    if len(ids) > MAX_AVOID or not all(is_valid_id(a) for a in ids):
        raise InvalidRequest(
            f"avoid takes up to {MAX_AVOID} server ids of letters, digits, '.', '_' or '-'",
            code=ErrorCode.INVALID_AVOID,
        )
    return frozenset(ids)


def _moved(ctx: ReferralContext, areq: AssignRequest) -> str:
    """Why a client with a valid token was not kept on its server (see REREFERRAL_REASONS)."""
    if areq.previous is None:
        return "misdirected"  # the token is for another service
    current = ctx.table.get(areq.previous)
    if current is None or current.service != areq.service:
        return "gone"
    if current.draining:
        return "drain"
    if not current.keeps_clients:
        return "unhealthy"
    return "avoid"


def _pick(ctx: ReferralContext, areq: AssignRequest, policy: Policy) -> tuple[Server | None, bool]:
    """The client's own server if it may stay there, else the policy's choice.

    A client stays on a server that is passing even when it is draining, full
    or at weight 0: those stop new clients only. A draining server sends its
    clients away itself (``503`` + ``Affinity-Reassign`` after the drain
    grace), and they come back with ``avoid``, which always moves them.
    """
    if areq.previous is not None and areq.previous not in areq.avoid:
        current = ctx.table.get(areq.previous)
        if current is not None and current.service == areq.service and current.keeps_clients:
            return current, True
    return policy.choose(ctx.table.pool(areq.service), areq), False


async def assign(request: Request) -> HTTPResponse:
    """``GET /v1/assign``: JSON with the server, the token and whether it was sticky."""
    ctx: ReferralContext = request.app.ctx.affinity
    service = (
        request.args.get("service") if request.query_string else None
    ) or ctx.config.referral.default_service
    if service not in ctx.services and not is_valid_id(service):
        raise InvalidRequest(
            "service must be 1-64 letters, digits, '.', '_' or '-'", code=ErrorCode.INVALID_SERVICE
        )
    result = refer(ctx, request, service)
    body = {
        "server": {"id": result.server.id, "url": result.server.url},
        "token": result.token,
        "expires_in": result.expires_in,
        "sticky": result.sticky,
    }
    return json_response(body, headers=NO_STORE)


async def redirect(request: Request, path: str = "") -> HTTPResponse:
    """The redirect mount: 307 to the chosen server with the same path and query, token as cookie.

    The Location origin is always a registered server's URL (validated when it
    was registered); the request contributes only the percent-encoded path and
    query, appended after that origin, so it cannot change the host.
    """
    ctx: ReferralContext = request.app.ctx.affinity
    result = refer(ctx, request, ctx.config.referral.default_service)
    # The raw (still percent-encoded) path after the mount, never a decoded one.
    rest = request.path[len(ctx.config.referral.redirect_prefix.rstrip("/")) :]
    location = (
        result.server.url.rstrip("/") + "/" + urllib.parse.quote(rest.lstrip("/"), safe=_PATH_SAFE)
    )
    if request.query_string:
        location += "?" + urllib.parse.quote(request.query_string, safe=_QUERY_SAFE)
    # An explicit type: Sanic would otherwise send a literal "content-type: None".
    response = Response(status=307, headers={"Location": location, **NO_STORE}, content_type=TEXT)
    cookie_domain = ctx.config.referral.cookie_domain
    response.add_cookie(
        COOKIE,
        result.token,
        path="/",
        max_age=result.expires_in,
        secure=True,
        httponly=True,
        samesite="Lax",
        domain=cookie_domain or None,
    )
    return response
