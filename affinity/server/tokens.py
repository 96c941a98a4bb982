"""How an app server verifies affinity tokens: the shared key ring, or the referral's JWKS."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from affinity.config import Config
from affinity.errors import InvalidToken
from affinity.models import Claims
from affinity.tokens.jws import TokenVerifier
from affinity.tokens.keyring import load_keyring

if TYPE_CHECKING:
    from affinity.tokens.jwks import JwksVerifier


class TokenCheck:
    """Verifies tokens with the shared key ring, or with the referral's JWKS when configured."""

    def __init__(self, config: Config) -> None:
        tokens = config.tokens
        self.config = config
        self.jwks: JwksVerifier | None = None
        if tokens.jwks_url:
            from affinity.tokens.jwks import JwksKeySource, JwksVerifier

            source = JwksKeySource(
                tokens.jwks_url,
                verify=_ca(config),
                min_refresh_interval=tokens.jwks_min_refresh_interval,
                refresh_interval=tokens.jwks_refresh_interval,
            )
            self.jwks = JwksVerifier(
                source,
                issuer=tokens.issuer,
                leeway=tokens.leeway,
                cache_size=tokens.cache_size,
                max_lifetime=tokens.max_lifetime,
            )
            self.verifier: TokenVerifier | None = None
        else:
            self.verifier = TokenVerifier(
                load_keyring(config),
                issuer=tokens.issuer,
                leeway=tokens.leeway,
                cache_size=tokens.cache_size,
                max_lifetime=tokens.max_lifetime,
            )
        self.verify: Callable[[str], Claims] = (
            self.verifier.verify if self.verifier is not None else self._verify_jwks
        )
        """Verify a token with the keys at hand (synchronous: the request path)."""

    def _verify_jwks(self, token: str) -> Claims:
        assert self.jwks is not None
        return self.jwks.verify_nowait(token)

    async def learn_key(self, token: str) -> None:
        """With JWKS, fetch the referral's keys once (rate-limited) if the token's key is new."""
        if self.jwks is None:
            return
        with contextlib.suppress(InvalidToken):
            await self.jwks.verify(token)

    async def reload(self) -> None:
        """SIGHUP: the key file again, or the referral's JWKS fetched now."""
        if self.verifier is not None:
            self.verifier.replace_ring(load_keyring(self.config))
        elif self.jwks is not None:
            await self.jwks.source.refresh(force=True)

    async def start(self) -> None:
        if self.jwks is not None:
            await self.jwks.start()

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()


def _ca(config: Config) -> Any:
    from affinity.web.tls import client_context

    key = "server.referral_ca"
    return client_context(config.server.referral_ca, key=key, source=config.source_of(key))
