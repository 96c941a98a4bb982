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
  * Refused               a request the referral or an app server turns away
    * InvalidRequest      malformed input (400; ``code`` says which part)
    * NotFound            no such service, server or settings document (404)
    * TokenRequired       no token, and this server requires one
    * Misdirected         a valid token for another server or service
    * Draining            the server is draining past its grace: ask the referral again
    * NoHealthyServer     no assignable server for the service
    * Unauthorized        no valid admin bearer token
    * AdminClosed         no admin token is configured: the admin API is closed
    * Forbidden           understood but not allowed (a dashboard action without its CSRF
                          token, a registration token used on another server's id)
    * TooLarge            the body is larger than the route reads
  * ChildFailed           a child process (``affinity dev``, affinity.testing) exited early or
                          did not answer in time
  * ClientError           the client library gave up (see affinity.client)
    * AllAttemptsFailed   every attempt failed; ``attempts`` lists what was tried and why
      * NotRetried        a request that may have reached its server failed; not safe to resend
    * ReferralRefused     the referral refused in a way no retry can fix (unknown service)

The HTTP status, ``error`` code and headers of each live in one table,
:data:`affinity.web.http.ANSWERS`: request handlers raise (or look up), and
never choose a status themselves.
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


class Refused(AffinityError):
    """A request the referral or an app server turns away; the message is the answer's detail.

    ``code``, when given, is the answer's ``error`` code (for the kinds that
    have several, such as :class:`InvalidRequest`); ``retry_after`` its
    ``Retry-After`` in seconds.
    """

    def __init__(
        self, detail: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.retry_after = retry_after


class InvalidRequest(Refused):
    """The request is malformed: a bad query, body or path parameter."""


class NotFound(Refused):
    """The request names a service, server or settings document that does not exist."""


class TokenRequired(Refused):
    """The request has no affinity token and this server accepts none without one."""


class Misdirected(Refused):
    """A valid affinity token for another server or service: the client must ask again."""


class Draining(Refused):
    """This server is draining and sends its clients back to the referral."""


class NoHealthyServer(Refused):
    """No server of the service can be assigned."""

    def __init__(self, service: str, retry_after: float = 1.0) -> None:
        super().__init__(f"no healthy server for service {service!r}", retry_after=retry_after)
        self.service = service


class Unauthorized(Refused):
    """The admin call lacks a valid ``Authorization: Bearer <admin token>`` header."""


class AdminClosed(Refused):
    """No admin token is configured, so the admin API refuses every call."""


class Forbidden(Refused):
    """The request is understood and refused: a dashboard action without its CSRF token, or a
    server's registration token used on another server's id."""


class TooLarge(Refused):
    """The request's body is larger than the route reads (a login form, for instance)."""


class ChildFailed(AffinityError):
    """A child ``affinity`` process exited early or did not answer in time; the message ends
    with the last lines of its log."""


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
