"""perturbed's Gumbel noise (drawn from uniforms since issue 16.4): the Gumbel law."""

from __future__ import annotations

import math

import torch
from scipy import stats

from pickgrad.estimators.perturbed import noise_log_density_gradient, sample_noise


def test_gumbel_noise_from_uniforms_has_the_standard_gumbel_law() -> None:
    draws = sample_noise(
        "gumbel", (20_000,), dtype=torch.float64, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert bool(torch.isfinite(draws).all())
    result = stats.kstest(draws.numpy(), stats.gumbel_r.cdf)
    assert result.pvalue > 1e-3
    # E[grad nu(Z)] = E[1 - exp(-Z)] = 0: the integration-by-parts weights have mean zero.
    weights = noise_log_density_gradient("gumbel", draws)
    assert abs(float(weights.mean())) < 5 * float(weights.std()) / math.sqrt(draws.numel())


def test_gumbel_noise_is_finite_in_float32_and_reproducible() -> None:
    def draw(seed: int) -> torch.Tensor:
        return sample_noise(
            "gumbel", (100, 128, 10), dtype=torch.float32, device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    assert bool(torch.isfinite(draw(1)).all())
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
