"""Run an experiment: check the request, then every method x estimator x seed, then the results.

Everything that can be refused is refused before any data are generated or any step is taken:
unknown methods or estimators (the message lists the valid ones), an estimator a method's
structure cannot use, a batch that does not split into the shards, shards that do not split over
the processes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pickgrad.experiments.base import Experiment, ExperimentModel
from pickgrad.experiments.config import TrainingConfig, config_digest, config_to_dict
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.loop import RunSpec, StopFlag, train_run
from pickgrad.experiments.results import (
    environment,
    markdown_table,
    plot_learning_curves,
    summarise,
    write_results,
)
from pickgrad.experiments.torchrun import distributed_context

__all__ = ["check_request", "run_experiment"]


def check_request(experiment: Experiment, config: TrainingConfig, world_size: int = 1) -> None:
    """Raise ``ValueError`` for anything in ``config`` that would fail later.

    Example:
        >>> from pickgrad.experiments import get_experiment
        >>> experiment = get_experiment("graph-layout")
        >>> quick = experiment.default_config(quick=True)
        >>> config = dataclasses.replace(quick, methods=("tree",), estimators=("st-gumbel",))
        >>> check_request(experiment, config)
        >>> check_request(experiment, dataclasses.replace(config, methods=("forest",)))
        Traceback (most recent call last):
        ...
        ValueError: unknown method(s) ['forest'] for experiment 'graph-layout'; valid: tree, top-k, independent
    """
    unknown = [m for m in config.methods if m not in experiment.methods]
    if unknown or not config.methods:
        raise ValueError(
            f"unknown method(s) {unknown} for experiment {experiment.name!r}; "
            f"valid: {', '.join(experiment.methods)}"
        )
    if not config.estimators:
        raise ValueError("no estimators given")
    if not config.seeds:
        raise ValueError("no seeds given")
    for method in config.methods:
        structure = experiment.structure(config, method)
        for name in config.estimators:
            try:
                resolve_estimator(name, structure)
            except ValueError as error:
                raise ValueError(f"method {method!r}: {error}") from None
    shards = config.shards or world_size
    if shards % world_size:
        raise ValueError(
            f"shards={shards} must be a multiple of the number of processes ({world_size})"
        )
    if config.batch_size % shards:
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of the shards ({shards})"
        )


def run_experiment(
    experiment: Experiment,
    config: TrainingConfig,
    out: Path,
    *,
    cache_dir: Path,
    resume: bool = False,
    after_step: Callable[[int], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate every run of ``config``, writing the results into ``out``.

    ``out`` gets ``config.json``, ``results.json``, ``results.md``, ``learning_curves.png``, the
    experiment's example picture and ``runs/<method>__<estimator>__seed<k>/`` with each run's
    checkpoint, best model and result. With ``resume``, finished runs are read back and an
    interrupted run continues from its last checkpoint.
    """
    with distributed_context(config.device) as context:
        check_request(experiment, config, context.world_size)
        # Record the shard count itself, so a checkpoint resumes the same on any process count.
        config = dataclasses.replace(config, shards=config.shards or context.world_size)
        if config.threads:
            torch.set_num_threads(config.threads)
        if context.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(
                json.dumps({"experiment": experiment.name, **config_to_dict(config)}, indent=1)
            )
            data = experiment.load_data(config, cache_dir)
        context.barrier()
        if not context.is_main:
            data = experiment.load_data(config, cache_dir)
        runs, models = [], {}
        stop = StopFlag()
        with stop.installed():
            for method in config.methods:
                for estimator in config.estimators:
                    for seed in config.seeds:
                        spec = RunSpec(method, estimator, seed)
                        folder = out / "runs" / spec.run_id
                        if context.is_main:
                            folder.mkdir(parents=True, exist_ok=True)
                        context.barrier()
                        result = _finished(folder, config, spec) if resume else None
                        if result is None:
                            result = train_run(
                                experiment, config, spec, data, context, folder,
                                resume=resume, stop=stop, after_step=after_step,
                            )  # fmt: skip
                        runs.append(result)
                        if seed == config.seeds[0] and context.is_main:
                            models[f"{method} / {estimator}"] = _best_model(
                                experiment, config, spec, folder
                            )
        if not context.is_main:
            return {}
        summary = summarise(
            runs, experiment.table_metrics, experiment.chance(config), experiment.headline_metric
        )
        results = {
            "experiment": experiment.name,
            **environment(command),
            "config": config_to_dict(config),
            "data": {"sha256": data.checksum, "path": data.path},
            "chance": experiment.chance(config),
            "summary": summary,
            "runs": runs,
        }
        table = markdown_table(summary, runs, experiment.table_metrics, experiment.headline_metric)
        write_results(out, results, table)
        plot_learning_curves(
            runs,
            (f"valid_{experiment.headline_metric}", f"valid_{experiment.selection_metric}"),
            out / "learning_curves.png",
            title=f"{experiment.name}: validation (hard argmax)",
        )
        experiment.draw_examples(models, data, out)
        return results


def _finished(folder: Path, config: TrainingConfig, spec: RunSpec) -> dict[str, Any] | None:
    path = folder / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("digest") == config_digest(config, **vars(spec)) else None


def _best_model(
    experiment: Experiment, config: TrainingConfig, spec: RunSpec, folder: Path
) -> ExperimentModel:
    choice = resolve_estimator(spec.estimator, experiment.structure(config, spec.method))
    model = experiment.build_model(config, spec.method, choice)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()
