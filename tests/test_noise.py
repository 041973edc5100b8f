"""The noise module: the counter-based stream behind gumbel-rao's conditional draws, and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from pickgrad._validation import compute_dtype
from pickgrad.noise import CounterRandom, draw_seed, draw_seed_tensor, sample_gumbel, sampling_dtype

N = 400_000


def _exponentials(seed: int, count: int = N, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return CounterRandom(seed).exponential_(torch.empty(count, dtype=dtype))


def test_reference_values_of_splitmix64() -> None:
    # The bits are SplitMix64's: mix64(seed + c * gamma) for c = 1, 2, ..., written here in plain
    # Python integers, two entries per output (low then high 32-bit half).
    mask = (1 << 64) - 1

    def mix64(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    seed = 0x0123456789ABCDEF
    expected = []
    for counter in range(1, 5):
        z = mix64((seed + counter * 0x9E3779B97F4A7C15) & mask)
        for half in (z & 0xFFFFFFFF, z >> 32):
            k = (half >> 1) & 0x3FFFFF  # bits 1-22; bit 0 is replaced by a 1
            expected.append(float(np.log((2 * k + 1) / 2**23)))
    log_u = CounterRandom(seed).log_uniform_(torch.empty(8, dtype=torch.float64))
    torch.testing.assert_close(log_u, torch.tensor(expected, dtype=torch.float64))


def test_exponentials_have_the_exponential_law() -> None:
    draws = _exponentials(7).numpy()
    assert draws.min() > 0 and draws.max() <= 23 * np.log(2)
    assert stats.kstest(draws, "expon").pvalue > 1e-3
    # Mean and variance 1, within 5 standard errors.
    assert abs(draws.mean() - 1) < 5 * (1 / N) ** 0.5
    assert abs(draws.var() - 1) < 5 * (8 / N) ** 0.5


def test_consecutive_entries_are_independent() -> None:
    # Entries 2c and 2c + 1 share one 64-bit output; neighbours across outputs must not correlate
    # either. Uniforms on a 16 x 16 grid of consecutive pairs: chi-squared test of independence.
    uniforms = torch.exp(-_exponentials(11)).numpy()
    for lag_start in (0, 1):  # pairs within one output, then pairs across two outputs
        first, second = uniforms[lag_start::2][:-1], uniforms[lag_start + 1 :: 2]
        count = min(len(first), len(second))
        histogram, _, _ = np.histogram2d(first[:count], second[:count], bins=16)
        assert stats.chisquare(histogram.ravel()).pvalue > 1e-3
        assert abs(np.corrcoef(first[:count], second[:count])[0, 1]) < 5 / count**0.5


def test_different_seeds_give_uncorrelated_streams() -> None:
    first, second = _exponentials(1), _exponentials(2)
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 5 / N**0.5


def test_tiled_fills_equal_one_fill_and_dtypes_agree() -> None:
    whole = _exponentials(5, 1001, torch.float32)
    tiled = torch.empty(1001)
    stream = CounterRandom(5)
    for start, stop in ((0, 3), (3, 500), (500, 501), (501, 1001)):  # odd offsets included
        stream.exponential_(tiled[start:stop], offset=start)
    assert torch.equal(tiled, whole)
    # The uniforms are exact in float32, so float64 differs only by the rounding of the log.
    torch.testing.assert_close(_exponentials(5, 1001), whole.double(), rtol=1e-6, atol=0)


def test_draw_seed_is_reproducible_and_follows_the_generator() -> None:
    assert draw_seed(torch.Generator().manual_seed(3), "cpu") == draw_seed(
        torch.Generator().manual_seed(3), "cpu"
    )
    torch.manual_seed(4)
    first = draw_seed(None, "cpu")
    torch.manual_seed(4)
    assert draw_seed(None, "cpu") == first
    assert 0 <= first < 2**62


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_sample_gumbel_is_finite_in_every_dtype(dtype: torch.dtype) -> None:
    noise = sample_gumbel((10_000,), dtype=dtype, device=torch.device("cpu"))
    assert noise.dtype == dtype and bool(torch.isfinite(noise).all())


@pytest.mark.parametrize("seed", [0, 5, 2**62 - 1, 2**61 + 12345])
def test_a_tensor_seed_gives_the_int_seed_stream(seed: int) -> None:
    as_int, as_tensor = CounterRandom(seed), CounterRandom(torch.tensor(seed))
    for offset, count in ((0, 17), (3, 1000), (2**40 + 1, 5)):  # large and odd offsets included
        expected = as_int.log_uniform_(torch.empty(count), offset=offset)
        assert torch.equal(as_tensor.log_uniform_(torch.empty(count), offset=offset), expected)


def test_draw_seed_tensor_is_draw_seed_without_a_read() -> None:
    value = draw_seed(torch.Generator().manual_seed(7), "cpu")
    seed = draw_seed_tensor(torch.Generator().manual_seed(7), "cpu")
    assert seed.shape == () and seed.dtype == torch.int64
    assert int(seed) == value
    torch.manual_seed(8)
    first = draw_seed_tensor(None, "cpu")
    torch.manual_seed(8)
    assert torch.equal(draw_seed_tensor(None, "cpu"), first)


def test_sampling_dtype_is_the_compute_dtype() -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert sampling_dtype(dtype) is compute_dtype(dtype)
