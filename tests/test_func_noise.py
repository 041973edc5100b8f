"""pickgrad's noise under torch.func and torch.compile (issue 14.2).

* ``CounterRandom.log_uniform`` (out of place, for traced and transformed code) is bit for bit
  the stream of the in-place ``log_uniform_``;
* under ``vmap`` a seed drawn inside the function is one seed per entry with
  ``randomness="different"`` and one for all with ``"same"``;
* ``sample_gumbel`` draws exactly the eager noise under ``torch.func.grad`` (no vmap level).
"""

from __future__ import annotations

import pytest
import torch

from pickgrad._validation import _vmap_active
from pickgrad.noise import CounterRandom, draw_seed_tensor, sample_gumbel

CPU = torch.device("cpu")


@pytest.mark.parametrize("seed", [0, 12345, -7, 2**62 - 1], ids=["zero", "small", "neg", "big"])
@pytest.mark.parametrize("offset", [0, 1, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_out_of_place_stream_is_bit_for_bit_the_in_place_one(
    seed: int, offset: int, dtype: torch.dtype
) -> None:
    for shape in [(1,), (3, 5), (2, 3, 7)]:
        filled = CounterRandom(seed).log_uniform_(torch.empty(shape, dtype=dtype), offset=offset)
        tensor_seed = CounterRandom(torch.tensor(seed, dtype=torch.int64))
        new = tensor_seed.log_uniform(shape, dtype=dtype, device=CPU, offset=offset)
        assert new.dtype == dtype and new.shape == shape
        assert torch.equal(filled, new)
        exponential = CounterRandom(seed).exponential(shape, dtype=dtype, device=CPU, offset=offset)
        assert torch.equal(exponential, -filled)


def test_a_seed_drawn_under_vmap_follows_the_randomness_mode() -> None:
    def stream(t: torch.Tensor) -> torch.Tensor:
        seed = draw_seed_tensor(None, t.device)
        return t + CounterRandom(seed).exponential((4,), dtype=t.dtype, device=t.device)

    rows = torch.zeros(5, 4, dtype=torch.float64)
    different = torch.func.vmap(stream, randomness="different")(rows)
    same = torch.func.vmap(stream, randomness="same")(rows)
    assert torch.unique(different, dim=0).shape[0] == 5
    assert torch.unique(same, dim=0).shape[0] == 1
    assert bool((different > 0).all()) and bool((same > 0).all())


def test_sample_gumbel_under_grad_alone_is_the_eager_draw() -> None:
    def noisy(t: torch.Tensor) -> torch.Tensor:
        return (t * sample_gumbel(t.shape, dtype=t.dtype, device=t.device)).sum()

    scores = torch.ones(6, dtype=torch.float64)
    torch.manual_seed(3)
    gradient = torch.func.grad(noisy)(scores)
    torch.manual_seed(3)
    expected = sample_gumbel((6,), dtype=torch.float64, device=CPU)
    assert torch.equal(gradient, expected)


def test_vmap_active_sees_vmap_at_any_level_and_nothing_else() -> None:
    seen: list[bool] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        seen.append(_vmap_active())
        return t.sum()

    record(torch.zeros(2))
    torch.func.grad(record)(torch.zeros(2))
    torch.func.vmap(record)(torch.zeros(3, 2))
    torch.func.vmap(torch.func.grad(record))(torch.zeros(3, 2))
    torch.func.jacrev(lambda t: t * record(t))(torch.zeros(2))  # vmap only over the backward
    assert seen == [False, False, True, True, False]
