"""``pickgrad.diagnose``: bias, variance and cost of every estimator against the exact gradient.

For each estimator, ``R`` gradient draws ``d_1..d_R`` are taken (each one call of
:func:`pickgrad.estimate` with ``samples_per_draw`` samples, then a backward pass) and compared
with the exact gradient ``g`` (see :func:`pickgrad.exact_gradient`):

* ``bias = ||mean_r d_r - g||``;
* ``variance = trace(Cov(d))`` (sample covariance), ``std = sqrt(variance)``;
* ``mse = mean_r ||d_r - g||^2`` (``= bias^2 + variance (R-1)/R``);
* ``cosine_draw = mean_r cos(d_r, g)``, ``cosine_mean = cos(mean_r d_r, g)``;
* ``sign_agreement``: share of coordinates where ``sign(d_r) == sign(g)``, averaged over draws,
  over the coordinates where ``g`` is nonzero (resolved: ``|g| > 2 se`` for a reference);
* ``time_per_gradient``: mean wall time of one ``estimate`` + backward, in seconds;
* ``efficiency = mse * time_per_gradient``: the MSE reachable in one second of averaging is
  ``efficiency`` (averaging k draws divides the variance by k), so lower is better.

Even an unbiased estimator shows ``bias > 0`` from its Monte Carlo noise: the *noise floor*
``sqrt(variance / R + ||se||^2)`` is the size of ``bias`` expected from noise alone (``se`` is the
reference's standard error, 0 when the gradient is exact). When the reference is itself
estimated, ``||se||^2`` is subtracted from ``mse``, and bias is resolved only down to that floor.

**Advisor rule.** An estimator's bias is *acceptable* when
``bias <= max(0.2 * ||g||, 3 * noise_floor)``: either small against the gradient itself
(relative bias at most 20%, so the mean points within about 12 degrees of ``g``) or not
distinguishable from zero with these draws. The recommendation is the lowest ``mse * time``
among estimators with acceptable bias (any temperature of the sweep counts); if none qualifies,
the lowest ``mse``, and the report says why.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pickgrad._validation import check_positive_int, check_tau
from pickgrad.diagnostics.exact import DEFAULT_MAX_ENUMERATION, ExactGradient, exact_gradient
from pickgrad.estimators.base import Estimator, LossFn, available_estimators, get_estimator
from pickgrad.estimators.reinforce import BASELINES
from pickgrad.select import estimate
from pickgrad.structures.base import Structure

__all__ = [
    "ACCEPTABLE_RELATIVE_BIAS",
    "RESOLUTION_Z",
    "DiagnosticReport",
    "EstimatorStats",
    "Recommendation",
    "diagnose",
    "parse_estimator",
    "resolve_estimators",
]

#: Bias at most this fraction of ``||exact||`` is acceptable.
ACCEPTABLE_RELATIVE_BIAS = 0.2
#: Bias within this many noise floors of zero is not resolved, hence acceptable.
RESOLUTION_Z = 3.0

#: Row order of the default estimators: DESIGN.md's table; estimators registered later come last.
_ORDER = (
    "st",
    "st-relaxed",
    "relaxed",
    "gumbel-relaxed",
    "st-gumbel",
    "gumbel-rao",
    "reinforce",
    "perturbed",
    "imle",
    "blackbox",
)

EstimatorsArg = Sequence[str | Estimator | tuple[str, Estimator]] | Mapping[str, Estimator] | None


@dataclass
class EstimatorStats:
    """One estimator (at one temperature) measured against the exact gradient.

    Attributes are defined in the module docstring; ``tau`` is None for estimators that ignore
    the temperature; ``hard`` is False for estimators whose forward pass is relaxed, not hard;
    ``error`` holds the message if the estimator failed on this problem (then every figure is
    NaN).
    """

    label: str
    estimator: str
    tau: float | None
    n_draws: int
    bias: float = math.nan
    noise_floor: float = math.nan
    relative_bias: float = math.nan
    variance: float = math.nan
    std: float = math.nan
    mse: float = math.nan
    cosine_draw: float = math.nan
    cosine_mean: float = math.nan
    sign_agreement: float = math.nan
    time_per_gradient: float = math.nan
    efficiency: float = math.nan
    acceptable_bias: bool = False
    hard: bool = True
    error: str | None = None

    @property
    def tau_text(self) -> str:
        return "-" if self.tau is None else f"{self.tau:g}"


@dataclass
class Recommendation:
    """The advisor's choice: ``label`` at temperature ``tau`` (None if it has none), and why."""

    label: str
    tau: float | None
    reason: str


@dataclass
class DiagnosticReport:
    """What :func:`diagnose` returns; renders as markdown, JSON and PNG.

    Attributes:
        problem: the problem's name.
        structure: ``repr`` of the structure.
        scores_shape: shape of the scores.
        reference: the exact (or reference) gradient every row is measured against.
        rows: one :class:`EstimatorStats` per estimator at the main temperature ``tau``.
        sweep: extra rows, the temperature-dependent estimators at each ``tau_sweep`` value.
        recommendation: the advisor's choice (None if every estimator failed).
        settings: ``n_draws``, ``samples_per_draw``, ``tau``, ``tau_sweep``, ``seed``.
    """

    problem: str
    structure: str
    scores_shape: tuple[int, ...]
    reference: ExactGradient
    rows: list[EstimatorStats]
    sweep: list[EstimatorStats] = field(default_factory=list)
    recommendation: Recommendation | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, label: str, tau: float | None = None) -> EstimatorStats:
        """The row of ``label`` (at the main tau, or at ``tau`` from the sweep)."""
        rows = self.rows if tau is None else [*self.rows, *self.sweep]
        for row in rows:
            if row.label == label and (tau is None or row.tau == tau):
                return row
        raise KeyError(f"no row {label!r}" + ("" if tau is None else f" at tau={tau}"))

    # --- renderings ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (NaN figures become None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {key: clean(item) for key, item in value.items()}
            if isinstance(value, list | tuple):
                return [clean(item) for item in value]
            return value

        reference = self.reference
        return clean(
            {
                "problem": self.problem,
                "structure": self.structure,
                "scores_shape": list(self.scores_shape),
                "reference": {
                    "exact": reference.exact,
                    "method": reference.method,
                    "norm": float(reference.gradient.double().norm()),
                    "noise_norm": reference.noise_norm,
                    "expected_loss": float(reference.value),
                    "gradient": reference.gradient.double().tolist(),
                },
                "settings": dict(self.settings),
                "rule": {
                    "acceptable_relative_bias": ACCEPTABLE_RELATIVE_BIAS,
                    "resolution_z": RESOLUTION_Z,
                },
                "rows": [asdict(row) for row in self.rows],
                "sweep": [asdict(row) for row in self.sweep],
                "recommendation": None
                if self.recommendation is None
                else asdict(self.recommendation),
            }
        )

    def to_json(self, path: str | Path | None = None, *, indent: int = 2) -> str:
        """The report as JSON text; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_markdown(self) -> str:
        """Header, the table at the main tau, the tau sweep (if any) and the recommendation."""
        reference = self.reference
        kind = "exact" if reference.exact else f"reference, noise {reference.noise_norm:.3g}"
        settings = self.settings
        lines = [
            f"### {self.problem}",
            "",
            f"{self.structure}, scores {tuple(self.scores_shape)}; gradient: {reference.method} "
            f"({kind}); ||exact|| = {float(reference.gradient.double().norm()):.4g}, "
            f"E[loss] = {float(reference.value):.4g}; {settings.get('n_draws')} draws of "
            f"{settings.get('samples_per_draw')} samples per estimator, seed {settings.get('seed')}.",
            "",
            "| estimator | tau | bias | noise floor | rel. bias | std | MSE | cos(draw) | cos(mean) "
            "| sign agr. | ms/grad | MSE x time | bias ok |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            if row.error is not None:
                lines.append(f"| {row.label} | {row.tau_text} | failed: {row.error} |" + " |" * 10)
                continue
            lines.append(
                f"| {row.label} | {row.tau_text} | {row.bias:.3g} | {row.noise_floor:.3g} "
                f"| {row.relative_bias:.3g} | {row.std:.3g} | {row.mse:.3g} "
                f"| {row.cosine_draw:.3f} | {row.cosine_mean:.3f} | {row.sign_agreement:.3f} "
                f"| {row.time_per_gradient * 1e3:.3g} | {row.efficiency:.3g} "
                f"| {'yes' if row.acceptable_bias else 'no'} |"
            )
        if self.sweep:
            taus = sorted({row.tau for row in self.sweep if row.tau is not None})
            labels = list(dict.fromkeys(row.label for row in self.sweep))
            lines += [
                "",
                "MSE (bias) against temperature:",
                "",
                "| estimator | " + " | ".join(f"tau={tau:g}" for tau in taus) + " |",
                "|---|" + "---|" * len(taus),
            ]
            for label in labels:
                cells = []
                for tau in taus:
                    row = next((r for r in self.sweep if r.label == label and r.tau == tau), None)
                    cells.append(
                        "-"
                        if row is None or row.error is not None
                        else f"{row.mse:.3g} ({row.bias:.2g}){'' if row.acceptable_bias else '*'}"
                    )
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
            lines.append("\\* bias not acceptable.")
        lines.append("")
        if self.recommendation is None:
            lines.append("**Recommendation:** none (every estimator failed).")
        else:
            rec = self.recommendation
            tau = "" if rec.tau is None else f" at tau={rec.tau:g}"
            lines.append(f"**Recommendation: {rec.label}{tau}** ({rec.reason}).")
        return "\n".join(lines)

    def to_png(self, path: str | Path) -> None:
        """Bias against standard deviation per estimator; MSE against tau if swept."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 if self.sweep else 1
        figure, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5.0), squeeze=False)
        axis = axes[0][0]
        good = [row for row in self.rows if row.error is None]
        values = [v for row in good for v in (row.bias, row.std) if v > 0]
        top = max(values) * 2 if values else 1.0
        # Below the smallest visible value the axes are linear, so zero (deterministic
        # estimators, exactly unbiased ones) is drawn rather than dropped.
        visible = [v for v in values if v > 1e-9 * top]
        linthresh = (min(visible) if visible else 1.0) / 2
        colours = plt.get_cmap("tab20")
        for index, row in enumerate(good):
            marker = "o" if row.acceptable_bias else "x"
            axis.scatter(
                row.std, row.bias, marker=marker, s=40, color=colours(index % 20), label=row.label
            )
        axis.plot([0, top], [0, top], "k--", linewidth=0.8, label="bias = std")
        axis.set_xscale("symlog", linthresh=linthresh)
        axis.set_yscale("symlog", linthresh=linthresh)
        axis.set(
            xlabel="standard deviation of one draw  sqrt(trace Cov)",
            ylabel="bias  ||mean - exact||",
            title=f"{self.problem} (o: bias ok, x: not)",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if self.sweep:
            axis = axes[0][1]
            for label in dict.fromkeys(row.label for row in self.sweep):
                points = sorted(
                    (row.tau, row.mse)
                    for row in self.sweep
                    if row.label == label and row.error is None and row.tau is not None
                )
                if points:
                    axis.plot(*zip(*points, strict=True), "o-", label=label, linewidth=1.4)
            for row in good:
                if row.tau is None and row.mse > 0:
                    axis.axhline(row.mse, linestyle=":", linewidth=1.0, color="gray")
                    axis.annotate(
                        row.label,
                        (1.0, row.mse),
                        xycoords=("axes fraction", "data"),
                        fontsize=6,
                        ha="right",
                        va="bottom",
                        color="gray",
                    )
            axis.set(
                xscale="log",
                yscale="log",
                xlabel="temperature tau",
                ylabel="MSE",
                title="MSE against temperature (dotted: no tau)",
            )
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7, loc="best")
        if self.recommendation is not None:
            rec = self.recommendation
            tau = "" if rec.tau is None else f" (tau={rec.tau:g})"
            figure.suptitle(f"recommended: {rec.label}{tau}", fontsize=10)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)


# --- estimator specs ------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_estimator(spec: str) -> tuple[str, Estimator]:
    """``(label, estimator)`` from a spec: ``name``, ``reinforce/<baseline>``, or
    ``name:key=value,key=value`` (e.g. ``gumbel-rao:n_draws=4``).

    Example:
        >>> parse_estimator("gumbel-rao:n_draws=4")
        ('gumbel-rao:n_draws=4', GumbelRao(n_draws=4))
        >>> parse_estimator("reinforce/rloo")
        ('reinforce/rloo', Reinforce(baseline='rloo'))
    """
    name, _, option_text = spec.partition(":")
    options: dict[str, Any] = {}
    if "/" in name:
        name, _, baseline = name.partition("/")
        options["baseline"] = baseline
    for item in filter(None, option_text.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"estimator option {item!r} in {spec!r} must be key=value")
        options[key.strip()] = _parse_value(value.strip())
    try:
        return spec, get_estimator(name, **options)
    except TypeError as error:
        raise ValueError(f"bad estimator spec {spec!r}: {error}") from None


def resolve_estimators(
    estimators: EstimatorsArg, structure: Structure
) -> list[tuple[str, Estimator]]:
    """``(label, estimator)`` pairs to diagnose.

    ``None`` means every registered estimator that ``structure`` supports, ``reinforce`` once
    per baseline (labelled ``reinforce/<baseline>``). Otherwise a mapping label -> estimator, or
    a sequence of specs (see :func:`parse_estimator`; a bare ``reinforce`` expands to every
    baseline), ``Estimator`` objects, or ``(label, Estimator)`` pairs.
    """
    if estimators is None:
        known = available_estimators(structure)
        estimators = sorted(known, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER))
    if isinstance(estimators, Mapping):
        return [(str(label), get_estimator(est)) for label, est in estimators.items()]
    if isinstance(estimators, str):
        raise TypeError("estimators must be a list of names, not a single string")
    pairs: list[tuple[str, Estimator]] = []
    for item in estimators:
        if isinstance(item, tuple):
            label, est = item
            pairs.append((str(label), get_estimator(est)))
        elif isinstance(item, Estimator):
            pairs.append((repr(item), item))
        elif item == "reinforce":
            pairs += [(f"reinforce/{b}", get_estimator("reinforce", baseline=b)) for b in BASELINES]
        elif isinstance(item, str):
            pairs.append(parse_estimator(item))
        else:
            raise TypeError(f"estimators entries must be names or Estimators, got {item!r}")
    return pairs


# --- measuring --------------------------------------------------------------------------------


def _draw_gradients(
    loss_fn: LossFn,
    scores: Tensor,
    structure: Structure,
    estimator: Estimator,
    *,
    n_draws: int,
    samples_per_draw: int,
    tau: float,
    seed: int,
    warmup: int,
    tick: Callable[[], None],
) -> tuple[Tensor, float]:
    """``(n_draws, scores.numel())`` float64 gradient draws and the mean seconds per draw."""
    generator = torch.Generator(device=scores.device).manual_seed(seed)
    leaf = scores.detach().clone().requires_grad_(True)
    draws = torch.empty(n_draws, scores.numel(), dtype=torch.float64)
    elapsed = 0.0
    for index in range(warmup + n_draws):
        start = time.perf_counter()
        surrogate = estimate(
            loss_fn,
            leaf,
            structure,
            estimator,
            n_samples=samples_per_draw,
            tau=tau,
            generator=generator,
        )
        if surrogate.requires_grad:
            (gradient,) = torch.autograd.grad(surrogate, leaf, allow_unused=True)
        else:
            gradient = None
        if gradient is None:
            gradient = torch.zeros_like(leaf)
        if scores.device.type == "cuda":
            torch.cuda.synchronize(scores.device)
        if index >= warmup:
            elapsed += time.perf_counter() - start
            draws[index - warmup] = gradient.detach().flatten().double().cpu()
        tick()
    return draws, elapsed / n_draws


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of ``a`` ``(R, d)`` with ``b`` ``(d,)``; 0 where either is zero."""
    norms = a.norm(dim=-1) * b.norm()
    return torch.where(norms > 0, a @ b / norms.clamp_min(1e-300), torch.zeros_like(norms))


def _statistics(
    row: EstimatorStats, draws: Tensor, reference: ExactGradient, seconds: float
) -> None:
    exact = reference.gradient.detach().flatten().double().cpu()
    se = reference.standard_error.detach().flatten().double().cpu()
    reference_noise = float((se**2).sum())
    count = draws.shape[0]
    mean = draws.mean(0)
    variance = float(((draws - mean) ** 2).sum(1).sum() / max(count - 1, 1))
    scale = max(float(mean.norm()), float(exact.norm()))
    if variance <= (1e-12 * scale) ** 2:  # a deterministic estimator: only rounding in the mean
        variance = 0.0
    row.bias = float((mean - exact).norm())
    row.noise_floor = math.sqrt(variance / count + reference_noise)
    norm = float(exact.norm())
    row.relative_bias = row.bias / norm if norm > 0 else (0.0 if row.bias == 0 else math.inf)
    row.variance = variance
    row.std = math.sqrt(variance)
    row.mse = max(float(((draws - exact) ** 2).sum(1).mean()) - reference_noise, 0.0)
    row.cosine_draw = float(_cosine(draws, exact).mean())
    row.cosine_mean = float(_cosine(mean[None], exact)[0])
    if reference.exact:
        resolved = exact.abs() > 1e-12 * float(exact.abs().max() if exact.numel() else 0)
    else:
        resolved = exact.abs() > 2 * se
    if bool(resolved.any()):
        agree = torch.sign(draws[:, resolved]) == torch.sign(exact[resolved])
        row.sign_agreement = float(agree.double().mean())
    row.time_per_gradient = seconds
    row.efficiency = row.mse * seconds
    row.acceptable_bias = row.bias <= max(
        ACCEPTABLE_RELATIVE_BIAS * norm, RESOLUTION_Z * row.noise_floor
    )


def recommend(rows: Sequence[EstimatorStats]) -> Recommendation | None:
    """Apply the advisor rule (module docstring) to measured rows."""
    recommendation = _recommend(rows)
    if recommendation is not None:
        best = next(row for row in rows if row.label == recommendation.label)
        if not best.hard:
            recommendation.reason += "; note: its forward pass is relaxed, not a hard choice"
    return recommendation


def _recommend(rows: Sequence[EstimatorStats]) -> Recommendation | None:
    usable = [row for row in rows if row.error is None and math.isfinite(row.mse)]
    if not usable:
        return None
    acceptable = [row for row in usable if row.acceptable_bias]
    if acceptable:
        best = min(acceptable, key=lambda row: (row.efficiency, row.mse))
        return Recommendation(
            best.label,
            best.tau,
            f"lowest MSE x time ({best.efficiency:.3g}) among the {len(acceptable)} of "
            f"{len(usable)} settings whose bias is acceptable (bias <= "
            f"{ACCEPTABLE_RELATIVE_BIAS:g} ||exact|| or within {RESOLUTION_Z:g} noise floors of 0); "
            f"bias {best.bias:.3g}, std {best.std:.3g}, {best.time_per_gradient * 1e3:.3g} ms/grad",
        )
    best = min(usable, key=lambda row: row.mse)
    return Recommendation(
        best.label,
        best.tau,
        f"no estimator has acceptable bias (bias <= {ACCEPTABLE_RELATIVE_BIAS:g} ||exact|| or within "
        f"{RESOLUTION_Z:g} noise floors of 0), so this is simply the lowest MSE ({best.mse:.3g}); "
        "more draws (to resolve bias) or another temperature may change this",
    )


def diagnose(
    loss_fn: LossFn,
    scores: Tensor,
    structure: Structure,
    estimators: EstimatorsArg = None,
    n_samples: int = 200,
    tau: float = 1.0,
    *,
    samples_per_draw: int = 4,
    tau_sweep: Sequence[float] | None = None,
    reference: ExactGradient | Tensor | None = None,
    expected_loss: Callable[[Tensor], Tensor] | None = None,
    max_enumeration: int = DEFAULT_MAX_ENUMERATION,
    seed: int = 0,
    name: str = "problem",
    progress: bool = False,
) -> DiagnosticReport:
    """Measure every estimator's gradient of ``E[loss_fn(x)]`` against the exact gradient.

    The figures and the advisor's rule are defined in :mod:`pickgrad.diagnostics.report`'s
    docstring: bias ``||mean - exact||``, variance ``trace Cov``, MSE, cosine of one draw and of
    the mean, sign agreement, time per gradient and ``MSE x time``; the recommendation is the
    lowest ``MSE x time`` among estimators whose bias is at most 20% of ``||exact||`` or within
    3 noise floors of zero.

    Args:
        loss_fn: maps samples ``(n, *scores.shape)`` to losses ``(n,)`` or ``(n, *batch)``.
        scores: ``(*batch, *event)`` floating tensor, used detached (float64 recommended).
        structure: what is chosen, e.g. ``OneHot()``.
        estimators: None for every estimator the structure supports (``reinforce`` once per
            baseline), or names/specs, ``Estimator`` objects, ``(label, Estimator)`` pairs.
        n_samples: gradient draws per estimator (``R``).
        tau: temperature of the estimators that use one.
        samples_per_draw: samples per draw, the ``n_samples`` of each
            :func:`pickgrad.estimate` call, the same for every estimator (rloo needs >= 2).
        tau_sweep: temperatures at which to also measure the temperature-dependent estimators
            (for the MSE-against-tau plot; the advisor considers them too).
        reference: a precomputed exact gradient (an ``ExactGradient`` or a tensor taken as
            exact); by default :func:`pickgrad.exact_gradient` is called.
        expected_loss: closed form of ``E[loss]``, passed to ``exact_gradient``.
        max_enumeration: passed to ``exact_gradient``.
        seed: seed of every estimator's noise (the same for each, so rows are reproducible one
            by one).
        name: the problem's name, shown in the report.
        progress: show a tqdm progress bar on stderr.

    Returns:
        a :class:`DiagnosticReport`.

    Example:
        >>> import pickgrad
        >>> s = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
        >>> cost = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
        >>> report = pickgrad.diagnose(lambda x: x @ cost, s, pickgrad.OneHot(),
        ...                            ["st-gumbel", "reinforce/rloo"], n_samples=50)
        >>> [row.label for row in report.rows], report.rows[1].acceptable_bias
        (['st-gumbel', 'reinforce/rloo'], True)
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a pickgrad Structure, got {type(structure).__name__}")
    structure.validate(scores)
    check_positive_int(n_samples, name="n_samples", minimum=2)
    check_positive_int(samples_per_draw, name="samples_per_draw")
    tau = check_tau(tau)
    sweep_taus = [check_tau(t, name="tau_sweep") for t in (tau_sweep or ())]
    pairs = resolve_estimators(estimators, structure)
    for _, est in pairs:
        est.check_structure(structure)
    scores = scores.detach()
    if reference is None:
        reference = exact_gradient(
            loss_fn, scores, structure, max_enumeration=max_enumeration, expected_loss=expected_loss
        )
    elif isinstance(reference, Tensor):
        if reference.shape != scores.shape:
            raise ValueError(
                f"reference must have the shape of scores {tuple(scores.shape)}, "
                f"got {tuple(reference.shape)}"
            )
        reference = ExactGradient(
            reference.detach(), torch.tensor(math.nan), True, torch.zeros_like(reference), "given"
        )
    jobs = [(label, est, tau if est.uses_tau else None, False) for label, est in pairs]
    jobs += [
        (label, est, t, True)
        for t in sweep_taus
        if t != tau
        for label, est in pairs
        if est.uses_tau
    ]
    warmup = 2
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs) * (n_samples + warmup), desc=name, unit="grad", leave=False)
    rows, sweep = [], []
    try:
        for label, est, job_tau, in_sweep in jobs:
            if bar is not None:
                bar.set_postfix_str(label if job_tau is None else f"{label} tau={job_tau:g}")
            row = EstimatorStats(label, repr(est), job_tau, n_samples, hard=type(est).hard)
            try:
                draws, seconds = _draw_gradients(
                    loss_fn,
                    scores,
                    structure,
                    est,
                    n_draws=n_samples,
                    samples_per_draw=samples_per_draw,
                    tau=tau if job_tau is None else job_tau,
                    seed=seed,
                    warmup=warmup,
                    tick=(lambda: bar.update(1)) if bar is not None else (lambda: None),
                )
                _statistics(row, draws, reference, seconds)
            except Exception as error:  # one estimator failing must not lose the others
                row.error = f"{type(error).__name__}: {error}"
            (sweep if in_sweep else rows).append(row)
    finally:
        if bar is not None:
            bar.close()
    if sweep_taus:
        # The sweep table also shows the main tau when it is one of the swept values.
        order = {label: index for index, (label, _) in enumerate(pairs)}
        sweep = sorted(
            sweep + [row for row in rows if row.tau is not None and row.tau in sweep_taus],
            key=lambda row: (order[row.label], row.tau),
        )
    return DiagnosticReport(
        problem=name,
        structure=repr(structure),
        scores_shape=tuple(scores.shape),
        reference=reference,
        rows=rows,
        sweep=sweep,
        recommendation=recommend(rows + [row for row in sweep if all(row is not r for r in rows)]),
        settings={
            "n_draws": n_samples,
            "samples_per_draw": samples_per_draw,
            "tau": tau,
            "tau_sweep": sweep_taus,
            "seed": seed,
        },
    )
