"""The README's example and quick start stay true."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README has no python example"
    namespace: dict[str, object] = {}
    exec(blocks[0], namespace)
    scores = namespace["scores"]
    assert isinstance(scores, torch.Tensor) and scores.grad is not None
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


def test_quick_start_has_two_commands_and_ci_runs_the_test_one() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", quick_start, re.S).group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("pickgrad demo")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines
