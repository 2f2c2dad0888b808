"""fabric.atomic.write_atomic: the whole new content or the old, never a mix."""

from __future__ import annotations

from pathlib import Path

from fabric.atomic import write_atomic


def test_write_atomic_creates_the_directory_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    write_atomic(str(path), b"first")
    assert path.read_bytes() == b"first"
    assert not (path.parent / "state.json.tmp").exists()


def test_write_atomic_replaces_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"a much longer old content")
    write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomic_writes_large_data_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB: os.write may take it in several calls
    path = tmp_path / "big"
    write_atomic(str(path), data)
    assert path.read_bytes() == data
