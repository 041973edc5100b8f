"""Entropic matching (Sinkhorn) solved to a tolerance, with an implicit backward.

The relaxation of ``Permutation`` is the entropy-regularised transport plan

    P = argmax_{P 1 = r, P^T 1 = c, P >= 0}  <P, scores> / tau + H(P),

i.e. ``P_ij = exp(scores_ij / tau + f_i + g_j)`` for dual potentials f, g. Rectangular scores
``(s, n)``, s < n, get a slack row of mass ``n - s`` (score 0), so r = (1, ..., 1, n - s) and
c = 1; square scores have r = c = 1.

Forward: scores are first shifted by their row and then their column maxima (the plan is
invariant to that, and it keeps large common offsets and exact ties exact), and the whole solve
runs in float64. The dual problem is solved by temperature annealing (epsilon scaling): the
temperature falls geometrically from the scores' spread down to ``tau`` (about a factor 4 per
stage), each stage warm-started from the previous one. At each temperature the columns are
kept exactly balanced (``g`` eliminated in closed form) and the row potentials ``f`` take
damped Newton (Levenberg-Marquardt) steps on the concave semi-dual

    Phi(f) = <r, f> - sum_j log sum_i exp(C_ij + f_i),   C = scores / t,

whose Hessian is ``-(diag(P 1) - P P^T)`` (m x m, rank m - 1 on the constant vector, which is
the gauge; the Newton system adds ``1 1^T / m``). The step length is picked per batch item from
{1, 1/2, 1/4, 1/16} (or no step) by the row residual, so the residual never grows. Sinkhorn's
alternating normalisations are the diagonal (Jacobi) version of this Newton step; at small tau
they need thousands of rounds (the plan is nearly a permutation and the off-diagonal couplings
are ~exp(-gap / tau)), while the Newton steps take tens.

Backward: implicit differentiation of the optimality conditions, with no memory of the
iterations. With ``Q = P * G`` (``G = dL/dP``), the gradient with respect to ``C`` is

    dL/dC = P * (G - a 1^T - 1 b^T),   [[diag(r), P], [P^T, diag(c)]] [a; b] = [Q 1; Q^T 1],

and eliminating b = Q^T 1 - P^T a (c = 1) leaves the m x m system

    (diag(r) - P P^T) a = Q 1 - P Q^T 1,

singular on the constant vector (any a + t 1, b - t 1 gives the same gradient), solved with
``1 1^T / m`` added. Derivation: differentiate ``P 1 = r`` and ``P^T 1 = c`` with
``dP = P * (dC + df 1^T + 1 dg^T)`` and take the adjoint. The scores' gradient is
``dL/dC / tau`` on the real rows.

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

__all__ = ["DEFAULT_MAX_ITER", "MIN_TOL", "sinkhorn"]

#: The solver's dtype: every input dtype is solved in float64 (see the module docstring).
SOLVER_DTYPE = torch.float64
#: The smallest tolerance the float64 solver can reach on sums of up to ~1000 entries.
MIN_TOL = 1000 * torch.finfo(SOLVER_DTYPE).eps
#: Default cap on the Newton steps over all stages.
DEFAULT_MAX_ITER = 60
#: Temperature ratio between annealing stages.
_STAGE_RATIO = 4.0
#: Row tolerance at which an annealing stage hands over to the next temperature.
_STAGE_TOL = 1e-2
#: Newton steps between two convergence checks (each check reads one scalar back to the host).
_CHECK_EVERY = 2
#: Number of stages when value checks are off (no host read to size the schedule).
_UNCHECKED_STAGES = 8
#: Step lengths tried along each Newton direction; the best by row residual is kept (or none).
_STEP_LENGTHS = (1.0, 0.5, 0.25, 0.0625)
#: Levenberg-Marquardt damping, as a fraction of the largest row residual.
_DAMPING = 1e-2


def _balance_columns(c: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    """Given row potentials ``f`` (..., m, 1), the plan with exact unit column sums and its
    row sums: ``P = exp(C + f + g)`` with ``g = -logsumexp_i(C + f)``."""
    z = c + f
    p = torch.exp(z - torch.logsumexp(z, dim=-2, keepdim=True))
    return p, p.sum(-1)


def _newton_step(
    c: Tensor, f: Tensor, p: Tensor, rows: Tensor, log_r: Tensor, r: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One damped Newton step on the row potentials; returns the new ``f``, plan and row sums."""
    batch, m = rows.shape
    residual = r - rows
    hessian = torch.diag_embed(rows) - p @ p.mT
    hessian = hessian + 1.0 / m
    damping = _DAMPING * residual.abs().amax(-1) + 1e-13
    hessian.diagonal(dim1=-2, dim2=-1).add_(damping[:, None])
    step, _info = torch.linalg.solve_ex(hessian, residual)
    step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
    lengths = torch.tensor(_STEP_LENGTHS, dtype=c.dtype, device=c.device).view(-1, 1, 1, 1)
    candidates = f.unsqueeze(0) + lengths * step[None, :, :, None]
    plans, candidate_rows = _balance_columns(c.unsqueeze(0), candidates)
    scores = (r - candidate_rows).abs().sum(-1)  # (steps, batch)
    best = scores.argmin(0)
    keep = scores.gather(0, best[None]).squeeze(0) < residual.abs().sum(-1)
    index = torch.arange(batch, device=c.device)
    chosen = keep[:, None, None]
    f = torch.where(chosen, candidates[best, index], f)
    p = torch.where(chosen, plans[best, index], p)
    rows = torch.where(keep[:, None], candidate_rows[best, index], rows)
    del log_r
    return f, p, rows


def _solve(
    x: Tensor, tau: float, r: Tensor, log_r: Tensor, tol: float, max_iter: int, checked: bool
) -> tuple[Tensor, Tensor, int]:
    """Anneal and polish; ``x`` (B, m, n) shifted scores (<= 0) in float64.

    Returns the plan (rows exact), its largest column-sum error per item, and the steps used.
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
    if checked:
        budget = max_iter
    else:
        # A fixed schedule: the first stages share a third of the steps, the last the rest.
        per_stage = max(1, (max_iter // 3) // max(stages, 1))
    for stage in range(stages + 1):
        final = stage == stages
        # t_k = tau * ratio^((K - k) / K): from the spread (at most) down to tau.
        exponent = (stages - stage) / stages if stages else 0.0
        t = (tau * ratio**exponent)[:, None, None]
        c = x / t
        f = f_scores / t
        p, rows = _balance_columns(c, f)
        target = tol / 2 if final else _STAGE_TOL
        if checked:
            steps = 0
            while True:
                err = float((r - rows).abs().amax()) if rows.numel() else 0.0
                if err <= target or used >= budget or (not final and steps >= 12):
                    break
                for _ in range(_CHECK_EVERY):
                    f, p, rows = _newton_step(c, f, p, rows, log_r, r)
                used += _CHECK_EVERY
                steps += _CHECK_EVERY
        else:
            count = max(1, max_iter - used) if final else per_stage
            for _ in range(count):
                f, p, rows = _newton_step(c, f, p, rows, log_r, r)
            used += count
        f_scores = f * t
    # Rows exact last (the documented invariant); the column error is what is left.
    p = p / rows.unsqueeze(-1) * r.unsqueeze(-1) if p.numel() else p
    error = (p.sum(-2) - 1).abs().amax(-1) if p.numel() else p.new_zeros(batch)
    return p, error, used


def _row_masses(s: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    m = s + (1 if s < n else 0)
    r = torch.ones(m, dtype=SOLVER_DTYPE, device=device)
    if s < n:
        r[-1] = n - s
    return r, r.log()[:, None]


def _plan(scores: Tensor, tau: float, tol: float, max_iter: int) -> tuple[Tensor, Tensor, int]:
    """The full float64 plan ``(..., m, n)`` (slack row last), its error ``(...)`` and steps."""
    *batch_shape, s, n = scores.shape
    x = scores.detach().to(SOLVER_DTYPE).reshape(-1, s, n)
    x = x - x.amax(-1, keepdim=True)
    if s < n:
        # The slack row's score is a free constant (absorbed by its potential); 0 keeps every
        # column's maximum at 0 after the column shift below.
        x = torch.cat([x, x.new_zeros(x.shape[0], 1, n)], dim=-2)
    x = x - x.amax(-2, keepdim=True)
    r, log_r = _row_masses(s, n, x.device)
    r = r.expand(x.shape[0], -1)
    if x.shape[0] == 0:
        return x.reshape(*batch_shape, *x.shape[-2:]), x.new_zeros(batch_shape), 0
    p, error, used = _solve(x, tau, r, log_r, tol, max_iter, value_checks_enabled())
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

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor, _grad_plan: Tensor | None) -> tuple[Any, ...]:
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
    out, _plan_full = _Sinkhorn.apply(scores, tau, tol, max_iter)
    return out
