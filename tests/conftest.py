"""Shared fixtures: every test is seeded; hypothesis profiles.

Hypothesis profiles, chosen by the ``HYPOTHESIS_PROFILE`` environment variable:

* ``ci`` (the default, used by every test): derandomized (the same examples on every run, so CI
  is reproducible), no deadline (timings on shared machines are noisy), 30 examples per test
  unless a test asks for its own count (the property suite in ``tests/properties`` does).
* ``long``: for local runs, ``HYPOTHESIS_PROFILE=long python -m pytest tests/properties``:
  randomized (new examples each run, failures kept in ``.hypothesis/``), 300 examples per test
  and 10 times each property test's own count.

``pickgrad`` is kept as another name for ``ci``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

import pickgrad

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=30, print_blob=True)
settings.register_profile("pickgrad", settings.get_profile("ci"))
settings.register_profile(
    "long",
    deadline=None,
    derandomize=False,
    max_examples=300,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Hypothesis's pytest plugin writes a patch of the failing examples after a failure, importing
# libcst, whose import warns (mypy_extensions.TypedDict); under "warnings are errors" that turns
# a test failure into a pytest INTERNALERROR that hides the falsifying example. Import it once,
# quietly, now.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # libcst not installed: the plugin then skips the patch
        pass


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def fresh_dynamo_without_validation() -> Iterator[None]:
    """Value checks off and a fresh dynamo cache around a torch.compile test."""
    torch._dynamo.reset()
    with pickgrad.validation(False):
        yield
    torch._dynamo.reset()


@pytest.fixture(scope="module", params=["definition", "column"])
def subset_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a module's tests twice: with the k-subset marginals of few subsets computed from
    their definition (the default) and with the column programme forced at every size, so that
    both meet the brute-force references at tiny n."""
    from pickgrad.structures import _subset_marginals

    saved = _subset_marginals._ENUMERATION_LIMIT
    if request.param == "column":
        _subset_marginals._ENUMERATION_LIMIT = 0
    yield str(request.param)
    _subset_marginals._ENUMERATION_LIMIT = saved
