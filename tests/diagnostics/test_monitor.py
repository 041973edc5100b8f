"""GradientMonitor: SNR and bias against hand-computed values, the CSV, TensorBoard, isolation."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import pickgrad
from pickgrad.diagnostics import GradientMonitor
from pickgrad.diagnostics import monitor as monitor_module
from pickgrad.diagnostics.monitor import (
    CSV_FIELDS,
    GradientProbe,
    read_records,
    tensorboard_available,
)

COST = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 3.0]], dtype=torch.float64)
SCORES = torch.tensor([[0.0, 1.0, -1.0], [0.3, 0.2, -0.4]], dtype=torch.float64)


def linear_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-example linear loss ``<x_b, c_b>``: samples ``(n, 2, 3)`` -> ``(n, 2)``."""
    return (x * COST).sum(-1)


def exact_by_hand() -> torch.Tensor:
    """``d/ds mean_b E[<x_b, c_b>]`` under softmax: ``p (c - <p, c>) / B``."""
    p = torch.softmax(SCORES, -1)
    return p * (COST - (p * COST).sum(-1, keepdim=True)) / SCORES.shape[0]


def probe(estimator: pickgrad.Estimator, n_samples: int = 4) -> GradientProbe:
    return GradientProbe(SCORES, linear_loss, pickgrad.OneHot(), estimator, n_samples=n_samples)


def draws_by_hand(estimator: pickgrad.Estimator, seed: int, step: int, k: int) -> torch.Tensor:
    """The monitor's draws, redone: same generator seed, one estimate + grad per draw."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
    out = []
    for _ in range(k):
        leaf = SCORES.clone().requires_grad_(True)
        surrogate = pickgrad.estimate(
            linear_loss, leaf, pickgrad.OneHot(), estimator, n_samples=4, generator=generator
        )
        (gradient,) = torch.autograd.grad(surrogate, leaf)
        out.append(gradient.flatten())
    return torch.stack(out)


def test_snr_and_bias_match_hand_computed_values() -> None:
    k, seed, step = 12, 3, 40
    monitor = GradientMonitor(None, every=20, n_draws=k, seed=seed)
    record = monitor.measure(step, probe(pickgrad.Reinforce(baseline="rloo")))
    draws = draws_by_hand(pickgrad.Reinforce(baseline="rloo"), seed, step, k)
    mean = draws.mean(0)
    trace_cov = ((draws - mean) ** 2).sum() / (k - 1)
    exact = exact_by_hand().flatten()
    assert record.reference == "exact" and record.reference_exact
    assert record.reference_noise == 0.0
    assert math.isclose(record.reference_norm, float(exact.norm()), rel_tol=1e-10)
    assert math.isclose(record.mean_norm, float(mean.norm()), rel_tol=1e-10)
    assert math.isclose(record.std, float(trace_cov.sqrt()), rel_tol=1e-10)
    snr = (float(mean.norm()) ** 2 - float(trace_cov) / k) / float(trace_cov)
    assert math.isclose(record.snr, max(snr, 0.0), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(record.bias, float((mean - exact).norm()), rel_tol=1e-10)
    assert math.isclose(record.relative_bias, record.bias / float(exact.norm()), rel_tol=1e-10)
    assert math.isclose(record.relative_norm, float(mean.norm() / exact.norm()), rel_tol=1e-10)
    cosine = float(mean @ exact / (mean.norm() * exact.norm()))
    assert math.isclose(record.cosine, cosine, rel_tol=1e-10)
    assert math.isclose(record.noise_floor, math.sqrt(float(trace_cov) / k), rel_tol=1e-10)
    assert record.samples_per_draw == 4 and record.n_draws == k and record.step == step


def test_deterministic_estimator_has_infinite_snr_and_its_bias_by_hand() -> None:
    # st's identity backward returns d loss / d x = cost / B, whatever the sample.
    record = GradientMonitor(None, n_draws=4).measure(1, probe(pickgrad.StraightThrough(), 1))
    gradient = (COST / SCORES.shape[0]).flatten()
    exact = exact_by_hand().flatten()
    assert record.std == 0.0 and record.snr == math.inf
    assert math.isclose(record.mean_norm, float(gradient.norm()), rel_tol=1e-12)
    assert math.isclose(record.bias, float((gradient - exact).norm()), rel_tol=1e-10)
    assert record.noise_floor == 0.0


def test_unbiased_estimator_bias_is_within_its_noise_floor() -> None:
    # reinforce is unbiased: over many draws its bias is a few noise floors at most (z < 4).
    record = GradientMonitor(None, n_draws=400, seed=1).measure(1, probe(pickgrad.Reinforce()))
    assert record.bias < 4 * record.noise_floor
    assert record.cosine > 0.9


def test_reference_falls_back_to_reinforce_with_its_noise() -> None:
    # 20 coupled slots of 3: 3^20 joint solutions, more than the monitor enumerates.
    cost = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores = torch.zeros(20, 3, dtype=torch.float64)

    def coupled(x: torch.Tensor) -> torch.Tensor:
        return ((x * cost).sum((-1, -2))) ** 2

    made = GradientProbe(scores, coupled, pickgrad.OneHot(), pickgrad.Reinforce(), n_samples=2)
    record = GradientMonitor(None, n_draws=3, n_reference=16).measure(1, made)
    assert record.reference == "reinforce/rloo" and not record.reference_exact
    assert record.reference_noise > 0 and math.isfinite(record.bias)
    only_exact = GradientMonitor(None, n_draws=3, reference="exact").measure(1, made)
    assert only_exact.reference == "none" and math.isnan(only_exact.bias)
    none = GradientMonitor(None, n_draws=3, reference="none").measure(1, made)
    assert none.reference == "none" and math.isnan(none.cosine) and none.snr >= 0


def test_csv_holds_every_record_and_resume_keeps_the_earlier_rows(tmp_path: Path) -> None:
    path = tmp_path / "run" / "monitor.csv"
    monitor = GradientMonitor(path, every=2, n_draws=3, tensorboard=False, label="rloo")
    for step in range(1, 7):
        if monitor.due(step):
            monitor.measure(step, probe(pickgrad.Reinforce(baseline="rloo")))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_FIELDS
    assert [int(r["step"]) for r in rows] == [1, 2, 4, 6]
    assert {r["estimator"] for r in rows} == {"rloo"}
    assert read_records(path) == monitor.records
    assert [float(r["snr"]) for r in rows] == [r.snr for r in monitor.records]
    resumed = GradientMonitor(path, every=2, n_draws=3, tensorboard=False, keep_until=3)
    assert [r.step for r in resumed.records] == [1, 2]
    again = resumed.measure(4, probe(pickgrad.Reinforce(baseline="rloo")))
    # The monitor's noise depends on (seed, step) only, so step 4 is measured the same again.
    assert again.snr == monitor.records[2].snr and again.bias == monitor.records[2].bias
    assert [r.step for r in read_records(path)] == [1, 2, 4]
    fresh = GradientMonitor(path, n_draws=3, tensorboard=False)
    assert fresh.records == [] and read_records(path) == []


def test_tensorboard_scalars_when_installed_else_csv_only(tmp_path: Path) -> None:
    path = tmp_path / "monitor.csv"
    monitor = GradientMonitor(path, n_draws=3)
    monitor.measure(1, probe(pickgrad.Reinforce(baseline="rloo")))
    monitor.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    if tensorboard_available():
        assert events and events[0].stat().st_size > 0
    else:
        assert not (tmp_path / "tensorboard").exists()
    assert len(read_records(path)) == 1


def test_without_tensorboard_no_writer_and_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor_module, "tensorboard_available", lambda: False)
    monitor = GradientMonitor(tmp_path / "m.csv", n_draws=2)
    monitor.measure(1, probe(pickgrad.Reinforce(baseline="rloo")))
    monitor.close()
    assert monitor._writer is None and not (tmp_path / "tensorboard").exists()
    assert len(read_records(tmp_path / "m.csv")) == 1


def test_monitor_leaves_training_state_alone() -> None:
    # An ema baseline: the monitor draws with a copy; torch's global generator is not used.
    ema = pickgrad.Reinforce(baseline="ema")
    leaf = SCORES.clone().requires_grad_(True)
    pickgrad.estimate(linear_loss, leaf, pickgrad.OneHot(), ema, n_samples=2).backward()
    state = dict(vars(ema))
    global_state = torch.get_rng_state()
    GradientMonitor(None, n_draws=5).measure(1, probe(ema))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert {k: v for k, v in vars(ema).items()} == state
    assert leaf.grad is not None and SCORES.grad is None


def test_observe_builds_the_probe_only_when_due() -> None:
    monitor = GradientMonitor(None, every=3, n_draws=2)
    calls: list[int] = []

    def make() -> GradientProbe:
        calls.append(1)
        return probe(pickgrad.Reinforce(baseline="rloo"))

    results = [monitor.observe(step, make) for step in range(1, 8)]
    assert [r is not None for r in results] == [True, False, True, False, False, True, False]
    assert len(calls) == 3 and [r.step for r in monitor.records] == [1, 3, 6]
    assert monitor.observe(9, lambda: None) is None
    assert not GradientMonitor(None, every=0).due(1)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"every": -1}, "every must be a nonnegative int"),
        ({"n_draws": 1}, "n_draws"),
        ({"reference": "numerical"}, "reference must be one of"),
        ({"n_reference": 2}, "n_reference"),
        ({"keep_until": -3}, "keep_until"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GradientMonitor(None, **options)  # type: ignore[arg-type]


def test_bad_probe_is_refused() -> None:
    with pytest.raises(TypeError, match="probe must be a GradientProbe"):
        GradientMonitor(None).measure(1, (SCORES, linear_loss))  # type: ignore[arg-type]
