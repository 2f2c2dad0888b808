"""The import rule of docs/ARCHITECTURE.md for the protocol, transport and NameServer modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
STDLIB = sys.stdlib_module_names


def imports(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
    return found


def allowed(name: str, prefixes: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    return top in STDLIB or top == "__future__" or name.startswith(prefixes)


BASE = [*sorted((ROOT / "fabric" / "protocol").glob("*.py")), ROOT / "fabric" / "errors.py"]


@pytest.mark.parametrize("path", BASE, ids=lambda p: str(p.relative_to(ROOT)))
def test_base_layer_imports_only_stdlib_and_msgspec(path: Path) -> None:
    bad = {n for n in imports(path) if not allowed(n, ("msgspec", "fabric.protocol"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path",
    [ROOT / "fabric" / "transport.py", ROOT / "fabric" / "iothread.py"],
    ids=lambda p: p.name,
)
def test_transport_layer_adds_only_zmq_and_loguru(path: Path) -> None:
    prefixes = ("msgspec", "zmq", "loguru", "fabric.protocol", "fabric.errors", "fabric.iothread")
    bad = {n for n in imports(path) if not allowed(n, prefixes)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((ROOT / "nameserver").glob("*.py")), ids=lambda p: p.name)
def test_nameserver_never_imports_broker_or_clients(path: Path) -> None:
    forbidden = ("broker", "fabric.producer", "fabric.consumer", "fabric.admin")
    bad = {n for n in imports(path) if n.startswith(forbidden)}
    assert not bad, f"{path.name} imports {sorted(bad)}"
