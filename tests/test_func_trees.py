"""Every estimator on SpanningTree and Arborescence under ``torch.func`` (vmap, grad, jacrev),
compared with eager autograd; and the values the trees read back to Python with validation off.

The trees' argmax solvers are capture-safe: Prim is out of place with a fixed n - 1 steps, and
Chu-Liu/Edmonds is the custom operator ``pickgrad::max_arborescence_parents`` (a fake kernel for
torch.compile, a vmap rule that folds the vmapped dimensions into its batch). ``TREE_CASES``
lists the pairs claimed under each transform (``test_compile_trees.py`` uses its ``compile``
lists); a pair missing from a list is not claimed, and docs/compile.md says why.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import pickgrad
from func_cases import (
    ALL,
    ESTIMATOR_OPTIONS,
    NO_RAO,
    FuncCase,
    chooser,
    pair_id,
    scores_and_weights,
)
from pickgrad import Arborescence, SpanningTree
from pickgrad.structures._tree_solvers import max_arborescence_parents

SOLVER_ONLY = ("st", "perturbed", "imle", "blackbox")  # no relaxation: no matrix-tree marginals
DETERMINISTIC = ("st", "st-relaxed", "relaxed", "blackbox")

# SpanningTree's gumbel-rao under vmap (and so jacrev): its conditional sampler
# (_tree_conditional) fills work-space buffers in place (scatter_reduce_, copy_), which vmap
# cannot batch. Arborescence has no gumbel-rao at all.
TREE_CASES = [
    FuncCase("spanning-tree", SpanningTree(), (2, 4, 4), ALL, NO_RAO, ALL, NO_RAO),
    FuncCase("arborescence", Arborescence(), (3, 5, 5), NO_RAO, NO_RAO, NO_RAO, NO_RAO),
]


def tree_pairs(transform: str) -> list[tuple[FuncCase, str]]:
    return [(case, name) for case in TREE_CASES for name in getattr(case, transform)]


@pytest.fixture(autouse=True)
def _no_validation() -> Iterator[None]:
    with pickgrad.validation(False):
        yield


def _eager_gradient(case: FuncCase, estimator: str, seed: int) -> torch.Tensor:
    scores, weights = scores_and_weights(case, seed)
    leaf = scores.clone().requires_grad_()
    torch.manual_seed(seed)
    x = chooser(case, estimator)(leaf)
    (gradient,) = torch.autograd.grad((x * weights).sum(), leaf)
    return gradient


def test_the_table_covers_every_available_estimator() -> None:
    for case in TREE_CASES:
        available = set(pickgrad.available_estimators(case.structure)) - {"reinforce"}
        assert set(case.grad) == available  # reinforce has no select


@pytest.mark.parametrize("pair", tree_pairs("grad"), ids=pair_id)
def test_grad_equals_eager_autograd(pair: tuple[FuncCase, str]) -> None:
    case, estimator = pair
    scores, weights = scores_and_weights(case, 1)
    choose = chooser(case, estimator)
    torch.manual_seed(1)
    gradient = torch.func.grad(lambda s: (choose(s) * weights).sum())(scores)
    torch.testing.assert_close(
        gradient, _eager_gradient(case, estimator, 1), atol=1e-12, rtol=1e-10
    )


@pytest.mark.parametrize("pair", tree_pairs("jacrev"), ids=pair_id)
def test_jacrev_equals_the_eager_jacobian(pair: tuple[FuncCase, str]) -> None:
    case, estimator = pair
    scores, _ = scores_and_weights(case, 2)
    choose = chooser(case, estimator)
    torch.manual_seed(2)
    jacobian = torch.func.jacrev(choose)(scores)  # imle / blackbox: the solver under vmap
    torch.manual_seed(2)
    expected = torch.autograd.functional.jacobian(choose, scores)
    assert jacobian.shape == (*case.shape, *case.shape)
    torch.testing.assert_close(jacobian, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(
    "pair", [p for p in tree_pairs("vmap") if p[1] in DETERMINISTIC], ids=pair_id
)
def test_vmap_of_a_deterministic_estimator_equals_the_batched_call(
    pair: tuple[FuncCase, str],
) -> None:
    case, estimator = pair
    scores, weights = scores_and_weights(case, 3)
    choose = chooser(case, estimator)
    torch.testing.assert_close(torch.func.vmap(choose)(scores), choose(scores))
    gradients = torch.func.vmap(torch.func.grad(lambda s, w: (choose(s) * w).sum()))(
        scores, weights
    )
    torch.testing.assert_close(gradients, _eager_gradient(case, estimator, 3))


@pytest.mark.parametrize("pair", tree_pairs("vmap"), ids=pair_id)
def test_vmap_and_vmap_of_grad_run_with_every_randomness_mode(pair: tuple[FuncCase, str]) -> None:
    case, estimator = pair
    scores, weights = scores_and_weights(case, 4)
    choose = chooser(case, estimator)
    eager = choose(scores)
    hard = pickgrad.get_estimator(estimator, **ESTIMATOR_OPTIONS[estimator]).hard
    for randomness in ("different", "same"):
        x = torch.func.vmap(choose, randomness=randomness)(scores)
        assert x.shape == eager.shape and x.dtype == eager.dtype
        if hard:  # a solution is its own argmax
            assert torch.equal(case.structure.argmax(x), x)
        if estimator in DETERMINISTIC:
            torch.testing.assert_close(x, eager)
    gradients = torch.func.vmap(
        torch.func.grad(lambda s, w: (choose(s) * w).sum()), randomness="different"
    )(scores, weights)
    assert gradients.shape == scores.shape and bool(torch.isfinite(gradients).all())


@pytest.mark.parametrize("structure", [SpanningTree(), Arborescence(root=1)], ids=repr)
def test_vmap_of_argmax_with_lengths_and_nested_dims(structure: Any) -> None:
    # Two vmapped dimensions over a batch of graphs of different sizes (the rule folds both).
    generator = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 3, 4, 7, 7, dtype=torch.float64, generator=generator)
    lengths = torch.randint(2, 8, (2, 3, 4), generator=generator)
    argmax = lambda s, n: structure.argmax(s, lengths=n)  # noqa: E731
    nested = torch.func.vmap(torch.func.vmap(argmax))(scores, lengths)
    torch.testing.assert_close(nested, structure.argmax(scores, lengths=lengths), rtol=0, atol=0)
    # an unbatched argument: the same lengths for every vmapped entry
    shared = torch.func.vmap(argmax, in_dims=(0, None))(scores[:, 0], lengths[0, 0])
    expected = structure.argmax(scores[:, 0], lengths=lengths[0, 0].expand(2, 4))
    torch.testing.assert_close(shared, expected, rtol=0, atol=0)


def test_the_arborescence_operator_handles_an_empty_batch() -> None:
    parents = max_arborescence_parents(
        torch.zeros(0, 4, 4, dtype=torch.float64), 0, torch.ones(0, 4, dtype=torch.bool)
    )
    assert parents.shape == (0, 4) and parents.dtype == torch.long


# --- values read back to Python with validation off ---------------------------------------------

_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "nonzero")

#: Where the trees may read a value with validation off, and why: Chu-Liu/Edmonds' stopping test
#: and its graphs leaving the batch (one ``nonzero`` per round), and the matrix-tree marginals'
#: accuracy fallback (which graphs to redo in float64 or by exact elimination).
ALLOWED_READS = {
    ("_tree_solvers.py", "_chu_liu_edmonds"),
    ("_matrix_tree.py", "arc_marginals"),
}


def _count_reads(run: Any) -> Counter[tuple[str, str]]:
    """Run ``run()`` counting every tensor value read back to Python, by calling function."""
    saved = {name: getattr(torch.Tensor, name) for name in _READS}
    reads: Counter[tuple[str, str]] = Counter()

    def counted(name: str) -> Any:
        method = saved[name]

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            code = sys._getframe(1).f_code
            reads[(os.path.basename(code.co_filename), code.co_name)] += 1
            return method(self, *args, **kwargs)

        return read

    try:
        for name in _READS:
            setattr(torch.Tensor, name, counted(name))
        run()
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
    return reads


READ_PAIRS = [
    (structure, estimator)
    for structure in (SpanningTree(), Arborescence())
    for estimator in pickgrad.available_estimators(structure)
]


@pytest.mark.parametrize(
    ("structure", "estimator"), READ_PAIRS, ids=[f"{s!r}-{e}" for s, e in READ_PAIRS]
)
def test_tree_hot_paths_read_values_only_where_the_algorithm_needs_them(
    structure: Any, estimator: str
) -> None:
    scores = torch.randn(3, 6, 6, requires_grad=True)
    lengths = torch.tensor([6, 4, 5])

    def run() -> None:
        if type(pickgrad.get_estimator(estimator)).needs_loss:
            out = pickgrad.estimate(
                lambda x: x.sum((-1, -2)),
                scores,
                structure,
                estimator,
                n_samples=2,
                lengths=lengths,
            )
        else:
            out = pickgrad.select(scores, structure, estimator, tau=0.5, lengths=lengths)
        out.sum().backward()

    reads = _count_reads(run)
    assert set(reads) <= ALLOWED_READS, reads
    solver_reads = reads[("_tree_solvers.py", "_chu_liu_edmonds")]
    if isinstance(structure, SpanningTree) or estimator in ("relaxed", "gumbel-relaxed"):
        assert solver_reads == 0  # Prim reads nothing; the relaxations call no solver
    else:
        assert solver_reads >= 1  # one per Chu-Liu/Edmonds round
    if estimator in SOLVER_ONLY or estimator == "reinforce":
        assert reads[("_matrix_tree.py", "arc_marginals")] == 0
    assert scores.grad is not None


def test_the_read_counter_counts() -> None:
    assert _count_reads(lambda: bool(torch.ones(()))) == Counter(
        {(os.path.basename(__file__), "<lambda>"): 1}
    )
