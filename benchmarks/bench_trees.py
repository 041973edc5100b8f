"""Trees: batched argmax against a Python loop over networkx, and matrix-tree marginals
(forward + backward) against the slogdet-plus-double-autograd approach and torch-struct.

Run ``python benchmarks/bench_trees.py`` (add ``--quick`` for a seconds-long smoke run, or
``--relax BATCH N`` to time only relax at one size).

* argmax: ``SpanningTree().argmax`` (vectorised Prim) and ``Arborescence().argmax`` (batched
  Chu-Liu/Edmonds) on a whole batch, against ``networkx.maximum_spanning_tree`` /
  ``maximum_spanning_arborescence`` called once per graph (graph built with
  ``networkx.from_numpy_array``, as a user would). Ratio = networkx time / pickgrad time.
* relax: ``relax(scores, tau)`` then a backward pass of ``(x * g).sum()``, against
  (a) the approach of the published stochastic-softmax-tricks code: ``log Z`` by ``slogdet`` of
  the Laplacian minor, marginals by ``torch.autograd.grad(..., create_graph=True)``, backward
  through that (double autograd); written here, in the input dtype with a max-shift;
  (b) torch-struct's ``NonProjectiveDependencyCRF(...).marginals`` (explicit inverse formula),
  on the same problem: its n - 1 words with the root's arcs on the diagonal. torch-struct is a
  benchmark-only dependency, imported only here (``pip install --no-deps torch-struct``).
  Ratio = their time / pickgrad time (> 1: pickgrad is faster). Also prints each method's
  largest difference from pickgrad's float64 marginals (float32 input: pickgrad's own float32
  error too), on moderate scores where every method is accurate.

* perturbed (``--perturbed``, also in the default run): ``relax(scores + G, 0.5)`` forward and
  backward on Gumbel-perturbed scores (what ``st-gumbel`` and ``gumbel-rao`` relax; 10 draws of
  16 or 128 graphs stacked), and where its graphs are computed: the share sent to float64 at
  once (``_bound_to_miss``), the share redone in float64 after the float32 pass, and the share
  that ends in the exact elimination (float64 estimate missed too).

Timings are the minimum over repeats (the machine may be shared); relax times are CPU time of
this process (run with one thread, the default ``--threads 1``).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable

import networkx as nx
import numpy as np
import torch

from _timing import best_time, forward_backward, interleaved_best
from pickgrad import Arborescence, SpanningTree
from pickgrad.noise import sample_gumbel
from pickgrad.structures._matrix_tree import (
    MARGINAL_TOLERANCE,
    _bound_to_miss,
    _marginals_by_inverse,
    arc_marginals,
    arc_mask,
    full_arc_mask,
    shifted_weights,
)

# --- argmax ---------------------------------------------------------------------------------------


def networkx_spanning_trees(scores: list[np.ndarray]) -> list[nx.Graph]:
    trees = []
    for matrix in scores:
        graph = nx.from_numpy_array(np.triu(matrix, 1))  # randn scores are never exactly 0
        trees.append(nx.maximum_spanning_tree(graph))
    return trees


def networkx_arborescences(scores: list[np.ndarray]) -> list[nx.DiGraph]:
    trees = []
    for matrix in scores:
        arcs = matrix.copy()
        arcs[:, 0] = 0.0  # no arc into the root: zero entries are not edges
        np.fill_diagonal(arcs, 0.0)
        graph = nx.from_numpy_array(arcs, create_using=nx.DiGraph)
        trees.append(nx.maximum_spanning_arborescence(graph))
    return trees


def bench_argmax(batch: int, n: int, repeats: int, lengths: torch.Tensor | None = None) -> float:
    """Print the argmax timings; return the smaller of the two ratios (networkx / pickgrad)."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
    sizes = [n] * batch if lengths is None else lengths.tolist()
    # networkx gets each graph at its own size, as a user would loop over them.
    arrays = [matrix[:size, :size] for matrix, size in zip(scores.numpy(), sizes, strict=True)]
    smallest = math.inf
    for label, structure, reference in (
        ("spanning tree", SpanningTree(), networkx_spanning_trees),
        ("arborescence", Arborescence(), networkx_arborescences),
    ):
        ours = best_time(lambda s=structure: s.argmax(scores, lengths=lengths), repeats)
        start = time.perf_counter()  # one run: seconds long, and it has no warm-up to speak of
        trees = reference(arrays)
        theirs = time.perf_counter() - start
        # same optimum weight (ties aside, the same trees)
        x = structure.argmax(scores, lengths=lengths)
        weight = (torch.triu(scores, 1) * x if label == "spanning tree" else scores * x).sum(
            (-1, -2)
        )
        expected = [sum(w for _, _, w in t.edges(data="weight")) for t in trees]
        agree = bool(torch.allclose(weight, torch.tensor(expected, dtype=torch.float64)))
        shape = "lengths 10..n" if lengths is not None else ""
        print(
            f"argmax {label:13s} batch={batch:5d} n={n:3d} {shape}: pickgrad {ours * 1e3:9.2f} ms  "
            f"networkx loop {theirs * 1e3:9.2f} ms  ratio {theirs / ours:7.1f}x  "
            f"(same weights: {agree})"
        )
        smallest = min(smallest, theirs / ours)
    return smallest


# --- relax ----------------------------------------------------------------------------------------


def _present(lengths: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """``(B, n)`` or ``(n,)`` boolean: the nodes each graph uses."""
    nodes = torch.arange(n, device=device)
    return (
        torch.ones(n, dtype=torch.bool, device=device)
        if lengths is None
        else nodes < lengths[:, None]
    )


def _slogdet_minor(weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``log det`` of the root-deleted Laplacian of ``weights``, padded nodes on a unit diagonal."""
    degree = weights.sum(-2) + (~present).to(weights.dtype)
    laplacian = torch.diag_embed(degree) - weights
    return torch.linalg.slogdet(laplacian[..., 1:, 1:])[1]


def slogdet_double_autograd_arborescence(
    scores: torch.Tensor, tau: float, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Marginals as the autograd gradient of slogdet of the root-deleted Laplacian (root 0)."""
    n = scores.shape[-1]
    present = _present(lengths, n, scores.device)
    z = scores / tau
    index = torch.arange(n, device=scores.device)
    usable = (
        (index[:, None] != index) & (index != 0) & present[..., :, None] & present[..., None, :]
    )
    z = z.masked_fill(~usable, -math.inf)
    z = z - z.amax(dim=(-1, -2), keepdim=True).detach()
    (marginals,) = torch.autograd.grad(
        _slogdet_minor(torch.exp(z), present).sum(), scores, create_graph=True
    )
    return marginals * tau


def slogdet_double_autograd_spanning_tree(
    scores: torch.Tensor, tau: float, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Edge marginals as the autograd gradient of slogdet of the undirected Laplacian minor."""
    n = scores.shape[-1]
    present = _present(lengths, n, scores.device)
    upper = torch.triu(scores / tau, 1)
    z = upper + upper.transpose(-1, -2)
    index = torch.arange(n, device=scores.device)
    usable = (index[:, None] != index) & present[..., :, None] & present[..., None, :]
    z = z.masked_fill(~usable, -math.inf)
    z = z - z.amax(dim=(-1, -2), keepdim=True).detach()
    log_z = _slogdet_minor(torch.exp(z), present)
    (grad,) = torch.autograd.grad(log_z.sum(), scores, create_graph=True)
    edges = torch.triu(grad * tau, 1)
    return edges + edges.transpose(-1, -2)


def to_torch_struct(scores: torch.Tensor) -> torch.Tensor:
    """Our (n, n) arcs with root 0 as torch-struct's (n - 1, n - 1) words, root arcs on the diagonal."""
    words = scores[..., 1:, 1:].clone()
    index = torch.arange(words.shape[-1], device=scores.device)
    words[..., index, index] = scores[..., 0, 1:]
    return words


def from_torch_struct(marginals: torch.Tensor) -> torch.Tensor:
    n = marginals.shape[-1] + 1
    out = marginals.new_zeros((*marginals.shape[:-2], n, n))
    out[..., 1:, 1:] = marginals * (1 - torch.eye(n - 1, dtype=marginals.dtype))
    out[..., 0, 1:] = torch.diagonal(marginals, dim1=-2, dim2=-1)
    return out


def torch_struct_marginals(
    words: torch.Tensor, tau: float, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """torch-struct's marginals; ``multiroot=True`` is the law of ``Arborescence(root=0)``; its
    ``lengths`` count words (our nodes but the root)."""
    from torch_struct import NonProjectiveDependencyCRF  # benchmark-only dependency

    words_lengths = None if lengths is None else lengths - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about missing arg_constraints
        return NonProjectiveDependencyCRF(
            words / tau, lengths=words_lengths, multiroot=True
        ).marginals


def have_torch_struct() -> bool:
    try:
        import torch_struct  # noqa: F401
    except ImportError as error:
        print(f"torch-struct unavailable ({error}); pip install --no-deps torch-struct")
        return False
    return True


def relax_contenders(
    tau: float, with_torch_struct: bool, lengths: torch.Tensor | None = None
) -> dict[str, list[tuple[str, Callable, Callable, Callable]]]:
    """Per structure: (name, native input from our scores, marginals fn, back to our layout)."""
    arborescence, tree = Arborescence(), SpanningTree()
    same = lambda x: x  # noqa: E731
    contenders: dict[str, list[tuple[str, Callable, Callable, Callable]]] = {
        "arborescence": [
            ("pickgrad", same, lambda s: arborescence.relax(s, tau, lengths=lengths), same),
            (
                "slogdet+double-autograd",
                same,
                lambda s: slogdet_double_autograd_arborescence(s, tau, lengths),
                same,
            ),
        ],
        "spanning tree": [
            ("pickgrad", same, lambda s: tree.relax(s, tau, lengths=lengths), same),
            (
                "slogdet+double-autograd",
                same,
                lambda s: slogdet_double_autograd_spanning_tree(s, tau, lengths),
                same,
            ),
        ],
    }
    if with_torch_struct:
        contenders["arborescence"].append(
            (
                "torch-struct",
                to_torch_struct,
                lambda w: torch_struct_marginals(w, tau, lengths),
                from_torch_struct,
            )
        )
    return contenders


def listops_lengths(batch: int, n: int) -> torch.Tensor:
    """Node counts uniform in 10..n (the ListOps shape: sentences of 10 to 50 tokens)."""
    return torch.randint(min(10, n), n + 1, (batch,), generator=torch.Generator().manual_seed(2))


def bench_relax(
    batch: int,
    n: int,
    repeats: int,
    dtype: torch.dtype,
    tau: float,
    with_ts: bool,
    lengths: torch.Tensor | None = None,
) -> list[float]:
    """Print and return the ratios (their time / pickgrad's) of every contender."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, n, n, generator=generator).to(dtype)
    ratios = []
    for label, entries in relax_contenders(tau, with_ts, lengths).items():
        runs = {name: forward_backward(fn, native(scores)) for name, native, fn, _ in entries}
        # CPU time: steadier than wall time under load
        times = interleaved_best(runs, repeats, clock=time.process_time)
        reference = entries[0][2](scores.double()).detach()
        own = float((entries[0][2](scores).detach().double() - reference).abs().max())
        shape = "lengths 10..n" if lengths is not None else ""
        line = f"relax  {label:13s} batch={batch:5d} n={n:3d} {str(dtype)[6:]:7s} {shape}: "
        line += f"pickgrad {times['pickgrad'] * 1e3:7.2f} ms CPU (max |diff| {own:.0e})"
        for name, native, fn, back in entries[1:]:
            leaf = native(scores).requires_grad_()
            difference = float((back(fn(leaf).detach()).double() - reference.detach()).abs().max())
            line += (
                f" | {name} {times[name] * 1e3:7.2f} ms, ratio {times[name] / times['pickgrad']:4.2f}x"
                f" (max |diff| {difference:.0e})"
            )
            ratios.append(times[name] / times["pickgrad"])
        print(line)
    return ratios


def bench_wide_scores(batch: int, n: int, with_ts: bool) -> None:
    """Accuracy when scores / tau spread over +-50: largest error against pickgrad in float64
    (itself checked against enumeration in the tests), and how many graphs come out non-finite."""
    generator = torch.Generator().manual_seed(0)
    scores = (2 * torch.rand(batch, n, n, generator=generator, dtype=torch.float64) - 1) * 50
    for label, entries in relax_contenders(1.0, with_ts).items():
        reference = entries[0][2](scores).detach()
        line = f"wide   {label:13s} batch={batch:5d} n={n:3d} scores in +-50:"
        for name, native, fn, back in entries:
            for dtype in (torch.float32, torch.float64):
                leaf = native(scores.to(dtype)).requires_grad_()
                try:
                    out = back(fn(leaf).detach()).double()
                except RuntimeError as error:  # torch.linalg.LinAlgError: singular Laplacian
                    line += f" | {name} {str(dtype)[6:]} raised {type(error).__name__}"
                    continue
                bad = int((~torch.isfinite(out)).flatten(1).any(1).sum())
                error = float(torch.nan_to_num(out - reference, nan=math.inf).abs().max())
                line += f" | {name} {str(dtype)[6:]} max err {error:.0e}, non-finite {bad}"
        print(line)


# --- small batches (issue 13.3) and lengths (issue 15.6) ---------------------------------------

#: (batch, n, with ListOps lengths 10..n): the sizes issue 13.3 names.
SMALL_SIZES = ((64, 10, False), (8, 50, True), (100, 50, True))


def bench_small(repeats: int, with_ts: bool) -> None:
    """Relax forward + backward against slogdet + double autograd and torch-struct, and argmax
    against networkx, at the small sizes, both dtypes; then relax with ``lengths`` all equal to
    n against no ``lengths`` (the same work)."""
    worst_relax, worst_argmax = math.inf, math.inf
    for batch, n, ragged in SMALL_SIZES:
        lengths = listops_lengths(batch, n) if ragged else None
        for dtype in (torch.float32, torch.float64):
            ratios = bench_relax(batch, n, repeats, dtype, 1.0, with_ts, lengths)
            worst_relax = min(worst_relax, *ratios)
        worst_argmax = min(worst_argmax, bench_argmax(batch, n, max(repeats, 3), lengths))
    print(
        f"small sizes: slowest relax ratio {worst_relax:.2f}x (target >= 1), slowest argmax "
        f"ratio {worst_argmax:.1f}x (target >= 20)"
    )
    batch, n = 100, 50
    scores = torch.randn(batch, n, n, generator=torch.Generator().manual_seed(0))
    full = torch.full((batch,), n)
    for label, structure in (("spanning tree", SpanningTree()), ("arborescence", Arborescence())):
        without = forward_backward(lambda s, st=structure: st.relax(s, 1.0), scores)
        with_lengths = forward_backward(
            lambda s, st=structure: st.relax(s, 1.0, lengths=full), scores
        )
        runs = {"without": without, "with": with_lengths}
        times = interleaved_best(runs, repeats, clock=time.process_time)
        print(
            f"relax  {label:13s} batch={batch} n={n} float32: lengths=n {times['with'] * 1e3:.2f} "
            f"ms CPU, no lengths {times['without'] * 1e3:.2f} ms CPU, ratio "
            f"{times['with'] / times['without']:.2f}x "
            "(target <= 1)"
        )


# --- Gumbel-perturbed relax ----------------------------------------------------------------------


def precision_shares(scores: torch.Tensor, arcs: torch.Tensor, tau: float) -> tuple[float, ...]:
    """Shares of graphs (float32 input) sent to float64 at once, redone in float64 after the
    float32 pass, and ending in the exact elimination; the steps of ``arc_marginals``."""
    tolerance = MARGINAL_TOLERANCE[torch.float32]
    doomed = _bound_to_miss(shifted_weights(scores, arcs, tau), tolerance)
    _, estimate = _marginals_by_inverse(scores, arcs, tau=tau)
    redone = ~doomed & ~(estimate <= tolerance)
    _, wide = _marginals_by_inverse(scores.double(), arcs, tau=tau)
    exact = (doomed | redone) & ~(wide <= tolerance)
    return tuple(float(share.double().mean()) for share in (doomed, redone, exact))


def bench_perturbed(batch: int, n: int, repeats: int, tau: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, n, n, generator=generator)
    scores = scores + sample_gumbel(
        scores.shape, dtype=scores.dtype, device="cpu", generator=generator
    )
    for label, structure in (("spanning tree", SpanningTree()), ("arborescence", Arborescence())):
        work = scores
        if label == "spanning tree":
            upper = torch.triu(scores, 1)
            work = upper + upper.transpose(-1, -2)  # the digraph SpanningTree relaxes
        shares = precision_shares(work, arc_mask(torch.ones(n, dtype=torch.bool), 0), tau)
        line = f"perturbed {label:13s} batch={batch:5d} n={n:3d} tau={tau}:"
        for dtype in (torch.float32, torch.float64):
            run = forward_backward(lambda s, st=structure: st.relax(s, tau), scores.to(dtype))
            wall = best_time(run, repeats)
            run()
            cpu = math.inf
            for _ in range(repeats):
                start = time.process_time()
                run()
                cpu = min(cpu, time.process_time() - start)
            line += f" {str(dtype)[6:]} {wall * 1e3:7.2f} ms ({cpu * 1e3:7.2f} ms CPU) |"
        line += " float32 graphs: to float64 at once {:.0%}, redone {:.0%}, exact {:.0%}".format(
            *shares
        )
        print(line)


def bench_cholesky(sizes: list[tuple[int, int]], repeats: int) -> None:
    """SpanningTree's Laplacian inverse by Cholesky against LU: the inverse alone (float64,
    symmetric positive definite minors) and ``arc_marginals`` forward+backward with
    ``symmetric=True`` (Cholesky from ``CHOLESKY_SIZE`` on) against ``symmetric=False``, both
    dtypes, interleaved; ratio = LU time / Cholesky time (> 1: Cholesky faster)."""
    generator = torch.Generator().manual_seed(0)
    for batch, n in sizes:
        a = torch.rand(batch, n - 1, n - 1, dtype=torch.float64, generator=generator)
        minor = a @ a.transpose(-1, -2) + (n - 1) * torch.eye(n - 1, dtype=torch.float64)
        inverses = {
            "lu": lambda m=minor: torch.linalg.inv_ex(m),
            "cholesky": lambda m=minor: torch.cholesky_inverse(torch.linalg.cholesky_ex(m)[0]),
        }
        times = {name: best_time(fn, repeats) for name, fn in inverses.items()}
        line = f"inverse ({batch}, {n - 1}, {n - 1}) float64: lu {times['lu'] * 1e3:.3f} ms"
        line += f", cholesky {times['cholesky'] * 1e3:.3f} ms, ratio "
        print(line + f"{times['lu'] / times['cholesky']:.2f}x")
        arcs = full_arc_mask(n, 0, torch.device("cpu"))
        for dtype in (torch.float32, torch.float64):
            s = torch.randn(batch, n, n, generator=generator, dtype=torch.float64)
            scores = (s + s.transpose(-1, -2)).to(dtype)
            runs = {
                label: forward_backward(
                    lambda x, flag=flag, a=arcs: arc_marginals(x, a, 0, 1.0, symmetric=flag),
                    scores,
                )
                for label, flag in (("lu", False), ("cholesky", True))
            }
            best = interleaved_best(runs, repeats)
            print(
                f"  spanning-tree marginals fwd+bwd {str(dtype)[6:]}: lu {best['lu'] * 1e3:.3f} ms,"
                f" symmetric {best['cholesky'] * 1e3:.3f} ms, ratio "
                f"{best['lu'] / best['cholesky']:.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, like the single-threaded networkx loop; busy-waiting "
        "OpenMP threads also distort timings on a shared machine)",
    )
    parser.add_argument(
        "--small", action="store_true", help="time only the small sizes of issue 13.3"
    )
    parser.add_argument(
        "--perturbed", action="store_true", help="time only relax on Gumbel-perturbed scores"
    )
    parser.add_argument(
        "--relax",
        type=int,
        nargs=2,
        metavar=("BATCH", "N"),
        help="time only relax at this batch size and n (both dtypes), with 15 repeats",
    )
    parser.add_argument(
        "--cholesky",
        action="store_true",
        help="time only SpanningTree's Cholesky inverse against LU, n from 5 to 100",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, networkx {nx.__version__}"
    )
    if args.relax:
        batch, n = args.relax
        with_ts = have_torch_struct()
        for dtype in (torch.float32, torch.float64):
            bench_relax(batch, n, 15, dtype, tau=1.0, with_ts=with_ts)
        return
    if args.small:
        bench_small(15, have_torch_struct())
        return
    if args.cholesky:
        sizes = [(64, 5), (64, 10), (64, 17), (64, 21), (64, 33), (8, 50), (100, 50), (16, 100)]
        bench_cholesky(sizes, 20)
        return
    if args.perturbed:
        for batch, n in ((16 * 10, 50), (128 * 10, 10)):
            bench_perturbed(batch, n, 5)
        return
    if args.quick:
        argmax_sizes, relax_sizes, repeats = [(64, 10), (8, 50)], [(64, 10), (8, 50)], 2
    else:
        argmax_sizes, relax_sizes, repeats = (
            [(1024, 10), (64, 50)],
            [(1024, 10), (64, 50), (16, 100)],
            7,
        )
    for batch, n in argmax_sizes:
        bench_argmax(batch, n, repeats)
    with_ts = have_torch_struct()
    for batch, n in relax_sizes:
        for dtype in (torch.float32, torch.float64):
            bench_relax(batch, n, repeats, dtype, tau=1.0, with_ts=with_ts)
    bench_wide_scores(64 if args.quick else 512, 10, with_ts)
    bench_small(3 if args.quick else 15, with_ts)
    for batch, n in ((16, 50), (128, 10)) if args.quick else ((16 * 10, 50), (128 * 10, 10)):
        bench_perturbed(batch, n, repeats)
    bench_cholesky([(8, 21)] if args.quick else [(64, 17), (8, 50), (100, 50)], repeats)


if __name__ == "__main__":
    main()
