"""Names of the wire protocol, version 1: headers, cookie, paths, error codes and limits.

The referral, the app servers and the client library all take them from here,
so the three cannot drift apart. This module imports nothing of affinity; the
protocol itself is described in docs/design.md.
"""

from __future__ import annotations

from enum import StrEnum

TOKEN_HEADER = "Affinity-Token"
"""The request header carrying the affinity token."""
COOKIE = "affinity"
"""The cookie carrying the affinity token (redirect mode, browsers)."""
SERVER_HEADER = "Affinity-Server"
"""The answer header naming the app server that answered."""
REASSIGN_HEADER = "Affinity-Reassign"
"""``1`` on a ``503`` of a draining server: ask the referral for another server."""

ASSIGN_PATH = "/v1/assign"
JWKS_PATH = "/.well-known/jwks.json"
WELL_KNOWN = "/.well-known/affinity/"
"""An app server's own endpoints: no token check, no drain; the request filters still apply."""
HEALTH_PATH = WELL_KNOWN + "health"
METRICS_PATH = WELL_KNOWN + "metrics"
DRAIN_PATH = WELL_KNOWN + "drain"
RESUME_PATH = WELL_KNOWN + "resume"
BYE_PATH = WELL_KNOWN + "bye"
"""``POST`` with the session's token: the client ended its session (``204``; idempotent)."""

MAX_AVOID = 16
"""Most server ids one ``/v1/assign`` may name in ``avoid``; a client sends its latest ones."""


class ErrorCode(StrEnum):
    """The ``error`` of an error answer ``{"error": code, "detail": sentence}``."""

    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    INTERNAL_ERROR = "internal_error"
    # the app servers
    TOKEN_REQUIRED = "token_required"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    MISDIRECTED = "misdirected"
    DRAINING = "draining"
    # the referral
    NO_HEALTHY_SERVER = "no_healthy_server"
    INVALID_SERVICE = "invalid_service"
    UNKNOWN_SERVICE = "unknown_service"
    INVALID_AVOID = "invalid_avoid"
    # the admin APIs
    UNAUTHORIZED = "unauthorized"
    ADMIN_CLOSED = "admin_closed"
    UNKNOWN_SERVER = "unknown_server"
    INVALID_SERVER = "invalid_server"
    UNKNOWN_SETTINGS = "unknown_settings"
    INVALID_SETTINGS = "invalid_settings"
    INVALID_JSON = "invalid_json"
    INVALID_QUERY = "invalid_query"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    # the dashboard
    FORBIDDEN = "forbidden"
    PAYLOAD_TOO_LARGE = "payload_too_large"


TOKEN_ERRORS = frozenset({ErrorCode.TOKEN_EXPIRED, ErrorCode.INVALID_TOKEN})
"""``401`` codes meaning "this token will not do": ask the referral for a new one."""
