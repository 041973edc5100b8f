"""Minimal reproductions of bugs the property suite found, kept as regression tests (issue 11)."""

from __future__ import annotations

import warnings

import pytest
import torch

import pickgrad
from pickgrad import Arborescence, Permutation, SpanningTree


def test_tree_log_partition_of_half_scores_at_small_tau_is_never_a_silent_inf():
    # spanning_tree.py / arborescence.py (point 3): -1e6 does not fit float16.
    import torch

    scores = torch.tensor([[0.0, -1.0], [0.0, 0.0]], dtype=torch.float16)
    for structure in (SpanningTree(), Arborescence()):
        try:
            value = structure.log_partition(scores, 1e-6)
        except ValueError:
            continue
        assert value.dtype == torch.float32, value.dtype
        assert value.item() == pytest.approx(-1e6)


def test_spanning_tree_relax_at_tau_1e_300_has_n_minus_1_edges_or_raises():
    # spanning_tree.py / _matrix_tree.py (point 4): one edge of 3 nodes' tree.

    scores = torch.tensor([[0.0, -8.0, -16.0], [0.0, 0.0, -4.0], [0.0, 0.0, 0.0]])
    try:
        x = SpanningTree().relax(scores, 1e-300)
    except ValueError as error:
        assert "tau" in str(error)
        return
    assert x.triu(1).sum().item() == 2.0, x


def test_sinkhorn_at_tau_1e_19_is_finite_or_raises():
    # permutation.py / _sinkhorn.py (point 4): NaN in float32 and float64.

    scores = torch.tensor([[0.0, 0, 2, 0], [2, 2, 2, 2], [2, 2, 1, 2], [0, 0, 1, 0]])
    for dtype in (torch.float32, torch.float64):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                x = Permutation().relax(scores.to(dtype), 1e-19)
        except ValueError as error:
            assert "tau" in str(error)
            continue
        assert bool(torch.isfinite(x).all()), x


def test_estimate_accepts_baseline_values_for_the_learned_baseline():
    # select.py (contract 4): estimate(..., nvil, baseline_values=b) raises TypeError today.

    scores = torch.zeros(3, 4, requires_grad=True)
    baseline = torch.zeros(3, requires_grad=True)
    nvil = pickgrad.Reinforce(baseline="learned", normalize=True)
    surrogate = pickgrad.estimate(
        lambda x: x[..., 0], scores, pickgrad.OneHot(), nvil, n_samples=2, baseline_values=baseline
    )
    surrogate.backward()
    assert scores.grad is not None and baseline.grad is not None
