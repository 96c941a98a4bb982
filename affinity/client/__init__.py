"""The client library: ask the referral once, talk to the assigned server, fail over.

``Client`` (sync) and ``AsyncClient`` (async) have an httpx-like surface
(``get``, ``post``, ``request``, ``stream``, context managers) and one set of
failover rules, :mod:`affinity.client.rules`, that both drive::

    with affinity.Client("https://referral.example.com", service="api") as client:
        items = client.get("/items").json()

* the referral instances (a list, or a name with several addresses) are
  tried in random order, and one that fails is tried last for a cool-down;
* the token is sent as ``Affinity-Token`` and renewed through the referral,
  with the old token so the client stays on its server, at 80 % of its life;
* a failure to get an answer, ``421``, ``503`` + ``Affinity-Reassign`` or a
  ``401`` for an expired or invalid token makes the client ask again with
  ``avoid=<server>`` and the old token; the request is sent again only when
  that is safe: the server did not act on it (those answers, or a connect
  failure), or the method is idempotent, or it carries an ``idempotency_key``;
* retries wait a full-jitter back-off, need the retry budget, and stop at the
  call's deadline, with :class:`~affinity.errors.AllAttemptsFailed` listing
  everything tried.

Events (:class:`Assigned`, :class:`FailedOver`, :class:`Retried`,
:class:`GaveUp`, :class:`ReferralFailed`) go to ``on_event`` and to the
``affinity.client`` logger.
"""

from __future__ import annotations

from affinity.client.aio import AsyncClient
from affinity.client.rules import (
    IDEMPOTENT,
    Assigned,
    Event,
    FailedOver,
    GaveUp,
    ReferralFailed,
    Retried,
)
from affinity.client.sync import Client, ClientOptions, RequestOptions
from affinity.errors import AllAttemptsFailed, ClientError, NotRetried, ReferralRefused

__all__ = [
    "IDEMPOTENT",
    "AllAttemptsFailed",
    "Assigned",
    "AsyncClient",
    "Client",
    "ClientError",
    "ClientOptions",
    "Event",
    "FailedOver",
    "GaveUp",
    "NotRetried",
    "ReferralFailed",
    "ReferralRefused",
    "RequestOptions",
    "Retried",
]
