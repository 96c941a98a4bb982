"""One run of an HTTP check, as a Consul agent does it.

A 2xx answer is passing, 429 is warning, anything else — another status, a refused
connection, a TLS failure, no answer within the timeout — is critical.
See https://developer.hashicorp.com/consul/docs/services/usage/checks#http-checks.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

OUTPUT_MAX = 4096


async def http_probe(
    http: aiohttp.ClientSession,
    url: str,
    timeout: float,
    tls: ssl.SSLContext | bool,
    server_name: str = "",
) -> tuple[str, str]:
    """GET ``url``; the status word and the check's output."""
    https = url.startswith("https:")
    try:
        async with asyncio.timeout(timeout):
            async with http.get(
                url,
                headers={"User-Agent": "Consul Health Check"},
                ssl=tls if https else True,
                server_hostname=(server_name or None) if https else None,
            ) as response:
                body = await response.content.read(OUTPUT_MAX)
    except TimeoutError:
        return "critical", f'Get "{url}": context deadline exceeded'
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return "critical", f'Get "{url}": {exc or type(exc).__name__}'
    code = response.status
    status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
    text = body.decode("utf-8", "replace")
    return status, f"HTTP GET {url}: {code} {response.reason or ''} Output: {text}"
