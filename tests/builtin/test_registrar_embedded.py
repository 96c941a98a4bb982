"""Which credential an app server registers with: its registration token, else (warned) the
admin token, else a ConfigError naming the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from affinity.builtin.embedded.registrar import _credential
from affinity.config import Config, load
from affinity.errors import ConfigError

TOKEN = "s1.a-registration-token-of-32-characters-or-more"
ADMIN = "an-admin-token-of-at-least-32-characters"


def _config(tmp_path: Path, lines: str) -> Config:
    (tmp_path / "affinity.toml").write_text(f'[server]\nreferral_url = "https://r.test"\n{lines}')
    return load(tmp_path / "affinity.toml", env={})


@pytest.fixture(autouse=True)
def _no_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AFFINITY_ADMIN_TOKEN", "AFFINITY_REGISTRATION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_the_registration_token_is_used_first(tmp_path: Path) -> None:
    (tmp_path / "s1.token").write_text(TOKEN)
    (tmp_path / "admin").write_text(ADMIN)
    lines = 'registration_token_file = "s1.token"\nadmin_token_file = "admin"\n'
    assert _credential(_config(tmp_path, lines)) == TOKEN


def test_the_admin_token_is_a_warned_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "admin").write_text(ADMIN)
    with caplog.at_level(logging.WARNING, logger="affinity.server"):
        assert _credential(_config(tmp_path, 'admin_token_file = "admin"\n')) == ADMIN
    assert "registration token" in caplog.text and ADMIN not in caplog.text


def test_without_either_the_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.registration_token_file"):
        _credential(_config(tmp_path, ""))
