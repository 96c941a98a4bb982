"""The ``affinity`` command: referral, serve, dev, certs, keys, request, plugins, check."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from affinity import __version__
from affinity.config import Config, load
from affinity.errors import AffinityError, ConfigError


def _referral(args: argparse.Namespace) -> int:
    from affinity.referral.app import ReferralServer

    cls = _load_class(args.server_class, "server_class") if args.server_class else ReferralServer
    cls(_config(args)).run()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from affinity.server.base import AppServer

    cls = _load_class(args.app, "app")
    if not (isinstance(cls, type) and issubclass(cls, AppServer)):
        raise ConfigError(f"{args.app!r} is not a subclass of affinity.AppServer", key="app")
    cls(_config(args)).run()
    return 0


def _keys(args: argparse.Namespace) -> int:
    from affinity.tokens.keyring import generate_keyfile

    ring = generate_keyfile(Path(args.out), args.alg, args.force)
    print(f"wrote a key ring with {args.alg} key to {args.out} (mode 0600)")
    del ring
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from affinity.tokens.keyring import rotate_keyfile

    ring = rotate_keyfile(Path(args.file), args.alg, retire_after=args.retire_after)
    print(
        f"{args.file}: new active key {ring.active.kid if ring.active else '?'!r}; "
        f"older keys verify until retired"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from affinity.plugin.manager import PluginManager

    config = _config(args)
    manager = PluginManager()
    manager.configure(config)
    for service in config.services:
        manager.make_policy(service, config)
    print(f"{config.source}: ok ({len(config.services)} services)")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from affinity.plugin.manager import PluginManager

    for name in PluginManager().names():
        print(name)
    return 0


def _config(args: argparse.Namespace) -> Config:
    return load(args.config)


def _load_class(spec: str, key: str) -> Any:
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
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{target!r} has no attribute {attr!r}", key=key) from exc


# Commands with parsers of their own: everything after the name is theirs.
PASSTHROUGH = {
    "dev": ("affinity.cli.dev", "dev_main", "run a referral and three app servers with TLS"),
    "certs": ("affinity.web.certs", "certs_main", "make a local CA and a wildcard certificate"),
    "request": ("affinity.cli.request", "request_main", "send one request with failover"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="affinity", description="Referral load balancing.")
    p.add_argument("--version", action="version", version=f"affinity {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("referral", help="run the referral service")
    r.add_argument("--config", required=True, help="the affinity.toml to use")
    r.add_argument("--class", dest="server_class", help="a ReferralServer subclass, module:Class")
    r.set_defaults(func=_referral)

    s = sub.add_parser("serve", help="run an app server: affinity serve module:Class")
    s.add_argument("app", help="your AppServer subclass, as module:Class or file.py:Class")
    s.add_argument("--config", required=True, help="the affinity.toml to use")
    s.set_defaults(func=_serve)

    k = sub.add_parser("keys", help="manage token signing keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    g = ksub.add_parser("generate", help="write a new key ring file (mode 0600)")
    g.add_argument("--out", required=True, help="where to write the key ring")
    g.add_argument("--alg", default="HS256", choices=["HS256", "EdDSA"])
    g.add_argument("--force", action="store_true", help="overwrite an existing file")
    g.set_defaults(func=_keys)
    r2 = ksub.add_parser("rotate", help="add a new active key; the old ones keep verifying")
    r2.add_argument("--file", required=True, help="the key ring file to rotate")
    r2.add_argument("--alg", choices=["HS256", "EdDSA"], help="default: the active key's")
    r2.add_argument(
        "--retire-after",
        type=float,
        default=None,
        help="seconds until the previous key stops verifying (default: never)",
    )
    r2.set_defaults(func=_rotate)

    c = sub.add_parser("check", help="validate a config file and its plugins")
    c.add_argument("--config", required=True)
    c.set_defaults(func=_check)

    sub.add_parser("plugins", help="list the loaded plugins").set_defaults(func=_plugins)

    for name, (_, _, text) in PASSTHROUGH.items():
        sub.add_parser(name, help=f"{text} (see 'affinity {name} --help')")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per HTTP call is noise at INFO; affinity logs what matters itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if argv and argv[0] in PASSTHROUGH:
            module, function, _ = PASSTHROUGH[argv[0]]
            run: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
            return run(argv[1:])
        args = parser().parse_args(argv)
        logging.getLogger().setLevel(args.log_level.upper())
        code: int = args.func(args)
    except AffinityError as exc:
        print(f"affinity: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
