"""``OneHot``: choose one of n items; ``(..., S, n)`` scores mean S independent slots."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pickgrad._autograd import apply as apply_function
from pickgrad._softmax import log_softmax, softmax
from pickgrad._validation import (
    _functorch_transforms_active,
    check_scores,
    compute_dtype,
    graph_capture_active,
)
from pickgrad.noise import (
    CounterRandom,
    draw_seed_tensor,
    gumbel_from_uniform_,
    sample_gumbel,
    sampling_dtype,
)
from pickgrad.structures.base import Structure

__all__ = ["OneHot", "sparsemax"]

_REGULARIZERS = ("entropy", "sparsemax")


class _Sparsemax(torch.autograd.Function):
    """Euclidean projection onto the simplex along the last dim (Martins & Astudillo, 2016)."""

    # forward / setup_context / backward in plain torch ops: vmap and torch.func work on it.
    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        sorted_z, _ = torch.sort(z, dim=-1, descending=True)
        ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
        cumulative = sorted_z.cumsum(-1)
        in_support = 1 + ranks * sorted_z > cumulative
        # At least the top entry is in the support (exactly so for finite z); the clamp keeps
        # the gather in range should a non-finite entry slip through with validation off.
        support_size = in_support.sum(-1, keepdim=True).clamp_min_(1)
        threshold = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
        return (z - threshold).clamp_min(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad.dtype)
        mean_on_support = (grad * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        result: Tensor = support * (grad - mean_on_support)
        return result


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
    buffer = torch.rand(scores.shape, dtype=work, device=scores.device, generator=generator)
    gumbel_from_uniform_(buffer)
    torch.add(scores, buffer, out=buffer)  # scores + G, bit for bit
    index = buffer.argmax(-1, keepdim=True)
    buffer.sub_(buffer.gather(-1, index))  # the row maximum sits at the argmax
    if tau != 1.0:
        buffer.mul_(1.0 / tau)
    buffer.exp_()
    return index, buffer.div_(buffer.sum(-1, keepdim=True))


class _PerturbArgmaxSoftmax(torch.autograd.Function):
    """Forward ``argmax(scores + G)``; backward the Jacobian of ``softmax((scores + G) / tau)``.

    Saves only the softmax. The first backward overwrites it with the gradient, tile by tile, so
    the backward allocates no full-size temporary; a later backward (``retain_graph=True``)
    redraws the same noise from ``rng_state``, the generator's state before the draw.

    The forward returns the softmax as a second, non-differentiable output, so that
    ``setup_context`` can keep it; the caller drops it. An eager-only fast path (generator state,
    in-place buffers): under torch.compile and torch.func, :meth:`OneHot._perturb_argmax_relax`
    returns None and st-gumbel takes the generic composition, which draws the same noise, so
    this Function needs no vmap rule.
    """

    @staticmethod
    def forward(
        scores: Tensor, tau: float, generator: torch.Generator | None, rng_state: Tensor
    ) -> tuple[Tensor, Tensor]:
        index, softmax = _perturbed_softmax_(scores.detach(), tau, generator)
        return torch.zeros_like(scores).scatter_(-1, index, 1.0), softmax

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        scores, tau, _, rng_state = inputs
        ctx.mark_non_differentiable(output[1])
        # The softmax output gets no gradient: without this, autograd would hand the backward a
        # scores-sized tensor of zeros for it (+1x the scores' memory at the peak).
        ctx.set_materialize_grads(False)
        # Not save_for_backward: the first backward overwrites the softmax in place.
        ctx.softmax = output[1]
        ctx.rng_state, ctx.device, ctx.tau = rng_state, scores.device, tau
        ctx.save_for_backward(scores)

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor | None, _: Tensor | None
    ) -> tuple[Tensor | None, None, None, None]:
        if grad is None:
            return None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            (scores,) = ctx.saved_tensors
            work = sampling_dtype(scores.dtype)
            noise = sample_gumbel(
                scores.shape, dtype=work, device=scores.device, generator=_replay(ctx)
            )
            p = torch.softmax(_shifted_scaled(scores.to(work) + noise, ctx.tau), dim=-1)
            g = grad.to(work)
            result = p * (g - (p * g).sum(-1, keepdim=True)) / ctx.tau
            return result.to(grad.dtype), None, None, None
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
        return p.to(grad.dtype), None, None, None


#: Entries per tile of the conditional sampler: the in-place passes then stay in cache.
_CONDITIONAL_TILE = 2**19


def _conditional_softmax_tiles(
    scores: Tensor,
    x: Tensor,
    n_draws: int,
    tau: float,
    seed: int | Tensor,
    out: Tensor | None = None,
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """Yield ``(rows, w, total)`` per tile of rows, ``w / total = softmax((scores + G_k) / tau)``.

    The rows are those of ``scores.reshape(-1, n)``; ``w`` is ``(r, K, n)`` and ``total`` its sum
    over items ``(r, K, 1)``: the relaxed points, left unnormalised so that a caller that only
    reduces them saves a pass. The ``G_k`` are K draws of the Gumbel noise conditional on the
    argmax ``x``, from the counter-based stream seeded with ``seed`` (the same whatever the
    tiling). With ``a = softmax(scores)``, chosen item i and the exponentials ``E`` behind the
    noise (``G = -log E``), ``exp(z_j - z_i) = E_i / (E_i + E_j / a_j)`` for j != i (the
    truncated-Gumbel sampler of ``_conditional_gumbel`` rewritten without logarithms); at
    ``tau = 1`` the common factor ``E_i`` is dropped. ``w`` is a view of ``out`` ``(rows, K, n)``
    when it is given, else of one reused buffer; the tiles are small enough to stay in cache.
    """
    work = sampling_dtype(scores.dtype)
    n = scores.shape[-1]
    inverse_a = softmax(scores.to(work)).reshape(-1, 1, n).reciprocal_()  # 1 / a_j
    index = x.argmax(-1).reshape(-1, 1, 1).expand(-1, n_draws, 1)
    stream = CounterRandom(seed)
    total = inverse_a.shape[0]
    step = max(1, _CONDITIONAL_TILE // (n_draws * n))
    # Without ``out``, one buffer of a tile's size is reused for every tile.
    reused = out is None
    if out is None:
        out = torch.empty((min(step, total), n_draws, n), dtype=work, device=scores.device)
    for start in range(0, total, step):
        rows = slice(start, min(start + step, total))
        tile = out[: rows.stop - rows.start] if reused else out[rows]
        # log U = -E: the signs cancel in every ratio below, so the negation is never computed.
        log_u = stream.log_uniform_(tile, offset=start * n_draws * n)
        chosen = log_u.gather(-1, index[rows])  # -E_i
        weights = log_u.mul_(inverse_a[rows]).add_(chosen).reciprocal_()  # -1 / (E_i + E_j / a_j)
        weights.scatter_(-1, index[rows], chosen.reciprocal())  # -1 / E_i at j = i
        if tau != 1.0:  # scaled to exp(z_j - z_i) <= 1 first, so that the power cannot overflow
            # exp(z_i - z_i) is set to exactly 1: its rounding, raised to a large 1 / tau, would
            # underflow and leave the row summing to zero.
            weights.mul_(chosen).scatter_(-1, index[rows], 1.0).pow_(1.0 / tau)
        yield rows, weights, weights.sum(-1, keepdim=True)


def _conditional_softmax(
    scores: Tensor, x: Tensor, n_draws: int, tau: float, seed: int | Tensor
) -> Tensor:
    """All K relaxed points of :func:`_conditional_softmax_tiles` at once: ``(..., K, n)``."""
    n = scores.shape[-1]
    rows = scores[..., 0].numel()
    out = torch.empty((rows, n_draws, n), dtype=sampling_dtype(scores.dtype), device=scores.device)
    for _, weights, total in _conditional_softmax_tiles(scores, x, n_draws, tau, seed, out=out):
        weights.div_(total)
    return out.reshape(*scores.shape[:-1], n_draws, n)


class _ConditionalMeanSoftmax(torch.autograd.Function):
    """Forward ``x``; backward ``(1/K) sum_k J_k^T grad`` with ``J_k = (diag p_k - p_k p_k^T) / tau``.

    ``p_k`` are the relaxed points at K conditional draws. Nothing K x n is kept between forward
    and backward: the backward redraws the points from the seed saved at forward time, tile by
    tile in cache, and reduces each tile against the gradient at once, so the same seed gives
    the same gradient in every backward (``retain_graph=True`` included).

    An eager-only fast path (tiled in-place work): under torch.compile and torch.func,
    :meth:`OneHot._conditional_mean_relax` returns None and gumbel-rao takes the generic
    composition, which draws the same conditional noise, so this Function needs no vmap rule.
    """

    @staticmethod
    def forward(scores: Tensor, x: Tensor, n_draws: int, tau: float, seed: Tensor) -> Tensor:
        return x.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        scores, x, n_draws, tau, seed = inputs
        ctx.save_for_backward(scores, x, seed)
        ctx.n_draws, ctx.tau = n_draws, tau

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        scores, x, seed = ctx.saved_tensors
        scale = 1.0 / (ctx.n_draws * ctx.tau)
        if torch.is_grad_enabled():
            # create_graph=True: p_k = softmax((scores + G_k) / tau) as a function of scores, the
            # G_k held fixed, is softmax(log p_k + (scores - scores.detach()) / tau).
            with torch.no_grad():
                p = _conditional_softmax(scores, x, ctx.n_draws, ctx.tau, seed)
            shift = (scores - scores.detach()).to(p.dtype).unsqueeze(-2) / ctx.tau
            p = torch.softmax(p.log() + shift, dim=-1)
            g = grad.to(p.dtype).unsqueeze(-2)
            result = (p * (g - (p * g).sum(-1, keepdim=True))).sum(-2) * scale
            return result.to(grad.dtype), None, None, None, None
        n = scores.shape[-1]
        g = grad.reshape(-1, 1, n).to(sampling_dtype(scores.dtype))
        result = torch.empty_like(g)
        tiles = _conditional_softmax_tiles(scores, x, ctx.n_draws, ctx.tau, seed)
        for rows, w, total in tiles:
            # With p_k = w_k / t_k: sum_k p_k (g - <p_k, g>) = g * sum_k w_k / t_k
            # - sum_k (<w_k, g> / t_k^2) w_k; both sums over k in one batched product.
            # (An elementwise product and a sum: bmm is slow for these matrix-vector products.)
            inner = torch.mul(w, g[rows]).sum(-1, keepdim=True)  # <w_k, g>: (r, K, 1)
            reciprocal = total.reciprocal_()
            coefficients = torch.cat([reciprocal, inner.mul_(reciprocal).mul_(reciprocal)], -1)
            sums = torch.bmm(coefficients.transpose(-1, -2), w)  # (r, 2, n)
            torch.mul(g[rows], sums[:, :1], out=result[rows])
            result[rows].sub_(sums[:, 1:])
        result.mul_(scale)
        return result.reshape(grad.shape).to(grad.dtype), None, None, None, None


# --- two classes: the closed forms of the binary case ------------------------------------------
#
# At n = 2 the Gumbel noise enters only through L = G_1 - G_0, a standard logistic variable, and
# softmax((scores + G) / tau) = (1 - p, p) with p = sigmoid((d + L) / tau), d = s_1 - s_0. So one
# uniform per slot replaces two exponentials: L = logit(U). Given the argmax, the chosen class's
# lead m = e + Lambda (e = +-d its score margin, Lambda = +-L) is logistic truncated to m > 0, by
# one inverse-CDF uniform V: m = softplus(e) - log V + log1p(-sigmoid(e) V), i.e.
# exp(-m) = sigmoid(-e) V / (1 - sigmoid(e) V). Either way the
# Jacobian of the relaxation applied to g is w (g_1 - g_0) on class 1 and minus that on class 0,
# w = sigmoid'(z / tau) / tau = exp(-|z| / tau) / (1 + exp(-|z| / tau))^2 / tau, symmetric in z.


def _sigmoid_slope(z: Tensor, tau: float) -> Tensor:
    """``sigmoid'(z / tau) / tau``, accurate in the tails (no ``1 - sigmoid`` cancellation)."""
    e = torch.exp(z.abs() * (-1.0 / tau))
    return e / (1.0 + e).square() * (1.0 / tau)


def _binary_argmax(scores: Tensor) -> Tensor:
    """``OneHot._argmax`` of ``(..., 2)`` scores by one comparison: on the CPU, torch's argmax
    and scatter along rows of 2 cost 5x more (1.15 ms against 0.21 ms at (4, 100, 200, 2)).
    Ties and NaN as ``torch.argmax``: the first of equal items, and a NaN counts as the
    largest (the first NaN when both are)."""
    first, second = scores[..., 0], scores[..., 1]
    one = (second > first) | (second.isnan() & ~first.isnan())
    return torch.stack([~one, one], dim=-1).to(scores.dtype)


def _distinct_rows(scores: Tensor) -> Tensor:
    """``scores`` without the repeats of its expanded (stride-0) leading dimensions, which
    then broadcast: scores expanded over samples, as reinforce passes them, are computed on
    once per distinct row (4x less work at 4 samples)."""
    for dim in range(scores.dim() - 1):
        if scores.stride(dim) == 0 and scores.shape[dim] > 1:
            scores = scores.narrow(dim, 0, 1)
    return scores


#: Longest rows whose inverse-CDF draw compares every item (one pass over the samples' rows);
#: longer ones binary-search each row (``torch.searchsorted``) and scatter the one.
#: Measured side by side at 4 samples, one thread: comparing was faster up to 16 items
#: (0.34 against 0.40 ms at (100, 20, 10)), searching from 32 (0.15 against 0.17 ms at
#: (100, 5, 32); 4.0 against 2.4 ms at (64, 4, 1000)).
_COMPARED_ROWS = 16


def _per_row(rows: Tensor, values: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``op(rows, grouped)`` for ``values`` ``(...)`` that repeat the size-1 dimensions of
    ``rows`` ``(..., n)`` (scores expanded over samples): those dimensions move last and
    merge, so that ``op`` maps each row ``(..., n)`` and all of its values ``(..., K)`` at
    once, without copies of the row, to ``(..., K)``; the result comes back in the layout of
    ``values``."""
    repeated = [d for d in range(values.dim()) if rows.shape[d] == 1 and values.shape[d] > 1]
    if not repeated:
        return op(rows, values[..., None])[..., 0]
    kept = [d for d in range(values.dim()) if d not in repeated]
    moved = values.permute(*kept, *repeated)
    count = math.prod(moved.shape[len(kept) :])  # not -1: a batch may be empty
    grouped = moved.reshape(*moved.shape[: len(kept)], count).contiguous()
    result = op(rows.squeeze(repeated), grouped).reshape(moved.shape)
    inverse = [0] * values.dim()
    for position, dim in enumerate(kept + repeated):
        inverse[dim] = position
    return result.permute(*inverse)


def _repeats_rows(rows: Tensor, x: Tensor) -> bool:
    """Whether ``x`` ``(..., n)`` has the shape of ``rows`` but for the size-1 dimensions it
    repeats (what :func:`_per_row` maps); a public call may broadcast otherwise."""
    return x.dim() == rows.dim() and all(
        size in (1, other) for size, other in zip(rows.shape, x.shape, strict=True)
    )


def _first_above(cdf: Tensor, v: Tensor) -> Tensor:
    """Index of the first entry of each ``cdf`` row above ``v`` (see :func:`_per_row`)."""
    return _per_row(cdf, v, lambda rows, values: torch.searchsorted(rows, values, right=True))


def _binary_margin(scores: Tensor) -> Tensor:
    """``d = s_1 - s_0`` of ``(..., 2)`` scores, in the sampling dtype (float32 for half)."""
    work = sampling_dtype(scores.dtype)
    s = scores.to(work)
    return s[..., 1] - s[..., 0]


def _logistic(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard logistic draws ``logit(U)``, finite (U < 1; U = 0 clamped to the smallest normal)."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return u.clamp_min(torch.finfo(like.dtype).tiny).log() - torch.log1p(-u)


#: Entries per tile of the binary conditional draws: each tile's passes stay in cache (256 KB
#: of float32). Measured at (100, 200) slots, K = 10 and 100, one thread: 2^16 was 1.1x-1.5x
#: faster than 2^15 (one draw per tile there) and 2^18.
_BINARY_TILE = 2**16


def _conditional_ratios(
    d: Tensor, one: Tensor, n_draws: int, generator: torch.Generator | None
) -> Iterator[Tensor]:
    """``r = exp(-m)`` of K draws of the chosen class's lead m given the argmax, tile by tile.

    ``one``: class 1 chosen; ``e = +-d`` the chosen class's score margin, ``a = sigmoid(e)``.
    With ``m = softplus(e) - log V + log1p(-a V)``: ``r = sigmoid(-e) V / (1 - a V)`` in [0, 1),
    no logarithm. Yields ``(draws, ...)`` tiles of the ``(K, ...)`` draws, in order; the same
    generator state gives the same draws whoever iterates (forward and double backward).
    """
    e = torch.where(one, d, -d)
    a, b = torch.sigmoid(e), torch.sigmoid(-e)  # b = 1 - a without cancellation
    per_tile = max(1, _BINARY_TILE // max(1, d.numel()))
    unit = torch.ones((), dtype=d.dtype, device=d.device)
    for start in range(0, n_draws, per_tile):
        count = min(per_tile, n_draws - start)
        v = torch.rand((count, *d.shape), dtype=d.dtype, device=d.device, generator=generator)
        # A masked other class (e = +inf): b = 0, r = 0, the lead is +inf, as it must be.
        yield torch.mul(v, b).div_(torch.addcmul(unit, v, a, value=-1.0))  # / (1 - a v)


def _slope_of_ratio_(r: Tensor, tau: float) -> Tensor:
    """``sigmoid'(m / tau)`` from ``r = exp(-m)``, m >= 0, in place in ``r``: the slope of the
    relaxation but for its factor ``1 / tau``, which the caller applies once to the mean."""
    inverse = 1.0 / tau
    if inverse == 2.0:
        r.square_()
    elif inverse != 1.0:
        r.pow_(inverse)  # t = exp(-m / tau)
    return r.div_(torch.add(r, 1.0).square_())


def _conditional_noise(
    d: Tensor, one: Tensor, n_draws: int, generator: torch.Generator | None
) -> Tensor:
    """``L_k = z_k - d`` ``(K, ...)`` of the draws of :func:`_conditional_ratios` (no gradient)."""
    lead = torch.cat(list(_conditional_ratios(d, one, n_draws, generator))).log_().neg_()
    return torch.where(one, lead, -lead) - d


def _binary_gradient(grad: Tensor, slope: Tensor) -> Tensor:
    """``(-w (g_1 - g_0), w (g_1 - g_0))``: the relaxation's Jacobian at n = 2 applied to g."""
    g = grad.to(slope.dtype)
    half = slope * (g[..., 1] - g[..., 0])
    return torch.stack([-half, half], -1)


class _BinaryPerturbArgmax(torch.autograd.Function):
    """Two classes: forward ``argmax(scores + G)`` as ``[d + L > 0]``, ``L = logit(U)``; backward
    the Jacobian of ``softmax((scores + G) / tau)`` there (one uniform per slot). Saves the
    slope ``w`` ``(...)``; double backward redraws ``L`` from the generator state ``rng_state``.
    """

    @staticmethod
    def forward(
        ctx: Any, scores: Tensor, tau: float, generator: torch.Generator | None, rng_state: Tensor
    ) -> Tensor:
        d = _binary_margin(scores.detach())
        z = d + _logistic(tuple(d.shape), d, generator)
        one = z > 0  # ties (z = 0) go to class 0, as argmax's
        ctx.save_for_backward(scores)
        ctx.slope = _sigmoid_slope(z, tau)
        ctx.rng_state, ctx.device, ctx.tau = rng_state, scores.device, tau
        return torch.stack([~one, one], -1).to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        if torch.is_grad_enabled():  # create_graph=True: the same noise, differentiable in scores
            (scores,) = ctx.saved_tensors
            d = _binary_margin(scores)
            z = d + _logistic(tuple(d.shape), d.detach(), _replay(ctx))
            return (
                _binary_gradient(grad, _sigmoid_slope(z, ctx.tau)).to(grad.dtype),
                None,
                None,
                None,
            )
        return _binary_gradient(grad, ctx.slope).to(grad.dtype), None, None, None


class _BinaryConditionalMean(torch.autograd.Function):
    """Two classes: forward ``x``; backward ``(1/K) sum_k`` of the relaxation's Jacobian at K
    draws of the noise given ``x`` (truncated logistic leads, one uniform each). Saves the mean
    slope ``(...)`` only; double backward redraws the leads from the generator state."""

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        tau: float,
        generator: torch.Generator | None,
        rng_state: Tensor,
    ) -> Tensor:
        d = _binary_margin(scores.detach())
        one = x[..., 1] != 0
        total = torch.zeros_like(d)
        for ratios in _conditional_ratios(d, one, n_draws, generator):
            slopes = _slope_of_ratio_(ratios, tau)
            total += slopes[0] if slopes.shape[0] == 1 else slopes.sum(0)
        ctx.save_for_backward(scores, one)
        ctx.slope = total.mul_(1.0 / (tau * n_draws))
        ctx.n_draws, ctx.rng_state, ctx.device, ctx.tau = n_draws, rng_state, scores.device, tau
        return x.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: the same draws, differentiable in scores
            scores, one = ctx.saved_tensors
            d = _binary_margin(scores)
            noise = _conditional_noise(d.detach(), one, ctx.n_draws, _replay(ctx))
            slope = _sigmoid_slope(d + noise, ctx.tau).mean(0)
        else:
            slope = ctx.slope
        return _binary_gradient(grad, slope).to(grad.dtype), None, None, None, None, None


def _shifted_scaled(scores: Tensor, tau: float) -> Tensor:
    """``(scores - max scores) / tau`` along the last dim, in the compute dtype.

    Softmax and sparsemax are invariant to a common shift of their input; taking the row maximum
    out before dividing by tau (and upcasting half types before either) keeps the differences
    that decide the result exact, whatever the common offset, and keeps ``/ tau`` from
    overflowing: the maximum entry becomes exactly 0, the others at most -inf.
    """
    work = compute_dtype(scores.dtype)
    z = scores.to(work)
    z = torch.sub(z, z.detach().amax(-1, keepdim=True))  # a new tensor: safe to scale in place
    # Multiplying by 1 / tau (finite: tau is at least the dtype's smallest normal) is much faster
    # than dividing, for one more rounding; the fused st-gumbel path scales the same way.
    return z if tau == 1.0 else z.mul_(1.0 / tau)


def sparsemax(z: Tensor) -> Tensor:
    """Sparsemax of ``z`` along the last dim: ``argmin_{p in simplex} ||p - z||^2``.

    Computed in float32 for float16/bfloat16 input, after taking out the row maximum (sparsemax
    is shift invariant), and returned in the dtype of ``z``.

    Args:
        z: ``(..., n)`` floating tensor, finite.

    Returns:
        ``(..., n)`` point of the simplex, often with exact zeros.

    Reference: Martins & Astudillo, "From Softmax to Sparsemax", 2016.

    Example:
        >>> sparsemax(torch.tensor([2.0, 1.0, -1.0]))
        tensor([1., 0., 0.])
    """
    check_scores(z, name="z")
    result: Tensor = apply_function(_Sparsemax, _shifted_scaled(z, 1.0)).to(z.dtype)
    return result


class OneHot(Structure):
    """One item out of n: ``x`` is one-hot over the last dimension.

    Scores ``(..., n)``; every leading dimension is a batch dimension, so ``(B, S, n)`` scores are
    B examples of S independent slots (an item may fill several slots).

    * ``argmax``: one-hot of the first maximal entry (ties go to the lowest index).
    * ``relax(scores, tau)``: ``softmax(scores / tau)`` (``regularizer="entropy"``, default) or
      ``sparsemax(scores / tau)`` (``regularizer="sparsemax"``), computed as
      ``(scores - max scores) / tau`` in float32 for half types (result in the input dtype): no
      NaN for any finite scores and tau the range checks accept; float32 within 1e-5 of float64
      for ``|scores| / tau`` up to 1e6; exactly invariant to a representable common shift.
    * ``log_partition``: ``logsumexp(scores / tau)``, float32 for half scores.
    * ``perturb_log_prob``: ``log softmax(scores)[x]``, since ``argmax(scores + G)`` with
      standard Gumbel ``G`` is an exact sample of ``softmax(scores)``.
    * ``conditional_gumbel``: exact sampler of G given the argmax (top-down, Maddison et al. 2014),
      float32 for half scores (the noise can exceed float16's range).
    * fused capabilities (entropy regulariser), used by ``st-gumbel`` and ``gumbel-rao``:
      ``_perturb_argmax_relax`` (perturb, argmax and softmax gradient in one pass) and
      ``_conditional_mean_relax`` (the mean softmax gradient over conditional draws, redrawn in
      the backward pass): the same noise and gradients as the generic composition, with fewer
      passes and less memory. At n = 2 (binary slots) both take the closed form instead: one
      logistic draw ``L = G_1 - G_0`` per slot (the relaxation is ``sigmoid((d + L) / tau)``,
      ``d = s_1 - s_0``), and given the argmax one inverse-CDF uniform per draw for the
      truncated logistic lead: the same law as the generic composition from another stream
      (4-6x less time for gumbel-rao at 100 x 200 x 2).
    * ``_perturb_argmax_log_prob`` (a draw of ``argmax(scores + G)`` and its log-probability,
      without the noise, used by ``reinforce``): one uniform per row against the softmax's
      cumulative sum (against ``sigmoid(s_1 - s_0)`` at n = 2), the same law from another
      stream.

    Masks: ``mask=`` (True = allowed) on ``argmax``, ``relax`` and ``log_partition``, or ``-inf``
    scores: masked items are never chosen, get probability exactly 0 and zero gradient; a row
    with no allowed item is a ``ValueError`` (a value check).

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
    relax_option_names = ("regularizer",)

    def _argmax(self, scores: Tensor) -> Tensor:
        if scores.shape[-1] == 2:
            return _binary_argmax(scores)
        index = scores.argmax(dim=-1, keepdim=True)
        if _functorch_transforms_active():  # vmap has no batching rule for scatter_ of a value
            items = torch.arange(scores.shape[-1], device=scores.device)
            return (items == index).to(scores.dtype)
        return torch.zeros_like(scores).scatter_(-1, index, 1.0)

    def _infeasible_reason(self) -> str:
        return "a row with no allowed item"

    def _relax(self, scores: Tensor, tau: float, regularizer: str = "entropy") -> Tensor:
        if regularizer not in _REGULARIZERS:
            raise ValueError(f"regularizer must be one of {_REGULARIZERS}, got {regularizer!r}")
        z = _shifted_scaled(scores, tau)
        p = softmax(z) if regularizer == "entropy" else apply_function(_Sparsemax, z)
        return p.to(scores.dtype)

    def _log_partition(self, scores: Tensor, tau: float) -> Tensor:
        # In the compute dtype (float32 for half scores: a log-partition overflows float16).
        work = compute_dtype(scores.dtype)
        top = scores.detach().amax(-1, keepdim=True).to(work)
        z = (scores.to(work) - top) / tau
        return torch.logsumexp(z, dim=-1) + top.squeeze(-1) / tau

    def _perturb_log_prob(self, scores: Tensor, x: Tensor) -> Tensor:
        work = compute_dtype(scores.dtype)
        scores = _distinct_rows(scores)
        if scores.shape[-1] == 2:  # log sigmoid of the chosen class's margin: no reduction over 2
            margin = _binary_margin(scores)  # in the sampling dtype, which is ``work``
            # x_1 - x_0 = +-1 picks the sign: a product broadcasts over the samples 2.7x faster
            # than a where (0.17 against 0.48 ms at 4 x 100 x 200), and keeps +-inf margins.
            return F.logsigmoid((x[..., 1] - x[..., 0]).to(work) * margin)
        log_p = log_softmax(scores.to(work))
        if _repeats_rows(log_p, x):
            # Each row's log-probabilities gathered at its samples' picks: exact (-inf where a
            # masked item is picked), and the backward scatters into the distinct rows only,
            # not a where over every sample's row (reinforce at 4 samples: 4.6 -> 3.0 ms at
            # (64, 4, 1000); the where and its comparison alone 0.21 -> 0.1 ms at (100, 20, 10)).
            n = x.shape[-1]
            if n > _COMPARED_ROWS:
                index = x.argmax(-1)
            else:  # along short rows torch's argmax is slow; x is one-hot: the sum is exact
                items = torch.arange(n, dtype=work, device=x.device)
                index = (x.to(work) * items).sum(-1).long()
            return _per_row(log_p, index, lambda rows, picks: rows.gather(-1, picks))
        # where, not a product: masked items have log-probability -inf and x = 0 there.
        return torch.where(x != 0, log_p, torch.zeros((), dtype=work)).sum(-1)

    def _conditional_gumbel(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        generator: torch.Generator | None,
        *,
        start: Tensor | None = None,  # a closed-form sampler needs no starting point
    ) -> Tensor:
        # Given argmax = i: the max z_i = s_i + G_i is Gumbel(logsumexp(s)) and independent of i;
        # every other z_j is Gumbel(s_j) truncated to (-inf, z_i]. The draws come from a private
        # generator seeded from ``generator`` and are laid out (..., K, n), exactly as
        # _conditional_mean_relax draws them, so both see the same noise from one generator state.
        # The law of the noise is unchanged by a common shift of the scores: taking the row
        # maximum out keeps the differences exact for scores with a large common offset.
        work = compute_dtype(scores.dtype)
        s = scores.to(work)
        s = (s - s.amax(-1, keepdim=True)).unsqueeze(-2)
        chosen = x.to(torch.bool).unsqueeze(-2)
        shape = (*scores.shape[:-1], n_draws, scores.shape[-1])
        stream = CounterRandom(draw_seed_tensor(generator, s.device))
        if graph_capture_active():
            # The same draws with out-of-place ops: vmap cannot fill an unbatched buffer with a
            # batched seed's stream, and the compiler gets no dtype view or out=.
            gumbel = stream.exponential(shape, dtype=work, device=s.device).log().neg()
        else:
            exponential = torch.empty(shape, dtype=work, device=s.device)
            gumbel = stream.exponential_(exponential).log_().neg_()
        top = torch.logsumexp(s, dim=-1, keepdim=True) + (gumbel * chosen).sum(-1, keepdim=True)
        others = -torch.logaddexp(-top, -(s + gumbel))
        noise = torch.where(chosen, top, others) - s
        # A masked (-inf) item's utility is -inf whatever its noise: its draw is -inf (not the
        # NaN of -inf - -inf), so that scores + noise keeps it out.
        noise = noise.masked_fill(s == -math.inf, -math.inf)
        # In the compute dtype: for half scores the noise that makes an unlikely x the argmax
        # can exceed float16's range (|G| up to the score range), where it would be inf.
        return noise.movedim(-2, 0)

    def _perturb_argmax_log_prob(
        self, scores: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor] | None:
        if not self._keeps_solvers_of(OneHot) or graph_capture_active():
            return None  # a subclass's own argmax, or traced / transformed: the generic path
        if type(self)._perturb_log_prob is not OneHot._perturb_log_prob:
            return None
        # argmax(scores + G) is a draw of softmax(scores): one uniform per row decides it
        # (inverse CDF), with no logarithm and no argmax along the rows, and the log-softmax
        # that gives the cdf also gives the log-probability (BENCHMARKS.md, "reinforce's draws").
        rows = _distinct_rows(scores)  # the scores' samples share their rows
        work = sampling_dtype(scores.dtype)
        u = torch.rand(scores.shape[:-1], dtype=work, device=scores.device, generator=generator)
        n = scores.shape[-1]
        if n == 2:  # class 1 wins with probability sigmoid(d), d = s_1 - s_0
            d = _binary_margin(rows)
            one = u < torch.sigmoid(d.detach())  # d = +-inf (a masked class): certain
            x = torch.stack([~one, one], dim=-1).to(scores.dtype)
            # x_1 - x_0 = +-1: a where over the bools with two scalars costs 3x more.
            return x, F.logsigmoid((x[..., 1] - x[..., 0]).to(work) * d)
        log_p = log_softmax(rows.to(work))
        cdf = log_p.detach().exp().cumsum(-1)
        # The first item whose cdf exceeds v = u * total (< total for every u < 1, total > 0):
        # a masked item (probability 0) repeats its predecessor's cdf, so it is never first.
        v = u * cdf[..., -1]
        if n > _COMPARED_ROWS:
            index = _first_above(cdf, v)
            x = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
            x.scatter_(-1, index[..., None], 1.0)
            return x, _per_row(log_p, index, lambda rows, picks: rows.gather(-1, picks))
        below = (v[..., None] < cdf).to(scores.dtype)
        x = below.clone()
        x[..., 1:] -= below[..., :-1]  # 1 at the first item past v: cdf is nondecreasing
        # No draw picks a masked item, so their -inf log-probabilities may become 0 (on the
        # distinct rows) and the picks' log-probability is a product, with no 0 * -inf: along
        # short rows a product and a sum cost half of finding the index and gathering.
        finite = torch.where(log_p == -math.inf, torch.zeros((), dtype=work), log_p)
        return x, (x.to(work) * finite).sum(-1)

    def _perturb_argmax_relax(
        self,
        scores: Tensor,
        tau: float,
        generator: torch.Generator | None,
        regularizer: str = "entropy",
        **options: Any,
    ) -> Tensor | None:
        if options or regularizer != "entropy" or not self._keeps_solvers_of(OneHot):
            return None
        if graph_capture_active():  # traced or transformed: the generic composition (same noise)
            return None
        rng_state = _rng_state(generator, scores.device)  # before the draw, for a replay
        if scores.shape[-1] == 2:  # the binary closed form: one logistic draw per slot
            binary: Tensor = _BinaryPerturbArgmax.apply(scores, tau, generator, rng_state)
            return binary
        result: Tensor = apply_function(_PerturbArgmaxSoftmax, scores, tau, generator, rng_state)[0]
        return result

    def _conditional_mean_relax(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        tau: float,
        generator: torch.Generator | None,
        regularizer: str = "entropy",
        **options: Any,
    ) -> Tensor | None:
        if options or regularizer != "entropy" or not self._keeps_solvers_of(OneHot):
            return None
        if graph_capture_active():  # traced or transformed: the generic composition (same noise)
            return None
        if scores.shape[-1] == 2:  # the binary closed form: one truncated logistic draw each
            rng_state = _rng_state(generator, scores.device)
            binary: Tensor = _BinaryConditionalMean.apply(
                scores, x, n_draws, tau, generator, rng_state
            )
            return binary
        seed = draw_seed_tensor(generator, scores.device)
        result: Tensor = apply_function(_ConditionalMeanSoftmax, scores, x, n_draws, tau, seed)
        return result

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
