"""The trees under ``torch.func`` beyond the estimator table: vmap of their argmax solvers with
lengths and nested dimensions, and the values the trees read back to Python with validation off.

The trees' argmax solvers are capture-safe: Prim is out of place with a fixed n - 1 steps, and
Chu-Liu/Edmonds is the custom operator ``pickgrad::max_arborescence_parents`` (a fake kernel for
torch.compile, a vmap rule that folds the vmapped dimensions into its batch). Every estimator on
both trees under vmap, grad and jacrev is in ``test_func_estimators.py``, from the table of
``func_cases.FUNC_CASES``; ``TREE_CASES`` are its tree rows (``test_compile_trees.py`` uses their
``compile`` lists); a pair missing from a list is not claimed, and docs/compile.md says why.
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
from func_cases import FUNC_CASES, FuncCase
from pickgrad import Arborescence, SpanningTree
from pickgrad.structures._tree_solvers import max_arborescence_parents

SOLVER_ONLY = ("st", "perturbed", "imle", "blackbox")  # no relaxation: no matrix-tree marginals

TREE_CASES = [case for case in FUNC_CASES if case.id in ("spanning-tree", "arborescence")]


def tree_pairs(transform: str) -> list[tuple[FuncCase, str]]:
    return [(case, name) for case in TREE_CASES for name in getattr(case, transform)]


@pytest.fixture(autouse=True)
def _no_validation() -> Iterator[None]:
    with pickgrad.validation(False):
        yield


def test_the_table_covers_every_available_estimator() -> None:
    for case in TREE_CASES:
        available = set(pickgrad.available_estimators(case.structure)) - {"reinforce"}
        assert set(case.grad) == available  # reinforce has no select


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
#: and its graphs leaving the batch (one ``nonzero`` per round), the matrix-tree marginals'
#: accuracy fallback (which graphs to redo in float64 or by exact elimination), and Prim's NumPy
#: steps (``_prim_numpy``, and the argmax's NumPy route ``spanning_tree_parents_numpy``), taken
#: on CPU tensors only, where a host view is no device sync (its torch steps, used on other devices
#: and under capture, read nothing: test_tree_kernels_capture.py).
ALLOWED_READS = {
    ("_tree_solvers.py", "_chu_liu_edmonds"),
    ("_matrix_tree.py", "arc_marginals"),
    ("_matrix_tree.py", "_arcs"),  # whether every graph is whole (the shared arc mask)
    ("_matrix_tree.py", "_accurate_by_range"),  # the scores' range and the root's arcs
    ("_tree_solvers.py", "_prim_numpy"),
    ("_tree_solvers.py", "spanning_tree_parents_numpy"),
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
        assert solver_reads == 0  # no Chu-Liu/Edmonds there
    else:
        assert solver_reads >= 1  # one per Chu-Liu/Edmonds round
    if isinstance(structure, Arborescence) or estimator in ("relaxed", "gumbel-relaxed"):
        assert reads[("_tree_solvers.py", "_prim_numpy")] == 0
        assert reads[("_tree_solvers.py", "spanning_tree_parents_numpy")] == 0
    if estimator in SOLVER_ONLY or estimator == "reinforce":
        assert reads[("_matrix_tree.py", "arc_marginals")] == 0
    assert scores.grad is not None


def test_the_read_counter_counts() -> None:
    assert _count_reads(lambda: bool(torch.ones(()))) == Counter(
        {(os.path.basename(__file__), "<lambda>"): 1}
    )
