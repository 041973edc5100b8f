"""Shared machinery of ``SpanningTree`` and ``Arborescence``: batched tree solvers, the
matrix-tree theorem, ``lengths`` handling and enumeration.

Everything here works on already-validated input and is batched over leading dimensions.

* The hard solutions (Prim, Chu-Liu/Edmonds) live in :mod:`pickgrad.structures._tree_solvers`.
* :func:`arborescence_log_partition` and :func:`arc_marginals`: the directed matrix-tree theorem
  (Tutte 1948; Koo, Globerson, Carreras & Collins 2007). The undirected case reduces to it,
  since the spanning trees of a graph are its arborescences rooted at node 0 of the symmetric
  digraph, one for one and with the same weight.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad._autograd import apply as apply_function
from pickgrad._validation import (
    check_score_types,
    checked_range,
    graph_capture_active,
    value_checks_enabled,
)
from pickgrad.structures._masks import fill_masked
from pickgrad.structures.base import _NO_TAU, Structure

__all__ = [
    "TreeStructure",
    "arborescence_log_partition",
    "arc_marginals",
    "centered_log_weights",
    "marginal_dtype",
    "spanning_tree_edges",
    "unit_interval",
]

#: The log-partition (subtraction-free elimination) and the exact fallback of the marginals run
#: in float64: the Laplacian of exp(scores / tau) is badly conditioned as soon as the scores
#: spread over a few tens of nats.
WORK_DTYPE = torch.float64


def marginal_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the fast marginals for scores of ``dtype``: float64 for float64, else float32.

    A float32 graph whose error estimate exceeds its tolerance is redone in float64 (see
    :func:`arc_marginals`), so large float32 batches cost float32 linear algebra on
    well-conditioned graphs and lose no accuracy on the others; small ones (fewer than
    ``_FLOAT32_SIZE`` entries) are computed in float64 from the start.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- lengths ------------------------------------------------------------------------------------


def check_lengths(lengths: Any, scores: Tensor, *, minimum: int = 1) -> Tensor | None:
    """Validate ``lengths`` against ``scores`` ``(*batch, n, n)``; return it as a long tensor.

    Type and shape are always checked; the range ``[minimum, n]`` only while value checks run
    (``pickgrad._validation.value_checks_enabled``)."""
    if lengths is None:
        return None
    batch = tuple(scores.shape[:-2])
    n = scores.shape[-1]
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"lengths must be an integer tensor shaped like the batch {batch}, "
                f"got {type(lengths).__name__}"
            ) from None
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    if tuple(lengths.shape) != batch:
        raise ValueError(
            f"lengths must have the batch shape of scores {batch} (scores shape "
            f"{tuple(scores.shape)}), got shape {tuple(lengths.shape)}"
        )
    lengths = lengths.to(device=scores.device, dtype=torch.long)
    # The range check reads values back to Python (a device sync): a value check, so it follows
    # the validation switch like the NaN checks.
    if lengths.numel() > 0 and value_checks_enabled():
        low, high = int(lengths.min()), int(lengths.max())
        if low < minimum or high > n:
            raise ValueError(
                f"lengths must lie in [{minimum}, n={n}] (the number of nodes of each graph), "
                f"got values from {low} to {high}"
            )
    result: Tensor = lengths
    return result


def node_mask(
    lengths: Tensor | None, batch: tuple[int, ...], n: int, device: torch.device
) -> Tensor:
    """Boolean ``(*batch, n)``: node v of example b is present iff ``v < lengths[b]``."""
    nodes = torch.arange(n, device=device)
    if lengths is None:
        return torch.ones((*batch, n), dtype=torch.bool, device=device)
    return nodes < lengths[..., None]


def arc_mask(nodes: Tensor, root: int) -> Tensor:
    """Boolean ``(*batch, n, n)`` of the arcs i -> j that may be used: both ends present,
    i != j, and j is not the root."""
    n = nodes.shape[-1]
    index = torch.arange(n, device=nodes.device)
    allowed = (index[:, None] != index[None, :]) & (index[None, :] != root)
    return nodes[..., :, None] & nodes[..., None, :] & allowed


@functools.lru_cache(maxsize=64)
def full_arc_mask(n: int, root: int, device: torch.device) -> Tensor:
    """:func:`arc_mask` of a graph whose n nodes are all present, ``(n, n)``; cached (read-only:
    the same tensor is shared by every call)."""
    return arc_mask(torch.ones(n, dtype=torch.bool, device=device), root)


# --- matrix-tree theorem ------------------------------------------------------------------------


def _laplacian(weights: Tensor, has_parent: Tensor) -> Tensor:
    """Laplacian ``diag(sum_i w[i, :]) - w`` of the arc weights ``(..., n, n)``, with a unit
    diagonal for the root and absent nodes (``has_parent`` False)."""
    laplacian = weights.neg()
    diagonal = weights.sum(dim=-2).masked_fill_(~has_parent, 1.0)
    laplacian.diagonal(dim1=-2, dim2=-1).add_(diagonal)
    return laplacian


def _laplacian_minor(weights: Tensor, has_parent: Tensor) -> Tensor:
    """Laplacian of the arc weights ``(..., n, n)`` without the root's row and column (root 0):
    a strided ``(..., n - 1, n - 1)`` view, which LAPACK and BLAS take as it is.

    Absent nodes (``has_parent`` False) get a unit diagonal, which leaves the determinant and
    the rest of the inverse unchanged (block diagonal). Arcs out of the root only feed the
    diagonal.
    """
    return _laplacian(weights, has_parent)[..., 1:, 1:]


#: Largest absolute error tolerated in the marginals, per dtype of the computation, before a
#: graph is recomputed more accurately (see :func:`arc_marginals`): ``torch.testing``'s default
#: absolute tolerance for that dtype.
MARGINAL_TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-5}


def _error_factor(n: int, dtype: torch.dtype) -> float:
    """``c`` in the error estimate ``c * eps * returns`` of the inverse formula (measured).

    The error of ``A[j, j] - A[j, i]`` is the rounding error of the inverse times the expected
    number of returns to j. In float32, against the exact elimination, over 287k Gaussian,
    clustered, uniform and column-gapped graphs (n = 3..50, scores up to +-100;
    ``python benchmarks/measure_tree_error.py``), every graph with ``eps * returns <= 1e-4`` and
    no column gap erred by at most 4.2 eps x returns, and Gumbel-perturbed graphs at tau 0.5
    and 0.1 by at most 1.1 (``--quick``); so float32 uses 8. In float64 (``--dtype float64
    --quick``, graphs with ``eps * returns >= 1e-12``) at most 1.2 eps x returns, but with 8 the
    whole estimate came within 0.86 of the error of an accepted graph (Gumbel-perturbed at tau
    0.1, a column gap): float64 uses 16. (It used 8 n before it was measured: at n = 50 that
    sent 3% of Gumbel-perturbed spanning trees at tau 0.5 to the slow exact elimination.)
    """
    return 16.0 if dtype == torch.float64 else 8.0


#: ``c`` in the extra error ``c * eps * gap`` of a graph whose lowest column lies ``gap`` nats
#: below its shift (see :func:`shifted_weights`): each of that column's log-weights is rounded
#: to about ``eps * gap``. With it, the whole estimate exceeded the real error of every accepted
#: graph at least 1.8-fold in ``benchmarks/measure_tree_error.py`` (largest error / estimate
#: 0.56 over 287k graphs).
_GAP_FACTOR = 1.0


def centered_log_weights(scores: Tensor, arcs: Tensor, tau: float, dtype: torch.dtype) -> Tensor:
    """``(scores - c) / tau`` in ``dtype`` on usable arcs, ``-inf`` elsewhere; ``c[j]`` is the
    largest usable score into node j (a column with none stays all -inf).

    The input of the exact fallback, :func:`_elimination_marginals`. A constant per column does
    not change the marginals (every arborescence has one arc into each non-root node); it makes
    every weight ``exp(z)`` at most 1, with a 1 in each column, and centering before dividing by
    tau keeps the rounding of the log-weights that matter (those near their column's maximum)
    small even when ``|scores| / tau`` is large.
    """
    z = scores.to(dtype).masked_fill(~arcs, -math.inf)
    # Columns with no usable arc (shift -inf) stay -inf: -inf minus the lowest finite number.
    shift = z.detach().amax(dim=-2, keepdim=True).clamp_min(torch.finfo(dtype).min)
    z = z - shift
    return z if tau == 1.0 else z * (1.0 / tau)


def shifted_weights(scores: Tensor, arcs: Tensor, tau: float) -> Tensor:
    """``exp((scores - c) / tau)`` on usable arcs, 0 elsewhere; ``c`` is the largest usable score
    of each graph, so every weight is at most 1 (in the dtype of ``scores``).

    The input of the inverse formula. One shift per graph rather than per column (which
    :func:`centered_log_weights` uses for the exact path) costs a few fast passes instead of
    reductions and broadcasts along 10-element rows, and loses nothing in the linear algebra:
    scaling a column of the Laplacian scales the matching row of its inverse and leaves partial
    pivoting's choices alone. What it costs, a column lying far below the graph's largest
    score, is measured by :func:`_inverse_marginals`: rounding of its log-weights, and
    subnormal weights.
    """
    # -inf off the arcs (whatever is stored there, inf included): exp makes it exactly 0.
    z = torch.where(arcs, scores, -math.inf)
    shift = z.detach().amax(dim=(-2, -1), keepdim=True)
    z = z - shift.clamp_min(torch.finfo(scores.dtype).min)  # a graph with no arc: shift -inf
    if tau != 1.0:
        z = z * (1.0 / tau)
    return torch.exp(z)


def _log_add(a: Tensor, b: Tensor) -> Tensor:
    """``log(exp(a) + exp(b))`` whose first and second derivatives stay finite for any gap
    (``torch.logaddexp``'s double backward overflows when ``|a - b|`` exceeds ~700)."""
    top = torch.maximum(a, b).detach()  # the value does not depend on it
    return top + torch.log(torch.exp(a - top) + torch.exp(b - top))


def _relabel(x: Tensor, order: Tensor) -> Tensor:
    """``x[..., order, :][..., :, order]``: node ``order[k]`` becomes node k."""
    return x.index_select(-2, order).index_select(-1, order)


def _eliminate(z: Tensor, arcs: Tensor, root: int) -> Tensor:
    """``log Z`` by subtraction-free elimination (Grassmann, Taksar & Heyman 1985), in log space.

    Eliminating node k from the root-deleted Laplacian (its Schur complement) is the same as
    removing k from the graph and redirecting each arc k -> j to k's possible parents i, with
    weight ``w[i, k] w[k, j] / d_k`` added to ``w[i, j]``, where ``d_k = sum_i w[i, k]`` is the
    pivot. Self-loops are dropped instead of being subtracted from the diagonal, so every
    quantity is a sum of positive terms and ``log Z = sum_k log d_k`` keeps full relative
    accuracy however far apart the weights are (unlike an LU factorisation, whose diagonal
    cancels when a group of nodes is tied far more strongly together than to the rest). Kept in
    log space, nothing underflows either. Its reverse-mode derivative, the marginals, is
    accurate too (tested against enumeration). Costs n - 1 batched steps of O(n^2) each.
    """
    n = z.shape[-1]
    # A huge finite log-weight instead of -inf for missing arcs keeps every gradient finite.
    absent = -1e300 if z.dtype == torch.float64 else -1e30
    log_w = z.masked_fill(~arcs, absent)
    has_parent = arcs.any(dim=-2)  # False for the root and absent nodes: they get a unit pivot
    log_pad = torch.zeros(has_parent.shape, dtype=z.dtype, device=z.device).masked_fill(
        has_parent, absent
    )
    order = torch.tensor([k for k in range(n) if k != root] + [root], device=z.device)
    log_w = _relabel(log_w, order)
    log_pad = log_pad.index_select(-1, order)
    total = torch.zeros(z.shape[:-2], dtype=z.dtype, device=z.device)
    for step in range(n - 1):
        incoming = torch.cat([log_w[..., :, 0], log_pad[..., step, None]], dim=-1)
        log_pivot = torch.logsumexp(incoming, dim=-1)
        total = total + log_pivot
        redirect = log_w[..., 1:, 0] - log_pivot[..., None]
        size = n - 1 - step
        through = redirect[..., :, None] + log_w[..., 0, None, 1:]
        log_w = _log_add(log_w[..., 1:, 1:], through)
        eye = torch.eye(size, dtype=torch.bool, device=z.device)
        log_w = log_w.masked_fill(eye, absent)  # drop self-loops
    return total


def arborescence_log_partition(z: Tensor, arcs: Tensor, root: int) -> Tensor:
    """``log sum_A prod_{(i, j) in A} exp(z[i, j])`` over arborescences A rooted at ``root``.

    Directed matrix-tree theorem: the sum equals the determinant of the Laplacian
    ``L = diag(sum_i w[i, :]) - w`` with the root's row and column deleted. Computed by
    subtraction-free elimination, exact to rounding for any spread of the scores.

    Args:
        z: ``(..., n, n)`` arc log-weights (float64 advised).
        arcs: ``(..., n, n)`` boolean mask of usable arcs (see :func:`arc_mask`).
        root: root index.

    Returns:
        ``(...)`` log-partition, differentiable in ``z`` (its gradient is the arc marginals).
    """
    return _eliminate(z, arcs, root)


def _inverse_marginals(
    weights: Tensor, arcs: Tensor, symmetric: bool = False, estimate: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Koo et al.'s marginals from the inverse of the Laplacian (root 0), with an error estimate.

    Args:
        weights: ``(..., n, n)`` from :func:`shifted_weights`.
        arcs: ``(..., n, n)`` usable arcs (it may broadcast over the batch).
        symmetric: ``weights`` and ``arcs`` are symmetric (spanning trees), so the root-deleted
            Laplacian is symmetric, and positive definite for a connected graph: from
            :data:`CHOLESKY_SIZE` rows on it is inverted through its Cholesky factor (LAPACK's
            Cholesky inverse measured 1.4x-1.6x faster than its LU inverse there). A
            factorisation that fails (a graph not connected, or not
            positive definite in rounding) is untrusted, as a singular LU is.
        estimate: compute the error estimate; ``False`` where :func:`_accurate_by_range`
            has already bounded the error (``error`` is then zero).

    Returns ``(marginals, inverse, kernel, error)``: ``inverse`` of the root-deleted minor,
    ``kernel[i, j] = A[j, j] - A[j, i]`` with ``A`` the inverse padded with a zero root row and
    column, so that ``marginals = weights * kernel`` (rounded into [0, 1] after the error
    estimate), and ``error`` ``(...)``.
    """
    n, dtype = weights.shape[-1], weights.dtype
    has_parent = arcs.any(dim=-2)  # False for the root and absent nodes
    laplacian = _laplacian(weights, has_parent)
    if symmetric and n - 1 >= CHOLESKY_SIZE:
        factor, info = torch.linalg.cholesky_ex(laplacian[..., 1:, 1:])
        # A failed factor has a zero pivot, which cholesky_inverse refuses: an identity in its
        # place (the graph is untrusted below, whatever its inverse).
        identity = torch.eye(n - 1, dtype=dtype, device=weights.device)
        factor = torch.where((info != 0)[..., None, None], identity, factor)
        inverse = torch.cholesky_inverse(factor)
    else:
        inverse, info = torch.linalg.inv_ex(laplacian[..., 1:, 1:])
    # LAPACK returns the inverse column-major: its transpose is the contiguous one.
    transposed, kernel = _padded_kernel(inverse.transpose(-1, -2))
    marginals = weights * kernel
    if not estimate:
        error = torch.zeros(weights.shape[:-2], dtype=dtype, device=weights.device)
        return marginals.clamp(0.0, 1.0), inverse, kernel, error
    with torch.no_grad():
        eps = torch.finfo(dtype).eps
        # A[j, j] L[j, j] is the expected number of returns to j before reaching the root; the
        # subtraction above loses that factor times the rounding error (see _error_factor).
        # max_i |A[j, i]| equals A[j, j] in exact arithmetic and also flags a garbage inverse.
        # (The root's column: 0 returns, 0 = 0 column sum, and a unit diagonal, which leaves
        # the smallest column sum below, clamped to 1, alone.)
        diagonal = torch.diagonal(laplacian, dim1=-2, dim2=-1)
        returns = transposed.abs().amax(dim=-2).mul_(diagonal)
        # A check that needs no trust in the inverse: each non-root column sums to 1 exactly.
        column_error = (marginals.sum(dim=-2) - has_parent.to(dtype)).abs_()
        error = torch.maximum(returns.mul_(_error_factor(n, dtype) * eps), column_error)
        error = error.amax(dim=-1)
        # A column whose weights sum to s lies about -log(s) below the graph's shift: its
        # log-weights carry that much more rounding (see _GAP_FACTOR), and below tiny / eps
        # the weights that matter may be subnormal.
        smallest = diagonal.amin(dim=-1)
        error.sub_(smallest.log().clamp_max_(0.0), alpha=_GAP_FACTOR * eps)
        untrusted = (info != 0) | (smallest < torch.finfo(dtype).tiny / eps)
        error.masked_fill_(untrusted, math.inf)
        # Into [0, 1] in value (see unit_interval); the backward is that of the formula.
        marginals = marginals.clamp(0.0, 1.0)  # not in place: vmap has no rule for clamp_
    return marginals, inverse, kernel, error


#: Smallest root-deleted Laplacian (``n - 1`` rows) a symmetric graph inverts by Cholesky.
#: Measured side by side (``python benchmarks/bench_trees.py --cholesky``, two runs, one
#: thread, a loaded machine): the inverse alone 1.4x-1.6x faster from 32 rows on and 1.0x-1.6x
#: at 16; spanning-tree marginals forward+backward 1.27x-1.42x faster in float32 at (64, 33,
#: 33), (100, 50, 50) and (16, 100, 100), 1.0x-1.1x in float64, and 0.87x-1.0x at 17 nodes.
CHOLESKY_SIZE = 32


def _padded_kernel(minor: Tensor) -> tuple[Tensor, Tensor]:
    """``(T, K)``: the ``(..., n - 1, n - 1)`` matrix ``minor`` padded with a zero root row and
    column into ``T``, and ``K[i, j] = T[j, j] - T[i, j]``, which is ``T[j, j]`` on the root's
    row and 0 on its column (nothing enters the root)."""
    padded = torch.nn.functional.pad(minor, (1, 0, 1, 0))
    return padded, torch.diagonal(padded, dim1=-2, dim2=-1)[..., None, :] - padded


def _marginals_vjp(grad: Tensor, weights: Tensor, inverse: Tensor, kernel: Tensor) -> Tensor:
    """``w * dL/dw`` of the inverse-formula marginals (see :class:`_InverseMarginals`), out of
    place, so that autograd and ``torch.func`` can differentiate it in turn.

    With ``P = A^T (dL/dA) A^T`` on the minor, ``dL/dw[i, j] = g K + P[i, j] - P[j, j]``, which
    is ``g K`` minus the kernel of ``P`` (its root row ``-P[j, j]``, its root column 0).
    """
    h = grad * weights
    # (dL/dA)^T on the minor: h's column sums on the diagonal, minus h.
    minor = torch.diag_embed(h.sum(dim=-2)[..., 1:]) - h[..., 1:, 1:]
    p_transposed = inverse @ minor @ inverse
    return (grad * kernel - _padded_kernel(p_transposed.transpose(-1, -2))[1]) * weights


class _InverseMarginals(torch.autograd.Function):
    """Marginals of ``scores / tau`` (root 0) by the inverse formula, with a hand-written
    backward.

    The forward applies :func:`_inverse_marginals` to :func:`shifted_weights` (or to the
    ``weights`` given, the same computed from the detached scores). Backward, with
    ``H = g * w``, ``A`` the inverse of the minor ``M`` padded with a zero root row and column,
    and ``K[i, j] = A[j, j] - A[j, i]``: ``dL/dA = diag(sum_i H[i, :]) - H^T``,
    ``P = A^T (dL/dA) A^T = -dL/dM`` (zero on the root's row and column: the root row of the
    Laplacian is deleted, and nothing enters the root), and
    ``dL/dw[i, j] = g K + P[i, j] - P[j, j]``, ``dL/dscores = w * dL/dw / tau`` (the shift is a
    constant per graph, which the marginals ignore). A backward that must itself be
    differentiable (``create_graph=True``) goes through autograd instead.

    A graph whose error estimate is not finite (a singular or garbage inverse) gets a zero
    gradient: :func:`arc_marginals` never returns its marginals (it redoes it), and its inverse
    would turn even a zero incoming gradient into NaN. Forward and ``setup_context`` are apart
    and every step is plain torch, so ``torch.func`` transforms and ``vmap`` run through it
    (``generate_vmap_rule``).

    Returns ``(marginals, error, weights, inverse, kernel)``; only the first is differentiable.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        scores: Tensor,
        arcs: Tensor,
        tau: float,
        weights: Tensor | None,
        dtype: torch.dtype,
        symmetric: bool,
        estimate: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        if weights is None:
            weights = shifted_weights(scores.to(dtype), arcs, tau)
        else:  # an input returned (and saved) as an output must be a view of it
            weights = weights.view_as(weights)
        marginals, inverse, kernel, error = _inverse_marginals(weights, arcs, symmetric, estimate)
        return marginals.to(scores.dtype), error, weights, inverse, kernel

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        scores, arcs, tau, _, _, symmetric, estimate = inputs
        _, error, weights, inverse, kernel = output
        ctx.save_for_backward(scores, arcs, weights, inverse, kernel, error)
        ctx.tau, ctx.symmetric, ctx.estimate = tau, symmetric, estimate
        ctx.mark_non_differentiable(error, weights, inverse, kernel)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor | None, *_: Any
    ) -> tuple[Tensor | None, None, None, None, None, None, None]:
        if grad is None:
            return None, None, None, None, None, None, None
        scores, arcs, weights, inverse, kernel, error = ctx.saved_tensors
        usable = torch.isfinite(error)[..., None, None]
        grad = grad.to(weights.dtype)  # the dtype of the computation
        if torch.is_grad_enabled():
            # A backward that is itself differentiated (create_graph, or torch.func's jacrev /
            # nested transforms): the same formula out of place, from weights, inverse and
            # kernel recomputed from the scores so that they carry the graph. Untrusted graphs
            # are replaced by zeros first, so that no NaN of theirs reaches the graph being
            # differentiated (a mask on the result would still carry them).
            safe = torch.where(usable, scores, torch.zeros((), dtype=scores.dtype))
            tracked = shifted_weights(safe.to(weights.dtype), arcs, ctx.tau)
            tracked_inverse, tracked_kernel = _inverse_marginals(
                tracked, arcs, ctx.symmetric, estimate=False
            )[1:3]
            grad_scores = _marginals_vjp(grad, tracked, tracked_inverse, tracked_kernel)
            grad_scores = torch.where(usable, grad_scores / ctx.tau, 0.0)
            return grad_scores.to(scores.dtype), None, None, None, None, None, None
        grad_scores = _marginals_vjp(grad, weights, inverse, kernel)
        if ctx.tau != 1.0:
            grad_scores.mul_(1.0 / ctx.tau)
        if ctx.estimate:  # otherwise every graph was bounded accurate: all usable
            grad_scores = torch.where(usable, grad_scores, 0.0)
        return grad_scores.to(scores.dtype), None, None, None, None, None, None


def _marginals_by_inverse(
    scores: Tensor,
    arcs: Tensor,
    *,
    tau: float = 1.0,
    weights: Tensor | None = None,
    dtype: torch.dtype | None = None,
    symmetric: bool = False,
    estimate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Fast marginals of ``scores / tau`` (root 0) from the inverse of the Laplacian, with an
    estimate of their error ``(...)``; ``weights``, if given, are
    ``shifted_weights(scores.detach(), arcs, tau)``. ``dtype`` (default: that of ``scores``)
    is the dtype of the computation, forward and backward; marginals and gradients come back
    in the dtype of ``scores`` (one conversion inside the autograd node, not two around it).
    ``symmetric``, ``estimate``: see :func:`_inverse_marginals`."""
    work = scores.dtype if dtype is None else dtype
    outputs = apply_function(
        _InverseMarginals, scores, arcs, tau, weights, work, symmetric, estimate
    )
    return outputs[0], outputs[1]


def _returns_lower_bound(weights: Tensor) -> Tensor:
    """A lower bound ``(...)`` on the largest return probability of the walk behind the
    inverse formula, from its 2-cycles alone; ``weights`` ``(..., n, n)`` as in
    :func:`shifted_weights`.

    The walk at node j steps to a parent k with probability ``p[k, j] = w[k, j] / d_j``
    (``d_j = sum_i w[i, j]``) and stops at the root; ``A[j, j] d_j`` is its expected number of
    visits to j, ``1 / (1 - r_j)`` with r_j its probability of coming back. Coming back in two
    steps, through k, are disjoint events, so ``r_j >= sum_k p[k, j] p[j, k]``: O(n^2) work,
    no inverse. Gumbel-perturbed scores at small tau have heavy arc pairs (a few weights far
    above the rest), the case this bound sees.
    """
    column = weights.sum(dim=-2, keepdim=True)
    step = weights / column.clamp_min(torch.finfo(weights.dtype).tiny)  # absent nodes: 0
    back = (step * step.transpose(-1, -2)).sum(dim=-2)
    result: Tensor = back.amax(dim=-1)
    return result


def _bound_to_miss(weights: Tensor, tolerance: float) -> Tensor:
    """Boolean ``(...)``: graphs whose inverse-formula estimate is sure to exceed ``tolerance``
    (in exact arithmetic), by :func:`_returns_lower_bound`; they skip the float32 pass.

    The estimate is at least ``c eps / (1 - r_j)`` (see :func:`_error_factor`), so
    ``r_j > 1 - c eps / tolerance`` dooms it. Only the speed depends on this choice: a graph
    sent to float64 is accurate there too.
    """
    n, dtype = weights.shape[-1], weights.dtype
    limit = 1.0 - _error_factor(n, dtype) * torch.finfo(dtype).eps / tolerance
    return _returns_lower_bound(weights) > limit


def _accurate_by_range(
    scores: Tensor, arcs: Tensor, tau: float, tolerance: float, given: Tensor | None = None
) -> bool:
    """Whether the inverse formula in float64 meets ``tolerance`` on every graph of ``scores``
    ``(B, n, n)`` by a bound from the range of the scores alone, so that its error estimate
    need not be computed. Eager only (one host read of the range, one of the mask).

    Where every present non-root node has the root among its usable parents (the masks of the
    tree structures do) and every score lies within ``S = (max - min) / tau`` of every other,
    each step of the walk behind the formula (see :func:`_returns_lower_bound`) stops at the
    root with probability at least ``e^-S / (n - 1)``. The expected number of returns to any
    node is then at most ``(n - 1) e^S``, and the estimate of :func:`_inverse_marginals` at
    most ``c eps (n - 1) e^S + eps S``: no column lies more than S below the graph's largest
    weight (so no weight is subnormal either), and the root-deleted Laplacian is strictly
    diagonally dominant by columns (nonsingular). The range is taken over every entry of
    ``scores``, used or not: a looser bound, never a smaller one. Accepted where the bound is a
    quarter of ``tolerance`` or less: ``S`` up to 18.2 at 10 nodes and 16.5 at 50 for float32's
    tolerance, 13.6 and 11.9 for float64's. ``given``: the caller's tensor behind ``scores``,
    whose range the value checks may just have read (:func:`checked_range`).
    """
    n = scores.shape[-1]
    if n < 2 or scores.numel() == 0:
        return False
    known = None if given is None else checked_range(given)
    low, high = known if known is not None else torch.stack(torch.aminmax(scores.detach())).tolist()
    spread = (high - low) / tau
    if not math.isfinite(spread):
        return False  # a masked (-inf) score: the range says nothing
    eps = torch.finfo(torch.float64).eps
    factor = _error_factor(n, torch.float64)
    bound = factor * eps * (n - 1) * math.exp(min(spread, 700.0)) + eps * spread
    if bound > tolerance / 4:
        return False
    has_parent = arcs.any(dim=-2)
    return bool((arcs[..., 0, :] | ~has_parent).all())  # the root reaches every present node


#: Fewest score entries (batch x n x n) for which float32 input runs float32 linear algebra
#: (graphs :func:`_bound_to_miss` dooms going to float64 at once). Below, float32 input is
#: computed in float64 from the start, to float32's tolerance: at these sizes float64 costs
#: little more than float32, while a float32 pass that some graphs miss costs a second pass
#: (and the doom test a host sync). Measured side by side on the CPU (BENCHMARKS.md, "Trees
#: at small batches, relax", 2026-12-03): st-gumbel on trees 1.25x-1.40x faster at (64, 10,
#: 10), (128, 45) and (8, 50, 50); unperturbed relax at tau 1 from 1.03x faster to 0.95x.
_FLOAT32_SIZE = 2**15

#: A batch with at least 1 / _DOOMED_SHARE of its graphs doomed goes to float64 whole.
_DOOMED_SHARE = 4


def _flat_arcs(arcs: Tensor, shape: torch.Size) -> Tensor:
    """``arcs`` for the batch of ``shape`` ``(..., n, n)`` flattened to ``(B, n, n)``; a mask
    shared by every graph stays one ``(n, n)`` mask."""
    n = shape[-1]
    if all(size == 1 for size in arcs.shape[:-2]):
        return arcs.reshape(n, n)
    return arcs.expand(shape).reshape(-1, n, n)


def _rows(arcs: Tensor, index: Tensor) -> Tensor:
    """The arcs (from :func:`_flat_arcs`) of the graphs ``index``."""
    return arcs if arcs.dim() == 2 else arcs.index_select(0, index)


def arc_marginals(
    scores: Tensor,
    arcs: Tensor,
    root: int,
    tau: float = 1.0,
    tolerance: float | None = None,
    *,
    symmetric: bool = False,
) -> Tensor:
    """Marginal probability of every arc under ``p(A) ∝ prod_{(i, j) in A} exp(scores[i, j] / tau)``.

    With ``M`` the root-deleted Laplacian and ``A = M^{-1}`` (padded with a zero root row and
    column), ``mu[i, j] = w[i, j] * (A[j, j] - A[j, i])`` (Koo et al. 2007), the derivative of
    ``log det M`` in ``z[i, j] = scores[i, j] / tau``; its backward is two matrix products,
    O(n^3) like the forward. That formula subtracts numbers as large as the expected number of
    returns to j before the root is reached, which explodes when a group of nodes is bound far
    more tightly together than to the root (common at small tau, and on Gumbel-perturbed
    scores), and it rounds the weights of a column lying far below the graph's largest score
    (:func:`shifted_weights`). Graphs whose estimated error exceeds ``tolerance`` are
    recomputed: float32 graphs by this function in float64, float64 graphs as the gradient of
    the subtraction-free elimination (:func:`arborescence_log_partition`), slower but exact to
    rounding for any spread of the scores (the backward then runs through it by autograd).
    float32 graphs that are sure to miss (:func:`_bound_to_miss`, a cheap lower bound on the
    returns) go to float64 at once, without a float32 pass, and a float32 batch of fewer than
    ``_FLOAT32_SIZE`` entries goes to float64 whole (to float32's tolerance). Another root is
    first relabelled node 0.

    Choosing the precision per graph reads values back to Python (one to three host syncs:
    whether any graph is doomed, whether every estimate is met, which graphs to redo), the one
    value-dependent step of the tree relaxations, which validation does not govern. Under graph
    capture (``torch.compile``, ``torch.func`` transforms such as ``vmap``; see
    :func:`pickgrad._validation.graph_capture_active`) no value can choose a path: every graph
    is computed once by the inverse formula in float64 and a graph whose float64 estimate still
    misses ``tolerance`` comes out NaN (loud, not silently wrong; eager calls give it the exact
    elimination).

    Args:
        scores: ``(..., n, n)`` arc scores, float32 or float64 (the dtype of the computation;
            see :func:`marginal_dtype`).
        arcs: ``(..., n, n)`` boolean mask of usable arcs (it may broadcast over the batch).
        root: root index.
        tau: temperature.
        tolerance: largest absolute error accepted; default ``MARGINAL_TOLERANCE[scores.dtype]``.
        symmetric: ``scores`` and ``arcs`` are symmetric (``SpanningTree``): the Laplacian is
            inverted through its Cholesky factor (see :func:`_inverse_marginals`).

    Returns:
        ``(..., n, n)`` marginals in [0, 1] (rounded into it as :func:`unit_interval` does);
        every present non-root column sums to 1; arcs masked by ``arcs`` or by a ``-inf`` score
        are 0.
    """
    if tolerance is None:
        tolerance = MARGINAL_TOLERANCE[scores.dtype]
    n = scores.shape[-1]
    if root != 0:  # relabel the nodes so that the root is node 0, the case computed below
        order = torch.tensor([root] + [k for k in range(n) if k != root], device=scores.device)
        back = torch.argsort(order)
        moved = arc_marginals(
            _relabel(scores, order), _relabel(arcs, order), 0, tau, tolerance, symmetric=symmetric
        )
        return _relabel(moved, back)
    flat, arcs = scores.reshape(-1, n, n), _flat_arcs(arcs, scores.shape)
    if graph_capture_active():  # no value may choose a path: one float64 pass, no fallback
        marginals, error = _marginals_by_inverse(
            flat, arcs, tau=tau, dtype=torch.float64, symmetric=symmetric
        )
        missed = ~(error <= tolerance)[..., None, None]
        return torch.where(missed, math.nan, marginals).reshape(scores.shape)
    wide = scores.dtype == torch.float64 or flat.numel() < _FLOAT32_SIZE  # float64 at once
    if not wide:
        weights = shifted_weights(flat.detach(), arcs, tau)
        doomed = _bound_to_miss(weights, tolerance)
        count = int(doomed.sum())
        # Where a quarter of the graphs are doomed (Gumbel-perturbed scores), about half of
        # the others miss too: all in float64 at once, no split and no second pass (10
        # perturbed copies of (128, 10, 10) at tau 0.5: 13.4 -> 11.4 ms fwd+bwd; of (16, 50,
        # 50): 38.2 -> 34.7 ms; unperturbed batches have none doomed and are unchanged).
        wide = _DOOMED_SHARE * count >= flat.shape[0]
    if wide:
        if _accurate_by_range(flat, arcs, tau, tolerance, given=scores):
            # Every graph is within tolerance (bounded a priori): no estimate, no check.
            marginals, _ = _marginals_by_inverse(
                flat, arcs, tau=tau, dtype=torch.float64, symmetric=symmetric, estimate=False
            )
            return marginals.reshape(scores.shape)
        marginals, error = _marginals_by_inverse(
            flat, arcs, tau=tau, dtype=torch.float64, symmetric=symmetric
        )
    elif count == 0:
        marginals, error = _marginals_by_inverse(
            flat, arcs, tau=tau, weights=weights, symmetric=symmetric
        )
    else:
        keep = (~doomed).nonzero().squeeze(-1)
        kept, kept_error = _marginals_by_inverse(
            flat.index_select(0, keep), _rows(arcs, keep), tau=tau,
            weights=weights.index_select(0, keep), symmetric=symmetric,
        )  # fmt: skip
        marginals = flat.new_zeros(flat.shape).index_copy(0, keep, kept)
        error = torch.full_like(doomed, math.inf, dtype=kept_error.dtype)
        error = error.index_copy(0, keep, kept_error)
    reliable = error <= tolerance
    if bool(reliable.all()):
        return marginals.reshape(scores.shape)
    bad = (~reliable).nonzero().squeeze(-1)
    bad_scores, bad_arcs = flat.index_select(0, bad), _rows(arcs, bad)
    if not wide:  # redo in float64, to the same tolerance
        again = arc_marginals(
            bad_scores.to(torch.float64), bad_arcs, 0, tau, tolerance, symmetric=symmetric
        )
        again = again.to(scores.dtype)
    else:
        # The elimination works in log space, where a -inf score on a usable arc would meet
        # another -inf (NaN): such arcs leave the mask here, on the few graphs redone.
        bad_arcs = bad_arcs & (bad_scores > -math.inf)
        z = centered_log_weights(bad_scores, bad_arcs, tau, torch.float64)
        again = unit_interval(_elimination_marginals(z, bad_arcs, 0)).to(scores.dtype)
    # Rows redone here get a zero gradient through ``marginals`` (see _InverseMarginals).
    return marginals.index_copy(0, bad, again).reshape(scores.shape)


def unit_interval(marginals: Tensor) -> Tensor:
    """``marginals`` rounded into [0, 1] in value, with its gradient unchanged.

    Probabilities computed in floating point may land a few ulps outside [0, 1] (measured: down
    to -1e-11 in float32 and up to 1 + 4e-15 in float64 at tau = 0.01); the correction is
    smaller than the documented accuracy, so the backward pass ignores it (a plain clamp would
    zero the gradient of those entries).
    """
    correction = marginals.detach().clamp(0.0, 1.0) - marginals.detach()
    return marginals + correction


def _elimination_marginals(z: Tensor, arcs: Tensor, root: int) -> Tensor:
    """Marginals as the gradient of the exact elimination's ``log Z`` (differentiable when
    ``z`` requires grad)."""
    differentiable = z.requires_grad
    if not differentiable:
        # Under no_grad or inference_mode the gradient is still how the marginals are computed:
        # step out of both (tensors made in inference mode must be cloned outside it first).
        with torch.inference_mode(False), torch.enable_grad():
            leaf = z.clone().requires_grad_()
            log_z = _eliminate(leaf, arcs.clone(), root)
            (exact,) = torch.autograd.grad(log_z.sum(), leaf)
        return exact.masked_fill(~arcs, 0.0)
    with torch.enable_grad():
        log_z = _eliminate(z, arcs, root)
        (exact,) = torch.autograd.grad(log_z.sum(), z, create_graph=True)
    return exact.masked_fill(~arcs, 0.0)


# --- enumeration --------------------------------------------------------------------------------


def spanning_tree_edges(n: int) -> list[list[tuple[int, int]]]:
    """Every spanning tree of the complete graph on n nodes as a list of edges (i < j).

    Decodes all n^(n-2) Pruefer sequences (Pruefer 1918), in lexicographic order of sequence.
    """
    if n == 1:
        return [[]]
    trees = []
    for sequence in itertools.product(range(n), repeat=n - 2):
        degree = [1] * n
        for node in sequence:
            degree[node] += 1
        edges = []
        for node in sequence:
            leaf = min(v for v in range(n) if degree[v] == 1)
            edges.append((min(leaf, node), max(leaf, node)))
            degree[leaf] -= 1
            degree[node] -= 1
        last = [v for v in range(n) if degree[v] == 1]
        edges.append((last[0], last[1]))
        trees.append(sorted(edges))
    return trees


def orient_from_root(edges: list[tuple[int, int]], n: int, root: int) -> list[tuple[int, int]]:
    """Orient the edges of a spanning tree away from ``root``: a list of arcs (parent, child)."""
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        neighbours[i].append(j)
        neighbours[j].append(i)
    arcs, frontier, seen = [], [root], {root}
    while frontier:
        parent = frontier.pop()
        for child in neighbours[parent]:
            if child not in seen:
                seen.add(child)
                arcs.append((parent, child))
                frontier.append(child)
    return arcs


# --- shared public API --------------------------------------------------------------------------


class TreeStructure(Structure):
    """Shared validation and ``lengths`` handling of ``SpanningTree`` and ``Arborescence``."""

    event_dims = 2
    #: ``lengths`` is a keyword of the public methods, not a relax option.
    relax_option_names: ClassVar[tuple[str, ...]] = ("regularizer",)

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        rows, cols = event_shape
        if rows != cols:
            raise ValueError(
                f"{type(self).__name__} needs square {name} (..., n, n) scoring every pair of "
                f"nodes, got event shape {event_shape}"
            )
        if rows < 2:
            raise ValueError(
                f"{type(self).__name__} needs n >= 2 nodes (a single node has only the empty "
                f"tree), got {name} of event shape {event_shape}"
            )

    def _check_lengths(self, lengths: Any, scores: Tensor) -> Tensor | None:
        return check_lengths(lengths, scores)

    @property
    def _root(self) -> int:
        """The root of the matrix-tree computations (spanning trees: arborescences from 0)."""
        return 0

    def _arcs(self, scores: Tensor, lengths: Tensor | None) -> Tensor:
        """Usable arcs: ``(n, n)`` (broadcast over the batch) without ``lengths`` or when every
        graph is whole (one host read of ``lengths``, eager calls only), else one per graph."""
        n = scores.shape[-1]
        eager = not graph_capture_active()  # tracers skip lru_cache anyway, and cannot read
        if lengths is not None and eager and bool((lengths == n).all()):
            lengths = None  # every graph whole: the shared (n, n) mask, not one per graph
        if lengths is None and eager:
            return full_arc_mask(n, self._root, scores.device)
        if lengths is None:
            return arc_mask(torch.ones(n, dtype=torch.bool, device=scores.device), self._root)
        return arc_mask(node_mask(lengths, tuple(scores.shape[:-2]), n, scores.device), self._root)

    def _allowed_arcs(self, arc_scores: Tensor, lengths: Tensor | None) -> Tensor:
        """:meth:`_arcs` without the masked (``-inf``) arcs of ``arc_scores`` ``(..., n, n)``:
        the matrix-tree computations then never see a ``-inf`` weight (exp(-inf) = 0 would do
        in the Laplacian, but log-space sums of two -inf give NaN)."""
        return self._arcs(arc_scores, lengths) & (arc_scores > -math.inf)

    def _solver_scores(self, scores: Tensor) -> Tensor:
        """``scores`` (``(..., n, n)``) in float64 with masked entries made finite for the argmax:
        below every allowed one by more than n times their spread, so a tree that uses one
        scores below every tree that avoids them (every tree has n - 1 edges)."""
        wide = scores.to(torch.float64)  # the fill may lie beyond float16's range
        return fill_masked(wide, lambda spread: scores.shape[-1] * spread + 1)[0]

    def _infeasible_reason(self) -> str:
        return "the allowed edges hold no tree spanning every node"

    def _prepare_trees(
        self, scores: Any, mask: Tensor | None, lengths: Any, tau: Any = _NO_TAU
    ) -> tuple[Tensor, float, Tensor | None]:
        """Check ``lengths``, apply ``mask`` and validate (see :meth:`Structure.mask_scores`)."""
        check_score_types(scores, event_dims=self.event_dims)
        checked = self._check_lengths(lengths, scores)
        masked, tau_value = self._prepare(scores, mask, tau=tau, lengths=checked)
        return masked, tau_value, checked

    def argmax(
        self, scores: Tensor, *, mask: Tensor | None = None, lengths: Tensor | None = None
    ) -> Tensor:
        """The maximum-weight tree of each graph, batched; carries no gradient.

        Args:
            scores: ``(*batch, n, n)`` floating tensor.
            mask: optional bool tensor broadcastable to ``scores``, True = allowed (exactly
                ``scores.masked_fill(~mask, -inf)``): masked edges/arcs are never used; a mask
                that leaves a graph no tree is a ``ValueError`` naming it (a value check).
            lengths: optional ``(*batch)`` integer tensor: example b uses only its first
                ``lengths[b]`` nodes (1 <= lengths[b] <= n); entries of padded nodes are 0.

        Returns:
            ``(*batch, n, n)`` tensor of zeros and ones in the dtype and device of ``scores``.
        """
        scores, _, checked = self._prepare_trees(scores, mask, lengths)
        with torch.no_grad():
            return self._argmax(scores.detach(), lengths=checked)  # type: ignore[call-arg]

    def relax(
        self,
        scores: Tensor,
        tau: float = 1.0,
        *,
        mask: Tensor | None = None,
        lengths: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        """Matrix-tree marginals of the Gibbs distribution ``p(x) ∝ exp(<scores, x> / tau)``.

        Args:
            scores: ``(*batch, n, n)`` floating tensor.
            tau: temperature > 0 (a float or a schedule).
            mask: optional bool mask, True = allowed (see :meth:`argmax`); masked entries get
                exactly zero mass and zero gradient.
            lengths: optional ``(*batch)`` integer tensor of node counts (see :meth:`argmax`).
            **options: ``regularizer="entropy"`` (the only one offered).

        Returns:
            ``(*batch, n, n)`` marginals, differentiable in ``scores``.
        """
        scores, tau_value, checked = self._prepare_trees(scores, mask, lengths, tau)
        self.check_relax_options(options)
        return self._relax(scores, tau_value, lengths=checked, **options)  # type: ignore[call-arg]

    def log_partition(
        self,
        scores: Tensor,
        tau: float = 1.0,
        *,
        mask: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor:
        """``log sum_x exp(<scores, x> / tau)`` over every tree x; shape ``(*batch,)``.

        Args:
            scores: ``(*batch, n, n)`` floating tensor.
            tau: temperature > 0.
            mask: optional bool mask, True = allowed (see :meth:`argmax`); masked entries get
                exactly zero mass and zero gradient.
            lengths: optional ``(*batch)`` integer tensor of node counts (see :meth:`argmax`).
        """
        scores, tau_value, checked = self._prepare_trees(scores, mask, lengths, tau)
        value = self._log_partition(scores, tau_value, lengths=checked)  # type: ignore[call-arg]
        if value_checks_enabled() and value.numel() > 0 and not bool(torch.isfinite(value).all()):
            # Computed in float64; only the division by tau or the output dtype can overflow.
            detached = scores.detach()
            largest = float(detached.masked_fill(detached == -math.inf, 0).abs().amax())
            raise ValueError(
                f"log_partition overflows: with tau={tau} and scores up to {largest:.3g} in "
                f"magnitude, log Z does not fit {scores.dtype} (largest "
                f"{torch.finfo(scores.dtype).max:.3g}); raise tau or use a wider dtype"
            )
        return value

    @staticmethod
    def _check_regularizer(regularizer: str) -> None:
        if not isinstance(regularizer, str):
            raise TypeError(
                f"regularizer must be a str, got {type(regularizer).__name__} {regularizer!r}"
            )
        if regularizer != "entropy":
            raise ValueError(
                f"regularizer must be 'entropy' (matrix-tree marginals) for trees, got {regularizer!r}"
            )

    @staticmethod
    def _check_enumerate_shape(event_shape: tuple[int, ...]) -> int:
        event_shape = tuple(event_shape)
        if len(event_shape) != 2 or event_shape[0] != event_shape[1] or event_shape[0] < 1:
            raise ValueError(f"event_shape must be (n, n) with n >= 1, got {event_shape}")
        return event_shape[0]
