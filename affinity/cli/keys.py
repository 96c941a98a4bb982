"""``affinity keys generate | rotate | admin-token``: token key ring files and the admin token."""

from __future__ import annotations

import argparse
from pathlib import Path

from affinity.tokens.keyring import generate_admin_token, generate_keyfile, rotate_keyfile

ALGORITHMS = ("HS256", "EdDSA")


def configure(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add ``generate`` and ``rotate`` under ``affinity keys``; both take ``common``'s options."""
    sub = parser.add_subparsers(
        dest="keys_command", required=True, metavar="{generate,rotate,admin-token}"
    )
    g = sub.add_parser("generate", help="write a new key ring file (mode 0600)", parents=[common])
    g.add_argument(
        "--file", "--out", dest="file", required=True, help="where to write the key ring"
    )
    g.add_argument(
        "--alg", default="HS256", choices=ALGORITHMS, help="signing algorithm (default HS256)"
    )
    g.add_argument("--force", action="store_true", help="overwrite an existing file")
    g.set_defaults(func=generate)
    r = sub.add_parser(
        "rotate", help="add a new active key; the old ones keep verifying", parents=[common]
    )
    r.add_argument("--file", required=True, help="the key ring file to rotate")
    r.add_argument("--alg", choices=ALGORITHMS, help="default: the active key's")
    r.add_argument(
        "--retire-after",
        type=float,
        default=None,
        help="seconds until the previous key stops verifying (default: never)",
    )
    r.set_defaults(func=rotate)
    a = sub.add_parser(
        "admin-token", help="write a new random admin token file (mode 0600)", parents=[common]
    )
    a.add_argument("--file", required=True, help="where to write the token")
    a.add_argument("--force", action="store_true", help="overwrite an existing file")
    a.set_defaults(func=admin_token)


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
