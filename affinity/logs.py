"""Logging: the ``affinity`` command's one handler (text or JSON lines, Sanic's loggers
included), and :class:`Repeated`, how every retrying loop logs a failure that goes on.

:func:`configure` is the one place logging is set up. The command calls it
once; :mod:`affinity.web.serving` calls it again in every Sanic worker process
with the same :class:`LogSettings`. Sanic's own handlers are removed and its
loggers propagate to the root, so each event is one line, at the level asked
for, in the format asked for. A process that never calls it (a program that
embeds a referral) keeps its own logging set-up.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")

SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets")
QUIET_LOGGERS = ("httpx", "httpcore")
"""Libraries whose INFO and DEBUG lines are one per HTTP call: WARNING and up only."""

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CANCELLED = "was cancelled before it completed."
_FIELDS = ("client", "method", "path", "status", "bytes", "duration_ms", "failures")
"""Record attributes a JSON line carries when present (the access log's, :class:`Repeated`'s)."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    """What ``--log-level``, ``--log-format`` and ``--access-log`` asked for (picklable, so a
    Sanic worker process gets the same)."""

    level: str = "INFO"
    format: str = "text"
    access_log: bool = False
    role: str = ""
    """The command (``referral``, ``serve``, ...): the ``role`` of every JSON line."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level: expected one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.format not in FORMATS:
            raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {self.format!r}")


class _Handler(logging.StreamHandler[TextIO]):
    """Writes to the ``sys.stderr`` of the moment (as :data:`logging.lastResort` does), so a
    test that swaps stderr does not leave it writing to a closed stream."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__()
        self.settings = settings

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid, role,
    the fields of an access line or a repeated failure, and ``exc`` (a traceback) if any."""

    def __init__(self, role: str = "") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if self.role:
            line["role"] = self.role
        for name in _FIELDS:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exc"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def _not_cancelled_task(record: logging.LogRecord) -> bool:
    """Drop Sanic's "Task ... was cancelled before it completed." said of every background
    task it cancels at shutdown: stopping them is the normal end of a process."""
    return not (isinstance(record.msg, str) and record.msg.endswith(_CANCELLED))


def _access_line(record: logging.LogRecord) -> bool:
    """Sanic's access record, made one line per request: client, method, path (no query
    string, which may carry what nobody meant to log), status, bytes, duration.

    Sanic puts no header and no cookie in the record, so the affinity token never
    reaches it. The extra record Sanic makes when a connection closes after a
    response is dropped; one closed before its response is kept.
    """
    status = getattr(record, "status", None)
    size = getattr(record, "byte", None)
    if size == "DISCONNECTED" and isinstance(status, int):
        return False
    method, _, url = str(getattr(record, "request", "")).partition(" ")
    client = getattr(record, "host", "") or "-"
    path = urllib.parse.urlsplit(url).path or "-"
    took: float | None
    try:
        took = float(str(getattr(record, "duration", "")).strip().removesuffix("ms"))
    except ValueError:
        took = None
    record.__dict__.update(client=client, method=method, path=path, bytes=size, duration_ms=took)
    record.msg = "%s %s %s %s %s%s"
    record.args = (client, method, path, status, size, "" if took is None else f" {took:.1f}ms")
    return True


def configure(settings: LogSettings) -> None:
    """Set up this process's logging: one handler on the root logger, writing to stderr.

    Called again (a worker process, another command in the same test
    process), it replaces the handler it installed; handlers others installed
    on the root (a test runner's) stay.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(settings)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter(settings.role))
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    root.addHandler(handler)
    root.setLevel(settings.level)
    for name in SANIC_LOGGERS:
        logger = logging.getLogger(name)
        for own in list(logger.handlers):  # Sanic's console handlers: the root's is the one
            logger.removeHandler(own)
        logger.propagate = True
        if name != "sanic.websockets":  # Sanic keeps it at WARNING: a line per frame below
            logger.setLevel(logging.NOTSET)
    _add_filter(logging.getLogger("sanic.error"), _not_cancelled_task)
    _add_filter(logging.getLogger("sanic.access"), _access_line)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _add_filter(logger: logging.Logger, check: Any) -> None:
    if check not in logger.filters:
        logger.addFilter(check)


def current() -> LogSettings | None:
    """The settings :func:`configure` put in force in this process, or None if it was not
    called (logging is then the embedding program's)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Handler):
            return handler.settings
    return None


def serving_line(title: str, url: str, workers: int) -> str:
    """The start-up line: ``referral serving https://127.0.0.1:8443 (pid 1234, 2 workers)``."""
    return f"{title} serving {url} (pid {os.getpid()}, {workers} worker{'s' * (workers != 1)})"


class Repeated:
    """How a loop that retries logs a failure that repeats, instead of once per attempt.

    The first failure is logged at ``level``; after it, a failure is logged again
    when its reason changes and at every ``every``-th failure in a row (saying
    how many), the others at DEBUG. :meth:`recovered` logs the end of the run
    (at INFO, with the count) and starts over. Every retrying loop that logs
    uses it, so an unreachable peer costs a few lines, not one per retry.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        every: int = 10,
        level: int = logging.WARNING,
    ) -> None:
        if every < 1:
            raise ValueError(f"every: expected a count of 1 or more, got {every!r}")
        self.log = logger
        self.what = what
        self.every = every
        self.level = level
        self.failures = 0
        """Failures in a row so far; 0 after a success."""
        self._reason: str | None = None

    def failed(
        self,
        reason: object,
        *,
        retry_in: float | None = None,
        level: int | None = None,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Count one failure; True if it was logged at ``level`` (not DEBUG).

        ``exc_info`` (a traceback) goes with the logged lines only.
        """
        self.failures += 1
        text = str(reason)
        changed = text != self._reason
        self._reason = text
        shown = self.failures == 1 or changed or self.failures % self.every == 0
        retry = f"; retry in {retry_in:.1f}s" if retry_in is not None else ""
        count = "" if self.failures == 1 else f" ({self.failures} failures in a row)"
        self.log.log(
            (self.level if level is None else level) if shown else logging.DEBUG,
            "%s%s: %s%s",
            self.what,
            count,
            text,
            retry,
            exc_info=exc_info if shown else None,
            extra={"failures": self.failures},
        )
        return shown

    def recovered(self, message: str) -> bool:
        """After a success: log ``message`` with the count if failures came before; True then."""
        if not self.failures:
            return False
        failures, self.failures, self._reason = self.failures, 0, None
        self.log.info(
            "%s after %d failure%s", message, failures, "s" * (failures != 1), extra={"failures": 0}
        )
        return True
