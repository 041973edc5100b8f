"""The ListOps data: values against a recursive evaluator, parses are arborescences, the cache."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest
import torch

from pickgrad import Arborescence
from pickgrad.experiments.listops_data import (
    VOCABULARY,
    evaluate_tokens,
    expression_depth,
    generate_split,
    heads_to_arcs,
    load_or_generate,
    parse_heads,
)


def _recursive_value(tokens: list[str], start: int = 0) -> tuple[int, int]:
    """(value, index after the expression starting at ``start``), written independently."""
    operator, arguments, position = tokens[start], [], start + 1
    while tokens[position] != "]":
        if tokens[position].startswith("["):
            value, position = _recursive_value(tokens, position)
        else:
            value, position = int(tokens[position]), position + 1
        arguments.append(value)
    functions = {
        "[MIN": min,
        "[MAX": max,
        "[MED": lambda a: int(statistics.median(a)),  # floor of the mean of the two middles
        "[SM": lambda a: sum(a) % 10,
    }
    return functions[operator](arguments), position + 1


def _decode(row: torch.Tensor, length: int) -> list[str]:
    return [VOCABULARY[int(t)] for t in row[:length]]


@pytest.fixture(scope="module")
def split() -> dict[str, torch.Tensor]:
    return generate_split(400, random.Random(7))


def test_hand_written_examples() -> None:
    cases = {
        "[MAX 2 9 [MIN 4 7 ] 0 ]": 9,
        "[MIN 3 [MAX 8 5 ] 4 ]": 3,
        "[MED 1 8 3 2 ]": 2,  # (2 + 3) // 2
        "[MED 7 [SM 9 9 ] 1 ]": 7,  # median of 7, 8, 1
        "[SM 5 [MED 1 8 3 2 ] 9 ]": 6,
    }
    for text, value in cases.items():
        assert evaluate_tokens(text.split()) == value == _recursive_value(text.split())[0]


def test_values_match_the_recursive_evaluator(split: dict[str, torch.Tensor]) -> None:
    for row, length, value in zip(split["tokens"], split["lengths"], split["values"], strict=True):
        tokens = _decode(row, int(length))
        recursive, end = _recursive_value(tokens)
        assert end == len(tokens) and recursive == int(value)


def test_lengths_depths_and_padding_are_in_range(split: dict[str, torch.Tensor]) -> None:
    lengths = split["lengths"]
    assert int(lengths.min()) >= 10 and int(lengths.max()) <= 50
    depths = set()
    for row, length in zip(split["tokens"], lengths, strict=True):
        depths.add(expression_depth(_decode(row, int(length))))
        assert not row[: int(length)].eq(0).any() and row[int(length) :].eq(0).all()
    assert depths <= {1, 2, 3, 4, 5} and len(depths) >= 3


def test_parse_convention_on_an_example() -> None:
    # [MAX heads 2, 9, [MIN, 0 and its own ]; [MIN heads 4, 7 and its ].
    assert parse_heads("[MAX 2 9 [MIN 4 7 ] 0 ]".split()) == [-1, 0, 0, 0, 3, 3, 3, 0, 0]


def test_every_parse_is_an_arborescence_rooted_at_the_first_token(
    split: dict[str, torch.Tensor],
) -> None:
    structure = Arborescence(root=0)
    for row, heads, length in zip(split["tokens"], split["heads"], split["lengths"], strict=True):
        n = int(length)
        arcs = heads_to_arcs(heads, n).double()
        assert bool(structure._is_solution(arcs))
        assert int(arcs.sum()) == n - 1 and heads[n:].eq(-1).all()
        tokens = _decode(row, n)
        for child, parent in enumerate(heads[:n].tolist()):
            assert parent == -1 if child == 0 else tokens[parent].startswith("[")


def test_heads_to_arcs_reads_the_first_n_tokens() -> None:
    heads = torch.tensor([[-1, 0, 1, 1, -1], [-1, 0, 0, 0, 0]])
    arcs = heads_to_arcs(heads, 4)
    assert arcs.shape == (2, 4, 4)
    assert arcs[0].nonzero().tolist() == [[0, 1], [1, 2], [1, 3]]
    assert arcs[1].nonzero().tolist() == [[0, 1], [0, 2], [0, 3]]


def test_generation_is_deterministic_by_seed() -> None:
    a, b = generate_split(50, random.Random(3)), generate_split(50, random.Random(3))
    c = generate_split(50, random.Random(4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tokens"], c["tokens"])


def test_cache_is_reused_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    data = load_or_generate(tmp_path, sizes=(30, 10, 10), seed=1)
    again = load_or_generate(tmp_path, sizes=(30, 10, 10), seed=1)
    assert data.checksum == again.checksum and len(data.checksum) == 64
    assert all(torch.equal(x, y) for x, y in zip(data.test, again.test, strict=True))
    other = load_or_generate(tmp_path, sizes=(30, 10, 10), seed=2)
    assert other.checksum != data.checksum
    # the test split does not depend on the training size
    bigger = load_or_generate(tmp_path, sizes=(60, 10, 10), seed=1)
    assert all(torch.equal(x, y) for x, y in zip(data.test, bigger.test, strict=True))
    tensors = torch.load(data.path, weights_only=True)
    tensors["train_values"][0] = (tensors["train_values"][0] + 1) % 10
    torch.save(tensors, data.path)
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_or_generate(tmp_path, sizes=(30, 10, 10), seed=1)


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sizes"):
        load_or_generate(tmp_path, sizes=(0, 1, 1), seed=0)
    with pytest.raises(ValueError, match="unexpected token"):
        evaluate_tokens("[MAX 1 x ]".split())
    with pytest.raises(ValueError, match="incomplete"):
        evaluate_tokens("[MAX 1 2".split())
