"""Checkpoints: a killed or interrupted run resumes bit-identically; bad checkpoints are refused."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from pickgrad.cli import main
from pickgrad.experiments import get_experiment, run_experiment
from pickgrad.experiments.checkpoints import CheckpointError
from pickgrad.experiments.loop import Interrupted

EXPERIMENT = get_experiment("graph-layout")
RUN = "tree__nvil__seed0"


def _config(**changes: Any) -> Any:
    quick = EXPERIMENT.default_config(quick=True)
    settings = {
        "methods": ("tree",),
        "estimators": ("nvil", "st-gumbel"),
        "eval_every": 5,
        "checkpoint_every": 5,
        "progress": False,
        # Warm-up past the checkpoint at step 10: a resumed run must restore the step that
        # decides it (killed at 13, it resumes inside the warm-up and leaves it at 12).
        "decoder_warmup": 12,
        **changes,
    }
    return dataclasses.replace(quick, **settings)


class _Killed(Exception):
    """Stands for SIGKILL: nothing is saved on the way out."""


def _stop_once(at: int, action: Any) -> Any:
    fired = []

    def hook(step: int) -> None:
        if step == at and not fired:
            fired.append(step)
            action()

    return hook


def _no_time(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "seconds"}


def _assert_same_runs(a: dict[str, Any], b: dict[str, Any], folder_a: Path, folder_b: Path) -> None:
    assert len(a["runs"]) == len(b["runs"]) == 2
    for run_a, run_b in zip(a["runs"], b["runs"], strict=True):
        assert run_a["curve"] == run_b["curve"]  # every float, exactly
        assert run_a["test"] == run_b["test"] and run_a["valid"] == run_b["valid"]
        assert run_a["best_step"] == run_b["best_step"]
        # The monitor measures the same numbers at the same steps (not its wall time).
        assert [_no_time(r) for r in run_a["monitor"]] == [_no_time(r) for r in run_b["monitor"]]
        assert [r["step"] for r in run_a["monitor"]] == [1, 10, 20]
    for model_a in sorted(folder_a.glob("runs/*/model.pt")):
        state_a = torch.load(model_a, weights_only=True)
        state_b = torch.load(folder_b / model_a.relative_to(folder_a), weights_only=True)
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    cache, out = root / "cache", root / "full"
    return run_experiment(EXPERIMENT, _config(), out, cache_dir=cache), out, cache


def test_killed_run_resumes_bit_identically(
    uninterrupted: tuple[dict[str, Any], Path, Path], tmp_path: Path
) -> None:
    full, full_out, cache = uninterrupted
    out = tmp_path / "cut"

    def kill() -> None:
        raise _Killed

    with pytest.raises(_Killed):  # killed at step 13 of the first run: last checkpoint at 10
        run_experiment(EXPERIMENT, _config(), out, cache_dir=cache, after_step=_stop_once(13, kill))
    assert (out / "runs" / RUN / "checkpoint.pt").exists()
    assert not (out / "runs" / RUN / "result.json").exists()
    resumed = run_experiment(EXPERIMENT, _config(), out, cache_dir=cache, resume=True)
    _assert_same_runs(full, resumed, full_out, out)


def test_ctrl_c_saves_and_resumes_bit_identically(
    uninterrupted: tuple[dict[str, Any], Path, Path], tmp_path: Path
) -> None:
    full, full_out, cache = uninterrupted
    out = tmp_path / "cut"

    def ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)

    # The second run is interrupted at step 7 (not a checkpoint step): it saves there.
    hook = _stop_once(7, ctrl_c)
    calls = []

    def on_second_run(step: int) -> None:
        calls.append(step)
        if len(calls) > 20:
            hook(step)

    with pytest.raises(Interrupted, match="interrupted at step 7"):
        run_experiment(EXPERIMENT, _config(), out, cache_dir=cache, after_step=on_second_run)
    resumed = run_experiment(EXPERIMENT, _config(), out, cache_dir=cache, resume=True)
    _assert_same_runs(full, resumed, full_out, out)


def test_bad_checkpoints_are_refused(
    uninterrupted: tuple[dict[str, Any], Path, Path], tmp_path: Path
) -> None:
    _, _, cache = uninterrupted
    out = tmp_path / "cut"
    config = _config(methods=("tree",), estimators=("nvil",))

    def kill() -> None:
        raise _Killed

    with pytest.raises(_Killed):
        run_experiment(EXPERIMENT, config, out, cache_dir=cache, after_step=_stop_once(6, kill))
    checkpoint = out / "runs" / RUN / "checkpoint.pt"
    good = checkpoint.read_bytes()

    # another configuration: the same run name, another learning rate
    with pytest.raises(CheckpointError, match="another configuration"):
        run_experiment(
            EXPERIMENT, dataclasses.replace(config, lr=0.5), out, cache_dir=cache, resume=True
        )
    # another run's checkpoint in this run's folder
    other = out / "runs" / "tree__nvil__seed1"
    other.mkdir(parents=True)
    shutil.copy(checkpoint, other / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="belongs to run 'tree__nvil__seed0'"):
        run_experiment(
            EXPERIMENT, dataclasses.replace(config, seeds=(1,)), out, cache_dir=cache, resume=True
        )
    # damaged bytes
    checkpoint.write_bytes(good[:-100] + bytes(100))
    with pytest.raises(CheckpointError, match="is corrupt"):
        run_experiment(EXPERIMENT, config, out, cache_dir=cache, resume=True)
    # not a checkpoint at all, through the command: one error line, status 2
    checkpoint.write_bytes(b"PK\x03\x04 some zip")
    code = main(
        ["experiment", "graph-layout", "--quick", "--no-progress", "--methods", "tree",
         "--estimators", "nvil", "--eval-every", "5", "--checkpoint-every", "5",
         "--out", str(out), "--cache-dir", str(cache), "--resume"]
    )  # fmt: skip
    assert code == 2
