"""Exact gradients of ``E[loss(x)]`` under perturb-and-MAP, the oracle of the diagnostics.

With ``x = argmax(scores + G)`` and standard Gumbel noise ``G`` (the model that the gumbel-family
estimators and ``reinforce`` target), the objective is::

    L(scores) = mean_b  E_x[ loss(x)_b ]  =  mean_b  sum_x  p(x; scores) loss(x)_b

where ``b`` runs over the batch entries that ``loss_fn`` keeps (its output ``(n, *batch[:m])``)
and the mean over them matches the mean that :func:`pickgrad.estimate` takes. Where the structure
gives ``log p(x)`` in closed form (``perturb_log_prob``: ``OneHot``, whose law is the softmax)
and can ``enumerate`` its solutions, ``L`` is a finite sum and its gradient is exact (by
autograd through ``p``, in chunks). ``SpanningTree`` (matrix or edge-list form) up to
``MAX_TREE_NODES`` nodes is exact too: its maximum spanning tree is Kruskal's greedy choice, a
function of the order of the perturbed edge scores only, and that order is Plackett-Luce, so
``p(x)`` is a finite sum over the edge orders of each tree (:func:`spanning_tree_log_prob`; no
integration error, checked against a 1-D integral and a chi-squared test).

Structures without a closed-form law that can ``enumerate`` tiny sizes (``Arborescence`` and
``Permutation`` up to ``MAX_CONDITIONAL_SOLUTIONS`` solutions per event, larger trees, ``Subset``) get
:func:`conditional_gradient`: for each score coordinate the Gumbel of that coordinate is
integrated out exactly (the argmax is a step function of it, with one threshold), and only the
other Gumbels are averaged by Monte Carlo, with a per-coordinate standard error. Beyond that,
a reference gradient is estimated without bias by ``reinforce`` with the leave-one-out baseline,
with a per-coordinate standard error.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pickgrad._validation import check_generator, check_positive_int
from pickgrad.estimators.base import LossFn, evaluate_loss
from pickgrad.estimators.reinforce import Reinforce
from pickgrad.noise import sample_gumbel, sampling_dtype
from pickgrad.structures.base import Structure

__all__ = [
    "DEFAULT_MAX_ENUMERATION",
    "DEFAULT_N_CONDITIONAL",
    "MAX_CONDITIONAL_SOLUTIONS",
    "MAX_TREE_NODES",
    "ExactGradient",
    "conditional_gradient",
    "exact_gradient",
    "spanning_tree_log_prob",
]

#: Default cap on the number of joint solutions enumerated per independent batch entry.
DEFAULT_MAX_ENUMERATION = 2**20
# Elements of samples materialised at once (chunk size = this // scores.numel()).
_CHUNK_ELEMENTS = 2**22
#: Most solutions per event that :func:`conditional_gradient` enumerates (6 x 6: 720
#: permutations, 1296 arborescences or spanning trees).
MAX_CONDITIONAL_SOLUTIONS = 2048
#: Default Gumbel draws of :func:`conditional_gradient`.
DEFAULT_N_CONDITIONAL = 2**14


@dataclass(frozen=True)
class ExactGradient:
    """The gradient of ``E[loss(x)]`` with respect to ``scores``, and how it was obtained.

    Attributes:
        gradient: ``scores.shape``, dtype and device of ``scores``.
        value: 0-dim tensor, ``E[loss]`` (averaged over the batch entries the loss keeps); for a
            reference, its Monte Carlo estimate.
        exact: True when computed by enumeration or a closed form; False for a reference
            gradient estimated by Monte Carlo.
        standard_error: ``scores.shape`` standard error of each coordinate of ``gradient``
            (zeros when ``exact``). Bias smaller than this cannot be resolved against it.
        method: how it was computed, e.g. ``"enumeration of 65536 joint solutions"``.
    """

    gradient: Tensor
    value: Tensor
    exact: bool
    standard_error: Tensor
    method: str

    @property
    def noise_norm(self) -> float:
        """``||standard_error||``: the expected distance of ``gradient`` from the true one."""
        return float(self.standard_error.double().norm())


def _batch_shape(scores: Tensor, structure: Structure) -> tuple[int, ...]:
    return tuple(scores.shape[: scores.dim() - structure.event_dims])


def _kept_batch_dims(loss_fn: LossFn, scores: Tensor, structure: Structure) -> int:
    """How many leading batch dims ``loss_fn`` keeps, found by calling it on one hard sample."""
    batch = _batch_shape(scores, structure)
    with torch.no_grad():
        probe = structure._argmax(scores.detach()).unsqueeze(0)
        losses = evaluate_loss(loss_fn, probe, 1, batch)
    return losses.dim() - 1


def exact_gradient(
    loss_fn: LossFn,
    scores: Tensor,
    structure: Structure,
    *,
    max_enumeration: int = DEFAULT_MAX_ENUMERATION,
    expected_loss: Callable[[Tensor], Tensor] | None = None,
    n_reference: int = 2**15,
    n_conditional: int = DEFAULT_N_CONDITIONAL,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> ExactGradient:
    """The gradient of ``E[loss_fn(x)]``, ``x = argmax(scores + G)``, with respect to ``scores``.

    Maths: ``d/ds sum_x p(x; s) loss(x) = sum_x p(x; s) loss(x) d log p(x; s) / ds``.

    * If ``expected_loss`` is given it is taken as a closed form of ``E[loss]`` (a differentiable
      function of ``scores`` returning a scalar) and differentiated by autograd.
    * Else, if the structure has ``perturb_log_prob`` and ``enumerate`` (or is a
      ``SpanningTree`` of at most ``MAX_TREE_NODES`` nodes, whose law
      :func:`spanning_tree_log_prob` gives): exact, by enumeration.
      Batch dims that ``loss_fn`` keeps in its output ``(n, *batch[:m])`` are independent
      problems, enumerated side by side; the others (``batch[m:]``, e.g. the S slots of a
      ``(B, S, n)`` ``OneHot`` whose loss couples them) are enumerated jointly: ``K ** M``
      joint solutions for ``K`` solutions per event and ``M = prod(batch[m:])``, in chunks.
      A loss that is a sum of independent per-slot terms should keep the slot dim in its
      output, so that each slot is enumerated on its own.
    * Else, if the structure can ``enumerate`` at most ``MAX_CONDITIONAL_SOLUTIONS`` solutions
      per event (``Arborescence``, ``Permutation``, ``Subset`` and trees beyond
      ``MAX_TREE_NODES`` at tiny sizes): :func:`conditional_gradient` with ``n_conditional``
      draws, each coordinate's own Gumbel integrated exactly, with a per-coordinate standard
      error; ``exact`` is False.
    * Else: a reference gradient, the mean of ``reinforce`` with the ``rloo`` baseline over
      ``n_reference`` samples (unbiased), with a per-coordinate standard error from
      independent replicates; ``exact`` is False.

    Args:
        loss_fn: maps ``(n, *scores.shape)`` samples to ``(n,)`` or ``(n, *batch)`` losses.
        scores: ``(*batch, *event)`` floating tensor (used detached).
        structure: the structure, e.g. ``OneHot()``.
        max_enumeration: the most joint solutions enumerated per independent batch entry; a
            ``ValueError`` says so when more would be needed.
        expected_loss: optional closed form ``scores -> E[loss]`` (0-dim).
        n_reference: samples of the reference estimate when there is no closed form.
        n_conditional: Gumbel draws of :func:`conditional_gradient`, when it is used.
        generator: noise source of the conditional or reference estimate.
        mask: optional bool tensor broadcastable to ``scores``, True = allowed; exactly
            ``scores.masked_fill(~mask, -inf)`` (``-inf`` scores are masked too). Masked
            entries never appear in ``x`` and their gradient is exactly 0.

    Returns:
        :class:`ExactGradient` with ``gradient`` shaped like ``scores``.

    Example:
        >>> import pickgrad
        >>> s = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        >>> cost = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
        >>> result = pickgrad.exact_gradient(lambda x: x @ cost, s, pickgrad.OneHot())
        >>> p = torch.softmax(s, -1)
        >>> torch.allclose(result.gradient, p * (cost - p @ cost)), result.exact
        (True, True)
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a pickgrad Structure, got {type(structure).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    scores = structure.mask_scores(scores, mask)
    check_positive_int(max_enumeration, name="max_enumeration")
    check_positive_int(n_reference, name="n_reference", minimum=4)
    check_positive_int(n_conditional, name="n_conditional", minimum=2)
    check_generator(generator, scores.device)
    work = sampling_dtype(scores.dtype)
    leaf = scores.detach().to(work).clone().requires_grad_(True)
    if expected_loss is not None:
        value = expected_loss(leaf)
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise ValueError(
                "expected_loss must return a 0-dim tensor, E[loss] as a function of scores"
            )
        (gradient,) = torch.autograd.grad(value, leaf)
        return _result(gradient, value.detach(), scores, True, None, "closed form")
    if structure.supports("perturb_log_prob") and structure.supports("enumerate"):
        return _by_enumeration(
            loss_fn, leaf, scores, structure, max_enumeration, structure._perturb_log_prob
        )
    law = _spanning_tree_law(structure, leaf)
    if law is not None:
        return _by_enumeration(loss_fn, leaf, scores, structure, max_enumeration, law)
    count = _solution_count(structure, structure.event_shape(leaf))
    if structure.supports("enumerate") and count <= MAX_CONDITIONAL_SOLUTIONS:
        return conditional_gradient(
            loss_fn, scores, structure, n_draws=n_conditional, generator=generator
        )
    return _by_reference(loss_fn, leaf, scores, structure, n_reference, generator)


def _result(
    gradient: Tensor,
    value: Tensor,
    scores: Tensor,
    exact: bool,
    standard_error: Tensor | None,
    method: str,
) -> ExactGradient:
    if standard_error is None:
        standard_error = torch.zeros_like(gradient)
    return ExactGradient(
        gradient=gradient.to(scores.dtype),
        value=value.to(scores.dtype),
        exact=exact,
        standard_error=standard_error.to(scores.dtype),
        method=method,
    )


def _by_enumeration(
    loss_fn: LossFn,
    leaf: Tensor,
    scores: Tensor,
    structure: Structure,
    max_enumeration: int,
    log_prob: Callable[[Tensor, Tensor], Tensor],
) -> ExactGradient:
    batch = _batch_shape(leaf, structure)
    event = structure.event_shape(leaf)
    kept = _kept_batch_dims(loss_fn, leaf, structure)
    independent, coupled = batch[:kept], batch[kept:]
    coupled_count = math.prod(coupled)
    solutions = structure.enumerate(event, dtype=leaf.dtype, device=leaf.device)  # (K, *event)
    per_event = solutions.shape[0]
    # Integer arithmetic: the count may be astronomically large.
    total = per_event**coupled_count
    if total > max_enumeration:
        raise ValueError(
            f"exact_gradient would enumerate {per_event}^{coupled_count} = {total} joint solutions "
            f"per batch entry (scores {tuple(scores.shape)}: {coupled_count} coupled events "
            f"{tuple(coupled)} of {per_event} solutions each, since loss_fn returns losses "
            f"shaped (n, *{tuple(independent)})), more than max_enumeration={max_enumeration}. "
            "Raise max_enumeration, make loss_fn keep independent dims in its output "
            "(n, *batch) so they are enumerated separately, or pass expected_loss"
        )
    chunk = max(1, _CHUNK_ELEMENTS // max(1, leaf.numel()))
    powers = torch.tensor(
        [per_event ** (coupled_count - 1 - i) for i in range(coupled_count)],
        dtype=torch.int64,
        device=leaf.device,
    )
    entries = max(1, math.prod(independent))
    gradient = torch.zeros_like(leaf)
    value = torch.zeros((), dtype=leaf.dtype, device=leaf.device)
    mass = torch.zeros(independent, dtype=leaf.dtype, device=leaf.device)
    for start in range(0, total, chunk):
        index = torch.arange(start, min(start + chunk, total), device=leaf.device)
        digits = (index[:, None] // powers) % per_event  # (C, M), slot 0 slowest
        picks = solutions[digits].reshape(len(index), *coupled, *event)
        view = (len(index),) + (1,) * len(independent) + tuple(picks.shape[1:])
        x = picks.reshape(view).expand(len(index), *leaf.shape)
        with torch.no_grad():
            losses = evaluate_loss(loss_fn, x, len(index), batch).to(leaf.dtype)
        log_p = log_prob(leaf.expand(len(index), *leaf.shape), x)
        if log_p.dim() > 1 + kept:  # (sum over dim=() would sum everything)
            log_p = log_p.sum(dim=tuple(range(1 + kept, log_p.dim())))  # (C, *independent)
        p = log_p.exp()
        objective = (p * losses).sum() / entries
        (part,) = torch.autograd.grad(objective, leaf)
        gradient += part
        value += objective.detach()
        mass += p.detach().sum(0)
    if not torch.allclose(
        mass, torch.ones_like(mass), atol=1e-4 if leaf.dtype == torch.float32 else 1e-8
    ):
        raise RuntimeError(
            f"{structure!r}: probabilities of the enumerated solutions sum to "
            f"{mass.min().item():.6g}..{mass.max().item():.6g}, not 1; enumerate and "
            "perturb_log_prob disagree"
        )
    method = f"enumeration of {total} joint solution{'s' if total > 1 else ''}"
    if entries > 1 or independent:
        method += f" for each of {entries} independent entries"
    return _result(gradient, value, scores, True, None, method)


def _by_reference(
    loss_fn: LossFn,
    leaf: Tensor,
    scores: Tensor,
    structure: Structure,
    n_reference: int,
    generator: torch.Generator | None,
) -> ExactGradient:
    replicates = 16 if n_reference >= 64 else 4
    per_replicate = n_reference // replicates
    estimator = Reinforce(baseline="rloo")
    estimator.check_structure(structure)
    draws, values = [], []
    for _ in range(replicates):
        surrogate = estimator.estimate(
            loss_fn, leaf, structure, n_samples=per_replicate, tau=1.0, generator=generator
        )
        (draw,) = torch.autograd.grad(surrogate, leaf)
        draws.append(draw)
        values.append(surrogate.detach())
    stacked = torch.stack(draws)
    gradient = stacked.mean(0)
    standard_error = stacked.std(0) / math.sqrt(replicates)
    method = (
        f"reference: reinforce/rloo over {replicates * per_replicate} samples "
        f"({structure!r} has no closed-form law of argmax(scores + G))"
    )
    return _result(gradient, torch.stack(values).mean(), scores, False, standard_error, method)


# --- structures without a closed-form law: one Gumbel at a time, integrated exactly ----------


def _solution_count(structure: Structure, event: tuple[int, ...]) -> int:
    """How many solutions ``structure.enumerate(event)`` would return (``2 ** entries`` bounds an
    unknown structure's, since a solution is a 0/1 vector)."""
    from pickgrad.structures.arborescence import Arborescence
    from pickgrad.structures.onehot import OneHot
    from pickgrad.structures.permutation import Permutation
    from pickgrad.structures.spanning_tree import SpanningTree
    from pickgrad.structures.subset import Subset

    if isinstance(structure, OneHot):
        return event[-1]
    if isinstance(structure, Subset):
        return math.comb(event[-1], min(structure.k, event[-1]))
    if isinstance(structure, Permutation):
        s, n = event
        return math.perm(n, s)
    if isinstance(structure, SpanningTree | Arborescence):
        if len(event) == 1:  # edge list
            n = (1 + math.isqrt(1 + 8 * event[0])) // 2
        else:
            n = event[-1]
        return int(n ** max(n - 2, 0))
    return int(2 ** math.prod(event))


def _scored_entries(structure: Structure, event: tuple[int, ...], device: torch.device) -> Tensor:
    """Bool ``event``: the entries of a solution that its score ``<scores, x>`` counts (all but
    the lower triangle and diagonal of a matrix-form ``SpanningTree``)."""
    from pickgrad.structures.spanning_tree import SpanningTree

    if isinstance(structure, SpanningTree) and not structure.edge_list and len(event) == 2:
        return torch.ones(event, dtype=torch.bool, device=device).triu(1)
    return torch.ones(event, dtype=torch.bool, device=device)


def _gumbel_density(z: Tensor) -> Tensor:
    """Standard Gumbel density ``exp(-z - exp(-z))``; 0 at ``z = +-inf`` (no NaN)."""
    finite = torch.isfinite(z)
    safe = torch.where(finite, z, torch.zeros_like(z))
    return torch.where(finite, torch.exp(-safe - torch.exp(-safe)), torch.zeros_like(z))


def conditional_gradient(
    loss_fn: LossFn,
    scores: Tensor,
    structure: Structure,
    *,
    n_draws: int = DEFAULT_N_CONDITIONAL,
    generator: torch.Generator | None = None,
) -> ExactGradient:
    """Gradient of ``E[loss(argmax(scores + G))]`` with each coordinate's Gumbel integrated exactly.

    Maths: write ``u = scores + G`` and, for one coordinate ``c`` of one event, split the
    enumerated solutions ``y`` into those that contain ``c`` and those that do not. Given the
    other Gumbels ``G_-c``, let ``y_with`` maximise ``<u, y> - u_c`` among the first (value
    ``A``), ``y_without`` maximise ``<u, y>`` among the second (value ``B``). The argmax is
    ``y_with`` exactly when ``u_c > t = B - A``, so it is a step function of ``G_c`` with one
    threshold that does not depend on ``scores_c``, and::

        E[loss | G_-c] = loss(y_without) + (loss(y_with) - loss(y_without)) P(G_c > t - scores_c)
        d E[loss] / d scores_c = E_{G_-c}[ gumbel_pdf(t - scores_c) (loss(y_with) - loss(y_without)) ]

    (the "smoothed perturbation analysis" / conditional Monte Carlo identity). The one-dimensional
    integral over ``G_c`` is exact; the outer expectation is a Monte Carlo mean over
    ``n_draws`` full Gumbel draws, shared by all coordinates (each ignores its own ``G_c``),
    with the other events' picks held at their argmax in that draw. The result is unbiased; its
    ``standard_error`` is the per-coordinate sample standard deviation over ``sqrt(n_draws)``,
    the only error (no discretisation). Coordinates that no solution uses (the diagonal of an
    arborescence, a tree's lower triangle), that every solution uses, or whose score is
    ``-inf`` get exactly 0. Cost: ``n_draws x entries`` extra loss evaluations and
    ``n_draws x entries x K`` comparisons for ``K`` solutions per event, so this is meant for
    tiny sizes (``Arborescence`` and ``Permutation`` up to 6 x 6).

    Args:
        loss_fn: maps ``(n, *scores.shape)`` samples to ``(n,)`` or ``(n, *batch)`` losses.
        scores: ``(*batch, *event)`` floating tensor (used detached; ``-inf`` = not allowed).
        structure: a structure that can ``enumerate`` the event shape.
        n_draws: Monte Carlo draws of the Gumbels (at least 2).
        generator: noise source (torch's global generator when None).

    Returns:
        :class:`ExactGradient` with ``exact=False``, ``gradient`` and ``standard_error`` shaped
        like ``scores``, ``value`` the Monte Carlo mean of the loss.

    Example:
        >>> import pickgrad
        >>> s = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)  # one row: a OneHot
        >>> cost = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
        >>> result = conditional_gradient(lambda x: (x * cost).sum((-1, -2)), s,
        ...                               pickgrad.Permutation(),
        ...                               generator=torch.Generator().manual_seed(0))
        >>> p = torch.softmax(s, -1)
        >>> z = (result.gradient - p * (cost - (p * cost).sum())) / result.standard_error
        >>> bool(z.abs().max() < 5), bool(result.standard_error.max() < 0.01)
        (True, True)
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a pickgrad Structure, got {type(structure).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    structure.validate(scores)
    check_positive_int(n_draws, name="n_draws", minimum=2)
    check_generator(generator, scores.device)
    work = sampling_dtype(scores.dtype)
    batch = _batch_shape(scores, structure)
    event = structure.event_shape(scores)
    entries, size = math.prod(batch), math.prod(event)
    solutions = structure.enumerate(event, dtype=work, device=scores.device).reshape(-1, size)
    count = solutions.shape[0]
    # What the argmax maximises is <scores, y> over the scored entries of y only (a matrix-form
    # tree's symmetric adjacency is scored on its upper triangle).
    scored = _scored_entries(structure, event, scores.device).reshape(size)
    weights = solutions * scored  # (K, D)
    member = weights.T > 0.5  # (D, K): solution k uses scored coordinate d
    s = scores.detach().to(work).reshape(entries, size)
    allowed = s > -math.inf
    finite_s = torch.where(allowed, s, torch.zeros_like(s))
    # A solution that uses a -inf coordinate is not allowed in that entry: (B, K).
    penalty = torch.where((~allowed).to(work) @ weights.T > 0, -math.inf, 0.0).to(work)
    # Only coordinates some but not all solutions use have a nonzero derivative.
    live = (member.any(1) & ~member.all(1)).nonzero().flatten()
    live_member = member[live]  # (L, K)
    n_live = live.numel()
    total = torch.zeros(entries, size, dtype=torch.float64, device=scores.device)
    squares = torch.zeros_like(total)
    value = torch.zeros((), dtype=torch.float64, device=scores.device)
    per_draw = entries * max(n_live, 1) * max(count, entries * size)
    chunk = max(1, _CHUNK_ELEMENTS // per_draw)
    neg_inf = torch.tensor(-math.inf, dtype=work, device=scores.device)
    for start in range(0, n_draws, chunk):
        c = min(chunk, n_draws - start)
        gumbel = sample_gumbel(
            (c, entries, size), dtype=work, device=scores.device, generator=generator
        )
        u = finite_s + gumbel  # (C, B, D)
        totals = u @ weights.T + penalty  # (C, B, K)
        best = totals.argmax(-1)  # (C, B)
        x_star = solutions[best]  # (C, B, D)
        with torch.no_grad():
            star_loss = _mean_loss(loss_fn, x_star, scores.shape, batch)  # (C,)
        value += star_loss.sum()
        if n_live == 0:
            continue
        spread = totals[:, :, None, :]  # (C, B, 1, K)
        with_best, with_index = torch.where(live_member, spread, neg_inf).max(-1)  # (C, B, L)
        without_best, without_index = torch.where(~live_member, spread, neg_inf).max(-1)
        u_live = u[..., live]
        threshold = without_best - (with_best - u_live)  # t = B - A
        density = _gumbel_density(threshold - finite_s[:, live])
        density = torch.where(allowed[:, live], density, torch.zeros_like(density))
        star_uses = member[live][torch.arange(n_live, device=scores.device), best[..., None]]
        # (C, B, L): does the draw's argmax use the coordinate? Then the other one is y_without.
        other = torch.where(star_uses, without_index, with_index)
        samples = x_star[:, None, None].expand(c, entries, n_live, entries, size).clone()
        rows = torch.arange(entries, device=scores.device)
        samples[:, rows, :, rows] = solutions[other].transpose(0, 1)
        with torch.no_grad():
            other_loss = _mean_loss(
                loss_fn, samples.reshape(c * entries * n_live, entries, size), scores.shape, batch
            ).reshape(c, entries, n_live)
        difference = torch.where(
            star_uses, star_loss[:, None, None] - other_loss, other_loss - star_loss[:, None, None]
        )
        term = torch.where(density > 0, density * difference, torch.zeros_like(density)).double()
        total[:, live] += term.sum(0)
        squares[:, live] += (term**2).sum(0)
    mean = total / n_draws
    variance = (squares - n_draws * mean**2).clamp_min(0) / (n_draws - 1)
    method = (
        f"conditional Monte Carlo over {n_draws} Gumbel draws, each coordinate's own Gumbel "
        f"integrated exactly ({count} enumerated solutions per event; {structure!r} has no "
        "closed-form law of argmax(scores + G))"
    )
    return _result(
        mean.reshape(scores.shape),
        value / n_draws,
        scores,
        False,
        (variance / n_draws).sqrt().reshape(scores.shape),
        method,
    )


def _mean_loss(loss_fn: LossFn, x: Tensor, shape: torch.Size, batch: tuple[int, ...]) -> Tensor:
    """Losses of flat samples ``(n, B, D)`` reshaped to ``(n, *shape)``, averaged over the batch
    entries the loss keeps: ``(n,)`` float64."""
    n = x.shape[0]
    losses = evaluate_loss(loss_fn, x.reshape(n, *shape), n, batch).double()
    return losses.reshape(n, -1).mean(-1)


# --- spanning trees: the law of argmax(scores + G) through Kruskal's orderings ----------------

#: Largest tree (in nodes) whose law is enumerated: n = 5 has 125 trees x 4! edge orders.
MAX_TREE_NODES = 5


@functools.lru_cache(maxsize=8)
def _tree_orders(n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every spanning tree of K_n as edge sets, each edge order, and the live edges before each step.

    Returns ``(trees (K, m) bool, orders (K, P, n-1) long, live (K, P, n-1, m) bool)`` with
    ``P = (n-1)!``; edges are the pairs ``i < j`` in row-major order. ``live[t, p, k]`` marks
    the edges that join two different components of the forest made of the first ``k`` edges
    of order ``p`` of tree ``t``.
    """
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    m = len(pairs)

    def find(parent: list[int], a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    trees, orders, lives = [], [], []
    for chosen in itertools.combinations(range(m), n - 1):
        parent = list(range(n))
        acyclic = True
        for edge in chosen:
            a, b = find(parent, pairs[edge][0]), find(parent, pairs[edge][1])
            if a == b:
                acyclic = False
                break
            parent[a] = b
        if not acyclic:
            continue
        tree_orders, tree_lives = [], []
        for order in itertools.permutations(chosen):
            parent = list(range(n))
            steps = []
            for edge in order:
                steps.append([find(parent, i) != find(parent, j) for i, j in pairs])
                a, b = find(parent, pairs[edge][0]), find(parent, pairs[edge][1])
                parent[a] = b
            tree_orders.append(list(order))
            tree_lives.append(steps)
        mask = [False] * m
        for edge in chosen:
            mask[edge] = True
        trees.append(mask)
        orders.append(tree_orders)
        lives.append(tree_lives)
    return torch.tensor(trees), torch.tensor(orders), torch.tensor(lives)


def spanning_tree_log_prob(edge_scores: Tensor) -> tuple[Tensor, Tensor]:
    """``log P(T)`` of every spanning tree ``T`` under ``T = argmax(edge_scores + G)``.

    Maths: the maximum spanning tree is Kruskal's greedy choice, which depends only on the
    order of the perturbed edge scores; that order is Plackett-Luce with weights
    ``exp(edge_scores)`` (the Gumbel-max trick, repeated). An edge that closes a cycle is never
    taken later either, and the order restricted to the edges still live is again
    Plackett-Luce, so, with ``L_k(sigma)`` the edges joining two components after the first
    ``k - 1`` edges of ``sigma``::

        P(T) = sum over orders sigma of T's edges of  prod_k exp(s[sigma_k]) / sum_{e in L_k} exp(s[e])

    This is exact (no integration error); its cost is ``n^(n-2) (n-1)!`` terms, so it is used
    up to ``n = MAX_TREE_NODES``.

    Args:
        edge_scores: ``(*batch, m)`` scores of the edges ``i < j`` in row-major order,
            ``m = n (n - 1) / 2``.

    Returns:
        ``(log_probs (*batch, K), trees (K, m))``: the log-probability of each tree and the
        trees as 0/1 edge lists (in the dtype of ``edge_scores``).

    Example:
        >>> s = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # edges (0,1), (0,2), (1,2)
        >>> log_p, trees = spanning_tree_log_prob(s)
        >>> bool(torch.isclose(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64)))
        True
    """
    m = edge_scores.shape[-1]
    n = (1 + math.isqrt(1 + 8 * m)) // 2
    if n * (n - 1) // 2 != m or n < 2:
        raise ValueError(f"edge_scores must have m = n (n - 1) / 2 entries, got {m}")
    trees, orders, live = (t.to(edge_scores.device) for t in _tree_orders(n))
    # A -inf edge has Plackett-Luce weight 0: it leaves every denominator, and a tree that uses
    # it has probability 0. Its score is replaced by 0 so that no -inf reaches autograd.
    allowed = edge_scores > -math.inf  # (*batch, m)
    safe = torch.where(allowed, edge_scores, torch.zeros_like(edge_scores))
    forbidden = (trees & ~allowed[..., None, :]).any(-1)  # (*batch, K)
    # Forbidden trees keep every live edge (finite, discarded below); the others only allowed ones.
    keep = live & (allowed[..., None, None, None, :] | forbidden[..., :, None, None, None])
    s = safe[..., None, None, None, :]  # (*batch, 1, 1, 1, m)
    masked = s.masked_fill(~keep, -math.inf)  # (*batch, K, P, n-1, m)
    taken = safe[..., orders]  # (*batch, K, P, n-1)
    log_orders = (taken - torch.logsumexp(masked, dim=-1)).sum(-1)  # (*batch, K, P)
    log_p = torch.logsumexp(log_orders, dim=-1)
    return log_p.masked_fill(forbidden, -math.inf), trees.to(edge_scores.dtype)


def _spanning_tree_law(
    structure: Structure, leaf: Tensor
) -> Callable[[Tensor, Tensor], Tensor] | None:
    """``log_prob(scores, x)`` of a ``SpanningTree`` with at most MAX_TREE_NODES nodes, else None."""
    from pickgrad.structures.spanning_tree import SpanningTree

    if not isinstance(structure, SpanningTree):
        return None
    edge_list = bool(getattr(structure, "edge_list", False))
    if edge_list:
        m = leaf.shape[-1]
        n = (1 + math.isqrt(1 + 8 * m)) // 2
    else:
        n = leaf.shape[-1]
    if n > MAX_TREE_NODES:
        return None
    rows, cols = torch.triu_indices(n, n, 1, device=leaf.device)

    def to_edges(t: Tensor) -> Tensor:
        return t if edge_list else t[..., rows, cols]

    def log_prob(scores: Tensor, x: Tensor) -> Tensor:
        log_p, trees = spanning_tree_log_prob(to_edges(scores[0]))  # (*batch, K), (K, m)
        picked = to_edges(x).round().to(trees.dtype)  # (C, *batch, m)
        match = (picked[..., None, :] == trees).all(-1)  # (C, *batch, K)
        index = match.to(torch.int64).argmax(-1, keepdim=True)
        return log_p.expand(x.shape[0], *log_p.shape).gather(-1, index).squeeze(-1)

    return log_prob
