from __future__ import annotations

from pathlib import Path

import pytest

from affinity.config import Listen, load
from affinity.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "affinity.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load(None, env={})
    assert config.referral.listen == Listen(host="127.0.0.1", port=8400)
    assert config.health.fall == 2
    assert config.registry.backend == "embedded"


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[referral]
listen = "[::1]:9000"
tls_cert = "certs/cert.pem"
[services.web]
policy = "consistent"
servers = [{id = "s1", url = "https://s1.example.test:8443", weight = 3}]
[plugins.ratelimit]
rate = 5
""",
    )
    config = load(path, env={})
    assert config.referral.listen == Listen(host="::1", port=9000)
    assert config.referral.tls_cert == tmp_path / "certs" / "cert.pem"
    assert config.services["web"].policy == "consistent"
    assert config.services["web"].servers[0].weight == 3
    assert config.plugins["ratelimit"] == {"rate": 5}  # converted by the plugin's declaration


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nid = "s1"\ncapacity = 10\n')
    config = load(
        path,
        env={
            "AFFINITY_SERVER_ID": "s9",
            "AFFINITY_SERVER_CAPACITY": "20",
            "AFFINITY_SERVER_REQUIRE_TOKEN": "true",
        },
    )
    assert config.server.id == "s9"
    assert config.server.capacity == 20
    assert config.server.require_token is True


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[referral]\nlisten = 'nowhere'\n", "referral.listen"),
        ("[referral]\nlisten = '127.0.0.1:99999'\n", "referral.listen"),
        ("[referral]\nlisen = '127.0.0.1:1'\n", "referral.lisen"),
        ("[health]\ninterval = 'fast'\n", "health.interval"),
        ("[health]\nfall = -1\n", "health.fall"),
        ("[server]\nrequire_token = 'yes'\n", "server.require_token"),
        ("[bogus]\n", "bogus"),
        ("[services.web]\nservers = [{url = 'https://a'}]\n", "services.web.servers[0].id"),
        ("[services.web]\nservers = 'x'\n", "services.web.servers"),
        ("[plugins]\nratelimit = 3\n", "plugins.ratelimit"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.key == key
    assert str(path) in str(info.value)
    assert key in str(info.value)


@pytest.mark.parametrize("line", ["ttl = 0", "jitter = 1.0", "leeway = -1.0"])
def test_token_lifetimes_are_checked_when_loaded(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, f"[tokens]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value).startswith(f"{path}: tokens")
    assert line.split()[0] in str(info.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["jwks_min_refresh_interval = 0.5"],
            "jwks_min_refresh_interval must be at least 1 second, got 0.5",
        ),
        (
            ["jwks_min_refresh_interval = 60.0", "jwks_refresh_interval = 30.0"],
            "jwks_refresh_interval must be at least jwks_min_refresh_interval (60.0), got 30.0",
        ),
    ],
)
def test_a_jwks_pacing_that_would_fetch_too_often_is_refused(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    """Every token of a made-up key could otherwise send the referral a fetch."""
    path = write(tmp_path, "[tokens]\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert (info.value.key, info.value.source, info.value.message) == ("tokens", str(path), message)


def test_the_jwks_pacing_has_safe_defaults_and_can_be_set(tmp_path: Path) -> None:
    tokens = load(write(tmp_path, ""), env={}).tokens
    assert (tokens.jwks_min_refresh_interval, tokens.jwks_refresh_interval) == (30.0, 300.0)
    text = "[tokens]\njwks_min_refresh_interval = 1\njwks_refresh_interval = 1\n"
    tokens = load(write(tmp_path, text), env={}).tokens
    assert (tokens.jwks_min_refresh_interval, tokens.jwks_refresh_interval) == (1.0, 1.0)


def test_environment_errors_name_the_key_and_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match="health.rise") as info:
        load(path, env={"AFFINITY_HEALTH_RISE": "many"})
    assert info.value.source == "environment variable AFFINITY_HEALTH_RISE"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[referral\n"), env={})
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.toml", env={})


def test_secrets_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret" * 6 + "\n")
    config = load(write(tmp_path, f"[referral]\nadmin_token_file = '{secret}'\n"), env={})
    monkeypatch.delenv("AFFINITY_ADMIN_TOKEN", raising=False)
    key = "referral.admin_token_file"
    assert (
        config.read_secret(config.referral.admin_token_file, "AFFINITY_ADMIN_TOKEN", key)
        == "s3cret" * 6
    )
    monkeypatch.setenv("AFFINITY_ADMIN_TOKEN", "from-env" * 4)
    assert (
        config.read_secret(config.referral.admin_token_file, "AFFINITY_ADMIN_TOKEN", key)
        == "from-env" * 4
    )
    monkeypatch.delenv("AFFINITY_ADMIN_TOKEN")
    secret.unlink()
    with pytest.raises(ConfigError, match=key):
        config.read_secret(config.referral.admin_token_file, "AFFINITY_ADMIN_TOKEN", key)


def test_environment_overrides_a_service_key(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[services.web]\npolicy = "round_robin"\n')
    config = load(path, env={"AFFINITY_SERVICES_WEB_POLICY": "random"})
    assert config.services["web"].policy == "random"
    assert (
        config.source_of("services.web.policy")
        == "environment variable AFFINITY_SERVICES_WEB_POLICY"
    )
    assert config.source_of("services.web.servers") == str(path)


def test_a_bad_policy_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    from affinity.plugin.manager import PluginManager

    path = tmp_path / "a.toml"
    path.write_text('[services.web]\npolicy = "round_robin"\n')
    config = load(path, env={"AFFINITY_SERVICES_WEB_POLICY": "bogus"})
    with pytest.raises(ConfigError) as caught:
        PluginManager().make_policy("web", config)
    assert str(caught.value).startswith(
        "environment variable AFFINITY_SERVICES_WEB_POLICY: services.web.policy: unknown policy"
    )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("request_timeout = 0", "request_timeout"),
        ("handshake_timeout = 0", "handshake_timeout"),
        ("keep_alive_timeout = 0", "keep_alive_timeout"),
        ("max_body_size = 1000", "max_body_size"),
    ],
)
@pytest.mark.parametrize("section", ["referral", "server"])
def test_connection_limits_are_checked(tmp_path: Path, section: str, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        load(write(tmp_path, f"[{section}]\n{line}\n"), env={})
    assert section in str(info.value)


@pytest.mark.parametrize(
    "line",
    ["load_half_life = 0", "load_half_life = -1.0", "active_window = 0", "active_max = 0"],
)
def test_load_signal_settings_are_checked(tmp_path: Path, line: str) -> None:
    key = line.split(" ")[0]
    with pytest.raises(ConfigError, match=key) as info:
        load(write(tmp_path, f"[server]\n{line}\n"), env={})
    assert "server" in str(info.value)


def test_the_load_half_life_defaults_to_twenty_seconds(tmp_path: Path) -> None:
    assert load(write(tmp_path, "[server]\n"), env={}).server.load_half_life == 20.0
