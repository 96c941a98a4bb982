"""Dashboard session cookies: signed, expiring, bound to the admin token, with a CSRF token."""

from __future__ import annotations

from affinity.referral.session import MAX_COOKIE, Sessions
from affinity.web.auth import BearerAuth


def test_only_the_admin_token_logs_in() -> None:
    sessions = Sessions(BearerAuth("sesame"))
    assert sessions.login("wrong") is None
    assert sessions.login("") is None
    cookie = sessions.login(" sesame\n")
    assert cookie is not None and sessions.valid(cookie)
    assert "sesame" not in cookie


def test_a_cookie_expires() -> None:
    now = [1000.0]
    sessions = Sessions(BearerAuth("sesame"), ttl=60, clock=lambda: now[0])
    cookie = sessions.login("sesame")
    now[0] += 59
    assert sessions.valid(cookie)
    now[0] += 2
    assert not sessions.valid(cookie)


def test_a_tampered_or_foreign_cookie_is_refused() -> None:
    sessions = Sessions(BearerAuth("sesame"))
    cookie = sessions.login("sesame")
    assert cookie is not None
    expires, nonce, mac = cookie.split(".")
    longer = f"{int(expires) + 10**6}.{nonce}.{mac}"
    assert not sessions.valid(longer)
    assert not sessions.valid(f"{expires}.{nonce}.{mac[:-1]}0" if mac[-1] != "0" else longer)
    assert not Sessions(BearerAuth("other")).valid(cookie)  # a new admin token ends every session
    for junk in (None, "", "x", "1.2", "a.b.c", "9" * (MAX_COOKIE + 1)):
        assert not sessions.valid(junk)


def test_the_csrf_token_belongs_to_its_session() -> None:
    sessions = Sessions(BearerAuth("sesame"))
    one, two = sessions.login("sesame"), sessions.login("sesame")
    assert one is not None and two is not None and one != two
    assert sessions.csrf_ok(one, sessions.csrf(one))
    assert not sessions.csrf_ok(one, sessions.csrf(two))
    assert not sessions.csrf_ok(one, None)
    assert not sessions.csrf_ok("forged", sessions.csrf("forged"))


def test_without_an_admin_token_nobody_logs_in() -> None:
    sessions = Sessions(BearerAuth(None))
    assert sessions.closed
    assert sessions.login("") is None and sessions.login("anything") is None
    assert not sessions.valid("1.2.3")
