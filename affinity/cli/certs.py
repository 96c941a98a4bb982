"""``affinity certs``: a development CA and a wildcard certificate (:mod:`affinity.web.certs`)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from cryptography import x509

from affinity.web.certs import (
    DEFAULT_DIRECTORY,
    DEFAULT_DOMAIN,
    LEAF_DAYS,
    DevCerts,
    make_dev_certs,
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``affinity certs`` to its sub-parser."""
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIRECTORY, help="output directory")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help="parent domain of the servers")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the certificate (repeatable)",
    )
    parser.add_argument("--days", type=int, default=LEAF_DAYS, help="leaf validity in days")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the files and say what each is for; a bad domain raises ConfigError."""
    made = make_dev_certs(
        args.dir, args.domain, force=args.force, days=args.days, extra_names=args.name
    )
    print(summary(made))
    return 0


def summary(made: DevCerts) -> str:
    """What was written, what each file is for, and how to trust the CA."""
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [*san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    until = cert.not_valid_after_utc.date().isoformat()
    ca = shlex.quote(str(made.ca))
    roles = {
        made.ca: "CA certificate: give it to clients",
        made.ca_key: "CA private key (0600): keep it secret, it can sign any name",
        made.cert: f"certificate for {', '.join(names)} (until {until})",
        made.key: "certificate private key (0600)",
        made.fullchain: "certificate followed by the CA",
    }
    width = max(len(str(path)) for path in roles)
    return "\n".join(
        [
            f"Wrote a development CA and a certificate for *.{made.domain}:",
            *(f"  {str(path).ljust(width)}  {role}" for path, role in roles.items()),
            "",
            "Trust the CA where you need it, for example:",
            f"  curl --cacert {ca} https://s1.{made.domain}:8443/",
            f"  httpx.Client(verify=affinity.web.tls.client_context(Path({str(made.ca)!r})))",
            f"  SSL_CERT_FILE={ca}  (OpenSSL-based tools; replaces the system CAs)",
            f"Names under {made.domain} must resolve: add them to /etc/hosts, or use",
            f"  curl --resolve s1.{made.domain}:8443:127.0.0.1 ...",
        ]
    )
