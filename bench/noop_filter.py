"""A request filter that admits everything: the cost of the filter hook itself."""

from __future__ import annotations

from affinity import hookimpl
from affinity.models import Rejection, RequestInfo


@hookimpl
def affinity_reject_request(request: RequestInfo) -> Rejection | None:
    """Admit every request."""
    return None
