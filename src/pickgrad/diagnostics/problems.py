"""Built-in problems for ``pickgrad diagnose``, and loading a user's problem.

* ``pick-the-five`` and ``critic-slots``: the demo tasks at a fixed initial network
  (:mod:`pickgrad.tasks`) on a batch of the demo's training size (32 held-out examples), scores
  ``(32, 1, 8)`` and ``(32, 4, 16)`` (65,536 joint picks each), measured in the selector's
  parameters (``Problem.parameters``; see ``diagnose(parameters=)``): the gradient the demo's
  optimiser follows, where the biases of the examples add up and their noises average out.
  Each also has a later point (``Problem.later``): the same selector after
  ``DEMO_LATER_STEPS = 250`` of the demo's 1000 steps of unbiased training (reinforce/rloo), and
  the advisor ranks along training (:func:`advise_along_training`).
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
* ``subset-kmedian``: 2 facility-location problems, open ``k = 3`` of 8 sites for 12 clients in
  the unit square, loss the mean distance of a client to its nearest open site (a minimum over
  the chosen sites: not linear in x). ``E[loss]`` is exact: the top-k of ``scores + G`` is the
  first k draws of a Plackett-Luce ordering, so each of the 56 subsets has the probability of
  its 3! orders (no Monte Carlo).
* ``slot-coverage``: 2 examples of 4 slots choosing among 6 items, each item covering a random
  set of 10 features; loss ``-sqrt(weighted count of features covered by some chosen item)``
  (saturating and concave: not linear in x); exact by enumerating the 6^4 joint picks.

The last two were added after the advisor's ranking rule was fixed, to validate it on tasks it
was not designed on (``benchmarks/bench_advisor.py``), together with ``spanning-tree``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pickgrad.diagnostics.exact import DEFAULT_MAX_ENUMERATION, ExactGradient, exact_gradient
from pickgrad.diagnostics.report import (
    DiagnosticReport,
    Recommendation,
    diagnose,
    rank_along_training,
)
from pickgrad.estimators.base import LossFn
from pickgrad.structures.arborescence import Arborescence
from pickgrad.structures.base import Structure
from pickgrad.structures.onehot import OneHot
from pickgrad.structures.permutation import Permutation
from pickgrad.structures.spanning_tree import SpanningTree
from pickgrad.structures.subset import Subset

__all__ = [
    "DEMO_BATCH",
    "DEMO_LATER_STEPS",
    "PROBLEMS",
    "Problem",
    "advise_along_training",
    "arborescence",
    "bernoulli",
    "categorical_quadratic",
    "critic_slots",
    "load_problem",
    "permutation",
    "pick_the_five",
    "polynomial",
    "slot_coverage",
    "spanning_tree",
    "subset_kmedian",
    "subset_top_k_log_prob",
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
        parameters: for a problem whose scores come from a network: its parameters, and
        tracked_scores: the same scores with the autograd graph from them; then
            :meth:`diagnose` measures in the parameters' space (``diagnose(parameters=)``).
        later: optional, builds the same problem at later points of a training run (e.g. the
            network after some steps); then the advisor ranks along training
            (:func:`advise_along_training`).
    """

    name: str
    loss_fn: LossFn
    scores: Tensor
    structure: Structure
    description: str = ""
    expected_loss: Callable[[Tensor], Tensor] | None = None
    parameters: tuple[Tensor, ...] | None = None
    tracked_scores: Tensor | None = None
    later: Callable[[], tuple[Problem, ...]] | None = None

    def diagnose(
        self, estimators: Any = None, *, along: bool = True, **options: Any
    ) -> DiagnosticReport:
        """:func:`pickgrad.diagnose` of this problem (in its parameters' space if it has them;
        ``options`` are ``diagnose``'s keywords); with ``along`` and ``later`` points, those are
        diagnosed too (each with its own exact gradient, at the main ``tau`` only: the ranking
        reads no temperature sweep) and the recommendation is :func:`advise_along_training`'s."""
        report = self._diagnose_here(estimators, **options)
        if along and self.later is not None and options.get("rank_by", "training") == "training":
            for own in ("reference", "expected_loss", "tau_sweep", "name"):
                options.pop(own, None)
            later = [point._diagnose_here(estimators, **options) for point in self.later()]
            advise_along_training(report, later, allow_soft=options.get("allow_soft", False))
        return report

    def _diagnose_here(self, estimators: Any = None, **options: Any) -> DiagnosticReport:
        tracked = self.parameters is not None and self.tracked_scores is not None
        options.setdefault("expected_loss", self.expected_loss)
        options.setdefault("name", self.name)
        return diagnose(
            self.loss_fn,
            self.tracked_scores if tracked else self.scores,  # type: ignore[arg-type]
            self.structure,
            estimators,
            parameters=self.parameters if tracked else None,
            **options,
        )

    def exact_gradient(self, max_enumeration: int = DEFAULT_MAX_ENUMERATION) -> ExactGradient:
        """:func:`pickgrad.exact_gradient` of this problem (the closed form if it has one)."""
        return exact_gradient(
            self.loss_fn,
            self.scores,
            self.structure,
            max_enumeration=max_enumeration,
            expected_loss=self.expected_loss,
        )


#: Examples of the demo problems: the demo's training batch size.
DEMO_BATCH = 32
#: The later point of the demo problems: the selector after this many of the demo's 1000 steps.
DEMO_LATER_STEPS = 250


def advise_along_training(
    report: DiagnosticReport, later: list[DiagnosticReport], *, allow_soft: bool = False
) -> None:
    """Set ``report``'s recommendation from :func:`rank_along_training` of its rows and the
    ``later`` reports' rows (the same estimators at later points of training); the ranking and
    the later points' recommendations go into ``report.settings["along_training"]``."""
    ranked = rank_along_training([report.rows, *(r.rows for r in later)], allow_soft=allow_soft)
    report.settings["along_training"] = {
        "points": [r.problem for r in later],
        "ranking": [row.label for row in ranked],
        "later_recommendations": [
            None if r.recommendation is None else r.recommendation.label for r in later
        ],
    }
    if not ranked or report.recommendation is None:
        return
    best = ranked[0]
    reason = (
        f"lowest sum of relative training errors (training error / ||exact||^2) at the start "
        f"and at {len(later)} later point(s) of training ({', '.join(r.problem for r in later)}) "
        "among the estimators whose bias is acceptable at the start"
    )
    if best.label != report.recommendation.label:
        reason += f"; at the start alone: {report.recommendation.label}"
    report.recommendation = Recommendation(best.label, best.tau, reason)


def _demo_task(name: str, description: str, seed: int) -> Problem:
    """A demo task of :mod:`pickgrad.tasks` at its fixed initial selector, as a Problem in the
    selector's parameters."""
    from pickgrad.tasks import TASKS  # lazy: the tasks import pickgrad.nn

    def at(steps: int) -> Problem:
        task = TASKS[name](seed)
        loss_fn, scores, parameters = task.diagnostic_network_problem(DEMO_BATCH, steps)
        where = f"{name}@{steps}" if steps else name
        return Problem(
            where, loss_fn, scores.detach(), OneHot(),
            description if not steps else f"{description}, after {steps} steps of reinforce/rloo",
            parameters=parameters, tracked_scores=scores,
        )  # fmt: skip

    return dataclasses.replace(at(0), later=lambda: (at(DEMO_LATER_STEPS),))


def pick_the_five(seed: int = 0) -> Problem:
    """The *pick-the-five* demo task at a fixed initial selector; scores ``(32, 1, 8)``."""
    return _demo_task(
        "pick-the-five",
        "demo task at its initial network, in its parameters: 32 examples, pick the 5 among 8",
        seed,
    )


def critic_slots(seed: int = 0) -> Problem:
    """The *critic slots* demo task at a fixed initial selector; scores ``(32, 4, 16)``."""
    return _demo_task(
        "critic-slots",
        "demo task at its initial network, in its parameters: 32 examples, 4 interacting slots "
        "of 16 items",
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


def subset_top_k_log_prob(scores: Tensor, subsets: Tensor) -> Tensor:
    """``log P(top-k of scores + G = S)`` for each k-hot row ``S`` of ``subsets``: ``(..., C)``.

    The order of ``scores + G`` is Plackett-Luce (Yellott 1977), so ``P(S)`` is the sum over the
    ``k!`` orders ``(i_1..i_k)`` of ``S`` of ``prod_t exp(s_{i_t}) / sum_{j not in i_1..i_{t-1}}
    exp(s_j)``; exact, differentiable, for tiny ``k`` (``k!`` terms per subset).

    Args:
        scores: ``(..., n)``.
        subsets: ``(C, n)`` k-hot rows (e.g. ``Subset(k).enumerate((n,))``).

    Returns:
        ``(..., C)`` log-probabilities (they sum to one over the rows when all C(n, k) are given).

    Example:
        >>> s = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
        >>> log_p = subset_top_k_log_prob(s, Subset(2).enumerate((4,), dtype=s.dtype))
        >>> round(float(log_p.exp().sum()), 12)
        1.0
    """
    scores = scores - scores.amax(-1, keepdim=True).detach()  # shift-invariant; no overflow
    k = int(subsets[0].sum())
    chosen = subsets.nonzero()[:, 1].reshape(subsets.shape[0], k)  # (C, k) chosen indices
    orders = torch.tensor(list(itertools.permutations(range(k))), device=scores.device)
    sequences = chosen[:, orders]  # (C, k!, k)
    picked = scores[..., sequences]  # (..., C, k!, k)
    total = torch.logsumexp(scores, -1)[..., None, None, None]
    # log of the mass left before draw t: total minus the scores drawn before it.
    before = torch.cumsum(picked.exp(), -1) - picked.exp()
    left = total + torch.log1p(-before / total.exp())
    return torch.logsumexp((picked - left).sum(-1), -1)


def subset_kmedian(
    seed: int = 0, n_problems: int = 2, n_sites: int = 8, n_clients: int = 12, k: int = 3
) -> Problem:
    """Open ``k`` of ``n_sites`` facilities: the mean client-to-nearest-open-site distance.

    ``loss(x) = mean_c min_j (d[c, j] + M (1 - x_j))`` with ``M = sqrt(2)`` (the unit square's
    diameter: a closed site is never nearer than an open one); scores ``(P, n_sites)`` for
    ``Subset(k)``; ``E[loss]`` exact through :func:`subset_top_k_log_prob`.

    Example:
        >>> problem = subset_kmedian()
        >>> problem.scores.shape, problem.exact_gradient().exact
        (torch.Size([2, 8]), True)
    """
    generator = torch.Generator().manual_seed(90_000 + seed)
    scores = torch.randn(n_problems, n_sites, generator=generator, dtype=torch.float64)
    sites = torch.rand(n_problems, n_sites, 2, generator=generator, dtype=torch.float64)
    clients = torch.rand(n_problems, n_clients, 2, generator=generator, dtype=torch.float64)
    distances = torch.cdist(clients, sites)  # (P, clients, sites)
    closed = 2**0.5
    structure = Subset(k)
    subsets = structure.enumerate((n_sites,), dtype=torch.float64)

    def loss_fn(x: Tensor) -> Tensor:
        x = x.to(distances.dtype)  # (n, P, sites)
        reach = distances + closed * (1 - x[..., None, :])  # (n, P, clients, sites)
        return reach.amin(-1).mean(-1)  # (n, P)

    def expected_loss(s: Tensor) -> Tensor:
        probability = subset_top_k_log_prob(s.to(distances.dtype), subsets).exp()  # (P, C)
        losses = loss_fn(subsets[:, None, :].expand(-1, n_problems, -1))  # (C, P)
        value: Tensor = (probability * losses.T).sum(-1).mean()
        return value

    return Problem(
        "subset-kmedian",
        loss_fn,
        scores,
        structure,
        f"{n_problems} facility-location problems: open {k} of {n_sites} sites for {n_clients} "
        "clients, mean distance to the nearest open site (exact Plackett-Luce law)",
        expected_loss=expected_loss,
    )


def slot_coverage(
    seed: int = 0, n_examples: int = 2, n_slots: int = 4, n_items: int = 6, n_features: int = 10
) -> Problem:
    """``-sqrt(sum_f w_f [some chosen item covers f])``: 4 slots pick items covering features.

    Item ``i`` covers feature ``f`` when ``A[i, f] = 1`` (probability 0.3 each); slot ``s``
    picks item ``x[s]``; ``covered_f = 1 - prod_s (1 - (x A)[s, f])`` on hard picks (any
    ``x`` in the simplex keeps it in [0, 1]); weights ``w`` uniform in (0.5, 1.5). Scores
    ``(n_examples, n_slots, n_items)`` for ``OneHot``; exact by enumeration (6^4 joint picks).

    Example:
        >>> problem = slot_coverage()
        >>> problem.scores.shape, problem.exact_gradient().exact
        (torch.Size([2, 4, 6]), True)
    """
    generator = torch.Generator().manual_seed(95_000 + seed)
    scores = torch.randn(n_examples, n_slots, n_items, generator=generator, dtype=torch.float64)
    shape = (n_examples, n_items, n_features)
    covers = (torch.rand(shape, generator=generator, dtype=torch.float64) < 0.3).double()
    weights = 0.5 + torch.rand(n_examples, n_features, generator=generator, dtype=torch.float64)

    def loss_fn(x: Tensor) -> Tensor:
        hit = x.to(covers.dtype) @ covers  # (n, E, slots, features)
        covered = 1 - (1 - hit).prod(-2)  # (n, E, features)
        return -((covered * weights).sum(-1).clamp_min(0) + 1e-12).sqrt()  # (n, E)

    return Problem(
        "slot-coverage",
        loss_fn,
        scores,
        OneHot(),
        f"{n_examples} examples, {n_slots} slots of {n_items} items covering {n_features} "
        "features: -sqrt(weighted coverage), not linear in x (exact by enumeration)",
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
    "subset-kmedian": subset_kmedian,
    "slot-coverage": slot_coverage,
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
