"""Development certificates: contents, file handling, reuse, and the ``affinity certs`` command."""

from __future__ import annotations

import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from affinity.cli.main import main
from affinity.errors import ConfigError
from affinity.web import certs
from affinity.web.certs import DevCerts, ensure_dev_certs, make_dev_certs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(made: DevCerts) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in made.files}


def verify_for(made: DevCerts, name: x509.DNSName | x509.IPAddress) -> None:
    """Verify the leaf with cryptography's strict RFC 5280 verifier, trusting only the CA."""
    verifier = PolicyBuilder().store(Store([load(made.ca)])).build_server_verifier(name)
    verifier.verify(load(made.cert), [])


@pytest.fixture
def made(tmp_path: Path) -> DevCerts:
    return make_dev_certs(tmp_path / "certs", "example.test")


# -- contents -----------------------------------------------------------------


def test_writes_all_files_with_private_keys_0600(made: DevCerts) -> None:
    assert made.domain == "example.test"
    assert [p.name for p in made.files] == [
        "ca.pem",
        "ca-key.pem",
        "cert.pem",
        "key.pem",
        "fullchain.pem",
    ]
    for path in (made.ca_key, made.key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (made.ca, made.cert, made.fullchain):
        assert not path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    assert made.fullchain.read_bytes() == made.cert.read_bytes() + made.ca.read_bytes()
    assert not [p for p in made.ca.parent.iterdir() if p.name.endswith(".tmp")]


def test_ca_is_a_p256_ca_that_signs_only_leaves(made: DevCerts) -> None:
    ca = load(made.ca)
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_leaf_names_usage_and_validity(made: DevCerts) -> None:
    leaf, ca = load(made.cert), load(made.ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*.example.test", "example.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    now = datetime.now(UTC)
    assert now - timedelta(hours=1, minutes=1) < leaf.not_valid_before_utc < now
    assert leaf.not_valid_after_utc - now > timedelta(days=824)
    assert ca.not_valid_after_utc >= leaf.not_valid_after_utc


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("s1.example.test"),
        x509.DNSName("example.test"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
)
def test_leaf_verifies_strictly_for_its_names(made: DevCerts, name: x509.DNSName) -> None:
    verify_for(made, name)


def test_leaf_does_not_verify_for_other_names(made: DevCerts) -> None:
    with pytest.raises(x509.verification.VerificationError):
        verify_for(made, x509.DNSName("evil.example"))
    with pytest.raises(x509.verification.VerificationError):
        verify_for(made, x509.DNSName("a.b.example.test"))  # a wildcard covers one label


def test_extra_names_dns_and_ip(tmp_path: Path) -> None:
    made = make_dev_certs(
        tmp_path, extra_names=["Dev.Local", "10.0.0.5", "fd00::1", "localhost", "*.lan.test"]
    )
    san = load(made.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "*.affinity.test",
        "affinity.test",
        "localhost",
        "dev.local",
        "*.lan.test",
    ]
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.0.0.5") in ips and ipaddress.ip_address("fd00::1") in ips
    verify_for(made, x509.IPAddress(ipaddress.ip_address("10.0.0.5")))
    verify_for(made, x509.DNSName("x.lan.test"))


def test_domain_is_canonicalised(tmp_path: Path) -> None:
    assert make_dev_certs(tmp_path, "Example.TEST.").domain == "example.test"


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("https://example.test", "URL"),
        ("example.test/x", "URL"),
        ("*.example.test", "wildcard"),
        ("127.0.0.1", "IP address"),
        ("test", "single label"),
        ("", "not a valid DNS name"),
        ("exa mple.test", "not a valid DNS name"),
        ("-bad.test", "not a valid DNS name"),
        ("a..test", "not a valid DNS name"),
        ("example.test:8443", "not a valid DNS name"),
        ("bücher.test", "xn--"),
        ("a" * 64 + ".test", "not a valid DNS name"),
        ("example.123", "not a valid DNS name"),
    ],
)
def test_invalid_domain(tmp_path: Path, domain: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        make_dev_certs(tmp_path / "out", domain)
    assert info.value.key == "domain"
    assert repr(domain) in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["bad name", "*.test", "-x.test", "http://x"])
def test_invalid_extra_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_dev_certs(tmp_path / "out", extra_names=[name])
    assert info.value.key == "name"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("days", [0, -1, True])
def test_invalid_days(tmp_path: Path, days: int) -> None:
    with pytest.raises(ConfigError, match="days"):
        make_dev_certs(tmp_path, days=days)


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create the directory") as info:
        make_dev_certs(blocker / "certs")
    assert info.value.source == str(blocker / "certs")


# -- overwriting --------------------------------------------------------------


def test_refuses_to_overwrite_and_writes_nothing(made: DevCerts) -> None:
    before = snapshot(made)
    with pytest.raises(ConfigError, match="already exists") as info:
        make_dev_certs(made.ca.parent, "example.test")
    assert info.value.source == str(made.ca)
    assert snapshot(made) == before


def test_one_existing_file_blocks_all_the_others(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(b"mine")
    with pytest.raises(ConfigError, match=r"key\.pem"):
        make_dev_certs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]
    assert (tmp_path / "key.pem").read_bytes() == b"mine"


def test_force_overwrites_everything(made: DevCerts) -> None:
    before = snapshot(made)
    again = make_dev_certs(made.ca.parent, "example.test", force=True)
    after = snapshot(again)
    assert all(before[path] != after[path] for path in made.files)
    assert stat.S_IMODE(again.key.stat().st_mode) == 0o600
    verify_for(again, x509.DNSName("s2.example.test"))


def test_force_tightens_a_loose_key_file(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(b"old")
    os.chmod(tmp_path / "key.pem", 0o644)
    made = make_dev_certs(tmp_path, force=True)
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600


# -- ensure_dev_certs ---------------------------------------------------------


def test_ensure_creates_when_missing(tmp_path: Path) -> None:
    made = ensure_dev_certs(tmp_path / "certs", "example.test")
    assert all(path.exists() for path in made.files)
    verify_for(made, x509.DNSName("s1.example.test"))


def test_ensure_reuses_valid_files_byte_for_byte(made: DevCerts) -> None:
    before = snapshot(made)
    again = ensure_dev_certs(made.ca.parent, "example.test")
    assert again == made
    assert snapshot(again) == before


def test_ensure_reissues_only_the_leaf_for_another_domain(made: DevCerts) -> None:
    before = snapshot(made)
    other = ensure_dev_certs(made.ca.parent, "other.test")
    assert other.domain == "other.test"
    assert other.ca.read_bytes() == before[made.ca]  # a trusted CA stays trusted
    assert other.ca_key.read_bytes() == before[made.ca_key]
    assert other.cert.read_bytes() != before[made.cert]
    assert other.key.read_bytes() != before[made.key]
    verify_for(other, x509.DNSName("s1.other.test"))
    assert other.fullchain.read_bytes() == other.cert.read_bytes() + other.ca.read_bytes()


def test_ensure_reissues_a_leaf_missing_extra_names(made: DevCerts) -> None:
    before = snapshot(made)
    again = ensure_dev_certs(made.ca.parent, "example.test", extra_names=["10.9.8.7"])
    assert again.cert.read_bytes() != before[made.cert]
    verify_for(again, x509.IPAddress(ipaddress.ip_address("10.9.8.7")))
    assert snapshot(ensure_dev_certs(made.ca.parent, "example.test")) == snapshot(again)


def test_ensure_renews_a_leaf_expiring_within_a_week(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path, days=6)
    before = snapshot(made)
    again = ensure_dev_certs(tmp_path, "affinity.test")
    assert again.ca.read_bytes() == before[made.ca]
    assert again.cert.read_bytes() != before[made.cert]
    assert load(again.cert).not_valid_after_utc - datetime.now(UTC) > timedelta(days=800)


def test_ensure_replaces_everything_when_the_ca_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=5000)
    with monkeypatch.context() as patch:
        patch.setattr(certs, "_utcnow", lambda: long_ago)
        made = make_dev_certs(tmp_path)
    assert load(made.ca).not_valid_after_utc < datetime.now(UTC)
    before = snapshot(made)
    again = ensure_dev_certs(tmp_path, "affinity.test")
    assert all(before[path] != path.read_bytes() for path in again.files)
    verify_for(again, x509.DNSName("s1.affinity.test"))


@pytest.mark.parametrize("damaged", ["cert", "key", "fullchain", "ca", "ca_key"])
def test_ensure_repairs_damaged_files(made: DevCerts, damaged: str) -> None:
    path: Path = getattr(made, damaged)
    path.write_bytes(b"garbage")
    again = ensure_dev_certs(made.ca.parent, "example.test")
    assert path.read_bytes() != b"garbage"
    verify_for(again, x509.DNSName("s1.example.test"))


def test_ensure_replaces_a_leaf_from_another_ca(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path / "a")
    stranger = make_dev_certs(tmp_path / "b")
    for name in ("cert", "key", "fullchain"):
        getattr(made, name).write_bytes(getattr(stranger, name).read_bytes())
    again = ensure_dev_certs(tmp_path / "a", "affinity.test")
    verify_for(again, x509.DNSName("s1.affinity.test"))


def test_ensure_rejects_a_bad_domain(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wildcard"):
        ensure_dev_certs(tmp_path, "*.affinity.test")


# -- affinity certs -----------------------------------------------------------


def test_certs_command_writes_and_explains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "my certs"
    code = main(["certs", "--dir", str(out_dir), "--domain", "example.test", "--name", "10.0.0.7"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("ca.pem", "ca-key.pem", "cert.pem", "key.pem", "fullchain.pem"):
        assert str(out_dir / name) in out
        assert (out_dir / name).exists()
    assert f"curl --cacert '{out_dir / 'ca.pem'}' https://s1.example.test:8443/" in out
    assert "*.example.test" in out and "10.0.0.7" in out


def test_certs_command_refuses_then_forces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["certs", "--dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("affinity certs: error: ")
    assert "already exists" in captured.err and "Traceback" not in captured.err
    assert main(["certs", "--dir", str(tmp_path), "--force"]) == 0


def test_affinity_certs_bad_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--dir", str(tmp_path / "x"), "--domain", "https://x.test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "domain" in err and "URL" in err


def test_affinity_certs_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--bogus"]) == 2
    assert "usage: affinity certs" in capsys.readouterr().err
    assert main(["certs", "--help"]) == 0
    assert "--domain" in capsys.readouterr().out
