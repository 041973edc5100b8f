"""The discrete VAE's networks and bounds (Jang, Gu & Poole 2017, Sec. 4.2; Burda et al. 2016).

Latents: ``L`` independent categoricals of ``K`` classes, one-hot ``z`` shaped ``(..., L, K)``
(``categorical``: 20 x 10; ``binary``: 200 x 2, a ``OneHot`` over two classes each), uniform
prior ``p(z) = K ** -L``; the encoder gives logits ``(B, L, K)`` of the factorised posterior
``q(z | x) = prod_l softmax(logits_l)[z_l]``; the decoder maps ``z`` flattened to ``L * K``
values to Bernoulli logits of the ``P`` pixels. Both are MLPs with ReLU hidden layers.

Bounds of ``log p(x)`` (all returned negated, in nats, per example):

* ``nelbo_hard = E_q[-log p(x | z)] + KL(q || p)``, the KL exact: ``sum_l sum_k q log q + L log K``;
* ``nelbo_relaxed``: the same with the decoder fed the Gumbel-softmax relaxation
  ``softmax((logits + G) / tau)`` instead of ``z`` (the objective ``gumbel-relaxed`` trains);
* ``nll_iw = -log (1/S) sum_s p(x, z_s) / q(z_s | x)``, ``z_s ~ q`` (Burda et al. 2016):
  ``log p(x) >= -nll_iw``, tighter as S grows, and ``-nll_iw`` with S = 1 is an unbiased
  estimate of the ELBO.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pickgrad._softmax import log_softmax
from pickgrad.noise import sample_gumbel
from pickgrad.structures import OneHot

__all__ = [
    "METHODS",
    "VaeNetwork",
    "bernoulli_log_likelihood",
    "iw_bound",
    "kl_to_uniform",
    "latent_shape",
    "log_weights",
    "sample_bounds",
]

#: Methods: the latent space.
METHODS = {
    "categorical": "20 categoricals of 10 classes (OneHot on (..., 20, 10))",
    "binary": "200 binary latents (a OneHot over two classes each, (..., 200, 2))",
}


def latent_shape(method: str, categoricals: int, classes: int, binaries: int) -> tuple[int, int]:
    """``(L, K)`` of ``method``: ``(categoricals, classes)`` or ``(binaries, 2)``."""
    if method == "categorical":
        return categoricals, classes
    if method == "binary":
        return binaries, 2
    raise ValueError(f"method={method!r} is not known; expected one of {', '.join(METHODS)}")


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VaeNetwork(nn.Module):
    """Encoder ``x (B, P) -> logits (B, L, K)`` and decoder ``z (..., L, K) -> (..., P)``.

    Args:
        pixels: P.
        latents, classes: L, K.
        hidden: widths of the hidden layers of the encoder (the decoder mirrors them).

    Example:
        >>> net = VaeNetwork(64, 3, 4, (16,))
        >>> logits = net.encode(torch.zeros(5, 64))
        >>> tuple(logits.shape), tuple(net.decode(torch.zeros(2, 5, 3, 4)).shape)
        ((5, 3, 4), (2, 5, 64))
    """

    def __init__(self, pixels: int, latents: int, classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        if pixels < 1 or latents < 1 or classes < 2 or any(h < 1 for h in hidden):
            raise ValueError(
                f"pixels >= 1, latents >= 1, classes >= 2 and positive hidden widths are "
                f"needed, got pixels={pixels}, latents={latents}, classes={classes}, "
                f"hidden={tuple(hidden)}"
            )
        self.latents, self.classes = latents, classes
        self.encoder = _mlp([pixels, *hidden, latents * classes])
        self.decoder = _mlp([latents * classes, *reversed(hidden), pixels])

    def encode(self, x: Tensor) -> Tensor:
        """Posterior logits ``(B, L, K)`` of images ``x (B, P)`` (0/1 floats)."""
        # Centre the bits so the first layer starts unbiased (pixels are mostly 0).
        logits: Tensor = self.encoder(2 * x - 1)
        return logits.reshape(*logits.shape[:-1], self.latents, self.classes)

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli logits ``(..., P)`` of the pixels given latents ``z (..., L, K)``."""
        pixel_logits: Tensor = self.decoder(z.flatten(-2))
        return pixel_logits


def bernoulli_log_likelihood(pixel_logits: Tensor, x: Tensor) -> Tensor:
    """``log p(x | z) = sum_p [x_p log sigmoid(a_p) + (1 - x_p) log sigmoid(-a_p)]``.

    Args:
        pixel_logits: ``(..., B, P)`` decoder logits ``a``.
        x: ``(B, P)`` 0/1 pixels (broadcast against ``pixel_logits``).

    Returns:
        ``(..., B)``.

    Example:
        >>> float(bernoulli_log_likelihood(torch.zeros(1, 3), torch.ones(1, 3))[0])  # 3 log 1/2
        -2.0794...
    """
    logits, target = torch.broadcast_tensors(pixel_logits, x)
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


def kl_to_uniform(logits: Tensor) -> Tensor:
    """Exact ``KL(q || uniform) = sum_l [sum_k q_lk log q_lk + log K]``, ``q = softmax(logits)``.

    Args:
        logits: ``(..., L, K)``.

    Returns:
        ``(...)``.

    Example:
        >>> float(kl_to_uniform(torch.zeros(2, 3, 4))[0])
        0.0
    """
    log_q = log_softmax(logits)
    classes = logits.shape[-1]
    return (log_q.exp() * log_q).sum((-1, -2)) + logits.shape[-2] * math.log(classes)


def log_weights(log_likelihood: Tensor, z: Tensor, logits: Tensor) -> Tensor:
    """Importance log-weights ``log p(x | z) + log p(z) - log q(z | x)`` of one-hot samples.

    Args:
        log_likelihood: ``(S, B)`` ``log p(x | z_s)``.
        z: ``(S, B, L, K)`` one-hot samples.
        logits: ``(B, L, K)`` posterior logits.

    Returns:
        ``(S, B)``.
    """
    latents, classes = logits.shape[-2:]
    log_q = (z * log_softmax(logits)).sum((-1, -2))
    return log_likelihood - latents * math.log(classes) - log_q


def iw_bound(weights: Tensor) -> Tensor:
    """The importance-weighted bound ``log (1/S) sum_s exp(w_s)`` (Burda et al. 2016).

    Args:
        weights: ``(S, ...)`` log-weights of S samples from q.

    Returns:
        ``(...)``: a lower bound of ``log p(x)`` in expectation.

    Example:
        >>> float(iw_bound(torch.log(torch.tensor([[1.0], [3.0]])))[0])  # log 2
        0.6931...
    """
    return torch.logsumexp(weights, 0) - math.log(weights.shape[0])


def sample_bounds(
    network: VaeNetwork,
    x: Tensor,
    *,
    samples: int,
    relaxed_samples: int,
    tau: float,
    generator: torch.Generator,
    chunk: int = 10,
) -> dict[str, Tensor]:
    """Monte Carlo estimates of the three negated bounds of the module, per example.

    ``samples`` Gumbel draws ``G`` per example give the hard samples ``argmax(logits + G)``
    (exact draws of q) for ``nelbo_hard`` and ``nll_iw``; the first ``relaxed_samples`` of the same
    draws give ``softmax((logits + G) / tau)`` for ``nelbo_relaxed``. The decoder runs on
    ``chunk`` samples at a time, to bound memory.

    Args:
        network: the VAE.
        x: ``(B, P)`` 0/1 floats.
        samples: S >= 1; relaxed_samples: 1 <= R <= S; tau: the relaxation's temperature.
        generator: the noise's generator.

    Returns:
        ``{"nelbo_hard", "nelbo_relaxed", "nll_iw"}``, each ``(B,)``.

    Example:
        >>> net = VaeNetwork(16, 2, 3, (8,))
        >>> bounds = sample_bounds(net, torch.ones(4, 16), samples=20, relaxed_samples=5,
        ...                        tau=0.5, generator=torch.Generator().manual_seed(0))
        >>> sorted(bounds), tuple(bounds["nll_iw"].shape)
        (['nelbo_hard', 'nelbo_relaxed', 'nll_iw'], (4,))
    """
    if not 1 <= relaxed_samples <= samples:
        raise ValueError(
            f"need 1 <= relaxed_samples <= samples, got relaxed_samples={relaxed_samples}, "
            f"samples={samples}"
        )
    structure = OneHot()
    logits = network.encode(x)
    kl = kl_to_uniform(logits)
    weights, reconstruction, relaxed = [], [], []
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        noise = sample_gumbel(
            (count, *logits.shape), dtype=logits.dtype, device=logits.device, generator=generator
        )
        perturbed = logits + noise
        z = structure.argmax(perturbed)
        log_likelihood = bernoulli_log_likelihood(network.decode(z), x)
        weights.append(log_weights(log_likelihood, z, logits))
        reconstruction.append(log_likelihood)
        keep = min(count, relaxed_samples - start)
        if keep > 0:
            soft = structure.relax(perturbed[:keep], tau=tau)
            relaxed.append(bernoulli_log_likelihood(network.decode(soft), x))
    return {
        "nelbo_hard": kl - torch.cat(reconstruction).mean(0),
        "nelbo_relaxed": kl - torch.cat(relaxed).mean(0),
        "nll_iw": -iw_bound(torch.cat(weights)),
    }
