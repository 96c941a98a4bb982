"""The IETF ``RateLimit`` header fields on a 429, in the shape the configured draft uses.

``draft-08`` (the default; the shape of draft-ietf-httpapi-ratelimit-headers
-08 through -11, Structured Fields)::

    RateLimit-Policy: "default";q=10;w=1
    RateLimit: "default";r=0;t=1

``draft-07`` / ``draft-06`` (the three separate fields that drafts up to -06
defined and that most clients in the wild read; ``draft-07`` is accepted as a
name for this form too)::

    RateLimit-Limit: 10
    RateLimit-Remaining: 0
    RateLimit-Reset: 1

``none`` sends no such field. ``Retry-After`` is not set here: the core writes
it from :attr:`affinity.models.Rejection.retry_after` on every 429.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

HeaderMode = Literal["draft-08", "draft-07", "draft-06", "none"]
MODES: tuple[str, ...] = typing.get_args(HeaderMode)


def quota_window(rate: float, burst: int) -> tuple[int, int]:
    """The ``(q, w)`` pair that describes a GCRA limit as "q requests per w seconds".

    ``w`` must be whole seconds. It is the time the burst takes to refill
    (``burst / rate``) rounded up to at least 1, and ``q`` the burst, raised to
    ``rate * w`` when that is larger, so that ``q / w`` is the sustained rate
    (or just under it) and ``q`` never understates the burst. With ``rate = 1``
    and ``burst = 10`` that is ``q=10;w=10``; with ``rate = 50`` and
    ``burst = 10`` it is ``q=50;w=1``.
    """
    window = max(1, math.ceil(burst / rate - 1e-9))
    return max(burst, math.floor(rate * window + 1e-9)), window


def render(
    mode: str, *, name: str, quota: int, window: int, remaining: int, reset: int
) -> Mapping[str, str]:
    """The header fields for one answer.

    :param mode: One of :data:`MODES`.
    :param name: The limit's name (checked at configuration to be a safe token).
    :param quota: ``q`` from :func:`quota_window`.
    :param window: ``w`` from :func:`quota_window`.
    :param remaining: Requests that would still be admitted now.
    :param reset: Whole seconds until the full burst is available again.
    """
    if mode == "draft-08":
        return MappingProxyType(
            {
                "RateLimit-Policy": f'"{name}";q={quota};w={window}',
                "RateLimit": f'"{name}";r={remaining};t={reset}',
            }
        )
    if mode in ("draft-07", "draft-06"):
        return MappingProxyType(
            {
                "RateLimit-Limit": str(quota),
                "RateLimit-Remaining": str(remaining),
                "RateLimit-Reset": str(reset),
            }
        )
    return MappingProxyType({})
