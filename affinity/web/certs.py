"""Development certificates: a local CA and one wildcard certificate for every app server.

Every app server terminates TLS itself on its own sub-domain (``s1.<domain>``,
``s2.<domain>``…), so a single wildcard certificate, picked by SNI, covers the
whole fleet. In production that certificate comes from a real CA; for
development ``affinity certs`` makes a private CA and a wildcard leaf signed by
it. It uses :mod:`cryptography` rather than the ``openssl`` command so that it
behaves the same on every machine and needs nothing else installed.

Files written to the directory:

==============  ==============================================================
``ca.pem``      the development CA; give it to clients (``curl --cacert``)
``ca-key.pem``  its private key (0600): whoever holds it can mint certificates
                that every machine trusting the CA accepts
``cert.pem``    the wildcard leaf (``*.<domain>``, ``<domain>``, loopback names)
``key.pem``     the leaf's private key (0600)
``fullchain.pem`` the leaf followed by the CA, for servers that send the chain
==============  ==============================================================

Keys are EC P-256: every TLS client in use accepts them (curl, browsers,
OpenSSL, Go, Java), unlike Ed25519 certificates.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from affinity.errors import ConfigError

DEFAULT_DOMAIN = "affinity.test"
DEFAULT_DIRECTORY = Path("certs")
LEAF_DAYS = 825
"""Apple platforms reject server certificates valid for longer than 825 days."""
CA_DAYS = 3650
"""The CA outlives its leaves so that re-issuing a leaf does not mean re-trusting a CA."""
RENEW_BEFORE = timedelta(days=7)
BACKDATE = timedelta(hours=1)
"""Certificates start an hour back so a client whose clock lags still accepts them."""

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_CN_MAX = 64
_LOOPBACK_NAMES = ("localhost",)
_LOOPBACK_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
_KEY_USES = (
    *("digital_signature", "content_commitment", "key_encipherment", "data_encipherment"),
    *("key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
)
_CERT_MODE = 0o644
_KEY_MODE = 0o600

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True, kw_only=True)
class DevCerts:
    """Where a development CA and its wildcard certificate live, and the domain they cover."""

    domain: str
    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    fullchain: Path

    @classmethod
    def at(cls, directory: Path, domain: str) -> DevCerts:
        """The standard file names inside ``directory``."""
        return cls(
            domain=domain,
            ca=directory / "ca.pem",
            ca_key=directory / "ca-key.pem",
            cert=directory / "cert.pem",
            key=directory / "key.pem",
            fullchain=directory / "fullchain.pem",
        )

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file, in the order they are listed to users."""
        return (self.ca, self.ca_key, self.cert, self.key, self.fullchain)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Names:
    """The subject alternative names of a leaf: DNS names and IP addresses."""

    dns: tuple[str, ...]
    ips: tuple[IPAddress, ...]


# -- validation ---------------------------------------------------------------


def validate_domain(domain: str) -> str:
    """Return ``domain`` in canonical form (lower case, no trailing dot) or raise ConfigError.

    The domain is the parent of every server's name; the certificate covers
    ``*.<domain>`` itself, so a wildcard, a URL or an IP address here is a
    mistake worth stopping on rather than a certificate nobody can use.
    """
    if "://" in domain or "/" in domain:
        raise ConfigError(
            f"{domain!r} looks like a URL; expected a bare DNS name such as 'affinity.test'",
            key="domain",
        )
    if "*" in domain:
        raise ConfigError(
            f"{domain!r} contains a wildcard; give the base domain (the certificate "
            "covers '*.<domain>' itself)",
            key="domain",
        )
    name = domain.lower().removesuffix(".")
    if _ip_or_none(name) is not None:
        raise ConfigError(
            f"{domain!r} is an IP address; expected a DNS name (add IP addresses with --name)",
            key="domain",
        )
    _check_dns_name(name, original=domain, key="domain")
    if "." not in name:
        raise ConfigError(
            f"{domain!r} has a single label; expected at least two, such as 'affinity.test' "
            "(TLS clients ignore a wildcard directly under a top-level name)",
            key="domain",
        )
    return name


def _check_dns_name(name: str, *, original: str, key: str) -> None:
    labels = name.split(".")
    valid = (
        name.isascii()
        and len(name) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not valid:
        hint = "" if name.isascii() else " (use the ASCII 'xn--' form of internationalised names)"
        raise ConfigError(
            f"{original!r} is not a valid DNS name; expected labels of letters, digits "
            f"and hyphens separated by dots{hint}",
            key=key,
        )


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _san_names(domain: str, extra_names: Iterable[str]) -> _Names:
    """The leaf's names: the wildcard, the bare domain, loopback, then the extras."""
    dns: dict[str, None] = dict.fromkeys((f"*.{domain}", domain, *_LOOPBACK_NAMES))
    ips: dict[IPAddress, None] = dict.fromkeys(_LOOPBACK_IPS)
    for extra in extra_names:
        ip = _ip_or_none(extra)
        if ip is not None:
            ips[ip] = None
            continue
        name = extra.lower().removesuffix(".")
        base = name.removeprefix("*.")
        _check_dns_name(base, original=extra, key="name")
        if base != name and "." not in base:
            raise ConfigError(
                f"{extra!r}: a wildcard needs at least two labels under it", key="name"
            )
        dns[name] = None
    return _Names(dns=tuple(dns), ips=tuple(ips))


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"{days!r} is not a positive number of days", key="days")


# -- building certificates ----------------------------------------------------


def _utcnow() -> datetime:
    """The current time; a seam so tests can make certificates that have already expired."""
    return datetime.now(UTC)


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage allowing only the named uses (the constructor wants all nine spelled out)."""
    return x509.KeyUsage(**{use: allowed.get(use, False) for use in _KEY_USES})


def _make_ca(now: datetime, days: int) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = _new_key()
    # A random suffix tells apart the dev CAs of several checkouts in one trust store.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "affinity development CA"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"affinity development CA {secrets.token_hex(4)}"
            ),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca: tuple[x509.Certificate, PrivateKey], domain: str, names: _Names, now: datetime, days: int
) -> tuple[x509.Certificate, PrivateKey]:
    """A server certificate for ``names``, signed by ``ca``, never outliving it."""
    ca_cert, ca_key = ca
    key = _new_key()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "affinity development")]
    if len(f"*.{domain}") <= _CN_MAX:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}"))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    sans += [x509.IPAddress(ip) for ip in names.ips]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- writing files ------------------------------------------------------------


def _refuse_existing(paths: DevCerts) -> None:
    """Fail before writing anything, so a refusal never leaves a mixed set behind."""
    for path in paths.files:
        if os.path.lexists(path):
            raise ConfigError(
                "already exists; refusing to overwrite it (use --force / force=True)",
                source=str(path),
            )


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the directory: {exc.strerror or exc}", source=str(directory)
        ) from exc


def _stage(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temporary sibling of ``path`` created with ``mode``.

    The file is created with its final mode (``O_EXCL``), so a private key is
    never readable by others, not even for the instant before a chmod.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_files(files: Mapping[Path, tuple[bytes, int]]) -> None:
    """Stage every file first, then rename each into place.

    Any failure (disk full, permissions) happens while staging, before a
    single final file has changed, so readers see the old set or the new one.
    """
    staged: list[tuple[Path, Path]] = []
    current = next(iter(files))
    try:
        for current, (data, mode) in files.items():
            staged.append((_stage(current, data, mode), current))
        for tmp, current in staged:
            os.replace(tmp, current)
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror or exc}", source=str(current)) from exc
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _leaf_files(
    paths: DevCerts, ca_cert: x509.Certificate, cert: x509.Certificate, key: PrivateKey
) -> dict[Path, tuple[bytes, int]]:
    return {
        paths.key: (_key_pem(key), _KEY_MODE),
        paths.cert: (_cert_pem(cert), _CERT_MODE),
        paths.fullchain: (_cert_pem(cert) + _cert_pem(ca_cert), _CERT_MODE),
    }


# -- public API ---------------------------------------------------------------


def make_dev_certs(
    directory: Path,
    domain: str = DEFAULT_DOMAIN,
    *,
    force: bool = False,
    days: int = LEAF_DAYS,
    extra_names: Sequence[str] = (),
) -> DevCerts:
    """Create a new development CA and a wildcard certificate for ``domain`` in ``directory``.

    Refuses (ConfigError naming the file) if any of the files exists, unless
    ``force``; all inputs are checked before a key is generated or a file
    touched. ``extra_names`` adds DNS names or IP addresses (for example the
    host's LAN address) to the certificate.
    """
    domain = validate_domain(domain)
    names = _san_names(domain, extra_names)
    _check_days(days)
    paths = DevCerts.at(Path(directory), domain)
    if not force:
        _refuse_existing(paths)
    now = _utcnow()
    ca_cert, ca_key = _make_ca(now, max(days, CA_DAYS))
    cert, key = _make_leaf((ca_cert, ca_key), domain, names, now, days)
    files = {
        paths.ca_key: (_key_pem(ca_key), _KEY_MODE),
        paths.ca: (_cert_pem(ca_cert), _CERT_MODE),
        **_leaf_files(paths, ca_cert, cert, key),
    }
    _make_directory(paths.ca.parent)
    _write_files(files)
    return paths


def ensure_dev_certs(
    directory: Path, domain: str = DEFAULT_DOMAIN, *, extra_names: Sequence[str] = ()
) -> DevCerts:
    """Return usable development certificates for ``domain``, making them only when needed.

    Existing files are reused when they are intact, cover ``domain`` (and
    ``extra_names``) and are valid for at least another week. When only the
    leaf is unusable but the CA still is, only the leaf is re-issued, so a CA
    the user already trusts keeps working; otherwise everything is replaced.
    """
    domain = validate_domain(domain)
    names = _san_names(domain, extra_names)
    paths = DevCerts.at(Path(directory), domain)
    now = _utcnow()
    ca = _usable_ca(paths, now)
    if ca is None:
        return make_dev_certs(directory, domain, force=True, extra_names=extra_names)
    if _usable_leaf(paths, ca[0], names, now):
        return paths
    cert, key = _make_leaf(ca, domain, names, now, LEAF_DAYS)
    _write_files(_leaf_files(paths, ca[0], cert, key))
    return paths


# -- checking existing files --------------------------------------------------

_LOAD_ERRORS = (OSError, ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm)


def _fresh(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now and now + RENEW_BEFORE < cert.not_valid_after_utc


def _key_matches(cert: x509.Certificate, key: object) -> bool:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _usable_ca(paths: DevCerts, now: datetime) -> tuple[x509.Certificate, PrivateKey] | None:
    """The existing CA and its key, if both load, match and stay valid a while."""
    try:
        cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except (*_LOAD_ERRORS, x509.ExtensionNotFound):
        return None
    if not (is_ca and _fresh(cert, now) and _key_matches(cert, key)):
        return None
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # checked by _key_matches
    return cert, key


def _usable_leaf(paths: DevCerts, ca_cert: x509.Certificate, names: _Names, now: datetime) -> bool:
    """Whether the existing leaf was signed by the CA, matches its key and covers ``names``."""
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        chain = x509.load_pem_x509_certificates(paths.fullchain.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (*_LOAD_ERRORS, x509.ExtensionNotFound):
        return False
    covered = set(names.dns) <= set(san.get_values_for_type(x509.DNSName)) and set(
        names.ips
    ) <= set(san.get_values_for_type(x509.IPAddress))
    return covered and chain == [cert, ca_cert] and _fresh(cert, now) and _key_matches(cert, key)
