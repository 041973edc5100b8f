"""Exact k-subset marginals and log-partition: ``p(x) ∝ exp(<z, x>)`` over k-hot ``x``.

The marginals are ``m_i = x_i e_{k-1}(x_{-i}) / e_k(x)`` with ``x = exp(z)`` and ``e_j`` the
elementary symmetric polynomials. They are computed by a column form of the usual dynamic
programme: ``e_j(x_0..x_i) = sum_{l <= i} e_{j-1}(x_0..x_{l-1}) x_l``, so column j of the prefix
table is one ``cumsum`` of column j - 1 times x. The k - 1 columns of the prefix and of the
suffix table (the same recursion on the reversed items) take 2(k - 1) vectorised steps instead of
n sequential ones, and ``m_i`` pairs the prefix before i with the suffix after i.

Numerics (float64 throughout, whatever the input dtype):

* Shift invariance: z is shifted by ``t``, the midpoint of its k-th and (k+1)-th largest entries,
  before anything else; the marginals do not depend on the shift, and a shift taken from the
  data makes the result exactly invariant to adding a constant to the scores.
* Range: entries are clamped to ``[t - L, t + L]`` with ``L = 36 + log(2 n^2)``. An item more
  than L above t is in every subset but one of relative weight below ``n e^-L``, one more than L
  below t in none; clamping moves every marginal by at most ``2 n^2 e^-L = e^-36 ≈ 2e-16``
  (a swap argument: each subset without such an item maps to one with it, at weight ratio
  ``e^-L`` or less, at most n to one). The marginal of an item below the clamp is then scaled
  by ``exp(u_i + L)`` (it is proportional to ``exp(u_i)`` to first order), so far tails come out
  as their tiny values instead of about ``e^-L``.
* No scaling: every table entry is a sum of products of at most k factors ``x_l`` in
  ``[e^-L, e^L]``, so every nonzero entry, product and sum lies in ``[e^(-kL), C(2n, k-1) n
  e^(kL)]`` (Vandermonde's identity bounds the pairings). Where that range fits float64 with
  a margin (:func:`column_path_is_exact`: ``k L + log C(2n, k-1) + log n < 701.8`` and
  ``k L < 700.4``; k up to 13 for n = 200, 10 for n = 20, after the complement ``k -> n - k``
  when ``k > n / 2``) nothing overflows or underflows, and since every term is positive each
  entry carries only the rounding of its sums (a few n ulps, relative). Elsewhere a log-space
  programme over the items (exact, slower) is used.

The backward pass is hand-written: the Jacobian of the marginals is the covariance of x,
symmetric, so the vector-Jacobian product is the Jacobian-vector product, computed by carrying a
tangent through the same column recursion (two passes per column) on the forward pass's saved
tables. Rows are processed in chunks whose tables stay near 2 MB (in cache). Double backward
recomputes the same maths as plain differentiable torch code (:func:`_composed_marginals`),
which is also the path taken under torch.compile, vmap and torch.func.

Few subsets and rows (:func:`enumeration_applies`: ``C(n, k) <= 256``, at most 2^15 rows x
subsets): the marginals are the definition itself, ``softmax(u S^T) S`` with ``S`` the
``(C(n, k), n)`` 0/1 matrix of every subset, in float64: two matrix products and a softmax,
whose backward and double backward autograd derives. At these sizes the column programme's cost is its number of small passes, not its
arithmetic, and the definition needs far fewer (measured in BENCHMARKS.md, "Subset at few
subsets").

One-node fast paths for the Gumbel estimators (:func:`perturb_argmax_marginals`: perturb,
top-k and the marginals' tables from one ``topk``; :func:`conditional_mean_marginals`: the K
relaxations of gumbel-rao as one batch) use the same tables.

Reference: the recursion over counts as in Chen, Dempster & Liu, "Weighted finite population
sampling to maximize entropy", Biometrika 1994; k-subset marginals as relaxations as in Xie &
Ermon 2019 and Paulus et al. 2020.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pickgrad._softmax import softmax
from pickgrad._validation import graph_capture_active, value_checks_enabled
from pickgrad.noise import sample_gumbel
from pickgrad.structures._matrix_tree import unit_interval

__all__ = [
    "all_k_hot",
    "conditional_mean_marginals",
    "enumeration_applies",
    "fused_path_applies",
    "perturb_argmax_marginals",
    "subset_log_partition",
    "subset_marginals",
    "top_k_hot",
]

_BITS_KEPT = 36.0  # exp(-36) ~ 2.3e-16: the clamp and flush errors stay below float64 rounding
_LOG_TINY = math.log(torch.finfo(torch.float64).tiny)  # -708.4
_LOG_MAX = math.log(torch.finfo(torch.float64).max)  # 709.8
_CHUNK_ENTRIES = 1 << 18  # float64 table entries per chunk of rows (2 MB)


def _clamp_width(n: int) -> float:
    """``L = 36 + log(2 n^2)``: the clamp half-width, in units of ``z``."""
    return _BITS_KEPT + math.log(2.0 * n * n)


def _log_comb(n: int, j: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)


def column_path_is_exact(n: int, k: int) -> bool:
    """Whether the unscaled column programme is exact for k of n (see the module docstring):
    ``k L + log C(2n, k - 1) + log n`` stays 8 below ``log(float64 max)``, so that no table
    entry, product or sum overflows, and ``k L`` below ``-log(float64 tiny)``, so that none
    underflows (after the complement ``k -> n - k`` when ``k > n / 2``)."""
    k = min(k, n - k)
    if k <= 1:
        return True
    width = _clamp_width(n)
    largest = k * width + _log_comb(2 * n, k - 1) + math.log(n)
    return largest < _LOG_MAX - 8.0 and k * width < -_LOG_TINY - 8.0


def _normalised_columns_are_exact(n: int, k: int) -> bool:
    """Whether the normalised column recursion of :func:`subset_log_partition` keeps 36 bits
    (each column divided by its total, entries below ``2.2e-308`` of it flushed)."""
    k = min(k, n - k)
    if k <= 1:
        return True
    bound = (k + 1) * _clamp_width(n) + 2 * _log_comb(n, k // 2) + math.log(k * n)
    return bound + _BITS_KEPT < -_LOG_TINY - 12.0


#: Most subsets ``C(n, k)``, and most rows x subsets, for which the marginals are computed
#: from their definition (:func:`_enumerated_marginals`). Measured side by side, forward and
#: backward (BENCHMARKS.md, "Subset at few subsets"): at batch 128 the definition is 1.19x to
#: 1.45x faster than the column programme up to 252 subsets; without the bound on rows it
#: was 0.45x at batch 4096 (210 subsets), and a first version 2.4x slower at 1140 subsets
#: (128, 20, 3): there the softmax over the subsets costs more than the programme's passes.
_ENUMERATION_LIMIT = 256
_ENUMERATION_ENTRIES = 2**15


def enumeration_applies(n: int, k: int, rows: int) -> bool:
    """Whether :func:`subset_marginals` computes k of n for ``rows`` rows from the definition
    (``2 <= k < n``, ``C(n, k) <= _ENUMERATION_LIMIT``, ``rows C(n, k) <=
    _ENUMERATION_ENTRIES``)."""
    if not 2 <= k < n:
        return False
    count = math.comb(n, k)
    return count <= _ENUMERATION_LIMIT and rows * count <= _ENUMERATION_ENTRIES


def all_k_hot(
    n: int, k: int, *, dtype: torch.dtype, device: torch.device | str | None = None
) -> Tensor:
    """``(C(n, k), n)``: row r is the 0/1 vector of the r-th k-subset, in lexicographic order
    of the chosen indices (what :meth:`Subset.enumerate` returns)."""
    chosen = torch.tensor(list(itertools.combinations(range(n), k)), device=device)
    rows = torch.zeros(chosen.shape[0], n, dtype=dtype, device=device)
    return rows.scatter_(1, chosen, 1.0)


_cached_k_hot = functools.lru_cache(maxsize=64)(all_k_hot)


def _enumerated_marginals(scores: Tensor, k: int, tau: float) -> Tensor:
    """``P(i in S)`` by summing ``p(S) = softmax_S(sum_{i in S} u_i)`` over every k-subset
    (float64; see :func:`enumeration_applies`).

    ``u = (scores - t) / tau`` with t from :func:`_threshold`, clamped above at the clamp width
    L as in the column programme (an item that far above t is in every subset that counts; the
    module docstring bounds the change by ``e^-36``), so that the subsets that matter have
    logits of a few L at most and their rounding stays that of float64. Below, nothing is
    clamped: a far tail's logit rounds to its own (tiny) value. Masked (``-inf``) entries
    become ``-1e290``: a subset holding any has probability exactly 0 (and the product with the
    0/1 matrix stays finite: no ``0 * -inf``), and they get no gradient. Differentiable to any
    order; plain torch, so torch.compile, vmap and torch.func run through it."""
    n = scores.shape[-1]
    make = all_k_hot if graph_capture_active() else _cached_k_hot
    subsets = make(n, k, dtype=torch.float64, device=scores.device)
    u = _shifted_scaled(scores.to(torch.float64), k, tau, None)
    weights = softmax(u.clamp(-1e290, _clamp_width(n)) @ subsets.T)
    # A sum of weights that sum to 1 may land an ulp above it: rounded into [0, 1] in value.
    return unit_interval(weights @ subsets).to(scores.dtype)


def _threshold(z: Tensor, k: int, top: Tensor | None = None) -> Tensor:
    """Midpoint of the k-th and (k+1)-th largest entries of ``z`` (1 <= k < n); ``(..., 1)``.
    ``top``: the k + 1 largest entries, when the caller has them.

    Masked (``-inf``) entries: with at most k others, the k-th largest minus twice the clamp
    width (the allowed items sit above the clamp: in every subset, as they must be); with none
    allowed, 0. Either way finite, so ``z - t`` is ``-inf`` exactly on the masked entries."""
    if top is None:
        top = torch.topk(z.detach(), k + 1, dim=-1).values
    kth, next_ = top[..., k - 1 : k], top[..., k : k + 1]
    middle = (kth + next_) / 2
    below = kth - 2 * _clamp_width(z.shape[-1])
    return torch.where(next_ > -math.inf, middle, torch.where(kth > -math.inf, below, 0.0))


def _complement_scores(s: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """``(c, masked)``: the scores of the complement problem (``-s``), each masked (``-inf``)
    entry of ``s`` replaced by a finite score so high (twice the clamp width above every other)
    that it is in every complement subset that counts, i.e. in no subset."""
    masked = s == -math.inf
    c = -s
    allowed_c = c.masked_fill(masked, -math.inf)
    high = allowed_c.amax(-1, keepdim=True).detach()
    high = torch.where(high > -math.inf, high, 0.0)
    fill = high + 2 * _clamp_width(s.shape[-1]) * tau + high.abs() * 2.0**-40
    return torch.where(masked, fill, c), masked


# --- the column programme (unscaled) ----------------------------------------------------------
#
# Tables are ``(2, k, B, n + 1)``: ``tables[d, j, b, i] = e_j(the first i items of row b in
# order d)`` (d = 0: items in order, d = 1: reversed), so ``tables[d, j, :, :n]`` is the
# exclusive prefix before each item and ``tables[d, j, :, 1:]`` the inclusive one. Column j is
# one ``cumsum`` of ``x`` times the exclusive column j - 1.


def _shifted_scaled(s: Tensor, k: int, tau: float, top: Tensor | None) -> Tensor:
    """``u = (s - t) / tau`` (float64), t from :func:`_threshold` (or from ``top``, the k + 1
    largest entries of ``s`` when the caller has them)."""
    return (s - _threshold(s, k, top)) / tau


def _tables_forward(u: Tensor, k: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Marginals of ``u`` ``(B, n)`` float64 (2 <= k <= n / 2, the unscaled bound holds),
    eager and without autograd; returns ``(m, saved)`` for :func:`_tables_tangent`."""
    n = u.shape[-1]
    width = _clamp_width(n)
    x = torch.exp(u.clamp(-width, width))
    xs = torch.stack([x, x.flip(-1)])
    tables = torch.empty((2, k, *x.shape[:-1], n + 1), dtype=u.dtype, device=u.device)
    tables[:, 0].fill_(1.0)
    tables[:, 1:, :, 0] = 0.0
    torch.cumsum(xs, -1, out=tables[:, 1, :, 1:])
    work = torch.empty_like(xs)
    for j in range(2, k):
        torch.mul(xs, tables[:, j - 1, :, :n], out=work)
        torch.cumsum(work, -1, out=tables[:, j, :, 1:])
    # suffix[b][:, i] = e_b(items after i): the reversed exclusive prefix, flipped back.
    suffix = tables[1].flip(-1)[..., 1:]
    prefix = tables[0, :, :, :n]
    acc = suffix[k - 1].clone()  # a = 0: prefix[0] = 1
    for a in range(1, k):
        acc.addcmul_(prefix[a], suffix[k - 1 - a])
    w = acc * x
    total = w.sum(-1, keepdim=True)
    m = (w * (k / total)).clamp_(max=1.0)
    # Below the clamp a marginal is proportional to exp(u_i) (to relative order m_i itself):
    # restore that factor, so far tails come out as their tiny values (or 0), not e^-L.
    tail = torch.exp((u + width).clamp_(max=0.0))
    result = m * tail
    return result, (u, x, xs, tables, suffix, acc, w, total, m, tail, result)


def _tables_tangent(g: Tensor, k: int, saved: tuple[Tensor, ...]) -> Tensor:
    """The vector-Jacobian product of :func:`_tables_forward` with ``g``, d/du, eager.

    The Jacobian of the marginals is the covariance of x, symmetric, so this is the directional
    derivative along ``g * tail``, carried through the same recursion (``d log x = h``)."""
    u, x, xs, tables, suffix, _, w, total, m, tail, result = saved
    n = u.shape[-1]
    width = _clamp_width(n)
    h = g * tail
    hs = torch.stack([h, h.flip(-1)])
    dtables = torch.empty_like(tables)
    dtables[:, :, :, 0] = 0.0
    work = torch.mul(hs, xs)
    torch.cumsum(work, -1, out=dtables[:, 1, :, 1:])
    for j in range(2, k):
        torch.addcmul(dtables[:, j - 1, :, :n], hs, tables[:, j - 1, :, :n], out=work)
        work.mul_(xs)
        torch.cumsum(work, -1, out=dtables[:, j, :, 1:])
    dsuffix = dtables[1, 1:].flip(-1)[..., 1:]  # dsuffix[b - 1]: d suffix[b], b >= 1
    prefix = tables[0, :, :, :n]
    dprefix = dtables[0, :, :, :n]
    dacc = dsuffix[k - 2].clone()  # a = 0: prefix[0] = 1, dprefix[0] = 0
    for a in range(1, k):
        dacc.addcmul_(dprefix[a], suffix[k - 1 - a])
        if a < k - 1:
            dacc.addcmul_(prefix[a], dsuffix[k - 2 - a])
    dw = dacc.mul_(x).addcmul_(w, h)
    dm = (dw * k).sub_(m * dw.sum(-1, keepdim=True)).div_(total)
    # clamp's gradient passes on [-L, L]; the tail factor's where u + L <= 0.
    inside = (u >= -width) & (u <= width)
    return torch.where(inside, dm, 0.0).addcmul_(g, torch.where(u <= -width, result, 0.0))


def _composed_marginals(s: Tensor, k: int, tau: float) -> Tensor:
    """:func:`_tables_forward` (from float64 scores) as plain differentiable torch code.

    Out of place, no ``out=``, no data-dependent branch: used under torch.compile, vmap and
    torch.func, and recomputed under autograd for double backward."""
    n = s.shape[-1]
    width = _clamp_width(n)
    u = _shifted_scaled(s, k, tau, None)
    x = torch.exp(u.clamp(-width, width))
    xs = torch.stack([x, x.flip(-1)])
    column = torch.ones_like(xs)
    columns = [column]
    for _ in range(1, k):
        column = F.pad(torch.cumsum(column * xs, -1)[..., :-1], (1, 0))
        columns.append(column)
    acc = sum(columns[a][0] * columns[k - 1 - a][1].flip(-1) for a in range(k))
    w = x * acc
    m = (k * w / w.sum(-1, keepdim=True)).clamp(max=1.0)
    return m * torch.exp((u + width).clamp(max=0.0))


def top_k_hot(scores: Tensor, top: Tensor, k: int) -> Tensor:
    """The top-k of ``scores`` ``(..., n)`` as 0/1 in its dtype, ties to the lowest index.

    ``top``: ``(..., >= k)``, the largest entries in descending order (``torch.topk`` values).
    Everything above the k-th largest value is in; of the entries equal to it, the lowest
    indices fill the remaining places (torch.topk's own tie order is unspecified)."""
    kth = top[..., k - 1 : k]
    if scores.device.type == "cpu" and value_checks_enabled():
        # Without a tie at the k-th value (almost always), the top-k are the entries >= it:
        # one comparison instead of the tie-breaking cumulative sum (4x faster at n = 10). One
        # check decides for the whole batch; it reads a value, so only on the CPU (no sync)
        # and while value checks run (with them off, nothing reads a tensor value back).
        at_least = scores >= kth
        if not bool((at_least.sum(-1) != k).any()):
            return at_least.to(scores.dtype)
    above = scores > kth
    tied = scores == kth
    places = k - above.sum(-1, keepdim=True)
    return (above | (tied & (tied.cumsum(-1) <= places))).to(scores.dtype)


def fused_path_applies(scores: Tensor, k: int) -> bool:
    """Whether the one-node fast paths below serve these scores (eager, float32 or float64,
    2 <= k <= n / 2 and :func:`column_path_is_exact`, at least one row). They serve st-gumbel
    and gumbel-rao at every size: at few subsets too they were faster than the composition
    through :func:`_enumerated_marginals` (which ran at 0.59x to 0.94x of their speed at
    batch 128)."""
    n = scores.shape[-1]
    return (
        2 <= k
        and 2 * k <= n
        and scores.dtype in (torch.float32, torch.float64)
        and scores.numel() > 0
        and column_path_is_exact(n, k)
        and not graph_capture_active()
    )


def _chunk_rows(k: int, n: int) -> int:
    return max(1, _CHUNK_ENTRIES // (2 * k * (n + 1)))


def _chunked_forward(ctx: Any, u: Tensor, k: int) -> Tensor:
    """:func:`_tables_forward` over chunks of rows whose tables stay near ``_CHUNK_ENTRIES``
    entries (2 MB), so each column pass runs in cache; the tables are kept on ``ctx``."""
    rows = _chunk_rows(k, u.shape[-1])
    if rows >= u.shape[0]:
        m, saved = _tables_forward(u, k)
        ctx.saved = [saved]
        return m
    parts = [_tables_forward(chunk, k) for chunk in u.split(rows)]
    ctx.saved = [saved for _, saved in parts]
    return torch.cat([m for m, _ in parts])


def _chunked_tangent(ctx: Any, g: Tensor, k: int) -> Tensor:
    rows = _chunk_rows(k, g.shape[-1])
    if rows >= g.shape[0]:
        return _tables_tangent(g, k, ctx.saved[0])
    chunks = g.split(rows)
    parts = [_tables_tangent(c, k, saved) for c, saved in zip(chunks, ctx.saved, strict=True)]
    return torch.cat(parts)


def _backward(ctx: Any, grad: Tensor, scores: Tensor, noise: Tensor | None) -> Tensor:
    """d/d scores of ``<grad, marginals(scores + noise)>`` (averaged over a leading draw
    dimension of ``noise`` when ``grad`` has fewer dimensions), from the saved tables; under
    create_graph, by autograd through :func:`_composed_marginals` (double backward)."""
    k, tau, n = ctx.k, ctx.tau, scores.shape[-1]
    perturbed_shape = scores.shape if noise is None else noise.shape
    draws = perturbed_shape[0] if len(perturbed_shape) > grad.dim() else 0
    if torch.is_grad_enabled():
        with torch.enable_grad():
            perturbed = scores if noise is None else scores + noise
            m = _composed_marginals(perturbed.to(torch.float64), k, tau).to(scores.dtype)
            if draws:
                m = m.mean(0)
            (derivative,) = torch.autograd.grad(m, scores, grad, create_graph=True)
        return derivative
    g = grad.to(torch.float64).reshape(-1, n)
    if draws:
        g = g.repeat(draws, 1)
    d = _chunked_tangent(ctx, g, k)
    if draws:
        d = d.view(draws, -1, n).mean(0)
    result: Tensor = (d / tau).to(scores.dtype).reshape(scores.shape)
    return result


class _SubsetMarginals(torch.autograd.Function):
    """Marginals of ``(B, n)`` scores (float32 or float64; float64 inside) where
    :func:`fused_path_applies`; hand-written backward (double backward by autograd through
    :func:`_composed_marginals`).

    Eager only (graph capture and torch.func take :func:`_composed_marginals`), so the forward
    keeps its tables on ``ctx`` (the ``forward(ctx, ...)`` form, not ``setup_context``)."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, k: int, tau: float) -> Tensor:
        u = _shifted_scaled(scores.to(torch.float64), k, tau, None)
        ctx.save_for_backward(scores)
        ctx.k, ctx.tau = k, tau
        return _chunked_forward(ctx, u, k).to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (scores,) = ctx.saved_tensors
        return _backward(ctx, grad, scores, None), None, None


class _PerturbArgmaxMarginals(torch.autograd.Function):
    """``argmax(scores + G)`` with the gradient of ``subset_marginals(scores + G, k, tau)``,
    in one pass: one ``topk`` gives both the argmax and the marginals' shift. ``G`` is drawn
    as ``sample_gumbel(scores.shape, ...)`` draws it. Eager only, as :class:`_SubsetMarginals`."""

    @staticmethod
    def forward(
        ctx: Any, scores: Tensor, k: int, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        n = scores.shape[-1]
        noise = sample_gumbel(
            scores.shape, dtype=scores.dtype, device=scores.device, generator=generator
        )
        perturbed = scores + noise
        top = torch.topk(perturbed, k + 1, dim=-1).values
        hard = top_k_hot(perturbed, top, k)
        flat = perturbed.reshape(-1, n).to(torch.float64)
        u = _shifted_scaled(flat, k, tau, top.reshape(-1, k + 1).to(torch.float64))
        ctx.save_for_backward(scores)
        ctx.k, ctx.tau, ctx.noise = k, tau, noise
        _chunked_forward(ctx, u, k)
        return hard

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (scores,) = ctx.saved_tensors
        return _backward(ctx, grad, scores, ctx.noise), None, None, None


class _ConditionalMeanMarginals(torch.autograd.Function):
    """``x`` with the gradient ``(1/K) sum_k d subset_marginals(scores + noise[k]) / d scores``:
    the K relaxations of gumbel-rao as one batch of tables, one node. Eager only."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, noise: Tensor, x: Tensor, k: int, tau: float) -> Tensor:
        n = scores.shape[-1]
        flat = (scores + noise).reshape(-1, n).to(torch.float64)
        ctx.save_for_backward(scores)
        ctx.k, ctx.tau, ctx.noise = k, tau, noise
        _chunked_forward(ctx, _shifted_scaled(flat, k, tau, None), k)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        (scores,) = ctx.saved_tensors
        return _backward(ctx, grad, scores, ctx.noise), None, None, None, None


def perturb_argmax_marginals(
    scores: Tensor, k: int, tau: float, generator: torch.Generator | None
) -> Tensor:
    """:class:`_PerturbArgmaxMarginals` (where :func:`fused_path_applies`)."""
    result: Tensor = _PerturbArgmaxMarginals.apply(scores, k, tau, generator)
    return result


def conditional_mean_marginals(
    scores: Tensor, noise: Tensor, x: Tensor, k: int, tau: float
) -> Tensor:
    """:class:`_ConditionalMeanMarginals` (where :func:`fused_path_applies`); ``noise``
    ``(K, *scores.shape)`` without gradient."""
    result: Tensor = _ConditionalMeanMarginals.apply(scores, noise, x, k, tau)
    return result


# --- the log-space programme over items (any k, slower) ---------------------------------------


def _impossible(dtype: torch.dtype) -> float:
    # log(0) as a finite number: logaddexp's gradient stays finite where both terms are impossible.
    return torch.finfo(dtype).min / 8


def _log_add_exp(a: Tensor, b: Tensor) -> Tensor:
    """``log(exp(a) + exp(b))``, twice differentiable (``torch.logaddexp``'s second derivative is
    NaN once ``|a - b|`` leaves the exponent range)."""
    top = torch.maximum(a, b).detach()
    return top + torch.log(torch.exp(a - top) + torch.exp(b - top))


def _prefix_log_esp(z: Tensor, k: int) -> Tensor:
    """``table[..., i, j] = log e_j(exp(z[..., :i]))``, i = 0..n, j = 0..k; ``(..., n+1, k+1)``."""
    row = torch.full((*z.shape[:-1], k + 1), _impossible(z.dtype), dtype=z.dtype, device=z.device)
    row[..., 0] = 0.0
    rows = [row]
    for i in range(z.shape[-1]):
        tail = _log_add_exp(row[..., 1:], row[..., :-1] + z[..., i : i + 1])
        row = torch.cat([row[..., :1], tail], dim=-1)
        rows.append(row)
    return torch.stack(rows, dim=-2)


def _log_space_marginals(z: Tensor, k: int) -> Tensor:
    n = z.shape[-1]
    both = _prefix_log_esp(torch.stack([z, z.flip(-1)]), k)
    before, after_reversed = both[0], both[1]
    log_partition = before[..., n, k : k + 1]
    before_i = before[..., :n, :k]
    after_i = after_reversed[..., :n, :k].flip(-2).flip(-1)
    log_rest = torch.logsumexp(before_i + after_i, dim=-1)
    return torch.exp(z + log_rest - log_partition).clamp(max=1.0)


# --- public entry points ----------------------------------------------------------------------


def subset_marginals(scores: Tensor, k: int, tau: float = 1.0) -> Tensor:
    """Exact marginals ``P(x_i = 1)`` of ``p(x) ∝ exp(<scores, x> / tau)`` over k-hot ``x``.

    ``m_i = exp(z_i) e_{k-1}(exp(z_{-i})) / e_k(exp(z))`` with ``z = scores / tau``: the gradient
    of ``log e_k(exp(z))``. Computed in float64 whatever the input dtype (see the module
    docstring for the algorithm and its error bounds), returned in the dtype of ``scores``.
    Exactly invariant to adding a constant to every score of a row; in [0, 1]; each row sums to
    k within a few units of the output dtype's rounding. Differentiable twice.

    Args:
        scores: ``(..., n)`` floating tensor; any number of leading dims, possibly empty.
        k: subset size, ``1 <= k <= n`` (not checked here).
        tau: temperature > 0.

    Returns:
        ``(..., n)`` marginals, dtype of ``scores``.

    Example:
        >>> subset_marginals(torch.zeros(4), 2)
        tensor([0.5000, 0.5000, 0.5000, 0.5000])
        >>> subset_marginals(torch.full((5,), 1e4), 2, tau=0.01)
        tensor([0.4000, 0.4000, 0.4000, 0.4000, 0.4000])
    """
    n = scores.shape[-1]
    if scores.numel() > 0 and enumeration_applies(n, k, scores.numel() // n):
        return _enumerated_marginals(scores, k, tau)
    if fused_path_applies(scores, k):  # one autograd node, float64 inside
        if scores.dim() == 2:
            result: Tensor = _SubsetMarginals.apply(scores, k, tau)
            return result
        m: Tensor = _SubsetMarginals.apply(scores.reshape(-1, n), k, tau)
        return m.reshape(scores.shape)
    if 2 <= k and 2 * k <= n and column_path_is_exact(n, k) and scores.numel() > 0:
        return _composed_marginals(scores.to(torch.float64), k, tau).to(scores.dtype)
    s = scores.to(torch.float64)
    if k >= n:  # the one subset; zero gradient (no -inf * 0 with masked entries)
        return (1 + 0 * torch.where(s == -math.inf, 0.0, s)).to(scores.dtype)
    if k == 1:
        # Shifted before the division: s / tau of scores near 1e3 at tau 0.01 rounds by 1e-11.
        top = s.detach().amax(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).min)
        return softmax((s - top) / tau).to(scores.dtype)
    if 2 * k > n:  # the complement: the n - k items left out, with negated scores
        c, masked = _complement_scores(s, tau)
        m = torch.where(masked, 0.0, 1 - subset_marginals(c, n - k, tau))
        return m.to(scores.dtype)
    if s.numel() == 0:
        return (s * 0).to(scores.dtype)
    return _log_space_marginals(_shifted_scaled(s, k, tau, None), k).to(scores.dtype)


def subset_log_partition(scores: Tensor, k: int, tau: float = 1.0) -> Tensor:
    """``log e_k(exp(scores / tau)) = log sum_{|S| = k} exp(sum_{i in S} scores_i / tau)``.

    Float64 throughout; the value is ``k t / tau`` plus the log-partition of the shifted scores
    (t as in :func:`subset_marginals`), so adding c to every score adds exactly ``k c / tau``.
    Its gradient is ``subset_marginals / tau`` (autograd). Returned in float64; the caller casts.

    Args:
        scores: ``(..., n)``; k: ``1 <= k <= n``; tau: > 0.

    Returns:
        ``(...)`` float64.

    Example:
        >>> round(float(subset_log_partition(torch.zeros(4), 2).exp()), 12)  # C(4, 2) subsets
        6.0
    """
    n = scores.shape[-1]
    s = scores.to(torch.float64)
    if k >= n:
        return s.sum(-1) / tau
    if k == 1:
        return torch.logsumexp(s / tau, -1)
    if 2 * k > n:
        c, masked = _complement_scores(s, tau)
        # sum over every item of s, the masked ones at the score -c they have in the complement
        total = torch.where(masked, -c, s).sum(-1) / tau
        value = total + subset_log_partition(c, n - k, tau)
        # Fewer than k allowed items: no subset (the complement's excess would hide it).
        short = masked.sum(-1) > n - k
        return torch.where(short, -math.inf, value)
    t = _threshold(s, k)
    u = (s - t) / tau
    shift = k * t[..., 0] / tau
    if not _normalised_columns_are_exact(n, k):
        return shift + _log_space_log_partition(u, k)
    width = _clamp_width(n)
    # Items above t + L are in every subset that counts: their excess adds to the log-partition.
    excess = (u - width).clamp_min(0).sum(-1)
    x = torch.exp(u.clamp(-width, width))
    column = torch.ones_like(x)
    log_e = torch.zeros_like(x[..., 0])
    for _ in range(1, k):
        running = torch.cumsum(column * x, -1)
        total = running[..., -1:]
        column = F.pad(running[..., :-1] / total, (1, 0))
        log_e = log_e + total[..., 0].log()
    return shift + excess + log_e + torch.log((column * x).sum(-1))


def _log_space_log_partition(z: Tensor, k: int) -> Tensor:
    row = torch.full((*z.shape[:-1], k + 1), _impossible(z.dtype), dtype=z.dtype, device=z.device)
    row[..., 0] = 0.0
    for i in range(z.shape[-1]):
        tail = _log_add_exp(row[..., 1:], row[..., :-1] + z[..., i : i + 1])
        row = torch.cat([row[..., :1], tail], dim=-1)
    return row[..., k]
