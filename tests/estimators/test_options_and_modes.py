"""Every estimator: option checks, unknown options, relax options, aliases, the stateful-name
warning, grad modes, and half precision at extreme magnitudes."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import pickgrad
from cases import STRUCTURE_CASES, StructureCase
from pickgrad import OneHot, Permutation
from pickgrad._validation import validation
from pickgrad.estimators import base
from pickgrad.estimators.base import Estimator, RelaxingEstimator, get_estimator

ONEHOT = OneHot()
NAMES = pickgrad.available_estimators()
RELAXING = [name for name in NAMES if issubclass(type(get_estimator(name)), RelaxingEstimator)]


# --- option values ---------------------------------------------------------------------------

BAD_OPTIONS = [
    ("gumbel-rao", "n_draws", 0, ValueError),
    ("gumbel-rao", "n_draws", 2.5, TypeError),
    ("gumbel-rao", "n_draws", True, TypeError),
    ("perturbed", "sigma", 0.0, ValueError),
    ("perturbed", "sigma", float("nan"), ValueError),
    ("perturbed", "sigma", float("inf"), ValueError),
    ("perturbed", "sigma", "0.5", TypeError),
    ("perturbed", "sigma", True, TypeError),
    ("perturbed", "n_perturbations", 0, ValueError),
    ("perturbed", "n_perturbations", 1.5, TypeError),
    ("perturbed", "noise", "uniform", ValueError),
    ("perturbed", "hard", "yes", TypeError),
    ("imle", "lambda_", 0.0, ValueError),
    ("imle", "lambda_", "1", TypeError),
    ("imle", "n_perturbations", -1, ValueError),
    ("imle", "noise", 3, TypeError),
    ("imle", "noise_temperature", -1.0, ValueError),
    ("imle", "noise_k", 0, ValueError),
    ("imle", "n_terms", 2.0, TypeError),
    ("blackbox", "lambda_", -1.0, ValueError),
    ("blackbox", "lambda_", float("inf"), ValueError),
    ("blackbox", "lambda_", "big", TypeError),
    ("reinforce", "baseline", "mean", ValueError),
    ("reinforce", "baseline", None, TypeError),
    ("reinforce", "ema_decay", 1.0, ValueError),
    ("reinforce", "ema_decay", -0.1, ValueError),
    ("reinforce", "ema_decay", True, TypeError),
    ("reinforce", "ema_decay", "0.5", TypeError),
    ("reinforce", "normalize", 1, TypeError),
]


@pytest.mark.parametrize(("name", "option", "value", "error"), BAD_OPTIONS)
def test_bad_option_values_name_the_option_and_the_estimator(
    name: str, option: str, value: Any, error: type[Exception]
) -> None:
    match = f"option '{option}' of estimator '{name}' must be"
    with pytest.raises(error, match=match):
        get_estimator(name, **{option: value})
    with pytest.raises(error, match=match):  # the constructor itself, before any work
        type(get_estimator(name))(**{option: value})
    with pytest.raises(error, match=match):
        pickgrad.select(torch.zeros(3), ONEHOT, name, **{option: value})


# --- unknown options -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_option_names_itself_the_estimator_and_the_valid_ones(name: str) -> None:
    cls = type(get_estimator(name))
    for build in (lambda: get_estimator(name, bogus=1), lambda: cls(bogus=1)):
        with pytest.raises(TypeError, match=f"estimator '{name}': unknown option 'bogus'") as info:
            build()
        message = str(info.value)
        assert "valid options:" in message
        for option in cls.option_names():
            assert option in message
        if name in RELAXING:
            assert "regularizer" in message and "max_iter" in message


def test_a_misspelt_option_gets_a_suggestion() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'n_draw' \(did you mean 'n_draws'\?\)"):
        pickgrad.GumbelRao(n_draw=3)
    with pytest.raises(TypeError, match=r"did you mean 'ema_decay'"):
        get_estimator("reinforce", ema_decy=0.5)
    with pytest.raises(ValueError, match=r"unknown estimator 'gumbel-softmx'.*did you mean"):
        get_estimator("gumbel-softmx")


# --- relax options reach the structure --------------------------------------------------------


class SpyOneHot(OneHot):
    """OneHot that records the relax options it receives (and has one of its own)."""

    relax_option_names = ("regularizer", "spy_level")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.argmax_calls = 0

    def _relax(self, scores: torch.Tensor, tau: float, **options: Any) -> torch.Tensor:
        self.calls.append(dict(options))
        options.pop("spy_level", None)
        return super()._relax(scores, tau, **options)

    def _argmax(self, scores: torch.Tensor) -> torch.Tensor:
        self.argmax_calls += 1
        return super()._argmax(scores)

    def _perturb_argmax_relax(self, *args: Any, **options: Any) -> None:
        return None

    def _conditional_mean_relax(self, *args: Any, **options: Any) -> None:
        return None


@pytest.mark.parametrize("name", RELAXING)
def test_relax_options_reach_structure_relax(name: str) -> None:
    spy = SpyOneHot()
    scores = torch.randn(2, 4, requires_grad=True)
    x = pickgrad.select(scores, spy, name, tau=0.5, spy_level=3, regularizer="sparsemax")
    x.sum().backward()
    assert spy.calls and all(c == {"spy_level": 3, "regularizer": "sparsemax"} for c in spy.calls)
    estimator = get_estimator(name, spy_level=3, regularizer=None)
    assert estimator.relax_options == {"spy_level": 3}  # type: ignore[attr-defined]
    assert "spy_level=3" in repr(estimator) and "regularizer" not in repr(estimator)
    # None is the structure's default: the same as leaving the option out.
    default = pickgrad.select(scores, spy, name, generator=torch.Generator().manual_seed(0))
    explicit = pickgrad.select(
        scores, spy, name, regularizer=None, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(default, explicit) and spy.calls[-1] == {}


@pytest.mark.parametrize("name", RELAXING)
def test_a_relax_option_the_structure_lacks_fails_before_any_work(name: str) -> None:
    spy = SpyOneHot()
    scores = torch.randn(2, 4)
    with pytest.raises(TypeError, match=r"unknown relax option 'max_iter' for SpyOneHot") as info:
        pickgrad.select(scores, spy, name, max_iter=5)
    assert "valid options: regularizer, spy_level" in str(info.value)
    assert spy.calls == [] and spy.argmax_calls == 0


class SpyPermutation(Permutation):
    """Permutation that records the relax options it receives."""

    relax_option_names = Permutation.relax_option_names

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def _relax(self, scores: torch.Tensor, tau: float, **options: Any) -> torch.Tensor:
        self.calls.append(dict(options))
        return super()._relax(scores, tau, **options)


def test_sinkhorn_options_through_select() -> None:
    scores = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    options = {"max_iter": 200, "tol": 0.3}
    spy = SpyPermutation()
    relaxed = pickgrad.select(scores, spy, "relaxed", tau=0.5, **options)
    assert spy.calls == [options]
    torch.testing.assert_close(relaxed, Permutation().relax(scores, 0.5, **options))
    with pytest.raises(ValueError, match="max_iter"):  # the structure checks the values
        pickgrad.select(scores, Permutation(), "st-gumbel", tau=0.5, max_iter=0)


# --- aliases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["gumbel-softmax", "concrete"])
def test_aliases_resolve_to_the_soft_gumbel_softmax(alias: str) -> None:
    estimator = get_estimator(alias)
    assert type(estimator) is pickgrad.GumbelRelaxed and estimator.name == "gumbel-relaxed"
    assert alias not in NAMES and alias in pickgrad.available_estimators(include_aliases=True)
    assert alias in pickgrad.available_estimators(ONEHOT, include_aliases=True)
    assert alias not in pickgrad.available_estimators(ONEHOT, pathwise_only=True)
    scores = torch.randn(3, 5)
    x = pickgrad.select(scores, ONEHOT, alias, tau=0.5, generator=torch.Generator().manual_seed(1))
    y = pickgrad.select(
        scores, ONEHOT, "gumbel-relaxed", tau=0.5, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(x, y)
    # Our soft Gumbel-softmax is torch's F.gumbel_softmax without hard=True.
    torch.testing.assert_close(x.sum(-1), torch.ones(3))
    assert not bool(((x == 0) | (x == 1)).all())


def test_every_registered_name_is_listed_once() -> None:
    with_aliases = pickgrad.available_estimators(include_aliases=True)
    assert len(with_aliases) == len(set(with_aliases))
    assert with_aliases[: len(NAMES)] == NAMES


def test_an_alias_cannot_be_registered_twice() -> None:
    class Other(Estimator):
        name = "other-soft"
        aliases = ("concrete",)

    with pytest.raises(ValueError, match="an estimator named 'concrete' is already registered"):
        pickgrad.register_estimator(Other)
    assert "other-soft" not in pickgrad.available_estimators()


# --- stateful options given by name -----------------------------------------------------------


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_warned_stateful", False)


@pytest.mark.usefixtures("fresh_warning")
def test_a_stateful_estimator_by_name_warns_once() -> None:
    scores = torch.randn(2, 3, requires_grad=True)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return x[..., 0].sum(-1)

    with pytest.warns(UserWarning, match=r"keep.*pickgrad\.Reinforce\(baseline='ema'\)"):
        pickgrad.estimate(loss_fn, scores, ONEHOT, "reinforce", n_samples=2, baseline="ema")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickgrad.estimate(loss_fn, scores, ONEHOT, "reinforce", n_samples=2, baseline="ema")
        get_estimator("reinforce", normalize=True)  # once per process, not per option


@pytest.mark.usefixtures("fresh_warning")
def test_stateless_names_and_kept_objects_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_estimator("reinforce", baseline="rloo")
        get_estimator("reinforce", baseline="learned")
        get_estimator("reinforce", baseline="ema", warn_stateful=False)
        get_estimator(pickgrad.Reinforce(baseline="ema"))
    with pytest.warns(UserWarning, match="keeps state between calls"):
        get_estimator("reinforce", normalize=True)


# --- grad modes --------------------------------------------------------------------------------

MODE_PAIRS = [
    pytest.param(case, name, id=f"{case.id}-{name}")
    for case in STRUCTURE_CASES
    for name in pickgrad.available_estimators(case.structure)
]


def _forward(case: StructureCase, name: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(select output or None, estimate value)`` with fixed seeds."""
    scores = torch.randn(case.scores_shape, generator=torch.Generator().manual_seed(3))
    weights = torch.randn(case.scores_shape, generator=torch.Generator().manual_seed(4))
    x = None
    if not get_estimator(name).needs_loss:
        x = pickgrad.select(
            scores, case.structure, name, tau=0.5, generator=torch.Generator().manual_seed(5)
        )
    value = pickgrad.estimate(
        lambda y: (y * weights).flatten(1).sum(1),
        scores,
        case.structure,
        name,
        n_samples=2,
        tau=0.5,
        generator=torch.Generator().manual_seed(6),
    )
    return x, value


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize(("case", "name"), MODE_PAIRS)
def test_no_grad_and_inference_mode_give_the_forward_value(
    case: StructureCase, name: str, mode: Any
) -> None:
    expected_x, expected_value = _forward(case, name)
    with mode():
        x, value = _forward(case, name)
    assert not value.requires_grad
    torch.testing.assert_close(value, expected_value.detach())
    if expected_x is not None:
        assert x is not None and not x.requires_grad
        torch.testing.assert_close(x, expected_x.detach())


# --- half precision ----------------------------------------------------------------------------

EXTREME_PAIRS = MODE_PAIRS


def _half_run(
    case: StructureCase, name: str, dtype: torch.dtype, scale: float, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.randn(case.scores_shape, generator=torch.Generator().manual_seed(3)) * scale
    scores = scores.to(dtype).requires_grad_()
    weights = torch.randn(case.scores_shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    generator = torch.Generator().manual_seed(0)
    if get_estimator(name).needs_loss:
        out = pickgrad.estimate(
            lambda y: (y * weights).flatten(1).sum(1),
            scores,
            case.structure,
            name,
            n_samples=2,
            tau=tau,
            generator=generator,
        )
        out.backward()
    else:
        out = pickgrad.select(scores, case.structure, name, tau=tau, generator=generator)
        (out * weights).sum().backward()
    assert scores.grad is not None
    return out.detach(), scores.grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("case", "name"), EXTREME_PAIRS)
def test_half_precision_at_scores_over_tau_of_a_million(
    case: StructureCase, name: str, dtype: torch.dtype
) -> None:
    out, grad = _half_run(case, name, dtype, scale=1e4, tau=1e-2)
    assert out.dtype == dtype and grad.dtype == dtype
    assert bool(torch.isfinite(out.float()).all()) and not bool(torch.isnan(grad.float()).any())


@pytest.mark.parametrize("name", ["relaxed", "gumbel-relaxed", "st-relaxed", "perturbed"])
def test_half_precision_is_computed_in_float32(name: str) -> None:
    scores = torch.tensor([[700.0, 0.0, -5.0], [1.0, 1.5, 1.25]])
    for dtype in (torch.float16, torch.bfloat16):
        half = pickgrad.select(
            scores.to(dtype), ONEHOT, name, tau=0.01, generator=torch.Generator().manual_seed(2)
        )
        single = pickgrad.select(
            scores.to(dtype).float(),
            ONEHOT,
            name,
            tau=0.01,
            generator=torch.Generator().manual_seed(2),
        )
        assert half.dtype == dtype
        torch.testing.assert_close(half, single.to(dtype), rtol=0, atol=0)


# --- perturbed's noise scale --------------------------------------------------------------------


def test_a_sigma_for_which_scores_over_sigma_overflows_is_an_error() -> None:
    scores = torch.tensor([1e30, 0.0, -1.0])
    with pytest.raises(ValueError, match=r"sigma=1e-10 of estimator 'perturbed' is too small"):
        pickgrad.select(scores, ONEHOT, "perturbed", sigma=1e-10)
    with pytest.raises(ValueError, match=r"tau=1e-10 .*too small"):
        pickgrad.select(scores, ONEHOT, "perturbed", tau=1e-10)
    with validation(False):  # a value check: off, nothing reads the scores
        pickgrad.select(scores, ONEHOT, "perturbed", sigma=1e-10, n_perturbations=2)
    # In float16 the gradient, divided by sigma, must fit the dtype: 1 / 1e-5 does not.
    with pytest.raises(ValueError, match=r"1 / sigma overflows torch.float16"):
        pickgrad.select(torch.zeros(3, dtype=torch.float16), ONEHOT, "perturbed", sigma=1e-5)
    pickgrad.select(torch.zeros(3, dtype=torch.float32), ONEHOT, "perturbed", sigma=1e-5)


@pytest.mark.parametrize("name", ["imle", "blackbox"])
def test_a_lambda_whose_inverse_overflows_the_dtype_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match=rf"option 'lambda_'=1e-06 of estimator '{name}'"):
        pickgrad.select(torch.zeros(3, dtype=torch.float16), ONEHOT, name, lambda_=1e-6)
    pickgrad.select(torch.zeros(3), ONEHOT, name, lambda_=1e-6)
