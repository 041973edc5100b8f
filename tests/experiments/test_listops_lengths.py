"""ListOps draws its trees with ``lengths=`` (no padding scores); ``independent`` keeps padding."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

import pickgrad
from pickgrad.experiments import get_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.listops import ListOpsModel
from pickgrad.experiments.listops_data import generate_split
from pickgrad.experiments.listops_model import MASK_SCORE

EXPERIMENT = get_experiment("listops")


def _model(method: str, estimator: str) -> ListOpsModel:
    config = EXPERIMENT.default_config(quick=True)
    choice = resolve_estimator(estimator, EXPERIMENT.structure(config, method))
    torch.manual_seed(0)
    model = EXPERIMENT.build_model(config, method, choice)
    assert isinstance(model, ListOpsModel)
    return model


def _batch(count: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    part = generate_split(count, random.Random(seed))
    return (part["tokens"], part["lengths"], part["values"], part["heads"])


class _Spy:
    """Records the keywords of pickgrad.select / estimate and what select returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        self.drawn: list[torch.Tensor] = []
        select, estimate = pickgrad.select, pickgrad.estimate

        def spy_select(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.calls.append(kwargs)
            x = select(*args, **kwargs)
            self.drawn.append(x.detach())
            return x

        def spy_estimate(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.calls.append(kwargs)
            return estimate(*args, **kwargs)

        monkeypatch.setattr(pickgrad, "select", spy_select)
        monkeypatch.setattr(pickgrad, "estimate", spy_estimate)


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-relaxed", "reinforce"])
@pytest.mark.parametrize("method", ["arborescence", "tree"])
def test_trees_are_drawn_with_lengths(
    method: str, estimator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(method, estimator)
    batch = _batch(6, seed=4)
    spy = _Spy(monkeypatch)
    tokens, lengths, _, _ = model._inputs(batch)
    loss, _ = model(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert len(spy.calls) == 1 and torch.equal(spy.calls[0]["lengths"], lengths)
    assert int(lengths.min()) < tokens.shape[1]  # the batch really has padding
    with torch.no_grad():
        scores = model.scores(model.network.encode(tokens, lengths), lengths)
    assert bool((scores != MASK_SCORE).all())  # no padding scores for the trees
    padded = torch.arange(tokens.shape[1]) >= lengths[:, None]
    pad_pairs = padded[:, :, None] | padded[:, None, :]
    for x in spy.drawn:
        assert bool((x[pad_pairs] == 0).all())
        real_arcs = x.sum((-1, -2)) / (2 if method == "tree" else 1)
        torch.testing.assert_close(real_arcs, (lengths - 1).to(x.dtype))  # n - 1 arcs


def test_independent_keeps_padding_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("independent", "st-gumbel")
    spy = _Spy(monkeypatch)
    model(_batch(6, seed=4), torch.Generator().manual_seed(0))
    assert "lengths" not in spy.calls[0]


@pytest.mark.parametrize("method", ["arborescence", "tree"])
def test_monitor_probe_carries_lengths(method: str) -> None:
    model = _model(method, "st-gumbel")
    batch = _batch(5, seed=1)
    probe = model.monitor_probe(batch)
    assert probe is not None
    _, lengths, _, _ = model._inputs(batch)
    assert torch.equal(probe.options["lengths"], lengths)
    surrogate = pickgrad.estimate(
        probe.loss_fn, probe.scores.clone().requires_grad_(True), probe.structure,
        probe.estimator, tau=probe.tau, **probe.options,
    )  # fmt: skip
    assert torch.isfinite(surrogate)
