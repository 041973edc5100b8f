#!/usr/bin/env bash
# The assignment benchmark on a GPU: the batched torch solver on CUDA against the scipy loop
# (which copies the scores to the host and back), at (1024, 20, 20), (64, 100, 100) and
# (4, 1000, 1000), then extra sizes that locate the crossover for solve_assignment's CUDA rule.
# Put its output in BENCHMARKS.md with the GPU's name.
#
# Run from the repository root:  bash benchmarks/gpu_assignment.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python benchmarks/bench_assignment.py --device cuda --repeats 3
python benchmarks/bench_assignment.py --device cuda --repeats 3 \
    --sizes 64x6x6,1024x6x6,16384x6x6,256x50x50,16x200x200,1x1000x1000
