"""Key rings for affinity tokens: HS256 secrets and Ed25519 key pairs, key files, rotation.

A ring holds several keys: one active for signing, all the others accepted for
verifying until their ``retire_at``, so keys rotate with overlap. Key files
hold secrets: :func:`write_keyring` creates them with mode 0600;
:meth:`KeyRing.load` accepts any mode it can read (a deployment may mount a
secret group-readable on purpose); ``affinity check`` and start-up warn about
one open to group or others (``affinity.cli.preflight``). :func:`load_keyring`
is where a process gets its ring: the ``AFFINITY_TOKEN_KEYS`` environment
variable, else ``tokens.keys_file``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from affinity.config import Config
from affinity.errors import ConfigError
from affinity.files import write_private

HS256: Final = "HS256"
EDDSA: Final = "EdDSA"
ALGORITHMS: Final = frozenset({HS256, EDDSA})
MIN_SECRET_BYTES: Final = 32
"""RFC 7518 §3.2: an HS256 key must be at least as long as the hash output."""

_ED25519_BYTES: Final = 32
_HMAC_BLOCK: Final = 64
_STD_TO_URL: Final = bytes.maketrans(b"+/", b"-_")
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))
_CONFIG_B64_RE: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_KEY_FIELDS: Final = frozenset({"kid", "alg", "secret", "private", "public", "retire_at"})

KEYS_ENV = "AFFINITY_TOKEN_KEYS"


def b64url_encode(data: bytes) -> bytes:
    """Unpadded base64url, as JWS requires (RFC 7515 §2); twice per token issued, so one
    C call and a translation rather than :func:`base64.urlsafe_b64encode`'s layers."""
    return binascii.b2a_base64(data, newline=False).translate(_STD_TO_URL).rstrip(b"=")


def _show(value: object) -> str:
    """Quote an attacker-chosen value for a message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _new_kid(taken: Iterable[str] = ()) -> str:
    used = set(taken)
    while True:
        kid = secrets.token_urlsafe(6)
        if kid not in used:
            return kid


class Key:
    """One key of a ring: HS256 secret, Ed25519 private key, or Ed25519 public key.

    Immutable. Secrets never appear in ``repr``; the HMAC pads are computed
    once so that signing and verifying copy two hash states instead of
    re-deriving the key (twice as fast as copying an ``hmac`` object).
    """

    __slots__ = (
        "_inner",
        "_outer",
        "_private",
        "_public",
        "_secret",
        "alg",
        "header",
        "kid",
        "retire_at",
    )

    def __init__(
        self,
        kid: str,
        alg: str,
        *,
        secret: bytes | None = None,
        private: Ed25519PrivateKey | None = None,
        public: Ed25519PublicKey | None = None,
        retire_at: float | None = None,
    ) -> None:
        if alg == HS256:
            if secret is None or len(secret) < MIN_SECRET_BYTES or (private or public) is not None:
                raise ConfigError(f"an HS256 key needs a secret of {MIN_SECRET_BYTES}+ bytes only")
            padded = (
                hashlib.sha256(secret).digest() if len(secret) > _HMAC_BLOCK else secret
            ).ljust(_HMAC_BLOCK, b"\0")
            self._inner = hashlib.sha256(padded.translate(_IPAD))
            self._outer = hashlib.sha256(padded.translate(_OPAD))
        elif alg == EDDSA:
            if secret is not None or (private is None and public is None):
                raise ConfigError("an EdDSA key needs an Ed25519 private or public key")
            public = private.public_key() if private is not None else public
        else:
            raise ConfigError(f"unknown algorithm {alg!r}; expected 'HS256' or 'EdDSA'")
        self.kid = kid
        self.alg = alg
        self.retire_at = retire_at
        self._secret = secret
        self._private = private
        self._public = public
        header = orjson.dumps({"alg": alg, "kid": kid, "typ": "JWT"})
        self.header: bytes = b64url_encode(header) + b"."
        """The encoded header and its dot: the first part of every token this key signs."""

    @classmethod
    def generate(cls, alg: str = HS256, kid: str | None = None) -> Key:
        """A new random key (32-byte secret, or a new Ed25519 key pair)."""
        kid = kid or _new_kid()
        if alg == HS256:
            return cls(kid, alg, secret=secrets.token_bytes(MIN_SECRET_BYTES))
        if alg == EDDSA:
            return cls(kid, alg, private=Ed25519PrivateKey.generate())
        raise ConfigError(f"unknown algorithm {alg!r}; expected 'HS256' or 'EdDSA'", key="alg")

    @property
    def can_sign(self) -> bool:
        """True for an HMAC secret or an Ed25519 private key."""
        return self._secret is not None or self._private is not None

    @property
    def public_key(self) -> Ed25519PublicKey | None:
        """The Ed25519 public key; None for HS256."""
        return self._public

    def retired(self, now: float) -> bool:
        """True once ``retire_at`` has passed: the key no longer verifies."""
        return self.retire_at is not None and now >= self.retire_at

    def replace(self, *, retire_at: float | None) -> Key:
        """The same material with another retirement time."""
        return Key(
            self.kid,
            self.alg,
            secret=self._secret,
            private=self._private,
            public=None if self._private else self._public,
            retire_at=retire_at,
        )

    def public(self) -> Key:
        """The verifying half only; HMAC secrets have none, so HS256 raises."""
        if self._public is None:
            raise ValueError(f"key {self.kid!r} is HS256: a shared secret cannot be made public")
        return Key(self.kid, EDDSA, public=self._public, retire_at=self.retire_at)

    def compact(self, signing_input: bytes) -> bytes:
        """The compact JWS of ``signing_input`` (``header.payload``, ASCII): it, a dot and
        its signature in base64url. Once per token issued, so the HMAC is written out here
        rather than reached through :meth:`sign` (the same bytes: tests/test_tokens.py)."""
        if self._secret is not None:
            inner = self._inner.copy()
            inner.update(signing_input)
            outer = self._outer.copy()
            outer.update(inner.digest())
            signature = outer.digest()
        else:
            signature = self.sign(signing_input)
        encoded = binascii.b2a_base64(signature, newline=False)
        return signing_input + b"." + encoded.translate(_STD_TO_URL).rstrip(b"=")

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of ``data`` (the ASCII ``header.payload``)."""
        if self._secret is not None:
            return self._mac(data)
        if self._private is None:
            raise ValueError(f"key {self.kid!r} holds a public key only and cannot sign")
        return self._private.sign(data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is valid for ``data``; MACs compare in constant time."""
        if self._secret is not None:
            return hmac.compare_digest(self._mac(data), signature)
        assert self._public is not None
        try:
            self._public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def _mac(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def to_dict(self) -> dict[str, Any]:
        """The key-file entry (with secret material)."""
        entry: dict[str, Any] = {"kid": self.kid, "alg": self.alg}
        if self._secret is not None:
            entry["secret"] = b64url_encode(self._secret).decode()
        elif self._private is not None:
            entry["private"] = b64url_encode(self._private.private_bytes_raw()).decode()
        elif self._public is not None:
            entry["public"] = b64url_encode(self._public.public_bytes_raw()).decode()
        if self.retire_at is not None:
            entry["retire_at"] = self.retire_at
        return entry

    def to_jwk(self) -> dict[str, str]:
        """The RFC 8037 JWK of the public key (EdDSA only)."""
        if self._public is None:
            raise ValueError(f"key {self.kid!r} is HS256 and has no public JWK")
        x = b64url_encode(self._public.public_bytes_raw()).decode()
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": EDDSA, "use": "sig"}

    def __repr__(self) -> str:
        return (
            f"Key(kid={self.kid!r}, alg={self.alg!r}, can_sign={self.can_sign}, "
            f"retire_at={self.retire_at!r})"
        )


class KeyRing:
    """The keys an issuer signs with and a verifier accepts; immutable.

    One key is *active* (signs); every key verifies until its ``retire_at``,
    so rotation is: add a key, make it active, retire the old one after the
    longest token lifetime. A ring without an active key only verifies.
    ``source`` names where it came from, for error messages.
    """

    __slots__ = ("_active", "_keys", "source")

    def __init__(
        self, keys: Iterable[Key], active: str | None = None, *, source: str = "<memory>"
    ) -> None:
        self.source = source
        self._keys: dict[str, Key] = {}
        for i, key in enumerate(keys):
            if key.kid in self._keys:
                raise ConfigError(
                    f"duplicate key id {key.kid!r}", key=f"keys[{i}].kid", source=source
                )
            self._keys[key.kid] = key
        self._active: Key | None = None
        if active is not None:
            found = self._keys.get(active)
            if found is None:
                raise ConfigError(f"no key has kid {active!r}", key="active", source=source)
            if not found.can_sign:
                raise ConfigError(
                    f"key {active!r} holds no signing material", key="active", source=source
                )
            self._active = found

    @property
    def active(self) -> Key | None:
        """The signing key, or None for a verify-only ring."""
        return self._active

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms of the keys present."""
        return frozenset(k.alg for k in self._keys.values())

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def get(self, kid: str) -> Key | None:
        """The key with this id, retired or not."""
        return self._keys.get(kid)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        active = self._active.kid if self._active else None
        keys = list(self._keys.values())
        return f"KeyRing(active={active!r}, keys={keys!r}, source={self.source!r})"

    @classmethod
    def generate(cls, alg: str = HS256, kid: str | None = None) -> KeyRing:
        """A ring of one new active key."""
        key = Key.generate(alg, kid)
        return cls([key], key.kid)

    def rotate(
        self, alg: str | None = None, *, kid: str | None = None, retire_at: float | None = None
    ) -> KeyRing:
        """A new ring whose active key is fresh; the old keys stay to verify.

        ``retire_at`` (unix time) is set on the previously active key; make
        it later than now + the longest token lifetime + the leeway, or
        clients holding live tokens get ``401`` and must re-refer.
        """
        old = self._active
        new = Key.generate(alg or (old.alg if old else HS256), kid or _new_kid(self._keys))
        keys = [
            k.replace(retire_at=retire_at) if k is old and retire_at is not None else k
            for k in self
        ]
        return KeyRing([*keys, new], new.kid, source=self.source)

    def public(self) -> KeyRing:
        """The verify-only ring an app server should hold (EdDSA rings only)."""
        if any(k.alg == HS256 for k in self):
            raise ConfigError(
                "HS256 secrets cannot be made public; sign with EdDSA keys so that app servers "
                "hold public keys only",
                source=self.source,
            )
        return KeyRing([k.public() for k in self], source=self.source)

    def jwks(self, now: float | None = None) -> dict[str, Any]:
        """The RFC 7517 / 8037 JWK set of the Ed25519 keys not retired at ``now``.

        HS256 keys never appear. ``now`` defaults to ``time.time()``.
        """
        now = time.time() if now is None else now
        return {"keys": [k.to_jwk() for k in self if k.alg == EDDSA and not k.retired(now)]}

    def to_json(self) -> bytes:
        """The key-file document, secrets included (see :func:`write_keyring`)."""
        doc = {
            "active": self._active.kid if self._active else None,
            "keys": [k.to_dict() for k in self],
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_json(cls, data: bytes | str, source: str) -> KeyRing:
        """Parse a key file; errors name the bad key path and ``source``."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise ConfigError(f"not valid JSON ({exc.msg} at {where})", source=source) from exc
        if not isinstance(doc, dict):
            raise ConfigError("expected a JSON object with 'active' and 'keys'", source=source)
        unknown = sorted(doc.keys() - {"active", "keys"})
        if unknown:
            raise ConfigError(
                "unknown field; expected 'active' and 'keys'", key=unknown[0], source=source
            )
        items = doc.get("keys")
        if not isinstance(items, list) or not items:
            raise ConfigError("expected a non-empty list of keys", key="keys", source=source)
        active = doc.get("active")
        if active is not None and not isinstance(active, str):
            raise ConfigError(
                f"expected a key id, got {_show(active)}", key="active", source=source
            )
        keys = [_parse_key(item, f"keys[{i}]", source) for i, item in enumerate(items)]
        return cls(keys, active, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read a key file (any mode that can be read; see the module docstring)."""
        source = os.fspath(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the key file: {exc.strerror}", source=source) from exc
        return cls.from_json(data, source)

    @classmethod
    def from_env(cls, var: str = "AFFINITY_TOKEN_KEYS") -> KeyRing:
        """The ring in an environment variable: a JSON document, or else a key-file path."""
        value = os.environ.get(var, "").strip()
        if not value:
            raise ConfigError("the environment variable is not set", key=var)
        if value.startswith("{"):
            return cls.from_json(value, f"${var}")
        return cls.load(value)

    @classmethod
    def from_jwks(cls, doc: Mapping[str, Any], source: str = "jwks") -> KeyRing:
        """A verify-only ring from a JWK set; keys that are not Ed25519 signing keys are skipped."""
        items = doc.get("keys") if isinstance(doc, Mapping) else None
        if not isinstance(items, list):
            raise ConfigError(
                "expected a JWK set: an object with a 'keys' list", key="keys", source=source
            )
        keys = []
        for i, jwk in enumerate(items):
            where = f"keys[{i}]"
            if not isinstance(jwk, dict):
                raise ConfigError("expected a JWK object", key=where, source=source)
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                continue
            if jwk.get("use", "sig") != "sig" or jwk.get("alg", EDDSA) != EDDSA:
                continue
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                raise ConfigError("expected a non-empty key id", key=f"{where}.kid", source=source)
            x = _config_b64(jwk, "x", where, source, size=_ED25519_BYTES)
            assert x is not None
            keys.append(Key(kid, EDDSA, public=Ed25519PublicKey.from_public_bytes(x)))
        return cls(keys, source=source)


def _config_b64(
    item: Mapping[str, Any], name: str, where: str, source: str, *, size: int = 0
) -> bytes | None:
    """Decode a base64url field (padding optional); never quotes the value."""
    if name not in item:
        return None
    value = item[name]
    if (
        not isinstance(value, str)
        or not _CONFIG_B64_RE.fullmatch(value)
        or len(value.rstrip("=")) % 4 == 1
    ):
        raise ConfigError("expected base64url text", key=f"{where}.{name}", source=source)
    raw = base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    if size and len(raw) != size:
        raise ConfigError(
            f"expected {size} bytes, got {len(raw)}", key=f"{where}.{name}", source=source
        )
    return raw


def _parse_key(item: object, where: str, source: str) -> Key:
    """One key-file entry, checked field by field."""
    if not isinstance(item, dict):
        raise ConfigError("expected a key object", key=where, source=source)
    unknown = sorted(item.keys() - _KEY_FIELDS)
    if unknown:
        msg = f"unknown field; expected one of {sorted(_KEY_FIELDS)}"
        raise ConfigError(msg, key=f"{where}.{unknown[0]}", source=source)
    kid, alg, retire_at = item.get("kid"), item.get("alg"), item.get("retire_at")
    if not isinstance(kid, str) or not kid:
        raise ConfigError("expected a non-empty key id", key=f"{where}.kid", source=source)
    if alg not in ALGORITHMS:
        raise ConfigError(
            f"unknown algorithm {_show(alg)}; expected 'HS256' or 'EdDSA'",
            key=f"{where}.alg",
            source=source,
        )
    if retire_at is not None and (
        isinstance(retire_at, bool)
        or not isinstance(retire_at, int | float)
        or not math.isfinite(retire_at)
    ):
        raise ConfigError(
            "expected a unix time (number) or null", key=f"{where}.retire_at", source=source
        )
    allowed = {"secret"} if alg == HS256 else {"private", "public"}
    for name in {"secret", "private", "public"} - allowed:
        if name in item:
            raise ConfigError(
                f"{alg} keys do not take this field", key=f"{where}.{name}", source=source
            )
    if alg == HS256:
        secret = _config_b64(item, "secret", where, source)
        if secret is None or len(secret) < MIN_SECRET_BYTES:
            msg = f"expected a secret of at least {MIN_SECRET_BYTES} bytes"
            raise ConfigError(msg, key=f"{where}.secret", source=source)
        return Key(kid, HS256, secret=secret, retire_at=retire_at)
    return _eddsa_key(item, kid, retire_at, where, source)


def _eddsa_key(
    item: Mapping[str, Any], kid: str, retire_at: float | None, where: str, source: str
) -> Key:
    raw_private = _config_b64(item, "private", where, source, size=_ED25519_BYTES)
    raw_public = _config_b64(item, "public", where, source, size=_ED25519_BYTES)
    if raw_private is None and raw_public is None:
        raise ConfigError("an EdDSA key needs 'private' or 'public'", key=where, source=source)
    private = Ed25519PrivateKey.from_private_bytes(raw_private) if raw_private else None
    public = Ed25519PublicKey.from_public_bytes(raw_public) if raw_public else None
    if private and public and private.public_key().public_bytes_raw() != public.public_bytes_raw():
        raise ConfigError("does not match the private key", key=f"{where}.public", source=source)
    return Key(kid, EDDSA, private=private, public=public, retire_at=retire_at)


def write_keyring(path: str | os.PathLike[str], ring: KeyRing, force: bool = False) -> None:
    """Write a key file atomically, mode 0600; refuse to replace one unless ``force``."""
    write_secret_file(Path(path), ring.to_json(), force, what="key file")


def write_secret_file(target: Path, data: bytes, force: bool, *, what: str) -> None:
    """Write a secret atomically, mode 0600 (:func:`affinity.files.write_private`); refuse
    to replace an existing file unless ``force``."""
    source = str(target)
    exists = f"the {what} exists; pass force to overwrite it"
    if not force and target.exists():
        raise ConfigError(exists, source=source)
    try:
        write_private(target, data, replace=force)
    except FileExistsError as exc:
        raise ConfigError(exists, source=source) from exc
    except OSError as exc:
        raise ConfigError(f"cannot write the {what}: {exc.strerror}", source=source) from exc


ADMIN_TOKEN_BYTES = 32
"""Random bytes in a new admin token (43 URL-safe characters)."""


def generate_admin_token(path: Path, force: bool = False, *, what: str = "admin token") -> None:
    """``affinity keys admin-token`` (or ``registration-secret``): a new random bearer secret
    of 43 characters in ``path``, mode 0600."""
    token = secrets.token_urlsafe(ADMIN_TOKEN_BYTES)
    write_secret_file(path, (token + "\n").encode(), force, what=f"{what} file")


def generate_keyfile(path: Path, alg: str, force: bool) -> KeyRing:
    """``affinity keys generate``: a new one-key ring, written to ``path``."""
    ring = KeyRing.generate(alg)
    write_keyring(path, ring, force)
    return ring


def rotate_keyfile(
    path: Path,
    alg: str | None = None,
    *,
    retire_after: float | None = None,
    clock: Callable[[], float] = time.time,
) -> KeyRing:
    """``affinity keys rotate``: add an active key, retire the old one ``retire_after`` s from now.

    ``retire_after`` should exceed the longest token lifetime plus the leeway.
    """
    ring = KeyRing.load(path).rotate(
        alg, retire_at=None if retire_after is None else clock() + retire_after
    )
    write_keyring(path, ring, force=True)
    return ring


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
