"""``pickgrad.select`` and ``pickgrad.estimate``: the API, and clear errors on bad input."""

from __future__ import annotations

import math
import re

import pytest
import torch

import pickgrad
from pickgrad import Estimator, OneHot, StraightThroughGumbel
from pickgrad.estimators.base import register_estimator
from pickgrad.structures.base import Structure

ONEHOT = OneHot()
CORE_ESTIMATORS = ("st", "st-relaxed", "relaxed", "gumbel-relaxed", "st-gumbel", "gumbel-rao")


def _loss(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.arange(x.shape[-1], dtype=x.dtype)).flatten(1).sum(1)


# --- the API -------------------------------------------------------------------------------------


def test_default_estimator_is_st_gumbel() -> None:
    scores = torch.randn(3, 4)
    by_default = pickgrad.select(scores, ONEHOT, generator=torch.Generator().manual_seed(2))
    by_name = pickgrad.select(
        scores, ONEHOT, "st-gumbel", generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(by_default, by_name)
    assert torch.all(by_default.sum(-1) == 1)


def test_estimator_object_equals_its_name() -> None:
    scores = torch.randn(3, 4, requires_grad=True)
    by_object = pickgrad.select(
        scores, ONEHOT, StraightThroughGumbel(), tau=0.5, generator=torch.Generator().manual_seed(2)
    )
    by_name = pickgrad.select(
        scores, ONEHOT, "st-gumbel", tau=0.5, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(by_object, by_name)
    (grad_object,) = torch.autograd.grad(by_object.sum(), scores)
    (grad_name,) = torch.autograd.grad(by_name.sum(), scores)
    assert torch.equal(grad_object, grad_name)


def test_global_seed_gives_the_same_sample() -> None:
    scores = torch.randn(50, 6)
    torch.manual_seed(8)
    first = pickgrad.select(scores, ONEHOT, "st-gumbel")
    torch.manual_seed(8)
    second = pickgrad.select(scores, ONEHOT, "st-gumbel")
    assert torch.equal(first, second)
    assert not torch.equal(first, pickgrad.select(scores, ONEHOT, "st-gumbel"))


def test_available_estimators() -> None:
    names = pickgrad.available_estimators()
    assert set(CORE_ESTIMATORS) | {"reinforce"} <= set(names)
    assert set(CORE_ESTIMATORS) | {"reinforce"} <= set(pickgrad.available_estimators(ONEHOT))
    pathwise = pickgrad.available_estimators(pathwise_only=True)
    assert "reinforce" not in pathwise and set(CORE_ESTIMATORS) <= set(pathwise)


def test_structure_without_a_capability_lists_fewer_estimators_and_refuses_the_others() -> None:
    class ArgmaxOnly(Structure):
        def _argmax(self, scores: torch.Tensor) -> torch.Tensor:
            return ONEHOT._argmax(scores)

    structure = ArgmaxOnly()
    names = pickgrad.available_estimators(structure)
    assert "st" in names and "st-relaxed" not in names and "gumbel-rao" not in names
    with pytest.raises(NotImplementedError, match="'st-relaxed' needs relax"):
        pickgrad.select(torch.randn(4), structure, "st-relaxed")
    assert torch.equal(
        pickgrad.select(torch.tensor([0.0, 2.0]), structure, "st"), torch.tensor([0.0, 1])
    )


def test_get_estimator_resolves_names_and_passes_objects() -> None:
    estimator = pickgrad.get_estimator("reinforce", baseline="rloo")
    assert isinstance(estimator, pickgrad.Reinforce) and estimator.baseline == "rloo"
    assert pickgrad.get_estimator(estimator) is estimator


def test_registering_a_second_estimator_under_a_taken_name_fails() -> None:
    class Impostor(Estimator):
        name = "st"

    with pytest.raises(ValueError, match="an estimator named 'st' is already registered"):
        register_estimator(Impostor)


def test_estimate_value_is_the_mean_loss_over_samples() -> None:
    scores = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    for estimator in (*CORE_ESTIMATORS, "reinforce"):
        seen: list[torch.Tensor] = []

        def loss_fn(x: torch.Tensor, seen: list[torch.Tensor] = seen) -> torch.Tensor:
            seen.append(x.detach())
            return _loss(x)

        value = pickgrad.estimate(
            loss_fn,
            scores,
            ONEHOT,
            estimator,
            n_samples=4,
            generator=torch.Generator().manual_seed(3),
        )
        (samples,) = seen
        assert samples.shape == (4, 2, 5)
        torch.testing.assert_close(value.detach(), _loss(samples).mean())


def test_estimate_accepts_per_batch_losses() -> None:
    scores = torch.randn(3, 5, requires_grad=True)
    value = pickgrad.estimate(
        lambda x: (x * torch.arange(5.0)).sum(-1), scores, ONEHOT, "reinforce", n_samples=2
    )
    value.backward()
    assert scores.grad is not None and scores.grad.shape == (3, 5)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_bad_tau_value(tau: float) -> None:
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        pickgrad.select(torch.randn(3), ONEHOT, "st-relaxed", tau=tau)
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        pickgrad.estimate(_loss, torch.randn(1, 3), ONEHOT, "reinforce", tau=tau)


def test_bad_tau_type() -> None:
    with pytest.raises(
        TypeError, match="tau must be a positive real number or a schedule, got str"
    ):
        pickgrad.select(torch.randn(3), ONEHOT, "st-relaxed", tau="hot")


@pytest.mark.parametrize(("bad", "word"), [(math.nan, "NaN"), (math.inf, "+inf")])
def test_non_finite_scores(bad: float, word: str) -> None:
    scores = torch.randn(2, 4)
    scores[1, 2] = bad
    expected = (
        rf"scores contains non-finite values \(1 {re.escape(word)} of 8 entries, shape \(2, 4\)\)"
    )
    with pytest.raises(ValueError, match=expected):
        pickgrad.select(scores, ONEHOT, "st")
    with pytest.raises(ValueError, match=expected):
        pickgrad.estimate(_loss, scores, ONEHOT, "reinforce")
    with pytest.raises(ValueError, match=expected):
        ONEHOT.argmax(scores)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_scores(dtype: torch.dtype) -> None:
    scores = torch.ones(2, 3, dtype=dtype)
    with pytest.raises(TypeError, match=f"scores must have a floating dtype.*got {dtype}"):
        pickgrad.select(scores, ONEHOT, "st")
    with pytest.raises(TypeError, match="scores must have a floating dtype"):
        ONEHOT.relax(scores)


def test_scores_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"scores must be a torch\.Tensor, got list"):
        pickgrad.select([1.0, 2.0], ONEHOT, "st")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_empty_last_dimension(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"scores has an empty event dimension: shape \("):
        pickgrad.select(torch.zeros(shape), ONEHOT, "st-gumbel")


def test_zero_dimensional_scores() -> None:
    with pytest.raises(ValueError, match=r"scores must have at least 1 dimension.*got shape \(\)"):
        pickgrad.select(torch.tensor(1.0), ONEHOT, "st")


def test_empty_batch_is_fine() -> None:
    x = pickgrad.select(torch.zeros(0, 4), ONEHOT, "st-gumbel")
    assert x.shape == (0, 4)


def test_unknown_estimator_name() -> None:
    with pytest.raises(ValueError, match=r"unknown estimator 'st-gumble'; known: .*st-gumbel"):
        pickgrad.select(torch.randn(3), ONEHOT, "st-gumble")
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        pickgrad.estimate(_loss, torch.randn(1, 3), ONEHOT, "nope")


def test_estimator_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="estimator must be a name or an Estimator, got int"):
        pickgrad.select(torch.randn(3), ONEHOT, 3)  # type: ignore[arg-type]


def test_options_with_an_estimator_object() -> None:
    with pytest.raises(
        TypeError, match=r"options \['n_draws'\] can only be given with an estimator name"
    ):
        pickgrad.select(torch.randn(3), ONEHOT, pickgrad.GumbelRao(), n_draws=3)


def test_unknown_option_for_a_named_estimator() -> None:
    with pytest.raises(TypeError, match="bad options for estimator 'st-gumbel'"):
        pickgrad.select(torch.randn(3), ONEHOT, "st-gumbel", temperature=2.0)


@pytest.mark.parametrize("structure", [OneHot, "onehot", None])
def test_structure_that_is_not_a_structure(structure: object) -> None:
    with pytest.raises(TypeError, match="structure must be a pickgrad Structure"):
        pickgrad.select(torch.randn(3), structure, "st")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="structure must be a pickgrad Structure"):
        pickgrad.estimate(_loss, torch.randn(1, 3), structure, "reinforce")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n_samples", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError)]
)
def test_bad_n_samples(n_samples: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="n_samples must be"):
        pickgrad.estimate(_loss, torch.randn(1, 3), ONEHOT, "reinforce", n_samples=n_samples)  # type: ignore[arg-type]


@pytest.mark.parametrize("generator", [0, "seed", torch.manual_seed])
def test_generator_that_is_not_a_generator(generator: object) -> None:
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None"):
        pickgrad.select(torch.randn(3), ONEHOT, "st-gumbel", generator=generator)  # type: ignore[arg-type]


def test_generator_on_the_wrong_device() -> None:
    # check_generator only compares device types, so no GPU is needed to exercise the message.
    from pickgrad._validation import check_generator

    with pytest.raises(ValueError, match="generator is on cpu but scores are on cuda"):
        check_generator(torch.Generator(), torch.device("cuda"))


def test_loss_fn_not_callable() -> None:
    with pytest.raises(TypeError, match="loss_fn must be callable, got int"):
        pickgrad.estimate(3, torch.randn(1, 3), ONEHOT, "st-gumbel")  # type: ignore[arg-type]


@pytest.mark.parametrize("estimator", ["st-gumbel", "reinforce"])
def test_loss_fn_with_the_wrong_shape(estimator: str) -> None:
    scores = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"loss_fn must return losses shaped .*got \(\)"):
        pickgrad.estimate(lambda x: x.sum(), scores, ONEHOT, estimator, n_samples=2)
    with pytest.raises(ValueError, match=r"loss_fn must return losses shaped .*got \(2, 4, 3\)"):
        pickgrad.estimate(lambda x: x, scores, ONEHOT, estimator, n_samples=2)
    with pytest.raises(ValueError, match=r"loss_fn must return losses shaped .*got \(4,\)"):
        pickgrad.estimate(lambda x: x.sum((0, 2)), scores, ONEHOT, estimator, n_samples=2)


def test_loss_fn_returning_a_float() -> None:
    with pytest.raises(TypeError, match="loss_fn must return a tensor, got float"):
        pickgrad.estimate(lambda x: 1.0, torch.randn(2, 3), ONEHOT, "st-gumbel")  # type: ignore[arg-type,return-value]


# --- tau and score ranges, relax options, batch shapes ---------------------------------------------


@pytest.mark.parametrize("tau", [True, "1.0", None, [0.5]])
def test_tau_of_a_non_real_type_is_refused_by_both_entry_points(tau: object) -> None:
    with pytest.raises(TypeError, match="tau must be a positive real number or a schedule"):
        pickgrad.select(torch.randn(3), ONEHOT, "st-relaxed", tau=tau)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tau must be a positive real number or a schedule"):
        pickgrad.estimate(_loss, torch.randn(1, 3), ONEHOT, "st", tau=tau)  # type: ignore[arg-type]


def test_zero_dim_tensor_tau_and_schedules_are_accepted() -> None:
    scores = torch.randn(2, 4)
    by_float = pickgrad.select(scores, ONEHOT, "relaxed", tau=0.5)
    by_tensor = pickgrad.select(scores, ONEHOT, "relaxed", tau=torch.tensor(0.5))
    by_schedule = pickgrad.select(scores, ONEHOT, "relaxed", tau=pickgrad.Constant(0.5))
    assert torch.equal(by_tensor, by_float) and torch.equal(by_schedule, by_float)


@pytest.mark.parametrize("estimator", ["st-relaxed", "relaxed", "gumbel-relaxed", "st-gumbel"])
def test_tau_that_overflows_scores_over_tau_is_refused_before_any_work(estimator: str) -> None:
    scores = torch.tensor([[1e30, 0.0, -2.0]])
    with pytest.raises(
        ValueError, match=r"tau=1e-10 is too small for scores of magnitude up to 1e\+30"
    ):
        pickgrad.select(scores, ONEHOT, estimator, tau=1e-10)
    with pytest.raises(ValueError, match=r"above 3\.4e\+38 \(the largest torch\.float32"):
        pickgrad.estimate(lambda x: x.sum((-1, -2)), scores, ONEHOT, estimator, tau=1e-10)
    with pytest.raises(ValueError, match=r"tau=1e-39 is below 1\.18e-38"):
        pickgrad.select(torch.zeros(3), ONEHOT, estimator, tau=1e-39)
    x = pickgrad.select(scores, ONEHOT, estimator, tau=1e-6)
    assert bool(torch.isfinite(x).all())


def test_estimators_that_ignore_tau_do_not_range_check_it() -> None:
    scores = torch.tensor([[1e30, 0.0, -2.0]])
    assert not pickgrad.get_estimator("st").uses_tau
    x = pickgrad.select(scores, ONEHOT, "st", tau=1e-10)
    assert torch.equal(x, torch.tensor([[1.0, 0.0, 0.0]]))


def test_scores_whose_sums_overflow_are_refused_by_every_estimator() -> None:
    scores = torch.full((2, 8), 1e38)
    for estimator in pickgrad.available_estimators(ONEHOT, pathwise_only=True):
        with pytest.raises(ValueError, match="when summed over an event of 8 entries"):
            pickgrad.select(scores, ONEHOT, estimator)


def test_range_checks_are_off_with_validation_off() -> None:
    scores = torch.tensor([[1e30, 0.0, -2.0]])
    with pickgrad.validation(False):
        x = pickgrad.select(scores, ONEHOT, "relaxed", tau=1e-10)
    assert torch.equal(x, torch.tensor([[1.0, 0.0, 0.0]]))


class _NoOptions(Structure):
    """A one-hot structure whose relax takes no options."""

    def _argmax(self, scores: torch.Tensor) -> torch.Tensor:
        return ONEHOT._argmax(scores)

    def _relax(self, scores: torch.Tensor, tau: float) -> torch.Tensor:
        return torch.softmax(scores / tau, -1)


def test_a_relax_option_the_structure_lacks_is_refused_before_any_work() -> None:
    with pytest.raises(TypeError, match=r"unknown relax option 'regularizer' for _NoOptions\(\)"):
        pickgrad.select(torch.randn(3), _NoOptions(), "st-relaxed", regularizer="entropy")
    x = pickgrad.select(torch.randn(3), _NoOptions(), "st-relaxed")
    assert x.sum() == 1


@pytest.mark.parametrize("estimator", pickgrad.available_estimators(ONEHOT))
@pytest.mark.parametrize("batch", [(), (0,), (3,), (2, 0), (2, 3), (1, 2, 3), (2, 0, 1)])
def test_every_estimator_on_every_batch_shape(estimator: str, batch: tuple[int, ...]) -> None:
    scores = torch.randn(*batch, 4, requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    cls = type(pickgrad.get_estimator(estimator))
    if cls.needs_loss:
        value = pickgrad.estimate(
            lambda x: x.sum(-1), scores, ONEHOT, estimator, n_samples=2, generator=generator
        )
        assert value.shape == ()
        value.backward()
    else:
        x = pickgrad.select(scores, ONEHOT, estimator, tau=0.5, generator=generator)
        assert x.shape == scores.shape and x.dtype == scores.dtype
        torch.testing.assert_close(x.detach().sum(-1), torch.ones(batch))
        if cls.hard:
            assert bool(((x == 0) | (x == 1)).all())
        (x * torch.arange(4.0)).sum().backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
