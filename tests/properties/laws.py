"""The properties themselves, one function per law, shared by the test modules.

``test_structure_properties.py`` and ``test_estimator_properties.py`` run them on every
(structure, estimator) combination.
Each function takes a drawn :class:`~properties.strategies.Problem` and asserts.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import pickgrad
from pickgrad import Arborescence, OneHot, Permutation, Subset
from properties.strategies import (
    HALF_DTYPES,
    Problem,
    check_in_polytope,
    check_valid,
    entry_tolerance,
    enumerable,
    log_partition_reference,
    objective_of,
    objectives,
    relax_reference,
    tree_nodes,
)

# --- structures --------------------------------------------------------------------------------


def argmax_is_valid_and_optimal(problem: Problem) -> None:
    """argmax is a valid structure whose objective equals the best enumerated one (tie-aware)."""
    structure, scores = problem.structure, problem.scores
    x = structure.argmax(scores)
    assert x.dtype == scores.dtype and x.shape == scores.shape
    check_valid(structure, x, scores.shape)
    values, _ = objectives(structure, scores)
    best = values.amax(-1)
    got = objective_of(structure, scores, x)
    # float64 sums of at most 64 terms: exact up to their rounding.
    event = tuple(range(scores.dim() - structure.event_dims, scores.dim()))
    tolerance = 1e-12 * (1 + scores.double().abs().sum(event))
    assert bool(((got - best).abs() <= tolerance).all()), (got - best).abs().max()


def relax_is_in_polytope_and_matches_float64(problem: Problem, **options: Any) -> None:
    """relax lies in the polytope and equals the float64 result within the dtype's tolerance."""
    structure, scores = problem.structure, problem.scores
    x = structure.relax(scores, problem.tau, **options)
    assert x.dtype == scores.dtype and x.shape == scores.shape
    check_in_polytope(structure, x, scores.shape)
    # The Gibbs marginals by enumeration for the entropy regulariser (not Sinkhorn's); the
    # library's own float64 result otherwise.
    gibbs = (
        not options
        and enumerable(structure, problem.event_shape)
        and not isinstance(structure, Permutation)
    )
    if scores.dtype == torch.float64 and not gibbs:
        return  # the reference would be this very result: only the polytope applies
    if gibbs:
        reference = relax_reference(structure, scores, problem.tau)
    else:
        reference = structure.relax(scores.double(), problem.tau, **options)
    error = (x.double() - reference).abs()
    worst = error.max().item() if error.numel() else 0.0
    tolerance = entry_tolerance(structure, scores.dtype)
    assert worst <= tolerance, f"{worst:.3g} from the float64 result (tolerance {tolerance:.3g})"


def law_preserving_offsets(structure: Any, scores: torch.Tensor, seed: int) -> torch.Tensor:
    """Constants that leave the structure's law unchanged when added to ``scores``.

    One per example (magnitude 1 to 1e4) for every structure; plus one per row for Permutation
    (each row holds one 1) and one per column when square; one per column for Arborescence
    (one parent per non-root node).
    """
    generator = torch.Generator().manual_seed(seed)
    batch = scores.shape[: scores.dim() - structure.event_dims]
    size = 10.0 ** (4 * torch.rand(batch, generator=generator, dtype=torch.float64))
    common = size * torch.sign(torch.randn(batch, generator=generator, dtype=torch.float64))
    for _ in range(structure.event_dims):
        common = common.unsqueeze(-1)
    if isinstance(structure, Permutation):
        s, n = scores.shape[-2:]
        rows = 1e3 * torch.randn((*batch, s, 1), generator=generator, dtype=torch.float64)
        columns = 1e3 * torch.randn((*batch, 1, n), generator=generator, dtype=torch.float64)
        return common + rows + (columns if s == n else 0)
    if isinstance(structure, Arborescence):
        n = scores.shape[-1]
        return common + 1e3 * torch.randn((*batch, 1, n), generator=generator, dtype=torch.float64)
    return common.expand(scores.shape)


def relax_is_shift_invariant(problem: Problem, seed: int) -> None:
    """In float64, relax(scores + c) = relax(scores) for every law-preserving offset c."""
    structure, scores, tau = problem.structure, problem.scores.double(), problem.tau
    shifted = scores + law_preserving_offsets(structure, scores, seed)
    x = structure.relax(shifted, tau)
    check_in_polytope(structure, x, scores.shape)
    error = (x - structure.relax(scores, tau)).abs()
    worst = error.max().item() if error.numel() else 0.0
    # Offsets up to ~1e4 round the scores by ~1e4 * 2**-52, i.e. ~2e-10 in scores / tau.
    assert worst <= 10 * entry_tolerance(structure, torch.float64), worst


def _ones(structure: Any, event_shape: tuple[int, ...]) -> int:
    """How many ones every hard solution has."""
    if isinstance(structure, OneHot):
        return 1
    if isinstance(structure, Subset):
        return structure.k
    if isinstance(structure, Permutation):
        return event_shape[0]
    return tree_nodes(structure, event_shape) - 1


def log_partition_is_logsumexp_over_enumeration(problem: Problem) -> None:
    """log_partition = logsumexp_x <scores, x> / tau over ``enumerate`` (float64 reference).

    Half types may return their own dtype or float32, or raise ValueError when the value does
    not fit their range (issue 11, point 3); never a silent inf.
    """
    structure, scores, tau = problem.structure, problem.scores, problem.tau
    reference = log_partition_reference(structure, scores, tau)
    try:
        got = structure.log_partition(scores, tau)
    except ValueError as error:
        limit = torch.finfo(scores.dtype).max
        assert bool((reference.abs() > limit).any()), f"raised although it fits: {error}"
        return
    assert got.shape == reference.shape
    allowed = (scores.dtype, torch.float32) if scores.dtype in HALF_DTYPES else (scores.dtype,)
    assert got.dtype in allowed, got.dtype
    assert bool(torch.isfinite(got).all()), "non-finite log_partition"
    # Each of the m chosen terms scores / tau carries a relative rounding error of the compute
    # dtype (float32 for half types), the result one of its own dtype.
    ones = _ones(structure, problem.event_shape)
    event_start = scores.dim() - structure.event_dims
    z_max = (scores.double().abs() / tau).flatten(event_start).amax(-1)
    compute = torch.float64 if scores.dtype == torch.float64 else torch.float32
    atol = 1e-9 if scores.dtype == torch.float64 else 1e-5
    tolerance = (
        atol
        + 4 * torch.finfo(compute).eps * ones * z_max
        + torch.finfo(got.dtype).eps * reference.abs()
    )
    error = (got.double() - reference).abs()
    assert bool((error <= tolerance).all()), (error - tolerance).max()


# --- estimators --------------------------------------------------------------------------------


def build(name: str, options: dict[str, Any]) -> pickgrad.Estimator:
    """A fresh estimator object (no stateful-name warning: the suite passes objects for those)."""
    return pickgrad.get_estimator(name, warn_stateful=False, **options)


def _given_as(name: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """What to pass to select/estimate: the name and its options, or for an estimator that keeps
    state between calls (the ema baseline) a fresh object, as its warning asks."""
    estimator = build(name, options)
    return (estimator, {}) if getattr(estimator, "stateful", False) else (name, options)


def serves(name: str, options: dict[str, Any], problem: Problem) -> bool:
    """Whether the structure offers what the estimator needs; if not, check the error says so."""
    estimator = build(name, options)
    if not estimator.missing_capabilities(problem.structure):
        return True
    with pytest.raises(NotImplementedError, match="needs"):
        pickgrad.select(problem.scores, problem.structure, estimator, tau=problem.tau)
    return False


def _check_value(estimator: pickgrad.Estimator, problem: Problem, x: torch.Tensor) -> None:
    assert x.dtype == problem.scores.dtype, (x.dtype, problem.scores.dtype)
    if estimator.hard:
        check_valid(problem.structure, x, x.shape)
    else:
        check_in_polytope(problem.structure, x, x.shape)


def _check_gradient(scores: torch.Tensor) -> None:
    assert scores.grad is not None, "no gradient reached the scores"
    assert scores.grad.shape == scores.shape and scores.grad.dtype == scores.dtype
    assert bool(torch.isfinite(scores.grad).all()), "non-finite gradient"


def _baseline_values(
    options: dict[str, Any], problem: Problem, *, per_example: bool
) -> dict[str, Any]:
    """``baseline_values`` for the learned (NVIL) baseline, as its network would give them: one
    per example when the losses are, else one for the whole batch."""
    if options.get("baseline") != "learned":
        return {}
    shape = problem.batch_shape if per_example else ()
    return {"baseline_values": torch.zeros(shape, requires_grad=True)}


def select_is_valid_with_finite_gradient(
    name: str, options: dict[str, Any], problem: Problem, seed: int
) -> None:
    """``pickgrad.select``: a valid structure (hard) or a polytope point (soft), finite grad."""
    if not serves(name, options, problem):
        return
    estimator = build(name, options)
    scores = problem.scores.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    given_as, given_options = _given_as(name, options)
    x = pickgrad.select(
        scores, problem.structure, given_as, tau=problem.tau, generator=generator, **given_options
    )
    assert x.shape == scores.shape
    _check_value(estimator, problem, x.detach())
    weights = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    (x.float() * weights).sum().backward()
    _check_gradient(scores)


def estimate_is_valid_with_finite_gradient(
    name: str,
    options: dict[str, Any],
    problem: Problem,
    seed: int,
    n_samples: int,
    per_example: bool,
) -> None:
    """``pickgrad.estimate``: every sample valid, a finite surrogate and a finite gradient."""
    if not serves(name, options, problem):
        return
    if options.get("baseline") in ("batch", "rloo"):
        n_samples = max(n_samples, 2)  # they average the other draws (documented)
    estimator = build(name, options)
    structure = problem.structure
    scores = problem.scores.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(scores.shape, generator=generator, dtype=torch.float32)
    event = tuple(range(-structure.event_dims, 0))
    # Losses per example (n_samples, *batch), or summed over the batch (n_samples,); a mean over
    # an empty batch would be NaN by definition, so empty batches sum.
    per_example = per_example and problem.scores.numel() > 0
    samples: list[torch.Tensor] = []

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        samples.append(x.detach())
        losses = (x.float() * weights).sum(event)
        if per_example or losses.dim() == 1:
            return losses
        return losses.sum(tuple(range(1, losses.dim())))

    extra = _baseline_values(options, problem, per_example=per_example)
    given_as, given_options = _given_as(name, options)
    surrogate = pickgrad.estimate(
        loss_fn,
        scores,
        structure,
        given_as,
        n_samples=n_samples,
        tau=problem.tau,
        generator=generator,
        **given_options,
        **extra,
    )
    assert surrogate.dim() == 0 and bool(torch.isfinite(surrogate)), surrogate
    assert samples, "loss_fn was never called"
    for x in samples:
        assert x.shape == (n_samples, *scores.shape)
        _check_value(estimator, problem, x)
    surrogate.backward()
    _check_gradient(scores)


# --- extremes, modes and bad values (issue 11, points 3, 4, 5, 7, 8) ---------------------------


def extreme_tau_raises_or_stays_finite(problem: Problem, tau: float) -> None:
    """At any tau > 0, relax and log_partition give a finite, valid result or a ValueError
    naming tau (point 4); never a silent NaN or inf."""
    structure, scores = problem.structure, problem.scores
    try:
        # An iterative relax may warn that it missed its tolerance (Sinkhorn, point 1): allowed
        # out here, where tau is far outside [0.01, 100]; its output must still be finite.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            x = structure.relax(scores, tau)
    except ValueError as error:
        assert "tau" in str(error), error
    else:
        if any(issubclass(w.category, RuntimeWarning) for w in caught):
            assert bool(torch.isfinite(x).all()), "non-finite entries"
            assert bool(((x >= 0) & (x <= 1)).all()), "entries outside [0, 1]"
        else:
            check_in_polytope(structure, x, scores.shape)
    if not structure.supports("log_partition"):
        return
    try:
        value = structure.log_partition(scores, tau)
    except ValueError as error:
        assert "tau" in str(error) or "overflow" in str(error), error
    else:
        assert bool(torch.isfinite(value).all()), f"log_partition gave {value}"


def extreme_scores(problem: Problem, seed: int) -> torch.Tensor:
    """The problem's score pattern rescaled so its largest entry is near the dtype's maximum."""
    scores = problem.scores.double()
    top = scores.abs().amax() if scores.numel() else torch.tensor(1.0, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    fraction = 0.5 + 0.5 * torch.rand((), generator=generator, dtype=torch.float64)
    limit = torch.finfo(problem.dtype).max
    unit = scores / top if float(top) > 0 else torch.ones_like(scores)
    return (unit * (fraction * limit)).to(problem.dtype)


def argmax_at_extreme_magnitudes_is_valid_or_refused(problem: Problem, seed: int) -> None:
    """Scores near the dtype's largest value: argmax is a valid, optimal structure, or a
    ValueError before computing (point 8)."""
    structure = problem.structure
    scores = extreme_scores(problem, seed)
    try:
        x = structure.argmax(scores)
    except ValueError:
        return
    check_valid(structure, x, scores.shape)
    # Compare objectives exactly scaled by a power of two, so float64 cannot overflow.
    scaled = scores.double() * 2.0**-1000 if scores.dtype == torch.float64 else scores.double()
    values, _ = objectives(structure, scaled)
    got = objective_of(structure, scaled, x)
    event = tuple(range(scores.dim() - structure.event_dims, scores.dim()))
    tolerance = 1e-12 * scaled.abs().sum(event)
    assert bool(((got - values.amax(-1)).abs() <= tolerance).all()), "argmax is not optimal"


def relax_is_the_same_without_autograd(problem: Problem, **options: Any) -> None:
    """relax under no_grad and inference_mode equals relax with autograd (point 7)."""
    structure, scores, tau = problem.structure, problem.scores, problem.tau
    expected = structure.relax(scores.clone().requires_grad_(True), tau, **options).detach()
    with torch.no_grad():
        plain = structure.relax(scores, tau, **options)
    with torch.inference_mode():
        inference = structure.relax(scores.clone(), tau, **options)
    tolerance = entry_tolerance(structure, scores.dtype)
    for got in (plain, inference):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        error = (got.double() - expected.double()).abs()
        assert bool((error <= tolerance).all()), "relax differs without autograd"


def select_works_without_autograd(
    name: str, options: dict[str, Any], problem: Problem, seed: int
) -> None:
    """Every pathwise estimator runs under no_grad and inference_mode with a valid value."""
    if not serves(name, options, problem):
        return
    estimator = build(name, options)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            given_as, given_options = _given_as(name, options)
            x = pickgrad.select(
                problem.scores.clone(),
                problem.structure,
                given_as,
                tau=problem.tau,
                generator=torch.Generator().manual_seed(seed),
                **given_options,
            )
            _check_value(estimator, problem, x)


def non_finite_loss_is_a_clear_error(
    name: str, options: dict[str, Any], problem: Problem, bad: float, where: int
) -> None:
    """A NaN or inf loss is a ValueError naming loss_fn; estimator state is left unchanged
    (point 5)."""
    if not serves(name, options, problem):
        return
    estimator = build(name, options)
    scores = problem.scores.clone().requires_grad_(True)
    n_samples = 2

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        losses = x.float().flatten(1).sum(-1)
        return losses.index_fill(0, torch.tensor([where % n_samples]), bad)

    # A first, finite call gives stateful estimators some state to protect.
    extra = _baseline_values(options, problem, per_example=False)
    pickgrad.estimate(
        lambda x: x.float().flatten(1).sum(-1),
        scores,
        problem.structure,
        estimator,
        n_samples=2,
        **extra,
    )
    before = {key: value.clone() for key, value in getattr(estimator, "state_dict", dict)().items()}
    with pytest.raises(ValueError, match="loss_fn"):
        pickgrad.estimate(
            loss_fn,
            scores,
            problem.structure,
            estimator,
            n_samples=n_samples,
            tau=problem.tau,
            **extra,
        )
    after = getattr(estimator, "state_dict", dict)()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"state {key} changed by a non-finite loss"


def relax_at_extreme_magnitudes_is_valid_or_refused(problem: Problem, seed: int) -> None:
    """Scores near the dtype's largest value: relax is a polytope point and log_partition finite,
    or a ValueError before computing (point 4)."""
    structure = problem.structure
    scores = extreme_scores(problem, seed)
    try:
        x = structure.relax(scores, problem.tau)
    except ValueError:
        pass
    else:
        check_in_polytope(structure, x, scores.shape)
    if structure.supports("log_partition"):
        try:
            value = structure.log_partition(scores, problem.tau)
        except ValueError:
            return
        assert bool(torch.isfinite(value).all()), f"log_partition gave {value}"


def samplers_reject_non_solutions(problem: Problem, seed: int) -> None:
    """``conditional_gumbel`` and ``perturb_log_prob`` refuse an x that is not a hard solution
    (point 9): here a solution with one entry flipped, so x is still 0/1 of the right shape."""
    structure, scores = problem.structure, problem.scores
    if scores.numel() == 0:
        return
    x = structure.argmax(scores)
    flat = x.reshape(-1).clone()
    index = int(torch.randint(flat.numel(), (), generator=torch.Generator().manual_seed(seed)))
    flat[index] = 1 - flat[index]
    wrong = flat.reshape(x.shape)
    for capability in ("conditional_gumbel", "perturb_log_prob"):
        if not structure.supports(capability):
            continue
        if structure.active_mask(problem.event_shape) is not None:
            mask = structure.active_mask(problem.event_shape)
            event_index = index % mask.numel()
            if not bool(mask.reshape(-1)[event_index]):
                continue  # an ignored entry: the structure may read x only where it scores
        with pytest.raises(ValueError):
            getattr(structure, capability)(scores, wrong)
