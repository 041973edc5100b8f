"""Properties of every estimator on every structure: a valid forward value, a finite gradient.

Through both entry points, ``pickgrad.select`` (pathwise estimators) and ``pickgrad.estimate``
(every estimator, ``reinforce`` with each baseline), on the inputs of
:mod:`properties.strategies`: hard estimators must return a valid structure (by its
definition), soft ones a point of the structure's polytope; the gradient reaching the scores
must be finite, of the scores' shape and dtype. An estimator that needs a capability the
structure lacks must say so with ``NotImplementedError``. The laws are in
:mod:`properties.laws`.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pickgrad
from properties import laws
from properties.strategies import STRUCTURE_KINDS, examples, problems

ESTIMATOR_CASES: list[tuple[str, dict[str, Any]]] = [
    (name, {}) for name in pickgrad.available_estimators() if name != "reinforce"
] + [("reinforce", {"baseline": baseline}) for baseline in pickgrad.BASELINES]
PATHWISE_CASES = [
    (name, options) for name, options in ESTIMATOR_CASES if not laws.build(name, options).needs_loss
]


#: (estimator, structure kind) pairs that still break a law on the current code: they run in
#: test_pending.py until their fix lands.
PENDING_PAIRS = {("gumbel-rao", "subset")}


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, options = case
    return "-".join([name, *map(str, options.values())])


def pairs(cases: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Every (estimator case, structure kind) pair not pending, as pytest params."""
    return [
        pytest.param(case, kind, id=f"{case_id(case)}-{kind}")
        for case in cases
        for kind in STRUCTURE_KINDS
        if (case[0], kind) not in PENDING_PAIRS
    ]


@pytest.mark.parametrize(("case", "kind"), pairs(PATHWISE_CASES))
@examples(5)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_select_gives_a_valid_value_and_a_finite_gradient(case, kind, data, seed):
    name, options = case
    problem = data.draw(problems((kind,)), label="problem")
    laws.select_is_valid_with_finite_gradient(name, options, problem, seed)


@pytest.mark.parametrize(("case", "kind"), pairs(ESTIMATOR_CASES))
@examples(5)
@given(
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
    n_samples=st.integers(1, 3),
    per_example=st.booleans(),
)
def test_estimate_gives_valid_samples_a_finite_value_and_gradient(
    case, kind, data, seed, n_samples, per_example
):
    name, options = case
    problem = data.draw(problems((kind,)), label="problem")
    laws.estimate_is_valid_with_finite_gradient(
        name, options, problem, seed, n_samples, per_example
    )
