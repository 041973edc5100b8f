"""Entropic matching (Sinkhorn) solved to a tolerance, with an implicit backward.

The relaxation of ``Permutation`` is the entropy-regularised transport plan

    P = argmax_{P 1 = r, P^T 1 = c, P >= 0}  <P, scores> / tau + H(P),

i.e. ``P_ij = exp(scores_ij / tau + f_i + g_j)`` for dual potentials f, g. Rectangular scores
``(s, n)``, s < n, get a slack row of mass ``n - s`` (score 0), so r = (1, ..., 1, n - s) and
c = 1; square scores have r = c = 1.

Forward: scores are first shifted by their row and then their column maxima (the plan is
invariant to that, and it keeps large common offsets and exact ties exact), and the solve runs
in float64. The temperature is annealed (epsilon scaling) from the scores' spread down to
``tau``, about a factor 4 per stage, each stage warm-started from the previous one's
potentials. Each stage starts with 10 alternating normalisations in the scaling domain
(Sinkhorn's rounds, in float32: two matrix-vector products each, no exp), and then takes
Levenberg-Marquardt (damped Newton) steps until the row sums are within 1e-2 (intermediate
stages) or ``tol / 2`` (the last): the columns are kept exactly balanced (``g`` eliminated in
closed form) and the row potentials ``f`` climb the concave semi-dual

    Phi(f) = <r, f> - sum_j log sum_i exp(C_ij + f_i),   C = scores / t,

whose Hessian is ``-(diag(P 1) - P P^T)`` (m x m, rank m - 1 on the constant vector, the
gauge; the system adds ``1 1^T / m``). A step is kept only where it lowers the row residual;
the damping of each item shrinks after a kept step and grows after a refused one, so no step
needs a host read. Sinkhorn's rounds alone need thousands of rounds at small tau (the plan is
nearly a permutation and its weakest couplings are ~exp(-gap / tau)); the Newton steps take
tens at most (measured: <= 28 over every size up to 200 x 200 and tau down to 0.01).
The row error is read back to the host every 2 Newton steps; with value checks off the
schedule is fixed instead (8 stages of 2 steps, then the last stage, ``max_iter`` steps in all).

Backward: implicit differentiation of the optimality conditions, with no memory of the
iterations. With ``Q = P * G`` (``G = dL/dP``), the gradient with respect to ``C`` is

    dL/dC = P * (G - a 1^T - 1 b^T),   [[diag(r), P], [P^T, diag(c)]] [a; b] = [Q 1; Q^T 1],

and eliminating b = Q^T 1 - P^T a (c = 1) leaves the m x m system

    (diag(r) - P P^T) a = Q 1 - P Q^T 1,

singular on the constant vector (any a + t 1, b - t 1 gives the same gradient), solved with
``1 1^T / m`` added. Derivation: differentiate ``P 1 = r`` and ``P^T 1 = c`` with
``dP = P * (dC + df 1^T + 1 dg^T)`` and take the adjoint. The scores' gradient is
``dL/dC / tau`` on the real rows. The system gets a 1e-13 ridge as well: where the plan has
exactly zero couplings (a hard matching at tiny tau) it has further null directions, along
which the gradient does not depend on a. The backward keeps only the float64 plan
``(..., m, n)`` (also for float32 and half scores), nothing per step.

References: Sinkhorn, 1964; Cuturi, "Sinkhorn Distances", 2013; Schmitzer, "Stabilized Sparse
Scaling Algorithms for Entropy Regularized Transport Problems", 2019 (epsilon scaling);
Brauer, Clason, Lorenz & Wirth, "A Sinkhorn-Newton method for entropic optimal transport",
2017; Luise et al., "Differential Properties of Sinkhorn Approximation", 2018 (implicit
gradient); Mena et al., "Learning Latent Permutations with Gumbel-Sinkhorn Networks", 2018.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from pickgrad._validation import value_checks_enabled
from pickgrad.structures._masks import fill_masked

__all__ = ["DEFAULT_MAX_ITER", "MIN_TOL", "sinkhorn"]

#: The solver's dtype: every input dtype is solved in float64 (see the module docstring).
SOLVER_DTYPE = torch.float64
#: The smallest tolerance the float64 solver can reach on sums of up to ~1000 entries.
MIN_TOL = 1000 * torch.finfo(SOLVER_DTYPE).eps
#: Default cap on the Newton steps over all stages.
DEFAULT_MAX_ITER = 40
#: Temperature ratio between annealing stages.
_STAGE_RATIO = 4.0
#: Row tolerance at which an annealing stage hands over to the next temperature.
_STAGE_TOL = 1e-2
#: Newton steps between two convergence checks (each check reads one scalar back to the host).
_CHECK_EVERY = 2
#: Number of stages when value checks are off (no host read to size the schedule).
_UNCHECKED_STAGES = 8
#: Alternating normalisations (cheap: no exp) at the start of every stage, before Newton.
_SINKHORN_ROUNDS = 10
#: Cap on the Newton steps of one intermediate stage.
_STAGE_STEPS = 12
#: Initial Levenberg-Marquardt damping, as a fraction of the largest row residual.
_DAMPING = 1e-2


def _balance_columns(c: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    """Given row potentials ``f`` (..., m, 1), the plan with exact unit column sums and its
    row sums: ``P = exp(C + f + g)`` with ``g = -logsumexp_i(C + f)`` (one exp pass)."""
    z = c + f
    p = z.sub_(z.amax(-2, keepdim=True)).exp_()  # in place: one fresh matrix per call
    p = p.div_(p.sum(-2, keepdim=True))
    return p, p.sum(-1)


def _sinkhorn_rounds(
    c: Tensor, f: Tensor, p: Tensor, rows: Tensor, r: Tensor, rounds: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``rounds`` alternating normalisations in the scaling domain (two matrix-vector products
    each, no exp), then the potentials are absorbed and the columns balanced exactly."""
    # In float32: these rounds only bring the start close; the Newton steps polish in float64.
    kernel = p.float()
    target = r.float()
    a = target / rows.float()
    for _ in range(rounds - 1):
        # Products and sums rather than batched matrix-vector products: bmm is slow on
        # (B, n, 1) operands.
        v = 1 / (kernel * a.unsqueeze(-1)).sum(-2)
        a = target / (kernel * v.unsqueeze(-2)).sum(-1)
    # A row whose float32 kernel underflowed to zero gives 0 or inf: leave it to Newton.
    log_a = torch.log(a).to(f.dtype)
    f = f + torch.where(torch.isfinite(log_a), log_a, 0.0).unsqueeze(-1)
    p, rows = _balance_columns(c, f)
    return f, p, rows


def _newton_step(
    c: Tensor, f: Tensor, p: Tensor, rows: Tensor, r: Tensor, damping: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Levenberg-Marquardt step on the row potentials.

    Solves ``(diag(P 1) - P P^T + 1 1^T / m + mu I) d = r - P 1`` with ``mu = damping *
    max|r - P 1|`` and keeps the step only where it lowers the residual; the damping of each
    item shrinks 4x after a kept step and grows 4x after a refused one (no host read).
    Returns the new ``f``, plan, row sums and damping.
    """
    m = rows.shape[-1]
    residual = r - rows
    size = residual.abs()
    hessian = torch.diag_embed(rows) - p @ p.mT
    hessian = hessian + 1.0 / m
    hessian.diagonal(dim1=-2, dim2=-1).add_((damping * size.amax(-1) + 1e-13)[:, None])
    factor, _info = torch.linalg.cholesky_ex(hessian)
    step = torch.cholesky_solve(residual.unsqueeze(-1), factor)
    step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
    new_f = f + step
    new_p, new_rows = _balance_columns(c, new_f)
    keep = (r - new_rows).abs().sum(-1) < size.sum(-1)
    f = torch.where(keep[:, None, None], new_f, f)
    p = torch.where(keep[:, None, None], new_p, p)
    rows = torch.where(keep[:, None], new_rows, rows)
    damping = torch.where(keep, damping / 4, damping * 4).clamp(1e-6, 1e6)
    return f, p, rows, damping


def _solve(
    x: Tensor, tau: float, r: Tensor, tol: float, max_iter: int, checked: bool
) -> tuple[Tensor, Tensor, int]:
    """Anneal and polish; ``x`` (B, m, n) shifted scores (<= 0) in float64.

    Returns the plan (rows exact), its largest column-sum error per item, and the Newton steps
    used.
    """
    batch, m, _n = x.shape
    spread = (-x.amin(dim=(-2, -1))).clamp_min(0.0)
    ratio = (spread / tau).clamp_min(1.0)  # (B,)
    if checked:
        stages = math.ceil(math.log(float(ratio.max())) / math.log(_STAGE_RATIO) - 1e-9)
        stages = max(stages, 0)
    else:
        stages = _UNCHECKED_STAGES
    f_scores = torch.zeros(batch, m, 1, dtype=x.dtype, device=x.device)  # f * t, score units
    used = 0
    # Without checks, a fixed schedule: the first stages share a third of the steps.
    per_stage = max(1, (max_iter // 3) // max(stages, 1))
    for stage in range(stages + 1):
        final = stage == stages
        # t_k = tau * ratio^((K - k) / K): from the spread (at most) down to tau.
        exponent = (stages - stage) / stages if stages else 0.0
        t = (tau * ratio**exponent)[:, None, None]
        c = x / t
        f = f_scores / t
        p, rows = _balance_columns(c, f)
        f, p, rows = _sinkhorn_rounds(c, f, p, rows, r, _SINKHORN_ROUNDS)
        damping = torch.full_like(rows[:, 0], _DAMPING)
        target = tol / 2 if final else _STAGE_TOL
        if checked:
            steps = 0
            while True:
                err = float((r - rows).abs().amax())
                if err <= target or used >= max_iter or (not final and steps >= _STAGE_STEPS):
                    break
                chunk = min(_CHECK_EVERY, max_iter - used)
                for _ in range(chunk):
                    f, p, rows, damping = _newton_step(c, f, p, rows, r, damping)
                used += chunk
                steps += chunk
        else:
            count = max(1, max_iter - used) if final else min(per_stage, _STAGE_STEPS)
            for _ in range(count):
                f, p, rows, damping = _newton_step(c, f, p, rows, r, damping)
            used += count
        f_scores = f * t
    # Rows exact last (the documented invariant); the column error is what is left.
    # A row left with no mass (unconverged, e.g. at an extreme tau) stays zero: the error and
    # the warning report it, rather than a 0 / 0.
    p = p * torch.where(rows > 0, r / rows, 0.0).unsqueeze(-1)
    error = torch.maximum((p.sum(-2) - 1).abs().amax(-1), (p.sum(-1) - r).abs().amax(-1))
    return p, error, used


def _row_masses(s: int, n: int, device: torch.device) -> Tensor:
    """``(m,)``: 1 for each real row, n - s for the slack row when s < n."""
    r = torch.ones(s + (1 if s < n else 0), dtype=SOLVER_DTYPE, device=device)
    if s < n:
        r[-1] = n - s
    return r


def _plan(scores: Tensor, tau: float, tol: float, max_iter: int) -> tuple[Tensor, Tensor, int]:
    """The full float64 plan ``(..., m, n)`` (slack row last), its error ``(...)`` and steps."""
    *batch_shape, s, n = scores.shape
    x = scores.detach().to(SOLVER_DTYPE).reshape(-1, s, n)
    # Masked (-inf) couplings: solved with finite scores far below every other (the solver's
    # annealing and Newton steps need finite input), then set to exactly 0 in the plan, which
    # moves the sums by about exp(-gap / tau) (below 1e-280); the backward, a product with the
    # plan, then gives them exactly zero gradient.
    x, masked = fill_masked(x, lambda spread: 4 * (s + 1) * spread + 1500 * tau)
    x = x - x.amax(-1, keepdim=True)
    if s < n:
        # The slack row's score is a free constant (absorbed by its potential); 0 keeps every
        # column's maximum at 0 after the column shift below.
        x = torch.cat([x, x.new_zeros(x.shape[0], 1, n)], dim=-2)
    x = x - x.amax(-2, keepdim=True)
    r = _row_masses(s, n, x.device).expand(x.shape[0], -1)
    if x.shape[0] == 0:
        return x.reshape(*batch_shape, *x.shape[-2:]), x.new_zeros(batch_shape), 0
    p, error, used = _solve(x, tau, r, tol, max_iter, value_checks_enabled())
    p[:, :s].masked_fill_(masked, 0.0)
    return p.reshape(*batch_shape, *p.shape[-2:]), error.reshape(batch_shape), used


class _Sinkhorn(torch.autograd.Function):
    """``scores -> P`` (real rows) with the implicit backward of the module docstring."""

    generate_vmap_rule = True

    @staticmethod
    def forward(scores: Tensor, tau: float, tol: float, max_iter: int) -> tuple[Tensor, Tensor]:
        plan, error, _used = _plan(scores, tau, tol, max_iter)
        s = scores.shape[-2]
        if value_checks_enabled() and error.numel() and float(error.max()) > tol:
            warnings.warn(
                f"Permutation.relax: Sinkhorn stopped at max_iter={max_iter} Newton steps with "
                f"column sums off by up to {float(error.max()):.1e}, above tol={tol:g} "
                f"(tau={tau:g}); raise max_iter or tol",
                RuntimeWarning,
                stacklevel=_STACKLEVEL,
            )
        return plan[..., :s, :].to(scores.dtype), plan

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _scores, tau, _tol, _max_iter = inputs
        _out, plan = output
        ctx.save_for_backward(plan)
        ctx.tau = tau
        ctx.mark_non_differentiable(plan)
        # No zeros of the plan's size for the plan's (absent) gradient.
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, _grad_plan: Tensor | None) -> tuple[Any, ...]:
        if grad_out is None:
            return None, None, None, None
        (plan,) = ctx.saved_tensors
        return _implicit_grad(plan, grad_out, ctx.tau), None, None, None


def _implicit_grad(plan: Tensor, grad_out: Tensor, tau: float) -> Tensor:
    """``dL/dscores`` from the full plan ``(..., m, n)`` and ``dL/dP`` on the real rows."""
    s = grad_out.shape[-2]
    m, n = plan.shape[-2:]
    g = grad_out.to(plan.dtype)
    if m > s:
        g = torch.cat([g, g.new_zeros(*g.shape[:-2], m - s, n)], dim=-2)
    q = plan * g
    r = plan.sum(-1)
    rhs = q.sum(-1) - (plan @ q.sum(-2).unsqueeze(-1)).squeeze(-1)
    system = torch.diag_embed(r) - plan @ plan.mT + 1.0 / m
    system.diagonal(dim1=-2, dim2=-1).add_(1e-13)
    a = torch.linalg.solve(system, rhs) if plan.numel() else rhs
    b = q.sum(-2) - (plan.mT @ a.unsqueeze(-1)).squeeze(-1)
    grad_c = plan * (g - a.unsqueeze(-1) - b.unsqueeze(-2))
    return (grad_c[..., :s, :] / tau).to(grad_out.dtype)


#: Frames from ``warnings.warn`` up to the user's call of ``Permutation().relax``: forward <-
#: Function.apply <- sinkhorn <- Permutation._relax <- Structure.relax <- the user's line. On the
#: estimators' path (which call ``_relax`` directly) the same depth names a line inside them.
_STACKLEVEL = 6


def sinkhorn(scores: Tensor, tau: float, *, tol: float, max_iter: int) -> Tensor:
    """The entropic matching ``(..., s, n)`` of ``scores`` at temperature ``tau``.

    Rows sum to 1 exactly (to rounding), columns to 1 within ``tol`` (at most 1 when s < n;
    the slack row takes the rest), computed in float64 and returned in ``scores``' dtype.
    Differentiable by the implicit backward of the module docstring.
    """
    # Not through pickgrad._autograd.apply: its frames would move the warning's stacklevel,
    # and the iterations dwarf the apply's cost.
    out, _plan_full = _Sinkhorn.apply(scores, tau, tol, max_iter)
    result: Tensor = out
    return result
