"""The shared input checks: compute dtypes, relax options, tau, score ranges, the switch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import pytest
import torch

import pickgrad
from pickgrad._validation import (
    apply_mask,
    check_mask,
    check_scores,
    check_tau,
    compute_dtype,
    inspect_scores,
    set_validation,
    validation,
    value_checks_enabled,
)
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


# --- tau -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", ["0.5", b"1", True, False, None, [1.0], 1 + 2j, object()])
def test_tau_of_a_non_real_type_is_a_type_error(tau: object) -> None:
    with pytest.raises(TypeError, match="tau must be a positive real number or a schedule"):
        check_tau(tau)


@pytest.mark.parametrize("tau", [0.0, -0.5, math.nan, math.inf, -math.inf, torch.tensor(-1.0)])
def test_tau_out_of_range_is_a_value_error(tau: object) -> None:
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        check_tau(tau)


def test_tau_accepts_numbers_zero_dim_tensors_and_schedules() -> None:
    assert check_tau(2) == 2.0
    assert check_tau(np.float32(0.25)) == 0.25
    assert check_tau(torch.tensor(0.5, dtype=torch.float64)) == 0.5
    assert check_tau(torch.tensor(3)) == 3.0
    assert check_tau(pickgrad.Constant(0.3)) == pytest.approx(0.3)


@pytest.mark.parametrize("tau", [torch.tensor([0.5]), torch.ones(2, 2)])
def test_tau_tensor_with_dimensions_is_refused(tau: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"0-dim tensor, got a tensor of shape"):
        check_tau(tau)


def test_bool_tensor_tau_is_refused() -> None:
    with pytest.raises(TypeError, match=r"real number, got a torch\.bool tensor"):
        check_tau(torch.tensor(True))


def test_tau_that_requires_grad_warns_that_its_gradient_is_dropped() -> None:
    tau = torch.tensor(0.5, requires_grad=True)
    with pytest.warns(UserWarning, match="no gradient reaches it"):
        assert check_tau(tau) == 0.5


@pytest.mark.parametrize(
    ("dtype", "smallest"),
    [(torch.float16, 1.2e-38), (torch.bfloat16, 1.2e-38), (torch.float32, 1.2e-38)],
)
def test_tau_below_the_compute_dtype_range_is_refused(dtype: torch.dtype, smallest: float) -> None:
    assert check_tau(2 * smallest, dtype=dtype) == 2 * smallest
    with pytest.raises(ValueError, match=r"tau=1e-39 is below 1\.18e-38, the smallest normal"):
        check_tau(1e-39, dtype=dtype)
    assert check_tau(1e-300, dtype=torch.float64) == 1e-300


# --- score ranges --------------------------------------------------------------------------------


def test_tau_that_overflows_scores_over_tau_names_tau_magnitude_and_limit() -> None:
    scores = torch.tensor([[1e30, 0.0, -3.0]])
    with pytest.raises(ValueError) as info:
        check_scores(scores, tau=1e-10)
    message = str(info.value)
    assert "tau=1e-10" in message
    assert "magnitude up to 1e+30" in message
    assert "3.4e+38" in message and "torch.float32" in message
    check_scores(scores, tau=1e-7)  # 3e37 fits


def test_sums_over_an_event_that_overflow_are_refused() -> None:
    scores = torch.full((2, 4), 1e38)
    with pytest.raises(ValueError, match=r"overflow torch\.float32 when summed over an event of 4"):
        check_scores(scores)
    check_scores(torch.full((2, 3), 1e38))  # 3e38 < 3.4e38
    with pytest.raises(ValueError, match="event of 6 entries"):
        check_scores(torch.full((2, 3), 1e38), event_dims=2)


def test_half_scores_are_range_checked_in_float32() -> None:
    big = torch.full((5,), 6e4, dtype=torch.float16)
    check_scores(big, tau=1e-30)  # 6e4 * 5 / 1e-30 = 3e35 fits float32
    with pytest.raises(ValueError, match=r"the dtype torch\.float16 scores are computed in"):
        check_scores(big, tau=1e-34)


def test_range_and_finiteness_checks_are_value_checks() -> None:
    nan = torch.tensor([0.0, math.nan])
    with validation(False):
        check_scores(torch.full((4,), 1e38), tau=1e-20)
        check_scores(nan)
    with pytest.raises(ValueError, match="1 NaN of 2 entries"):
        check_scores(nan)


def test_non_finite_scores_are_counted_by_kind() -> None:
    scores = torch.tensor([[math.nan, math.inf], [-math.inf, -math.inf]])
    with pytest.raises(ValueError, match=r"\(1 NaN, 1 \+inf of 4 entries, shape \(2, 2\)\)"):
        check_scores(scores)


def test_minus_inf_scores_are_masked_entries_not_errors() -> None:
    scores = torch.tensor([[0.0, -math.inf], [-math.inf, 2.0]])
    assert check_scores(scores) is scores
    assert inspect_scores(scores) is True
    assert inspect_scores(torch.zeros(2)) is False
    with validation(False):  # unknown without reading values
        assert inspect_scores(scores) is False


def test_range_checks_ignore_minus_inf_entries() -> None:
    # max |allowed| = 2e38: 2e38 * 3 overflows float32; the -inf entry does not count.
    with pytest.raises(ValueError, match="magnitude up to 2e\\+38"):
        check_scores(torch.tensor([2e38, 2e38, -math.inf]))
    check_scores(torch.tensor([1.0, -math.inf, 2.0]), tau=1e-30)
    with pytest.raises(ValueError, match="tau=1e-38 is too small for scores of magnitude up to 2"):
        check_scores(torch.tensor([1.0, -math.inf, 2.0]), tau=1e-38)


def test_check_mask_names_dtype_shape_and_device() -> None:
    scores = torch.zeros(2, 3)
    assert check_mask(torch.ones(3, dtype=torch.bool), scores).shape == (3,)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .* got dtype torch.float32"):
        check_mask(torch.ones(3), scores)
    with pytest.raises(TypeError, match=r"mask must be a bool torch.Tensor .* got list"):
        check_mask([True], scores)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 2\) does not broadcast .* \(2, 3\)"):
        check_mask(torch.ones(2, 2, dtype=torch.bool), scores)
    with pytest.raises(ValueError, match=r"mask of shape \(4, 2, 3\) does not broadcast"):
        check_mask(torch.ones(4, 2, 3, dtype=torch.bool), scores)
    masked = apply_mask(torch.ones(2, 3), torch.tensor([True, False, True]))
    assert masked[:, 1].eq(-math.inf).all() and masked[:, 0].eq(1).all()


@pytest.mark.parametrize("batch", [(), (0,), (2,), (2, 0, 3), (1, 2, 3)])
def test_valid_scores_pass_for_any_batch_shape(batch: tuple[int, ...]) -> None:
    scores = torch.randn(*batch, 4)
    assert check_scores(scores, tau=0.01) is scores


# --- the switch ----------------------------------------------------------------------------------


def test_set_validation_and_the_context_manager_restore_the_setting() -> None:
    assert value_checks_enabled()
    with validation(False):
        assert not value_checks_enabled()
        with validation(True):
            assert value_checks_enabled()
        assert not value_checks_enabled()
    assert value_checks_enabled()
    try:
        pickgrad.set_validation(False)
        assert not value_checks_enabled()
    finally:
        pickgrad.set_validation(True)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        pickgrad.set_validation(1)  # type: ignore[arg-type]


def test_the_switch_is_exported() -> None:
    assert pickgrad.set_validation is set_validation
    assert pickgrad.validation is validation
    assert {"set_validation", "validation"} <= set(pickgrad.__all__)


@pytest.mark.parametrize(
    "transform",
    [
        lambda f: torch.func.vmap(f),
        lambda f: torch.func.grad(lambda t: f(t).sum()),
        lambda f: torch.func.jacrev(f),
        lambda f: torch.func.vmap(torch.func.grad(lambda t: f(t).sum())),
    ],
    ids=["vmap", "grad", "jacrev", "vmap-grad"],
)
def test_value_checks_are_off_inside_torch_func_transforms(transform) -> None:  # type: ignore[no-untyped-def]
    seen: list[bool] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        seen.append(value_checks_enabled())
        return t * 2

    transform(record)(torch.ones(2, 3))
    assert seen and not any(seen)
    assert value_checks_enabled()


def test_value_checks_are_off_while_torch_compile_traces() -> None:
    def branch(t: torch.Tensor) -> torch.Tensor:
        return t + 1 if value_checks_enabled() else t - 1

    compiled = torch.compile(branch, backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.zeros(2)), torch.full((2,), -1.0))
    assert torch.equal(branch(torch.zeros(2)), torch.ones(2))


def test_value_checks_are_off_under_fx_symbolic_trace() -> None:
    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(value_checks_enabled())
            return t

    torch.fx.symbolic_trace(Probe())
    assert seen == [False]


# --- hot paths with validation off read no tensor value --------------------------------------------

_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


@contextmanager
def _no_tensor_reads() -> Iterator[list[str]]:
    """Make every way of reading a tensor value back to Python raise inside the block."""
    saved = {name: getattr(torch.Tensor, name) for name in _READS}
    reached: list[str] = []

    def forbid(name: str):  # type: ignore[no-untyped-def]
        def read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            reached.append(name)
            raise AssertionError(f"Tensor.{name} reached with validation off")

        return read

    for name in _READS:
        setattr(torch.Tensor, name, forbid(name))
    try:
        yield reached
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


ONEHOT_ESTIMATORS = pickgrad.available_estimators(pickgrad.OneHot())


@pytest.mark.parametrize("estimator", ONEHOT_ESTIMATORS)
@pytest.mark.parametrize("batch", [(), (0,), (3,), (2, 3)])
def test_no_tensor_value_is_read_with_validation_off(
    estimator: str, batch: tuple[int, ...]
) -> None:
    structure = pickgrad.OneHot()
    scores = torch.randn(*batch, 5, requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    cls = type(pickgrad.get_estimator(estimator))
    with validation(False), _no_tensor_reads() as reached:
        if cls.needs_loss:
            out = pickgrad.estimate(
                lambda x: x.sum(-1), scores, structure, estimator, n_samples=2, generator=generator
            )
        else:
            out = pickgrad.select(scores, structure, estimator, tau=0.5, generator=generator)
        out.sum().backward()
    assert reached == []
    assert scores.grad is not None and scores.grad.shape == scores.shape


# The trees' solvers read values on their own (Chu-Liu/Edmonds' stopping test, the marginals'
# accuracy fallback), with or without a mask, so they are not listed here.
MASKED_CASES = [(pickgrad.OneHot(), (3, 5)), (pickgrad.Subset(2), (3, 5))]


@pytest.mark.parametrize("estimator", ["st", "st-gumbel", "gumbel-relaxed", "imle", "reinforce"])
@pytest.mark.parametrize(("structure", "shape"), MASKED_CASES, ids=lambda c: repr(c))
def test_a_mask_reads_no_tensor_value_with_validation_off(
    estimator: str, structure: Structure, shape: tuple[int, ...]
) -> None:
    scores = torch.randn(*shape, requires_grad=True)
    mask = torch.ones(shape, dtype=torch.bool)
    mask[..., -1] = False
    generator = torch.Generator().manual_seed(0)
    with validation(False), _no_tensor_reads() as reached:
        if type(pickgrad.get_estimator(estimator)).needs_loss:
            out = pickgrad.estimate(
                lambda x: x.sum(tuple(range(1, x.dim()))),
                scores,
                structure,
                estimator,
                n_samples=2,
                generator=generator,
                mask=mask,
            )
        else:
            out = pickgrad.select(scores, structure, estimator, generator=generator, mask=mask)
        out.sum().backward()
    assert reached == []
    assert scores.grad is not None and bool((scores.grad[~mask] == 0).all())


@pytest.mark.parametrize("estimator", ONEHOT_ESTIMATORS)
def test_nan_scores_still_raise_with_validation_on(estimator: str) -> None:
    scores = torch.randn(2, 5)
    scores[1, 3] = math.nan
    cls = type(pickgrad.get_estimator(estimator))
    with pytest.raises(ValueError, match="1 NaN of 10 entries"):
        if cls.needs_loss:
            pickgrad.estimate(lambda x: x.sum(-1), scores, pickgrad.OneHot(), estimator)
        else:
            pickgrad.select(scores, pickgrad.OneHot(), estimator)


def test_reads_are_caught_by_the_trap() -> None:
    # The trap itself must fail when a value is read, or the test above proves nothing.
    with pytest.raises(AssertionError, match=r"Tensor\.item reached"), _no_tensor_reads():
        torch.ones(()).item()
    with pytest.raises(AssertionError, match=r"Tensor\.__bool__ reached"), _no_tensor_reads():
        bool(torch.ones(()))


# --- Structure: solutions, capabilities, extreme magnitudes, half precision ------------------------


def test_conditional_gumbel_and_perturb_log_prob_name_the_invalid_batch_entries() -> None:
    structure = pickgrad.OneHot()
    scores = torch.zeros(2, 3, 4)
    x = structure.argmax(torch.randn(2, 3, 4))
    x[0, 2] = 0.0  # no item
    x[1, 0, :2] = 1.0  # two items (or one more)
    x[1, 1] = 0.5  # not 0/1
    for call in (
        lambda: structure.conditional_gumbel(scores, x, 2),
        lambda: structure.perturb_log_prob(scores, x),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "x is not a hard solution of OneHot()" in message
        assert "3 batch entries: (0, 2), (1, 0), (1, 1)" in message


def test_invalid_x_without_batch_dims_and_with_many_entries() -> None:
    structure = pickgrad.OneHot()
    with pytest.raises(ValueError, match=r"x is not a hard solution of OneHot\(\)$"):
        structure.perturb_log_prob(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"at 7 batch entries: \(0,\), \(1,\), .*\(4,\), \.\.\.$"):
        structure.perturb_log_prob(torch.zeros(7, 3), torch.zeros(7, 3))


def test_solution_check_is_a_value_check_but_shapes_are_always_checked() -> None:
    structure = pickgrad.OneHot()
    with validation(False):
        structure.perturb_log_prob(torch.zeros(2, 3), torch.zeros(2, 3))
        with pytest.raises(
            ValueError, match=r"x must have the shape of scores \(2, 3\), got \(3,\)"
        ):
            structure.conditional_gumbel(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        structure.perturb_log_prob(torch.zeros(3), [1.0, 0.0, 0.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.float16])
def test_valid_x_of_any_real_dtype_is_accepted(dtype: torch.dtype) -> None:
    structure = pickgrad.OneHot()
    scores = torch.randn(4, 3, dtype=torch.float64)
    x = structure.argmax(torch.randn(4, 3)).to(dtype)
    expected = torch.log_softmax(scores, -1).gather(-1, x.to(torch.int64).argmax(-1, keepdim=True))
    assert torch.allclose(structure.perturb_log_prob(scores, x), expected.squeeze(-1))
    assert structure.conditional_gumbel(scores, x, 3).shape == (3, 4, 3)


class _Toy(Structure):
    """A OneHot-like structure without log_partition, recording the dtypes its hooks see."""

    unsupported: ClassVar[dict[str, str]] = {"log_partition": "no closed form for this toy"}

    def __init__(self) -> None:
        self.seen: list[torch.dtype] = []

    def _argmax(self, scores: torch.Tensor) -> torch.Tensor:
        return pickgrad.OneHot()._argmax(scores)

    def _relax(self, scores: torch.Tensor, tau: float) -> torch.Tensor:
        self.seen.append(scores.dtype)
        return torch.softmax(scores / tau, -1)

    def _log_partition(self, scores: torch.Tensor, tau: float) -> torch.Tensor:
        raise AssertionError("never called: declared unsupported")


def test_supports_honours_unsupported_and_log_partition_raises_the_reason() -> None:
    toy = _Toy()
    assert toy.supports("relax") and not toy.supports("log_partition")
    with pytest.raises(NotImplementedError, match="does not support log_partition: no closed form"):
        toy.log_partition(torch.zeros(3))
    # The check on x does not hide the reason a capability is missing.
    with pytest.raises(NotImplementedError, match="no sampler of Gumbel noise"):
        toy.conditional_gumbel(torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_public_relax_computes_half_scores_in_float32_and_casts_back(dtype: torch.dtype) -> None:
    toy = _Toy()
    out = toy.relax(torch.tensor([700.0, 0.0, -5.0], dtype=dtype), tau=0.01)
    assert toy.seen == [torch.float32]
    assert out.dtype == dtype and torch.equal(out, torch.tensor([1.0, 0.0, 0.0], dtype=dtype))


@pytest.mark.parametrize(("dtype", "magnitude"), [(torch.float32, 3e38), (torch.float64, 1.7e308)])
def test_argmax_at_extreme_magnitudes_refuses_before_computing(
    dtype: torch.dtype, magnitude: float
) -> None:
    toy = _Toy()
    scores = torch.tensor([[magnitude, -magnitude, 0.0]], dtype=dtype)
    with pytest.raises(ValueError, match="when summed over an event of 3 entries"):
        toy.argmax(scores)
    with pytest.raises(ValueError, match="when summed over an event of 3 entries"):
        pickgrad.OneHot().argmax(scores)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_argmax_near_the_largest_allowed_magnitude_is_a_valid_structure(dtype: torch.dtype) -> None:
    big = min(torch.finfo(dtype).max, torch.finfo(compute_dtype(dtype)).max / 8)
    scores = torch.tensor([[-big, big, 0.0, big / 2]], dtype=dtype)
    x = pickgrad.OneHot().argmax(scores)
    assert torch.equal(x, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=dtype))


# On CUDA, the same hot paths must not synchronise with the host at all: torch's sync debug mode
# raises at the first synchronising call (.item(), nonzero, a host copy); on CPU no value may be
# read back. The trees' relaxations and Chu-Liu/Edmonds synchronise by design (their accuracy
# fallback, their data-dependent rounds; docs/compile.md), so from the trees only SpanningTree's
# solver-only estimators are here, on CUDA only (on CPU its Prim takes NumPy views, no sync).
SUBSET_WITHOUT_RAO = [
    name for name in pickgrad.available_estimators(pickgrad.Subset(2)) if name != "gumbel-rao"
]
SYNC_FREE_CASES = [
    # OneHot on CPU: test_no_tensor_value_is_read_with_validation_off (every batch shape).
    (pickgrad.OneHot(), (3, 5), ONEHOT_ESTIMATORS, ("cuda",)),
    # Subset's gumbel-rao: its rejection sampler's eager loop stops when every draw is accepted
    # (one read per round; under capture a fixed number of rounds, no read).
    (pickgrad.Subset(2), (3, 5), SUBSET_WITHOUT_RAO, ("cpu", "cuda")),
    (
        pickgrad.SpanningTree(),
        (3, 5, 5),
        ("st", "perturbed", "imle", "blackbox", "reinforce"),
        ("cuda",),
    ),
]
# CUDA is checked only where it exists (no GPU machine is lent to CI).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@contextmanager
def _no_host_sync(device: str) -> Iterator[None]:
    if device == "cpu":
        with _no_tensor_reads():
            yield
        return
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.parametrize("device", DEVICES)
def test_no_host_sync_with_validation_off(device: str) -> None:
    generator = torch.Generator(device=device).manual_seed(0)
    for structure, shape, names, devices in SYNC_FREE_CASES:
        if device not in devices:
            continue
        for estimator in names:
            scores = torch.randn(*shape, device=device, requires_grad=True)
            needs_loss = type(pickgrad.get_estimator(estimator)).needs_loss
            with validation(False), _no_host_sync(device):
                if needs_loss:
                    out = pickgrad.estimate(
                        lambda x: x.flatten(1).sum(-1),
                        scores,
                        structure,
                        estimator,
                        n_samples=2,
                        generator=generator,
                    )
                else:
                    out = pickgrad.select(
                        scores, structure, estimator, tau=0.5, generator=generator
                    )
                out.sum().backward()
            assert scores.grad is not None, (structure, estimator)


def test_checked_range_is_that_of_the_last_value_check_on_the_same_unchanged_tensor() -> None:
    from pickgrad._validation import checked_range, inspect_scores

    scores = torch.tensor([[1.0, -2.0], [3.0, -float("inf")]])
    inspect_scores(scores)
    assert checked_range(scores) == (-float("inf"), 3.0)  # the masked entry counts
    assert checked_range(scores.clone()) is None  # another tensor
    scores.add_(1.0)  # changed in place since the check
    assert checked_range(scores) is None
