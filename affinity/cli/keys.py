"""``affinity keys generate | rotate | admin-token | registration-secret | registration-token``:
token key ring files, the admin token, and the registration secret and tokens of app servers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from affinity.config import Config
from affinity.errors import ConfigError
from affinity.tokens.keyring import (
    generate_admin_token,
    generate_keyfile,
    rotate_keyfile,
    write_secret_file,
)
from affinity.web.auth import REGISTRATION_SECRET_ENV, registration_token
from affinity.web.names import check_id

ALGORITHMS = ("HS256", "EdDSA")


def configure(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add ``generate`` and ``rotate`` under ``affinity keys``; both take ``common``'s options."""
    sub = parser.add_subparsers(
        dest="keys_command",
        required=True,
        metavar="{generate,rotate,admin-token,registration-secret,registration-token}",
    )

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=text,
            description=text,
            parents=[common],
            formatter_class=parser.formatter_class,
            allow_abbrev=False,
        )

    g = command("generate", "write a new key ring file (mode 0600)")
    g.add_argument(
        "--file", "--out", dest="file", required=True, help="where to write the key ring"
    )
    g.add_argument(
        "--alg", default="HS256", choices=ALGORITHMS, help="signing algorithm (default HS256)"
    )
    g.add_argument("--force", action="store_true", help="overwrite an existing file")
    g.set_defaults(func=generate)
    r = command("rotate", "add a new active key; the old ones keep verifying")
    r.add_argument("--file", required=True, help="the key ring file to rotate")
    r.add_argument("--alg", choices=ALGORITHMS, help="default: the active key's")
    r.add_argument(
        "--retire-after",
        type=float,
        default=None,
        help="seconds until the previous key stops verifying (default: never)",
    )
    r.set_defaults(func=rotate)
    a = command("admin-token", "write a new random admin token file (mode 0600)")
    a.add_argument("--file", required=True, help="where to write the token")
    a.add_argument("--force", action="store_true", help="overwrite an existing file")
    a.set_defaults(func=admin_token)
    rs = command(
        "registration-secret",
        "write a new random registration secret file for the referral (mode 0600)",
    )
    rs.add_argument("--file", required=True, help="where to write the secret")
    rs.add_argument("--force", action="store_true", help="overwrite an existing file")
    rs.set_defaults(func=registration_secret)
    rt = command("registration-token", "write the registration token of one app server (mode 0600)")
    rt.add_argument("--id", required=True, dest="server_id", help="the server's id")
    rt.add_argument(
        "--secret-file",
        help=f"the referral's registration secret (default: ${REGISTRATION_SECRET_ENV})",
    )
    rt.add_argument("--file", required=True, help="where to write the token")
    rt.add_argument("--force", action="store_true", help="overwrite an existing file")
    rt.set_defaults(func=registration_token_file)


def generate(args: argparse.Namespace) -> int:
    generate_keyfile(Path(args.file), args.alg, args.force)
    print(f"wrote a key ring with {args.alg} key to {args.file} (mode 0600)")
    return 0


def rotate(args: argparse.Namespace) -> int:
    ring = rotate_keyfile(Path(args.file), args.alg, retire_after=args.retire_after)
    print(
        f"{args.file}: new active key {ring.active.kid if ring.active else '?'!r}; "
        f"older keys verify until retired"
    )
    return 0


def admin_token(args: argparse.Namespace) -> int:
    generate_admin_token(Path(args.file), args.force)
    print(
        f"wrote a new admin token to {args.file} (mode 0600); point admin_token_file at it "
        'on the referral and the servers, or export AFFINITY_ADMIN_TOKEN="$(cat FILE)"'
    )
    return 0


def registration_secret(args: argparse.Namespace) -> int:
    generate_admin_token(Path(args.file), args.force, what="registration secret")
    print(
        f"wrote a new registration secret to {args.file} (mode 0600); point the referral's "
        "registration_secret_file at it, and give each server its token "
        "('affinity keys registration-token --id ID')"
    )
    return 0


def registration_token_file(args: argparse.Namespace) -> int:
    try:
        server_id = check_id(args.server_id)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--id") from exc
    path = Path(args.secret_file) if args.secret_file else None
    if path is None and REGISTRATION_SECRET_ENV not in os.environ:
        msg = f"give --secret-file FILE or set {REGISTRATION_SECRET_ENV}"
        raise ConfigError(msg, key="--secret-file")
    # An explicit --secret-file wins over the variable ("" names no variable).
    env = "" if path is not None else REGISTRATION_SECRET_ENV
    secret = Config().read_secret(path, env, "--secret-file")
    assert secret is not None
    token = registration_token(secret, server_id)
    write_secret_file(Path(args.file), (token + "\n").encode(), args.force, what="token file")
    print(
        f"wrote the registration token of server {server_id!r} to {args.file} (mode 0600); "
        "point that server's registration_token_file at it"
    )
    return 0
