"""Subset's one-node fast paths against the plain compositions they replace.

* ``subset_marginals``' hand-written backward against autograd through the plain composition
  (``_composed_marginals``, the path taken under torch.compile / vmap / torch.func) and against
  the log-space programme (brute force at tiny sizes is in test_subset*.py);
* the fused capabilities ``_perturb_argmax_relax`` (st-gumbel) and ``_conditional_mean_relax``
  (gumbel-rao): the same hard output, the same noise from the same generator state and the
  same gradient as the generic composition, which a subclass gets by redefining ``_relax``;
* the unscaled bound ``column_path_is_exact`` at its edges.
"""

from __future__ import annotations

import math

import pytest
import torch

import pickgrad
from pickgrad import Subset
from pickgrad.noise import sample_gumbel
from pickgrad.structures import _subset_marginals as sm

pytestmark = pytest.mark.usefixtures("subset_engine")


class _GenericSubset(Subset):
    """Subset with its own ``_relax`` (the same maths): the fused paths step aside."""

    def _relax(self, scores: torch.Tensor, tau: float, regularizer: str = "entropy", **options):  # type: ignore[no-untyped-def,override]
        return super()._relax(scores, tau, regularizer, **options)


def _select_and_grad(structure, estimator, scores, weights, seed, **options):  # type: ignore[no-untyped-def]
    leaf = scores.clone().requires_grad_()
    generator = torch.Generator().manual_seed(seed)
    x = pickgrad.select(leaf, structure, estimator, tau=0.6, generator=generator, **options)
    (gradient,) = torch.autograd.grad((x * weights).sum(), leaf)
    return x.detach(), gradient, torch.rand(4, generator=generator)


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
@pytest.mark.parametrize(("batch", "n", "k"), [((6,), 9, 3), ((2, 3), 20, 2), ((4,), 12, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_path_equals_the_generic_composition(estimator, batch, n, k, dtype):
    generator = torch.Generator().manual_seed(n * 10 + k)
    scores = 2 * torch.randn(*batch, n, generator=generator, dtype=dtype)
    scores[..., 0] = -math.inf  # a masked item
    weights = torch.randn(*batch, n, generator=generator, dtype=dtype)
    options = {"n_draws": 4} if estimator == "gumbel-rao" else {}
    assert Subset(k)._perturb_argmax_relax(scores, 0.6, None) is not None
    fused = _select_and_grad(Subset(k), estimator, scores, weights, 3, **options)
    generic = _select_and_grad(_GenericSubset(k), estimator, scores, weights, 3, **options)
    assert torch.equal(fused[0], generic[0])
    # the same generator state afterwards: the fused path drew exactly the same numbers
    assert torch.equal(fused[2], generic[2])
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(fused[1], generic[1], rtol=0, atol=atol)
    assert bool((fused[1][..., 0] == 0).all())
    assert bool((fused[0].sum(-1) == k).all()) and bool((fused[0][..., 0] == 0).all())


def test_fused_paths_step_aside_where_they_do_not_apply():
    scores = torch.randn(3, 8)
    assert Subset(3)._perturb_argmax_relax(scores, 0.5, None, regularizer="euclidean") is None
    assert Subset(6)._perturb_argmax_relax(scores, 0.5, None) is None  # k > n / 2
    assert Subset(1)._perturb_argmax_relax(scores, 0.5, None) is None
    assert Subset(3)._perturb_argmax_relax(scores.half(), 0.5, None) is None
    assert _GenericSubset(3)._perturb_argmax_relax(scores, 0.5, None) is None
    hard = Subset(3).argmax(scores)
    assert _GenericSubset(3)._conditional_mean_relax(scores, hard, 2, 0.5, None) is None


@pytest.mark.parametrize(("rows", "n", "k"), [(5, 7, 2), (3, 20, 10), (70, 200, 10), (2, 60, 13)])
def test_hand_written_backward_equals_autograd_through_the_composition(rows, n, k):
    # (70, 200, 10) runs in two chunks of rows.
    generator = torch.Generator().manual_seed(rows + n)
    scores = 3 * torch.randn(rows, n, generator=generator, dtype=torch.float64)
    scores[0, :3] = scores[0, 3]  # ties
    scores[-1, -1] = 1e4  # far above the clamp
    scores[-1, -2] = -1e4  # far below it
    upstream = torch.randn(rows, n, generator=generator, dtype=torch.float64)
    assert sm.column_path_is_exact(n, k)
    leaf = scores.clone().requires_grad_()
    x = sm.subset_marginals(leaf, k, 0.7)
    (x * upstream).sum().backward()
    composed_leaf = scores.clone().requires_grad_()
    composed = sm._composed_marginals(composed_leaf, k, 0.7)
    (composed * upstream).sum().backward()
    torch.testing.assert_close(x, composed, rtol=0, atol=1e-13)
    torch.testing.assert_close(leaf.grad, composed_leaf.grad, rtol=0, atol=1e-12)
    log_space_leaf = scores.clone().requires_grad_()
    z = log_space_leaf / 0.7
    reference = sm._log_space_marginals(z - sm._threshold(z, k), k)
    (reference * upstream).sum().backward()
    # The log-space programme rounds n sequential logaddexps: it is the less accurate of the
    # two (at (3, 20, 10): 1.2e-12 from the enumeration, the column form 8e-14).
    torch.testing.assert_close(x, reference, rtol=0, atol=5e-12)
    torch.testing.assert_close(leaf.grad, log_space_leaf.grad, rtol=0, atol=2e-11)


def test_fused_functions_pass_gradcheck_and_gradgradcheck():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    noise = -torch.log(-torch.log(torch.rand(2, 3, 7, generator=generator, dtype=torch.float64)))
    hard = Subset(3).argmax(scores.detach())

    def perturbed(s: torch.Tensor) -> torch.Tensor:
        return sm.perturb_argmax_marginals(s, 3, 0.8, torch.Generator().manual_seed(1))

    def conditional(s: torch.Tensor) -> torch.Tensor:
        return sm.conditional_mean_marginals(s, noise, hard, 3, 0.8)

    def marginals(s: torch.Tensor) -> torch.Tensor:
        return sm.subset_marginals(s, 3, 0.8)

    assert torch.autograd.gradcheck(marginals, (scores,))
    # The straight-through outputs are constant in value (gradcheck does not apply), but their
    # backward passes are smooth functions of the scores: gradgradcheck checks double backward.
    for function in (marginals, conditional):
        assert torch.autograd.gradgradcheck(function, (scores,))
    upstream = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    (fused_mean,) = torch.autograd.grad((conditional(scores) * upstream).sum(), scores)
    plain_mean = marginals(scores + noise).mean(0)
    (plain,) = torch.autograd.grad((plain_mean * upstream).sum(), scores)
    torch.testing.assert_close(fused_mean, plain, rtol=0, atol=1e-13)
    assert torch.equal(conditional(scores), hard)
    # perturb-argmax: its gradient is that of the marginals at scores + G (G from seed 1)
    g = sample_gumbel(
        (3, 7),
        dtype=torch.float64,
        device=scores.device,
        generator=torch.Generator().manual_seed(1),
    )
    weights = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    (fused,) = torch.autograd.grad((perturbed(scores) * weights).sum(), scores)
    (plain,) = torch.autograd.grad((marginals(scores + g) * weights).sum(), scores)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-13)
    assert torch.autograd.gradgradcheck(perturbed, (scores,))


def test_composed_path_runs_under_vmap_grad_and_compile():
    scores = torch.randn(4, 9, dtype=torch.float64)
    eager = Subset(3).relax(scores, 0.5)
    with pickgrad.validation(False):
        mapped = torch.func.vmap(lambda s: Subset(3).relax(s, 0.5))(scores)
        gradient = torch.func.grad(lambda s: (Subset(3).relax(s, 0.5) ** 2).sum())(scores)
    torch.testing.assert_close(mapped, eager, rtol=0, atol=1e-14)
    leaf = scores.clone().requires_grad_()
    (Subset(3).relax(leaf, 0.5) ** 2).sum().backward()
    torch.testing.assert_close(gradient, leaf.grad, rtol=0, atol=1e-13)


@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_relax_compiles_in_one_graph():
    torch._dynamo.reset()
    scores = torch.randn(4, 9, dtype=torch.float64)
    with pickgrad.validation(False):
        compiled = torch.compile(lambda s: Subset(3).relax(s, 0.5), fullgraph=True, backend="eager")
        torch.testing.assert_close(
            compiled(scores), Subset(3).relax(scores, 0.5), rtol=0, atol=1e-14
        )
    torch._dynamo.reset()


def test_unscaled_bound_edges():
    # k L + log C(2n, k - 1) + log n must stay below log(float64 max) - 8: k = 13 of 200 does,
    # 14 does not (the log-space programme takes over); the complement is used for k > n / 2.
    assert sm.column_path_is_exact(200, 13) and not sm.column_path_is_exact(200, 14)
    assert sm.column_path_is_exact(200, 187) and not sm.column_path_is_exact(200, 186)
    assert not sm.column_path_is_exact(40, 18)
    # Past the bound the results still hold (log-space), and sum to k.
    scores = torch.randn(2, 60, dtype=torch.float64)
    assert not sm.column_path_is_exact(60, 20)
    x = Subset(20).relax(scores, 0.5)
    torch.testing.assert_close(x.sum(-1), torch.full((2,), 20.0, dtype=torch.float64))


def test_definition_path_equals_the_column_programme_with_masks_and_extremes(monkeypatch):
    # Few subsets and rows take the definition (softmax over every subset); the column
    # programme, forced here by a zero limit, must give the same values, gradients and second
    # derivatives, masked (-inf) items, ties and entries far beyond the clamp included.
    monkeypatch.setattr(sm, "_ENUMERATION_LIMIT", 256)  # the default (the fixture may force 0)
    assert sm.enumeration_applies(9, 3, 5) and not sm.enumeration_applies(9, 3, 10_000)
    assert not sm.enumeration_applies(12, 6, 1) and not sm.enumeration_applies(9, 1, 1)
    generator = torch.Generator().manual_seed(7)
    scores = 3 * torch.randn(5, 9, generator=generator, dtype=torch.float64)
    scores[0, :3] = scores[0, 3]  # ties
    scores[1, 0] = -math.inf  # masked
    scores[2, :6] = -math.inf  # exactly k allowed: they are in every subset
    scores[3, 1], scores[3, 2] = 1e4, -1e4  # far above and below the clamp
    upstream = torch.randn(5, 9, generator=generator, dtype=torch.float64)

    def marginals_and_derivatives(limit: int) -> tuple[torch.Tensor, ...]:
        monkeypatch.setattr(sm, "_ENUMERATION_LIMIT", limit)
        leaf = scores.clone().requires_grad_()
        x = sm.subset_marginals(leaf, 3, 0.7)
        (gradient,) = torch.autograd.grad((x * upstream).sum(), leaf, create_graph=True)
        (second,) = torch.autograd.grad((gradient * upstream).sum(), leaf)
        return x.detach(), gradient.detach(), second

    definition, column = marginals_and_derivatives(256), marginals_and_derivatives(0)
    for ours, theirs in zip(definition, column, strict=True):
        assert bool(torch.isfinite(ours).all())
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert bool((definition[0][1:3, 0] == 0).all()) and bool((definition[0][2, 6:] == 1).all())
    assert bool((definition[1][1, 0] == 0) & (definition[1][2, :6] == 0).all())
