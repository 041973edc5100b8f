"""Checks shared by every (structure, estimator) pair.

The table is every case of ``tests/cases.py`` crossed with every registered estimator whose needs
the case's structure meets, so a new structure or estimator is checked here with no new code:

* the output has the scores' shape, dtype and device; a hard estimator's output is, slice by slice,
  one of ``structure.enumerate(event_shape)``;
* gradients reach the scores, are finite, and vanish on entries the structure ignores;
* float16, bfloat16, float32 and float64 all work;
* the same generator seed gives the same output and the same gradient;
* estimators that need the loss value refuse ``select`` and work through ``estimate``; every
  estimator works through ``estimate``, whose value is the mean loss.
"""

from __future__ import annotations

import pytest
import torch

import pickgrad
from cases import STRUCTURE_CASES, StructureCase
from pickgrad.estimators.base import get_estimator

TAU = 0.5
N_SAMPLES = 2
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

PAIRS = [
    pytest.param(case, name, id=f"{case.id}-{name}")
    for case in STRUCTURE_CASES
    for name in pickgrad.available_estimators(case.structure)
]


def _weights(case: StructureCase, dtype: torch.dtype, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(case.scores_shape, generator=generator).to(dtype=dtype, device=device)


def _scores(case: StructureCase, dtype: torch.dtype, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(case.scores_shape, generator=generator).to(dtype=dtype, device=device)
    return scores.requires_grad_()


def _generator(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _run(
    case: StructureCase, name: str, dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw outputs with the estimator and backpropagate a fixed linear loss.

    Returns ``(outputs, gradient, value)``: ``outputs`` is ``(k, *scores_shape)`` (k = 1 through
    ``select``, ``N_SAMPLES`` through ``estimate``), ``gradient`` is ``scores.grad`` and
    ``value`` the scalar that was backpropagated.
    """
    scores = _scores(case, dtype, device)
    weights = _weights(case, dtype, device)
    generator = _generator(device, seed)
    if get_estimator(name).needs_loss:
        seen: list[torch.Tensor] = []

        def loss_fn(x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return (x * weights).flatten(1).sum(1)

        value = pickgrad.estimate(
            loss_fn, scores, case.structure, name, n_samples=N_SAMPLES, tau=TAU, generator=generator
        )
        (outputs,) = seen
    else:
        x = pickgrad.select(scores, case.structure, name, tau=TAU, generator=generator)
        value = (x * weights).sum()
        outputs = x.unsqueeze(0)
    value.backward()
    assert scores.grad is not None, f"{name} sent no gradient to the scores"
    return outputs.detach(), scores.grad, value.detach()


def _assert_valid_hard(case: StructureCase, outputs: torch.Tensor) -> None:
    solutions = case.structure.enumerate(case.event_shape, dtype=torch.float64)
    flat_solutions = solutions.reshape(solutions.shape[0], -1)
    flat_outputs = outputs.double().cpu().reshape(-1, flat_solutions.shape[1])
    matches = (flat_outputs[:, None, :] == flat_solutions[None, :, :]).all(-1).any(-1)
    assert bool(matches.all()), (
        f"outputs that are not valid hard structures: {flat_outputs[~matches]}"
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("case", "name"), PAIRS)
def test_output_and_gradient(case: StructureCase, name: str, device: str) -> None:
    outputs, gradient, value = _run(case, name, torch.float64, device)
    assert outputs.shape[1:] == case.scores_shape
    assert outputs.dtype == torch.float64 and outputs.device.type == device
    assert bool(torch.isfinite(outputs).all())
    if get_estimator(name).hard:
        _assert_valid_hard(case, outputs)
    assert gradient.shape == case.scores_shape and gradient.dtype == torch.float64
    assert bool(torch.isfinite(gradient).all())
    assert bool(torch.isfinite(value))
    mask = case.structure.active_mask(case.event_shape, gradient.device)
    if mask is not None:
        ignored = gradient.masked_select(~mask.expand_as(gradient))
        assert bool((ignored == 0).all()), f"gradient on ignored entries: {ignored}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("case", "name"), PAIRS)
def test_floating_dtypes(case: StructureCase, name: str, dtype: torch.dtype) -> None:
    outputs, gradient, value = _run(case, name, dtype)
    assert outputs.dtype == dtype
    assert gradient.dtype == dtype and gradient.shape == case.scores_shape
    assert bool(torch.isfinite(outputs).all()) and bool(torch.isfinite(gradient).all())
    assert bool(torch.isfinite(value))
    if get_estimator(name).hard:
        _assert_valid_hard(case, outputs)


@pytest.mark.parametrize(("case", "name"), PAIRS)
def test_same_seed_same_output_and_gradient(case: StructureCase, name: str) -> None:
    first = _run(case, name, torch.float32, seed=11)
    second = _run(case, name, torch.float32, seed=11)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("case", "name"), PAIRS)
def test_estimate_value_is_the_mean_loss(case: StructureCase, name: str) -> None:
    scores = _scores(case, torch.float64, "cpu")
    weights = _weights(case, torch.float64, "cpu")
    losses: list[torch.Tensor] = []

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        assert x.shape == (3, *case.scores_shape) and x.dtype == torch.float64
        loss = ((x * weights).flatten(1).sum(1) - 1) ** 2
        losses.append(loss.detach())
        return loss

    value = pickgrad.estimate(
        loss_fn, scores, case.structure, name, n_samples=3, tau=TAU, generator=_generator("cpu", 1)
    )
    assert value.shape == ()
    torch.testing.assert_close(value.detach(), losses[0].mean())
    value.backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    if get_estimator(name).needs_loss:
        with pytest.raises(ValueError, match=r"pickgrad\.estimate"):
            pickgrad.select(scores, case.structure, name, tau=TAU)
