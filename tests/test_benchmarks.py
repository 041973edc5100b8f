"""Every benchmark script still runs: a seconds-long ``--quick`` smoke run of each.

These check that the scripts work and print their comparison; they assert no timing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("bench_*.py"))


def test_every_benchmark_is_covered() -> None:
    assert set(SCRIPTS) >= {
        "bench_onehot.py",
        "bench_subset.py",
        "bench_permutation.py",
        "bench_trees.py",
        "bench_solvers.py",
        "bench_diagnose.py",
        "bench_advisor.py",
        "bench_assignment.py",
        "bench_scaling.py",
        "bench_tree_gumbel_rao.py",
        "bench_graph_layout.py",
        "bench_listops.py",
        "bench_l2x.py",
        "bench_vae.py",
        "bench_monitor.py",
        "bench_reinforce.py",
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run(script: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Each prints its comparison: a ratio like "0.96x" or "ratio ...", or the advisor's pick.
    assert re.search(r"\d\.?\d*x\b|ratio|Recommendation", result.stdout), result.stdout[-2000:]


def test_subset_few_subsets_mode_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_subset.py"), "--few-subsets", "--quick"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "definition / column" in result.stdout and re.search(r"\d\.\d\dx", result.stdout)
