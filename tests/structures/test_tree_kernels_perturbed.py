"""Matrix-tree marginals of Gumbel-perturbed scores (what st-gumbel and gumbel-rao relax): the
up-front choice of float64 for graphs the float32 estimate is sure to refuse, the mixed
float32 / float64 / elimination batches it produces, and their gradients."""

from __future__ import annotations

import pytest
import torch

from pickgrad import Arborescence, SpanningTree
from pickgrad.noise import sample_gumbel
from pickgrad.structures._matrix_tree import (
    MARGINAL_TOLERANCE,
    _bound_to_miss,
    _laplacian_minor,
    _marginals_by_inverse,
    _returns_lower_bound,
    arc_marginals,
    arc_mask,
    shifted_weights,
)

FLOAT32_TOLERANCE = MARGINAL_TOLERANCE[torch.float32]
STRUCTURES = [Arborescence(), Arborescence(root=2), SpanningTree()]


def perturbed(batch: int, n: int, seed: int, *, symmetric: bool = False) -> torch.Tensor:
    """float32 ``N(0, 1) + Gumbel`` scores, mirrored as SpanningTree does when ``symmetric``."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, n, n, generator=generator)
    scores = scores + sample_gumbel(
        scores.shape, dtype=scores.dtype, device="cpu", generator=generator
    )
    if symmetric:
        upper = torch.triu(scores, 1)
        scores = upper + upper.transpose(-1, -2)
    return scores


@pytest.mark.parametrize("structure", STRUCTURES, ids=["arborescence", "root-2", "spanning"])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_perturbed_float32_relax_is_within_its_tolerance_of_float64(
    structure: Arborescence | SpanningTree, tau: float
) -> None:
    scores = perturbed(128, 9, seed=int(10 * tau))
    leaf = scores.clone().requires_grad_()
    single = structure.relax(leaf, tau)
    reference = structure.relax(scores.double(), tau)
    torch.testing.assert_close(single.double(), reference, rtol=0, atol=FLOAT32_TOLERANCE)
    # Gradients through the three paths (float32, float64, elimination) match float64's.
    direction = torch.randn(scores.shape, generator=torch.Generator().manual_seed(1))
    (single * direction).sum().backward()
    wide = scores.double().requires_grad_()
    (structure.relax(wide, tau) * direction.double()).sum().backward()
    assert leaf.grad is not None and wide.grad is not None
    scale = float(wide.grad.abs().max())
    torch.testing.assert_close(leaf.grad.double(), wide.grad, rtol=0, atol=1e-4 * scale)


def test_the_batch_really_mixes_the_paths() -> None:
    # The graphs of the test above at tau 0.5: some go to float64 at once, some are redone
    # after the float32 pass, the others stay in float32.
    scores = perturbed(128, 9, seed=5, symmetric=True)
    arcs = arc_mask(torch.ones(9, dtype=torch.bool), 0)
    doomed = _bound_to_miss(shifted_weights(scores, arcs, 0.5), FLOAT32_TOLERANCE)
    _, estimate = _marginals_by_inverse(scores, arcs, tau=0.5)
    redone = ~doomed & (estimate > FLOAT32_TOLERANCE)
    kept = ~doomed & (estimate <= FLOAT32_TOLERANCE)
    assert int(doomed.sum()) > 0 and int(redone.sum()) > 0 and int(kept.sum()) > 0


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_returns_bound_is_below_the_exact_return_probability(symmetric: bool) -> None:
    for n in (3, 6, 12):
        scores = perturbed(256, n, seed=n, symmetric=symmetric).double()
        arcs = arc_mask(torch.ones(n, dtype=torch.bool), 0)
        for tau in (0.1, 0.5, 1.0):
            weights = shifted_weights(scores, arcs, tau)
            minor = _laplacian_minor(weights, arcs.any(dim=-2))
            inverse, info = torch.linalg.inv_ex(minor)
            regular = info == 0
            returns = torch.diagonal(inverse, dim1=-2, dim2=-1) * torch.diagonal(
                minor, dim1=-2, dim2=-1
            )  # expected visits, 1 / (1 - r_j)
            exact = (1 - 1 / returns).amax(dim=-1)
            bound = _returns_lower_bound(weights)
            assert bool((bound[regular] <= exact[regular] + 1e-9).all())
            assert bool((bound >= 0).all())


@pytest.mark.parametrize("symmetric", [False, True])
def test_graphs_bound_to_miss_are_never_accepted_by_the_estimate(symmetric: bool) -> None:
    flagged = 0
    for n in (4, 10, 20):
        scores = perturbed(256, n, seed=n, symmetric=symmetric)
        arcs = arc_mask(torch.ones(n, dtype=torch.bool), 0)
        for tau in (0.1, 0.5, 1.0):
            doomed = _bound_to_miss(shifted_weights(scores, arcs, tau), FLOAT32_TOLERANCE)
            _, estimate = _marginals_by_inverse(scores, arcs, tau=tau)
            assert not bool((doomed & (estimate <= FLOAT32_TOLERANCE)).any())
            flagged += int(doomed.sum())
    assert flagged > 100  # the shortcut is taken on these graphs


def test_absent_nodes_are_not_flagged() -> None:
    # Padded nodes have no arc in: their column of weights sums to 0, and must not yield NaN.
    scores = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(0))
    nodes = torch.arange(6) < torch.tensor([2, 3, 6, 1])[:, None]
    arcs = arc_mask(nodes, 0)
    bound = _returns_lower_bound(shifted_weights(scores, arcs, 1.0))
    assert bool(torch.isfinite(bound).all()) and bool((bound >= 0).all())


def test_mixed_batch_with_lengths_and_a_broadcast_mask() -> None:
    # Lengths give a per-graph mask; without them the (n, n) mask is shared by every graph.
    scores = perturbed(48, 8, seed=3)
    lengths = torch.randint(2, 9, (48,), generator=torch.Generator().manual_seed(4))
    for structure in STRUCTURES[::2]:
        for given in (None, lengths):
            single = structure.relax(scores, 0.3, lengths=given)
            reference = structure.relax(scores.double(), 0.3, lengths=given)
            torch.testing.assert_close(single.double(), reference, rtol=0, atol=FLOAT32_TOLERANCE)


def test_a_batch_of_only_doomed_graphs_goes_to_float64_at_once() -> None:
    # A heavy 2-cycle in every graph: no float32 pass at all, and the result is float32.
    scores = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    scores[..., 1, 2] = scores[..., 2, 1] = 40.0
    arcs = arc_mask(torch.ones(5, dtype=torch.bool), 0)
    assert bool(_bound_to_miss(shifted_weights(scores, arcs, 1.0), FLOAT32_TOLERANCE).all())
    out = arc_marginals(scores, arcs, 0)
    assert out.dtype == torch.float32 and out.shape == scores.shape
    reference = arc_marginals(scores.double(), arcs, 0)
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=FLOAT32_TOLERANCE)
