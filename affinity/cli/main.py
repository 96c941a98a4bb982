"""The ``affinity`` command: one parser tree over referral, serve, dev, certs, keys, request,
status, check and plugins; each command's options live with its code in this package."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from affinity import __version__
from affinity.cli import certs, check, dev, keys, plugins, preflight, request, status
from affinity.config import Config, load
from affinity.errors import AffinityError, ConfigError
from affinity.logs import FORMATS, LEVELS, LogSettings
from affinity.logs import configure as configure_logging

T = TypeVar("T")


def _referral(args: argparse.Namespace) -> int:
    from affinity.referral.app import ReferralServer

    cls = ReferralServer
    if args.server_class:
        cls = _load_subclass(args.server_class, ReferralServer, "--class")
    config = _config(args)
    _preflight(config, "referral")
    cls(config).run()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from affinity.server.base import AppServer

    cls = _load_subclass(args.app, AppServer, "app")
    flags = {
        key: (flag, value)
        for key, flag, value in (
            ("id", "--id", args.server_id),
            ("listen", "--listen", args.listen),
            ("url", "--url", args.url),
        )
        if value is not None
    }
    config = _config(args).with_flags("server", flags)
    _preflight(config, "server")
    cls(config).run()
    return 0


def _preflight(config: Config, role: str) -> None:
    """Every error ``affinity check`` would report, before anything is built or listens."""
    for warning in preflight.require(config, role):
        logging.getLogger("affinity.cli").warning("%s", warning)


def _serve_options(parser: argparse.ArgumentParser) -> None:
    """``--id --listen --url``: the keys that differ between the servers of one config file."""
    where = "a flag wins over AFFINITY_SERVER_{} and over the file's server.{}"
    parser.add_argument(
        "--id",
        dest="server_id",
        metavar="ID",
        help=f"this server's id ({where.format('ID', 'id')})",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"the address to bind, as 127.0.0.1:8443 or [::1]:8443 "
        f"({where.format('LISTEN', 'listen')}; default 127.0.0.1:8443)",
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help=f"the URL clients are sent to ({where.format('URL', 'url')}; "
        "default https://HOST:PORT of --listen)",
    )


def _check(args: argparse.Namespace) -> int:
    return check.run(_config(args), args)


CONFIG_ENV = "AFFINITY_CONFIG"
DEFAULT_CONFIG = "affinity.toml"


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"the configuration file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})",
    )


def _config(args: argparse.Namespace) -> Config:
    """The file named by --config, else by $AFFINITY_CONFIG, else ./affinity.toml."""
    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        if not Path(DEFAULT_CONFIG).exists():
            raise ConfigError(
                f"no configuration: give --config FILE, set {CONFIG_ENV}, "
                f"or run where ./{DEFAULT_CONFIG} is",
                key="--config",
            )
        path = DEFAULT_CONFIG
    return load(path)


def _load_subclass(spec: str, base: type[T], key: str) -> type[T]:
    """The class ``spec`` names, which must be ``base`` or a subclass of it."""
    found = _load_class(spec, key)
    if not (isinstance(found, type) and issubclass(found, base)):
        what = f"a {type(found).__name__}" if not isinstance(found, type) else "a class"
        raise ConfigError(
            f"{spec!r} is {what}, not a subclass of affinity.{base.__name__}", key=key
        )
    return found


def _load_class(spec: str, key: str) -> object:
    """Load ``module:Class`` or ``path/to/file.py:Class``."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ConfigError(
            f"{spec!r} is not valid; expected 'module:Class' or 'file.py:Class'", key=key
        )
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            sys.path.insert(0, str(path.parent))
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot load {target}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
    except (ImportError, OSError) as exc:
        raise ConfigError(f"cannot import {target!r}: {exc}", key=key) from exc
    try:
        found: object = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{target!r} has no attribute {attr!r}", key=key) from exc
    return found


class _Formatter(argparse.HelpFormatter):
    """Shows each option's default in its help, except where there is none to show (no
    default, a flag that is off) or where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == []
        if (
            "default" in text
            or nothing
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=_log_level,
        default=argparse.SUPPRESS,
        help=f"{', '.join(LEVELS)} (default INFO)",
    )
    common.add_argument(
        "--log-format",
        type=_log_format,
        default=argparse.SUPPRESS,
        help="text, or json: one JSON object per line (default text)",
    )
    return common


def _log_level(text: str) -> str:
    return _one_of(text.upper(), LEVELS, text, "a log level")


def _log_format(text: str) -> str:
    return _one_of(text.lower(), FORMATS, text, "a log format")


def _one_of(value: str, choices: Sequence[str], text: str, what: str) -> str:
    if value not in choices:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {what}; expected one of {', '.join(choices)}"
        )
    return value


def _access_log_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request: client, method, path (no query), status, bytes, time",
    )


def _log_settings(args: argparse.Namespace) -> LogSettings:
    return LogSettings(
        level=getattr(args, "log_level", "INFO"),
        format=getattr(args, "log_format", "text"),
        access_log=getattr(args, "access_log", False),
        role=_ROLES.get(args.command, args.command),
    )


_ROLES = {"serve": "server"}
"""The ``role`` of a JSON log line: the command's name, but ``server`` for ``serve``."""


def parser() -> argparse.ArgumentParser:
    """The whole command tree: ``affinity [--log-level L] COMMAND [options]``."""
    common = _common()
    p = argparse.ArgumentParser(
        prog="affinity", description="Referral load balancing.", parents=[common]
    )
    p.add_argument("--version", action="version", version=f"affinity {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        # No abbreviations: "--admin-token SECRET" must not become "--admin-token-file SECRET".
        parser = sub.add_parser(
            name,
            help=text,
            description=text,
            parents=[common],
            formatter_class=_Formatter,
            allow_abbrev=False,
        )
        parser.set_defaults(command_parser=parser)
        return parser

    r = command("referral", "run the referral service")
    _config_option(r)
    _access_log_option(r)
    r.add_argument(
        "--class",
        dest="server_class",
        metavar="CLASS",
        help="a ReferralServer subclass, as module:Class or file.py:Class "
        "(default: affinity's ReferralServer)",
    )
    r.set_defaults(func=_referral)

    s = command("serve", "run an app server: affinity serve module:Class")
    s.add_argument("app", help="your AppServer subclass, as module:Class or file.py:Class")
    _config_option(s)
    _access_log_option(s)
    _serve_options(s)
    s.set_defaults(func=_serve)

    dev.configure(command("dev", "run a referral and three app servers with TLS"))
    certs.configure(command("certs", "make a local CA and a wildcard certificate"))
    keys.configure(command("keys", "manage token signing keys"), common)
    request.configure(command("request", "send one request with failover"))
    status.configure(command("status", "show the servers a referral sees, as a table or JSON"))

    c = command("check", "check a config file as start-up would, listing every error")
    _config_option(c)
    check.configure(c)
    c.set_defaults(func=_check)

    plugins.configure(command("plugins", "list the loaded plugins and the hooks they implement"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 on success, 1 for a failed request, 2 for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser().parse_known_args(argv)
        if extra:  # said by the command's own parser, so its usage line is shown
            args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 2
    configure_logging(_log_settings(args))
    try:
        code: int = args.func(args)
    except AffinityError as exc:
        for line in str(exc).splitlines():  # several when start-up found several errors
            print(f"affinity {args.command}: error: {line}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
