"""``GradientMonitor``: the estimator's gradient signal-to-noise ratio and bias during training.

At chosen steps the training loop hands the monitor a :class:`GradientProbe`: the current
batch's scores ``s`` (detached), the loss of a structure sample ``loss_fn(x)``, the structure
and the estimator. The monitor then takes ``K`` extra gradient draws ``d_1..d_K`` of
``E[loss(x)]`` with respect to ``s`` only: each draw is one call of :func:`pickgrad.estimate`
on the *same* scores with the run's ``n_samples`` and ``tau``, and one ``autograd.grad`` to
``s``. The network that produced ``s`` is not run again; only the estimator and the loss of
the samples are (the loss must be re-evaluated, since it depends on the sample). Nothing is
accumulated into any parameter's ``.grad`` and the estimator's state (an ema baseline, NVIL's
running moments) is left untouched: each draw uses a fresh copy of it. The noise comes from
the monitor's own generator, seeded from ``(seed, step)``, so the training generator's random
numbers are not consumed and a resumed run measures the same numbers as an uninterrupted one.

What is measured, with ``m = mean_k d_k`` and ``C`` the sample covariance of the draws
(the statistics of :mod:`pickgrad.diagnostics.report`, reused, not re-derived):

* ``mean_norm = ||m||``, ``std = sqrt(trace C)`` (the spread of one training gradient);
* ``snr = max(||m||^2 - trace(C) / K, 0) / trace(C)``: the signal-to-noise ratio of *one*
  training gradient, ``||E d||^2 / E||d - E d||^2`` (Roberts & Tedrake 2009, "Signal-to-noise
  ratio analysis of policy gradient algorithms"; Rainforth et al. 2018 use its per-coordinate
  form ``|E d_i| / std(d_i)``). ``||m||^2`` over-estimates ``||E d||^2`` by ``trace(C) / K`` on
  average, which is subtracted, so the figure is not inflated by the small ``K``. The SNR of the
  gradient averaged over the ``K`` draws is ``K * snr``. ``inf`` for a deterministic estimator
  with a nonzero gradient, 0 when there is no signal at all. Because the per-example noises
  are independent, ``snr`` does not grow with the batch size (both terms are sums over the
  examples), so it may be measured on a slice of the batch.
* against a reference gradient ``g``: ``bias = ||m - g||``, ``relative_bias = bias / ||g||``,
  ``relative_norm = ||m|| / ||g||``, ``cosine = cos(m, g)`` and ``noise_floor``, the size of
  ``bias`` expected from the noise alone, ``sqrt(trace(C) / K + ||se||^2)`` (``se``: the
  reference's own standard error). Bias below a few noise floors is not resolved.

The reference is exact (enumeration, :func:`pickgrad.exact_gradient`) when the structure's law
is enumerable within ``max_enumeration`` joint solutions (tiny ``OneHot`` problems, spanning
trees up to 5 nodes); otherwise (``reference="auto"``) it is the unbiased ``reinforce`` with the
leave-one-out baseline over ``n_reference`` samples, whose per-coordinate standard error is
recorded (``reference_noise = ||se||``) and enters the noise floor. ``reference="none"`` skips
the bias (only the SNR is measured).

Each measurement is one row of a CSV file (header :data:`CSV_FIELDS`) and, when the
``tensorboard`` package is installed, TensorBoard scalars under ``monitor/<field>``; without
it the CSV alone is written, silently.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pickgrad._validation import check_positive_int
from pickgrad.diagnostics.exact import ExactGradient, _by_reference, exact_gradient
from pickgrad.diagnostics.report import EstimatorStats, _statistics
from pickgrad.estimators.base import Estimator, LossFn
from pickgrad.noise import sampling_dtype
from pickgrad.select import estimate
from pickgrad.structures.base import Structure

__all__ = [
    "CSV_FIELDS",
    "DEFAULT_EVERY",
    "REFERENCES",
    "GradientMonitor",
    "GradientProbe",
    "GradientRecord",
    "read_records",
    "tensorboard_available",
]

#: Default steps between measurements. Measured (CPU time, one thread): one measurement of 8
#: draws on 8 examples with its reference costs 2.5 to 7 training steps of graph-layout and
#: ListOps at their quick settings (less at their full ones), so 200 keeps it under 5%.
DEFAULT_EVERY = 200

#: ``reference`` choices: ``auto`` (exact if enumerable, else reinforce), ``exact`` (bias only
#: when exact), ``reinforce`` (always the Monte Carlo reference), ``none`` (no bias).
REFERENCES = ("auto", "exact", "reinforce", "none")

# Most joint solutions enumerated for an exact reference during training (kept small: cheap).
_MAX_ENUMERATION = 2**12


@dataclass(frozen=True)
class GradientProbe:
    """What a training step hands the monitor: everything needed to redraw its gradient.

    Attributes:
        scores: ``(*batch, *event)`` the batch's scores (used detached; the monitor never
            backpropagates into the network that made them).
        loss_fn: maps samples ``(n, *scores.shape)`` to losses ``(n,)`` or ``(n, *batch)``,
            the loss of the structure sample that training differentiates (for a pathwise
            estimator, the loss of ``select``'s output).
        structure: the structure drawn.
        estimator: the estimator object training uses (copied before drawing, so its state is
            not changed).
        tau: the run's temperature.
        n_samples: samples per training gradient (the ``n_samples`` of ``estimate``; 1 for an
            estimator trained through ``select``).
        baseline_values: for a learned baseline (NVIL), its values ``broadcastable to (*batch)``.
        options: other keywords of :func:`pickgrad.estimate` (e.g. ``mask``).
    """

    scores: Tensor
    loss_fn: LossFn
    structure: Structure
    estimator: Estimator
    tau: float = 1.0
    n_samples: int = 1
    baseline_values: Tensor | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GradientRecord:
    """One measurement (one CSV row); figures are defined in the module docstring.

    ``reference`` says how the reference gradient was obtained: ``"exact"`` (enumeration),
    ``"reinforce/rloo"`` (``n_reference`` samples, noise ``reference_noise``) or ``"none"``
    (not measured: the bias figures are NaN); ``reference_exact`` whether it is exact; ``seconds`` is the
    wall time of the whole measurement (draws and reference).
    """

    step: int
    estimator: str
    n_draws: int
    samples_per_draw: int
    mean_norm: float
    std: float
    snr: float
    reference: str
    reference_exact: bool
    reference_norm: float
    reference_noise: float
    bias: float
    relative_bias: float
    relative_norm: float
    cosine: float
    noise_floor: float
    seconds: float


#: The CSV header, in :class:`GradientRecord`'s order.
CSV_FIELDS = tuple(f.name for f in fields(GradientRecord))
_FLOATS = {f.name for f in fields(GradientRecord) if f.type in ("float", float)}
_INTS = {f.name for f in fields(GradientRecord) if f.type in ("int", int)}


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used (the ``tensorboard`` package is present)."""
    return importlib.util.find_spec("tensorboard") is not None


def _reference_name(reference: ExactGradient | None) -> str:
    """``none``, ``exact`` or ``reinforce/rloo`` (the method's long text is in the docstring)."""
    if reference is None:
        return "none"
    return "exact" if reference.exact else "reinforce/rloo"


def _origin(like: Tensor) -> ExactGradient:
    """The zero vector as an 'exact' reference: then the report's ``bias`` is ``||mean||``."""
    zeros = torch.zeros_like(like)
    return ExactGradient(zeros, torch.tensor(math.nan), True, zeros, "origin")


class GradientMonitor:
    """Measure the training estimator's gradient SNR (and bias, where a reference exists).

    Maths (module docstring): ``K`` extra draws ``d_k`` of the gradient with respect to the
    batch's scores; ``snr = max(||m||^2 - tr C / K, 0) / tr C`` (Roberts & Tedrake 2009); bias
    ``||m - g||``, ``cos(m, g)`` and ``||m|| / ||g||`` against an exact or unbiased reference
    ``g``.

    Args:
        path: the CSV file (its folder is created); None keeps the records in memory only.
        every: measure at step 1 and at every multiple of ``every`` (0: never).
        n_draws: ``K``, the extra gradient draws per measurement (at least 2).
        reference: one of :data:`REFERENCES`.
        n_reference: samples of the reference when it is estimated: ``reinforce``'s samples, or
            the Monte Carlo draws of :func:`~pickgrad.diagnostics.exact.conditional_gradient`
            (at least 4; the exact_gradient default of 2^14 would cost minutes per measurement).
        max_enumeration: the most joint solutions enumerated for an exact reference.
        seed: seed of the monitor's own generator (each step uses ``(seed, step)``).
        tensorboard: also write TensorBoard scalars (into ``path``'s folder, ``tensorboard/``)
            when the package is installed; without it, only the CSV.
        label: the estimator's name written in each row (default: ``repr`` of the estimator).
        keep_until: on resume, the rows of an existing CSV with ``step <= keep_until`` are kept
            (later ones, measured after the checkpoint, are dropped: they will be measured
            again); None starts a new file.

    Shapes: ``probe.scores`` ``(*batch, *event)``; each draw is flattened to ``scores.numel()``.

    Example:
        >>> import pickgrad
        >>> cost = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
        >>> scores = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
        >>> monitor = GradientMonitor(None, every=10, n_draws=16)
        >>> probe = GradientProbe(scores, lambda x: x @ cost, pickgrad.OneHot(),
        ...                       pickgrad.Reinforce(baseline="rloo"), n_samples=4)
        >>> monitor.due(1), monitor.due(5), monitor.due(20)
        (True, False, True)
        >>> record = monitor.measure(1, probe)
        >>> record.reference_exact, record.snr > 0, abs(record.cosine) <= 1
        (True, True, True)
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        every: int = DEFAULT_EVERY,
        n_draws: int = 8,
        reference: str = "auto",
        n_reference: int = 32,
        max_enumeration: int = _MAX_ENUMERATION,
        seed: int = 0,
        tensorboard: bool = True,
        label: str | None = None,
        keep_until: int | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"every must be a nonnegative int (0: never), got {every!r}")
        check_positive_int(n_draws, name="n_draws", minimum=2)
        check_positive_int(n_reference, name="n_reference", minimum=4)
        check_positive_int(max_enumeration, name="max_enumeration")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        if keep_until is not None and (isinstance(keep_until, bool) or keep_until < 0):
            raise ValueError(f"keep_until must be a nonnegative step or None, got {keep_until!r}")
        self.path = None if path is None else Path(path)
        self.every, self.n_draws, self.reference = every, n_draws, reference
        self.n_reference, self.max_enumeration, self.seed = n_reference, max_enumeration, seed
        self.label = label
        self.records: list[GradientRecord] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if keep_until is not None and self.path.exists():
                self.records = [r for r in read_records(self.path) if r.step <= keep_until]
            self._rewrite()
        self._writer: Any = None
        if tensorboard and self.path is not None and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def due(self, step: int) -> bool:
        """Whether ``step`` (1-based, the step just taken) is measured."""
        return self.every > 0 and (step == 1 or step % self.every == 0)

    def observe(
        self, step: int, probe: Callable[[], GradientProbe | None]
    ) -> GradientRecord | None:
        """Measure at ``step`` if :meth:`due`, building the probe only then (None: not measured)."""
        if not self.due(step):
            return None
        made = probe()
        return None if made is None else self.measure(step, made)

    def measure(self, step: int, probe: GradientProbe) -> GradientRecord:
        """Draw ``n_draws`` gradients of ``probe`` and its reference; record and return them."""
        if not isinstance(probe, GradientProbe):
            raise TypeError(f"probe must be a GradientProbe, got {type(probe).__name__}")
        started = time.perf_counter()
        scores = probe.scores.detach()
        generator = torch.Generator(device=scores.device)
        generator.manual_seed((self.seed * 1_000_003 + step) % 2**63)
        with torch.enable_grad():
            draws = self._draws(probe, scores, generator)
            reference = self._reference(probe, scores, generator)
        noise = EstimatorStats("monitor", "", None, self.n_draws)
        _statistics(noise, draws, _origin(scores), 0.0)  # bias = ||mean||, variance = tr C
        mean_norm, variance = noise.bias, noise.variance
        if variance > 0:
            snr = max(mean_norm**2 - variance / self.n_draws, 0.0) / variance
        else:
            snr = math.inf if mean_norm > 0 else 0.0
        bias = relative_bias = relative_norm = cosine = floor = ref_norm = ref_noise = math.nan
        if reference is not None:
            row = EstimatorStats("monitor", "", None, self.n_draws)
            _statistics(row, draws, reference, 0.0)
            ref_norm = float(reference.gradient.double().norm())
            ref_noise = reference.noise_norm
            bias, relative_bias, cosine, floor = (
                row.bias, row.relative_bias, row.cosine_mean, row.noise_floor
            )  # fmt: skip
            relative_norm = mean_norm / ref_norm if ref_norm > 0 else math.inf
        record = GradientRecord(
            step=step,
            estimator=self.label or repr(probe.estimator),
            n_draws=self.n_draws,
            samples_per_draw=probe.n_samples,
            mean_norm=mean_norm,
            std=math.sqrt(variance),
            snr=snr,
            reference=_reference_name(reference),
            reference_exact=reference is not None and reference.exact,
            reference_norm=ref_norm,
            reference_noise=ref_noise,
            bias=bias,
            relative_bias=relative_bias,
            relative_norm=relative_norm,
            cosine=cosine,
            noise_floor=floor,
            seconds=time.perf_counter() - started,
        )
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, CSV_FIELDS).writerow(asdict(record))
        if self._writer is not None:
            for name in _FLOATS:
                value = getattr(record, name)
                if math.isfinite(value):
                    self._writer.add_scalar(f"monitor/{name}", value, step)
            self._writer.flush()
        return record

    def close(self) -> None:
        """Close the TensorBoard writer (the CSV is written row by row)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _rewrite(self) -> None:
        assert self.path is not None
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, CSV_FIELDS)
            writer.writeheader()
            for record in self.records:
                writer.writerow(asdict(record))

    def _draws(self, probe: GradientProbe, scores: Tensor, generator: torch.Generator) -> Tensor:
        """``(K, scores.numel())`` float64 draws of the estimator's gradient w.r.t. the scores."""
        options = dict(probe.options)
        if probe.baseline_values is not None:
            options["baseline_values"] = probe.baseline_values.detach()
        leaf = scores.clone().requires_grad_(True)
        draws = torch.empty(self.n_draws, scores.numel(), dtype=torch.float64)
        for index in range(self.n_draws):
            # A fresh copy per draw: each draw is the gradient the training step would take
            # from the estimator's current state (ema baseline, NVIL's moments), and the
            # training estimator's state does not move.
            estimator = copy.deepcopy(probe.estimator)
            surrogate = estimate(
                probe.loss_fn, leaf, probe.structure, estimator, n_samples=probe.n_samples,
                tau=probe.tau, generator=generator, **options,
            )  # fmt: skip
            gradient = None
            if surrogate.requires_grad:
                (gradient,) = torch.autograd.grad(surrogate, leaf, allow_unused=True)
            draws[index] = (
                (torch.zeros_like(leaf) if gradient is None else gradient)
                .detach()
                .flatten()
                .double()
                .cpu()
            )
        return draws

    def _reference(
        self, probe: GradientProbe, scores: Tensor, generator: torch.Generator
    ) -> ExactGradient | None:
        if self.reference == "none":
            return None
        if self.reference in ("auto", "exact"):
            try:
                found = exact_gradient(
                    probe.loss_fn, scores, probe.structure, max_enumeration=self.max_enumeration,
                    n_reference=self.n_reference, n_conditional=self.n_reference,
                    generator=generator,
                )  # fmt: skip
            except ValueError:  # too many joint solutions to enumerate
                found = None
            if found is not None and (found.exact or self.reference == "auto"):
                return found
            if self.reference == "exact":
                return None
        leaf = scores.to(sampling_dtype(scores.dtype)).clone().requires_grad_(True)
        return _by_reference(
            probe.loss_fn, leaf, scores, probe.structure, self.n_reference, generator
        )


def read_records(path: str | Path) -> list[GradientRecord]:
    """The records of a monitor CSV (as written by :class:`GradientMonitor`)."""
    out = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            values: dict[str, Any] = {}
            for name in CSV_FIELDS:
                text = row[name]
                if name in _FLOATS:
                    values[name] = float(text)
                elif name in _INTS:
                    values[name] = int(text)
                elif name == "reference_exact":
                    values[name] = text == "True"
                else:
                    values[name] = text
            out.append(GradientRecord(**values))
    return out
