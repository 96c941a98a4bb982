"""The fenced code blocks of the docs, their ``doc-test`` markers, and how shown output is compared.

A block may carry a marker: an HTML comment on the line right above its
fence, ``<!-- doc-test: WHAT -->``, which tells ``tests/test_doc_blocks.py``
what the block is when that cannot be seen from the block alone:

``skip (reason)``
    not checked; the reason is required, and the skips are few.
``fragment of the block above``
    checked as part of the previous block of the same language on the page
    (Python: the two sources run as one; TOML: the two documents merged).
``in [section]``
    a TOML block that holds the keys of ``[section]`` without its header.
``answer METHOD /path [from Class] [STATUS] [(part)]``
    the JSON the block shows is (part of) what the test deployment answers
    to that request: the same keys at every level, values of the same types,
    with the status (default 200). Paths under ``/.well-known/affinity/`` go to
    an app server (the demo, or the server running ``Class`` of a Python
    block), others to the referral (with the admin token).
``settings NAME``
    a JSON shared settings document that the plugins must accept under NAME.
``output``
    an ``affinity`` command and what it prints: the test runs the command
    against the test deployment and compares its output line by line.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PAGES = (
    "README.md",
    "CONTRIBUTING.md",
    "PYPI.md",
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))),
    "plugins/README.md",
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "plugins").glob("*/PYPI.md"))),
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "plugins").glob("*/README.md"))),
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "examples").glob("*/README.md"))),
)
"""The pages whose blocks are checked."""

SHELL = frozenset({"", "sh", "shell", "bash", "console"})
"""Languages of blocks that show commands (and what they print): never run, only parsed."""

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
_SKIP = re.compile(r"skip \((.+)\)")
_IN = re.compile(r"in \[([\w.-]+)\]")
_ANSWER = re.compile(
    r"answer (GET|HEAD|POST|PUT|DELETE) (/\S*)(?: from ([A-Za-z_]\w*))?(?: ([1-5]\d\d))?"
    r"( \(part\))?"
)
_SETTINGS = re.compile(r"settings ([a-z][\w-]*)")
FRAGMENT = "fragment of the block above"


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text and its marker."""

    page: str
    line: int
    """The line of the opening fence, from 1."""
    lang: str
    text: str
    marker: str = ""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        found = _SKIP.fullmatch(self.marker)
        return found.group(1) if found else None

    @property
    def is_fragment(self) -> bool:
        return self.marker == FRAGMENT

    @property
    def section(self) -> str | None:
        found = _IN.fullmatch(self.marker)
        return found.group(1) if found else None

    @property
    def answer(self) -> Answer | None:
        found = _ANSWER.fullmatch(self.marker)
        if not found:
            return None
        method, path, cls, status, part = found.groups()
        return Answer(method, path, cls, int(status or 200), bool(part))

    @property
    def settings(self) -> str | None:
        found = _SETTINGS.fullmatch(self.marker)
        return found.group(1) if found else None

    @property
    def shows_output(self) -> bool:
        return self.marker == "output"

    def marker_error(self) -> str | None:
        """Why the marker is not one the test knows, or None."""
        if not self.marker:
            return None
        known = (
            self.skip_reason,
            self.is_fragment,
            self.section,
            self.answer,
            self.settings,
            self.shows_output,
        )
        if any(known):
            return None
        return f"{self.id}: unknown doc-test marker {self.marker!r} (see tests/docblocks.py)"


@dataclass(frozen=True)
class Answer:
    """What an ``answer`` marker names: the request whose answer the block shows."""

    method: str
    path: str
    app: str | None
    """The AppServer class (of a Python block) whose server answers; None: the demo's."""
    status: int
    part: bool
    """The block shows only some of the keys."""


def read_blocks(page: str) -> list[Block]:
    """The fenced blocks of one page, with their markers, in order."""
    return parse_blocks(page, (ROOT / page).read_text(encoding="utf-8"))


def parse_blocks(page: str, text: str) -> list[Block]:
    """The fenced blocks of markdown ``text`` (from ``page``), with their markers, in order."""
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{i + 1}: a code block is not closed")
        body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        above = _MARKER.match(lines[i - 1]) if i else None
        marker = above.group(1) if above else ""
        found.append(Block(page, i + 1, lang.lower(), "\n".join(body) + "\n", marker))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in read_blocks(page)]


def with_fragments(blocks: list[Block]) -> Iterator[tuple[Block, list[Block]]]:
    """Each block that is not a fragment, with the fragments after it (same page and language)."""
    parents: dict[tuple[str, str], tuple[Block, list[Block]]] = {}
    order: list[tuple[Block, list[Block]]] = []
    for block in blocks:
        key = (block.page, block.lang)
        if block.is_fragment:
            if key not in parents:
                raise ValueError(f"{block.id}: a fragment with no {block.lang} block above it")
            parents[key][1].append(block)
            continue
        entry = (block, [])
        parents[key] = entry
        order.append(entry)
    return iter(order)


# -- commands -------------------------------------------------------------------------------

_OPERATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")"})


def affinity_commands(block: Block) -> list[list[str]]:
    """The ``affinity`` command lines a shell block shows, each as its arguments after the name.

    Continuation lines are joined, a ``$ `` prompt is stripped (in a ``console``
    block only prompted lines are commands), comments are dropped, and a
    command may follow ``&&``, ``|`` or ``;``. Lines that are not shell (output,
    diagrams) are passed over unless they start with the command.
    """
    commands: list[list[str]] = []
    for line in _joined(block.text):
        text = line.strip()
        prompted = text.startswith("$ ")
        if block.lang == "console" and not prompted:
            continue
        text = text.removeprefix("$ ")
        if not re.match(r"(\S*/)?affinity\s", text) and " affinity " not in text:
            continue
        try:
            lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
        except ValueError:
            if text.startswith("affinity "):
                raise
            continue
        commands.extend(_commands_in(words))
    return commands


def _joined(text: str) -> Iterator[str]:
    pending = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _commands_in(words: list[str]) -> Iterator[list[str]]:
    start = True
    for i, word in enumerate(words):
        if word in _OPERATORS:
            start = True
            continue
        if start and (word == "affinity" or word.endswith("/bin/affinity")):
            rest = words[i + 1 :]
            end = next((j for j, w in enumerate(rest) if w in _OPERATORS), len(rest))
            yield rest[:end]
        start = False


_INLINE = re.compile(r"`(affinity [^`]*--[^`]*)`")


def inline_commands(page: str, text: str | None = None) -> list[tuple[str, list[str]]]:
    """The ``affinity ... --option`` commands written in inline code on a page (outside blocks).

    Optional parts in brackets are kept (``[--alg EdDSA]`` is parsed as given);
    a span with a placeholder in angle brackets or an ellipsis is passed over.
    """
    if text is None:
        text = (ROOT / page).read_text(encoding="utf-8")
    lines = text.splitlines()
    found: list[tuple[str, list[str]]] = []
    inside = False
    for number, line in enumerate(lines, 1):
        if _FENCE.match(line):
            inside = not inside
            continue
        if inside:
            continue
        for span in _INLINE.findall(line):
            if "<" in span or "..." in span:
                continue
            text = re.sub(r"\[([^\]]*)\]", r"\1", span)
            found.append((f"{page}:{number}", shlex.split(text)[1:]))
    return found


# -- shown output ----------------------------------------------------------------------------


def shown_json(block: Block) -> Any:
    """The JSON a block shows: the whole of a ``json`` block, else its lines that start with ``{``.

    With a ``(part)`` answer marker, a block that holds ``"key": value`` pairs
    without braces is read as an object.
    """
    if block.lang == "json":
        text = block.text.strip()
    else:
        text = "\n".join(line for line in block.text.splitlines() if line.startswith("{"))
    answer = block.answer
    if answer and answer.part and not text.startswith("{"):
        text = "{" + text + "}"
    return json.loads(text)


def shape_errors(shown: Any, real: Any, *, part: bool = False, where: str = "") -> list[str]:
    """How ``shown`` differs in shape from ``real``: keys at every level, and the types of values.

    Values themselves are examples (ids, counts, tokens) and are not compared.
    With ``part``, ``real`` may have keys that ``shown`` leaves out.
    """
    here = where or "the answer"
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{here}: shown an object, is {type(real).__name__}"]
        errors = [
            f"{here}: shows {key!r}, which the real answer lacks"
            for key in shown.keys() - real.keys()
        ]
        if not part:
            errors += [f"{here}: does not show {key!r}" for key in real.keys() - shown.keys()]
        for key in shown.keys() & real.keys():
            inner = f"{where}.{key}" if where else key
            errors += shape_errors(shown[key], real[key], part=part, where=inner)
        return errors
    if isinstance(shown, list):
        if not isinstance(real, list):
            return [f"{here}: shown a list, is {type(real).__name__}"]
        if not real:
            return []
        return [
            e for item in shown for e in shape_errors(item, real[0], part=part, where=f"{where}[]")
        ]
    if _kind(shown) != _kind(real):
        return [f"{here}: shown a {_kind(shown)} ({shown!r}), is a {_kind(real)} ({real!r})"]
    return []


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def line_errors(shown: list[str], real: list[str]) -> list[str]:
    """How printed lines differ from the lines a page shows.

    A line that holds JSON (or a Python literal) is compared by shape; in other
    lines ``...`` stands for any text and a server id (``s2``) for any server id.
    """
    if len(shown) != len(real):
        return [f"shows {len(shown)} lines, prints {len(real)}: {real!r}"]
    errors: list[str] = []
    for number, (want, got) in enumerate(zip(shown, real, strict=True), 1):
        want_value, got_value = _literal(want), _literal(got)
        if want_value is not None and got_value is not None:
            errors += shape_errors(want_value, got_value, where=f"line {number}")
            continue
        pattern = re.escape(want).replace(r"\.\.\.", ".*")
        pattern = re.sub(r"\bs\d+\b", r"s\\d+", pattern)
        if not re.fullmatch(pattern, got):
            errors.append(f"line {number}: shows {want!r}, prints {got!r}")
    return errors


def _literal(text: str) -> Any:
    text = text.strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
