"""Softmax over short rows on the CPU: pickgrad's composition against ``torch.softmax``.

Forward + backward of ``softmax(x)`` and ``log_softmax(x)`` over the last dimension, side by
side in one process (interleaved, min of the repeats), for row lengths around the vector width
and row counts of training steps, in float32 and float64; then the structures that use it:
``OneHot().relax`` and ``gumbel-relaxed`` at the VAE's latents (100, 20, 10) and (100, 200, 2).
Each line prints the time of both and ``torch / pickgrad`` (> 1: pickgrad faster), and whether
pickgrad took its composition (``uses_composition``) or torch's kernel.

    python benchmarks/bench_softmax.py            # the grid
    python benchmarks/bench_softmax.py --quick    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse

import torch

import pickgrad
from _timing import forward_backward, interleaved_best
from pickgrad._softmax import log_softmax, softmax, uses_composition
from pickgrad.structures import OneHot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    lengths = (2, 10) if args.quick else (2, 4, 8, 10, 15, 16, 32, 64)
    row_counts = (2000,) if args.quick else (256, 2000, 20000)
    dtypes = (torch.float32,) if args.quick else (torch.float32, torch.float64)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU "
        f"{torch.backends.cpu.get_cpu_capability()}; forward + backward, min of {repeats}"
    )
    generator = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for length in lengths:
            for rows in row_counts:
                x = torch.randn(rows, length, generator=generator).to(dtype)
                for name, ours, theirs in (
                    ("softmax", softmax, lambda z: torch.softmax(z, -1)),
                    ("log_softmax", log_softmax, lambda z: torch.log_softmax(z, -1)),
                ):
                    taken = uses_composition(x, log=name == "log_softmax")
                    path = "composition" if taken else "torch kernel"
                    t = interleaved_best(
                        {
                            "torch": forward_backward(theirs, x),
                            "pickgrad": forward_backward(ours, x),
                        },
                        repeats,
                    )
                    print(
                        f"{name:11s} {str(dtype)[6:]:7s} rows {rows:6d} x {length:3d}: torch "
                        f"{t['torch'] * 1e6:8.0f} us | pickgrad {t['pickgrad'] * 1e6:8.0f} us "
                        f"({path}) | ratio {t['torch'] / t['pickgrad']:5.2f}x"
                    )
    structure = OneHot()
    for shape in ((100, 20, 10), (100, 200, 2)):
        x = torch.randn(shape, generator=generator)
        runs = {
            "torch.softmax": forward_backward(lambda z: torch.softmax(z / 0.5, -1), x),
            "OneHot().relax": forward_backward(lambda z: structure.relax(z, 0.5), x),
            "F.gumbel_softmax": forward_backward(
                lambda z: torch.nn.functional.gumbel_softmax(z, tau=0.5), x
            ),
            "gumbel-relaxed": forward_backward(
                lambda z: pickgrad.select(z, structure, "gumbel-relaxed", tau=0.5), x
            ),
        }
        t = interleaved_best(runs, repeats)
        print(
            f"{shape}: OneHot().relax {t['OneHot().relax'] * 1e6:.0f} us against torch.softmax "
            f"{t['torch.softmax'] * 1e6:.0f} us, ratio "
            f"{t['torch.softmax'] / t['OneHot().relax']:.2f}x; gumbel-relaxed "
            f"{t['gumbel-relaxed'] * 1e6:.0f} us against F.gumbel_softmax "
            f"{t['F.gumbel_softmax'] * 1e6:.0f} us, ratio "
            f"{t['F.gumbel_softmax'] / t['gumbel-relaxed']:.2f}x"
        )


if __name__ == "__main__":
    main()
