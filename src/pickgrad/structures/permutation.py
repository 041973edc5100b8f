"""``Permutation()``: assign each of s rows a distinct one of n columns (a matching), s <= n."""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from pickgrad._validation import check_positive_int
from pickgrad.noise import sampling_dtype
from pickgrad.structures.base import Structure

__all__ = ["Permutation", "log_sinkhorn"]


def log_sinkhorn(log_alpha: Tensor, *, tol: float = 1e-5, max_iter: int = 100) -> Tensor:
    """Log-domain Sinkhorn: the log of the matrix ``exp(log_alpha_ij + f_i + g_j)`` with rows
    summing to 1 and columns to at most 1.

    Square ``(n, n)``: alternately normalise columns and rows until the column sums are within
    ``tol`` of 1 (or ``max_iter`` rounds), ending on the rows, so rows sum to 1 exactly and columns
    to 1 within ``tol``. Rectangular ``(s, n)`` with s < n: a slack row of mass ``n - s`` is
    appended (score 0; any constant gives the same result) and the ``(s + 1, n)`` problem with row
    masses ``(1, ..., 1, n - s)`` and column masses 1 is balanced, so the s real rows sum to 1
    and every column to at most 1 (partial transport). The slack row is dropped from the result.

    Differentiable by unrolling: autograd follows every iteration actually run (memory grows
    with the iteration count), so the gradient is exact for the returned matrix.

    Args:
        log_alpha: ``(..., s, n)`` with s <= n (scores divided by the temperature).
        tol: stop once every column sum is within ``tol`` of its target (0: always run
            ``max_iter`` rounds).
        max_iter: cap on the rounds (one column and one row normalisation each).

    Returns:
        ``(..., s, n)`` log of the balanced matrix.

    Reference: Sinkhorn, 1964; Cuturi, "Sinkhorn Distances", 2013; Mena et al., "Learning
    Latent Permutations with Gumbel-Sinkhorn Networks", 2018.

    Example:
        >>> p = log_sinkhorn(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])).exp()
        >>> p.sum(-1), bool((p.sum(-2) <= 1 + 1e-5).all())
        (tensor([1., 1.]), True)
    """
    s, n = log_alpha.shape[-2:]
    log_p = log_alpha
    row_mass: Tensor | None = None
    if s < n:
        slack = torch.zeros_like(log_alpha[..., :1, :])
        log_p = torch.cat([log_alpha, slack], dim=-2)
        row_mass = torch.zeros(s + 1, 1, dtype=log_alpha.dtype, device=log_alpha.device)
        row_mass[-1] = math.log(n - s)

    def normalise_rows(log_p: Tensor) -> Tensor:
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        return log_p if row_mass is None else log_p + row_mass

    log_p = normalise_rows(log_p)
    for _ in range(max_iter):
        log_columns = torch.logsumexp(log_p, dim=-2, keepdim=True)
        if tol > 0 and bool((torch.expm1(log_columns).abs() <= tol).all()):
            break
        log_p = normalise_rows(log_p - log_columns)
    return log_p[..., :s, :]


#: Batch items per worker thread below which the assignments are solved in the calling thread.
_ITEMS_PER_THREAD = 64
_executor: ThreadPoolExecutor | None = None


def _solve_range(cost: np.ndarray, columns: np.ndarray, start: int, stop: int) -> None:
    from scipy.optimize import linear_sum_assignment

    for item in range(start, stop):
        columns[item] = linear_sum_assignment(cost[item])[1]


def _solve_assignments(cost: np.ndarray, columns: np.ndarray) -> None:
    """Fill ``columns[b]`` with the minimum-cost assignment of ``cost[b]`` for every b.

    scipy's solver releases the GIL, so large batches are split over up to
    ``torch.get_num_threads()`` threads; each item is solved exactly as in a plain loop, so the
    result does not depend on the split.
    """
    global _executor
    batch = cost.shape[0]
    workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, batch // _ITEMS_PER_THREAD))
    if workers == 1:
        _solve_range(cost, columns, 0, batch)
        return
    if _executor is None or _executor._max_workers < workers:
        _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pickgrad-lsa")
    bounds = np.linspace(0, batch, workers + 1).astype(int)
    jobs = [
        _executor.submit(_solve_range, cost, columns, int(start), int(stop))
        for start, stop in itertools.pairwise(bounds)
    ]
    for job in jobs:
        job.result()


class Permutation(Structure):
    """A matching of s rows to distinct columns out of n: ``x[i, j] = 1`` iff row i gets column j.

    Scores ``(..., s, n)`` with s <= n; each row of ``x`` has exactly one 1 and each column at
    most one (a permutation matrix when s == n). ``(B, S, N)`` scores pick S distinct items out
    of N for each of B examples.

    * ``argmax``: an exact linear assignment maximising ``<scores, x>``, by
      ``scipy.optimize.linear_sum_assignment`` (Jonker-Volgenant) on each batch item, large
      batches split over up to ``torch.get_num_threads()`` CPU threads. On a GPU the scores are
      copied to the CPU, solved there and the result copied back. Ties are broken
      deterministically (the same input gives the same output).
    * ``relax(scores, tau)``: log-domain Sinkhorn of ``scores / tau`` (entropy regulariser), with
      keyword options ``tol`` (column-sum tolerance; default 1e-5, 1e-10 in float64) and
      ``max_iter`` (default 100). Rectangular scores get a slack row (partial transport), so
      rows sum to 1 and columns to at most 1; the entropy then also counts the capacity each
      column leaves unused (with one row this is ``sigmoid((scores - nu) / tau)`` summing to 1,
      the ``"binary-entropy"`` relaxation of ``Subset(1)``). Differentiable by unrolling the
      iterations.
      Applied to ``scores + G`` this is Gumbel-Sinkhorn (``gumbel-relaxed``, ``st-gumbel``).
    * ``enumerate((s, n))``: all n! / (n - s)! matchings.
    * ``log_partition`` would be the log-permanent of ``exp(scores / tau)``, #P-hard to compute,
      so it raises ``NotImplementedError``; neither the law of the perturbed argmax nor a
      conditional Gumbel sampler is available (``reinforce`` uses the Gumbel utilities;
      ``gumbel-rao`` is not available).

    Reference: Mena, Belanger, Linderman & Snoek, "Learning Latent Permutations with
    Gumbel-Sinkhorn Networks", ICLR 2018.

    Example:
        >>> s = torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.5, 0.0]])
        >>> Permutation().argmax(s)
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
        >>> Permutation().relax(s, tau=0.05).round()
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
    """

    event_dims = 2

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        s, n = event_shape
        if s > n:
            raise ValueError(
                f"Permutation matches s rows to distinct columns, so needs s <= n; {name} has "
                f"event shape (s, n) = {event_shape} with s={s} > n={n}"
            )

    def _argmax(self, scores: Tensor) -> Tensor:
        s, n = scores.shape[-2:]
        # One conversion for the whole batch, in numpy (torch's parallel kernels would compete
        # with the solver threads); the solver works in float64 on a cost to minimise.
        host = scores.detach().cpu()
        if host.dtype in (torch.float16, torch.bfloat16):
            host = host.float()
        cost = np.negative(host.numpy(), dtype=np.float64).reshape(-1, s, n)
        columns = np.empty((cost.shape[0], s), dtype=np.int64)
        _solve_assignments(cost, columns)
        index = torch.from_numpy(columns).to(scores.device).reshape(*scores.shape[:-1], 1)
        return torch.zeros_like(scores).scatter_(-1, index, 1.0)

    def _relax(
        self,
        scores: Tensor,
        tau: float,
        regularizer: str = "entropy",
        *,
        tol: float | None = None,
        max_iter: int = 100,
    ) -> Tensor:
        if regularizer != "entropy":
            raise ValueError(
                f"regularizer must be 'entropy' (Sinkhorn) for Permutation, got {regularizer!r}"
            )
        check_positive_int(max_iter, name="max_iter")
        work = sampling_dtype(scores.dtype)
        if tol is None:
            tol = 1e-10 if work == torch.float64 else 1e-5
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        z = scores.to(work)
        log_p = log_sinkhorn(z if tau == 1.0 else z / tau, tol=tol, max_iter=max_iter)
        return log_p.exp().to(scores.dtype)

    def _log_partition(self, scores: Tensor, tau: float) -> Tensor:
        raise NotImplementedError(
            "Permutation.log_partition would be the log of the permanent of exp(scores / tau), "
            "which is #P-hard to compute; it is not provided"
        )

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Every matching of s rows to distinct columns of n: ``(n! / (n - s)!, s, n)``, in
        lexicographic order of the column assigned to each row.

        Example:
            >>> Permutation().enumerate((1, 2))
            tensor([[[1., 0.]],
            <BLANKLINE>
                    [[0., 1.]]])
        """
        event_shape = tuple(event_shape)
        if len(event_shape) != 2 or min(event_shape) < 1:
            raise ValueError(f"event_shape must be (s, n) with s, n >= 1, got {event_shape}")
        self._check_event_shape(event_shape, name="event_shape")
        s, n = event_shape
        columns = torch.tensor(list(itertools.permutations(range(n), s)), device=device)
        hot = torch.zeros(columns.shape[0], s, n, dtype=dtype, device=device)
        return hot.scatter_(-1, columns[..., None], 1.0)
