"""Your own structure from an argmax function alone: ``pickgrad.structures.Solver``.

Any combinatorial solver that maximises a linear objective ``<scores, x>`` over a set of 0/1
tensors (a knapsack, shortest or longest paths, a matching with side constraints, a scheduling
heuristic's exact core) becomes a pickgrad structure, and then works with every estimator that
needs only ``argmax``: ``st``, ``perturbed``, ``imle``, ``blackbox`` and ``reinforce`` (which
uses the density of the Gumbel utilities, unbiased for any solver).

Estimators that need ``relax`` (``st-gumbel``, ``gumbel-relaxed``, ...) or a conditional
sampler (``gumbel-rao``) are refused with a clear error naming the missing capability. Give
``solutions=`` (every solution, for tiny sizes) to enable ``enumerate``, and so exact
diagnostics through :func:`pickgrad.exact_gradient`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pickgrad.structures.base import Structure

__all__ = ["Solver", "monotone_path_argmax"]


class Solver(Structure):
    """A structure given by its exact solver ``argmax_fn(scores) -> x``.

    Args:
        argmax_fn: maps scores ``(*batch, *event)`` to a maximiser ``x`` of ``<scores, x>`` of the
            same shape (0/1 values; any dtype, cast to the scores' dtype). It is always called
            under ``torch.no_grad()`` on detached scores. With ``batched=False`` it receives one
            instance ``(*event)`` at a time.
        event_dims: how many trailing dimensions one instance occupies (1 for a vector of items,
            2 for a matrix such as a grid or an adjacency matrix).
        batched: whether ``argmax_fn`` handles leading batch dimensions itself. If False, pickgrad
            loops over the flattened batch in Python (simple, but slow for large batches).
        solutions: optional ``(count, *event)`` tensor of every solution, for tiny sizes: enables
            ``enumerate`` (exact diagnostics) and an exact membership check of given ``x``.
        is_solution: optional function ``x (*batch, *event) -> bool (*batch,)``; without it (and
            without ``solutions``) a given ``x`` is only checked to be 0/1.
        name: shown in ``repr`` and in error messages.

    Masks: ``mask=`` (True = allowed) reaches ``argmax_fn`` as ``-inf`` scores, so a solver used
    with masks must handle ``-inf`` entries (never choose them while it can avoid them); with the
    value checks on, an ``x`` that uses a ``-inf`` entry is taken to mean that no allowed
    solution exists (``ValueError`` naming the batch entries). The estimators' gradients on
    masked entries are zero as for every structure.

    Example (the best monotone path through a grid, right or down steps from the top-left to the
    bottom-right cell, solved by dynamic programming):
        >>> import torch, pickgrad
        >>> from pickgrad.structures import Solver, monotone_path_argmax
        >>> paths = Solver(monotone_path_argmax, event_dims=2, name="MonotonePath")
        >>> scores = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 1.0, 4.0], [9.0, 0.0, 0.0]]])
        >>> paths.argmax(scores)[0]
        tensor([[1., 1., 0.],
                [0., 1., 1.],
                [0., 0., 1.]])
        >>> _ = scores.requires_grad_()
        >>> x = pickgrad.select(scores, paths, "imle", tau=1.0)
        >>> (x * torch.randn(3, 3)).sum().backward()
        >>> scores.grad.shape
        torch.Size([1, 3, 3])
    """

    def __init__(
        self,
        argmax_fn: Callable[[Tensor], Tensor],
        *,
        event_dims: int = 1,
        batched: bool = True,
        solutions: Tensor | None = None,
        is_solution: Callable[[Tensor], Tensor] | None = None,
        name: str = "Solver",
    ) -> None:
        if not callable(argmax_fn):
            raise TypeError(f"argmax_fn must be callable, got {type(argmax_fn).__name__}")
        if isinstance(event_dims, bool) or not isinstance(event_dims, int) or event_dims < 1:
            raise ValueError(f"event_dims must be an int >= 1, got {event_dims!r}")
        if solutions is not None:
            if not isinstance(solutions, Tensor) or solutions.dim() != event_dims + 1:
                raise ValueError(
                    f"solutions must be a (count, *event) tensor with {event_dims} event "
                    f"dimension(s), got {getattr(solutions, 'shape', type(solutions).__name__)}"
                )
            if solutions.shape[0] == 0:
                raise ValueError("solutions must hold at least one solution")
        if is_solution is not None and not callable(is_solution):
            raise TypeError(f"is_solution must be callable, got {type(is_solution).__name__}")
        self.argmax_fn = argmax_fn
        self.event_dims = event_dims  # type: ignore[misc]  # per instance here
        self.batched = batched
        self.solutions = solutions
        self.is_solution_fn = is_solution
        self.name = name

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        if self.solutions is not None and tuple(self.solutions.shape[1:]) != event_shape:
            raise ValueError(
                f"{name} has event shape {event_shape}, but the solutions given to {self.name} "
                f"have event shape {tuple(self.solutions.shape[1:])}"
            )

    def _argmax(self, scores: Tensor) -> Tensor:
        if self.batched:
            x = self.argmax_fn(scores)
        else:
            flat = scores.reshape(-1, *self.event_shape(scores))
            rows = [self.argmax_fn(instance) for instance in flat]
            x = (torch.stack(rows) if rows else torch.zeros_like(flat)).reshape(scores.shape)
        if not isinstance(x, Tensor) or x.shape != scores.shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"argmax_fn of {self.name} must return a tensor shaped like its scores "
                f"{tuple(scores.shape)}, got {got}"
            )
        return x.to(device=scores.device, dtype=scores.dtype)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        if self.solutions is None:
            raise NotImplementedError(
                f"{self.name} cannot enumerate its solutions: pass solutions= to Solver"
            )
        self._check_event_shape(tuple(event_shape), name="event_shape")
        return self.solutions.to(dtype=dtype, device=device)

    def _is_solution(self, x: Tensor) -> Tensor:
        dims = tuple(range(x.dim() - self.event_dims, x.dim()))
        binary = ((x == 0) | (x == 1)).all(dim=dims)
        if self.is_solution_fn is not None:
            return binary & self.is_solution_fn(x).to(torch.bool)
        if self.solutions is not None:
            table = self.solutions.to(dtype=x.dtype, device=x.device)
            flat = x.reshape(*x.shape[: x.dim() - self.event_dims], 1, -1)
            match = (flat == table.reshape(table.shape[0], -1)).all(-1).any(-1)
            return binary & match
        return binary

    def __repr__(self) -> str:
        return f"{self.name}()"

    def supports(self, capability: str) -> bool:
        if capability == "enumerate":
            return self.solutions is not None
        return super().supports(capability)


def monotone_path_argmax(scores: Tensor) -> Tensor:
    """The best monotone lattice path through an ``h x w`` grid, batched.

    A path starts at cell (0, 0), ends at (h-1, w-1) and steps right or down; ``x[i, j] = 1`` on
    its cells. Maximises ``sum_{(i, j) on path} scores[i, j]`` by dynamic programming over the
    anti-diagonals: ``h + w - 1`` vectorised steps forward, as many back. Ties go down first.

    Args:
        scores: ``(*batch, h, w)``.

    Returns:
        ``(*batch, h, w)`` 0/1 path indicator in the dtype of ``scores``.
    """
    *batch, h, w = scores.shape
    s = scores.reshape(-1, h, w)
    value = torch.full_like(s, float("-inf"))
    from_up = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    value[:, 0, 0] = s[:, 0, 0]
    for d in range(1, h + w - 1):
        i = torch.arange(max(0, d - w + 1), min(h, d + 1), device=s.device)
        j = d - i
        up = torch.where(i > 0, value[:, (i - 1).clamp_min(0), j], float("-inf"))
        left = torch.where(j > 0, value[:, i, (j - 1).clamp_min(0)], float("-inf"))
        take_up = up >= left
        value[:, i, j] = torch.where(take_up, up, left) + s[:, i, j]
        from_up[:, i, j] = take_up
    x = torch.zeros_like(s)
    rows = torch.full((s.shape[0],), h - 1, dtype=torch.long, device=s.device)
    cols = torch.full((s.shape[0],), w - 1, dtype=torch.long, device=s.device)
    every = torch.arange(s.shape[0], device=s.device)
    for _ in range(h + w - 1):
        x[every, rows, cols] = 1.0
        went_up = from_up[every, rows, cols]
        rows = rows - went_up.long()
        cols = cols - (~went_up).long()
        rows, cols = rows.clamp_min(0), cols.clamp_min(0)
    return x.reshape(*batch, h, w)
