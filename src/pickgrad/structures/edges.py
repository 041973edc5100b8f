"""Edge-list scores of the complete graph: one score per vertex pair, in a fixed order.

An encoder that emits one score per vertex pair (``m = n (n - 1) / 2`` of them) lists the pairs
in the order of :func:`edge_index`: ``(i, j)`` with ``i < j``, the strict upper triangle read
row by row, so for n = 4 the order is (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3).
:func:`edges_to_matrix` and :func:`matrix_to_edges` convert between that list and the
``(n, n)`` matrix that :class:`~pickgrad.SpanningTree` reads; ``SpanningTree(edge_list=True)``
takes and returns edge lists directly.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["edge_index", "edges_to_matrix", "matrix_to_edges", "nodes_from_edges"]


def nodes_from_edges(m: int, *, name: str = "edge_scores") -> int:
    """The number of nodes n with ``n (n - 1) / 2 == m``; ``ValueError`` if there is none.

    Example:
        >>> nodes_from_edges(45)
        10
    """
    if isinstance(m, bool) or not isinstance(m, int):
        raise TypeError(f"the number of edges must be an int, got {type(m).__name__} {m!r}")
    n = (1 + math.isqrt(1 + 8 * m)) // 2
    if m < 1 or n * (n - 1) // 2 != m:
        below = (1 + math.isqrt(1 + 8 * max(m, 0))) // 2
        options = ", ".join(f"{k * (k - 1) // 2} (n={k})" for k in (below, below + 1) if k >= 2)
        raise ValueError(
            f"{name} must list one score per vertex pair, m = n (n - 1) / 2 entries with n >= 2 "
            f"(1, 3, 6, 10, ...), got m={m}; the nearest valid sizes are {options}"
        )
    return n


@functools.lru_cache(maxsize=64)
def _cached_index(n: int, device: torch.device) -> Tensor:
    return torch.triu_indices(n, n, offset=1, device=device)


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int number of nodes, got {type(n).__name__} {n!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2 nodes (a graph with an edge), got n={n}")
    return n


def edge_index(n: int, device: torch.device | str | None = None) -> Tensor:
    """The vertex pairs of the complete graph on n nodes, in edge-list order.

    Edge k is the pair ``(index[0, k], index[1, k])`` with ``index[0, k] < index[1, k]``: the
    strict upper triangle of an ``(n, n)`` matrix read row by row (row-major), as
    ``torch.triu_indices(n, n, 1)`` gives it.

    Args:
        n: number of nodes, >= 2.
        device: where to put the result (default: the CPU).

    Returns:
        ``(2, m)`` long tensor, ``m = n (n - 1) / 2``.

    Example:
        >>> edge_index(4)
        tensor([[0, 0, 0, 1, 1, 2],
                [1, 2, 3, 2, 3, 3]])
    """
    n = _check_n(n)
    return _cached_index(n, torch.device(device if device is not None else "cpu")).clone()


def _flat_upper(n: int, device: torch.device) -> Tensor:
    """Positions ``i * n + j`` of the edge-list pairs in a flattened ``(n, n)`` matrix."""
    index = _cached_index(n, device)
    return index[0] * n + index[1]


def edges_to_matrix(edge_scores: Tensor) -> Tensor:
    """Scores listed per edge ``(..., m)`` to the ``(..., n, n)`` matrix trees read.

    ``out[..., i, j] = edge_scores[..., k]`` for the k-th pair ``(i, j)`` of :func:`edge_index`
    (i < j); the lower triangle and the diagonal are 0. n is inferred from
    ``m = n (n - 1) / 2``. Differentiable (the gradient of ``out[i, j]`` goes to edge k; the
    zero entries send none).

    Args:
        edge_scores: ``(..., m)`` floating tensor.

    Returns:
        ``(..., n, n)`` tensor of the same dtype and device.

    Example:
        >>> edges_to_matrix(torch.tensor([1.0, 2.0, 3.0]))
        tensor([[0., 1., 2.],
                [0., 0., 3.],
                [0., 0., 0.]])
    """
    if not isinstance(edge_scores, Tensor):
        raise TypeError(f"edge_scores must be a torch.Tensor, got {type(edge_scores).__name__}")
    if edge_scores.dim() < 1:
        raise ValueError(
            "edge_scores must have a trailing edge dimension (..., m), got a 0-d tensor"
        )
    m = edge_scores.shape[-1]
    n = nodes_from_edges(m)
    batch = edge_scores.shape[:-1]
    flat = edge_scores.new_zeros((*batch, n * n))
    flat = flat.index_copy(-1, _flat_upper(n, edge_scores.device), edge_scores)
    return flat.reshape(*batch, n, n)


def matrix_to_edges(matrix: Tensor) -> Tensor:
    """The strict upper triangle of ``(..., n, n)`` as an edge list ``(..., m)``.

    ``out[..., k] = matrix[..., i, j]`` for the k-th pair ``(i, j)`` of :func:`edge_index`; the
    lower triangle and the diagonal are not read (for a symmetric adjacency, such as
    ``SpanningTree``'s output, that loses nothing). Differentiable.

    Args:
        matrix: ``(..., n, n)`` tensor, n >= 2.

    Returns:
        ``(..., m)`` tensor, ``m = n (n - 1) / 2``, of the same dtype and device.

    Example:
        >>> matrix_to_edges(torch.arange(9.0).reshape(3, 3))
        tensor([1., 2., 5.])
    """
    if not isinstance(matrix, Tensor):
        raise TypeError(f"matrix must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] < 2:
        raise ValueError(
            f"matrix must be square (..., n, n) with n >= 2, got shape {tuple(matrix.shape)}"
        )
    n = matrix.shape[-1]
    flat = matrix.reshape(*matrix.shape[:-2], n * n)
    return flat.index_select(-1, _flat_upper(n, matrix.device))
