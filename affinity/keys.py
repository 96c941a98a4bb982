"""Where a process gets its token keys: the environment, else the configured key file."""

from __future__ import annotations

import os

from affinity.config import Config
from affinity.errors import ConfigError
from affinity.tokens import KeyRing

KEYS_ENV = "AFFINITY_TOKEN_KEYS"


def load_keyring(config: Config) -> KeyRing:
    """The key ring from ``AFFINITY_TOKEN_KEYS`` (JSON) or from ``tokens.keys_file``."""
    if os.environ.get(KEYS_ENV):
        return KeyRing.from_env(KEYS_ENV)
    path = config.tokens.keys_file
    if path is None:
        msg = (
            f"no token keys: set tokens.keys_file (make one with 'affinity keys generate') "
            f"or the environment variable {KEYS_ENV}"
        )
        raise ConfigError(msg, key="tokens.keys_file", source=config.source)
    if not path.exists():
        msg = f"key file {str(path)!r} does not exist; make one with 'affinity keys generate'"
        raise ConfigError(msg, key="tokens.keys_file", source=config.source)
    return KeyRing.load(path)
