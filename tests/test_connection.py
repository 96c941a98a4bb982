"""The app's Sanic config: settings read on every request are plain attributes, kept current.

Sanic reads ``config.KEEP_ALIVE`` for every request head and
``config.REQUEST_BUFFER_SIZE`` for every chunk received; on Sanic's own
``Config`` each read fails an attribute lookup first. These tests fail if
a way of changing a setting (as Sanic 25.12 has them) no longer reaches
the attribute, or if the attribute is no longer a plain one.
"""

from __future__ import annotations

from typing import Any

import pytest
from sanic import Sanic

from affinity.web.connection import AppConfig


@pytest.fixture
def config() -> AppConfig:
    app: Sanic[AppConfig, Any] = Sanic("test-connection-config", config=AppConfig())
    try:
        return app.config
    finally:
        Sanic.unregister_app(app)


def test_the_settings_read_per_request_are_plain_attributes(config: AppConfig) -> None:
    for key in ("KEEP_ALIVE", "REQUEST_BUFFER_SIZE"):
        assert vars(config)[key] == config[key], key


@pytest.mark.parametrize(
    "change",
    [
        lambda c: setattr(c, "REQUEST_BUFFER_SIZE", 4321),
        lambda c: c.__setitem__("REQUEST_BUFFER_SIZE", 4321),
        lambda c: c.update({"REQUEST_BUFFER_SIZE": 4321}),
        lambda c: c.update(REQUEST_BUFFER_SIZE=4321),
        lambda c: c.update_config({"REQUEST_BUFFER_SIZE": 4321}),
    ],
    ids=["attribute", "item", "update", "update-keyword", "update_config"],
)
def test_a_changed_setting_is_read_back(config: AppConfig, change: Any) -> None:
    change(config)
    assert config["REQUEST_BUFFER_SIZE"] == 4321
    assert config.REQUEST_BUFFER_SIZE == 4321
    assert vars(config)["REQUEST_BUFFER_SIZE"] == 4321


def test_a_property_of_sanics_config_still_applies(config: AppConfig) -> None:
    config.FALLBACK_ERROR_FORMAT = "json"
    assert config.FALLBACK_ERROR_FORMAT == "json"
