"""Estimator names as the experiments understand them, and the state they carry between steps.

Every name in pickgrad's registry is passed through unchanged (so a newly registered estimator
works in every experiment whose structure supports it), with options as ``name:key=value,...``
(e.g. ``gumbel-rao:n_draws=100``, the syntax of ``pickgrad diagnose``), except two:

* ``reinforce``: the score function with the leave-one-out baseline over ``n_samples`` draws
  (``Reinforce(baseline="rloo")``; Kool et al. 2019), the strongest baseline without a network;
* ``nvil``: neural variational inference and learning (Mnih & Gregor 2014, Sec. 2.3 - 2.4):
  ``Reinforce(baseline="learned", normalize=True)``, whose input-dependent baseline comes from a
  network the experiment adds to its model and whose learning signal is normalised by a running
  estimate of its standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pickgrad.diagnostics.report import parse_option_value
from pickgrad.estimators import Estimator, Reinforce, available_estimators, get_estimator
from pickgrad.select import estimate as pickgrad_estimate
from pickgrad.structures import OneHot
from pickgrad.structures.base import Structure

__all__ = [
    "EstimatorChoice",
    "average_states",
    "estimator_names",
    "estimator_state",
    "load_estimator_state",
    "resolve_estimator",
]


@dataclass
class EstimatorChoice:
    """A resolved estimator: the ``name`` asked for, the ``estimator`` object kept for the whole
    run, whether it ``needs_loss`` (use ``pickgrad.estimate``) and whether it takes
    ``baseline_values`` from a ``learned_baseline`` network."""

    name: str
    estimator: Estimator
    needs_loss: bool
    learned_baseline: bool


def estimator_names(structure: Structure) -> list[str]:
    """Every estimator name usable with ``structure`` (pickgrad's registry, plus ``nvil``)."""
    names = available_estimators(structure)
    if "reinforce" in names:
        names.append("nvil")
    return names


def resolve_estimator(name: str, structure: Structure) -> EstimatorChoice:
    """The estimator called ``name`` for ``structure``, or ``ValueError`` listing the valid names.

    Example:
        >>> from pickgrad import OneHot
        >>> resolve_estimator("reinforce", OneHot()).estimator
        Reinforce(baseline='rloo')
        >>> resolve_estimator("gumbel-rao:n_draws=100", OneHot()).estimator
        GumbelRao(n_draws=100)
    """
    base, _, option_text = name.partition(":")
    valid = estimator_names(structure)
    if base not in valid:
        raise ValueError(
            f"estimator {base!r} cannot be used with {structure!r}; "
            f"valid for it: {', '.join(valid)}"
        )
    if option_text or name.endswith(":"):
        return _with_options(name, base, option_text, structure)
    if name == "nvil":
        try:
            nvil = Reinforce(baseline="learned", normalize=True)
        except (TypeError, ValueError) as error:
            raise ValueError(
                "estimator 'nvil' needs pickgrad.Reinforce(baseline='learned', normalize=True), "
                f"which this version of pickgrad lacks ({error})"
            ) from None
        _check_learned_baseline(nvil)
        return EstimatorChoice(name, nvil, needs_loss=True, learned_baseline=True)
    if name == "reinforce":
        estimator: Estimator = Reinforce(baseline="rloo")
    else:
        # The object is kept for the whole run, so no warning about stateful names.
        estimator = get_estimator(name, warn_stateful=False)
    return EstimatorChoice(
        name, estimator, needs_loss=type(estimator).needs_loss, learned_baseline=False
    )


def _with_options(spec: str, base: str, option_text: str, structure: Structure) -> EstimatorChoice:
    """The estimator of a ``name:key=value,...`` spec; ``reinforce`` keeps its leave-one-out
    baseline unless the spec names another."""
    if base == "nvil":
        raise ValueError(f"estimator 'nvil' takes no options (got {spec!r})")
    options: dict[str, Any] = {}
    for item in option_text.split(","):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(
                f"estimator option {item!r} in {spec!r} must be key=value, "
                "e.g. gumbel-rao:n_draws=100"
            )
        options[key.strip()] = parse_option_value(value.strip())
    if base == "reinforce":
        options.setdefault("baseline", "rloo")
    try:
        estimator = get_estimator(base, warn_stateful=False, **options)
        estimator.check_structure(structure)  # relax options, before any training
    except (TypeError, ValueError, NotImplementedError) as error:
        raise ValueError(f"bad estimator spec {spec!r}: {error}") from None
    return EstimatorChoice(
        spec, estimator, needs_loss=type(estimator).needs_loss, learned_baseline=False
    )


def _check_learned_baseline(nvil: Estimator) -> None:
    """Refuse ``nvil`` before training if ``pickgrad.estimate`` does not take ``baseline_values``."""
    scores = torch.zeros(2, 2, requires_grad=True)
    probe = type(nvil)(baseline="learned")
    try:
        pickgrad_estimate(
            lambda x: x[..., 0], scores, OneHot(), probe, n_samples=2,
            baseline_values=torch.zeros(2),
        )  # fmt: skip
    except TypeError as error:
        raise ValueError(
            "estimator 'nvil' needs pickgrad.estimate(..., baseline_values=...), which this "
            f"version of pickgrad lacks ({error})"
        ) from None


def estimator_state(estimator: Estimator) -> dict[str, Tensor]:
    """The estimator's running state (ema baselines, NVIL's running moments) as 0-dim tensors.

    Uses the estimator's own ``state_dict`` where it has one; otherwise its floating-point
    attributes (options such as a decay are included: they are equal on every process, so
    averaging or restoring them changes nothing).

    Example:
        >>> est = Reinforce(baseline="rloo")
        >>> estimator_state(est)
        {}
    """
    own = getattr(estimator, "state_dict", None)
    if callable(own):
        return {key: value.detach().clone() for key, value in own().items()}
    out: dict[str, Tensor] = {}
    for key, value in vars(estimator).items():
        if isinstance(value, float):
            out[key] = torch.tensor(value, dtype=torch.float64)
        elif isinstance(value, Tensor) and value.is_floating_point():
            out[key] = value.detach().clone()
    return out


def load_estimator_state(estimator: Estimator, state: dict[str, Tensor]) -> None:
    """Set the state saved by :func:`estimator_state` back on ``estimator``."""
    own = getattr(estimator, "load_state_dict", None)
    if callable(own):
        own({key: value.clone() for key, value in state.items()})
        return
    for key, value in state.items():
        current = getattr(estimator, key, None)
        if isinstance(current, Tensor):
            setattr(estimator, key, value.to(dtype=current.dtype, device=current.device).clone())
        else:
            setattr(estimator, key, float(value))


def average_states(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of several processes' or shards' states: floating entries averaged (in float64,
    returned in their dtype), others (flags such as "started") taken from the first.

    Example:
        >>> average_states([{"ema": torch.tensor(1.0)}, {"ema": torch.tensor(2.0)}])
        {'ema': tensor(1.5000)}
    """
    if not states:
        return {}
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            mean = torch.stack([s[key].double() for s in states]).mean(0)
            out[key] = mean.to(first.dtype)
        else:
            out[key] = first.clone()
    return out
