"""Every code block in the docs does what it shows, copied as written.

The blocks of README.md, CONTRIBUTING.md, the PYPI.md long descriptions, docs/*.md,
plugins/README.md, plugins/*/README.md and examples/*/README.md are checked by language (markers:
``tests/docblocks.py``):

- ``python``: run. An ``AppServer`` subclass is also served for real by
  ``affinity serve file.py:Class`` (service: its ``name``, else its class name in
  lower case) and each of its routes and its health answer without a 5xx; a
  ``ReferralServer`` subclass runs as a second referral; a ``Policy`` chooses on a
  small pool; hook implementations are registered and configured as a plugin.
  Clients reach the test deployment: the referral URLs and CA a block names are
  replaced by the deployment's. A ``print(...)  # shown`` must print the shown.
- ``toml``: a whole affinity config is loaded and checked as ``affinity check``
  does; a ``pyproject.toml`` table must name the plugin entry-point group.
- ``json``: parsed; a protocol answer is compared, key by key, with the real one;
  a shared settings document must be accepted by its plugin.
- shell: every ``affinity`` command line parses with the real parser (not run),
  except a block marked ``output``, which runs and must print what it shows.
- ``promql``: the metrics and labels it names are in docs/metrics.md.

One deployment serves the module: a referral, a second referral running the
docs' ``ReferralServer`` subclass, the demo app (``affinity.demo:Hello``) as
service ``web``, and one server per ``AppServer`` subclass of the docs. The
IP filter denies loopback under ``/forbidden`` there, for the answer the
ipfilter README shows.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import affinity
import affinity.client
from affinity.cli.main import parser
from affinity.config import load
from affinity.errors import ChildFailed
from affinity.models import AssignRequest, Pool, Server, SharedSettings
from affinity.plugin.manager import ENTRY_POINT_GROUP, PluginManager
from affinity.plugin.policy import Policy
from affinity.process import ChildProcess
from affinity.protocol import HEALTH_PATH
from affinity.referral.app import ReferralServer
from affinity.server.base import AppServer
from affinity.testing import HELLO_APP, Deployment, free_port, wait_until
from tests.docblocks import (
    PAGES,
    ROOT,
    SHELL,
    Answer,
    Block,
    affinity_commands,
    all_blocks,
    inline_commands,
    line_errors,
    parse_blocks,
    shape_errors,
    shown_json,
    with_fragments,
)

BLOCKS = all_blocks()
GROUPS = list(with_fragments(BLOCKS))
KNOWN = SHELL | {"python", "toml", "json", "promql"}
MAX_SKIPS = 3
DEMO = "s1"
"""The id of the demo server (service ``web``)."""


def _group_ids(groups: Sequence[tuple[Block, list[Block]]]) -> list[str]:
    return [block.id for block, _ in groups]


def _of(lang: str) -> list[tuple[Block, list[Block]]]:
    return [(b, f) for b, f in GROUPS if b.lang == lang and b.skip_reason is None]


def _source(block: Block, fragments: list[Block]) -> str:
    return "\n".join(b.text for b in (block, *fragments))


# -- the deployment ---------------------------------------------------------------------------


def _classes_in(source: str) -> list[tuple[str, str]]:
    """(class name, base name) of each top-level class of a source based on a server class."""
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            if name in ("AppServer", "ReferralServer"):
                found.append((node.name, name))
    return found


def _service_of(cls_name: str, source: str) -> str:
    """The service a docs' AppServer class is served in: its ``name``, else its class name."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for item in node.body:
                if (
                    isinstance(item, ast.Assign)
                    and [getattr(t, "id", None) for t in item.targets] == ["name"]
                    and isinstance(item.value, ast.Constant)
                ):
                    return str(item.value.value)
    return cls_name.lower()


@dataclass
class Fleet:
    """The module's deployment and what runs on it."""

    d: Deployment
    servers: dict[str, tuple[str, str]] = field(default_factory=dict)
    """AppServer class name -> (server id, service); the demo app's under ``"demo"``."""
    referrals: dict[str, str] = field(default_factory=dict)
    """ReferralServer class name -> its URL."""
    failed: dict[str, str] = field(default_factory=dict)
    """Class name -> why its process did not come up."""

    @property
    def urls(self) -> list[str]:
        """The referrals that came up."""
        down = {self.referrals[name] for name in self.failed if name in self.referrals}
        return [url for url in self.d.referral_urls if url not in down]

    def wait(self, name: str, url: str, proc: ChildProcess) -> None:
        try:
            self.d.wait_http(url, proc)
        except ChildFailed as exc:
            self.failed[name] = str(exc)

    def up(self, name: str) -> None:
        """Fail the calling test if the process of the class did not come up."""
        if name in self.failed:
            pytest.fail(f"the server of {name} did not come up: {self.failed[name]}")

    def server_url(self, cls_name: str) -> str:
        return self.d.server_urls[self.servers[cls_name][0]]

    def answer(self, answer: Answer) -> Any:
        """The JSON answer to the request an ``answer`` marker names, with the status it names."""
        method, path = answer.method, answer.path
        if path.startswith("/.well-known/affinity/"):
            with self.d.client() as c:
                r = c.request(method, self.server_url(answer.app or "demo") + path)
        else:
            with self.d.admin() as c:
                r = c.request(method, path)
        assert r.status_code == answer.status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def patch_clients(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``affinity.Client`` and ``AsyncClient`` reach this deployment, whatever a block names."""
        urls, ca = self.urls, str(self.d.ca)

        def local(referrals: str | Sequence[str], options: dict[str, Any]) -> Any:
            if options.get("verify", True) is not False:
                options["verify"] = ca
            if isinstance(referrals, str):
                return urls[0]
            return [urls[i % len(urls)] for i in range(len(referrals))]

        class Client(affinity.client.Client):
            def __init__(self, referrals: str | Sequence[str], **options: Any) -> None:
                super().__init__(local(referrals, options), **options)

        class AsyncClient(affinity.client.AsyncClient):
            def __init__(self, referrals: str | Sequence[str], **options: Any) -> None:
                super().__init__(local(referrals, options), **options)

        for module in (affinity, affinity.client):
            monkeypatch.setattr(module, "Client", Client)
            monkeypatch.setattr(module, "AsyncClient", AsyncClient)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("doc-blocks")
    apps: dict[str, tuple[str, str, Path]] = {}  # class -> (kind, service, file)
    for block, fragments in _of("python"):
        source = _source(block, fragments)
        for name, kind in _classes_in(source):
            assert name not in apps and name != "demo", f"{block.id}: a second class {name}"
            stem = re.sub(r"\W", "_", block.id.lower())
            path = directory / f"doc_{stem}.py"
            path.write_text(source, encoding="utf-8")
            apps[name] = (kind, _service_of(name, source), path)
    services = "".join(
        f'[services.{service}]\npolicy = "round_robin"\n'
        for service in sorted({"web"} | {s for k, s, _ in apps.values() if k == "AppServer"})
    )
    forbidden = '[[plugins.ipfilter.paths]]\nprefix = "/forbidden"\ndeny = ["127.0.0.0/8"]\n'
    with Deployment(directory / "deployment", services=services, extra_config=forbidden) as d:
        f = Fleet(d)
        d.start_referral(wait=False)
        for name, (kind, _, path) in apps.items():
            if kind == "ReferralServer":
                d.start_referral(wait=False, port=free_port(), app=f"{path}:{name}")
                f.referrals[name] = d.referral_urls[-1]
        f.servers["demo"] = (DEMO, "web")
        d.start_server(DEMO, app=HELLO_APP, wait=False)
        for name, (kind, service, path) in apps.items():
            if kind == "AppServer":
                sid = f"{service}1"
                f.servers[name] = (sid, service)
                d.start_server(
                    sid, app=f"{path}:{name}", wait=False, env={"AFFINITY_SERVER_SERVICE": service}
                )
        d.wait_http(f"{d.referral_url}/healthz", d.referrals[0])
        d.wait_http(d.server_urls[DEMO] + HEALTH_PATH, d.servers[DEMO])
        # A block whose server does not come up fails its own test, not the others.
        for name, url in f.referrals.items():
            f.wait(name, f"{url}/healthz", d.referrals[d.referral_urls.index(url)])
        for name, (sid, _) in f.servers.items():
            f.wait(name, d.server_urls[sid] + HEALTH_PATH, d.servers[sid])
        wanted = {sid for name, (sid, _) in f.servers.items() if name not in f.failed}
        for url in f.urls:
            wait_until(lambda url=url: d.assignable(url) >= wanted, 20, what="servers assignable")
        yield f


# -- the inventory ----------------------------------------------------------------------------


def test_every_block_is_one_the_test_checks() -> None:
    assert len(PAGES) > 15 and len(BLOCKS) > 40, "the pages were not found"
    errors = [e for b in BLOCKS if (e := b.marker_error())]
    errors += [
        f"{b.id}: no check for language {b.lang!r}; mark it <!-- doc-test: skip (reason) -->"
        for b in BLOCKS
        if b.lang not in KNOWN and b.skip_reason is None
    ]
    errors += [
        f"{b.id}: marked {b.marker!r}, which fits no {b.lang or 'plain'} block"
        for b in BLOCKS
        if (b.settings and b.lang != "json")
        or (b.section and b.lang != "toml")
        or (b.shows_output and b.lang not in SHELL)
        or (b.answer and b.lang not in SHELL | {"json"})
    ]
    assert not errors, "\n".join(errors)
    skips = [f"{b.id}: {b.skip_reason}" for b in BLOCKS if b.skip_reason]
    assert len(skips) <= MAX_SKIPS, "too many blocks skipped:\n" + "\n".join(skips)


# -- python -----------------------------------------------------------------------------------

PYTHON = _of("python")


@pytest.mark.parametrize(("block", "fragments"), PYTHON, ids=_group_ids(PYTHON))
def test_python_block_runs(
    block: Block,
    fragments: list[Block],
    fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = _source(block, fragments)
    monkeypatch.chdir(tmp_path)
    fleet.patch_clients(monkeypatch)
    module = types.ModuleType("doc_" + re.sub(r"\W", "_", block.id.lower()))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, block.id, "exec"), module.__dict__)
    printed = capsys.readouterr().out.splitlines()

    shown = re.findall(r"^\s*print\(.*\)\s*#\s*(.+?)\s*$", source, re.M)
    errors = line_errors(shown, printed[: len(shown)]) if shown else []
    assert not errors, f"{block.id} prints otherwise than it shows:\n" + "\n".join(errors)

    classes = [
        v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
    ]
    for cls in classes:
        if issubclass(cls, AppServer):
            check_app_server(fleet, cls)
        elif issubclass(cls, ReferralServer):
            check_referral(fleet, cls)
        elif issubclass(cls, Policy):
            check_policy(cls)
    if any(hasattr(v, "affinity_impl") for v in vars(module).values()):
        check_plugin(module, [c for c in classes if issubclass(c, Policy)], tmp_path)


def _added_routes(app: Any, base_app: Any) -> set[tuple[str, str]]:
    """(method, path) of the routes ``app`` has and ``base_app`` has not."""

    def routes(a: Any) -> set[tuple[str, str]]:
        return {(m, "/" + r.path) for r in a.router.routes for m in r.methods}

    return routes(app) - routes(base_app)


def _call(client: Any, method: str, url: str, **kwargs: Any) -> Any:
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return client.request(method, re.sub(r"<[^>]+>", "1", url), **kwargs)


def check_app_server(fleet: Fleet, cls: type[AppServer]) -> None:
    """The server of the class answers each of its routes and its health without a 5xx."""
    fleet.up(cls.__name__)
    sid, service = fleet.servers[cls.__name__]
    config = load(
        fleet.d.config, env={"AFFINITY_SERVER_ID": sid, "AFFINITY_SERVER_SERVICE": service}
    )
    routes = _added_routes(cls(config).app, AppServer(config).app)
    assert routes, f"{cls.__name__} serves no route of its own"
    url = fleet.server_url(cls.__name__)
    headers = {"Affinity-Token": fleet.d.token(sid, service)}
    with fleet.d.client(headers=headers) as c:
        for method, path in sorted(routes):
            r = _call(c, method, url + path)
            assert r.status_code < 500, f"{cls.__name__}: {method} {path}: {r.status_code} {r.text}"
            assert r.headers["Affinity-Server"] == sid
        health = c.get(url + HEALTH_PATH)
    assert health.status_code < 500, f"{cls.__name__}: health {health.status_code} {health.text}"
    assert health.json()["server"] == sid


def check_referral(fleet: Fleet, cls: type[ReferralServer]) -> None:
    """The referral of the class answers its own routes without a 5xx, and assigns."""
    fleet.up(cls.__name__)
    config = load(fleet.d.config, env={})
    routes = _added_routes(cls(config).create_app(), ReferralServer(config).create_app())
    url = fleet.referrals[cls.__name__]
    with fleet.d.admin(url) as c:
        for method, path in sorted(routes):
            r = _call(c, method, url + path)
            assert r.status_code < 500, f"{cls.__name__}: {method} {path}: {r.status_code} {r.text}"
        assigned = c.get("/v1/assign")
    assert assigned.status_code == 200, assigned.text


def _pool() -> Pool:
    servers = {
        sid: Server(id=sid, service="web", url=f"https://{sid}.example.test")
        for sid in ("s1", "s2", "s3")
    }
    return Pool.build("web", servers)


def check_policy(cls: type[Policy], policy: Policy | None = None) -> None:
    """The policy chooses an assignable server it was not told to avoid, and none when all are."""
    policy = policy or cls()
    pool = _pool()
    for avoid in (frozenset(), frozenset({"s1"}), frozenset({"s1", "s3"})):
        for client in ("c1", "c2", "c3"):
            chosen = policy.choose(
                pool, AssignRequest(service="web", client_id=client, avoid=avoid)
            )
            assert chosen in pool.assignable and chosen.id not in avoid, (avoid, chosen)
    everything = frozenset(pool.servers)
    assert (
        policy.choose(pool, AssignRequest(service="web", client_id="c", avoid=everything)) is None
    )


def check_plugin(module: types.ModuleType, policies: list[type[Policy]], tmp_path: Path) -> None:
    """The module registers as a plugin; its options table and its policies are configured."""
    manager = PluginManager(env={}, plugins=[module])
    lines = []
    declare = getattr(module, "affinity_declare_options", None)
    if declare is not None:
        table, options = declare()
        lines.append(f"[plugins.{table}]\n")
    lines += [f'[services.{p.name}]\npolicy = "{p.name}"\n' for p in policies]
    path = tmp_path / "plugin.toml"
    path.write_text("".join(lines), encoding="utf-8")
    config = load(path, env={})
    manager.configure(config)
    if declare is not None:
        assert isinstance(config.plugin_options(table, options), options)
    for cls in policies:
        policy = manager.make_policy(cls.name, config)
        assert isinstance(policy, cls)
        check_policy(cls, policy)


# -- toml -------------------------------------------------------------------------------------

TOML = _of("toml")
PYPROJECT = frozenset({"project", "build-system", "tool"})


@pytest.mark.parametrize(("block", "fragments"), TOML, ids=_group_ids(TOML))
def test_toml_block_is_valid(block: Block, fragments: list[Block], tmp_path: Path) -> None:
    text = _source(block, fragments)
    if block.section:
        text = f"[{block.section}]\n{text}"
    data = tomllib.loads(text)
    if PYPROJECT & data.keys():
        groups = data["project"]["entry-points"]
        assert set(groups) == {ENTRY_POINT_GROUP}, f"entry points of {set(groups)}"
        for name, target in groups[ENTRY_POINT_GROUP].items():
            assert re.fullmatch(r"[A-Za-z_][\w.]*(:[\w.]+)?", target), (name, target)
        return
    path = tmp_path / "affinity.toml"
    path.write_text(text, encoding="utf-8")
    config = load(path, env={})
    manager = PluginManager(env={})
    manager.configure(config)  # as affinity check does
    for service in config.services:
        manager.make_policy(service, config)


# -- json -------------------------------------------------------------------------------------

JSON = [b for b in BLOCKS if (b.lang == "json" or b.answer) and b.skip_reason is None]


@pytest.mark.parametrize("block", JSON, ids=[b.id for b in JSON])
def test_json_block_is_what_is_answered(block: Block, request: pytest.FixtureRequest) -> None:
    shown = shown_json(block)
    answer = block.answer
    if answer is not None:
        fleet: Fleet = request.getfixturevalue("fleet")
        real = fleet.answer(answer)
        errors = shape_errors(shown, real, part=answer.part)
        assert not errors, f"{block.id} against {answer.method} {answer.path}:\n" + "\n".join(
            errors
        )
    if block.settings is not None:
        manager = PluginManager(env={})
        manager.configure(load(None, env={}))
        manager.check_settings(SharedSettings(name=block.settings, version=1, value=shown))


# -- shell ------------------------------------------------------------------------------------

COMMANDS = [
    (f"{b.id}:{' '.join(argv)}", argv)
    for b in BLOCKS
    if b.lang in SHELL and b.skip_reason is None
    for argv in affinity_commands(b)
] + [(f"{where}:{' '.join(argv)}", argv) for page in PAGES for where, argv in inline_commands(page)]


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS], ids=[i for i, _ in COMMANDS])
def test_affinity_command_parses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        args = parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"affinity {shlex.join(argv)}: {capsys.readouterr().err}")
    assert args.command == argv[0]


def test_shell_blocks_show_commands() -> None:
    assert len(COMMANDS) > 10, "the commands of the docs were not found"


OUTPUT = [b for b in BLOCKS if b.shows_output]
_LOCAL = {"--referral", "--cacert"}


@pytest.mark.parametrize("block", OUTPUT, ids=[b.id for b in OUTPUT])
def test_command_prints_what_the_block_shows(block: Block, fleet: Fleet) -> None:
    command, *shown = block.text.splitlines()
    argv = shlex.split(command)
    assert argv[0] == "affinity", command
    local = {"--referral": fleet.urls[0], "--cacert": str(fleet.d.ca)}
    argv = [local[argv[i - 1]] if argv[i - 1] in _LOCAL else a for i, a in enumerate(argv)]
    env = {k: v for k, v in fleet.d.env.items() if not k.startswith("AFFINITY_")}
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    errors = line_errors(shown, done.stdout.splitlines())
    assert not errors, f"{block.id}:\n" + "\n".join(errors)


# -- promql -----------------------------------------------------------------------------------

_METRIC_ROW = re.compile(r"^\| `(affinity_[a-z_]+)` \| \w+ \|\s*([a-z_, ]*?)\s*\|", re.M)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "promql"], ids=lambda b: b.id)
def test_promql_names_documented_metrics(block: Block) -> None:
    rows = {
        name: {label.strip() for label in labels.split(",") if label.strip()}
        for name, labels in _METRIC_ROW.findall((ROOT / "docs" / "metrics.md").read_text())
    }
    for match in re.finditer(r"(affinity_\w+)(\{[^}]*\})?", block.text):
        name = re.sub(r"_(bucket|sum|count)$", "", match.group(1))
        name = match.group(1) if match.group(1) in rows else name
        assert name in rows, f"{block.id}: {match.group(1)} is no documented metric"
        labels = set(re.findall(r"(\w+)\s*=~?", match.group(2) or ""))
        assert labels <= rows[name] | {"le"}, (
            f"{block.id}: {name} has no label {labels - rows[name]}"
        )
    for grouping in re.findall(r"by \(([^)]*)\)", block.text):
        names = {n.strip() for n in grouping.split(",")}
        metrics = [rows[m] for m in re.findall(r"affinity_\w+", block.text) if m in rows]
        assert all(names <= labels for labels in metrics), f"{block.id}: by ({grouping})"


# -- the reader itself --------------------------------------------------------------------------

PAGE = """\
Text.

```python
x = 1
```

<!-- doc-test: fragment of the block above -->
```python
assert x == 1
```

- a list item:

  <!-- doc-test: in [health] -->
  ```toml
  fall = 3
  ```

<!-- doc-test: answer GET /v1/servers from Shop 403 (part) -->
```json
"services": {}
```

```console
$ affinity status --referral https://r.example \\
    --json   # the document
{"servers": []}
$ export X=1 && affinity check --config a.toml | cat
```

<!-- doc-test: skip (a diagram) -->
```mermaid
graph
```

Run `affinity keys generate --file k.json [--alg EdDSA]`, not `affinity serve <app> --x`.
"""


def test_the_reader_finds_blocks_markers_fragments_and_commands() -> None:
    blocks = parse_blocks("page.md", PAGE)
    assert [(b.line, b.lang) for b in blocks] == [
        (3, "python"),
        (8, "python"),
        (15, "toml"),
        (20, "json"),
        (24, "console"),
        (32, "mermaid"),
    ]
    groups = list(with_fragments(blocks))
    assert [(b.line, [f.line for f in fs]) for b, fs in groups][:2] == [(3, [8]), (15, [])]
    assert blocks[2].section == "health" and blocks[2].text == "fall = 3\n"
    assert blocks[3].answer == Answer("GET", "/v1/servers", "Shop", 403, True)
    assert shown_json(blocks[3]) == {"services": {}}
    assert affinity_commands(blocks[4]) == [
        ["status", "--referral", "https://r.example", "--json"],
        ["check", "--config", "a.toml"],
    ]
    assert blocks[5].skip_reason == "a diagram"
    assert [b.marker_error() for b in blocks] == [None] * 6
    assert Block("p", 1, "", "", "answer GET servers").marker_error()
    assert inline_commands("page.md", PAGE) == [
        ("page.md:36", ["keys", "generate", "--file", "k.json", "--alg", "EdDSA"])
    ]
    with pytest.raises(ValueError, match="no python block above"):
        list(with_fragments(blocks[1:]))


def test_shown_output_is_compared_by_shape() -> None:
    assert shape_errors({"a": 1, "b": {"c": "x"}}, {"a": 2.5, "b": {"c": "y"}}) == []
    assert shape_errors({"a": 1}, {"a": 1, "b": 2}) == ["the answer: does not show 'b'"]
    assert shape_errors({"a": 1}, {"a": 1, "b": 2}, part=True) == []
    assert shape_errors({"a": [{"b": True}]}, {"a": [{"b": 1}]}) == [
        "a[].b: shown a boolean (True), is a number (1)"
    ]
    assert (
        line_errors(["200 OK", "Server: s2", '{"n": 1}'], ["200 OK", "Server: s17", '{"n":3}'])
        == []
    )
    assert line_errors(["id: ..."], ["id: abc"]) == []
    assert line_errors(["200 OK"], ["404 Not Found"]) == [
        "line 1: shows '200 OK', prints '404 Not Found'"
    ]
    assert line_errors(["{'a': 1}"], ['{"b": 1}']) != []
    assert line_errors(["a"], ["a", "b"]) != []
