"""The protocol core (``traft/_core``) is pure and synchronous: no I/O, no
Trio, no stores or transports, no clock and no global randomness. Time comes
in as ``now`` arguments and randomness from the ``rng`` it is handed, which
is what makes the core tests deterministic.

Checked by parsing every module under ``traft/_core`` with ``ast`` (so an
import hidden in a function body counts too), and by importing each one."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

CORE_DIR = Path(__file__).resolve().parents[1] / "traft" / "_core"
CORE_PACKAGE = "traft._core"

# Third-party and stdlib modules that mean I/O, concurrency or a runtime.
FORBIDDEN_MODULES = frozenset({
    "trio", "trio_websocket", "sqlite3", "socket", "ssl", "selectors", "asyncio",
    "threading", "multiprocessing", "subprocess", "http", "urllib", "secrets",
})
# traft modules the core may use: value types and its own subpackage.
ALLOWED_TRAFT_MODULES = frozenset({
    "traft._types", "traft._messages", "traft._errors", "traft._observations",
})
# Clock readers in ``time``/``datetime``.
CLOCK_ATTRIBUTES = frozenset({
    "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
    "process_time", "sleep", "now", "utcnow", "today",
})
# The one name of ``random`` the core may touch: the Random type, for its
# ``rng`` parameter. Module-level functions (random.random, random.choice,
# random.seed...) use hidden global state.
RANDOM_ALLOWED = frozenset({"Random"})


def core_modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(CORE_DIR.glob("*.py")):
        stem = path.stem
        name = CORE_PACKAGE if stem == "__init__" else f"{CORE_PACKAGE}.{stem}"
        found.append((name, path))
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute name of the module an ImportFrom reads from."""
    if node.level == 0:
        return node.module or ""
    package = module if module == CORE_PACKAGE else module.rsplit(".", 1)[0]
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _module_allowed(name: str) -> str | None:
    """None if the core may import ``name``, else the reason it may not."""
    top = name.split(".")[0]
    if top in FORBIDDEN_MODULES:
        return f"imports {name}"
    if top == "traft":
        if name == CORE_PACKAGE or name.startswith(CORE_PACKAGE + "."):
            return None
        if name in ALLOWED_TRAFT_MODULES:
            return None
        return f"imports {name} (only {sorted(ALLOWED_TRAFT_MODULES)} and traft._core are pure)"
    return None


def impurities(module: str, source: str) -> list[str]:
    """Every import or call in ``source`` that would make the core impure."""
    tree = ast.parse(source)
    problems: list[str] = []
    aliases: dict[str, str] = {}  # local name -> module for time/datetime/random

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (why := _module_allowed(alias.name)) is not None:
                    problems.append(f"line {node.lineno}: {why}")
                if alias.name in ("time", "random", "datetime"):
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            # ``from . import _log``: the names are modules; otherwise the
            # target is, and the names are attributes of it.
            imported = ([f"{target}.{a.name}" for a in node.names] if node.module is None
                        else [target])
            for name in imported:
                if (why := _module_allowed(name)) is not None:
                    problems.append(f"line {node.lineno}: {why}")
            for alias in node.names:
                if target == "time" and alias.name in CLOCK_ATTRIBUTES:
                    problems.append(f"line {node.lineno}: imports time.{alias.name}")
                if target == "random" and alias.name not in RANDOM_ALLOWED:
                    problems.append(f"line {node.lineno}: imports random.{alias.name}")
                if target == "datetime":
                    aliases[alias.asname or alias.name] = "datetime"

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        root: ast.expr = node.value
        while isinstance(root, ast.Attribute):  # datetime.datetime.now
            root = root.value
        if not isinstance(root, ast.Name):
            continue
        origin = aliases.get(root.id)
        direct = node.value is root
        if origin == "time" and direct and node.attr in CLOCK_ATTRIBUTES:
            problems.append(f"line {node.lineno}: uses time.{node.attr}")
        elif origin == "datetime" and node.attr in CLOCK_ATTRIBUTES:
            problems.append(f"line {node.lineno}: uses datetime clock {node.attr}")
        elif origin == "random" and direct and node.attr not in RANDOM_ALLOWED:
            problems.append(f"line {node.lineno}: uses module-level random.{node.attr}")
    return problems


def test_core_package_has_the_expected_modules() -> None:
    names = {name for name, _ in core_modules()}
    for expected in ("_raft", "_log", "_progress", "_quorum", "_membership", "_ready"):
        assert f"{CORE_PACKAGE}.{expected}" in names


@pytest.mark.parametrize(("module", "path"), core_modules(), ids=lambda v: str(v).rsplit("/")[-1])
def test_core_module_is_pure(module: str, path: Path) -> None:
    importlib.import_module(module)  # it must at least import
    problems = impurities(module, path.read_text(encoding="utf-8"))
    assert not problems, f"{path.name} is not pure:\n" + "\n".join(problems)


# The checker must itself catch what it claims to: otherwise the test above
# passes vacuously.
@pytest.mark.parametrize("source", [
    "import trio",
    "import trio.lowlevel",
    "from trio import sleep",
    "import trio_websocket",
    "import sqlite3",
    "import socket as s",
    "def f():\n    import socket",
    "from .. import _node",
    "from .._inmem_store import InmemStore",
    "from .._node import Node",
    "from ..testing import Cluster",
    "import traft._transport",
    "import traft",
    "import time\nx = time.time()",
    "import time\nx = time.monotonic()",
    "import time as clock\nx = clock.monotonic()",
    "from time import monotonic",
    "import random\nx = random.random()",
    "import random\nrandom.seed(1)",
    "import random as r\nx = r.choice([1])",
    "from random import randint",
    "import datetime\nx = datetime.datetime.now()",
    "from datetime import datetime\nx = datetime.now()",
])
def test_purity_checker_catches_violations(source: str) -> None:
    assert impurities(f"{CORE_PACKAGE}._raft", source)


@pytest.mark.parametrize("source", [
    "import random\ndef f(rng: random.Random) -> None: ...",
    "from random import Random",
    "import logging\nimport enum\nfrom collections import deque",
    "from .._types import Log\nfrom .._messages import AppendEntries",
    "from ._log import RaftLog\nfrom . import _quorum",
    "import cbor2",
])
def test_purity_checker_allows_pure_code(source: str) -> None:
    assert impurities(f"{CORE_PACKAGE}._raft", source) == []
