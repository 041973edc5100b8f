"""Matrix-tree marginals for float32 and half input: float32 linear algebra on well-conditioned
graphs, a per-graph error estimate, and a float64 redo of the graphs it does not trust."""

from __future__ import annotations

import pytest
import torch

from pickgrad import Arborescence, SpanningTree
from pickgrad.structures import _matrix_tree as matrix_tree
from pickgrad.structures._matrix_tree import (
    _FLOAT32_SIZE,
    MARGINAL_TOLERANCE,
    _marginals_by_inverse,
    arc_marginals,
    arc_mask,
    full_arc_mask,
)

FLOAT32_TOLERANCE = MARGINAL_TOLERANCE[torch.float32]
STRUCTURES = [Arborescence(), Arborescence(root=2), SpanningTree()]


def graphs(kind: str, batch: int, n: int, scale: float, seed: int) -> torch.Tensor:
    """float32 scores: Gaussian, two clusters bound tightly inside and loosely across, uniform
    over [-scale, scale], or Gaussian with each column lowered by up to 10 * scale nats."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator) * scale
    if kind == "clustered":
        group = torch.arange(n) >= n // 2
        scores = scores + torch.where(group[:, None] == group[None, :], 2.0, -2.0) * scale
    elif kind == "uniform":
        scores = (2 * torch.rand(batch, n, n, dtype=torch.float64, generator=generator) - 1) * scale
    elif kind == "column-gap":
        drop = torch.rand(batch, 1, n, dtype=torch.float64, generator=generator) * 10 * scale
        scores = scores / scale - drop
    return scores.float()


@pytest.mark.parametrize("structure", STRUCTURES, ids=["arborescence", "root-2", "spanning"])
@pytest.mark.parametrize("kind", ["gaussian", "clustered", "uniform", "column-gap"])
@pytest.mark.parametrize("scale", [1.0, 10.0, 50.0])
def test_float32_relax_is_within_its_tolerance_of_float64(
    structure: Arborescence | SpanningTree, kind: str, scale: float
) -> None:
    # The float64 path is itself checked against enumeration in the structures' own tests.
    scores = graphs(kind, 256, 7, scale, seed=int(scale))
    for tau in (0.1, 1.0):
        single = structure.relax(scores, tau)
        assert single.dtype == torch.float32 and bool(torch.isfinite(single).all())
        reference = structure.relax(scores.double(), tau)
        torch.testing.assert_close(single.double(), reference, rtol=0, atol=FLOAT32_TOLERANCE)


def test_the_float32_error_estimate_bounds_the_error() -> None:
    # Every graph whose estimate is within tolerance really is, on graphs from easy to hopeless;
    # the exact reference is the float64 path (elimination fallback included) on the same scores.
    accepted = 0
    for kind in ("gaussian", "clustered", "uniform", "column-gap"):
        for n in (3, 6, 12):
            for scale in (0.3, 3.0, 30.0):
                scores = graphs(kind, 512, n, scale, seed=n)
                arcs = arc_mask(torch.ones(n, dtype=torch.bool), 0)
                fast, estimate = _marginals_by_inverse(scores, arcs)
                exact = arc_marginals(scores.double(), arcs, 0)
                error = (fast.double() - exact).abs().flatten(1).amax(1)
                trusted = estimate <= FLOAT32_TOLERANCE
                accepted += int(trusted.sum())
                assert bool((error[trusted] <= estimate[trusted].double() + 1e-9).all())
    assert accepted > 5000  # the float32 path is the common case, not the exception


@pytest.mark.parametrize("n", [10, 50])
def test_ordinary_float32_graphs_stay_on_the_float32_path(n: int) -> None:
    scores = torch.randn(64, n, n, generator=torch.Generator().manual_seed(n))
    arcs = arc_mask(torch.ones(n, dtype=torch.bool), 0)
    _, estimate = _marginals_by_inverse(scores, arcs)
    assert bool((estimate <= FLOAT32_TOLERANCE).all())


@pytest.mark.parametrize("copies", [1, _FLOAT32_SIZE // 32 + 1])  # float64 at once; float32
def test_untrusted_float32_graphs_are_redone_in_float64(
    copies: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heavy 2-cycle 1 <-> 2 (e^40 each way) reached from the root by e^0: hopeless in float32.
    # A small batch is computed in float64 from the start; a large one in float32, with this
    # graph sent to float64 alone (doomed by the 2-cycle bound or missed by the estimate).
    scores = torch.zeros(2, 4, 4)
    scores[0, 1, 2] = scores[0, 2, 1] = 40.0
    arcs = arc_mask(torch.ones(4, dtype=torch.bool), 0)
    _, estimate = _marginals_by_inverse(scores, arcs)
    assert float(estimate[0]) > FLOAT32_TOLERANCE >= float(estimate[1])
    scores = torch.cat([scores[:1], scores[1:].expand(2 * copies - 1, 4, 4)])  # one heavy graph
    seen: list[torch.dtype] = []

    def spy(scores: torch.Tensor, *args: object, **options: object) -> object:
        seen.append(options.get("dtype") or scores.dtype)  # the dtype of the computation
        return _marginals_by_inverse(scores, *args, **options)

    monkeypatch.setattr(matrix_tree, "_marginals_by_inverse", spy)
    leaf = scores.clone().requires_grad_()
    marginals = Arborescence().relax(leaf, 1.0)
    assert (torch.float32 in seen) == (copies > 1) and torch.float64 in seen
    reference = Arborescence().relax(scores.double(), 1.0)
    torch.testing.assert_close(marginals.double(), reference, rtol=0, atol=FLOAT32_TOLERANCE)
    marginals.square().sum().backward()  # gradients flow through both paths
    assert bool(torch.isfinite(leaf.grad).all()) and float(leaf.grad.abs().sum()) > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_is_computed_in_float32(dtype: torch.dtype) -> None:
    scores = torch.randn(32, 6, 6).to(dtype)
    for structure in STRUCTURES:
        out = structure.relax(scores, 0.5)
        assert out.dtype == dtype
        reference = structure.relax(scores.double(), 0.5)
        torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-2)


def test_columns_far_below_the_graphs_largest_score() -> None:
    # One shift per graph: a column 30 nats down is still computed in float32 and accurate; one
    # 80 nats down holds subnormal weights, is refused by the estimate and redone in float64.
    base = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(3))
    scores = base.clone()
    scores[1, :, 2] -= 30.0
    scores[2, :, 2] -= 80.0
    arcs = arc_mask(torch.ones(6, dtype=torch.bool), 0)
    _, estimate = _marginals_by_inverse(scores, arcs)
    assert float(estimate[1]) <= FLOAT32_TOLERANCE
    assert float(estimate[2]) == float("inf")
    for structure in (Arborescence(), Arborescence(root=2)):
        out = structure.relax(scores, 1.0)
        reference = structure.relax(scores.double(), 1.0)
        torch.testing.assert_close(out.double(), reference, rtol=0, atol=FLOAT32_TOLERANCE)
        # Lowering a whole column does not change the law.
        torch.testing.assert_close(out, structure.relax(base, 1.0), rtol=0, atol=FLOAT32_TOLERANCE)


def test_the_cached_arc_mask_is_left_untouched() -> None:
    mask = full_arc_mask(5, 0, torch.device("cpu"))
    before = mask.clone()
    leaf = torch.randn(8, 5, 5, requires_grad=True)
    (Arborescence().relax(leaf, 0.5) ** 2).sum().backward()
    SpanningTree().relax(leaf.detach(), 0.5)
    assert full_arc_mask(5, 0, torch.device("cpu")) is mask and torch.equal(mask, before)


@pytest.mark.parametrize("root", [0, 2, 4])
def test_gradcheck_of_the_inverse_path_with_lengths(root: int) -> None:
    # The hand-written backward (root 0, and other roots relabelled to 0) and its double backward.
    scores = torch.randn(3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    scores.requires_grad_()
    lengths = torch.tensor([5, root + 1, 5])
    structure = Arborescence(root=root)
    relax = lambda s: structure.relax(s, 0.6, lengths=lengths)  # noqa: E731
    assert torch.autograd.gradcheck(relax, (scores,))
    assert torch.autograd.gradgradcheck(relax, (scores,), fast_mode=True)


# --- reliability at the extremes (issue 11, trees) --------------------------------------------


def shifted(structure: SpanningTree | Arborescence, scores: torch.Tensor, c: float) -> torch.Tensor:
    """Add ``c`` where the structure's law ignores it: every edge of a spanning tree (each has
    n - 1 edges), or every arc into one non-root node of an arborescence (each has one)."""
    out = scores.clone()
    if isinstance(structure, SpanningTree):
        return out + c
    node = (structure.root + 1) % scores.shape[-1]
    out[..., :, node] += c
    return out


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
@pytest.mark.parametrize("kind", ["gaussian", "ties"])
def test_shift_invariance_in_float32(structure: SpanningTree | Arborescence, kind: str) -> None:
    generator = torch.Generator().manual_seed(7)
    for n in (3, 5, 8):
        base = torch.randn(4, n, n, dtype=torch.float64, generator=generator)
        if kind == "ties":
            base = torch.randint(0, 2, (4, n, n), generator=generator).double()
        for tau in (0.01, 1.0, 100.0):
            reference = structure.relax(base, tau)
            for ratio in (1e2, 1e4, 1e6):  # |scores| / tau
                moved = shifted(structure, base, ratio * tau)
                single = structure.relax(moved.float(), tau)
                # The float32 input rounds the shifted scores: compare with float64 on those.
                exact = structure.relax(moved.float().double(), tau)
                assert float((single.double() - exact).abs().max()) < 1e-5, (n, tau, ratio)
                assert bool(((single >= 0) & (single <= 1)).all())
                # Invariance itself, in float64 (where rounding the shifted input costs < 1e-9).
                torch.testing.assert_close(
                    structure.relax(moved, tau), reference, rtol=0, atol=1e-7
                )


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_marginals_stay_in_the_unit_interval(structure: SpanningTree | Arborescence) -> None:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(64, 8, 8, dtype=torch.float64, generator=generator)
    for dtype in (torch.float32, torch.float64):
        x = structure.relax(scores.to(dtype), 0.01)
        assert bool(((x >= 0) & (x <= 1)).all()), dtype
    # The rounding into [0, 1] leaves the gradient alone: gradcheck on a well-conditioned graph.
    leaf = torch.randn(2, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: structure.relax(s, 0.7), (leaf,))


@pytest.mark.parametrize("structure", [*STRUCTURES, SpanningTree(edge_list=True)], ids=repr)
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("scale", [1.0, 300.0])  # 300: the exact-elimination fallback
def test_every_path_runs_without_autograd(
    structure: SpanningTree | Arborescence, mode: type, scale: float
) -> None:
    generator = torch.Generator().manual_seed(5)
    shape = (3, 10) if getattr(structure, "edge_list", False) else (3, 5, 5)
    scores = torch.randn(shape, dtype=torch.float64, generator=generator) * scale
    expected = structure.relax(scores, 0.5)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        with mode():
            x = structure.relax(scores.to(dtype), 0.5)
            structure.log_partition(scores.to(dtype))
            structure.argmax(scores.to(dtype))
        assert x.dtype == dtype and bool(torch.isfinite(x).all())
        if dtype == torch.float64:
            torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(
    structure: SpanningTree | Arborescence, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(9)
    scores = torch.randn(4, 6, 6, generator=generator).to(dtype)
    for tau in (0.01, 1.0):
        x = structure.relax(scores, tau)
        assert x.dtype == dtype
        torch.testing.assert_close(
            x, structure.relax(scores.float(), tau).to(dtype), rtol=0, atol=0
        )
    assert structure.log_partition(scores).dtype == dtype
    tiny = 1e-6 if dtype == torch.float16 else 1e-40  # log Z beyond the dtype's largest value
    with pytest.raises(ValueError, match="overflow"):
        structure.log_partition(scores, tau=tiny)


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_relax_options_are_checked(structure: SpanningTree | Arborescence) -> None:
    assert type(structure).relax_option_names == ("regularizer",)
    with pytest.raises(TypeError, match=r"unknown relax option 'regulariser'.*regularizer"):
        structure.relax(torch.zeros(3, 3), regulariser="entropy")
    with pytest.raises(ValueError, match="regularizer must be 'entropy'"):
        structure.relax(torch.zeros(3, 3), regularizer="sparsemax")
    with pytest.raises(TypeError, match="regularizer must be a str"):
        structure.relax(torch.zeros(3, 3), regularizer=1)


@pytest.mark.parametrize("structure", STRUCTURES, ids=["arborescence", "root-2", "spanning"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 300.0])  # 300: the float64 redo and the elimination
def test_masked_arcs_on_every_path_match_enumeration(
    structure: SpanningTree | Arborescence, dtype: torch.dtype, scale: float
) -> None:
    # -inf scores reach the inverse formula as weight 0 and leave the mask only on the graphs
    # the elimination redoes (in log space); either way they get zero mass and zero gradient.
    generator = torch.Generator().manual_seed(11)
    n = 5
    scores = torch.randn(4, n, n, dtype=torch.float64, generator=generator) * scale
    scores[:, 3, 4] = scores[:, 4, 3] = -torch.inf
    scores[1, 1, 2] = scores[1, 2, 1] = -torch.inf
    trees = structure.enumerate((n, n), dtype=torch.float64)
    # A spanning tree reads its upper triangle only.
    used = (trees.triu(1) if isinstance(structure, SpanningTree) else trees).bool()
    feasible = ~(used & (scores[:, None] == -torch.inf)).flatten(2).any(-1)
    z = torch.where(used, scores[:, None], 0.0).flatten(2).sum(-1) / 0.5
    law = torch.softmax(z.masked_fill(~feasible, -torch.inf), -1)
    expected = (law[..., None, None] * trees).sum(1)
    leaf = scores.to(dtype).requires_grad_()
    x = structure.relax(leaf, 0.5)
    tolerance = MARGINAL_TOLERANCE[dtype] * 10
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=tolerance)
    x.square().sum().backward()
    assert bool(torch.isfinite(leaf.grad).all())
    assert float(leaf.grad[scores == -torch.inf].abs().max()) == 0.0


def test_a_batch_with_many_doomed_graphs_goes_to_float64_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Half the graphs carry the hopeless heavy 2-cycle: no float32 pass for the others either.
    scores = torch.zeros(_FLOAT32_SIZE // 16 + 2, 4, 4)
    scores[::2, 1, 2] = scores[::2, 2, 1] = 40.0
    seen: list[torch.dtype] = []

    def spy(scores: torch.Tensor, *args: object, **options: object) -> object:
        seen.append(options.get("dtype") or scores.dtype)  # the dtype of the computation
        return _marginals_by_inverse(scores, *args, **options)

    monkeypatch.setattr(matrix_tree, "_marginals_by_inverse", spy)
    marginals = Arborescence().relax(scores, 1.0)
    assert seen == [torch.float64]
    reference = Arborescence().relax(scores.double(), 1.0)
    torch.testing.assert_close(marginals.double(), reference, rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("structure", STRUCTURES, ids=["arborescence", "root-2", "spanning"])
def test_whole_lengths_use_the_shared_mask(structure: SpanningTree | Arborescence) -> None:
    # lengths = n everywhere is no lengths at all: the cached (n, n) mask, the same marginals.
    scores = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(2))
    whole = torch.full((3,), 6)
    assert structure._arcs(scores, whole) is full_arc_mask(6, structure._root, scores.device)
    assert structure._arcs(scores, torch.tensor([6, 5, 6])).shape == (3, 6, 6)
    torch.testing.assert_close(structure.relax(scores, lengths=whole), structure.relax(scores))


def _exact(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """The subtraction-free elimination's marginals, float64 (root 0, every arc usable)."""
    n = scores.shape[-1]
    arcs = full_arc_mask(n, 0, scores.device).expand(scores.shape)
    z = matrix_tree.centered_log_weights(scores.double(), arcs, tau, torch.float64)
    return matrix_tree._elimination_marginals(z, arcs, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [3, 10, 30])
def test_graphs_bounded_by_their_range_skip_the_estimate_and_meet_the_tolerance(dtype, n) -> None:
    # The worst case of the range bound: the root's arcs at the bottom of the range, every
    # other arc at the top, so the walk returns as often as the range allows; spreads up to
    # the largest the bound accepts.
    tolerance = MARGINAL_TOLERANCE[dtype]
    arcs = full_arc_mask(n, 0, torch.device("cpu"))
    accepted = []
    for spread in (2.0, 8.0, 12.0, 14.0, 16.0, 18.0, 25.0):
        scores = torch.full((4, n, n), spread, dtype=torch.float64)
        scores[:, 0, :] = 0.0
        scores = scores + 0.01 * torch.randn(4, n, n, dtype=torch.float64)
        scores = scores.to(dtype)
        bounded = matrix_tree._accurate_by_range(scores, arcs, 1.0, tolerance)
        accepted.append(bounded)
        if bounded:
            error = (arc_marginals(scores, arcs, 0) - _exact(scores, 1.0)).abs().max()
            assert float(error) <= tolerance / 4, (spread, float(error))
    assert accepted[0] and not accepted[-1]  # narrow ranges are bounded, wide ones are not


def test_the_range_bound_is_refused_for_masks_and_masks_without_the_root() -> None:
    n = 6
    arcs = full_arc_mask(n, 0, torch.device("cpu"))
    scores = torch.randn(3, n, n)
    assert matrix_tree._accurate_by_range(scores, arcs, 1.0, FLOAT32_TOLERANCE)
    masked = scores.clone()
    masked[0, 2, 3] = -float("inf")
    assert not matrix_tree._accurate_by_range(masked, arcs, 1.0, FLOAT32_TOLERANCE)
    no_root = arcs.clone()
    no_root[0, 4] = False  # node 4 cannot hang from the root
    assert not matrix_tree._accurate_by_range(scores, no_root, 1.0, FLOAT32_TOLERANCE)
    assert not matrix_tree._accurate_by_range(scores, arcs, 0.01, FLOAT32_TOLERANCE)  # range / tau


@pytest.mark.parametrize("structure", STRUCTURES, ids=["arborescence", "root-2", "spanning"])
def test_the_range_shortcut_gives_the_estimated_paths_marginals_and_gradients(structure) -> None:
    # The same computation with and without the estimate: equal to the last bit.
    scores = torch.randn(8, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    if isinstance(structure, SpanningTree):
        scores = scores + scores.transpose(-1, -2)
    leaf = scores.clone().requires_grad_()
    fast = structure.relax(leaf, 0.7)
    (fast_grad,) = torch.autograd.grad((fast * scores).sum(), leaf)
    original = matrix_tree._accurate_by_range
    try:
        matrix_tree._accurate_by_range = lambda *args, **kwargs: False
        other = scores.clone().requires_grad_()
        slow = structure.relax(other, 0.7)
        (slow_grad,) = torch.autograd.grad((slow * scores).sum(), other)
    finally:
        matrix_tree._accurate_by_range = original
    assert torch.equal(fast, slow)
    assert torch.equal(fast_grad, slow_grad)
