"""The admin bearer-token check shared by the referral's admin API and the app servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import affinity.web.auth as auth_module
from affinity.config import load
from affinity.errors import AdminClosed, Unauthorized
from affinity.web.auth import BearerAuth, RegistrationAuth, registration_token

TOKEN = "s3cret-admin-token-of-32-characters"
FROM_ENV = "from-the-environment-32-characters"


@pytest.mark.parametrize("token", [None, ""])
@pytest.mark.parametrize("header", [None, "Bearer ", f"Bearer {TOKEN}"])
def test_without_an_admin_token_the_api_is_closed(token: str | None, header: str | None) -> None:
    auth = BearerAuth(token, where="referral.admin_token_file or AFFINITY_ADMIN_TOKEN")
    assert not auth.configured
    with pytest.raises(AdminClosed, match="no admin token is configured") as info:
        auth.check(header)
    assert "referral.admin_token_file" in str(info.value)


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"],
)
def test_a_missing_or_wrong_token_is_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized, match="Authorization: Bearer"):
        BearerAuth(TOKEN).check(header)


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
def test_the_right_token_passes(header: str) -> None:
    BearerAuth(TOKEN).check(header)


def test_the_token_is_read_once_when_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AFFINITY_ADMIN_TOKEN", raising=False)
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    (tmp_path / "affinity.toml").write_text('[server]\nadmin_token_file = "admin-token"\n')
    auth = BearerAuth.from_config(load(tmp_path / "affinity.toml", env={}), "server")
    (tmp_path / "admin-token").write_text("another")
    auth.check(f"Bearer {TOKEN}")
    with pytest.raises(Unauthorized):
        auth.check("Bearer another")


def test_the_environment_variable_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "admin-token").write_text(TOKEN)
    (tmp_path / "affinity.toml").write_text('[referral]\nadmin_token_file = "admin-token"\n')
    monkeypatch.setenv("AFFINITY_ADMIN_TOKEN", FROM_ENV)
    auth = BearerAuth.from_config(load(tmp_path / "affinity.toml", env={}), "referral")
    auth.check(f"Bearer {FROM_ENV}")
    with pytest.raises(Unauthorized):
        auth.check(f"Bearer {TOKEN}")


def test_the_source_compares_the_token_with_compare_digest_only() -> None:
    """A reading of the source, not a timing: ``hmac.compare_digest`` is used, and no
    ``==``, ``!=``, ``in`` or ordering comparison touches the token or its expected value."""
    source = Path(auth_module.__file__).read_text()
    assert "hmac.compare_digest" in source
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and not all(
            isinstance(op, ast.Is | ast.IsNot) for op in node.ops
        ):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert not names & {"token", "expected", "given", "same"}, ast.unparse(node)


SECRET = "a-registration-secret-of-32-chars-or-more"


def test_a_registration_token_names_its_server_and_nothing_else() -> None:
    auth = RegistrationAuth(SECRET)
    token = registration_token(SECRET, "s1")
    assert token.startswith("s1.") and token != registration_token(SECRET, "s2")
    assert auth.server_of(f"Bearer {token}") == "s1"
    assert auth.server_of(f"bearer  {token} ") == "s1"
    forged = [
        None,
        "",
        "Bearer",
        token,
        f"Basic {token}",
        f"Bearer {token}x",
        f"Bearer s2.{token.split('.', 1)[1]}",
        f"Bearer {registration_token('another-secret-of-32-characters!!', 's1')}",
        "Bearer .",
    ]
    for header in forged:
        assert auth.server_of(header) is None, header
    assert RegistrationAuth(None).server_of(f"Bearer {token}") is None
