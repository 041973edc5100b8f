"""Built-in problems for ``pickgrad diagnose``, and loading a user's problem.

* ``pick-the-five`` and ``critic-slots``: the demo tasks at a fixed initial network
  (:mod:`pickgrad.tasks`), scores ``(4, 1, 8)`` and ``(4, 4, 16)`` (65,536 joint picks each).
* ``bernoulli``: the toy of Tucker et al. 2017 (REBAR) and Grathwohl et al. 2018 (RELAX):
  minimise ``E[(b - 0.499)^2]`` with ``b = x[..., 1]`` of a 2-class ``OneHot``. Five independent
  copies with logits ``s = (0, theta)``, ``theta`` in (-2, -1, 0, 1, 2): the papers' start
  (``theta = 0``) and points on the way to the optimum (``b = 0``, ``theta -> -inf``). The exact
  gradient is tiny (``sigmoid'(theta) * (1 - 2 * 0.499)``), which is the point of the toy.
* ``polynomial-1.5``, ``polynomial-2``, ``polynomial-3``: the toy of the Gumbel-Rao (Paulus et
  al. 2021) and ReinMax (Liu et al. 2023) papers: 128 independent 2-class choices ``z_i``, loss
  ``mean_i |z_i - 0.45|^p``; logits drawn from N(0, 1). The loss keeps one entry per choice, so
  the exact gradient enumerates each choice on its own (not 2^128 joint picks).
* ``categorical-quadratic``: 10 slots of 10 classes, loss ``v^T A v + b^T v`` on the flattened
  picks ``v`` (A random symmetric, b random). Its 10^10 joint picks are not enumerated: with
  independent one-hot slots, ``E[v] = p`` (the softmaxes) and ``E[v v^T]`` is ``p_i p_j^T``
  between different slots and ``diag(p_i)`` within slot i, so ``E[loss]`` has a closed form.
* ``spanning-tree``: 2 graphs of 5 nodes, loss ``sum_i (deg_i(x) - 2)^2 + <c, x>`` (prefer
  path-like trees of cheap edges); quadratic in x, exact through the tree law (125 trees).
* ``arborescence``: 2 graphs of 4 nodes rooted at 0, loss ``sum_i (children_i(x) - 1)^2 + <c, x>``
  (prefer chain-like parses); quadratic in x, its gradient by :func:`conditional_gradient`
  (16 arborescences per graph, each coordinate's Gumbel integrated exactly).
* ``permutation``: 2 quadratic assignment problems of size 4, loss ``trace(F x D x^T)``
  (flows F between facilities, distances D between locations), its gradient by
  :func:`conditional_gradient` (24 permutations each).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pickgrad.diagnostics.exact import DEFAULT_MAX_ENUMERATION, ExactGradient, exact_gradient
from pickgrad.estimators.base import LossFn
from pickgrad.structures.arborescence import Arborescence
from pickgrad.structures.base import Structure
from pickgrad.structures.onehot import OneHot
from pickgrad.structures.permutation import Permutation
from pickgrad.structures.spanning_tree import SpanningTree

__all__ = [
    "PROBLEMS",
    "Problem",
    "arborescence",
    "bernoulli",
    "categorical_quadratic",
    "critic_slots",
    "load_problem",
    "permutation",
    "pick_the_five",
    "polynomial",
    "spanning_tree",
]


@dataclass(frozen=True)
class Problem:
    """A loss, the scores it is diagnosed at, and the structure.

    Attributes:
        name: shown in reports.
        loss_fn: maps ``(n, *scores.shape)`` samples to ``(n,)`` or ``(n, *batch)`` losses.
        scores: ``(*batch, *event)``, detached.
        structure: e.g. ``OneHot()``.
        description: one line on what it is.
        expected_loss: optional closed form ``scores -> E[loss]`` used for the exact gradient
            where enumeration is too large.
    """

    name: str
    loss_fn: LossFn
    scores: Tensor
    structure: Structure
    description: str = ""
    expected_loss: Callable[[Tensor], Tensor] | None = None

    def exact_gradient(self, max_enumeration: int = DEFAULT_MAX_ENUMERATION) -> ExactGradient:
        """:func:`pickgrad.exact_gradient` of this problem (the closed form if it has one)."""
        return exact_gradient(
            self.loss_fn,
            self.scores,
            self.structure,
            max_enumeration=max_enumeration,
            expected_loss=self.expected_loss,
        )


def _demo_task(name: str, description: str, seed: int) -> Problem:
    """A demo task of :mod:`pickgrad.tasks` at its fixed initial selector, as a Problem."""
    from pickgrad.tasks import TASKS  # lazy: the tasks import pickgrad.nn

    loss_fn, scores = TASKS[name](seed).diagnostic_problem()
    return Problem(name, loss_fn, scores.detach(), OneHot(), description)


def pick_the_five(seed: int = 0) -> Problem:
    """The *pick-the-five* demo task at a fixed initial selector; scores ``(4, 1, 8)``."""
    return _demo_task(
        "pick-the-five",
        "demo task at its initial network: 4 examples, pick the 5 among 8 items",
        seed,
    )


def critic_slots(seed: int = 0) -> Problem:
    """The *critic slots* demo task at a fixed initial selector; scores ``(4, 4, 16)``."""
    return _demo_task(
        "critic-slots",
        "demo task at its initial network: 4 examples, 4 interacting slots of 16 items",
        seed,
    )


def bernoulli(
    seed: int = 0, target: float = 0.499, thetas: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
) -> Problem:
    """Tucker et al.'s toy ``E[(b - target)^2]``, one copy per logit ``theta``; scores ``(T, 2)``.

    Deterministic (``seed`` is unused). Example:
        >>> problem = bernoulli()
        >>> problem.scores.shape, problem.loss_fn(OneHot().enumerate((5, 2))[:1]).shape
        (torch.Size([5, 2]), torch.Size([1, 5]))
    """
    scores = torch.tensor([[0.0, theta] for theta in thetas], dtype=torch.float64)

    def loss_fn(x: Tensor) -> Tensor:
        return (x[..., 1] - target) ** 2  # (n, T)

    return Problem(
        "bernoulli",
        loss_fn,
        scores,
        OneHot(),
        f"E[(b - {target})^2], b a 2-class OneHot, logits (0, theta) for theta in {thetas}",
    )


def polynomial(power: float, seed: int = 0, n_choices: int = 128, target: float = 0.45) -> Problem:
    """``mean_i |z_i - target|^power`` over ``n_choices`` independent binary ``z``; scores ``(n, 2)``.

    Example:
        >>> polynomial(2.0).scores.shape
        torch.Size([128, 2])
    """
    generator = torch.Generator().manual_seed(40_000 + seed)
    scores = torch.randn(n_choices, 2, generator=generator, dtype=torch.float64)

    def loss_fn(x: Tensor) -> Tensor:
        return (x[..., 1] - target).abs() ** power  # (n, n_choices); the mean is taken by estimate

    return Problem(
        f"polynomial-{power:g}",
        loss_fn,
        scores,
        OneHot(),
        f"mean over {n_choices} binary choices of |z - {target}|^{power:g}",
    )


def categorical_quadratic(seed: int = 0, n_slots: int = 10, n_classes: int = 10) -> Problem:
    """``v^T A v + b^T v`` with ``v`` the flattened ``(n_slots, n_classes)`` picks, in closed form.

    Example:
        >>> small = categorical_quadratic(n_slots=2, n_classes=3)
        >>> exact = exact_gradient(small.loss_fn, small.scores, small.structure)
        >>> torch.allclose(exact.gradient, small.exact_gradient().gradient)
        True
    """
    generator = torch.Generator().manual_seed(50_000 + seed)
    size = n_slots * n_classes
    scores = torch.randn(n_slots, n_classes, generator=generator, dtype=torch.float64)
    raw = torch.randn(size, size, generator=generator, dtype=torch.float64)
    matrix = (raw + raw.T) / (2 * size**0.5)
    linear = torch.randn(size, generator=generator, dtype=torch.float64)

    def loss_fn(x: Tensor) -> Tensor:
        v = x.reshape(*x.shape[:-2], size).to(matrix.dtype)
        losses: Tensor = ((v @ matrix) * v).sum(-1) + v @ linear  # (n,)
        return losses

    def expected_loss(s: Tensor) -> Tensor:
        p = torch.softmax(s.to(matrix.dtype), dim=-1)  # (S, C)
        flat = p.reshape(size)
        # E[v v^T]: p_i p_j^T across slots; diag(p_i) within slot i (one-hot: v_a v_b = 0, a != b).
        second = torch.outer(flat, flat) - torch.block_diag(*(torch.outer(row, row) for row in p))
        second = second + torch.diag(flat)
        value: Tensor = (matrix * second).sum() + flat @ linear
        return value

    return Problem(
        "categorical-quadratic",
        loss_fn,
        scores,
        OneHot(),
        f"{n_slots} slots of {n_classes} classes, random quadratic loss (closed-form expectation)",
        expected_loss=expected_loss,
    )


def spanning_tree(seed: int = 0, n_graphs: int = 2, n_nodes: int = 5) -> Problem:
    """Path-like trees of cheap edges: ``sum_i (deg_i(x) - 2)^2 + <c, x>``; scores ``(G, n, n)``.

    ``x`` is a symmetric adjacency, so ``deg_i = sum_j x[i, j]`` and ``<c, x>`` counts each
    edge's cost ``c[i, j] = c[j, i]`` twice. Exact gradient through the Kruskal law.

    Example:
        >>> problem = spanning_tree()
        >>> problem.scores.shape, problem.exact_gradient().exact
        (torch.Size([2, 5, 5]), True)
    """
    generator = torch.Generator().manual_seed(60_000 + seed)
    scores = torch.randn(n_graphs, n_nodes, n_nodes, generator=generator, dtype=torch.float64)
    raw = torch.rand(n_graphs, n_nodes, n_nodes, generator=generator, dtype=torch.float64)
    cost = (raw + raw.transpose(-1, -2)) / 2

    def loss_fn(x: Tensor) -> Tensor:
        degree = x.sum(-1)  # (n, G, n_nodes)
        return ((degree - 2) ** 2).sum(-1) + (x * cost).sum((-1, -2))  # (n, G)

    return Problem(
        "spanning-tree",
        loss_fn,
        scores,
        SpanningTree(),
        f"{n_graphs} graphs of {n_nodes} nodes: sum_i (deg_i - 2)^2 + edge costs (quadratic in x)",
    )


def arborescence(seed: int = 0, n_graphs: int = 2, n_nodes: int = 4) -> Problem:
    """Chain-like parses: ``sum_i (children_i(x) - 1)^2 + <c, x>``; scores ``(G, n, n)``, root 0.

    ``children_i = sum_j x[i, j]`` (``x[i, j] = 1``: arc i -> j). Its gradient is estimated by
    :func:`pickgrad.diagnostics.exact.conditional_gradient` (no closed-form law).

    Example:
        >>> problem = arborescence()
        >>> problem.scores.shape, problem.loss_fn(Arborescence().enumerate((4, 4))[:3, None]
        ...                                       .expand(3, 2, 4, 4)).shape
        (torch.Size([2, 4, 4]), torch.Size([3, 2]))
    """
    generator = torch.Generator().manual_seed(70_000 + seed)
    scores = torch.randn(n_graphs, n_nodes, n_nodes, generator=generator, dtype=torch.float64)
    cost = torch.rand(n_graphs, n_nodes, n_nodes, generator=generator, dtype=torch.float64)

    def loss_fn(x: Tensor) -> Tensor:
        children = x.sum(-1)  # (n, G, n_nodes)
        return ((children - 1) ** 2).sum(-1) + (x * cost).sum((-1, -2))  # (n, G)

    return Problem(
        "arborescence",
        loss_fn,
        scores,
        Arborescence(),
        f"{n_graphs} graphs of {n_nodes} nodes rooted at 0: sum_i (children_i - 1)^2 + arc costs",
    )


def permutation(seed: int = 0, n_problems: int = 2, size: int = 4) -> Problem:
    """Quadratic assignment: ``trace(F x D x^T)``, facility ``i`` at location ``j`` iff
    ``x[i, j] = 1``; scores ``(P, size, size)``.

    ``F`` (flows, symmetric) and ``D`` (distances of random points) are random per problem.

    Example:
        >>> problem = permutation()
        >>> problem.scores.shape, problem.loss_fn(torch.eye(4).expand(1, 2, 4, 4)).shape
        (torch.Size([2, 4, 4]), torch.Size([1, 2]))
    """
    generator = torch.Generator().manual_seed(80_000 + seed)
    scores = torch.randn(n_problems, size, size, generator=generator, dtype=torch.float64)
    raw = torch.rand(n_problems, size, size, generator=generator, dtype=torch.float64)
    flows = (raw + raw.transpose(-1, -2)) / 2
    points = torch.rand(n_problems, size, 2, generator=generator, dtype=torch.float64)
    distances = torch.cdist(points, points)

    def loss_fn(x: Tensor) -> Tensor:
        x = x.to(flows.dtype)
        return (flows @ x @ distances * x).sum((-1, -2))  # trace(F x D x^T): (n, P)

    return Problem(
        "permutation",
        loss_fn,
        scores,
        Permutation(),
        f"{n_problems} quadratic assignment problems of size {size}: trace(F x D x^T)",
    )


#: Built-in problems by name: each maps a seed to a :class:`Problem`.
PROBLEMS: dict[str, Callable[[int], Problem]] = {
    "pick-the-five": pick_the_five,
    "critic-slots": critic_slots,
    "bernoulli": bernoulli,
    "polynomial-1.5": functools.partial(polynomial, 1.5),
    "polynomial-2": functools.partial(polynomial, 2.0),
    "polynomial-3": functools.partial(polynomial, 3.0),
    "categorical-quadratic": categorical_quadratic,
    "spanning-tree": spanning_tree,
    "arborescence": arborescence,
    "permutation": permutation,
}


def load_problem(spec: str, seed: int = 0) -> Problem:
    """A built-in problem by name, or a user's problem ``module:function``.

    ``function()`` is called with no arguments and must return a :class:`Problem` or a tuple
    ``(loss_fn, scores, structure)``. The module is imported as by ``python -c "import module"``
    with the current directory first on ``sys.path``, so a ``myproblem.py`` in the working
    directory is found.
    """
    if spec in PROBLEMS:
        return PROBLEMS[spec](seed)
    if ":" not in spec:
        raise ValueError(
            f"unknown problem {spec!r}; built-in: {', '.join(PROBLEMS)}; "
            "or give your own as module:function"
        )
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"problem {spec!r} must be module:function, e.g. myproblem:make")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"cannot import module {module_name!r} of problem {spec!r}: {error}. "
            "Run from the folder that holds it, or add that folder to PYTHONPATH"
        ) from error
    function = getattr(module, function_name, None)
    if function is None or not callable(function):
        raise ValueError(
            f"module {module_name!r} has no function {function_name!r} (problem {spec!r})"
        )
    made = function()
    if isinstance(made, Problem):
        return made
    if isinstance(made, tuple) and len(made) == 3:
        loss_fn, scores, structure = made
        if (
            not callable(loss_fn)
            or not isinstance(scores, Tensor)
            or not isinstance(structure, Structure)
        ):
            raise TypeError(
                f"{spec}() must return (loss_fn, scores, structure) with a callable, a tensor and "
                f"a pickgrad Structure; got ({type(loss_fn).__name__}, {type(scores).__name__}, "
                f"{type(structure).__name__})"
            )
        return Problem(spec, loss_fn, scores.detach(), structure, "user problem")
    raise TypeError(
        f"{spec}() must return a pickgrad.diagnostics.Problem or (loss_fn, scores, structure), "
        f"got {type(made).__name__}"
    )
