"""Encoder and decoder of the graph-layout experiment, after neural relational inference.

Both work on the ``m = n(n-1)/2`` unordered vertex pairs ``(i, j)``, ``i < j``, in pickgrad's
edge-list order (upper triangle, row-major), so no work is spent on the diagonal or on a second
copy of each pair.

* :class:`TrajectoryEncoder` is the NRI encoder (Kipf et al. 2018, Sec. 3.1: node MLP, edge MLP,
  node MLP over aggregated edges, edge MLP), made symmetric in ``(i, j)`` as Paulus et al. 2020
  (Appendix C) symmetrise the logits, by building every pair feature from symmetric functions.
* :class:`ForceDecoder` is a message-passing decoder (Kipf et al. 2018, Sec. 3.2) whose message
  from ``j`` to ``i`` is the vector ``(p_i - p_j) w_ij`` with learned scalar weights ``w_ij`` of
  the distance: the form of a force-directed layout's update. In ``"base+edge"`` mode every pair
  sends a base message and each drawn edge an extra one, ``w = g(r) + A_ij h(r)``; in ``"edge"``
  mode only drawn edges send one, ``w = A_ij h(r)`` (NRI's on/off edge types).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pickgrad.structures import edge_index

__all__ = ["DECODER_MESSAGES", "ForceDecoder", "PairwiseMLP", "TrajectoryEncoder", "pair_index"]

DECODER_MESSAGES = ("base+edge", "edge")


def pair_index(n: int) -> tuple[Tensor, Tensor]:
    """The endpoints ``(rows, cols)``, each ``(m,)``, of the pairs ``i < j``, upper triangle
    row-major: :func:`pickgrad.structures.edge_index`'s order.

    Example:
        >>> [t.tolist() for t in pair_index(3)]
        [[0, 0, 1], [1, 2, 2]]
    """
    rows, cols = edge_index(n)
    return rows, cols


def _signed_incidence(n: int) -> Tensor:
    """``(m, n)``: row ``e`` of pair ``(i, j)`` is +1 at ``i`` and -1 at ``j``."""
    rows, cols = pair_index(n)
    signed = torch.zeros(rows.numel(), n)
    signed[torch.arange(rows.numel()), rows] = 1.0
    signed[torch.arange(rows.numel()), cols] = -1.0
    return signed


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, outputs),
    )  # fmt: skip


class PairwiseMLP(nn.Module):
    """Symmetric pair features ``MLP(P v_i + P v_j + |Q v_i - Q v_j| W + E e_ij)``.

    Symmetric in ``i, j`` by construction; the absolute difference lets the first layer see
    distances between the vertices' embeddings, which a plain sum cannot. The pairs are read
    through the ``(m, n)`` incidence matrices ``both`` (+1, +1) and ``signed`` (+1, -1): a matrix
    product, whose backward is another one (a gather's backward is a slow scatter on the CPU).

    Shapes: ``nodes (B, n, d)``, optional ``edges (B, m, e)`` -> ``(B, m, out)``.
    """

    def __init__(self, node_dim: int, edge_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.sum_proj = nn.Linear(node_dim, hidden)
        self.diff_proj = nn.Linear(node_dim, hidden, bias=False)
        self.diff_mix = nn.Linear(hidden, hidden, bias=False)
        self.edge_proj = nn.Linear(edge_dim, hidden, bias=False) if edge_dim else None
        self.head = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def forward(
        self, nodes: Tensor, both: Tensor, signed: Tensor, edges: Tensor | None = None
    ) -> Tensor:
        summed = torch.matmul(both, self.sum_proj(nodes))
        diff = torch.matmul(signed, self.diff_proj(nodes))
        pre = summed + self.diff_mix(diff.abs())
        if self.edge_proj is not None and edges is not None:
            pre = pre + self.edge_proj(edges)
        out: Tensor = self.head(pre)
        return out


class TrajectoryEncoder(nn.Module):
    """NRI encoder: trajectories ``(B, n, T, 2)`` -> one score vector per vertex pair ``(B, m, out)``.

    ``h_i = f1(x_i)``; ``e_ij = f2(h_i, h_j)``; ``v_i = f3(mean_{j ~ i} e_ij)``;
    ``s_ij = f4(v_i, v_j, e_ij)`` (Kipf et al. 2018, Sec. 3.1, MLP encoder with one round of
    node-to-edge-to-node messages), every ``f`` an MLP and each pair function symmetric.

    Example:
        >>> enc = TrajectoryEncoder(n=4, frames=3, hidden=8, out=1)
        >>> enc(torch.randn(2, 4, 3, 2)).shape
        torch.Size([2, 6, 1])
    """

    both: Tensor
    signed: Tensor
    incidence_mean: Tensor

    def __init__(self, n: int, frames: int, hidden: int, out: int) -> None:
        super().__init__()
        signed = _signed_incidence(n)
        self.register_buffer("both", signed.abs(), persistent=False)
        self.register_buffer("signed", signed, persistent=False)
        self.register_buffer("incidence_mean", signed.abs().T / (n - 1), persistent=False)
        self.node_in = _mlp(frames * 2, hidden, hidden)
        self.pair_in = PairwiseMLP(hidden, 0, hidden, hidden)
        self.node_mid = _mlp(hidden, hidden, hidden)
        self.pair_out = PairwiseMLP(hidden, hidden, hidden, out)

    def forward(self, trajectories: Tensor) -> Tensor:
        batch, n = trajectories.shape[:2]
        nodes = self.node_in(trajectories.reshape(batch, n, -1))
        edges = self.pair_in(nodes, self.both, self.signed)
        nodes = self.node_mid(torch.matmul(self.incidence_mean, edges))
        scores: Tensor = self.pair_out(nodes, self.both, self.signed, edges)
        return scores


class ForceDecoder(nn.Module):
    """Message passing over a (soft or hard) graph, predicting the next frame of each vertex.

    One step, for weights ``A (B, m)`` in [0, 1] and positions ``p (B, n, 2)``::

        d_ij = p_i - p_j,  r_ij = |d_ij|,  w_ij = g(r_ij) + A_ij h(r_ij)   (C channels each)
        F_i  = sum_{j != i} d_ij w_ij                                       (B, n, C, 2)
        p_i <- p_i + u(p_i, F_i, mean_k [p_k, F_k])

    ``g`` is absent in ``"edge"`` mode. The global mean lets ``u`` see the whole layout; with
    ``rescale=True`` the step ends as the data's layout step does, centring the vertices and
    dividing by their largest absolute coordinate, so ``u`` need not learn that global map. Each ``step`` is one round of NRI's decoder (Kipf et al. 2018,
    Sec. 3.2); ``forward`` predicts every next frame, restarting from the true frame every
    ``rollout`` steps (NRI's prediction steps).

    Example:
        >>> dec = ForceDecoder(n=4, hidden=8, channels=4, messages="base+edge")
        >>> x = torch.randn(2, 4, 5, 2)
        >>> dec(x, torch.rand(2, 6), rollout=2).shape
        torch.Size([2, 4, 4, 2])
    """

    signed: Tensor
    incidence: Tensor

    def __init__(
        self, n: int, hidden: int, channels: int, messages: str, *, rescale: bool = False
    ) -> None:
        super().__init__()
        if messages not in DECODER_MESSAGES:
            raise ValueError(f"messages must be one of {DECODER_MESSAGES}, got {messages!r}")
        signed = _signed_incidence(n)
        self.register_buffer("signed", signed, persistent=False)  # d = signed @ p
        self.register_buffer("incidence", signed.T.contiguous(), persistent=False)  # d_ji = -d_ij
        self.messages = messages
        self.channels = channels
        self.rescale = rescale
        per_kind = 2 if messages == "base+edge" else 1
        self.weights = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, per_kind * channels)
        )
        self.update = _mlp(2 + 2 * channels + 2 + 2 * channels, hidden, 2)

    def step(self, positions: Tensor, edges: Tensor) -> Tensor:
        """One message-passing round: ``positions (B', n, 2)``, ``edges (B', m)`` -> ``(B', n, 2)``."""
        batch, n = positions.shape[:2]
        delta = torch.matmul(self.signed, positions)  # (B', m, 2): p_i - p_j
        sq = (delta * delta).sum(-1, keepdim=True)
        weights = self.weights(torch.cat([sq.add(1e-8).sqrt(), 1.0 / (sq + 1e-2)], -1))
        if self.messages == "base+edge":
            base, edge = weights.split(self.channels, -1)
            weights = base + edges[..., None] * edge
        else:
            weights = edges[..., None] * weights
        messages = weights[..., :, None] * delta[..., None, :]  # (B', m, C, 2)
        forces = torch.matmul(self.incidence, messages.reshape(batch, -1, 2 * self.channels))
        local = torch.cat([positions, forces], -1)  # (B', n, 2 + 2C)
        context = local.mean(1, keepdim=True).expand(-1, n, -1)
        moved: Tensor = positions + self.update(torch.cat([local, context], -1))
        if not self.rescale:
            return moved
        centred = moved - moved.mean(1, keepdim=True)
        return centred / centred.abs().amax((1, 2), keepdim=True).clamp_min(1e-6)

    def forward(self, trajectories: Tensor, edges: Tensor, *, rollout: int) -> Tensor:
        """Predict frames ``1 .. T-1`` from ``trajectories (B, n, T, 2)`` and ``edges (B, m)``.

        Frames ``0, rollout, 2 rollout, ...`` are taken from the data; each starts an independent
        roll-out of up to ``rollout`` steps, all run side by side. Returns ``(B, n, T-1, 2)``.
        """
        batch, n, frames, _ = trajectories.shape
        starts = list(range(0, frames - 1, rollout))
        # (B * S, n, 2): every segment's starting frame, segments side by side in the batch.
        positions = trajectories[:, :, starts].permute(0, 2, 1, 3).reshape(-1, n, 2)
        graph = edges.repeat_interleave(len(starts), 0)
        predicted = []
        for _ in range(rollout):
            positions = self.step(positions, graph)
            predicted.append(positions.reshape(batch, len(starts), n, 2))
        # (B, S, rollout, n, 2) -> frames in order, cut to T - 1.
        stacked = torch.stack(predicted, 2).reshape(batch, -1, n, 2)[:, : frames - 1]
        return stacked.permute(0, 2, 1, 3)
