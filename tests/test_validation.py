"""The shared input checks: compute dtypes, relax options, tau, score ranges, the switch."""

from __future__ import annotations

import pytest
import torch

import pickgrad
from pickgrad._validation import compute_dtype
from pickgrad.structures.base import Structure

# --- compute_dtype -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_compute_dtype_upcasts_half_types_only(dtype: torch.dtype, expected: torch.dtype) -> None:
    assert compute_dtype(dtype) is expected


# --- relax options -------------------------------------------------------------------------------


def test_unknown_relax_option_names_option_structure_and_valid_ones() -> None:
    with pytest.raises(TypeError) as info:
        pickgrad.OneHot().relax(torch.zeros(3), tau=1.0, regulariser="sparsemax")
    message = str(info.value)
    assert "'regulariser'" in message
    assert "OneHot()" in message
    assert "regularizer" in message.split("valid options:")[1]


def test_known_relax_option_passes_and_its_value_is_checked_by_the_structure() -> None:
    structure = pickgrad.OneHot()
    structure.check_relax_options({"regularizer": "sparsemax"})
    out = structure.relax(torch.tensor([2.0, 1.0, -1.0]), regularizer="sparsemax")
    assert torch.equal(out, torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="regularizer"):
        structure.relax(torch.zeros(3), regularizer="bogus")


def test_several_unknown_options_are_all_named() -> None:
    with pytest.raises(TypeError, match="'a', 'b'"):
        pickgrad.OneHot().check_relax_options({"a": 1, "regularizer": "entropy", "b": 2})


def test_relax_options_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        pickgrad.OneHot().check_relax_options(["regularizer"])  # type: ignore[arg-type]


def test_undeclared_relax_options_are_read_from_the_relax_signature() -> None:
    class Tiny(Structure):
        def _relax(self, scores, tau, regularizer="entropy", *, steps=3):  # type: ignore[no-untyped-def]
            return torch.softmax(scores / tau, -1)

        def _argmax(self, scores):  # type: ignore[no-untyped-def]
            return pickgrad.OneHot()._argmax(scores)

    class Declared(Tiny):
        relax_option_names = ("regularizer",)

    assert Tiny.relax_option_names == ("regularizer", "steps")
    assert Declared.relax_option_names == ("regularizer",)
    with pytest.raises(TypeError, match=r"'steps'.*valid options: regularizer$"):
        Declared().check_relax_options({"steps": 2})


def test_structure_without_options_says_so() -> None:
    class NoOptions(Structure):
        def _relax(self, scores, tau):  # type: ignore[no-untyped-def]
            return scores

    assert NoOptions.relax_option_names == ()
    with pytest.raises(TypeError, match="takes no options"):
        NoOptions().check_relax_options({"regularizer": "entropy"})
