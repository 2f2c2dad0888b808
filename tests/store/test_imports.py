"""The storage layer has no network imports (STYLE habit 6): only stdlib, loguru, msgspec."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import broker.store

STORE_DIR = Path(broker.store.__file__).resolve().parent
PACKAGE = "broker.store"
THIRD_PARTY_ALLOWED = frozenset({"loguru", "msgspec"})


def _module_of(path: Path) -> str:
    rel = path.relative_to(STORE_DIR).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name a ``from ... import`` refers to."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _allowed(name: str) -> bool:
    top = name.split(".")[0]
    if name == PACKAGE or name.startswith(PACKAGE + "."):
        return True
    if top == "broker":  # broker.server, broker.processors, ... are layers above the store
        return False
    return top in sys.stdlib_module_names or top in THIRD_PARTY_ALLOWED


def forbidden_imports(source: str, importer: str, is_package: bool = False) -> list[str]:
    """Every import in ``source`` that the store may not make, as ``line: name``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module, node.level, importer, is_package)
            names = [target]
            if target in ("broker", ""):  # ``from broker import store`` names the submodule
                names = [f"{target}.{alias.name}".lstrip(".") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            names = [node.args[0].value]
        line = getattr(node, "lineno", 0)
        found.extend(f"{line}: {n}" for n in names if not _allowed(n))
    return found


def store_sources() -> list[Path]:
    return sorted(STORE_DIR.rglob("*.py"))


def test_store_sources_found() -> None:
    names = {p.name for p in store_sources()}
    assert {"__init__.py", "message_store.py", "record.py", "commitlog.py"} <= names


@pytest.mark.parametrize("path", store_sources(), ids=lambda p: p.name)
def test_store_module_imports_only_stdlib_loguru_msgspec(path: Path) -> None:
    bad = forbidden_imports(
        path.read_text(encoding="utf-8"), _module_of(path), path.name == "__init__.py"
    )
    assert not bad, f"{path} imports outside the storage layer: {bad}"


@pytest.mark.parametrize(
    "source",
    [
        "import zmq",
        "import zmq.asyncio",
        "from tornado import ioloop",
        "import fabric.transport",
        "from fabric.protocol import codes",
        "import nameserver",
        "import broker.server",
        "from broker import server",
        "from .. import server",
        "from ..processors import send",
        "import importlib\nimportlib.import_module('zmq')",
        "__import__('tornado.web')",
        "def f():\n    import zmq\n",
        "import numpy",
    ],
)
def test_checker_flags_forbidden_imports(source: str) -> None:
    assert forbidden_imports(source, "broker.store.commitlog"), source


@pytest.mark.parametrize(
    "source",
    [
        "import os, mmap, struct, zlib, threading",
        "from collections.abc import Callable",
        "from loguru import logger",
        "import msgspec.msgpack",
        "from .record import HEADER",
        "from . import record",
        "from broker.store.record import verify",
        "import broker.store.segments",
        "from broker import store",
    ],
)
def test_checker_accepts_allowed_imports(source: str) -> None:
    assert forbidden_imports(source, "broker.store.commitlog") == []
