"""``affinity dev``: a referral and three app servers with TLS on this host, in one command.

Makes a dev CA and wildcard certificate, a key ring, an admin token, a
registration secret and the servers' own admin token if missing (all under
``--dir``, keys 0600), writes a config, starts the referral
and three servers of the demo app (:mod:`affinity.demo`) as child processes on loopback, prints
how to use them, and on Ctrl-C drains and stops them all (a second Ctrl-C
kills them at once), leaving no process behind.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from affinity.errors import ConfigError
from affinity.process import ChildProcess, stop, wait_answering
from affinity.protocol import HEALTH_PATH
from affinity.tokens.keyring import generate_admin_token, generate_keyfile
from affinity.web.auth import registration_token
from affinity.web.certs import ensure_dev_certs
from affinity.web.tls import client_context

DEFAULT_APP = "affinity.demo:Hello"
CONFIG = """\
# Written by 'affinity dev'; every key can be overridden by AFFINITY_<SECTION>_<KEY>.
[referral]
listen = "127.0.0.1:{port}"
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"
state_file = "state.json"
admin_token_file = "admin-token"
registration_secret_file = "registration-secret"
default_service = "web"

[tokens]
keys_file = "keys.json"
ttl = 600

[health]
interval = 1.0
timeout = 0.5
ca_file = "certs/ca.pem"

[services.web]
policy = "load_weighted"

[server]
service = "web"
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"
referral_url = "https://127.0.0.1:{port}"
referral_ca = "certs/ca.pem"
# The servers' own drain and resume; each registers with its registration token.
admin_token_file = "server-admin-token"
capacity = 1000
drain_grace = 1.0
drain_timeout = 5.0
heartbeat_interval = 2.0
"""


def prepare(directory: Path, port: int) -> Path:
    """Certificates, keys, admin token and config in ``directory``; existing ones are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    ensure_dev_certs(directory / "certs", "affinity.test")
    if not (directory / "keys.json").exists():
        generate_keyfile(directory / "keys.json", "HS256", False)
    for name in ("admin-token", "registration-secret", "server-admin-token"):
        if not (directory / name).exists():
            generate_admin_token(directory / name, what=name.replace("-", " "))
    config = directory / "affinity.toml"
    config.write_text(CONFIG.format(port=port), encoding="utf-8")
    return config


def run(
    directory: Path,
    port: int,
    servers: int,
    app: str,
    python_path: str,
    log_args: Sequence[str] = (),
) -> int:
    """Run until Ctrl-C; ``log_args`` (``--log-level``, ``--log-format``) go to every child."""
    config = prepare(directory, port)
    secret = (directory / "registration-secret").read_text(encoding="utf-8").strip()
    ca = directory / "certs" / "ca.pem"
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [python_path, os.environ.get("PYTHONPATH")])),
    }
    referral_url = f"https://127.0.0.1:{port}"
    verify = client_context(ca)
    _stop_on(signal.SIGTERM, signal.SIGHUP)
    # Sessions of their own: Ctrl-C reaches only this supervisor, which stops them in order.
    referral = ChildProcess(
        "the referral",
        ["referral", "--config", str(config), *log_args],
        env=env,
        log=logs / "referral.log",
        own_session=True,
    )
    procs = [referral]
    try:
        wait_answering(f"{referral_url}/healthz", referral, verify=verify, timeout=30)
        rows = []
        for i in range(1, servers + 1):
            sid, sport = f"s{i}", port + 40 + i
            env_i = {
                **env,
                "AFFINITY_SERVER_ID": sid,
                "AFFINITY_SERVER_LISTEN": f"127.0.0.1:{sport}",
                "AFFINITY_SERVER_URL": f"https://127.0.0.1:{sport}",
                "AFFINITY_REGISTRATION_TOKEN": registration_token(secret, sid),
            }
            procs.append(
                ChildProcess(
                    f"server {sid}",
                    ["serve", app, "--config", str(config), *log_args],
                    env=env_i,
                    log=logs / f"{sid}.log",
                    own_session=True,
                )
            )
            rows.append((sid, sport, procs[-1].pid))
        for (_, sport, _), proc in zip(rows, procs[1:], strict=True):
            url = f"https://127.0.0.1:{sport}{HEALTH_PATH}"
            wait_answering(url, proc, verify=verify, timeout=30, also=procs)
        # Until the referral has seen a server pass its check, assign answers 503: wait for
        # that, so that the commands printed below work at once.
        wait_answering(f"{referral_url}/v1/assign", referral, verify=verify, timeout=30, also=procs)
        _print_banner(directory, referral_url, referral.pid, ca, rows)
        while True:
            if not referral.alive():
                raise referral.failed(f"exited with code {referral.returncode}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping: draining the servers (Ctrl-C again to kill at once)...", flush=True)
        try:
            stop(procs[1:], 10.0)
            stop(procs[:1], 5.0)
        except KeyboardInterrupt:
            stop(procs, 0.0)
        print("stopped; no process left.", flush=True)
        return 0
    finally:
        stop(procs, 0.0)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on(*signals: signal.Signals) -> None:
    """Make ``signals`` stop everything as Ctrl-C does: what ``timeout``, systemd, Docker
    and CI send, and what a closed terminal sends."""
    for sig in signals:
        signal.signal(sig, _interrupt)


def _short(path: Path) -> Path:
    """The path relative to the working directory when inside it: printed lines stay short."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def affinity_command() -> str:
    """How to run ``affinity`` from a shell, as printed: the bare name when it is on ``PATH``
    and is this installation's, else this installation's script (or interpreter) by path."""
    script = Path(sys.executable).parent / "affinity"
    found = shutil.which("affinity")
    if found is not None and script.exists() and Path(found).resolve() == script.resolve():
        return "affinity"
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m affinity"


def _print_banner(
    directory: Path, referral: str, referral_pid: int, ca: Path, rows: list[tuple[str, int, int]]
) -> None:
    d = _short(directory)
    ca = _short(ca)
    affinity = affinity_command()
    lines = [
        "",
        f"affinity dev is running (logs in {d / 'logs'})",
        f"  referral   {referral}   pid {referral_pid}",
        *(f"  server {sid}  https://127.0.0.1:{sport}   pid {pid}" for sid, sport, pid in rows),
        "",
        "Ask for a server and a token:",
        f"  curl --cacert {ca} {referral}/v1/assign",
        "Follow the redirect like a browser (the token travels as a cookie):",
        f"  curl -L -b '' --cacert {ca} {referral}/go/",
        "Send requests with failover through the client library:",
        f"  {affinity} request --referral {referral} --cacert {ca} GET /",
        "",
        "Try next:",
        f"  kill -9 {rows[0][2]}      # kill {rows[0][0]}: clients move, the referral drops it",
        f'  curl --cacert {ca} -X POST -H "Authorization: Bearer $(cat {d / "admin-token"})" '
        f"{referral}/v1/servers/{rows[-1][0]}/drain",
        f'  curl --cacert {ca} -H "Authorization: Bearer $(cat {d / "admin-token"})" '
        f"{referral}/v1/servers",
        f"  {affinity} status --referral {referral} --cacert {ca} "
        f"--admin-token-file {d / 'admin-token'} --watch",
        f"  a browser on {referral}/dashboard (log in with the token in {d / 'admin-token'})",
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


def configure(p: argparse.ArgumentParser) -> None:
    """Add the options of ``affinity dev`` to its sub-parser."""
    p.add_argument("--dir", default=".affinity-dev", help="where certs, keys and logs go")
    p.add_argument("--port", type=int, default=8400, help="referral port; servers use port+41...")
    p.add_argument("--servers", type=int, default=3, help="how many app servers (default 3)")
    p.add_argument("--app", default=DEFAULT_APP, help="the AppServer to run, module:Class")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``affinity dev`` with parsed arguments."""
    if not 1 <= args.servers <= 20:
        raise ConfigError("expected 1 to 20 servers", key="--servers")
    log_args = [
        *(["--log-level", args.log_level] if "log_level" in args else []),
        *(["--log-format", args.log_format] if "log_format" in args else []),
    ]
    return run(
        Path(args.dir).resolve(), args.port, args.servers, args.app, str(Path.cwd()), log_args
    )
