"""Properties of every structure's argmax, relax and log_partition, against their definitions.

Drawn by :mod:`properties.strategies`: every structure at every valid size from 1 to 8, batch
shapes with 0 to 3 leading dimensions (empty included), the four floating dtypes, tau in
[0.01, 100], score scales in [1e-3, 1e4] with exact ties and large common offsets. References
are computed in float64 from the scores as rounded to their dtype. The laws are in
:mod:`properties.laws`; the minimal reproductions of bugs the suite found are kept as
regression tests in ``test_regressions.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset
from properties import laws
from properties.strategies import (
    DTYPES,
    LONG,
    MAX_ENUMERATED_TREE,
    STRUCTURE_KINDS,
    Problem,
    cases,
    check_valid,
    enumerated,
    examples,
    problems,
    solution_count,
    structures,
)

#: Every relaxation: (structure kind, relax options).
RELAX_CASES = cases(
    [
        ("onehot", {}),
        ("onehot", {"regularizer": "sparsemax"}),
        ("subset", {}),
        ("subset", {"regularizer": "binary-entropy"}),
        ("subset", {"regularizer": "euclidean"}),
        ("permutation", {}),
        ("spanning-tree", {}),
        ("spanning-tree-edges", {}),
        ("arborescence", {}),
    ],
    [
        "onehot",
        "onehot-sparsemax",
        "subset",
        "subset-binary-entropy",
        "subset-euclidean",
        "permutation",
        "spanning-tree",
        "spanning-tree-edges",
        "arborescence",
    ],
)
KINDS = cases(list(STRUCTURE_KINDS), list(STRUCTURE_KINDS))
LOG_PARTITION_KINDS = [param for param in KINDS if param.id != "permutation"]
EXTREME_TAUS = st.one_of(
    st.floats(-300.0, -2.0).map(lambda exponent: 10.0**exponent),
    st.floats(2.0, 300.0).map(lambda exponent: 10.0**exponent),
)


@pytest.mark.parametrize("kind", KINDS)
@examples(8)
@given(data=st.data())
def test_enumerate_lists_every_solution_once(kind, data):
    # Trees of 7 nodes take about 1 s to enumerate; 6 keeps the CI profile quick.
    max_tree = MAX_ENUMERATED_TREE if LONG else 6
    structure, event_shape = data.draw(structures((kind,), max_tree=max_tree))
    every = structure.enumerate(event_shape, dtype=torch.float64)
    assert every.shape == (solution_count(structure, event_shape), *event_shape)
    check_valid(structure, every, every.shape)
    assert torch.unique(every.reshape(every.shape[0], -1), dim=0).shape[0] == every.shape[0]


@pytest.mark.parametrize("kind", KINDS)
@examples(15)
@given(data=st.data())
def test_argmax_is_a_valid_structure_and_as_good_as_brute_force(kind, data):
    laws.argmax_is_valid_and_optimal(
        data.draw(problems((kind,), max_tree=MAX_ENUMERATED_TREE), label="problem")
    )


def make_relax_test(params: list[Any]) -> Any:
    @pytest.mark.parametrize(("kind", "options"), params)
    @examples(20)
    @given(data=st.data())
    def test(kind, options, data):
        problem = data.draw(problems((kind,)), label="problem")
        laws.relax_is_in_polytope_and_matches_float64(problem, **options)

    return test


test_relax_is_in_the_polytope_and_matches_float64 = make_relax_test(RELAX_CASES)


@pytest.mark.parametrize("kind", KINDS)
@examples(10)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_relax_is_invariant_to_offsets_that_keep_the_law(kind, data, seed):
    problem = data.draw(problems((kind,), dtypes=(torch.float64,)), label="problem")
    laws.relax_is_shift_invariant(problem, seed)


@pytest.mark.parametrize("kind", LOG_PARTITION_KINDS)
@examples(15)
@given(data=st.data())
def test_log_partition_is_the_logsumexp_over_enumeration(kind, data):
    problem = data.draw(problems((kind,), max_tree=MAX_ENUMERATED_TREE), label="problem")
    laws.log_partition_is_logsumexp_over_enumeration(problem)


def make_extreme_tau_test(params: list[Any]) -> Any:
    @pytest.mark.parametrize("kind", params)
    @examples(10)
    @given(data=st.data(), tau=EXTREME_TAUS)
    def test(kind, data, tau):
        problem = data.draw(problems((kind,)), label="problem")
        laws.extreme_tau_raises_or_stays_finite(problem, tau)

    return test


test_extreme_tau_raises_or_stays_finite = make_extreme_tau_test(KINDS)


@pytest.mark.parametrize("kind", KINDS)
@examples(10)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_argmax_at_extreme_magnitudes_is_valid_or_refused(kind, data, seed):
    problem = data.draw(problems((kind,), max_tree=MAX_ENUMERATED_TREE), label="problem")
    laws.argmax_at_extreme_magnitudes_is_valid_or_refused(problem, seed)


@pytest.mark.parametrize("kind", KINDS)
@examples(10)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_relax_at_extreme_magnitudes_is_valid_or_refused(kind, data, seed):
    problem = data.draw(problems((kind,)), label="problem")
    laws.relax_at_extreme_magnitudes_is_valid_or_refused(problem, seed)


@pytest.mark.parametrize("kind", KINDS)
@examples(10)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_samplers_reject_an_x_that_is_not_a_solution(kind, data, seed):
    laws.samplers_reject_non_solutions(data.draw(problems((kind,)), label="problem"), seed)


def make_relax_without_autograd_test(params: list[Any]) -> Any:
    @pytest.mark.parametrize(("kind", "options"), params)
    @examples(10)
    @given(data=st.data())
    def test(kind, options, data):
        problem = data.draw(problems((kind,)), label="problem")
        laws.relax_is_the_same_without_autograd(problem, **options)

    return test


test_relax_is_the_same_under_no_grad_and_inference_mode = make_relax_without_autograd_test(
    RELAX_CASES
)


@examples(10)
@given(problems(kinds=("permutation",)))
def test_permutation_log_partition_raises_not_implemented(problem: Problem):
    assert not problem.structure.supports("log_partition")
    with pytest.raises(NotImplementedError, match="permanent"):
        problem.structure.log_partition(problem.scores, problem.tau)


@examples(30)
@given(st.integers(0, 8), st.integers(0, 8), st.sampled_from(DTYPES))
def test_invalid_sizes_raise_the_documented_errors(n: int, extra: int, dtype: torch.dtype):
    # OneHot: an empty event dimension.
    with pytest.raises(ValueError, match="empty event dimension"):
        OneHot().relax(torch.zeros(2, 0, dtype=dtype))
    # Subset(k) needs 1 <= k <= n.
    if n:
        with pytest.raises(ValueError, match=rf"k <= n.*n={n}"):
            Subset(n + 1 + extra).argmax(torch.zeros(n, dtype=dtype))
    with pytest.raises(ValueError, match="k must be >= 1"):
        Subset(-extra)
    with pytest.raises(TypeError, match="k must be an int"):
        Subset(float(n + 1))  # type: ignore[arg-type]
    # Permutation needs s <= n.
    s = n + 1 + extra
    if n:
        with pytest.raises(ValueError, match=rf"s <= n.*\({s}, {n}\)"):
            Permutation().relax(torch.zeros(s, n, dtype=dtype))
    # Trees need square scores and n >= 2.
    for tree in (SpanningTree(), Arborescence()):
        if n == 1:
            with pytest.raises(ValueError, match="n >= 2"):
                tree.argmax(torch.zeros(n, n, dtype=dtype))
        if n:
            with pytest.raises(ValueError, match="square"):
                tree.relax(torch.zeros(n, n + 1 + extra, dtype=dtype))
    # Edge lists need m = n (n - 1) / 2 entries.
    nodes = max(n, 2)
    m = nodes * (nodes - 1) // 2 + 1 + extra % (nodes - 1)  # between two triangular numbers
    with pytest.raises(ValueError, match=rf"m = n \(n - 1\) / 2 .*got m={m}"):
        SpanningTree(edge_list=True).relax(torch.zeros(m, dtype=dtype))
    if n >= 2:
        with pytest.raises(ValueError, match=rf"root={n + extra} .*must be < n"):
            Arborescence(root=n + extra).log_partition(torch.zeros(n, n, dtype=dtype))
    with pytest.raises(ValueError, match="root must be a node index >= 0"):
        Arborescence(root=-1 - extra)
    # tau must be a positive real number or a schedule: strings and bools are TypeErrors.
    for tau in (str(n + 1), bool(n % 2)):
        with pytest.raises(TypeError, match="tau"):
            OneHot().relax(torch.zeros(3, dtype=dtype), tau)  # type: ignore[arg-type]
    # Integer scores are a TypeError for every structure.
    for structure, shape in (
        (OneHot(), (3,)),
        (Subset(1), (3,)),
        (Permutation(), (3, 3)),
        (SpanningTree(), (3, 3)),
        (Arborescence(), (3, 3)),
    ):
        with pytest.raises(TypeError, match="floating dtype"):
            structure.argmax(torch.zeros(shape, dtype=torch.int64))


def test_the_enumeration_cache_tells_roots_apart():
    # The references cache enumerations by repr(structure): two roots must not share a list.
    assert not torch.equal(
        enumerated(Arborescence(root=0), (3, 3)), enumerated(Arborescence(root=1), (3, 3))
    )
