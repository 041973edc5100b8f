"""The l2x data: formulas on fixed inputs, true features, label law, checksum, digits, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pickgrad.experiments.l2x_data import (
    DATASETS,
    default_k,
    generate_synthetic,
    load_or_generate,
    logit_f,
)


def _point(*values: float) -> torch.Tensor:
    return torch.tensor([*values, *[0.0] * (10 - len(values))], dtype=torch.float64)


def test_formulas_on_fixed_inputs() -> None:
    x = _point(0.5, -2.0, 1.5, 0.25)
    assert float(logit_f("xor", x)) == pytest.approx(-1.0)
    assert float(logit_f("orange-skin", x)) == pytest.approx(0.25 + 4 + 2.25 + 0.0625 - 4)
    additive = -100 * math.sin(0.1) + 2.0 + 1.5 + math.exp(-0.25) - 2.4
    assert float(logit_f("nonlinear-additive", x)) == pytest.approx(additive)
    # Features past the model's own never matter.
    y = x.clone()
    y[4:] = torch.tensor([3.0, -1.0, 7.0, 2.0, 0.5, -4.0], dtype=torch.float64)
    for name in ("xor", "orange-skin", "nonlinear-additive"):
        assert float(logit_f(name, y)) == float(logit_f(name, x))


@pytest.mark.parametrize("dataset", ["xor", "orange-skin", "nonlinear-additive"])
def test_targets_follow_the_formula_and_true_features_are_the_published_ones(
    dataset: str,
) -> None:
    part = generate_synthetic(dataset, 500, torch.Generator().manual_seed(0))
    expected = torch.sigmoid(-logit_f(dataset, part["x"].double())).float()
    torch.testing.assert_close(part["target"], expected, rtol=1e-5, atol=1e-6)
    true = {"xor": [0, 1], "orange-skin": [0, 1, 2, 3], "nonlinear-additive": [0, 1, 2, 3]}
    mask = torch.zeros(10, dtype=torch.bool)
    mask[true[dataset]] = True
    assert torch.equal(part["relevant"], mask.expand(500, 10))
    assert default_k(dataset) == len(true[dataset])


def test_labels_are_bernoulli_draws_of_the_target() -> None:
    part = generate_synthetic("orange-skin", 20_000, torch.Generator().manual_seed(1))
    p = part["target"].double()
    # Mean of the labels against the mean target: tolerance five standard errors.
    std = float((p * (1 - p)).mean().sqrt()) / math.sqrt(p.numel())
    assert abs(float(part["label"].double().mean() - p.mean())) < 5 * std


def test_switch_uses_the_switch_feature_and_the_right_inputs() -> None:
    part = generate_synthetic("switch", 4000, torch.Generator().manual_seed(2))
    x, relevant = part["x"].double(), part["relevant"]
    orange = relevant[:, 0]
    assert torch.equal(relevant[:, 9], torch.ones(4000, dtype=torch.bool))
    assert torch.equal(relevant[:, 4], ~orange)  # exactly one of the two blocks
    assert relevant.sum(-1).eq(5).all()
    # The switch feature carries the group: mean +3 or -3.
    assert abs(float(x[orange, 9].mean()) - 3) < 0.1
    assert abs(float(x[~orange, 9].mean()) + 3) < 0.1
    expected = torch.where(
        orange, logit_f("orange-skin", x), logit_f("nonlinear-additive", x[:, 4:8])
    )
    torch.testing.assert_close(part["target"].double(), torch.sigmoid(-expected), atol=1e-6,
                               rtol=1e-5)  # fmt: skip
    # The additive block is a real swap: features 0-3 and 4-7 are independent, not copies.
    assert not torch.allclose(x[~orange, :4], x[~orange, 4:8])
    assert float(torch.corrcoef(torch.stack([x[:, 0], x[:, 4]]))[0, 1]).__abs__() < 0.1


def test_cache_checksum_and_a_corrupted_file(tmp_path: Path) -> None:
    data = load_or_generate(tmp_path, "xor", sizes=(30, 10, 10), seed=0)
    again = load_or_generate(tmp_path, "xor", sizes=(30, 10, 10), seed=0)
    assert data.checksum == again.checksum and torch.equal(data.train[0], again.train[0])
    other = load_or_generate(tmp_path, "xor", sizes=(30, 10, 10), seed=1)
    assert other.checksum != data.checksum
    # Changing the training size leaves the test split alone.
    bigger = load_or_generate(tmp_path, "xor", sizes=(60, 10, 10), seed=0)
    assert torch.equal(bigger.test[0], data.test[0])
    meta = data.path.with_suffix(".json")
    meta.write_text(json.dumps({"sha256": "0" * 64, "version": 1}))
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_or_generate(tmp_path, "xor", sizes=(30, 10, 10), seed=0)


def test_digits_three_against_eight(tmp_path: Path) -> None:
    data = load_or_generate(tmp_path, "digits", sizes=(1, 1, 1), seed=0)
    sizes = [split[0].shape[0] for split in (data.train, data.valid, data.test)]
    assert sum(sizes) == 357 and sizes[0] == 214
    for x, target, label, relevant in (data.train, data.valid, data.test):
        assert x.shape[1] == 64 and 0 <= float(x.min()) and float(x.max()) <= 1
        assert torch.equal(target, label.float()) and not bool(relevant.any())
    assert set(data.train[2].tolist()) == {0, 1}
    assert DATASETS["digits"] == (64, 8)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        default_k("mnist")
    with pytest.raises(ValueError, match="count must be >= 1"):
        generate_synthetic("xor", 0, torch.Generator())
    with pytest.raises(ValueError, match="not synthetic"):
        generate_synthetic("digits", 5, torch.Generator())
    with pytest.raises(ValueError, match="logit_f"):
        logit_f("switch", torch.zeros(10))
    with pytest.raises(ValueError, match="sizes must be three"):
        load_or_generate("/tmp", "xor", sizes=(1, 0, 1), seed=0)
