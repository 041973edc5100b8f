"""Property tests for masks: on random structures, sizes, batches, dtypes and score kinds, with
a random mask that keeps at least one solution (``strategies.draw_mask``):

* ``argmax(scores, mask=mask)`` equals ``argmax`` of the ``-inf`` scores, uses no masked entry
  and attains the best objective over the allowed enumerated solutions;
* ``relax`` is finite, gives masked entries exactly zero mass, and its gradient (float64) is
  finite and exactly zero on masked entries;
* ``log_partition`` (where defined) equals the log-sum-exp over the allowed solutions.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from properties.strategies import (
    STRUCTURE_KINDS,
    cases,
    draw_mask,
    entry_tolerance,
    enumerable,
    examples,
    masked_objectives,
    objective_of,
    problems,
    seeds,
)

KINDS = cases(list(STRUCTURE_KINDS), list(STRUCTURE_KINDS))
densities = st.floats(0.2, 0.9)


@pytest.mark.parametrize("kind", KINDS)
@examples(15)
@given(data=st.data())
def test_masked_argmax_is_the_best_allowed_solution(kind, data):
    problem = data.draw(problems((kind,), max_tree=5))
    structure, scores = problem.structure, problem.scores
    mask = draw_mask(structure, scores, data.draw(seeds), data.draw(densities))
    x = structure.argmax(scores, mask=mask)
    assert torch.equal(x, structure.argmax(scores.masked_fill(~mask, -math.inf)))
    active = structure.active_mask(problem.event_shape, scores.device)
    forbidden = ~mask if active is None else ~mask & active
    assert not bool(((x != 0) & forbidden).any())
    if x.numel() and enumerable(structure, problem.event_shape):
        best = masked_objectives(structure, scores, mask).amax(-1)
        got = objective_of(structure, scores, x)
        scale = scores.double().abs().amax().clamp_min(1.0)
        assert bool(((got - best).abs() <= 1e-9 * scale * x[0].numel()).all())


@pytest.mark.parametrize("kind", KINDS)
@examples(10)
@given(data=st.data())
def test_masked_relax_has_no_mass_and_no_gradient_on_masked_entries(kind, data):
    problem = data.draw(problems((kind,), dtypes=(torch.float32, torch.float64), max_tree=5))
    structure, scores, tau = problem.structure, problem.scores, problem.tau
    tau = max(tau, 0.05)  # Sinkhorn's tolerance is documented from there
    mask = draw_mask(structure, scores, data.draw(seeds), data.draw(densities))
    leaf = scores.double().clone().requires_grad_()
    out = structure.relax(leaf, tau=tau, mask=mask)
    assert bool(torch.isfinite(out).all())
    active = structure.active_mask(problem.event_shape, scores.device)
    forbidden = ~mask if active is None else ~mask & active
    assert bool((out[forbidden] == 0).all())
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    (out * weights).sum().backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    assert bool((leaf.grad[~mask] == 0).all())


@pytest.mark.parametrize("kind", [k for k in KINDS if k.id != "permutation"])
@examples(10)
@given(data=st.data())
def test_masked_log_partition_sums_over_allowed_solutions(kind, data):
    problem = data.draw(problems((kind,), dtypes=(torch.float64,), max_tree=5))
    structure, scores, tau = problem.structure, problem.scores, problem.tau
    mask = draw_mask(structure, scores, data.draw(seeds), data.draw(densities))
    got = structure.log_partition(scores, tau=tau, mask=mask)
    assert got.shape == problem.batch_shape
    if scores.numel() == 0:
        return
    expected = torch.logsumexp(masked_objectives(structure, scores, mask) / tau, -1)
    scale = (scores.abs().amax().clamp_min(1.0) / tau) * problem.event_shape[-1] ** 2
    tolerance = entry_tolerance(structure, torch.float64) * float(scale)
    assert bool(((got - expected).abs() <= tolerance).all()), (got, expected)
