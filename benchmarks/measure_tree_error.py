"""How well the matrix-tree marginals' error estimate bounds their real error.

Run ``python benchmarks/measure_tree_error.py`` (``--quick`` for a smaller sweep, ``--dtype
float64`` for the float64 inverse path, ``--lu`` to invert the mirrored graphs by LU instead of
SpanningTree's Cholesky).

``arc_marginals`` trusts a graph when its estimate (see ``_inverse_marginals``)

    8 eps * returns + GAP_FACTOR * eps * gap  (and the column-sum deviation)

is within ``MARGINAL_TOLERANCE[dtype]``, where ``returns`` is the largest expected number of
returns to a node before the root is reached and ``gap`` how far (in nats) the lowest column of
weights lies below the graph's shift. This script draws graphs from easy to hopeless: Gaussian,
two tight clusters, uniform, Gaussian with each column pushed down by up to ``G`` nats, and
Gumbel-perturbed Gaussian scores divided by tau = 0.5 or 0.1 (what ``st-gumbel`` and
``gumbel-rao`` relax; ``sym`` mirrored as ``SpanningTree`` does), compares the fast marginals
with the exact ones (float64 subtraction-free elimination) and prints, per family: the largest ``error / (eps * returns)`` among graphs with ``gap < 1`` where
``eps * returns <= 1e-4`` (the returns term's domain); the largest ``error / (eps * gap)`` among
the accepted graphs with ``gap >= 1`` (all of their error charged to the gap: an upper bound on
the factor the gap term needs); and the largest ``error / estimate`` among the accepted graphs,
which must stay below 1. ``returns`` and ``gap`` are recomputed in float64. For float64 the
returns ratio and the error / estimate ratio only count graphs with ``eps * returns >= 1e-12``,
where the error stands well above the reference's own rounding (below, both are under 1e-13,
a millionth of the tolerance). It also prints the share of graphs that
``_bound_to_miss`` sends straight to float64, and how many of those the estimate would have
accepted (it must be none: in exact arithmetic the bound never exceeds the estimate).
"""

from __future__ import annotations

import argparse

import torch

from pickgrad.noise import sample_gumbel
from pickgrad.structures._matrix_tree import (
    MARGINAL_TOLERANCE,
    _bound_to_miss,
    _elimination_marginals,
    _laplacian_minor,
    _marginals_by_inverse,
    arc_mask,
    centered_log_weights,
    shifted_weights,
)

FAMILIES = (
    "gaussian",
    "clustered",
    "uniform",
    "column-gap",
    "gumbel/0.5",
    "gumbel/0.1",
    "gumbel-sym/0.5",
    "gumbel-sym/0.1",
)


def draw(kind: str, batch: int, n: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """float64 scores of one family (rounded to float32 values, so both paths see the same)."""
    scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator) * scale
    if kind.startswith("gumbel"):  # (scale * N(0, 1) + G) / tau
        tau = float(kind.split("/")[1])
        noise = sample_gumbel(scores.shape, dtype=torch.float64, device="cpu", generator=generator)
        scores = (scores + noise) / tau
        if kind.startswith("gumbel-sym"):
            upper = torch.triu(scores, 1)
            scores = upper + upper.transpose(-1, -2)
    elif kind == "clustered":
        group = torch.arange(n) >= n // 2
        scores = scores + torch.where(group[:, None] == group[None, :], 2.0, -2.0) * scale
    elif kind == "uniform":
        scores = (2 * torch.rand(batch, n, n, dtype=torch.float64, generator=generator) - 1) * scale
    elif kind == "column-gap":  # Gaussian, each column lowered by up to 30 * scale nats
        drop = torch.rand(batch, 1, n, dtype=torch.float64, generator=generator) * 30 * scale
        scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator) - drop
    return scores.float().double()


def measure(
    kind: str,
    sizes: list[int],
    scales: list[float],
    batch: int,
    dtype: torch.dtype,
    cholesky: bool = True,
) -> None:
    generator = torch.Generator().manual_seed(0)
    eps, tolerance = torch.finfo(dtype).eps, MARGINAL_TOLERANCE[dtype]
    floor = 1e-12 if dtype == torch.float64 else 0.0  # eps * returns below: reference noise
    by_returns = by_gap = worst = 0.0
    accepted = total = doomed_count = doomed_accepted = 0
    for n in sizes:
        arcs = arc_mask(torch.ones(n, dtype=torch.bool), 0)
        for scale in scales:
            scores = draw(kind, batch, n, scale, generator)
            # Mirrored graphs are SpanningTree's: its Cholesky inverse (for n - 1 >= 16).
            symmetric = cholesky and kind.startswith("gumbel-sym")
            fast, estimate = _marginals_by_inverse(scores.to(dtype), arcs, symmetric=symmetric)
            exact = _elimination_marginals(
                centered_log_weights(scores, arcs, 1.0, torch.float64), arcs.expand(scores.shape), 0
            )
            error = (fast.double() - exact).abs().flatten(1).amax(1)
            # The two terms of the estimate, recomputed in float64 by the library's own steps:
            # returns from the float64 inverse, gap from the column sums.
            minor = _laplacian_minor(shifted_weights(scores, arcs, 1.0), arcs.any(dim=-2))
            column = torch.diagonal(minor, dim1=-2, dim2=-1)
            inverse = torch.linalg.inv_ex(minor)[0]  # singular graphs: non-finite, skipped
            returns = (torch.diagonal(inverse, dim1=-2, dim2=-1) * column).amax(-1)
            gap = column.amin(-1).log().neg().clamp_min(0.0)
            # Where the rounding model is meant to hold: eps * returns <= 1e-4.
            modelled = torch.isfinite(error) & (eps * returns <= 1e-4) & (eps * returns >= floor)
            plain = modelled & (gap < 1.0)
            if bool(plain.any()):
                by_returns = max(by_returns, float((error / (eps * returns))[plain].max()))
            trusted = estimate.double() <= tolerance
            gapped = trusted & (gap >= 1.0)
            if bool(gapped.any()):
                by_gap = max(by_gap, float((error / (eps * gap))[gapped].max()))
            accepted += int(trusted.sum())
            total += batch
            doomed = _bound_to_miss(shifted_weights(scores.to(dtype), arcs, 1.0), tolerance)
            doomed_count += int(doomed.sum())
            doomed_accepted += int((doomed & trusted).sum())
            judged = trusted & (eps * returns >= floor)  # float64: above the reference's noise
            if bool(judged.any()):
                worst = max(worst, float((error / estimate.double())[judged].max()))
    print(
        f"{kind:14s} max error/(eps returns) {by_returns:5.2f} | accepted: max error/(eps gap) "
        f"{by_gap:5.2f} | accepted {accepted}/{total}, max error/estimate {worst:.2f} | "
        f"bound to miss {doomed_count}/{total} (accepted anyway: {doomed_accepted})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller sweep")
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="fast path's dtype"
    )
    parser.add_argument(
        "--lu", action="store_true", help="mirrored graphs by LU too (SpanningTree uses Cholesky)"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    sizes = [3, 10, 30] if args.quick else [3, 5, 10, 20, 50]
    scales = [0.3, 3.0, 30.0] if args.quick else [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    batch = 256 if args.quick else 2048
    print(f"{args.dtype}: sizes {sizes}, scales {scales}, {batch} graphs each")
    for kind in FAMILIES:
        measure(kind, sizes, scales, batch, dtype, cholesky=not args.lu)


if __name__ == "__main__":
    main()
