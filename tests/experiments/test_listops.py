"""The ListOps experiment: masking equals lengths, metrics, the model's shapes, smoke run, resume."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import torch

from pickgrad import Arborescence, SpanningTree
from pickgrad.cli import main
from pickgrad.experiments import check_request, get_experiment, run_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.listops import ListOpsModel, arc_sums
from pickgrad.experiments.listops_data import generate_split
from pickgrad.experiments.listops_model import MASK_SCORE, allowed_arcs, orient_from_root
from pickgrad.experiments.loop import MONITOR_CSV

EXPERIMENT = get_experiment("listops")


def _masked(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~allowed_arcs(lengths, scores.shape[-1]), MASK_SCORE)


@pytest.mark.parametrize("structure", [Arborescence(root=0), SpanningTree()])
def test_masked_scores_give_the_lengths_distribution(structure: Any) -> None:
    generator = torch.Generator().manual_seed(0)
    n = 6
    scores = torch.randn(5, n, n, dtype=torch.float64, generator=generator)
    lengths = torch.tensor([2, 3, 4, 5, 6])
    masked = _masked(scores, lengths)
    by_mask = structure.relax(masked, tau=0.7)
    by_lengths = structure.relax(scores, tau=0.7, lengths=lengths)
    real = allowed_arcs(lengths, n) & (torch.arange(n) < lengths[:, None])[:, None, :]
    torch.testing.assert_close(by_mask[real], by_lengths[real], rtol=0, atol=1e-10)
    assert torch.equal(structure.argmax(masked) * real, structure.argmax(scores, lengths=lengths))


def test_orient_from_root_matches_networkx() -> None:
    generator = torch.Generator().manual_seed(1)
    trees = SpanningTree().argmax(torch.randn(10, 7, 7, generator=generator))
    arcs = orient_from_root(trees)
    for adjacency, directed in zip(trees, arcs, strict=True):
        expected = nx.bfs_tree(nx.from_numpy_array(adjacency.numpy()), 0)
        assert sorted(map(tuple, directed.nonzero().tolist())) == sorted(expected.edges)


def test_arc_sums_on_a_hand_example() -> None:
    # truth 0 -> 1, 0 -> 2, 2 -> 3; predicted 0 -> 1, 3 -> 2, 1 -> 3
    truth = torch.zeros(1, 4, 4)
    truth[0, 0, 1] = truth[0, 0, 2] = truth[0, 2, 3] = 1
    predicted = torch.zeros(1, 4, 4)
    predicted[0, 0, 1] = predicted[0, 3, 2] = predicted[0, 1, 3] = 1
    sums = {k: float(v) for k, v in arc_sums(predicted, truth).items()}
    assert sums["arc_precision"] == pytest.approx(1 / 3) and sums["arc_recall"] == pytest.approx(
        1 / 3
    )
    assert sums["undirected_precision"] == pytest.approx(2 / 3)
    assert sums["undirected_recall"] == pytest.approx(2 / 3)


def _batch(count: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    part = generate_split(count, random.Random(seed))
    return (part["tokens"], part["lengths"], part["values"], part["heads"])


@pytest.mark.parametrize("method", ["arborescence", "tree", "independent"])
def test_argmax_graphs_are_valid_on_the_real_tokens(method: str) -> None:
    config = EXPERIMENT.default_config(quick=True)
    choice = resolve_estimator("st-gumbel", EXPERIMENT.structure(config, method))
    torch.manual_seed(0)
    model = EXPERIMENT.build_model(config, method, choice)
    assert isinstance(model, ListOpsModel)
    tokens, lengths, _, _ = model._inputs(_batch(8))
    with torch.no_grad():
        states = model.network.encode(tokens, lengths)
        arcs = model.argmax_arcs(states, lengths)
    assert arcs is not None
    for graph, length in zip(arcs, lengths.tolist(), strict=True):
        assert graph[length:].eq(0).all() and graph[:, length:].eq(0).all()
        real = graph[:length, :length].double()
        parents = real.sum(0)
        assert parents[0] == 0 and parents[1:].eq(1).all()  # one parent per non-root token
        if method != "independent":
            assert bool(Arborescence(root=0)._is_solution(real))


@pytest.mark.parametrize("node_input", ["lstm", "embedding"])
@pytest.mark.parametrize("method", ["arborescence", "tree", "independent"])
def test_evaluation_reads_the_graph_as_training_draws_it(method: str, node_input: str) -> None:
    # Evaluation's cross-entropy is the training loss at the argmax graph in the form the
    # structure draws it (a spanning tree symmetric), not at the oriented arcs of the metrics.
    config = dataclasses.replace(EXPERIMENT.default_config(quick=True), node_input=node_input)
    choice = resolve_estimator("st-gumbel", EXPERIMENT.structure(config, method))
    torch.manual_seed(0)
    model = EXPERIMENT.build_model(config, method, choice).double()
    batch = _batch(6, seed=4)
    tokens, lengths, values, _ = model._inputs(batch)
    with torch.no_grad():
        states = model.network.encode(tokens, lengths)
        scores = model.scores(states, lengths)
        drawn = model.structure.argmax(scores, **model.lengths_option(lengths))
        nodes = model.message_inputs(tokens, states)
        loss = model.sample_loss(nodes, lengths, values)(drawn[None])[0].sum()
        sums = model.evaluation_sums(batch)
    torch.testing.assert_close(sums["cross_entropy"], loss, rtol=1e-12, atol=1e-12)
    if method == "tree":
        assert torch.equal(drawn, drawn.transpose(-1, -2))


@pytest.mark.parametrize("estimator", ["gumbel-relaxed", "st-gumbel", "reinforce"])
@pytest.mark.parametrize("method", ["arborescence", "tree", "independent", "lstm"])
def test_training_step_gives_finite_gradients_and_ignores_padding(
    method: str, estimator: str
) -> None:
    config = EXPERIMENT.default_config(quick=True)
    choice = resolve_estimator(estimator, EXPERIMENT.structure(config, method))
    torch.manual_seed(0)
    model = EXPERIMENT.build_model(config, method, choice)
    batch = _batch(6, seed=2)
    loss, logs = model(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and "objective" in logs
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # whatever sits in the padded positions never reaches the loss
    tokens, lengths = batch[0].clone(), batch[1]
    padded = torch.arange(tokens.shape[1]) >= lengths[:, None]
    tokens[padded] = 5
    again, _ = model((tokens, *batch[1:]), torch.Generator().manual_seed(0))
    assert torch.equal(again.detach(), loss.detach())


def test_padding_does_not_change_the_loss() -> None:
    config = EXPERIMENT.default_config(quick=True)
    choice = resolve_estimator("gumbel-relaxed", EXPERIMENT.structure(config, "arborescence"))
    torch.manual_seed(0)
    model = EXPERIMENT.build_model(config, "arborescence", choice).double()
    tokens, lengths, values, heads = _batch(4, seed=3)
    short = int(lengths.max())
    alone = [model.evaluation_sums((tokens[i : i + 1], lengths[i : i + 1], values[i : i + 1],
                                    heads[i : i + 1]))["cross_entropy"] for i in range(4)]  # fmt: skip
    together = model.evaluation_sums((tokens, lengths, values, heads))["cross_entropy"]
    assert short > int(lengths.min())  # the batch really mixes lengths
    torch.testing.assert_close(together, torch.stack(alone).sum(), rtol=1e-9, atol=1e-9)


def test_quick_run_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = main(
        ["experiment", "listops", "--quick", "--no-progress", "--out", str(out),
         "--cache-dir", str(cache)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = EXPERIMENT.default_config(quick=True)
    results = json.loads((out / "results.json").read_text())
    pairs = {(r["method"], r["estimator"], r["seed"]) for r in results["runs"]}
    expected = {(m, e, s) for m in config.methods for e in config.estimators for s in config.seeds}
    assert pairs == expected and len(results["data"]["sha256"]) == 64
    for run in results["runs"]:
        assert 0.0 <= run["test"]["accuracy"] <= 1.0
        assert 0.0 <= run["test"]["arc_precision"] <= 1.0
        assert run["best_step"] in [p["step"] for p in run["curve"]]
    assert "| arborescence | st-gumbel | 1 |" in (out / "results.md").read_text()
    for picture in ("learning_curves.png", "parses.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    for run in results["runs"]:
        csv_path = out / "runs" / f"{run['method']}__{run['estimator']}__seed0" / MONITOR_CSV
        if run["method"] == "lstm":  # nothing drawn: not monitored
            assert run["monitor"] == [] and csv_path.read_text().count("\n") == 1
        else:
            steps = [int(line.split(",")[0]) for line in csv_path.read_text().splitlines()[1:]]
            assert steps == [1, 3, 6] == [r["step"] for r in run["monitor"]]


def test_killed_run_resumes_bit_identically(tmp_path: Path) -> None:
    config = dataclasses.replace(
        EXPERIMENT.default_config(quick=True), methods=("arborescence",),
        estimators=("reinforce",), progress=False,
    )  # fmt: skip
    cache = tmp_path / "cache"
    full = run_experiment(EXPERIMENT, config, tmp_path / "full", cache_dir=cache)

    class Killed(Exception):
        pass

    def kill(step: int) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        run_experiment(EXPERIMENT, config, tmp_path / "cut", cache_dir=cache, after_step=kill)
    resumed = run_experiment(EXPERIMENT, config, tmp_path / "cut", cache_dir=cache, resume=True)
    (a,), (b,) = full["runs"], resumed["runs"]
    assert a["curve"] == b["curve"] and a["test"] == b["test"] and a["best_step"] == b["best_step"]
    assert [r["step"] for r in a["monitor"]] == [r["step"] for r in b["monitor"]] == [1, 3, 6]
    assert [r["snr"] for r in a["monitor"]] == [r["snr"] for r in b["monitor"]]


def test_bad_method_is_refused() -> None:
    config = dataclasses.replace(EXPERIMENT.default_config(quick=True), methods=("forest",))
    with pytest.raises(ValueError, match=r"unknown method.*valid: arborescence, tree"):
        check_request(EXPERIMENT, config)


@pytest.mark.parametrize("estimator", ["nvil", "perturbed", "st"])
def test_other_estimators_by_name(estimator: str) -> None:
    config = EXPERIMENT.default_config(quick=True)
    choice = resolve_estimator(estimator, EXPERIMENT.structure(config, "arborescence"))
    torch.manual_seed(0)
    model = EXPERIMENT.build_model(config, "arborescence", choice)
    loss, _ = model(_batch(4, seed=5), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.network.head.weight.grad is not None
    assert model.network.head.weight.grad.abs().sum() > 0  # the scorer learns through pickgrad
    if estimator == "nvil":  # the learned baseline is trained by the same backward
        assert model.baseline is not None and model.baseline.weight.grad is not None


def test_embedding_node_input_reaches_the_root_only_along_the_arcs() -> None:
    config = dataclasses.replace(EXPERIMENT.default_config(quick=True), node_input="embedding")
    choice = resolve_estimator("st-gumbel", EXPERIMENT.structure(config, "arborescence"))
    torch.manual_seed(0)
    model = EXPERIMENT.build_model(config, "arborescence", choice).double()
    tokens, lengths, _, _ = model._inputs(_batch(4, seed=5))
    changed = tokens.clone()
    changed[:, 1] = torch.where(changed[:, 1] == 3, 4, 3)  # another token after the root
    with torch.no_grad():
        logits = []
        for t in (tokens, changed):
            states = model.network.encode(t, lengths)
            nodes = model.message_inputs(t, states)
            empty = torch.zeros(*t.shape, t.shape[1], dtype=nodes.dtype)
            logits.append(model.network.logits(nodes, lengths, empty))
    assert torch.equal(logits[0], logits[1])  # no arc: the root sees only itself
    with pytest.raises(ValueError, match="node_input must be one of lstm, embedding"):
        dataclasses.replace(config, node_input="bilstm")
