"""The import rule of docs/ARCHITECTURE.md: protocol, transport, client and NameServer modules."""

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


BASE = [
    *sorted((ROOT / "fabric" / "protocol").glob("*.py")),
    ROOT / "fabric" / "errors.py",
    ROOT / "fabric" / "atomic.py",
]


@pytest.mark.parametrize("path", BASE, ids=lambda p: str(p.relative_to(ROOT)))
def test_base_layer_imports_only_stdlib_and_msgspec(path: Path) -> None:
    bad = {n for n in imports(path) if not allowed(n, ("msgspec", "fabric.protocol"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path",
    [
        ROOT / "fabric" / "transport.py",
        ROOT / "fabric" / "iothread.py",
        ROOT / "fabric" / "direct.py",
        ROOT / "fabric" / "loops.py",
    ],
    ids=lambda p: p.name,
)
def test_transport_layer_adds_only_zmq_and_loguru(path: Path) -> None:
    prefixes = (
        "msgspec",
        "zmq",
        "loguru",
        "uvloop",
        "fabric.protocol",
        "fabric.errors",
        "fabric.iothread",
        "fabric.loops",
        "fabric.transport",
    )
    bad = {n for n in imports(path) if not allowed(n, prefixes)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((ROOT / "nameserver").glob("*.py")), ids=lambda p: p.name)
def test_nameserver_never_imports_broker_or_clients(path: Path) -> None:
    forbidden = ("broker", "fabric.producer", "fabric.consumer", "fabric.admin")
    bad = {n for n in imports(path) if n.startswith(forbidden)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


# The client layer: base and transport below it, never a server.
CLIENT = sorted(
    [
        *(
            ROOT / "fabric" / name
            for name in (
                "__init__.py",
                "admin.py",
                "admin_messages.py",
                "aio.py",
                "client.py",
                "message.py",
                "producer.py",
                "routing.py",
                "selector.py",
                "sending.py",
                "trace.py",
                "transaction.py",
            )
        ),
        *(ROOT / "fabric" / "consumer").glob("*.py"),
    ]
)
_CLIENT_MODULES = (
    "fabric.protocol",
    "fabric.errors",
    "fabric.atomic",
    # Filters (pure: fabric.errors and the stdlib): consumers check expressions at subscribe.
    "fabric.filters",
    "fabric.transport",
    "fabric.iothread",
    "fabric.direct",
    "fabric.message",
    "fabric.routing",
    "fabric.selector",
    "fabric.client",
    "fabric.sending",
    "fabric.producer",
    "fabric.transaction",
    # Message trace (SPEC M21): producers and push consumers own a TraceDispatcher.
    "fabric.trace",
    "fabric.consumer",
    # Message queries and dead letters: fabric.admin's helper module.
    "fabric.admin_messages",
)


@pytest.mark.parametrize("path", CLIENT, ids=lambda p: str(p.relative_to(ROOT)))
def test_client_layer_imports_base_and_transport_only(path: Path) -> None:
    prefixes = ("msgspec", "zmq", "loguru", *_CLIENT_MODULES)
    bad = {n for n in imports(path) if not allowed(n, prefixes)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_selector_is_pure() -> None:
    path = ROOT / "fabric" / "selector.py"
    bad = {n for n in imports(path) if not allowed(n, ("fabric.protocol",))}
    assert not bad, f"selector.py imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", [ROOT / "fabric" / "message.py", ROOT / "fabric" / "protocol" / "records.py"]
)
def test_message_types_need_no_sockets(path: Path) -> None:
    prefixes = ("msgspec", "fabric.protocol", "fabric.errors")
    bad = {n for n in imports(path) if not allowed(n, prefixes)}
    assert not bad, f"{path.name} imports {sorted(bad)}"
