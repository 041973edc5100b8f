"""How well the float32 matrix-tree marginals' error estimate bounds their real error.

Run ``python benchmarks/measure_tree_error.py`` (``--quick`` for a smaller sweep).

``arc_marginals`` trusts a float32 graph when its estimate (see ``_inverse_marginals``)

    8 eps * returns + GAP_FACTOR * eps * gap  (and the column-sum deviation)

is within ``MARGINAL_TOLERANCE[float32]``, where ``returns`` is the largest expected number of
returns to a node before the root is reached and ``gap`` how far (in nats) the lowest column of
weights lies below the graph's shift. This script draws graphs from easy to hopeless: Gaussian,
two tight clusters, uniform, and Gaussian with each column pushed down by up to ``G`` nats,
compares the float32 marginals with the exact ones (float64 subtraction-free elimination) and
prints, per family: the largest ``error / (eps * returns)`` among graphs with ``gap < 1`` where
``eps * returns <= 1e-4`` (the returns term's domain); the largest ``error / (eps * gap)`` among
the accepted graphs with ``gap >= 1`` (all of their error charged to the gap: an upper bound on
the factor the gap term needs); and the largest ``error / estimate`` among the accepted graphs,
which must stay below 1. ``returns`` and ``gap`` are recomputed in float64.
"""

from __future__ import annotations

import argparse

import torch

from pickgrad.structures._matrix_tree import (
    MARGINAL_TOLERANCE,
    _elimination_marginals,
    _laplacian_minor,
    _marginals_by_inverse,
    arc_mask,
    centered_log_weights,
    shifted_weights,
)

EPS = torch.finfo(torch.float32).eps


def draw(kind: str, batch: int, n: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """float64 scores of one family (rounded to float32 values, so both paths see the same)."""
    scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator) * scale
    if kind == "clustered":
        group = torch.arange(n) >= n // 2
        scores = scores + torch.where(group[:, None] == group[None, :], 2.0, -2.0) * scale
    elif kind == "uniform":
        scores = (2 * torch.rand(batch, n, n, dtype=torch.float64, generator=generator) - 1) * scale
    elif kind == "column-gap":  # Gaussian, each column lowered by up to 30 * scale nats
        drop = torch.rand(batch, 1, n, dtype=torch.float64, generator=generator) * 30 * scale
        scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator) - drop
    return scores.float().double()


def measure(kind: str, sizes: list[int], scales: list[float], batch: int) -> None:
    generator = torch.Generator().manual_seed(0)
    by_returns = by_gap = worst = 0.0
    accepted = total = 0
    for n in sizes:
        arcs = arc_mask(torch.ones(n, dtype=torch.bool), 0)
        for scale in scales:
            scores = draw(kind, batch, n, scale, generator)
            fast, estimate = _marginals_by_inverse(scores.float(), arcs)
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
            modelled = torch.isfinite(error) & (EPS * returns <= 1e-4)
            plain = modelled & (gap < 1.0)
            if bool(plain.any()):
                by_returns = max(by_returns, float((error / (EPS * returns))[plain].max()))
            trusted = estimate.double() <= MARGINAL_TOLERANCE[torch.float32]
            gapped = trusted & (gap >= 1.0)
            if bool(gapped.any()):
                by_gap = max(by_gap, float((error / (EPS * gap))[gapped].max()))
            accepted += int(trusted.sum())
            total += batch
            if bool(trusted.any()):
                worst = max(worst, float((error / estimate.double())[trusted].max()))
    print(
        f"{kind:11s} max error/(eps returns) {by_returns:5.2f} | accepted: max error/(eps gap) "
        f"{by_gap:5.2f} | accepted {accepted}/{total}, "
        f"max error/estimate {worst:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller sweep")
    args = parser.parse_args()
    sizes = [3, 10, 30] if args.quick else [3, 5, 10, 20, 50]
    scales = [0.3, 3.0, 30.0] if args.quick else [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    batch = 256 if args.quick else 2048
    for kind in ("gaussian", "clustered", "uniform", "column-gap"):
        measure(kind, sizes, scales, batch)


if __name__ == "__main__":
    main()
