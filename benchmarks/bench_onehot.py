"""Forward+backward time and peak memory of pickgrad's Gumbel estimators against torch's.

Compares, on float32 scores of shape B x S x N (default 4096 x 16 x 64, tau = 1):

* ``torch.nn.functional.gumbel_softmax(scores, hard=True)`` (the peer),
* ``pickgrad.select(scores, OneHot(), "st-gumbel")``,
* ``pickgrad.select(scores, OneHot(), "gumbel-rao", n_draws=10)``,

and prints st-gumbel / torch and gumbel-rao / st-gumbel ratios. One step is
``x = variant(scores); (x * w).sum().backward()`` with fixed weights ``w``.

Time: the variants run interleaved, in a rotating order, for ``--repeats`` rounds after a warm-up
round; each step is timed on its own (with ``torch.cuda.synchronize`` on GPU) and the median per
variant is reported.

Peak memory, measured as the extra memory one step needs on top of its inputs:

* CPU: each variant runs one warm-up step and then one measured step in a fresh subprocess started
  with ``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc serves every tensor larger than 64 KiB with
  its own ``mmap`` and returns it to the system on ``free``: the resident set then tracks live
  tensor memory without allocator caching. Before the measured step the kernel's peak-RSS mark is
  reset (``echo 5 > /proc/self/clear_refs``); the figure is ``VmHWM - VmRSS`` read from
  ``/proc/self/status`` after and before the step. It includes ``scores.grad`` and every
  temporary, and is exact to a page.
* CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around the step,
  after ``torch.cuda.reset_peak_memory_stats()``, in the same process.

Run:  ``python benchmarks/bench_onehot.py`` (about a minute on 2 CPU cores), or ``--quick`` for a
seconds-long smoke run on 256 x 16 x 64, ``--device cuda`` on a GPU. On a machine shared with
other jobs, ``--threads 1`` gives steadier times: a two-thread op stalls whenever one of its
threads is descheduled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import pickgrad

ONEHOT = pickgrad.OneHot()
TAU = 1.0
N_DRAWS = 10


def torch_gumbel_softmax(scores: torch.Tensor) -> torch.Tensor:
    return F.gumbel_softmax(scores, tau=TAU, hard=True)


def pickgrad_st_gumbel(scores: torch.Tensor) -> torch.Tensor:
    return pickgrad.select(scores, ONEHOT, "st-gumbel", tau=TAU)


def pickgrad_gumbel_rao(scores: torch.Tensor) -> torch.Tensor:
    return pickgrad.select(scores, ONEHOT, "gumbel-rao", tau=TAU, n_draws=N_DRAWS)


VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch gumbel_softmax(hard)": torch_gumbel_softmax,
    "pickgrad st-gumbel": pickgrad_st_gumbel,
    f"pickgrad gumbel-rao K={N_DRAWS}": pickgrad_gumbel_rao,
}
TORCH, ST, RAO = VARIANTS


def make_inputs(shape: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(shape, generator=generator).to(device).requires_grad_()
    weights = torch.randn(shape, generator=generator).to(device)
    return scores, weights


def step(variant: Callable, scores: torch.Tensor, weights: torch.Tensor) -> None:
    scores.grad = None
    x = variant(scores)
    (x * weights).sum().backward()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(shape: tuple[int, ...], device: str, repeats: int) -> dict[str, float]:
    """Median seconds per forward+backward step, variants interleaved in a rotating order."""
    scores, weights = make_inputs(shape, device)
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        step(VARIANTS[name], scores, weights)
    for round_index in range(repeats):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            step(VARIANTS[name], scores, weights)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def peak_memory_child(name: str, shape: tuple[int, ...]) -> int:
    """In a fresh process: extra peak resident bytes of one CPU step (see the module docstring)."""
    torch.set_num_threads(1)
    scores, weights = make_inputs(shape, "cpu")
    step(VARIANTS[name], scores, weights)  # warm-up: lazy initialisation is not counted
    scores.grad = None
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak-RSS mark to the current RSS
    before = _status_kib("VmRSS")
    step(VARIANTS[name], scores, weights)
    return (_status_kib("VmHWM") - before) * 1024


def peak_memory(shape: tuple[int, ...], device: str) -> dict[str, int]:
    """Extra peak bytes of one forward+backward step, per variant."""
    peaks = {}
    for name in VARIANTS:
        if device == "cuda":
            scores, weights = make_inputs(shape, device)
            step(VARIANTS[name], scores, weights)
            scores.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step(VARIANTS[name], scores, weights)
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - before
            del scores, weights
        else:
            environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            command = [sys.executable, __file__, "--child", name, "--shape", *map(str, shape)]
            output = subprocess.run(
                command, env=environment, check=True, capture_output=True, text=True
            ).stdout
            peaks[name] = json.loads(output.strip().splitlines()[-1])["peak_bytes"]
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shape, few repeats (smoke run)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("B", "S", "N"), default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(args.shape) if args.shape else ((256, 16, 64) if args.quick else (4096, 16, 64))
    if args.child:
        print(json.dumps({"peak_bytes": peak_memory_child(args.child, shape)}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 15)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"scores float32 {shape}, tau={TAU}, device {device_name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {repeats} interleaved rounds"
    )
    times = time_variants(shape, args.device, repeats)
    peaks = peak_memory(shape, args.device)
    buffer = 4 * int(torch.Size(shape).numel())
    print(f"{'variant':<30} {'median fwd+bwd':>15} {'peak extra memory':>26}")
    for name in VARIANTS:
        print(
            f"{name:<30} {times[name] * 1e3:>12.2f} ms "
            f"{peaks[name] / 2**20:>12.1f} MiB ({peaks[name] / buffer:4.2f} x scores)"
        )
    print(
        f"st-gumbel / torch: time {times[ST] / times[TORCH]:.2f}x (target <= 1.0), "
        f"memory {peaks[ST] / peaks[TORCH]:.2f}x (target <= 0.75)"
    )
    print(
        f"gumbel-rao K={N_DRAWS} / st-gumbel: time {times[RAO] / times[ST]:.2f}x (target <= 3), "
        f"memory {peaks[RAO] / peaks[ST]:.2f}x"
    )


if __name__ == "__main__":
    main()
