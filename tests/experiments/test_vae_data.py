"""VAE data: the IDX format on tiny synthetic files, binarisation, splits, a missing data set."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import pytest
import torch

from pickgrad.cli import main
from pickgrad.experiments.vae_data import (
    INSTALL_HINT,
    binarize,
    check_dataset,
    load_or_binarize,
    read_idx,
)


def _idx_bytes(values: torch.Tensor) -> bytes:
    header = struct.pack(f">BBBB{values.dim()}i", 0, 0, 8, values.dim(), *values.shape)
    return header + values.to(torch.uint8).flatten().numpy().tobytes()


def _fake_fashion_mnist(folder: Path, train: torch.Tensor, test: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(train)))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(test)))
    return folder


@pytest.mark.parametrize("compressed", [True, False])
def test_read_idx_returns_the_array_in_its_header_shape(tmp_path: Path, compressed: bool) -> None:
    values = torch.randint(0, 256, (3, 4, 5), generator=torch.Generator().manual_seed(0))
    body = _idx_bytes(values)
    path = tmp_path / ("images.gz" if compressed else "images")
    path.write_bytes(gzip.compress(body) if compressed else body)
    read = read_idx(path)
    assert read.dtype == torch.uint8 and torch.equal(read, values.to(torch.uint8))


def test_read_idx_refuses_a_bad_header_or_length(tmp_path: Path) -> None:
    good = _idx_bytes(torch.zeros(2, 3, 3))
    cases = {
        "magic.gz": b"\x00\x01" + good[2:],  # not 00 00
        "float.gz": good[:2] + b"\x0d" + good[3:],  # float type, unsupported
        "short.gz": good[:-1],  # one byte missing
        "long.gz": good + b"\x00",
        "header.gz": good[:9],  # sizes cut
    }
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(raw))
        with pytest.raises(ValueError, match="IDX"):
            read_idx(path)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX file"):
        read_idx(broken)


def test_fashion_mnist_layout_splits_and_threshold(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    train = torch.randint(0, 256, (7, 28, 28), generator=generator)
    test = torch.randint(0, 256, (4, 28, 28), generator=generator)
    folder = _fake_fashion_mnist(tmp_path / "fmnist", train, test)
    data = load_or_binarize(
        "fashion-mnist", tmp_path / "cache", data_dir=folder, valid_size=2, test_size=3
    )
    bits = (train.flatten(1) > 127).to(torch.uint8)
    assert torch.equal(data.train, bits[:5]) and torch.equal(data.valid, bits[5:])
    assert torch.equal(data.test, (test.flatten(1)[:3] > 127).to(torch.uint8))
    assert data.side == 28 and len(data.checksum) == 64 and data.path.exists()
    # Cached: a second load reads the same bits even with the source gone.
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).write_bytes(gzip.compress(_idx_bytes(torch.zeros(7, 28, 28))))
    again = load_or_binarize(
        "fashion-mnist", tmp_path / "cache", data_dir=folder, valid_size=2, test_size=3
    )
    assert again.checksum == data.checksum and torch.equal(again.train, data.train)
    with pytest.raises(ValueError, match="valid_size=7 and test_size=3 do not fit"):
        load_or_binarize(
            "fashion-mnist", tmp_path / "cache", data_dir=folder, valid_size=7, test_size=3
        )


def test_fashion_mnist_of_the_wrong_image_size_is_refused(tmp_path: Path) -> None:
    folder = _fake_fashion_mnist(tmp_path / "f", torch.zeros(3, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"expected \(N, 28, 28\)"):
        load_or_binarize(
            "fashion-mnist", tmp_path / "c", data_dir=folder, valid_size=1, test_size=1
        )


def test_bernoulli_binarisation_is_seeded_and_has_the_right_frequency() -> None:
    intensities = torch.full((200, 50), 64)
    a = binarize(intensities, 255.0, "bernoulli", seed=3)
    assert torch.equal(a, binarize(intensities, 255.0, "bernoulli", seed=3))
    assert not torch.equal(a, binarize(intensities, 255.0, "bernoulli", seed=4))
    p, n = 64 / 255, intensities.numel()
    assert abs(float(a.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    with pytest.raises(ValueError, match="binarization='otsu' is not known"):
        binarize(intensities, 255.0, "otsu")
    with pytest.raises(ValueError, match=r"intensities must lie in \[0, 16.0\]"):
        binarize(torch.tensor([17]), 16.0, "threshold")


def test_digits_splits_are_disjoint_and_cover_the_data_set(tmp_path: Path) -> None:
    data = load_or_binarize("digits", tmp_path, valid_size=100, test_size=200)
    assert data.side == 8 and data.train.shape[1] == 64
    assert data.train.shape[0] + 100 + 200 == 1797
    assert set(data.train.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="do not fit digits"):
        load_or_binarize("digits", tmp_path, valid_size=1597, test_size=200)


def test_a_missing_data_set_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        check_dataset("fashion-mnist", tmp_path)
    assert "as root" in INSTALL_HINT
    check_dataset("digits", tmp_path)  # needs no files


def test_the_command_fails_before_any_work_without_the_data_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        ["experiment", "vae", "--set", f"data_dir={tmp_path / 'none'}", "--out", str(out),
         "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    )  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "Fashion-MNIST not found" in error and "apt-get install dataset-fashion-mnist" in error
    assert not out.exists() and not (tmp_path / "cache").exists()
