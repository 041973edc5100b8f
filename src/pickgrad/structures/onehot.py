"""``OneHot``: choose one of n items; ``(..., S, n)`` scores mean S independent slots."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pickgrad.noise import sample_gumbel, sampling_dtype
from pickgrad.structures.base import Structure

__all__ = ["OneHot", "sparsemax"]

_REGULARIZERS = ("entropy", "sparsemax")


class _Sparsemax(torch.autograd.Function):
    """Euclidean projection onto the simplex along the last dim (Martins & Astudillo, 2016)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        sorted_z, _ = torch.sort(z, dim=-1, descending=True)
        ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
        cumulative = sorted_z.cumsum(-1)
        in_support = 1 + ranks * sorted_z > cumulative
        support_size = in_support.sum(-1, keepdim=True)
        threshold = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
        p = (z - threshold).clamp_min(0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad.dtype)
        mean_on_support = (grad * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        return support * (grad - mean_on_support)


# The backward works on at most this many tiles of rows (and at least 2**16 entries per tile), so
# that its one temporary is a quarter of the scores at most, with few ops.
_MAX_TILES = 4
_MIN_TILE_ENTRIES = 1 << 16


def _rng_state(generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A copy of the state of ``generator`` (or of the default generator of ``device``)."""
    if generator is not None:
        return generator.get_state()
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _replay(ctx: Any) -> torch.Generator:
    """A generator in the state ``ctx.rng_state`` saved at forward time, on ``ctx.device``."""
    generator = torch.Generator(device=ctx.device)
    generator.set_state(ctx.rng_state)
    return generator


def _perturbed_softmax_(
    scores: Tensor, tau: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw ``G`` as :func:`sample_gumbel` does; return ``(index, softmax((scores + G) / tau))``.

    ``index`` is ``argmax(scores + G)`` with a trailing unit dim; the softmax is computed in place
    in the noise buffer (float32 for half types), which is the only full-size allocation.
    """
    work = sampling_dtype(scores.dtype)
    buffer = torch.empty(scores.shape, dtype=work, device=scores.device)
    buffer.exponential_(generator=generator).clamp_min_(torch.finfo(work).tiny).log_()
    torch.sub(scores, buffer, out=buffer)  # scores + G with G = -log E, bit for bit
    index = buffer.argmax(-1, keepdim=True)
    buffer.sub_(buffer.gather(-1, index))  # the row maximum sits at the argmax
    if tau != 1.0:
        buffer.mul_(1.0 / tau)
    buffer.exp_()
    return index, buffer.div_(buffer.sum(-1, keepdim=True))


class _StraightThroughGumbelSoftmax(torch.autograd.Function):
    """Forward ``argmax(scores + G)``; backward the Jacobian of ``softmax((scores + G) / tau)``.

    Saves only the softmax. The first backward overwrites it with the gradient, tile by tile, so
    the backward allocates no full-size temporary; a later backward (``retain_graph=True``)
    redraws the same noise from the saved generator state.
    """

    @staticmethod
    def forward(ctx: Any, scores: Tensor, tau: float, generator: torch.Generator | None) -> Tensor:
        ctx.rng_state = _rng_state(generator, scores.device)
        ctx.device = scores.device
        index, ctx.softmax = _perturbed_softmax_(scores.detach(), tau, generator)
        ctx.tau = tau
        ctx.save_for_backward(scores)
        return torch.zeros_like(scores).scatter_(-1, index, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            (scores,) = ctx.saved_tensors
            work = sampling_dtype(scores.dtype)
            noise = sample_gumbel(
                scores.shape, dtype=work, device=scores.device, generator=_replay(ctx)
            )
            p = torch.softmax((scores.to(work) + noise) / ctx.tau, dim=-1)
            g = grad.to(work)
            result = p * (g - (p * g).sum(-1, keepdim=True)) / ctx.tau
            return result.to(grad.dtype), None, None
        p = ctx.softmax
        ctx.softmax = None
        if p is None:  # a second backward through a retained graph: redraw the same noise
            (scores,) = ctx.saved_tensors
            _, p = _perturbed_softmax_(scores.detach(), ctx.tau, _replay(ctx))
        n = p.shape[-1]
        rows = p.reshape(-1, n)
        grad_rows = grad.reshape(-1, n).to(p.dtype)
        # <p, g> per row as a batched matrix product: no temporary of the scores' size.
        inner = torch.bmm(rows.unsqueeze(-2), grad_rows.unsqueeze(-1)).squeeze(-1)
        step = max(-(-rows.shape[0] // _MAX_TILES), _MIN_TILE_ENTRIES // n, 1)
        for start in range(0, rows.shape[0], step):
            # In place: p <- p * (g - <p, g>) (then / tau), the softmax Jacobian applied to g.
            tile = slice(start, start + step)
            rows[tile].mul_(grad_rows[tile] - inner[tile])
        if ctx.tau != 1.0:
            p.mul_(1.0 / ctx.tau)
        return p.to(grad.dtype), None, None


#: Entries per tile of the conditional sampler: the in-place passes then stay in cache.
_CONDITIONAL_TILE = 2**20


def _conditional_exponentials_(buffer: Tensor, generator: torch.Generator | None) -> Tensor:
    """Fill ``buffer`` in place with Exponential(1) draws ``E = -log U`` and return it.

    Used only for the conditional draws that gumbel-rao averages in its backward pass: 3x faster
    than ``exponential_`` on the CPU, at the price of tails cut at probability ~6e-8 (``U`` is a
    float32 uniform, 24 bits, for every dtype), which no average of gradients can notice. The
    same generator state gives the same draws in every dtype, and filling consecutive slices
    gives the same numbers as one fill, so tiled and whole-tensor callers agree exactly.
    """
    if buffer.dtype == torch.float32:
        buffer.uniform_(generator=generator)
    else:
        uniform = torch.empty(buffer.shape, dtype=torch.float32, device=buffer.device)
        buffer.copy_(uniform.uniform_(generator=generator))
    return buffer.clamp_min_(torch.finfo(torch.float32).tiny).log_().neg_()


def _conditional_softmax(
    scores: Tensor, x: Tensor, n_draws: int, tau: float, generator: torch.Generator | None
) -> Tensor:
    """``softmax((scores + G_k) / tau)`` for K conditional draws ``G_k``: ``(..., K, n)``, float32+.

    With ``a = softmax(scores)``, chosen item i and the exponentials ``E`` behind the Gumbel
    noise (``G = -log E``), ``exp(z_j - z_i) = a_j E_i / (a_j E_i + E_j)`` for j != i (the
    truncated-Gumbel sampler of ``_conditional_gumbel`` rewritten without logarithms), so the
    relaxed points need one exponential draw and a few in-place products per entry, done in
    cache-sized tiles of rows.
    """
    work = sampling_dtype(scores.dtype)
    n = scores.shape[-1]
    a = torch.softmax(scores.to(work), -1).reshape(-1, 1, n)
    index = x.argmax(-1).reshape(-1, 1, 1).expand(-1, n_draws, 1)
    out = torch.empty((a.shape[0], n_draws, n), dtype=work, device=scores.device)
    rows = max(1, _CONDITIONAL_TILE // (n_draws * n))
    for start in range(0, a.shape[0], rows):
        tile = slice(start, start + rows)
        exponential = _conditional_exponentials_(out[tile], generator)
        chosen = exponential.gather(-1, index[tile])  # E_i
        ratio = exponential.div_(a[tile]).div_(chosen)  # E_j / (a_j E_i)
        weights = ratio.add_(1).reciprocal_().scatter_(-1, index[tile], 1.0)  # exp(z_j - z_i)
        if tau != 1.0:
            weights.pow_(1.0 / tau)
        weights.div_(weights.sum(-1, keepdim=True))
    return out.reshape(*scores.shape[:-1], n_draws, n)


class _GumbelRaoSoftmax(torch.autograd.Function):
    """Forward ``x``; backward ``(1/K) sum_k J_k^T grad`` with ``J_k = (diag p_k - p_k p_k^T) / tau``.

    ``p_k`` are the saved relaxed points ``(..., K, n)``; the sums over items and over k weighted
    by ``<p_k, grad>`` are batched matrix products, so the backward allocates nothing K x n.
    """

    @staticmethod
    def forward(ctx: Any, scores: Tensor, x: Tensor, probabilities: Tensor, tau: float) -> Tensor:
        ctx.save_for_backward(probabilities, scores)
        ctx.tau = tau
        return x.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        p, scores = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: p_k = softmax((scores + G_k) / tau) as a function of scores, the
            # G_k held fixed, is softmax(log p_k + (scores - scores.detach()) / tau).
            shift = (scores - scores.detach()).to(p.dtype).unsqueeze(-2) / ctx.tau
            p = torch.softmax(p.log() + shift, dim=-1)
        g = grad.to(p.dtype)
        inner = p @ g.unsqueeze(-1)  # <p_k, g>: (..., K, 1)
        weighted = (inner.transpose(-1, -2) @ p).squeeze(-2)  # sum_k <p_k, g> p_k: (..., n)
        scale = 1.0 / (p.shape[-2] * ctx.tau)
        if torch.is_grad_enabled():
            result = (p.sum(-2) * g - weighted) * scale
        else:
            result = p.sum(-2).mul_(g).sub_(weighted).mul_(scale)
        return result.to(grad.dtype), None, None, None


def sparsemax(z: Tensor) -> Tensor:
    """Sparsemax of ``z`` along the last dim: ``argmin_{p in simplex} ||p - z||^2``.

    Args:
        z: ``(..., n)`` floating tensor.

    Returns:
        ``(..., n)`` point of the simplex, often with exact zeros.

    Reference: Martins & Astudillo, "From Softmax to Sparsemax", 2016.

    Example:
        >>> sparsemax(torch.tensor([2.0, 1.0, -1.0]))
        tensor([1., 0., 0.])
    """
    return _Sparsemax.apply(z)


class OneHot(Structure):
    """One item out of n: ``x`` is one-hot over the last dimension.

    Scores ``(..., n)``; every leading dimension is a batch dimension, so ``(B, S, n)`` scores are
    B examples of S independent slots (an item may fill several slots).

    * ``argmax``: one-hot of the first maximal entry (ties go to the lowest index).
    * ``relax(scores, tau)``: ``softmax(scores / tau)`` (``regularizer="entropy"``, default) or
      ``sparsemax(scores / tau)`` (``regularizer="sparsemax"``).
    * ``log_partition``: ``logsumexp(scores / tau)``.
    * ``perturb_log_prob``: ``log softmax(scores)[x]``, since ``argmax(scores + G)`` with
      standard Gumbel ``G`` is an exact sample of ``softmax(scores)``.
    * ``conditional_gumbel``: exact sampler of G given the argmax (top-down, Maddison et al. 2014).
    * fused fast paths for ``st-gumbel`` and ``gumbel-rao`` (entropy regulariser): the same noise
      and gradients as the generic composition, with fewer passes and less memory.

    Example:
        >>> s = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
        >>> OneHot().argmax(s)
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
        >>> OneHot().relax(s, tau=1e-3).round()
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
    """

    event_dims = 1

    def _argmax(self, scores: Tensor) -> Tensor:
        index = scores.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(scores).scatter_(-1, index, 1.0)

    def _relax(self, scores: Tensor, tau: float, regularizer: str = "entropy") -> Tensor:
        z = scores if tau == 1.0 else scores / tau
        # Half types are computed in float32 and cast back.
        work = sampling_dtype(z.dtype)
        if regularizer == "entropy":
            return torch.softmax(z, dim=-1, dtype=work).to(z.dtype)
        if regularizer == "sparsemax":
            return sparsemax(z.to(work)).to(z.dtype)
        raise ValueError(f"regularizer must be one of {_REGULARIZERS}, got {regularizer!r}")

    def _log_partition(self, scores: Tensor, tau: float) -> Tensor:
        return torch.logsumexp(scores / tau, dim=-1)

    def _perturb_log_prob(self, scores: Tensor, x: Tensor) -> Tensor:
        return (torch.log_softmax(scores, dim=-1) * x).sum(-1)

    def _conditional_gumbel(
        self, scores: Tensor, x: Tensor, n_draws: int, generator: torch.Generator | None
    ) -> Tensor:
        # Given argmax = i: the max z_i = s_i + G_i is Gumbel(logsumexp(s)) and independent of i;
        # every other z_j is Gumbel(s_j) truncated to (-inf, z_i]. The draws are laid out
        # (..., K, n) as in _fused_gumbel_rao, so both see the same noise from one generator state.
        work = sampling_dtype(scores.dtype)
        s = scores.to(work).unsqueeze(-2)
        chosen = x.to(torch.bool).unsqueeze(-2)
        shape = (*scores.shape[:-1], n_draws, scores.shape[-1])
        exponential = torch.empty(shape, dtype=work, device=s.device)
        gumbel = _conditional_exponentials_(exponential, generator).log_().neg_()
        top = torch.logsumexp(s, dim=-1, keepdim=True) + (gumbel * chosen).sum(-1, keepdim=True)
        others = -torch.logaddexp(-top, -(s + gumbel))
        noise = torch.where(chosen, top, others) - s
        return noise.movedim(-2, 0).to(scores.dtype)

    def _has_onehot_solvers(self) -> bool:
        # The fused paths hard-code this class's argmax, softmax and conditional sampler; a
        # subclass that redefines one of them gets the generic composition instead.
        cls = type(self)
        return all(
            getattr(cls, name) is getattr(OneHot, name)
            for name in ("_argmax", "_relax", "_conditional_gumbel")
        )

    def _fused_st_gumbel(
        self,
        scores: Tensor,
        tau: float,
        generator: torch.Generator | None,
        regularizer: str = "entropy",
    ) -> Tensor | None:
        if regularizer != "entropy" or not self._has_onehot_solvers():
            return None
        return _StraightThroughGumbelSoftmax.apply(scores, tau, generator)

    def _fused_gumbel_rao(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        tau: float,
        generator: torch.Generator | None,
        regularizer: str = "entropy",
    ) -> Tensor | None:
        if regularizer != "entropy" or not self._has_onehot_solvers():
            return None
        with torch.no_grad():
            probabilities = _conditional_softmax(scores.detach(), x, n_draws, tau, generator)
        return _GumbelRaoSoftmax.apply(scores, x, probabilities, tau)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Every one-hot of shape ``(n,)``, or every joint pick of ``(S, n)`` independent slots.

        Returns ``(n ** S, *event_shape)``; slot 0 varies slowest.

        Example:
            >>> OneHot().enumerate((2, 2))
            tensor([[[1., 0.],
                     [1., 0.]],
            <BLANKLINE>
                    [[1., 0.],
                     [0., 1.]],
            <BLANKLINE>
                    [[0., 1.],
                     [1., 0.]],
            <BLANKLINE>
                    [[0., 1.],
                     [0., 1.]]])
        """
        event_shape = tuple(event_shape)
        if len(event_shape) < 1 or any(size < 1 for size in event_shape):
            raise ValueError(f"event_shape must be (..., n) with positive sizes, got {event_shape}")
        n = event_shape[-1]
        slots = math.prod(event_shape[:-1])
        count = n**slots
        picks = torch.arange(count, device=device)
        # Base-n digits of 0..count-1, most significant first: one digit per slot.
        powers = n ** torch.arange(slots - 1, -1, -1, device=device)
        digits = (picks[:, None] // powers) % n
        onehots = torch.nn.functional.one_hot(digits, n).to(dtype)
        return onehots.reshape(count, *event_shape)
