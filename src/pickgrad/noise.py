"""Random perturbations: Gumbel noise and its conditional form.

All randomness in pickgrad comes from here, drawn from the ``generator`` argument or torch's
global generator, so the same seed gives the same samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pickgrad._validation import compute_dtype

__all__ = [
    "CounterRandom",
    "draw_seed",
    "draw_seed_tensor",
    "gumbel_from_uniform_",
    "sample_exponential",
    "sample_gumbel",
    "sampling_dtype",
]


def sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype noise is drawn in: float32 for half types (whose tails overflow), else ``dtype``.

    The same as :func:`pickgrad._validation.compute_dtype`.
    """
    return compute_dtype(dtype)


def sample_gumbel(
    shape: torch.Size | tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard Gumbel noise ``G = -log(E)``, ``E ~ Exponential(1)``, of the given shape.

    Drawn in float32 for half dtypes and returned in ``dtype``. ``E`` is clamped away from zero
    so that ``G`` is always finite. ``E = -log U`` from uniforms (:func:`gumbel_from_uniform_`),
    drawn out of place, so the same call works eagerly, under ``torch.compile`` and under
    ``torch.func.vmap`` (any ``randomness``); ``torch.func.grad`` / ``jacrev`` draw exactly the
    eager noise.
    """
    work = sampling_dtype(dtype)
    uniform = torch.rand(shape, dtype=work, device=device, generator=generator)
    gumbel = gumbel_from_uniform_(uniform)
    return gumbel if work == dtype else gumbel.to(dtype)


def gumbel_from_uniform_(uniform: Tensor) -> Tensor:
    """``-log(-log U)`` in place in ``uniform`` (U ~ U[0, 1)), both logs' arguments clamped to
    ``tiny``: standard Gumbel noise, finite everywhere.

    From uniforms rather than ``Tensor.exponential_``, which measured 3x-4x slower than
    ``torch.rand`` and two logs on CPU at training-step sizes (4096 x 16 x 64: 95 ms against
    29 ms, one thread). ``torch.rand`` out of place draws the same stream eagerly, under
    ``torch.compile`` and under ``vmap``. The tails are cut where the uniform's resolution
    ends: above 16.6 in float32 (probability 6e-8, U's spacing 2^-24 near 1) and 36.7 in
    float64.
    """
    return _neg_log_(_neg_log_(uniform))


def sample_exponential(
    shape: torch.Size | tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exponential(1) draws ``-log U`` from uniforms clamped to ``[tiny, 1)`` (every draw finite
    and positive; see :func:`gumbel_from_uniform_` for why not ``Tensor.exponential_``), in
    ``dtype`` (a float dtype the caller computes in).

    Example:
        >>> e = sample_exponential((1000,), dtype=torch.float64, device=torch.device("cpu"))
        >>> bool((e > 0).all()), round(float(e.mean()), 0)
        (True, 1.0)
    """
    return _neg_log_(torch.rand(shape, dtype=dtype, device=device, generator=generator))


def _neg_log_(t: Tensor) -> Tensor:
    """``-log(max(t, tiny))`` in place."""
    return t.clamp_min_(torch.finfo(t.dtype).tiny).log_().neg_()


def draw_seed(generator: torch.Generator | None, device: torch.device | str) -> int:
    """One 62-bit seed drawn from ``generator``, or from the default generator of ``device``.

    Reads the draw back to Python (a host sync on an accelerator); hot paths use
    :func:`draw_seed_tensor`, which gives the same value as a tensor.
    """
    return int(draw_seed_tensor(generator, device))


def draw_seed_tensor(generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """:func:`draw_seed` as a 0-dim int64 tensor on the generator's device, never read back.

    A :class:`CounterRandom` seeded with it makes no device-to-host sync, so it also runs
    under ``torch.compile`` without a graph break.

    Example:
        >>> draw_seed_tensor(torch.Generator().manual_seed(0), "cpu").shape
        torch.Size([])
    """
    where = generator.device if generator is not None else torch.device(device)
    return torch.randint(2**62, (), generator=generator, device=where, dtype=torch.int64)


def _wrap64(value: int) -> int:
    """``value`` modulo 2**64, as the signed int64 with the same bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


class CounterRandom:
    """Random numbers addressed by position: entry ``e`` of the stream depends only on
    ``(seed, e)``, so a stream can be filled in any tiling, in any order, on any device.

    The bits are SplitMix64 (Steele, Lea & Flood, OOPSLA 2014; the generator behind Java's
    ``SplittableRandom``, which passes BigCrush): counter ``c`` gives ``mix64(seed + c * gamma)``,
    computed with int64 tensor ops (multiplication wraps modulo 2**64; right shifts are masked to
    act as logical shifts). Each 64-bit output feeds two entries, one per 32-bit half, whose bits
    1 to 22 (``k``) give ``U = (2k + 1) / 2**23``: strictly inside (0, 1), exact in float32, so
    Exponential(1) draws ``E = -log U`` have their tails cut at probability 2**-23
    (``E <= 15.9``). Used where many draws are averaged (gumbel-rao's backward): on the CPU it is
    2x to 3x faster than ``uniform_`` followed by ``log``, and nothing but the seed needs to be
    kept between a forward pass and the backward pass that redraws the same numbers.

    ``seed`` is a Python int or a 0-dim int64 tensor (from :func:`draw_seed_tensor`): a tensor
    seed gives the same stream and is never read back to Python.
    """

    _GAMMA = 0x9E3779B97F4A7C15
    _ROUNDS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None))
    # Bits 0-22 as the mantissa of a float32 in [1, 2), bit 0 set to 1: 1 + (2k + 1) 2**-23.
    _MANTISSA = 0x007FFFFF
    _ONE_AND_LAST_BIT = 0x3F800001

    def __init__(self, seed: int | Tensor) -> None:
        self.seed = seed
        self._buffers: tuple[Tensor, Tensor, Tensor] | None = None

    def _workspace(self, count: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``(steps, z, shifted)``: ``c * gamma`` for ``c = 1 .. count`` and two int64 buffers,
        kept between calls so that tiled fills reuse the same (cached) memory."""
        buffers = self._buffers
        if buffers is None or buffers[0].numel() < count or buffers[0].device != device:
            steps = torch.arange(1, count + 1, dtype=torch.int64, device=device)
            steps.mul_(_wrap64(self._GAMMA))
            self._buffers = buffers = (steps, torch.empty_like(steps), torch.empty_like(steps))
        return buffers[0][:count], buffers[1][:count], buffers[2][:count]

    def log_uniform_(self, out: Tensor, offset: int = 0) -> Tensor:
        """Fill ``out`` (contiguous, float32 or float64) with ``log U`` for stream entries
        ``offset .. offset + out.numel() - 1`` and return it: every value is finite and < 0."""
        first, skip = divmod(offset, 2)
        count = (skip + out.numel() + 1) // 2
        steps, z, shifted = self._workspace(count, out.device)
        if isinstance(self.seed, Tensor):  # int64 addition wraps modulo 2**64, as _wrap64 does
            start = self.seed.to(z.device) + _wrap64(first * self._GAMMA)
            torch.add(steps, start, out=z)
        else:
            torch.add(steps, _wrap64(self.seed + first * self._GAMMA), out=z)
        for shift, multiplier in self._ROUNDS:  # z ^= z >>> shift; z *= multiplier
            torch.bitwise_right_shift(z, shift, out=shifted)
            z.bitwise_xor_(shifted.bitwise_and_((1 << (64 - shift)) - 1))
            if multiplier is not None:
                z.mul_(_wrap64(multiplier))
        lanes = z.view(torch.int32)[skip : skip + out.numel()].bitwise_and_(self._MANTISSA)
        ones = lanes.bitwise_or_(self._ONE_AND_LAST_BIT).view(torch.float32)  # 1 + U
        if out.dtype == torch.float32:
            torch.sub(ones, 1.0, out=out.view(-1))
        else:
            out.view(-1).copy_(ones).sub_(1.0)
        return out.log_()

    def exponential_(self, out: Tensor, offset: int = 0) -> Tensor:
        """Fill ``out`` with Exponential(1) draws ``E = -log U`` (entries as in ``log_uniform_``)."""
        return self.log_uniform_(out, offset).neg_()

    def log_uniform(
        self,
        shape: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device,
        offset: int = 0,
    ) -> Tensor:
        """``log U`` for entries ``offset ..`` of the stream, bit for bit as ``log_uniform_``,
        in a new ``shape`` tensor, with out-of-place ops only.

        The form for traced and transformed code: under ``torch.func.vmap`` a seed drawn inside
        the vmapped function is batched with ``randomness="different"`` (one stream per entry)
        and unbatched with ``randomness="same"``, and out-of-place ops accept either; the
        compiler gets no int64-to-int32 view and no ``out=``.
        """
        numel = math.prod(shape)
        first, skip = divmod(offset, 2)
        count = (skip + numel + 1) // 2
        steps = torch.arange(1, count + 1, dtype=torch.int64, device=device)
        steps = steps * _wrap64(self._GAMMA)
        if isinstance(self.seed, Tensor):
            z = steps + (self.seed.to(device) + _wrap64(first * self._GAMMA))
        else:
            z = steps + _wrap64(self.seed + first * self._GAMMA)
        for shift, multiplier in self._ROUNDS:
            z = z ^ ((z >> shift) & ((1 << (64 - shift)) - 1))
            if multiplier is not None:
                z = z * _wrap64(multiplier)
        # The two 32-bit halves, low first (as the little-endian int32 view of log_uniform_),
        # each keeping bits 1-22 with bit 0 set: U = (2k + 1) / 2**23, exact in float32.
        halves = torch.stack([z, z >> 32], dim=-1).flatten(-2)
        lanes = halves.narrow(-1, skip, numel) & self._MANTISSA | 1
        uniform = lanes.to(torch.float32) * 2.0**-23
        return uniform.to(dtype).log().reshape(shape)

    def exponential(
        self,
        shape: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device,
        offset: int = 0,
    ) -> Tensor:
        """Exponential(1) draws ``E = -log U``: :meth:`exponential_` in a new tensor (see
        :meth:`log_uniform`)."""
        return -self.log_uniform(shape, dtype=dtype, device=device, offset=offset)
