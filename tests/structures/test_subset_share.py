"""Subset's top-k shortcut (no tie at the k-th value) against a brute-force top-k."""

from __future__ import annotations

import itertools

import pytest
import torch

from pickgrad import Subset
from pickgrad.structures._subset_marginals import top_k_hot


def _brute_force_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The first best subset in lexicographic order of the chosen indices (ties to the lowest)."""
    n = scores.shape[-1]
    rows = scores.reshape(-1, n)
    out = torch.zeros_like(rows)
    for r, row in enumerate(rows):
        best = max(
            itertools.combinations(range(n), k),
            key=lambda chosen: (float(row[list(chosen)].sum()), [-i for i in chosen]),
        )
        out[r, list(best)] = 1.0
    return out.reshape(scores.shape)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_hot_matches_brute_force_with_and_without_ties(k: int, ties: bool) -> None:
    generator = torch.Generator().manual_seed(k)
    scores = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    if ties:  # few distinct values: ties at the k-th value in most rows
        scores = scores.mul(1.5).round()
    top = torch.topk(scores, k, dim=-1).values
    expected = _brute_force_top_k(scores, k)
    assert torch.equal(top_k_hot(scores, top, k), expected)
    assert torch.equal(Subset(k).argmax(scores), expected)


def test_top_k_hot_shortcut_and_tie_path_agree_on_a_batch_with_one_tied_row() -> None:
    """One tied row sends the whole batch through the tie-breaking path: same result per row."""
    scores = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    tied = scores.clone()
    tied[7] = torch.tensor([1.0, 3.0, 1.0, 0.0, 1.0, -2.0, 1.0, 0.5])  # k = 3: four tied at 1
    for batch in (scores, tied):
        top = torch.topk(batch, 3, dim=-1).values
        assert torch.equal(top_k_hot(batch, top, 3), _brute_force_top_k(batch, 3))


def test_top_k_hot_keeps_masked_entries_out() -> None:
    scores = torch.tensor([[0.5, -torch.inf, 2.0, 1.0, -torch.inf]])
    assert torch.equal(Subset(2).argmax(scores), torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]))
