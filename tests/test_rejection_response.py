"""A filter's refusal reaches the client as the filter wrote it: status, headers, JSON body."""

from __future__ import annotations

import orjson
import pytest
from affinity_ratelimit.headers import MODES, render

from affinity.models import Rejection
from affinity.web.http import rejection_response


@pytest.mark.parametrize("mode", MODES)
def test_rate_limit_headers_pass_through_intact(mode: str) -> None:
    headers = render(mode, name="assign", quota=20, window=1, remaining=0, reset=2)
    rejection = Rejection(
        status=429,
        error="rate_limited",
        detail="too many requests under limit 'assign'; retry in 2 s",
        retry_after=1.2,
        headers=headers,
        rule="ratelimit.assign",
    )
    response = rejection_response(rejection)
    assert response.status == 429
    for name, value in headers.items():
        assert response.headers[name] == value
    assert response.headers["retry-after"] == "2"  # whole seconds, rounded up
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content_type == "application/json"
    assert orjson.loads(response.body or b"") == {
        "error": "rate_limited",
        "detail": "too many requests under limit 'assign'; retry in 2 s",
    }


def test_a_denial_is_403_json_without_retry_after() -> None:
    rejection = Rejection(
        status=403, error="forbidden", detail="address 192.0.2.9 is not allowed", rule="x"
    )
    response = rejection_response(rejection)
    assert response.status == 403
    assert "retry-after" not in response.headers
    assert orjson.loads(response.body or b"") == {
        "error": "forbidden",
        "detail": "address 192.0.2.9 is not allowed",
    }
