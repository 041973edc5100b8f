"""Properties of every estimator on every structure: a valid forward value, a finite gradient.

Through both entry points, ``pickgrad.select`` (pathwise estimators) and ``pickgrad.estimate``
(every estimator, ``reinforce`` with each baseline), on the inputs of
:mod:`properties.strategies`: hard estimators must return a valid structure (by its
definition), soft ones a point of the structure's polytope; the gradient reaching the scores
must be finite, of the scores' shape and dtype. An estimator that needs a capability the
structure lacks must say so with ``NotImplementedError``. Also: every pathwise estimator runs
under ``no_grad`` and ``inference_mode``, and a non-finite loss is a ``ValueError`` naming
``loss_fn`` that leaves the estimator's state alone. The laws are in :mod:`properties.laws`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pickgrad
from properties import laws
from properties.strategies import STRUCTURE_KINDS, examples, problems

#: Every registered estimator with its defaults, and reinforce with each baseline, including
#: NVIL's learned baseline with and without normalisation (contract 4).
ESTIMATOR_CASES: list[tuple[str, dict[str, Any]]] = (
    [(name, {}) for name in pickgrad.available_estimators() if name != "reinforce"]
    + [
        ("reinforce", {"baseline": baseline})
        for baseline in dict.fromkeys([*pickgrad.BASELINES, "learned"])
    ]
    + [("reinforce", {"baseline": "learned", "normalize": True})]
)
PATHWISE_CASES = [
    (name, options) for name, options in ESTIMATOR_CASES if not laws.build(name, options).needs_loss
]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, options = case
    return "-".join([name, *map(str, options.values())])


def pairs(estimator_cases: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Every (estimator case, structure kind) pair as a pytest param ``<estimator>-<kind>``."""
    return [
        pytest.param(name, options, kind, id=f"{case_id((name, options))}-{kind}")
        for name, options in estimator_cases
        for kind in STRUCTURE_KINDS
    ]


PATHWISE_PAIRS = pairs(PATHWISE_CASES)
ESTIMATOR_PAIRS = pairs(ESTIMATOR_CASES)


def make_select_test(params: list[Any]) -> Any:
    @pytest.mark.parametrize(("name", "options", "kind"), params)
    @examples(5)
    @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def test(name, options, kind, data, seed):
        problem = data.draw(problems((kind,)), label="problem")
        laws.select_is_valid_with_finite_gradient(name, options, problem, seed)

    return test


def make_estimate_test(params: list[Any]) -> Any:
    @pytest.mark.parametrize(("name", "options", "kind"), params)
    @examples(5)
    @given(
        data=st.data(),
        seed=st.integers(0, 2**32 - 1),
        n_samples=st.integers(1, 3),
        per_example=st.booleans(),
    )
    def test(name, options, kind, data, seed, n_samples, per_example):
        problem = data.draw(problems((kind,)), label="problem")
        laws.estimate_is_valid_with_finite_gradient(
            name, options, problem, seed, n_samples, per_example
        )

    return test


def make_select_without_autograd_test(params: list[Any]) -> Any:
    @pytest.mark.parametrize(("name", "options", "kind"), params)
    @examples(3)
    @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def test(name, options, kind, data, seed):
        problem = data.draw(problems((kind,)), label="problem")
        laws.select_works_without_autograd(name, options, problem, seed)

    return test


def make_non_finite_loss_test(params: list[Any]) -> Any:
    @pytest.mark.parametrize(("name", "options", "kind"), params)
    @examples(3)
    @given(
        data=st.data(),
        bad=st.sampled_from([math.nan, math.inf, -math.inf]),
        where=st.integers(0, 1),
    )
    def test(name, options, kind, data, bad, where):
        problem = data.draw(problems((kind,)), label="problem")
        laws.non_finite_loss_is_a_clear_error(name, options, problem, bad, where)

    return test


test_select_gives_a_valid_value_and_a_finite_gradient = make_select_test(PATHWISE_PAIRS)
test_estimate_gives_valid_samples_a_finite_value_and_gradient = make_estimate_test(ESTIMATOR_PAIRS)
test_select_works_under_no_grad_and_inference_mode = make_select_without_autograd_test(
    PATHWISE_PAIRS
)
test_a_non_finite_loss_is_a_clear_error = make_non_finite_loss_test(ESTIMATOR_PAIRS)
