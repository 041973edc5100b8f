"""Two CPU processes under torchrun compute what one process with the same global batch does,
and the two-process checkpoint resumes in one process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pickgrad.experiments import get_experiment, run_experiment

EXPERIMENT = get_experiment("graph-layout")
FLAGS = [
    "--quick", "--no-progress", "--methods", "tree", "--estimators", "gumbel-relaxed", "nvil",
    "--steps", "12", "--eval-every", "4", "--checkpoint-every", "8",
]  # fmt: skip


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(a), abs(b))


def _assert_close_runs(a: list[dict], b: list[dict]) -> None:
    assert [(r["method"], r["estimator"]) for r in a] == [(r["method"], r["estimator"]) for r in b]
    for run_a, run_b in zip(a, b, strict=True):
        assert len(run_a["curve"]) == len(run_b["curve"])
        for point_a, point_b in zip(run_a["curve"], run_b["curve"], strict=True):
            assert point_a.keys() == point_b.keys()
            bad = {
                k: (point_a[k], point_b[k]) for k in point_a if not _close(point_a[k], point_b[k])
            }
            assert not bad, (run_a["estimator"], point_a["step"], bad)
        for key, value in run_a["test"].items():
            assert _close(value, run_b["test"][key]), (key, value, run_b["test"][key])


def test_two_processes_match_one_process_and_resume_in_one(tmp_path: Path) -> None:
    cache, two = tmp_path / "cache", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PICKGRAD_CACHE": str(cache)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "pickgrad", "experiment", "graph-layout", *FLAGS, "--out", str(two),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = json.loads((two / "results.json").read_text())
    assert distributed["config"]["shards"] == 2

    # One process, the same global batch split into the same two shards.
    config = dataclasses.replace(
        EXPERIMENT.default_config(quick=True),
        methods=("tree",), estimators=("gumbel-relaxed", "nvil"), steps=12, eval_every=4,
        checkpoint_every=8, shards=2, progress=False,
    )  # fmt: skip
    single = run_experiment(EXPERIMENT, config, tmp_path / "one", cache_dir=cache)
    _assert_close_runs(distributed["runs"], single["runs"])

    # The two-process checkpoint (step 8) resumes in this one process and ends the same.
    for run in ("tree__gumbel-relaxed__seed0", "tree__nvil__seed0"):
        (two / "runs" / run / "result.json").unlink()
    resumed = run_experiment(EXPERIMENT, config, two, cache_dir=cache, resume=True)
    _assert_close_runs(distributed["runs"], resumed["runs"])


@pytest.mark.parametrize("world", [3])
def test_shards_must_split_over_the_processes(world: int) -> None:
    from pickgrad.experiments import check_request

    config = dataclasses.replace(EXPERIMENT.default_config(quick=True), shards=2)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        check_request(EXPERIMENT, config, world)
