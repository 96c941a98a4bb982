"""Running a Sanic app of affinity: TLS (or explicit plain HTTP), one or several workers.

One path for both: the app is built by ``factory`` in the process that serves
it (this one, or each worker), and that process makes its own TLS context with
:func:`affinity.web.tls.server_context` (TLS 1.2 or later, no renegotiation,
ALPN) through Sanic's certificate-loader hook. Sanic is never handed
certificate paths to build a context of its own. Every connection is served
by :func:`affinity.web.connection.bounded_protocol`, its TLS handshake
bounded by ``handshake_timeout``.
"""

from __future__ import annotations

import errno
import functools
import logging
import pickle
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sanic import Sanic
from sanic.server.socket import bind_socket
from sanic.worker.loader import AppLoader, CertLoader

from affinity.config import Listen
from affinity.errors import ConfigError
from affinity.logs import LogSettings, current, serving_line
from affinity.logs import configure as configure_logging
from affinity.web import reload, shutdown, systemd
from affinity.web.connection import ConnectionSettings, bounded_protocol, handshake_limit
from affinity.web.tls import server_context

_TITLES = {"referral": "referral", "server": "app server"}


class ListenSettings(ConnectionSettings, Protocol):
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


class _AffinityTls(CertLoader):
    """Sanic's per-process hook for the TLS context: the one :func:`build` made with the app.

    Sanic calls it in every serving process (the single one, or each worker)
    whatever ``ssl`` it was given, because the class is not Sanic's own.
    """

    def __init__(self, ssl_data: object) -> None:
        super().__init__(None)

    def load(self, app: Sanic[Any, Any]) -> ssl.SSLContext | None:
        context: ssl.SSLContext | None = app.ctx.affinity_tls
        return context


def build(
    factory: Callable[[], Sanic[Any, Any]],
    settings: ListenSettings,
    section: str,
    source: str,
    logs: LogSettings | None = None,
) -> Sanic[Any, Any]:
    """Build the app and its TLS context, in the process that will serve it.

    Module-level, as :func:`_build_to_serve` that calls it, so that a
    ``functools.partial`` of it pickles into worker processes. A bad
    certificate or key is a ConfigError here, before anything listens.
    ``logs`` (the command's logging) is put in force first: a worker process
    starts without it.
    """
    if logs is not None:
        configure_logging(logs)
    context = ssl_for(settings, section, source)
    app = factory()
    app.ctx.affinity_tls = context
    app.certloader_class = _AffinityTls
    reload.install(app)
    return app


def _build_to_serve(build_app: Callable[[], Sanic[Any, Any]]) -> Sanic[Any, Any]:
    """``build_app`` (a ``functools.partial`` of :func:`build`), in a process about to serve (the
    one process, or a worker): SIGTERM and SIGINT are held from its first step until the app
    serves (:mod:`affinity.web.shutdown`)."""
    shutdown.hold()
    app = build_app()
    shutdown.release_once_serving(app)
    return app


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT held in this thread for the block; its signal mask restored after."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, shutdown.STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _loader(
    build_app: Callable[[], Sanic[Any, Any]], workers: int, section: str, source: str
) -> AppLoader:
    """Sanic's loader of the app, for each process that serves it; with several workers, a
    ConfigError now if ``build_app`` cannot be sent to a worker process."""
    loader = AppLoader(factory=functools.partial(_build_to_serve, build_app))
    if workers > 1:
        try:
            pickle.dumps(loader.factory)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            msg = (
                f"{workers} workers need an app factory that can be sent to a worker process "
                f"(a module-level function, or functools.partial of one): {exc}"
            )
            raise ConfigError(msg, key=f"{section}.workers", source=source) from exc
    return loader


def serve(
    factory: Callable[[], Sanic[Any, Any]],
    settings: ListenSettings,
    *,
    section: str,
    source: str,
    workers: int = 1,
    title: str | None = None,
    listen_source: str | None = None,
) -> None:
    """Build the app and serve it until SIGINT or SIGTERM, whenever it comes; reload on SIGHUP.

    Under systemd (``Type=notify``) it says ``READY=1`` once it serves and
    ``STOPPING=1`` when it stops (:mod:`affinity.web.systemd`). SIGHUP runs what
    the role registered with :func:`affinity.web.reload.on_reload`, in every
    worker, without closing a connection.

    Once it listens, one line says so: ``title`` (by default "referral" or
    "app server") serving the URL, with the process id and the number of workers.

    The listening socket is bound here, before the app is built and before any
    worker starts, and handed to Sanic: an address in use is a ConfigError
    naming ``<section>.listen`` and ``listen_source`` (the file, or the
    variable that set it), and no other process can take the port in between.

    With several workers, ``factory`` must be picklable (a module-level
    function or a ``functools.partial`` of one with picklable arguments):
    Sanic starts each worker as a fresh process that builds its own app, so
    nothing in memory is shared. It is checked here, before any worker starts.

    A stop signal during start-up is held until the process (or, with several
    workers, Sanic's manager of them) can stop cleanly, then taken: the
    command exits 0 and leaves no worker behind (:mod:`affinity.web.shutdown`).
    """
    with _stop_signals_held():
        logs = current()
        build_app = functools.partial(build, factory, settings, section, source, logs)
        loader = _loader(build_app, workers, section, source)
        with listen_socket(settings.listen, f"{section}.listen", listen_source or source) as sock:
            app = loader.load()
            app.prepare(
                host=settings.listen.host,
                port=settings.listen.port,
                sock=sock,
                workers=workers,
                single_process=workers == 1,
                access_log=logs is not None and logs.access_log,
                motd=False,
                protocol=bounded_protocol(app),
            )
            if app.ctx.affinity_tls is not None:
                handshake_limit(app, settings)
            title = title or _TITLES.get(section, section)
            _announce(app, title, section, settings, workers)
            url = f"{'http' if app.ctx.affinity_tls is None else 'https'}://{settings.listen}"
            if workers > 1:
                shutdown.stop_through_the_monitor(app)  # before systemd wraps the handler
            systemd.install(app, lambda: serving_line(title, url, workers), workers)
            if workers > 1:
                app.register_listener(reload.relay_to_workers, "main_process_ready")
                # Registered last of the main process's listeners: its handler wraps any other's.
                shutdown.release_once_monitoring(app)
                Sanic.serve(primary=app, app_loader=loader)
            else:
                Sanic.serve_single(primary=app)


def _announce(
    app: Sanic[Any, Any], title: str, section: str, settings: ListenSettings, workers: int
) -> None:
    """Log the start-up line once the address is bound: in this process when it serves
    alone, in the main process once it has bound the sockets the workers serve on."""
    scheme = "http" if app.ctx.affinity_tls is None else "https"

    def announce(app: Sanic[Any, Any]) -> None:
        logging.getLogger(f"affinity.{section}").info(
            serving_line(title, f"{scheme}://{settings.listen}", workers)
        )

    app.register_listener(announce, "main_process_ready" if workers > 1 else "after_server_start")


_BIND_HINTS = {
    errno.EADDRINUSE: "another process listens there (find it with 'ss -ltnp')",
    errno.EACCES: "ports below 1024 need privileges (CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
}


def listen_socket(listen: Listen, key: str, source: str) -> socket.socket:
    """A socket bound and listening on ``listen`` as Sanic binds one; a ConfigError if not."""
    try:
        return bind_socket(listen.host, listen.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = _BIND_HINTS.get(exc.errno or 0)
        msg = f"cannot listen on {listen}: {reason}" + (f"; {hint}" if hint else "")
        raise ConfigError(msg, key=key, source=source) from exc
