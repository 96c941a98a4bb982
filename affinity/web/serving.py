"""Running a Sanic app of affinity: TLS (or explicit plain HTTP), one or several workers."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sanic import Sanic

from affinity.config import Listen
from affinity.errors import ConfigError
from affinity.web.tls import server_context


class ListenSettings(Protocol):
    """The parts of ``[referral]`` / ``[server]`` that say how to listen."""

    @property
    def listen(self) -> Listen: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def insecure_http(self) -> bool: ...


def ssl_for(settings: ListenSettings, section: str, source: str) -> ssl.SSLContext | None:
    """The TLS context to serve with; plain HTTP only when ``insecure_http`` says so."""
    if settings.tls_cert is None or settings.tls_key is None:
        if settings.insecure_http:
            return None
        msg = (
            "TLS is required: set tls_cert and tls_key (make a dev pair with 'affinity certs'), "
            "or set insecure_http = true to serve plain HTTP"
        )
        raise ConfigError(msg, key=f"{section}.tls_cert", source=source)
    return server_context(
        settings.tls_cert, settings.tls_key, source=source, key_prefix=f"{section}.tls"
    )


def serve(
    factory: Callable[[], Sanic[Any, Any]],
    settings: ListenSettings,
    *,
    section: str,
    source: str,
    workers: int = 1,
) -> None:
    """Build the app and serve it until SIGINT or SIGTERM.

    With several workers, ``factory`` must be picklable (a module-level
    function or a ``functools.partial`` of one): Sanic starts each worker as a
    fresh process that builds its own app, so nothing in memory is shared.
    """
    context = ssl_for(settings, section, source)
    if workers > 1:
        _serve_workers(factory, settings, workers)
        return
    app = factory()
    app.run(
        host=settings.listen.host,
        port=settings.listen.port,
        ssl=context,
        single_process=True,
        access_log=False,
        motd=False,
    )


def _serve_workers(
    factory: Callable[[], Sanic[Any, Any]], settings: ListenSettings, workers: int
) -> None:
    from sanic.worker.loader import AppLoader

    loader = AppLoader(factory=factory)
    app = loader.load()
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = {"cert": str(settings.tls_cert), "key": str(settings.tls_key)}
    app.prepare(
        host=settings.listen.host,
        port=settings.listen.port,
        ssl=tls,
        workers=workers,
        access_log=False,
        motd=False,
    )
    Sanic.serve(primary=app, app_loader=loader)
