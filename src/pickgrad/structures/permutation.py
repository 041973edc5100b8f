"""``Permutation()``: assign each of s rows a distinct one of n columns (a matching), s <= n."""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad._validation import check_positive_int, compute_dtype
from pickgrad.structures._assignment import solve_assignment
from pickgrad.structures._masks import fill_masked
from pickgrad.structures._sinkhorn import DEFAULT_MAX_ITER, MIN_TOL, sinkhorn
from pickgrad.structures.base import Structure

__all__ = ["Permutation", "log_sinkhorn"]


def log_sinkhorn(
    log_alpha: Tensor, *, tol: float = 1e-5, max_iter: int = DEFAULT_MAX_ITER
) -> Tensor:
    """The log of the entropic matching of ``log_alpha`` (scores already divided by tau).

    ``log(P)`` with ``P = exp(log_alpha_ij + f_i + g_j)``, rows summing to 1 and columns to 1
    within ``tol`` (to at most 1 when s < n: a slack row of mass n - s takes the spare
    capacity). The same solver as ``Permutation().relax(log_alpha, 1.0, tol=tol,
    max_iter=max_iter)``, whose docstring describes the method, the warning and the backward.

    Args:
        log_alpha: ``(..., s, n)`` with s <= n.
        tol: tolerance on the column sums (>= ``MIN_TOL``).
        max_iter: cap on the Newton steps.

    Returns:
        ``(..., s, n)`` log of the balanced matrix.

    Example:
        >>> p = log_sinkhorn(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])).exp()
        >>> p.sum(-1), bool((p.sum(-2) <= 1 + 1e-5).all())
        (tensor([1., 1.]), True)
    """
    _check_sinkhorn_options(log_alpha.dtype, tol, max_iter)
    return sinkhorn(log_alpha, 1.0, tol=tol, max_iter=max_iter).log()


def _check_sinkhorn_options(dtype: torch.dtype, tol: Any, max_iter: Any) -> None:
    check_positive_int(max_iter, name="max_iter")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a positive float, got {type(tol).__name__} {tol!r}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite float > 0, got {tol!r}")
    if tol < MIN_TOL:
        raise ValueError(
            f"tol must be >= {MIN_TOL:.1e}: the Sinkhorn solver runs in float64, whose sums "
            f"cannot be balanced more closely; got tol={tol!r}"
        )


class Permutation(Structure):
    """A matching of s rows to distinct columns out of n: ``x[i, j] = 1`` iff row i gets column j.

    Scores ``(..., s, n)`` with s <= n; each row of ``x`` has exactly one 1 and each column at
    most one (a permutation matrix when s == n). ``(B, S, N)`` scores pick S distinct items out
    of N for each of B examples.

    * ``argmax``: an exact linear assignment maximising ``<scores, x>``, by
      ``scipy.optimize.linear_sum_assignment`` (Jonker-Volgenant) on each batch item on the CPU,
      large batches split over up to ``torch.get_num_threads()`` threads (faster there than
      pickgrad's batched torch solver at every measured size); on CUDA, by the batched exact
      solver in torch on the device (successive shortest augmenting paths over the whole
      batch; see ``pickgrad.structures._assignment``). Ties are broken deterministically (the
      same input gives the same output).
    * ``relax(scores, tau)``: the entropic matching (Sinkhorn) of ``scores / tau``,
      ``P_ij = exp(scores_ij / tau + f_i + g_j)`` with rows summing to 1 and columns to 1,
      solved to a tolerance at every tau: rows sum to 1 to rounding and columns within ``tol``
      in the float64 solver (casting to the returned dtype moves a sum by at most that dtype's
      eps, since the entries are >= 0 and sum to 1). Rectangular scores get a slack row
      (partial transport), so columns sum to at most 1; the entropy then also counts the
      capacity each column leaves unused (with one row this is
      ``sigmoid((scores - nu) / tau)`` summing to 1, the ``"binary-entropy"`` relaxation of
      ``Subset(1)``). Shifting any row of ``scores`` (and any column when s == n; with s < n the
      slack row's score is fixed) by a constant leaves it unchanged;
      scores are shifted by their row and column maxima first, so large offsets and exact ties
      stay exact.

      Method: every dtype is solved in float64 (float16 / bfloat16 / float32 results are cast
      back). The temperature is annealed from the scores' spread down to ``tau`` (epsilon
      scaling, a factor 4 per stage); each stage runs 10 Sinkhorn rounds and then damped Newton
      steps on the dual (a Sinkhorn-Newton method), since plain alternating normalisations
      need thousands of rounds at small tau. The solve stops as soon as the sums are within
      ``tol`` (the error is read back every 2 Newton steps). If ``max_iter`` Newton steps do
      not reach it, a ``RuntimeWarning`` reports the error reached (attributed to the line
      calling ``relax``; Python's default filter shows a given message once per line). With
      value checks off (``pickgrad.set_validation(False)``, or under ``torch.compile``) nothing
      is read back to the host: a fixed schedule of exactly ``max_iter`` Newton steps runs
      (8 annealing stages of 2 steps, then the last stage), with no early stop and no
      warning; it converges on every case tested, but this is measured, not checked.

      Backward: implicit differentiation of the optimality conditions of the returned matrix
      (one ``m x m`` linear solve per item, m = s, or s + 1 with the slack row); it keeps one
      float64 ``(..., m, n)`` matrix, whatever the number of steps. Double backward is not
      supported.

      Options: ``tol`` (column-sum tolerance, a float >= ``MIN_TOL`` = 2.2e-13; default 1e-5,
      1e-10 for float64 scores), ``max_iter`` (cap on Newton steps, a positive int; default
      40) and ``regularizer`` (only ``"entropy"``).
      Applied to ``scores + G`` this is Gumbel-Sinkhorn (``gumbel-relaxed``, ``st-gumbel``).
    * ``enumerate((s, n))``: all n! / (n - s)! matchings.
    * ``log_partition`` would be the log-permanent of ``exp(scores / tau)``, #P-hard to compute,
      so ``supports("log_partition")`` is False and it raises ``NotImplementedError``; neither
      the law of the perturbed argmax nor a conditional Gumbel sampler is available
      (``reinforce`` uses the Gumbel utilities;
      ``gumbel-rao`` is not available, see below).

    ``gumbel-rao`` is not available: there is no sampler of the Gumbel noise given the
    perturbed argmax. An assignment x is optimal for utilities u exactly when dual potentials
    certify it: some ``f_i``, ``g_j`` with reduced costs ``u_ij - f_i - g_j <= 0`` everywhere and
    ``= 0`` on x's entries; eliminating the potentials, the condition is that every alternating
    cycle (and, when s < n, every alternating path to an unused column) gains nothing, a sum of
    utilities of chosen entries against a sum of unchosen ones. Considered: (1) the two-block
    Gibbs sampler of ``SpanningTree``, whose blocks are products of truncated Gumbels because the
    cycle property constrains one chosen and one unchosen edge at a time; here the constraints
    couple several entries through each cycle, so given the chosen entries the unchosen ones
    live in a polytope, not a box, are not conditionally independent, and neither block update
    is a product of truncated Gumbels. (2) Single-site Gibbs, which is sound: given every other
    entry, an entry's feasible set is a half-line ending where the best assignment forced to
    contain it (for an unchosen entry) or to avoid it (for a chosen one) ties with x, and that
    end is a shortest alternating path in the residual graph of x under the optimal dual's
    reduced costs. But a sweep is ``s * n`` sequential updates per graph, each needing a
    shortest-path computation (O(n^2), or updated potentials after the entry moves): O(s n^3)
    sequential work per sweep, without the batching over entries that makes the tree sampler
    affordable, so about 2500 dependent shortest-path solves per sweep at 50 x 50, and several
    sweeps of burn-in per draw. It is not implemented.

    References: Mena, Belanger, Linderman & Snoek, "Learning Latent Permutations with
    Gumbel-Sinkhorn Networks", ICLR 2018; Schmitzer, "Stabilized Sparse Scaling Algorithms for
    Entropy Regularized Transport Problems", 2019; Brauer et al., "A Sinkhorn-Newton method for
    entropic optimal transport", 2017.

    Masks: ``mask=`` (True = allowed) or ``-inf`` scores forbid couplings: the argmax is the
    best matching over allowed couplings (they are given finite scores far below every other,
    which the exact solvers need); Sinkhorn solves with those scores and sets the masked
    couplings to exactly 0 (moving the sums by about exp(-1500)), so they get zero mass and
    zero gradient. No matching of every row to a distinct allowed column is a ``ValueError``
    (a value check).

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
    relax_option_names: ClassVar[tuple[str, ...]] = ("regularizer", "max_iter", "tol")
    unsupported: ClassVar[dict[str, str]] = {
        "log_partition": (
            "it would be the log of the permanent of exp(scores / tau), which is #P-hard to "
            "compute (Valiant, 1979)"
        )
    }

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        s, n = event_shape
        if s > n:
            raise ValueError(
                f"Permutation matches s rows to distinct columns, so needs s <= n; {name} has "
                f"event shape (s, n) = {event_shape} with s={s} > n={n}"
            )

    def _argmax(self, scores: Tensor) -> Tensor:
        # In float64: the fill lies (s + 1) spreads below the scores, beyond float16's range.
        wide = scores.to(torch.float64)
        filled, _ = fill_masked(wide, lambda spread: (scores.shape[-2] + 1) * spread + 1)
        return solve_assignment(filled).to(scores.dtype)

    def _infeasible_reason(self) -> str:
        return "no matching of every row to a distinct allowed column"

    def _relax(
        self,
        scores: Tensor,
        tau: float,
        regularizer: str = "entropy",
        *,
        tol: float | None = None,
        max_iter: int = DEFAULT_MAX_ITER,
    ) -> Tensor:
        if regularizer != "entropy":
            raise ValueError(
                f"regularizer must be 'entropy' (Sinkhorn) for Permutation; valid values: "
                f"'entropy'; got {regularizer!r}"
            )
        if tol is None:
            tol = 1e-10 if compute_dtype(scores.dtype) == torch.float64 else 1e-5
        _check_sinkhorn_options(scores.dtype, tol, max_iter)
        return sinkhorn(scores, tau, tol=float(tol), max_iter=max_iter)

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
