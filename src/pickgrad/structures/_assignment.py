"""Exact linear assignment: a batched shortest-augmenting-path solver in torch, and a dispatcher.

``linear_assignment`` solves every item of a batch at once with the same tensor code on any
device, so on a GPU the scores never leave it; ``solve_assignment`` picks it or a loop of
``scipy.optimize.linear_sum_assignment`` by device and size, from measurement
(``benchmarks/bench_assignment.py``). ``Permutation.argmax`` calls ``solve_assignment``.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

__all__ = ["linear_assignment", "solve_assignment"]

#: How many Dijkstra steps run between two checks of "every item has reached a free column" on
#: a non-CPU device (each check is a device-to-host sync; surplus steps are masked no-ops).
_CHECK_EVERY = 8


def linear_assignment(scores: Tensor) -> Tensor:
    """The 0/1 matching maximising ``<scores, x>``, solved for a whole batch at once in torch.

    Finds ``x`` in ``{0, 1}^(s x n)`` with every row summing to 1 and every column to at most 1
    that maximises ``sum_ij scores_ij x_ij`` (s <= n), for each batch item, with the same code on
    CPU and CUDA and no loop over the batch (the loops run over rows and Dijkstra steps; every
    step is one batched tensor operation; items that finish early are masked).

    Method: successive shortest augmenting paths with dual potentials (Jonker & Volgenant,
    1987; in the rectangular form of Crouse, 2016, as in scipy). In float64, on the cost
    ``c = max_j scores_ij - scores_ij >= 0`` (a per-row shift: every row holds exactly one 1, so
    the optimum does not move; when s == n the columns are shifted to minimum 0 too, then the
    rows again). Potentials start at ``u = 0`` (the row minima) and ``v = 0``;
    every row whose cheapest column (first one on ties) is claimed by no lower row is matched
    greedily on a tight edge. Each remaining row is then added by a Dijkstra search from it
    over reduced costs ``c_ij - u_i - v_j`` to the nearest free column, followed by the dual
    update and the augmentation along the path.

    Exactness: the invariants are dual feasibility (``u_i + v_j <= c_ij`` for all i, j, and
    ``v_j <= 0`` with ``v_j < 0`` only on matched columns) and tightness on matched edges. They
    hold after the greedy start (``u = v = 0``, matched edges have ``c_ij = 0``) and every
    shortest-path augmentation preserves them (the standard argument for successive shortest
    paths); once all s rows are matched they are the complementary slackness conditions of
    the assignment LP (rows ``= 1``, columns ``<= 1``), so the matching is optimal. The
    arithmetic is the same float64 arithmetic as scipy's (the input is cast exactly), so the
    objective matches scipy's to float64 rounding of the potentials; the tests check it on
    ties, integer scores, magnitudes of 1e6 and spreads of 1e-6.

    Ties: when several matchings are optimal, the one returned may differ from scipy's (both
    are deterministic); the objective is the same. ``-inf`` scores are not supported (they are
    excluded upstream); NaN and ``+inf`` are rejected by the caller's value checks.

    Args:
        scores: ``(*batch, s, n)`` floating, s <= n, finite; any device.

    Returns:
        ``(*batch, s, n)`` 0/1 in the dtype and on the device of ``scores``.

    References: Jonker & Volgenant, "A shortest augmenting path algorithm for dense and sparse
    linear assignment problems", Computing 1987; Crouse, "On implementing 2D rectangular
    assignment algorithms", IEEE TAES 2016.

    Example:
        >>> linear_assignment(torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.5, 0.0]]))
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
    """
    s, n = _check_scores(scores)
    x = torch.zeros_like(scores)
    if x.numel() == 0:
        return x
    check_every = 1 if scores.device.type == "cpu" else _CHECK_EVERY
    columns = _shortest_augmenting_paths(scores.detach().reshape(-1, s, n), check_every)
    return x.scatter_(-1, columns.reshape(*scores.shape[:-1], 1), 1.0)


def _check_scores(scores: Tensor) -> tuple[int, int]:
    """Shape and dtype checks (no tensor values are read); returns ``(s, n)``."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() < 2:
        raise ValueError(f"scores must have shape (*batch, s, n), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating, got dtype {scores.dtype}")
    s, n = scores.shape[-2:]
    if s > n:
        raise ValueError(f"scores needs s <= n, got shape (*batch, s, n) = {tuple(scores.shape)}")
    return s, n


def _shortest_augmenting_paths(scores: Tensor, check_every: int = 1) -> Tensor:
    """``(B, s, n)`` scores -> ``(B, s)`` long: the column of each row in a maximum matching.

    ``check_every``: loop steps between two reads of "every item is done" (a host sync); the
    result does not depend on it (surplus steps are masked no-ops)."""
    batch, s, n = scores.shape
    device = scores.device
    scores = scores.to(torch.float64)
    cost = scores.amax(-1, keepdim=True) - scores
    if s == n:
        # Square: every column holds exactly one 1 too, so column shifts keep the optimum; the
        # column reduction of Jonker & Volgenant gives the greedy start more tight edges
        # (about 25% fewer Dijkstra steps measured at n = 100 and 300).
        cost = cost - cost.amin(-2, keepdim=True)
        cost = cost - cost.amin(-1, keepdim=True)
    rows = torch.arange(s, device=device)
    items = torch.arange(batch, device=device)

    # Greedy start on tight edges: a row takes its first zero-cost column unless a lower row
    # with the same first zero-cost column takes it.
    first = cost.argmin(-1)
    claimant = torch.full((batch, n), s, dtype=torch.long, device=device)
    claimant.scatter_reduce_(1, first, rows.expand(batch, s), reduce="amin")
    matched = claimant.gather(1, first) == rows
    col4row = torch.where(matched, first, -1)
    row4col = torch.where(claimant < s, claimant, -1)
    u = torch.zeros(batch, s, dtype=torch.float64, device=device)
    v = torch.zeros(batch, n, dtype=torch.float64, device=device)

    # The unmatched rows of each item, in index order, and how many there are.
    order = torch.argsort(matched.long() * s + rows, dim=1)
    unmatched = (~matched).sum(1)
    n_rounds = int(unmatched.max())
    for k in range(n_rounds):
        active = k < unmatched
        current = order[:, min(k, s - 1)]
        _add_row(cost, u, v, row4col, col4row, current, active, items, check_every)
    return col4row


def _add_row(
    cost: Tensor,
    u: Tensor,
    v: Tensor,
    row4col: Tensor,
    col4row: Tensor,
    current: Tensor,
    active: Tensor,
    items: Tensor,
    check_every: int,
) -> None:
    """Match row ``current[b]`` of every item with ``active[b]``: one batched Dijkstra search to
    the nearest free column, then the dual update and the augmentation (all in place)."""
    batch, s, n = cost.shape
    device = cost.device
    # Gathers and scatters along dim 1 (advanced indexing is several times slower on CPU); the
    # step is written in few kernels, since at small sizes their launch cost dominates.
    flat_cost = cost.reshape(batch * s, n)
    offset = (items * s)[:, None]
    inf = torch.tensor(float("inf"), dtype=cost.dtype, device=device)
    shortest = torch.full((batch, n), float("inf"), dtype=cost.dtype, device=device)
    path = torch.zeros(batch, n, dtype=torch.long, device=device)
    unscanned = torch.ones(batch, n, dtype=torch.bool, device=device)
    # 2 for a free column, 1 for a matched one: argmax of this times "nearest" prefers free.
    priority = (row4col < 0).to(torch.uint8) + 1
    min_val = torch.zeros(batch, 1, dtype=cost.dtype, device=device)
    sink = torch.zeros(batch, 1, dtype=torch.long, device=device)
    row = current[:, None].clone()
    searching = active[:, None].clone()
    step = 0
    while True:
        reduced = flat_cost.index_select(0, (offset + row).view(-1)) - v
        reduced += min_val - u.gather(1, row)
        better = (reduced < shortest) & unscanned
        shortest = torch.where(better, reduced, shortest)
        path = torch.where(better, row, path)
        open_cost = torch.where(unscanned, shortest, inf)
        lowest = open_cost.amin(1, keepdim=True)
        # Among the nearest open columns, a free one ends the search now (first index on ties).
        column = ((open_cost == lowest) * priority).argmax(1, keepdim=True)
        min_val = torch.where(searching, lowest, min_val)
        unscanned.scatter_(1, column, unscanned.gather(1, column) & ~searching)
        owner = row4col.gather(1, column)
        reached = searching & (owner < 0)
        sink = torch.where(reached, column, sink)
        searching = searching & ~reached
        row = torch.where(searching, owner, row)
        step += 1
        if step % check_every == 0 and not bool(searching.any()):
            break

    # Dual update: the scanned columns, and the rows matched to them (the rows the search went
    # through), move by min_val minus their distance; the current row by min_val.
    scanned = ~unscanned & active[:, None]
    gain = torch.where(scanned, min_val - shortest, 0.0)
    row_gain = torch.where(col4row >= 0, gain.gather(1, col4row.clamp(min=0)), 0.0)
    row_gain.scatter_(1, current[:, None], torch.where(active[:, None], min_val, 0.0))
    u += row_gain
    v -= gain

    # Augment along the path from the sink back to the current row (finished items: no-ops).
    column = sink
    step = 0
    pending = active[:, None].clone()
    target = current[:, None]
    while True:
        row = path.gather(1, column)
        row4col.scatter_(1, column, torch.where(pending, row, row4col.gather(1, column)))
        previous = col4row.gather(1, row)
        col4row.scatter_(1, row, torch.where(pending, column, previous))
        pending = pending & (row != target)
        column = torch.where(pending, previous, column)
        step += 1
        if step % check_every == 0 and not bool(pending.any()):
            break


#: Batch items per worker thread below which the scipy loop runs in the calling thread.
_ITEMS_PER_THREAD = 64
_executor: ThreadPoolExecutor | None = None


def _scipy_range(cost: np.ndarray, columns: np.ndarray, start: int, stop: int) -> None:
    from scipy.optimize import linear_sum_assignment

    for item in range(start, stop):
        columns[item] = linear_sum_assignment(cost[item])[1]


def scipy_assignment(scores: Tensor) -> Tensor:
    """The same result as :func:`linear_assignment` by ``scipy.optimize.linear_sum_assignment``
    on each batch item (on the host, float64), large batches split over up to
    ``torch.get_num_threads()`` threads (scipy releases the GIL; each item is solved as in a
    plain loop, so the split does not change the result).

    Args:
        scores: ``(*batch, s, n)`` floating, s <= n.

    Returns:
        ``(*batch, s, n)`` 0/1 in the dtype and on the device of ``scores``.

    Example:
        >>> scipy_assignment(torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.5, 0.0]]))
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
    """
    global _executor
    s, n = _check_scores(scores)
    x = torch.zeros_like(scores)
    if x.numel() == 0:
        return x
    host = scores.detach().cpu()
    if host.dtype in (torch.float16, torch.bfloat16):
        host = host.float()
    # One conversion in numpy (torch's parallel kernels would compete with the solver threads).
    cost = np.negative(host.numpy(), dtype=np.float64).reshape(-1, s, n)
    columns = np.empty((cost.shape[0], s), dtype=np.int64)
    batch = cost.shape[0]
    workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, batch // _ITEMS_PER_THREAD))
    if workers == 1:
        _scipy_range(cost, columns, 0, batch)
    else:
        if _executor is None or _executor._max_workers < workers:
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pickgrad-lsa")
        bounds = np.linspace(0, batch, workers + 1).astype(int)
        jobs = [
            _executor.submit(_scipy_range, cost, columns, int(start), int(stop))
            for start, stop in itertools.pairwise(bounds)
        ]
        for job in jobs:
            job.result()
    index = torch.from_numpy(columns).to(scores.device).reshape(*scores.shape[:-1], 1)
    return x.scatter_(-1, index, 1.0)


def solve_assignment(scores: Tensor) -> Tensor:
    """The maximum-score matching of every batch item by the faster exact solver for its device
    and size: :func:`linear_assignment` (batched, on the scores' device) or
    :func:`scipy_assignment` (the scipy loop on the host).

    Both are exact (the same optimal objective; on ties the matchings may differ). Chosen from
    ``benchmarks/bench_assignment.py``: on CUDA the batched solver (no copy to the host and
    back; not yet measured on a GPU: ``benchmarks/gpu_assignment.sh``); on every other device
    the scipy loop. On the CPU the batched solver was slower at every size measured, so there
    is no crossover: 6-11x the scipy loop's time at (1024, 20, 20), 11-23x at (64, 100, 100),
    15-17x at (4, 1000, 1000), 25x at (256, 6, 6), 350x at (1, 200, 200) (one and two
    threads, a shared, loaded 2-core machine). Its cost is one batched step of ~25 small
    kernels per Dijkstra step, and the steps of a batch are the longest search of its items
    (about 300 loop steps at (1024, 20, 20), 2,800 at (64, 100, 100)).

    Args:
        scores: ``(*batch, s, n)`` floating, s <= n, finite.

    Returns:
        ``(*batch, s, n)`` 0/1 in the dtype and on the device of ``scores``.

    Example:
        >>> solve_assignment(torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.5, 0.0]]))
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
    """
    _check_scores(scores)
    if scores.device.type == "cuda":
        return linear_assignment(scores)
    return scipy_assignment(scores)
