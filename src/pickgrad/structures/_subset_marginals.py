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
* Each column is divided by its total (tracked in log space), so nothing overflows. A column
  entry below ``2.2e-308`` of its total is flushed to zero; a term so lost is below
  ``C(n, a) C(n, b) e^((k+1) L)`` times that, relative to ``e_k`` (overlapping subsets bound).
  The column form is used where that bound leaves 36 bits (``(k+1) L + 2 log C(n, ceil((k-1)/2))
  + log(kn) < 660``: k up to about 12 for n = 200, after the complement ``k -> n - k`` when
  ``k > n / 2``); elsewhere a log-space programme over the items (exact, slower) is used.

The backward pass is hand-written: the Jacobian of the marginals is the covariance of x,
symmetric, so the vector-Jacobian product is the Jacobian-vector product, computed by carrying a
tangent through the same column recursion (two cumsums per column). Double backward recomputes
the same code under autograd.

Reference: the recursion over counts as in Chen, Dempster & Liu, "Weighted finite population
sampling to maximize entropy", Biometrika 1994; k-subset marginals as relaxations as in Xie &
Ermon 2019 and Paulus et al. 2020.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["subset_log_partition", "subset_marginals"]

_BITS_KEPT = 36.0  # exp(-36) ~ 2.3e-16: the clamp and flush errors stay below float64 rounding
_LOG_TINY = math.log(torch.finfo(torch.float64).tiny)  # -708.4
_CHUNK_ENTRIES = 1 << 18  # float64 table entries per chunk of rows (2 MB)


def _clamp_width(n: int) -> float:
    """``L = 36 + log(2 n^2)``: the clamp half-width, in units of ``z``."""
    return _BITS_KEPT + math.log(2.0 * n * n)


def _log_comb(n: int, j: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)


def column_path_is_exact(n: int, k: int) -> bool:
    """Whether the column programme keeps 36 bits for k of n (see the module docstring)."""
    k = min(k, n - k)
    if k <= 1:
        return True
    bound = (k + 1) * _clamp_width(n) + 2 * _log_comb(n, k // 2) + math.log(k * n)
    return bound + _BITS_KEPT < -_LOG_TINY - 12.0


def _threshold(z: Tensor, k: int) -> Tensor:
    """Midpoint of the k-th and (k+1)-th largest entries of ``z`` (1 <= k < n); ``(..., 1)``.

    Masked (``-inf``) entries: with at most k others, the k-th largest minus twice the clamp
    width (the allowed items sit above the clamp: in every subset, as they must be); with none
    allowed, 0. Either way finite, so ``z - t`` is ``-inf`` exactly on the masked entries."""
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


# --- the column programme ---------------------------------------------------------------------


def _columns(x: Tensor, k: int, rev: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Normalised exclusive prefix columns, forward and reversed order.

    Returns ``xs`` ``(2, B, n)`` (x and x reversed), ``columns[j]`` ``(2, B, n)`` for j < k with
    ``columns[j][d, :, i] = e_j(items before i in order d) / e_j(all)`` (``columns[0] = 1``), and
    ``totals[j - 1] = e_j(all) / e_{j-1}(all)`` as ``(2, B, 1)``.
    """
    xs = torch.stack([x, x.index_select(-1, rev)])
    columns = [torch.ones_like(xs)]
    totals = []
    for _ in range(1, k):
        running = torch.cumsum(columns[-1] * xs, -1)
        total = running[..., -1:]
        columns.append(F.pad(running[..., :-1] / total, (1, 0)))
        totals.append(total)
    return xs, columns, totals


def _pairing(k: int, device: torch.device) -> Tensor:
    return torch.arange(k - 1, -1, -1, device=device)


def _combine(
    x: Tensor, columns: list[Tensor], totals: list[Tensor], rev: Tensor, k: int
) -> tuple[Tensor, ...]:
    """Marginals from the tables; returns ``(m, w, total_w, pre, suf, gamma)``."""
    log_e = torch.cumsum(
        torch.stack([torch.zeros_like(totals[0][0])] + [t[0].log() for t in totals]), 0
    )  # (k, B, 1): log e_j(all) - log e_0, j < k
    pairing = _pairing(k, x.device)
    # gamma_a = e_a e_{k-1-a} / e_{k-1}: the scale of prefix column a times suffix column k-1-a.
    gamma = torch.exp(log_e + log_e.index_select(0, pairing) - log_e[-1:])
    pre = torch.stack([c[0] for c in columns])  # (k, B, n)
    suf = torch.stack([c[1] for c in columns]).index_select(-1, rev).index_select(0, pairing)
    w = x * (gamma * pre * suf).sum(0)
    total_w = w.sum(-1, keepdim=True)
    m = (k * w / total_w).clamp(max=1.0)
    return m, w, total_w, pre, suf, gamma


def _tangent(
    g: Tensor,
    x: Tensor,
    xs: Tensor,
    columns: list[Tensor],
    totals: list[Tensor],
    rev: Tensor,
    k: int,
    m: Tensor,
    w: Tensor,
    total_w: Tensor,
    pre: Tensor,
    suf: Tensor,
    gamma: Tensor,
) -> Tensor:
    """The directional derivative of the marginals along ``g`` (a change of ``log x``)."""
    gs = torch.stack([g, g.index_select(-1, rev)])
    dcolumns = [torch.zeros_like(xs)]
    dlog = [torch.zeros_like(totals[0][0])]
    for j in range(1, k):
        running = torch.cumsum((dcolumns[-1] + columns[j - 1] * gs) * xs, -1)
        rate = running[..., -1:] / totals[j - 1]
        dcolumns.append(F.pad(running[..., :-1] / totals[j - 1], (1, 0)) - columns[j] * rate)
        dlog.append(rate[0])
    dlog_e = torch.cumsum(torch.stack(dlog), 0)
    pairing = _pairing(k, x.device)
    dgamma = gamma * (dlog_e + dlog_e.index_select(0, pairing) - dlog_e[-1:])
    dpre = torch.stack([c[0] for c in dcolumns])
    dsuf = torch.stack([c[1] for c in dcolumns]).index_select(-1, rev).index_select(0, pairing)
    da = (dgamma * pre * suf + gamma * (dpre * suf + pre * dsuf)).sum(0)
    dw = w * g + x * da
    return (k * dw - m * dw.sum(-1, keepdim=True)) / total_w


def _fast_forward(u: Tensor, k: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`_columns` and :func:`_combine` without autograd, in preallocated tables.

    ``tables[d, j]`` is exclusive column j in order d (``tables[d, j, :, 0]`` is the empty
    prefix); ``tables[1]`` is contiguous, so reversing it is a fast ``flip`` (a flip of a
    strided view is tens of times slower).
    """
    batch, n = u.shape
    x = torch.exp(u)
    xs = torch.stack([x, x.flip(-1)])
    tables = torch.empty((2, k, batch, n), dtype=u.dtype, device=u.device)
    tables[:, 0].fill_(1.0)
    tables[:, 1:, :, 0] = 0.0
    totals = torch.ones((k, 2, batch, 1), dtype=u.dtype, device=u.device)
    work = torch.empty_like(xs)
    for j in range(1, k):
        torch.mul(tables[:, j - 1], xs, out=work)
        torch.cumsum(work, -1, out=work)
        totals[j] = work[..., -1:]
        torch.div(work[..., :-1], totals[j], out=tables[:, j, :, 1:])
    log_e = totals[:, 0].log().cumsum(0)  # (k, B, 1): log e_j(all), j < k
    pairing = _pairing(k, u.device)
    gamma = torch.exp(log_e + log_e.index_select(0, pairing) - log_e[-1:])
    pre = tables[0]
    suf = tables[1].flip(-1)  # suf[b][:, i] = e_b(items after i) / e_b(all)
    scaled_pre = pre * gamma
    acc = scaled_pre[0] * suf[k - 1]
    for a in range(1, k):
        acc.addcmul_(scaled_pre[a], suf[k - 1 - a])
    w = acc.mul_(x)
    total_w = w.sum(-1, keepdim=True)
    m = (w * (k / total_w)).clamp_(max=1.0)
    return m, (x, xs, tables, totals, pre, suf, scaled_pre, gamma, w, total_w, m)


def _fast_tangent(g: Tensor, k: int, saved: tuple[Tensor, ...]) -> Tensor:
    """:func:`_tangent` without autograd, on the tables of :func:`_fast_forward`."""
    x, xs, tables, totals, pre, suf, scaled_pre, gamma, w, total_w, m = saved
    gs = torch.stack([g, g.flip(-1)])
    dtables = torch.empty_like(tables)
    dtables[:, 0].zero_()
    dtables[:, 1:, :, 0] = 0.0
    rates = torch.zeros_like(totals)
    work = torch.empty_like(xs)
    for j in range(1, k):
        torch.mul(tables[:, j - 1], gs, out=work)
        work.add_(dtables[:, j - 1]).mul_(xs)
        torch.cumsum(work, -1, out=work)
        torch.div(work[..., -1:], totals[j], out=rates[j])
        shifted = dtables[:, j, :, 1:]
        torch.div(work[..., :-1], totals[j], out=shifted)
        shifted.addcmul_(tables[:, j, :, 1:], rates[j], value=-1.0)
    dlog_e = rates[:, 0].cumsum(0)
    pairing = _pairing(k, x.device)
    dgamma = gamma * (dlog_e + dlog_e.index_select(0, pairing) - dlog_e[-1:])
    dpre = dtables[0]
    dsuf = dtables[1].flip(-1)
    first = torch.addcmul(pre * dgamma, gamma, dpre)  # d(gamma pre)
    acc = first[0] * suf[k - 1]
    acc.addcmul_(scaled_pre[0], dsuf[k - 1])
    for a in range(1, k):
        acc.addcmul_(first[a], suf[k - 1 - a]).addcmul_(scaled_pre[a], dsuf[k - 1 - a])
    dw = acc.mul_(x).addcmul_(w, g)
    return (dw * k - m * dw.sum(-1, keepdim=True)) / total_w


class _ColumnMarginals(torch.autograd.Function):
    """Marginals of clamped ``u`` ``(B, n)`` float64, 2 <= k <= n / 2; backward = covariance."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, k: int) -> Tensor:
        # Rows in chunks whose tables stay near 2 MB, so each column pass runs in cache.
        rows = max(1, _CHUNK_ENTRIES // (2 * k * u.shape[-1]))
        parts = [_fast_forward(chunk, k) for chunk in u.split(rows)]
        ctx.save_for_backward(u)
        ctx.k = k
        ctx.rows = rows
        ctx.saved = [saved for _, saved in parts]
        return torch.cat([m for m, _ in parts]) if len(parts) > 1 else parts[0][0].clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (u,) = ctx.saved_tensors
        k = ctx.k
        if not torch.is_grad_enabled():
            chunks = grad.contiguous().split(ctx.rows)
            parts = [_fast_tangent(g, k, saved) for g, saved in zip(chunks, ctx.saved, strict=True)]
            return (torch.cat(parts) if len(parts) > 1 else parts[0]), None
        # create_graph: the same maths in plain differentiable ops, recomputed from u.
        rev = torch.arange(u.shape[-1] - 1, -1, -1, device=u.device)
        x = torch.exp(u)
        xs, columns, totals = _columns(x, k, rev)
        m, w, total_w, pre, suf, gamma = _combine(x, columns, totals, rev, k)
        result = _tangent(grad, x, xs, columns, totals, rev, k, m, w, total_w, pre, suf, gamma)
        return result, None


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
    s = scores.to(torch.float64)
    if k >= n:  # the one subset; zero gradient (no -inf * 0 with masked entries)
        return (1 + 0 * torch.where(s == -math.inf, 0.0, s)).to(scores.dtype)
    if k == 1:
        return torch.softmax(s / tau, -1).to(scores.dtype)
    if 2 * k > n:  # the complement: the n - k items left out, with negated scores
        c, masked = _complement_scores(s, tau)
        m = torch.where(masked, 0.0, 1 - subset_marginals(c, n - k, tau))
        return m.to(scores.dtype)
    shape = s.shape
    flat = s.reshape(-1, n)
    if flat.shape[0] == 0:
        return (flat * 0).reshape(shape).to(scores.dtype)
    u = (flat - _threshold(flat, k)) / tau
    if column_path_is_exact(n, k):
        width = _clamp_width(n)
        m = _ColumnMarginals.apply(u.clamp(-width, width), k)
        # Below the clamp a marginal is proportional to exp(u_i) (to relative order m_i itself):
        # restore that factor, so far tails come out as their tiny values (or 0), not e^-L.
        m = m * torch.exp((u + width).clamp(max=0.0))
    else:
        m = _log_space_marginals(u, k)
    return m.reshape(shape).to(scores.dtype)


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
    if not column_path_is_exact(n, k):
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
