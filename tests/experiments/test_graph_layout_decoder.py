"""The graph-layout decoder's radial messages against a per-pair loop, and its batched frames."""

from __future__ import annotations

import pytest
import torch

from pickgrad.experiments.nri import ForceDecoder, pair_index, radial_basis


def _loop_forces(positions: torch.Tensor, edges: torch.Tensor, messages: str) -> torch.Tensor:
    """``F_i = sum_{j != i} A_ij d_ij f(r_ij)`` (after the unweighted sum in "base+edge" mode),
    one pair at a time: ``positions (B, n, 2)``, ``edges (B, m)`` -> ``(B, n, 2K)``."""
    batch, n = positions.shape[:2]
    rows, cols = pair_index(n)
    weight = torch.zeros(batch, n, n, dtype=positions.dtype)
    weight[:, rows, cols] = edges
    weight = weight + weight.transpose(1, 2)
    kinds = [torch.ones_like(weight), weight] if messages == "base+edge" else [weight]
    out = []
    for kind in kinds:
        total = torch.zeros(batch, n, 4, 2, dtype=positions.dtype)
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                delta = positions[:, i] - positions[:, j]
                basis = radial_basis((delta * delta).sum(-1, keepdim=True))
                total[:, i] += kind[:, i, j, None, None] * basis[:, :, None] * delta[:, None, :]
        out.append(total.flatten(-2))
    return torch.cat(out, -1)


@pytest.mark.parametrize("messages", ["edge", "base+edge"])
def test_radial_forces_match_the_per_pair_sum(messages: str) -> None:
    torch.manual_seed(0)
    decoder = ForceDecoder(n=5, hidden=8, channels=3, messages=messages, weights="radial")
    positions = torch.randn(3, 2, 5, 2, dtype=torch.float64)  # (B, S, n, 2)
    edges = torch.rand(3, 10, dtype=torch.float64)
    delta = torch.matmul(decoder.signed.double(), positions)
    sq = (delta * delta).sum(-1, keepdim=True)
    decoder.incidence = decoder.incidence.double()
    forces = decoder._radial_forces(delta, sq, edges)
    for frame in range(2):
        torch.testing.assert_close(
            forces[:, frame], _loop_forces(positions[:, frame], edges, messages)
        )


@pytest.mark.parametrize("messages", ["edge", "base+edge"])
def test_radial_decoder_frames_side_by_side_match_one_at_a_time(messages: str) -> None:
    torch.manual_seed(1)
    decoder = ForceDecoder(n=4, hidden=8, channels=3, messages=messages, weights="radial")
    decoder = decoder.double()
    x = torch.randn(2, 4, 7, 2, dtype=torch.float64)
    edges = torch.rand(2, 6, dtype=torch.float64)
    expected = torch.stack([decoder.step(x[:, :, t], edges) for t in range(6)], 2)
    torch.testing.assert_close(decoder(x, edges, rollout=1), expected)
    position = x[:, :, 0]
    full = decoder(x, edges, rollout=6)
    for t in range(6):
        position = decoder.step(position, edges)
        torch.testing.assert_close(full[:, :, t], position)


def test_radial_decoder_gradient_in_the_edges_is_exact() -> None:
    torch.manual_seed(2)
    decoder = ForceDecoder(n=4, hidden=6, channels=2, messages="edge", weights="radial").double()
    decoder.rescale = True
    x = torch.randn(2, 4, 4, 2, dtype=torch.float64)
    edges = torch.rand(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: decoder(x, a, rollout=1), (edges,))


def test_radial_edge_decoder_without_edges_is_the_update_alone() -> None:
    torch.manual_seed(3)
    decoder = ForceDecoder(n=4, hidden=8, channels=3, messages="edge", weights="radial")
    positions = torch.randn(2, 4, 2)
    zeros = torch.zeros(2, 4, 8)
    mean = positions.mean(1, keepdim=True).expand(-1, 4, -1)
    alone = torch.cat([positions, zeros, mean, zeros], -1)
    moved = decoder.step(positions, torch.zeros(2, 6))
    torch.testing.assert_close(moved, positions + decoder.update(alone))


def test_bad_weight_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="weights must be one of"):
        ForceDecoder(n=4, hidden=8, channels=3, messages="edge", weights="table")


@pytest.mark.parametrize("messages", ["edge", "base+edge"])
def test_learned_weight_forces_match_the_per_pair_sum(messages: str) -> None:
    """The pair-major ``_mlp_forces``: ``F_i = sum_{j != i} d_ij w_ij`` channel by channel,
    ``w = g(r) + A h(r)`` or ``A h(r)``, entry ``2 c + k`` for channel c, axis k."""
    torch.manual_seed(4)
    decoder = ForceDecoder(n=5, hidden=8, channels=3, messages=messages).double()
    positions = torch.randn(3, 2, 5, 2, dtype=torch.float64)  # (B, S, n, 2)
    edges = torch.rand(3, 10, dtype=torch.float64, requires_grad=True)
    forces = decoder._mlp_forces(positions, edges)
    rows, cols = pair_index(5)
    expected = torch.zeros(3, 2, 5, 3, 2, dtype=torch.float64)
    for e, (i, j) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        delta = positions[:, :, i] - positions[:, :, j]  # (B, S, 2)
        sq = (delta * delta).sum(-1, keepdim=True)
        w = decoder.weights(torch.cat([sq.add(1e-8).sqrt(), 1.0 / (sq + 1e-2)], -1))
        a = edges[:, e, None, None]
        w = w[..., :3] + a * w[..., 3:] if messages == "base+edge" else a * w
        expected[:, :, i] += w[..., :, None] * delta[..., None, :]
        expected[:, :, j] -= w[..., :, None] * delta[..., None, :]
    torch.testing.assert_close(forces, expected.flatten(-2))
    inputs = (edges, *decoder.weights.parameters())
    grads = torch.autograd.grad(forces.square().sum(), inputs)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
