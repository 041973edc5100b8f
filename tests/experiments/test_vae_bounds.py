"""The VAE's bounds against brute-force enumeration of a tiny latent space (2 x 3 classes).

Exact ``log p(x) = logsumexp_z [log p(x | z) + log p(z)]`` and the exact ELBO are sums over the
9 one-hot configurations; the Monte Carlo estimates must match them within tolerances derived
from their measured standard errors, and ``log p(x) >= IW_S >= ELBO`` in expectation, with
``IW_S -> log p(x)`` as S grows (Burda et al. 2016, Theorem 1).
"""

from __future__ import annotations

import math

import pytest
import torch

from pickgrad.experiments.vae_model import (
    VaeNetwork,
    bernoulli_log_likelihood,
    iw_bound,
    kl_to_uniform,
    latent_shape,
    log_weights,
    sample_bounds,
)
from pickgrad.structures import OneHot

L, K, P, B = 2, 3, 6, 4


@pytest.fixture
def setting() -> tuple[VaeNetwork, torch.Tensor]:
    torch.manual_seed(0)
    network = VaeNetwork(P, L, K, (5,)).double()
    with torch.no_grad():  # sharper posteriors and likelihoods than the default init
        for parameter in network.parameters():
            parameter.mul_(3.0)
    x = torch.randint(0, 2, (B, P), generator=torch.Generator().manual_seed(1)).double()
    return network, x


def _exact(network: VaeNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        z = OneHot().enumerate((L, K), dtype=torch.float64)  # (9, L, K)
        log_likelihood = bernoulli_log_likelihood(network.decode(z)[:, None, :], x)  # (9, B)
        logits = network.encode(x)
        log_q = (z[:, None] * torch.log_softmax(logits, -1)).sum((-1, -2))  # (9, B)
        log_joint = log_likelihood - L * math.log(K)
        q = log_q.exp()
        return {
            "log_px": torch.logsumexp(log_joint, 0),
            "elbo": (q * (log_joint - log_q)).sum(0),
            "q_total": q.sum(0),
            "kl": (q * (log_q + L * math.log(K))).sum(0),
            "reconstruction_var": (q * log_likelihood**2).sum(0) - (q * log_likelihood).sum(0) ** 2,
            "logits": logits,
        }


def _draws(network: VaeNetwork, x: torch.Tensor, samples: int, repeats: int, seed: int) -> dict:
    """``repeats`` independent estimates of each bound, ``(repeats, B)``: x tiled, one call."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bounds = sample_bounds(
            network, x.repeat(repeats, 1), samples=samples, relaxed_samples=1, tau=1.0,
            generator=generator, chunk=samples,
        )  # fmt: skip
    return {key: value.reshape(repeats, B) for key, value in bounds.items()}


def test_enumeration_sanity_and_exact_kl(setting: tuple[VaeNetwork, torch.Tensor]) -> None:
    network, x = setting
    exact = _exact(network, x)
    torch.testing.assert_close(exact["q_total"], torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(kl_to_uniform(exact["logits"]), exact["kl"])
    assert bool((exact["log_px"] > exact["elbo"] + 1e-6).all())  # the posterior is not exact


def test_hard_nelbo_matches_the_exact_elbo(setting: tuple[VaeNetwork, torch.Tensor]) -> None:
    network, x = setting
    exact = _exact(network, x)
    samples = 4000
    nelbo = _draws(network, x, samples, 1, seed=2)["nelbo_hard"][0]
    # The KL is exact; the reconstruction term's standard error is sqrt(Var_q / S).
    error = (exact["reconstruction_var"] / samples).sqrt()
    assert bool(((nelbo + exact["elbo"]).abs() <= 5 * error + 1e-9).all())


def test_iw_bound_lies_between_elbo_and_log_likelihood_and_tends_to_it(
    setting: tuple[VaeNetwork, torch.Tensor],
) -> None:
    network, x = setting
    exact = _exact(network, x)
    gap = exact["log_px"] - exact["elbo"]
    means = {}
    for samples in (1, 10, 1000):
        repeats = 400 if samples < 1000 else 20
        iw = -_draws(network, x, samples, repeats, seed=samples)["nll_iw"]  # (repeats, B)
        mean, sem = iw.mean(0), iw.std(0) / math.sqrt(repeats)
        means[samples] = mean
        assert bool((mean <= exact["log_px"] + 5 * sem + 1e-9).all()), samples
        if samples == 1:  # IW_1 is an unbiased estimate of the ELBO
            assert bool(((mean - exact["elbo"]).abs() <= 5 * sem + 1e-9).all())
        else:
            assert bool((mean >= exact["elbo"] - 5 * sem).all()), samples
        if samples == 1000:
            assert bool((exact["log_px"] - mean <= 0.05 * gap + 5 * sem + 1e-9).all())
    assert bool((means[10] > means[1]).all()) and bool((means[1000] > means[10]).all())


def test_relaxed_bound_tends_to_the_hard_one_as_tau_goes_to_zero(
    setting: tuple[VaeNetwork, torch.Tensor],
) -> None:
    network, x = setting
    with torch.no_grad():
        bounds = sample_bounds(
            network, x, samples=20, relaxed_samples=20, tau=1e-4,
            generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        warm = sample_bounds(
            network, x, samples=20, relaxed_samples=20, tau=5.0,
            generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
    torch.testing.assert_close(bounds["nelbo_relaxed"], bounds["nelbo_hard"])
    assert not torch.allclose(warm["nelbo_relaxed"], warm["nelbo_hard"])


def test_log_weights_and_iw_bound_formulas() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # q = (1/4, 3/4), one latent of 2 classes
    z = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 0.0]]]])  # (S=2, B=1, 1, 2)
    log_likelihood = torch.tensor([[-1.0], [-2.0]])
    weights = log_weights(log_likelihood, z, logits)
    expected = torch.tensor([[-1.0 + math.log(0.5 / 0.75)], [-2.0 + math.log(0.5 / 0.25)]])
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(iw_bound(weights), torch.logsumexp(expected, 0) - math.log(2))


def test_bad_input_is_refused() -> None:
    network = VaeNetwork(4, 2, 3, (3,))
    with pytest.raises(ValueError, match="relaxed_samples=5, samples=2"):
        sample_bounds(
            network, torch.zeros(1, 4), samples=2, relaxed_samples=5, tau=1.0,
            generator=torch.Generator(),
        )  # fmt: skip
    with pytest.raises(ValueError, match="classes=1"):
        VaeNetwork(4, 2, 1, (3,))
    with pytest.raises(ValueError, match="method='gaussian' is not known"):
        latent_shape("gaussian", 20, 10, 200)
    assert latent_shape("binary", 20, 10, 200) == (200, 2)
