"""TLS contexts: real handshakes on loopback with the development certificates, and bad files."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from affinity.errors import ConfigError
from affinity.web.certs import DevCerts, make_dev_certs
from affinity.web.tls import client_context, server_context

DOMAIN = "affinity.test"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"), DOMAIN)


@pytest.fixture(scope="module")
def server_ctx(dev: DevCerts) -> ssl.SSLContext:
    return server_context(dev.cert, dev.key)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo one line, or answer an HTTP request with 'ok' (httpx test)."""
    line = await reader.readline()
    if line.startswith(b"GET "):
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    else:
        writer.write(line)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@asynccontextmanager
async def tls_server(context: ssl.SSLContext, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A loopback TLS server on a free port, closed on exit."""
    server = await asyncio.start_server(_echo, host, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, host: str, server_hostname: str | None
) -> ssl.SSLObject:
    """Connect, exchange a line, and return the client's TLS object for inspection."""
    async with tls_server(server, host) as port:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=client, server_hostname=server_hostname
        )
        try:
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
            return tls
        finally:
            writer.close()
            await writer.wait_closed()


# -- handshakes ---------------------------------------------------------------


@pytest.mark.parametrize("name", [f"s1.{DOMAIN}", f"s42.{DOMAIN}", DOMAIN, "localhost"])
def test_handshake_by_name(dev: DevCerts, server_ctx: ssl.SSLContext, name: str) -> None:
    tls = asyncio.run(handshake(server_ctx, client_context(dev.ca), "127.0.0.1", name))
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert tls.getpeercert() is not None


def test_handshake_by_ip_address(dev: DevCerts, server_ctx: ssl.SSLContext) -> None:
    # server_hostname defaults to the host, so the IP SAN is what is checked.
    asyncio.run(handshake(server_ctx, client_context(dev.ca), "127.0.0.1", None))


def test_handshake_by_ipv6_address(dev: DevCerts, server_ctx: ssl.SSLContext) -> None:
    try:
        asyncio.run(handshake(server_ctx, client_context(dev.ca), "::1", None))
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            raise
        pytest.skip(f"no IPv6 loopback here: {exc}")


def test_server_announces_http11_by_alpn(dev: DevCerts, server_ctx: ssl.SSLContext) -> None:
    client = client_context(dev.ca)
    client.set_alpn_protocols(["h2", "http/1.1"])
    tls = asyncio.run(handshake(server_ctx, client, "127.0.0.1", f"s1.{DOMAIN}"))
    assert tls.selected_alpn_protocol() == "http/1.1"


@pytest.mark.parametrize("name", ["evil.example", f"a.b.{DOMAIN}", f"{DOMAIN}.evil.example"])
def test_handshake_for_another_name_fails(
    dev: DevCerts, server_ctx: ssl.SSLContext, name: str
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        asyncio.run(handshake(server_ctx, client_context(dev.ca), "127.0.0.1", name))


def test_client_without_the_dev_ca_fails(server_ctx: ssl.SSLContext) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        asyncio.run(handshake(server_ctx, client_context(), "127.0.0.1", f"s1.{DOMAIN}"))


def test_client_trusting_another_ca_fails(tmp_path: Path, server_ctx: ssl.SSLContext) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    client = client_context(tmp_path / "other.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(handshake(server_ctx, client, "127.0.0.1", f"s1.{DOMAIN}"))


def test_server_context_settings(server_ctx: ssl.SSLContext) -> None:
    assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ctx.options & ssl.OP_NO_RENEGOTIATION


def test_client_context_always_verifies(dev: DevCerts) -> None:
    for context in (client_context(), client_context(dev.ca)):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_client_context_trusts_only_the_given_ca(dev: DevCerts) -> None:
    certs = client_context(dev.ca).get_ca_certs()
    assert len(certs) == 1
    assert "affinity development CA" in str(certs[0]["subject"])


# -- httpx --------------------------------------------------------------------


async def _httpx_get(server: ssl.SSLContext, verify: ssl.SSLContext | bool, **kw: str) -> str:
    async with tls_server(server) as port, httpx.AsyncClient(verify=verify) as client:
        host = kw.get("host", "127.0.0.1")
        extensions = {"sni_hostname": kw["sni"]} if "sni" in kw else {}
        response = await client.get(f"https://{host}:{port}/", extensions=extensions)
        return f"{response.status_code} {response.text} {response.http_version}"


def test_httpx_by_ip(dev: DevCerts, server_ctx: ssl.SSLContext) -> None:
    assert asyncio.run(_httpx_get(server_ctx, client_context(dev.ca))) == "200 ok HTTP/1.1"


def test_httpx_by_server_name(dev: DevCerts, server_ctx: ssl.SSLContext) -> None:
    got = asyncio.run(_httpx_get(server_ctx, client_context(dev.ca), sni=f"s7.{DOMAIN}"))
    assert got == "200 ok HTTP/1.1"


def test_httpx_by_localhost(dev: DevCerts, server_ctx: ssl.SSLContext) -> None:
    got = asyncio.run(_httpx_get(server_ctx, client_context(dev.ca), sni="localhost"))
    assert got == "200 ok HTTP/1.1"


def test_httpx_rejects_another_name(dev: DevCerts, server_ctx: ssl.SSLContext) -> None:
    with pytest.raises(httpx.ConnectError, match="mismatch"):
        asyncio.run(_httpx_get(server_ctx, client_context(dev.ca), sni="evil.example"))


def test_httpx_without_the_ca_fails(server_ctx: ssl.SSLContext) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(_httpx_get(server_ctx, True, sni=f"s1.{DOMAIN}"))


# -- bad files ----------------------------------------------------------------


def test_missing_cert_names_the_key_and_source(dev: DevCerts, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        server_context(tmp_path / "nope.pem", dev.key, source="affinity.toml")
    assert (info.value.key, info.value.source) == ("tls_cert", "affinity.toml")
    assert str(info.value).startswith("affinity.toml: tls_cert: ")


def test_missing_key(dev: DevCerts, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        server_context(dev.cert, tmp_path / "nope.pem", source="a.toml", key_prefix="server.tls")
    assert info.value.key == "server.tls_key"


def test_no_source_is_omitted(dev: DevCerts, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        server_context(tmp_path / "nope.pem", dev.key)
    assert info.value.source is None
    assert str(info.value).startswith("tls_cert: ")


def test_unreadable_cert_is_a_config_error(dev: DevCerts, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        server_context(tmp_path, dev.key)  # a directory
    assert info.value.key == "tls_cert"


@pytest.mark.parametrize("content", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_garbage_cert(dev: DevCerts, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "cert.pem").write_bytes(content)
    with pytest.raises(ConfigError, match="no PEM certificate") as info:
        server_context(tmp_path / "cert.pem", dev.key)
    assert info.value.key == "tls_cert"


def test_key_given_as_cert(dev: DevCerts) -> None:
    with pytest.raises(ConfigError) as info:
        server_context(dev.key, dev.key)
    assert info.value.key == "tls_cert"


def test_cert_given_as_key(dev: DevCerts) -> None:
    with pytest.raises(ConfigError, match="no usable PEM private key") as info:
        server_context(dev.cert, dev.cert)
    assert info.value.key == "tls_key"


def test_key_of_another_certificate(dev: DevCerts, tmp_path: Path) -> None:
    other = make_dev_certs(tmp_path)
    with pytest.raises(ConfigError, match="is not the private key") as info:
        server_context(dev.cert, other.key, source="x.toml")
    assert info.value.key == "tls_key"
    with pytest.raises(ConfigError, match="is not the private key"):
        server_context(dev.cert, dev.ca_key)


def test_encrypted_key(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("s1.affinity.test")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "key.pem").write_bytes(encrypted)
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    with pytest.raises(ConfigError, match="encrypted") as info:
        server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    assert info.value.key == "tls_key"


def test_rsa_and_combined_pem_work(tmp_path: Path) -> None:
    """Production pairs need not be the dev kind: an RSA key in the same file as the chain."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert(f"*.{DOMAIN}", key_type=trustme.KeyType.RSA)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = server_context(tmp_path / "both.pem", tmp_path / "both.pem")
    client = client_context(tmp_path / "ca.pem")
    asyncio.run(handshake(server, client, "127.0.0.1", f"s1.{DOMAIN}"))


@pytest.mark.parametrize("content", [None, b"", b"junk"])
def test_bad_ca_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="cannot load CA file") as info:
        client_context(path, key="server.referral_ca", source="affinity.toml")
    assert str(info.value).startswith("affinity.toml: server.referral_ca: ")
