"""ListOps expressions with their values and their ground-truth parses as arborescences.

The data of the ListOps experiment of Paulus et al. 2020 (Sec. 7.2), after Nangia & Bowman 2018:
prefix expressions over the digits 0-9 with the list operators ``MIN``, ``MAX``, ``MED`` (the
median, floored when the list has an even length) and ``SM`` (``SUM_MOD``: the sum modulo 10),
such as ``[MAX 2 9 [MIN 4 7 ] 0 ]`` (value 9). As in Nangia & Bowman's data, an opening bracket
and its operator form one token (``[MAX``), so the example above has 9 tokens.

Ground-truth parse (the convention of this module, documented here because the reference gives
the tree only through its bracketing): an arborescence over the tokens in which each operator
token is the parent of its arguments (digits and nested operator tokens) and of its own closing
bracket ``]``; the root is the outermost operator, which is always token 0 (so the latent
arborescence is rooted at token 0, ``Arborescence(root=0)``). A digit and a ``]`` have no
children. Every expression of ``L`` tokens has ``L - 1`` arcs.

Published setup, followed: lengths 10 to 50 tokens, depth 1 to 5 (depth 1: a single operator
over digits), 80k / 10k / 10k examples. Generator (ours, seeded): an operator chosen uniformly,
2 to 5 arguments chosen uniformly, each a nested expression with probability 0.3 while the depth
allows, else a uniform digit; drawn again until the length lies in range. With at most 5
arguments an expression of depth 1 has at most 7 tokens, so the length floor of 10 makes every
kept expression at least depth 2 (as in the published data). Departure: Nangia &
Bowman's generator uses other branching probabilities and up to 10 depth levels before filtering;
ours keeps the published ranges but its distribution of depths and lengths is its own.

Storage (cached with a SHA-256 checksum, like the graph-layout data): ``tokens (N, 50)`` uint8
token ids (0 = padding), ``lengths (N,)`` int64, ``values (N,)`` int64 in 0-9 and ``heads (N, 50)``
int64, the parent index of each token (-1 for the root and for padding).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pickgrad.experiments.data_cache import load_or_generate_tensors

__all__ = [
    "CLOSE",
    "MAX_LENGTH",
    "OPERATORS",
    "VOCABULARY",
    "ListOpsData",
    "evaluate_tokens",
    "expression_depth",
    "generate_split",
    "heads_to_arcs",
    "load_or_generate",
    "parse_heads",
    "random_expression",
]

# Bump when the generator changes, so a stale cache is never read as current data.
GENERATOR_VERSION = 1

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
#: Token names by id; id 0 is padding.
VOCABULARY = ("<pad>", *(str(d) for d in range(10)), *OPERATORS, CLOSE)
TOKEN_ID = {name: index for index, name in enumerate(VOCABULARY)}
MAX_LENGTH = 50
MIN_LENGTH = 10
MAX_DEPTH = 5


def _apply(operator: str, arguments: list[int]) -> int:
    if operator == "[MIN":
        return min(arguments)
    if operator == "[MAX":
        return max(arguments)
    if operator == "[MED":
        ordered = sorted(arguments)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) // 2
    if operator == "[SM":
        return sum(arguments) % 10
    raise ValueError(f"unknown operator {operator!r}; valid: {', '.join(OPERATORS)}")


def evaluate_tokens(tokens: list[str]) -> int:
    """The value of a ListOps expression given as its tokens (a stack machine, no recursion).

    Args:
        tokens: e.g. ``["[MAX", "2", "9", "[MIN", "4", "7", "]", "0", "]"]``.

    Returns:
        The value, an int in 0-9.

    Example:
        >>> evaluate_tokens("[MAX 2 9 [MIN 4 7 ] 0 ]".split())
        9
        >>> evaluate_tokens("[SM 5 [MED 1 8 3 2 ] 9 ]".split())
        6
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for position, token in enumerate(tokens):
        if token in OPERATORS:
            stack.append((token, []))
        elif token == CLOSE:
            if not stack:
                raise ValueError(f"unmatched ']' at token {position} of {' '.join(tokens)!r}")
            operator, arguments = stack.pop()
            value = _apply(operator, arguments)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif token.isdigit() and len(token) == 1 and stack:
            stack[-1][1].append(int(token))
        else:
            raise ValueError(f"unexpected token {token!r} at {position} of {' '.join(tokens)!r}")
    if stack or result is None:
        raise ValueError(f"incomplete expression {' '.join(tokens)!r}")
    return result


def parse_heads(tokens: list[str]) -> list[int]:
    """The ground-truth parse: the parent of each token, -1 for the root (token 0).

    Each operator token heads its arguments and its closing bracket (see the module docstring).

    Example:
        >>> parse_heads("[MAX 2 9 [MIN 4 7 ] 0 ]".split())
        [-1, 0, 0, 0, 3, 3, 3, 0, 0]
    """
    heads: list[int] = []
    open_operators: list[int] = []
    for position, token in enumerate(tokens):
        heads.append(open_operators[-1] if open_operators else -1)
        if token in OPERATORS:
            open_operators.append(position)
        elif token == CLOSE:
            open_operators.pop()
    return heads


def random_expression(rng: random.Random, depth: int = MAX_DEPTH) -> list[str]:
    """One random expression of at most ``depth`` operator levels (no length filter).

    Example:
        >>> random_expression(random.Random(0), depth=1)
        ['[SM', '0', '4', '8', '7', '6', ']']
    """
    tokens = [rng.choice(OPERATORS)]
    for _ in range(rng.randint(2, 5)):
        if depth > 1 and rng.random() < 0.3:
            tokens.extend(random_expression(rng, depth - 1))
        else:
            tokens.append(str(rng.randint(0, 9)))
    tokens.append(CLOSE)
    return tokens


def expression_depth(tokens: list[str]) -> int:
    """Nesting depth: the largest number of operators open at once.

    Example:
        >>> expression_depth("[MAX 2 9 [MIN 4 7 ] 0 ]".split())
        2
    """
    depth = deepest = 0
    for token in tokens:
        if token in OPERATORS:
            depth += 1
            deepest = max(deepest, depth)
        elif token == CLOSE:
            depth -= 1
    return deepest


def generate_split(count: int, rng: random.Random) -> dict[str, Tensor]:
    """``count`` expressions of 10 to 50 tokens and depth 1 to 5, encoded (module docstring).

    Returns:
        ``tokens (count, 50)`` uint8, ``lengths (count,)``, ``values (count,)`` and
        ``heads (count, 50)`` int64.
    """
    tokens = torch.zeros(count, MAX_LENGTH, dtype=torch.uint8)
    heads = torch.full((count, MAX_LENGTH), -1, dtype=torch.int64)
    lengths = torch.empty(count, dtype=torch.int64)
    values = torch.empty(count, dtype=torch.int64)
    for row in range(count):
        expression = random_expression(rng)
        while not MIN_LENGTH <= len(expression) <= MAX_LENGTH:
            expression = random_expression(rng)
        length = len(expression)
        tokens[row, :length] = torch.tensor([TOKEN_ID[t] for t in expression], dtype=torch.uint8)
        heads[row, :length] = torch.tensor(parse_heads(expression))
        lengths[row] = length
        values[row] = evaluate_tokens(expression)
    return {"tokens": tokens, "lengths": lengths, "values": values, "heads": heads}


def heads_to_arcs(heads: Tensor, n: int) -> Tensor:
    """Parent indices ``(..., L)`` (-1: none) to arcs ``(..., n, n)``, ``x[i, j] = 1`` iff i -> j.

    Only the first ``n`` tokens are read (``n <= L``).

    Example:
        >>> heads_to_arcs(torch.tensor([-1, 0, 0, 2]), 4)[0].tolist()
        [0.0, 1.0, 1.0, 0.0]
    """
    heads = heads[..., :n]
    arcs = torch.zeros(*heads.shape, n + 1, dtype=torch.float32, device=heads.device)
    # Column n collects "no parent"; it is dropped after the scatter.
    index = torch.where(heads < 0, n, heads).unsqueeze(-1)
    arcs.scatter_(-1, index, 1.0)
    return arcs[..., :n].transpose(-1, -2).contiguous()


@dataclass(frozen=True)
class ListOpsData:
    """The three splits, each ``(tokens, lengths, values, heads)`` (see the module docstring)."""

    train: tuple[Tensor, Tensor, Tensor, Tensor]
    valid: tuple[Tensor, Tensor, Tensor, Tensor]
    test: tuple[Tensor, Tensor, Tensor, Tensor]
    checksum: str
    path: Path


SPLITS = ("train", "valid", "test")
FIELDS = ("tokens", "lengths", "values", "heads")


def _generate(sizes: tuple[int, int, int], seed: int) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for offset, (split, count) in enumerate(zip(SPLITS, sizes, strict=True)):
        # One generator per split: changing the training size leaves the test data alone.
        part = generate_split(count, random.Random(seed * 3 + offset))
        tensors.update({f"{split}_{key}": value for key, value in part.items()})
    return tensors


def load_or_generate(
    cache_dir: str | Path, *, sizes: tuple[int, int, int], seed: int
) -> ListOpsData:
    """The data set for ``sizes`` and ``seed``: read from ``cache_dir`` if cached, else generated.

    The checksum is kept in a ``.json`` beside the file and checked on every read; a file whose
    bytes do not match is refused (``ValueError`` naming it).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     data = load_or_generate(root, sizes=(8, 2, 2), seed=0)
        ...     again = load_or_generate(root, sizes=(8, 2, 2), seed=0)
        >>> data.train[0].shape, data.checksum == again.checksum
        (torch.Size([8, 50]), True)
    """
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"sizes must be three split sizes >= 1, got {sizes}")
    stem = f"listops_v{GENERATOR_VERSION}_{'-'.join(map(str, sizes))}_seed{seed}"
    tensors, checksum, path = load_or_generate_tensors(
        cache_dir,
        stem,
        lambda: _generate(sizes, seed),
        what="ListOps data",
        version=GENERATOR_VERSION,
    )

    def split(name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return tuple(tensors[f"{name}_{key}"] for key in FIELDS)  # type: ignore[return-value]

    return ListOpsData(split("train"), split("valid"), split("test"), checksum, path)
