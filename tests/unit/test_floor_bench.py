"""bench/floor_bench.py: a tiny run, its figures and its checks.

The benchmark measures per-message CPU floors (issue 7); here it runs on a few hundred
messages only, so the figures are checked for consistency, never for speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "floor_bench.py"
STAGES = {"produce", "store", "read", "decode"}


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--segment-mb", "8", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_json_figures_add_up(tmp_path: Path) -> None:
    done = run(
        tmp_path, "--count", "300", "--batch", "32", "--size", "200", "--repeat", "2", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["count"] == 288  # whole batches only
    assert set(result["us_per_msg"]) == STAGES
    for stage in STAGES:
        runs = result["runs"][stage]
        assert len(runs) == 2 and all(x > 0 for x in runs)
        assert min(runs) <= result["us_per_msg"][stage] <= max(runs)
    assert result["sum_us"] == pytest.approx(sum(result["us_per_msg"].values()), abs=0.01)
    cores = os.cpu_count() or 1
    assert result["cores"] == cores
    assert result["ceiling_msgs_per_s"] == pytest.approx(cores / result["sum_us"] * 1e6, rel=0.01)
    assert result["budget_us_at_rate"]["235000"] == pytest.approx(cores / 235_000 * 1e6, abs=0.01)
    assert list(tmp_path.iterdir()) == []  # the scratch store is removed


def test_table_names_every_stage(tmp_path: Path) -> None:
    done = run(tmp_path, "--count", "64", "--batch", "64", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    for stage in [*STAGES, "sum", "end-to-end ceiling"]:
        assert stage in done.stdout


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    done = run(tmp_path, "--count", "10", "--batch", "64")
    assert done.returncode == 2
    assert "--count >= --batch" in done.stderr
