"""The ListOps model: BiLSTM encoder, biaffine arc scores, a latent graph, message passing, readout.

Paulus et al. 2020, Sec. 7.2 and App. C.2 (unsupervised parsing on ListOps): a bidirectional
LSTM reads the tokens; a biaffine scorer (Dozat & Manning 2017) gives a score to every arc
``i -> j``; pickgrad draws the latent graph; a message-passing network runs a fixed number of
rounds over the drawn arcs (parent to child and child to parent, each with its own weights); the
state of token 0 (the root) feeds an MLP over the ten values.

The root is fixed: in prefix notation the outermost operator is always token 0, so the
arborescence is ``Arborescence(root=0)`` and no root score is needed (a scored root would only
have to learn to pick token 0).

Variable length: the trees (``arborescence``, ``tree``) get ``lengths=`` in training
(``pickgrad.select`` / ``pickgrad.estimate``) and evaluation (``argmax``): graph b is drawn over
its first ``lengths[b]`` tokens, the padded arcs are 0 and get no gradient, and the padded
scores are never read. ``independent`` (a ``OneHot`` per token, which has no ``lengths``) masks
the padding by scores of ``MASK_SCORE``: a padded token may only hang from token 0 and no real
token may hang from a padded one (their messages are zeroed), which leaves the real tokens'
heads exactly as free as without padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pickgrad.structures import Arborescence, OneHot, SpanningTree
from pickgrad.structures.base import Structure

__all__ = [
    "MASK_SCORE",
    "METHODS",
    "ListOpsNetwork",
    "allowed_arcs",
    "orient_from_root",
    "structure_for",
]

#: Score of an arc excluded by padding, for ``independent`` (OneHot takes no ``lengths``).
MASK_SCORE = -1.0e4

METHODS = {
    "arborescence": "rooted arborescence at token 0 (Arborescence): the true structure class",
    "tree": "undirected spanning tree (SpanningTree), messages both ways",
    "independent": "a parent for each token independently (OneHot over heads, no tree)",
    "lstm": "no latent structure: the BiLSTM's root state alone",
}


def structure_for(method: str) -> Structure:
    """The structure ``method`` draws (``lstm`` draws none; it reports ``OneHot`` so that any
    estimator name is accepted and ignored)."""
    if method == "arborescence":
        return Arborescence(root=0)
    if method == "tree":
        return SpanningTree()
    if method in ("independent", "lstm"):
        return OneHot()
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def allowed_arcs(lengths: Tensor, n: int) -> Tensor:
    """Arcs ``i -> j`` (``(B, n, n)`` bool) a graph over ``lengths[b]`` real tokens may use.

    Real tokens: any arc between two distinct real tokens. A padded token ``j``: only ``0 -> j``.

    Example:
        >>> allowed_arcs(torch.tensor([2]), 3)[0].int().tolist()
        [[0, 1, 1], [1, 0, 0], [0, 0, 0]]
    """
    positions = torch.arange(n, device=lengths.device)
    real = positions < lengths[:, None]  # (B, n)
    both = real[:, :, None] & real[:, None, :]
    both = both & ~torch.eye(n, dtype=torch.bool, device=lengths.device)
    padded_from_root = (~real)[:, None, :] & (positions == 0)[None, :, None]
    return both | padded_from_root


def orient_from_root(adjacency: Tensor, root: int = 0) -> Tensor:
    """Orient a (0/1, symmetric) tree away from ``root``: ``(..., n, n)`` -> arcs ``(..., n, n)``.

    Breadth first, batched: at each round every reached node adopts its unreached neighbours.
    Nodes not connected to the root keep no parent.

    Example:
        >>> a = torch.tensor([[0.0, 0, 1], [0, 0, 1], [1, 1, 0]])
        >>> orient_from_root(a).nonzero().tolist()
        [[0, 2], [2, 1]]
    """
    n = adjacency.shape[-1]
    reached = torch.zeros(adjacency.shape[:-1], dtype=adjacency.dtype, device=adjacency.device)
    reached[..., root] = 1
    arcs = torch.zeros_like(adjacency)
    for _ in range(n - 1):
        new = reached[..., :, None] * adjacency * (1 - reached)[..., None, :]
        if not bool(new.any()):
            break
        arcs = arcs + new
        reached = (reached + new.sum(-2)).clamp(max=1)
    return arcs


class ListOpsNetwork(nn.Module):
    """Encoder, arc scorer, message passing and readout (the latent draw is the caller's).

    Shapes: ``tokens (B, n)`` long, ``lengths (B,)``; node states ``(B, n, hidden)``; arc
    scores ``(B, n, n)`` (``scores[b, i, j]`` scores ``i -> j``); graphs ``(..., B, n, n)``
    weights of the arcs; logits ``(..., B, 10)``.
    """

    def __init__(self, *, vocabulary: int, hidden: int, arc_hidden: int, rounds: int) -> None:
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden must be even (two LSTM directions), got {hidden}")
        self.rounds = rounds
        self.embedding = nn.Embedding(vocabulary, hidden, padding_idx=0)
        self.lstm = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(hidden, arc_hidden)
        self.dependent = nn.Linear(hidden, arc_hidden)
        self.biaffine = nn.Parameter(torch.zeros(arc_hidden, arc_hidden))
        self.head_bias = nn.Linear(arc_hidden, 1, bias=False)
        self.to_child = nn.Linear(hidden, hidden)
        self.to_parent = nn.Linear(hidden, hidden)
        self.update = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU())
        self.norm = nn.LayerNorm(hidden)
        self.readout = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def encode(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """BiLSTM states ``(B, n, hidden)``, zero at padded tokens."""
        packed = pack_padded_sequence(
            self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, _ = self.lstm(packed)
        padded, _ = pad_packed_sequence(states, batch_first=True, total_length=tokens.shape[1])
        return padded

    def arc_scores(self, states: Tensor, lengths: Tensor, *, pad: bool = True) -> Tensor:
        """Biaffine ``s[i, j] = h_i^T W d_j + u^T h_i``; with ``pad``, masked to ``allowed_arcs``
        by ``MASK_SCORE`` (for structures without ``lengths=``)."""
        head, dependent = self.head(states), self.dependent(states)
        scores: Tensor = head @ self.biaffine @ dependent.transpose(-1, -2) + self.head_bias(head)
        if not pad:
            return scores
        allowed = allowed_arcs(lengths, states.shape[1])
        return scores.masked_fill(~allowed, MASK_SCORE)

    def logits(self, states: Tensor, lengths: Tensor, graph: Tensor | None) -> Tensor:
        """Message passing over ``graph`` (``(..., B, n, n)``; None: no rounds), then readout."""
        real = torch.arange(states.shape[1], device=states.device) < lengths[:, None]
        real = real.to(states.dtype)[..., None]  # (B, n, 1)
        if graph is None:
            root: Tensor = self.readout(states[..., 0, :])
            return root
        h = states.expand(*graph.shape[:-3], *states.shape)
        for _ in range(self.rounds):
            # graph[i, j]: arc i -> j. Children tell parents (rows), parents tell children.
            from_children = graph @ (self.to_parent(h) * real)
            from_parents = graph.transpose(-1, -2) @ (self.to_child(h) * real)
            message = torch.cat([h, from_children, from_parents], -1)
            h = self.norm(h + self.update(message)) * real
        out: Tensor = self.readout(h[..., 0, :])
        return out
