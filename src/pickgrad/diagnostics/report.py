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
* ``time_per_gradient``: median wall time of one ``estimate`` + backward, in seconds (the
  median resists the load spikes of a shared machine), at the caller's torch thread setting
  (``torch.get_num_threads()``, recorded in the report's settings);
* ``relative_cost``: ``time_per_gradient`` over the time of a fixed reference op measured in the
  same run, the cheapest hard gradient of this loss (``st``: one argmax, the loss on the same
  number of samples, one backward), so that it does not move with the machine's load as much;
* ``efficiency = mse * time_per_gradient``: the MSE reachable in one second of averaging is
  ``efficiency`` (averaging k draws divides the variance by k), so lower is better.

**Parameter space.** With ``parameters=`` (``scores`` then carries the graph from those tensors,
e.g. a network's output on a training batch), every draw ``d`` and the exact gradient ``g`` are
pulled back to the parameters, ``J^T d`` and ``J^T g`` (``J = d scores / d parameters``, one
vector-Jacobian product each), and every figure is measured there: the gradient the optimiser
follows. Through a shared network the per-example noises average out over the batch while the
per-example biases add up coherently, so bias weighs more against variance there than in the
scores (measured on critic-slots: st-gumbel's squared perpendicular bias is 1/4 of its
``variance / 19`` in the scores of 4 examples and about equal to it in the selector's parameters
on the demo's batch of 32; ``benchmarks/bench_advisor.py``). It needs an exact reference.

Even an unbiased estimator shows ``bias > 0`` from its Monte Carlo noise: the *noise floor*
``sqrt(variance / R + ||se||^2)`` is the size of ``bias`` expected from noise alone (``se`` is the
reference's standard error, 0 when the gradient is exact). When the reference is itself
estimated, ``||se||^2`` is subtracted from ``mse``, and bias is resolved only down to that floor.

**Advisor rule.** An estimator's bias is *acceptable* when
``bias <= max(0.2 * ||g||, 3 * noise_floor)`` or ``cosine_mean >= 0.9``: small against the
gradient itself (relative bias at most 20%), not distinguishable from zero with these draws, or
with a mean that points within about 25 degrees of ``g`` (its length may be off: optimisers
such as Adam rescale each coordinate, so the direction is what training follows; measured by
``benchmarks/bench_advisor.py``, where the 20% rule alone put the low-variance, direction-true
gumbel-rao, st-gumbel and st-relaxed behind reinforce on categorical-quadratic, the opposite of
what training found). Only estimators whose forward pass is a hard choice
are candidates, unless ``allow_soft=True`` says the loss accepts relaxed inputs (``relaxed``,
``gumbel-relaxed`` and the default ``perturbed`` feed it points of the convex hull). Candidates
are ranked by :func:`rank` with the key ``(bias not acceptable, training_error)`` for
``rank_by="training"`` (the default; ``training_error = perpendicular_bias^2 + variance / 19``,
the error of the direction Adam's momentum follows, see :func:`advisor_key`),
``(bias not acceptable, mse)`` for ``rank_by="mse"``
(the default: every estimator gets the same number of loss evaluations per draw, which is the
budget a training loop with a fixed number of steps and samples gives it), or
``(bias not acceptable, mse * relative_cost)`` for ``rank_by="mse-time"`` (a fixed wall-clock
budget; this depends on the machine); a stateful estimator (an ema baseline) is ranked by
``mse + STATEFUL_MSE_Z * mse_se``, since at fixed scores its state converges as it never does
in training (see :func:`advisor_key`). The recommendation is the first; with no acceptable bias
it is simply the lowest MSE, and the report says so. The ranking ignores raw times, so it does
not change with the thread count. Every estimator whose bias is not acceptable, or that failed,
gets a one-line ``explanation`` from what was measured and what to try instead.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from pickgrad._validation import check_positive_int, check_tau
from pickgrad.diagnostics.exact import DEFAULT_MAX_ENUMERATION, ExactGradient, exact_gradient
from pickgrad.estimators.base import Estimator, LossFn, available_estimators, get_estimator
from pickgrad.estimators.reinforce import BASELINES
from pickgrad.estimators.straight_through import StraightThrough
from pickgrad.select import estimate
from pickgrad.structures.base import Structure

__all__ = [
    "ACCEPTABLE_COSINE",
    "ACCEPTABLE_RELATIVE_BIAS",
    "ADAM_BETA1",
    "RANK_BY",
    "RESOLUTION_Z",
    "STATEFUL_MSE_Z",
    "DiagnosticReport",
    "EstimatorStats",
    "Recommendation",
    "advisor_key",
    "diagnose",
    "explain",
    "kept_estimator",
    "parse_estimator",
    "rank",
    "rank_along_training",
    "rank_rows",
    "recommend",
    "relative_training_error",
    "resolve_estimators",
]

#: Bias at most this fraction of ``||exact||`` is acceptable.
ACCEPTABLE_RELATIVE_BIAS = 0.2
#: A mean gradient at least this cosine with the exact one is acceptable whatever its length.
ACCEPTABLE_COSINE = 0.9
#: Bias within this many noise floors of zero is not resolved, hence acceptable.
RESOLUTION_Z = 3.0
#: Ranking keys of the advisor (see the module docstring).
RANK_BY = ("training", "mse", "mse-time")
#: Adam's default first-moment decay: its running mean of iid draws has variance
#: ``variance * (1 - beta) / (1 + beta)`` (1/19 of one draw's), the weight of the variance in
#: ``training_error``.
ADAM_BETA1 = 0.9

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

_T = TypeVar("_T")

EstimatorsArg = Sequence[str | Estimator | tuple[str, Estimator]] | Mapping[str, Estimator] | None


@dataclass
class EstimatorStats:
    """One estimator (at one temperature) measured against the exact gradient.

    Attributes are defined in the module docstring; ``tau`` is None for estimators that ignore
    the temperature; ``hard`` is False for estimators whose forward pass is relaxed, not hard;
    ``error`` holds the message if the estimator failed on this problem (then every figure is
    NaN); ``explanation`` is one line on why the bias is not acceptable or why it failed, and
    what to try instead (None when the bias is acceptable); ``name`` is the registry name;
    ``mse_se`` is the standard error of ``mse`` over the draws; ``stateful`` is True for
    estimators that carry state between calls (an ema baseline); ``perpendicular_bias`` is the
    norm of the mean's component orthogonal to the exact gradient, less its expected Monte
    Carlo part, and ``training_error`` is ``perpendicular_bias^2 + variance (1 - ADAM_BETA1) /
    (1 + ADAM_BETA1)``; ``exact_norm`` is ``||exact||``.
    """

    label: str
    estimator: str
    tau: float | None
    n_draws: int
    name: str = ""
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
    relative_cost: float = math.nan
    efficiency: float = math.nan
    acceptable_bias: bool = False
    hard: bool = True
    mse_se: float = math.nan
    stateful: bool = False
    perpendicular_bias: float = math.nan
    training_error: float = math.nan
    exact_norm: float = math.nan
    error: str | None = None
    explanation: str | None = None

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
        recommendation: the advisor's choice (None if no candidate ran: every estimator
            failed, or only soft-forward ones ran and ``allow_soft`` is False).
        settings: ``n_draws``, ``samples_per_draw``, ``tau``, ``tau_sweep``, ``seed``,
            ``threads`` (torch's CPU threads during the timing), ``allow_soft``, ``rank_by``,
            ``reference_seconds`` (the reference op of ``relative_cost``).
    """

    problem: str
    structure: str
    scores_shape: tuple[int, ...]
    reference: ExactGradient
    rows: list[EstimatorStats]
    sweep: list[EstimatorStats] = field(default_factory=list)
    recommendation: Recommendation | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def all_failed(self) -> bool:
        """True when every estimator raised an error on this problem."""
        return all(row.error is not None for row in [*self.rows, *self.sweep])

    def ranking(self) -> list[EstimatorStats]:
        """The advisor's candidates, best first (:func:`rank_rows` with this report's settings)."""
        return rank_rows(
            self._candidates(),
            allow_soft=bool(self.settings.get("allow_soft", False)),
            rank_by=str(self.settings.get("rank_by", "training")),
        )

    def _candidates(self) -> list[EstimatorStats]:
        return self.rows + [row for row in self.sweep if all(row is not r for r in self.rows)]

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
        data: dict[str, Any] = clean(
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
                    "acceptable_cosine": ACCEPTABLE_COSINE,
                    "resolution_z": RESOLUTION_Z,
                    "rank_by": self.settings.get("rank_by", "training"),
                    "allow_soft": self.settings.get("allow_soft", False),
                },
                "rows": [asdict(row) for row in self.rows],
                "sweep": [asdict(row) for row in self.sweep],
                "recommendation": None
                if self.recommendation is None
                else asdict(self.recommendation),
            }
        )
        return data

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
            f"{settings.get('samples_per_draw')} samples per estimator, seed {settings.get('seed')}; "
            f"times at {settings.get('threads')} torch thread(s), cost relative to one st gradient "
            f"({float(settings.get('reference_seconds', math.nan)) * 1e3:.3g} ms).",
            "",
            "| estimator | tau | forward | bias | noise floor | rel. bias | std | MSE | cos(draw) "
            "| cos(mean) | sign agr. | ms/grad | cost (x st) | bias ok |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            forward = "hard" if row.hard else "soft"
            if row.error is not None:
                lines.append(
                    f"| {row.label} | {row.tau_text} | {forward} | failed: {row.error} |"
                    + " |" * 10
                )
                continue
            lines.append(
                f"| {row.label} | {row.tau_text} | {forward} | {row.bias:.3g} "
                f"| {row.noise_floor:.3g} | {row.relative_bias:.3g} | {row.std:.3g} | {row.mse:.3g} "
                f"| {row.cosine_draw:.3f} | {row.cosine_mean:.3f} | {row.sign_agreement:.3f} "
                f"| {row.time_per_gradient * 1e3:.3g} | {row.relative_cost:.3g} "
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
                    cell = next((r for r in self.sweep if r.label == label and r.tau == tau), None)
                    cells.append(
                        "-"
                        if cell is None or cell.error is not None
                        else f"{cell.mse:.3g} ({cell.bias:.2g})"
                        + ("" if cell.acceptable_bias else "*")
                    )
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
            lines.append("\\* bias not acceptable.")
        lines.append("")
        if self.recommendation is None:
            if self.all_failed:
                lines.append("**Recommendation:** none (every estimator failed).")
            else:
                lines.append(
                    "**Recommendation:** none (no estimator with a hard forward pass ran; "
                    "pass allow_soft=True / --allow-soft if the loss accepts relaxed inputs)."
                )
        else:
            rec = self.recommendation
            at = "" if rec.tau is None else f" at tau={rec.tau:g}"
            lines.append(f"**Recommendation: {rec.label}{at}** ({rec.reason}).")
        ranked = self.ranking()
        if ranked:
            lines += ["", "Ranking: " + ", ".join(_setting(row) for row in ranked) + "."]
        why = [row for row in self._candidates() if row.explanation is not None]
        if why:
            lines += ["", "Why not the others:", ""]
            lines += [f"- {_setting(row)}: {row.explanation}" for row in why]
        absent = dict(self.settings.get("not_applicable") or {})
        if absent:
            lines += ["", "Not applicable here:", ""]
            lines += [f"- {name}: {reason}" for name, reason in absent.items()]
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


def kept_estimator(estimator: str | Estimator, **options: Any) -> Estimator:
    """``get_estimator`` for code that keeps the object it gets for a whole run.

    The registry warns when a name builds a stateful estimator (an ema baseline), because a
    fresh object per call loses the state; the diagnostics and the demo keep theirs, so the
    warning does not apply.
    """
    return get_estimator(estimator, warn_stateful=False, **options)


def parse_option_value(text: str) -> Any:
    """An option's value from its text: an int, a float, a bool, None or the text itself."""
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
        options[key.strip()] = parse_option_value(value.strip())
    try:
        return spec, kept_estimator(name, **options)
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
        return [(str(label), kept_estimator(est)) for label, est in estimators.items()]
    if isinstance(estimators, str):
        raise TypeError("estimators must be a list of names, not a single string")
    pairs: list[tuple[str, Estimator]] = []
    for item in estimators:
        if isinstance(item, tuple):
            label, est = item
            pairs.append((str(label), kept_estimator(est)))
        elif isinstance(item, Estimator):
            pairs.append((repr(item), item))
        elif item == "reinforce":
            pairs += [
                (f"reinforce/{b}", kept_estimator("reinforce", baseline=b)) for b in BASELINES
            ]
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
    mask: Tensor | None = None,
    pullback: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, float]:
    """``(n_draws, dim)`` float64 gradient draws and the median seconds per draw; ``dim`` is
    ``scores.numel()``, or the parameters' size when ``pullback`` maps a scores gradient to
    them."""
    generator = torch.Generator(device=scores.device).manual_seed(seed)
    leaf = scores.detach().clone().requires_grad_(True)
    width = scores.numel() if pullback is None else pullback(torch.zeros_like(leaf)).numel()
    draws = torch.empty(n_draws, width, dtype=torch.float64)
    seconds: list[float] = []
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
            mask=mask,
        )
        if surrogate.requires_grad:
            (gradient,) = torch.autograd.grad(surrogate, leaf, allow_unused=True)
        else:
            gradient = None
        if gradient is None:
            gradient = torch.zeros_like(leaf)
        if pullback is not None:
            gradient = pullback(gradient)
        if scores.device.type == "cuda":
            torch.cuda.synchronize(scores.device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
            draws[index - warmup] = gradient.detach().flatten().double().cpu()
        tick()
    return draws, statistics.median(seconds)


def _pullback(scores: Tensor, parameters: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``d -> J^T d`` flattened in float64 (``J = d scores / d parameters``); zeros for a
    parameter the scores do not depend on."""
    tensors = list(parameters)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError("parameters must be a non-empty sequence of tensors")
    if not scores.requires_grad:
        raise ValueError(
            "with parameters=, scores must be computed from them with autograd recording "
            "(scores.requires_grad is False)"
        )

    def pull(gradient: Tensor) -> Tensor:
        with torch.enable_grad():
            parts = torch.autograd.grad(
                scores, tensors, gradient.to(scores.dtype).reshape(scores.shape),
                retain_graph=True, allow_unused=True,
            )  # fmt: skip
        return torch.cat(
            [
                (torch.zeros_like(t) if part is None else part).detach().flatten().double().cpu()
                for part, t in zip(parts, tensors, strict=True)
            ]
        )

    return pull


def _reference_seconds(
    loss_fn: LossFn,
    scores: Tensor,
    structure: Structure,
    *,
    samples_per_draw: int,
    n_draws: int,
    seed: int,
    mask: Tensor | None = None,
) -> float:
    """Seconds of the reference op of ``relative_cost``: one ``st`` gradient of this loss."""
    try:
        _, seconds = _draw_gradients(
            loss_fn,
            scores,
            structure,
            StraightThrough(),
            n_draws=n_draws,
            samples_per_draw=samples_per_draw,
            tau=1.0,
            seed=seed,
            warmup=2,
            tick=lambda: None,
            mask=mask,
        )
    except Exception:  # a loss without a gradient in x: the caller falls back
        return math.nan
    return seconds


def _not_applicable(structure: Structure) -> dict[str, str]:
    """Registered estimators that ``structure`` cannot run, each with the capability it lacks."""
    usable = set(available_estimators(structure))
    result = {}
    for name in available_estimators():
        if name in usable:
            continue
        missing = kept_estimator(name).missing_capabilities(structure)
        reasons = [
            f"{capability} ({structure.unsupported[capability]})"
            if capability in structure.unsupported
            else capability
            for capability in missing
        ]
        result[name] = f"needs {', '.join(reasons)}, which {structure!r} does not provide"
    return result


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
    errors = ((draws - exact) ** 2).sum(1)
    row.mse = max(float(errors.mean()) - reference_noise, 0.0)
    row.mse_se = float(errors.std() / math.sqrt(count)) if count > 1 else math.inf
    row.cosine_draw = float(_cosine(draws, exact).mean())
    row.cosine_mean = float(_cosine(mean[None], exact)[0])
    if reference.exact:
        resolved = exact.abs() > 1e-12 * float(exact.abs().max() if exact.numel() else 0)
    else:
        resolved = exact.abs() > 2 * se
    if bool(resolved.any()):
        agree = torch.sign(draws[:, resolved]) == torch.sign(exact[resolved])
        row.sign_agreement = float(agree.double().mean())
    norm2 = float(exact @ exact)
    along = float(mean @ exact) / norm2 if norm2 > 0 else 0.0
    # The mean of R draws is off the exact direction by noise alone: its perpendicular part has
    # expected square variance / R (1 - 1/d) for an unbiased estimator; that part is removed,
    # so an unbiased estimator is not charged its variance twice.
    perpendicular2 = float((mean - along * exact).norm() ** 2)
    noise2 = variance / count * (1 - 1 / max(exact.numel(), 1))
    row.perpendicular_bias = math.sqrt(max(perpendicular2 - noise2, 0.0))
    row.exact_norm = norm
    momentum = (1 - ADAM_BETA1) / (1 + ADAM_BETA1)
    row.training_error = row.perpendicular_bias**2 + momentum * variance
    row.time_per_gradient = seconds
    row.efficiency = row.mse * seconds
    row.acceptable_bias = row.bias <= max(
        ACCEPTABLE_RELATIVE_BIAS * norm, RESOLUTION_Z * row.noise_floor
    ) or (row.cosine_mean >= ACCEPTABLE_COSINE)


def rank(
    items: Iterable[_T],
    key: Callable[[_T], Any],
    *,
    hard: Callable[[_T], bool],
    allow_soft: bool = False,
) -> list[_T]:
    """The hard-by-default ranking that the advisor and ``pickgrad demo`` share.

    Keeps the items whose forward pass is a hard choice (all of them with ``allow_soft=True``)
    and sorts them by ``key``, smallest first; ties keep their input order.

    Args:
        items: what is ranked (``EstimatorStats`` rows, training results, ...).
        key: sort key, smaller is better.
        hard: whether an item's estimator has a hard forward pass.
        allow_soft: also rank estimators whose forward pass is relaxed.

    Returns:
        The eligible items, best first.

    Example:
        >>> rank([("relaxed", 0.1), ("st-gumbel", 0.5), ("reinforce", 0.3)],
        ...      key=lambda item: item[1], hard=lambda item: item[0] != "relaxed")
        [('reinforce', 0.3), ('st-gumbel', 0.5)]
    """
    return sorted((item for item in items if allow_soft or hard(item)), key=key)


def _check_rank_by(rank_by: str) -> str:
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    return rank_by


#: A stateful estimator is ranked by the upper end of this many standard errors of its MSE.
STATEFUL_MSE_Z = 2.0


def advisor_key(row: EstimatorStats, rank_by: str = "training") -> tuple[int, float, float]:
    """The advisor's sort key of a measured row: ``(bias not acceptable, figure, mse)``.

    ``figure`` is ``training_error`` for ``rank_by="training"`` (the default: the squared error
    of the direction that Adam's running mean of the draws follows, ``perpendicular_bias^2 +
    variance (1 - ADAM_BETA1) / (1 + ADAM_BETA1)``; Adam rescales the step, so the mean's
    length matters less than its direction, and its momentum averages about 19 draws, so a
    low-variance estimator with a tilted mean loses to one whose mean points right: measured
    by ``benchmarks/bench_advisor.py``, where MSE put the deterministic st-relaxed first on
    categorical-quadratic and training put it third), ``mse`` for ``"mse"`` and
    ``mse * relative_cost`` for ``"mse-time"``.
    For a stateful estimator (an ema baseline) ``mse`` is taken at the upper end of its
    ``STATEFUL_MSE_Z``-standard-error interval: ``diagnose`` measures it at fixed scores, where
    its state converges to the exact mean loss, while in training the scores move and the state
    lags them (measured by ``benchmarks/bench_advisor.py``: ema came first in diagnose and
    behind batch and rloo in training on pick-the-five and bernoulli), so it wins only where
    its advantage is resolved.
    """
    mse = row.mse
    if row.stateful and math.isfinite(row.mse_se):
        mse = row.mse + STATEFUL_MSE_Z * row.mse_se
    if _check_rank_by(rank_by) == "training":
        figure = row.training_error
        if row.stateful and math.isfinite(row.mse_se):
            figure += (1 - ADAM_BETA1) / (1 + ADAM_BETA1) * STATEFUL_MSE_Z * row.mse_se
    elif rank_by == "mse":
        figure = mse
    else:
        figure = mse * row.relative_cost
    return (0 if row.acceptable_bias else 1, figure, row.mse)


def rank_rows(
    rows: Sequence[EstimatorStats], *, allow_soft: bool = False, rank_by: str = "training"
) -> list[EstimatorStats]:
    """The rows that ran, eligible under the hard rule, best first by :func:`advisor_key`."""
    _check_rank_by(rank_by)
    usable = [row for row in rows if row.error is None and math.isfinite(row.mse)]
    return rank(
        usable,
        lambda row: advisor_key(row, rank_by),
        hard=lambda row: row.hard,
        allow_soft=allow_soft,
    )


def relative_training_error(row: EstimatorStats) -> float:
    """``training_error / ||exact||^2``: the figure against the signal (Adam's steps do not
    depend on the gradient's scale, so points of a training run with small and large gradients
    are compared on this), ``inf`` when the exact gradient is zero and the error is not."""
    if row.exact_norm > 0:
        return row.training_error / row.exact_norm**2
    return 0.0 if row.training_error == 0 else math.inf


def rank_along_training(
    points: Sequence[Sequence[EstimatorStats]], *, allow_soft: bool = False
) -> list[EstimatorStats]:
    """Rank by several points of one training run: the rows of the first point, best first.

    ``points[0]`` are the rows at the starting scores, ``points[1:]`` the same estimators
    (matched by label and tau) at later points (e.g. a network after some training, see
    ``pickgrad.diagnostics.problems``). Key: ``(bias not acceptable at the start, sum over the
    points of relative_training_error)``, a stateful estimator's term at each point taken at
    the upper end of its MSE interval as in :func:`advisor_key`. Why: diagnose at the start
    sees the first steps only; a network's scores there carry nothing of the task yet (on
    critic-slots the pathwise estimators' error was 5 times below reinforce's at the start,
    and after 250 of the demo's 1000 steps reinforce/rloo's was 7 times below theirs, its
    variance collapsing as the policy sharpened), and training spends most of its steps past
    the start. An estimator missing or failed at a later point ranks after those that ran.
    """
    if not points:
        return []
    later = [{(row.label, row.tau): row for row in rows} for rows in points[1:]]

    def figure(row: EstimatorStats) -> float:
        key = advisor_key(row)[1]
        return key / row.exact_norm**2 if row.exact_norm > 0 else (0.0 if key == 0 else math.inf)

    def key(row: EstimatorStats) -> tuple[int, float]:
        total = figure(row)
        for rows in later:
            other = rows.get((row.label, row.tau))
            ok = other is not None and other.error is None and math.isfinite(other.mse)
            total += figure(other) if ok else math.inf  # type: ignore[arg-type]
        return (0 if row.acceptable_bias else 1, total)

    usable = [row for row in points[0] if row.error is None and math.isfinite(row.mse)]
    return rank(usable, key, hard=lambda row: row.hard, allow_soft=allow_soft)


def _setting(row: EstimatorStats) -> str:
    return row.label if row.tau is None else f"{row.label} (tau={row.tau:g})"


_RULE_TEXT = (
    f"bias <= {ACCEPTABLE_RELATIVE_BIAS:g} ||exact||, within {RESOLUTION_Z:g} noise floors of 0, "
    f"or cos(mean, exact) >= {ACCEPTABLE_COSINE:g}"
)


def recommend(
    rows: Sequence[EstimatorStats], *, allow_soft: bool = False, rank_by: str = "training"
) -> Recommendation | None:
    """Apply the advisor rule (module docstring) to measured rows.

    Returns None when no candidate ran (every estimator failed, or only soft-forward ones ran
    and ``allow_soft`` is False).
    """
    ranked = rank_rows(rows, allow_soft=allow_soft, rank_by=rank_by)
    if not ranked:
        return None
    best = ranked[0]
    kind = "" if allow_soft else "hard-forward "
    figure = {"training": "training error", "mse": "MSE"}.get(rank_by, "MSE x cost")
    value = advisor_key(best, rank_by)[1]
    if best.acceptable_bias:
        accepted = sum(row.acceptable_bias for row in ranked)
        reason = (
            f"lowest {figure} ({value:.3g}) among the {accepted} of {len(ranked)} {kind}settings "
            f"whose bias is acceptable ({_RULE_TEXT}); bias {best.bias:.3g}, std {best.std:.3g}, "
            f"cost {best.relative_cost:.3g}x st"
        )
    else:
        reason = (
            f"no {kind}estimator has acceptable bias ({_RULE_TEXT}), so this is simply the lowest "
            f"{figure} ({value:.3g}); more draws (to resolve bias) or another temperature may "
            "change this"
        )
    if not allow_soft:
        everything = rank_rows(rows, allow_soft=True, rank_by=rank_by)
        if everything and everything[0] is not best:
            reason += (
                f"; {_setting(everything[0])}, whose forward pass is relaxed, would rank first if "
                "the loss accepts relaxed inputs (allow_soft=True, --allow-soft)"
            )
    if not best.hard:
        reason += "; note: its forward pass is relaxed, not a hard choice"
    return Recommendation(best.label, best.tau, reason)


#: Estimators whose backward treats the loss as linear in x around one solution.
_LINEARISING = {
    "st": "its identity backward returns d loss / d x at argmax(scores), which is not the "
    "gradient of E[loss] (it ignores how the probabilities move with the scores)",
    "imle": "this loss is not linear in x, which imle and blackbox assume (they linearise it "
    "around the sampled solution)",
    "blackbox": "this loss is not linear in x, which imle and blackbox assume (they linearise "
    "it around the solution)",
}


#: What ``relax`` computes, by structure class, for the explanations.
_RELAXATIONS = {
    "OneHot": "the softmax",
    "Subset": "the k-subset marginals",
    "Permutation": "Sinkhorn's doubly stochastic matrix",
    "SpanningTree": "the matrix-tree edge marginals",
    "Arborescence": "the matrix-tree arc marginals",
}


def explain(
    row: EstimatorStats,
    recommendation: Recommendation | None,
    structure: Structure | None = None,
) -> str | None:
    """One line on why ``row``'s bias is not acceptable (or why it failed), and what to try.

    Built from the measured figures (cosine of the mean gradient with the exact one, relative
    bias, sign agreement) and from what the estimator assumes; ``structure``, if given, names
    the relaxation (Sinkhorn for ``Permutation``, matrix-tree marginals for the trees). None
    when the bias is acceptable.

    Example:
        >>> row = EstimatorStats("imle", "IMLE()", None, 10, name="imle", bias=1.6,
        ...                      relative_bias=1.04, cosine_mean=-0.41, sign_agreement=0.13)
        >>> explain(row, Recommendation("reinforce/rloo", None, ""))[:62]
        'mean gradient points away from the exact one: cosine -0.41, re'
    """
    instead = (
        ""
        if recommendation is None or recommendation.label == row.label
        else f"; try {recommendation.label}"
        + ("" if recommendation.tau is None else f" at tau={recommendation.tau:g}")
    )
    if row.error is not None:
        kind, _, message = row.error.partition(": ")
        return f"failed with {kind}: {message}{instead}"
    if row.acceptable_bias:
        return None
    cosine = row.cosine_mean
    if cosine < 0:
        measured = f"mean gradient points away from the exact one: cosine {cosine:.2f}"
    else:  # below ACCEPTABLE_COSINE, or the bias would be acceptable
        measured = f"mean gradient is off the exact one's direction: cosine {cosine:.2f}"
    measured += f", relative bias {row.relative_bias:.2g}"
    if math.isfinite(row.sign_agreement):
        measured += f", signs agree on {row.sign_agreement:.0%} of coordinates"
    name = row.name or row.label.partition(":")[0].partition("/")[0]
    tau = "-" if row.tau is None else f"{row.tau:g}"
    if name in _LINEARISING:
        cause = _LINEARISING[name]
    elif name == "perturbed":
        cause = (
            f"it differentiates the perturbed maximiser at sigma={tau}, a smoothing of the "
            "argmax, not E[loss(argmax(scores + G))]"
        )
        instead += " or a smaller sigma"
    elif name == "reinforce":
        cause = "reinforce is unbiased, so this is Monte Carlo noise: more draws will resolve it"
    elif row.tau is not None:
        relaxation = "the relaxation"
        if structure is not None:
            for cls in type(structure).__mro__:
                if cls.__name__ in _RELAXATIONS:
                    relaxation = _RELAXATIONS[cls.__name__]
                    break
        cause = (
            f"its backward differentiates {relaxation} at tau={tau} in place of the argmax, "
            "which is exact only for a loss linear in x and as tau -> 0"
        )
        instead += " or a lower tau"
    else:
        cause = "its backward is not the gradient of E[loss(argmax(scores + G))] on this loss"
    return f"{measured}; {cause}{instead}"


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
    allow_soft: bool = False,
    rank_by: str = "training",
    mask: Tensor | None = None,
    parameters: Sequence[Tensor] | None = None,
) -> DiagnosticReport:
    """Measure every estimator's gradient of ``E[loss_fn(x)]`` against the exact gradient.

    The figures and the advisor's rule are defined in :mod:`pickgrad.diagnostics.report`'s
    docstring: bias ``||mean - exact||``, variance ``trace Cov``, MSE, cosine of one draw and of
    the mean, sign agreement, time per gradient (at the caller's torch thread setting, which the
    report records) and its cost relative to a reference op timed in the same run. Ranking rule:
    only estimators with a hard forward pass (unless ``allow_soft``); those whose bias is at
    most 20% of ``||exact||``, within 3 noise floors of zero, or whose mean has a cosine of at
    least 0.9 with the exact gradient first, each group by the training error (the default
    ``rank_by="training"``: squared perpendicular bias + variance / 19), by MSE at equal
    loss evaluations (``"mse"``) or by MSE x relative cost (``"mse-time"``); the
    recommendation is the first. Every estimator with unacceptable bias, or that failed, gets a
    one-line explanation.

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
        allow_soft: the loss accepts relaxed inputs, so estimators whose forward pass is a point
            of the convex hull (``relaxed``, ``gumbel-relaxed``, default ``perturbed``) may be
            recommended; by default only hard-forward estimators are.
        rank_by: ``"training"`` (default), ``"mse"`` or ``"mse-time"``, see
            :func:`advisor_key`.
        mask: optional bool tensor broadcastable to ``scores``, True = allowed (exactly
            ``scores.masked_fill(~mask, -inf)``), forwarded to every estimator call and to
            the exact gradient; masked entries get exactly zero gradient in both.
        parameters: measure in these tensors' space instead of the scores' (module docstring,
            "Parameter space"): ``scores`` must then depend on them through autograd (its graph
            is kept for the run); each draw and the exact gradient (which must be exact; a
            ``reference`` may be given shaped like the scores) are pulled back by ``J^T``.

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
    structure.mask_scores(scores, mask)  # validates scores, the mask and its feasibility
    check_positive_int(n_samples, name="n_samples", minimum=2)
    check_positive_int(samples_per_draw, name="samples_per_draw")
    tau = check_tau(tau)
    sweep_taus = [check_tau(t, name="tau_sweep") for t in (tau_sweep or ())]
    if not isinstance(allow_soft, bool):
        raise TypeError(f"allow_soft must be a bool, got {type(allow_soft).__name__}")
    _check_rank_by(rank_by)
    pairs = resolve_estimators(estimators, structure)
    for _, est in pairs:
        est.check_structure(structure)
    not_applicable = _not_applicable(structure) if estimators is None else {}
    pullback = None if parameters is None else _pullback(scores, parameters)
    scores = scores.detach()
    if reference is None:
        reference = exact_gradient(
            loss_fn,
            scores,
            structure,
            max_enumeration=max_enumeration,
            expected_loss=expected_loss,
            generator=torch.Generator(device=scores.device).manual_seed(seed + 7_919),
            mask=mask,
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
    if pullback is not None:
        if not reference.exact:
            raise ValueError(
                "parameters= needs an exact reference gradient (enumeration or closed form), "
                f"got {reference.method}"
            )
        pulled = pullback(reference.gradient).detach()
        reference = ExactGradient(
            pulled, reference.value, True, torch.zeros_like(pulled),
            f"{reference.method}, pulled back to {pulled.numel()} parameters",
        )  # fmt: skip
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
    rows: list[EstimatorStats] = []
    sweep: list[EstimatorStats] = []
    timing = functools.partial(
        _reference_seconds,
        loss_fn,
        scores,
        structure,
        samples_per_draw=samples_per_draw,
        n_draws=max(8, min(n_samples, 50)),
        mask=mask,
    )
    reference_runs = [timing(seed=seed)]
    try:
        for label, est, job_tau, in_sweep in jobs:
            if bar is not None:
                bar.set_postfix_str(label if job_tau is None else f"{label} tau={job_tau:g}")
            row = EstimatorStats(
                label,
                repr(est),
                job_tau,
                n_samples,
                name=est.name,
                hard=bool(est.hard),
                stateful=bool(est.stateful),
            )
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
                    mask=mask,
                    pullback=pullback,
                )
                _statistics(row, draws, reference, seconds)
            except Exception as error:  # one estimator failing must not lose the others
                row.error = f"{type(error).__name__}: {error}"
            (sweep if in_sweep else rows).append(row)
    finally:
        if bar is not None:
            bar.close()
    # Timed before and after the estimators, so a load change in between is averaged out.
    reference_runs.append(timing(seed=seed + 1))
    finite = [seconds for seconds in reference_runs if math.isfinite(seconds)]
    measured = [row.time_per_gradient for row in [*rows, *sweep] if row.error is None]
    # If the loss has no st gradient, the cheapest estimator of this run is the unit instead.
    reference_seconds = (
        sum(finite) / len(finite) if finite else (min(measured) if measured else math.nan)
    )
    for row in [*rows, *sweep]:
        if row.error is None:
            row.relative_cost = row.time_per_gradient / reference_seconds
    if sweep_taus:
        # The sweep table also shows the main tau when it is one of the swept values.
        order = {label: index for index, (label, _) in enumerate(pairs)}
        sweep = sorted(
            sweep + [row for row in rows if row.tau is not None and row.tau in sweep_taus],
            key=lambda row: (order[row.label], row.tau),
        )
    report = DiagnosticReport(
        problem=name,
        structure=repr(structure),
        scores_shape=tuple(scores.shape),
        reference=reference,
        rows=rows,
        sweep=sweep,
        settings={
            "n_draws": n_samples,
            "samples_per_draw": samples_per_draw,
            "tau": tau,
            "tau_sweep": sweep_taus,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "allow_soft": allow_soft,
            "rank_by": rank_by,
            "reference_seconds": reference_seconds,
            "masked": mask is not None,
            "not_applicable": not_applicable,
            "space": "scores" if pullback is None else "parameters",
        },
    )
    candidates = report._candidates()
    report.recommendation = recommend(candidates, allow_soft=allow_soft, rank_by=rank_by)
    for row in candidates:
        row.explanation = explain(row, report.recommendation, structure)
    return report
