"""The affinity exception tree.

Every error affinity raises derives from :class:`AffinityError`; errors from
libraries it uses are wrapped at the boundary (``raise ... from exc``).

* AffinityError
  * ConfigError           bad or missing setting; names the key and the file (also ValueError)
  * PluginError           a plugin failed to import, or is invalid
  * RegistryError         the registry backend failed
    * RegistryUnavailable cannot reach it (network, timeout)
    * RegistrationFailed  it refused a register / deregister / report
  * InvalidToken          an affinity token was rejected (any reason)
    * ExpiredToken        its ``exp`` has passed (beyond the leeway)
    * ImmatureToken       its ``iat`` / ``nbf`` is in the future (beyond the leeway)
    * UnknownKey          its ``kid`` is not in the key ring
  * KeyFetchError         the verifying keys could not be fetched (JWKS); the old keys stay
  * NoHealthyServer       no assignable server for the service
  * ClientError           the client library gave up (see affinity.client)
    * AllAttemptsFailed   every attempt failed; ``attempts`` lists what was tried and why
      * NotRetried        a request that may have reached its server failed; not safe to resend
    * ReferralRefused     the referral refused in a way no retry can fix (unknown service)

HTTP status codes for these live in one place, :mod:`affinity.web.http`.
"""

from __future__ import annotations


class AffinityError(Exception):
    """Root of every error affinity raises."""


class ConfigError(AffinityError, ValueError):
    """A setting is missing or wrong; the message names the key and the file."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        where = ""
        if key and source:
            where = f"{source}: {key}: "
        elif key:
            where = f"{key}: "
        elif source:
            where = f"{source}: "
        super().__init__(where + message)
        self.message = message
        self.key = key
        self.source = source


class PluginError(AffinityError):
    """A plugin could not be loaded, or broke the hook contract."""


class RegistryError(AffinityError):
    """The registry backend failed."""


class RegistryUnavailable(RegistryError):
    """The registry backend cannot be reached."""


class RegistrationFailed(RegistryError):
    """The registry refused a register, deregister or report."""


class InvalidToken(AffinityError):
    """An affinity token was rejected; the message says why (never the key)."""


class ExpiredToken(InvalidToken):
    """The token's ``exp`` has passed."""


class ImmatureToken(InvalidToken):
    """The token was issued in the future (clock skew beyond the leeway)."""


class UnknownKey(InvalidToken):
    """The token's ``kid`` is not in the key ring."""


class KeyFetchError(AffinityError):
    """Fetching the referral's public keys (its JWKS) failed; the old keys stay in use.

    Not an :class:`InvalidToken`: it says nothing about any one token, and an
    app server may want to alert on it rather than answer ``401``.
    """


class NoHealthyServer(AffinityError):
    """No server of the service can be assigned."""

    def __init__(self, service: str, retry_after: float = 1.0) -> None:
        super().__init__(f"no healthy server for service {service!r}")
        self.service = service
        self.retry_after = retry_after


class ClientError(AffinityError):
    """The client library gave up; the message says what was tried."""


class AllAttemptsFailed(ClientError):
    """Every attempt failed, or the deadline, the attempts or the retry budget ran out.

    ``attempts`` holds one line per referral instance or server tried, with
    its error, in order; the message lists them too.
    """

    def __init__(self, message: str, *, attempts: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.attempts = attempts


class NotRetried(AllAttemptsFailed):
    """A request that may have reached its server failed, and sending it again is not safe.

    Raised for a non-idempotent request without an idempotency key after a
    read error or timeout: the server may have acted on it already.
    """


class ReferralRefused(ClientError):
    """The referral refused the request in a way no retry can fix (unknown service, bad input)."""
