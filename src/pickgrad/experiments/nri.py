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

__all__ = [
    "DECODER_MESSAGES",
    "DECODER_WEIGHTS",
    "ForceDecoder",
    "PairwiseMLP",
    "TrajectoryEncoder",
    "pair_index",
    "radial_basis",
]

DECODER_MESSAGES = ("base+edge", "edge")
DECODER_WEIGHTS = ("mlp", "radial")
RADIAL_FEATURES = 4


def radial_basis(sq: Tensor) -> Tensor:
    """The fixed radial features ``[1, r, r^2, 1 / (r^2 + 0.01)]`` of squared distances ``sq
    (..., 1)`` -> ``(..., 4)``: a Fruchterman-Reingold step's attraction (``r``) and repulsion
    (``1 / r^2``) weights are in their span.

    Example:
        >>> radial_basis(torch.tensor([[4.0]]))
        tensor([[1.0000, 2.0000, 4.0000, 0.2494]])
    """
    return torch.cat([torch.ones_like(sq), sq.add(1e-8).sqrt(), sq, 1.0 / (sq + 1e-2)], -1)


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


def _displacement_products(values: Tensor, delta: Tensor) -> Tensor:
    """``values * delta_x`` and ``values * delta_y`` side by side: ``values (..., C)``,
    ``delta (..., 2)`` -> ``(..., 2C)``, entry ``k C + c`` is ``values_c delta_k``.

    The outer product ``values[..., :, None] * delta[..., None, :]`` in axis-major order: the same
    numbers, and forward plus backward about 2.5x faster on the CPU (the broadcast's backward
    reduces over a size-1 axis). Reduce over pairs first, then :func:`_channel_major` the
    (smaller) result.
    """
    return torch.cat([values * delta[..., :1], values * delta[..., 1:]], -1)


def _channel_major(axis_major: Tensor) -> Tensor:
    """Reorder the last dim from ``k C + c`` (:func:`_displacement_products`) to ``2 c + k``."""
    channel_major: Tensor = axis_major.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)
    return channel_major


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

    ``g`` is absent in ``"edge"`` mode. With ``weights="mlp"`` ``g`` and ``h`` are one MLP of
    ``(r, 1 / (r^2 + 0.01))``; with ``weights="radial"`` they are the fixed features
    :func:`radial_basis` ``f(r)`` (K = 4 of them), ``F_i = sum_j A_ij d_ij f(r_ij)``
    (``(B, n, K, 2)``), and ``u``'s first layer mixes them: the same functions as a learned
    linear map of ``f`` (whose product with ``u``'s first layer is again a linear map), without
    a hidden layer per pair. The global mean lets ``u`` see the whole layout; with
    ``rescale=True`` the step ends as the data's layout step does, centring the vertices and
    dividing by their largest absolute coordinate, so ``u`` need not learn that global map. Each
    ``step`` is one round of NRI's decoder (Kipf et al. 2018, Sec. 3.2); ``forward`` predicts
    every next frame, restarting from the true frame every ``rollout`` steps (NRI's prediction
    steps).

    Example:
        >>> dec = ForceDecoder(n=4, hidden=8, channels=4, messages="base+edge")
        >>> x = torch.randn(2, 4, 5, 2)
        >>> dec(x, torch.rand(2, 6), rollout=2).shape
        torch.Size([2, 4, 4, 2])
    """

    signed: Tensor
    incidence: Tensor

    def __init__(
        self,
        n: int,
        hidden: int,
        channels: int,
        messages: str,
        *,
        rescale: bool = False,
        weights: str = "mlp",
        weight_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if messages not in DECODER_MESSAGES:
            raise ValueError(f"messages must be one of {DECODER_MESSAGES}, got {messages!r}")
        if weights not in DECODER_WEIGHTS:
            raise ValueError(f"weights must be one of {DECODER_WEIGHTS}, got {weights!r}")
        signed = _signed_incidence(n)
        self.register_buffer("signed", signed, persistent=False)  # d = signed @ p
        self.register_buffer("incidence", signed.T.contiguous(), persistent=False)  # d_ji = -d_ij
        self.messages = messages
        self.channels = channels
        self.rescale = rescale
        self.radial = weights == "radial"
        per_kind = 2 if messages == "base+edge" else 1
        weight_hidden = hidden if weight_hidden is None else weight_hidden
        self.weights: nn.Sequential | None = None
        if self.radial:
            force_dim = 2 * per_kind * RADIAL_FEATURES
        else:
            force_dim = 2 * channels
            self.weights = nn.Sequential(
                nn.Linear(2, weight_hidden),
                nn.ReLU(),
                nn.Linear(weight_hidden, per_kind * channels),
            )
        self.update = _mlp(2 + force_dim + 2 + force_dim, hidden, 2)

    def _radial_forces(self, delta: Tensor, sq: Tensor, edges: Tensor) -> Tensor:
        """``F_i = sum_j A_ij d_ij f(r_ij)`` (and the unweighted sum first in ``"base+edge"``
        mode): ``delta (B, S, m, 2)``, ``sq (B, S, m, 1)``, ``edges (B, m)`` -> ``(B, S, n, 2K)``
        (or ``4K``).

        The graph is the same for the ``S`` frames of an example, so the weighted sum is one
        product ``(incidence * A) @ P`` per example over all its frames, ``P = f(r) d`` the
        pair features; when the positions are data (one-step prediction) ``P`` needs no
        gradient and the backward reaches ``A`` through that product alone.
        """
        batch, frames, pairs = delta.shape[:3]
        basis = radial_basis(sq)  # (B, S, m, K)
        features = _displacement_products(basis, delta)  # (B, S, m, 2K), axis-major
        width = features.shape[-1]
        by_pair = features.transpose(1, 2).reshape(batch, pairs, frames * width)
        weighted = self.incidence * edges[:, None, :]  # (B, n, m)
        summed = torch.matmul(weighted, by_pair).unflatten(-1, (frames, width)).transpose(1, 2)
        if self.messages == "edge":
            return _channel_major(summed)
        base = torch.matmul(self.incidence, features)
        return torch.cat([_channel_major(base), _channel_major(summed)], -1)

    def _mlp_forces(self, positions: Tensor, edges: Tensor) -> Tensor:
        """``F_i = sum_j d_ij w_ij`` with learned weights: ``positions (B, S, n, 2)``, ``edges
        (B, m)`` -> ``(B, S, n, 2C)``, channel-major (entry ``2 c + k``).

        Feature-major inside the weight MLP: its inputs are ``(features, m B S)``, so its layers
        are ``W @ h`` with the ``m B S`` pair-frames as the long, contiguous axis; the
        displacements and messages are pair-major, so the products with the signed incidence
        (and their backward) are plain matrix products. On the CPU at batch 64 that is about 2x
        faster forward and backward than rows of features (a ``(m B S, 16) @ (16, 8)`` product,
        a narrow output, is 4x slower than its transpose; a broadcast ``(m, n) @ (B, S, n, .)``
        runs as ``B S`` tiny products).
        """
        batch, frames, n, _ = positions.shape
        pairs = self.signed.shape[0]
        by_vertex = positions.permute(2, 3, 0, 1).reshape(n, -1)  # (n, 2 B S)
        delta = torch.mm(self.signed, by_vertex).view(pairs, 2, -1)  # (m, 2, B S): p_i - p_j
        sq = (delta * delta).sum(1)  # (m, B S)
        features = torch.stack([sq.add(1e-8).sqrt(), 1.0 / (sq + 1e-2)]).flatten(1)
        assert self.weights is not None
        first, second = self.weights[0], self.weights[2]
        assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
        hidden = torch.addmm(first.bias[:, None], first.weight, features).relu_()
        weights = torch.addmm(second.bias[:, None], second.weight, hidden)
        weights = weights.view(-1, pairs, batch, frames)  # (C', m, B, S)
        graph = edges.T[None, :, :, None]  # (1, m, B, 1)
        if self.messages == "base+edge":
            base, edge = weights.split(self.channels, 0)
            weights = base + graph * edge
        else:
            weights = graph * weights
        # Pair-major messages (m, 2, C, B S), so that the incidence sum and its backward are
        # each one plain matrix product (a broadcast batched product was 3x slower backward).
        messages = delta[:, :, None] * weights.flatten(-2).transpose(0, 1)[:, None]
        forces = torch.mm(self.incidence, messages.view(pairs, -1))  # (n, 2 C B S)
        # -> (B, S, n, C, 2) -> (B, S, n, 2C): entry 2 c + k.
        forces = forces.view(n, 2, self.channels, batch, frames).permute(3, 4, 0, 2, 1)
        return forces.reshape(batch, frames, n, 2 * self.channels)

    def _step(self, positions: Tensor, edges: Tensor) -> Tensor:
        """``step`` on ``positions (B, S, n, 2)``, ``S`` frames under one graph ``edges (B, m)``."""
        n = positions.shape[-2]
        if self.weights is None:
            delta = torch.matmul(self.signed, positions)  # (B, S, m, 2): p_i - p_j
            sq = (delta * delta).sum(-1, keepdim=True)
            forces = self._radial_forces(delta, sq, edges)
        else:
            forces = self._mlp_forces(positions, edges)
        local = torch.cat([positions, forces], -1)
        context = local.mean(-2, keepdim=True).expand(*local.shape[:-2], n, -1)
        moved: Tensor = positions + self.update(torch.cat([local, context], -1))
        if not self.rescale:
            return moved
        centred = moved - moved.mean(-2, keepdim=True)
        return centred / centred.abs().amax((-2, -1), keepdim=True).clamp_min(1e-6)

    def step(self, positions: Tensor, edges: Tensor) -> Tensor:
        """One message-passing round: ``positions (B, n, 2)``, ``edges (B, m)`` -> ``(B, n, 2)``."""
        return self._step(positions[:, None], edges)[:, 0]

    def forward(self, trajectories: Tensor, edges: Tensor, *, rollout: int) -> Tensor:
        """Predict frames ``1 .. T-1`` from ``trajectories (B, n, T, 2)`` and ``edges (B, m)``.

        Frames ``0, rollout, 2 rollout, ...`` are taken from the data; each starts an independent
        roll-out of up to ``rollout`` steps, all run side by side. Returns ``(B, n, T-1, 2)``.
        """
        batch, n, frames, _ = trajectories.shape
        starts = list(range(0, frames - 1, rollout))
        positions = trajectories[:, :, starts].transpose(1, 2)  # (B, S, n, 2)
        predicted = []
        for _ in range(rollout):
            positions = self._step(positions, edges)
            predicted.append(positions)
        # (B, S, rollout, n, 2) -> frames in order, cut to T - 1.
        stacked = torch.stack(predicted, 2).reshape(batch, -1, n, 2)[:, : frames - 1]
        return stacked.transpose(1, 2)
