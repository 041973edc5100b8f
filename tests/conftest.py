"""Shared fixtures: every test is seeded."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

settings.register_profile("pickgrad", deadline=None, derandomize=True, max_examples=30)
settings.load_profile("pickgrad")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
