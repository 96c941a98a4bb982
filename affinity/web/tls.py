"""TLS contexts for app servers, the referral and the clients that talk to them.

App servers terminate TLS themselves, each on its own name under one wildcard
certificate, so every process builds its server context from the configured
files. The files are read and checked here, at start-up, so that a missing
file, a PEM that is not one, or a key that belongs to another certificate is a
ConfigError naming the setting and the config file, not an SSLError from deep
inside the event loop at the first connection.

Client contexts always verify: certificate chain and host name. A development
CA is trusted by naming its file, never by turning verification off.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from affinity.errors import ConfigError

ALPN_PROTOCOLS = ("http/1.1",)
"""What the app servers speak (Sanic serves HTTP/1.1), announced so clients need not guess."""

INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
"""The TLS 1.2 suites of Mozilla's "intermediate" profile: forward secret AEAD only, no CBC.
TLS 1.3 suites are all AEAD and stay as OpenSSL sets them."""

_SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def server_context(
    cert: Path, key: Path, *, source: str = "", key_prefix: str = "tls"
) -> ssl.SSLContext:
    """A server-side context for ``cert`` (PEM chain, leaf first) and its ``key`` (PEM).

    Follows Mozilla's "intermediate" profile: TLS 1.2 or later, the TLS 1.2
    suites of :data:`INTERMEDIATE_CIPHERS` (no CBC), no compression, no
    renegotiation; announces HTTP/1.1 by ALPN. Errors name ``<key_prefix>_cert`` or
    ``<key_prefix>_key`` and ``source`` (the config file).
    """
    cert_key, key_key = f"{key_prefix}_cert", f"{key_prefix}_key"
    where = source or None
    leaf = _load_leaf(Path(cert), key=cert_key, source=where)
    private = _load_key(Path(key), key=key_key, source=where)
    if leaf.public_key().public_bytes(*_SPKI) != private.public_key().public_bytes(*_SPKI):
        raise ConfigError(
            f"{str(key)!r} is not the private key of the certificate in {str(cert)!r}",
            key=key_key,
            source=where,
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError included: OpenSSL refused what cryptography read
        raise ConfigError(
            f"cannot use {str(cert)!r} with {str(key)!r}: {exc}", key=cert_key, source=where
        ) from exc
    return context


def client_context(
    ca_file: Path | None = None, *, key: str | None = None, source: str = ""
) -> ssl.SSLContext:
    """A client-side context that verifies the server's chain and host name.

    With ``ca_file`` only that file's CAs are trusted (a development or
    internal CA should not widen into "that CA or anyone the system trusts");
    without it, the system's CAs. TLS 1.2 or later. A file that cannot be
    loaded is a ConfigError naming ``key`` (the setting) and ``source``. The
    suites are those of the server side: no CBC.
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except OSError as exc:
        reason = exc.strerror if isinstance(exc, FileNotFoundError) else str(exc)
        raise ConfigError(
            f"cannot load CA file {str(ca_file)!r}: {reason}", key=key, source=source or None
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _read(path: Path, *, what: str, key: str, source: str | None) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} file {str(path)!r} not found", key=key, source=source) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} file {str(path)!r}: {exc.strerror or exc}", key=key, source=source
        ) from exc


def _load_leaf(path: Path, *, key: str, source: str | None) -> x509.Certificate:
    """The first certificate of the PEM chain in ``path`` (the one the key must match)."""
    data = _read(path, what="certificate", key=key, source=source)
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise ConfigError(
            f"{str(path)!r} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----')",
            key=key,
            source=source,
        ) from exc


def _load_key(path: Path, *, key: str, source: str | None) -> PrivateKeyTypes:
    data = _read(path, what="key", key=key, source=source)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's signal for "encrypted, and no password given"
        raise ConfigError(
            f"{str(path)!r} is encrypted; affinity needs an unencrypted key "
            "(protect it with file permissions, mode 0600)",
            key=key,
            source=source,
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{str(path)!r} holds no usable PEM private key "
            "(expected '-----BEGIN PRIVATE KEY-----' or similar)",
            key=key,
            source=source,
        ) from exc
