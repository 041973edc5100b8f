"""The encoder and decoder of the graph-layout experiment."""

from __future__ import annotations

import pytest
import torch

from pickgrad.experiments.nri import ForceDecoder, TrajectoryEncoder, pair_index


def test_pair_index_is_upper_triangle_row_major() -> None:
    rows, cols = pair_index(4)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3),
    ]  # fmt: skip


def test_encoder_scores_do_not_depend_on_vertex_order_within_a_pair() -> None:
    # Relabelling the vertices permutes the pair scores accordingly: score(i, j) is symmetric.
    torch.manual_seed(0)
    encoder = TrajectoryEncoder(n=5, frames=4, hidden=8, out=2).double()
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    scores, permuted = encoder(x), encoder(x[:, perm])
    rows, cols = pair_index(5)
    lookup = {(int(i), int(j)): e for e, (i, j) in enumerate(zip(rows, cols, strict=True))}
    for e, (i, j) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        a, b = sorted((int(perm[i]), int(perm[j])))
        torch.testing.assert_close(permuted[:, e], scores[:, lookup[(a, b)]])


def test_decoder_predicts_every_next_frame_for_each_rollout() -> None:
    torch.manual_seed(0)
    decoder = ForceDecoder(n=4, hidden=8, channels=3, messages="base+edge").double()
    x = torch.randn(2, 4, 7, 2, dtype=torch.float64)
    edges = torch.rand(2, 6, dtype=torch.float64)
    one_step = decoder(x, edges, rollout=1)
    expected = torch.stack([decoder.step(x[:, :, t], edges) for t in range(6)], 2)
    torch.testing.assert_close(one_step, expected)
    full = decoder(x, edges, rollout=6)
    position = x[:, :, 0]
    for t in range(6):
        position = decoder.step(position, edges)
        torch.testing.assert_close(full[:, :, t], position)
    assert decoder(x, edges, rollout=4).shape == (2, 4, 6, 2)


def test_edge_only_decoder_sends_no_message_without_drawn_edges() -> None:
    # In "edge" mode the forces vanish when no edge is drawn: the step is the update MLP of the
    # positions and their mean alone. In "base+edge" mode the base messages remain.
    torch.manual_seed(0)
    positions = torch.randn(2, 4, 2)
    none = torch.zeros(2, 6)
    zeros = torch.zeros(2, 4, 6)
    mean = positions.mean(1, keepdim=True).expand(-1, 4, -1)
    alone = torch.cat([positions, zeros, mean, zeros], -1)
    edge_only = ForceDecoder(n=4, hidden=8, channels=3, messages="edge")
    torch.testing.assert_close(edge_only.step(positions, none), positions + edge_only.update(alone))
    with_base = ForceDecoder(n=4, hidden=8, channels=3, messages="base+edge")
    moved = with_base.step(positions, none) - positions
    assert not torch.allclose(moved, with_base.update(alone))


def test_bad_message_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="messages must be one of"):
        ForceDecoder(n=4, hidden=8, channels=3, messages="all")


def test_decoder_warmup_trains_the_decoder_on_the_uniform_graph_only() -> None:
    import dataclasses

    from pickgrad.experiments import get_experiment
    from pickgrad.experiments.estimators import resolve_estimator

    experiment = get_experiment("graph-layout")
    config = dataclasses.replace(
        experiment.default_config(quick=True), decoder_warmup=3, kl_weight=0.0
    )
    choice = resolve_estimator("st-gumbel", experiment.structure(config, "tree"))
    torch.manual_seed(0)
    model = experiment.build_model(config, "tree", choice)
    batch = (torch.rand(4, config.vertices, config.frames, 2) * 2 - 1,)
    for step, warm in ((0, True), (2, True), (3, False)):
        model.zero_grad(set_to_none=True)
        model.start_step(step)
        loss, _ = model(batch, torch.Generator().manual_seed(1))
        loss.backward()
        encoder = [p.grad for p in model.encoder.parameters()]
        decoder = [p.grad for p in model.decoder.parameters()]
        assert all(g is not None and bool(g.abs().sum() > 0) for g in decoder[-2:])
        # During the warm-up (and with the KL term off) no gradient reaches the encoder.
        silent = all(g is None or float(g.abs().sum()) == 0.0 for g in encoder)
        assert silent == warm
